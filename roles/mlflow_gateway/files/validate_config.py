# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check an MLflow AI Gateway config file with MLflow's own loader.

Installed by the mlops.mlflow.mlflow_gateway role and run with the gateway's
virtualenv interpreter as the ``validate:`` command of the task that writes
config.yaml:

    python validate_config.py --env-file gateway.env --env-file gateway-secrets.env CANDIDATE

The EnvironmentFiles are loaded into the environment (as systemd would, for
the quoting the role writes), API keys are resolved the way ``mlflow gateway
start`` does (``$NAME`` from the environment), and the loader's message is
printed on stderr with every secret value masked. Exit 0 = valid.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


def parse_env_file(path):
    """NAME=VALUE lines of a systemd EnvironmentFile (double-quoted values with \\ escapes)."""
    result = {}
    with open(path, encoding='utf-8') as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith(('#', ';')) or '=' not in line:
                continue
            name, value = line.split('=', 1)
            name, value = name.strip(), value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                out, chars = [], iter(value[1:-1])
                for ch in chars:
                    out.append(next(chars, '') if ch == '\\' else ch)
                value = ''.join(out)
            elif len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1]
            result[name] = value
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env-file', action='append', default=[], help='EnvironmentFile to load (repeatable)')
    parser.add_argument('config', help='candidate gateway config file')
    args = parser.parse_args(argv)

    secrets = []
    for path in args.env_file:
        values = parse_env_file(path)
        os.environ.update(values)
        if 'secret' in os.path.basename(path):
            secrets.extend(v for v in values.values() if len(v) >= 4)
    # As `mlflow gateway start` runs its workers.
    os.environ['MLFLOW_GATEWAY_RESOLVE_API_KEY_FROM_ENV'] = 'true'
    os.environ['MLFLOW_GATEWAY_RESOLVE_API_KEY_FROM_FILE'] = 'true'

    def mask(text):
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, '********')
        return text

    warnings.simplefilter('ignore')
    try:
        from mlflow.gateway.config import _load_gateway_config

        config = _load_gateway_config(args.config)
    except Exception as exc:  # noqa: BLE001 - any loader error means "invalid", reported as such
        message = getattr(exc, 'message', None) or str(exc)
        sys.stderr.write('Invalid MLflow gateway configuration: %s\n' % mask(str(message))[:4000])
        return 1
    names = [endpoint.name for endpoint in config.endpoints]
    routes = [route.name for route in (config.routes or [])]
    sys.stdout.write('OK: %d endpoint(s) %s, %d route(s) %s\n' % (len(names), ', '.join(names), len(routes), ', '.join(routes)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
