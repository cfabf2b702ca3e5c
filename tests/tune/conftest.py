"""Shared fixtures for the playbook.tune tests (pure Python: no torch)."""

from __future__ import annotations

import pytest

from playbook.tune import storage as storage_mod


@pytest.fixture()
def db_url(tmp_path):
    """A fresh SQLite storage URL; every cached connection is closed afterwards."""
    yield f"sqlite:///{tmp_path}/studies.db"
    storage_mod.close_all()
