# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory profile of the deployed services, for sizing hosts.

Boots one throw-away test host (tests/hosts/testhost, network `mem-prof`, host `mem-prof1`),
deploys playbooks/site.yml (tracking server on SQLite + standalone gateway), then for each
setting of the matrix

  * mlflow-server: mlflow_server_workers 1 / 2 / 4  x  mlflow_server_job_execution false / true
  * mlflow-gateway: mlflow_gateway_workers 1 / 2 / 4

re-runs the playbook with that setting (the role restarts the unit), waits for /health, warms
every worker up with requests, lets it settle and reads every process of the unit's control
group: count, summed PSS and RSS (/proc/PID/smaps_rollup), and the time from the restart to
/health. Prints a Markdown table and writes JSON (--json).

    .venv/bin/python benchmarks/memory_profile.py [--keep] [--json FILE]

Needs root (test hosts) and the toolchain venv (ansible-playbook); the host is removed at the
end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTHOST = os.path.join(ROOT, 'tests', 'hosts', 'testhost')
NET = 'mem-prof'
HOST = 'mem-prof1'
SETTLE_S = 20
WARM_REQUESTS = 40

# One Python process inside the host: the unit's main process and all its descendants
# (uvicorn/gunicorn workers, the job runner and its consumers) with PSS/RSS in KiB.
PROBE = r'''
import json, os, subprocess, sys
main = int(subprocess.run(['systemctl', 'show', '-P', 'MainPID', sys.argv[1]], capture_output=True, text=True).stdout)
parents = {}
for name in os.listdir('/proc'):
    if name.isdigit():
        try:
            stat = open('/proc/%s/stat' % name).read()
        except OSError:
            continue
        parents[int(name)] = int(stat.rsplit(')', 1)[1].split()[1])
tree, todo = [], [main]
while todo:
    pid = todo.pop()
    tree.append(pid)
    todo.extend(child for child, parent in parents.items() if parent == pid)
out = []
for pid in tree:
    fields = {}
    try:
        for line in open('/proc/%d/smaps_rollup' % pid):
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == 'kB':
                fields[parts[0].rstrip(':')] = int(parts[1])
        cmd = open('/proc/%d/cmdline' % pid, 'rb').read().replace(b'\0', b' ').decode(errors='replace')[:120]
    except OSError:
        continue
    out.append({'pid': pid, 'pss_kib': fields.get('Pss', 0), 'rss_kib': fields.get('Rss', 0), 'cmd': cmd})
print(json.dumps(out))
'''


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, text=True, **kwargs)


def host_exec(*argv):
    proc = subprocess.run([TESTHOST, 'exec', '--net', NET, HOST, '--'] + list(argv), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit('on %s, %s failed (rc %d): %s' % (HOST, argv[0], proc.returncode, proc.stderr.strip()[-2000:]))
    return proc.stdout


def playbook(inventory, extra):
    """Run site.yml with EXTRA vars (a JSON file, so nothing lands in argv but its path)."""
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as handle:
        json.dump(extra, handle)
    try:
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, '.cache', 'collections'))
        proc = subprocess.run(['ansible-playbook', '-i', inventory, os.path.join(ROOT, 'playbooks', 'site.yml'),
                               '-e', '@' + handle.name], env=env, capture_output=True, text=True, check=False)
    finally:
        os.unlink(handle.name)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit('site.yml failed (rc %d)' % proc.returncode)


def wait_health(port, since, timeout=300):
    deadline = since + timeout
    while time.monotonic() < deadline:
        answer = subprocess.run(['curl', '-fsS', '--max-time', '2', 'http://127.0.0.1:%d/health' % port],
                                capture_output=True, text=True, check=False)
        if answer.returncode == 0:
            return time.monotonic() - since
        time.sleep(0.5)
    raise SystemExit('no /health on port %d within %d s' % (port, timeout))


def warm(urls):
    """Spread requests over the workers (each request may land on another worker)."""
    for dummy in range(WARM_REQUESTS):
        for url in urls:
            subprocess.run(['curl', '-fsS', '--max-time', '10', '-o', '/dev/null', url], check=False)


