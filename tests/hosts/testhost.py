# -*- coding: utf-8 -*-
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real systemd test hosts for mlops.mlflow: debootstrap base tree + overlayfs + systemd-nspawn.

Subcommands: build, up, forward, down, status, exec.  See tests/hosts/README.md.
"""

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

SUITE = 'bookworm'
MIRROR = os.environ.get('MLFLOW_TESTHOST_MIRROR', 'http://deb.debian.org/debian')
PACKAGES = [
    'systemd-sysv', 'dbus', 'openssh-server', 'python3', 'python3-venv', 'python3-apt',
    'python3-packaging', 'sudo', 'ca-certificates', 'iproute2', 'procps', 'curl', 'iputils-ping',
]
# Bump when the base customisation below changes: it is part of the cache key.
RECIPE_VERSION = '1'
EXTRA_CA_DIR = '/usr/local/share/ca-certificates'

CACHE_ROOT = os.environ.get('MLFLOW_TESTHOST_CACHE', '/var/cache/mlops-mlflow-testhosts')
STATE_ROOT = os.environ.get('MLFLOW_TESTHOST_STATE', '/run/mlops-mlflow-testhosts')
# Overlay upper/work dirs hold everything written inside hosts (pip installs...):
# keep them on disk (the cache file system), not on /run which may be a small tmpfs.
DISK_ROOT = os.path.join(CACHE_ROOT, 'hosts')

BRIDGE_PREFIX = 'mltb-'
NFT_PREFIX = 'mlops_mlflow_'
DEFAULT_SUBNET_BASE = (10, 213)
FIRST_HOST_OCTET = 10
NAME_RE = re.compile(r'^[a-z0-9][a-z0-9-]{0,62}$')
GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
SSH_OPTS = [
    '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR', '-o', 'IdentitiesOnly=yes', '-o', 'ControlMaster=no', '-o', 'ControlPath=none',
]
BOOT_TIMEOUT = int(os.environ.get('MLFLOW_TESTHOST_BOOT_TIMEOUT', '180'))
STOP_TIMEOUT = int(os.environ.get('MLFLOW_TESTHOST_STOP_TIMEOUT', '30'))


class TestHostError(Exception):
    """A failure reported to the user without a traceback."""


def log(msg):
    """Progress messages go to stderr; stdout is reserved for machine-readable output."""
    sys.stderr.write('testhost: %s\n' % msg)
    sys.stderr.flush()


def run(cmd, check=True, capture=False, input_text=None, timeout=None):
    """Run a command; raise TestHostError on failure when check is set."""
    try:
        proc = subprocess.run(cmd, check=False, text=True, input=input_text, timeout=timeout,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
    except FileNotFoundError as exc:
        raise TestHostError('command not found: %s (see tests/hosts/apt-packages.txt)' % cmd[0]) from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or '').strip() if capture else ''
        raise TestHostError('command failed (rc=%d): %s %s' % (proc.returncode, ' '.join(cmd), detail))
    return proc


@contextlib.contextmanager
def locked(path):
    """Exclusive advisory lock on a file (serialises concurrent builds / ups / downs)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a', encoding='utf-8') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_file(path, content, mode=0o644):
    """Write a text file, replacing symlinks (e.g. resolv.conf) instead of following them."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path):
        os.unlink(path)
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(content)
    os.chmod(path, mode)


def read_json(path, default=None):
    """Read a JSON file, returning default when it does not exist or is broken."""
    try:
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def write_json(path, data):
    """Atomically write a JSON file."""
    tmp = path + '.tmp'
    write_file(tmp, json.dumps(data, indent=2, sort_keys=True) + '\n', 0o600)
    os.replace(tmp, path)


def short_hash(text, length=8):
    """Stable short hex digest."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ---------------------------------------------------------------- base tree

def base_key():
    """Cache key: suite, mirror, package list, extra CA certificates and recipe version."""
    digest = hashlib.sha256()
    digest.update(('%s\n%s\n%s\n%s\n' % (SUITE, MIRROR, ','.join(sorted(PACKAGES)), RECIPE_VERSION)).encode())
    if os.path.isdir(EXTRA_CA_DIR):
        for root, _dirs, files in sorted(os.walk(EXTRA_CA_DIR)):
            for name in sorted(files):
                if name.endswith('.crt'):
                    with open(os.path.join(root, name), 'rb') as handle:
                        digest.update(name.encode() + handle.read())
    return digest.hexdigest()[:16]


def base_path():
    """Directory of the cached base tree for the current key."""
    return os.path.join(CACHE_ROOT, 'base-%s-%s' % (SUITE, base_key()))


