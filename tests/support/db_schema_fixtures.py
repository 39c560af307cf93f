"""Fixtures and helpers for the db_schema tests: real sqlite files and real PostgreSQL databases.

PostgreSQL: MLFLOW_TEST_PG_URL (an admin URL of a role with CREATEDB), else the server of
tests/support/pgserver.sh. When neither answers the PostgreSQL tests FAIL, unless
MLFLOW_TEST_SKIP_PG=1, in which case they are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))
PGSERVER = os.path.join(SUPPORT_DIR, 'pgserver.sh')
PG_PASSWORD = 'p@ss:w/rd%'
UNKNOWN_REVISION = 'ffffeeee0000'
BACKENDS = ['sqlite', 'postgresql']

_PG_STATE = {}
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


def _pg_admin_url():
    if 'url' in _PG_STATE or 'error' in _PG_STATE:
        return _PG_STATE.get('url'), _PG_STATE.get('error')
    url = os.environ.get('MLFLOW_TEST_PG_URL')
    if not url:
        url = subprocess.run(['bash', PGSERVER, 'url'], check=True, capture_output=True, text=True).stdout.strip()
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={'connect_timeout': 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text('SELECT 1'))
        engine.dispose()
        _PG_STATE['url'] = url
    except sqlalchemy.exc.SQLAlchemyError as exc:
        _PG_STATE['error'] = ('PostgreSQL test server not reachable (%s). Start it with tests/support/pgserver.sh start, '
                              'set MLFLOW_TEST_PG_URL, or set MLFLOW_TEST_SKIP_PG=1 to skip.'
                              % type(getattr(exc, 'orig', exc)).__name__)
    return _PG_STATE.get('url'), _PG_STATE.get('error')


def require_pg():
    url, error = _pg_admin_url()
    if url:
        return url
    if os.environ.get('MLFLOW_TEST_SKIP_PG') == '1':
        pytest.skip(error)
    pytest.fail(error)


class PgDatabases:
    def __init__(self, admin_url):
        self.admin_url = admin_url
        self.created = []

    def _admin(self, sql):
        engine = sqlalchemy.create_engine(self.admin_url, poolclass=NullPool, isolation_level='AUTOCOMMIT')
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(sql))
        finally:
            engine.dispose()

    def create(self):
        name = 'mlflow_t_%s' % uuid.uuid4().hex[:12]
        self._admin('CREATE DATABASE %s' % name)
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self):
        for name in self.created:
            self._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)


@pytest.fixture
def pg_databases():
    dbs = PgDatabases(require_pg())
    yield dbs
    dbs.drop_all()


@pytest.fixture
def new_db(request, tmp_path):
    """Factory returning fresh, empty database URLs of the given backend."""
    counter = []
    pg = {}

    def factory(backend):
        if backend == 'sqlite':
            counter.append(1)
            return 'sqlite:///%s' % (tmp_path / ('mlflow-%d.db' % len(counter)))
        if 'dbs' not in pg:
            pg['dbs'] = PgDatabases(require_pg())
        return pg['dbs'].create()

    yield factory
    if 'dbs' in pg:
        pg['dbs'].drop_all()


@pytest.fixture(params=BACKENDS)
def db_url(request, new_db):
    return new_db(request.param)


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
        picture = {}
        with engine.connect() as conn:
            for table in sorted(inspector.get_table_names()):
                cols = [(c['name'], str(c['type'])) for c in inspector.get_columns(table)]
                rows = sorted(json.dumps(list(r), default=str) for r in conn.execute(sqlalchemy.text('SELECT * FROM "%s"' % table)))
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
