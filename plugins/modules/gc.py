#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: gc
short_description: Permanently delete soft-deleted MLflow runs, experiments and logged models with MLflow's own gc
version_added: 0.1.0
description:
  - Runs MLflow's own C(mlflow gc) in the module's Python process (not as a command), so the database URL never
    appears in any process's argument list, and reports what it purged.
    The selection, the checks of explicit ids and the deletion of artifacts are MLflow's.
  - Before anything else the schema is classified read-only (as M(mlops.mlflow.db_schema) does). The module refuses to
    run unless the schema is at the head revision of the installed MLflow, because opening MLflow's store on an older
    schema migrates it as a side effect. Upgrade with M(mlops.mlflow.db_schema) first.
  - It then works out read-only, with plain SQLAlchemy, exactly what C(mlflow gc) would select, and checks explicit ids
    the way C(mlflow gc) does. An id that does not exist, is not deleted or is not old enough makes the module fail,
    naming the id, before anything is deleted (MLflow's gc itself checks them one at a time while deleting).
  - When nothing is eligible MLflow's gc is not run at all and the result is C(changed=false).
  - Selection, as in C(mlflow gc). Runs - in the C(deleted) lifecycle stage and deleted at least O(older_than) ago
    (C(deleted_time)). Logged models - C(deleted) and last updated at least O(older_than) ago. Experiments - C(deleted)
    and, with O(older_than), last updated more than O(older_than) ago; the deleted runs of every purged experiment are
    purged with it. Without O(older_than) everything deleted qualifies.
  - Each list of explicit ids replaces only its own selection. As in C(mlflow gc), O(run_ids) alone still purges every
    eligible deleted experiment and logged model; use check mode to see the exact ids first.
  - Artifacts of the purged runs and logged models are deleted by MLflow's artifact repositories (local files, S3, ...,
    or through the tracking server for C(mlflow-artifacts:/) URIs); artifacts that cannot be resolved are skipped by
    MLflow with a warning, returned in RV(artifact_warnings).
  - A deleted experiment that still holds runs that are not deleted (restored after the experiment was deleted) makes
    the module fail before deleting anything. MLflow's gc would remove such runs with the experiment, silently and
    without deleting their artifacts.
