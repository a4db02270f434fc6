"""A new state database is made whole before it has its name (serving.statedir): a gateway
killed during its very first start used to leave an empty store.db, which every later
start refused as "emptied" until someone deleted it by hand."""

from __future__ import annotations

import sqlite3

import pytest

from serving.batch.db import open_checked as open_batch_db
from serving.statedir import open_sqlite_checked
from serving.store.sqlite import open_checked as open_store


class Killed(BaseException):
    """The process ending in the middle of making the database."""


def killed_while_making(path):
    sqlite3.connect(str(path)).close()  # the file exists, nothing is written yet
    raise Killed


@pytest.mark.parametrize("name, open_real", [("store.db", open_store), ("batch.db", open_batch_db)])
def test_a_start_killed_while_making_the_database_does_not_block_the_next(tmp_path, name, open_real):
    path = tmp_path / name
    with pytest.raises(Killed):
        open_sqlite_checked(path, killed_while_making, held="x", without="y")
    assert not path.exists()  # only the temporary file was made

    opened = open_real(path)  # the next start: a new, whole database
    opened.close()
    assert path.stat().st_size > 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [name]  # the temporary file is gone


def test_the_new_database_is_the_one_written_to(tmp_path):
    path = tmp_path / "store.db"
    store = open_store(path)
    secret = store.secret("signing")
    store.close()
    again = open_store(path)
    assert again.secret("signing") == secret
    again.close()
