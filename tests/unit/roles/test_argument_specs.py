# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every public role's defaults and meta/argument_specs.yml stay in step."""

from __future__ import annotations

import pathlib

import pytest
import yaml

ROLES_DIR = pathlib.Path(__file__).resolve().parents[3] / 'roles'
# 'common' is internal: its entry points (account, venv, wait_http, wheelhouse) are typed in its spec, it has no defaults.
INTERNAL_ROLES = {'common'}
PUBLIC_ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir() and p.name not in INTERNAL_ROLES)
TYPES = {'str': str, 'int': int, 'bool': bool, 'list': list, 'dict': dict, 'path': str}


def load(role, rel):
    with open(ROLES_DIR / role / rel, encoding='utf-8') as handle:
        return yaml.safe_load(handle) or {}


@pytest.mark.parametrize('role', PUBLIC_ROLES)
def test_defaults_and_spec_have_the_same_options(role):
    defaults = load(role, 'defaults/main.yml')
    options = load(role, 'meta/argument_specs.yml')['argument_specs']['main']['options']
    assert sorted(defaults) == sorted(options)


@pytest.mark.parametrize('role', PUBLIC_ROLES)
def test_every_option_is_prefixed_typed_described_and_defaulted_alike(role):
    defaults = load(role, 'defaults/main.yml')
    options = load(role, 'meta/argument_specs.yml')['argument_specs']['main']['options']
    for name, spec in options.items():
        assert name.startswith(role + '_'), name
        assert spec.get('type') in TYPES, name
        assert spec.get('description'), name
        if spec['type'] in ('list',):
            assert spec.get('elements'), name
        assert spec.get('default') == defaults[name], name
        assert isinstance(defaults[name], TYPES[spec['type']]), name
        if 'choices' in spec:
            assert defaults[name] in spec['choices'], name


def test_there_are_the_public_roles():
    assert PUBLIC_ROLES == ['mlflow_gateway', 'mlflow_proxy', 'mlflow_server']


def test_internal_role_refuses_direct_use_and_types_its_entry_points():
    with open(ROLES_DIR / 'common' / 'meta' / 'argument_specs.yml', encoding='utf-8') as handle:
        specs = yaml.safe_load(handle)['argument_specs']
    assert sorted(specs) == ['account', 'main', 'venv', 'wait_http', 'wheelhouse']
    for entry in ('account', 'venv', 'wait_http', 'wheelhouse'):
        assert (ROLES_DIR / 'common' / 'tasks' / (entry + '.yml')).exists()
        for name, spec in specs[entry]['options'].items():
            assert name.startswith('common_') and spec.get('type'), name
