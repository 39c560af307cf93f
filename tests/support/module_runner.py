"""Run a module's main() in-process and return the JSON it printed.

main() runs under ansible.module_utils.testing.patch_module_args; the real output
(after AnsibleModule's no_log masking) is parsed from stdout. Shared by the unit
tests of db_schema and crypto_kek.
"""

from __future__ import annotations

import pytest
from ansible.module_utils.testing import patch_module_args


def run_main(capsys, main, db_url, check=False, diff=False, **params):
    args = dict(params, db_url=db_url, _ansible_check_mode=check, _ansible_diff=diff)
    capsys.readouterr()
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            main()
    return capsys.readouterr().out