notes:
  - Runs whose artifacts are served by the tracking server (proxied artifacts, URIs C(mlflow-artifacts:/...)) can only
    be purged with O(tracking_uri) pointing at the running server; without it the module fails before deleting
    anything. The collection's maintenance playbook sets O(tracking_uri) to the local server
    (C(http://127.0.0.1:5000) by default). With basic auth on the server, put E(MLFLOW_TRACKING_USERNAME) and
    E(MLFLOW_TRACKING_PASSWORD) into the module's environment or into one of the O(env_files).
  - MLflow's gc is slow (about a dozen statements per run) and leaves some rows behind (dataset inputs, traces of
    purged runs in surviving experiments, empty artifact directories).
  - When MLflow's gc fails part-way, the module fails and still returns what was purged until then.
  - MLflow workspaces are not supported; the module fails when E(MLFLOW_ENABLE_WORKSPACES) or E(MLFLOW_WORKSPACE) is set.
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
  - mlops.mlflow.database.maintenance
attributes:
  check_mode:
    support: full
    details:
      - Check mode only reads the database (read-only connections) and returns the ids that would be purged.
        MLflow's gc is not run.
  diff_mode:
    support: full
    details:
      - Shows the number of runs, experiments and logged models in the C(deleted) lifecycle stage before and after.
options:
  older_than:
    description:
      - Only purge what was deleted at least this long ago, in MLflow's C(#d#h#m#s) format
        (days, hours, minutes, seconds, each optional but in this order, fractions allowed),
        for example V(30d), V(8h), V(2d8h5m20s), V(1.5d).
      - Not set means everything in the C(deleted) lifecycle stage, however recent.
      - Explicit ids that are not old enough make the module fail.
    type: str
  run_ids:
    description:
      - Purge exactly these runs instead of all eligible deleted runs. Each must be in the C(deleted) lifecycle stage
        (and older than O(older_than) when set).
    type: list
    elements: str
  experiment_ids:
    description:
      - Purge exactly these experiments (with their deleted runs) instead of all eligible deleted experiments.
        Each must be in the C(deleted) lifecycle stage (and last updated more than O(older_than) ago when set).
    type: list
    elements: str
  logged_model_ids:
    description:
      - Purge exactly these logged models instead of all eligible deleted logged models. Each must be in the
        C(deleted) lifecycle stage (and older than O(older_than) when set).
    type: list
    elements: str
  tracking_uri:
    description:
      - URL of the running tracking server, for example V(http://127.0.0.1:5000).
      - Required when runs or logged models to purge have proxied artifacts (C(mlflow-artifacts:/) URIs),
        which MLflow's gc deletes through the server.
      - When not set, the database URL serves as tracking URI, which is enough for artifacts that MLflow can reach
        directly (local paths, S3 and the like).
    type: str
  artifacts_destination:
    description:
      - Passed to MLflow's gc as C(--artifacts-destination) (the server's C(--artifacts-destination)).
      - When not set, MLflow reads E(MLFLOW_ARTIFACTS_DESTINATION) from the environment (for example from O(env_files)).
    type: str
seealso:
  - module: mlops.mlflow.db_schema
  - name: mlflow gc
    description: MLflow's command line reference for C(mlflow gc).
    link: https://mlflow.org/docs/latest/api_reference/cli.html#mlflow-gc
'''

EXAMPLES = r'''
- name: Purge what was deleted more than 30 days ago, with the server's own settings
  mlops.mlflow.gc:
    env_files:
      - /etc/mlflow/server.env
      - /etc/mlflow/server-secrets.env
    older_than: 30d
    tracking_uri: http://127.0.0.1:5000
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
  register: mlflow_gc

- name: Show what would be purged
  mlops.mlflow.gc:
    db_url: sqlite:////var/lib/mlflow/mlflow.db
    older_than: 7d
  check_mode: true
  diff: true
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python

- name: Purge two deleted runs (as with mlflow gc, eligible deleted experiments and logged models go too)
  mlops.mlflow.gc:
    db_url: "postgresql+psycopg2://mlflow@db.example.com:5432/mlflow"
    run_ids:
      - 8f1c3a9d2b6e4f7a9c0d1e2f3a4b5c6d
      - 0a1b2c3d4e5f60718293a4b5c6d7e8f9
  environment:
    PGPASSWORD: "{{ mlflow_db_password }}"
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
counts:
  description:
    - Number of runs, experiments and logged models purged (in check mode, that would be purged).
    - Runs include the deleted runs of purged experiments.
  returned: always
  type: dict
  contains:
    runs:
      description: Runs.
      type: int
      returned: always
    experiments:
      description: Experiments.
      type: int
      returned: always
    logged_models:
      description: Logged models.
      type: int
      returned: always
  sample:
    runs: 3
    experiments: 1
    logged_models: 0
purged:
  description:
    - Ids of what was purged (in check mode, of what would be purged), sorted. In a real run they come from
      MLflow's own output (C(Run with ID ... has been permanently deleted.)).
  returned: always
  type: dict
  contains:
    runs:
      description: Run ids.
      type: list
      elements: str
      returned: always
    experiments:
      description: Experiment ids.
      type: list
      elements: str
      returned: always
    logged_models:
      description: Logged model ids.
      type: list
      elements: str
      returned: always
  sample:
    runs:
      - 5f0e8c3b9a4d4c1e8f2a6b7c9d0e1f23
    experiments:
      - "4"
    logged_models: []
artifact_warnings:
  description:
    - MLflow's warnings about artifacts it could not resolve and therefore did not delete
      (the run or logged model itself was still purged).
  returned: always
  type: list
  elements: str
  sample:
    - "Unable to resolve the provided artifact URL: '...'. The gc process will continue and bypass artifact deletion. ..."
duration_s:
  description: Seconds the module spent, schema check and planning included.
  returned: always
  type: float
  sample: 4.812
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow.plugins.module_utils.gc import KINDS, GcError, run_gc
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import database_argument_spec, run_database_module, url_secrets

RESULT_KEYS = ('changed', 'counts', 'purged', 'artifact_warnings', 'duration_s')


def _diff(result):
    def text(counts):
        return ''.join('%s: %d\n' % (kind, counts[kind]) for kind in KINDS)
    return {
        'before': text(result['deleted_before']),
        'after': text(result['deleted_after']),
        'before_header': 'MLflow rows in the deleted lifecycle stage (before gc)',
        'after_header': 'MLflow rows in the deleted lifecycle stage (after gc)',
    }


def run_module(module):
    params = module.params
    if params['tracking_uri']:
        module.no_log_values.update(url_secrets(params['tracking_uri']))
    try:
        raw = run_gc(
            params['db_url'],
            older_than=params['older_than'],
            run_ids=params['run_ids'],
            experiment_ids=params['experiment_ids'],
            logged_model_ids=params['logged_model_ids'],
            tracking_uri=params['tracking_uri'],
            artifacts_destination=params['artifacts_destination'],
            check_mode=module.check_mode,
            connect_timeout=params['connect_timeout'],
            log=module.debug,
        )
    except GcError as exc:
        partial = {key: exc.result[key] for key in RESULT_KEYS} if exc.result else {}
        module.fail_json(msg=str(exc), **partial)
    result = {key: raw[key] for key in RESULT_KEYS}
    if module._diff and result['changed']:
        result['diff'] = _diff(raw)
    return result


def main():
    module = AnsibleModule(
        argument_spec=database_argument_spec(
            older_than=dict(type='str'),
            run_ids=dict(type='list', elements='str'),
            experiment_ids=dict(type='list', elements='str'),
            logged_model_ids=dict(type='list', elements='str'),
            tracking_uri=dict(type='str'),
            artifacts_destination=dict(type='str'),
        ),
        supports_check_mode=True,
    )
    run_database_module(module, run_module)


if __name__ == '__main__':
    main()
