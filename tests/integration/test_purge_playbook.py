"""Run tests/integration/playbooks/purge.yml with ansible-playbook against localhost, on the three databases.

The URL with its password is only in an environment file (mode 0600) the module reads on the target;
with -vvv --diff the password appears nowhere in ansible-playbook's output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support import mlflow_data  # noqa: E402 pylint: disable=wrong-import-position
from support.db_schema_fixtures import PG_PASSWORD, ensure_collection_tree, make_current  # noqa: E402 pylint: disable=wrong-import-position

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'purge.yml')


def _env_quote(value):
    return '"' + ''.join('\\' + ch if ch in '"\\`$' else ch for ch in value) + '"'


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql', 'mysql'])
def test_purge_playbook(new_db, tmp_path, backend):
    db_url = new_db(backend)
    make_current(db_url)
    layout = mlflow_data.populate(db_url, str(tmp_path / 'art'), experiments=2, runs_per_experiment=2, seed=7)
    exp_a, exp_b = sorted(layout['experiments'])
    _mlflow, client = mlflow_data._client(db_url)  # pylint: disable=protected-access
    client.delete_run(layout['experiments'][exp_a][0])
    client.delete_experiment(exp_b)
    env_file = tmp_path / 'server-secrets.env'
    env_file.write_text('MLFLOW_BACKEND_STORE_URI=%s\n' % _env_quote(db_url))
    env_file.chmod(0o600)

    tree = ensure_collection_tree()
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tree, ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
               ANSIBLE_LOCALHOST_WARNING='false', MLFLOW_DISABLE_TELEMETRY='true')
    cmd = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
           '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', 'env_file=%s' % env_file,
           '-e', 'expect_runs=3', '-e', 'expect_experiments=1', '--diff', '-vvv', PLAYBOOK]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'failed=0' in out and 'changed=3' in out   # two check-mode runs + the purge; the rerun is ok
    for secret in (PG_PASSWORD, 'p%40ss%3Aw%2Frd%25', db_url):
        assert secret not in out
    # Through MLflow: the purged runs are gone, the others readable.
    remaining = {r.info.run_id for r in client.search_runs([exp_a], run_view_type=3)}
    assert remaining == set(layout['experiments'][exp_a][1:])
