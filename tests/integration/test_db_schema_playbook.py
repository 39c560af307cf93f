"""Run tests/integration/playbooks/db_schema.yml with ansible-playbook against localhost.

The module runs under this interpreter (which has mlflow), on sqlite, PostgreSQL and MariaDB, with
--diff and -vvv; the database password must appear nowhere in ansible-playbook's output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support.db_schema_fixtures import (  # noqa: E402 pylint: disable=wrong-import-position,unused-import
    PG_PASSWORD,
    all_revisions,
    ensure_collection_tree,
    make_behind,
    make_foreign,
    revision_of,
    snapshot,
)

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'db_schema.yml')
HEAD = all_revisions()[-1]


def ansible_playbook(db_url, extra_vars, *args):
    tree = ensure_collection_tree()
    env = dict(os.environ, MLFLOW_TEST_DB_URL=db_url, ANSIBLE_COLLECTIONS_PATH=tree, ANSIBLE_INJECT_FACT_VARS='false',
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0', ANSIBLE_LOCALHOST_WARNING='false', MLFLOW_DISABLE_TELEMETRY='true')
    env.pop('PGPASSWORD', None)
    cmd = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
           '-e', 'ansible_python_interpreter=%s' % sys.executable]
    for key, value in extra_vars.items():
        cmd += ['-e', '%s=%s' % (key, value)]
    cmd += list(args) + [PLAYBOOK]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def assert_no_secret(output):
    for secret in (PG_PASSWORD, 'p%40ss%3Aw%2Frd%25', 'p%40ss'):
        assert secret not in output


@pytest.mark.parametrize('backend, kind', [('sqlite', 'empty'), ('sqlite', 'behind'),
                                           ('postgresql', 'foreign'), ('postgresql', 'behind'),
                                           ('mysql', 'empty'), ('mysql', 'behind')])
def test_playbook(new_db, tmp_path, backend, kind):
    db_url = new_db(backend)
    sqlite_path = db_url[len('sqlite:///'):] if backend == 'sqlite' else ''
    pending = len(all_revisions())
    if kind == 'behind':
        pending = make_behind(db_url, 4)[1]
    elif kind == 'foreign':
        make_foreign(db_url)
    extra = {'expect_state_before': kind, 'expect_pending': pending, 'sqlite_path': sqlite_path}

    before = snapshot(db_url)
    rc, out = ansible_playbook(db_url, extra, '--tags', 'check', '-vvv')
    assert rc == 0, out
    assert snapshot(db_url) == before
    assert_no_secret(out)

    rc, out = ansible_playbook(db_url, extra, '--diff', '-vvv')
    assert rc == 0, out
    assert_no_secret(out)
    old = 'none' if kind != 'behind' else all_revisions()[-5]
    assert '-revision: %s' % old in out and '+revision: %s' % HEAD in out
    assert 'changed=2' in out  # check-mode task + real run; the rerun is ok
    assert revision_of(db_url) == [HEAD]


@pytest.mark.parametrize('backend, words', [('postgresql', 'password authentication failed'), ('mysql', 'Access denied')])
def test_playbook_failure_hides_password(new_db, backend, words):
    db_url = new_db(backend).replace('p%40ss', 'p%40sX')
    rc, out = ansible_playbook(db_url, {'expect_state_before': 'empty', 'expect_pending': 0}, '-vvv')
    assert rc != 0
    assert words in out
    assert_no_secret(out)
    assert 'p@sX' not in out and 'p%40sX' not in out
