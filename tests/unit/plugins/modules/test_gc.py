# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gc module against real sqlite files and real PostgreSQL and MariaDB databases.

The data is made by MLflow itself (MlflowClient on the database URL) with artifacts in a local
directory; one schema per test (MariaDB schema creation costs ~10 s), several module runs each.
One test runs a real `mlflow server` with proxied artifacts (mlflow-artifacts:/).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from urllib.parse import quote

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from ansible_collections.mlops.mlflow.plugins.module_utils import gc as gc_engine
from ansible_collections.mlops.mlflow.plugins.modules import gc
from support.db_schema_fixtures import (
    PG_PASSWORD,
    MYSQL_PASSWORD,
    backend_of,
    engine_for,
    make_behind,
    make_current,
    revision_of,
    snapshot,
)
from support.module_runner import run_main

SECRETS = {PG_PASSWORD, MYSQL_PASSWORD, quote(PG_PASSWORD, safe=''), quote(MYSQL_PASSWORD, safe='')}
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def run(capsys):
    """Run the module; every output, failures included, must be free of the database password."""
    def runner(db_url, check=False, diff=False, **params):
        out = run_main(capsys, gc.main, db_url, check=check, diff=diff, **params)
        for secret in SECRETS:
            assert secret not in out
        return json.loads(out)
    return runner


def client_for(db_url):
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel
    return MlflowClient(tracking_uri=db_url)


def rows(db_url, sql):
    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(sqlalchemy.text(sql)))
    finally:
        engine.dispose()


def execute(db_url, sql, **params):
    engine = engine_for(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(sql), params)
    finally:
        engine.dispose()


def run_ids_in(db_url):
    return {r[0] for r in rows(db_url, 'SELECT run_uuid FROM runs')}


def experiment_ids_in(db_url):
    return {str(r[0]) for r in rows(db_url, 'SELECT experiment_id FROM experiments')}


def model_ids_in(db_url):
    return {r[0] for r in rows(db_url, 'SELECT model_id FROM logged_models')}


def artifact_dir(client, run_id):
    from mlflow.utils.file_utils import local_file_uri_to_path  # pylint: disable=import-outside-toplevel
    return local_file_uri_to_path(client.get_run(run_id).info.artifact_uri)


def make_data(db_url, tmp_path):
    """Two experiments with runs, artifacts and logged models; nothing deleted yet."""
    client = client_for(db_url)
    root = tmp_path / 'artifacts'
    data = {'client': client}
    data['keep_exp'] = client.create_experiment('keep-%s' % uuid.uuid4().hex[:6], artifact_location=(root / 'keep').as_uri())
    data['drop_exp'] = client.create_experiment('drop-%s' % uuid.uuid4().hex[:6], artifact_location=(root / 'drop').as_uri())
    data['runs'] = {}
    for name, exp in (('active', 'keep_exp'), ('old', 'keep_exp'), ('young', 'keep_exp'), ('in_dropped', 'drop_exp')):
        run_id = client.create_run(data[exp]).info.run_id
        client.log_param(run_id, 'p', name)
        client.log_metric(run_id, 'm', 1.0)
        client.log_text(run_id, name, 'notes/%s.txt' % name)
        data['runs'][name] = run_id
    data['models'] = {name: client.create_logged_model(data['keep_exp'], name=name).model_id for name in ('kept', 'dropped')}
    data['dirs'] = {name: artifact_dir(client, run_id) for name, run_id in data['runs'].items()}
    for path in data['dirs'].values():
        assert os.path.isdir(path)
    return data


def forbid_mlflow_gc(monkeypatch):
    """Make any call of MLflow's gc fail the test (undo with monkeypatch.undo())."""
    def refuse(*args, **kwargs):
        raise AssertionError('MLflow gc must not run here')
    monkeypatch.setattr(gc_engine, '_run_mlflow_gc', refuse)


