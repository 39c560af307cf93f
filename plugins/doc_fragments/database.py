# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options shared by the modules that work on an MLflow tracking database.
    # (ansible-test needs plain string literals here, so the db_url text is repeated in MAINTENANCE.)
    DOCUMENTATION = r'''
options:
  db_url:
    description:
      - SQLAlchemy URL of the MLflow tracking database (the server's C(--backend-store-uri)).
      - Supported forms are C(sqlite:////absolute/path/mlflow.db), C(postgresql+psycopg2://user:password@host:5432/db),
        C(postgresql://...) (SQLAlchemy 2.1+ maps it to psycopg 3, so C(psycopg) must be installed) and
        C(mysql+pymysql://user:password@host/db).
      - Quote special characters in the password (C(@) as C(%40), C(:) as C(%3A), C(/) as C(%2F), C(%) as C(%25)).
      - The password may be left out of the URL and supplied through the driver's own mechanism instead,
        for example E(PGPASSWORD) or E(PGPASSFILE) in the module's environment for PostgreSQL.
      - The value is never logged or returned; error messages show the URL with its password masked.
      - A relative sqlite path is relative to the module's working directory on the target, so use an absolute path.
    type: str
    required: true
  connect_timeout:
    description:
      - Seconds to wait for the database connection (sqlite busy timeout for sqlite).
    type: int
    default: 10
requirements:
  - The module runs with the Python interpreter of the MLflow installation on the target
    (set C(ansible_python_interpreter) for the task), which provides C(mlflow), C(sqlalchemy) and C(alembic).
  - The database driver for O(db_url), for example C(psycopg2) or C(psycopg) for PostgreSQL, C(pymysql) for MySQL.
'''

    # The maintenance modules (gc, purge, db_backup): the URL may come from the server's
    # environment files on the target instead of a module argument.
    MAINTENANCE = r'''
options:
  db_url:
    description:
      - SQLAlchemy URL of the MLflow tracking database (the server's C(--backend-store-uri)).
      - Supported forms are C(sqlite:////absolute/path/mlflow.db), C(postgresql+psycopg2://user:password@host:5432/db),
        C(postgresql://...) (SQLAlchemy 2.1+ maps it to psycopg 3, so C(psycopg) must be installed) and
        C(mysql+pymysql://user:password@host/db).
      - Quote special characters in the password (C(@) as C(%40), C(:) as C(%3A), C(/) as C(%2F), C(%) as C(%25)).
      - The password may be left out of the URL and supplied through the driver's own mechanism instead,
        for example E(PGPASSWORD) or E(PGPASSFILE) in the module's environment for PostgreSQL.
      - The value is never logged or returned; error messages show the URL with its password masked.
      - A relative sqlite path is relative to the module's working directory on the target, so use an absolute path.
      - When left out, the value of E(MLFLOW_BACKEND_STORE_URI) from O(env_files) is used, so the URL and its
        password never travel as a module argument. This is how the collection's maintenance playbook calls the module.
    type: str
  env_files:
    description:
      - Environment files on the target in systemd's C(EnvironmentFile=) syntax, read in order (later files win),
        for example the C(server.env) and C(server-secrets.env) the C(mlops.mlflow.mlflow_server) role writes.
      - Their variables are put into the module's own environment (for example C(AWS_ACCESS_KEY_ID),
        C(MLFLOW_S3_ENDPOINT_URL) for artifact deletion in S3) and the values of secret-looking names
        (passwords, keys, tokens, store URIs) are masked in all output.
      - A file that cannot be read makes the module fail before it touches anything.
    type: list
    elements: path
    default: []
  connect_timeout:
    description:
      - Seconds to wait for the database connection (sqlite busy timeout for sqlite).
    type: int
    default: 10
requirements:
  - The module runs with the Python interpreter of the MLflow installation on the target
    (set C(ansible_python_interpreter) for the task), which provides C(mlflow), C(sqlalchemy) and C(alembic).
  - The database driver for O(db_url), for example C(psycopg2) or C(psycopg) for PostgreSQL, C(pymysql) for MySQL.
'''
