# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers for the modules that work on an MLflow tracking database.

Everything here reads the database with plain SQLAlchemy and alembic. It never opens
MLflow's ``SqlAlchemyStore``: that store migrates the schema when it is opened, which
would turn a read-only inspection into a write.

Apart from run_database_module() nothing here needs Ansible: the maintenance timers run
this code on the hosts with the MLflow virtualenv's Python only.

The third-party libraries are optional at import time (``HAS_*`` flags) because
``ansible-test sanity`` imports module_utils without them; modules must check the
flags and fail with ``missing_required_lib`` before calling anything here.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sqlite3
import sys
import traceback
from urllib.parse import quote

from ansible_collections.mlops.mlflow.plugins.module_utils.envfile import (
    EnvFileError, apply_env, load_env_files, secret_values)

SQLALCHEMY_IMPORT_ERROR = None
try:
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool
except ImportError:
    HAS_SQLALCHEMY = False
    SQLALCHEMY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_SQLALCHEMY = True


def _find_package(name):
    """(spec or None, error text or None) of an importable package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None, 'ModuleNotFoundError: No module named %r' % name
    return spec, None


# alembic and mlflow are only located here, not imported: importing mlflow takes 1.5-3 s and
# most of what this file does (classify_schema, the purge) does not need it. The functions
# that do need them import them.
_ALEMBIC_SPEC, ALEMBIC_IMPORT_ERROR = _find_package('alembic')
HAS_ALEMBIC = _ALEMBIC_SPEC is not None
_MLFLOW_SPEC, MLFLOW_IMPORT_ERROR = _find_package('mlflow')
HAS_MLFLOW = _MLFLOW_SPEC is not None


# Schema states reported by classify_schema().
STATE_EMPTY = 'empty'
STATE_FOREIGN = 'foreign'
STATE_BEHIND = 'behind'
STATE_CURRENT = 'current'
STATE_AHEAD = 'ahead'
STATE_INCONSISTENT = 'inconsistent'

ALEMBIC_VERSION_TABLE = 'alembic_version'

# Dialects MLflow's SQL store supports (mlflow.store.db.db_types).
SUPPORTED_BACKENDS = ('sqlite', 'postgresql', 'mysql', 'mssql')

# Tables of MLflow's very first schema (mlflow.store.tracking.dbmodels.initial_models).
# Used together with the ORM metadata of the installed MLflow to recognise MLflow's tables.
CORE_MLFLOW_TABLES = frozenset(('experiments', 'runs', 'tags', 'metrics', 'params'))

MASK = '********'


class SchemaError(Exception):
    """An error whose message is safe to show: it never contains the database password."""


# --------------------------------------------------------------------------- URLs and secrets

def parse_db_url(db_url):
    """Parse a SQLAlchemy URL; the error message never repeats the URL."""
    try:
        url = make_url(db_url)
    except (ArgumentError, ValueError) as exc:
        raise SchemaError('db_url is not a valid SQLAlchemy database URL (expected e.g. '
                          'sqlite:////abs/path/mlflow.db or postgresql+psycopg2://user@host/db)') from exc
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise SchemaError('db_url uses the unsupported backend %r; MLflow supports %s'
                          % (url.get_backend_name(), ', '.join(SUPPORTED_BACKENDS)))
    return url


def url_secrets(db_url):
    """The strings that must never appear in output: the password, raw and URL-quoted."""
    secrets = set()
    password = None
    try:
        password = make_url(db_url).password
    except (ArgumentError, ValueError):
        pass
    if password:
        password = str(password)
        secrets.update((password, quote(password, safe=''), quote(password)))
    return {s for s in secrets if s}


def sanitize(text, secrets):
    """Replace every secret in text by a mask."""
    text = str(text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_url(db_url):
    """The URL with its password masked, for messages."""
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return '<unparsable URL>'


def sqlite_path(url):
    """Absolute path of a file-based sqlite URL, or None for another backend.

    Raises SchemaError for in-memory databases, which cannot hold a schema across runs.
    """
    if url.get_backend_name() != 'sqlite':
        return None
    database = url.database
    if not database or database == ':memory:' or database.startswith('file:'):
        raise SchemaError('sqlite db_url must name a database file (sqlite:////absolute/path.db); '
                          'in-memory and URI-style sqlite databases are not supported')
    return os.path.abspath(database)


# --------------------------------------------------------------------------- engines

def _driver_hint(url, exc):
    backend = url.get_backend_name()
    hint = ''
    if backend == 'postgresql' and url.get_driver_name() in ('psycopg', ''):
        hint = (' SQLAlchemy 2.1+ maps postgresql:// to psycopg 3; with psycopg2 installed write '
                'postgresql+psycopg2:// or install psycopg[binary] into this Python.')
    elif backend == 'mysql':
        hint = (' mysql:// means the mysqlclient (MySQLdb) driver; write mysql+pymysql:// and install pymysql '
                'into this Python.' if url.get_driver_name() in ('mysqldb', '') else
                ' Install the driver into this Python (for mysql+pymysql:// that is pymysql).')
    return 'The database driver for %s is not installed: %s.%s' % (url.drivername, exc, hint)


def create_engine(db_url, connect_timeout=None, read_only=False):
    """A SQLAlchemy engine without pooling.

    With read_only=True a sqlite file is opened in sqlite's read-only mode (it is never
    created) and PostgreSQL and MySQL/MariaDB sessions default to read-only transactions.
    """
    url = parse_db_url(db_url)
    backend = url.get_backend_name()
    kwargs = {'poolclass': NullPool}
    connect_args = {}
    if backend == 'sqlite':
        path = sqlite_path(url)
        if connect_timeout:
            connect_args['timeout'] = connect_timeout
        if read_only:
            timeout = connect_timeout or 5

            def _creator():
                return sqlite3.connect('file:%s?mode=ro' % quote(path), uri=True, timeout=timeout)
            kwargs['creator'] = _creator
            connect_args = {}
    elif backend == 'postgresql':
        if connect_timeout:
            connect_args['connect_timeout'] = connect_timeout
        if read_only:
            connect_args['options'] = '-c default_transaction_read_only=on'
    elif backend == 'mysql':
        if connect_timeout:
            connect_args['connect_timeout'] = connect_timeout
    if connect_args:
        kwargs['connect_args'] = connect_args
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
    except ImportError as exc:
        raise SchemaError(_driver_hint(url, exc)) from exc
    except (ArgumentError, SQLAlchemyError) as exc:
        raise SchemaError('Cannot create a database engine for %s: %s'
                          % (mask_url(db_url), sanitize(exc, url_secrets(db_url)))) from exc
    if backend == 'mysql' and read_only:
        # Driver-independent (pymysql, mysqlclient, ...); MySQL and MariaDB then refuse
        # every write, DDL included, with error 1792.
        sqlalchemy.event.listen(engine, 'connect', _mysql_read_only)
    return engine


def _mysql_read_only(dbapi_connection, connection_record):  # pylint: disable=unused-argument
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute('SET SESSION TRANSACTION READ ONLY')
    finally:
        cursor.close()


def db_error_message(action, exc, db_url):
    """A readable, password-free message for a database error."""
    orig = getattr(exc, 'orig', None)
    detail = str(orig) if orig is not None else str(exc)
    detail = ' '.join(detail.split())
    return sanitize('%s failed on %s: %s: %s' % (action, mask_url(db_url), type(orig or exc).__name__, detail),
                    url_secrets(db_url))


# --------------------------------------------------------------------------- migrations

def migrations_dir():
    """The alembic script directory shipped inside the installed mlflow package."""
    path = os.path.join(os.path.dirname(os.path.abspath(_MLFLOW_SPEC.origin)), 'store', 'db_migrations')
    if not os.path.isfile(os.path.join(path, 'env.py')):
        raise SchemaError('MLflow %s has no alembic migration scripts at %s' % (mlflow_version(), path))
    return path


def load_script_directory():
    """alembic's view of MLflow's migration scripts (the revision graph)."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    try:
        return ScriptDirectory(migrations_dir())
    except CommandError as exc:
        raise SchemaError('Cannot read MLflow migration scripts: %s' % exc) from exc


