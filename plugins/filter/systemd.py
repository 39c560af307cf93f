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


class FilterModule:
    """Filters for systemd files."""

    def filters(self):
        return {'systemd_env_quote': systemd_env_quote}