def mountinfo():
    """List of (mount point, fs type, super options) from /proc/self/mountinfo."""
    result = []
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        for line in handle:
            left, right = line.split(' - ', 1)
            point = left.split()[4].replace('\\040', ' ')
            fields = right.split()
            result.append((point, fields[0], fields[2] if len(fields) > 2 else ''))
    return result


def base_in_use(path):
    """True when an overlay mount uses path as its lower dir."""
    return any(fstype == 'overlay' and 'lowerdir=%s' % path in opts for _point, fstype, opts in mountinfo())


def customise_base(root):
    """Turn a fresh debootstrap tree into a bootable, SSH-able test host base."""
    if os.path.isdir(EXTRA_CA_DIR):
        dest = os.path.join(root, EXTRA_CA_DIR.lstrip('/'))
        os.makedirs(dest, exist_ok=True)
        for name in sorted(os.listdir(EXTRA_CA_DIR)):
            if name.endswith('.crt'):
                shutil.copy2(os.path.join(EXTRA_CA_DIR, name), os.path.join(dest, name))
    run(['chroot', root, 'update-ca-certificates', '--fresh'], capture=True)
    run(['chroot', root, 'systemctl', 'enable', 'systemd-networkd.service', 'ssh.service'], capture=True)
    write_file(os.path.join(root, 'etc/apt/sources.list'),
               'deb %s %s main\ndeb %s %s-updates main\ndeb %s-security %s-security main\n'
               % (MIRROR, SUITE, MIRROR, SUITE, MIRROR.rstrip('/'), SUITE))
    # Per-host identity is written into each overlay before boot.
    write_file(os.path.join(root, 'etc/machine-id'), '')
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, 'var/lib/dbus/machine-id'))
    write_file(os.path.join(root, 'etc/ssh/sshd_config.d/10-testhost.conf'),
               'PermitRootLogin prohibit-password\nUseDNS no\n')
    # apt caches of the build are useless inside hosts.
    run(['chroot', root, 'apt-get', 'clean'], capture=True)
    write_file(os.path.join(root, 'etc/mlops-mlflow-testhost-base'), '%s\n' % base_key())


def ensure_base(force=False):
    """Build the base tree unless a complete cached copy exists; return its path."""
    path = base_path()
    marker = os.path.join(path, '.complete')
    if not force and os.path.exists(marker):
        return path
    with locked(os.path.join(CACHE_ROOT, '.build.lock')):
        if not force and os.path.exists(marker):
            return path
        if os.path.exists(path) and base_in_use(path):
            raise TestHostError('base %s is in use by running hosts; run "down --all" first' % path)
        tmp = path + '.building'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        started = time.monotonic()
        log('building base tree %s (debootstrap %s, takes ~2 minutes)' % (path, SUITE))
        proc = run(['debootstrap', '--variant=minbase', '--include=' + ','.join(PACKAGES), SUITE, tmp, MIRROR],
                   check=False, capture=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TestHostError('debootstrap failed: %s' % (proc.stdout or '')[-2000:])
        customise_base(tmp)
        write_file(os.path.join(tmp, '.complete'), '%s\n' % time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
        log('base tree built in %.0f s' % (time.monotonic() - started))
        # drop bases of older keys that nothing uses any more
        for name in os.listdir(CACHE_ROOT):
            other = os.path.join(CACHE_ROOT, name)
            if name.startswith('base-') and other != path and not base_in_use(other):
                shutil.rmtree(other, ignore_errors=True)
    return path


# ---------------------------------------------------------------- processes

def proc_cmdline(pid):
    """argv of a process, or None when it is gone."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            return [part.decode(errors='replace') for part in handle.read().split(b'\0') if part]
    except OSError:
        return None


def all_pids():
    """PIDs currently in /proc."""
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def pid_alive(pid):
    """True when the process exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid, encoding='utf-8') as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def children(pid):
    """Direct children of a process."""
    result = []
    for task in os.listdir('/proc/%d/task' % pid) if os.path.isdir('/proc/%d/task' % pid) else []:
        with contextlib.suppress(OSError):
            with open('/proc/%d/task/%s/children' % (pid, task), encoding='utf-8') as handle:
                result.extend(int(x) for x in handle.read().split())
    return result


def find_procs(predicate):
    """PIDs whose argv satisfies predicate."""
    found = []
    for pid in all_pids():
        argv = proc_cmdline(pid)
        if argv and predicate(argv):
            found.append(pid)
    return found


def nspawn_pids_under(directory):
    """systemd-nspawn processes whose -D is below directory."""
    prefix = directory.rstrip('/') + '/'

    def match(argv):
        if not os.path.basename(argv[0]).startswith('systemd-nspawn'):
            return False
        return any(arg.startswith(prefix) for arg in argv) or any(arg.startswith('--directory=' + prefix) for arg in argv)
    return find_procs(match)


def wait_gone(pids, timeout):
    """Wait until none of pids is alive; return the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill(pid, sig):
    """Send a signal, ignoring processes that are already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ---------------------------------------------------------------- networks

class Net:
    """Paths and names belonging to one test network."""

    def __init__(self, name):
        if not NAME_RE.match(name):
            raise TestHostError('bad network name %r (lowercase letters, digits, dashes)' % name)
        self.name = name
        self.state = os.path.join(STATE_ROOT, name)
        self.disk = os.path.join(DISK_ROOT, name)
        self.bridge = BRIDGE_PREFIX + short_hash(name, 10)
        self.table = NFT_PREFIX + short_hash(name, 10)
        self.key = os.path.join(self.state, 'id_ed25519')
        self.net_file = os.path.join(self.state, 'net.json')
        self.inventory = os.path.join(self.state, 'inventory.yml')
        self.lock = os.path.join(STATE_ROOT, '.%s.lock' % name)

    def load(self):
        """net.json content (hosts, subnet, forwards)."""
        return read_json(self.net_file, {}) or {}

    def save(self, data):
        """Persist net.json."""
        os.makedirs(self.state, exist_ok=True)
        write_json(self.net_file, data)

    def host_dir(self, host):
        """Overlay dirs of one host."""
        return os.path.join(self.disk, host)


def used_subnets(exclude_net=None):
    """Subnets routed on this machine plus those recorded by other test networks."""
    nets = []
    proc = run(['ip', '-j', 'route', 'show', 'table', 'all'], check=False, capture=True)
    with contextlib.suppress(ValueError):
        for route in json.loads(proc.stdout or '[]'):
            dst = route.get('dst', '')
            if dst and dst != 'default' and ':' not in dst:
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(dst if '/' in dst else dst + '/32', strict=False))
    if os.path.isdir(STATE_ROOT):
        for name in os.listdir(STATE_ROOT):
            if name == exclude_net:
                continue
            data = read_json(os.path.join(STATE_ROOT, name, 'net.json'), {}) or {}
            if data.get('subnet'):
                nets.append(ipaddress.ip_network(data['subnet']))
    return nets


