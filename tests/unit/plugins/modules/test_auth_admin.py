# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""auth_admin against real sqlite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from werkzeug.security import check_password_hash

from ansible_collections.mlops.mlflow.plugins.modules import auth_admin
from support.db_schema_fixtures import engine_for, make_current
from support.module_runner import run_main

PASSWORD = 'Admin-canary-pw-0001'
NEW_PASSWORD = 'Admin-rotated-pw-0002'
# Secrets that must never be printed: the admin passwords and the test servers' DB password.
SECRETS = (PASSWORD, NEW_PASSWORD, 'p@ss:w/rd%', 'p%40ss%3Aw%2Frd%25')


@pytest.fixture(autouse=True)
def auth_extra(monkeypatch):
    """The auth store imports mlflow.server.auth, which needs Flask-WTF (mlflow[auth]).

    On the hosts the role installs the auth extra. The development venv pins plain mlflow,
    so a stand-in CSRFProtect is provided when Flask-WTF is missing: the store code under
    test never uses CSRF (that guards the UI's forms only).
    """
    if importlib.util.find_spec('flask_wtf') is None:
        csrf = types.ModuleType('flask_wtf.csrf')
        csrf.CSRFProtect = type('CSRFProtect', (), {'__init__': lambda self, *a, **k: None,
                                                    'init_app': lambda self, *a, **k: None,
                                                    'exempt': lambda self, view: view})
        package = types.ModuleType('flask_wtf')
        package.csrf = csrf
        monkeypatch.setitem(sys.modules, 'flask_wtf', package)
        monkeypatch.setitem(sys.modules, 'flask_wtf.csrf', csrf)


@pytest.fixture(params=['sqlite', 'postgresql'])
def auth_db_url(request, new_db):
    """Backends where MLflow's basic-auth migrations work (not MySQL/MariaDB, see below)."""
    return new_db(request.param)


@pytest.fixture
def run(capsys):
    def runner(db_url, check=False, diff=False, **params):
        params.setdefault('password', PASSWORD)
        out = run_main(capsys, auth_admin.main, db_url, check=check, diff=diff, **params)
        for secret in SECRETS:
            assert secret not in out
        return json.loads(out)
    return runner


def users(db_url):
    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            if 'users' not in sqlalchemy.inspect(conn).get_table_names():
                return None
            rows = conn.execute(sqlalchemy.text('SELECT username, password_hash, is_admin FROM users'))
            return {r[0]: (r[1], bool(r[2])) for r in rows}
    finally:
        engine.dispose()


def table_names(db_url):
    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            return sorted(sqlalchemy.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_check_mode_on_an_empty_database_predicts_and_writes_nothing(run, db_url):
    result = run(db_url, check=True, diff=True)
    assert result['changed'] is True
    assert result['user_created'] is True
    assert result['revision_before'] is None
    assert result['revision'] == result['head_revision']
    assert 'create the admin user' in result['actions']
    assert 'password matches: True' in result['diff']['after']
    if make_url(db_url).get_backend_name() != 'sqlite':
        assert table_names(db_url) == []


def test_check_mode_does_not_create_a_sqlite_file(run, tmp_path):
    path = tmp_path / 'basic_auth.db'
    result = run('sqlite:///%s' % path, check=True)
    assert result['changed'] is True
    assert not path.exists()


def test_create_then_nothing_to_do(run, auth_db_url):
    done = run(auth_db_url)
    assert done['changed'] is True
    assert done['user_created'] is True
    assert done['revision'] == done['head_revision']
    stored = users(auth_db_url)
    assert list(stored) == ['admin']
    assert stored['admin'][1] is True
    assert check_password_hash(stored['admin'][0], PASSWORD)

    again = run(auth_db_url)
    assert again['changed'] is False
    assert again['actions'] == []
    check = run(auth_db_url, check=True)
    assert check['changed'] is False


def test_rotation_sets_the_new_password_once(run, auth_db_url):
    run(auth_db_url)
    predicted = run(auth_db_url, check=True, password=NEW_PASSWORD)
    assert predicted['changed'] is True
    assert predicted['password_updated'] is True
    assert check_password_hash(users(auth_db_url)['admin'][0], PASSWORD)

    done = run(auth_db_url, password=NEW_PASSWORD)
    assert done['changed'] is True
    assert done['actions'] == ['set the admin password']
    stored_hash = users(auth_db_url)['admin'][0]
    assert check_password_hash(stored_hash, NEW_PASSWORD)
    assert not check_password_hash(stored_hash, PASSWORD)

    assert run(auth_db_url, password=NEW_PASSWORD)['changed'] is False


def test_an_existing_user_is_made_admin_and_keeps_other_users(run, auth_db_url):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore  # pylint: disable=import-outside-toplevel

    store = SqlAlchemyStore()
    store.init_db(auth_db_url)
    store.create_user('ops', PASSWORD, is_admin=False)
    store.create_user('alice', 'alice-password-123', is_admin=False)
    store.engine.dispose()

    result = run(auth_db_url, username='ops')
    assert result['changed'] is True
    assert result['admin_granted'] is True
    assert result['password_updated'] is False
    stored = users(auth_db_url)
    assert stored['ops'][1] is True
    assert stored['alice'][1] is False
    assert run(auth_db_url, username='ops')['changed'] is False


def test_a_tracking_database_is_refused(run, db_url):
    make_current(db_url)
    result = run(db_url)
    assert result['failed']
    assert 'tracking database' in result['msg']
    assert 'users' not in table_names(db_url)


@pytest.mark.parametrize('password', ['short-pw', 'password1234'])
def test_weak_passwords_are_refused_without_echo(capsys, tmp_path, password):
    out = run_main(capsys, auth_admin.main, 'sqlite:///%s' % (tmp_path / 'a.db'), password=password)
    result = json.loads(out)
    assert result['failed']
    assert 'password' in result['msg']
    assert password not in out
    assert not (tmp_path / 'a.db').exists()


def test_config_file_supplies_the_url(run, new_db, tmp_path):
    db_url = new_db('postgresql')
    ini = tmp_path / 'basic_auth.ini'
    # MLflow reads the ini with configparser's interpolation: % is written %%.
    ini.write_text('[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\nadmin_username = admin\n'
                   % db_url.replace('%', '%%'), encoding='utf-8')
    result = run(None, config_file=str(ini))
    assert result['changed'] is True
    assert check_password_hash(users(db_url)['admin'][0], PASSWORD)
    assert result['invocation']['module_args']['db_url'] != db_url


def test_unreachable_database_message_masks_the_password(run):
    result = run('postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd%25@127.0.0.1:9/auth', connect_timeout=2)
    assert result['failed']
    assert '***' in result['msg']


def test_mysql_auth_migrations_fail_cleanly(run, new_db):
    """MLflow 3.17's auth migrations name two foreign keys fk_user_id; MySQL/MariaDB refuse that (errno 121)."""
    db_url = new_db('mysql')
    result = run(db_url)
    assert result['failed']
    assert 'use PostgreSQL or SQLite for the basic-auth database' in result['msg']
