# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""db_backup (module and engine) against real sqlite files and real PostgreSQL and MariaDB databases.

Each backend: an MLflow schema with rows written by MLflow's own client is backed up, the backup is
restored into a fresh database with the backend's own tools, and the restored database must hold
the same rows and alembic revision. The dump tools run through a wrapper (dump_command) that
records their argv, so the tests prove the password is never on a command line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from ansible_collections.mlops.mlflow.plugins.module_utils import backup
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import SchemaError
from ansible_collections.mlops.mlflow.plugins.modules import db_backup
from support.db_schema_fixtures import PG_PASSWORD, backend_of, engine_for, make_current, revision_of
from support.module_runner import run_main

PASSWORD_FORMS = (PG_PASSWORD, 'p%40ss%3Aw%2Frd%25')
NAME = re.compile(r'^mlflow-(sqlite|postgresql|mysql)-\d{8}T\d{6}Z\.(sqlite3|pgdump|sql\.gz)$')
EXT = {'sqlite': 'sqlite3', 'postgresql': 'pgdump', 'mysql': 'sql.gz'}


def assert_no_secret(text, extra=()):
    for secret in PASSWORD_FORMS + tuple(extra):
        assert secret not in text


@pytest.fixture
def run(capsys):
    def runner(db_url, check=False, diff=False, **params):
        out = run_main(capsys, db_backup.main, db_url, check=check, diff=diff, **params)
        assert_no_secret(out)
        return json.loads(out)
    return runner


def quiet(msg):  # log= of run_backup in the tests
    assert_no_secret(msg)


def listing(directory):
    """Every entry of directory (hidden ones included) with its mtime and size."""
    return {e.name: (e.stat(follow_symlinks=False).st_mtime_ns, e.stat(follow_symlinks=False).st_size)
            for e in os.scandir(directory)}


# ----------------------------------------------------------------------------- databases

def populate(url):
    """MLflow's schema plus experiments, runs and params written by MLflow's own client."""
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    make_current(url)
    client = MlflowClient(tracking_uri=url)
    for i in range(2):
        exp_id = client.create_experiment('backup-%d-%s' % (i, uuid.uuid4().hex[:6]))
        for j in range(2):
            run_id = client.create_run(exp_id).info.run_id
            client.log_param(run_id, 'alpha', str(i + j))
            client.log_param(run_id, 'beta', 'ünïcödé ✓ %d' % j)
            client.log_metric(run_id, 'loss', 0.5 * j)
    return url


def picture(url):
    """Row counts of MLflow's main tables, the alembic revision and (MySQL) the trigger count."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            counts = {table: conn.execute(sqlalchemy.text('SELECT COUNT(*) FROM %s' % table)).scalar()
                      for table in ('experiments', 'runs', 'params', 'metrics')}
            values = sorted(r[0] for r in conn.execute(sqlalchemy.text('SELECT value FROM params')))
            if backend_of(url) == 'mysql':
                counts['triggers'] = conn.execute(sqlalchemy.text(
                    'SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()')).scalar()
    finally:
        engine.dispose()
    return counts, values, revision_of(url)


def mysql_client_file(tmp_path, url):
    """A 0600 option file for the mariadb client, written with the engine's own quoting."""
    text = backup.mysql_option_file_text(make_url(url))[0]
    path = tmp_path / ('client-%s.cnf' % uuid.uuid4().hex[:6])
    path.write_text(text)
    path.chmod(0o600)
    return path