def choose_subnet(net, wanted):
    """The requested subnet (checked for overlaps) or a free /24 derived from the net name."""
    used = used_subnets(exclude_net=net.name)
    if wanted:
        subnet = ipaddress.ip_network(wanted, strict=True)
        if subnet.prefixlen > 28:
            raise TestHostError('subnet %s is too small' % subnet)
        clash = [str(other) for other in used if other.overlaps(subnet)]
        if clash:
            raise TestHostError('subnet %s overlaps %s already in use on this machine' % (subnet, ', '.join(clash)))
        return subnet
    start = int(short_hash(net.name), 16) % 200
    for offset in range(250):
        third = (start + offset) % 250 + 1
        subnet = ipaddress.ip_network('%d.%d.%d.0/24' % (DEFAULT_SUBNET_BASE + (third,)))
        if not any(other.overlaps(subnet) for other in used):
            return subnet
    raise TestHostError('no free /24 left in 10.213.0.0/16; pass --subnet')


def nft_rules(net, subnet):
    """nftables table: masquerade outbound traffic of the subnet, allow forwarding via the bridge."""
    return ('table ip %(t)s {\n'
            '  chain postrouting {\n'
            '    type nat hook postrouting priority srcnat; policy accept;\n'
            '    ip saddr %(s)s ip daddr != %(s)s masquerade\n'
            '  }\n'
            '  chain forward {\n'
            '    type filter hook forward priority filter; policy accept;\n'
            '    iifname "%(b)s" accept\n'
            '    oifname "%(b)s" accept\n'
            '  }\n'
            '}\n') % {'t': net.table, 's': subnet, 'b': net.bridge}


def link_exists(name):
    """True when a network interface exists."""
    return os.path.exists('/sys/class/net/%s' % name)


def nft_table_exists(table):
    """True when the ip nft table exists."""
    return run(['nft', 'list', 'table', 'ip', table], check=False, capture=True).returncode == 0


