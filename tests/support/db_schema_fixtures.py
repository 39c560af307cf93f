"""Fixtures and helpers for the db_schema tests: real sqlite files, real PostgreSQL and MariaDB databases.

PostgreSQL: MLFLOW_TEST_PG_URL (an admin URL of a role with CREATEDB), else the server of
tests/support/pgserver.sh. When neither answers the PostgreSQL tests FAIL, unless
MLFLOW_TEST_SKIP_PG=1, in which case they are skipped.

MySQL (MariaDB): MLFLOW_TEST_MYSQL_URL (a mysql+pymysql:// URL without a database, of a user who may
create and drop databases named mlflow_t_*), else the server of tests/support/mariadbserver.sh.
When neither answers the MySQL tests FAIL, unless MLFLOW_TEST_SKIP_MYSQL=1.

Every test gets fresh databases (mlflow_t_<random>) that are dropped after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))
PGSERVER = os.path.join(SUPPORT_DIR, 'pgserver.sh')
MYSQLSERVER = os.path.join(SUPPORT_DIR, 'mariadbserver.sh')
# Both test servers use the same password, with URL-special characters.
PG_PASSWORD = MYSQL_PASSWORD = 'p@ss:w/rd%'
UNKNOWN_REVISION = 'ffffeeee0000'
SERVER_BACKENDS = ['postgresql', 'mysql']
BACKENDS = ['sqlite'] + SERVER_BACKENDS

_SERVERS = {
    'postgresql': {'name': 'PostgreSQL', 'url_env': 'MLFLOW_TEST_PG_URL', 'skip_env': 'MLFLOW_TEST_SKIP_PG',
                   'script': PGSERVER},
    'mysql': {'name': 'MySQL (MariaDB)', 'url_env': 'MLFLOW_TEST_MYSQL_URL', 'skip_env': 'MLFLOW_TEST_SKIP_MYSQL',
              'script': MYSQLSERVER},
}
_ADMIN_STATE = {}
_TREE = {}


def ensure_collection_tree():
    """Build <tmp>/ansible_collections/mlops/mlflow -> repository root once; put <tmp> on sys.path."""
    if 'path' not in _TREE:
        import atexit
        import shutil
        import sys
        import tempfile
        root = os.path.dirname(os.path.dirname(SUPPORT_DIR))
        tree = tempfile.mkdtemp(prefix='mlops-mlflow-collections-')
        atexit.register(shutil.rmtree, tree, True)
        os.makedirs(os.path.join(tree, 'ansible_collections', 'mlops'))
        os.symlink(root, os.path.join(tree, 'ansible_collections', 'mlops', 'mlflow'))
        sys.path.insert(0, tree)
        os.environ['ANSIBLE_COLLECTIONS_PATH'] = tree
        os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
        _TREE['path'] = tree
    return _TREE['path']


def _admin_url(backend):
    """(admin URL, None) of the test server of backend, or (None, why it is unusable); probed once per session."""
    state = _ADMIN_STATE.setdefault(backend, {})
    if 'url' in state or 'error' in state:
        return state.get('url'), state.get('error')
    server = _SERVERS[backend]
    url = os.environ.get(server['url_env'])
    if not url:
        url = subprocess.run(['bash', server['script'], 'url'], check=True, capture_output=True, text=True).stdout.strip()
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={'connect_timeout': 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text('SELECT 1'))
        engine.dispose()
        state['url'] = url
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        state['error'] = ('%s test server not reachable (%s). Start it with tests/support/%s start, '
                          'set %s, or set %s=1 to skip.'
                          % (server['name'], type(getattr(exc, 'orig', exc)).__name__, os.path.basename(server['script']),
                             server['url_env'], server['skip_env']))
    return state.get('url'), state.get('error')


def require_server(backend):
    """The admin URL of the test server of backend; fails the test when it is unreachable (skips if told to)."""
    url, error = _admin_url(backend)
    if url:
        return url
    if os.environ.get(_SERVERS[backend]['skip_env']) == '1':
        pytest.skip(error)
    pytest.fail(error)


def require_pg():
    return require_server('postgresql')


def require_mysql():
    return require_server('mysql')


class ServerDatabases:
    """Fresh databases mlflow_t_<random> on a test server, dropped by drop_all()."""

    backend = None

    def __init__(self, admin_url):
        self.admin_url = admin_url
        self.created = []

    def _admin(self, *statements):
        engine = sqlalchemy.create_engine(self.admin_url, poolclass=NullPool, isolation_level='AUTOCOMMIT')
        try:
            with engine.connect() as conn:
                for sql in statements:
                    conn.execute(sqlalchemy.text(sql))
        finally:
            engine.dispose()

    def create(self):
        name = 'mlflow_t_%s' % uuid.uuid4().hex[:12]
        self._admin('CREATE DATABASE %s' % name)
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def _drop(self, name):
        raise NotImplementedError

    def drop_all(self):
        for name in self.created:
            self._drop(name)


class PgDatabases(ServerDatabases):
    backend = 'postgresql'

    def _drop(self, name):
        # WITH (FORCE) cannot end an autovacuum worker that happens to be in the fresh database
        # ("must be a member of the role whose process is being terminated"): retry briefly.
        for attempt in range(10):
            try:
                self._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
                return
            except sqlalchemy.exc.SQLAlchemyError:
                if attempt == 9:
                    raise
                time.sleep(0.5)


class MysqlDatabases(ServerDatabases):
    backend = 'mysql'

    def _drop(self, name):
        # Like PostgreSQL's WITH (FORCE): end the sessions still using the database (pooled
        # connections of MLflow's own store), which could otherwise block the DROP on a metadata lock.
        engine = sqlalchemy.create_engine(self.admin_url, poolclass=NullPool, isolation_level='AUTOCOMMIT')
        try:
            with engine.connect() as conn:
                ids = [r[0] for r in conn.execute(sqlalchemy.text(
                    'SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()'), {'db': name})]
                for conn_id in ids:
                    try:
                        conn.execute(sqlalchemy.text('KILL %d' % int(conn_id)))
                    except sqlalchemy.exc.SQLAlchemyError:
                        pass  # already gone
                conn.execute(sqlalchemy.text('DROP DATABASE IF EXISTS %s' % name))
        finally:
            engine.dispose()


_DATABASES = {'postgresql': PgDatabases, 'mysql': MysqlDatabases}


def databases_for(backend):
    return _DATABASES[backend](require_server(backend))


@pytest.fixture
def pg_databases():
    dbs = databases_for('postgresql')
    yield dbs
    dbs.drop_all()


@pytest.fixture
def mysql_databases():
    dbs = databases_for('mysql')
    yield dbs
    dbs.drop_all()


@pytest.fixture(params=SERVER_BACKENDS)
def server_databases(request):
    """Fresh databases on each database server backend (PostgreSQL, MySQL)."""
    dbs = databases_for(request.param)
    yield dbs
    dbs.drop_all()


@pytest.fixture
def new_db(request, tmp_path):
    """Factory returning fresh, empty database URLs of the given backend."""
    counter = []
    servers = {}

    def factory(backend):
        if backend == 'sqlite':
            counter.append(1)
            return 'sqlite:///%s' % (tmp_path / ('mlflow-%d.db' % len(counter)))
        if backend not in servers:
            servers[backend] = databases_for(backend)
        return servers[backend].create()

    yield factory
    for dbs in servers.values():
        dbs.drop_all()


@pytest.fixture(params=BACKENDS)
def db_url(request, new_db):
    return new_db(request.param)


def backend_of(url):
    """sqlite, postgresql or mysql."""
    return make_url(url).get_backend_name()


# ----------------------------------------------------------------------------- building states

def engine_for(url):
    return sqlalchemy.create_engine(url, poolclass=NullPool)


def alembic_upgrade(url, revision):
    """Create MLflow's initial tables and migrate them to revision, with MLflow's alembic config."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = engine_for(url)
    try:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(url)
        with engine.begin() as conn:
            config.attributes['connection'] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def all_revisions():
    """Revisions of the installed MLflow, base first."""
    import mlflow
    from alembic.script import ScriptDirectory
    script = ScriptDirectory(os.path.join(os.path.dirname(mlflow.__file__), 'store', 'db_migrations'))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def make_foreign(url):
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text('CREATE TABLE users (id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL)'))
        conn.execute(sqlalchemy.text("INSERT INTO users (id, username) VALUES (1, 'admin')"))
        conn.execute(sqlalchemy.text('CREATE TABLE alembic_version_auth (version_num VARCHAR(32) NOT NULL PRIMARY KEY)'))
        conn.execute(sqlalchemy.text("INSERT INTO alembic_version_auth VALUES ('8606fa83a998')"))
    engine.dispose()


