# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge times of playbooks/site.yml: per-host pip install vs wheelhouse mode, 1 vs 3 hosts, re-run.

Run as root from the repository root after ``scripts/bootstrap``::

    .venv/bin/python benchmarks/converge.py [--json out.json]

It boots its own test hosts (tests/hosts/testhost, networks ``bench-wh-*``, hosts ``whb-*``),
one fresh network per measurement, and tears each down afterwards (also on failure):

1. ``index``: first converge of one fresh host, default install (pip on the host, from the
   package index, empty pip cache);
2. ``wheelhouse cold``: first converge of one fresh host in wheelhouse mode (default installer,
   uv) with an empty controller cache (the controller downloads the wheels);
3. ``wheelhouse``: first converge of one fresh host, wheelhouse already on the controller, then
   ``wheelhouse re-run``: site.yml again on that host (must be changed=0);
4. ``wheelhouse pip``: the same with ``mlflow_server_wheelhouse_installer: pip``;
5. ``wheelhouse x3``: first converge of three fresh hosts in parallel (one play, forks 10), then
   ``wheelhouse x3 re-run`` on the three (must be changed=0);

Memory per workers / job-execution setting: benchmarks/memory_profile.py.

Every host runs the tracking server with SQLite and 1 worker (mlflow_server_workers=1).
The load average is printed before and after each step: other jobs on the machine skew times.
The machine's CPU time per step (/proc/stat) is printed too: the test hosts share the machine's
cores, so N hosts installing in parallel cannot finish faster than their CPU time / cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTHOST = os.path.join(REPO, 'tests', 'hosts', 'testhost')
SITE = os.path.join(REPO, 'playbooks', 'site.yml')
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')


def load():
    with open('/proc/loadavg', encoding='ascii') as handle:
        return float(handle.read().split()[0])


def cpu_seconds():
    """CPU time (user + nice + system, seconds) the whole machine has spent: controller and test hosts."""
    with open('/proc/stat', encoding='ascii') as handle:
        fields = handle.readline().split()
    return sum(int(v) for v in fields[1:4]) / os.sysconf('SC_CLK_TCK')


def testhost(*args):
    proc = subprocess.run([TESTHOST] + list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError('testhost %s failed: %s' % (' '.join(args), proc.stderr[-2000:]))
    return proc.stdout


def up(net, hosts):
    return json.loads(testhost('up', '--net', net, *['%s:mlflow_servers' % h for h in hosts]))


def converge(inventory, extra, log):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0', ANSIBLE_INJECT_FACT_VARS='false',
               ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    cmd = [PLAYBOOK, '-i', inventory, '-e', '@' + extra, SITE]
    before = load()
    cpu = cpu_seconds()
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=REPO)
    seconds = time.monotonic() - start
    cpu = cpu_seconds() - cpu
    with open(log, 'w', encoding='utf-8') as handle:
        handle.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError('converge failed (rc %d), see %s:\n%s' % (proc.returncode, log, proc.stdout[-3000:]))
    changed = [int(m) for m in re.findall(r'^\S+\s+: ok=\d+\s+changed=(\d+)', proc.stdout, re.M)]
    return {'seconds': round(seconds, 1), 'cpu_seconds': round(cpu, 1), 'changed': changed, 'load_before': before,
            'load_after': load()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--only', nargs='*', default=['index', 'cold', 'warm', 'pip', 'x3'])
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix='bench-wh-')
    cache = os.path.join(work, 'wheelhouse-cache')
    results = {'commit': subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                        cwd=REPO, check=False).stdout.strip(),
               'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'nproc': os.cpu_count(), 'steps': {}}

    def extra(name, wheelhouse, installer):
        path = os.path.join(work, name + '.json')
        with open(path, 'w', encoding='utf-8') as handle:
            json.dump({'mlflow_server_workers': 1, 'mlflow_server_wheelhouse': wheelhouse,
                       'mlflow_server_wheelhouse_cache': cache, 'mlflow_server_wheelhouse_installer': installer},
                      handle)
        return path

    def step(key, net, hosts, wheelhouse, installer='uv', rerun=False):
        print('== %s: %s' % (key, ' '.join(hosts)), flush=True)
        try:
            info = up(net, hosts)
            res = converge(info['inventory'], extra(key, wheelhouse, installer), os.path.join(work, key + '.log'))
            results['steps'][key] = res
            print(key, res, flush=True)
            if rerun:
                again = converge(info['inventory'], extra(key, wheelhouse, installer),
                                 os.path.join(work, key + '-rerun.log'))
                results['steps'][key + ' re-run'] = again
                print(key + ' re-run', again, flush=True)
        finally:
            testhost('down', '--net', net)

    try:
        if 'index' in args.only:
            step('index', 'bench-wh-idx', ['whb-idx'], False)
        if 'cold' in args.only:
            step('wheelhouse cold', 'bench-wh-cold', ['whb-cold'], True)
        if 'warm' in args.only:
            step('wheelhouse', 'bench-wh-warm', ['whb-warm'], True, rerun=True)
        if 'pip' in args.only:
            step('wheelhouse pip', 'bench-wh-pip', ['whb-pip'], True, installer='pip')
        if 'x3' in args.only:
            step('wheelhouse x3', 'bench-wh-par', ['whb-p1', 'whb-p2', 'whb-p3'], True, rerun=True)
    finally:
        print(json.dumps(results, indent=1))
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as handle:
                json.dump(results, handle, indent=1)
        shutil.rmtree(cache, ignore_errors=True)
    steps = results['steps']
    print('\n| step | wall s | CPU s (machine) | changed per host | load before/after |\n|---|---|---|---|---|')
    for key, res in steps.items():
        cells = (key, res['seconds'], res['cpu_seconds'], res['changed'], res['load_before'], res['load_after'])
        print('| %s | %.1f | %.1f | %s | %.1f / %.1f |' % cells)

    def ratio(label, top, bottom, goal=''):
        if top in steps and bottom in steps:
            print('%s: %.2f%s' % (label, steps[top]['seconds'] / steps[bottom]['seconds'], goal))

    ratio('wheelhouse (uv) / index (pip)', 'wheelhouse', 'index')
    ratio('wheelhouse (uv) / wheelhouse (pip)', 'wheelhouse', 'wheelhouse pip')
    ratio('3 hosts / 1 host', 'wheelhouse x3', 'wheelhouse', ' (goal <= 1.3)')
    if 'wheelhouse x3' in steps:
        # The test hosts share this machine's cores: three installs cannot take less wall time than
        # their CPU time spread over every core.
        x3 = steps['wheelhouse x3']
        floor = x3['cpu_seconds'] / os.cpu_count()
        print('3 hosts: CPU %.1f s on %d cores = at least %.1f s of wall time' % (x3['cpu_seconds'], os.cpu_count(), floor))
        if 'wheelhouse' in steps:
            print('  that floor / 1 host: %.2f' % (floor / steps['wheelhouse']['seconds']))
    for key in ('wheelhouse', 'wheelhouse x3'):
        if key + ' re-run' in steps:
            ratio('%s re-run / first' % key, key + ' re-run', key, ' (goal <= 0.25), changed %s'
                  % steps[key + ' re-run']['changed'])


if __name__ == '__main__':
    main()