def setup_network(net, subnet):
    """Bridge with .1, nft masquerade table, IPv4 forwarding."""
    gateway = '%s/%d' % (subnet.network_address + 1, subnet.prefixlen)
    if not link_exists(net.bridge):
        run(['ip', 'link', 'add', net.bridge, 'type', 'bridge'], capture=True)
    proc = run(['ip', '-j', 'addr', 'show', 'dev', net.bridge], capture=True)
    addrs = ['%s/%s' % (a['local'], a['prefixlen']) for link in json.loads(proc.stdout) for a in link.get('addr_info', [])]
    if gateway not in addrs:
        run(['ip', 'addr', 'add', gateway, 'dev', net.bridge], capture=True)
    run(['ip', 'link', 'set', net.bridge, 'up'], capture=True)
    if not nft_table_exists(net.table):
        run(['nft', '-f', '-'], input_text=nft_rules(net, subnet), capture=True)
    with open('/proc/sys/net/ipv4/ip_forward', 'w', encoding='utf-8') as handle:
        handle.write('1\n')


def machine_nameservers():
    """Resolvers hosts should use: MLFLOW_TESTHOST_DNS, else the machine's non-loopback ones."""
    if os.environ.get('MLFLOW_TESTHOST_DNS'):
        return os.environ['MLFLOW_TESTHOST_DNS'].replace(',', ' ').split()
    found = []
    for path in ('/etc/resolv.conf', '/run/systemd/resolve/resolv.conf'):
        with contextlib.suppress(OSError):
            with open(path, encoding='utf-8') as handle:
                for line in handle:
                    parts = line.split()
                    if len(parts) >= 2 and parts[0] == 'nameserver':
                        with contextlib.suppress(ValueError):
                            addr = ipaddress.ip_address(parts[1].split('%')[0])
                            if addr.version == 4 and not addr.is_loopback and parts[1] not in found:
                                found.append(parts[1])
        if found:
            return found
    raise TestHostError('no usable (non-loopback IPv4) resolver found; set MLFLOW_TESTHOST_DNS=IP')


# ---------------------------------------------------------------- hosts

def write_etc_hosts(net, data):
    """(Re)write /etc/hosts of every mounted host so all hosts of the net resolve each other."""
    lines = ['127.0.0.1 localhost', '::1 localhost ip6-localhost ip6-loopback', '']
    for name, host in sorted(data.get('hosts', {}).items()):
        lines.append('%s %s' % (host['address'], name))
    content = '\n'.join(lines) + '\n'
    for name in data.get('hosts', {}):
        merged = os.path.join(net.host_dir(name), 'merged')
        if os.path.ismount(merged):
            write_file(os.path.join(merged, 'etc/hosts'), content)


def prepare_overlay(net, base, name, host, subnet, dns):
    """Mount the overlay and write the per-host identity into it."""
    hdir = net.host_dir(name)
    merged = os.path.join(hdir, 'merged')
    for sub in ('upper', 'work', 'merged'):
        os.makedirs(os.path.join(hdir, sub), exist_ok=True)
    if not os.path.ismount(merged):
        run(['mount', '-t', 'overlay', 'overlay', '-o',
             'lowerdir=%s,upperdir=%s/upper,workdir=%s/work' % (base, hdir, hdir), merged], capture=True)
    write_file(os.path.join(merged, 'etc/hostname'), name + '\n')
    machine_id = os.path.join(merged, 'etc/machine-id')
    if not os.path.exists(machine_id) or os.path.getsize(machine_id) == 0:
        write_file(machine_id, uuid.uuid4().hex + '\n', 0o444)
    write_file(os.path.join(merged, 'etc/systemd/network/10-host0.network'),
               '[Match]\nName=host0\n\n[Network]\nAddress=%s/%d\nGateway=%s\n%sLinkLocalAddressing=no\nIPv6AcceptRA=no\n'
               % (host['address'], subnet.prefixlen, subnet.network_address + 1, ''.join('DNS=%s\n' % d for d in dns)))
    write_file(os.path.join(merged, 'etc/resolv.conf'), ''.join('nameserver %s\n' % d for d in dns))
    ssh_dir = os.path.join(merged, 'root/.ssh')
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    with open(net.key + '.pub', encoding='utf-8') as handle:
        write_file(os.path.join(ssh_dir, 'authorized_keys'), handle.read(), 0o600)
    return merged


def container_pid1(nspawn_pid):
    """PID (in our namespace) of the container's init: the child of the nspawn process."""
    kids = children(nspawn_pid) if pid_alive(nspawn_pid) else []
    return kids[0] if kids else None


def host_running(net, name, host):
    """nspawn PID when the host's nspawn is alive and really ours, else None."""
    pid = host.get('nspawn_pid')
    if not pid or not pid_alive(pid):
        return None
    argv = proc_cmdline(pid) or []
    if os.path.join(net.host_dir(name), 'merged') not in argv:
        return None
    return pid


