"""Tests of the purge module and engine on real sqlite files, PostgreSQL and MariaDB databases.

Data is written through MLflow's own client (tests/support/mlflow_data.py) and soft-deleted at
random; the checks read every table generically: no row of the installed schema may still name a
purged run, trace, logged model, dataset or experiment, and every other row must be unchanged.
"""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy
from sqlalchemy.pool import NullPool

from ansible_collections.mlops.mlflow.plugins.module_utils import purge as engine
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import SchemaError
from ansible_collections.mlops.mlflow.plugins.modules import purge as purge_module
from support import mlflow_data
from support.db_schema_fixtures import PG_PASSWORD, make_behind, make_current, revision_of
from support.module_runner import run_main


@pytest.fixture
def run(capsys):
    def runner(db_url, check=False, diff=False, **params):
        return json.loads(run_main(capsys, purge_module.main, db_url, check=check, diff=diff, **params))
    return runner


def _scalar_list(db_url, sql, **params):
    eng = sqlalchemy.create_engine(db_url, poolclass=NullPool)
    try:
        with eng.connect() as conn:
            query = sqlalchemy.text(sql) if isinstance(sql, str) else sql
            return [row[0] for row in conn.execute(query, params)]
    finally:
        eng.dispose()


def _scalar_rows(db_url, sql, **params):
    eng = sqlalchemy.create_engine(db_url, poolclass=NullPool)
    try:
        with eng.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(sql), params)]
    finally:
        eng.dispose()


def _dependent_ids(db_url, exp_ids, run_ids):
    """Ids that must vanish with the purge: traces of the runs, and datasets/models/traces of the experiments."""
    ids = set(run_ids)
    for run_id in run_ids:
        meta = sqlalchemy.table('trace_request_metadata', sqlalchemy.column('key'), sqlalchemy.column('value'),
                                sqlalchemy.column('request_id'))
        ids.update(_scalar_list(db_url, sqlalchemy.select(meta.c.request_id).where(
            meta.c.key == 'mlflow.sourceRun', meta.c.value == run_id)))
    for exp_id in exp_ids:
        for sql in ('SELECT dataset_uuid FROM datasets WHERE experiment_id = :e',
                    'SELECT model_id FROM logged_models WHERE experiment_id = :e',
                    'SELECT request_id FROM trace_info WHERE experiment_id = :e'):
            ids.update(_scalar_list(db_url, sql, e=int(exp_id)))
        ids.update(_scalar_list(db_url, 'SELECT run_uuid FROM runs WHERE experiment_id = :e', e=int(exp_id)))
    # Datasets of the surviving experiments that only purged runs use (no other input names them).
    for exp_id in _scalar_list(db_url, 'SELECT DISTINCT experiment_id FROM runs WHERE run_uuid IN (%s)'
                               % ','.join("'%s'" % r for r in run_ids)) if run_ids else ():
        for dataset_uuid in _scalar_list(db_url, 'SELECT dataset_uuid FROM datasets WHERE experiment_id = :e', e=exp_id):
            users = set(_scalar_list(db_url, "SELECT destination_id FROM inputs WHERE source_type = 'DATASET' "
                                     "AND source_id = :d", d=dataset_uuid))
            if users <= set(run_ids):
                ids.add(dataset_uuid)
    # Inputs (and so their tags) that name any of these go too.
    for ident in list(ids):
        ids.update(_scalar_list(db_url, 'SELECT input_uuid FROM inputs WHERE source_id = :i OR destination_id = :i', i=ident))
    return ids


def _experiment_rows(snapshot, exp_ids, columns):
    """{table: rows} of rows whose experiment_id column is one of exp_ids."""
    exp_ids = {str(e) for e in exp_ids}
    found = {}
    for name, rows in snapshot.items():
        if 'experiment_id' in columns.get(name, ()):
            idx = columns[name].index('experiment_id')
            hits = [r for r in rows if r[idx] in exp_ids]
            if hits:
                found[name] = hits
    return found