def restore(backup_path, new_db, backend, tmp_path):
    """Restore backup_path into a fresh database with the backend's own tools; returns its URL."""
    if backend == 'sqlite':
        target = tmp_path / ('restored-%s.db' % uuid.uuid4().hex[:6])
        shutil.copyfile(backup_path, target)
        return 'sqlite:///%s' % target
    url = new_db(backend)
    parsed = make_url(url)
    if backend == 'postgresql':
        env = dict(os.environ, PGPASSWORD=parsed.password, PGHOST=parsed.host, PGPORT=str(parsed.port),
                   PGUSER=parsed.username)
        subprocess.run(['pg_restore', '--no-owner', '--no-privileges', '--exit-on-error', '--dbname', parsed.database,
                        backup_path], env=env, check=True, capture_output=True)
    else:
        option_file = mysql_client_file(tmp_path, url)
        with gzip.open(backup_path, 'rb') as handle:
            sql = handle.read()
        subprocess.run(['mariadb', '--defaults-extra-file=%s' % option_file, parsed.database], input=sql,
                       check=True, capture_output=True)
    return url


RECORDER = r'''#!/bin/sh
# Records the dump tool's argv (one argument per line), then runs the real tool.
printf '%%s\n' "$@" > "%(log)s"
for arg in "$@"; do
    case "$arg" in
        --defaults-extra-file=*) stat -c '%%a %%U' "${arg#*=}" > "%(log)s.optfile" ;;
    esac
done
env > "%(log)s.env"
exec "%(tool)s" "$@"
'''


def recorder(tmp_path, backend):
    """A dump_command that records argv (and the option file's mode) in tmp_path/argv.log."""
    tool = shutil.which('pg_dump' if backend == 'postgresql' else 'mariadb-dump') or shutil.which('mysqldump')
    log = tmp_path / 'argv.log'
    script = tmp_path / ('record-%s' % backend)
    script.write_text(RECORDER % {'log': log, 'tool': tool})
    script.chmod(0o755)
    return str(script), log


# ----------------------------------------------------------------------------- backup + restore

def test_backup_restores_to_the_same_database(db_url, new_db, tmp_path, run):
    backend = backend_of(db_url)
    populate(db_url)
    expected = picture(db_url)
    assert expected[0]['runs'] == 4 and expected[0]['params'] == 8 and expected[2]
    if backend == 'mysql':
        assert expected[0]['triggers'] > 0  # MLflow's migrations create triggers
    dest = tmp_path / 'backups' / 'nested'
    params = {}
    if backend != 'sqlite':
        params['dump_command'], argv_log = recorder(tmp_path, backend)

    result = run(db_url, diff=True, dest_dir=str(dest), **params)

    assert result['changed'] is True and 'failed' not in result, result
    path = result['path']
    assert os.path.dirname(path) == str(dest) and NAME.match(os.path.basename(path))
    assert path.endswith('.' + EXT[backend]) and result['backend'] == backend
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert result['size'] == info.st_size > 0
    with open(path, 'rb') as handle:
        assert result['sha256'] == hashlib.sha256(handle.read()).hexdigest()
    assert result['kept'] == [path] and result['removed'] == []
    assert result['duration_s'] >= 0
    assert sorted(os.listdir(dest)) == [os.path.basename(path)]  # no temp file left
    assert result['diff']['before'] == '' and result['diff']['after'] == os.path.basename(path) + '\n'

    if backend != 'sqlite':
        argv = argv_log.read_text().splitlines()
        assert_no_secret('\n'.join(argv))
        assert result['dump_command'] == params['dump_command']
        if backend == 'postgresql':
            assert '--format=custom' in argv and '--no-password' in argv
            env = argv_log.with_suffix('.log.env').read_text()
            assert 'PGPASSWORD=%s\n' % PG_PASSWORD in env  # the password travels in the environment only
        else:
            assert {'--single-transaction', '--routines', '--triggers'} <= set(argv)
            option_file = [a.split('=', 1)[1] for a in argv if a.startswith('--defaults-extra-file=')]
            assert len(option_file) == 1 and not os.path.exists(option_file[0])  # removed afterwards
            assert argv_log.with_suffix('.log.optfile').read_text().split()[0] == '600'
            with gzip.open(path, 'rb') as handle:
                dump = handle.read()
            assert b'CREATE TABLE `runs`' in dump and b'CREATE' in dump and b'TRIGGER' in dump

    restored = restore(path, new_db, backend, tmp_path)
    assert picture(restored) == expected