def head_revision(script=None):
    """The single head revision of the installed MLflow's migrations."""
    script = script or load_script_directory()
    heads = script.get_heads()
    if len(heads) != 1:
        raise SchemaError('MLflow %s migration scripts have %d heads (%s); expected exactly one'
                          % (mlflow_version(), len(heads), ', '.join(heads)))
    return heads[0]


_ASSIGNMENT_RE = re.compile(r'^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$', re.MULTILINE)


def revision_graph():
    """{revision: (down revisions)} read from the migration scripts' text, without alembic.

    alembic imports every script to build its graph (~0.4 s for MLflow's 70); the two
    assignments are all that is needed to know the head. None when a script does not have the
    plain literal form (the callers then ask alembic).
    """
    versions = os.path.join(migrations_dir(), 'versions')
    graph = {}
    try:
        names = sorted(n for n in os.listdir(versions) if n.endswith('.py') and not n.startswith('_'))
        for name in names:
            with open(os.path.join(versions, name), encoding='utf-8') as handle:
                found = {}
                for key, value in _ASSIGNMENT_RE.findall(handle.read()):
                    found.setdefault(key, value)
            if set(found) != {'revision', 'down_revision'}:
                return None
            rev, down = ast.literal_eval(found['revision']), ast.literal_eval(found['down_revision'])
            if isinstance(down, str):
                down = (down,)
            elif down is None:
                down = ()
            if not isinstance(rev, str) or rev in graph or not all(isinstance(d, str) for d in down):
                return None
            graph[rev] = tuple(down)
    except (OSError, ValueError, SyntaxError, UnicodeDecodeError):
        return None
    if not graph or any(d not in graph for downs in graph.values() for d in downs):
        return None
    return graph


