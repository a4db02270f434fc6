"""A status snapshot of a running gateway, made from its admin API and `/metrics`.

`scoregate top` asks the gateway for `GET /api/v1/status`; a gateway that does not
serve it (an older one) is still shown, from the calls the CLI already makes —
endpoints, deployments, batch endpoints and their jobs — and from the Prometheus text
of `/metrics`, sampled into this side's own LiveSeries at every refresh. The snapshot
has the same shape either way (serving.status.snapshot.assemble).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.parse
import urllib.request

from ..client import AdminClient, CliError
from .live import LiveSeries, sample_text
from .snapshot import MAX_JOBS_PER_ENDPOINT, assemble

METRICS_TIMEOUT_S = 10.0


class RemoteSnapshot:
    def __init__(self, client: AdminClient, *, window_s: float = 120.0, min_interval_s: float = 0.5) -> None:
        self.client = client
        self.live = LiveSeries(window_s, min_interval_s)

    def metrics_text(self) -> str:
        url = f"{self.client.info.admin_url}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:
                return response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError):
            return ""  # no live figures this time; the rest of the view still works

    def fetch(self) -> dict:
        """One snapshot (blocking: several small HTTP calls)."""
        # `endpoint list` also shows batch endpoints; they are read from /batch below.
        endpoints = [e for e in self.client.get("/endpoints") if e.get("kind", "online") == "online"]
        deployments = []
        for endpoint in endpoints:
            deployments += self.client.get(f"/endpoints/{urllib.parse.quote(endpoint['name'], safe='')}/deployments")
        batch_endpoints, jobs = self._batch()
        self.live.add(sample_text(self.metrics_text(), self.live.clock()))
        return assemble(endpoints, deployments, batch_endpoints=batch_endpoints, jobs=jobs, live=self.live,
                        now=time.time(), gateway={"source": "admin-api", "scoring_url": self.client.info.scoring_url})

    def _batch(self) -> tuple[list[dict], list[dict]]:
        from ..batch.client import BatchClient

        try:
            endpoints = self.client.get("/batch/endpoints")
        except CliError:
            return [], []  # a gateway without batch endpoints on its admin API
        batch, jobs = BatchClient(self.client), []
        for endpoint in endpoints:
            try:
                jobs += batch.list_jobs(endpoint["name"])[:MAX_JOBS_PER_ENDPOINT]
            except CliError:
                continue  # e.g. deleted meanwhile
        return endpoints, jobs

    async def snapshot(self) -> dict:
        """The same, for an aiohttp handler (serving.status.StatusPage)."""
        return await asyncio.to_thread(self.fetch)