def restart_and_measure(unit, port, urls):
    # The playbook restarted the unit when the setting changed; restart once more so every row
    # measures the same thing: a fresh start, warmed up, settled.
    host_exec('systemctl', 'restart', unit)
    started = time.monotonic()
    to_health = wait_health(port, started)
    warm(urls)
    time.sleep(SETTLE_S)
    procs = json.loads(host_exec('python3', '-c', PROBE, unit))
    return {'processes': len(procs), 'pss_mib': sum(p['pss_kib'] for p in procs) / 1024.0,
            'rss_mib': sum(p['rss_kib'] for p in procs) / 1024.0, 'health_s': to_health,
            'largest_pss_mib': max(p['pss_kib'] for p in procs) / 1024.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--keep', action='store_true', help='leave the test host running')
    parser.add_argument('--json', help='write the results to this file')
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit('run as root (test hosts are systemd-nspawn machines)')

    log('booting %s' % HOST)
    up = json.loads(run([TESTHOST, 'up', '--net', NET, HOST + ':mlflow_servers,mlflow_gateways'],
                        capture_output=True).stdout)
    inventory = up['inventory']
    base = {
        'mlflow_gateway_endpoints': [{
            'name': 'chat', 'endpoint_type': 'llm/v1/chat',
            'model': {'provider': 'openai', 'name': 'gpt-4o-mini',
                      'config': {'openai_api_key': '$OPENAI_API_KEY'}}}],
        'mlflow_gateway_secret_env': {'OPENAI_API_KEY': 'not-used-by-this-benchmark'},
    }
    results = []
    try:
        server_port = int(run([TESTHOST, 'forward', '--net', NET, HOST, '5000'], capture_output=True).stdout.split()[-1])
        gateway_port = int(run([TESTHOST, 'forward', '--net', NET, HOST, '5001'], capture_output=True).stdout.split()[-1])
        server_urls = ['http://127.0.0.1:%d/api/2.0/mlflow/experiments/search?max_results=10' % server_port,
                       'http://127.0.0.1:%d/version' % server_port]
        gateway_urls = ['http://127.0.0.1:%d/api/2.0/endpoints/' % gateway_port,
                        'http://127.0.0.1:%d/health' % gateway_port]
        for job_execution in (False, True):
            for workers in (1, 2, 4):
                extra = dict(base, mlflow_server_workers=workers, mlflow_server_job_execution=job_execution,
                             mlflow_gateway_workers=1)
                log('server: workers=%d job_execution=%s: converging' % (workers, job_execution))
                started = time.monotonic()
                playbook(inventory, extra)
                log('  site.yml %.0f s' % (time.monotonic() - started))
                row = restart_and_measure('mlflow-server.service', server_port, server_urls)
                row.update(unit='mlflow-server', workers=workers, job_execution=job_execution)
                log('  %(processes)d processes, PSS %(pss_mib).0f MiB, RSS %(rss_mib).0f MiB, /health %(health_s).1f s' % row)
                results.append(row)
        for workers in (1, 2, 4):
            extra = dict(base, mlflow_server_workers=1, mlflow_server_job_execution=False, mlflow_gateway_workers=workers)
            log('gateway: workers=%d: converging' % workers)
            playbook(inventory, extra)
            row = restart_and_measure('mlflow-gateway.service', gateway_port, gateway_urls)
            row.update(unit='mlflow-gateway', workers=workers, job_execution=None)
            log('  %(processes)d processes, PSS %(pss_mib).0f MiB, RSS %(rss_mib).0f MiB, /health %(health_s).1f s' % row)
            results.append(row)
    finally:
        if not args.keep:
            subprocess.run([TESTHOST, 'down', '--net', NET], check=False, capture_output=True)

    head = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                          check=False).stdout.strip()
    print('MLflow %s, commit %s, %s, load %.2f' % (
        os.environ.get('MLFLOW_PROFILE_VERSION', 'of the role default'), head, time.strftime('%Y-%m-%d'), os.getloadavg()[0]))
    print()
    print('| unit | workers | job execution | processes | PSS MiB | RSS MiB | largest process PSS MiB | restart → /health s |')
    print('|---|---:|---|---:|---:|---:|---:|---:|')
    for row in results:
        print('| %s | %d | %s | %d | %.0f | %.0f | %.0f | %.1f |' % (
            row['unit'], row['workers'], '–' if row['job_execution'] is None else ('on' if row['job_execution'] else 'off'),
            row['processes'], row['pss_mib'], row['rss_mib'], row['largest_pss_mib'], row['health_s']))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