def _ancestors(graph, rev):
    """rev and every revision below it."""
    seen, todo = set(), [rev]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
    return seen


class _FastScript:
    """The part of alembic's ScriptDirectory that classify_schema() uses, from revision_graph()."""

    def __init__(self, graph):
        self.graph = graph
        below = {d for downs in graph.values() for d in downs}
        self.heads = [r for r in graph if r not in below]

    def get_heads(self):
        return list(self.heads)

    def known(self):
        return set(self.graph)

    def pending(self, current, head):
        if current == head:
            return 0
        above = _ancestors(self.graph, head)
        if current is None:
            return len(above)
        if current not in above:
            raise SchemaError('Revision %s is not an ancestor of head %s' % (current, head))
        return len(above) - len(_ancestors(self.graph, current))


def known_revisions(script):
    if isinstance(script, _FastScript):
        return script.known()
    return {rev.revision for rev in script.walk_revisions()}


def pending_revisions(script, current, head):
    """Number of migrations from current (None = base) up to head."""
    if current == head:
        return 0
    if isinstance(script, _FastScript):
        return script.pending(current, head)
    from alembic.util.exc import CommandError

    lower = current or 'base'
    try:
        revs = [rev.revision for rev in script.iterate_revisions(head, lower)]
    except CommandError as exc:
        raise SchemaError('Revision %s is not an ancestor of head %s: %s' % (current, head, exc)) from exc
    return len([r for r in revs if r != current])


def mlflow_table_names():
    """Names of the tables MLflow's ORM defines (plus the original core tables)."""
    names = set(CORE_MLFLOW_TABLES)
    try:
        # Importing the store's db utils registers every ORM model in Base.metadata.
        import mlflow.store.db.utils  # noqa: F401 pylint: disable=unused-import
        from mlflow.store.db.base_sql_model import Base
    except ImportError:
        return frozenset(names)
    names.update(Base.metadata.tables)
    return frozenset(names)


# --------------------------------------------------------------------------- classification

def _empty_result(state, head, pending, tables=()):
    return {
        'state': state,
        'revision': None,
        'head_revision': head,
        'pending': pending,
        'tables': sorted(tables),
        'mlflow_tables': [],
    }


