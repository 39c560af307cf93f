# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlflow_gateway rejects bad input before any change, with a message naming the variable.

Each case runs the role's argument-spec validation and preflight with ansible-playbook
(--check, --tags mlflow_gateway_preflight, against localhost), so even a preflight that
wrongly passed could not change this machine.
"""

from __future__ import annotations

import os

import pytest

from support import role_preflight

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'gateway_preflight.yml')
SECRET = 'sk-hunter2-canary'


def run_preflight(tmp_path, extra_vars, verbose=False):
    return role_preflight.run_preflight(tmp_path, PLAYBOOK, 'mlflow_gateway_preflight', extra_vars,
                                        ['--diff'] + (['-vvv'] if verbose else []))


def endpoint(name='chat', endpoint_type='llm/v1/chat', key='$OPENAI_API_KEY', **extra):
    ep = {'name': name, 'endpoint_type': endpoint_type,
          'model': {'provider': 'openai', 'name': 'gpt-4o-mini',
                    'config': {'openai_api_key': key, 'openai_api_base': 'http://upstream:8000/v1'}}}
    ep.update(extra)
    return ep


KEYS = {'mlflow_gateway_secret_env': {'OPENAI_API_KEY': SECRET}}


def with_keys(**extra):
    return dict(KEYS, **extra)


def write_src(tmp_path):
    src = tmp_path / 'gateway.yaml'
    src.write_text('endpoints:\n  - name: chat\n    endpoint_type: llm/v1/chat\n'
                   '    model: {provider: openai, name: m, config: {openai_api_key: $OTHER_KEY}}\n')
    return str(src)


BAD_INPUTS = [
    ('port too high', {'mlflow_gateway_port': 70000}, 'mlflow_gateway_port'),
    ('port zero', {'mlflow_gateway_port': 0}, 'mlflow_gateway_port'),
    ('port not a number', {'mlflow_gateway_port': 'http'}, 'mlflow_gateway_port'),
    ('no workers', {'mlflow_gateway_workers': 0}, 'mlflow_gateway_workers'),
    ('workers not a number', {'mlflow_gateway_workers': 'many'}, 'mlflow_gateway_workers'),
    ('version not a release', {'mlflow_gateway_version': 'latest'}, 'mlflow_gateway_version'),
    ('version wildcard', {'mlflow_gateway_version': '3.x'}, 'mlflow_gateway_version'),
    ('restart loop without pause', {'mlflow_gateway_restart_sec': 0, 'mlflow_gateway_start_limit_interval_sec': 0},
     'mlflow_gateway_restart_sec'),
    ('relative config dir', {'mlflow_gateway_config_dir': 'etc/mlflow-gateway'}, 'mlflow_gateway_config_dir'),
    ('host with blank', {'mlflow_gateway_host': '0.0.0.0 --workers 99'}, 'mlflow_gateway_host'),
    ('user with blank', {'mlflow_gateway_user': 'ml flow'}, 'mlflow_gateway_user'),
    ('endpoints not a list of dicts', {'mlflow_gateway_endpoints': ['chat']}, 'mlflow_gateway_endpoints'),
    ('endpoint without name', with_keys(mlflow_gateway_endpoints=[{k: v for k, v in endpoint().items() if k != 'name'}]),
     'mlflow_gateway_endpoints'),
    ('endpoint name with slash', with_keys(mlflow_gateway_endpoints=[endpoint(name='chat/v2')]), 'mlflow_gateway_endpoints'),
    ('duplicate endpoint names', with_keys(mlflow_gateway_endpoints=[endpoint(), endpoint()]), 'mlflow_gateway_endpoints'),
    ('unknown endpoint type', with_keys(mlflow_gateway_endpoints=[endpoint(endpoint_type='llm/v2/chat')]), 'mlflow_gateway_endpoints'),
    ('model without provider', with_keys(mlflow_gateway_endpoints=[dict(endpoint(), model={'name': 'gpt'})]), 'mlflow_gateway_endpoints'),
    ('literal key in endpoint', with_keys(mlflow_gateway_endpoints=[endpoint(key=SECRET)]), 'mlflow_gateway_endpoints'),
    ('unknown $VAR reference', with_keys(mlflow_gateway_endpoints=[endpoint(key='$ANTHROPIC_API_KEY')]), 'mlflow_gateway_secret_env'),
    ('reference to an empty secret', {'mlflow_gateway_secret_env': {'OPENAI_API_KEY': ''},
                                      'mlflow_gateway_endpoints': [endpoint()]}, 'mlflow_gateway_secret_env'),
    ('endpoints and config_src', 'BOTH', 'mlflow_gateway_config_src'),
    ('config_src missing', {'mlflow_gateway_config_src': '/nonexistent/gateway.yaml'}, 'mlflow_gateway_config_src'),
    ('config_src unknown $VAR', 'SRC', 'mlflow_gateway_config_src'),
    ('route to unknown endpoint', with_keys(mlflow_gateway_endpoints=[endpoint()], mlflow_gateway_routes=[
        {'name': 'split', 'task_type': 'llm/v1/chat', 'destinations': [{'name': 'nope', 'traffic_percentage': 100}]}]),
     'mlflow_gateway_routes'),
    ('route shares not 100', with_keys(mlflow_gateway_endpoints=[endpoint('a'), endpoint('b')], mlflow_gateway_routes=[
        {'name': 'split', 'task_type': 'llm/v1/chat', 'destinations': [{'name': 'a', 'traffic_percentage': 50},
                                                                       {'name': 'b', 'traffic_percentage': 40}]}]),
     'mlflow_gateway_routes'),
    ('route named like an endpoint', with_keys(mlflow_gateway_endpoints=[endpoint('a')], mlflow_gateway_routes=[
        {'name': 'a', 'task_type': 'llm/v1/chat', 'destinations': [{'name': 'a', 'traffic_percentage': 100}]}]),
     'mlflow_gateway_routes'),
    ('secret env name invalid', {'mlflow_gateway_secret_env': {'1BAD': SECRET}}, 'mlflow_gateway_secret_env'),
    ('secret with line break', {'mlflow_gateway_secret_env': {'TOKEN': SECRET + '\nEVIL=1'}}, 'mlflow_gateway_secret_env'),
    ('scheme list with comma', {'mlflow_gateway_api_base_allowed_schemes': ['http,https']}, 'mlflow_gateway_api_base_allowed_schemes'),
    ('service state unknown', {'mlflow_gateway_service_state': 'restarted'}, 'mlflow_gateway_service_state'),
    ('health timeout too short', {'mlflow_gateway_health_timeout': 1}, 'mlflow_gateway_health_timeout'),
    ('venvs keep negative', {'mlflow_gateway_venvs_keep': -1}, 'mlflow_gateway_venvs_keep'),
]


def resolve(extra_vars, tmp_path):
    if extra_vars == 'BOTH':
        return with_keys(mlflow_gateway_endpoints=[endpoint()], mlflow_gateway_config_src=write_src(tmp_path))
    if extra_vars == 'SRC':
        return with_keys(mlflow_gateway_config_src=write_src(tmp_path))
    return extra_vars


@pytest.mark.parametrize('extra_vars, variable', [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_naming_the_variable(tmp_path, extra_vars, variable):
    rc, out = run_preflight(tmp_path, resolve(extra_vars, tmp_path))
    assert rc != 0, out
    assert variable in out, out
    assert 'changed=0' in out, out
    assert SECRET not in out, 'a secret was echoed: ' + out


def test_secret_not_echoed_with_vvv(tmp_path):
    rc, out = run_preflight(tmp_path, with_keys(mlflow_gateway_endpoints=[endpoint(key=SECRET)]), verbose=True)
    assert rc != 0, out
    assert SECRET not in out, 'a secret was echoed: ' + out


def test_defaults_pass_preflight(tmp_path):
    rc, out = run_preflight(tmp_path, {})
    assert rc == 0, out
    assert 'failed=0' in out


SPLIT = {'name': 'chat-split', 'task_type': 'llm/v1/chat',
         'destinations': [{'name': 'chat-a', 'traffic_percentage': 70}, {'name': 'chat-b', 'traffic_percentage': 30}]}


@pytest.mark.parametrize('extra_vars', [
    with_keys(mlflow_gateway_endpoints=[endpoint('chat-a'), endpoint('chat-b', limit={'renewal_period': 'minute', 'calls': 10}),
                                        endpoint('embed', endpoint_type='llm/v1/embeddings')],
              mlflow_gateway_routes=[SPLIT], mlflow_gateway_port=5005, mlflow_gateway_host='0.0.0.0',
              mlflow_gateway_api_base_allowed_schemes=['http', 'https'], mlflow_gateway_api_base_allow_private_ips=True),
    {'mlflow_gateway_user': 'mlflow', 'mlflow_gateway_group': 'mlflow', 'mlflow_gateway_data_dir': '/var/lib/mlflow',
     'mlflow_gateway_endpoints': [endpoint(key='/etc/mlflow-gateway/openai.key')]},
    {'mlflow_gateway_env': {'OTHER_KEY': 'not-secret-here'}, 'mlflow_gateway_config_src': 'SRC'},
], ids=['endpoints-routes-private-upstream', 'shared-user-key-file', 'config-src'])
def test_valid_set_ups_pass_preflight(tmp_path, extra_vars):
    if extra_vars.get('mlflow_gateway_config_src') == 'SRC':
        extra_vars = dict(extra_vars, mlflow_gateway_config_src=write_src(tmp_path))
    rc, out = run_preflight(tmp_path, extra_vars)
    assert rc == 0, out
