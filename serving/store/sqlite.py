"""SQLite store: desired state in one file under the state dir (WAL, synchronous=FULL).

Every change is one transaction, so a crash leaves either the old or the new state.
One connection guarded by a lock: calls come from worker threads (asyncio.to_thread).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import orjson

from ..resources import Deployment, Endpoint, InstanceType, with_instance_type
from ..statedir import open_sqlite_checked, private_file, quick_check
from . import DeploymentRecord, EndpointRecord, StoreError, check_no_traffic

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
CREATE TABLE IF NOT EXISTS instance_types (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Columns added after the first release: (table, column, declaration).
_ADDED_COLUMNS = (
    ("deployments", "last_good_spec", "TEXT"),  # the spec of the last rollout that succeeded
    ("deployments", "rollout", "TEXT"),         # the latest rollout record (JSON)
    ("deployments", "attempt", "INTEGER NOT NULL DEFAULT 0"),  # retries the user asked for
)


def new_key() -> str:
    return secrets.token_urlsafe(32)


def open_checked(path: Path) -> "SqliteStore":
    """The gateway's store, or StateDirUnusable when it is damaged or emptied
    (statedir.open_sqlite_checked)."""
    return open_sqlite_checked(path, SqliteStore, held="the endpoints and deployments it held",
                               without="with an empty state")


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            private_file(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def check(self) -> None:
        """sqlite3.DatabaseError if the file is damaged (statedir.quick_check)."""
        with self._lock:
            quick_check(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------
    def apply(self, endpoints: list[Endpoint], deployments: list[Deployment],
              instance_types: list[InstanceType] = (), retry: Iterable[tuple[str, str]] = ()) -> None:
        """`retry`: deployments (endpoint, name) whose failed rollout the user asks to try
        again; their attempt counter goes up in the same transaction as their spec."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for instance_type in instance_types:
                    self._db.execute(
                        "INSERT INTO instance_types VALUES (?,?) ON CONFLICT(name) DO UPDATE SET spec=excluded.spec",
                        (instance_type.name, orjson.dumps(instance_type.to_dict()).decode()))
                for endpoint in endpoints:
                    spec = orjson.dumps(endpoint.to_dict()).decode()
                    updated = self._db.execute(
                        "UPDATE endpoints SET spec=?, updated_at=? WHERE name=?",
                        (spec, now, endpoint.name)).rowcount
                    if not updated:
                        self._db.execute(
                            "INSERT INTO endpoints VALUES (?,?,?,?,?,?)",
                            (endpoint.name, spec, new_key(), new_key(), now, now))
                for deployment in deployments:
                    spec = orjson.dumps(deployment.to_dict()).decode()
                    self._db.execute(
                        "INSERT INTO deployments (endpoint_name, name, spec, created_at, updated_at)"
                        " VALUES (?,?,?,?,?) ON CONFLICT(endpoint_name, name)"
                        " DO UPDATE SET spec=excluded.spec, updated_at=excluded.updated_at",
                        (deployment.endpoint_name, deployment.name, spec, now, now))
                for endpoint_name, name in retry:
                    self._db.execute("UPDATE deployments SET attempt=attempt+1 WHERE endpoint_name=? AND name=?",
                                     (endpoint_name, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def delete_endpoint(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM endpoints WHERE name=?", (name,)).rowcount > 0

    def delete_deployment(self, endpoint_name: str, name: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT spec FROM endpoints WHERE name=?", (endpoint_name,)).fetchone()
            if row is not None:
                check_no_traffic(Endpoint.from_dict(orjson.loads(row[0])), name)
            return self._db.execute(
                "DELETE FROM deployments WHERE endpoint_name=? AND name=?",
                (endpoint_name, name)).rowcount > 0

    def set_instance_count(self, endpoint_name: str, name: str, count: int) -> Deployment:
        with self._lock:
            row = self._db.execute(
                "SELECT spec FROM deployments WHERE endpoint_name=? AND name=?",
                (endpoint_name, name)).fetchone()
            if row is None:
                raise StoreError(f"no deployment '{name}' on endpoint '{endpoint_name}'")
            deployment = replace(Deployment.from_dict(orjson.loads(row[0])), instance_count=count)
            self._db.execute(
                "UPDATE deployments SET spec=?, updated_at=? WHERE endpoint_name=? AND name=?",
                (orjson.dumps(deployment.to_dict()).decode(), time.time(), endpoint_name, name))
        # As every read gives it: with its instance type resolved (part of its version).
        return with_instance_type(deployment, self.list_instance_types())

    def regenerate_key(self, endpoint_name: str, key_type: str) -> EndpointRecord:
        column = {"primary": "primary_key", "secondary": "secondary_key"}.get(key_type)
        if column is None:
            raise StoreError("key_type must be primary or secondary")
        with self._lock:
            updated = self._db.execute(
                f"UPDATE endpoints SET {column}=?, updated_at=? WHERE name=?",
                (new_key(), time.time(), endpoint_name)).rowcount
        if not updated:
            raise StoreError(f"no endpoint '{endpoint_name}'")
        record = self.get_endpoint(endpoint_name)
        assert record is not None
        return record

    # -- reads ----------------------------------------------------------------------
    def list_endpoints(self) -> list[EndpointRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, primary_key, secondary_key, created_at, updated_at"
                " FROM endpoints ORDER BY name").fetchall()
        return [self._record(row) for row in rows]

    def get_endpoint(self, name: str) -> EndpointRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT spec, primary_key, secondary_key, created_at, updated_at"
                " FROM endpoints WHERE name=?", (name,)).fetchone()
        return self._record(row) if row else None

    def list_deployments(self, endpoint_name: str | None = None) -> list[Deployment]:
        with self._lock:
            if endpoint_name is None:
                rows = self._db.execute("SELECT spec FROM deployments ORDER BY endpoint_name, name").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT spec FROM deployments WHERE endpoint_name=? ORDER BY name",
                    (endpoint_name,)).fetchall()
        types = self.list_instance_types()
        return [with_instance_type(Deployment.from_dict(orjson.loads(row[0])), types) for row in rows]

    def get_deployment(self, endpoint_name: str, name: str) -> Deployment | None:
        with self._lock:
            row = self._db.execute(
                "SELECT spec FROM deployments WHERE endpoint_name=? AND name=?",
                (endpoint_name, name)).fetchone()
        return with_instance_type(Deployment.from_dict(orjson.loads(row[0])), self.list_instance_types()) if row else None

    def list_deployment_records(self) -> list[DeploymentRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, last_good_spec, rollout, attempt FROM deployments ORDER BY endpoint_name, name"
            ).fetchall()
        types = self.list_instance_types()  # desired versions hash what their type is now
        return [DeploymentRecord(
            with_instance_type(Deployment.from_dict(orjson.loads(spec)), types),
            Deployment.from_dict(orjson.loads(good)) if good else None,
            orjson.loads(rollout) if rollout else None,
            str(attempt) if attempt else "") for spec, good, rollout, attempt in rows]

    def save_rollout(self, endpoint_name: str, name: str, rollout: dict,
                     last_good: Deployment | None = None) -> None:
        """Record a rollout's progress; with `last_good`, the version that now serves."""
        with self._lock:
            if last_good is not None:
                self._db.execute(
                    "UPDATE deployments SET rollout=?, last_good_spec=? WHERE endpoint_name=? AND name=?",
                    (orjson.dumps(rollout).decode(), orjson.dumps(last_good.to_dict()).decode(),
                     endpoint_name, name))
            else:
                self._db.execute("UPDATE deployments SET rollout=? WHERE endpoint_name=? AND name=?",
                                 (orjson.dumps(rollout).decode(), endpoint_name, name))

    def list_instance_types(self) -> list[InstanceType]:
        with self._lock:
            rows = self._db.execute("SELECT spec FROM instance_types ORDER BY name").fetchall()
        return [InstanceType.from_dict(orjson.loads(row[0])) for row in rows]

    def secret(self, name: str) -> str:
        """A random secret kept in the store (created on first use), e.g. to sign tokens."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (f"secret:{name}", new_key()))
            return self._db.execute("SELECT value FROM meta WHERE key=?", (f"secret:{name}",)).fetchone()[0]

    @staticmethod
    def _record(row) -> EndpointRecord:
        return EndpointRecord(Endpoint.from_dict(orjson.loads(row[0])), row[1], row[2], row[3], row[4])
