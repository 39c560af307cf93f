#!/usr/bin/python
# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: crypto_kek
short_description: Check and rotate the KEK that protects the AI-gateway secrets in an MLflow tracking database
version_added: 0.1.0
description:
  - The AI gateway built into the MLflow tracking server (MLflow 3.9+) stores provider API keys in the
    tracking database (table C(secrets)) with envelope encryption. Each secret's data key is wrapped with a
    key-encryption key (KEK) derived from E(MLFLOW_CRYPTO_KEK_PASSPHRASE) and E(MLFLOW_CRYPTO_KEK_VERSION).
  - This module checks that the stored secrets can be unwrapped with O(passphrase) at O(version), and rotates
    secrets still wrapped with O(previous_passphrase) at version O(version) - 1 to the new KEK, in one
    transaction. This is what C(mlflow crypto rotate-kek) does, without putting a passphrase on a command line.
  - Idempotent - secrets already at O(version) are left alone; a second run reports no change.
  - Changing the passphrase without rotating makes every stored secret undecryptable; the module refuses a
    configuration under which stored secrets would not decrypt, before anything changes.
  - Stop every MLflow server that uses the database before a rotation (the M(mlops.mlflow.mlflow_server) role does).
  - Reads the database with plain SQLAlchemy; never opens MLflow's tracking store (which may migrate).
    Uses MLflow's C(mlflow.utils.crypto) for the key handling.
author:
  - mlops.mlflow contributors (@mlops-mlflow)
extends_documentation_fragment:
  - mlops.mlflow.attributes
  - mlops.mlflow.database
attributes:
  check_mode:
    support: full
    details:
      - Reports how many secrets would be rotated, without writing.
  diff_mode:
    support: full
    details:
      - Shows the number of secrets per KEK version before and after.
options:
  passphrase:
    description:
      - The KEK passphrase the server runs with (E(MLFLOW_CRYPTO_KEK_PASSPHRASE)). Never logged.
    type: str
    required: true
  version:
    description:
      - The KEK version the server runs with (E(MLFLOW_CRYPTO_KEK_VERSION)). Increase it by one together with a
        new passphrase to rotate.
    type: int
    default: 1
  previous_passphrase:
    description:
      - The passphrase of version O(version) - 1. Needed only while secrets at that version exist (during a rotation).
    type: str
'''

EXAMPLES = r'''
- name: Rotate the gateway secrets to a new passphrase (server stopped)
  mlops.mlflow.crypto_kek:
    db_url: "{{ mlflow_db_url }}"
    passphrase: "{{ vault_kek_passphrase_v2 }}"
    previous_passphrase: "{{ vault_kek_passphrase_v1 }}"
    version: 2
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python

- name: Only check that the stored secrets decrypt with the configured KEK
  mlops.mlflow.crypto_kek:
    db_url: "{{ mlflow_db_url }}"
    passphrase: "{{ vault_kek_passphrase }}"
  check_mode: true
  vars:
    ansible_python_interpreter: /opt/mlflow/venv/bin/python
'''

RETURN = r'''
secrets:
  description: Number of secrets in the database (0 when the table does not exist yet).
  returned: always
  type: int
  sample: 3
rotated:
  description: Number of secrets re-wrapped from version O(version) - 1 to O(version) (in check mode, that would be).
  returned: always
  type: int
  sample: 3
versions_before:
  description: Number of secrets per KEK version before the module ran.
  returned: always
  type: dict
  sample: {"1": 3}
versions_after:
  description: Number of secrets per KEK version after the module ran (predicted in check mode).
  returned: always
  type: dict
  sample: {"2": 3}
