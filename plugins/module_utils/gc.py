# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine of the gc module: MLflow's own ``mlflow gc``, run in-process, with a read-only plan first.

run_gc() first classifies the schema read-only (it refuses anything but a schema at MLflow's
head, because opening MLflow's store on an older schema migrates it), then works out with plain
SQLAlchemy and read-only transactions exactly what ``mlflow gc`` would select and validates
explicit ids the way gc does, so that a bad id fails before anything is deleted. Only when
something is eligible does it run MLflow's ``gc`` command in this process, with its output
captured and parsed; the database URL never appears in any process's argv.

No Ansible here: the same engine runs on the hosts from a systemd timer.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from datetime import timedelta
from urllib.parse import urlparse

from ansible_collections.mlops.mlflow.plugins.module_utils.health import mlflow_client_tls, probe_health
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import (
    HAS_SQLALCHEMY,
    STATE_AHEAD,
    STATE_BEHIND,
    STATE_CURRENT,
    STATE_EMPTY,
    STATE_FOREIGN,
    STATE_INCONSISTENT,
    SchemaError,
    classify_schema,
    create_engine,
    db_error_message,
    sanitize,
    url_secrets,
)

if HAS_SQLALCHEMY:
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError
else:  # pragma: no cover - the module checks HAS_SQLALCHEMY before calling anything here
    SQLAlchemyError = Exception

DELETED = 'deleted'

# MLflow's #d#h#m#s format (mlflow gc --older-than), with numbers that float() accepts.
_NUMBER = r'(?:\d+(?:\.\d*)?|\.\d+)'
OLDER_THAN_RE = re.compile(r'^(?:(?P<days>%s)d)?(?:(?P<hours>%s)h)?(?:(?P<minutes>%s)m)?(?:(?P<seconds>%s)s)?$'
                           % ((_NUMBER,) * 4))
OLDER_THAN_EXAMPLES = "'8h', '2d8h5m20s', '2m4s', '30d', '1.5d'"

_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
_PURGED_LINE = re.compile(r'^(Run|Logged model|Experiment) with ID (\S+) has been permanently deleted\.$')
_PURGED_KIND = {'Run': 'runs', 'Logged model': 'logged_models', 'Experiment': 'experiments'}
_ARTIFACT_WARNING = re.compile(r'^(An exception .* was raised during the deletion of|Unable to resolve the provided artifact URL)')

KINDS = ('runs', 'experiments', 'logged_models')

_SCHEMA_ADVICE = {
    STATE_BEHIND: 'Upgrade it first (mlops.mlflow.db_schema, after a backup) and run gc again.',
    STATE_EMPTY: 'The database holds no MLflow schema (check db_url).',
    STATE_FOREIGN: 'The database holds no MLflow schema (check db_url).',
    STATE_AHEAD: 'A newer MLflow wrote it: run gc with that MLflow version.',
    STATE_INCONSISTENT: 'Repair the schema first (see mlops.mlflow.db_schema).',
}


class GcError(SchemaError):
    """A gc failure whose message is safe to show; result holds what happened before it (if anything)."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- arguments

def parse_older_than(older_than):
    """MLflow's older_than string as milliseconds (None stays None); SchemaError when it does not parse."""
    if older_than is None:
        return None
    text = str(older_than)
    match = OLDER_THAN_RE.match(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise SchemaError('older_than %r is not a valid age: use MLflow\'s #d#h#m#s format (days, hours, minutes, '
                          'seconds, each optional, in this order, no spaces), for example %s'
                          % (text, OLDER_THAN_EXAMPLES))
    params = {name: float(value) for name, value in match.groupdict().items() if value}
    try:
        return int(timedelta(**params).total_seconds() * 1000)
    except OverflowError as exc:
        raise SchemaError('older_than %r is too large' % text) from exc


def _id_list(name, ids):
    """Normalise a list (or comma-separated string) of ids: stripped, de-duplicated, order kept; None when empty."""
    if ids is None:
        return None
    if isinstance(ids, str):
        ids = ids.split(',')
    out = []
    for raw in ids:
        value = str(raw).strip()
        if not value or ',' in value:
            raise SchemaError('%s must be a list of ids without empty entries or commas (got %r)' % (name, raw))
        if value not in out:
            out.append(value)
    if name == 'experiment_ids':
        for value in out:
            if not re.match(r'^\d+$', value):
                raise SchemaError("Invalid experiment ID '%s' in experiment_ids. Experiment ID must be a valid integer."
                                  % value)
    return out or None


def _check_workspaces():
    enabled = os.environ.get('MLFLOW_ENABLE_WORKSPACES', '').strip().lower() in ('1', 'true', 'yes', 'on')
    if enabled or os.environ.get('MLFLOW_WORKSPACE'):
        raise SchemaError('MLflow workspaces (MLFLOW_ENABLE_WORKSPACES / MLFLOW_WORKSPACE) are set in the environment; '
                          'gc across workspaces is not supported by this collection')


def _is_http(uri):
    return bool(uri) and urlparse(uri).scheme in ('http', 'https')


def _check_server(tracking_uri, timeout, secrets):
    """Fail before deleting anything when the tracking server does not answer on /health."""
    cafile, insecure = mlflow_client_tls()
    probe = probe_health(tracking_uri, timeout, cafile=cafile, insecure=insecure)
    shown = sanitize(probe['url'].rpartition('/health')[0], secrets)
    status = probe['status']
    if status is None:
        raise SchemaError('The tracking server at %s (tracking_uri) does not answer: %s. MLflow\'s gc deletes proxied '
                          'artifacts through it; nothing was deleted.' % (shown, sanitize(probe['error'], secrets)))
    if status >= 400:
        raise SchemaError('The tracking server at %s (tracking_uri) answers %s on /health; MLflow\'s gc deletes proxied '
                          'artifacts through it; nothing was deleted.' % (shown, status))


# --------------------------------------------------------------------------- read-only plan

def _tables():
    col = sqlalchemy.column
    runs = sqlalchemy.table('runs', col('run_uuid'), col('experiment_id'), col('lifecycle_stage'),
                            col('deleted_time'), col('artifact_uri'))
    experiments = sqlalchemy.table('experiments', col('experiment_id'), col('lifecycle_stage'),
                                   col('last_update_time'))
    models = sqlalchemy.table('logged_models', col('model_id'), col('lifecycle_stage'),
                              col('last_updated_timestamp_ms'), col('artifact_location'))
    return runs, experiments, models


def _deleted_totals(conn):
    """Rows in the deleted lifecycle stage, per kind."""
    runs, experiments, models = _tables()
    totals = {}
    for kind, table in (('runs', runs), ('experiments', experiments), ('logged_models', models)):
        stmt = sqlalchemy.select(sqlalchemy.func.count()).select_from(table).where(table.c.lifecycle_stage == DELETED)
        totals[kind] = int(conn.execute(stmt).scalar())
    return totals


def _plan(conn, older_than, delta, run_ids, experiment_ids, logged_model_ids, now):
    """What ``mlflow gc`` would purge, selected the way its _gc_tracking_resources selects it.

    Raises SchemaError with MLflow's wording for the explicit ids gc would refuse.
    """
    runs, experiments, models = _tables()
    select = sqlalchemy.select
    threshold = now - (delta or 0)

    deleted_runs_old = {r[0] for r in conn.execute(
        select(runs.c.run_uuid).where(runs.c.lifecycle_stage == DELETED, runs.c.deleted_time <= threshold))}
    run_list = list(run_ids) if run_ids is not None else list(deleted_runs_old)

    deleted_models = {r[0] for r in conn.execute(
        select(models.c.model_id).where(models.c.lifecycle_stage == DELETED, models.c.last_updated_timestamp_ms <= now))}
    deleted_models_old = {r[0] for r in conn.execute(
        select(models.c.model_id).where(models.c.lifecycle_stage == DELETED,
                                        models.c.last_updated_timestamp_ms <= threshold))}
    model_list = list(logged_model_ids) if logged_model_ids is not None else list(deleted_models_old)

    if experiment_ids:
        wanted = [int(e) for e in experiment_ids]
        found = {int(r[0]): (r[1], r[2]) for r in conn.execute(
            select(experiments.c.experiment_id, experiments.c.lifecycle_stage, experiments.c.last_update_time)
            .where(experiments.c.experiment_id.in_(wanted)))}
        for exp_id in wanted:
            if exp_id not in found:
                raise SchemaError('No Experiment with id=%d exists' % exp_id)
        active = [str(e) for e in wanted if found[e][0] != DELETED]
        if active:
            raise SchemaError('Experiments %s are not in the deleted lifecycle stage. Only experiments in the deleted '
                              'lifecycle stage can be hard-deleted.' % active)
        if older_than:
            young = [str(e) for e in wanted if found[e][1] is None or found[e][1] >= threshold]
            if young:
                raise SchemaError('Experiments %s are not older than the required age. Only experiments older than %s '
                                  'can be deleted.' % (young, older_than))
        exp_list = wanted
    else:
        stmt = select(experiments.c.experiment_id).where(experiments.c.lifecycle_stage == DELETED)
        if older_than:
            stmt = stmt.where(experiments.c.last_update_time < threshold)
        exp_list = sorted(int(r[0]) for r in conn.execute(stmt))

    if exp_list:
        in_experiments = list(conn.execute(
            select(runs.c.run_uuid, runs.c.lifecycle_stage, runs.c.experiment_id)
            .where(runs.c.experiment_id.in_(exp_list))))
        # MLflow deletes an experiment's runs through an ORM cascade, restored (active) ones included,
        # without a word and without deleting their artifacts. Refuse instead of losing them silently.
        alive = sorted('%s (experiment %s)' % (r[0], r[2]) for r in in_experiments if r[1] != DELETED)
        if alive:
            raise SchemaError('Run(s) %s are not deleted but belong to experiment(s) that would be permanently deleted; '
                              'MLflow would remove them with the experiment, without deleting their artifacts. Delete '
                              'or restore them consistently (delete the runs or restore the experiment) first.'
                              % ', '.join(alive[:10]))
        run_list.extend(r[0] for r in in_experiments if r[1] == DELETED)

    run_set = sorted(set(run_list), key=_id_sort_key)
    run_rows = {}
    for chunk in _chunks(run_set):
        for row in conn.execute(select(runs.c.run_uuid, runs.c.lifecycle_stage, runs.c.artifact_uri)
                                .where(runs.c.run_uuid.in_(chunk))):
            run_rows[row[0]] = (row[1], row[2])
    for run_id in run_set:
        if run_id not in run_rows:
            raise SchemaError('Run with id=%s not found' % run_id)
        if run_rows[run_id][0] != DELETED:
            raise SchemaError('Run %s is not in `deleted` lifecycle stage. Only runs in `deleted` lifecycle stage '
                              'can be deleted.' % run_id)
        if older_than and run_id not in deleted_runs_old:
            raise SchemaError('Run %s is not older than the required age. Only runs older than %s can be deleted.'
                              % (run_id, older_than))

    model_set = sorted(set(model_list), key=_id_sort_key)
    model_rows = {}
    for chunk in _chunks(model_set):
        for row in conn.execute(select(models.c.model_id, models.c.artifact_location)
                                .where(models.c.model_id.in_(chunk))):
            model_rows[row[0]] = row[1]
    for model_id in model_set:
        if model_id not in model_rows:
            raise SchemaError("Logged model with ID '%s' not found." % model_id)
        if model_id not in deleted_models:
            raise SchemaError('Logged model %s is not in `deleted` lifecycle stage. Only logged models in `deleted` '
                              'lifecycle stage can be deleted.' % model_id)
        if older_than and model_id not in deleted_models_old:
            raise SchemaError('Logged model %s is not older than the required age. Only logged models older than %s '
                              'can be deleted.' % (model_id, older_than))

    artifact_uris = [run_rows[r][1] for r in run_set] + [model_rows[m] for m in model_set]
    return {
        'runs': run_set,
        'experiments': [str(e) for e in sorted(set(exp_list))],
        'logged_models': model_set,
        'proxied_artifacts': sum(1 for uri in artifact_uris if uri and str(uri).startswith('mlflow-artifacts:')),
    }


def _chunks(values, size=500):
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _read(db_url, connect_timeout, func):
    engine = create_engine(db_url, connect_timeout=connect_timeout, read_only=True)
    try:
        with engine.connect() as conn:
            try:
                return func(conn)
            finally:
                conn.rollback()
    except SQLAlchemyError as exc:
        raise SchemaError(db_error_message('Reading the tracking database', exc, db_url)) from exc
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- running MLflow's gc

class _LineSink(io.TextIOBase):
    """A text stream that hands every complete line to a callback."""

    def __init__(self, on_line):
        super().__init__()
        self._on_line = on_line
        self._pending = ''

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, text):
        self._pending += text
        while '\n' in self._pending:
            line, self._pending = self._pending.split('\n', 1)
            self._on_line(line)
        return len(text)

    def finish(self):
        if self._pending:
            line, self._pending = self._pending, ''
            self._on_line(line)


def _mlflow_gc_command():
    try:
        from mlflow.cli import gc as gc_command
    except ImportError as exc:
        raise SchemaError('Cannot import MLflow\'s gc command (mlflow.cli.gc): %s' % exc) from exc
    return gc_command


@contextlib.contextmanager
def _restored_tracking_uri():
    """MLflow's gc sets the process-wide tracking URI (and MLFLOW_TRACKING_URI); put both back afterwards."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_uri = tracking_utils._tracking_uri  # pylint: disable=protected-access
    saved_env = os.environ.get('MLFLOW_TRACKING_URI')
    try:
        yield
    finally:
        tracking_utils._tracking_uri = saved_uri  # pylint: disable=protected-access
        if saved_env is None:
            os.environ.pop('MLFLOW_TRACKING_URI', None)
        else:
            os.environ['MLFLOW_TRACKING_URI'] = saved_env


def _dispose_store_engine(db_url):
    """Close the connection pool MLflow's store keeps per URL (class-level cache)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        return
    engine_map = getattr(SqlAlchemyStore, '_engine_map', None)
    if isinstance(engine_map, dict):
        engine = engine_map.pop(db_url, None)
        if engine is not None:
            engine.dispose()


def _run_mlflow_gc(db_url, args, secrets, log):
    """Run ``mlflow gc`` in this process; returns (purged, artifact_warnings, error or None)."""
    gc_command = _mlflow_gc_command()
    purged = {kind: [] for kind in KINDS}
    warnings_seen = []
    real_stdout = sys.stdout

    def on_line(raw):
        line = sanitize(_ANSI.sub('', raw), secrets).rstrip()
        if not line:
            return
        match = _PURGED_LINE.match(line)
        if match:
            purged[_PURGED_KIND[match.group(1)]].append(match.group(2))
        elif _ARTIFACT_WARNING.match(line):
            warnings_seen.append(line)
        with contextlib.redirect_stdout(real_stdout):
            log('mlflow gc: %s' % line)

    sink = _LineSink(on_line)
    errors = io.StringIO()
    error = None
    try:
        with _restored_tracking_uri(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(errors):
            gc_command.main(args=args, prog_name='mlflow gc', standalone_mode=False)
    except Exception as exc:  # pylint: disable=broad-except
        orig = getattr(exc, 'orig', None)
        detail = ' '.join(str(orig if orig is not None else exc).split())
        error = sanitize('%s: %s' % (type(orig or exc).__name__, detail), secrets)
    finally:
        sink.finish()
        _dispose_store_engine(db_url)
    return purged, warnings_seen, error


# --------------------------------------------------------------------------- entry point

def _counts(ids):
    return {kind: len(ids[kind]) for kind in KINDS}


def run_gc(db_url, older_than=None, run_ids=None, experiment_ids=None, logged_model_ids=None,
           tracking_uri=None, artifacts_destination=None, check_mode=False, connect_timeout=10, log=print):
    """Permanently delete what MLflow's gc would, after a read-only plan; returns a dict.

    older_than: MLflow's #d#h#m#s string or None. run_ids, experiment_ids, logged_model_ids:
    lists (or comma-separated strings) of ids, with MLflow's gc semantics (an empty list is None).
    tracking_uri: the running server (http://...), needed for mlflow-artifacts:/ artifact URIs;
    defaults to db_url. artifacts_destination: passed to gc as --artifacts-destination.
    log: callable taking one progress line (never contains the database password).

    Result: changed, counts {runs, experiments, logged_models}, purged {same keys: lists of ids},
    artifact_warnings (list), duration_s, deleted_before / deleted_after (rows in the deleted
    lifecycle stage before and after; after is predicted in check mode), schema_revision.
    Raises SchemaError (GcError, with .result, when MLflow's gc fails part-way) for user errors.
    """
    started = time.monotonic()
    secrets = url_secrets(db_url) | (url_secrets(tracking_uri) if tracking_uri else set())

    def say(text):
        _emit(log, text, secrets)

    delta = parse_older_than(older_than)
    run_ids = _id_list('run_ids', run_ids)
    experiment_ids = _id_list('experiment_ids', experiment_ids)
    logged_model_ids = _id_list('logged_model_ids', logged_model_ids)
    _check_workspaces()

    schema = classify_schema(db_url, connect_timeout=connect_timeout)
    if schema['state'] != STATE_CURRENT:
        raise SchemaError('The tracking database schema is %s (revision %s, head of the installed MLflow %s); gc runs only '
                          'on a schema at head, because opening MLflow\'s store migrates or creates the schema. %s '
                          'Nothing was done.' % (schema['state'], schema['revision'] or 'none', schema['head_revision'],
                                                 _SCHEMA_ADVICE.get(schema['state'], _SCHEMA_ADVICE[STATE_BEHIND])))
    say('gc: schema current at revision %s' % schema['revision'])

    now = int(time.time() * 1000)

    def read_plan(conn):
        return _deleted_totals(conn), _plan(conn, older_than, delta, run_ids, experiment_ids, logged_model_ids, now)

    before, plan = _read(db_url, connect_timeout, read_plan)
    result = {
        'changed': False,
        'counts': _counts(plan),
        'purged': {kind: list(plan[kind]) for kind in KINDS},
        'artifact_warnings': [],
        'deleted_before': before,
        'deleted_after': dict(before),
        'schema_revision': schema['revision'],
        'duration_s': 0.0,
    }
    say('gc: eligible %(runs)d run(s), %(experiments)d experiment(s), %(logged_models)d logged model(s)'
        % result['counts'])
    if not any(plan[kind] for kind in KINDS):
        result['duration_s'] = round(time.monotonic() - started, 3)
        say('gc: nothing to purge')
        return result
    if plan['proxied_artifacts'] and not _is_http(tracking_uri):
        raise SchemaError('%d of the runs/logged models to purge keep their artifacts behind the tracking server '
                          '(mlflow-artifacts:/ URIs); MLflow\'s gc deletes them through the running server, so set '
                          'tracking_uri to it (for example http://127.0.0.1:5000). Nothing was deleted.'
                          % plan['proxied_artifacts'])
    if plan['proxied_artifacts']:
        _check_server(tracking_uri, connect_timeout or 10, secrets)

    result['changed'] = True
    if check_mode:
        result['deleted_after'] = {
            'runs': max(before['runs'] - len(plan['runs']), 0),
            'experiments': max(before['experiments'] - len(plan['experiments']), 0),
            'logged_models': max(before['logged_models'] - len(plan['logged_models']), 0),
        }
        result['duration_s'] = round(time.monotonic() - started, 3)
        say('gc: check mode, nothing deleted')
        return result

    args = ['--backend-store-uri', db_url, '--tracking-uri', tracking_uri or db_url]
    if older_than is not None:
        args += ['--older-than', str(older_than)]
    for option, ids in (('--run-ids', run_ids), ('--experiment-ids', experiment_ids),
                        ('--logged-model-ids', logged_model_ids)):
        if ids:
            args += [option, ','.join(ids)]
    if artifacts_destination:
        args += ['--artifacts-destination', artifacts_destination]

    say('gc: running MLflow %s gc in-process' % _mlflow_version())
    purged, artifact_warnings, error = _run_mlflow_gc(db_url, args, secrets, say)
    result['purged'] = {kind: sorted(purged[kind], key=_id_sort_key) for kind in KINDS}
    result['counts'] = _counts(result['purged'])
    result['artifact_warnings'] = artifact_warnings
    result['changed'] = any(purged[kind] for kind in KINDS)
    try:
        result['deleted_after'] = _read(db_url, connect_timeout, _deleted_totals)
    except SchemaError:
        if error is None:
            raise
    result['duration_s'] = round(time.monotonic() - started, 3)
    if error is not None:
        raise GcError('MLflow\'s gc failed after purging %(runs)d run(s), %(experiments)d experiment(s), '
                      '%(logged_models)d logged model(s): ' % result['counts'] + error, result)
    say('gc: purged %(runs)d run(s), %(experiments)d experiment(s), %(logged_models)d logged model(s)'
        % result['counts'] + ' in %.1f s' % result['duration_s'])
    return result


def _emit(log, text, secrets):
    """Hand one progress line, password masked, to the caller's log callable."""
    log(sanitize(text, secrets))


def _id_sort_key(value):
    return (0, int(value), '') if value.isdigit() else (1, 0, value)


def _mlflow_version():
    try:
        import mlflow
    except ImportError:
        return 'unknown'
    return str(getattr(mlflow, '__version__', 'unknown'))
