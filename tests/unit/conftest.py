"""Make the repository importable as ansible_collections.mlops.mlflow and provide database fixtures.

The collection tree is built once per session: <tmp>/ansible_collections/mlops/mlflow is a
symlink to the repository root; <tmp> goes on sys.path and into ANSIBLE_COLLECTIONS_PATH.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from support.db_schema_fixtures import db_url, ensure_collection_tree, new_db, pg_databases  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import

ensure_collection_tree()
