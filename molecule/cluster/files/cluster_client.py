# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Talk to the load-balanced MLflow service over HTTPS, the way a user does.

Opens an SSH port forward to the proxy's HTTPS port (molecule/shared/mlflow_roundtrip.py's
open_forward), resolves the public name to that forward inside this process only, trusts
the certificate given with --cert (MLFLOW_TRACKING_SERVER_CERT_PATH) and then either
  --mode roundtrip  logs a run with the real MLflow client and reads it back, or
  --mode status     prints the HTTP status of an API call without and with credentials.
Credentials come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the
environment, never from the command line. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared'))

import mlflow_roundtrip  # noqa: E402  pylint: disable=wrong-import-position


def statuses(base, cert):
    import requests  # pylint: disable=import-outside-toplevel

    url = base + '/api/2.0/mlflow/experiments/search'
    body = {'max_results': 1}
    user = os.environ.get('MLFLOW_TRACKING_USERNAME', '')
    password = os.environ.get('MLFLOW_TRACKING_PASSWORD', '')
    anonymous = requests.post(url, json=body, verify=cert, timeout=30)
    credentials = requests.post(url, json=body, verify=cert, auth=(user, password), timeout=30)
    return {'anonymous': anonymous.status_code, 'with_credentials': credentials.status_code,
            'ok': anonymous.status_code == 401}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mode', choices=['roundtrip', 'status'], required=True)
    parser.add_argument('--name', required=True, help='public name of the service (certificate SAN)')
    parser.add_argument('--cert', required=True, help='CA/certificate file the client trusts')
    parser.add_argument('--ssh-host', required=True)
    parser.add_argument('--ssh-user', default='root')
    parser.add_argument('--ssh-port', type=int, default=22)
    parser.add_argument('--ssh-key')
    parser.add_argument('--remote-port', type=int, default=443)
    parser.add_argument('--resolve', action='append', default=[], metavar='NAME=ADDRESS')
    args = parser.parse_args()
    args.remote_host = '127.0.0.1'
    args.prefix = ''
    mapping = {args.name: '127.0.0.1'}
    for item in args.resolve:
        name, dummy, address = item.partition('=')
        mapping[name] = address
    mlflow_roundtrip.pin_names(mapping)
    os.environ['MLFLOW_TRACKING_SERVER_CERT_PATH'] = args.cert
    os.environ.setdefault('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '2')

    forward, local = mlflow_roundtrip.open_forward(args)
    try:
        base = 'https://%s:%s' % (args.name, local.rsplit(':', 1)[1])
        if args.mode == 'roundtrip':
            result = mlflow_roundtrip.roundtrip(base)
        else:
            result = statuses(base, args.cert)
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    print(json.dumps(result, sort_keys=True))
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
