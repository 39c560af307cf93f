#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: wheelhouse
short_description: Build or validate a hash-locked wheelhouse for another machine's Python and platform
version_added: 0.2.0
description:
  - Runs on the controller (C(delegate_to=localhost)). Produces a directory with one wheel per locked package, a
    lock file C(requirements.lock) (C(name==version --hash=sha256:...) for every wheel) and an uncompressed tar of
    both, ready to be unpacked on a target and installed with C(pip install --no-index --require-hashes).
  - Without O(src), resolves O(requirements) with C(pip download --only-binary=:all:) for the target's Python
    (O(python_version), CPython ABI) and platform tags (O(platforms)), once per set of inputs; the result is kept in
    O(cache_dir) under a key of the inputs, so further runs (and other hosts with the same Python and platform) reuse
    it without any index access. Parallel runs with the same key wait for each other (file lock). A cached wheelhouse
    is checked for its files on reuse, not hashed again (the hosts check every hash when they install).
  - With O(src), validates a wheelhouse prepared elsewhere (wheels and C(requirements.lock)) instead - every locked
    package has a wheel in O(src) that the target can install and whose sha256 is in the lock, no package is only an
    sdist, and every requirement of O(requirements) is in the lock - and fails naming the first problems found.
author:
  - mlops.mlflow contributors (@mlops-mlflow)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - In check mode nothing is downloaded or written; a prepared wheelhouse (O(src)) is still validated.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
