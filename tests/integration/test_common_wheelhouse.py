"""roles/common's wheelhouse mode on localhost: a prepared wheelhouse installed with uv (default) or pip.

The wheelhouse holds a fake ``mlflow`` wheel (a package that only has ``__version__``) and, for the uv
installer, the real pinned uv wheel (``pip download`` from the package index, as the controller does).
The install itself runs with no index: what is checked is the installer actually used (the INSTALLER file
of the installed distribution), the lock kept in the virtualenv, changed=0 on a re-run with the same lock,
and the message when a prepared wheelhouse lacks the default installer.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support.db_schema_fixtures import ensure_collection_tree  # noqa: E402 pylint: disable=wrong-import-position
from test_common_venv import _changed, _fake_wheel  # noqa: E402 pylint: disable=wrong-import-position
from ansible_collections.mlops.mlflow.plugins.modules import wheelhouse  # noqa: E402 pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'common_wheelhouse.yml')
with open(os.path.join(ROOT, 'roles', 'common', 'vars', 'main.yml'), encoding='utf-8') as _handle:
    UV = yaml.safe_load(_handle)['__common_uv_requirement']


def _lock(src):
    """requirements.lock of the wheels in src, written the way the wheelhouse module locks a build."""
    with open(os.path.join(src, 'requirements.lock'), 'w', encoding='utf-8') as handle:
        handle.write(wheelhouse.make_lock(src, ''))


def _run(base, src, installer):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=ensure_collection_tree(), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0', ANSIBLE_LOCALHOST_WARNING='false')
    cmd = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
           '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', 'base=%s' % base, '-e', 'src=%s' % src,
           '-e', 'version=1.0.0', '-e', 'installer=%s' % installer, PLAYBOOK]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _installed_by(base):
    (path,) = glob.glob(os.path.join(str(base), 'venv', 'lib', 'python3*', 'site-packages', 'mlflow-1.0.0.dist-info',
                                     'INSTALLER'))
    with open(path, encoding='utf-8') as handle:
        return handle.read().strip()


def test_uv_and_pip_install_a_prepared_wheelhouse_and_a_missing_uv_is_named(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    _fake_wheel(str(src), '1.0.0')
    _lock(str(src))

    # The default installer is not in this wheelhouse: refused on the controller, with what to do.
    rc, out = _run(tmp_path / 'uv', src, 'uv')
    assert rc != 0
    assert 'requirement %s is not in requirements.lock' % UV in out, out[-3000:]
    assert 'add %s to the prepared wheelhouse' % UV in out, out[-3000:]
    assert not (tmp_path / 'uv' / 'venv').exists()

    # pip installs the lock as it is.
    rc, out = _run(tmp_path / 'pip', src, 'pip')
    assert rc == 0, out[-4000:]
    assert _installed_by(tmp_path / 'pip') == 'pip'

    # The pinned uv wheel, downloaded as the controller does, makes the wheelhouse complete for uv.
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:',
                    '--dest', str(src), UV], check=True, timeout=300)
    _lock(str(src))
    rc, out = _run(tmp_path / 'uv', src, 'uv')
    assert rc == 0, out[-4000:]
    assert _installed_by(tmp_path / 'uv') == 'uv'
    venv = os.path.realpath(tmp_path / 'uv' / 'venv')
    with open(os.path.join(venv, 'requirements.lock'), encoding='utf-8') as handle, \
            open(src / 'requirements.lock', encoding='utf-8') as prepared:
        assert handle.read() == prepared.read()
    assert not os.path.exists(os.path.join(venv, 'wheelhouse'))
    # Bytecode compiled at install time (the service user could not write it later).
    assert glob.glob(os.path.join(venv, 'lib', 'python3*', 'site-packages', 'mlflow', '__pycache__', '*.pyc'))
    assert 'RESTARTED' in out

    # Same lock again: nothing shipped, nothing installed.
    rc, out = _run(tmp_path / 'uv', src, 'uv')
    assert rc == 0 and _changed(out) == 0, out[-4000:]
    shutil.rmtree(tmp_path / 'uv' / 'cache', ignore_errors=True)
