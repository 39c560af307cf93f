# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge times of playbooks/site.yml: per-host pip install vs wheelhouse mode, 1 vs 3 hosts, re-run.

Run as root from the repository root after ``scripts/bootstrap``::

    .venv/bin/python benchmarks/converge.py [--json out.json]

It boots its own test hosts (tests/hosts/testhost, networks ``bench-wh-*``, hosts ``whb-*``),
one fresh network per measurement, and tears each down afterwards (also on failure):

1. ``index``: first converge of one fresh host, default install (pip on the host, from the
   package index, empty pip cache);
2. ``wheelhouse cold``: first converge of one fresh host in wheelhouse mode with an empty
   controller cache (the controller downloads the wheels);
3. ``wheelhouse``: first converge of one fresh host, wheelhouse already on the controller;
4. ``wheelhouse x3``: first converge of three fresh hosts in parallel (one play, forks 10);
5. ``re-run``: site.yml again on the host of 3 (must be changed=0);

Memory per workers / job-execution setting: benchmarks/memory_profile.py.

Every host runs the tracking server with SQLite and 1 worker (mlflow_server_workers=1).
The load average is printed before and after each step: other jobs on the machine skew times.
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
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=REPO)
    seconds = time.monotonic() - start
    with open(log, 'w', encoding='utf-8') as handle:
        handle.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError('converge failed (rc %d), see %s:\n%s' % (proc.returncode, log, proc.stdout[-3000:]))
    changed = [int(m) for m in re.findall(r'^\S+\s+: ok=\d+\s+changed=(\d+)', proc.stdout, re.M)]
    return {'seconds': round(seconds, 1), 'changed': changed, 'load_before': before, 'load_after': load()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--only', nargs='*', default=['index', 'cold', 'warm', 'x3'])
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix='bench-wh-')
    cache = os.path.join(work, 'wheelhouse-cache')
    results = {'commit': subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                        cwd=REPO, check=False).stdout.strip(),
               'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'nproc': os.cpu_count(), 'steps': {}}

    def extra(name, wheelhouse):
        path = os.path.join(work, name + '.json')
        with open(path, 'w', encoding='utf-8') as handle:
            json.dump({'mlflow_server_workers': 1, 'mlflow_server_wheelhouse': wheelhouse,
                       'mlflow_server_wheelhouse_cache': cache}, handle)
        return path

    def step(key, net, hosts, wheelhouse, keep=False):
        print('== %s: %s' % (key, ' '.join(hosts)), flush=True)
        try:
            info = up(net, hosts)
            res = converge(info['inventory'], extra(key, wheelhouse), os.path.join(work, key + '.log'))
            results['steps'][key] = res
            print(key, res, flush=True)
            if keep:
                rerun = converge(info['inventory'], extra(key, wheelhouse), os.path.join(work, key + '-rerun.log'))
                results['steps']['re-run'] = rerun
                print('re-run', rerun, flush=True)
        finally:
            testhost('down', '--net', net)

    try:
        if 'index' in args.only:
            step('index', 'bench-wh-idx', ['whb-idx'], False)
        if 'cold' in args.only:
            step('wheelhouse cold', 'bench-wh-cold', ['whb-cold'], True)
        if 'warm' in args.only:
            step('wheelhouse', 'bench-wh-warm', ['whb-warm'], True)
        if 'x3' in args.only:
            step('wheelhouse x3', 'bench-wh-par', ['whb-p1', 'whb-p2', 'whb-p3'], True, keep=True)
    finally:
        print(json.dumps(results, indent=1))
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as handle:
                json.dump(results, handle, indent=1)
        shutil.rmtree(cache, ignore_errors=True)
    steps = results['steps']
    print('\n| step | wall s | changed per host | load before/after |\n|---|---|---|---|')
    for key, res in steps.items():
        print('| %s | %.1f | %s | %.1f / %.1f |' % (key, res['seconds'], res['changed'], res['load_before'], res['load_after']))
    if 'index' in steps and 'wheelhouse' in steps:
        print('wheelhouse / index: %.2f' % (steps['wheelhouse']['seconds'] / steps['index']['seconds']))
    if 'wheelhouse' in steps and 'wheelhouse x3' in steps:
        print('3 hosts / 1 host: %.2f (goal <= 1.3)' % (steps['wheelhouse x3']['seconds'] / steps['wheelhouse']['seconds']))
    if 're-run' in steps and 'wheelhouse x3' in steps:
        print('re-run / first: %.2f (goal <= 0.25), changed %s' % (
            steps['re-run']['seconds'] / steps['wheelhouse x3']['seconds'], steps['re-run']['changed']))


if __name__ == '__main__':
    main()
