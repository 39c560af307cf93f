"""Tests of plugins/module_utils/schema.py against real sqlite files and real PostgreSQL and MariaDB databases."""

from __future__ import annotations

import os

import pytest
import sqlalchemy

from ansible_collections.mlops.mlflow.plugins.module_utils import schema
from support.db_schema_fixtures import (
    BUILDERS,
    PG_PASSWORD,
    UNKNOWN_REVISION,
    all_revisions,
    make_behind,
    make_empty_alembic_version,
    make_foreign,
    snapshot,
)


def test_head_revision_matches_mlflow():
    from mlflow.store.db.utils import _get_latest_schema_revision
    assert schema.head_revision() == _get_latest_schema_revision()


def test_pending_counts():
    script = schema.load_script_directory()
    revs = all_revisions()
    head = schema.head_revision(script)
    assert revs[-1] == head
    assert schema.pending_revisions(script, None, head) == len(revs)
    assert schema.pending_revisions(script, head, head) == 0
    assert schema.pending_revisions(script, revs[-4], head) == 3
    assert schema.pending_revisions(script, revs[0], head) == len(revs) - 1


def test_revision_graph_from_the_scripts_text_matches_alembic():
    # classify_schema() reads the revision graph from the scripts' text (alembic imports every script).
    fast = schema.fast_script()
    assert isinstance(fast, schema._FastScript)  # pylint: disable=protected-access
    script = schema.load_script_directory()
    head = schema.head_revision(script)
    assert schema.head_revision(fast) == head
    assert schema.known_revisions(fast) == schema.known_revisions(script)
    for rev in [None] + all_revisions():
        assert schema.pending_revisions(fast, rev, head) == schema.pending_revisions(script, rev, head), rev


def test_version_without_importing_mlflow():
    import mlflow
    assert schema.mlflow_version() == mlflow.__version__


def test_a_script_that_is_not_plain_falls_back_to_alembic(tmp_path, monkeypatch):
    versions = tmp_path / 'versions'
    versions.mkdir()
    (tmp_path / 'env.py').write_text('')
    (versions / 'a.py').write_text('revision = "a"\ndown_revision = None\n')
    (versions / 'b.py').write_text('revision = make()\ndown_revision = "a"\n')
    monkeypatch.setattr(schema, 'migrations_dir', lambda: str(tmp_path))
    assert schema.revision_graph() is None
    (versions / 'b.py').write_text('revision: str = "b"\ndown_revision: Union[str, None] = "a"\n')
    assert schema.revision_graph() == {'a': (), 'b': ('a',)}


@pytest.mark.parametrize('url, masked', [
    ('postgresql+psycopg2://u:p%40ss%3Aw%2Frd%25@h:5432/db', 'postgresql+psycopg2://u:***@h:5432/db'),
    ('postgresql+psycopg2://u@h/db', 'postgresql+psycopg2://u@h/db'),
    ('sqlite:////tmp/x.db', 'sqlite:////tmp/x.db'),
    ('::not a url::', '<unparsable URL>'),
])
def test_mask_url(url, masked):
    assert schema.mask_url(url) == masked


def test_url_secrets_and_sanitize():
    url = 'postgresql+psycopg2://u:p%40ss%3Aw%2Frd%25@h/db'
    secrets = schema.url_secrets(url)
    assert PG_PASSWORD in secrets and 'p%40ss%3Aw%2Frd%25' in secrets
    text = 'failed for %s and %s' % (PG_PASSWORD, 'p%40ss%3Aw%2Frd%25')
    assert PG_PASSWORD not in schema.sanitize(text, secrets)
    assert 'p%40ss' not in schema.sanitize(text, secrets)
    assert schema.url_secrets('sqlite:////tmp/x.db') == set()


@pytest.mark.parametrize('url', ['::garbage::', 'oracle://u:pw@h/db', 'sqlite://', 'sqlite:///:memory:'])
def test_rejected_urls(url):
    with pytest.raises(schema.SchemaError) as exc:
        schema.classify_schema(url)
    assert 'pw@' not in str(exc.value)


def test_postgresql_without_psycopg3_hints_psycopg2():
    pytest.importorskip('psycopg2')
    try:
        import psycopg  # noqa: F401 pylint: disable=unused-import
        pytest.skip('psycopg 3 is installed')
    except ImportError:
        pass
    with pytest.raises(schema.SchemaError) as exc:
        schema.create_engine('postgresql://u:secretpw@127.0.0.1:1/db')
    assert 'postgresql+psycopg2://' in str(exc.value)
    assert 'secretpw' not in str(exc.value)