def fast_script():
    """The revision graph for classify_schema(): read from the scripts' text, else alembic's."""
    graph = revision_graph()
    if graph is not None:
        fast = _FastScript(graph)
        if len(fast.heads) == 1:
            return fast
    return load_script_directory()


def classify_schema(db_url, connect_timeout=None, script=None, with_mlflow_tables=True):
    """Inspect the database read-only and classify its MLflow schema.

    Returns a dict: state (one of the STATE_* values), revision (alembic_version or None),
    head_revision, pending (migrations between revision and head, None when unknown),
    tables (all table names), mlflow_tables (the ones MLflow defines), detail (text for the
    ahead/inconsistent states).
    with_mlflow_tables=False leaves mlflow_tables empty and spares the import of MLflow's ORM
    (seconds) when the caller only needs the state.
    """
    script = script or fast_script()
    head = head_revision(script)
    total = pending_revisions(script, None, head)
    url = parse_db_url(db_url)
    path = sqlite_path(url)
    if path is not None and (not os.path.exists(path) or os.path.getsize(path) == 0):
        return _empty_result(STATE_EMPTY, head, total)

    engine = create_engine(db_url, connect_timeout=connect_timeout, read_only=True)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            revisions = ()
            if ALEMBIC_VERSION_TABLE in tables:
                # What alembic's MigrationContext.get_current_heads() reads.
                revisions = tuple(row[0] for row in conn.execute(
                    sqlalchemy.text('SELECT version_num FROM %s' % ALEMBIC_VERSION_TABLE)))
            conn.rollback()
    except SQLAlchemyError as exc:
        raise SchemaError(db_error_message('Inspecting the database', exc, db_url)) from exc
    finally:
        engine.dispose()

    if not tables:
        return _empty_result(STATE_EMPTY, head, total)
    mlflow_tables = sorted(tables & mlflow_table_names()) if with_mlflow_tables or not revisions else []
    result = _empty_result(STATE_FOREIGN, head, total, tables)
    result['mlflow_tables'] = mlflow_tables
    if not revisions:
        if mlflow_tables:
            result.update(state=STATE_INCONSISTENT, pending=None,
                          detail='MLflow tables exist (%s) but %s holds no revision'
                          % (', '.join(mlflow_tables[:10]), ALEMBIC_VERSION_TABLE))
        return result
    if len(revisions) > 1:
        result.update(state=STATE_INCONSISTENT, pending=None, revision=','.join(revisions),
                      detail='%s holds several revisions (%s)' % (ALEMBIC_VERSION_TABLE, ', '.join(revisions)))
        return result
    revision = revisions[0]
    result['revision'] = revision
    if revision == head:
        result.update(state=STATE_CURRENT, pending=0)
    elif revision in known_revisions(script):
        try:
            result.update(state=STATE_BEHIND, pending=pending_revisions(script, revision, head))
        except SchemaError as exc:
            result.update(state=STATE_INCONSISTENT, pending=None, detail=str(exc))
    else:
        result.update(state=STATE_AHEAD, pending=None,
                      detail='revision %s is unknown to the migration scripts of MLflow %s (head %s): '
                             'a newer MLflow wrote it or it was downgraded'
                             % (revision, mlflow_version(), head))
    return result


# --------------------------------------------------------------------------- changes

def _mlflow_db_helpers():
    """MLflow's private schema helpers, imported late with a clear error if they moved."""
    try:
        from mlflow.store.db.utils import _initialize_tables, _upgrade_db
    except ImportError as exc:
        raise SchemaError('MLflow %s no longer provides mlflow.store.db.utils._initialize_tables/_upgrade_db '
                          '(private API this module relies on): %s. Use a supported MLflow version or '
                          'run "mlflow db upgrade" by hand.' % (mlflow_version(), exc)) from exc
    return _initialize_tables, _upgrade_db


def create_schema(db_url, connect_timeout=None):
    """Create MLflow's schema (initial tables + all migrations) the way MLflow itself does."""
    initialize_tables = _mlflow_db_helpers()[0]
    _run_write(initialize_tables, 'Creating the MLflow schema', db_url, connect_timeout)


