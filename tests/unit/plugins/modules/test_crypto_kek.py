# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""crypto_kek against real databases holding secrets written by MLflow's own gateway store."""

from __future__ import annotations

import json

import pytest

from ansible_collections.mlops.mlflow.plugins.modules import crypto_kek
from support.db_schema_fixtures import engine_for, make_current
from support.module_runner import run_main

OLD = 'old-passphrase-0123456789abcdef-0123456789'
NEW = 'new-passphrase-fedcba9876543210-9876543210'
API_KEY = 'sk-canary-provider-key-42'


@pytest.fixture
def run(capsys):
    def runner(db_url, check=False, diff=False, **params):
        out = run_main(capsys, crypto_kek.main, db_url, check=check, diff=diff, **params)
        for secret in (OLD, NEW, API_KEY):
            assert secret not in out
        return json.loads(out)
    return runner


def store_for(db_url, tmp_path, monkeypatch, passphrase, version):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # pylint: disable=import-outside-toplevel

    monkeypatch.setenv('MLFLOW_CRYPTO_KEK_PASSPHRASE', passphrase)
    monkeypatch.setenv('MLFLOW_CRYPTO_KEK_VERSION', str(version))
    return SqlAlchemyStore(db_url, str(tmp_path / 'artifacts'))


def kek_versions(db_url):
    import sqlalchemy  # pylint: disable=import-outside-toplevel

    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sqlalchemy.text('SELECT kek_version FROM secrets')))
    finally:
        engine.dispose()


@pytest.fixture
def with_secrets(db_url, tmp_path, monkeypatch):
    make_current(db_url)
    store = store_for(db_url, tmp_path, monkeypatch, OLD, 1)
    ids = [store.create_gateway_secret('key-%d' % i, {'api_key': API_KEY}, provider='openai').secret_id for i in range(3)]
    monkeypatch.delenv('MLFLOW_CRYPTO_KEK_PASSPHRASE')
    monkeypatch.delenv('MLFLOW_CRYPTO_KEK_VERSION')
    return db_url, ids


def test_no_secrets_table_is_no_change(run, new_db):
    result = run(new_db('sqlite'), passphrase=NEW)
    assert result['changed'] is False
    assert result['secrets'] == 0


def test_matching_passphrase_is_no_change(run, with_secrets):
    db_url = with_secrets[0]
    result = run(db_url, passphrase=OLD, version=1)
    assert result['changed'] is False
    assert result['secrets'] == 3
    assert result['versions_before'] == {'1': 3}


def test_new_passphrase_without_rotation_is_refused(run, with_secrets):
    db_url = with_secrets[0]
    result = run(db_url, passphrase=NEW, version=1)
    assert result['failed']
    assert 'do not decrypt' in result['msg']
    assert kek_versions(db_url) == [1, 1, 1]


def test_rotation_check_run_rerun(run, with_secrets, tmp_path, monkeypatch):
    db_url, ids = with_secrets
    predicted = run(db_url, check=True, diff=True, passphrase=NEW, previous_passphrase=OLD, version=2)
    assert predicted['changed'] is True
    assert predicted['rotated'] == 3
    assert predicted['versions_after'] == {'2': 3}
    assert 'kek_version 2: 3 secrets' in predicted['diff']['after']
    assert kek_versions(db_url) == [1, 1, 1]

    done = run(db_url, passphrase=NEW, previous_passphrase=OLD, version=2)
    assert done['changed'] is True
    assert done['rotated'] == 3
    assert kek_versions(db_url) == [2, 2, 2]

    again = run(db_url, passphrase=NEW, previous_passphrase=OLD, version=2)
    assert again['changed'] is False
    assert again['rotated'] == 0

    store = store_for(db_url, tmp_path, monkeypatch, NEW, 2)
    assert all(store._get_decrypted_secret(i) == {'api_key': API_KEY} for i in ids)  # pylint: disable=protected-access


def test_wrong_previous_passphrase_changes_nothing(run, with_secrets):
    db_url = with_secrets[0]
    result = run(db_url, passphrase=NEW, previous_passphrase='not-the-old-one-0123456789abcdef', version=2)
    assert result['failed']
    assert 'previous_passphrase' in result['msg']
    assert kek_versions(db_url) == [1, 1, 1]


def test_rotation_needs_previous_passphrase(run, with_secrets):
    db_url = with_secrets[0]
    result = run(db_url, passphrase=NEW, version=2)
    assert result['failed']
    assert 'give previous_passphrase' in result['msg']


def test_skipping_a_version_is_refused(run, with_secrets):
    db_url = with_secrets[0]
    result = run(db_url, passphrase=NEW, previous_passphrase=OLD, version=3)
    assert result['failed']
    assert 'one version at a time' in result['msg']


def test_configured_version_older_than_the_database_is_refused(run, with_secrets):
    db_url = with_secrets[0]
    assert run(db_url, passphrase=NEW, previous_passphrase=OLD, version=2)['changed']
    result = run(db_url, passphrase=NEW, version=1)
    assert result['failed']
    assert 'newer than the configured version' in result['msg']
