"""The two state-dir databases hold endpoint keys (and the token secret): only their owner
may read them, whatever the umask, and a file an earlier release left 0644 is made so."""

from __future__ import annotations

import os
import stat

import pytest

from serving.batch.db import Database
from serving.resources import Endpoint
from serving.store.sqlite import SqliteStore


@pytest.fixture
def open_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_the_store_and_its_journal_are_the_owners_only(tmp_path, open_umask):
    store = SqliteStore(tmp_path / "store.db")
    store.apply([Endpoint(name="ep")], [])
    assert store.get_endpoint("ep").primary_key
    found = modes(tmp_path)
    assert "store.db" in found and set(found.values()) == {0o600}, found  # -wal and -shm too
    store.close()


def test_the_batch_database_is_the_owners_only(tmp_path, open_umask):
    (tmp_path / "batch.db").touch(mode=0o644)  # as an earlier release made it
    Database(tmp_path / "batch.db").close()
    assert modes(tmp_path)["batch.db"] == 0o600
