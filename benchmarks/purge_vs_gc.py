# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark the collection's set-based purge engine against ``mlflow gc`` on PostgreSQL 15.

Run from the repository root after ``scripts/bootstrap``::

    .venv/bin/python benchmarks/purge_vs_gc.py --runs 2000 20000 --repeat 3

What it does (see benchmarks/README.md and docs/benchmarks.md):

1. starts its own throwaway PostgreSQL 15 cluster with tests/support/pgserver.sh
   (default /tmp/mlops-bench-pg, port 54391; never the shared test server),
2. for each N: creates a database with MLflow's schema at head and fills it with bulk
   inserts: N deleted runs (10% of them in deleted experiments) and N/10 active runs
   interleaved in the same experiments, each run with MLflow-shaped rows (10 params,
   10 metrics x 20 steps + latest_metrics, 5 tags, 1 dataset input with its input tag;
   every 10th run one trace linked to it; every 20th run a small artifact tree on disk;
   two deleted runs and one active run registered as model versions),
3. per repeat, on fresh identical copies (CREATE DATABASE ... TEMPLATE): a no-op
   ``mlflow gc`` on an empty schema (the CLI's fixed cost), ``mlflow gc`` (real CLI,
   subprocess) and ``run_purge()`` (in a subprocess of its own), each with its wall time,
   CPU time (client process + the whole PostgreSQL cluster) and peak RSS (wait4, from a
   small launcher process); after each, counts orphans in every table and checks that the
   active runs' rows are byte-identical to before,
4. the Ansible module ``mlops.mlflow.purge`` end to end (``ansible localhost``) and a
   hand-written one-transaction SQL reference (``FLOOR_SQL``),
5. prints the results table (and writes JSON with --json), drops the databases and
   stops and deletes its cluster.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGSERVER = os.path.join(REPO, 'tests', 'support', 'pgserver.sh')
PURGE_MODULE_FILE = os.path.join(REPO, 'plugins', 'modules', 'purge.py')
PURGE_ENGINE_FILE = os.path.join(REPO, 'plugins', 'module_utils', 'purge.py')
# The shared test server of tests/support/pgserver.sh: never start, use or stop it here.
SHARED_PG_DIR = '/tmp/mlops-mlflow-pg'
SHARED_PG_PORT = 54329

PARAM_KEYS = ('lr', 'batch_size', 'epochs', 'optimizer', 'dropout', 'seed', 'model_type',
              'n_layers', 'hidden_size', 'weight_decay')
METRIC_KEYS = ('loss', 'val_loss', 'accuracy', 'val_accuracy', 'f1', 'precision', 'recall',
               'auc', 'learning_rate', 'grad_norm')
METRIC_STEPS = 20
DAY_MS = 86400000

# Row shape of one complete run, used to detect half-purged runs.
RUN_SHAPE = {'params': len(PARAM_KEYS), 'metrics': len(METRIC_KEYS) * METRIC_STEPS,
             'latest_metrics': len(METRIC_KEYS), 'tags': 5}


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def loadavg():
    return os.getloadavg()[0]


def uptime_line():
    try:
        return subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return 'load average: %.2f, %.2f, %.2f' % os.getloadavg()


# --------------------------------------------------------------------------- the cluster

class Cluster:
    """Our own PostgreSQL 15 cluster, started and deleted with tests/support/pgserver.sh."""

    def __init__(self, pg_dir, port):
        from sqlalchemy.engine import make_url
        if os.path.realpath(pg_dir) == SHARED_PG_DIR or port == SHARED_PG_PORT:
            raise SystemExit('refusing to use the shared test server (%s, port %d)' % (SHARED_PG_DIR, SHARED_PG_PORT))
        self.env = dict(os.environ, MLFLOW_TEST_PG_DIR=pg_dir, MLFLOW_TEST_PG_PORT=str(port))
        self.pg_dir = pg_dir
        self.port = port
        self.started = False
        self._url = make_url(self._pgserver('url').strip())

    def _pgserver(self, action, check=True):
        proc = subprocess.run(['bash', PGSERVER, action], env=self.env, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise SystemExit('pgserver.sh %s failed: %s' % (action, proc.stderr.strip()))
        return proc.stdout

    def start(self):
        if self._pgserver('status', check=False).strip() == 'running':
            raise SystemExit('a cluster already runs in %s; stop it first (MLFLOW_TEST_PG_DIR=%s MLFLOW_TEST_PG_PORT=%d '
                             'bash tests/support/pgserver.sh stop) or pick another --pg-dir/--pg-port'
                             % (self.pg_dir, self.pg_dir, self.port))
        self.started = True   # from here on stop() deletes the cluster, also after a failed start
        self._pgserver('start')

    def stop(self):
        if self.started:
            self._pgserver('stop', check=False)
            self.started = False

    @property
    def password(self):
        return self._url.password

    def url(self, db):
        """SQLAlchemy URL of database db (contains the password: never print it)."""
        return self._url.set(database=db).render_as_string(hide_password=False)

    def connect(self, db='postgres', autocommit=False):
        import psycopg2
        conn = psycopg2.connect(host=self._url.host, port=self._url.port, user=self._url.username,
                                password=self._url.password, dbname=db)
        conn.autocommit = autocommit
        return conn

    def admin(self, sql):
        conn = self.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_db(self, name, template=None):
        if template:
            # FILE_COPY: a plain file copy, much faster than PG15's default WAL_LOG for a 1 GB template.
            self.admin('CREATE DATABASE "%s" TEMPLATE "%s" STRATEGY FILE_COPY' % (name, template))
        else:
            self.admin('CREATE DATABASE "%s"' % name)

    def drop_db(self, name):
        # Not WITH (FORCE): that would have to signal autovacuum workers, which our role may not.
        # A plain DROP cancels autovacuum itself; only our own connections could be in the way.
        import psycopg2  # pylint: disable=import-outside-toplevel
        for attempt in range(30):
            try:
                self.admin('DROP DATABASE IF EXISTS "%s"' % name)
                return
            except psycopg2.errors.ObjectInUse:
                if attempt == 29:
                    raise
                time.sleep(1)

    def server_cpu(self):
        """CPU seconds used so far by the whole cluster: postmaster, live backends, and exited ones."""
        with open(os.path.join(self.pg_dir, 'data', 'postmaster.pid'), encoding='utf-8') as f:
            postmaster = f.readline().strip()
        ticks = 0
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % pid, encoding='utf-8') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            # fields[1] = ppid, [11] utime, [12] stime, [13] cutime, [14] cstime (proc(5), after the name)
            if pid == postmaster:
                ticks += sum(int(x) for x in fields[11:15])
            elif fields[1] == postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf('SC_CLK_TCK')

    def settings(self):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'fsync', "
                            "'synchronous_commit', 'full_page_writes', 'shared_buffers', 'work_mem') ORDER BY name")
                return dict(cur.fetchall())
        finally:
            conn.close()


def _copy_rows(cur, table, columns, rows):
    """COPY rows (tuples; None = NULL; values never hold tabs, newlines or backslashes) into table."""
    buf = io.StringIO()
    for row in rows:
        buf.write('\t'.join('\\N' if v is None else str(v) for v in row))
        buf.write('\n')
    buf.seek(0)
    cur.copy_expert('COPY %s (%s) FROM STDIN' % (table, ', '.join(columns)), buf)


# --------------------------------------------------------------------------- the data

