#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: purge
short_description: Permanently delete deleted MLflow runs and experiments with everything that hangs off them
version_added: 0.1.0
description:
  - Permanently deletes runs and experiments in the C(deleted) lifecycle stage from an MLflow tracking database,
    together with every row that depends on them in every table of the installed schema, and their artifacts.
  - Set-based. Runs are deleted in batches of O(batch_size), one transaction per batch, with a few statements per
    table instead of the dozen statements per run that C(mlflow gc) issues. See C(docs/benchmarks.md) in the
    collection for measured figures.
  - The table graph is read from the database itself. Foreign keys are followed child first (the module does not
    rely on C(ON DELETE CASCADE), which SQLite does not enforce by default); C(ON DELETE SET NULL) keys are set to
    NULL. The links MLflow keeps without a foreign key (C(inputs), C(input_tags), C(entity_associations), traces
    logged in a run, C(experiment_id)/C(run_uuid)/C(run_id) columns of tables such as the trace roll-ups) are
    handled too. RV(unhandled) names any id column of the installed schema that none of this covers; the module
    warns when it is not empty.
  - What happens to rows that outlive a purged run is documented in C(docs/maintenance.md) of the collection.
    In short, logged models created by a purged run stay (their C(source_run_id) is set to NULL), traces logged in
    a purged run go, and a dataset goes when no input names it any more (the datasets only purged runs used; one
    an active or kept run uses stays) or with its experiment.
  - A run that is the source of a registered model version is kept (and so is its experiment) unless
    O(keep_registered_runs=false).
  - An experiment that still holds runs which are not deleted is never purged; it is reported in RV(kept).
  - Artifacts are deleted before the rows of their batch, local paths directly (as MLflow's local artifact repository
    does), other locations with MLflow's own artifact repositories (S3, C(mlflow-artifacts:/) through the running
    server given in O(tracking_uri)). When an artifact location cannot be
    deleted its run (or experiment) is kept, so that a later purge tries again and nothing is left orphaned; the
    module then fails after the other batches are done.
  - Refuses to work on a schema that is not at the head of the installed MLflow (run M(mlops.mlflow.db_schema) first).
  - Progress goes to the target's syslog/journal, one line per batch, and to RV(progress).
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
  - mlops.mlflow.database.maintenance
attributes:
  check_mode:
    support: full
    details:
      - The same statements run in one transaction that is rolled back, so RV(counts) are exact. The transaction holds
        row locks on the rows that would go for its duration. Artifacts are listed in RV(artifacts), not deleted.
  diff_mode:
    support: full
    details:
      - Shows the runs and experiments before and after (the first 1000 of each).
