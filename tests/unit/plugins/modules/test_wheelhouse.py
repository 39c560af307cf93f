"""Tests of the wheelhouse module: tags, lock parsing, validation of prepared wheelhouses, an offline build."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tarfile
import zipfile

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.mlops.mlflow.plugins.modules import wheelhouse

PLATFORMS = ['manylinux_2_36_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64', 'linux_x86_64']


def fake_wheel(directory, name, version, tag='py3-none-any', requires=()):
    dist = '%s-%s.dist-info' % (name, version)
    files = {
        '%s/__init__.py' % name: '__version__ = %r\n' % version,
        dist + '/METADATA': 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s' % (
            name, version, ''.join('Requires-Dist: %s\n' % r for r in requires)),
        dist + '/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: %s\n' % tag,
    }
    record = ''
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()
        record += '%s,sha256=%s,%d\n' % (path, digest, len(text.encode()))
    files[dist + '/RECORD'] = record + dist + '/RECORD,,\n'
    path = os.path.join(str(directory), '%s-%s-%s.whl' % (name, version, tag))
    with zipfile.ZipFile(path, 'w') as whl:
        for member, text in files.items():
            whl.writestr(member, text)
    return path


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def run(capsys, check=False, **params):
    params.setdefault('python_version', '3.11')
    params.setdefault('platforms', PLATFORMS)
    capsys.readouterr()
    with patch_module_args(dict(params, _ansible_check_mode=check)):
        with pytest.raises(SystemExit):
            wheelhouse.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize('tag,ok', [
    (('py3', 'none', 'any'), True),
    (('py2', 'none', 'any'), False),
    (('cp311', 'cp311', 'manylinux_2_17_x86_64'), True),
    (('cp312', 'cp312', 'manylinux_2_17_x86_64'), False),
    (('cp39', 'abi3', 'manylinux2014_x86_64'), True),
    (('cp312', 'abi3', 'manylinux2014_x86_64'), False),
    (('cp311', 'cp311', 'manylinux_2_38_x86_64'), False),
    (('cp311', 'cp311', 'musllinux_1_2_x86_64'), False),
    (('cp311', 'cp311', 'manylinux_2_17_aarch64'), False),
])
def test_tags(tag, ok):
    assert wheelhouse.tag_ok(tag, '3.11', PLATFORMS) is ok


def test_lock_with_continuations_comments_and_several_hashes():
    text = '# comment\nSix==1.17.0 \\\n    --hash=sha256:%s \\\n    --hash=sha256:%s\n\nidna==3.10 --hash=sha256:%s  # via x\n' % (
        'a' * 64, 'b' * 64, 'c' * 64)
    entries = wheelhouse.parse_lock(text)
    assert [(e[0], e[1], e[2]) for e in entries] == [('six', '1.17.0', ['a' * 64, 'b' * 64]), ('idna', '3.10', ['c' * 64])]
    # One line per entry, usable alone as a requirements file (the uv installer line is written so).
    assert ' '.join(entries[0][4].split()) == 'Six==1.17.0 --hash=sha256:%s --hash=sha256:%s' % ('a' * 64, 'b' * 64)
    with pytest.raises(wheelhouse.WheelhouseError, match='line 1 is not'):
        wheelhouse.parse_lock('six>=1.0 --hash=sha256:%s\n' % ('a' * 64))
    with pytest.raises(wheelhouse.WheelhouseError, match='line 1 is not'):
        wheelhouse.parse_lock('six==1.0\n')


def prepared(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    good = fake_wheel(src, 'mlflow', '3.17.2', requires=['six'])
    six = fake_wheel(src, 'six', '1.17.0')
    (src / 'requirements.lock').write_text('mlflow==3.17.2 --hash=sha256:%s\nsix==1.17.0 --hash=sha256:%s\n'
                                           % (sha(good), sha(six)))
    return src


def test_prepared_wheelhouse_is_validated_tarred_once(tmp_path, capsys):
    src = prepared(tmp_path)
    fake_wheel(src, 'unrelated', '1.0')
    out = run(capsys, src=str(src), requirements=['mlflow[auth]==3.17.2'], cache_dir=str(tmp_path / 'cache'))
    assert out['changed'] and not out.get('failed'), out
    assert out['wheels'] == ['mlflow-3.17.2-py3-none-any.whl', 'six-1.17.0-py3-none-any.whl']
    with tarfile.open(out['tar']) as tar:
        assert sorted(tar.getnames()) == ['mlflow-3.17.2-py3-none-any.whl', 'requirements.lock', 'six-1.17.0-py3-none-any.whl']
    assert out['lock_sha256'] == hashlib.sha256(out['lock'].encode()).hexdigest()
    again = run(capsys, src=str(src), requirements=['mlflow==3.17.2'], cache_dir=str(tmp_path / 'cache'))
    assert not again['changed'] and again['tar'] == out['tar']


def test_prepared_wheelhouse_problems_are_named_and_nothing_is_written(tmp_path, capsys):
    src = prepared(tmp_path)
    with open(src / 'six-1.17.0-py3-none-any.whl', 'ab') as handle:
        handle.write(b'tampered')
    (src / 'requirements.lock').write_text((src / 'requirements.lock').read_text()
                                           + 'idna==3.10 --hash=sha256:%s\nsqlparse==0.6.1 --hash=sha256:%s\n'
                                           % ('c' * 64, 'd' * 64)
                                           + 'numpy==2.3.0 --hash=sha256:%s\n' % ('e' * 64))
    (src / 'sqlparse-0.6.1.tar.gz').write_bytes(b'sdist')
    fake_wheel(src, 'numpy', '2.3.0', tag='cp312-cp312-manylinux_2_17_x86_64')
    out = run(capsys, src=str(src), requirements=['mlflow==3.17.3', 'boto3'], cache_dir=str(tmp_path / 'cache'))
    assert out['failed']
    for text in ('hash mismatch: six-1.17.0-py3-none-any.whl has sha256:', 'missing wheel: idna==3.10',
                 'sqlparse==0.6.1 is only an sdist (sqlparse-0.6.1.tar.gz)',
                 'no wheel of numpy==2.3.0 for CPython 3.11', 'requirement mlflow==3.17.3 but requirements.lock pins mlflow==3.17.2',
                 'requirement boto3 is not in requirements.lock'):
        assert text in out['msg'], out['msg']
    # The requirements the lock lacks, as data (roles/common tells a missing installer by it).
    assert out['missing_requirements'] == ['mlflow==3.17.3', 'boto3']
    assert not (tmp_path / 'cache').exists()


def test_prepared_wheelhouse_without_lock(tmp_path, capsys):
    out = run(capsys, src=str(tmp_path), requirements=['mlflow'], cache_dir=str(tmp_path / 'cache'))
    assert out['failed'] and 'has no requirements.lock' in out['msg']


def test_build_offline_from_a_local_index_then_reuse(tmp_path, capsys):
    index = tmp_path / 'index'
    index.mkdir()
    fake_wheel(index, 'mlflow', '3.17.2', requires=['six'])
    fake_wheel(index, 'six', '1.17.0')
    params = dict(requirements=['mlflow==3.17.2'], cache_dir=str(tmp_path / 'cache'), pip_python=sys.executable,
                  pip_args=['--no-index', '--find-links', str(index)])
    assert run(capsys, check=True, **params)['changed']
    assert not (tmp_path / 'cache').exists()
    out = run(capsys, **params)
    assert out['changed'] and out['built'], out
    assert out['wheels'] == ['mlflow-3.17.2-py3-none-any.whl', 'six-1.17.0-py3-none-any.whl']
    lines = [line for line in out['lock'].splitlines() if not line.startswith('#')]
    assert lines == ['mlflow==3.17.2 --hash=sha256:%s' % sha(index / 'mlflow-3.17.2-py3-none-any.whl'),
                     'six==1.17.0 --hash=sha256:%s' % sha(index / 'six-1.17.0-py3-none-any.whl')]
    assert out['lock_entries'] == [{'name': 'mlflow', 'version': '3.17.2', 'line': lines[0]},
                                   {'name': 'six', 'version': '1.17.0', 'line': lines[1]}]
    (index / 'mlflow-3.17.2-py3-none-any.whl').unlink()
    again = run(capsys, **params)
    assert not again['changed'] and not again['built'] and again['lock'] == out['lock']
    # Reuse checks the cached files (not their hashes: the hosts install with --require-hashes).
    os.remove(os.path.join(out['path'], 'six-1.17.0-py3-none-any.whl'))
    broken = run(capsys, **params)
    assert broken['failed'] and 'missing wheel: six==1.17.0' in broken['msg'], broken


def test_build_names_a_package_with_no_wheel(tmp_path, capsys):
    index = tmp_path / 'index'
    index.mkdir()
    (index / 'onlysdist-1.0.tar.gz').write_bytes(b'sdist')
    out = run(capsys, requirements=['onlysdist==1.0'], cache_dir=str(tmp_path / 'cache'), pip_python=sys.executable,
              pip_args=['--no-index', '--find-links', str(index)])
    assert out['failed'] and 'No wheel of onlysdist==1.0 for CPython 3.11' in out['msg'], out['msg']
    assert [p for p in os.listdir(tmp_path / 'cache') if not p.endswith('.flock')] == []
