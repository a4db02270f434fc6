"""Desired batch resources (endpoints, deployments, keys) in the batch database."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import orjson

from .db import Database
from .resources import BatchDeployment, BatchEndpoint


class BatchStoreError(ValueError):
    """A change the store refuses (a dangling reference, deleting the default deployment)."""


@dataclass(frozen=True)
class BatchEndpointRecord:
    endpoint: BatchEndpoint
    primary_key: str
    secondary_key: str
    created_at: float
    updated_at: float

    @property
    def keys(self) -> tuple[str, str]:
        return self.primary_key, self.secondary_key


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _dumps(value) -> str:
    return orjson.dumps(value.to_dict()).decode()


class BatchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes ---------------------------------------------------------------------------
    def apply(self, endpoints: list[BatchEndpoint], deployments: list[BatchDeployment]) -> None:
        """Create or update, in one transaction; references are checked inside it."""
        now = time.time()
        with self._db.transaction() as db:
            for endpoint in endpoints:
                spec = _dumps(endpoint)
                if not db.execute("UPDATE endpoints SET spec=?, updated_at=? WHERE name=?",
                                  (spec, now, endpoint.name)).rowcount:
                    db.execute("INSERT INTO endpoints VALUES (?,?,?,?,?,?)",
                               (endpoint.name, spec, new_key(), new_key(), now, now))
            for deployment in deployments:
                if db.execute("SELECT 1 FROM endpoints WHERE name=?", (deployment.endpoint_name,)).fetchone() is None:
                    raise BatchStoreError(f"no batch endpoint '{deployment.endpoint_name}'"
                                          f" for deployment '{deployment.name}'")
                db.execute("INSERT INTO deployments VALUES (?,?,?,?,?) ON CONFLICT(endpoint_name, name)"
                           " DO UPDATE SET spec=excluded.spec, updated_at=excluded.updated_at",
                           (deployment.endpoint_name, deployment.name, _dumps(deployment), now, now))
            for endpoint in endpoints:
                default = endpoint.default_deployment
                if default and db.execute("SELECT 1 FROM deployments WHERE endpoint_name=? AND name=?",
                                          (endpoint.name, default)).fetchone() is None:
                    raise BatchStoreError(f"batch endpoint '{endpoint.name}' has no deployment '{default}'")

    def delete_endpoint(self, name: str) -> bool:
        with self._db.transaction() as db:
            return db.execute("DELETE FROM endpoints WHERE name=?", (name,)).rowcount > 0

    def delete_deployment(self, endpoint_name: str, name: str) -> bool:
        record = self.get_endpoint(endpoint_name)
        if record is not None and record.endpoint.default_deployment == name:
            raise BatchStoreError(f"deployment '{name}' is the default of batch endpoint '{endpoint_name}';"
                                  " change defaults.deployment_name first")
        with self._db.transaction() as db:
            return db.execute("DELETE FROM deployments WHERE endpoint_name=? AND name=?",
                              (endpoint_name, name)).rowcount > 0

    def regenerate_key(self, name: str, which: str) -> BatchEndpointRecord | None:
        column = {"primary": "primary_key", "secondary": "secondary_key"}.get(which)
        if column is None:
            raise BatchStoreError("key_type must be primary or secondary")
        with self._db.transaction() as db:
            if not db.execute(f"UPDATE endpoints SET {column}=?, updated_at=? WHERE name=?",
                              (new_key(), time.time(), name)).rowcount:
                return None
        return self.get_endpoint(name)

    def set_keys(self, name: str, primary: str, secondary: str) -> bool:
        """Take keys kept elsewhere (on a cluster: the endpoint's Secret); False if no endpoint."""
        with self._db.transaction() as db:
            return db.execute("UPDATE endpoints SET primary_key=?, secondary_key=?, updated_at=? WHERE name=?",
                              (primary, secondary, time.time(), name)).rowcount > 0

    # -- reads ----------------------------------------------------------------------------
    def get_endpoint(self, name: str) -> BatchEndpointRecord | None:
        with self._db.reading() as db:
            row = db.execute("SELECT spec, primary_key, secondary_key, created_at, updated_at"
                             " FROM endpoints WHERE name=?", (name,)).fetchone()
        return self._record(row) if row else None

    def list_endpoints(self) -> list[BatchEndpointRecord]:
        with self._db.reading() as db:
            rows = db.execute("SELECT spec, primary_key, secondary_key, created_at, updated_at"
                              " FROM endpoints ORDER BY name").fetchall()
        return [self._record(row) for row in rows]

    def list_deployments(self, endpoint_name: str | None = None) -> list[BatchDeployment]:
        with self._db.reading() as db:
            if endpoint_name is None:
                rows = db.execute("SELECT spec FROM deployments ORDER BY endpoint_name, name").fetchall()
            else:
                rows = db.execute("SELECT spec FROM deployments WHERE endpoint_name=? ORDER BY name",
                                  (endpoint_name,)).fetchall()
        return [BatchDeployment.from_dict(orjson.loads(row[0])) for row in rows]

    def get_deployment(self, endpoint_name: str, name: str) -> BatchDeployment | None:
        with self._db.reading() as db:
            row = db.execute("SELECT spec FROM deployments WHERE endpoint_name=? AND name=?",
                             (endpoint_name, name)).fetchone()
        return BatchDeployment.from_dict(orjson.loads(row[0])) if row else None

    @staticmethod
    def _record(row) -> BatchEndpointRecord:
        return BatchEndpointRecord(BatchEndpoint.from_dict(orjson.loads(row[0])), row[1], row[2], row[3], row[4])