def _columns(db_url):
    eng = sqlalchemy.create_engine(db_url, poolclass=NullPool)
    try:
        insp = sqlalchemy.inspect(eng)
        return {t: [c['name'] for c in insp.get_columns(t)] for t in insp.get_table_names()}
    finally:
        eng.dispose()


def _artifact_dirs(root):
    found = set()
    for dirpath, _dirs, _files in os.walk(root):
        found.add(os.path.relpath(dirpath, root))
    return found


def _scenario(new_db, backend, tmp_path, seed):
    db_url = new_db(backend)
    make_current(db_url)
    art = str(tmp_path / ('art-%d' % seed))
    layout = mlflow_data.populate(db_url, art, experiments=3, runs_per_experiment=3, seed=seed)
    deleted_runs, deleted_exps = mlflow_data.delete_randomly(db_url, layout, seed=seed)
    # One deleted run is the source of a registered model version: it must be kept.
    registered = None
    candidates = sorted(deleted_runs)
    if candidates:
        registered = candidates[0]
        mlflow_data.register_version(db_url, registered)
    return db_url, art, layout, deleted_runs, deleted_exps, registered


@pytest.mark.parametrize('backend,seed', [('sqlite', 1), ('sqlite', 2), ('sqlite', 3), ('postgresql', 4), ('mysql', 5)])
def test_purge_random_deletions_leaves_no_orphan_and_touches_nothing_else(new_db, backend, seed, tmp_path, run):
    db_url, art, layout, deleted_runs, deleted_exps, registered = _scenario(new_db, backend, tmp_path, seed)
    kept_exps = set()
    if registered:
        kept_exps = {e for e, runs in layout['experiments'].items() if registered in runs} & deleted_exps
    purge_exps = deleted_exps - kept_exps
    purge_runs = (deleted_runs - {registered}) | {r for e in purge_exps for r in layout['experiments'][e]}
    gone_ids = _dependent_ids(db_url, purge_exps, purge_runs)
    columns = _columns(db_url)
    before = mlflow_data.rows_snapshot(db_url)
    dirs_before = _artifact_dirs(art)
    assert mlflow_data.references(before, purge_runs), 'the generated data must reference the runs to purge'
    # The data covers the tables without foreign keys and the ones hanging off traces and logged models.
    for name in ('inputs', 'input_tags', 'datasets', 'trace_info', 'trace_request_metadata', 'spans', 'assessments',
                 'entity_associations', 'logged_models', 'logged_model_params', 'logged_model_metrics',
                 'logged_model_tags', 'model_versions', 'metrics', 'latest_metrics', 'params', 'tags'):
        assert before[name], 'no rows in %s' % name

    # Check mode: exact prediction, nothing changed.
    checked = run(db_url, check=True, diff=True)
    assert checked['changed'] is True, checked
    assert mlflow_data.rows_snapshot(db_url) == before
    assert _artifact_dirs(art) == dirs_before
    assert checked['runs'] == len(purge_runs)
    assert checked['experiments'] == len(purge_exps)

    result = run(db_url)
    assert result['changed'] is True, result
    assert set(result['run_ids']) == purge_runs
    assert set(result['experiment_ids']) == {str(e) for e in purge_exps}
    assert result['counts'] == checked['counts'], 'check mode must predict the exact counts'
    assert result['unhandled'] == []
    if registered:
        assert 'run %s' % registered in result['kept']

    after = mlflow_data.rows_snapshot(db_url)
    # 1. No row anywhere names a purged run, trace, model, dataset; no row of a purged experiment remains.
    assert mlflow_data.references(after, gone_ids) == {}
    assert _experiment_rows(after, purge_exps, columns) == {}
    # 2. Every other row is still there, unchanged (a logged model of a purged run only loses source_run_id).
    for name, rows in before.items():
        expected = {r for r in rows if not any(v in {str(i) for i in gone_ids} for v in r if v is not None)}
        expected -= set(_experiment_rows({name: expected}, purge_exps, columns).get(name, []))
        missing = expected - after[name]
        assert not missing, '%s lost rows it should have kept: %s' % (name, sorted(missing)[:3])
    # 2b. Every dataset a surviving run uses is still there (the shared one included), and no dataset
    #     is left that no input names.
    datasets_after = {r[0] for r in _scalar_rows(db_url, 'SELECT dataset_uuid, experiment_id FROM datasets')}
    used = _scalar_list(db_url, "SELECT source_id FROM inputs WHERE source_type = 'DATASET'")
    assert set(used) <= datasets_after
    assert datasets_after <= set(used), 'datasets no input names are left: %s' % sorted(datasets_after - set(used))
    surviving = [r for e, runs in layout['experiments'].items() if e not in purge_exps for r in runs if r not in purge_runs]
    for run_id in surviving:
        names = _scalar_list(db_url, "SELECT d.name FROM datasets d JOIN inputs i ON i.source_id = d.dataset_uuid "
                             "AND i.source_type = 'DATASET' WHERE i.destination_id = :r", r=run_id)
        assert 'ds-shared' in names and len(names) == 2, (run_id, names)
    # 3. The counts are what went.
    deleted_rows = sum(len(before[t]) - len(after[t]) for t in before)
    assert deleted_rows == sum(v for k, v in result['counts'].items() if '(set NULL)' not in k)
    # 4. Artifacts of purged runs and experiments are gone, the others are still there.
    dirs_after = _artifact_dirs(art)
    for run_id in purge_runs:
        assert not [d for d in dirs_after if run_id in d], run_id
    for exp_id in set(layout['experiments']) - purge_exps:
        for run_id in layout['experiments'][exp_id]:
            if run_id not in purge_runs:
                assert os.path.isfile(os.path.join(art, layout['names'][exp_id], run_id, 'artifacts', 'notes', 'readme.txt'))
    # 5. Idempotent, and the names of purged experiments can be reused at once.
    again = run(db_url)
    assert again['changed'] is False and again['runs'] == 0 and again['counts'] == {}
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    for exp_id in purge_exps:
        client.create_experiment(layout['names'][exp_id])
    # 6. Surviving runs are readable through MLflow.
    for exp_id, runs in layout['experiments'].items():
        for run_id in runs:
            if run_id not in purge_runs and exp_id not in purge_exps:
                got = client.get_run(run_id)
                assert 'lr' in got.data.params and 'loss' in got.data.metrics