'''

import contextlib
import io
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow.plugins.module_utils.schema import (
    SchemaError,
    create_engine,
    db_error_message,
    run_database_module,
)

try:
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError
except ImportError:
    pass  # reported through HAS_SQLALCHEMY

CRYPTO_IMPORT_ERROR = None
try:
    from mlflow.utils.crypto import KEKManager, rotate_secret_encryption, unwrap_dek
except ImportError:
    HAS_CRYPTO = False
    CRYPTO_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTO = True

SECRETS_TABLE = 'secrets'


def kek(passphrase, version):
    """MLflow's KEK for a passphrase and version (KEKManager logs nothing secret)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return KEKManager(passphrase=passphrase, kek_version=version)


def unwraps(row, manager):
    try:
        unwrap_dek(row.wrapped_dek, manager.get_kek())
    except Exception:  # pylint: disable=broad-exception-caught  # any failure means "does not decrypt"
        return False
    return True


def load_secrets(conn):
    if not sqlalchemy.inspect(conn).has_table(SECRETS_TABLE):
        return None
    table = sqlalchemy.Table(SECRETS_TABLE, sqlalchemy.MetaData(), autoload_with=conn)
    rows = conn.execute(sqlalchemy.select(table.c.secret_id, table.c.secret_name, table.c.encrypted_value,
                                          table.c.wrapped_dek, table.c.kek_version)).all()
    return table, rows


def counts(rows, override=None):
    result = {}
    for row in rows:
        version = str(override if override is not None else row.kek_version)
        result[version] = result.get(version, 0) + 1
    return result


def run_module(module):
    params = module.params
    version = params['version']
    if version < 1:
        raise SchemaError('version must be 1 or more, got %d' % version)
    if not params['passphrase']:
        raise SchemaError('passphrase must not be empty (an empty passphrase means MLflow\'s shared development default)')
    engine = create_engine(params['db_url'], connect_timeout=params['connect_timeout'], read_only=module.check_mode)
    result = {'changed': False, 'secrets': 0, 'rotated': 0, 'versions_before': {}, 'versions_after': {}}
    try:
        with engine.connect() as conn:
            loaded = load_secrets(conn)
            if loaded is None:
                return result
            table, rows = loaded
            before = counts(rows)
            result.update(secrets=len(rows), versions_before=before, versions_after=before)
            newer = sorted(int(v) for v in before if int(v) > version)
            older = sorted(int(v) for v in before if int(v) < version - 1)
            if newer:
                raise SchemaError('%d secret(s) are wrapped with KEK version %s, newer than the configured version %d: '
                                  'the server would not decrypt them' % (sum(before[str(v)] for v in newer), newer, version))
            if older:
                raise SchemaError('%d secret(s) are wrapped with KEK version %s; only version %d (the previous one) can be '
                                  'rotated to %d. Rotate one version at a time.'
                                  % (sum(before[str(v)] for v in older), older, version - 1, version))
            current = kek(params['passphrase'], version)
            at_version = [r for r in rows if r.kek_version == version]
            if at_version and not unwraps(at_version[0], current):
                raise SchemaError('The stored secrets at KEK version %d do not decrypt with the given passphrase. Changing '
                                  'the passphrase needs a rotation: raise version by one and give the old passphrase as '
                                  'previous_passphrase.' % version)
            pending = [r for r in rows if r.kek_version == version - 1]
            if not pending:
                return result
            if not params['previous_passphrase']:
                raise SchemaError('%d secret(s) are wrapped with KEK version %d; give previous_passphrase to rotate them '
                                  'to version %d' % (len(pending), version - 1, version))
            previous = kek(params['previous_passphrase'], version - 1)
            if not unwraps(pending[0], previous):
                raise SchemaError('The secrets at KEK version %d do not decrypt with previous_passphrase; nothing was changed'
                                  % (version - 1))
            after = counts(rows, override=version)
            result.update(changed=True, rotated=len(pending), versions_after=after)
            if module._diff:
                result['diff'] = {'before': ''.join('kek_version %s: %d secrets\n' % kv for kv in sorted(before.items())),
                                  'after': ''.join('kek_version %s: %d secrets\n' % kv for kv in sorted(after.items())),
                                  'before_header': 'secrets by KEK version', 'after_header': 'secrets by KEK version'}
        if module.check_mode:
            return result
        # One transaction: every pending secret is re-wrapped, or none is.
        with engine.begin() as conn:
            pending = conn.execute(sqlalchemy.select(table.c.secret_id, table.c.encrypted_value, table.c.wrapped_dek)
                                   .where(table.c.kek_version == version - 1)).all()
            for row in pending:
                rotated = rotate_secret_encryption(row.encrypted_value, row.wrapped_dek, previous, current)
                conn.execute(table.update().where(table.c.secret_id == row.secret_id)
                             .values(wrapped_dek=rotated.wrapped_dek, kek_version=version))
        result['rotated'] = len(pending)
    except SQLAlchemyError as exc:
        raise SchemaError(db_error_message('Reading or rotating the gateway secrets', exc, params['db_url'])) from exc
    finally:
        engine.dispose()
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            db_url=dict(type='str', required=True, no_log=True),
            connect_timeout=dict(type='int', default=10),
            passphrase=dict(type='str', required=True, no_log=True),
            version=dict(type='int', default=1),
            previous_passphrase=dict(type='str', no_log=True),
        ),
        supports_check_mode=True,
    )
    run_database_module(module, run_module,
                        extra_libs=((HAS_CRYPTO, 'mlflow>=3.9 (mlflow.utils.crypto)', CRYPTO_IMPORT_ERROR),))


if __name__ == '__main__':
    main()
