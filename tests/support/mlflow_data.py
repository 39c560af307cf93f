"""Realistic MLflow data for the maintenance tests, written through MLflow's own client.

populate() creates experiments with runs that carry params, metrics with steps, tags, a dataset
input, a trace (with spans, metadata, tags and a feedback assessment), a logged model with params,
metrics and tags (an output of the run), a trace-to-run association, local artifacts, and one
registered model version. delete_randomly() soft-deletes runs and experiments through the client.

rows_snapshot() / references() read every table of the database generically, so the tests do
not depend on the purge engine's own idea of which tables exist.
"""

from __future__ import annotations

import os
import random

import sqlalchemy
from sqlalchemy.pool import NullPool

# Traces are written synchronously, so they are in the database when the tests look (and no
# export thread writes into a database a later test has dropped).
os.environ['MLFLOW_ENABLE_ASYNC_TRACE_LOGGING'] = 'false'


def _client(db_url):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(db_url)
    mlflow.set_registry_uri(db_url)
    return mlflow, MlflowClient(tracking_uri=db_url, registry_uri=db_url)


def populate(db_url, artifact_root, experiments=3, runs_per_experiment=4, seed=0):
    """Create the data; returns {'experiments': {id: [run ids]}, 'names': {id: name}, 'models': {run: model id}}."""
    import pandas as pd
    from mlflow.entities import LoggedModelOutput

    mlflow, client = _client(db_url)
    rnd = random.Random(seed)
    layout = {'experiments': {}, 'names': {}, 'models': {}, 'traces': {}}
    frame = pd.DataFrame({'a': [1.0, 2.0], 'b': ['x', 'y']})
    for e in range(experiments):
        name = 'exp-%d-%d' % (seed, e)
        exp_id = client.create_experiment(name, artifact_location='file://%s' % os.path.join(artifact_root, name))
        layout['names'][exp_id] = name
        mlflow.set_experiment(experiment_id=exp_id)
        for r in range(runs_per_experiment):
            with mlflow.start_run() as run:
                run_id = run.info.run_id
                mlflow.log_params({'lr': rnd.random(), 'layers': r})
                for step in range(3):
                    mlflow.log_metric('loss', rnd.random(), step=step)
                mlflow.set_tag('team', 'ml')
                mlflow.log_input(mlflow.data.from_pandas(frame, name='ds-%d' % r), context='training')
                # One dataset every run of the experiment logs: MLflow reuses its row (same name and digest).
                mlflow.log_input(mlflow.data.from_pandas(frame, name='ds-shared'), context='evaluation')
                mlflow.log_text('artifact of %s' % run_id, 'notes/readme.txt')

                @mlflow.trace
                def predict(x):
                    return x * 2

                predict(r)
                trace_id = mlflow.get_last_active_trace_id()
                # Logged inside the run: MLflow records the run in assessments.run_id.
                mlflow.log_feedback(trace_id=trace_id, name='quality', value=True)
                model = client.create_logged_model(experiment_id=exp_id, name='model-%d' % r, source_run_id=run_id,
                                                   params={'k': str(r)}, tags={'stage': 'test'})
                client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
                client.log_metric(run_id, 'acc', 0.5, model_id=model.model_id)
            layout['experiments'].setdefault(exp_id, []).append(run_id)
            layout['models'][run_id] = model.model_id
            layout['traces'][run_id] = trace_id
            if trace_id:
                client.link_traces_to_run([trace_id], run_id)
    return layout


def register_version(db_url, run_id, name='registered-model'):
    _mlflow, client = _client(db_url)
    try:
        client.create_registered_model(name)
    except Exception:  # pylint: disable=broad-except  # exists already
        pass
    return client.create_model_version(name, source='runs:/%s/model' % run_id, run_id=run_id).version


def delete_randomly(db_url, layout, seed=0, run_fraction=0.4, experiments=1):
    """Soft-delete some runs and whole experiments through the client; returns (deleted runs, deleted experiments)."""
    _mlflow, client = _client(db_url)
    rnd = random.Random(seed)
    exp_ids = sorted(layout['experiments'])
    gone_exps = set(rnd.sample(exp_ids, experiments))
    deleted_runs = set()
    for exp_id in exp_ids:
        if exp_id in gone_exps:
            continue
        for run_id in layout['experiments'][exp_id]:
            if rnd.random() < run_fraction:
                client.delete_run(run_id)
                deleted_runs.add(run_id)
    for exp_id in gone_exps:
        client.delete_experiment(exp_id)
    return deleted_runs, gone_exps


def _engine(db_url):
    return sqlalchemy.create_engine(db_url, poolclass=NullPool)


def rows_snapshot(db_url):
    """{table: set of row tuples} of every table (alembic_version excluded)."""
    engine = _engine(db_url)
    result = {}
    try:
        with engine.connect() as conn:
            meta = sqlalchemy.MetaData()
            meta.reflect(conn)
            for name, tbl in meta.tables.items():
                if name.startswith('alembic_version'):
                    continue
                result[name] = {tuple(str(v) if v is not None else None for v in row) for row in conn.execute(tbl.select())}
    finally:
        engine.dispose()
    return result


def row_counts(db_url):
    return {name: len(rows) for name, rows in rows_snapshot(db_url).items()}


def references(snapshot, ids):
    """{table: rows} of the rows in snapshot that contain any of ids as a whole column value."""
    ids = {str(i) for i in ids}
    found = {}
    for name, rows in snapshot.items():
        hits = [row for row in rows if any(value in ids for value in row if value is not None)]
        if hits:
            found[name] = hits
    return found
