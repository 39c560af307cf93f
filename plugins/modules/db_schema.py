#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: db_schema
short_description: Inspect an MLflow tracking database schema and bring it to the installed MLflow's head revision
version_added: 0.1.0
description:
  - Classifies the schema of an MLflow tracking database as C(empty), C(foreign), C(behind), C(current), C(ahead)
    or C(inconsistent), using plain SQLAlchemy and alembic. It never opens MLflow's tracking store,
    which may migrate the database as a side effect.
  - The head revision and the revision graph come from the alembic migration scripts shipped in the installed
    C(mlflow) package (C(mlflow/store/db_migrations)); nothing is hard-coded.
  - With O(state=current) it creates MLflow's schema on an empty database or beside foreign tables
    (for example MLflow's basic-auth tables, on which C(mlflow db upgrade) fails with
    C(relation "metrics" does not exist)), and upgrades a schema that is behind to head.
  - Schema creation and upgrades call MLflow's own helpers C(mlflow.store.db.utils._initialize_tables)
    (the initial tables via C(create_all), then all migrations) and C(mlflow.store.db.utils._upgrade_db)
    (C(alembic upgrade heads) with MLflow's alembic configuration). These are what C(mlflow db upgrade) and
    C(mlflow server) run, so the resulting schema is exactly MLflow's. They are private MLflow API;
    if a future MLflow drops them, the module fails with a message saying so instead of guessing.
  - Migrations are not guaranteed to be transactional. Back up the database before an upgrade.
  - A revision unknown to the installed MLflow (C(ahead), written by a newer MLflow) and a database holding MLflow
    tables without a recorded revision (C(inconsistent)) are never touched; O(state=current) fails on them.
  - The MLflow basic-auth database has its own schema (C(alembic_version_auth)) and is not managed by this module.
notes:
  - MySQL/MariaDB - use C(mysql+pymysql://) with C(pymysql) installed. MLflow 3.12+ migrations create triggers, so the
    user needs the C(TRIGGER) privilege on the database (C(ALL) on it includes it) and, when the server has binary
    logging on, the server needs C(log_bin_trust_function_creators=ON) (else error 1419 unless the user has C(SUPER)).
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
  - mlops.mlflow.database.maintenance
attributes:
  check_mode:
    support: full
    details:
      - Check mode only reads the database (sqlite in read-only mode, PostgreSQL and MySQL/MariaDB in read-only
        transactions);
        a missing sqlite file is not created. It predicts C(changed), RV(state) and RV(revision).
  diff_mode:
    support: full
    details:
      - Shows the alembic revision before and after.
options:
  state:
    description:
      - V(current) brings the schema to the head revision of the installed MLflow, creating it when the
        database is empty or holds only foreign tables.
      - V(inspected) only reports; it never changes the database and does not fail on an C(ahead) or
        C(inconsistent) schema, so the result can be used in assertions.
    type: str
    choices: [current, inspected]
    default: current
  allow_foreign_tables:
    description:
      - Whether O(state=current) may create MLflow's schema in a database that already holds other tables
        (none of them MLflow's). An empty C(alembic_version) table left behind by a failed
        C(mlflow db upgrade) does not count as a foreign table.
      - When V(false) such a database makes the module fail.
    type: bool
    default: true
seealso:
  - name: MLflow backend stores
    description: MLflow documentation of the supported database URLs.
    link: https://mlflow.org/docs/latest/self-hosting/architecture/backend-store/
'''

EXAMPLES = r'''
- name: Bring the tracking database schema to the installed MLflow's head
  mlops.mlflow.db_schema:
    db_url: "postgresql+psycopg2://mlflow@db.example.com:5432/mlflow"
  environment:
    PGPASSWORD: "{{ mlflow_db_password }}"
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
  register: mlflow_schema

- name: Report what an upgrade would do, without touching the database
  mlops.mlflow.db_schema:
    db_url: sqlite:////var/lib/mlflow/mlflow.db
  check_mode: true
  diff: true
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python

- name: Inspect only
  mlops.mlflow.db_schema:
    db_url: "mysql+pymysql://mlflow:{{ mlflow_db_password | urlencode }}@db.example.com/mlflow"
    state: inspected
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
  register: mlflow_schema_report

- name: Refuse to add MLflow's tables to a database that holds other tables
  mlops.mlflow.db_schema:
    db_url: sqlite:////var/lib/mlflow/mlflow.db
    allow_foreign_tables: false
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
state_before:
  description:
    - Classification of the schema before the module ran.
    - V(empty) no tables (or a sqlite file that does not exist yet); V(foreign) tables, but none of MLflow's;
      V(behind) at a revision older than head; V(current) at head; V(ahead) at a revision the installed MLflow
      does not know; V(inconsistent) MLflow tables without a single recorded revision.
  returned: always
  type: str
  sample: behind
state:
  description:
    - Classification after the module ran (in check mode, the predicted one).
  returned: always
  type: str
  sample: current
current_revision:
  description: Alembic revision found in the database before the module ran; V(null) when there is none.
  returned: always
  type: str
  sample: 1b5f0d9ad7c1
revision:
  description: Alembic revision after the module ran (in check mode, the predicted one).
  returned: always
  type: str
  sample: dc11669786a5
head_revision:
  description: Head revision of the migration scripts of the installed MLflow.
  returned: always
  type: str
  sample: dc11669786a5
pending:
  description:
    - Number of migrations between RV(current_revision) (or the empty schema) and RV(head_revision),
      that is, the migrations this run applied or, in check mode or with O(state=inspected), would apply.
    - V(null) for an C(ahead) or C(inconsistent) schema.
  returned: always
  type: int
  sample: 3
tables_before:
  description: Number of tables in the database before the module ran (in the connection's default schema).
  returned: always
  type: int
  sample: 2
actions:
  description: What was done (in check mode, what would be done), in words. Never contains secrets.
  returned: always
  type: list
  elements: str
  sample:
    - "create MLflow's initial tables beside 2 foreign table(s)"
    - upgrade schema from base to dc11669786a5 (67 migrations)
mlflow_version:
  description: Version of the MLflow package whose migrations were used.
  returned: always
  type: str
  sample: 3.17.2
'''

import contextlib
import io

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow.plugins.module_utils.schema import (
    ALEMBIC_VERSION_TABLE,
    SchemaError,
    STATE_AHEAD,
    STATE_BEHIND,
    STATE_CURRENT,
    STATE_EMPTY,
    STATE_FOREIGN,
    classify_schema,
    create_schema,
    database_argument_spec,
    fast_script,
    mlflow_version,
    run_database_module,
    upgrade_schema,
)


def plan(before, allow_foreign_tables):
    """The actions that bring the classified schema to head, as (kind, description) pairs."""
    head = before['head_revision']
    state = before['state']
    if state == STATE_CURRENT:
        return []
    if state in (STATE_EMPTY, STATE_FOREIGN):
        foreign = [t for t in before['tables'] if t != ALEMBIC_VERSION_TABLE]
        if foreign and not allow_foreign_tables:
            raise SchemaError('The database holds %d table(s) that are not MLflow\'s (%s%s) and allow_foreign_tables '
                              'is false' % (len(foreign), ', '.join(foreign[:10]), ', ...' if len(foreign) > 10 else ''))
        where = 'beside %d foreign table(s)' % len(foreign) if foreign else 'in the empty database'
        return [('create', "create MLflow's initial tables %s" % where),
                ('create', 'upgrade schema from base to %s (%d migrations)' % (head, before['pending']))]
    if state == STATE_BEHIND:
        return [('upgrade', 'upgrade schema from %s to %s (%d migrations)' % (before['revision'], head, before['pending']))]
    if state == STATE_AHEAD:
        raise SchemaError('The database schema is ahead of the installed MLflow: %s. Install the MLflow version '
                          'that wrote it; this module never downgrades.' % before['detail'])
    raise SchemaError('The database schema is inconsistent: %s. Repair it by hand (restore a backup or stamp the '
                      'right revision) before running this module.' % before.get('detail', state))


def run_module(module):
    params = module.params
    db_url = params['db_url']
    timeout = params['connect_timeout']
    # The revision graph from the migration scripts' text (alembic only when a script is not plain).
    script = fast_script()
    # The ORM's table list is only needed when alembic_version holds no revision (classify_schema()
    # still computes it then): sparing the import of MLflow's ORM halves a look at a current schema.
    before = classify_schema(db_url, connect_timeout=timeout, script=script, with_mlflow_tables=False)
    head = before['head_revision']
    result = {
        'changed': False,
        'state_before': before['state'],
        'state': before['state'],
        'current_revision': before['revision'],
        'revision': before['revision'],
        'head_revision': head,
        'pending': before['pending'],
        'tables_before': len(before['tables']),
        'actions': [],
        'mlflow_version': mlflow_version(),
    }
    if params['state'] == 'inspected':
        return result

    steps = plan(before, params['allow_foreign_tables'])
    if not steps:
        return result
    result['changed'] = True
    result['actions'] = [text for dummy, text in steps]
    if module._diff:
        result['diff'] = {
            'before': 'revision: %s\n' % (before['revision'] or 'none'),
            'after': 'revision: %s\n' % head,
            'before_header': 'MLflow schema (%s)' % before['state'],
            'after_header': 'MLflow schema (%s)' % STATE_CURRENT,
        }
    if module.check_mode:
        result.update(state=STATE_CURRENT, revision=head)
        return result

    # Keep stray prints of migration scripts out of the module's JSON on stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        if steps[0][0] == 'create':
            create_schema(db_url, connect_timeout=timeout)
        else:
            upgrade_schema(db_url, connect_timeout=timeout)

    after = classify_schema(db_url, connect_timeout=timeout, script=script, with_mlflow_tables=False)
    result.update(state=after['state'], revision=after['revision'])
    if after['state'] != STATE_CURRENT or after['revision'] != head:
        module.fail_json(msg='After the migration the schema is %s at revision %s, expected head %s'
                             % (after['state'], after['revision'], head), **result)
    return result


def main():
    module = AnsibleModule(
        argument_spec=database_argument_spec(
            state=dict(type='str', default='current', choices=['current', 'inspected']),
            allow_foreign_tables=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    run_database_module(module, run_module)


if __name__ == '__main__':
    main()
