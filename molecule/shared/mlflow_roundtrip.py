# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Log a run through a deployed MLflow server with the real MLflow client and read it back.

The controller reaches the server either directly (--tracking-uri) or through an
SSH port forward this script opens and closes itself (--ssh-host ...), so the
server may stay bound to 127.0.0.1 on the test host. --resolve NAME=ADDRESS maps host
names this machine cannot resolve (test hosts named in artifact URIs) inside this
process only, like curl's --resolve; requests still carry the name in their Host header.

Prints one JSON line (the last line of stdout) with what was written and read back; exits non-zero
when anything read back differs from what was written.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid


def free_port():
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def open_forward(args):
    """Start `ssh -N -L` to the server port; return (process, local URL)."""
    port = free_port()
    cmd = ['ssh', '-N', '-o', 'ExitOnForwardFailure=yes', '-o', 'BatchMode=yes',
           '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
           '-p', str(args.ssh_port), '-L', '127.0.0.1:%d:%s:%d' % (port, args.remote_host, args.remote_port)]
    if args.ssh_key:
        cmd += ['-i', args.ssh_key]
    cmd.append('%s@%s' % (args.ssh_user, args.ssh_host))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # pylint: disable=consider-using-with
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit('ssh port forward exited with %s' % proc.returncode)
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1):
                return proc, 'http://127.0.0.1:%d%s' % (port, args.prefix)
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit('ssh port forward did not come up within 30 s')


def pin_names(mapping):
    """Resolve the names in mapping to fixed addresses in this process only."""
    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return original(mapping.get(host, host), *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


def roundtrip(tracking_uri):
    """Create an experiment, log params/metrics/an artifact, read everything back."""
    # Imported here so --help works without MLflow installed.
    import mlflow  # pylint: disable=import-outside-toplevel
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    name = 'molecule-roundtrip-%s' % uuid.uuid4().hex[:8]
    experiment_id = client.create_experiment(name)
    params = {'alpha': '0.5', 'layers': '3'}
    metrics = [(0, 1.0), (1, 0.5), (2, 0.25)]
    payload = 'artifact written by mlflow_roundtrip %s\n' % uuid.uuid4().hex
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(params)
        for step, value in metrics:
            mlflow.log_metric('loss', value, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'notes.txt')
            with open(path, 'w', encoding='utf-8') as handle:
                handle.write(payload)
            mlflow.log_artifact(path, artifact_path='docs')
    run_id = run.info.run_id

    fetched = client.get_run(run_id)
    history = client.get_metric_history(run_id, 'loss')
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, 'docs/notes.txt', tmp)
        with open(local, encoding='utf-8') as handle:
            read_back = handle.read()
    result = {
        'tracking_uri': tracking_uri,
        'experiment_id': experiment_id,
        'experiment_name': name,
        'run_id': run_id,
        'artifact_uri': fetched.info.artifact_uri,
        'artifact_path': 'docs/notes.txt',
        'payload': payload,
        'params_ok': dict(fetched.data.params) == params,
        'metrics_ok': sorted((m.step, m.value) for m in history) == metrics,
        'artifact_ok': read_back == payload,
        'experiment_found': client.get_experiment_by_name(name).experiment_id == experiment_id,
        'status': fetched.info.status,
    }
    result['ok'] = all(result[k] for k in ('params_ok', 'metrics_ok', 'artifact_ok', 'experiment_found')) \
        and result['status'] == 'FINISHED'
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tracking-uri', help='server URL reachable from here (no SSH forward)')
    parser.add_argument('--ssh-host', help='open an SSH port forward to this host')
    parser.add_argument('--ssh-user', default='root')
    parser.add_argument('--ssh-port', type=int, default=22)
    parser.add_argument('--ssh-key')
    parser.add_argument('--remote-host', default='127.0.0.1', help='server address as seen from the SSH host')
    parser.add_argument('--remote-port', type=int, default=5000)
    parser.add_argument('--prefix', default='', help='static prefix of the server, e.g. /mlflow')
    parser.add_argument('--resolve', action='append', default=[], metavar='NAME=ADDRESS',
                        help='resolve NAME to ADDRESS in this process (repeatable)')
    args = parser.parse_args()
    mapping = {}
    for item in args.resolve:
        name, sep, address = item.partition('=')
        if not sep or not name or not address:
            parser.error('--resolve wants NAME=ADDRESS, got %r' % item)
        mapping[name] = address
    if mapping:
        pin_names(mapping)
    if not args.tracking_uri and not args.ssh_host:
        parser.error('give --tracking-uri or --ssh-host')

    forward = None
    try:
        if args.tracking_uri:
            uri = args.tracking_uri
        else:
            forward, uri = open_forward(args)
        result = roundtrip(uri)
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(timeout=10)
    # One line, last: MLflow itself may print run links before it.
    print(json.dumps(result, sort_keys=True))
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
