# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The MLflow basic-auth database: its schema revision and the admin user.

inspect_auth() only reads, with plain SQLAlchemy (sqlite read-only, PostgreSQL and
MySQL/MariaDB in read-only transactions): the revision in ``alembic_version_auth``
and the admin's row of ``users``, whose password hash is checked with werkzeug's
``check_password_hash`` (what MLflow's auth store does on every request).

apply_auth() writes through MLflow's own auth store
(``mlflow.server.auth.sqlalchemy_store.SqlAlchemyStore``): ``init_db`` migrates the
schema to head (what ``python -m mlflow.server.auth db upgrade`` does, without the
URL on a command line), then ``create_user`` / ``update_user``.

Passwords never appear in anything this file returns or raises.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os

from ansible_collections.mlops.mlflow.plugins.module_utils.schema import (
    SchemaError,
    create_engine,
    db_error_message,
    parse_db_url,
    sqlite_path,
)

try:
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError
except ImportError:  # reported by run_database_module
    pass

try:
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError
except ImportError:  # reported by run_database_module
    pass

AUTH_VERSION_TABLE = 'alembic_version_auth'
# Tables that only an MLflow *tracking* database has: the auth database must never be one.
TRACKING_TABLES = frozenset(('experiments', 'runs', 'alembic_version'))
MIN_PASSWORD_LENGTH = 12
# Published in MLflow's old basic_auth.ini (GHSA-gq3w-7jj3-x7gr); MLflow refuses it for admins.
LEGACY_DEFAULT_PASSWORD = 'password1234'


def auth_migrations_dir():
    """The alembic scripts of the auth database inside the installed mlflow package."""
    # Located, not imported: importing mlflow.server.auth builds the whole auth app (and needs
    # the auth extra), which a read-only inspection does not need.
    import mlflow  # pylint: disable=import-outside-toplevel

    path = os.path.join(os.path.dirname(os.path.abspath(mlflow.__file__)), 'server', 'auth', 'db', 'migrations')
    if not os.path.isfile(os.path.join(path, 'env.py')):
        raise SchemaError('The installed MLflow has no basic-auth migration scripts at %s' % path)
    return path


def auth_head_revision():
    try:
        heads = ScriptDirectory(auth_migrations_dir()).get_heads()
    except CommandError as exc:
        raise SchemaError('Cannot read the basic-auth migration scripts: %s' % exc) from exc
    if len(heads) != 1:
        raise SchemaError('The basic-auth migration scripts have %d heads; expected one' % len(heads))
    return heads[0]


def read_config_db_url(config_file):
    """database_uri and admin_username of an MLflow auth ini ([mlflow] section); values never in errors."""
    # MLflow reads the file with configparser's default interpolation (%% stands for %): so do we.
    parser = configparser.ConfigParser()
    try:
        with open(config_file, encoding='utf-8') as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise SchemaError('Cannot read config_file %s: %s' % (config_file, exc.strerror or exc)) from exc
    except configparser.Error as exc:
        raise SchemaError('config_file %s is not an ini file with an [mlflow] section' % config_file) from exc
    if not parser.has_section('mlflow') or not parser.has_option('mlflow', 'database_uri'):
        raise SchemaError('config_file %s has no database_uri in its [mlflow] section' % config_file)
    try:
        return parser.get('mlflow', 'database_uri'), parser.get('mlflow', 'admin_username', fallback=None)
    except configparser.Error as exc:
        raise SchemaError('config_file %s: database_uri cannot be read (write %% as %%%%)' % config_file) from exc


def check_inputs(username, password):
    """MLflow's own rules for the admin (mlflow.utils.validation), without echoing the password."""
    if not username or any(c.isspace() for c in username):
        raise SchemaError('username must be a non-empty name without blanks')
    if password is None or len(password) < MIN_PASSWORD_LENGTH:
        raise SchemaError('password must be at least %d characters (MLflow refuses shorter ones)' % MIN_PASSWORD_LENGTH)
    if password == LEGACY_DEFAULT_PASSWORD:
        raise SchemaError('password is the default that old MLflow versions published; MLflow refuses it for admins')


def _check_password(password_hash, password):
    from werkzeug.security import check_password_hash  # pylint: disable=import-outside-toplevel

    try:
        return bool(password_hash) and check_password_hash(password_hash, password)
    except (ValueError, TypeError):
        return False


def inspect_auth(db_url, username, password, connect_timeout=None):
    """Read-only view of the auth database.

    Returns revision (None = no schema), head_revision, user_exists, is_admin (None without
    user) and password_ok (None without user). Raises SchemaError when the URL points at a
    tracking database or the database cannot be read.
    """
    head = auth_head_revision()
    result = {'revision': None, 'head_revision': head, 'user_exists': False, 'is_admin': None,
              'password_ok': None, 'tables': 0}
    path = sqlite_path(parse_db_url(db_url))
    if path is not None and (not os.path.exists(path) or os.path.getsize(path) == 0):
        return result
    engine = create_engine(db_url, connect_timeout=connect_timeout, read_only=True)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            result['tables'] = len(tables)
            tracking = sorted(tables & TRACKING_TABLES)
            if tracking:
                raise SchemaError('db_url points at an MLflow tracking database (it holds %s); the basic-auth '
                                  'database must be a database of its own' % ', '.join(tracking))
            if AUTH_VERSION_TABLE in tables:
                context = MigrationContext.configure(conn, opts={'version_table': AUTH_VERSION_TABLE})
                heads = context.get_current_heads()
                result['revision'] = ','.join(heads) if heads else None
            if 'users' in tables:
                users = sqlalchemy.table('users', sqlalchemy.column('username'), sqlalchemy.column('password_hash'),
                                         sqlalchemy.column('is_admin'))
                row = conn.execute(sqlalchemy.select(users.c.password_hash, users.c.is_admin)
                                   .where(users.c.username == username)).first()
                if row is not None:
                    result.update(user_exists=True, is_admin=bool(row[1]), password_ok=_check_password(row[0], password))
            conn.rollback()
    except SQLAlchemyError as exc:
        raise SchemaError(db_error_message('Reading the basic-auth database', exc, db_url)) from exc
    finally:
        engine.dispose()
    return result


def plan(before):
    """What brings the auth database to the wanted state, in words (never a password)."""
    actions = []
    if before['revision'] != before['head_revision']:
        actions.append('upgrade the basic-auth schema from %s to %s'
                       % (before['revision'] or 'base', before['head_revision']))
    if not before['user_exists']:
        actions.append('create the admin user')
    else:
        if not before['is_admin']:
            actions.append('make the user an admin')
        if not before['password_ok']:
            actions.append('set the admin password')
    return actions


def apply_auth(db_url, username, password, before):
    """Migrate to head and create/update the admin with MLflow's auth store."""
    from mlflow.exceptions import MlflowException  # pylint: disable=import-outside-toplevel

    try:
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise SchemaError('MLflow\'s basic-auth store cannot be imported (%s); install mlflow[auth] into this '
                          'Python' % exc) from exc

    path = sqlite_path(parse_db_url(db_url))
    if path is not None and not os.path.isdir(os.path.dirname(path)):
        raise SchemaError('The directory of the sqlite database %s does not exist' % os.path.dirname(path))
    store = SqlAlchemyStore()
    try:
        # Keep stray prints of migration scripts out of the module's JSON on stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            store.init_db(db_url)
            if not before['user_exists']:
                store.create_user(username, password, is_admin=True)
            elif not (before['is_admin'] and before['password_ok']):
                store.update_user(username, password=None if before['password_ok'] else password,
                                  is_admin=None if before['is_admin'] else True)
    except (SQLAlchemyError, CommandError, MlflowException) as exc:
        message = db_error_message('Updating the basic-auth database', exc, db_url)
        if parse_db_url(db_url).get_backend_name() == 'mysql' and ('fk_user_id' in message or 'errno: 121' in message):
            message += (' (MLflow\'s basic-auth migrations give two foreign keys the same name, fk_user_id, which '
                        'MySQL/MariaDB refuse: use PostgreSQL or SQLite for the basic-auth database)')
        raise SchemaError(message) from exc
    finally:
        engine = getattr(store, 'engine', None)
        if engine is not None:
            engine.dispose()