def start_host(net, name, merged):
    """Start systemd-nspawn in its own session; return its PID."""
    console = open(os.path.join(net.state, 'hosts', name + '.console.log'), 'ab')  # pylint: disable=consider-using-with
    cmd = ['systemd-nspawn', '--keep-unit', '--register=no', '--boot', '--private-network',
           '--network-bridge=' + net.bridge, '-D', merged, '-M', name, '--hostname=' + name,
           '--resolv-conf=off', '--timezone=off', '--console=read-only']
    env = {'PATH': GUEST_PATH, 'LANG': 'C.UTF-8'}
    with console:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console,  # pylint: disable=consider-using-with
                                env=env, start_new_session=True)
    return proc.pid


def ssh_cmd(net, address, *remote):
    """ssh argv for a host."""
    return ['ssh', '-i', net.key] + SSH_OPTS + ['-o', 'ConnectTimeout=3', 'root@%s' % address] + list(remote)


def wait_host(net, name, address, nspawn_pid, deadline):
    """Wait for SSH, then for systemctl is-system-running --wait; return the system state."""
    while True:
        if nspawn_pid and not pid_alive(nspawn_pid):
            raise TestHostError('%s: systemd-nspawn exited; see %s' % (name, os.path.join(net.state, 'hosts', name + '.console.log')))
        proc = run(ssh_cmd(net, address, 'true'), check=False, capture=True, timeout=15)
        if proc.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise TestHostError('%s (%s): no SSH after %d s: %s' % (name, address, BOOT_TIMEOUT, proc.stderr.strip()))
        time.sleep(0.3)
    remaining = max(5, int(deadline - time.monotonic()))
    proc = run(ssh_cmd(net, address, 'timeout', str(remaining), 'systemctl', 'is-system-running', '--wait'),
               check=False, capture=True, timeout=remaining + 15)
    state = (proc.stdout or '').strip() or 'unknown'
    if state not in ('running', 'degraded'):
        raise TestHostError('%s: systemctl is-system-running says %r' % (name, state))
    if state == 'degraded':
        failed = run(ssh_cmd(net, address, 'systemctl', '--failed', '--no-legend', '--plain'), check=False, capture=True, timeout=30)
        log('%s: degraded, failed units: %s' % (name, ' '.join(line.split()[0] for line in failed.stdout.splitlines() if line.strip())))
    return state


def inventory_yaml(net, data):
    """Ansible YAML inventory (written by hand: stdlib only)."""
    common = '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR'
    lines = ['# generated by tests/hosts/testhost for network %s' % net.name, 'all:', '  hosts:']
    groups = {}
    for name, host in sorted(data['hosts'].items()):
        lines += ['    %s:' % name,
                  '      ansible_host: %s' % host['address'],
                  '      ansible_user: root',
                  '      ansible_port: 22',
                  '      ansible_ssh_private_key_file: %s' % json.dumps(net.key),
                  '      ansible_ssh_common_args: %s' % json.dumps(common),
                  '      ansible_python_interpreter: /usr/bin/python3']
        for group in host.get('groups', []):
            groups.setdefault(group, []).append(name)
    if groups:
        lines.append('  children:')
        for group, members in sorted(groups.items()):
            lines += ['    %s:' % group, '      hosts:'] + ['        %s: {}' % member for member in members]
    return '\n'.join(lines) + '\n'


def describe(net, data):
    """JSON-able description of a network (also what `up` prints)."""
    hosts = []
    for name, host in sorted(data.get('hosts', {}).items()):
        hosts.append({'name': name, 'address': host['address'], 'user': 'root', 'port': 22,
                      'identity_file': net.key, 'groups': host.get('groups', []),
                      'running': bool(host_running(net, name, host)), 'system_state': host.get('system_state')})
    return {'net': net.name, 'subnet': data.get('subnet'), 'bridge': net.bridge, 'state_dir': net.state,
            'inventory': net.inventory, 'ssh_key': net.key, 'hosts': hosts}


def parse_host_spec(spec):
    """NAME or NAME:GROUP[,GROUP...]"""
    name, _sep, groups = spec.partition(':')
    if not NAME_RE.match(name):
        raise TestHostError('bad host name %r (lowercase letters, digits, dashes)' % name)
    group_list = [g for g in groups.split(',') if g]
    for group in group_list:
        if not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', group):
            raise TestHostError('bad group name %r' % group)
    return name, group_list


def other_net_hosts(net_name):
    """Host names in use by other networks (machine names must be unique on the machine)."""
    names = {}
    if os.path.isdir(STATE_ROOT):
        for other in os.listdir(STATE_ROOT):
            if other != net_name and not other.startswith('.'):
                data = read_json(os.path.join(STATE_ROOT, other, 'net.json'), {}) or {}
                for host in data.get('hosts', {}):
                    names[host] = other
    return names