def generate(cluster, db, n_deleted, art_root, seed=5):
    """Create db with MLflow's schema at head and fill it; returns what the checks need."""
    import random

    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables
    from sqlalchemy.pool import NullPool

    t0 = time.perf_counter()
    rng = random.Random(seed * 1000003 + n_deleted)
    cluster.create_db(db)
    engine = sqlalchemy.create_engine(cluster.url(db), poolclass=NullPool)
    _initialize_tables(engine)
    engine.dispose()
    t_schema = time.perf_counter() - t0

    n_active = max(100, n_deleted // 10)
    n_exp_active = max(2, n_deleted // 500)
    n_exp_deleted = max(1, n_deleted // 5000)
    n_in_deleted_exps = n_deleted // 10
    now = int(time.time() * 1000)
    t_begin = now - 90 * DAY_MS

    conn = cluster.connect(db)
    cur = conn.cursor()
    cur.execute('SELECT setseed(%s)', (((seed + n_deleted) % 1000) / 1000.0,))

    # Experiments: MLflow stores the artifact root of a local store as a plain absolute path.
    experiments = []   # (id, deleted, deleted_time)
    for i in range(n_exp_active + n_exp_deleted):
        deleted = i >= n_exp_active
        del_time = now - rng.randint(20, 40) * DAY_MS if deleted else None
        cur.execute('INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time) '
                    'VALUES (%s, NULL, %s, %s, %s) RETURNING experiment_id',
                    ('bench-%s-%d' % ('deleted' if deleted else 'active', i), 'deleted' if deleted else 'active',
                     t_begin, del_time or t_begin))
        exp_id = cur.fetchone()[0]
        cur.execute('UPDATE experiments SET artifact_location = %s WHERE experiment_id = %s',
                    (os.path.join(art_root, str(exp_id)), exp_id))
        experiments.append((exp_id, deleted, del_time))
    active_exps = [exp[0] for exp in experiments if not exp[1]]
    deleted_exps = [(e, t) for e, d, t in experiments if d]
    cur.execute('INSERT INTO experiment_tags (key, value, experiment_id) '
                "SELECT 'mlflow.note.content', 'benchmark experiment ' || experiment_id, experiment_id "
                "FROM experiments WHERE name LIKE 'bench-%'")

    # Runs: the runs in deleted experiments first, then deleted and active runs shuffled
    # together over the active experiments; idx is the (interleaved) logging order.
    specs = []   # (experiment_id, lifecycle, deleted_time)
    for i in range(n_in_deleted_exps):
        exp_id, del_time = deleted_exps[i % len(deleted_exps)]
        specs.append((exp_id, 'deleted', del_time))
    for dummy in range(n_deleted - n_in_deleted_exps):
        specs.append((rng.choice(active_exps), 'deleted', now - rng.randint(8, 60) * DAY_MS))
    for dummy in range(n_active):
        specs.append((rng.choice(active_exps), 'active', None))
    rng.shuffle(specs)
    runs = []
    for idx, (exp_id, stage, del_time) in enumerate(specs):
        run_uuid = uuid.UUID(int=rng.getrandbits(128)).hex
        start = t_begin + idx * 1000
        runs.append((run_uuid, 'run-%d' % idx, 'LOCAL', 'train.py', '', 'bench', 'FINISHED', start,
                     start + METRIC_STEPS * 30000, '', stage,
                     os.path.join(art_root, str(exp_id), run_uuid, 'artifacts'), exp_id,
                     del_time, idx))
    _copy_rows(cur, 'runs', ('run_uuid', 'name', 'source_type', 'source_name', 'entry_point_name', 'user_id',
                             'status', 'start_time', 'end_time', 'source_version', 'lifecycle_stage',
                             'artifact_uri', 'experiment_id', 'deleted_time'), [r[:-1] for r in runs])
    cur.execute('CREATE TEMP TABLE bench_runs (run_uuid varchar(32) PRIMARY KEY, experiment_id int, idx int, '
                'start_time bigint)')
    _copy_rows(cur, 'bench_runs', ('run_uuid', 'experiment_id', 'idx', 'start_time'),
               [(r[0], r[12], r[14], r[7]) for r in runs])
    cur.execute('ANALYZE bench_runs')

    values = ', '.join("('%s', %d)" % (k, n) for n, k in enumerate(PARAM_KEYS))
    cur.execute('INSERT INTO params (key, value, run_uuid) '
                "SELECT k.key, CASE WHEN k.n %% 3 = 0 THEN (hashtext(r.run_uuid || k.key) & 1023)::text "
                "ELSE to_char(((hashtext(r.run_uuid || k.key) & 1023) + 1) / 10000.0, 'FM0.0000') END, r.run_uuid "
                'FROM bench_runs r CROSS JOIN (VALUES %s) AS k(key, n) ORDER BY r.idx, k.n' % values)
    # Metrics are logged step by step by ~50 runs at a time, so one run's rows are spread
    # over the table as in a real tracking database.
    values = ', '.join("('%s', %d)" % (k, n) for n, k in enumerate(METRIC_KEYS))
    cur.execute('INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) '
                'SELECT k.key, random(), r.start_time + s * 30000 + k.n, r.run_uuid, s, false '
                'FROM bench_runs r CROSS JOIN generate_series(0, %d) AS s CROSS JOIN (VALUES %s) AS k(key, n) '
                'ORDER BY r.idx / 50, s, r.idx, k.n' % (METRIC_STEPS - 1, values))
    cur.execute('INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) '
                'SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics WHERE step = %s',
                (METRIC_STEPS - 1,))
    cur.execute('INSERT INTO tags (key, value, run_uuid) '
                "SELECT t.key, CASE t.key WHEN 'mlflow.runName' THEN 'run-' || r.idx "
                "WHEN 'mlflow.user' THEN 'bench' WHEN 'mlflow.source.name' THEN 'train.py' "
                "WHEN 'mlflow.source.type' THEN 'LOCAL' ELSE 'team-' || (r.idx %% 7) END, r.run_uuid "
                'FROM bench_runs r CROSS JOIN (VALUES (1, %s), (2, %s), (3, %s), (4, %s), (5, %s)) AS t(n, key) '
                'ORDER BY r.idx, t.n', ('mlflow.user', 'mlflow.source.name', 'mlflow.source.type',
                                        'mlflow.runName', 'team'))

    # Datasets: consecutive runs of an experiment (groups of 10) train on the same dataset
    # (MLflow deduplicates datasets by experiment, name and digest), so some datasets are
    # shared with active runs and some are referenced by deleted runs only.
    cur.execute('CREATE TEMP TABLE bench_inputs AS SELECT r.run_uuid, r.experiment_id, '
                '(row_number() OVER (PARTITION BY r.experiment_id ORDER BY r.idx) - 1) / 10 AS grp, '
                "replace(gen_random_uuid()::text, '-', '') AS input_uuid FROM bench_runs r")
    cur.execute("CREATE TEMP TABLE bench_datasets AS SELECT DISTINCT experiment_id, grp, "
                "substr(md5(experiment_id || '/' || grp), 1, 8) AS digest FROM bench_inputs")
    cur.execute("ALTER TABLE bench_datasets ADD COLUMN dataset_uuid text DEFAULT replace(gen_random_uuid()::text, '-', '')")
    cur.execute('INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, dataset_source_type, dataset_source, '
                'dataset_schema, dataset_profile) '
                "SELECT dataset_uuid, experiment_id, 'train', digest, 'local', "
                "'{\"uri\": \"/data/train-' || grp || '.csv\"}', "
                '\'{"mlflow_colspec": [{"type": "double", "name": "x", "required": true}, '
                '{"type": "long", "name": "y", "required": true}]}\', '
                '\'{"num_rows": 10000, "num_elements": 20000}\' FROM bench_datasets')
    cur.execute('INSERT INTO inputs (input_uuid, source_type, source_id, destination_type, destination_id, step) '
                "SELECT i.input_uuid, 'DATASET', d.dataset_uuid, 'RUN', i.run_uuid, 0 "
                'FROM bench_inputs i JOIN bench_datasets d USING (experiment_id, grp)')
    cur.execute('INSERT INTO input_tags (input_uuid, name, value) '
                "SELECT input_uuid, 'mlflow.data.context', 'training' FROM bench_inputs")

    # Traces: every 10th run produced one trace (as mlflow.start_span inside a run does),
    # linked to the run by its request metadata and by an entity association (as
    # link_traces_to_run / genai evaluation do).
    cur.execute("CREATE TEMP TABLE bench_traces AS SELECT 'tr-' || md5(r.run_uuid) AS request_id, r.run_uuid, "
                'r.experiment_id, r.start_time + 5000 AS ts FROM bench_runs r WHERE r.idx % 10 = 0')
    cur.execute('INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, execution_time_ms, status, '
                'request_preview, response_preview, db_payload_generation, trace_name) '
                "SELECT request_id, experiment_id, ts, 28, 'OK', '{\"q\": 1}', '{\"a\": 2}', 2, 'predict' "
                'FROM bench_traces')
    cur.execute('INSERT INTO trace_request_metadata (key, value, request_id) '
                "SELECT m.key, CASE m.key WHEN 'mlflow.sourceRun' THEN t.run_uuid WHEN 'mlflow.user' THEN 'bench' "
                "WHEN 'mlflow.trace_schema.version' THEN '3' WHEN 'mlflow.traceInputs' THEN '{\"q\": 1}' "
                "ELSE '{\"a\": 2}' END, t.request_id FROM bench_traces t CROSS JOIN (VALUES ('mlflow.sourceRun'), "
                "('mlflow.user'), ('mlflow.trace_schema.version'), ('mlflow.traceInputs'), ('mlflow.traceOutputs')) "
                'AS m(key)')
    cur.execute('INSERT INTO trace_tags (key, value, request_id) '
                "SELECT g.key, CASE g.key WHEN 'mlflow.traceName' THEN 'predict' "
                "WHEN 'mlflow.trace.spansLocation' THEN 'TRACKING_STORE' "
                "ELSE %s || '/' || t.experiment_id || '/traces/' || t.request_id || '/artifacts' END, t.request_id "
                "FROM bench_traces t CROSS JOIN (VALUES ('mlflow.traceName'), ('mlflow.artifactLocation'), "
                "('mlflow.trace.spansLocation')) AS g(key)", (art_root,))
    cur.execute('INSERT INTO spans (trace_id, experiment_id, span_id, parent_span_id, name, type, status, '
                'start_time_unix_nano, end_time_unix_nano, content) '
                "SELECT request_id, experiment_id, substr(md5(request_id), 1, 16), NULL, 'predict', 'UNKNOWN', 'OK', "
                'ts * 1000000, ts * 1000000 + 28000000, '
                "'{\"trace_id\": \"' || request_id || '\", \"name\": \"predict\", \"events\": [], "
                '"status": {"code": "STATUS_CODE_OK", "message": ""}, '
                '"attributes": {"mlflow.spanType": "\\"UNKNOWN\\"", "mlflow.spanInputs": "{\\"q\\": 1}"}}\' '
                'FROM bench_traces')
    cur.execute('INSERT INTO entity_associations (association_id, source_type, source_id, destination_type, '
                'destination_id, created_time) '
                "SELECT replace(gen_random_uuid()::text, '-', ''), 'trace', request_id, 'run', run_uuid, ts "
                'FROM bench_traces')

    # Registered model versions: two deleted runs (in active experiments) and one active run.
    deleted_in_active = [r for r in runs if r[10] == 'deleted' and r[12] in active_exps]
    active_runs = [r for r in runs if r[10] == 'active']
    registered = [deleted_in_active[0], deleted_in_active[1], active_runs[0]]
    cur.execute("INSERT INTO registered_models (name, creation_time, last_updated_time, description) "
                "VALUES ('bench-model', %s, %s, 'benchmark')", (t_begin, t_begin))
    for version, run in enumerate(registered, 1):
        cur.execute('INSERT INTO model_versions (name, version, creation_time, last_updated_time, user_id, '
                    'current_stage, source, run_id, status, storage_location) '
                    "VALUES ('bench-model', %s, %s, %s, 'bench', 'None', %s, %s, 'READY', %s)",
                    (version, t_begin, t_begin, run[11] + '/model', run[0], run[11] + '/model'))
    conn.commit()
    cur.close()
    conn.close()

    conn = cluster.connect(db, autocommit=True)
    with conn.cursor() as cur:
        cur.execute('VACUUM ANALYZE')
        counts = table_counts(cur)
    conn.close()
    meta = {
        'db': db,
        'n_deleted': n_deleted,
        'n_active': n_active,
        'deleted_runs': [r[0] for r in runs if r[10] == 'deleted'],
        'active_runs': [r[0] for r in active_runs],
        'registered_deleted_runs': [registered[0][0], registered[1][0]],
        'deleted_experiments': [exp[0] for exp in deleted_exps],
        'active_experiments': active_exps,
        # every 20th run (deleted or active) has an artifact tree on disk
        'artifact_runs': [(r[0], r[11], r[10]) for r in runs if r[14] % 20 == 0],
        'rows': counts,
        'gen_s': round(time.perf_counter() - t0, 1),
        'schema_s': round(t_schema, 1),
    }
    return meta


def table_counts(cur):
    cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname")
    counts = {}
    for (name,) in cur.fetchall():
        cur.execute('SELECT count(*) FROM "%s"' % name)
        rows = cur.fetchone()[0]
        if rows:
            counts[name] = rows
    return counts


def reset_artifacts(meta):
    """Recreate the artifact trees (an MLmodel file and a 4 KiB model file per sampled run)."""
    root = meta['art_root']
    if os.path.isdir(root):
        shutil.rmtree(root)
    blob = b'\0' * 4096
    for run in meta['artifact_runs']:
        uri = run[1]
        os.makedirs(os.path.join(uri, 'model'))
        with open(os.path.join(uri, 'model', 'MLmodel'), 'w', encoding='utf-8') as f:
            f.write('artifact_path: model\nflavors:\n  python_function: {}\n')
        with open(os.path.join(uri, 'model', 'model.pkl'), 'wb') as f:
            f.write(blob)


# --------------------------------------------------------------------------- the checks

# Rows that belong to the runs/experiments that must survive, fingerprinted before and after.
FINGERPRINTS = {
    'runs': 'SELECT r.* FROM runs r JOIN pre_active USING (run_uuid)',
    'params': 'SELECT x.* FROM params x JOIN pre_active USING (run_uuid)',
    'metrics': 'SELECT x.* FROM metrics x JOIN pre_active USING (run_uuid)',
    'latest_metrics': 'SELECT x.* FROM latest_metrics x JOIN pre_active USING (run_uuid)',
    'tags': 'SELECT x.* FROM tags x JOIN pre_active USING (run_uuid)',
    'inputs': 'SELECT i.* FROM inputs i JOIN pre_active a ON i.destination_id = a.run_uuid',
    'input_tags': 'SELECT t.* FROM input_tags t JOIN inputs i USING (input_uuid) '
                  'JOIN pre_active a ON i.destination_id = a.run_uuid',
    'datasets': 'SELECT DISTINCT d.* FROM datasets d JOIN inputs i ON i.source_id = d.dataset_uuid '
                'JOIN pre_active a ON i.destination_id = a.run_uuid',
    'trace_info': 'SELECT t.* FROM trace_info t JOIN active_traces USING (request_id)',
    'trace_request_metadata': 'SELECT t.* FROM trace_request_metadata t JOIN active_traces USING (request_id)',
    'trace_tags': 'SELECT t.* FROM trace_tags t JOIN active_traces USING (request_id)',
    'spans': 'SELECT s.* FROM spans s JOIN active_traces a ON s.trace_id = a.request_id',
    'entity_associations': 'SELECT e.* FROM entity_associations e JOIN pre_active a ON e.destination_id = a.run_uuid',
    'model_versions': 'SELECT v.* FROM model_versions v JOIN pre_active a ON v.run_id = a.run_uuid',
    'experiments': 'SELECT e.* FROM experiments e JOIN pre_active_exp x ON e.experiment_id = x.id',
    'experiment_tags': 'SELECT t.* FROM experiment_tags t JOIN pre_active_exp x ON t.experiment_id = x.id',
}

RUN_REF_COLUMNS = ('run_uuid', 'run_id', 'source_run_id')
NOT_A_RUN = "NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_uuid = %s)"


def _orphan_queries(cur):
    """{label: 'FROM <table> x WHERE ...'} selecting rows that reference a run/experiment that is gone."""
    cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND (column_name IN %s OR column_name = 'experiment_id') ORDER BY table_name, column_name",
                (RUN_REF_COLUMNS,))
    queries = {}
    for table, column in cur.fetchall():
        if column == 'experiment_id':
            if table != 'experiments':
                queries['%s.%s' % (table, column)] = (
                    'FROM "%s" x WHERE x.experiment_id IS NOT NULL AND NOT EXISTS '
                    '(SELECT 1 FROM experiments e WHERE e.experiment_id = x.experiment_id)' % table)
        elif table != 'runs':
            queries['%s.%s' % (table, column)] = (
                'FROM "%s" x WHERE x.%s IS NOT NULL AND %s' % (table, column, NOT_A_RUN % ('x.' + column)))
    no_exp = 'NOT EXISTS (SELECT 1 FROM experiments e WHERE e.experiment_id::text = %s)'
    queries.update({
        # FK-less, polymorphic references to runs
        'inputs.destination_id (RUN)': "FROM inputs x WHERE x.destination_type = 'RUN' AND "
                                       + NOT_A_RUN % 'x.destination_id',
        'inputs.source_id (RUN_INPUT/RUN_OUTPUT)': "FROM inputs x WHERE x.source_type IN ('RUN_INPUT', 'RUN_OUTPUT') "
                                                   'AND ' + NOT_A_RUN % 'x.source_id',
        'input_tags.input_uuid': 'FROM input_tags x WHERE NOT EXISTS (SELECT 1 FROM inputs i WHERE i.input_uuid = x.input_uuid)',
        'datasets used by no surviving run': "FROM datasets x WHERE NOT EXISTS (SELECT 1 FROM inputs i JOIN runs r "
                                             "ON r.run_uuid = i.destination_id WHERE i.source_type = 'DATASET' "
                                             "AND i.destination_type = 'RUN' AND i.source_id = x.dataset_uuid)",
        'entity_associations (run)': "FROM entity_associations x WHERE (lower(x.source_type) = 'run' AND "
                                     + NOT_A_RUN % 'x.source_id' + ") OR (lower(x.destination_type) = 'run' AND "
                                     + NOT_A_RUN % 'x.destination_id' + ')',
        'entity_associations (experiment)': "FROM entity_associations x WHERE (lower(x.source_type) = 'experiment' AND "
                                            + no_exp % 'x.source_id' + ") OR (lower(x.destination_type) = 'experiment' "
                                            'AND ' + no_exp % 'x.destination_id' + ')',
        'trace_info (sourceRun purged)': 'FROM trace_info x JOIN orphan_traces USING (request_id)',
        'trace_request_metadata of those traces': 'FROM trace_request_metadata x JOIN orphan_traces USING (request_id)',
        'trace_tags of those traces': 'FROM trace_tags x JOIN orphan_traces USING (request_id)',
        'spans of those traces': 'FROM spans x JOIN orphan_traces o ON x.trace_id = o.request_id',
    })
    return queries


def inspect(cluster, db, meta, fingerprints=None):
    """Orphans, what was purged, and the fingerprints of the rows that must survive."""
    conn = cluster.connect(db)
    cur = conn.cursor()
    for name, ids, coltype in (('pre_active', meta['active_runs'], 'varchar(32)'),
                               ('pre_deleted', meta['deleted_runs'], 'varchar(32)'),
                               ('pre_active_exp', meta['active_experiments'], 'int'),
                               ('pre_deleted_exp', meta['deleted_experiments'], 'int')):
        column = 'id' if coltype == 'int' else 'run_uuid'
        cur.execute('CREATE TEMP TABLE %s (%s %s PRIMARY KEY)' % (name, column, coltype))
        _copy_rows(cur, name, (column,), [(i,) for i in ids])
    cur.execute("CREATE TEMP TABLE active_traces AS SELECT DISTINCT m.request_id FROM trace_request_metadata m "
                "JOIN pre_active a ON m.key = 'mlflow.sourceRun' AND m.value = a.run_uuid")
    cur.execute("CREATE TEMP TABLE orphan_traces AS SELECT DISTINCT m.request_id FROM trace_request_metadata m "
                "WHERE m.key = 'mlflow.sourceRun' AND " + NOT_A_RUN % 'm.value')
    out = {}
    cur.execute('SELECT count(*) FROM runs JOIN pre_deleted USING (run_uuid)')
    remaining = cur.fetchone()[0]
    out['deleted_runs_left'] = remaining
    out['runs_purged'] = len(meta['deleted_runs']) - remaining
    cur.execute('SELECT count(*) FROM experiments e JOIN pre_deleted_exp x ON e.experiment_id = x.id')
    out['deleted_experiments_left'] = cur.fetchone()[0]
    cur.execute('SELECT run_uuid FROM runs JOIN pre_deleted USING (run_uuid) WHERE run_uuid = ANY(%s)',
                (meta['registered_deleted_runs'],))
    out['registered_deleted_runs_kept'] = len(cur.fetchall())
    # A deleted run that is still there must be whole, not half purged.
    shape = ' OR '.join('(SELECT count(*) FROM %s x WHERE x.run_uuid = r.run_uuid) <> %d' % (t, n)
                        for t, n in RUN_SHAPE.items())
    cur.execute('SELECT r.run_uuid FROM runs r JOIN pre_deleted USING (run_uuid) WHERE ' + shape)
    out['deleted_runs_left_incomplete'] = [row[0] for row in cur.fetchall()]
    orphans = {}
    examples = {}
    for label, from_where in _orphan_queries(cur).items():
        cur.execute('SELECT count(*) ' + from_where)
        orphans[label] = cur.fetchone()[0]
        if orphans[label]:
            cur.execute('SELECT row_to_json(x)::text %s LIMIT 1' % from_where)
            examples[label] = cur.fetchone()[0][:400]
    out['orphan_examples'] = examples
    # Rows left behind in the artifact store by purged runs.
    cur.execute('SELECT run_uuid FROM runs')
    alive = {row[0] for row in cur.fetchall()}
    files_left = dirs_left = active_missing = 0
    for run_uuid, uri, stage in meta['artifact_runs']:
        if run_uuid in alive:
            if stage == 'active' and not os.path.isfile(os.path.join(uri, 'model', 'MLmodel')):
                active_missing += 1
            continue
        if os.path.isdir(uri) and any(entry[2] for entry in os.walk(uri)):
            files_left += 1
        elif os.path.isdir(os.path.dirname(uri)):
            dirs_left += 1
    out['artifact_runs_sampled'] = len(meta['artifact_runs'])
    orphans['artifacts: purged runs with files left'] = files_left
    orphans['artifacts: purged runs with an empty directory left'] = dirs_left
    out['orphans'] = orphans
    out['orphan_rows'] = sum(v for k, v in orphans.items() if not k.startswith('artifacts'))
    out['active_artifacts_missing'] = active_missing
    prints = {}
    for name, sql in FINGERPRINTS.items():
        cur.execute("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                    'FROM (%s) t' % sql)
        prints[name] = list(cur.fetchone())
    out['fingerprints'] = prints
    if fingerprints is not None:
        out['active_changed'] = {name: {'before': fingerprints[name][0], 'after': prints[name][0]}
                                 for name in prints if prints[name] != fingerprints[name]}
    conn.rollback()
    cur.close()
    conn.close()
    return out


# --------------------------------------------------------------------------- the contestants

# Linux keeps a process's peak RSS across exec: a child forked from this (large) process would
# report at least our own RSS as its ru_maxrss. So the contestants are forked by a small launcher
# (a bare python -S, ~10 MB) that reports the wall time and the wait4() rusage of its child.
LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], 'w') as f:
    json.dump({'wall_s': wall, 'rc': os.waitstatus_to_exitcode(status), 'maxrss_mb': ru.ru_maxrss / 1024.0,
               'client_cpu_s': ru.ru_utime + ru.ru_stime}, f)
"""


def run_timed(cmd, env, log_path):
    """Run cmd; its wall time, exit code, peak RSS and CPU time, as measured by LAUNCHER."""
    usage_path = log_path + '.usage'
    with open(log_path, 'wb') as out:
        subprocess.run([sys.executable, '-S', '-c', LAUNCHER, usage_path] + cmd, env=env, stdout=out,
                       stderr=subprocess.STDOUT, check=False)
    with open(usage_path, encoding='utf-8') as f:
        return json.load(f)


# Reference, not a product: one hand-written set-based transaction for exactly this schema and
# data (no artifacts, no generality), to show how fast the database work alone can be. Same
# selection as the engine: deleted runs not registered as a model version, deleted experiments.
FLOOR_SQL = (
    "CREATE TEMP TABLE p_exps ON COMMIT DROP AS SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'deleted'",
    "CREATE TEMP TABLE p_runs ON COMMIT DROP AS SELECT run_uuid FROM runs WHERE lifecycle_stage = 'deleted' "
    "AND run_uuid NOT IN (SELECT run_id FROM model_versions WHERE run_id IS NOT NULL)",
    'CREATE TEMP TABLE p_traces ON COMMIT DROP AS SELECT m.request_id FROM trace_request_metadata m '
    "JOIN p_runs p ON m.key = 'mlflow.sourceRun' AND m.value = p.run_uuid "
    'UNION SELECT t.request_id FROM trace_info t JOIN p_exps USING (experiment_id)',
    'CREATE TEMP TABLE p_inputs ON COMMIT DROP AS SELECT i.input_uuid, i.source_id FROM inputs i '
    "JOIN p_runs p ON i.destination_type = 'RUN' AND i.destination_id = p.run_uuid",
    'ANALYZE p_exps, p_runs, p_traces, p_inputs',
    "DELETE FROM entity_associations e USING p_runs p WHERE e.destination_type = 'run' AND e.destination_id = p.run_uuid",
    "DELETE FROM entity_associations e USING p_traces t WHERE e.source_type = 'trace' AND e.source_id = t.request_id",
    'DELETE FROM trace_info t USING p_traces p WHERE t.request_id = p.request_id',
    'DELETE FROM input_tags t USING p_inputs i WHERE t.input_uuid = i.input_uuid',
    'DELETE FROM inputs t USING p_inputs i WHERE t.input_uuid = i.input_uuid',
    "DELETE FROM datasets d USING (SELECT DISTINCT source_id FROM p_inputs) u WHERE d.dataset_uuid = u.source_id "
    "AND NOT EXISTS (SELECT 1 FROM inputs i WHERE i.source_type = 'DATASET' AND i.source_id = d.dataset_uuid)",
    'DELETE FROM metrics x USING p_runs p WHERE x.run_uuid = p.run_uuid',
    'DELETE FROM latest_metrics x USING p_runs p WHERE x.run_uuid = p.run_uuid',
    'DELETE FROM params x USING p_runs p WHERE x.run_uuid = p.run_uuid',
    'DELETE FROM tags x USING p_runs p WHERE x.run_uuid = p.run_uuid',
    'DELETE FROM runs x USING p_runs p WHERE x.run_uuid = p.run_uuid',
    'DELETE FROM experiment_tags x USING p_exps p WHERE x.experiment_id = p.experiment_id',
    'DELETE FROM experiments x USING p_exps p WHERE x.experiment_id = p.experiment_id',
)


def run_floor(cluster, db):
    """FLOOR_SQL in one transaction; returns the time of each statement."""
    conn = cluster.connect(db)
    steps = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for sql in FLOOR_SQL:
            t1 = time.perf_counter()
            cur.execute(sql)
            steps.append({'sql': sql[:90], 's': time.perf_counter() - t1, 'rows': cur.rowcount})
    t1 = time.perf_counter()
    conn.commit()
    steps.append({'sql': 'COMMIT', 's': time.perf_counter() - t1, 'rows': 0})
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    conn.close()
    return {'wall_s': wall, 'maxrss_mb': 0.0, 'client_cpu_s': cpu, 'steps': steps}


def mlflow_cli():
    cli = os.path.join(os.path.dirname(sys.executable), 'mlflow')
    return [cli] if os.path.exists(cli) else [sys.executable, '-m', 'mlflow']


def run_gc(cluster, db, workdir, tag):
    url = cluster.url(db)
    env = dict(os.environ, MLFLOW_TRACKING_URI=url, MLFLOW_DISABLE_TELEMETRY='true')
    log_path = os.path.join(workdir, '%s.log' % tag)
    res = run_timed(mlflow_cli() + ['gc', '--backend-store-uri', url], env, log_path)
    with open(log_path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    res['runs_reported'] = text.count('Run with ID')
    if res['rc'] != 0:
        raise RuntimeError('mlflow gc failed (rc %d): %s' % (res['rc'], _mask(text[-2000:], cluster)))
    return res


def collections_dir(workdir):
    """A collections path in which ansible_collections.mlops.mlflow is this checkout."""
    path = os.path.join(workdir, 'collections')
    link = os.path.join(path, 'ansible_collections', 'mlops', 'mlflow')
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(REPO, link)
    return path


def run_purge(cluster, db, workdir, tag, profile=False, kwargs=None):
    env = dict(os.environ, BENCH_PURGE_DB_URL=cluster.url(db), BENCH_COLLECTIONS=collections_dir(workdir),
               BENCH_PURGE_KWARGS=json.dumps(kwargs or {}), MLFLOW_DISABLE_TELEMETRY='true')
    if profile:
        env['BENCH_PURGE_PROFILE'] = '1'
    log_path = os.path.join(workdir, '%s.log' % tag)
    res = run_timed([sys.executable, os.path.abspath(__file__), '--child-purge'], env, log_path)
    with open(log_path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    marker = 'BENCH_RESULT '
    lines = [line for line in text.splitlines() if line.startswith(marker)]
    if res['rc'] != 0 or not lines:
        raise RuntimeError('purge engine failed (rc %d): %s' % (res['rc'], _mask(text[-3000:], cluster)))
    res.update(json.loads(lines[-1][len(marker):]))
    return res


def child_purge():
    """Runs in its own process: import the engine and purge everything in the deleted stage."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    sys.path.insert(0, os.environ['BENCH_COLLECTIONS'])
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.mlops.mlflow.plugins.module_utils.purge import run_purge as engine
    t_import = time.perf_counter() - t0
    cpu_import = time.process_time() - cpu0
    stats = None
    if os.environ.get('BENCH_PURGE_PROFILE'):
        stats = _profile_statements()
    messages = []
    rss_trail = []

    def collect(msg):
        messages.append(msg)
        if stats is not None:
            # memory at each progress line: growth from batch to batch would be a leak
            with open('/proc/self/statm', encoding='utf-8') as f:
                rss = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1048576.0
            rss_trail.append([str(msg)[:60], round(rss, 1)])
    profiler = None
    if stats is not None:
        import cProfile  # pylint: disable=import-outside-toplevel
        profiler = cProfile.Profile()
        profiler.enable()
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    kwargs = json.loads(os.environ.get('BENCH_PURGE_KWARGS') or '{}')
    result = engine(os.environ['BENCH_PURGE_DB_URL'], scope='all', log=collect, **kwargs)
    t_call = time.perf_counter() - t1
    cpu_call = time.process_time() - cpu1
    if profiler is not None:
        profiler.disable()
    out = {'import_s': t_import, 'call_s': t_call, 'import_cpu_s': cpu_import, 'call_cpu_s': cpu_call,
           'log_lines': len(messages),
           'result': {k: v for k, v in result.items() if k in ('changed', 'counts', 'runs', 'experiments', 'duration_s')}}
    if stats is not None:
        out['statements'] = sorted(stats.values(), key=lambda s: -s['s'])[:25]
        out['sql_total'] = {'n': sum(s['n'] for s in stats.values()), 's': sum(s['s'] for s in stats.values())}
        out['functions'] = _profile_functions(profiler)
        out['rss_trail'] = rss_trail
    print('BENCH_RESULT ' + json.dumps(out, default=str), flush=True)


def _profile_functions(profiler, limit=15):
    """Cumulative time of the engine's own functions (and of mlflow's import), slowest first."""
    import pstats  # pylint: disable=import-outside-toplevel
    rows = []
    for (path, line, name), entry in pstats.Stats(profiler).stats.items():
        calls, cumulative = entry[1], entry[3]
        if '/plugins/module_utils/' in path or (name == '<module>' and path.endswith('/mlflow/__init__.py')):
            rows.append({'function': '%s:%d %s' % (path.split('/ansible_collections/mlops/mlflow/')[-1], line, name),
                         'calls': calls, 's': cumulative})
    return sorted(rows, key=lambda r: -r['s'])[:limit]


def _profile_statements():
    """Time every SQL statement the engine sends through SQLAlchemy (cursor execute events)."""
    import sqlalchemy  # pylint: disable=import-outside-toplevel
    stats = {}

    def record(statement, seconds, rowcount):
        key = ' '.join(str(statement).split())[:300]
        entry = stats.setdefault(key, {'sql': key, 'n': 0, 's': 0.0, 'rows': 0})
        entry['n'] += 1
        entry['s'] += seconds
        entry['rows'] += max(rowcount or 0, 0)

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, 'before_cursor_execute')
    def _before(conn, cursor, statement, parameters, context, executemany):  # pylint: disable=unused-argument
        conn.info.setdefault('bench_t0', []).append(time.perf_counter())

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, 'after_cursor_execute')
    def _after(conn, cursor, statement, parameters, context, executemany):  # pylint: disable=unused-argument
        record(statement, time.perf_counter() - conn.info['bench_t0'].pop(), cursor.rowcount)

    return stats