# ----------------------------------------------------------------------------- retention and check mode

def small_sqlite(tmp_path):
    path = tmp_path / 'small.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE t (a INTEGER)')
    conn.execute('INSERT INTO t VALUES (1)')
    conn.commit()
    conn.close()
    return 'sqlite:///%s' % path


def test_retention_and_check_mode(tmp_path, run):
    url = small_sqlite(tmp_path)
    dest = tmp_path / 'backups'
    dest.mkdir(mode=0o755)
    # Files retention must never touch: other prefixes, near-misses, a directory with a backup name.
    others = ['notes.txt', 'other-sqlite-20200101T000000Z.sqlite3', 'mlflow-sqlite-2020.sqlite3',
              'mlflow-sqlite-20200101T000000Z.sqlite3.bak', 'mlflow-postgresql-20200101T000000Z.sql.gz.partial']
    for name in others:
        (dest / name).write_text('x')
    (dest / 'mlflow-sqlite-20000101T000000Z.sqlite3').mkdir()
    others.append('mlflow-sqlite-20000101T000000Z.sqlite3')

    # check mode on a missing directory creates nothing
    result = run(url, check=True, dest_dir=str(tmp_path / 'missing'))
    assert result['changed'] is True and NAME.match(os.path.basename(result['path']))
    assert result['size'] is None and result['sha256'] is None and result['removed'] == []
    assert not (tmp_path / 'missing').exists()

    made = []
    for dummy in range(3):
        result = run(url, dest_dir=str(dest), keep=2)
        assert result['changed'] is True
        made.append(result['path'])
    assert len(set(made)) == 3 and made == sorted(made)
    assert result['removed'] == [made[0]] and result['kept'] == made[1:]
    assert sorted(os.listdir(dest)) == sorted(others + [os.path.basename(p) for p in made[1:]])
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755  # an existing directory keeps its mode

    # check mode predicts, writes and deletes nothing
    before = listing(dest)
    result = run(url, check=True, diff=True, dest_dir=str(dest), keep=1)
    assert listing(dest) == before
    assert result['changed'] is True
    assert result['removed'] == made[1:] and result['kept'] == [result['path']]
    assert result['path'] not in made and NAME.match(os.path.basename(result['path']))
    assert result['diff']['before'] == ''.join(os.path.basename(p) + '\n' for p in made[1:])
    assert result['diff']['after'] == os.path.basename(result['path']) + '\n'

    # a run with another prefix leaves these backups alone
    result = run(url, dest_dir=str(dest), keep=1, prefix='nightly')
    assert result['removed'] == [] and os.path.basename(result['path']).startswith('nightly-sqlite-')
    assert set(os.listdir(dest)) >= {os.path.basename(p) for p in made[1:]}


def test_sqlite_backup_is_consistent_during_a_write(tmp_path):
    """A writer in the middle of a transaction (WAL mode, like a busy server): the backup holds the committed rows."""
    url = small_sqlite(tmp_path)
    writer = sqlite3.connect(make_url(url).database, isolation_level=None)
    try:
        writer.execute('PRAGMA journal_mode=WAL')
        writer.execute('INSERT INTO t VALUES (2)')
        writer.execute('BEGIN IMMEDIATE')
        writer.execute('INSERT INTO t VALUES (3)')
        result = backup.run_backup(url, str(tmp_path / 'b'), log=quiet)
        writer.execute('COMMIT')
    finally:
        writer.close()
    copy = sqlite3.connect(result['path'])
    try:
        assert copy.execute('SELECT a FROM t ORDER BY a').fetchall() == [(1,), (2,)]
        assert copy.execute('PRAGMA integrity_check').fetchone() == ('ok',)
    finally:
        copy.close()


