"""The batch database: STATE_DIR/batch.db, one SQLite file (WAL, synchronous=FULL).

Every change is one transaction, so after a crash (kill -9, power loss) the file holds
either the old or the new state, never half of a mini-batch. One connection guarded by
a lock: calls come from worker threads (asyncio.to_thread) and are short.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..statedir import open_sqlite_checked, private_file, quick_check

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    primary_key TEXT NOT NULL,
    secondary_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    endpoint_name TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (endpoint_name, name)
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    endpoint_name TEXT NOT NULL,
    deployment_name TEXT NOT NULL,
    spec TEXT NOT NULL,            -- deployment snapshot + effective settings + input
    status TEXT NOT NULL,          -- Queued | Running | Completed | Failed | Canceled
    finalized INTEGER NOT NULL,    -- 1 once the output file is in place
    error TEXT,
    items INTEGER NOT NULL,
    mini_batches INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_endpoint ON jobs(endpoint_name, seq);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    ref TEXT NOT NULL,             -- what the output names: relative path or row number
    payload TEXT NOT NULL,         -- what run() gets: absolute path, or the row as JSON
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS minibatches (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start INTEGER NOT NULL,        -- items [start, stop)
    stop INTEGER NOT NULL,
    status TEXT NOT NULL,          -- pending | succeeded | failed
    failures INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    finished_at REAL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    item_idx INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, item_idx)
) WITHOUT ROWID;
"""


def open_checked(path: Path) -> "Database":
    """batch.db, or StateDirUnusable when it is damaged or emptied (statedir.open_sqlite_checked)."""
    return open_sqlite_checked(path, Database, held="the batch jobs it held", without="with no batch jobs")


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            private_file(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def check(self) -> None:
        """sqlite3.DatabaseError if the file is damaged (statedir.quick_check)."""
        with self._lock:
            quick_check(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT (fsync'ed), or ROLLBACK on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db
