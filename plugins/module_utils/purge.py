# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set-based permanent deletion of deleted MLflow runs and experiments.

``mlflow gc`` deletes run by run through MLflow's store (about 13 statements per run) and
leaves rows behind in the tables that have no foreign key. This engine deletes batches of
runs with a handful of set-based statements per table and follows every table of the
installed schema:

* The foreign-key graph is reflected from the database itself (not from a hand-kept list),
  so tables added by a later migration are followed automatically. ``ON DELETE SET NULL``
  keys are set to NULL, every other key is deleted child-first (the engine does not rely
  on the database's own cascades, which SQLite does not enforce by default).
* Links MLflow keeps without a foreign key are declared once in SOFT_LINKS and
  by naming rule (an ``experiment_id`` / ``run_uuid`` / ``run_id`` column without a foreign
  key). unhandled_columns() names any id column neither covers, so a new MLflow table
  that would be missed shows up in the result and in the tests instead of rotting silently.

No Ansible import here: the maintenance timers run this code on the hosts with the
MLflow virtualenv's Python only.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import OrderedDict
from urllib.parse import unquote, urlparse

# One parser of MLflow's older_than format for gc and purge.
from ansible_collections.mlops.mlflow.plugins.module_utils.gc import parse_older_than
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import (
    STATE_CURRENT, SchemaError, classify_schema, create_engine, db_error_message, mask_url, parse_db_url)

try:
    import sqlalchemy
    from sqlalchemy import and_, bindparam, column, exists, or_, select, table, text  # noqa: F401 pylint: disable=unused-import
    from sqlalchemy.exc import SQLAlchemyError
except ImportError:  # checked by the module (run_database_module) before anything here runs
    pass

SCOPES = ('all', 'runs', 'experiments')

# IN lists are cut to this many values: far below every dialect's bind-parameter limit.
CHUNK = 500

# Trace metadata key holding the run a trace was logged in (mlflow.tracing.constant.TraceMetadataKey.SOURCE_RUN).
TRACE_SOURCE_RUN_KEY = 'mlflow.sourceRun'
# Trace tag holding the trace's artifact location (mlflow.tracing.constant.TraceTagKey... "mlflow.artifactLocation").
TRACE_ARTIFACT_TAG = 'mlflow.artifactLocation'


class Link:
    """child.child_col refers to parent.parent_col; action is 'delete', 'null' or 'keep'.

    where: extra equality conditions on the child's columns (polymorphic link tables).
    as_text: the child column holds the parent id as text (experiment ids in link tables).
    """

    def __init__(self, child, child_col, parent, parent_col, action='delete', where=None, as_text=False, why=''):
        self.child = child
        self.child_col = child_col
        self.parent = parent
        self.parent_col = parent_col
        self.action = action
        self.where = tuple(sorted((where or {}).items()))
        self.as_text = as_text
        self.why = why

    def __repr__(self):
        cond = ''.join(' [%s=%s]' % kv for kv in self.where)
        return '%s.%s -> %s.%s (%s%s)' % (self.child, self.child_col, self.parent, self.parent_col, self.action, cond)


# Links MLflow keeps without a foreign key. What happens to each is documented in docs/maintenance.md.
SOFT_LINKS = (
    # Dataset inputs of a run, model inputs/outputs of a run (log_inputs / log_outputs).
    Link('inputs', 'destination_id', 'runs', 'run_uuid', where={'destination_type': 'RUN'},
         why='dataset inputs of a purged run'),
    Link('inputs', 'source_id', 'runs', 'run_uuid', where={'source_type': 'RUN_INPUT'},
         why='model inputs of a purged run'),
    Link('inputs', 'source_id', 'runs', 'run_uuid', where={'source_type': 'RUN_OUTPUT'},
         why='model outputs of a purged run'),
    Link('inputs', 'source_id', 'datasets', 'dataset_uuid', where={'source_type': 'DATASET'},
         why='inputs of a purged dataset'),
    Link('inputs', 'destination_id', 'logged_models', 'model_id', where={'destination_type': 'MODEL_INPUT'},
         why='inputs of a purged logged model'),
    Link('inputs', 'destination_id', 'logged_models', 'model_id', where={'destination_type': 'MODEL_OUTPUT'},
         why='outputs into a purged logged model'),
    Link('input_tags', 'input_uuid', 'inputs', 'input_uuid', why='tags of a purged input'),
    # entity_associations: links between runs, traces, experiments, models, evaluation datasets, prompts.
    Link('entity_associations', 'source_id', 'runs', 'run_uuid', where={'source_type': 'run'}),
    Link('entity_associations', 'destination_id', 'runs', 'run_uuid', where={'destination_type': 'run'}),
    Link('entity_associations', 'source_id', 'experiments', 'experiment_id', where={'source_type': 'experiment'},
         as_text=True),
    Link('entity_associations', 'destination_id', 'experiments', 'experiment_id',
         where={'destination_type': 'experiment'}, as_text=True),
    Link('entity_associations', 'source_id', 'trace_info', 'request_id', where={'source_type': 'trace'}),
    Link('entity_associations', 'destination_id', 'trace_info', 'request_id', where={'destination_type': 'trace'}),
    Link('entity_associations', 'source_id', 'logged_models', 'model_id', where={'source_type': 'model'}),
    Link('entity_associations', 'destination_id', 'logged_models', 'model_id', where={'destination_type': 'model'}),
    # A logged model outlives the run that created it: only the link to the purged run goes.
    Link('logged_models', 'source_run_id', 'runs', 'run_uuid', action='null',
         why='logged model created by a purged run: kept, source_run_id set to NULL'),
    # Registered model versions: a run that is the source of one is kept (keep_registered_runs),
    # else the version stays and loses its run link.
    Link('model_versions', 'run_id', 'runs', 'run_uuid', action='null',
         why='model version of a purged run: kept, run_id set to NULL'),
)

# Id columns that link to purgeable rows by naming rule when they have no foreign key.
_RULE_COLUMNS = {'experiment_id': ('experiments', 'experiment_id'),
                 'run_uuid': ('runs', 'run_uuid'),
                 'run_id': ('runs', 'run_uuid')}

# Id-like columns that are not links to a purgeable row (checked by unhandled_columns()).
_NOT_LINKS = {
    # Denormalised copy of the dataset a logged-model metric was computed on; the row goes with
    # its logged model (foreign key) or experiment, never because a dataset went.
    ('logged_model_metrics', 'dataset_uuid'),
}

# Tables whose rows the engine deletes as roots of its own (they are not only children).
ROOT_TABLES = ('runs', 'experiments', 'trace_info')


# --------------------------------------------------------------------------- the table graph

class Graph:
    """Tables, columns and links of the installed schema, reflected from the database."""

    def __init__(self, conn):
        insp = sqlalchemy.inspect(conn)
        self.columns = {}
        self.text_columns = set()
        self.links = []
        fk_columns = set()
        # One query per kind of object on PostgreSQL and MySQL (SQLAlchemy 2 multi-reflection).
        all_columns = {key[1]: cols for key, cols in insp.get_multi_columns().items()}
        all_fks = {key[1]: fks for key, fks in insp.get_multi_foreign_keys().items()}
        for name, cols in all_columns.items():
            self.columns[name] = {c['name'] for c in cols}
            self.text_columns.update((name, c['name']) for c in cols if isinstance(c['type'], sqlalchemy.String))
        for name in self.columns:
            for fk in all_fks.get(name, ()):
                parent = fk['referred_table']
                ondelete = ((fk.get('options') or {}).get('ondelete') or 'NO ACTION').upper()
                action = 'null' if ondelete == 'SET NULL' else 'delete'
                cols, pcols = fk['constrained_columns'], fk['referred_columns']
                fk_columns.update((name, c) for c in cols)
                # Composite keys: one link per column pair; a predicate on any one of the parent's
                # key columns selects exactly the children of the selected parents.
                for child_col, parent_col in zip(cols, pcols):
                    if action == 'null' and len(cols) > 1:
                        continue
                    self.links.append(Link(name, child_col, parent, parent_col, action=action,
                                           why='foreign key %s' % ('ON DELETE ' + ondelete)))
        self.fk_columns = fk_columns
        declared = set()
        for link in SOFT_LINKS:
            if link.child in self.columns and link.parent in self.columns and link.child_col in self.columns[link.child]:
                self.links.append(link)
                declared.add((link.child, link.child_col))
        for name, cols in self.columns.items():
            for col, (parent, parent_col) in _RULE_COLUMNS.items():
                if col in cols and (name, col) not in fk_columns and (name, col) not in declared \
                        and parent in self.columns and name != parent:
                    self.links.append(Link(name, col, parent, parent_col, why='%s column without a foreign key' % col))
                    declared.add((name, col))
        self.declared = declared
        self._probe = None

    def rows_probe(self):
        """(keys, statement): one row of EXISTS probes, one per (table, link condition) the deleter may touch."""
        if self._probe is None:
            keys = {(name, ()) for name in ROOT_TABLES + ('datasets',) if name in self.columns}
            keys.update((link.child, link.where) for link in self.links)
            keys = sorted(keys)
            probes = []
            for number, (name, where) in enumerate(keys):
                tbl = table(name, *[column(w[0]) for w in where])
                cond = and_(sqlalchemy.true(), *[tbl.c[w[0]] == w[1] for w in where])
                probes.append(exists(select(sqlalchemy.literal(1)).select_from(tbl).where(cond)).label('p%d' % number))
            self._probe = (keys, select(*probes))
        return self._probe

    def children(self, parent, parent_col=None):
        return [link for link in self.links if link.parent == parent and (parent_col is None or link.parent_col == parent_col)]

    def parent_keys(self, parent):
        """The columns of parent that children refer to."""
        return sorted({link.parent_col for link in self.links if link.parent == parent})

    def unhandled_columns(self):
        """Id columns that look like links to purgeable rows but are covered by no link (should be empty)."""
        suspicious = re.compile(r'^(experiment_id|run_uuid|run_id|source_run_id|request_id|trace_id|model_id|dataset_uuid|input_uuid)$')
        own_keys = {('experiments', 'experiment_id'), ('runs', 'run_uuid'), ('trace_info', 'request_id'),
                    ('logged_models', 'model_id'), ('datasets', 'dataset_uuid'), ('inputs', 'input_uuid')}
        result = []
        for name, cols in sorted(self.columns.items()):
            for col in sorted(cols):
                key = (name, col)
                if suspicious.match(col) and key not in own_keys and key not in self.fk_columns \
                        and key not in self.declared and key not in _NOT_LINKS:
                    result.append('%s.%s' % key)
        return result


# --------------------------------------------------------------------------- set-based deletion

def _chunks(values, size=CHUNK):
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _tables_with_rows(conn, graph):
    """{(table, where)} of the tables (and link conditions) the deleter may touch that hold at least one row.

    One statement of EXISTS probes per batch, inside the batch's transaction: a statement whose
    table (or whose link condition) holds no row cannot delete anything, and most installations
    leave many of MLflow's tables empty (at 2,000 runs in the benchmark, 96 of 225 statements).
    A row that a concurrent client inserts after this look is as safe as one inserted after the
    statement that would have deleted it: foreign keys refuse the parent's deletion, and
    MLflow refuses new rows for runs that are not active.
    """
    keys, probe = graph.rows_probe()
    row = conn.execute(probe).one()
    return {key for key, found in zip(keys, row) if found}


class _Deleter:
    """Deletes rows and everything hanging off them, child first, on one connection."""

    def __init__(self, conn, graph, counts, with_rows):
        self.conn = conn
        self.graph = graph
        self.counts = counts
        # PostgreSQL takes a list as one array parameter (col = ANY(%(ids)s)): the statement is
        # compiled once and not expanded into hundreds of parameters per execution, and the
        # plan is the same index scan as for an IN list. Other databases get IN lists of CHUNK.
        self.arrays = conn.dialect.name == 'postgresql'
        self.chunk = 10000 if self.arrays else CHUNK
        # (table, where) that hold rows (_tables_with_rows); statements on the others are skipped.
        self.with_rows = with_rows

    def _empty(self, name, where):
        return (name, where) not in self.with_rows

    def _tbl(self, name, *cols):
        return table(name, *[column(c) for c in cols])

    def _where(self, tbl, col, values, where):
        if self.arrays:
            element = sqlalchemy.String() if any(isinstance(v, str) for v in values) else sqlalchemy.BigInteger()
            clause = tbl.c[col] == sqlalchemy.any_(sqlalchemy.literal(list(values), type_=sqlalchemy.ARRAY(element)))
        else:
            clause = tbl.c[col].in_(values)
        for wcol, wval in where:
            clause = and_(clause, tbl.c[wcol] == wval)
        return clause

    def _add(self, name, rows):
        if rows and rows > 0:
            self.counts[name] = self.counts.get(name, 0) + rows

    def delete(self, name, col, values, where=(), depth=0):
        """Delete rows of table name whose col is in values (and match where), children first."""
        if depth > 12:
            raise SchemaError('The foreign-key graph below %s is deeper than 12 levels; refusing to guess' % name)
        values = list(values)
        if not values or name not in self.graph.columns or self._empty(name, where):
            return
        for link in self.graph.children(name):
            if self._empty(link.child, link.where):
                continue
            for chunk in _chunks(values, self.chunk):
                child_values = self._child_values(name, col, chunk, where, link)
                if not child_values:
                    continue
                if link.action == 'null':
                    self._set_null(link, child_values)
                else:
                    self.delete(link.child, link.child_col, child_values, link.where, depth + 1)
        wcols = [w[0] for w in where]
        tbl = self._tbl(name, col, *wcols)
        for chunk in _chunks(values, self.chunk):
            result = self.conn.execute(tbl.delete().where(self._where(tbl, col, chunk, where)))
            self._add(name, result.rowcount)

    def _child_values(self, name, col, chunk, where, link):
        """Values of link.parent_col of the selected parent rows (no query when it is the selecting column)."""
        if link.parent_col == col and not where:
            values = chunk
        else:
            wcols = [w[0] for w in where]
            tbl = self._tbl(name, *({col, link.parent_col} | set(wcols)))
            query = select(tbl.c[link.parent_col]).where(self._where(tbl, col, chunk, where)).distinct()
            values = [row[0] for row in self.conn.execute(query) if row[0] is not None]
        if link.as_text or (link.child, link.child_col) in self.graph.text_columns:
            values = [v if isinstance(v, str) else str(v) for v in values]
        return values

    def _set_null(self, link, values):
        wcols = [w[0] for w in link.where]
        tbl = self._tbl(link.child, link.child_col, *wcols)
        for chunk in _chunks(values, self.chunk):
            result = self.conn.execute(tbl.update().where(self._where(tbl, link.child_col, chunk, link.where))
                                       .values({link.child_col: None}))
            self._add('%s.%s (set NULL)' % (link.child, link.child_col), result.rowcount)


# --------------------------------------------------------------------------- selection

def _select_values(conn, query):
    return [row[0] for row in conn.execute(query)]


def _now_ms():
    return int(time.time() * 1000)


def _select_targets(conn, graph, scope, older_ms, experiment_ids, experiment_names, run_ids, keep_registered_runs):
    """(run ids, experiment ids, skipped) to purge; SchemaError for explicit ids that may not be purged."""
    runs = table('runs', column('run_uuid'), column('experiment_id'), column('lifecycle_stage'),
                 column('deleted_time'), column('artifact_uri'), column('start_time'))
    # Runs are purged in the order MLflow wrote them (start_time): a batch's metric rows then lie
    # close together in the table, which makes the large deletes much cheaper than a random order.
    start_times = {}
    exps = table('experiments', column('experiment_id'), column('name'), column('lifecycle_stage'),
                 column('last_update_time'), column('artifact_location'))
    threshold = _now_ms() - older_ms if older_ms is not None else None
    skipped = OrderedDict()

    # ---- experiments
    exp_ids = []
    if scope in ('all', 'experiments'):
        wanted_ids = [int(e) for e in experiment_ids or ()]
        wanted_names = list(experiment_names or ())
        query = select(exps.c.experiment_id, exps.c.name, exps.c.lifecycle_stage, exps.c.last_update_time)
        if wanted_ids or wanted_names:
            conds = []
            if wanted_ids:
                conds.append(exps.c.experiment_id.in_(wanted_ids))
            if wanted_names:
                conds.append(exps.c.name.in_(wanted_names))
            found = conn.execute(query.where(or_(*conds))).fetchall()
            missing = sorted(set(map(str, wanted_ids)) - {str(r[0]) for r in found}) + \
                sorted(set(wanted_names) - {r[1] for r in found})
            if missing:
                raise SchemaError('experiment_ids/experiment_names: no experiment %s' % ', '.join(missing))
            active = sorted('%s (%s)' % (r[0], r[1]) for r in found if r[2] != 'deleted')
            if active:
                raise SchemaError('experiments %s are not in the deleted lifecycle stage; only deleted experiments '
                                  'can be purged' % ', '.join(active))
            if threshold is not None:
                young = sorted(str(r[0]) for r in found if r[3] is None or r[3] >= threshold)
                if young:
                    raise SchemaError('experiments %s were deleted less than older_than ago' % ', '.join(young))
            exp_ids = sorted({r[0] for r in found})
        else:
            cond = exps.c.lifecycle_stage == 'deleted'
            if threshold is not None:
                cond = and_(cond, exps.c.last_update_time < threshold)
            exp_ids = sorted(_select_values(conn, select(exps.c.experiment_id).where(cond)))
        # An experiment that still holds a run that is not deleted is not purged.
        for chunk in _chunks(exp_ids):
            for exp_id, count in conn.execute(
                    select(runs.c.experiment_id, sqlalchemy.func.count())
                    .where(and_(runs.c.experiment_id.in_(chunk), runs.c.lifecycle_stage != 'deleted'))
                    .group_by(runs.c.experiment_id)):
                skipped['experiment %s' % exp_id] = 'holds %d run(s) that are not deleted' % count
    # ---- runs
    run_list = []
    if scope in ('all', 'runs'):
        if run_ids:
            wanted = list(dict.fromkeys(run_ids))
            found = {}
            for chunk in _chunks(wanted):
                for row in conn.execute(select(runs.c.run_uuid, runs.c.lifecycle_stage, runs.c.deleted_time,
                                               runs.c.start_time).where(runs.c.run_uuid.in_(chunk))):
                    found[row[0]] = row
                    start_times[row[0]] = row[3]
            missing = [r for r in wanted if r not in found]
            if missing:
                raise SchemaError('run_ids: no run %s' % ', '.join(missing[:20]))
            active = [r for r in wanted if found[r][1] != 'deleted']
            if active:
                raise SchemaError('runs %s are not in the deleted lifecycle stage; only deleted runs can be purged'
                                  % ', '.join(active[:20]))
            if threshold is not None:
                young = [r for r in wanted if found[r][2] is None or found[r][2] > threshold]
                if young:
                    raise SchemaError('runs %s were deleted less than older_than ago' % ', '.join(young[:20]))
            run_list = wanted
        elif not (experiment_ids or experiment_names) or scope == 'runs':
            cond = runs.c.lifecycle_stage == 'deleted'
            if threshold is not None:
                cond = and_(cond, runs.c.deleted_time <= threshold)
            if scope == 'runs' and (experiment_ids or experiment_names):
                sel = select(exps.c.experiment_id)
                conds = []
                if experiment_ids:
                    conds.append(exps.c.experiment_id.in_([int(e) for e in experiment_ids]))
                if experiment_names:
                    conds.append(exps.c.name.in_(list(experiment_names)))
                cond = and_(cond, runs.c.experiment_id.in_(sel.where(or_(*conds))))
            for run_id, start_time in conn.execute(select(runs.c.run_uuid, runs.c.start_time).where(cond)):
                start_times[run_id] = start_time
            run_list = list(start_times)
    purge_exps = [e for e in exp_ids if 'experiment %s' % e not in skipped]

    def runs_of(exp_list):
        found = []
        for chunk in _chunks(exp_list):
            for run_id, exp_id, start_time in conn.execute(select(runs.c.run_uuid, runs.c.experiment_id, runs.c.start_time)
                                                           .where(runs.c.experiment_id.in_(chunk))):
                found.append((run_id, exp_id))
                start_times[run_id] = start_time
        return found

    # All runs of a purged experiment go with it (they are all deleted, checked above).
    exp_runs = runs_of(purge_exps)
    # Runs that are the source of a registered model version are kept, and so is their experiment.
    if keep_registered_runs and 'model_versions' in graph.columns:
        mv = table('model_versions', column('run_id'), column('name'), column('version'))
        registered = {}
        for chunk in _chunks(list(dict.fromkeys(run_list + [pair[0] for pair in exp_runs]))):
            for run_id, name, version in conn.execute(select(mv.c.run_id, mv.c.name, mv.c.version)
                                                      .where(mv.c.run_id.in_(chunk))):
                registered.setdefault(run_id, []).append('%s v%s' % (name, version))
        if registered:
            for run_id, versions in sorted(registered.items()):
                skipped['run %s' % run_id] = 'source of registered model version(s) %s' % ', '.join(versions[:5])
            run_list = [r for r in run_list if r not in registered]
            kept_exps = {e for r, e in exp_runs if r in registered}
            for exp_id in sorted(kept_exps):
                skipped['experiment %s' % exp_id] = 'holds a run that is the source of a registered model version'
            purge_exps = [e for e in purge_exps if e not in kept_exps]
            exp_runs = [(r, e) for r, e in exp_runs if e not in kept_exps]
    run_list = sorted(set(run_list) | {pair[0] for pair in exp_runs},
                      key=lambda r: (start_times.get(r) is None, start_times.get(r) or 0, r))
    return run_list, purge_exps, skipped


def _experiments_of_runs(conn, run_ids):
    runs = table('runs', column('run_uuid'), column('experiment_id'))
    found = set()
    for chunk in _chunks(run_ids):
        found.update(_select_values(conn, select(runs.c.experiment_id).where(runs.c.run_uuid.in_(chunk)).distinct()))
    return sorted(found)


def _unreferenced_datasets(conn, graph, exp_ids):
    """dataset_uuid of the datasets of exp_ids that no row refers to any more.

    MLflow shows a dataset only through the inputs that name it (a run's dataset inputs, the
    experiment's dataset list) and reuses the row of an experiment when a run logs the same
    dataset (experiment_id, name, digest) again. A row no input names is therefore an orphan.
    Every other column called dataset_uuid (logged_model_metrics) also keeps the row.
    """
    if not exp_ids or 'datasets' not in graph.columns or 'inputs' not in graph.columns:
        return []
    ds = table('datasets', column('dataset_uuid'), column('experiment_id'))
    inputs = table('inputs', column('source_type'), column('source_id'))
    conds = [~exists().where(and_(inputs.c.source_type == 'DATASET', inputs.c.source_id == ds.c.dataset_uuid))]
    for name, cols in sorted(graph.columns.items()):
        if name != 'datasets' and 'dataset_uuid' in cols:
            other = table(name, column('dataset_uuid')).alias('ref_%s' % name)
            conds.append(~exists().where(other.c.dataset_uuid == ds.c.dataset_uuid))
    found = []
    for chunk in _chunks(exp_ids):
        found.extend(_select_values(conn, select(ds.c.dataset_uuid).where(and_(ds.c.experiment_id.in_(chunk), *conds))))
    return found


# --------------------------------------------------------------------------- artifacts

def _trace_ids_of_runs(conn, graph, run_ids):
    if 'trace_request_metadata' not in graph.columns:
        return []
    meta = table('trace_request_metadata', column('key'), column('value'), column('request_id'))
    result = []
    for chunk in _chunks(run_ids):
        result.extend(_select_values(conn, select(meta.c.request_id).where(
            and_(meta.c.key == TRACE_SOURCE_RUN_KEY, meta.c.value.in_(chunk)))))
    return list(dict.fromkeys(result))


def _artifact_uris(conn, graph, run_ids, trace_ids, exp_ids):
    """[(kind, id, uri)] of what the purge removes."""
    uris = []
    runs = table('runs', column('run_uuid'), column('artifact_uri'))
    for chunk in _chunks(run_ids):
        query = select(runs.c.run_uuid, runs.c.artifact_uri).where(runs.c.run_uuid.in_(chunk))
        uris.extend(('run', r, u) for r, u in conn.execute(query) if u)
    if trace_ids and 'trace_tags' in graph.columns:
        tags = table('trace_tags', column('key'), column('value'), column('request_id'))
        for chunk in _chunks(trace_ids):
            uris.extend(('trace', r, u) for r, u in conn.execute(
                select(tags.c.request_id, tags.c.value).where(and_(tags.c.key == TRACE_ARTIFACT_TAG,
                                                                   tags.c.request_id.in_(chunk)))) if u)
    if exp_ids:
        if 'logged_models' in graph.columns:
            lm = table('logged_models', column('model_id'), column('experiment_id'), column('artifact_location'))
            for chunk in _chunks(exp_ids):
                # Identified by their experiment: a failure keeps the whole experiment.
                uris.extend(('logged_model', str(e), u) for e, u in conn.execute(
                    select(lm.c.experiment_id, lm.c.artifact_location).where(lm.c.experiment_id.in_(chunk))) if u)
        exps = table('experiments', column('experiment_id'), column('artifact_location'))
        for chunk in _chunks(exp_ids):
            uris.extend(('experiment', str(e), u) for e, u in conn.execute(
                select(exps.c.experiment_id, exps.c.artifact_location).where(exps.c.experiment_id.in_(chunk))) if u)
    return uris


def _is_local(uri):
    return uri.startswith('file:') or uri.startswith('/')


def _local_path(uri):
    """The path of a local artifact URI, as mlflow.utils.file_utils.local_file_uri_to_path finds it (POSIX)."""
    path = urlparse(uri).path if uri.startswith('file:') else uri
    return unquote(path)  # urllib.request.url2pathname on POSIX


class _Artifacts:
    """Deletes artifact locations: local ones directly, all others with MLflow's artifact repositories (S3, mlflow-artifacts:/ ...).

    Local locations are removed the way MLflow's LocalArtifactRepository.delete_artifacts() does it
    (a file is removed, a directory tree is removed), without importing MLflow.
    """

    def __init__(self, tracking_uri):
        self.tracking_uri = tracking_uri
        self.ready = False

    def check(self, uris):
        if any(u.startswith(('mlflow-artifacts:', 'http:', 'https:')) for _kind, _ident, u in uris) and not self.tracking_uri:
            raise SchemaError('Artifacts are served by the tracking server (mlflow-artifacts:/ URIs): set tracking_uri '
                              'to the running server (for example http://127.0.0.1:5000) so they can be deleted, or '
                              'set delete_artifacts=false to leave them')

    def delete(self, uri, ident=None):
        if _is_local(uri):
            path = _local_path(uri)
            if not os.path.lexists(path):
                return False
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            if ident:
                # MLflow lays out <experiment>/<run or trace id>/artifacts: remove the id directory
                # too when it is left empty (mlflow gc leaves it behind).
                parent = os.path.dirname(path.rstrip('/'))
                if os.path.basename(parent) == ident and os.path.isdir(parent) and not os.listdir(parent):
                    os.rmdir(parent)
            return True
        if not self.ready:
            import mlflow
            if self.tracking_uri:
                mlflow.set_tracking_uri(self.tracking_uri)
            self.ready = True
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        get_artifact_repository(uri).delete_artifacts()
        return True


# --------------------------------------------------------------------------- entry point

def _log_to_stdout(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def run_purge(db_url, scope='all', older_than=None, experiment_ids=None, experiment_names=None, run_ids=None,
              batch_size=500, check_mode=False, delete_artifacts=True, keep_registered_runs=True, tracking_uri=None,
              connect_timeout=10, log=None):
    """Permanently delete deleted runs/experiments with everything that hangs off them.

    Returns a dict: changed, runs, experiments (numbers purged or, in check mode, to purge),
    run_ids/experiment_ids (the first 1000), counts (table -> rows), skipped (what was kept and why),
    artifacts (deleted/failed), unhandled (id columns no link covers), batches, duration_s.
    In check mode the same statements run in transactions that are rolled back, so the
    counts are exact; artifacts are only listed.
    """
    started = time.monotonic()
    log = log or _log_to_stdout
    if scope not in SCOPES:
        raise SchemaError('scope must be one of %s, not %r' % (', '.join(SCOPES), scope))
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size > 10000:
        raise SchemaError('batch_size must be an integer from 1 to 10000, not %r' % (batch_size,))
    for name, values in (('experiment_ids', experiment_ids), ('run_ids', run_ids)):
        for value in values or ():
            if not str(value).strip() or (name == 'experiment_ids' and not str(value).strip().isdigit()):
                raise SchemaError('%s: %r is not a valid id' % (name, value))
    if run_ids and scope == 'experiments':
        raise SchemaError('run_ids cannot be used with scope=experiments')
    older_ms = parse_older_than(older_than)
    parse_db_url(db_url)

    schema = classify_schema(db_url, connect_timeout=connect_timeout, with_mlflow_tables=False)
    if schema['state'] != STATE_CURRENT:
        raise SchemaError('The schema of %s is %s (revision %s, head %s): purge works only on a schema at the head of '
                          'the installed MLflow; run the db_upgrade maintenance first'
                          % (mask_url(db_url), schema['state'], schema['revision'], schema['head_revision']))

    engine = create_engine(db_url, connect_timeout=connect_timeout)
    counts = OrderedDict()
    artifacts = {'deleted': 0, 'missing': 0, 'failed': [], 'listed': []}
    batches = 0
    purged_runs = []
    purged_exps = []
    conn = check_trans = None
    try:
        # One connection for the whole purge: a transaction per batch (one for all in check mode).
        conn = engine.connect()
        graph = Graph(conn)
        run_list, exp_list, skipped = _select_targets(conn, graph, scope, older_ms, experiment_ids,
                                                      experiment_names, run_ids, keep_registered_runs)
        conn.rollback()
        total_runs, total_exps = len(run_list), len(exp_list)
        log('purge: %d run(s) and %d experiment(s) to purge%s'
            % (total_runs, total_exps, ' (check mode)' if check_mode else ''))
        store = _Artifacts(tracking_uri) if delete_artifacts else None
        blocked_exps = set()

        # Check mode runs every batch in one transaction that is rolled back at the end, so that
        # rows reachable twice (a run's traces, then its experiment's) are counted once.
        if check_mode:
            check_trans = conn.begin()

        def run_batch(kind, ids):
            """One transaction: artifacts of the batch first, then its rows (children first)."""
            nonlocal batches
            batch_counts = OrderedDict()
            if check_mode:
                ids = purge_batch(conn, kind, ids, batch_counts)
            else:
                with conn.begin():  # commits, or rolls back on any exception
                    ids = purge_batch(conn, kind, ids, batch_counts)
            for name, rows in batch_counts.items():
                counts[name] = counts.get(name, 0) + rows
            batches += 1
            return ids, batch_counts

        def purge_batch(conn, kind, ids, batch_counts):
            if kind == 'runs':
                trace_ids = _trace_ids_of_runs(conn, graph, ids)
                uris = _artifact_uris(conn, graph, ids, trace_ids, [])
            else:
                trace_ids = []
                uris = _artifact_uris(conn, graph, [], [], ids)
            keep = set()
            if store is not None:
                store.check(uris)
                if check_mode:
                    artifacts['listed'].extend(entry[2] for entry in uris[:1000 - len(artifacts['listed'])])
                else:
                    for what, ident, uri in uris:
                        try:
                            if store.delete(uri, ident if what in ('run', 'trace') else None):
                                artifacts['deleted'] += 1
                            else:
                                artifacts['missing'] += 1
                        except Exception as exc:  # pylint: disable=broad-except
                            # The rows stay so that the next purge tries again: nothing is left orphaned.
                            artifacts['failed'].append({'kind': what, 'id': ident, 'uri': uri,
                                                        'error': '%s: %s' % (type(exc).__name__, exc)})
                            keep.add((what, ident))
            deleter = _Deleter(conn, graph, batch_counts, _tables_with_rows(conn, graph))
            if kind == 'runs':
                failed_runs = {i for w, i in keep if w == 'run'}
                if failed_runs:
                    # Their experiment cannot go either: the run stays for the next purge.
                    rtbl = table('runs', column('run_uuid'), column('experiment_id'))
                    blocked_exps.update(str(e) for e in _select_values(
                        conn, select(rtbl.c.experiment_id).where(rtbl.c.run_uuid.in_(sorted(failed_runs)))))
                ids = [r for r in ids if r not in failed_runs]
                failed_traces = {i for w, i in keep if w == 'trace'}
                exps_of_batch = _experiments_of_runs(conn, ids)
                deleter.delete('trace_info', 'request_id', [t for t in trace_ids if t not in failed_traces])
                deleter.delete('runs', 'run_uuid', ids)
                # Datasets only these runs used: after their inputs went, nothing shows them any more.
                deleter.delete('datasets', 'dataset_uuid', _unreferenced_datasets(conn, graph, exps_of_batch))
            else:
                kept_ids = {entry[1] for entry in keep}
                ids = [e for e in ids if str(e) not in kept_ids]
                deleter.delete('experiments', 'experiment_id', ids)
            return ids

        for number, chunk in enumerate(_chunks(run_list, batch_size), 1):
            t0 = time.monotonic()
            done, batch_counts = run_batch('runs', chunk)
            purged_runs.extend(done)
            log('purge: runs batch %d/%d: %d run(s), %d row(s), %.2f s (%d/%d runs)'
                % (number, (total_runs + batch_size - 1) // batch_size, len(done), sum(batch_counts.values()),
                   time.monotonic() - t0, len(purged_runs), total_runs))
        for exp_id in sorted(blocked_exps):
            skipped['experiment %s' % exp_id] = 'a run of it kept its artifacts (deletion failed)'
        exp_list = [e for e in exp_list if str(e) not in blocked_exps]
        total_exps = len(exp_list)
        exp_batch = max(1, min(batch_size, 50))
        for number, chunk in enumerate(_chunks(exp_list, exp_batch), 1):
            t0 = time.monotonic()
            done, batch_counts = run_batch('experiments', chunk)
            purged_exps.extend(done)
            log('purge: experiments batch %d/%d: %d experiment(s), %d row(s), %.2f s'
                % (number, (total_exps + exp_batch - 1) // exp_batch, len(done), sum(batch_counts.values()),
                   time.monotonic() - t0))
    except SQLAlchemyError as exc:
        raise SchemaError(db_error_message('Purging', exc, db_url)) from exc
    finally:
        if check_trans is not None:
            check_trans.rollback()
        if conn is not None:
            conn.close()
        engine.dispose()

    duration = round(time.monotonic() - started, 3)
    result = {
        'changed': bool(purged_runs or purged_exps),
        'runs': len(purged_runs),
        'experiments': len(purged_exps),
        'run_ids': purged_runs[:1000],
        'experiment_ids': [str(e) for e in purged_exps[:1000]],
        'counts': dict(counts),
        'kept': dict(skipped),
        'artifacts': artifacts,
        'unhandled': graph.unhandled_columns(),
        'batches': batches,
        'duration_s': duration,
    }
    log('purge: %s %d run(s), %d experiment(s), %d row(s) in %d table(s), %d artifact location(s) deleted, '
        '%d failed, %d skipped, %.2f s: %s'
        % ('would purge' if check_mode else 'purged', len(purged_runs), len(purged_exps), sum(counts.values()),
           len(counts), artifacts['deleted'], len(artifacts['failed']), len(skipped), duration,
           ', '.join('%s=%d' % kv for kv in sorted(counts.items()))))
    return result