def run_module(cluster, db, workdir, tag, scope):
    """The Ansible module end to end: ansible localhost -m mlops.mlflow.purge."""
    import yaml  # pylint: disable=import-outside-toplevel
    url = cluster.url(db)
    with open(PURGE_MODULE_FILE, encoding='utf-8') as f:
        takes_env_files = 'env_files:' in f.read()
    if takes_env_files:
        env_file = os.path.join(workdir, 'server-secrets.env')
        with open(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w', encoding='utf-8') as f:
            f.write('MLFLOW_BACKEND_STORE_URI=%s\n' % url)
        module_args = 'env_files=%s scope=%s' % (env_file, scope)
    else:
        module_args = 'db_url=%s scope=%s' % (url, scope)
    # The default callback with -v prints the whole module result (also for a skipped task, which the
    # ad hoc command's minimal callback would show as a bare "SKIPPED"), so the password check sees all of it.
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_dir(workdir), ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
               ANSIBLE_INJECT_FACT_VARS='false', MLFLOW_DISABLE_TELEMETRY='true', ANSIBLE_LOCALHOST_WARNING='false',
               ANSIBLE_LOAD_CALLBACK_PLUGINS='1', ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default')
    ansible = os.path.join(os.path.dirname(sys.executable), 'ansible')
    log_path = os.path.join(workdir, '%s.log' % tag)
    res = run_timed([ansible, 'localhost', '-v', '-m', 'mlops.mlflow.purge', '-a', module_args,
                     '-e', 'ansible_python_interpreter=%s' % sys.executable], env, log_path)
    with open(log_path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    status, result = 'unparsed', {}
    for line in text.splitlines():
        word = line.split(':', 1)[0]
        if word in ('ok', 'changed', 'skipping', 'fatal') and ' => ' in line:
            status = word
            dump = text[text.index(line) + line.index(' => ') + 4:].split('\nPLAY RECAP', 1)[0]
            try:   # the result is printed as JSON or YAML (callback_result_format)
                result = yaml.safe_load(dump) or {}
            except yaml.YAMLError:
                pass
            break
    res['args'] = 'env_files' if takes_env_files else 'db_url'
    res['password_in_output'] = any(s in text for s in _secrets(cluster))
    res['output_tail'] = _mask(text[-600:], cluster)
    res['ansible_status'] = status   # what Ansible made of the module's result
    res['module_runs'] = result.get('runs')
    if res['rc'] != 0:
        raise RuntimeError('ansible -m mlops.mlflow.purge failed (rc %d): %s' % (res['rc'], _mask(text[-3000:], cluster)))
    return res


def _secrets(cluster):
    password = cluster.password
    return {password, quote(password, safe=''), quote(password)}


def _mask(text, cluster):
    for secret in _secrets(cluster):
        text = text.replace(secret, '********')
    return text


# --------------------------------------------------------------------------- the benchmark

def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'n': len(values)}


def measure(cluster, meta, fingerprints, kind, workdir, rep, args):
    copy = '%s_%s_%d' % (meta['db'], kind, rep)
    cluster.drop_db(copy)
    cluster.create_db(copy, template=meta['db'])
    reset_artifacts(meta)
    load = loadavg()
    tag = '%s-%d-%s' % (kind, meta['n_deleted'], rep)
    log('N=%d repeat %d: %s (load %.2f)' % (meta['n_deleted'], rep + 1, kind, load))
    server0 = cluster.server_cpu()
    if kind == 'gc':
        res = run_gc(cluster, copy, workdir, tag)
    elif kind == 'purge':
        res = run_purge(cluster, copy, workdir, tag, profile=False, kwargs=args.purge_kwargs)
    elif kind == 'profile':
        res = run_purge(cluster, copy, workdir, tag, profile=True, kwargs=args.purge_kwargs)
    elif kind == 'floor':
        res = run_floor(cluster, copy)
    else:
        res = run_module(cluster, copy, workdir, tag, args.module_scope)
    res['server_cpu_s'] = cluster.server_cpu() - server0
    res['load1'] = load
    res['check'] = inspect(cluster, copy, meta, fingerprints)
    res['check'].pop('fingerprints')
    log('  %.2f s wall%s, CPU %.1f s client + %.1f s server, %.0f MB peak RSS, %d runs purged, %d orphan rows, '
        'active rows changed: %s'
        % (res['wall_s'], ' (%.2f s in run_purge)' % res['call_s'] if 'call_s' in res else '', res['client_cpu_s'],
           res['server_cpu_s'], res['maxrss_mb'],
           res['check']['runs_purged'], res['check']['orphan_rows'], sorted(res['check']['active_changed']) or 'none'))
    cluster.drop_db(copy)
    return res


def bench_n(cluster, n, args, workdir, have_engine, have_module):
    db = 'bench_gen_%d' % n
    art_root = os.path.join(workdir, 'artifacts-%d' % n)
    cluster.drop_db(db)
    log('N=%d: generating %s' % (n, db))
    meta = generate(cluster, db, n, art_root)
    meta['art_root'] = art_root
    log('N=%d: generated in %.1f s (schema %.1f s): %s' % (n, meta['gen_s'], meta['schema_s'], json.dumps(meta['rows'])))
    base = inspect(cluster, db, meta)
    if base['orphan_rows'] or base['runs_purged']:
        raise RuntimeError('the generated data is inconsistent: %s' % {k: v for k, v in base.items() if k != 'fingerprints'})
    fingerprints = base['fingerprints']
    result = {'n': n, 'n_active': meta['n_active'], 'rows': meta['rows'], 'gen_s': meta['gen_s'],
              'deleted_experiments': len(meta['deleted_experiments']), 'artifact_runs': len(meta['artifact_runs']),
              'noop': [], 'gc': [], 'purge': [], 'module': [], 'floor': []}
    for rep in range(args.repeat):
        load = loadavg()
        server0 = cluster.server_cpu()
        noop = run_gc(cluster, 'bench_empty', workdir, 'noop-%d-%d' % (n, rep))
        noop['server_cpu_s'] = cluster.server_cpu() - server0
        noop['load1'] = load
        result['noop'].append(noop)
        kinds = ['gc', 'purge'] if have_engine else ['gc']
        if rep % 2:
            kinds.reverse()
        if have_module:
            kinds.append('module')
        if not args.no_floor:
            kinds.append('floor')
        for kind in kinds:
            if kind == 'gc' and args.skip_gc:
                continue
            result[kind].append(measure(cluster, meta, fingerprints, kind, workdir, rep, args))
    if args.profile and have_engine:
        result['profile'] = measure(cluster, meta, fingerprints, 'profile', workdir, 0, args)
    cluster.drop_db(db)
    shutil.rmtree(art_root, ignore_errors=True)
    return result


def summarize(res):
    noop = stats([r['wall_s'] for r in res['noop']])
    gc_wall = [r['wall_s'] for r in res['gc']]
    gc_net = [r['wall_s'] - noop['median'] for r in res['gc']] if noop else []
    purge_wall = [r['wall_s'] for r in res['purge']]
    purge_call = [r['call_s'] for r in res['purge']]
    out = {
        'n': res['n'], 'noop': noop, 'gc_wall': stats(gc_wall), 'gc_net': stats(gc_net),
        'purge_wall': stats(purge_wall), 'purge_call': stats(purge_call),
        'gc_rss': stats([r['maxrss_mb'] for r in res['gc']]),
        'purge_rss': stats([r['maxrss_mb'] for r in res['purge']]),
        'module_wall': stats([r['wall_s'] for r in res['module']]),
        'module_rss': stats([r['maxrss_mb'] for r in res['module']]),
        'floor': stats([r['wall_s'] for r in res['floor']]),
        # CPU seconds (client process + whole PostgreSQL cluster): less sensitive to the machine's load.
        'noop_cpu': stats([r['client_cpu_s'] + r['server_cpu_s'] for r in res['noop']]),
        'gc_cpu': stats([r['client_cpu_s'] + r['server_cpu_s'] for r in res['gc']]),
        'purge_cpu': stats([r['client_cpu_s'] + r['server_cpu_s'] for r in res['purge']]),
        'purge_call_cpu': stats([r['call_cpu_s'] + r['server_cpu_s'] for r in res['purge']]),
        'floor_cpu': stats([r['client_cpu_s'] + r['server_cpu_s'] for r in res['floor']]),
        'load': stats([r['load1'] for k in ('gc', 'purge', 'module', 'noop', 'floor') for r in res[k]]),
    }
    if out['gc_cpu'] and out['purge_call_cpu']:
        out['gc_net_cpu'] = stats([r['client_cpu_s'] + r['server_cpu_s'] - out['noop_cpu']['median'] for r in res['gc']])
        out['ratio_cpu_net'] = out['gc_net_cpu']['median'] / out['purge_call_cpu']['median']
    if out['gc_net'] and out['floor']:
        out['ratio_floor'] = out['gc_net']['median'] / out['floor']['median']
    if out['gc_wall'] and out['purge_wall']:
        out['ratio_wall'] = out['gc_wall']['median'] / out['purge_wall']['median']
        out['ratio_net'] = out['gc_net']['median'] / out['purge_call']['median']
    for kind in ('gc', 'purge', 'module', 'floor'):
        if res[kind]:
            checks = [r['check'] for r in res[kind]]
            out[kind + '_orphans'] = max(c['orphan_rows'] for c in checks)
            out[kind + '_purged'] = [c['runs_purged'] for c in checks]
            out[kind + '_active_changed'] = sorted({t for c in checks for t in c['active_changed']})
    return out


def fmt(s, digits=2):
    if not s:
        return '-'
    return '%.*f (%.*f-%.*f)' % (digits, s['median'], digits, s['min'], digits, s['max'])


def engine_version():
    """The commit of the engine files, and whether the working tree differs from it."""
    files = ['plugins/module_utils/purge.py', 'plugins/modules/purge.py', 'plugins/module_utils/schema.py']
    try:
        commit = subprocess.run(['git', '-C', REPO, 'log', '-1', '--format=%h %s', '--'] + files,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--'] + files,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (no git)'
    return '%s%s' % (commit or 'not committed', ' + uncommitted changes' if dirty else '')


def print_report(results, settings, args, started, elapsed):
    p = print
    p('\n== purge engine vs mlflow gc, PostgreSQL %s (fsync=%s, synchronous_commit=%s), %d repeats'
      % (settings.get('server_version'), settings.get('fsync'), settings.get('synchronous_commit'), args.repeat))
    p('started %s, took %.0f s; engine: %s; run_purge(scope=all%s)'
      % (started, elapsed, engine_version(), ''.join(', %s=%r' % kv for kv in sorted(args.purge_kwargs.items()))))
    p('medians (min-max); x wall = gc wall / purge wall (whole processes); x net = (gc wall - no-op gc wall) / '
      'time inside run_purge; x CPU = the same with CPU seconds of the client process + the whole PostgreSQL cluster')
    row = '%-7s %-24s %-24s %-20s %-22s %-7s %-7s %-7s %-16s %-12s'
    p('\n' + row % ('N', 'gc wall s', 'gc net s', 'purge wall s', 'purge call s', 'x wall', 'x net', 'x CPU',
                    'peak RSS MB gc/pg', 'orphans gc/pg'))
    for res in results:
        s = summarize(res)
        p(row % (s['n'], fmt(s['gc_wall']), fmt(s['gc_net']), fmt(s['purge_wall']), fmt(s['purge_call'], 3),
                 '%.1f' % s['ratio_wall'] if 'ratio_wall' in s else '-', '%.1f' % s['ratio_net'] if 'ratio_net' in s else '-',
                 '%.1f' % s['ratio_cpu_net'] if 'ratio_cpu_net' in s else '-',
                 '%s/%s' % ('%.0f' % s['gc_rss']['median'] if s['gc_rss'] else '-',
                            '%.0f' % s['purge_rss']['median'] if s['purge_rss'] else '-'),
                 '%s/%s' % (s.get('gc_orphans', '-'), s.get('purge_orphans', '-'))))
    for res in results:
        s = summarize(res)
        p('\n-- N=%d (%d active runs, %d deleted experiments, %d runs with artifacts; generated in %.0f s)'
          % (res['n'], res['n_active'], res['deleted_experiments'], res['artifact_runs'], res['gen_s']))
        p('   rows: ' + ', '.join('%s %d' % kv for kv in sorted(res['rows'].items())))
        p('   load (1-min average at each start): %s' % fmt(s['load']))
        p('   no-op mlflow gc (CLI start-up, empty schema): %s s wall, %s s CPU' % (fmt(s['noop']), fmt(s['noop_cpu'], 1)))
        if s['gc_cpu']:
            p('   mlflow gc CPU s: %s (net of no-op %s)' % (fmt(s['gc_cpu'], 1), fmt(s.get('gc_net_cpu'), 1)))
        if s['purge_cpu']:
            p('   purge CPU s: process %s, run_purge %s; import of the engine %s s wall'
              % (fmt(s['purge_cpu'], 1), fmt(s['purge_call_cpu'], 2), fmt(stats([x['import_s'] for x in res['purge']]))))
        if s['module_wall']:
            p('   ansible localhost -m mlops.mlflow.purge (%s, scope=%s): %s s wall, peak RSS %.0f MB (largest process), '
              'password in output: %s, Ansible reports the task as: %s (module result runs=%s)'
              % (res['module'][0]['args'], args.module_scope, fmt(s['module_wall']), s['module_rss']['median'],
                 any(r['password_in_output'] for r in res['module']),
                 '/'.join(sorted({r.get('ansible_status', '?') for r in res['module']})), res['module'][0].get('module_runs')))
        if s['floor']:
            p('   reference, one hand-written set-based SQL transaction (DB rows only, no artifacts): %s s%s'
              % (fmt(s['floor'], 3), ', gc net / this = %.1fx' % s['ratio_floor'] if 'ratio_floor' in s else ''))
        kinds = [k for k in ('gc', 'purge', 'module', 'floor') if res[k]]
        labels = sorted({label for k in kinds for r in res[k] for label in r['check']['orphans']})
        p('   %-52s %s' % ('rows left that reference a purged run/experiment', ' '.join('%10s' % k for k in kinds)))
        zero = []
        for label in labels:
            worst = [max(r['check']['orphans'][label] for r in res[k]) for k in kinds]
            if any(worst):
                p('   %-52s %s' % (label, ' '.join('%10d' % w for w in worst)))
            else:
                zero.append(label)
        p('   none left by any: ' + ', '.join(zero))
        for key in ('runs_purged', 'deleted_runs_left', 'registered_deleted_runs_kept', 'deleted_experiments_left',
                    'active_artifacts_missing'):
            p('   %-52s %s' % (key, ' '.join('%10s' % max(r['check'][key] for r in res[k]) for k in kinds)))
        p('   %-52s %s' % ('deleted runs left half-purged', ' '.join(
            '%10d' % max(len(r['check']['deleted_runs_left_incomplete']) for r in res[k]) for k in kinds)))
        p('   %-52s %s' % ('active rows changed (tables)', ' '.join(
            '%10s' % (','.join(summarize(res)[k + '_active_changed']) or 'none') for k in kinds)))
        for kind in kinds:
            examples = {}
            for r in res[kind]:
                for label, example in r['check']['orphan_examples'].items():
                    examples.setdefault(label, example)
            for label, example in sorted(examples.items()):
                p('   %s left, e.g. %s: %s' % (kind, label, example))
        for r in res['purge'][:1]:
            p('   purge result: %s' % json.dumps(r['result']))
        for r in res['floor'][:1]:
            p('   reference transaction, slowest statements: ' + '; '.join(
                '%.3f s %s' % (st['s'], st['sql'][:60]) for st in sorted(r['steps'], key=lambda x: -x['s'])[:4]))
        if 'profile' in res:
            p('   slowest statements of the purge engine (one profiled run, %.2f s call):' % res['profile']['call_s'])
            total = res['profile'].get('sql_total', {})
            p('     all SQL: %d statements, %.3f s' % (total.get('n', 0), total.get('s', 0)))
            for st in res['profile'].get('statements', [])[:12]:
                p('     %8.3f s %5d x %9d rows  %s' % (st['s'], st['n'], st['rows'], st['sql'][:150]))
            trail = res['profile'].get('rss_trail', [])
            if trail:
                p('   purge process RSS at its progress lines (MB): first %s, after batch 1 %s, last %s'
                  % (trail[0][1], trail[min(1, len(trail) - 1)][1], trail[-1][1]))
            p('   where the call spends its time (cProfile, cumulative; profiling overhead included):')
            for fn in res['profile'].get('functions', []):
                p('     %8.3f s %6d calls  %s' % (fn['s'], fn['calls'], fn['function']))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--runs', type=int, nargs='+', default=[2000], help='numbers of deleted runs (N)')
    parser.add_argument('--repeat', type=int, default=3, help='repeats per N (fresh copy each)')
    parser.add_argument('--pg-dir', default='/tmp/mlops-bench-pg',
                        help='directory of the benchmark cluster (created, and deleted at the end)')
    parser.add_argument('--pg-port', type=int, default=54391, help='port of the benchmark cluster')
    parser.add_argument('--json', help='write the raw results here')
    parser.add_argument('--no-module', action='store_true', help='do not time the Ansible module')
    parser.add_argument('--module-scope', default='runs', help='scope= for the Ansible module run')
    parser.add_argument('--profile', action='store_true', help='one more purge per N with every SQL statement timed')
    parser.add_argument('--purge-kwargs', type=json.loads, default={},
                        help='extra run_purge() arguments as JSON, e.g. \'{"batch_size": 5000}\' (default: none)')
    parser.add_argument('--no-floor', action='store_true', help='skip the hand-written reference transaction')
    parser.add_argument('--skip-gc', action='store_true', help='only the purge engine (for quick iterations)')
    parser.add_argument('--child-purge', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_purge:
        child_purge()
        return
    os.chdir(REPO)
    have_engine = os.path.exists(PURGE_ENGINE_FILE)
    have_module = os.path.exists(PURGE_MODULE_FILE) and not args.no_module
    if not have_engine:
        log('plugins/module_utils/purge.py does not exist: timing mlflow gc only')
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    version_at_start = engine_version()
    t0 = time.perf_counter()
    log('uptime at start: ' + uptime_line())
    workdir = tempfile.mkdtemp(prefix='mlops-bench-')
    cluster = Cluster(args.pg_dir, args.pg_port)

    def _terminate(signum, frame):  # pylint: disable=unused-argument
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _terminate)
    results = []
    try:
        cluster.start()
        settings = cluster.settings()
        log('own cluster %s:%d (%s): %s' % ('127.0.0.1', args.pg_port, args.pg_dir, json.dumps(settings)))
        cluster.create_db('bench_empty')
        import sqlalchemy  # pylint: disable=import-outside-toplevel
        from mlflow.store.db.utils import _initialize_tables  # pylint: disable=import-outside-toplevel
        engine = sqlalchemy.create_engine(cluster.url('bench_empty'), poolclass=sqlalchemy.pool.NullPool)
        _initialize_tables(engine)
        engine.dispose()
        for n in args.runs:
            results.append(bench_n(cluster, n, args, workdir, have_engine, have_module))
        elapsed = time.perf_counter() - t0
        log('uptime at end: ' + uptime_line())
        if engine_version() != version_at_start:
            log('WARNING: the engine changed during the benchmark (%s at the start)' % version_at_start)
        print_report(results, settings, args, started, elapsed)
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as f:
                json.dump({'started': started, 'elapsed_s': elapsed, 'settings': settings, 'engine': engine_version(),
                           'args': {k: v for k, v in vars(args).items() if k != 'child_purge'},
                           'results': results, 'summary': [summarize(r) for r in results]}, f, indent=1, default=str)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()
