"""What the router tests put around `scoregate router --backend kubernetes`.

- `ModelReplica`: a real `python -m serving.modelserver` child process (iris blue), its
  port read from its ready line; it stands for one pod behind an EndpointSlice.
- `CountingUpstream`: a tiny model server that counts the requests in flight at once,
  to check a concurrency limit where it matters — at the replica.
- Builders that put, through the emulator's bookkeeping (so each is a watch event),
  what the controller and the EndpointSlice controller would: OnlineEndpoint and
  OnlineDeployment (with a rolled-out status), the keys Secret, one EndpointSlice per
  replica (local replicas listen on different ports, and the EndpointSlice controller
  puts endpoints with different ports in different slices too).
- `router_settings()`: a KubernetesRouter on loopback with fast coordination timings.
- `RouterProcess`: `scoregate router --backend kubernetes` as a real child process, on its
  own ports, ready once its /readyz answers; signalled by its PID only.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from serving.backends.kubernetes import names
from serving.backends.kubernetes.router_running import KubernetesRouterSettings

ROOT = Path(__file__).resolve().parents[2]
IRIS = ROOT / "examples" / "iris"
READY_PREFIX = "scoregate-modelserver listening on "
NS, SYSTEM = "team-a", "scoregate-system"
ENDPOINTS = ("scoregate.io", "v1", "onlineendpoints")
DEPLOYMENTS = ("scoregate.io", "v1", "onlinedeployments")
SECRETS = ("", "v1", "secrets")
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
FAST = dict(report_interval_s=0.1, member_timeout_s=1.0, stats_interval_s=0.5, lease_duration_s=1.0,
            renew_deadline_s=0.6, retry_period_s=0.1, settle_s=0.2, drain_timeout_s=2.0)


class ModelReplica:
    def __init__(self, variant: str = "blue") -> None:
        self.variant = variant
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task | None = None

    async def start(self, timeout_s: float = 15.0) -> "ModelReplica":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.modelserver", "--code", str(IRIS / self.variant),
            "--scoring-script", "score.py", "--model-dir", str(IRIS / self.variant / "model"), "--port", "0",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await self.process.stdout.readline()).decode()
                assert line, "the model server exited before it was ready"
                if line.startswith(READY_PREFIX):
                    self.port = int(line.strip().rsplit(":", 1)[1])
                    break
        self._drain = asyncio.get_running_loop().create_task(self.process.stdout.read())  # never block it
        return self

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)


class CountingUpstream:
    """POST /score sleeps `delay_s`; `peak` is the most requests it ever had at once."""

    def __init__(self, delay_s: float = 0.03) -> None:
        self.delay_s, self.current, self.peak, self.served = delay_s, 0, 0, 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _score(self, request: web.Request) -> web.Response:
        await request.read()
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.current -= 1
        self.served += 1
        return web.json_response({"ok": True})

    async def _alive(self, _request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def start(self) -> "CountingUpstream":
        app = web.Application()
        app.add_routes([web.post("/score", self._score), web.get("/", self._alive)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put_endpoint(apiserver, name: str, traffic: dict, *, auth_mode: str = "key",
                 keys: tuple[str, str] | None = ("primary-key-1", "secondary-key-1")) -> None:
    apiserver.create(ENDPOINTS, {"apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
                                 "metadata": {"name": name, "namespace": NS},
                                 "spec": {"authMode": auth_mode, "traffic": traffic}})
    if keys is not None:
        put_keys(apiserver, name, keys)


def put_keys(apiserver, endpoint: str, keys: tuple[str, str]) -> None:
    name = names.keys_secret_name(endpoint)
    data = {"primaryKey": _b64(keys[0]), "secondaryKey": _b64(keys[1])}
    if apiserver.update(SECRETS, NS, name, lambda s: s.__setitem__("data", data)) is None:
        apiserver.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                   "metadata": {"name": name, "namespace": NS,
                                                "labels": {names.LABEL_MANAGED_BY: names.MANAGER,
                                                           names.LABEL_COMPONENT: names.COMPONENT_KEYS,
                                                           names.LABEL_ENDPOINT: endpoint}},
                                   "data": data})


def put_deployment(apiserver, endpoint: str, name: str, *, limit: int = 1, rolled_out: bool = True,
                   max_queue_wait_ms: int = 500, obj: str | None = None) -> None:
    obj = obj or f"{endpoint}-{name}"
    apiserver.create(DEPLOYMENTS, {
        "apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment", "metadata": {"name": obj, "namespace": NS},
        "spec": {"endpointName": endpoint, "deploymentName": name,
                 "model": {"path": "https://models.example/iris.json"},
                 "codeConfiguration": {"code": "https://models.example/code.zip", "scoringScript": "score.py"},
                 "instanceCount": 1,
                 "requestSettings": {"maxConcurrentRequestsPerInstance": limit, "maxQueueWaitMs": max_queue_wait_ms,
                                     "requestTimeoutMs": 5000}}})
    if rolled_out:
        set_rolled_out(apiserver, obj)


def set_rolled_out(apiserver, obj: str) -> None:
    apiserver.update(DEPLOYMENTS, NS, obj, lambda o: o.__setitem__(
        "status", {"provisioningState": "Succeeded", "readyReplicas": 1, "replicas": 1}))


def slice_name(endpoint: str, deployment: str, pod: str) -> str:
    return f"{names.service_name(endpoint, deployment)}-{pod}"


def put_replica(apiserver, endpoint: str, deployment: str, pod: str, port: int, *, ready: bool = True) -> None:
    """The EndpointSlice the EndpointSlice controller keeps for one pod of the deployment's Service."""
    body = {"addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}
    name = slice_name(endpoint, deployment, pod)
    if apiserver.update(SLICES, NS, name, lambda s: s.update(body)) is None:
        apiserver.create(SLICES, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                  "metadata": {"name": name, "namespace": NS, "labels": {
                                      "kubernetes.io/service-name": names.service_name(endpoint, deployment),
                                      "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                                  **body})


def remove_replica(apiserver, endpoint: str, deployment: str, pod: str) -> None:
    apiserver.delete(SLICES, NS, slice_name(endpoint, deployment, pod))


def router_settings(kubeconfig: str, identity: str, tmp_path: Path, **overrides) -> KubernetesRouterSettings:
    values = dict(kubeconfig=kubeconfig, namespaces=(NS,), host="127.0.0.1", port=0, admin_host="127.0.0.1",
                  admin_port=0, coordination_namespace=SYSTEM, identity=identity,
                  dev_cert_dir=str(tmp_path / f"tls-{identity}"), **FAST)
    values.update(overrides)
    return KubernetesRouterSettings(**values)


def replicas_in(router, endpoint: str, deployment: str) -> list[str]:
    """The replica ids of a deployment in a KubernetesRouter's current table."""
    route = router.router.holder.current.endpoints.get(endpoint)
    found = route.deployments.get(deployment) if route else None
    return [r.replica_id for r in found.replicas] if found else []


def share_of(router, endpoint: str, deployment: str) -> int | None:
    route = router.router.holder.current.endpoints.get(endpoint)
    found = route.deployments.get(deployment) if route else None
    return found.request_settings.max_concurrent_requests_per_instance if found else None


# -- routers as child processes ----------------------------------------------------------

# Coordination timings for router processes: faster than a cluster's, slow enough for a
# busy 2-core machine (a renewal a few hundred ms late must not cost the Lease).
PROCESS_TIMING = dict(report_interval=0.25, member_timeout=4.0, lease_duration=3, lease_renew_deadline=2.0,
                      lease_retry_period=0.5)


def free_port() -> int:
    """A port free on 127.0.0.1 now (the child binds it a moment later; nothing else here races for it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RouterProcess:
    """`python -m serving.cli router --backend kubernetes ...` (the `scoregate router` verb) as a
    child process: its own scoring and admin ports, its log in a file, ended by its PID."""

    def __init__(self, kubeconfig: str, identity: str, tmp_path: Path, *, drain_timeout_s: float = 5.0,
                 **timing) -> None:
        self.identity = identity
        self.port, self.admin_port = free_port(), free_port()
        self.log_path = tmp_path / f"{identity}.log"
        flags = {**PROCESS_TIMING, **timing}
        self.argv = [sys.executable, "-m", "serving.cli", "router", "--backend", "kubernetes",
                     "--kubeconfig", kubeconfig, "--namespace", NS, "--lease-namespace", SYSTEM,
                     "--identity", identity, "--host", "127.0.0.1", "--port", str(self.port),
                     "--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port),
                     "--dev-cert-dir", str(tmp_path / f"tls-{identity}"), "--drain-timeout", str(drain_timeout_s)]
        for name, value in flags.items():
            self.argv += [f"--{name.replace('_', '-')}", str(value)]
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def score_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1/endpoint"

    async def start(self, timeout_s: float = 40.0) -> "RouterProcess":
        """Spawn, then poll /readyz until it answers 200 (the listener is up with a table)."""
        with open(self.log_path, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"router {self.identity} exited with {self.process.returncode} "
                                         f"before it was ready:\n{self.log_tail()}")
                try:
                    async with client.get(f"{self.admin_url}/readyz") as response:
                        if response.status == 200:
                            return self
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"router {self.identity} not ready within {timeout_s} s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def coordination(self) -> dict | None:
        """Its /coordination document, or None if it does not answer."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
                async with client.get(f"{self.admin_url}/coordination") as response:
                    return await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)  # os.kill(self.pid, sig): this process only

    async def wait(self, timeout_s: float) -> int:
        async with asyncio.timeout(timeout_s):
            return await self.process.wait()

    async def stop(self) -> None:
        """Teardown: SIGKILL if still running, and reap it."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        await self.wait(10.0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
