# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge times of playbooks/site.yml: per-host pip install vs wheelhouse mode, 1 vs 3 hosts, re-run.

Run as root from the repository root after ``scripts/bootstrap``::

    .venv/bin/python benchmarks/converge.py [--json out.json] [--skip-memory]

It boots its own test hosts (tests/hosts/testhost, networks ``bench-wh-*``, hosts ``whb-*``),
one fresh network per measurement, and tears each down afterwards (also on failure):

1. ``index``: first converge of one fresh host, default install (pip on the host, from the
   package index, empty pip cache);
2. ``wheelhouse cold``: first converge of one fresh host in wheelhouse mode with an empty
   controller cache (the controller downloads the wheels);
3. ``wheelhouse``: first converge of one fresh host, wheelhouse already on the controller;
4. ``wheelhouse x3``: first converge of three fresh hosts in parallel (one play, forks 10);
5. ``re-run``: site.yml again on the host of 3 (must be changed=0);
6. unless --skip-memory, on that host: processes and PSS (sum of /proc/PID/smaps_rollup over the
   unit's control group) of mlflow-server with 1, 2, 4 workers, job execution off and on.

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


def ssh(host, script):
    cmd = ['ssh', '-i', host['identity_file'], '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
           '-o', 'LogLevel=ERROR', '%s@%s' % (host['user'], host['address']), script]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


MEMORY_SCRIPT = r'''
set -eu
sed -i -e 's/^MLFLOW_WORKERS=.*/MLFLOW_WORKERS=%(workers)d/' \
       -e 's/^MLFLOW_SERVER_ENABLE_JOB_EXECUTION=.*/MLFLOW_SERVER_ENABLE_JOB_EXECUTION=%(jobs)s/' /etc/mlflow/server.env
start=$(date +%%s.%%N)
systemctl restart mlflow-server.service
until curl -fsS -o /dev/null http://127.0.0.1:5000/health; do sleep 0.5; done
end=$(date +%%s.%%N)
sleep 15
n=0; pss=0; rss=0
for pid in $(ps -e -o pid= -o unit= | awk '$2 == "mlflow-server.service" {print $1}'); do
  p=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup 2>/dev/null || echo 0)
  r=$(awk '/^Rss:/ {print $2}' /proc/$pid/smaps_rollup 2>/dev/null || echo 0)
  n=$((n + 1)); pss=$((pss + p)); rss=$((rss + r))
done
echo "$start $end $n $pss $rss"
'''


def memory(host):
    rows = []
    for jobs in ('false', 'true'):
        for workers in (1, 2, 4):
            out = ssh(host, MEMORY_SCRIPT % {'workers': workers, 'jobs': jobs}).split()
            rows.append({'workers': workers, 'job_execution': jobs == 'true', 'health_s': round(float(out[1]) - float(out[0]), 1),
                         'processes': int(out[2]), 'pss_mib': round(int(out[3]) / 1024), 'rss_sum_mib': round(int(out[4]) / 1024),
                         'load': load()})
            print('memory', rows[-1], flush=True)
    ssh(host, MEMORY_SCRIPT % {'workers': 1, 'jobs': 'false'})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--skip-memory', action='store_true')
    parser.add_argument('--only', nargs='*', default=['index', 'cold', 'warm', 'x3'])
    parser.add_argument('--memory-only', metavar='NET',
                        help='only the memory profile, on the first host of the running test network NET (left up)')
    args = parser.parse_args()
    if args.memory_only:
        host = json.loads(testhost('status', '--net', args.memory_only, '--json'))[0]['hosts'][0]
        for row in memory(host):
            print('| %(workers)d | %(job_execution)s | %(processes)d | %(pss_mib)d | %(rss_sum_mib)d | %(health_s).1f |' % row)
        return
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
                if not args.skip_memory:
                    results['memory'] = memory(info['hosts'][0])
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
    if results.get('memory'):
        print('\n| workers | job execution | processes | PSS MiB | RSS sum MiB | /health after restart s |\n|---|---|---|---|---|---|')
        for row in results['memory']:
            print('| %(workers)d | %(job_execution)s | %(processes)d | %(pss_mib)d | %(rss_sum_mib)d | %(health_s).1f |' % row)


if __name__ == '__main__':
    main()
