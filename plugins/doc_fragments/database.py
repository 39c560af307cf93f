# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options shared by the modules that work on an MLflow tracking database.
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