def test_gc_purges_exactly_the_deleted(db_url, tmp_path, run, monkeypatch):
    make_current(db_url)
    data = make_data(db_url, tmp_path)
    client, runs, models, dirs = data['client'], data['runs'], data['models'], data['dirs']
    all_runs = run_ids_in(db_url)

    # A database that cannot be reached or holds no schema: a clean, password-free failure.
    name = make_url(db_url).database
    result = run(db_url.replace(name, name + '_missing'))
    assert result['failed'] is True and result['msg']

    # Nothing deleted: no change, MLflow's gc not even run, the database untouched.
    forbid_mlflow_gc(monkeypatch)
    before = snapshot(db_url)
    for check in (True, False):
        result = run(db_url, check=check, diff=True)
        assert result['changed'] is False and 'diff' not in result
        assert result['counts'] == {'runs': 0, 'experiments': 0, 'logged_models': 0}
        assert result['purged'] == {'runs': [], 'experiments': [], 'logged_models': []}
    assert snapshot(db_url) == before

    client.delete_run(runs['old'])
    client.delete_run(runs['young'])
    client.delete_experiment(data['drop_exp'])  # also marks runs['in_dropped'] deleted
    client.delete_logged_model(models['dropped'])
    # runs['old'] was deleted three days ago
    execute(db_url, 'UPDATE runs SET deleted_time = deleted_time - :ms WHERE run_uuid = :r', ms=3 * DAY_MS, r=runs['old'])
    before = snapshot(db_url)

    # Bad filters and ids the way gc would refuse them: fail naming the problem, nothing deleted.
    for bad in ('30 days', '', '-1d', '1d2x', 'd'):
        result = run(db_url, older_than=bad)
        assert result['failed'] is True
        assert 'older_than' in result['msg'] and '2d8h5m20s' in result['msg']
    result = run(db_url, run_ids=[runs['active']])
    assert result['failed'] is True and runs['active'] in result['msg'] and 'deleted' in result['msg']
    result = run(db_url, run_ids=[runs['young']], older_than='2d')
    assert result['failed'] is True and runs['young'] in result['msg'] and 'older than' in result['msg']
    result = run(db_url, run_ids=['0' * 32])
    assert result['failed'] is True and '0' * 32 in result['msg'] and 'not found' in result['msg']
    result = run(db_url, experiment_ids=[data['keep_exp']], check=True)
    assert result['failed'] is True and data['keep_exp'] in result['msg']
    result = run(db_url, logged_model_ids=[models['kept']])
    assert result['failed'] is True and models['kept'] in result['msg']
    assert snapshot(db_url) == before

    # older_than: only the run deleted three days ago qualifies
    result = run(db_url, older_than='2d', check=True)
    assert result['changed'] is True
    assert result['purged'] == {'runs': [runs['old']], 'experiments': [], 'logged_models': []}
    result = run(db_url, older_than='4d')
    assert result['changed'] is False and result['counts'] == {'runs': 0, 'experiments': 0, 'logged_models': 0}
    assert snapshot(db_url) == before

    # check mode lists exactly the deleted things, deletes nothing
    expected = {
        'runs': sorted([runs['old'], runs['young'], runs['in_dropped']]),
        'experiments': [data['drop_exp']],
        'logged_models': [models['dropped']],
    }
    result = run(db_url, check=True, diff=True)
    assert result['changed'] is True
    assert result['purged'] == expected
    assert result['counts'] == {'runs': 3, 'experiments': 1, 'logged_models': 1}
    assert result['diff']['before'] == 'runs: 3\nexperiments: 1\nlogged_models: 1\n'
    assert result['diff']['after'] == 'runs: 0\nexperiments: 0\nlogged_models: 0\n'
    assert snapshot(db_url) == before
    monkeypatch.undo()

    # the real thing, first with older_than
    result = run(db_url, older_than='1.5d', diff=True)
    assert result['changed'] is True and result['purged']['runs'] == [runs['old']]
    assert result['purged']['experiments'] == [] and result['purged']['logged_models'] == []
    assert result['diff']['before'] == 'runs: 3\nexperiments: 1\nlogged_models: 1\n'
    assert result['diff']['after'] == 'runs: 2\nexperiments: 1\nlogged_models: 1\n'
    assert not os.path.exists(dirs['old'])
    assert run_ids_in(db_url) == all_runs - {runs['old']}

    # then everything that is deleted
    result = run(db_url, diff=True)
    assert result['changed'] is True
    assert result['purged'] == {'runs': sorted([runs['young'], runs['in_dropped']]), 'experiments': [data['drop_exp']],
                                'logged_models': [models['dropped']]}
    assert result['counts'] == {'runs': 2, 'experiments': 1, 'logged_models': 1}
    assert result['artifact_warnings'] == []
    assert result['diff']['after'] == 'runs: 0\nexperiments: 0\nlogged_models: 0\n'
    assert isinstance(result['duration_s'], float)
    assert run_ids_in(db_url) == {runs['active']}
    assert data['keep_exp'] in experiment_ids_in(db_url) and data['drop_exp'] not in experiment_ids_in(db_url)
    assert model_ids_in(db_url) == {models['kept']}
    assert not os.path.exists(dirs['young']) and not os.path.exists(dirs['in_dropped'])
    assert os.path.isfile(os.path.join(dirs['active'], 'notes', 'active.txt'))
    assert rows(db_url, "SELECT COUNT(*) FROM params WHERE run_uuid = '%s'" % runs['active']) == [(1,)]
    assert rows(db_url, "SELECT COUNT(*) FROM metrics WHERE run_uuid = '%s'" % runs['young']) == [(0,)]

    # idempotent, with the URL taken from the server's environment file this time
    env_file = tmp_path / 'server-secrets.env'
    env_file.write_text('MLFLOW_BACKEND_STORE_URI="%s"\n' % db_url)
    after = snapshot(db_url)
    result = run(None, env_files=[str(env_file)], diff=True)
    assert result['changed'] is False and result['counts'] == {'runs': 0, 'experiments': 0, 'logged_models': 0}
    assert snapshot(db_url) == after