def test_scope_runs_keeps_deleted_experiments_and_older_than_filters(new_db, tmp_path, run):
    db_url = new_db('sqlite')
    make_current(db_url)
    layout = mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=2, runs_per_experiment=2)
    exp_a, exp_b = sorted(layout['experiments'])
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    client.delete_run(layout['experiments'][exp_a][0])
    client.delete_experiment(exp_b)
    # Everything was deleted just now: an age filter selects nothing.
    young = run(db_url, older_than='1d')
    assert young['changed'] is False and young['runs'] == 0
    result = run(db_url, scope='runs')
    # scope=runs purges the deleted runs, including those of the deleted experiment, but keeps the experiment.
    assert set(result['run_ids']) == {layout['experiments'][exp_a][0]} | set(layout['experiments'][exp_b])
    assert result['experiments'] == 0
    assert client.get_experiment(exp_b).lifecycle_stage == 'deleted'
    result = run(db_url, scope='experiments', experiment_names=[layout['names'][exp_b]])
    assert result['experiment_ids'] == [exp_b]
    assert _scalar_list(db_url, 'SELECT count(*) FROM experiments WHERE experiment_id = :e', e=int(exp_b)) == [0]


def test_experiment_with_an_active_run_is_kept(new_db, tmp_path, run):
    db_url = new_db('sqlite')
    make_current(db_url)
    layout = mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=1, runs_per_experiment=2)
    (exp_id,) = layout['experiments']
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    client.delete_experiment(exp_id)
    client.restore_run(layout['experiments'][exp_id][1])   # MLflow allows restoring a run of a deleted experiment
    result = run(db_url, scope='experiments')
    assert result['experiments'] == 0 and result['runs'] == 0
    assert 'holds 1 run(s) that are not deleted' in result['kept']['experiment %s' % exp_id]
    assert client.get_run(layout['experiments'][exp_id][1]).info.lifecycle_stage == 'active'


