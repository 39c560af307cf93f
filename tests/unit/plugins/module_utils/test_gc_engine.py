# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gc engine (module_utils/gc.py) on its own: argument checks, no Ansible, progress lines."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from urllib.parse import quote

import pytest

from ansible_collections.mlops.mlflow.plugins.module_utils.gc import parse_older_than, run_gc
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import SchemaError
from support.db_schema_fixtures import PG_PASSWORD, ensure_collection_tree, make_current

HOUR = 3600 * 1000


@pytest.mark.parametrize('text, ms', [
    (None, None),
    ('30d', 30 * 24 * HOUR),
    ('8h', 8 * HOUR),
    ('2m4s', 124 * 1000),
    ('2d8h5m20s', ((2 * 24 + 8) * 3600 + 5 * 60 + 20) * 1000),
    ('1.5d', 36 * HOUR),
    # computed as MLflow's gc computes it
    ('1.2d3h4m5s', int(timedelta(days=1.2, hours=3, minutes=4, seconds=5).total_seconds() * 1000)),
    ('.5h', HOUR // 2),
    ('0s', 0),
])
def test_older_than_valid(text, ms):
    assert parse_older_than(text) == ms


@pytest.mark.parametrize('text', ['', '30 days', '-1d', 'd', '1h2d', '1.2.3d', ' 1d', '1d ', '1w', '.d', '99999999999999d'])
def test_older_than_invalid(text):
    with pytest.raises(SchemaError) as err:
        parse_older_than(text)
    assert 'older_than' in str(err.value)


def test_bad_arguments_fail_before_the_database_is_touched(tmp_path):
    """Nothing is opened: not even a sqlite file is created, no server is contacted."""
    path = tmp_path / 'never.db'
    for kwargs in ({'older_than': '30 days'}, {'experiment_ids': ['abc']}, {'run_ids': ['a', '']}):
        with pytest.raises(SchemaError) as err:
            run_gc('sqlite:///%s' % path, log=lambda line: None, **kwargs)
        assert list(kwargs)[0] in str(err.value) or 'experiment ID' in str(err.value)
    with pytest.raises(SchemaError):
        run_gc('postgresql+psycopg2://u:%s@127.0.0.1:1/db' % quote(PG_PASSWORD, safe=''), older_than='x', log=print)
    assert not path.exists()


def test_engine_imports_without_ansible():
    """The systemd timer's CLI runs the engine with the MLflow virtualenv's Python only."""
    tree = ensure_collection_tree()
    code = ('import sys\n'
            'class Block:\n'
            '    def find_spec(self, name, path=None, target=None):\n'
            '        if name == "ansible" or name.startswith("ansible."):\n'
            '            raise ImportError("ansible is blocked")\n'
            'sys.meta_path.insert(0, Block())\n'
            'from ansible_collections.mlops.mlflow.plugins.module_utils.gc import run_gc\n'
            'print("ok")\n')
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == 'ok'


def test_progress_lines_without_password(pg_databases):
    db_url = pg_databases.create()
    make_current(db_url)
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel
    client = MlflowClient(tracking_uri=db_url)
    exp = client.create_experiment('engine')
    run_id = client.create_run(exp).info.run_id
    client.delete_run(run_id)
    lines = []
    result = run_gc(db_url, run_ids=run_id, log=lines.append)
    assert result['changed'] is True and result['purged']['runs'] == [run_id]
    assert any('Run with ID %s has been permanently deleted.' % run_id in line for line in lines)
    text = '\n'.join(lines) + repr(result)
    assert PG_PASSWORD not in text and quote(PG_PASSWORD, safe='') not in text
    # MLflow's gc set the process-wide tracking URI to the database URL; it is put back.
    assert os.environ.get('MLFLOW_TRACKING_URI') != db_url
