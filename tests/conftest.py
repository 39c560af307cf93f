"""Make the repository importable as ansible_collections.mlops.mlflow and provide database fixtures.

The collection tree is built once per session: <tmp>/ansible_collections/mlops/mlflow is a
symlink to the repository root; <tmp> goes on sys.path and into ANSIBLE_COLLECTIONS_PATH.
The database fixtures (db_url, new_db, pg_databases) live in tests/support/db_schema_fixtures.py
and serve tests/unit and tests/integration alike.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

pytest_plugins = ['support.db_schema_fixtures']


def pytest_configure(config):  # pylint: disable=unused-argument
    """Build the collection tree before any test module imports the collection."""
    from support.db_schema_fixtures import ensure_collection_tree  # pylint: disable=import-outside-toplevel

    ensure_collection_tree()
