"""Run the batch service alone: `python -m serving.batch.standalone --state-dir D ...`.

The same BatchService and routes the gateway serves, on their own HTTPS port (with a
development certificate) and an admin port, without routers or replicas. It exists for
trying batch scoring scripts and for tests that must kill the process holding the jobs
(kill -9) and start it again on the same state dir. It writes D/gateway.json like
`scoregate serve`, so `scoregate job …` finds it. StandaloneProcess drives one from a
parent process.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import web

from router.aiohttp_hardening import app_runner

from ..admin_errors import install as install_request_ids
from ..manifests import ManifestError, read_documents
from ..statedir import GatewayInfo, StateDir, StateDirUnusable
from .manifests import is_batch, parse_batch_all
from .scheduler import JOB_RETENTION_DAYS
from .service import BatchService

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _admin_middleware(token: str):
    @web.middleware
    async def check(request: web.Request, handler):
        header = request.headers.get("Authorization", "")
        given = header[7:].encode() if header[:7].lower() == "bearer " else b""
        if not hmac.compare_digest(given, token.encode()):
            return web.json_response({"code": "Unauthorized", "message": "missing or wrong admin token"}, status=401)
        return await handler(request)

    return check


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from tls import ensure_dev_certificates, server_context

    state = StateDir(Path(args.state_dir))
    state.create()
    lock = state.acquire()  # held until this process ends: one service per state dir
    paths = await asyncio.to_thread(ensure_dev_certificates, state.tls_dir, ["localhost", "127.0.0.1"])
    context = server_context(str(paths.cert), str(paths.key))
    service = BatchService(state.root, [Path(r) for r in args.data_root], max_running_jobs=args.max_running_jobs,
                           drain_timeout_s=args.drain_timeout, init_timeout_s=args.init_timeout,
                           max_request_bytes=args.max_request_bytes, max_items=args.max_items,
                           job_retention_days=args.job_retention_days)
    if args.file:
        documents = [d for d in read_documents(args.file) if is_batch(d)]
        endpoints, deployments = parse_batch_all(documents, service.endpoint_names(), service.deployment_keys())
        service.apply(endpoints, deployments)
    token = secrets.token_urlsafe(24)
    scoring = web.Application()
    scoring.add_routes(service.routes())
    admin = web.Application(middlewares=[_admin_middleware(token)])
    install_request_ids(admin)
    admin.add_routes(service.admin_routes())
    runners = [app_runner(scoring, access_log=None, handle_signals=False),
               app_runner(admin, access_log=None, handle_signals=False)]
    await service.start()
    try:
        for runner in runners:
            await runner.setup()
        await web.TCPSite(runners[0], args.host, args.port, ssl_context=context).start()
        await web.TCPSite(runners[1], args.host, 0).start()
        service.scoring_url = f"https://{args.host}:{runners[0].addresses[0][1]}"
        state.write_gateway(GatewayInfo(admin_url=f"http://{args.host}:{runners[1].addresses[0][1]}",
                                        admin_token=token, scoring_url=service.scoring_url,
                                        ca_cert=str(paths.ca_cert), pid=os.getpid()))
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await service.close()
        state.remove_gateway(os.getpid())
        os.close(lock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.batch.standalone")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--data-root", action="append", default=[])
    parser.add_argument("-f", "--file", action="append", default=[], help="batch YAML file or folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-running-jobs", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--init-timeout", type=float, default=300.0)
    parser.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--max-items", type=int, default=1_000_000)
    parser.add_argument("--job-retention-days", type=float, default=JOB_RETENTION_DAYS,
                        help="remove an ended job (its output, logs and record) this many days after it ended;"
                        f" 0 keeps every job (default {JOB_RETENTION_DAYS:g})")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve(args, stop)

    try:
        asyncio.run(run())
    except ManifestError as exc:
        logging.getLogger("scoregate.batch").error("%s", exc)
        return 2
    except StateDirUnusable as exc:
        logging.getLogger("scoregate.batch").error("cannot start: %s", exc)
        return 1
    return 0


class StandaloneProcess:
    """A standalone batch service in a child process: start, kill -9, start again."""

    def __init__(self, state_dir: Path, data_roots: list[Path], files: list[Path] = (),
                 extra_args: list[str] = (), env: dict[str, str] | None = None) -> None:
        self.state = StateDir(Path(state_dir))
        self.args = [f"--data-root={r}" for r in data_roots] + [f"--file={f}" for f in files] + list(extra_args)
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.info: GatewayInfo | None = None
        self.log_path = Path(state_dir).with_name(Path(state_dir).name + "-batch.log")

    def start(self, env: dict[str, str] | None = None, timeout_s: float = 30.0) -> "StandaloneProcess":
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), full_env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving.batch.standalone", "--state-dir", str(self.state.root), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=str(_PROJECT_ROOT))
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the batch service exited with {self.process.returncode}:\n{self.log()}")
            info = self.state.read_gateway()
            if info is not None and info.pid == self.process.pid:
                self.info = info
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the batch service did not start within {timeout_s} s:\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def exit_code(self, timeout_s: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def admin(self, method: str, path: str, body: dict | None = None):
        assert self.info is not None
        request = urllib.request.Request(
            f"{self.info.admin_url}/api/v1{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.info.admin_token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def key(self, endpoint: str) -> str:
        return self.admin("GET", f"/batch/endpoints/{endpoint}/keys")["primaryKey"]

    def request(self, method: str, path: str, body: bytes | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        """An HTTPS call to the scoring port: (status, headers, body), errors included."""
        assert self.info is not None
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(f"{self.info.scoring_url}{path}", data=data, method=method,
                                         headers=headers or {})
        context = ssl.create_default_context(cafile=self.info.ca_cert)
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


if __name__ == "__main__":
    sys.exit(main())
