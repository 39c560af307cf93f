# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write tracking data through deployed MLflow servers, or read all of it back as counts and a digest.

  log    creates an experiment and RUNS runs (params, metrics with steps, artifacts), the runs
         logged through the servers in turn (all servers share one database and artifact store)
  count  reads every experiment (but load-*, lb_load.py's), run, param, metric point and artifact (bytes included) back
         through each server and prints counts and a SHA-256 digest of everything; the
         servers must agree

Servers are reached through SSH port forwards (see molecule/shared/mlflow_roundtrip.py):
--server HOST (repeatable) with --ssh-user / --ssh-key. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared'))
from mlflow_roundtrip import open_forward  # noqa: E402 pylint: disable=wrong-import-position


def log(uris, runs):
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    name = 'upgrade-%s' % uuid.uuid4().hex[:8]
    experiment_id = MlflowClient(tracking_uri=uris[0]).create_experiment(name)
    for index in range(runs):
        client = MlflowClient(tracking_uri=uris[index % len(uris)])
        run = client.create_run(experiment_id, run_name='run-%d' % index)
        run_id = run.info.run_id
        for key, value in {'alpha': '0.%d' % index, 'layers': str(index + 2), 'optimizer': 'adam'}.items():
            client.log_param(run_id, key, value)
        for step in range(5):
            client.log_metric(run_id, 'loss', 1.0 / (step + 1 + index), step=step)
            client.log_metric(run_id, 'accuracy', 0.5 + step * 0.1, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            for rel in ('notes.txt', os.path.join('model', 'weights.bin')):
                path = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as handle:
                    handle.write(('run %d %s %s\n' % (index, rel, uuid.uuid4().hex)).encode() * (index + 1))
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id)
    return {'experiment': name, 'runs': runs}


def _artifacts(client, run_id, path, tmp):
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _artifacts(client, run_id, info.path, tmp)
        else:
            local = client.download_artifacts(run_id, info.path, tmp)
            with open(local, 'rb') as handle:
                yield info.path, hashlib.sha256(handle.read()).hexdigest()


def count(uri):
    from mlflow.entities import ViewType  # pylint: disable=import-outside-toplevel
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    client = MlflowClient(tracking_uri=uri)
    # load-*: written by lb_load.py during the upgrade, not part of the data compared before/after.
    experiments = [e for e in client.search_experiments(view_type=ViewType.ALL) if not e.name.startswith('load-')]
    result = {'experiments': len(experiments), 'runs': 0, 'params': 0, 'metric_points': 0, 'artifacts': 0}
    data = []
    for experiment in sorted(experiments, key=lambda e: e.experiment_id):
        runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
        for run in sorted(runs, key=lambda r: r.info.run_id):
            run_id = run.info.run_id
            history = {key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
                       for key in sorted(run.data.metrics)}
            with tempfile.TemporaryDirectory() as tmp:
                artifacts = sorted(_artifacts(client, run_id, None, tmp))
            result['runs'] += 1
            result['params'] += len(run.data.params)
            result['metric_points'] += sum(len(points) for points in history.values())
            result['artifacts'] += len(artifacts)
            data.append([experiment.name, run_id, run.info.status, sorted(run.data.params.items()), history, artifacts])
    result['digest'] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return result


def main():
    # Downloads stay on the proxy: with an S3 destination MLflow clients otherwise fetch through
    # presigned URLs naming the S3 endpoint as the servers see it (up-db), which this machine cannot resolve.
    os.environ['MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD'] = 'false'
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=['log', 'count'])
    parser.add_argument('--server', action='append', required=True, help='SSH host of a server (repeatable)')
    parser.add_argument('--ssh-user', default='root')
    parser.add_argument('--ssh-key')
    parser.add_argument('--runs', type=int, default=4)
    args = parser.parse_args()
    forwards = []
    try:
        uris = []
        for host in args.server:
            forward_args = argparse.Namespace(ssh_port=22, remote_host='127.0.0.1', remote_port=5000, ssh_key=args.ssh_key,
                                              ssh_user=args.ssh_user, ssh_host=host, prefix='')
            proc, uri = open_forward(forward_args)
            forwards.append(proc)
            uris.append(uri)
        if args.mode == 'log':
            result = log(uris, args.runs)
        else:
            per_server = [count(uri) for uri in uris]
            result = dict(per_server[0], servers_agree=all(other == per_server[0] for other in per_server))
    finally:
        for proc in forwards:
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