def test_mysql_without_mysqldb_hints_pymysql():
    pytest.importorskip('pymysql')
    try:
        import MySQLdb  # noqa: F401 pylint: disable=unused-import
        pytest.skip('mysqlclient is installed')
    except ImportError:
        pass
    with pytest.raises(schema.SchemaError) as exc:
        schema.create_engine('mysql://u:secretpw@127.0.0.1:1/db')
    assert 'mysql+pymysql://' in str(exc.value) and 'MySQLdb' in str(exc.value)
    assert 'secretpw' not in str(exc.value)


@pytest.mark.parametrize('statement', ["INSERT INTO users (id, username) VALUES (2, 'x')", 'CREATE TABLE t2 (i INTEGER)',
                                       'DROP TABLE users'])
def test_read_only_engine_refuses_writes(db_url, statement):
    """classify_schema's engine (read_only=True) cannot write, DDL included, on any backend."""
    make_foreign(db_url)
    before = snapshot(db_url)
    engine = schema.create_engine(db_url, connect_timeout=5, read_only=True)
    try:
        with pytest.raises(sqlalchemy.exc.SQLAlchemyError, match='(?i)read.?only'):
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()
    assert snapshot(db_url) == before


def test_missing_sqlite_file_is_empty_and_not_created(tmp_path):
    path = tmp_path / 'sub' / 'mlflow.db'
    result = schema.classify_schema('sqlite:///%s' % path)
    assert result['state'] == schema.STATE_EMPTY
    assert result['pending'] == len(all_revisions())
    assert not path.exists() and not path.parent.exists()


EXPECTED = {
    'empty': schema.STATE_EMPTY,
    'foreign': schema.STATE_FOREIGN,
    'behind': schema.STATE_BEHIND,
    'current': schema.STATE_CURRENT,
    'ahead': schema.STATE_AHEAD,
    'inconsistent': schema.STATE_INCONSISTENT,
}


@pytest.mark.parametrize('kind', sorted(EXPECTED))
def test_classify(db_url, kind):
    BUILDERS[kind](db_url)
    before = snapshot(db_url)
    result = schema.classify_schema(db_url, connect_timeout=5)
    assert snapshot(db_url) == before
    revs = all_revisions()
    head = revs[-1]
    assert result['state'] == EXPECTED[kind]
    assert result['head_revision'] == head
    if kind == 'empty':
        assert result['tables'] == [] and result['revision'] is None and result['pending'] == len(revs)
    elif kind == 'foreign':
        assert result['tables'] == ['alembic_version_auth', 'users']
        assert result['mlflow_tables'] == [] and result['pending'] == len(revs)
    elif kind == 'behind':
        assert result['revision'] == revs[-4] and result['pending'] == 3
    elif kind == 'current':
        assert result['revision'] == head and result['pending'] == 0
        assert {'experiments', 'runs', 'metrics'} <= set(result['mlflow_tables'])
    elif kind == 'ahead':
        assert result['revision'] == UNKNOWN_REVISION and result['pending'] is None
        assert UNKNOWN_REVISION in result['detail']
    else:
        assert result['revision'] is None and result['pending'] is None
        assert 'no revision' in result['detail']


def test_empty_alembic_version_counts_as_foreign(db_url):
    make_empty_alembic_version(db_url)
    result = schema.classify_schema(db_url)
    assert result['state'] == schema.STATE_FOREIGN
    assert result['tables'] == ['alembic_version']


def test_upgrade_schema_from_behind(db_url):
    rev, steps = make_behind(db_url, 2)
    assert schema.classify_schema(db_url)['pending'] == steps
    schema.upgrade_schema(db_url)
    after = schema.classify_schema(db_url)
    assert after['state'] == schema.STATE_CURRENT and after['revision'] != rev


def test_create_schema_needs_sqlite_directory(tmp_path):
    with pytest.raises(schema.SchemaError, match='does not exist'):
        schema.create_schema('sqlite:///%s' % (tmp_path / 'missing' / 'mlflow.db'))
    assert not os.path.exists(tmp_path / 'missing')


WRONG_PASSWORD_WORDS = {'postgresql': 'password authentication failed', 'mysql': 'Access denied'}


def test_wrong_password_message_is_sanitized(server_databases):
    url = server_databases.create().replace('p%40ss', 'p%40sX')
    with pytest.raises(schema.SchemaError) as exc:
        schema.classify_schema(url, connect_timeout=5)
    message = str(exc.value)
    assert WRONG_PASSWORD_WORDS[server_databases.backend] in message
    assert 'p@sX' not in message and 'p%40sX' not in message and 'rd%' not in message
