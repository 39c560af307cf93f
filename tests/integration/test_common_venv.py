"""roles/common's venv entry point on localhost: one virtualenv per version, atomic switch, rollback, retention.

A fake ``mlflow`` wheel per version (a package that only has ``__version__``) is installed from a local
directory, so the test needs no index and runs in seconds per step.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support.db_schema_fixtures import ensure_collection_tree  # noqa: E402 pylint: disable=wrong-import-position

PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'common_venv.yml')


def _fake_wheel(directory, version):
    files = {
        'mlflow/__init__.py': '__version__ = %r\n' % version,
        'mlflow-%s.dist-info/METADATA' % version: 'Metadata-Version: 2.1\nName: mlflow\nVersion: %s\n' % version,
        'mlflow-%s.dist-info/WHEEL' % version: 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
    }
    record = ''
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()
        record += '%s,sha256=%s,%d\n' % (name, digest, len(text.encode()))
    record += 'mlflow-%s.dist-info/RECORD,,\n' % version
    files['mlflow-%s.dist-info/RECORD' % version] = record
    with zipfile.ZipFile(os.path.join(directory, 'mlflow-%s-py3-none-any.whl' % version), 'w') as whl:
        for name, text in files.items():
            whl.writestr(name, text)


def _run(base, wheels, version, *extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=ensure_collection_tree(), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0', ANSIBLE_LOCALHOST_WARNING='false')
    cmd = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
           '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', 'base=%s' % base, '-e', 'wheels=%s' % wheels,
           '-e', 'version=%s' % version] + list(extra) + [PLAYBOOK]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _changed(out):
    recap = [line for line in out.splitlines() if line.startswith('localhost') and 'changed=' in line]
    assert len(recap) == 1, out[-3000:]
    return int(recap[0].split('changed=')[1].split()[0])


def _venvs(base):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(base, 'venvs', '*')))


def test_versions_switch_roll_back_and_retention(tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    for version in ('1.0.0', '2.0.0'):
        _fake_wheel(str(wheels), version)
    base = tmp_path / 'opt'
    base.mkdir()
    link = base / 'venv'
    # A host deployed by an earlier version of the collection: venv is a plain directory.
    subprocess.run(['/usr/bin/python3', '-m', 'venv', '--without-pip', str(link)], check=True)
    (base / 'requirements.txt').write_text('mlflow==0.9\n')

    rc, out = _run(base, wheels, '1.0.0')
    assert rc == 0, out[-4000:]
    assert link.is_symlink() and os.readlink(link).startswith(str(base / 'venvs' / '1.0.0-'))
    assert [v for v in _venvs(base) if v.startswith('legacy-')], _venvs(base)
    assert not (base / 'requirements.txt').exists()
    assert 'RESTARTED' in out
    first = os.readlink(link)

    rc, out = _run(base, wheels, '1.0.0')
    assert rc == 0 and _changed(out) == 0 and 'RESTARTED' not in out, out[-4000:]

    rc, out = _run(base, wheels, '2.0.0', '--check')
    assert rc == 0 and _changed(out) > 0, out[-4000:]
    assert os.readlink(link) == first and not [v for v in _venvs(base) if v.startswith('2.0.0-')]

    rc, out = _run(base, wheels, '2.0.0')
    assert rc == 0 and 'RESTARTED' in out, out[-4000:]
    assert os.readlink(link).startswith(str(base / 'venvs' / '2.0.0-'))
    # keep 1: the one just left (1.0.0) stays, the legacy directory goes.
    assert len(_venvs(base)) == 2 and _venvs(base)[0] == os.path.basename(first), _venvs(base)

    # A version that cannot install: fails, leaves the link and every virtualenv as they were.
    before = (os.readlink(link), _venvs(base))
    rc, out = _run(base, wheels, '3.0.0')
    assert rc != 0 and 'Installing MLflow 3.0.0 into' in out, out[-4000:]
    assert (os.readlink(link), _venvs(base)) == before

    # Roll back to the kept version: a switch without pip.
    marker = os.path.join(first, '.mlops-venv-complete')
    mtime = os.stat(marker).st_mtime
    rc, out = _run(base, wheels, '1.0.0')
    assert rc == 0 and 'RESTARTED' in out, out[-4000:]
    assert os.readlink(link) == first and os.stat(marker).st_mtime == mtime
    assert len(_venvs(base)) == 2

    rc, out = _run(base, wheels, '1.0.0', '--check')
    assert rc == 0 and _changed(out) == 0, out[-4000:]

    rc, out = _run(base, wheels, '2.0.0', '-e', 'keep=0')
    assert rc == 0 and _venvs(base) == [os.path.basename(os.readlink(link))], (_venvs(base), out[-3000:])