# ----------------------------------------------------------------------------- bad input

def test_bad_input_fails_before_writing(tmp_path, pg_databases, run, monkeypatch):
    sqlite_url = small_sqlite(tmp_path)
    pg_url = pg_databases.create()
    dest = tmp_path / 'never'
    cases = [
        (sqlite_url, {'keep': 0}, 'keep'),
        (sqlite_url, {'keep': -3}, 'keep'),
        (sqlite_url, {'dest_dir': 'relative/dir'}, 'dest_dir'),
        (sqlite_url, {'prefix': '../x'}, 'prefix'),
        (sqlite_url, {'dump_command': 'pg_dump'}, 'dump_command'),
        ('sqlite:///%s' % (tmp_path / 'absent.db'), {}, 'does not exist'),
        ('mssql+pyodbc://sa:hunter2@db.example.com/mlflow', {}, 'mssql'),
        (pg_url, {'dump_command': str(tmp_path / 'no-such-pg_dump')}, 'dump_command'),
        (pg_url, {'dump_command': str(tmp_path)}, 'dump_command'),
    ]
    for url, params, words in cases:
        params.setdefault('dest_dir', str(dest))
        for check in (False, True):
            result = run(url, check=check, **params)
            assert result['failed'] is True, (params, result)
            assert words in result['msg'], (params, result['msg'])
            assert 'hunter2' not in json.dumps(result)
        assert not dest.exists(), params

    # the default tool missing from PATH: names the tool and dump_command
    monkeypatch.setenv('PATH', str(tmp_path / 'empty-path'))
    result = run(pg_url, dest_dir=str(dest))
    assert result['failed'] is True and 'pg_dump' in result['msg'] and 'dump_command' in result['msg']
    assert not dest.exists()


# ----------------------------------------------------------------------------- failed dumps

@pytest.mark.parametrize('what', ['wrong_database', 'wrong_password'])
def test_failed_dump_leaves_nothing_and_keeps_old_backups(server_databases, tmp_path, run, what):
    backend = server_databases.backend
    url = server_databases.create()
    dest = tmp_path / 'backups'
    dest.mkdir()
    old = dest / ('mlflow-%s-20200101T000000Z.%s' % (backend, EXT[backend]))
    old.write_text('old backup')
    parsed = make_url(url)
    wrong_password = 'wr0ng@pa:ss/%#'
    if what == 'wrong_database':
        bad = parsed.set(database='mlflow_t_missing_%s' % uuid.uuid4().hex[:6])
    else:
        bad = parsed.set(password=wrong_password)
    bad_url = bad.render_as_string(hide_password=False)
    before = listing(dest)

    result = run(bad_url, dest_dir=str(dest), keep=1, connect_timeout=5)

    assert result['failed'] is True
    assert ('pg_dump' if backend == 'postgresql' else '-dump') in result['msg']
    if what == 'wrong_database':
        assert ('does not exist' if backend == 'postgresql' else 'Unknown database') in result['msg']
    else:
        assert ('password authentication failed' if backend == 'postgresql' else 'Access denied') in result['msg']
    assert listing(dest) == before  # no partial file, retention not applied
    text = json.dumps(result)
    assert_no_secret(text, (wrong_password, 'wr0ng%40pa%3Ass%2F%25%23'))

    # The engine's own message (without Ansible's no_log masking) is clean as well.
    with pytest.raises(SchemaError) as err:
        backup.run_backup(bad_url, str(dest), keep=1, connect_timeout=5, log=quiet)
    assert_no_secret(str(err.value), (wrong_password, 'wr0ng%40pa%3Ass%2F%25%23'))
    assert listing(dest) == before


