"""Tests of the server_info module on real sqlite files, PostgreSQL and MariaDB databases.

The module must only read: every test compares a snapshot of the database before and after,
and checks changed=false (also in check mode).
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from ansible_collections.mlops.mlflow.plugins.modules import server_info
from support.db_schema_fixtures import PG_PASSWORD, make_behind, make_current, revision_of, snapshot
from support.module_runner import run_main


@pytest.fixture
def run(capsys):
    def runner(db_url=None, check=False, **params):
        params.setdefault('units', [])
        params.setdefault('url', '')
        out = run_main(capsys, server_info.main, db_url, check=check, **params)
        return json.loads(out)
    return runner


def _populate(db_url):
    """Two experiments, four runs; one run deleted, one experiment deleted (MLflow marks its run deleted too)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=db_url)
    keep = client.create_experiment('keep')
    gone = client.create_experiment('gone')
    runs = [client.create_run(keep).info.run_id for _i in range(3)]
    client.create_run(gone)
    client.delete_run(runs[0])
    client.delete_experiment(gone)


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql', 'mysql'])
@pytest.mark.parametrize('check', [False, True])
def test_current_schema_and_purge_backlog_read_only(new_db, backend, check, run):
    url = new_db(backend)
    make_current(url)
    _populate(url)
    before = snapshot(url)
    result = run(url, check=check)
    assert result['changed'] is False
    db = result['database']
    assert db['error'] is None, db
    assert db['backend'] == backend
    assert db['state'] == 'current' and db['pending'] == 0
    assert db['revision'] == db['head_revision'] == revision_of(url)[0]
    assert (db['deleted_runs'], db['deleted_experiments'], db['runs_in_deleted_experiments']) == (2, 1, 0)
    assert result['mlflow_version']
    assert snapshot(url) == before


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql', 'mysql'])
def test_schema_behind_is_reported_not_migrated(new_db, backend, run):
    url = new_db(backend)
    target, steps = make_behind(url)
    result = run(url)
    assert result['changed'] is False
    assert result['database']['state'] == 'behind'
    assert result['database']['pending'] == steps
    assert result['database']['revision'] == target
    assert revision_of(url) == [target]


def test_missing_sqlite_file_is_empty_and_not_created(tmp_path, run):
    path = tmp_path / 'none.db'
    result = run('sqlite:///%s' % path)
    assert result['database']['state'] == 'empty'
    assert result['database']['deleted_runs'] is None
    assert not path.exists()


def test_url_from_env_files_and_password_never_in_output(new_db, tmp_path, run, capsys):
    url = new_db('postgresql')
    make_current(url)
    server_env = tmp_path / 'server.env'
    server_env.write_text('MLFLOW_HOST="127.0.0.1"\nMLFLOW_PORT="1"\n')
    secrets = tmp_path / 'server-secrets.env'
    secrets.write_text('MLFLOW_BACKEND_STORE_URI=%s\n' % json.dumps(url))
    capsys.readouterr()
    out = run_main(capsys, server_info.main, None, env_files=[str(server_env), str(secrets)], units=[])
    result = json.loads(out)
    assert PG_PASSWORD not in out
    assert result['database']['state'] == 'current'
    assert '***' in result['database']['url']
    # url derived from the env files: port 1 answers nothing -> reported, not failed.
    assert result['health']['url'] == 'http://127.0.0.1:1/health'
    assert result['health']['ok'] is False and result['health']['error']
    assert result.get('failed') is not True


def test_unreachable_database_is_reported_without_password(run):
    url = 'postgresql+psycopg2://mlflow:s3cr%40t-pw@127.0.0.1:1/mlflow'
    result = run(url, connect_timeout=2)
    assert result.get('failed') is not True
    assert result['database']['error']
    assert 's3cr' not in json.dumps(result)
    # (The module also warns; ansible-core de-duplicates warnings per process, so an earlier
    # test in the same pytest process can swallow it: the error field is what is asserted.)
    assert '127.0.0.1' in result['database']['error'] or 'connect' in result['database']['error'].lower()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 pylint: disable=invalid-name
        body = b'OK' if self.path == '/pfx/health' else b'nope'
        self.send_response(200 if body == b'OK' else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


def test_health_ok_and_not_found(run, tmp_path):
    server = http.server.HTTPServer(('127.0.0.1', 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = 'http://127.0.0.1:%d' % server.server_address[1]
        ok = run(None, url=base + '/pfx', database=False)['health']
        assert ok == {'url': base + '/pfx/health', 'ok': True, 'status': 200, 'body': 'OK', 'error': None}
        bad = run(None, url=base, database=False)['health']
        assert bad['ok'] is False and bad['status'] == 404
    finally:
        server.shutdown()


def test_no_database_url_means_no_database_report(run):
    result = run(None)
    assert result['database'] is None and result['health'] is None and result['units'] == {}


def test_units_reported_from_systemctl(run, monkeypatch):
    calls = []

    def fake_run_command(self, argv, **kwargs):  # pylint: disable=unused-argument
        calls.append(argv)
        if argv[2] == 'mlflow-server.service':
            return 0, ('LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n'
                       'MainPID=42\nNRestarts=3\n'), ''
        return 0, 'LoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\nNRestarts=0\n', ''

    monkeypatch.setattr(server_info.AnsibleModule, 'get_bin_path', lambda self, name, *a, **k: '/bin/' + name)
    monkeypatch.setattr(server_info.AnsibleModule, 'run_command', fake_run_command)
    units = run(None, units=['mlflow-server.service', 'mlflow-gateway.service'])['units']
    assert units['mlflow-server.service'] == {'present': True, 'active': True, 'enabled': True, 'active_state': 'active',
                                              'sub_state': 'running', 'unit_file_state': 'enabled', 'main_pid': 42,
                                              'n_restarts': 3}
    assert units['mlflow-gateway.service']['present'] is False
    assert units['mlflow-gateway.service']['active'] is False
    assert all(argv[1] == 'show' for argv in calls)


@pytest.mark.parametrize('params,message', [
    ({'timeout': 0}, 'timeout must be 1 or more'),
    ({'connect_timeout': 0}, 'connect_timeout must be 1 or more'),
    ({'url': 'ftp://x'}, 'url must start with http:// or https://'),
    ({'units': ['mlflow server']}, 'units must be systemd unit names'),
    ({'env_files': ['/nonexistent/server.env']}, 'Cannot read environment file /nonexistent/server.env'),
])
def test_bad_input_fails_naming_it(run, params, message):
    result = run(None, **params)
    assert result.get('failed') is True
    assert message in result['msg']
