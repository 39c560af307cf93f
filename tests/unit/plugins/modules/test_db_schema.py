"""Tests of the db_schema module's main() against real sqlite files and real PostgreSQL and MariaDB databases.

main() runs in-process under ansible.module_utils.testing.patch_module_args; its real JSON output
(after AnsibleModule's no_log masking) is parsed from stdout.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.mlops.mlflow.plugins.modules import db_schema
from support.module_runner import run_main
from support.db_schema_fixtures import (
    BUILDERS,
    PG_PASSWORD,
    UNKNOWN_REVISION,
    all_revisions,
    backend_of,
    make_empty_alembic_version,
    make_foreign,
    mlflow_client_smoke,
    reference_tables,
    revision_of,
    snapshot,
    table_names,
)

_REFERENCE = {}


@pytest.fixture
def run(capsys):
    def runner(db_url, check=False, diff=False, **params):
        return json.loads(run_main(capsys, db_schema.main, db_url, check=check, diff=diff, **params))
    return runner


@pytest.fixture
def reference(new_db):
    """Table set of a database made by `mlflow db upgrade` on an empty database, per backend (cached)."""
    def get(backend):
        if backend not in _REFERENCE:
            _REFERENCE[backend] = reference_tables(new_db, backend)
        return _REFERENCE[backend]
    return get


REVS = all_revisions()
HEAD = REVS[-1]


@pytest.mark.parametrize('kind', ['empty', 'foreign', 'behind'])
def test_brings_schema_to_head(db_url, kind, run, reference):
    BUILDERS[kind](db_url)
    extra = {'users', 'alembic_version_auth'} if kind == 'foreign' else set()
    tables_before = len(table_names(db_url)) if kind != 'empty' else 0
    expected_before = {'empty': (None, len(REVS)), 'foreign': (None, len(REVS)), 'behind': (REVS[-4], 3)}[kind]
    before = snapshot(db_url)

    # check mode: predicts, touches nothing
    result = run(db_url, check=True, diff=True)
    assert snapshot(db_url) == before
    assert result['changed'] is True
    assert result['state_before'] == kind and result['state'] == 'current'
    assert (result['current_revision'], result['pending']) == expected_before
    assert result['revision'] == HEAD == result['head_revision']
    assert result['tables_before'] == tables_before
    assert result['diff']['before'] == 'revision: %s\n' % (expected_before[0] or 'none')
    assert result['diff']['after'] == 'revision: %s\n' % HEAD
    assert result['diff']['before_header'] and result['diff']['after_header']
    predicted_actions = result['actions']

    # real run
    result = run(db_url)
    assert result['changed'] is True
    assert result['state_before'] == kind and result['state'] == 'current'
    assert (result['current_revision'], result['pending']) == expected_before
    assert result['revision'] == HEAD
    assert result['actions'] == predicted_actions and result['actions']
    assert 'diff' not in result
    assert revision_of(db_url) == [HEAD]
    assert table_names(db_url) == reference(backend_of(db_url)) | extra

    # idempotent
    result = run(db_url, diff=True)
    assert result['changed'] is False and result['state'] == 'current' and result['pending'] == 0
    assert result['actions'] == [] and 'diff' not in result

    # MLflow itself accepts the schema and does not need to migrate it
    mlflow_client_smoke(db_url)
    assert revision_of(db_url) == [HEAD]


@pytest.mark.parametrize('check', [True, False], ids=['check', 'run'])
def test_current_is_unchanged(db_url, check, run):
    BUILDERS['current'](db_url)
    before = snapshot(db_url)
    result = run(db_url, check=check, diff=True)
    assert snapshot(db_url) == before
    assert result['changed'] is False
    assert result['state_before'] == result['state'] == 'current'
    assert result['current_revision'] == result['revision'] == HEAD
    assert result['pending'] == 0 and result['actions'] == []
    assert 'diff' not in result


@pytest.mark.parametrize('check', [True, False], ids=['check', 'run'])
@pytest.mark.parametrize('kind, words', [('ahead', UNKNOWN_REVISION), ('inconsistent', 'inconsistent')])
def test_refuses_ahead_and_inconsistent(db_url, kind, words, check, run):
    BUILDERS[kind](db_url)
    before = snapshot(db_url)
    result = run(db_url, check=check)
    assert snapshot(db_url) == before
    assert result['failed'] is True
    assert words in result['msg']
    if kind == 'ahead':
        assert 'ahead' in result['msg']


@pytest.mark.parametrize('kind', sorted(BUILDERS))
def test_inspected_reports_without_changes(db_url, kind, run):
    BUILDERS[kind](db_url)
    before = snapshot(db_url)
    result = run(db_url, state='inspected')
    assert snapshot(db_url) == before
    assert result['changed'] is False and 'failed' not in result
    assert result['state_before'] == result['state'] == kind
    assert result['revision'] == result['current_revision']
    assert result['head_revision'] == HEAD and result['actions'] == []
    expected_pending = {'empty': len(REVS), 'foreign': len(REVS), 'behind': 3, 'current': 0, 'ahead': None, 'inconsistent': None}
    assert result['pending'] == expected_pending[kind]
    assert result['mlflow_version']


def test_foreign_tables_refused_when_not_allowed(db_url, run):
    make_foreign(db_url)
    before = snapshot(db_url)
    for check in (True, False):
        result = run(db_url, check=check, allow_foreign_tables=False)
        assert result['failed'] is True
        assert 'users' in result['msg'] and 'allow_foreign_tables' in result['msg']
    assert snapshot(db_url) == before


def test_leftover_empty_alembic_version_is_not_foreign(db_url, run):
    """What a failed `mlflow db upgrade` leaves on sqlite: the module recovers from it."""
    make_empty_alembic_version(db_url)
    result = run(db_url, allow_foreign_tables=False)
    assert result['changed'] is True and result['state_before'] == 'foreign' and result['state'] == 'current'
    assert revision_of(db_url) == [HEAD]


def test_missing_sqlite_file(tmp_path, run):
    path = tmp_path / 'mlflow.db'
    url = 'sqlite:///%s' % path
    result = run(url, check=True)
    assert result['changed'] is True and result['state_before'] == 'empty' and result['tables_before'] == 0
    assert not path.exists() and list(tmp_path.iterdir()) == []
    result = run(url, state='inspected')
    assert not path.exists()
    result = run(url)
    assert result['changed'] is True and path.exists() and revision_of(url) == [HEAD]
    assert run(url)['changed'] is False


def test_missing_sqlite_directory_fails(tmp_path, run):
    result = run('sqlite:///%s' % (tmp_path / 'nope' / 'mlflow.db'))
    assert result['failed'] is True and 'does not exist' in result['msg']


def test_password_from_environment(pg_databases, run, monkeypatch):
    url = pg_databases.create()
    passwordless = url.replace(':p%40ss%3Aw%2Frd%25@', '@')
    assert passwordless != url
    monkeypatch.setenv('PGPASSWORD', PG_PASSWORD)
    result = run(passwordless)
    assert result['changed'] is True and result['revision'] == HEAD
    monkeypatch.delenv('PGPASSWORD')
    monkeypatch.setenv('PGPASSFILE', '/nonexistent')
    result = run(passwordless, connect_timeout=5)
    assert result['failed'] is True
    assert 'password' in result['msg']


def test_password_never_in_output(server_databases, run):
    url = server_databases.create()
    outputs = [run(url, check=True, diff=True), run(url, diff=True), run(url, state='inspected'),
               run(url.replace('p%40ss', 'p%40sX'), connect_timeout=5)]
    assert outputs[-1]['failed'] is True
    text = json.dumps(outputs)
    for secret in (PG_PASSWORD, 'p%40ss%3Aw%2Frd%25', 'p@sX:w/rd%', 'p%40sX%3Aw%2Frd%25', 'w/rd%'):
        assert secret not in text


def test_url_from_env_files_never_in_output(server_databases, tmp_path, capsys):
    # The maintenance playbook's db_upgrade passes the server's environment files, not the URL.
    url = server_databases.create()
    env_file = tmp_path / 'server-secrets.env'
    env_file.write_text('MLFLOW_BACKEND_STORE_URI="%s"\n' % url.replace('\\', '\\\\').replace('"', '\\"').replace('$', '\\$'))
    raw = run_main(capsys, db_schema.main, None, check=True, diff=True, env_files=[str(env_file)])
    result = json.loads(raw)
    assert result['changed'] is True and result['state'] == 'current', result
    upgraded = run_main(capsys, db_schema.main, None, env_files=[str(env_file)])
    assert json.loads(upgraded)['changed'] is True
    after = json.loads(run_main(capsys, db_schema.main, None, state='inspected', env_files=[str(env_file)]))
    assert after['state'] == 'current' and after['changed'] is False
    for secret in (PG_PASSWORD, 'p%40ss%3Aw%2Frd%25', url):
        assert secret not in raw and secret not in upgraded
    # Neither db_url nor env_files: a clear error.
    result = json.loads(run_main(capsys, db_schema.main, None, state='inspected'))
    assert result['failed'] is True and 'db_url is required' in result['msg']


def test_postgresql_default_driver_hint(pg_databases, run):
    try:
        import psycopg  # noqa: F401 pylint: disable=unused-import
        pytest.skip('psycopg 3 is installed')
    except ImportError:
        pass
    url = pg_databases.create().replace('postgresql+psycopg2://', 'postgresql://')
    result = run(url)
    assert result['failed'] is True
    assert 'postgresql+psycopg2://' in result['msg'] and "No module named 'psycopg'" in result['msg']


def test_mysql_default_driver_hint(mysql_databases, run):
    try:
        import MySQLdb  # noqa: F401 pylint: disable=unused-import
        pytest.skip('mysqlclient is installed')
    except ImportError:
        pass
    url = mysql_databases.create().replace('mysql+pymysql://', 'mysql://')
    result = run(url)
    assert result['failed'] is True
    assert 'mysql+pymysql://' in result['msg'] and "No module named 'MySQLdb'" in result['msg']
    assert 'p%40ss' not in json.dumps(result)


def test_bad_url(run):
    result = run('not-a-url://user:hunter2@@')
    assert result['failed'] is True and 'hunter2' not in json.dumps(result)
