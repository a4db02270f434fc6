"""One worker process of `serve --workers N`: a RouterApp on the shared port.

Spawned by serving.workers.pool (multiprocessing "spawn": a fresh interpreter, nothing
inherited but the arguments). It builds its own TLS listener from the same certificate
files, counts in-flight requests in its row of the shared counts, and gets everything
else over its channel from the main process:

    main → worker   table (routing table + slot of each replica), metrics?, reload_tls,
                    reload_replica_client, stop
    worker → main   listening, stats (every STATS_INTERVAL_S: utilization integrals,
                    in flight and queued per deployment, ejected replicas)

It starts listening only once it has a table (a restarted worker never answers 404 for
an endpoint that exists), and it drains and exits on "stop", on SIGTERM, or when the
main process is gone (its end of the channel closes). SIGINT is ignored: a Ctrl+C in a
terminal reaches every process of the group, and the main process decides the order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field, replace
from multiprocessing import shared_memory
from pathlib import Path

from prometheus_client import generate_latest

from router import RouterApp, RouterSettings, RoutingTableHolder
from router.balancing.shared import SharedInFlightCounter
from tls import CertificateSource, ServerTLS, TLSConfigError, TLSMetrics, client_context

from ..gc_freeze import freeze_startup_objects
from ..tokens import TokenIssuer
from ..tracing_setup import setup_tracing
from .batch_proxy import BatchProxy
from .channel import Channel

log = logging.getLogger("scoregate.workers")

STATS_INTERVAL_S = 0.25
FIRST_TABLE_TIMEOUT_S = 60.0
EXIT_TLS = 3  # the certificate files could not be used


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs beyond its channel (pickled into the new process)."""

    router: RouterSettings  # ssl contexts None: each worker builds its own
    tls_sources: tuple[CertificateSource, ...]
    tls_default: str = "default"
    tls_client_ca: str | None = None
    tls_reload_interval_s: float = 10.0
    tls_ticket_keys: bytes | None = field(default=None, repr=False)  # shared by all workers (tls.tickets)
    replica_client_dir: Path | None = None  # router→replica mTLS: ca.pem, cert.pem, key.pem
    replica_ca_file: Path | None = None
    token_secret: str = ""
    otel_exporter: str | None = None
    drain_timeout_s: float = 30.0
    batch_socket: str | None = None
    log_level: int = logging.INFO


def worker_main(index: int, rows: int, settings: WorkerSettings, memory_name: str, lock, sock) -> None:
    """Process entry point (must stay importable at module level for "spawn")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s")
    try:
        import uvloop

        code = uvloop.run(_run(index, rows, settings, memory_name, lock, sock))
    except ImportError:
        code = asyncio.run(_run(index, rows, settings, memory_name, lock, sock))
    sys.exit(code)


def worker_access_log(target: str | None, index: int) -> str | None:
    """Each worker writes its own file (`access.log` → `access-worker0.log`, ...), so two
    processes never append to, or rotate, the same file; stdout ("-") is shared."""
    if target is None or target == "-":
        return target
    path = Path(target)
    return str(path.with_name(f"{path.stem}-worker{index}{path.suffix}"))


def _replica_context(settings: WorkerSettings) -> ssl.SSLContext | None:
    if settings.replica_client_dir is None:
        return None
    folder = settings.replica_client_dir
    return client_context(settings.replica_ca_file, cert_file=folder / "cert.pem", key_file=folder / "key.pem")


async def _run(index: int, rows: int, settings: WorkerSettings, memory_name: str, lock, sock) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        server_tls = await asyncio.to_thread(
            ServerTLS, list(settings.tls_sources), default=settings.tls_default,
            client_ca_file=settings.tls_client_ca, ticket_keys=settings.tls_ticket_keys)
        replica_context = await asyncio.to_thread(_replica_context, settings)
    except TLSConfigError as exc:
        log.error("%s", exc)
        return EXIT_TLS
    setup_tracing(settings.otel_exporter)
    memory = shared_memory.SharedMemory(name=memory_name)
    counter = SharedInFlightCounter(memory, lock, row=index, rows=rows)
    holder = RoutingTableHolder()
    proxy = BatchProxy(settings.batch_socket) if settings.batch_socket else None
    router = RouterApp(
        replace(settings.router, ssl_context=server_tls.context, upstream_ssl_context=replica_context,
                access_log=worker_access_log(settings.router.access_log, index)),
        holder, token_verifier=TokenIssuer(settings.token_secret).verify,
        extra_routes=proxy.routes() if proxy else None, in_flight=counter)
    server_tls.attach_metrics(TLSMetrics(router.recorder.registry))
    first_table = asyncio.Event()

    def handle(message: dict):
        op = message["op"]
        if op == "table":
            counter.assign(message["slots"])
            holder.swap(message["table"])
            first_table.set()
        elif op == "metrics":
            return generate_latest(router.recorder.registry)
        elif op == "reload_tls":
            loop.create_task(asyncio.to_thread(server_tls.reload))
        elif op == "reload_replica_client":
            if replica_context is not None:
                folder = settings.replica_client_dir
                replica_context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        elif op == "stop":
            stop.set()
        else:
            raise ValueError(f"unknown operation {op!r}")
        return None

    channel = await Channel.over(sock, handle)
    reading = loop.create_task(channel.run(), name="worker-channel")
    reading.add_done_callback(lambda _t: stop.set())  # the main process is gone: drain and exit
    try:
        waiting = loop.create_task(first_table.wait())
        await asyncio.wait([waiting, loop.create_task(stop.wait())], timeout=FIRST_TABLE_TIMEOUT_S,
                           return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() or not first_table.is_set():
            return 0 if stop.is_set() else 1
        if proxy is not None:
            await proxy.start()
        await router.start()
        if settings.tls_reload_interval_s > 0:
            server_tls.watch(settings.tls_reload_interval_s)
        channel.send({"op": "listening", "pid": os.getpid(), "port": router.port})
        freeze_startup_objects()
        reporting = loop.create_task(_report(channel, router, stop), name="worker-stats")
        await stop.wait()
        reporting.cancel()
        await router.drain(settings.drain_timeout_s)
        return 0
    finally:
        await router.close()
        await server_tls.close()
        if proxy is not None:
            await proxy.close()
        channel.close()
        reading.cancel()
        counter.close()
        memory.close()


async def _report(channel: Channel, router: RouterApp, stop: asyncio.Event) -> None:
    """Push what the control plane reads: utilization, load, ejected replicas."""
    admission = router.admission
    while not stop.is_set():
        await asyncio.sleep(STATS_INTERVAL_S)
        windows, load = {}, {}
        for key in admission.keys():
            window = admission.take_window(key)
            windows[key] = window.average_level * window.window_s
            load[key] = (admission.busy(key), admission.queued(key))
        try:
            channel.send({"op": "stats", "integrals": windows, "load": load,
                          "ejected": list(router.ejector.ejected())})
        except ConnectionError:
            return
