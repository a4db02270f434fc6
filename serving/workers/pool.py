"""The main process's side of `--workers N`: start, feed, watch and restart the workers.

WorkerPool takes the RouterApp's place in serving.embedded: the controller, the admin
API and the status page ask it the same questions (load, utilization, in flight per
replica, "is this replica idle"), and it answers with the sum over the workers.

- Port: bound here first with SO_REUSEPORT (so port 0 becomes one known port) and held,
  never listened on, until the pool closes; each worker binds the same port.
- Per-replica limits: one shared-memory array with a row per worker
  (router/balancing/shared.py). This process owns the SlotIndex and sends each replica's
  slot with every routing table; a worker that dies has its row cleared, so its requests
  stop counting against the replicas.
- A worker that exits without being asked is started again (after 0.5 s, doubling up to
  30 s while it keeps dying within a minute of starting); its port stays served by the
  others meanwhile.
- Stop: every worker drains (stops accepting, finishes what it has) within the drain
  timeout, then is killed if still there.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from router.admission import UtilizationWindow, queue_id
from router.aiohttp_hardening import app_runner
from router.balancing.shared import SharedInFlightCounter, SlotIndex, create_shared_counts
from router.routing_table import RoutingTable, RoutingTableHolder

from .channel import Channel, ChannelClosed
from .metrics import WorkerMetrics, merge_worker_metrics
from .worker import EXIT_TLS, WorkerSettings, worker_main

log = logging.getLogger("scoregate.workers")

SPAWN = multiprocessing.get_context("spawn")
MAX_REPLICAS = 4096  # slots in the shared counts: replicas (also draining ones) at once
START_TIMEOUT_S = 60.0
EXIT_MARGIN_S = 5.0  # a worker told to stop: this long past the drain timeout to exit, then killed
HURRIED_MARGIN_S = 1.0  # the same after a second stop signal
RESTART_FIRST_S, RESTART_MAX_S, STABLE_AFTER_S = 0.5, 30.0, 60.0
SCRAPE_INTERVAL_S = 1.0


class WorkerStartError(Exception):
    """A worker could not start (the message says why)."""


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    channel: Channel | None = None
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    restart_delay_s: float = RESTART_FIRST_S
    load: dict = field(default_factory=dict)
    ejected: frozenset = frozenset()
    metrics_text: bytes = b""


class _EjectedView:
    """The status page's `router.ejector.ejected()`: replicas any worker has ejected."""

    def __init__(self, pool: "WorkerPool") -> None:
        self._pool = pool

    def ejected(self) -> set[str]:
        return set().union(*(w.ejected for w in self._pool._workers))


RUNTIME_PREFIX = "scoregate-run-"  # TMPDIR/scoregate-run-PID-XXXX: the batch socket of a pool


