#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: auth_admin
short_description: Bring an MLflow basic-auth database to head and ensure its admin user and password
version_added: 0.2.0
description:
  - Brings the schema of the database of MLflow's basic-auth app (C(mlflow server --app-name basic-auth)) to the head
    of the installed MLflow's auth migrations, and ensures that the user O(username) exists, is an admin and has
    the password O(password).
  - MLflow itself only uses its bootstrap password (C(MLFLOW_AUTH_ADMIN_PASSWORD)) when the admin does not exist
    yet; afterwards the password can only be changed through the REST API with the current password. This module
    makes the password a declarative setting instead, so rotating it is a change of one variable.
  - It first reads the database with plain SQLAlchemy (the revision in C(alembic_version_auth), the admin's row in
    C(users), whose password hash is compared with werkzeug's C(check_password_hash) as the server does). Only
    when something differs does it write, through MLflow's own auth store
    (C(mlflow.server.auth.sqlalchemy_store.SqlAlchemyStore)) - C(init_db) for the migrations (what
    C(python -m mlflow.server.auth db upgrade) does, without the URL on a command line), C(create_user) and
    C(update_user).
  - Refuses a database that holds MLflow tracking tables; the auth database must be a database of its own.
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode only reads the database (sqlite read-only, PostgreSQL and MySQL/MariaDB in read-only transactions);
        a missing sqlite file is not created.
  diff_mode:
    support: full
    details:
      - Shows the schema revision, whether the admin exists, is an admin and whether its password matches. Never the password.
options:
  db_url:
    description:
      - SQLAlchemy URL of the basic-auth database (C(database_uri) of the auth ini), for example
        C(sqlite:////var/lib/mlflow/basic_auth.db) or C(postgresql+psycopg2://user:password@host/mlflow_auth).
      - Quote special characters in the password (C(@) as C(%40), C(:) as C(%3A), C(/) as C(%2F), C(%) as C(%25)).
      - Never logged or returned; errors show the URL with its password masked.
      - Either this or O(config_file) is required.
    type: str
  config_file:
    description:
      - The auth ini on the target (C(MLFLOW_AUTH_CONFIG_PATH)); its C([mlflow] database_uri) is used when O(db_url)
        is not given, so the URL never travels as a module argument.
    type: path
  username:
    description: Name of the admin user.
    type: str
    default: admin
  password:
    description:
      - The password the admin must have, at least 12 characters (MLflow's rule).
      - Never logged or returned.
    type: str
    required: true
  connect_timeout:
    description:
      - Seconds to wait for the database connection (sqlite busy timeout for sqlite).
    type: int
    default: 10
requirements:
  - The module runs with the Python interpreter of the MLflow installation on the target (set
    C(ansible_python_interpreter) for the task), which provides C(mlflow) with the C(auth) extra, C(sqlalchemy),
    C(alembic) and C(werkzeug), and the driver for O(db_url).
notes:
  - Run it once per auth database (several servers sharing one auth database share its users), before the servers
    start, so they find the admin and never need the bootstrap password.
  - MLflow's per-worker credential cache is off by default (C(auth_cache_ttl_seconds = 0)); with it on, a rotated
    password is accepted by other workers until the cache entry expires.
seealso:
  - name: MLflow authentication
    description: MLflow's basic HTTP authentication.
    link: https://mlflow.org/docs/latest/self-hosting/security/basic-http-auth/
'''

EXAMPLES = r'''
- name: Auth database at head, admin with the password from the vault
  mlops.mlflow.auth_admin:
    db_url: "{{ mlflow_auth_db_url }}"
    username: admin
    password: "{{ vault_mlflow_admin_password }}"
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python

- name: The same, reading the database URL from the server's auth ini on the host
  mlops.mlflow.auth_admin:
    config_file: /etc/mlflow/basic_auth.ini
    password: "{{ vault_mlflow_admin_password }}"
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
revision_before:
  description: Revision in C(alembic_version_auth) before the module ran; V(null) when there was no auth schema.
  returned: always
  type: str
  sample: 8606fa83a998
revision:
  description: Revision after the module ran (in check mode, the predicted one).
  returned: always
  type: str
  sample: f1a2b3c4d5e6
head_revision:
  description: Head of the installed MLflow's basic-auth migrations.
  returned: always
  type: str
  sample: f1a2b3c4d5e6
user_created:
  description: Whether the admin user was (in check mode, would be) created.
  returned: always
  type: bool
  sample: false
password_updated:
  description: Whether the admin's password was (would be) set because it did not match.
  returned: always
  type: bool
  sample: true
admin_granted:
  description: Whether the existing user was (would be) made an admin.
  returned: always
  type: bool
  sample: false
actions:
  description: What was done (in check mode, what would be done), in words. Never contains a secret.
  returned: always
  type: list
  elements: str
  sample: ["set the admin password"]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow.plugins.module_utils.auth import (
    apply_auth, check_inputs, inspect_auth, plan, read_config_db_url)
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import SchemaError, run_database_module


def _state_text(state):
    return ('revision: %s\nuser exists: %s\nadmin: %s\npassword matches: %s\n'
            % (state['revision'] or 'none', state['user_exists'], bool(state['is_admin']), bool(state['password_ok'])))


def run_module(module):
    params = module.params
    db_url = params['db_url']
    username = params['username']
    password = params['password']
    timeout = params['connect_timeout']
    check_inputs(username, password)
    before = inspect_auth(db_url, username, password, connect_timeout=timeout)
    actions = plan(before)
    result = {
        'changed': bool(actions),
        'revision_before': before['revision'],
        'revision': before['revision'],
        'head_revision': before['head_revision'],
        'user_created': not before['user_exists'],
        'password_updated': before['user_exists'] and not before['password_ok'],
        'admin_granted': before['user_exists'] and not before['is_admin'],
        'actions': actions,
    }
    if not actions:
        return result
    wanted = {'revision': before['head_revision'], 'user_exists': True, 'is_admin': True, 'password_ok': True}
    if module._diff:
        result['diff'] = {'before': _state_text(before), 'after': _state_text(wanted),
                          'before_header': 'basic-auth database', 'after_header': 'basic-auth database'}
    if module.check_mode:
        result['revision'] = before['head_revision']
        return result
    apply_auth(db_url, username, password, before)
    after = inspect_auth(db_url, username, password, connect_timeout=timeout)
    result['revision'] = after['revision']
    if plan(after):
        module.fail_json(msg='After the update the basic-auth database still needs: %s' % '; '.join(plan(after)), **result)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            db_url=dict(type='str', no_log=True),
            config_file=dict(type='path'),
            username=dict(type='str', default='admin'),
            password=dict(type='str', required=True, no_log=True),
            connect_timeout=dict(type='int', default=10),
        ),
        required_one_of=[('db_url', 'config_file')],
        supports_check_mode=True,
    )
    if not module.params['db_url']:
        try:
            module.params['db_url'] = read_config_db_url(module.params['config_file'])[0]
        except SchemaError as exc:
            module.fail_json(msg=str(exc))
    run_database_module(module, run_module)


if __name__ == '__main__':
    main()
