"""Coordination of N routers: reports, one elected coordinator, slot shares.

- Every router writes its report (shares.Report: demand per deployment, slots allowed and
  in flight per replica, the shares version it applied) into its own Lease
  `scoregate-router-report-ID` every `interval_s` when it changed, and at least every
  member_timeout_s / 3 as a heartbeat — the pattern of the kubelet's node Leases. A
  router whose Lease has not changed for `member_timeout_s` (on our own clock) is gone;
  a router that shuts down deletes its Lease so its slots are dealt out at once.
- One router holds Lease `scoregate-router-coordinator` (leasing.LeaseElector); each
  round it runs shares.Allocator over the live reports and writes the result to
  ConfigMap `scoregate-router-shares` (with the resourceVersion it read, so two
  coordinators never overwrite each other blindly) when a grant changed, or every
  `stats_interval_s` for the summed demand the autoscaler reads.
- Every router watches that ConfigMap and rebuilds its table (routing.py). No request
  waits for any of this: routers keep their last grants while there is no coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timezone
from typing import Callable

from . import names
from .api import CONFIG_MAPS, LEASES, KubeApi, status_of
from .leasing import LeaseElector
from .routing import RouterTables
from .shares import Allocator, Report, SharesDoc
from .watching import ObjectCache, key_of, start_caches

log = logging.getLogger("scoregate.kubernetes.coordination")
COORDINATOR_LEASE = "scoregate-router-coordinator"
SHARES_CONFIG_MAP = "scoregate-router-shares"
SHARES_KEY = "shares.json"
REPORT_ANNOTATION = "scoregate.io/router-report"
COMPONENT_REPORT, COMPONENT_SHARES = "router-report", "router-shares"


def _labels(component: str) -> dict[str, str]:
    return {names.LABEL_NAME: "scoregate-router", names.LABEL_COMPONENT: component,
            names.LABEL_MANAGED_BY: names.MANAGER}


def report_lease_name(identity: str) -> str:
    return names.dns_label(f"scoregate-router-report-{identity}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Coordination:
    def __init__(self, api: KubeApi, namespace: str, identity: str, tables: RouterTables, *,
                 report: Callable[[int], Report], deployments: Callable[[], dict[str, tuple[int, tuple[str, ...]]]],
                 interval_s: float = 1.0, member_timeout_s: float = 10.0, stats_interval_s: float = 5.0,
                 lease_duration_s: float = 6.0, renew_deadline_s: float = 4.0, retry_period_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api, self.namespace, self.identity, self._tables = api, namespace, identity, tables
        self._make_report, self._deployments = report, deployments
        self.interval_s, self.member_timeout_s, self.stats_interval_s = interval_s, member_timeout_s, stats_interval_s
        self._lease_timing = dict(lease_duration_s=lease_duration_s, renew_deadline_s=renew_deadline_s,
                                  retry_period_s=retry_period_s)
        self._clock = clock
        self._reports = ObjectCache(api, LEASES, namespaces=[namespace], on_event=self._on_report,
                                    label_selector=names.label_selector(_labels(COMPONENT_REPORT)))
        self._shares = ObjectCache(api, CONFIG_MAPS, namespaces=[namespace], on_event=self._on_shares,
                                   field_selector=f"metadata.name={SHARES_CONFIG_MAP}")  # RBAC: by name only
        self._observed: dict[str, tuple[str, float]] = {}  # lease name -> (renewTime, seen at)
        self._report_lease: dict | None = None
        self._shares_object: dict | None = None  # the ConfigMap holding the newest doc seen
        self._last_report: tuple[str, float] = ("", 0.0)
        self.elector: LeaseElector | None = None
        self._tasks: list[asyncio.Task] = []
        self.rounds = 0

    # -- reading ---------------------------------------------------------------------------
    @property
    def is_coordinator(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    def _live(self) -> list[tuple[str, dict]]:
        """(identity, Lease) of the routers whose report changed within member_timeout_s."""
        now, out = self._clock(), []
        for lease in self._reports.values():
            identity = (lease.get("spec") or {}).get("holderIdentity") or ""
            seen_at = self._observed.get(key_of(lease)[1], ("", now))[1]
            if identity and (identity == self.identity or now - seen_at <= self.member_timeout_s):
                out.append((identity, lease))
        return out

    def live_reports(self) -> dict[str, Report]:
        out = {}
        for identity, lease in self._live():
            notes = (lease.get("metadata") or {}).get("annotations") or {}
            try:
                out[identity] = Report.from_json(notes.get(REPORT_ANNOTATION, "{}"))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.warning("unreadable report in Lease %s: %s", key_of(lease)[1], exc)
        return out

    def routers_seen(self) -> int:
        return len({identity for identity, _ in self._live()} | {self.identity})

    def status(self) -> dict:
        doc = self._tables.doc
        return {"identity": self.identity, "coordinator": self.is_coordinator, "routersSeen": self.routers_seen(),
                "sharesVersion": doc.version if doc else 0, "sharesCoordinator": doc.coordinator if doc else ""}

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, timeout_s: float = 60.0) -> None:
        await start_caches((self._reports, self._shares), timeout_s)
        self._on_shares("", {})
        await self._write_report(force=True)  # be counted before serving
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._report_loop(), name="router report"),
                       loop.create_task(self._campaign(), name="router coordinator")]

    async def close(self, graceful: bool = True) -> None:
        """Stop; graceful: hand the coordinator Lease over and withdraw the report at once
        (call after draining). Not graceful: as a crash — others wait the timeouts out."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if graceful:
            if self.elector is not None:
                await self.elector.release()
            try:
                await self._api.delete(LEASES, self.namespace, report_lease_name(self.identity))
            except Exception as exc:
                if status_of(exc) != 404:
                    log.warning("could not withdraw the report of %s: %s", self.identity, exc)
        await self._reports.close()
        await self._shares.close()

    # -- events ----------------------------------------------------------------------------
    def _on_report(self, kind: str, lease: dict) -> None:
        name = key_of(lease)[1]
        if kind == "DELETED":
            self._observed.pop(name, None)
        else:
            renewed = (lease.get("spec") or {}).get("renewTime") or ""
            if self._observed.get(name, ("", 0.0))[0] != renewed:
                self._observed[name] = (renewed, self._clock())
        self._tables.update(routers_seen=self.routers_seen())

    def _on_shares(self, _kind: str, _obj: dict) -> None:
        self._adopt(self._shares.get(self.namespace, SHARES_CONFIG_MAP))

    def _adopt(self, config_map: dict | None) -> None:
        """Apply a shares doc unless it is older than the one applied (a watch event of an
        earlier write can arrive after our own write returned)."""
        try:
            doc = SharesDoc.from_config_map(config_map, SHARES_KEY)
        except ValueError as exc:
            log.warning("ConfigMap %s/%s: %s", self.namespace, SHARES_CONFIG_MAP, exc)
            return
        if doc is None:
            return
        if self._tables.doc is not None and doc.version < self._tables.doc.version:
            return
        self._shares_object = config_map
        self._tables.update(doc=doc)

    # -- this router's report --------------------------------------------------------------
    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._write_report()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not write the report of %s: %s", self.identity, exc)
                self._report_lease = None  # read it again next time
            self._tables.update(routers_seen=self.routers_seen())  # members expire without events

    async def _write_report(self, force: bool = False) -> None:
        text = self._make_report(self._tables.seen).to_json()
        now = self._clock()
        if not force and text == self._last_report[0] and now - self._last_report[1] < self.member_timeout_s / 3:
            return
        name = report_lease_name(self.identity)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, math.ceil(self.member_timeout_s)),
                "renewTime": _now()}
        if self._report_lease is None:
            try:
                self._report_lease = await self._api.get(LEASES, self.namespace, name)
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
        meta = {"name": name, "namespace": self.namespace, "labels": _labels(COMPONENT_REPORT),
                "annotations": {REPORT_ANNOTATION: text}}
        try:
            if self._report_lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
                self._report_lease = await self._api.create(LEASES, self.namespace, body)
            else:
                meta["resourceVersion"] = self._report_lease["metadata"]["resourceVersion"]
                body = {**self._report_lease, "metadata": {**self._report_lease["metadata"], **meta}, "spec": spec}
                self._report_lease = await self._api.replace(LEASES, self.namespace, name, body)
        except Exception:
            self._report_lease = None
            raise
        self._last_report = (text, now)

    # -- the coordinator -------------------------------------------------------------------
    async def _campaign(self) -> None:
        while True:
            self.elector = LeaseElector(self._api, self.namespace, COORDINATOR_LEASE, self.identity,
                                        **self._lease_timing)
            campaign = asyncio.get_running_loop().create_task(self.elector.run(), name="coordinator lease")
            try:
                await self.elector.elected.wait()
                log.info("%s coordinates the routers' slot shares", self.identity)
                await self._coordinate(campaign)
            finally:
                campaign.cancel()
                await asyncio.gather(campaign, return_exceptions=True)

    async def _coordinate(self, campaign: asyncio.Task) -> None:
        allocator = Allocator(self.identity, self._tables.doc)
        written_at = -math.inf
        while self.elector is not None and self.elector.is_leader and not campaign.done():
            try:
                doc, changed = allocator.round(self._deployments(), self.live_reports())
                if changed or self._clock() - written_at >= self.stats_interval_s:
                    if await self._write_shares(doc):
                        allocator.published(doc)
                        self._tables.update(doc=doc)
                        written_at = self._clock()
                    else:  # someone else wrote: start over from what is there now
                        allocator = Allocator(self.identity, self._tables.doc)
                await self._collect_departed()
                self.rounds += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("coordinator round failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def _write_shares(self, doc: SharesDoc) -> bool:
        current = self._shares_object
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": SHARES_CONFIG_MAP, "namespace": self.namespace,
                             "labels": _labels(COMPONENT_SHARES)},
                "data": {SHARES_KEY: doc.to_json()}}
        try:
            if current is None:
                written = await self._api.create(CONFIG_MAPS, self.namespace, body)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                written = await self._api.replace(CONFIG_MAPS, self.namespace, SHARES_CONFIG_MAP, body)
        except Exception as exc:
            if status_of(exc) not in (404, 409):
                raise
            try:  # changed or deleted meanwhile: adopt what is there
                fresh = await self._api.get(CONFIG_MAPS, self.namespace, SHARES_CONFIG_MAP)
            except Exception as again:
                if status_of(again) != 404:
                    raise
                fresh = None
            self._shares_object = fresh
            self._adopt(fresh)
            return False
        self._shares_object = written
        return True

    async def _collect_departed(self) -> None:
        """Delete report Leases of routers gone long ago (crashed pods never withdraw theirs)."""
        now = self._clock()
        for lease in self._reports.values():
            name = key_of(lease)[1]
            seen = self._observed.get(name)
            if seen is not None and now - seen[1] > 6 * self.member_timeout_s:
                try:
                    await self._api.delete(LEASES, self.namespace, name)
                    log.info("removed the report of departed router %s", name)
                except Exception as exc:
                    if status_of(exc) != 404:
                        log.warning("could not remove the report %s: %s", name, exc)