def cmd_up(args):
    """Create the network and boot the hosts."""
    net = Net(args.net)
    specs = [parse_host_spec(spec) for spec in args.hosts]
    taken = other_net_hosts(net.name)
    for name, _groups in specs:
        if name in taken:
            raise TestHostError('host %s already exists in network %s' % (name, taken[name]))
    base = ensure_base()
    started = time.monotonic()
    with locked(net.lock):
        os.makedirs(os.path.join(net.state, 'hosts'), exist_ok=True)
        data = net.load()
        if data.get('subnet') and args.subnet and ipaddress.ip_network(args.subnet) != ipaddress.ip_network(data['subnet']):
            raise TestHostError('network %s already uses subnet %s' % (net.name, data['subnet']))
        subnet = ipaddress.ip_network(data['subnet']) if data.get('subnet') else choose_subnet(net, args.subnet)
        data.update({'net': net.name, 'subnet': str(subnet), 'bridge': net.bridge, 'table': net.table, 'base': base})
        data.setdefault('hosts', {})
        data.setdefault('forwards', {})
        net.save(data)  # record intent first: `down` can clean a half-done `up`
        if not os.path.exists(net.key):
            run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'testhost-%s' % net.name, '-f', net.key], capture=True)
        setup_network(net, subnet)
        used = {ipaddress.ip_address(h['address']) for h in data['hosts'].values()}
        for name, groups in specs:
            host = data['hosts'].setdefault(name, {})
            if groups:
                host['groups'] = groups
            host.setdefault('groups', [])
            if 'address' not in host:
                candidates = (ipaddress.ip_address(int(subnet.network_address) + i) for i in range(FIRST_HOST_OCTET, subnet.num_addresses - 1))
                host['address'] = str(next(a for a in candidates if a not in used))
                used.add(ipaddress.ip_address(host['address']))
        net.save(data)
        dns = machine_nameservers()
        to_boot = []
        for name, _groups in specs:
            host = data['hosts'][name]
            if host_running(net, name, host):
                log('%s: already running (%s)' % (name, host['address']))
                continue
            merged = prepare_overlay(net, base, name, host, subnet, dns)
            to_boot.append((name, merged))
        write_etc_hosts(net, data)
        for name, merged in to_boot:
            data['hosts'][name]['nspawn_pid'] = start_host(net, name, merged)
            data['hosts'][name].pop('system_state', None)
            net.save(data)
        deadline = time.monotonic() + BOOT_TIMEOUT
        errors = []

        def waiter(name):
            host = data['hosts'][name]
            try:
                host['system_state'] = wait_host(net, name, host['address'], host.get('nspawn_pid'), deadline)
                log('%s: up at %s, system %s (%.1f s)' % (name, host['address'], host['system_state'], time.monotonic() - started))
            except (TestHostError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        threads = [threading.Thread(target=waiter, args=(name,), daemon=True) for name, _groups in specs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        net.save(data)
        write_file(net.inventory, inventory_yaml(net, data))
        if errors:
            raise TestHostError('; '.join(errors) + ' (run "testhost down --net %s" to clean up)' % net.name)
    print(json.dumps(describe(net, data), indent=2))
    return 0


# ---------------------------------------------------------------- forward

def free_port():
    """An unused local TCP port."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def forward_pids(net, spec=None):
    """ssh forward processes of a network (found by its key path, optionally one -L spec)."""
    def match(argv):
        return os.path.basename(argv[0]) == 'ssh' and net.key in argv and '-L' in argv and (spec is None or spec in argv)
    return find_procs(match)


def cmd_forward(args):
    """Background ssh -L 127.0.0.1:LOCAL -> HOST:127.0.0.1:REMOTE."""
    net = Net(args.net)
    with locked(net.lock):
        data = net.load()
        host = data.get('hosts', {}).get(args.host)
        if not host or not host_running(net, args.host, host):
            raise TestHostError('host %s is not running in network %s' % (args.host, net.name))
        key = '%s:%d' % (args.host, args.remote_port)
        old = data.get('forwards', {}).get(key)
        if old and (args.local_port in (None, old['local_port'])):
            if forward_pids(net, old['spec']):
                print(old['local_port'])
                return 0
        if old:
            for pid in forward_pids(net, old['spec']):
                kill(pid, signal.SIGTERM)
        local = args.local_port or free_port()
        spec = '127.0.0.1:%d:127.0.0.1:%d' % (local, args.remote_port)
        cmd = ['ssh', '-f', '-N', '-L', spec, '-i', net.key] + SSH_OPTS + [
            '-o', 'ExitOnForwardFailure=yes', '-o', 'ServerAliveInterval=15', '-o', 'ConnectTimeout=10', 'root@%s' % host['address']]
        run(cmd, capture=True, timeout=60)
        pids = forward_pids(net, spec)
        data.setdefault('forwards', {})[key] = {'local_port': local, 'spec': spec, 'pid': pids[0] if pids else None}
        net.save(data)
        log('forward http://127.0.0.1:%d -> %s:127.0.0.1:%d (pid %s)' % (local, args.host, args.remote_port, pids))
    print(local)
    return 0


# ---------------------------------------------------------------- down

def stop_nspawn(pids):
    """Power off containers cleanly (SIGRTMIN+4 to their init), then kill what is left."""
    for pid in pids:
        init = container_pid1(pid)
        if init:
            kill(init, signal.SIGRTMIN + 4)
        else:
            kill(pid, signal.SIGTERM)
    survivors = wait_gone(pids, STOP_TIMEOUT)
    for pid in survivors:
        log('nspawn %d did not stop in %d s, killing it' % (pid, STOP_TIMEOUT))
        init = container_pid1(pid)
        if init:
            kill(init, signal.SIGKILL)
        kill(pid, signal.SIGKILL)
    return wait_gone(survivors, 10)


def mounts_under(directory):
    """Mount points at or below directory, deepest first."""
    prefix = directory.rstrip('/') + '/'
    points = [point for point, _fstype, _opts in mountinfo() if point.startswith(prefix) or point == directory]
    return sorted(set(points), key=len, reverse=True)


def unmount_all(directory, errors):
    """Unmount everything below directory (lazily if busy)."""
    for point in mounts_under(directory):
        if run(['umount', point], check=False, capture=True).returncode != 0:
            proc = run(['umount', '-l', point], check=False, capture=True)
            if proc.returncode != 0:
                errors.append('cannot unmount %s: %s' % (point, proc.stderr.strip()))
    left = mounts_under(directory)
    if left:
        errors.append('still mounted: %s' % ', '.join(left))


def remove_tree(directory, errors):
    """rm -rf, but never across a mount point."""
    if not os.path.lexists(directory):
        return
    if mounts_under(directory):
        errors.append('not removing %s: mounts remain below it' % directory)
        return
    shutil.rmtree(directory, ignore_errors=True)
    if os.path.lexists(directory):
        errors.append('cannot remove %s' % directory)


def remove_link(name, errors):
    """Delete a network interface if it exists."""
    if link_exists(name):
        proc = run(['ip', 'link', 'del', name], check=False, capture=True)
        if proc.returncode != 0 or link_exists(name):
            errors.append('cannot remove bridge %s: %s' % (name, proc.stderr.strip()))


def remove_table(table, errors):
    """Delete an nft table if it exists."""
    if nft_table_exists(table):
        proc = run(['nft', 'delete', 'table', 'ip', table], check=False, capture=True)
        if proc.returncode != 0:
            errors.append('cannot remove nft table %s: %s' % (table, proc.stderr.strip()))


def down_net(name):
    """Remove everything of one network, state or no state; return error messages."""
    net = Net(name)
    errors = []
    with locked(net.lock):
        for pid in forward_pids(net):
            kill(pid, signal.SIGTERM)
        pids = set(nspawn_pids_under(net.disk))
        for host_name, host in (net.load().get('hosts') or {}).items():
            pid = host_running(net, host_name, host)
            if pid:
                pids.add(pid)
        if pids:
            log('%s: powering off %d host(s)' % (name, len(pids)))
        left = stop_nspawn(sorted(pids))
        if left:
            errors.append('processes survive SIGKILL: %s' % left)
        left = wait_gone(forward_pids(net), 5)
        for pid in left:
            kill(pid, signal.SIGKILL)
        unmount_all(net.disk, errors)
        remove_link(net.bridge, errors)
        remove_table(net.table, errors)
        remove_tree(net.disk, errors)
        if not errors:
            remove_tree(net.state, errors)
    if not errors:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(net.lock)
    return errors


def known_nets():
    """Network names with state or disk dirs."""
    names = set()
    for root in (STATE_ROOT, DISK_ROOT):
        if os.path.isdir(root):
            names.update(n for n in os.listdir(root) if NAME_RE.match(n))
    return sorted(names)


def cmd_down(args):
    """Tear down one network or all of them."""
    started = time.monotonic()
    names = known_nets() if args.all else [args.net]
    errors = []
    for name in names:
        errors += down_net(name)
    if args.all:
        # leftovers nobody has state for any more
        left = stop_nspawn(nspawn_pids_under(DISK_ROOT))
        if left:
            errors.append('processes survive SIGKILL: %s' % left)
        unmount_all(DISK_ROOT, errors)
        for link in os.listdir('/sys/class/net'):
            if link.startswith(BRIDGE_PREFIX):
                remove_link(link, errors)
        proc = run(['nft', '-j', 'list', 'tables'], check=False, capture=True)
        with contextlib.suppress(ValueError):
            for item in json.loads(proc.stdout or '{}').get('nftables', []):
                table = item.get('table', {})
                if table.get('family') == 'ip' and table.get('name', '').startswith(NFT_PREFIX):
                    remove_table(table['name'], errors)
    if errors:
        for error in errors:
            log('ERROR: ' + error)
        return 1
    log('down: clean (%.1f s)' % (time.monotonic() - started))
    return 0


# ---------------------------------------------------------------- status / exec

def cmd_status(args):
    """Show networks and hosts."""
    names = [args.net] if args.net else known_nets()
    result = []
    for name in names:
        net = Net(name)
        result.append(describe(net, net.load()))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result:
        print('no test networks')
    for item in result:
        print('net %s subnet %s bridge %s%s' % (item['net'], item['subnet'], item['bridge'],
                                                '' if link_exists(item['bridge']) else ' (missing)'))
        for host in item['hosts']:
            print('  %-24s %-15s %-8s %s' % (host['name'], host['address'], 'running' if host['running'] else 'stopped',
                                             host['system_state'] or ''))
        for key, fwd in sorted(Net(item['net']).load().get('forwards', {}).items()):
            alive = bool(forward_pids(Net(item['net']), fwd['spec']))
            print('  forward 127.0.0.1:%d -> %s %s' % (fwd['local_port'], key, 'alive' if alive else 'dead'))
    return 0


def cmd_exec(args):
    """Run a command inside a host via nsenter (clean environment)."""
    net = Net(args.net)
    host = net.load().get('hosts', {}).get(args.host)
    pid = host_running(net, args.host, host) if host else None
    init = container_pid1(pid) if pid else None
    if not init:
        raise TestHostError('host %s is not running in network %s' % (args.host, net.name))
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    env = ['env', '-i', 'PATH=' + GUEST_PATH, 'HOME=/root', 'LANG=C.UTF-8', 'TERM=' + os.environ.get('TERM', 'dumb')]
    argv = ['nsenter', '-t', str(init), '-a', '--'] + env + (command or ['/bin/bash', '-l'])
    return subprocess.call(argv)


def cmd_build(args):
    """Build or reuse the cached base tree."""
    print(ensure_base(force=args.force))
    return 0


def main(argv=None):
    """Entry point."""
    parser = argparse.ArgumentParser(prog='testhost', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='cmd', required=True)
    build = sub.add_parser('build', help='build (or reuse) the cached base tree, print its path')
    build.add_argument('--force', action='store_true', help='rebuild even when cached')
    build.set_defaults(func=cmd_build)
    up = sub.add_parser('up', help='boot hosts (NAME or NAME:group1,group2) on network NET')
    up.add_argument('--net', required=True)
    up.add_argument('--subnet', help='IPv4 subnet of NET (default: a free 10.213.X.0/24 derived from NET)')
    up.add_argument('hosts', nargs='+', metavar='HOST')
    up.set_defaults(func=cmd_up)
    fwd = sub.add_parser('forward', help='ssh-forward 127.0.0.1:LOCAL to HOST:127.0.0.1:REMOTE_PORT; prints LOCAL')
    fwd.add_argument('--net', required=True)
    fwd.add_argument('--local-port', type=int)
    fwd.add_argument('host')
    fwd.add_argument('remote_port', type=int)
    fwd.set_defaults(func=cmd_forward)
    down = sub.add_parser('down', help='power off and remove everything of NET (or --all)')
    group = down.add_mutually_exclusive_group(required=True)
    group.add_argument('--net')
    group.add_argument('--all', action='store_true')
    down.set_defaults(func=cmd_down)
    status = sub.add_parser('status', help='show test networks and hosts')
    status.add_argument('--net')
    status.add_argument('--json', action='store_true')
    status.set_defaults(func=cmd_status)
    exe = sub.add_parser('exec', help='run CMD inside HOST via nsenter (default: a shell)')
    exe.add_argument('--net', required=True)
    exe.add_argument('host')
    exe.add_argument('command', nargs=argparse.REMAINDER)
    exe.set_defaults(func=cmd_exec)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        log('must run as root')
        return 2
    try:
        return args.func(args)
    except TestHostError as exc:
        log('ERROR: %s' % exc)
        return 1
    except KeyboardInterrupt:
        log('interrupted; run "testhost down" to clean up')
        return 130


if __name__ == '__main__':
    sys.exit(main())
