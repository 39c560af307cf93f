# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlflow_server rejects bad input before any change, with a message naming the variable.

Each case runs the role's argument-spec validation and preflight with ansible-playbook
(--check, --tags mlflow_server_preflight, against localhost), so even a preflight that
wrongly passed could not change this machine.
"""

from __future__ import annotations

import os

import pytest

from support import role_preflight

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'role_preflight.yml')
SECRET = 'hunter2-canary'


def run_preflight(tmp_path, extra_vars):
    return role_preflight.run_preflight(tmp_path, PLAYBOOK, 'mlflow_server_preflight', extra_vars)


BAD_INPUTS = [
    ('unknown set-up', {'mlflow_server_setup': 'proxy'}, 'mlflow_server_setup'),
    ('port too high', {'mlflow_server_port': 70000}, 'mlflow_server_port'),
    ('port zero', {'mlflow_server_port': 0}, 'mlflow_server_port'),
    ('port not a number', {'mlflow_server_port': 'http'}, 'mlflow_server_port'),
    ('no workers', {'mlflow_server_workers': 0}, 'mlflow_server_workers'),
    ('version not a release', {'mlflow_server_version': 'latest'}, 'mlflow_server_version'),
    ('version wildcard', {'mlflow_server_version': '3.x'}, 'mlflow_server_version'),
    ('version specifier', {'mlflow_server_version': '>=3.0'}, 'mlflow_server_version'),
    ('restart loop without pause', {'mlflow_server_restart_sec': 0, 'mlflow_server_start_limit_interval_sec': 0},
     'mlflow_server_restart_sec'),
    ('start limit interval negative', {'mlflow_server_start_limit_interval_sec': -1}, 'mlflow_server_start_limit_interval_sec'),
    ('prometheus not a bool', {'mlflow_server_prometheus_enabled': 'sometimes'}, 'mlflow_server_prometheus_enabled'),
    ('backend dialect unknown', {'mlflow_server_backend_store_uri': 'postgres://mlflow:%s@db/mlflow' % SECRET},
     'mlflow_server_backend_store_uri'),
    ('backend relative sqlite', {'mlflow_server_backend_store_uri': 'sqlite:///mlflow.db'}, 'mlflow_server_backend_store_uri'),
    ('backend without database', {'mlflow_server_backend_store_uri': 'postgresql+psycopg2://mlflow:%s@db:5432' % SECRET},
     'mlflow_server_backend_store_uri'),
    ('backend plain path', {'mlflow_server_backend_store_uri': '/var/lib/mlflow/mlruns'}, 'mlflow_server_backend_store_uri'),
    ('registry not a database', {'mlflow_server_registry_store_uri': 'ftp://x/y'}, 'mlflow_server_registry_store_uri'),
    ('artifacts relative', {'mlflow_server_artifacts_destination': 'artifacts'}, 'mlflow_server_artifacts_destination'),
    ('artifacts unknown scheme', {'mlflow_server_artifacts_destination': 'ftp://host/dir'}, 'mlflow_server_artifacts_destination'),
    ('direct without root', {'mlflow_server_setup': 'tracking_direct'}, 'mlflow_server_default_artifact_root'),
    ('direct with proxy root', {'mlflow_server_setup': 'tracking_direct', 'mlflow_server_default_artifact_root': 'mlflow-artifacts:/'},
     'mlflow_server_default_artifact_root'),
    ('prefix without slash', {'mlflow_server_static_prefix': 'mlflow'}, 'mlflow_server_static_prefix'),
    ('prefix trailing slash', {'mlflow_server_static_prefix': '/mlflow/'}, 'mlflow_server_static_prefix'),
    ('relative data dir', {'mlflow_server_data_dir': 'var/lib/mlflow'}, 'mlflow_server_data_dir'),
    ('host with blank', {'mlflow_server_host': '0.0.0.0 --dev'}, 'mlflow_server_host'),
    ('allowed host with comma', {'mlflow_server_allowed_hosts': ['a.example.com,b.example.com']}, 'mlflow_server_allowed_hosts'),
    ('env name invalid', {'mlflow_server_env': {'1BAD': 'x'}}, 'mlflow_server_env'),
    ('secret with line break', {'mlflow_server_secret_env': {'TOKEN': SECRET + '\nEVIL=1'}}, 'mlflow_server_secret_env'),
    ('service state unknown', {'mlflow_server_service_state': 'restarted'}, 'mlflow_server_service_state'),
    ('extras not a list of str', {'mlflow_server_extras': {'auth': True}}, 'mlflow_server_extras'),
    ('db host missing', {'mlflow_server_db_type': 'postgresql', 'mlflow_server_db_host': ''}, 'mlflow_server_db_host'),
    ('db port too high', {'mlflow_server_db_type': 'mysql', 'mlflow_server_db_port': 99999}, 'mlflow_server_db_port'),
    ('db sslmode on mysql', {'mlflow_server_db_type': 'mysql', 'mlflow_server_db_sslmode': 'require'}, 'mlflow_server_db_sslmode'),
    ('db sslmode unknown', {'mlflow_server_db_type': 'postgresql', 'mlflow_server_db_sslmode': 'sometimes'}, 'mlflow_server_db_sslmode'),
    ('db type unknown', {'mlflow_server_db_type': 'oracle'}, 'mlflow_server_db_type'),
    ('s3 endpoint not a URL', {'mlflow_server_s3_endpoint_url': 'minio:9000'}, 'mlflow_server_s3_endpoint_url'),
    ('s3 secret without key id', {'mlflow_server_s3_secret_access_key': SECRET}, 'mlflow_server_s3_access_key_id'),
    ('s3 addressing unknown', {'mlflow_server_s3_addressing_style': 'flat'}, 'mlflow_server_s3_addressing_style'),
    ('gateway without passphrase', {'mlflow_server_ai_gateway': True}, 'mlflow_server_kek_passphrase'),
    ('gateway short passphrase', {'mlflow_server_ai_gateway': True, 'mlflow_server_kek_passphrase': SECRET}, 'mlflow_server_kek_passphrase'),
    ('previous passphrase at version 1', {'mlflow_server_ai_gateway': True, 'mlflow_server_kek_passphrase': SECRET * 4,
                                          'mlflow_server_kek_previous_passphrase': SECRET + 'x' * 30}, 'mlflow_server_kek_version'),
    ('kek version zero', {'mlflow_server_kek_version': 0}, 'mlflow_server_kek_version'),
    ('gateway scheme invalid', {'mlflow_server_gateway_allowed_schemes': ['HTTP://']}, 'mlflow_server_gateway_allowed_schemes'),
    ('health timeout too short', {'mlflow_server_health_timeout': 1}, 'mlflow_server_health_timeout'),
    ('venvs keep negative', {'mlflow_server_venvs_keep': -1}, 'mlflow_server_venvs_keep'),
    ('backup keep zero', {'mlflow_server_backup_keep': 0}, 'mlflow_server_backup_keep'),
    ('backup dir relative', {'mlflow_server_backup_dir': 'backups'}, 'mlflow_server_backup_dir'),
]


@pytest.mark.parametrize('extra_vars, variable', [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_naming_the_variable(tmp_path, extra_vars, variable):
    rc, out = run_preflight(tmp_path, extra_vars)
    assert rc != 0, out
    assert variable in out, out
    assert 'changed=0' in out, out
    assert SECRET not in out, 'a secret was echoed: ' + out


def test_defaults_pass_preflight(tmp_path):
    rc, out = run_preflight(tmp_path, {})
    assert rc == 0, out
    assert 'failed=0' in out


@pytest.mark.parametrize('extra_vars', [
    {'mlflow_server_setup': 'tracking_direct', 'mlflow_server_default_artifact_root': 's3://bucket/mlflow'},
    {'mlflow_server_setup': 'artifacts_only', 'mlflow_server_backend_store_uri': 'ignored-for-artifacts-only'},
    {'mlflow_server_backend_store_uri': 'postgresql+psycopg2://mlflow:p%40ss@db.example.com:5432/mlflow',
     'mlflow_server_static_prefix': '/mlflow', 'mlflow_server_allowed_hosts': ['mlflow.example.com:443']},
    {'mlflow_server_backend_store_uri': 'mysql+pymysql://mlflow@db/mlflow', 'mlflow_server_port': 65535},
    {'mlflow_server_db_type': 'postgresql', 'mlflow_server_db_host': 'db.example.com', 'mlflow_server_db_password': 'p@ss/w:rd%#',
     'mlflow_server_db_sslmode': 'verify-full', 'mlflow_server_db_sslrootcert': '/etc/ssl/certs/db-ca.pem'},
    {'mlflow_server_db_type': 'mysql', 'mlflow_server_db_host': '10.0.0.5', 'mlflow_server_db_port': 3307,
     'mlflow_server_artifacts_destination': 's3://bucket/mlflow', 'mlflow_server_s3_endpoint_url': 'https://s3.internal:9000',
     'mlflow_server_s3_access_key_id': 'AKIA', 'mlflow_server_s3_secret_access_key': 'x', 'mlflow_server_s3_addressing_style': 'path'},
    {'mlflow_server_setup': 'tracking_direct', 'mlflow_server_default_artifact_root': 'mlflow-artifacts://artifacts.example.com:5000/'},
    {'mlflow_server_ai_gateway': True, 'mlflow_server_kek_passphrase': 'k' * 40, 'mlflow_server_kek_version': 2,
     'mlflow_server_kek_previous_passphrase': 'o' * 40, 'mlflow_server_gateway_allowed_schemes': ['http', 'https'],
     'mlflow_server_gateway_allow_private_ips': True},
], ids=['direct-s3', 'artifacts-only', 'postgresql-prefix', 'mysql', 'postgresql-parts-tls', 'mysql-parts-s3', 'direct-to-artifacts-server',
        'gateway-rotation'])
def test_valid_set_ups_pass_preflight(tmp_path, extra_vars):
    rc, out = run_preflight(tmp_path, extra_vars)
    assert rc == 0, out
