"""Tests of plugins/module_utils/maintenance_cli.py: the host-side command the maintenance timers run.

The command line is mapped onto the engines' keyword arguments (checked against a recording
fake engine), secrets never reach stdout/stderr, errors give exit status 1, and the real
engines run end to end on a SQLite database with deleted runs and experiments.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.mlops.mlflow.plugins.module_utils import maintenance_cli as cli
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import SchemaError

PASSWORD = 'p@ss:w/rd%'
PG_URL = 'postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd%25@db.example.com:5432/mlflow'
AWS_SECRET = 'aws-Secret/key+canary=9'


class Recorder:
    """A fake engine function: records its keyword arguments, logs, returns or raises."""

    def __init__(self, result=None, error=None, say=()):
        self.kwargs = None
        self.result = result if result is not None else {'changed': False}
        self.error = error
        self.say = say

    def __call__(self, log=print, **kwargs):
        self.kwargs = kwargs
        for line in self.say:
            log(line)
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture(autouse=True)
def _restore_environ():
    """--env-file puts variables into os.environ (as on a host): undo that after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run(argv, monkeypatch, engine=None, env=None):
    """main(argv) with a clean MLFLOW_* / AWS_* environment; returns (rc, stdout, stderr)."""
    for name in list(os.environ):
        if name.startswith(('MLFLOW_', 'AWS_')):
            monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    if engine is not None:
        monkeypatch.setattr(cli, '_engine', lambda command: engine)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(argv, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- command line -> engine

def test_gc_defaults(monkeypatch):
    engine = Recorder(result={'changed': False, 'counts': {'runs': 0, 'experiments': 0, 'logged_models': 0}})
    rc, out, dummy = run(['gc'], monkeypatch, engine, {'MLFLOW_BACKEND_STORE_URI': 'sqlite:////x/mlflow.db'})
    assert rc == 0
    assert engine.kwargs == {
        'db_url': 'sqlite:////x/mlflow.db', 'older_than': None, 'run_ids': None, 'experiment_ids': None,
        'logged_model_ids': None, 'tracking_uri': None, 'artifacts_destination': None, 'check_mode': False,
        'connect_timeout': 10}
    last = out.splitlines()[-1]
    assert last.startswith('summary: gc changed=false runs=0 experiments=0 logged_models=0 duration=')


def test_gc_options(monkeypatch):
    engine = Recorder()
    argv = ['--check', '--connect-timeout', '3', 'gc', '--older-than', '30d', '--run-ids', 'a, b,,c',
            '--experiment-ids', '4', '--logged-model-ids', 'm-1', '--tracking-uri', 'http://127.0.0.1:5000',
            '--artifacts-destination', 's3://b/p']
    rc, dummy, dummy = run(argv, monkeypatch, engine, {'MLFLOW_BACKEND_STORE_URI': 'sqlite:////x/mlflow.db'})
    assert rc == 0
    assert engine.kwargs == {
        'db_url': 'sqlite:////x/mlflow.db', 'older_than': '30d', 'run_ids': ['a', 'b', 'c'], 'experiment_ids': ['4'],
        'logged_model_ids': ['m-1'], 'tracking_uri': 'http://127.0.0.1:5000', 'artifacts_destination': 's3://b/p',
        'check_mode': True, 'connect_timeout': 3}


def test_purge_defaults_and_options(monkeypatch):
    engine = Recorder()
    env = {'MLFLOW_BACKEND_STORE_URI': 'sqlite:////x/mlflow.db'}
    assert run(['purge'], monkeypatch, engine, env)[0] == 0
    assert engine.kwargs == {
        'db_url': 'sqlite:////x/mlflow.db', 'scope': 'all', 'older_than': None, 'experiment_ids': None,
        'experiment_names': None, 'run_ids': None, 'batch_size': 500, 'delete_artifacts': True,
        'keep_registered_runs': True, 'tracking_uri': None, 'check_mode': False, 'connect_timeout': 10}
    assert run(['purge', '--scope', 'runs', '--older-than', '1d12h', '--experiment-ids', '1,2',
                '--experiment-names', 'a,b', '--experiment-names', 'c', '--run-ids', 'r1', '--batch-size', '50',
                '--keep-artifacts', '--include-registered-runs', '--tracking-uri', 'http://127.0.0.1:5000'],
               monkeypatch, engine, env)[0] == 0
    assert engine.kwargs == {
        'db_url': 'sqlite:////x/mlflow.db', 'scope': 'runs', 'older_than': '1d12h', 'experiment_ids': ['1', '2'],
        'experiment_names': ['a,b', 'c'], 'run_ids': ['r1'], 'batch_size': 50, 'delete_artifacts': False,
        'keep_registered_runs': False, 'tracking_uri': 'http://127.0.0.1:5000', 'check_mode': False,
        'connect_timeout': 10}


def test_backup_options(monkeypatch):
    engine = Recorder(result={'changed': True, 'path': '/b/mlflow-x.pgdump', 'size': 10, 'removed': ['/b/old'],
                              'kept': ['/b/mlflow-x.pgdump']})
    rc, out, dummy = run(['backup', '--dest-dir', '/b', '--keep', '3', '--prefix', 'nightly'],
                         monkeypatch, engine, {'MLFLOW_BACKEND_STORE_URI': 'sqlite:////x/mlflow.db'})
    assert rc == 0
    assert engine.kwargs == {'db_url': 'sqlite:////x/mlflow.db', 'dest_dir': '/b', 'keep': 3, 'prefix': 'nightly',
                             'dump_command': None, 'check_mode': False, 'connect_timeout': 10}
    assert out.splitlines()[-1].startswith('summary: backup changed=true path=/b/mlflow-x.pgdump size=10 removed=1 kept=1 ')


@pytest.mark.parametrize('argv', [
    [],
    ['compact'],
    ['purge', '--scope', 'everything'],
    ['purge', '--batch-size', '0'],
    ['backup'],
    ['backup', '--dest-dir', '/b', '--keep', 'many'],
    ['--connect-timeout', '0', 'gc'],
])
def test_bad_command_lines_exit_2(argv, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        run(argv, monkeypatch, Recorder(), {'MLFLOW_BACKEND_STORE_URI': 'sqlite:////x/mlflow.db'})
    assert exc.value.code == 2
    assert 'usage:' in capsys.readouterr().err


def test_summary_line_per_table():
    line = cli.summary_line('purge', {'changed': True, 'runs': 2, 'experiments': 1,
                                      'counts': {'metrics': 40, 'params': 0, 'runs': 2},
                                      'artifacts': {'deleted': 2, 'failed': ['x']}}, True, 1.234)
    assert line == ('summary: purge changed=true check_mode=true runs=2 experiments=1 rows[metrics=40 runs=2] '
                    'artifacts[deleted=2 failed=1] duration=1.23s')


# --------------------------------------------------------------------------- errors and secrets

def test_no_database_url_fails_with_a_hint(monkeypatch):
    engine = Recorder()
    rc, out, err = run(['purge'], monkeypatch, engine)
    assert rc == 1
    assert engine.kwargs is None
    assert 'MLFLOW_BACKEND_STORE_URI is not set' in err
    assert 'summary:' not in out


def test_engine_error_is_masked_and_exits_1(monkeypatch):
    message = 'connect failed for %s (%s) with key %s' % (PG_URL, PASSWORD, AWS_SECRET)
    engine = Recorder(error=SchemaError(message), say=['progress with %s and p%%40ss%%3Aw%%2Frd%%25' % PASSWORD])
    rc, out, err = run(['purge'], monkeypatch, engine,
                       {'MLFLOW_BACKEND_STORE_URI': PG_URL, 'AWS_SECRET_ACCESS_KEY': AWS_SECRET})
    assert rc == 1
    assert 'mlflow-maintenance purge: error: connect failed' in err
    for secret in (PASSWORD, 'p%40ss%3Aw%2Frd%25', AWS_SECRET, PG_URL):
        assert secret not in out + err


def test_partial_result_still_gets_a_summary(monkeypatch):
    error = SchemaError('gc failed half-way')
    error.result = {'changed': True, 'counts': {'runs': 3, 'experiments': 0, 'logged_models': 0}}
    rc, out, err = run(['gc'], monkeypatch, Recorder(error=error), {'MLFLOW_BACKEND_STORE_URI': 'sqlite:////x/m.db'})
    assert rc == 1
    assert 'summary: gc changed=true runs=3' in out
    assert 'gc failed half-way' in err


def test_unexpected_error_shows_a_masked_traceback(monkeypatch):
    rc, out, err = run(['backup', '--dest-dir', '/b'], monkeypatch, Recorder(error=RuntimeError('boom ' + PASSWORD)),
                       {'MLFLOW_BACKEND_STORE_URI': PG_URL})
    assert rc == 1
    assert 'Traceback' in err and 'unexpected RuntimeError: boom ********' in err
    assert PASSWORD not in out + err


def test_env_files_are_read_and_their_secrets_masked(tmp_path, monkeypatch):
    env = tmp_path / 'server.env'
    env.write_text('MLFLOW_HOST="127.0.0.1"\n')
    secrets = tmp_path / 'server-secrets.env'
    secrets.write_text('MLFLOW_BACKEND_STORE_URI="%s"\nAWS_SECRET_ACCESS_KEY="%s"\n' % (PG_URL, AWS_SECRET))
    engine = Recorder(say=['key is %s' % AWS_SECRET])
    rc, out, err = run(['--env-file', str(env), '--env-file', str(secrets), 'gc'], monkeypatch, engine)
    assert rc == 0, err
    assert engine.kwargs['db_url'] == PG_URL
    assert os.environ['AWS_SECRET_ACCESS_KEY'] == AWS_SECRET
    assert AWS_SECRET not in out and 'key is ********' in out


def test_unreadable_env_file_fails(tmp_path, monkeypatch):
    engine = Recorder()
    rc, dummy, err = run(['--env-file', str(tmp_path / 'missing.env'), 'gc'], monkeypatch, engine)
    assert rc == 1 and engine.kwargs is None
    assert 'Cannot read environment file' in err


# --------------------------------------------------------------------------- the real engines on SQLite

@pytest.fixture(scope='module')
def seeded_db(tmp_path_factory):
    """A SQLite tracking database: experiment 'keep' with a live and a deleted run, a deleted experiment 'gone'."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp('seed')
    url = 'sqlite:///%s' % (base / 'mlflow.db')
    client = MlflowClient(tracking_uri=url)
    ids = {}
    for name in ('keep', 'gone'):
        experiment_id = client.create_experiment(name, artifact_location=str(base / 'artifacts' / name))
        for label in ('live', 'deleted'):
            run_ = client.create_run(experiment_id)
            client.log_param(run_.info.run_id, 'alpha', '0.5')
            client.log_metric(run_.info.run_id, 'loss', 0.25, step=1)
            ids['%s-%s' % (name, label)] = run_.info.run_id
        client.delete_run(ids['%s-deleted' % name])
        ids[name] = experiment_id
    client.delete_experiment(ids['gone'])
    # Deleted two days ago: an age filter must not depend on how fast the tests after the seed run
    # (a '1s' filter raced the seed once the CLI stopped importing MLflow and started in ~0.3 s).
    two_days_ago = int((time.time() - 2 * 86400) * 1000)
    with sqlite3.connect(base / 'mlflow.db') as conn:
        conn.execute("UPDATE runs SET deleted_time = ? WHERE lifecycle_stage = 'deleted'", (two_days_ago,))
        conn.execute("UPDATE experiments SET last_update_time = ? WHERE lifecycle_stage = 'deleted'", (two_days_ago,))
    return base / 'mlflow.db', ids


@pytest.fixture
def db(seeded_db, tmp_path):
    path = tmp_path / 'mlflow.db'
    shutil.copy(seeded_db[0], path)
    return 'sqlite:///%s' % path, path, seeded_db[1]


def _count_runs(path):
    with sqlite3.connect(path) as conn:
        return conn.execute('SELECT COUNT(*) FROM runs').fetchone()[0]


def test_purge_on_sqlite_check_then_real_then_nothing(db, monkeypatch):
    pytest.importorskip('ansible_collections.mlops.mlflow.plugins.module_utils.purge')
    url, path, ids = db
    env = {'MLFLOW_BACKEND_STORE_URI': url}
    rc, out, err = run(['--check', 'purge'], monkeypatch, env=env)
    assert rc == 0, err
    assert out.splitlines()[-1].startswith('summary: purge changed=true check_mode=true runs=3 experiments=1 rows[')
    assert _count_runs(path) == 4
    rc, out, err = run(['purge'], monkeypatch, env=env)
    assert rc == 0, err
    summary = out.splitlines()[-1]
    assert summary.startswith('summary: purge changed=true runs=3 experiments=1 rows[') and 'params=3' in summary
    assert _count_runs(path) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute('SELECT run_uuid FROM runs').fetchone()[0] == ids['keep-live']
    rc, out, dummy = run(['purge'], monkeypatch, env=env)
    assert rc == 0 and out.splitlines()[-1].startswith('summary: purge changed=false runs=0 experiments=0 rows[]')


def test_gc_on_sqlite(db, monkeypatch):
    pytest.importorskip('ansible_collections.mlops.mlflow.plugins.module_utils.gc')
    url, path, ids = db
    rc, out, err = run(['gc', '--run-ids', ids['keep-deleted']], monkeypatch, env={'MLFLOW_BACKEND_STORE_URI': url})
    assert rc == 0, err
    # MLflow's gc also purges every deleted experiment (with its runs) when given run ids.
    assert out.splitlines()[-1].startswith('summary: gc changed=true runs=3 experiments=1 logged_models=0 ')
    assert _count_runs(path) == 1


def test_gc_refuses_an_unknown_run_id(db, monkeypatch):
    pytest.importorskip('ansible_collections.mlops.mlflow.plugins.module_utils.gc')
    url, path, dummy = db
    rc, dummy, err = run(['gc', '--run-ids', 'nope'], monkeypatch, env={'MLFLOW_BACKEND_STORE_URI': url})
    assert rc == 1 and 'error:' in err
    assert _count_runs(path) == 4


def test_backup_on_sqlite(db, tmp_path, monkeypatch):
    pytest.importorskip('ansible_collections.mlops.mlflow.plugins.module_utils.backup')
    url, dummy, dummy = db
    dest = tmp_path / 'backups'
    for dummy in range(2):
        rc, out, err = run(['backup', '--dest-dir', str(dest), '--keep', '1'], monkeypatch,
                           env={'MLFLOW_BACKEND_STORE_URI': url})
        assert rc == 0, err
    files = sorted(dest.iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert out.splitlines()[-1].startswith('summary: backup changed=true path=%s ' % files[0])
    assert ' removed=1 kept=1 ' in out.splitlines()[-1]


def test_runs_as_python_dash_m_without_ansible_on_the_path(db, tmp_path):
    """What the timer's ExecStart does: the copied files on PYTHONPATH, no Ansible importable."""
    pytest.importorskip('ansible_collections.mlops.mlflow.plugins.module_utils.purge')
    url, dummy, dummy = db
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    code = tmp_path / 'maintenance' / 'ansible_collections' / 'mlops' / 'mlflow' / 'plugins' / 'module_utils'
    code.mkdir(parents=True)
    # The files the role copies for the timers (roles/mlflow_server/vars/maintenance.yml), nothing more.
    with open(os.path.join(root, 'roles', 'mlflow_server', 'vars', 'maintenance.yml'), encoding='utf-8') as handle:
        sources = yaml.safe_load(handle)['_mlflow_server_maintenance_sources']
    for name in sources:
        shutil.copy(os.path.join(root, 'plugins', 'module_utils', name + '.py'), code)
    # A stand-in 'ansible' package that fails on import: the CLI must not need Ansible.
    poison = tmp_path / 'poison' / 'ansible'
    poison.mkdir(parents=True)
    (poison / '__init__.py').write_text('raise ImportError("Ansible must not be imported here")\n')
    env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'MLFLOW_BACKEND_STORE_URI': url,
           'PYTHONPATH': '%s:%s' % (tmp_path / 'maintenance', tmp_path / 'poison'), 'MLFLOW_DISABLE_TELEMETRY': 'true'}
    proc = subprocess.run([sys.executable, '-m', 'ansible_collections.mlops.mlflow.plugins.module_utils.maintenance_cli',
                           '--check', 'purge', '--older-than', '1d'],
                          env=env, capture_output=True, text=True, timeout=300, check=False, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith('summary: purge changed=true check_mode=true runs=3 experiments=1')
    proc = subprocess.run([sys.executable, '-m', 'ansible_collections.mlops.mlflow.plugins.module_utils.maintenance_cli',
                           'purge'], env=dict(env, MLFLOW_BACKEND_STORE_URI=''),
                          capture_output=True, text=True, timeout=300, check=False, cwd=str(tmp_path))
    assert proc.returncode == 1 and 'MLFLOW_BACKEND_STORE_URI is not set' in proc.stderr