def test_refuses_a_schema_behind_without_migrating(db_url, run):
    target, dummy = make_behind(db_url)
    before = snapshot(db_url)
    for check in (True, False):
        result = run(db_url, check=check)
        assert result['failed'] is True
        assert 'behind' in result['msg'] and 'db_schema' in result['msg'] and 'Nothing was done' in result['msg']
        assert revision_of(db_url) == [target]
    assert snapshot(db_url) == before


def test_refuses_to_drop_restored_runs_with_their_experiment(new_db, tmp_path, run):
    db_url = new_db('sqlite')
    make_current(db_url)
    data = make_data(db_url, tmp_path)
    client = data['client']
    client.delete_experiment(data['drop_exp'])
    client.restore_run(data['runs']['in_dropped'])
    before = snapshot(db_url)
    result = run(db_url)
    assert result['failed'] is True
    assert data['runs']['in_dropped'] in result['msg'] and 'not deleted' in result['msg']
    assert snapshot(db_url) == before


def test_unresolvable_artifact_uri_is_a_warning(new_db, tmp_path, run):
    """MLflow skips artifacts it cannot resolve with a (yellow) warning and still purges the run."""
    db_url = new_db('sqlite')
    make_current(db_url)
    data = make_data(db_url, tmp_path)
    run_id = data['runs']['young']
    data['client'].delete_run(run_id)
    execute(db_url, 'UPDATE runs SET artifact_uri = :u WHERE run_uuid = :r', u='http://:80/x/artifacts', r=run_id)
    result = run(db_url)
    assert result['changed'] is True and result['purged']['runs'] == [run_id]
    assert len(result['artifact_warnings']) == 2
    assert any('Unable to resolve the provided artifact URL' in w for w in result['artifact_warnings'])
    assert not any('\x1b' in w for w in result['artifact_warnings'])


# ----------------------------------------------------------------------------- proxied artifacts

def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` (1 worker, no job runner) serving artifacts from a local directory."""
    port = free_port()
    db_url = 'sqlite:///%s' % (tmp_path / 'server.db')
    destination = tmp_path / 'destination'
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY='true', MLFLOW_SERVER_ENABLE_JOB_EXECUTION='false')
    env.pop('MLFLOW_TRACKING_URI', None)
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), 'mlflow')
    with open(tmp_path / 'server.log', 'wb') as log:
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [mlflow_cli, 'server', '--backend-store-uri', db_url, '--default-artifact-root', 'mlflow-artifacts:/',
             '--artifacts-destination', destination.as_uri(), '--serve-artifacts', '--host', '127.0.0.1',
             '--port', str(port), '--workers', '1'],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = 'http://127.0.0.1:%d' % port
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + '/health', timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail('mlflow server did not start: %s' % (tmp_path / 'server.log').read_text()[-2000:])
            time.sleep(0.5)
        yield {'url': url, 'db_url': db_url, 'destination': destination}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_proxied_artifacts_need_the_server(mlflow_server, run):
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    client = MlflowClient(tracking_uri=mlflow_server['url'])
    exp = client.create_experiment('proxied')
    kept, dropped = (client.create_run(exp).info.run_id for dummy in range(2))
    for run_id in (kept, dropped):
        client.log_text(run_id, run_id, 'a.txt')
    assert client.get_run(dropped).info.artifact_uri.startswith('mlflow-artifacts:')
    client.delete_run(dropped)
    dest = mlflow_server['destination']
    dropped_dir = dest / exp / dropped / 'artifacts'
    assert (dropped_dir / 'a.txt').is_file()
    db_url = mlflow_server['db_url']

    # Without the server MLflow's gc would fail on the first such run: refuse up front.
    before = snapshot(db_url)
    for check in (True, False):
        result = run(db_url, check=check)
        assert result['failed'] is True and 'tracking_uri' in result['msg'] and 'mlflow-artifacts' in result['msg']
    result = run(db_url, tracking_uri='http://127.0.0.1:%d' % free_port())
    assert result['failed'] is True and 'does not answer' in result['msg']
    assert snapshot(db_url) == before and (dropped_dir / 'a.txt').is_file()

    result = run(db_url, tracking_uri=mlflow_server['url'])
    assert result['changed'] is True and result['purged']['runs'] == [dropped]
    assert result['artifact_warnings'] == []
    assert not dropped_dir.exists()
    assert (dest / exp / kept / 'artifacts' / 'a.txt').is_file()
    assert run_ids_in(db_url) == {kept}
    assert backend_of(db_url) == 'sqlite'
