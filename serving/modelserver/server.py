"""``python -m serving.modelserver``: one model replica behind the gateway.

Order matters: the scoring script is imported and ``init()`` runs *before* the
port is bound, so a replica that answers ``GET /`` is one that can score.

Exit codes: 0 stopped cleanly (signal or parent gone), 2 bad arguments,
3 the scoring script failed to import or its ``init()`` raised, 4 cannot bind.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from serving.modelserver import lifecycle
from serving.modelserver.app import BODY_TIMEOUT_S, make_app
from serving.modelserver.loader import (
    ScoringScript,
    ScriptLoadError,
    call_init,
    check_run_signature,
    load_script,
    prepare_environment,
)
from serving.modelserver.swagger import load_swagger

log = logging.getLogger("scoregate.modelserver")

EXIT_OK = 0
EXIT_INIT_FAILED = 3
EXIT_BIND_FAILED = 4
SHUTDOWN_TIMEOUT_SECONDS = 5.0
THREAD_NAME_PREFIX = "scoring"
READY_LINE = "scoregate-modelserver listening on {address}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.modelserver",
        description="Serve one Azure ML style scoring script (init()/run()) over HTTP.",
    )
    parser.add_argument("--code", required=True, type=Path, help="code folder, prepended to sys.path")
    parser.add_argument("--scoring-script", required=True, help="scoring script, relative to --code")
    parser.add_argument("--model-dir", type=Path, default=None, help="exported as AZUREML_MODEL_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", required=True, type=_port, help="port to bind; 0 picks a free one")
    parser.add_argument("--workers-threads", type=_positive_int, default=None,
                        help="threads that run run() concurrently (default: $WORKER_COUNT, as in Azure ML, else 1)")
    parser.add_argument("--body-timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="longest a request body may take to arrive, then 408 "
                             f"(default: $BODY_TIMEOUT_S, else {BODY_TIMEOUT_S:g})")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (mTLS with the router)")
    parser.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="require client certificates from this CA (the gateway's internal CA)")
    return parser


def _server_tls(args: argparse.Namespace):
    """The replica side of router→replica mTLS (None: plain HTTP on loopback).

    Files are watched: the gateway reissues short-lived replica certificates in place.
    """
    if args.tls_cert is None:
        return None
    from tls import CertificateSource, ServerTLS

    source = CertificateSource("replica", args.tls_cert, args.tls_key)
    return ServerTLS([source], client_ca_file=args.tls_client_ca)


def _bind(host: str, port: int) -> socket.socket:
    """Bind one socket ourselves so that port 0 yields exactly one port to report."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _format_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(args: argparse.Namespace, script: ScoringScript, parent_pid: int,
                executor: ThreadPoolExecutor) -> int:
    """Serve until a signal arrives or the parent goes away, then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reasons: list[str] = []

    def request_stop(reason: str) -> None:
        if not stop.is_set():
            reasons.append(reason)
            stop.set()

    lifecycle.install_stop_signals(loop, request_stop)
    app = make_app(script, executor, load_swagger(args.code, script.name, script), args.workers_threads,
                   args.body_timeout)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        log.error("cannot bind %s:%s: %s", args.host, args.port, exc)
        await runner.cleanup()
        return EXIT_BIND_FAILED
    server_tls = _server_tls(args)
    site = web.SockSite(runner, sock, backlog=1024,
                        ssl_context=server_tls.context if server_tls is not None else None)
    await site.start()
    if server_tls is not None:
        server_tls.watch(60.0)
    print(READY_LINE.format(address=_format_address(sock)), flush=True)
    watcher = asyncio.create_task(lifecycle.watch_parent(parent_pid, request_stop))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        if server_tls is not None:
            await server_tls.close()
        log.info("shutting down: %s", reasons[0] if reasons else "stopped")
        await _drain(runner)
        sock.close()
    return EXIT_OK


async def _drain(runner: web.AppRunner) -> None:
    """Stop accepting, let in-flight requests finish, but never wait much past the budget.

    aiohttp waits ``shutdown_timeout`` for handlers and then as long again for
    the cancelled ones; a run() stuck in a thread would use both, so cap it.
    """
    try:
        await asyncio.wait_for(runner.cleanup(), SHUTDOWN_TIMEOUT_SECONDS + 0.5)
    except asyncio.TimeoutError:
        log.warning("in-flight requests still running after %.0f s; closing anyway", SHUTDOWN_TIMEOUT_SECONDS)


def _exit_past_stuck_threads(code: int, budget: float = 0.5) -> None:
    """A run() that never returns must not keep the process alive after shutdown."""
    deadline = time.monotonic() + budget
    for thread in threading.enumerate():
        if thread.name.startswith(THREAD_NAME_PREFIX):
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and t.name.startswith(THREAD_NAME_PREFIX) for t in threading.enumerate()):
        log.warning("run() still busy after shutdown; exiting anyway")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _load(args: argparse.Namespace) -> ScoringScript | None:
    """Import the script and call init(); None (after printing why) on failure."""
    code_dir = args.code.resolve()
    model_dir = args.model_dir.resolve() if args.model_dir is not None else None
    prepare_environment(code_dir, model_dir)
    started = time.monotonic()
    try:
        script = check_run_signature(load_script(code_dir, args.scoring_script))
        call_init(script)
    except ScriptLoadError as exc:  # the contract, not user code, failed: its traceback is ours and says nothing
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        log.error("scoring script %s failed to initialize", args.scoring_script)
        return None
    except (Exception, SystemExit):
        traceback.print_exc(file=sys.stderr)
        log.error("scoring script %s failed to initialize", args.scoring_script)
        return None
    log.info("loaded %s, init() done in %.2f s", script.path.name, time.monotonic() - started)
    return script


def main(argv: list[str] | None = None) -> int:
    parent_pid = os.getppid()
    lifecycle.set_parent_death_signal()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers_threads is None:
        try:
            args.workers_threads = _positive_int(os.environ.get("WORKER_COUNT") or "1")
        except (ValueError, argparse.ArgumentTypeError):
            parser.error(f"WORKER_COUNT must be a whole number of at least 1, got {os.environ['WORKER_COUNT']!r}")
    if args.body_timeout is None:
        try:
            args.body_timeout = _seconds(os.environ.get("BODY_TIMEOUT_S") or str(BODY_TIMEOUT_S))
        except (ValueError, argparse.ArgumentTypeError):
            parser.error(f"BODY_TIMEOUT_S must be a positive number of seconds, got {os.environ['BODY_TIMEOUT_S']!r}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    script = _load(args)
    if script is None:
        return EXIT_INIT_FAILED
    executor = ThreadPoolExecutor(max_workers=args.workers_threads, thread_name_prefix=THREAD_NAME_PREFIX)
    with asyncio.Runner(loop_factory=lifecycle.event_loop_factory()) as runner:
        code = runner.run(serve(args, script, parent_pid, executor))
    executor.shutdown(wait=False, cancel_futures=True)
    _exit_past_stuck_threads(code)
    return code
