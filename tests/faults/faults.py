# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The faults of tests/faults/run, against hosts that run/setup.yml converged.

Each fault: count runs and artifacts through the real MLflow client (over an SSH port
forward to the server's 127.0.0.1:5000), inject the fault, measure the recovery,
count again. Prints a results table and, with --docs, writes it into the results block
of docs/reliability.md. Exit status 1 when any fault failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

SERVER = 'op-flt-mlflow'
DB = 'op-flt-db'
SERVER_HEALTH = 'http://127.0.0.1:5000/health'
GATEWAY_HEALTH = 'http://127.0.0.1:5001/health'
BEGIN = '<!-- faults-results:begin (written by tests/faults/run) -->'
END = '<!-- faults-results:end -->'

# The client must not hide a failure behind its own retries (default: 7 with back-off).
os.environ.setdefault('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
os.environ.setdefault('MLFLOW_HTTP_REQUEST_TIMEOUT', '60')
os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')

# Wait inside the host until URL answers 200 and (for a unit) its MainPID differs from OLD; print seconds.
WAIT_SH = r'''
el() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }  # seconds since T0
over() { awk -v e="$(el "$1")" -v l="$2" 'BEGIN { exit !(e > l) }'; }        # T0 LIMIT: more than LIMIT s ago?
wait_ok() {  # URL UNIT OLD_PID T0 TIMEOUT
  local url=$1 unit=$2 old=$3 t0=$4 limit=$5 pid
  while :; do
    pid=$(systemctl show -p MainPID --value "$unit")
    if [[ $pid != 0 && $pid != "$old" ]] && curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; then
      echo "seconds=$(el "$t0")"; return 0
    fi
    if over "$t0" "$limit"; then echo "seconds=timeout"; return 1; fi
    sleep 0.25
  done
}
'''


class Suite:
    def __init__(self, args):
        self.args = args
        with open(args.inventory, encoding='utf-8') as handle:
            inv = yaml.safe_load(handle)
        self.hosts = inv['all']['hosts']
        self.forward = None
        self.port = None
        self.results = []
        self.client = None

    # ------------------------------------------------------------------ host access
    def sh(self, host, script, timeout=600, check=True):
        """Run a bash script inside a test host (nsenter through testhost exec); return stdout."""
        proc = subprocess.run([self.args.testhost, 'exec', '--net', self.args.net, host, '--', 'bash', '-c', script],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError('%s: script failed (rc %d): %s %s' % (host, proc.returncode, proc.stdout[-800:], proc.stderr[-800:]))
        return proc.stdout

    def kv(self, host, script, timeout=600, check=True):
        out = self.sh(host, script, timeout=timeout, check=check)
        return dict(line.split('=', 1) for line in out.splitlines() if re.match(r'^[a-z_0-9]+=', line))

    def host_running(self, host):
        out = subprocess.run([self.args.testhost, 'status', '--net', self.args.net, '--json'], capture_output=True,
                             text=True, check=True).stdout
        data = json.loads(out)
        nets = data if isinstance(data, list) else [data]
        for net in nets:
            for entry in net.get('hosts', []):
                if entry['name'] == host:
                    return bool(entry.get('running'))
        return False

    # ------------------------------------------------------------------ MLflow client
    def open_forward(self):
        self.close_forward()
        host = self.hosts[SERVER]
        # Always the same local port: MLflow caches the artifact repository's base URL.
        if self.port is None:
            with socket.socket() as sock:
                sock.bind(('127.0.0.1', 0))
                self.port = sock.getsockname()[1]
        cmd = ['ssh', '-N', '-i', host['ansible_ssh_private_key_file'], '-o', 'ExitOnForwardFailure=yes', '-o', 'BatchMode=yes',
               '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
               '-o', 'ServerAliveInterval=5', '-L', '127.0.0.1:%d:127.0.0.1:5000' % self.port, 'root@%s' % host['ansible_host']]
        self.forward = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # pylint: disable=consider-using-with
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.forward.poll() is not None:
                    raise RuntimeError('ssh port forward to %s did not come up' % SERVER) from None
                time.sleep(0.2)
        from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel
        self.client = MlflowClient(tracking_uri='http://127.0.0.1:%d' % self.port)

    def close_forward(self):
        if self.forward and self.forward.poll() is None:
            self.forward.terminate()
            self.forward.wait(10)
        self.forward = None

    def counts(self):
        """(runs, artifact files) over every experiment, deleted ones included."""
        from mlflow.entities import ViewType  # pylint: disable=import-outside-toplevel
        exps = self.client.search_experiments(view_type=ViewType.ALL)
        runs = []
        token = None
        while True:
            page = self.client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL,
                                           max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        files = 0
        for run in runs:
            stack = ['']
            while stack:
                path = stack.pop()
                for info in self.client.list_artifacts(run.info.run_id, path or None):
                    if info.is_dir:
                        stack.append(info.path)
                    else:
                        files += 1
        return len(runs), files

    def seed(self):
        exp = self.client.create_experiment('faults-%s' % uuid.uuid4().hex[:8])
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(3):
                run = self.client.create_run(exp)
                self.client.log_param(run.info.run_id, 'i', str(i))
                self.client.log_metric(run.info.run_id, 'loss', 1.0 / (i + 1))
                path = os.path.join(tmp, 'notes-%d.txt' % i)
                with open(path, 'w', encoding='utf-8') as handle:
                    handle.write('fault suite artifact %d\n' % i)
                self.client.log_artifact(run.info.run_id, path)
                self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    # ------------------------------------------------------------------ bookkeeping
    def record(self, fault, expectation, measured, before, after, ok, note=''):
        row = {'fault': fault, 'expectation': expectation, 'measured': measured, 'before': before, 'after': after,
               'ok': bool(ok) and before == after, 'note': note}
        self.results.append(row)
        print('%-4s %s: %s (runs/artifacts %s -> %s) %s' % ('PASS' if row['ok'] else 'FAIL', fault, measured, before, after, note),
              file=sys.stderr, flush=True)

    def run_fault(self, name, func):
        print('== fault: %s' % name, file=sys.stderr, flush=True)
        try:
            func()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # One broken fault must not hide the others' figures.
            self.results.append({'fault': name, 'expectation': '', 'measured': 'error', 'before': None, 'after': None,
                                 'ok': False, 'note': '%s: %s' % (type(exc).__name__, str(exc)[:300])})
            print('FAIL %s: %s' % (name, exc), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ faults
    def kill_unit(self, unit, url, label):
        before = self.counts()
        out = self.kv(SERVER, WAIT_SH + r'''
desc() { local c; for c in $(pgrep -P "$1"); do echo "$c"; desc "$c"; done; }
old=$(systemctl show -p MainPID --value %(unit)s)
kids=$(desc "$old")
t0=$(date +%%s.%%N); kill -9 "$old"
# systemd kills the rest of the control group when the main process dies. On the nspawn test
# hosts it cannot ("Failed to kill control group ... Input/output error"): do it for it, and say so.
sleep 3
left=; for p in $kids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
echo "orphans=$(wc -w <<< "$left")"
[[ -n $left ]] && kill -9 $left
wait_ok %(url)s %(unit)s "$old" "$t0" 300
echo "n_restarts=$(systemctl show -p NRestarts --value %(unit)s)"
echo "state=$(systemctl is-active %(unit)s)"
''' % {'unit': unit, 'url': url}, check=False)
        self.open_forward()
        after = self.counts()
        ok = out.get('seconds', 'timeout') != 'timeout' and out.get('state') == 'active'
        orphans = int(out.get('orphans') or 0)
        self.record('kill -9 %s' % label, 'systemd restarts it; /health OK', '%s s to /health OK (NRestarts %s)'
                    % (_secs(out.get('seconds')), out.get('n_restarts')), before, after, ok,
                    note=('%d orphaned child process(es) killed by the suite: the test host\'s systemd cannot kill '
                          'the control group' % orphans) if orphans else '')

    def fault_kill(self):
        self.kill_unit('mlflow-server', SERVER_HEALTH, 'mlflow-server main PID')
        self.kill_unit('mlflow-gateway', GATEWAY_HEALTH, 'mlflow-gateway main PID')

    def fault_reboot(self):
        before = self.counts()
        self.close_forward()
        t0 = time.monotonic()
        self.sh(SERVER, 'systemctl reboot', check=False)
        while self.host_running(SERVER):
            if time.monotonic() - t0 > 120:
                raise RuntimeError('%s did not go down within 120 s' % SERVER)
            time.sleep(0.5)
        down = time.monotonic() - t0
        # The same overlay boots again (testhost up keeps a stopped host's disk).
        subprocess.run([self.args.testhost, 'up', '--net', self.args.net, SERVER], capture_output=True, check=True, timeout=300)
        t_boot = time.monotonic()
        out = self.kv(SERVER, WAIT_SH + r'''
t0=$(date +%s.%N)
wait_ok http://127.0.0.1:5000/health mlflow-server 0 "$t0" 300 | sed 's/^/server_/'
wait_ok http://127.0.0.1:5001/health mlflow-gateway 0 "$t0" 300 | sed 's/^/gateway_/'
for u in mlflow-server mlflow-gateway; do echo "${u#mlflow-}_state=$(systemctl is-active $u)/$(systemctl is-enabled $u)"; done
''', check=False)
        total = time.monotonic() - t0
        self.open_forward()
        after = self.counts()
        ok = out.get('server_state') == 'active/enabled' and out.get('gateway_state') == 'active/enabled' \
            and 'timeout' not in (out.get('server_seconds'), out.get('gateway_seconds'))
        self.record('host reboot (systemctl reboot, boot again)', 'both units come back enabled and healthy',
                    'shutdown %.1f s; boot to SSH %.1f s; then /health OK: server %s s, gateway %s s; total %.0f s'
                    % (down, t_boot - t0 - down, _secs(out.get('server_seconds')), _secs(out.get('gateway_seconds')), total),
                    before, after, ok)

    def fault_db(self):
        """PostgreSQL down while the server (re)starts.

        A failed start of MLflow takes ~2 min: MLflow itself retries the connection 9 times with
        a 0.1 * (2^n - 1) s back-off (~101 s, mlflow.store.db.utils.MAX_RETRY_COUNT) before it exits.
        So the fault waits for the first automatic restart after such an exit and for longer than
        StartLimitBurst x RestartSec (the brief's criterion), then brings PostgreSQL back.
        """
        before = self.counts()
        burst = 5
        self.sh(DB, 'systemctl stop postgresql')
        out = self.kv(SERVER, WAIT_SH + r'''
restart_sec=$(systemctl show -p RestartUSec --value mlflow-server)
systemctl restart mlflow-server
t0=$(date +%%s.%%N); seen_failed=0; first_exit=
n0=$(systemctl show -p NRestarts --value mlflow-server)
while :; do
  n=$(( $(systemctl show -p NRestarts --value mlflow-server) - n0 )); st=$(systemctl show -p ActiveState --value mlflow-server)
  [[ $st == failed ]] && seen_failed=1
  [[ $n -ge 1 && -z $first_exit ]] && first_exit=$(el "$t0")
  if (( n >= 1 )) && over "$t0" %(min_down)d; then break; fi
  over "$t0" 400 && break
  sleep 1
done
echo "failed_starts=$n"; echo "down_seconds=$(el "$t0")"; echo "seen_failed=$seen_failed"; echo "first_exit=$first_exit"
echo "restart_sec=$restart_sec"
echo "limit=$(systemctl show -p StartLimitIntervalUSec --value mlflow-server)"
''' % {'min_down': burst * 10}, check=False)
        t_up = self.kv(DB, 'systemctl start postgresql; echo "t=$(date +%s.%N)"')['t']
        rec = self.kv(SERVER, WAIT_SH + 'wait_ok %s mlflow-server 0 %s 300\necho "state=$(systemctl is-active mlflow-server)"'
                      % (SERVER_HEALTH, t_up), check=False)
        self.open_forward()
        after = self.counts()
        ok = int(out.get('failed_starts', 0)) >= 1 and out.get('seen_failed') == '0' and rec.get('state') == 'active' \
            and rec.get('seconds') != 'timeout'
        self.record('PostgreSQL down while mlflow-server (re)starts',
                    'restarted after each failed start, never "failed"; up by itself once the DB is back (no reset-failed)',
                    'a failed start ended after %s s (MLflow\'s own connection retries); %s automatic restart(s) in %s s '
                    'with the DB down (RestartSec %s, StartLimitInterval %s, never "failed"); /health OK %s s after '
                    'PostgreSQL started'
                    % (_secs(out.get('first_exit')), out.get('failed_starts'), _secs(out.get('down_seconds')),
                       out.get('restart_sec'), out.get('limit'), _secs(rec.get('seconds'))), before, after, ok)

    def fault_disk(self):
        before = self.counts()
        run_id = self.seed_run
        # A tmpfs just big enough for what is there, filled up, mounted over the artifact store.
        self.sh(SERVER, r'''
set -e
systemctl stop mlflow-server
A=/var/lib/mlflow/artifacts
rm -rf /root/faults-stash && cp -a "$A" /root/faults-stash
kb=$(du -sk "$A" | cut -f1)
mount -t tmpfs -o size=$((kb + 1024))k,mode=0750,uid=$(id -u mlflow),gid=$(id -g mlflow) faults-full "$A"
cp -a /root/faults-stash/. "$A"/
dd if=/dev/zero of="$A/.filler" bs=64k 2>/dev/null || true
df -k "$A" | tail -1
systemctl start mlflow-server
''')
        wait = self.kv(SERVER, WAIT_SH + 'wait_ok %s mlflow-server 0 $(date +%%s.%%N) 300' % SERVER_HEALTH, check=False)
        self.open_forward()
        error = None
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'big.bin')
            with open(path, 'wb') as handle:
                handle.write(os.urandom(512 * 1024))
            t0 = time.monotonic()
            try:
                self.client.log_artifact(run_id, path, 'disk-full')
            except Exception as exc:  # pylint: disable=broad-exception-caught
                text = ' '.join(str(exc).split())
                error = text[:300]
            upload = time.monotonic() - t0
            # What the server answers, without the client's wrapping.
            import requests  # pylint: disable=import-outside-toplevel
            raw = requests.put('http://127.0.0.1:%d/api/2.0/mlflow-artifacts/artifacts/faults/raw.bin' % self.port,
                               data=b'x' * 512 * 1024, timeout=60)
            answer = '%d %s' % (raw.status_code, ' '.join(raw.text.split())[:160])
            reads_ok = True
            try:
                self.client.get_run(run_id)
                # Files only: the refused upload may leave an empty directory behind.
                listed = [a.path for a in self.client.list_artifacts(run_id) if not a.is_dir]
                local = self.client.download_artifacts(run_id, listed[0], tmp)
                reads_ok = os.path.getsize(local) > 0
            except Exception as exc:  # pylint: disable=broad-exception-caught
                reads_ok = False
                error = (error or '') + ' | read failed: %s' % exc
        health = self.kv(SERVER, 'curl -fsS -m 5 %s >/dev/null && echo health=ok || echo health=failed' % SERVER_HEALTH,
                         check=False).get('health')
        log_line = self.sh(SERVER, "journalctl -u mlflow-server --since '-5min' --no-pager -o cat | "
                                   "grep -m1 -oE '.{0,60}No space left on device' || true", check=False).strip()
        self.sh(SERVER, r'''
set -e
systemctl stop mlflow-server
umount /var/lib/mlflow/artifacts
rm -rf /root/faults-stash
systemctl start mlflow-server
''')
        self.kv(SERVER, WAIT_SH + 'wait_ok %s mlflow-server 0 $(date +%%s.%%N) 300' % SERVER_HEALTH, check=False)
        self.open_forward()
        after = self.counts()
        ok = error is not None and 'read failed' not in error and reads_ok and health == 'ok' and wait.get('seconds') != 'timeout'
        self.record('artifact store full (tmpfs at the artifacts destination, filled)',
                    'upload fails with a clear error; /health, get_run and downloads keep working',
                    'upload refused after %.1f s, client: "%s"; server answer to a plain PUT: "%s"; reads %s; /health %s; '
                    'server journal: %s'
                    % (upload, error, answer, 'OK' if reads_ok else 'FAILED', health, log_line or '-'), before, after, ok)

    # ------------------------------------------------------------------ main
    def run(self):
        started = time.monotonic()
        facts = self.kv(SERVER, r'''
echo "systemd=$(systemctl --version | head -1 | cut -d' ' -f2)"
echo "mlflow=$(/opt/mlflow/venv/bin/python -c 'import mlflow; print(mlflow.__version__)')"
exposure() { systemd-analyze security "$1" --no-pager 2>/dev/null | grep -oE 'exposure level for [^:]+: [0-9.]+' | grep -oE '[0-9.]+$'; }
echo "server_exposure=$(exposure mlflow-server.service)"
echo "gateway_exposure=$(exposure mlflow-gateway.service)"
''')
        ready = self.kv(SERVER, WAIT_SH + 't0=$(date +%%s.%%N)\nwait_ok %s mlflow-server 0 "$t0" 300 && wait_ok %s mlflow-gateway 0 "$t0" 300'
                        % (SERVER_HEALTH, GATEWAY_HEALTH), check=False)
        if ready.get('seconds') in (None, 'timeout'):
            raise SystemExit('%s: mlflow-server or mlflow-gateway is not healthy; nothing to test' % SERVER)
        self.open_forward()
        self.seed_run = self.seed()  # pylint: disable=attribute-defined-outside-init
        faults = {'kill': self.fault_kill, 'reboot': self.fault_reboot, 'db': self.fault_db, 'disk': self.fault_disk}
        for name in self.args.faults:
            self.run_fault(name, faults[name])
        self.close_forward()
        elapsed = time.monotonic() - started
        table = self.table(facts, elapsed)
        print(table)
        if self.args.docs:
            write_docs(self.args.docs, table)
        return 0 if self.results and all(r['ok'] for r in self.results) else 1

    def table(self, facts, elapsed):
        now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        total = time.time() - self.args.started
        lines = ['Last run: %s, `%s` (as root, 2-core controller shared with other test runs): '
                 'set-up %d s, faults %.0f s, total %.0f s. Test hosts: Debian 12, systemd %s, MLflow %s; '
                 '`systemd-analyze security` exposure: mlflow-server %s, mlflow-gateway %s.'
                 % (now, self.args.command, self.args.setup_seconds, elapsed, total, facts.get('systemd'), facts.get('mlflow'),
                    facts.get('server_exposure'), facts.get('gateway_exposure')),
                 '',
                 '| Fault | Expected | Measured | Runs, artifacts before → after | Result |',
                 '|---|---|---|---|---|']
        for r in self.results:
            counts = '%s → %s' % (_pair(r['before']), _pair(r['after']))
            measured = r['measured'] + ((' (%s)' % r['note']) if r['note'] else '')
            lines.append('| %s | %s | %s | %s | %s |' % (r['fault'], r['expectation'], measured.replace('|', '/'), counts,
                                                         'PASS' if r['ok'] else '**FAIL**'))
        return '\n'.join(lines)


def _secs(value):
    try:
        return '%.1f' % float(value)
    except (TypeError, ValueError):
        return str(value)


def _pair(value):
    return '-' if value is None else '%d, %d' % tuple(value)


def write_docs(path, table):
    with open(path, encoding='utf-8') as handle:
        text = handle.read()
    if BEGIN not in text or END not in text:
        raise SystemExit('%s has no results block (%s ... %s)' % (path, BEGIN, END))
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(head + BEGIN + '\n' + table + '\n' + END + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--net', required=True)
    parser.add_argument('--inventory', required=True)
    parser.add_argument('--testhost', required=True)
    parser.add_argument('--setup-seconds', type=int, default=0)
    parser.add_argument('--started', type=float, default=time.time())
    parser.add_argument('--command', default='tests/faults/run')
    parser.add_argument('--docs')
    parser.add_argument('--faults', nargs='+', default=['kill', 'reboot', 'db', 'disk'],
                        choices=['kill', 'reboot', 'db', 'disk'])
    return Suite(parser.parse_args()).run()


if __name__ == '__main__':
    sys.exit(main())