def make_empty_alembic_version(url):
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text('CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)'))
    engine.dispose()


def make_behind(url, steps_back=3):
    revs = all_revisions()
    target = revs[-1 - steps_back]
    alembic_upgrade(url, target)
    return target, steps_back


def make_current(url):
    alembic_upgrade(url, 'heads')


def make_ahead(url):
    make_current(url)
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text('UPDATE alembic_version SET version_num = :v'), {'v': UNKNOWN_REVISION})
    engine.dispose()


def make_inconsistent(url):
    make_current(url)
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text('DELETE FROM alembic_version'))
    engine.dispose()


def table_names(url):
    engine = engine_for(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def revision_of(url):
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sqlalchemy.text('SELECT version_num FROM alembic_version'))]
    finally:
        engine.dispose()


def snapshot(url):
    """Byte-for-byte (sqlite) or row-for-row and column-for-column (other backends) picture of a database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == 'sqlite':
        path = parsed.database
        if not os.path.exists(path):
            return ('missing', sorted(os.listdir(os.path.dirname(path))))
        with open(path, 'rb') as handle:
            data = handle.read()
        return ('file', hashlib.sha256(data).hexdigest(), sorted(os.listdir(os.path.dirname(path))))
    engine = engine_for(url)
    try:
        inspector = sqlalchemy.inspect(engine)
        quote_name = engine.dialect.identifier_preparer.quote_identifier
        picture = {}
        with engine.connect() as conn:
            for table in sorted(inspector.get_table_names()):
                cols = [(c['name'], str(c['type'])) for c in inspector.get_columns(table)]
                rows = sorted(json.dumps(list(r), default=str)
                              for r in conn.execute(sqlalchemy.text('SELECT * FROM %s' % quote_name(table))))
                picture[table] = (cols, rows)
        return picture
    finally:
        engine.dispose()


def reference_tables(new_db, backend):
    """Tables of a database created by the MLflow CLI: mlflow db upgrade URL on an empty database."""
    import sys
    url = new_db(backend)
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), 'mlflow')
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY='true')
    subprocess.run([mlflow_cli, 'db', 'upgrade', url], check=True, capture_output=True, env=env)
    return table_names(url)


def mlflow_client_smoke(url):
    """Open MLflow's own store on the database and write to it."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=url)
    exp_id = client.create_experiment('db-schema-smoke-%s' % uuid.uuid4().hex[:6])
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, 'm', 1.0)
    return exp_id


BUILDERS = {
    'empty': lambda url: None,
    'foreign': make_foreign,
    'behind': make_behind,
    'current': make_current,
    'ahead': make_ahead,
    'inconsistent': make_inconsistent,
}