@pytest.mark.parametrize('params,message', [
    ({'older_than': '30 days'}, "older_than '30 days' is not a valid age"),
    ({'older_than': '-1d'}, 'older_than'),
    ({'run_ids': ['no-such-run']}, 'run_ids: no run no-such-run'),
    ({'experiment_names': ['nope']}, 'no experiment nope'),
    ({'experiment_ids': ['abc']}, "experiment_ids: 'abc' is not a valid id"),
    ({'batch_size': 0}, 'batch_size must be an integer from 1 to 10000'),
    ({'scope': 'experiments', 'run_ids': ['x']}, 'run_ids cannot be used with scope=experiments'),
])
def test_bad_input_fails_naming_it_and_changes_nothing(new_db, tmp_path, run, params, message):
    db_url = new_db('sqlite')
    make_current(db_url)
    layout = mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=1, runs_per_experiment=2)
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    client.delete_run(layout['experiments'][next(iter(layout['experiments']))][0])
    before = mlflow_data.rows_snapshot(db_url)
    result = run(db_url, **params)
    assert result.get('failed') is True, result
    assert message in result['msg']
    assert mlflow_data.rows_snapshot(db_url) == before


def test_active_run_id_is_refused(new_db, tmp_path, run):
    db_url = new_db('sqlite')
    make_current(db_url)
    layout = mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=1, runs_per_experiment=2)
    runs = layout['experiments'][next(iter(layout['experiments']))]
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    client.delete_run(runs[0])
    before = mlflow_data.rows_snapshot(db_url)
    result = run(db_url, run_ids=[runs[0], runs[1]])
    assert result['failed'] is True
    assert 'runs %s are not in the deleted lifecycle stage' % runs[1] in result['msg']
    assert mlflow_data.rows_snapshot(db_url) == before


def test_proxied_artifacts_need_tracking_uri(new_db, run):
    db_url = new_db('sqlite')
    make_current(db_url)
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    exp_id = client.create_experiment('proxied', artifact_location='mlflow-artifacts:/proxied')
    run_id = client.create_run(exp_id).info.run_id
    client.delete_run(run_id)
    before = mlflow_data.rows_snapshot(db_url)
    result = run(db_url)
    assert result['failed'] is True and 'set tracking_uri' in result['msg']
    assert mlflow_data.rows_snapshot(db_url) == before
    # Leaving the artifacts is an explicit choice.
    result = run(db_url, delete_artifacts=False)
    assert result['changed'] is True and result['run_ids'] == [run_id]


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql', 'mysql'])
def test_schema_behind_is_refused_and_not_migrated(new_db, backend, run):
    db_url = new_db(backend)
    make_behind(db_url)
    revision = revision_of(db_url)
    result = run(db_url)
    assert result['failed'] is True and 'run the db_upgrade maintenance first' in result['msg']
    assert revision_of(db_url) == revision


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql', 'mysql'])
def test_every_id_column_of_the_installed_schema_is_covered(new_db, backend):
    db_url = new_db(backend)
    make_current(db_url)
    eng = sqlalchemy.create_engine(db_url, poolclass=NullPool)
    try:
        with eng.connect() as conn:
            graph = engine.Graph(conn)
    finally:
        eng.dispose()
    assert graph.unhandled_columns() == []
    # The links that matter are found on every backend (foreign keys reflected, soft links declared).
    links = {(l.child, l.child_col, l.parent) for l in graph.links}
    for expected in [('metrics', 'run_uuid', 'runs'), ('params', 'run_uuid', 'runs'), ('inputs', 'destination_id', 'runs'),
                     ('input_tags', 'input_uuid', 'inputs'), ('spans', 'trace_id', 'trace_info'),
                     ('datasets', 'experiment_id', 'experiments'), ('sql_trace_rollup_rebuild_queue', 'experiment_id', 'experiments'),
                     ('entity_associations', 'destination_id', 'runs'), ('assessments', 'run_id', 'runs')]:
        assert expected in links, expected


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql', 'mysql'])
def test_rows_probe_names_exactly_the_tables_and_link_conditions_that_hold_rows(new_db, backend, tmp_path):
    # The deleter skips every statement whose (table, link condition) the probe found empty:
    # a probe that missed a row would leave it behind. Checked against a COUNT per key.
    db_url = new_db(backend)
    make_current(db_url)
    mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=2, runs_per_experiment=2, seed=7)
    eng = sqlalchemy.create_engine(db_url, poolclass=NullPool)
    try:
        with eng.connect() as conn:
            graph = engine.Graph(conn)
            keys, _probe = graph.rows_probe()
            found = engine._tables_with_rows(conn, graph)  # pylint: disable=protected-access
            counted = set()
            for name, where in keys:
                cond = ' AND '.join('%s = :w%d' % (col, i) for i, (col, _v) in enumerate(where)) or '1 = 1'
                params = {'w%d' % i: val for i, (_c, val) in enumerate(where)}
                if conn.execute(sqlalchemy.text('SELECT COUNT(*) FROM %s WHERE %s' % (name, cond)), params).scalar():
                    counted.add((name, where))
    finally:
        eng.dispose()
    assert found == counted
    # The data holds rows under some conditions of a table and none under others.
    assert ('metrics', ()) in found and ('runs', ()) in found
    assert ('inputs', (('destination_type', 'RUN'),)) in found
    assert ('inputs', (('source_type', 'RUN_INPUT'),)) not in found
    assert len(found) < len(keys)


