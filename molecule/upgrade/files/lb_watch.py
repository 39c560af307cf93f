# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Watch nginx on the load balancer during the upgrade, then tell where every request went.

Runs on the proxy host (standard library only) until --stop-file exists. Every --interval
seconds it samples the upstream files (which tracking server is marked "down") and the PIDs
of nginx's active worker processes. A worker starts with the configuration of the reload
that made it, so the set of drained servers at the first sample that shows a worker is the
set that worker's configuration has down (the upgrade changes a file seconds before its
reload, and only once per drain or undrain).

Then it reads the access log written with the format
  $msec|$pid|$status|$upstream_addr|$upstream_status|$request_time|$request_method $uri
and prints one JSON line: requests and statuses, requests nginx had to retry on another
server (a failed attempt), and per tracking server the requests served by workers that had
it drained and how many of those went to it anyway (must be 0).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import time

SERVER = re.compile(r'^[ \t]*server[ \t]+([^ \t;]+)[^;#\n]*?([ \t]+down)?[ \t]*;', re.M)


def upstreams(directory):
    result = {}
    for path in sorted(glob.glob(os.path.join(directory, '*.conf'))):
        with open(path, encoding='utf-8') as handle:
            match = SERVER.search(handle.read())
        if match:
            result[os.path.basename(path)[:-len('.conf')]] = (match.group(1), bool(match.group(2)))
    return result


def workers():
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                title = handle.read().replace(b'\0', b' ').strip()
        except OSError:
            continue
        if title == b'nginx: worker process':
            pids.append(int(entry))
    return sorted(pids)


def watch(args):
    samples = []
    last = None
    while not os.path.exists(args.stop_file):
        state = upstreams(args.dir)
        current = (sorted(name for name, (dummy, down) in state.items() if down), workers())
        if current != last:
            samples.append({'time': time.time(), 'down': current[0], 'workers': current[1],
                            'address': {name: address for name, (address, dummy) in state.items()}})
            last = current
        time.sleep(args.interval)
    return samples


def analyze(samples, log_path):
    config = {}  # worker pid -> servers down in its configuration
    born = {}
    for index, sample in enumerate(samples):
        for pid in sample['workers']:
            if pid not in config:
                config[pid] = set(sample['down'])
                born[pid] = index
    address = samples[-1]['address']
    drained_ever = {name for sample in samples for name in sample['down']}
    last_drain = max((i for i, s in enumerate(samples) if s['down']), default=-1)
    statuses = collections.Counter()
    served = collections.Counter()
    after_undrain = collections.Counter()
    drained = {name: {'requests_while_drained': 0, 'sent_to_it_anyway': 0} for name in address}
    retried, unknown, requests = [], 0, 0
    start = samples[0]['time']
    with open(log_path, encoding='utf-8', errors='replace') as handle:
        for line in handle:
            parts = line.rstrip('\n').split('|', 6)
            if len(parts) != 7 or float(parts[0]) < start:
                continue
            msec, pid, status, upstream_addr, upstream_status = parts[0], int(parts[1]), parts[2], parts[3], parts[4]
            requests += 1
            statuses[status] += 1
            tried = [a.strip() for a in upstream_addr.split(',') if a.strip() not in ('', '-')]
            if len(tried) > 1 or status.startswith('5'):
                retried.append('%s %s %s %s' % (msec, status, upstream_addr, upstream_status))
            for name, addr in address.items():
                if tried and tried[-1] == addr:
                    served[name] += 1
                    if pid in born and born[pid] > last_drain:
                        after_undrain[name] += 1
            if pid not in config:
                unknown += 1
                continue
            for name in config[pid]:
                if name in drained:
                    drained[name]['requests_while_drained'] += 1
                    if address.get(name) in tried:
                        drained[name]['sent_to_it_anyway'] += 1
    return {
        'samples': len(samples), 'seconds': round(samples[-1]['time'] - start, 1), 'requests': requests,
        'statuses': dict(statuses), 'retried_or_5xx': len(retried), 'retried_samples': retried[:10],
        'served': dict(served), 'served_after_last_undrain': dict(after_undrain), 'drained_ever': sorted(drained_ever),
        'drained': drained, 'unknown_worker': unknown, 'final_down': samples[-1]['down'],
        'reloads': len({born[pid] for pid in born}) - 1,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dir', default='/etc/nginx/mlflow-upstreams.d')
    parser.add_argument('--log', required=True)
    parser.add_argument('--stop-file', required=True)
    parser.add_argument('--interval', type=float, default=0.1)
    args = parser.parse_args()
    samples = watch(args)
    print(json.dumps(analyze(samples, args.log), sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
