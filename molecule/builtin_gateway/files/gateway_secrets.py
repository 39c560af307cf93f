# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Create or read AI-gateway secrets through MLflow's own tracking store, as the server does.

Run on the test host as the service user with the server's EnvironmentFiles loaded, so the
KEK passphrase comes from the environment, never from the command line.
  create N   store N provider keys (values: sk-molecule-<i>)
  read       print one JSON line: {"versions": [...], "values": [...]}
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys

from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

DB = os.environ['MLFLOW_BACKEND_STORE_URI']


def main():
    store = SqlAlchemyStore(DB, '/tmp')
    if sys.argv[1] == 'create':
        for i in range(int(sys.argv[2])):
            store.create_gateway_secret('molecule-key-%d' % i, {'api_key': 'sk-molecule-%d' % i}, provider='openai')
    path = DB[len('sqlite:///'):]
    with sqlite3.connect(path) as conn:
        rows = conn.execute('SELECT secret_id, kek_version FROM secrets ORDER BY secret_name').fetchall()
    values = []
    for row in rows:
        secret_id = row[0]
        try:
            values.append(store._get_decrypted_secret(secret_id)['api_key'])  # pylint: disable=protected-access
        except Exception as exc:  # pylint: disable=broad-exception-caught
            values.append('UNDECRYPTABLE: %s' % type(exc).__name__)
    print(json.dumps({'versions': [row[1] for row in rows], 'values': values}))


if __name__ == '__main__':
    main()