def upgrade_schema(db_url, connect_timeout=None):
    """Run MLflow's alembic migrations up to head."""
    upgrade_db = _mlflow_db_helpers()[1]
    _run_write(upgrade_db, 'Upgrading the MLflow schema', db_url, connect_timeout)


def _run_write(func, action, db_url, connect_timeout):
    from alembic.util.exc import CommandError
    from mlflow.exceptions import MlflowException

    url = parse_db_url(db_url)
    path = sqlite_path(url)
    if path is not None and not os.path.isdir(os.path.dirname(path)):
        raise SchemaError('The directory of the sqlite database %s does not exist' % os.path.dirname(path))
    engine = create_engine(db_url, connect_timeout=connect_timeout)
    try:
        func(engine)
    except (SQLAlchemyError, CommandError, MlflowException) as exc:
        raise SchemaError(db_error_message(action, exc, db_url)) from exc
    finally:
        engine.dispose()


def mlflow_version():
    """The installed mlflow's version (from its package metadata, without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ('mlflow', 'mlflow-skinny'):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    try:
        import mlflow
    except ImportError:
        return 'unknown'
    return str(getattr(mlflow, '__version__', 'unknown'))


# --------------------------------------------------------------------------- module entry point

def database_argument_spec(**options):
    """The options of the modules documented by the mlops.mlflow.database.maintenance fragment, plus options.

    db_url (or env_files holding MLFLOW_BACKEND_STORE_URI) and connect_timeout; run_database_module()
    resolves and masks them. One place for the spec, as the doc fragment is one place for the text.
    """
    spec = dict(
        db_url=dict(type='str', no_log=True),
        env_files=dict(type='list', elements='path', default=[]),
        connect_timeout=dict(type='int', default=10),
    )
    spec.update(options)
    return spec


def run_database_module(module, run, extra_libs=()):
    """Shared main() of the modules that work on an MLflow tracking database.

    Fails with a clear message when a library is missing (the module must run with the
    interpreter of the MLflow installation), masks the password of ``db_url`` (raw and
    URL-quoted) wherever it might surface, runs ``run(module)`` and exits with its result;
    a SchemaError becomes a password-free failure.
    extra_libs: further (has_lib, name, import_error) triples.
    """
    # Imported here so that the rest of this file runs without Ansible (host-side timers).
    from ansible.module_utils.basic import missing_required_lib

    libs = ((HAS_SQLALCHEMY, 'sqlalchemy', SQLALCHEMY_IMPORT_ERROR),
            (HAS_ALEMBIC, 'alembic', ALEMBIC_IMPORT_ERROR),
            (HAS_MLFLOW, 'mlflow', MLFLOW_IMPORT_ERROR)) + tuple(extra_libs)
    for has_lib, name, error in libs:
        if not has_lib:
            module.fail_json(msg=missing_required_lib(name) + '. Run this module with the Python of the MLflow installation '
                             '(set ansible_python_interpreter for the task); this one is %s.' % sys.executable, exception=error)
    try:
        if module.params.get('env_files'):
            # The maintenance modules read the server's own environment files on the target,
            # so the database URL and the object-store keys never travel as arguments.
            env = load_env_files(module.params['env_files'])
            module.no_log_values.update(secret_values(env))
            apply_env(env)
            if not module.params.get('db_url'):
                module.params['db_url'] = env.get('MLFLOW_BACKEND_STORE_URI') or None
        if not module.params.get('db_url'):
            if module.params.get('env_files'):
                module.fail_json(msg='db_url is not set and none of env_files (%s) sets MLFLOW_BACKEND_STORE_URI'
                                 % ', '.join(module.params['env_files']))
            module.fail_json(msg='db_url is required (or env_files holding MLFLOW_BACKEND_STORE_URI)')
        module.no_log_values.update(url_secrets(module.params['db_url']))
        result = run(module)
    except EnvFileError as exc:
        module.fail_json(msg=str(exc))
    except SchemaError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)