options:
  requirements:
    description:
      - Requirement lines (C(mlflow[auth]==3.17.2), C(psycopg2-binary), ...). Resolved with their dependencies when
        O(src) is not given; with O(src), each requirement's name (and C(==) version) must be in the lock.
    type: list
    elements: str
    required: true
  python_version:
    description: C(major.minor) of the target's interpreter, for example V(3.11).
    type: str
    required: true
  platforms:
    description:
      - Wheel platform tags the target accepts, for example V(manylinux_2_36_x86_64), ..., V(manylinux2014_x86_64),
        V(linux_x86_64). Pure-Python wheels (C(any)) are always accepted.
    type: list
    elements: str
    required: true
  cache_dir:
    description: Directory on the controller that holds built wheelhouses and the tars of prepared ones.
    type: path
    required: true
  src:
    description:
      - A prepared wheelhouse on the controller - a directory with the wheels and C(requirements.lock). Nothing is
        downloaded then.
    type: path
  pip_args:
    description: Further arguments for C(pip download), for example V([--index-url, https://mirror/simple]).
    type: list
    elements: str
    default: []
  pip_python:
    description: Interpreter whose pip downloads (default - the one running this module).
    type: path
notes:
  - Environment markers in the requirements are evaluated by C(pip download) for O(python_version) but with the
    controller's operating system and machine; build on a controller of the same OS family and architecture, or
    prepare the wheelhouse on a machine like the targets.
  - The roles C(mlops.mlflow.mlflow_server) and C(mlops.mlflow.mlflow_gateway) call it in their wheelhouse mode
    (C(mlflow_server_wheelhouse), C(mlflow_gateway_wheelhouse)).
'''

EXAMPLES = r'''
- name: Wheelhouse of MLflow for Debian 12 hosts (CPython 3.11, glibc 2.36, x86_64)
  mlops.mlflow.wheelhouse:
    requirements: ["mlflow==3.17.2", "psycopg2-binary"]
    python_version: "3.11"
    platforms: [manylinux_2_36_x86_64, manylinux_2_17_x86_64, manylinux2014_x86_64, linux_x86_64]
    cache_dir: "{{ lookup('env', 'HOME') }}/.cache/mlops-mlflow/wheelhouse"
  delegate_to: localhost
  run_once: true

- name: Validate a wheelhouse prepared on a machine with internet access
  mlops.mlflow.wheelhouse:
    src: /srv/wheelhouse/mlflow-3.17.2
    requirements: ["mlflow==3.17.2"]
    python_version: "3.11"
    platforms: [manylinux_2_36_x86_64, manylinux2014_x86_64, linux_x86_64]
    cache_dir: /var/tmp/mlops-mlflow-wheelhouse
  delegate_to: localhost
'''

RETURN = r'''
path:
  description: Directory with the wheels and C(requirements.lock).
  returned: always
  type: str
  sample: /root/.cache/mlops-mlflow/wheelhouse/3f0c9a1e2b7d4c55
tar:
  description: Uncompressed tar of the locked wheels and C(requirements.lock) (flat, no directories).
  returned: always
  type: str
  sample: /root/.cache/mlops-mlflow/wheelhouse/3f0c9a1e2b7d4c55/wheelhouse.tar
lock:
  description: Content of C(requirements.lock), sorted by name.
  returned: always
  type: str
  sample: "mlflow==3.17.2 --hash=sha256:0c1d...\n"
lock_entries:
  description: The entries of RV(lock), continuation lines joined, comments left out.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Canonical package name., type: str, returned: always}
    version: {description: Locked version., type: str, returned: always}
    line: {description: "The requirement line with its hashes (C(name==version --hash=sha256:...)).", type: str, returned: always}
  sample: [{name: mlflow, version: 3.17.2, line: "mlflow==3.17.2 --hash=sha256:0c1d..."}]
lock_sha256:
  description: sha256 of RV(lock).
  returned: always
  type: str
  sample: 9b1e5f0d8c4e...
wheels:
  description: File names of the locked wheels.
  returned: always
  type: list
  elements: str
  sample: [mlflow-3.17.2-py3-none-any.whl]
size:
  description: Bytes of the locked wheels.
  returned: always
  type: int
  sample: 212345678
built:
  description: Whether this run downloaded the wheels (false - taken from O(cache_dir) or O(src)).
  returned: always
  type: bool
  sample: false
missing_requirements:
  description:
    - The entries of O(requirements) that the lock does not hold (or pins at another version).
    - Lets a caller tell which requirement is missing without reading the failure message.
  returned: failure
  type: list
  elements: str
  sample: [uv==0.13.9]
'''

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule

LOCK_NAME = 'requirements.lock'
TAR_NAME = 'wheelhouse.tar'
DONE_NAME = '.complete'
SDIST_SUFFIXES = ('.tar.gz', '.zip', '.tar.bz2', '.tgz')


class WheelhouseError(Exception):
    """missing: the requirements (as given) that the lock does not hold, for callers to act on."""

    def __init__(self, msg, missing=()):
        super().__init__(msg)
        self.missing = list(missing)


def canonical(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def parse_wheel(filename):
    """(name, version, [(py, abi, plat), ...]) of a wheel file name, None if it is not one."""
    if not filename.endswith('.whl'):
        return None
    parts = filename[:-4].split('-')
    if len(parts) not in (5, 6):
        return None
    name, version = parts[0], parts[1]
    pys, abis, plats = parts[-3], parts[-2], parts[-1]
    tags = [(p, a, s) for p in pys.split('.') for a in abis.split('.') for s in plats.split('.')]
    return canonical(name), version, tags


def tag_ok(tag, python_version, platforms):
    py, abi, plat = tag
    major, minor = python_version.split('.')[:2]
    minor = int(minor)
    if plat != 'any' and plat not in platforms:
        return False
    if abi not in ('none', 'abi3', 'cp%s%d' % (major, minor)):
        return False
    if py in ('py' + major, 'py%s%d' % (major, minor)) or py in ['py%s%d' % (major, k) for k in range(minor)]:
        return abi == 'none'
    match = re.match(r'^cp%s(\d+)$' % major, py)
    if not match:
        return False
    if abi == 'abi3':
        return int(match.group(1)) <= minor
    return int(match.group(1)) == minor


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def parse_lock(text):
    """[(canonical name, version, [sha256, ...], has_markers, line)] of a hash-pinned requirements file."""
    entries = []
    logical = re.sub(r'\\\n', ' ', text)
    for number, raw in enumerate(logical.splitlines(), 1):
        line = raw.split(' #', 1)[0].strip() if not raw.lstrip().startswith('#') else ''
        if not line:
            continue
        match = re.match(r'^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*(;[^-]*)?(.*)$', line)
        hashes = re.findall(r'--hash[= ]sha256:([0-9a-fA-F]{64})', line)
        if not match or not hashes:
            raise WheelhouseError('%s line %d is not "name==version --hash=sha256:<64 hex>": %s'
                                  % (LOCK_NAME, number, line[:200]))
        entries.append((canonical(match.group(1)), match.group(3), [h.lower() for h in hashes],
                        bool(match.group(4)), line))
    if not entries:
        raise WheelhouseError('%s holds no requirement' % LOCK_NAME)
    return entries


def requirement_name_version(requirement):
    match = re.match(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(==\s*([^\s;,]+))?', requirement)
    if not match:
        raise WheelhouseError('cannot read the requirement %r' % requirement)
    return canonical(match.group(1)), match.group(4)


def validate(directory, lock_text, requirements, python_version, platforms, hash_files=True):
    """The wheel file of each locked package; raises WheelhouseError listing every problem.

    hash_files=False skips the sha256 of each wheel (the cache this module wrote itself: the hosts
    check every hash again when they install).
    """
    entries = parse_lock(lock_text)
    files = sorted(os.listdir(directory))
    wheels = {}
    for filename in files:
        parsed = parse_wheel(filename)
        if parsed:
            wheels.setdefault((parsed[0], parsed[1]), []).append((filename, parsed[2]))
    problems = []
    chosen = []
    locked = {}
    for name, version, hashes, has_markers, line in entries:
        locked[name] = version
        candidates = wheels.get((name, version), [])
        usable = [f for f, tags in candidates if any(tag_ok(t, python_version, platforms) for t in tags)]
        if not usable:
            if has_markers:
                continue
            sdists = [f for f in files if canonical(f.split('-')[0]) == name and f.endswith(SDIST_SUFFIXES)
                      and version in f]
            if sdists:
                problems.append('%s==%s is only an sdist (%s): a wheelhouse holds wheels; build the wheel on a machine '
                                'like the targets (pip wheel --no-deps) and lock its hash' % (name, version, sdists[0]))
            elif candidates:
                problems.append('no wheel of %s==%s for CPython %s on %s: found %s' % (
                    name, version, python_version, ', '.join(platforms[:3]) + (', ...' if len(platforms) > 3 else ''),
                    ', '.join(f for f, dummy in candidates)))
            else:
                problems.append('missing wheel: %s==%s is in %s but no wheel of it is in %s'
                                % (name, version, LOCK_NAME, directory))
            continue
        if not hash_files:
            chosen.append(usable[0])
            continue
        digests = {f: sha256_file(os.path.join(directory, f)) for f in usable}
        good = [f for f in usable if digests[f] in hashes]
        if not good:
            problems.append('hash mismatch: %s has sha256:%s, %s locks %s' % (
                usable[0], digests[usable[0]], LOCK_NAME, ', '.join('sha256:' + h for h in hashes)))
            continue
        chosen.append(good[0])
    missing = []
    for requirement in requirements:
        name, version = requirement_name_version(requirement)
        if name not in locked:
            problems.append('requirement %s is not in %s' % (requirement, LOCK_NAME))
            missing.append(requirement)
        elif version and locked[name] != version:
            problems.append('requirement %s but %s pins %s==%s' % (requirement, LOCK_NAME, name, locked[name]))
            missing.append(requirement)
    if problems:
        raise WheelhouseError('; '.join(problems), missing)
    return chosen


def make_lock(directory, header):
    lines = []
    for filename in sorted(os.listdir(directory), key=lambda f: canonical(f.split('-')[0])):
        if filename.endswith('.whl'):
            name, version, dummy = parse_wheel(filename)
            lines.append('%s==%s --hash=sha256:%s' % (name, version, sha256_file(os.path.join(directory, filename))))
    return header + '\n'.join(lines) + '\n'


def write_tar(path, directory, wheels):
    tmp = path + '.tmp'
    with tarfile.open(tmp, 'w', format=tarfile.PAX_FORMAT) as tar:
        for filename in list(wheels) + [LOCK_NAME]:
            info = tar.gettarinfo(os.path.join(directory, filename), arcname=filename)
            info.uid = info.gid = 0
            info.uname = info.gname = 'root'
            info.mode = 0o644
            with open(os.path.join(directory, filename), 'rb') as handle:
                tar.addfile(info, handle)
    os.replace(tmp, path)


def read(path):
    with open(path, encoding='utf-8') as handle:
        return handle.read()


def result(path, tar, lock, wheels, built, changed):
    return dict(changed=changed, path=path, tar=tar, lock=lock, built=built,
                lock_entries=[dict(name=e[0], version=e[1], line=e[4]) for e in parse_lock(lock)],
                lock_sha256=hashlib.sha256(lock.encode('utf-8')).hexdigest(), wheels=sorted(wheels),
                size=sum(os.path.getsize(os.path.join(path, w)) for w in wheels if os.path.exists(os.path.join(path, w))))


def prepared(module, params):
    src = params['src']
    if not os.path.isdir(src):
        raise WheelhouseError('the prepared wheelhouse %s is not a directory on the controller' % src)
    if not os.path.isfile(os.path.join(src, LOCK_NAME)):
        raise WheelhouseError('the prepared wheelhouse %s has no %s (name==version --hash=sha256:... per wheel)'
                              % (src, LOCK_NAME))
    lock = read(os.path.join(src, LOCK_NAME))
    wheels = validate(src, lock, params['requirements'], params['python_version'], params['platforms'])
    out = os.path.join(params['cache_dir'], 'prepared-' + hashlib.sha256(lock.encode('utf-8')).hexdigest()[:16])
    tar = os.path.join(out, TAR_NAME)
    changed = not os.path.exists(tar)
    if changed and not module.check_mode:
        os.makedirs(out, exist_ok=True)
        write_tar(tar, src, wheels)
    return result(src, tar, lock, wheels, False, changed)


def build(module, params):
    key_inputs = {k: params[k] for k in ('requirements', 'python_version', 'platforms', 'pip_args')}
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode('utf-8')).hexdigest()[:16]
    cache = params['cache_dir']
    path = os.path.join(cache, key)
    tar = os.path.join(path, TAR_NAME)
    if module.check_mode and not os.path.exists(os.path.join(path, DONE_NAME)):
        return dict(changed=True, path=path, tar=tar, lock='', lock_sha256='', lock_entries=[], wheels=[], size=0,
                    built=True)
    os.makedirs(cache, mode=0o755, exist_ok=True)
    with open(os.path.join(cache, '.%s.flock' % key), 'w', encoding='utf-8') as flock:
        fcntl.flock(flock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(path, DONE_NAME)):
            lock = read(os.path.join(path, LOCK_NAME))
            # Reused without hashing 180 MB again on every run: it was hashed when built, and the hosts
            # install with --require-hashes, so a damaged cache fails there, before any switch.
            wheels = validate(path, lock, params['requirements'], params['python_version'], params['platforms'],
                              hash_files=False)
            if not os.path.exists(tar):
                write_tar(tar, path, wheels)
            return result(path, tar, lock, wheels, False, False)
        tmp = tempfile.mkdtemp(prefix='.%s-' % key, dir=cache)
        try:
            reqs = os.path.join(tmp, '.requirements.in')
            with open(reqs, 'w', encoding='utf-8') as handle:
                handle.write('\n'.join(params['requirements']) + '\n')
            major, minor = params['python_version'].split('.')[:2]
            cmd = [params['pip_python'] or sys.executable, '-m', 'pip', 'download', '--only-binary=:all:',
                   '--dest', tmp, '--python-version', '%s.%s' % (major, minor), '--implementation', 'cp',
                   '--abi', 'cp%s%s' % (major, minor), '--progress-bar', 'off', '--disable-pip-version-check']
            for plat in params['platforms']:
                cmd += ['--platform', plat]
            cmd += params['pip_args'] + ['-r', reqs]
            rc, out, err = module.run_command(cmd, environ_update={'PIP_NO_INPUT': '1'})
            if rc != 0:
                missing = re.findall(r'No matching distribution found for (\S+)', err)
                hint = (' No wheel of %s for CPython %s.%s on these platforms (sdist-only packages cannot go into a '
                        'wheelhouse: build the wheel on a machine like the targets and use a prepared wheelhouse).'
                        % (', '.join(missing), major, minor)) if missing else ''
                raise WheelhouseError('pip download failed (rc %d).%s %s' % (rc, hint, err.strip()[-1500:]))
            os.remove(reqs)
            others = [f for f in os.listdir(tmp) if not f.endswith('.whl')]
            if others:
                raise WheelhouseError('pip download left files that are not wheels: %s' % ', '.join(others))
            lock = make_lock(tmp, '# Locked by mlops.mlflow.wheelhouse for CPython %s.%s on %s\n# %s\n' % (
                major, minor, params['platforms'][0], ' '.join(params['requirements'])))
            with open(os.path.join(tmp, LOCK_NAME), 'w', encoding='utf-8') as handle:
                handle.write(lock)
            wheels = validate(tmp, lock, params['requirements'], params['python_version'], params['platforms'])
            write_tar(os.path.join(tmp, TAR_NAME), tmp, wheels)
            with open(os.path.join(tmp, DONE_NAME), 'w', encoding='utf-8') as handle:
                handle.write(out[-2000:])
            os.chmod(tmp, 0o755)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
        return result(path, tar, lock, wheels, True, True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            requirements=dict(type='list', elements='str', required=True),
            python_version=dict(type='str', required=True),
            platforms=dict(type='list', elements='str', required=True),
            cache_dir=dict(type='path', required=True),
            src=dict(type='path'),
            pip_args=dict(type='list', elements='str', default=[]),
            pip_python=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not re.match(r'^3\.\d+$', params['python_version']):
        module.fail_json(msg='python_version must be major.minor of a CPython 3, for example 3.11 (got %s)'
                         % params['python_version'])
    if not params['platforms']:
        module.fail_json(msg='platforms must name at least one wheel platform tag')
    try:
        if params['src']:
            module.exit_json(**prepared(module, params))
        module.exit_json(**build(module, params))
    except WheelhouseError as exc:
        module.fail_json(msg='wheelhouse: %s' % exc, missing_requirements=exc.missing)
    except OSError as exc:
        module.fail_json(msg='wheelhouse: %s: %s' % (exc.filename or '', exc.strerror or exc))


if __name__ == '__main__':
    main()
