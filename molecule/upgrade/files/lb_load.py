# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keep logging and reading runs through the load balancer until told to stop; count every failure.

Runs on the controller during playbooks/upgrade.yml: opens an SSH port forward to the
proxy's HTTPS port (molecule/shared/mlflow_roundtrip.py's open_forward), resolves the public
name to it inside this process only, trusts --cert, and in --threads threads repeats, with the
real MLflow client with its default retry policy (as users run it): create a run, log a batch
(param, metric), read the run back, search the experiment's runs, end the run. A call that fails
after the client's retries is a failure; every retry the client made is counted too (urllib3
logs "Retrying ..."), with its time and cause: an nginx reload closes idle keep-alive client
connections, and a client that sent a request on one at that instant must send it again. Experiments are named load-*. Stops when
--stop-file exists (or after --max-seconds), then reads every experiment back and checks that
each run it created exists with its param (nothing lost). Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared'))
import mlflow_roundtrip  # noqa: E402  pylint: disable=wrong-import-position


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = collections.Counter()
        self.failures = []
        self.runs = {}  # run_id -> (experiment_id, param value logged or None)

    def call(self, name, func, *args, **kwargs):
        try:
            result = func(*args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            with self.lock:
                self.calls[name] += 1
                self.failures.append({'time': round(time.time(), 3), 'call': name, 'error': repr(exc)[:300]})
            raise
        with self.lock:
            self.calls[name] += 1
        return result


class RetryLog(logging.Handler):
    """Count urllib3's "Retrying (Retry(...)) after connection broken by ...: /path" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.retries = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith('Retrying'):
            self.retries.append({'time': round(record.created, 3), 'message': message[:300]})


def worker(base, stats, stop, pause, experiments):
    from mlflow.entities import Metric, Param  # pylint: disable=import-outside-toplevel
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    client = MlflowClient(tracking_uri=base)
    experiment_id = None
    step = 0
    while not stop.is_set():
        step += 1
        try:
            if experiment_id is None:
                experiment_id = stats.call('create_experiment', client.create_experiment, 'load-%s' % uuid.uuid4().hex[:12])
                with stats.lock:
                    experiments.append(experiment_id)
            run = stats.call('create_run', client.create_run, experiment_id, run_name='load-%d' % step)
            run_id = run.info.run_id
            with stats.lock:
                stats.runs[run_id] = (experiment_id, None)
            value = str(step)
            stats.call('log_batch', client.log_batch, run_id,
                       metrics=[Metric('load', float(step), int(time.time() * 1000), step)], params=[Param('step', value)])
            with stats.lock:
                stats.runs[run_id] = (experiment_id, value)
            fetched = stats.call('get_run', client.get_run, run_id)
            if fetched.data.params.get('step') != value:
                with stats.lock:
                    stats.failures.append({'time': round(time.time(), 3), 'call': 'get_run', 'error': 'param not read back'})
            stats.call('search_runs', client.search_runs, [experiment_id], max_results=5)
            stats.call('set_terminated', client.set_terminated, run_id)
        except Exception:  # pylint: disable=broad-except
            pass  # counted in Stats.call; go on with the next round
        stop.wait(pause)


def check_lost(base, stats, experiments):
    """Read every run back (client retries allowed now) and return the ids missing or without their param."""
    from mlflow.entities import ViewType  # pylint: disable=import-outside-toplevel
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    client = MlflowClient(tracking_uri=base)
    found = {}
    for experiment_id in experiments:
        token = None
        while True:
            page = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            for run in page:
                found[run.info.run_id] = run.data.params.get('step')
            token = page.token
            if not token:
                break
    lost = [run_id for run_id, (dummy, value) in stats.runs.items()
            if run_id not in found or (value is not None and found[run_id] != value)]
    return lost, len(found)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--name', required=True, help='public name of the service (certificate SAN)')
    parser.add_argument('--cert', required=True)
    parser.add_argument('--ssh-host', required=True)
    parser.add_argument('--ssh-user', default='root')
    parser.add_argument('--ssh-port', type=int, default=22)
    parser.add_argument('--ssh-key')
    parser.add_argument('--remote-port', type=int, default=443)
    parser.add_argument('--stop-file', required=True)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--pause', type=float, default=0.05, help='seconds between rounds of a thread')
    parser.add_argument('--max-seconds', type=float, default=1800)
    args = parser.parse_args()
    args.remote_host = '127.0.0.1'
    args.prefix = ''
    mlflow_roundtrip.pin_names({args.name: '127.0.0.1'})
    os.environ['MLFLOW_TRACKING_SERVER_CERT_PATH'] = args.cert
    retry_log = RetryLog()
    logging.getLogger('urllib3.connectionpool').addHandler(retry_log)

    forward, local = mlflow_roundtrip.open_forward(args)
    stats = Stats()
    experiments = []
    stop = threading.Event()
    started = time.time()
    try:
        base = 'https://%s:%s' % (args.name, local.rsplit(':', 1)[1])
        threads = [threading.Thread(target=worker, args=(base, stats, stop, args.pause, experiments), daemon=True)
                   for dummy in range(args.threads)]
        for thread in threads:
            thread.start()
        while not os.path.exists(args.stop_file) and time.time() - started < args.max_seconds:
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        stopped = time.time()
        retries = list(retry_log.retries)
        lost, found = check_lost(base, stats, experiments)
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    result = {
        'started': round(started, 3), 'stopped': round(stopped, 3), 'seconds': round(stopped - started, 1),
        'stopped_by_file': os.path.exists(args.stop_file),
        'calls': sum(stats.calls.values()), 'calls_by_kind': dict(stats.calls),
        'failures': len(stats.failures), 'failure_samples': stats.failures[:10],
        'client_retries': len(retries), 'retry_samples': retries[:10],
        'runs_created': len(stats.runs), 'runs_found': found, 'runs_lost': len(lost), 'lost_samples': lost[:5],
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