options:
  scope:
    description:
      - V(all) purges deleted runs and deleted experiments (with all their runs).
      - V(runs) purges deleted runs only; deleted experiments stay (restorable).
      - V(experiments) purges deleted experiments (with all their runs) only.
    type: str
    choices: [all, runs, experiments]
    default: all
  older_than:
    description:
      - Only what was deleted longer ago than this, in MLflow's format (C(mlflow gc --older-than)), for example
        V(30d), V(12h), V(1d2h3m4s).
      - For runs the deletion time (C(runs.deleted_time)) counts, for experiments their last update. Runs deleted
        by MLflow versions that did not record a deletion time are not selected by an age filter.
    type: str
  experiment_ids:
    description:
      - Only these experiments (and, with O(scope=all) or O(scope=experiments), all their runs). Each must exist and be
        deleted, else the module fails before it deletes anything.
      - With O(scope=runs), only the deleted runs of these experiments.
    type: list
    elements: str
    default: []
  experiment_names:
    description:
      - Like O(experiment_ids), by name.
    type: list
    elements: str
    default: []
  run_ids:
    description:
      - Only these runs. Each must exist and be deleted (and older than O(older_than) when given), else the module fails
        before it deletes anything.
    type: list
    elements: str
    default: []
  batch_size:
    description:
      - Runs per transaction (experiments are purged 50 at a time at most). Smaller batches hold locks for less time.
    type: int
    default: 500
  delete_artifacts:
    description:
      - Whether the artifacts of purged runs, traces, logged models and experiments are deleted.
    type: bool
    default: true
  keep_registered_runs:
    description:
      - Keep runs that are the source of a registered model version (and their experiments), because the version's
        files may live in the run's artifacts. With V(false) such runs are purged and the versions stay, with
        C(run_id) set to NULL.
    type: bool
    default: true
  tracking_uri:
    description:
      - URL of the running tracking server, for example V(http://127.0.0.1:5000). Needed when the artifacts are served by
        the server (C(mlflow-artifacts:/) URIs), which then deletes them in its artifact store.
    type: str
seealso:
  - module: mlops.mlflow.gc
  - module: mlops.mlflow.db_schema
'''

EXAMPLES = r'''
- name: Purge everything deleted more than 30 days ago (URL and keys from the server's own environment files)
  mlops.mlflow.purge:
    env_files:
      - /etc/mlflow/server.env
      - /etc/mlflow/server-secrets.env
    older_than: 30d
    tracking_uri: http://127.0.0.1:5000
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
  register: mlflow_purge

- name: Show what one experiment's purge would remove, per table
  mlops.mlflow.purge:
    db_url: sqlite:////var/lib/mlflow/mlflow.db
    scope: experiments
    experiment_names: [old-experiment]
  check_mode: true
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
runs:
  description: Number of runs purged (in check mode, that would be purged).
  returned: success
  type: int
experiments:
  description: Number of experiments purged (in check mode, that would be purged).
  returned: success
  type: int
run_ids:
  description: Ids of the purged runs (the first 1000).
  returned: success
  type: list
  elements: str
experiment_ids:
  description: Ids of the purged experiments (the first 1000).
  returned: success
  type: list
  elements: str
counts:
  description:
    - Rows deleted per table. Keys named C(table.column (set NULL)) count rows whose link to a purged row was set to NULL.
  returned: success
  type: dict
  sample: {"metrics": 400000, "params": 20000, "runs": 2000, "logged_models.source_run_id (set NULL)": 3}
kept:
  description: What matched the filters but was kept, and why.
  returned: success
  type: dict
  sample: {"experiment 7": "holds 2 run(s) that are not deleted"}
artifacts:
  description:
    - C(deleted) and C(missing) count artifact locations deleted or already gone; C(failed) lists the ones that could not
      be deleted (their runs were kept); C(listed) holds the locations a check-mode run would delete (first 1000).
  returned: success
  type: dict
unhandled:
  description: Id columns of the installed schema that no link covers (expected empty).
  returned: success
  type: list
  elements: str
batches:
  description: Number of transactions used.
  returned: success
  type: int
duration_s:
  description: Seconds the purge took.
  returned: success
  type: float
progress:
  description: The progress lines, one per batch, and the summary line.
  returned: success
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import database_argument_spec, run_database_module


def run(module):
    from ansible_collections.mlops.mlflow.plugins.module_utils.purge import run_purge

    progress = []

    def log(line):
        progress.append(line)
        module.log(line)

    p = module.params
    result = run_purge(p['db_url'], scope=p['scope'], older_than=p['older_than'], experiment_ids=p['experiment_ids'],
                       experiment_names=p['experiment_names'], run_ids=p['run_ids'], batch_size=p['batch_size'],
                       check_mode=module.check_mode, delete_artifacts=p['delete_artifacts'],
                       keep_registered_runs=p['keep_registered_runs'], tracking_uri=p['tracking_uri'],
                       connect_timeout=p['connect_timeout'], log=log)
    result['progress'] = progress
    if module._diff:
        before = {'runs': result['run_ids'], 'experiments': result['experiment_ids']}
        result['diff'] = {'before': before, 'after': {'runs': [], 'experiments': []} if result['changed'] else before}
    for column in result['unhandled']:
        module.warn('purge: the installed schema has the id column %s, which no link of the purge covers; rows in it '
                    'may be left behind. Please report this with your MLflow version.' % column)
    if result['artifacts']['failed']:
        module.fail_json(msg='%d artifact location(s) could not be deleted; their runs/experiments were kept so that the '
                             'next purge tries again. First: %s'
                             % (len(result['artifacts']['failed']), result['artifacts']['failed'][0]['error']), **result)
    return result


def main():
    module = AnsibleModule(
        argument_spec=database_argument_spec(
            scope=dict(type='str', default='all', choices=['all', 'runs', 'experiments']),
            older_than=dict(type='str'),
            experiment_ids=dict(type='list', elements='str', default=[]),
            experiment_names=dict(type='list', elements='str', default=[]),
            run_ids=dict(type='list', elements='str', default=[]),
            batch_size=dict(type='int', default=500),
            delete_artifacts=dict(type='bool', default=True),
            keep_registered_runs=dict(type='bool', default=True),
            tracking_uri=dict(type='str'),
        ),
        supports_check_mode=True,
    )
    run_database_module(module, run)


if __name__ == '__main__':
    main()
