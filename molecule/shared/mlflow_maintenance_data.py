# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seed, delete and check MLflow runs through a deployed server with the real MLflow client.

For the maintenance scenario: what a user does before the maintenance jobs run, and what the
user must (not) see afterwards. Reaches the server like mlflow_roundtrip.py (--tracking-uri, or an
SSH port forward with --ssh-host ...; --resolve NAME=ADDRESS). The state (ids, names, payloads)
lives in a JSON file (--state) between the calls.

  seed                       two experiments, runs with params, metrics and an artifact each
  delete LABEL...            soft-delete runs (labels from seed) or, with exp:NAME, an experiment
  check --purged L,.. --alive L,.. [--recreate NAME]
                             purged runs are gone for the client (get_run fails), live runs
                             read back intact (params, metric history, artifact bytes), and the
                             name of a purged experiment can be used again at once
  --then-delete L,..         after seed or check, delete these too (one client start less)

Prints one JSON line (the last line of stdout); exits non-zero when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlflow_roundtrip  # noqa: E402 pylint: disable=wrong-import-position

# Runs seeded per experiment (labels). 'keep' holds runs that the scenario deletes step by step.
LAYOUT = {'keep': ['gc1', 'purge1', 'purge2', 'timer1', 'live1'], 'gone': ['gone1', 'gone2']}
PARAMS = {'alpha': '0.5', 'layers': '3'}
METRICS = [(0, 1.0), (1, 0.5), (2, 0.25)]


def seed(client, mlflow):
    tag = uuid.uuid4().hex[:8]
    state = {'experiments': {}, 'runs': {}}
    for short, labels in LAYOUT.items():
        name = 'molecule-maint-%s-%s' % (short, tag)
        experiment_id = client.create_experiment(name)
        state['experiments'][short] = {'id': experiment_id, 'name': name}
        for label in labels:
            payload = 'artifact of %s %s\n' % (label, uuid.uuid4().hex)
            with mlflow.start_run(experiment_id=experiment_id, run_name=label) as run:
                mlflow.log_params(PARAMS)
                for step, value in METRICS:
                    mlflow.log_metric('loss', value, step=step)
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, 'notes.txt')
                    with open(path, 'w', encoding='utf-8') as handle:
                        handle.write(payload)
                    mlflow.log_artifact(path, artifact_path='docs')
            info = client.get_run(run.info.run_id).info
            state['runs'][label] = {'run_id': info.run_id, 'experiment_id': experiment_id,
                                    'artifact_uri': info.artifact_uri, 'payload': payload}
    return state, {'ok': True, 'runs': len(state['runs'])}


def delete(client, state, labels):
    done = []
    for label in labels:
        if label.startswith('exp:'):
            client.delete_experiment(state['experiments'][label[4:]]['id'])
        else:
            client.delete_run(state['runs'][label]['run_id'])
        done.append(label)
    return {'ok': True, 'deleted': done}


def check(client, state, purged, alive, recreate):
    from mlflow.exceptions import MlflowException  # pylint: disable=import-outside-toplevel

    result = {'purged_gone': {}, 'alive_ok': {}, 'recreated': None}
    for label in purged:
        try:
            client.get_run(state['runs'][label]['run_id'])
        except MlflowException as exc:
            result['purged_gone'][label] = exc.error_code == 'RESOURCE_DOES_NOT_EXIST'
        else:
            result['purged_gone'][label] = False
    for label in alive:
        run_id = state['runs'][label]['run_id']
        fetched = client.get_run(run_id)
        history = client.get_metric_history(run_id, 'loss')
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, 'docs/notes.txt', tmp)
            with open(local, encoding='utf-8') as handle:
                body = handle.read()
        result['alive_ok'][label] = {
            'params': dict(fetched.data.params) == PARAMS,
            'metrics': sorted((m.step, m.value) for m in history) == METRICS,
            'artifact': body == state['runs'][label]['payload'],
            'active': fetched.info.lifecycle_stage == 'active',
        }
    if recreate:
        name = state['experiments'][recreate]['name']
        result['recreated'] = client.create_experiment(name)
        result['recreated_name'] = name
    result['ok'] = (all(result['purged_gone'].values())
                    and all(all(v.values()) for v in result['alive_ok'].values())
                    and (not recreate or bool(result['recreated'])))
    return result


def _labels(text):
    return [label for label in text.split(',') if label]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--state', required=True, help='JSON file with what seed created')
    parser.add_argument('--tracking-uri')
    parser.add_argument('--ssh-host')
    parser.add_argument('--ssh-user', default='root')
    parser.add_argument('--ssh-port', type=int, default=22)
    parser.add_argument('--ssh-key')
    parser.add_argument('--remote-host', default='127.0.0.1')
    parser.add_argument('--remote-port', type=int, default=5000)
    parser.add_argument('--prefix', default='')
    parser.add_argument('--resolve', action='append', default=[], metavar='NAME=ADDRESS')
    parser.add_argument('--purged', default='', help='labels, comma-separated (check)')
    parser.add_argument('--alive', default='', help='labels, comma-separated (check)')
    parser.add_argument('--recreate', default='', help='short experiment name to create again (check)')
    parser.add_argument('--then-delete', default='', metavar='LABEL,...',
                        help='after seed or check, delete these (labels or exp:NAME), saving a client start')
    parser.add_argument('action', choices=('seed', 'delete', 'check'))
    parser.add_argument('labels', nargs='*')
    args = parser.parse_args()
    mapping = dict(item.split('=', 1) for item in args.resolve)
    if mapping:
        mlflow_roundtrip.pin_names(mapping)
    if not args.tracking_uri and not args.ssh_host:
        parser.error('give --tracking-uri or --ssh-host')

    import mlflow  # pylint: disable=import-outside-toplevel
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    forward = None
    try:
        if args.tracking_uri:
            uri = args.tracking_uri
        else:
            forward, uri = mlflow_roundtrip.open_forward(args)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        if args.action == 'seed':
            state, result = seed(client, mlflow)
            with open(args.state, 'w', encoding='utf-8') as handle:
                json.dump(state, handle)
        else:
            with open(args.state, encoding='utf-8') as handle:
                state = json.load(handle)
            if args.action == 'delete':
                result = delete(client, state, args.labels)
            else:
                result = check(client, state, _labels(args.purged), _labels(args.alive), args.recreate)
        if args.then_delete and result['ok'] and args.action != 'delete':
            result['then_deleted'] = delete(client, state, _labels(args.then_delete))['deleted']
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(timeout=10)
    print(json.dumps(result, sort_keys=True))
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
