# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd_env_quote renders values systemd's EnvironmentFile parser reads back unchanged.

The molecule scenario checks the same on a real host (the value in
/proc/PID/environ); here the quoting rules themselves are pinned down.
"""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.mlops.mlflow.plugins.filter.systemd import systemd_env_quote, systemd_hardening


def unquote(text):
    """systemd's rule for a double-quoted value: backslash escapes only " \\ ` $."""
    assert text[0] == '"' and text[-1] == '"'
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        if body[i] == '\\' and i + 1 < len(body) and body[i + 1] in '"\\`$':
            out.append(body[i + 1])
            i += 2
        else:
            assert body[i] != '"', 'unescaped quote in %r' % text
            out.append(body[i])
            i += 1
    return ''.join(out)


@pytest.mark.parametrize('value', [
    'plain', '', 'p@ss:w/rd%', 'with "quotes"', "single 'quote'", 'back\\slash', 'dollar $HOME ${X}',
    'tick `id`', 'hash # not a comment', 'semi;colon', 'sp ace', 'ünïcødé',
    'postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd@db:5432/mlflow',
])
def test_roundtrip(value):
    assert unquote(systemd_env_quote(value)) == value


def test_scalars():
    assert systemd_env_quote(True) == '"true"'
    assert systemd_env_quote(False) == '"false"'
    assert systemd_env_quote(5000) == '"5000"'
    assert systemd_env_quote(None) == '""'


@pytest.mark.parametrize('value', ['a\nb', 'a\rb', 'a\x00b'])
def test_line_breaks_are_refused(value):
    with pytest.raises(AnsibleFilterError, match='line break'):
        systemd_env_quote(value)


def test_hardening_block_is_one_option_per_line_with_the_writable_dirs():
    block = systemd_hardening(['/var/lib/mlflow', '/var/log/mlflow'])
    lines = block.split('\n')
    assert lines[0].startswith('# Hardening:')
    options = [line.split('=', 1)[0] for line in lines[1:]]
    assert 'ReadWritePaths=/var/lib/mlflow /var/log/mlflow' in lines
    assert options.count('ReadWritePaths') == 1
    for wanted in ('NoNewPrivileges', 'ProtectSystem', 'ProtectHome', 'PrivateTmp', 'CapabilityBoundingSet',
                   'SystemCallFilter', 'RestrictAddressFamilies', 'ProtectProc'):
        assert wanted in options
    assert 'ProtectSystem=strict' in lines
    assert not block.endswith('\n'), 'the template line break ends the block'


@pytest.mark.parametrize('dirs', [[], ['relative/dir'], ['/with space'], '/var/lib/mlflow', None])
def test_hardening_refuses_what_systemd_would_misread(dirs):
    with pytest.raises(AnsibleFilterError):
        systemd_hardening(dirs)
