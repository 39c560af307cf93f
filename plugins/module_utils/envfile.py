# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read systemd EnvironmentFile files, such as the ones the mlflow_server role writes.

The maintenance modules read the database URL and the object-store credentials from the
server's own environment files on the target, so those secrets never travel as module
arguments, never show in argv and never appear in Ansible output.

Only the standard library is used, so the code also runs outside Ansible.
"""

from __future__ import annotations

import os
import re

_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')

# Names whose values are treated as secrets (masked in every message and result).
SECRET_NAME = re.compile(r'(PASSWORD|PASSPHRASE|SECRET|TOKEN|_KEY$|_KEY_ID$|BACKEND_STORE_URI|REGISTRY_STORE_URI|_DSN$)',
                         re.IGNORECASE)


class EnvFileError(Exception):
    """A message that is safe to show: it names the file and line, never a value."""


def _unquote_double(text, path, lineno):
    # systemd: inside double quotes a backslash escapes only " \ ` $ (and a newline).
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '\\' and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in '"\\`$':
                out.append(nxt)
                i += 2
                continue
            out.append(ch)
            i += 1
            continue
        if ch == '"':
            rest = text[i + 1:].strip()
            if rest and not rest.startswith('#'):
                raise EnvFileError('%s line %d: text after the closing quote' % (path, lineno))
            return ''.join(out)
        out.append(ch)
        i += 1
    raise EnvFileError('%s line %d: unterminated double quote' % (path, lineno))


def parse_env_text(text, path='<text>'):
    """Parse NAME=value lines the way systemd's EnvironmentFile= does for the forms we write.

    Supported: comments (#, ;), blank lines, NAME=value (surrounding whitespace stripped),
    NAME="value" with systemd's escapes, NAME='value'. Multi-line values are not supported.
    """
    result = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('export '):
            line = line[len('export '):].lstrip()
        name, sep, value = line.partition('=')
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise EnvFileError('%s line %d: expected NAME=value' % (path, lineno))
        value = value.strip()
        if value.startswith('"'):
            value = _unquote_double(value[1:], path, lineno)
        elif value.startswith("'"):
            end = value.find("'", 1)
            if end < 0:
                raise EnvFileError('%s line %d: unterminated single quote' % (path, lineno))
            value = value[1:end]
        result[name] = value
    return result


def load_env_files(paths):
    """Merge the files in order (later files win). Missing files are an error."""
    env = {}
    for path in paths or ():
        try:
            with open(path, encoding='utf-8') as handle:
                text = handle.read()
        except OSError as exc:
            raise EnvFileError('Cannot read environment file %s: %s' % (path, exc.strerror or exc)) from exc
        env.update(parse_env_text(text, path))
    return env


def secret_values(env):
    """The values in env that must be masked: those of secret-looking names."""
    return {value for name, value in env.items() if value and SECRET_NAME.search(name)}


def apply_env(env):
    """Put env into os.environ (for libraries such as boto3 and MLflow that read it)."""
    for name, value in env.items():
        os.environ[name] = value
