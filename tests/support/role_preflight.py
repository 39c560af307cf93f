"""Run a role's argument-spec check and preflight with ansible-playbook against localhost.

Shared by tests/integration/test_role_preflight.py (mlflow_server) and
tests/integration/test_gateway_preflight.py (mlflow_gateway). Always --check and
limited to the role's preflight tag, so even a preflight that wrongly passed could
not change this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support.db_schema_fixtures import ensure_collection_tree


def run_preflight(tmp_path, playbook, tag, extra_vars, extra_args=()):
    """Return (rc, stdout + stderr) of the preflight run with extra_vars given as JSON."""
    tree = ensure_collection_tree()
    vars_file = tmp_path / 'vars.json'
    vars_file.write_text(json.dumps(extra_vars))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tree, ANSIBLE_INJECT_FACT_VARS='false', ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCALHOST_WARNING='false')
    cmd = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
           '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', '@%s' % vars_file,
           '--check', '--tags', tag] + list(extra_args) + [playbook]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr
