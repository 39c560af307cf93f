#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: db_backup
short_description: Back up an MLflow tracking database into a directory and keep the newest backups
version_added: 0.1.0
description:
  - Writes a consistent backup of an MLflow tracking database while the server keeps running, into a new file in
    O(dest_dir), then removes the oldest backups so that O(keep) remain.
  - PostgreSQL is dumped with C(pg_dump --format=custom) (restore with C(pg_restore)).
    MySQL/MariaDB is dumped with C(mariadb-dump), or C(mysqldump) when that is missing,
    using C(--single-transaction --routines --triggers --hex-blob --no-tablespaces) into a gzip-compressed SQL file
    (MLflow's migrations create triggers). SQLite is copied with sqlite's online backup API
    (Python's C(sqlite3.Connection.backup)), in one step under a read lock.
  - File names are C(<prefix>-<backend>-<UTC timestamp>.<extension>), for example
    C(mlflow-postgresql-20260301T021500Z.pgdump), C(mlflow-mysql-20260301T021500Z.sql.gz) or
    C(mlflow-sqlite-20260301T021500Z.sqlite3). The timestamp is the start of the backup.
  - The backup is written to a hidden temporary file in O(dest_dir) and renamed when complete, so a file with a
    backup name is always a whole backup. It has mode C(0600) and belongs to the user the module runs as.
    A failed dump leaves no file behind and does not apply retention.
  - The password never appears on a command line or in the output. C(pg_dump) gets it, with the other connection
    parameters of O(db_url), through its environment (E(PGPASSWORD), E(PGHOST), ...); C(mariadb-dump) through a
    temporary C(0600) option file (C(--defaults-extra-file)) that is removed afterwards.
  - Every run writes a backup, so the module always reports C(changed).
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
  - mlops.mlflow.database.maintenance
attributes:
  check_mode:
    support: full
    details:
      - Validates the options, finds the dump tool and predicts RV(path) and the backups retention would
        remove (RV(removed)); writes, creates and deletes nothing and does not connect to the database.
  diff_mode:
    support: full
    details:
      - Shows the backup files with O(prefix) in O(dest_dir) before and after the run.
options:
  dest_dir:
    description:
      - Absolute path of the directory that receives the backups. It is created with mode C(0700) when missing.
      - Put it on another disk or copy the backups elsewhere; a backup on the database's own disk does not survive
        the loss of that disk.
    type: path
    required: true
  keep:
    description:
      - How many backups with O(prefix) to keep in O(dest_dir), the new one included. Older ones are removed
        after a successful backup.
      - Only files named like this module's backups with O(prefix) count (for any backend); other files in
        O(dest_dir) are never touched. Use a different O(prefix) or O(dest_dir) for each database.
    type: int
    default: 7
  prefix:
    description:
      - First part of the backup file names. Letters, digits, C(.), C(_) and C(-); it must start with a letter or digit.
    type: str
    default: mlflow
  dump_command:
    description:
      - The dump tool, as a path or a command name looked up in E(PATH).
      - Defaults to C(pg_dump) for PostgreSQL and C(mariadb-dump), else C(mysqldump), for MySQL/MariaDB.
      - Must not be set for SQLite, which needs no tool.
      - The tool must be able to read the server, for example C(pg_dump) of the server's major version or newer.
    type: str
notes:
  - O(connect_timeout) applies to PostgreSQL (E(PGCONNECT_TIMEOUT)) and to the busy timeout of SQLite.
    C(mariadb-dump) has no connect timeout; the module checks with that timeout that the server's TCP port answers
    before it starts the tool.
  - PostgreSQL - the URL's query parameters that libpq knows (C(sslmode), C(sslrootcert), C(sslcert), C(sslkey),
    C(host) for a unix socket directory, C(options), C(application_name), ...) are passed to C(pg_dump) as their
    E(PG*) environment variables. A password left out of the URL can come from E(PGPASSWORD) or E(PGPASSFILE)
    in the module's environment.
  - MySQL/MariaDB - C(unix_socket), C(ssl_ca), C(ssl_cert), C(ssl_key), C(ssl_capath), C(ssl_cipher),
    C(ssl_check_hostname) and C(charset) of the URL are passed to the tool as client options. The tool also reads
    the system option files (for example C(/etc/mysql/my.cnf)) and C(~/.my.cnf).
    The dump holds the triggers with their C(DEFINER); restoring as another user needs the privileges to create them.
  - Restore - PostgreSQL C(pg_restore --no-owner --dbname=NEWDB FILE); MySQL/MariaDB
    C(gunzip -c FILE | mariadb NEWDB); SQLite copy the file into place while the server is stopped.
    Then point the server at the restored database.
requirements:
  - On the target, for PostgreSQL C(pg_dump) and for MySQL/MariaDB C(mariadb-dump) or C(mysqldump)
    (Debian/Ubuntu packages C(postgresql-client), C(mariadb-client); SQLite needs no tool)
seealso:
  - module: mlops.mlflow.db_schema
  - name: pg_dump
    description: PostgreSQL's documentation of pg_dump.
    link: https://www.postgresql.org/docs/current/app-pgdump.html
  - name: mariadb-dump
    description: MariaDB's documentation of mariadb-dump.
    link: https://mariadb.com/kb/en/mariadb-dump/
'''

EXAMPLES = r'''
- name: Back up the tracking database named in the server's environment files, keep a week
  mlops.mlflow.db_backup:
    env_files:
      - /etc/mlflow/server.env
      - /etc/mlflow/server-secrets.env
    dest_dir: /var/backups/mlflow
    keep: 7
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
  register: mlflow_backup

- name: Back up before a schema upgrade, with a separate prefix and retention
  mlops.mlflow.db_backup:
    db_url: "postgresql+psycopg2://mlflow@db.example.com:5432/mlflow?sslmode=verify-full&sslrootcert=/etc/ssl/certs/db-ca.pem"
    dest_dir: /var/backups/mlflow
    prefix: pre-upgrade
    keep: 3
    dump_command: /usr/lib/postgresql/16/bin/pg_dump
  environment:
    PGPASSWORD: "{{ mlflow_db_password }}"
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python

- name: Show which file would be written and which backups would be removed
  mlops.mlflow.db_backup:
    db_url: sqlite:////var/lib/mlflow/mlflow.db
    dest_dir: /var/backups/mlflow
    keep: 2
  check_mode: true
  diff: true
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
path:
  description: Absolute path of the new backup (in check mode, the predicted one).
  returned: always
  type: str
  sample: /var/backups/mlflow/mlflow-postgresql-20260301T021500Z.pgdump
size:
  description: Size of the new backup in bytes; V(null) in check mode.
  returned: always
  type: int
  sample: 1048576
sha256:
  description: SHA-256 checksum of the new backup (hex); V(null) in check mode.
  returned: always
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
backend:
  description: Database backend of O(db_url).
  returned: always
  type: str
  sample: postgresql
duration_s:
  description: Seconds the run took.
  returned: always
  type: float
  sample: 2.417
removed:
  description: Absolute paths of the old backups retention removed (in check mode, would remove), oldest first.
  returned: always
  type: list
  elements: str
  sample:
    - /var/backups/mlflow/mlflow-postgresql-20260222T021500Z.pgdump
kept:
  description: Absolute paths of the backups with O(prefix) left in O(dest_dir), oldest first, the new one last.
  returned: always
  type: list
  elements: str
  sample:
    - /var/backups/mlflow/mlflow-postgresql-20260228T021500Z.pgdump
    - /var/backups/mlflow/mlflow-postgresql-20260301T021500Z.pgdump
dump_command:
  description: Absolute path of the dump tool used; V(null) for SQLite.
  returned: always
  type: str
  sample: /usr/bin/pg_dump
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow.plugins.module_utils.backup import run_backup
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import database_argument_spec, run_database_module


def _listing(paths):
    return ''.join('%s\n' % os.path.basename(path) for path in paths)


def run_module(module):
    params = module.params
    result = run_backup(params['db_url'], params['dest_dir'], keep=params['keep'], prefix=params['prefix'],
                        dump_command=params['dump_command'], check_mode=module.check_mode,
                        connect_timeout=params['connect_timeout'], log=module.debug)
    for warning in result.pop('warnings'):
        module.warn(warning)
    before = result.pop('before')
    if module._diff:
        result['diff'] = {
            'before': _listing(before),
            'after': _listing(result['kept']),
            'before_header': '%s (backups %s-*)' % (params['dest_dir'], params['prefix']),
            'after_header': '%s (backups %s-*)' % (params['dest_dir'], params['prefix']),
        }
    return result


def main():
    module = AnsibleModule(
        argument_spec=database_argument_spec(
            dest_dir=dict(type='path', required=True),
            keep=dict(type='int', default=7),
            prefix=dict(type='str', default='mlflow'),
            dump_command=dict(type='str'),
        ),
        supports_check_mode=True,
    )
    run_database_module(module, run_module)


if __name__ == '__main__':
    main()
