#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: server_info
short_description: Report the state of an MLflow host - version, units, health, schema, what awaits purging
version_added: 0.1.0
description:
  - Read-only status of an MLflow host as the collection's roles deploy it. It never changes anything and always
    returns C(changed=false).
  - RV(mlflow_version) is the version of the C(mlflow) package of the interpreter the module runs with
    (set C(ansible_python_interpreter) to the server's virtualenv, for example C(/opt/mlflow/venv/bin/python)).
  - RV(units) reports C(systemctl show) of O(units) (by default C(mlflow-server.service) and
    C(mlflow-gateway.service)); a unit that is not installed is reported with C(present=false).
  - RV(health) is the answer of C(GET <url>/health).
  - RV(database) classifies the tracking database schema the way M(mlops.mlflow.db_schema) does (plain
    SQLAlchemy and alembic, never MLflow's store, which may migrate) and counts the runs and experiments in the
    C(deleted) lifecycle stage, which M(mlops.mlflow.purge) or M(mlops.mlflow.gc) would delete for good.
    Everything is read in read-only mode (sqlite C(mode=ro), read-only transactions on PostgreSQL and
    MySQL/MariaDB).
  - A database, unit or server that cannot be reached is reported (RV(database.error), RV(health.error)) with a
    warning, not a failure, so that a status report covers every host. Bad arguments and unreadable O(env_files)
    fail the module.
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
  - mlops.mlflow.database.maintenance
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; check mode returns the same report.
  diff_mode:
    support: none
options:
  url:
    description:
      - Base URL of the MLflow server for the health check (C(/health) is appended), for example
        V(http://127.0.0.1:5000) or V(http://127.0.0.1:5000/mlflow) with a static prefix.
      - When not set, it is built from E(MLFLOW_HOST), E(MLFLOW_PORT) and E(MLFLOW_STATIC_PREFIX) of O(env_files)
        (a wildcard address is probed on loopback), else V(http://127.0.0.1:5000).
      - Set it to an empty string to skip the health check.
    type: str
  units:
    description: systemd units to report.
    type: list
    elements: str
    default: [mlflow-server.service, mlflow-gateway.service]
  timeout:
    description: Seconds to wait for the health check.
    type: int
    default: 10
  database:
    description:
      - Whether to inspect the tracking database. When V(true) and neither O(db_url) nor
        E(MLFLOW_BACKEND_STORE_URI) in O(env_files) is set (for example on an C(artifacts_only) server), RV(database)
        is V(null).
    type: bool
    default: true
notes:
  - The counts are those of the C(deleted) lifecycle stage, whatever their age; an C(older_than) filter of the purge
    modules selects fewer.
seealso:
  - module: mlops.mlflow.db_schema
  - module: mlops.mlflow.purge
  - module: mlops.mlflow.gc
'''

EXAMPLES = r'''
- name: Status of an MLflow host, with the server's own settings
  mlops.mlflow.server_info:
    env_files:
      - /etc/mlflow/server.env
      - /etc/mlflow/server-secrets.env
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
  register: mlflow_status

- name: Only the database of a given URL, no health check
  mlops.mlflow.server_info:
    db_url: sqlite:////var/lib/mlflow/mlflow.db
    url: ""
    units: []
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
mlflow_version:
  description: Version of the C(mlflow) package of the interpreter the module ran with; V(null) when it has none.
  returned: always
  type: str
  sample: 3.17.2
python:
  description: The interpreter the module ran with.
  returned: always
  type: str
  sample: /opt/mlflow/venv/bin/python
units:
  description: Per unit name, what systemd says about it.
  returned: always
  type: dict
  sample:
    mlflow-server.service: {present: true, active_state: active, sub_state: running, unit_file_state: enabled,
                            active: true, enabled: true, main_pid: 1234, n_restarts: 0}
    mlflow-gateway.service: {present: false, active: false, enabled: false}
  contains:
    present:
      description: Whether systemd knows the unit (its C(LoadState) is not C(not-found)).
      type: bool
    active:
      description: C(ActiveState=active).
      type: bool
    enabled:
      description: C(UnitFileState=enabled).
      type: bool
    active_state:
      description: systemd's C(ActiveState).
      type: str
    sub_state:
      description: systemd's C(SubState).
      type: str
    unit_file_state:
      description: systemd's C(UnitFileState).
      type: str
    main_pid:
      description: systemd's C(MainPID) (0 when not running).
      type: int
    n_restarts:
      description: systemd's C(NRestarts), automatic restarts since the last manual start.
      type: int
health:
  description: Result of C(GET <url>/health); V(null) when O(url) is empty.
  returned: always
  type: dict
  sample: {url: "http://127.0.0.1:5000/health", ok: true, status: 200, body: OK}
  contains:
    url:
      description: The probed URL.
      type: str
    ok:
      description: Whether the server answered with status 200 (the tracking server's body is C(OK)).
      type: bool
    status:
      description: HTTP status; V(null) when there was no answer.
      type: int
    body:
      description: The first 200 characters of the answer.
      type: str
    error:
      description: Why there was no answer.
      type: str
database:
  description: The tracking database; V(null) when O(database=false) or no URL is known.
  returned: always
  type: dict
  sample:
    url: "postgresql+psycopg2://mlflow:********@db:5432/mlflow"
    backend: postgresql
    state: current
    revision: f4a9b2c7d1e6
    head_revision: f4a9b2c7d1e6
    pending: 0
    deleted_runs: 12
    deleted_experiments: 1
    runs_in_deleted_experiments: 3
  contains:
    url:
      description: The database URL with its password masked.
      type: str
    backend:
      description: sqlite, postgresql, mysql or mssql.
      type: str
    state:
      description: Schema classification, as RV(mlops.mlflow.db_schema#module:state) of M(mlops.mlflow.db_schema).
      type: str
    revision:
      description: Alembic revision in the database.
      type: str
    head_revision:
      description: Head revision of the installed MLflow.
      type: str
    pending:
      description: Migrations between RV(database.revision) and RV(database.head_revision).
      type: int
    deleted_runs:
      description: Runs in the C(deleted) lifecycle stage (awaiting a purge); V(null) without MLflow tables.
      type: int
    deleted_experiments:
      description: Experiments in the C(deleted) lifecycle stage (awaiting a purge); V(null) without MLflow tables.
      type: int
    runs_in_deleted_experiments:
      description: Runs not deleted themselves that a purge of their deleted experiment would delete too.
      type: int
    error:
      description: Why the database could not be inspected (password masked).
      type: str
'''

import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mlops.mlflow.plugins.module_utils.health import probe_health
from ansible_collections.mlops.mlflow.plugins.module_utils.envfile import EnvFileError, apply_env, load_env_files, secret_values
from ansible_collections.mlops.mlflow.plugins.module_utils import schema

_SHOW = ('LoadState', 'ActiveState', 'SubState', 'UnitFileState', 'MainPID', 'NRestarts')


def unit_states(module, units):
    """systemctl show of each unit; {} entries when systemctl is missing."""
    systemctl = module.get_bin_path('systemctl')
    out = {}
    for unit in units:
        info = {'present': False, 'active': False, 'enabled': False}
        if systemctl:
            rc, stdout, _stderr = module.run_command([systemctl, 'show', unit, '--property=' + ','.join(_SHOW)])
            if rc == 0:
                props = dict(line.split('=', 1) for line in stdout.splitlines() if '=' in line)
                info.update(present=props.get('LoadState', 'not-found') not in ('not-found', ''),
                            active_state=props.get('ActiveState'), sub_state=props.get('SubState'),
                            unit_file_state=props.get('UnitFileState'),
                            main_pid=int(props.get('MainPID') or 0), n_restarts=int(props.get('NRestarts') or 0))
                info['active'] = info['active_state'] == 'active'
                info['enabled'] = info['unit_file_state'] == 'enabled'
        out[unit] = info
    return out


def default_url(env):
    host = env.get('MLFLOW_HOST') or '127.0.0.1'
    if host in ('0.0.0.0', '*'):
        host = '127.0.0.1'
    elif host == '::':
        host = '[::1]'
    elif ':' in host and not host.startswith('['):
        host = '[%s]' % host
    return 'http://%s:%s%s' % (host, env.get('MLFLOW_PORT') or '5000', env.get('MLFLOW_STATIC_PREFIX') or '')


_COUNTS = {
    'deleted_runs': "SELECT COUNT(*) FROM runs WHERE lifecycle_stage = 'deleted'",
    'deleted_experiments': "SELECT COUNT(*) FROM experiments WHERE lifecycle_stage = 'deleted'",
    'runs_in_deleted_experiments': "SELECT COUNT(*) FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                                   "WHERE e.lifecycle_stage = 'deleted' AND r.lifecycle_stage <> 'deleted'",
}


def database_info(db_url, connect_timeout):
    """Schema classification and the purge backlog, read-only."""
    info = {'url': schema.mask_url(db_url), 'backend': None, 'state': None, 'revision': None, 'head_revision': None,
            'pending': None, 'deleted_runs': None, 'deleted_experiments': None, 'runs_in_deleted_experiments': None,
            'error': None}
    try:
        info['backend'] = schema.parse_db_url(db_url).get_backend_name()
        found = schema.classify_schema(db_url, connect_timeout=connect_timeout)
        for key in ('state', 'revision', 'head_revision', 'pending'):
            info[key] = found.get(key)
        if {'runs', 'experiments'} <= set(found.get('tables') or ()):
            engine = schema.create_engine(db_url, connect_timeout=connect_timeout, read_only=True)
            try:
                with engine.connect() as conn:
                    for key, sql in _COUNTS.items():
                        info[key] = int(conn.execute(schema.sqlalchemy.text(sql)).scalar() or 0)
                    conn.rollback()
            except schema.SQLAlchemyError as exc:
                raise schema.SchemaError(schema.db_error_message('Counting deleted runs and experiments', exc, db_url)) from exc
            finally:
                engine.dispose()
    except schema.SchemaError as exc:
        info['error'] = str(exc)
    return info


def main():
    module = AnsibleModule(
        argument_spec=schema.database_argument_spec(
            url=dict(type='str'),
            units=dict(type='list', elements='str', default=['mlflow-server.service', 'mlflow-gateway.service']),
            timeout=dict(type='int', default=10),
            database=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p['timeout'] < 1:
        module.fail_json(msg='timeout must be 1 or more (got %d)' % p['timeout'])
    if p['connect_timeout'] < 1:
        module.fail_json(msg='connect_timeout must be 1 or more (got %d)' % p['connect_timeout'])
    if p['url'] and not p['url'].startswith(('http://', 'https://')):
        module.fail_json(msg='url must start with http:// or https:// (got %s)' % p['url'][:80])
    bad_units = [u for u in p['units'] if not u or any(c.isspace() for c in u) or u.startswith('-')]
    if bad_units:
        module.fail_json(msg='units must be systemd unit names (bad: %s)' % ', '.join(repr(u) for u in bad_units))
    env = {}
    try:
        env = load_env_files(p['env_files'])
    except EnvFileError as exc:
        module.fail_json(msg=str(exc))
    module.no_log_values.update(secret_values(env))
    apply_env(env)
    db_url = p['db_url'] or env.get('MLFLOW_BACKEND_STORE_URI') or None
    if db_url:
        module.no_log_values.update(schema.url_secrets(db_url))

    result = {'changed': False, 'python': sys.executable,
              'mlflow_version': schema.mlflow_version() if schema.HAS_MLFLOW else None,
              'units': unit_states(module, p['units']), 'health': None, 'database': None}
    url = default_url(env) if p['url'] is None else p['url']
    if url:
        result['health'] = probe_health(url, p['timeout'])
        if not result['health']['ok']:
            module.warn('MLflow server at %s is not healthy: %s' % (result['health']['url'],
                                                                    result['health']['error'] or result['health']['status']))
    if p['database'] and db_url:
        missing = [name for has, name in ((schema.HAS_SQLALCHEMY, 'sqlalchemy'), (schema.HAS_ALEMBIC, 'alembic'),
                                          (schema.HAS_MLFLOW, 'mlflow')) if not has]
        if missing:
            module.fail_json(msg='The database report needs %s in the module\'s Python (%s): run the module with the '
                                 'interpreter of the MLflow installation (ansible_python_interpreter), or set database=false.'
                                 % (', '.join(missing), sys.executable), **result)
        result['database'] = database_info(db_url, p['connect_timeout'])
        if result['database']['error']:
            module.warn('Tracking database not inspected: %s' % result['database']['error'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