def test_password_never_in_output_and_url_from_env_files(new_db, tmp_path, run, capsys):
    db_url = new_db('postgresql')
    make_current(db_url)
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    exp_id = client.create_experiment('e', artifact_location='file://%s' % (tmp_path / 'a'))
    run_id = client.create_run(exp_id).info.run_id
    client.delete_run(run_id)
    env_file = tmp_path / 'server-secrets.env'
    env_file.write_text('# test\nMLFLOW_BACKEND_STORE_URI="%s"\n' % db_url.replace('\\', '\\\\').replace('"', '\\"').replace('$', '\\$'))
    raw = run_main(capsys, purge_module.main, None, check=True, diff=True, env_files=[str(env_file)])
    assert PG_PASSWORD not in raw and db_url not in raw
    result = json.loads(raw)
    assert result['changed'] is True and result['run_ids'] == [run_id]
    # A failure (wrong database) does not reveal it either.
    bad = db_url.rsplit('/', 1)[0] + '/no_such_db'
    raw = run_main(capsys, purge_module.main, bad)
    assert json.loads(raw)['failed'] is True
    assert PG_PASSWORD not in raw
    # A missing environment file is a clear error.
    result = json.loads(run_main(capsys, purge_module.main, None, env_files=[str(tmp_path / 'missing.env')]))
    assert result['failed'] is True and 'Cannot read environment file' in result['msg']


def test_progress_lines_and_batches(new_db, tmp_path):
    db_url = new_db('sqlite')
    make_current(db_url)
    layout = mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=1, runs_per_experiment=5)
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    for run_id in layout['experiments'][next(iter(layout['experiments']))]:
        client.delete_run(run_id)
    lines = []
    result = engine.run_purge(db_url, scope='runs', batch_size=2, log=lines.append)
    assert result['batches'] == 3 and result['runs'] == 5
    assert [l for l in lines if 'runs batch' in l][-1].endswith('(5/5 runs)') or '(5/5 runs)' in lines[-2]
    assert lines[-1].startswith('purge: purged 5 run(s)') and 'metrics=' in lines[-1]


def test_parse_older_than():
    assert engine.parse_older_than('30d') == 30 * 86400 * 1000
    assert engine.parse_older_than('1d2h3m4s') == (86400 + 7200 + 180 + 4) * 1000
    assert engine.parse_older_than(None) is None
    for bad in ('', '30', 'd', '1w', '30 days'):
        with pytest.raises(SchemaError, match='older_than'):
            engine.parse_older_than(bad)
