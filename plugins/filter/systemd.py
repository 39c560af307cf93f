# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that render values for systemd configuration files."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# Inside double quotes, systemd's EnvironmentFile parser treats a backslash
# as an escape only before these characters (SHELL_NEED_ESCAPE).
_NEEDS_ESCAPE = frozenset('"\\`$')


def systemd_env_quote(value):
    """Quote VALUE for a systemd EnvironmentFile line (NAME=<result>)."""
    if isinstance(value, bool):
        text = 'true' if value else 'false'
    elif value is None:
        text = ''
    else:
        text = str(value)
    if '\n' in text or '\r' in text or '\x00' in text:
        raise AnsibleFilterError('systemd_env_quote: a value for an EnvironmentFile may not contain a line break or NUL byte')
    return '"' + ''.join('\\' + ch if ch in _NEEDS_ESCAPE else ch for ch in text) + '"'


# The sandbox every MLflow unit of this collection runs in (tracking server, gateway,
# maintenance services): one list, so the units cannot drift apart. What each option
# costs MLflow is described in the mlflow_server role README.
_HARDENING = (
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    None,  # ReadWritePaths= goes here
    'ProtectHome=yes',
    'PrivateTmp=yes',
    'PrivateDevices=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'ProtectProc=invisible',
    'RestrictSUIDSGID=yes',
    'RestrictNamespaces=yes',
    'RestrictRealtime=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6',
    'RemoveIPC=yes',
    'LockPersonality=yes',
    'CapabilityBoundingSet=',
    'AmbientCapabilities=',
    'SystemCallArchitectures=native',
    'SystemCallFilter=@system-service',
    'SystemCallFilter=~@privileged @resources',
    'SystemCallErrorNumber=EPERM',
)


def systemd_hardening(writable_dirs):
    """The [Service] hardening lines of the collection's units, with WRITABLE_DIRS as ReadWritePaths=."""
    if isinstance(writable_dirs, str) or not isinstance(writable_dirs, (list, tuple)):
        raise AnsibleFilterError('systemd_hardening expects a list of writable directories, got %s' % type(writable_dirs).__name__)
    dirs = [str(item) for item in writable_dirs]
    bad = [item for item in dirs if not item.startswith('/') or any(ch.isspace() for ch in item)]
    if not dirs or bad:
        raise AnsibleFilterError(
            'systemd_hardening: writable directories must be absolute paths without white space, got %r' % (bad or dirs))
    lines = ['# Hardening: see the mlflow_server role README for what each option costs MLflow.']
    for line in _HARDENING:
        lines.append('ReadWritePaths=' + ' '.join(dirs) if line is None else line)
    return '\n'.join(lines)


class FilterModule:
    """Filters for systemd files."""

    def filters(self):
        return {'systemd_env_quote': systemd_env_quote, 'systemd_hardening': systemd_hardening}