def _remove_stale_runtime_dirs() -> None:
    """Runtime dirs of pools whose process is gone (kill -9 leaves them): this user's only,
    and only when no process has that pid now (a reused pid keeps its dir)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{RUNTIME_PREFIX}*-*"):
        pid = folder.name[len(RUNTIME_PREFIX):].partition("-")[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # gone meanwhile, or a process of another user: leave it
            continue


class WorkerPool:
    def __init__(self, count: int, settings: WorkerSettings, holder: RoutingTableHolder, *,
                 registry: CollectorRegistry | None = None, batch_routes: list[web.RouteDef] | None = None) -> None:
        """batch_routes: the scoring port's batch job routes, served by this process on a
        private Unix socket for the workers to pass requests on to (batch_proxy.py)."""
        if count < 2:
            raise ValueError("a worker pool has at least 2 workers (1 runs in the main process)")
        self.count = count
        self._runtime_dir: Path | None = None
        self._batch_routes = list(batch_routes or [])
        self._batch_runner: web.AppRunner | None = None
        if self._batch_routes:
            # A private, short path (a Unix socket path is limited to 107 bytes), named with
            # this pid so that the next pool can remove it if this process is killed.
            _remove_stale_runtime_dirs()
            self._runtime_dir = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-"))
            settings = replace(settings, batch_socket=str(self._runtime_dir / "batch.sock"))
        self.settings = settings
        self.holder = holder
        self.registry = registry if registry is not None else CollectorRegistry()
        self.ejector = _EjectedView(self)
        self._workers = [_Worker(i) for i in range(count)]
        self._lock = SPAWN.Lock()
        self._memory = None
        self._counts: SharedInFlightCounter | None = None
        self._slots: SlotIndex | None = None
        self._slot_map: dict[str, int] = {}
        self._port_socket: socket.socket | None = None
        self._port = 0
        self._stopping = False
        self._hurried = False  # hurry(): a second stop signal
        self._tasks: set[asyncio.Task] = set()
        self._integrals: dict[tuple[str, str], float] = {}
        self._window_start: dict[tuple[str, str], float] = {}
        self._started_at = time.monotonic()
        self._worker_metrics = WorkerMetrics()
        self.registry.register(self._worker_metrics)
        self._restarts = Counter("scoregate_worker_restarts", "Worker processes started again after "
                                 "they exited unasked", registry=self.registry)
        self._live = Gauge("scoregate_workers_listening", "Worker processes accepting connections",
                           registry=self.registry)
        self._live.set_function(lambda: sum(1 for w in self._workers if w.listening.is_set()))
        holder.subscribe(self._on_table_change)

    # -- lifecycle ----------------------------------------------------------------------
    def reserve_port(self) -> int:
        """Bind the scoring port (SO_REUSEPORT) so port 0 resolves to one port for all."""
        router = self.settings.router
        family = socket.AF_INET6 if ":" in router.host else socket.AF_INET
        address = (router.host, router.port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if router.port:
                # Without SO_REUSEPORT first: the kernel would let this bind join another
                # gateway's --workers on the port and split the connections with it.
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: "
                                     f"{(exc.strerror or str(exc)).lower()}") from None
        self._port_socket, self._port = sock, sock.getsockname()[1]
        self.settings = replace(self.settings, router=replace(router, port=self._port))
        return self._port

    async def start(self) -> None:
        if self._port_socket is None:
            self.reserve_port()
        if self._batch_routes:
            app = web.Application(client_max_size=self.settings.router.body.max_body_bytes)
            app.add_routes(self._batch_routes)
            self._batch_runner = app_runner(app, access_log=None, handle_signals=False)
            await self._batch_runner.setup()
            await web.UnixSite(self._batch_runner, self.settings.batch_socket).start()
        self._memory = create_shared_counts(MAX_REPLICAS, rows=self.count)
        self._counts = SharedInFlightCounter(self._memory, self._lock, row=None, rows=self.count)
        self._slots = SlotIndex(self._counts)
        self._assign_slots(self.holder.current)
        for worker in self._workers:
            await self._spawn(worker)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.gather(*(self._until_listening(w) for w in self._workers))
        except TimeoutError:
            raise WorkerStartError(f"the workers did not start listening within {START_TIMEOUT_S:g} s") from None
        self._track(asyncio.get_running_loop().create_task(self._scrape_loop(), name="worker-metrics"))

    async def _scrape_loop(self) -> None:
        """Keep the merged metrics fresh for the status page's live view, which samples
        the registry every second (the admin /metrics asks the workers afresh anyway)."""
        while not self._stopping:
            await asyncio.sleep(SCRAPE_INTERVAL_S)
            await self.refresh_metrics()

    async def _until_listening(self, worker: _Worker) -> None:
        while not worker.listening.is_set():
            process = worker.process
            if process is not None and process.exitcode is not None:
                why = "its certificate files could not be used" if process.exitcode == EXIT_TLS else \
                    f"exit code {process.exitcode}"
                raise WorkerStartError(f"worker {worker.index} exited while starting ({why}; see its log)")
            await asyncio.sleep(0.05)

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair()
        worker.listening = asyncio.Event()
        worker.load, worker.ejected = {}, frozenset()
        worker.process = SPAWN.Process(
            target=worker_main, name=f"scoregate-worker-{worker.index}", daemon=False,
            args=(worker.index, self.count, self.settings, self._memory.name, self._lock, theirs))
        worker.process.start()
        theirs.close()
        worker.started_at = time.monotonic()
        worker.channel = await Channel.over(ours, lambda message, w=worker: self._on_message(w, message))
        worker.channel.send(self._table_message(self.holder.current))
        self._track(asyncio.get_running_loop().create_task(self._watch(worker), name=f"worker-{worker.index}"))
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, worker: _Worker) -> None:
        """Read the worker's messages until it is gone; then start it again unless stopping."""
        channel, process = worker.channel, worker.process
        await channel.run()
        await asyncio.to_thread(process.join, 10.0)
        if process.exitcode is None:
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        worker.listening.clear()
        if self._stopping:
            return
        held = await asyncio.to_thread(self._forget_row, worker.index)
        log.error("worker %d (pid %d) exited unasked with code %s; %d request(s) it had in flight no "
                  "longer count against their replicas", worker.index, process.pid, process.exitcode, held)
        if time.monotonic() - worker.started_at > STABLE_AFTER_S:
            worker.restart_delay_s = RESTART_FIRST_S
        while not self._stopping:
            await asyncio.sleep(worker.restart_delay_s)
            worker.restart_delay_s = min(RESTART_MAX_S, worker.restart_delay_s * 2)
            if self._stopping:
                return
            try:
                self._restarts.inc()
                await self._spawn(worker)
                return
            except Exception:  # e.g. out of processes or descriptors: try again later
                log.exception("starting worker %d again failed", worker.index)

    def _forget_row(self, row: int) -> int:
        """Clear a dead worker's counts. Blocking (run in a thread): if the worker died
        holding the counts' lock, nobody else could ever take it again, so a lock that
        stays taken for a whole second is taken to be the dead worker's and released."""
        if self._lock.acquire(timeout=1.0):
            self._lock.release()
        else:
            log.warning("the shared counts' lock was held by the dead worker; releasing it")
            self._lock.release()
        return self._counts.clear_row(row)

    def _on_message(self, worker: _Worker, message: dict) -> None:
        op = message["op"]
        if op == "stats":
            for key, integral in message["integrals"].items():
                self._integrals[key] = self._integrals.get(key, 0.0) + integral
            worker.load, worker.ejected = message["load"], frozenset(message["ejected"])
        elif op == "listening":
            worker.listening.set()
        else:
            log.warning("unknown message %r from worker %d", op, worker.index)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Ask every worker to stop accepting and finish its requests; kill what outlives
        the timeout (plus a margin for the process to exit: EXIT_MARGIN_S, or
        HURRIED_MARGIN_S once hurry() was called)."""
        self._stopping = True
        for worker in self._workers:
            if worker.channel is not None and not worker.channel.closed:
                try:
                    worker.channel.send({"op": "stop"})
                except ChannelClosed:
                    pass
        deadline = time.monotonic() + timeout_s + (HURRIED_MARGIN_S if self._hurried else EXIT_MARGIN_S)
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("worker %d did not stop in time; killing it", worker.index)
                process.kill()
                await asyncio.to_thread(process.join, 5.0)

    def hurry(self) -> None:
        """A second stop signal: what the workers still answer is abandoned, so a worker
        gets only a moment to exit once told to stop."""
        self._hurried = True

    async def close(self) -> None:
        if not self._stopping:
            await self.drain(0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._counts is not None:
            self._counts.close()
        if self._memory is not None:
            self._memory.close()
            self._memory.unlink()
            self._memory = None
        if self._port_socket is not None:
            self._port_socket.close()
        if self._batch_runner is not None:
            await self._batch_runner.cleanup()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    # -- feeding the workers --------------------------------------------------------------
    def _assign_slots(self, table: RoutingTable) -> None:
        ids = {r.replica_id for e in table.endpoints.values() for d in e.deployments.values() for r in d.replicas}
        ids |= {queue_id((e.name, d)) for e in table.endpoints.values() for d in e.deployments}
        self._slot_map = self._slots.update(ids)
        self._counts.assign(self._slot_map)

    def _table_message(self, table: RoutingTable) -> dict:
        return {"op": "table", "table": table, "slots": self._slot_map}

    def _on_table_change(self, _old: RoutingTable, new: RoutingTable) -> None:
        if self._slots is None:
            return  # not started: the first table goes out with each worker's start
        self._assign_slots(new)
        self._broadcast(self._table_message(new))

    def _broadcast(self, message: dict) -> None:
        for worker in self._workers:
            if worker.channel is not None and not worker.channel.closed:
                try:
                    worker.channel.send(message)
                except ChannelClosed:
                    pass  # it is being started again, and gets the current table then

    def reload_tls(self) -> None:
        """SIGHUP: every worker re-reads its certificate files now."""
        self._broadcast({"op": "reload_tls"})

    def reload_replica_client(self) -> None:
        """The router→replica client certificate was renewed: load it in every worker."""
        self._broadcast({"op": "reload_replica_client"})

    async def refresh_metrics(self, timeout_s: float = 2.0) -> None:
        """Ask each listening worker for its metrics (a worker that does not answer in
        time keeps its last scrape)."""
        async def scrape(worker: _Worker) -> None:
            if worker.channel is None or worker.channel.closed:
                return
            try:
                worker.metrics_text = await worker.channel.request({"op": "metrics"}, timeout_s)
            except (ChannelClosed, TimeoutError, RuntimeError):
                pass

        await asyncio.gather(*(scrape(w) for w in self._workers))
        self._worker_metrics.families = merge_worker_metrics(
            {w.index: w.metrics_text for w in self._workers if w.metrics_text})

    # -- what the control plane reads (RouterApp's questions) ----------------------------
    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the worker pool has no port yet")
        return self._port

    @property
    def started(self) -> bool:
        return all(w.listening.is_set() for w in self._workers)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None and w.process.pid]

    def in_flight_for(self, replica_id: str) -> int:
        return self._counts.get(replica_id) if self._counts is not None else 0

    async def wait_replica_idle(self, replica_id: str, timeout_s: float) -> bool:
        """Wait until no worker has a request in flight to this replica (bounded)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight_for(replica_id) > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def take_utilization(self, endpoint: str, deployment: str) -> UtilizationWindow:
        """The workers' summed (in flight + queued) averaged since the last call."""
        key = (endpoint, deployment)
        now = time.monotonic()
        elapsed = now - self._window_start.get(key, self._started_at)
        integral = self._integrals.pop(key, 0.0)
        self._window_start[key] = now
        route = self.holder.current.endpoints.get(endpoint)
        route = route.deployments.get(deployment) if route else None
        replicas = len(route.replicas) if route else 0
        slots = route.request_settings.max_concurrent_requests_per_instance if route else 1
        return UtilizationWindow(integral / elapsed if elapsed > 0 else 0.0, replicas, slots, elapsed)

    def load(self, endpoint: str, deployment: str) -> tuple[int, int]:
        """(in flight, queued) summed over the workers (as of their last report)."""
        key = (endpoint, deployment)
        busy = queued = 0
        for worker in self._workers:
            b, q = worker.load.get(key, (0, 0))
            busy, queued = busy + b, queued + q
        return busy, queued

    # -- admin port -----------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self._metrics), web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz)]

    async def _metrics(self, _request: web.Request) -> web.Response:
        await self.refresh_metrics()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workers": [
            {"index": w.index, "pid": w.process.pid if w.process is not None else None,
             "listening": w.listening.is_set()} for w in self._workers]})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """Not ready from the first moment of a drain, as one process's router says
        (router/app.py), though the workers still answer their requests in flight."""
        ready = (not self._stopping and any(w.listening.is_set() for w in self._workers)
                 and self.holder.current.version > 0)
        return web.json_response({"ready": ready}, status=200 if ready else 503)