def test_mysql_server_down_fails_fast(tmp_path):
    url = 'mysql+pymysql://u:%s@127.0.0.1:9/db' % 'p%40ss%3Aw%2Frd%25'
    started = time.monotonic()
    with pytest.raises(SchemaError) as err:
        backup.run_backup(url, str(tmp_path / 'b'), connect_timeout=3, log=quiet)
    assert time.monotonic() - started < 10
    assert 'Cannot connect' in str(err.value) and 'connect_timeout' in str(err.value)
    assert_no_secret(str(err.value))
    assert os.listdir(tmp_path / 'b') == []


# ----------------------------------------------------------------------------- env_files

def test_db_url_from_env_files(server_databases, tmp_path, run):
    url = server_databases.create()
    env_file = tmp_path / 'server-secrets.env'
    env_file.write_text('MLFLOW_BACKEND_STORE_URI="%s"\n' % url)
    result = run(None, env_files=[str(env_file)], dest_dir=str(tmp_path / 'b'), keep=1)
    assert result['changed'] is True and result['backend'] == server_databases.backend
    assert os.path.getsize(result['path']) == result['size'] > 0


# ----------------------------------------------------------------------------- engine details

def test_pg_command_keeps_secrets_in_the_environment():
    url = make_url('postgresql+psycopg2://mlflow:%s@db.example.com:5433/mlflow'
                   '?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem&application_name=bk&fancy=1'
                   % 'p%40ss%3Aw%2Frd%25')
    argv, env, ignored = backup.pg_dump_command('/usr/bin/pg_dump', url, '/b/x.partial', connect_timeout=7,
                                                base_env={'PATH': '/usr/bin'})
    assert_no_secret(' '.join(argv))
    assert argv == ['/usr/bin/pg_dump', '--format=custom', '--no-password', '--file=/b/x.partial']
    assert env == {'PATH': '/usr/bin', 'PGHOST': 'db.example.com', 'PGPORT': '5433', 'PGUSER': 'mlflow',
                   'PGPASSWORD': PG_PASSWORD, 'PGDATABASE': 'mlflow', 'PGSSLMODE': 'verify-full',
                   'PGSSLROOTCERT': '/etc/ssl/ca.pem', 'PGAPPNAME': 'bk', 'PGCONNECT_TIMEOUT': '7'}
    assert ignored == ['fancy']


def test_mysql_option_file_round_trips_odd_passwords(tmp_path):
    tool = shutil.which('my_print_defaults')
    if not tool:
        pytest.skip('my_print_defaults (mariadb-client) is not installed')
    password = 'p@ss:w/rd%#;"\'\\ x\tz'
    url = sqlalchemy.engine.URL.create('mysql+pymysql', username='ml flow', password=password, host='db.example.com',
                                       database='mlflow', query={'ssl_ca': '/etc/ssl/ca.pem', 'ssl_check_hostname': 'true'})
    text, ignored = backup.mysql_option_file_text(url)
    assert ignored == []
    path = tmp_path / 'client.cnf'
    path.write_text(text)
    out = subprocess.run([tool, '--defaults-file=%s' % path, 'client'], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out == ['--user=ml flow', '--password=%s' % password, '--host=db.example.com', '--port=3306',
                   '--protocol=tcp', '--ssl-ca=/etc/ssl/ca.pem', '--ssl-verify-server-cert']
    argv = backup.mysql_dump_command('/usr/bin/mariadb-dump', url, str(path))
    assert password not in ' '.join(argv) and argv[-2:] == ['--', 'mlflow']
    assert argv[1] == '--defaults-extra-file=%s' % path  # must be the first option


def test_engine_runs_without_ansible():
    """The host-side timer imports the engine with the MLflow venv's Python only."""
    tree = os.environ['ANSIBLE_COLLECTIONS_PATH']
    code = ('import sys; sys.path.insert(0, %r)\n'
            'import ansible_collections.mlops.mlflow.plugins.module_utils.backup as b\n'
            'assert callable(b.run_backup)\n'
            'print(sorted(m for m in sys.modules if m == "ansible" or m.startswith("ansible.")))\n' % tree)
    out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == '[]'
