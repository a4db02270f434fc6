"""`scoregate batch-runner --backend kubernetes` as a child process against the emulated API
server, the way the batch runner Deployment (deploy/batch-runner.yaml) runs it: it takes
the Lease `scoregate-batch`, acts on BatchEndpoint / BatchDeployment objects created
through the API, scores a job submitted over HTTPS with the key from the endpoint's
Secret (real worker processes), and on SIGTERM exits 0 and lets go of the Lease at once.
Every request it makes to the API server is recorded and checked against the RBAC shipped
in deploy/ (allowed, and nothing granted that it does not use). Every wait is bounded and
generous for a busy 2-core machine."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from serving.backends.kubernetes.api import BATCH_DEPLOYMENTS, BATCH_ENDPOINTS
from tests.kubernetes.conftest import eventually
from tests.kubernetes.rbac import Grant, apiserver, kubeconfig_with_token, refused, shipped_rbac, unused  # noqa: F401
from tests.kubernetes.router_cluster import ROOT, SYSTEM, free_port
from tests.kubernetes.test_batch_crs import DATA, NS, batch_deployment, batch_endpoint, key_of, status

LEASES = ("coordination.k8s.io", "v1", "leases")
RUNNER_TOKEN = "batch-runner-token"  # tells the runner's requests from the test's own
RBAC_FILES = ("rbac/batch-runner.yaml", "samples/team-namespace.yaml")


class BatchRunnerProcess:
    """The `scoregate batch-runner` verb as a child process: its own HTTPS port, its log in
    a file, ended by its PID."""

    def __init__(self, kubeconfig: str, tmp_path: Path, identity: str = "batch-runner-1") -> None:
        self.identity = identity
        self.port = free_port()
        self.state_dir = tmp_path / "batch-state"
        self.log_path = tmp_path / "batch-runner.log"
        self.argv = [sys.executable, "-m", "serving.cli", "batch-runner", "--backend", "kubernetes",
                     "--kubeconfig", kubeconfig, "--namespace", NS, "--state-dir", str(self.state_dir),
                     "--data-root", str(DATA), "--host", "127.0.0.1", "--port", str(self.port),
                     "--lease-namespace", SYSTEM, "--identity", identity]
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.state_dir / "tls" / "ca.pem"))

    async def start(self, timeout_s: float = 60.0) -> "BatchRunnerProcess":
        """Spawn, then poll the HTTPS port until it answers (its certificate checked)."""
        with open(self.log_path, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.returncode is not None:
                raise AssertionError(f"the batch runner exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2),
                                                 connector=aiohttp.TCPConnector(ssl=self.ssl_context())) as client:
                    async with client.get(f"{self.url}/api/v1/batch/nothing/jobs") as response:
                        if response.status == 404:
                            return self
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass  # not listening yet (or its certificate not written yet)
            if time.monotonic() > deadline:
                raise AssertionError(f"the batch runner did not serve within {timeout_s} s:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Teardown: SIGKILL if still running, and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)  # this process only
            async with asyncio.timeout(10):
                await self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def until(check, timeout_s: float, what: str, runner: BatchRunnerProcess, interval_s: float = 0.1):
    """eventually(), failing with the runner's log tail."""
    return await eventually(check, timeout_s, interval_s, what=what, context=runner.log_tail)


def lease_holder(apiserver) -> str | None:
    lease = apiserver.get(LEASES, SYSTEM, "scoregate-batch")
    return (lease.get("spec") or {}).get("holderIdentity") if lease else None


@pytest.fixture
async def batch_runner(kubeconfig, tmp_path):
    runner_kubeconfig = kubeconfig_with_token(kubeconfig, RUNNER_TOKEN, tmp_path / "runner-kubeconfig")
    runner = BatchRunnerProcess(runner_kubeconfig, tmp_path)
    try:
        yield await runner.start()
    finally:
        await runner.stop()


async def test_the_batch_runner_verb_runs_a_job_from_custom_resources(apiserver, kube_api, batch_runner):
    runner = batch_runner
    assert lease_holder(apiserver) == runner.identity

    await kube_api.create(BATCH_ENDPOINTS, NS, batch_endpoint())
    await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment())
    await until(lambda: status(apiserver, "batchendpoints", "iris-batch").get("provisioningState") == "Succeeded"
                and status(apiserver, "batchdeployments", "iris-batch-classifier").get("provisioningState")
                == "Succeeded", 30, "the batch resources Succeeded", runner)
    key = await until(lambda: key_of(apiserver), 10, "the keys Secret", runner)
    headers = {"Authorization": f"Bearer {key}"}
    jobs = f"{runner.url}/api/v1/batch/iris-batch/jobs"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(ssl=runner.ssl_context())) as client:
        async with client.post(jobs, json={"input": {"type": "uri_folder", "path": "flowers"}},
                               headers=headers) as response:
            assert response.status == 202, await response.text()
            job = await response.json()
        assert job["endpoint_name"] == "iris-batch" and job["deployment_name"] == "classifier"

        async def finished():
            async with client.get(f"{jobs}/{job['id']}", headers=headers) as answer:
                body = await answer.json()
            return body if body["status"] in ("Completed", "Failed", "Canceled") else None
        done = await until(finished, 90, "the job finished", runner, interval_s=0.2)
        assert done["status"] == "Completed", done
        assert done["items"]["succeeded"] == done["items"]["total"] > 0
        async with client.get(f"{jobs}/{job['id']}/output", headers=headers) as answer:
            assert answer.status == 200
            rows = (await answer.text()).splitlines()
    flowers = sorted(p.name for p in (DATA / "flowers").iterdir())
    assert [row.split(",")[0] for row in rows] == flowers

    # SIGTERM (what the kubelet sends when the Deployment is updated or scaled to 0): a clean
    # exit that lets go of the Lease at once, so the next pod need not wait for it to expire.
    runner.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await runner.process.wait() == 0, runner.log_tail()
    assert not lease_holder(apiserver)
    assert (runner.state_dir / "batch.db").exists()  # the state the next pod resumes from (the volume)

    # Least privilege: the shipped RBAC allows every request the runner made, and grants
    # nothing it did not use (but update on batchendpoints/finalizers, which the API server
    # checks when a Secret owned by a BatchEndpoint, blockOwnerDeletion, is created).
    granted = shipped_rbac(RBAC_FILES, "scoregate-batch-runner")
    assert {g.scope for g in granted} == {NS, SYSTEM}
    made = apiserver.requests_of(RUNNER_TOKEN)
    assert refused(granted, made) == [], "requests the RBAC in deploy/ would refuse"
    assert unused(granted, made) - {Grant(NS, "scoregate.io", "batchendpoints/finalizers", None, "update")} \
        == set(), "granted but never used"


def test_the_verb_documents_its_flags():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "serving.cli", "batch-runner", "-h"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--kubeconfig", "--namespace", "--all-namespaces", "--state-dir", "--data-root", "--port",
                 "--tls-cert", "--tls-key", "--no-leader-election", "--lease-namespace"):
        assert flag in out.stdout
    bad = subprocess.run([sys.executable, "-m", "serving.cli", "batch-runner", "--backend", "kubernetes",
                          "--state-dir", "x", "--tls-cert", "only-a-cert.pem"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--tls-cert and --tls-key go together" in bad.stderr


def test_the_batch_runner_manifest_is_a_single_owner_of_its_volume_and_restricted():
    """deploy/batch-runner.yaml: one pod at a time (1 replica, Recreate: the old pod is gone
    before the new one mounts the ReadWriteOnce volume), its claims and TLS Secret exist
    or are the documented ones, the Service reaches the HTTPS port, the flags parse, and the
    pod meets the "restricted" Pod Security Standard of scoregate-system."""
    from serving.backends.kubernetes.batch_running import add_arguments, settings_from_args
    from tests.kubernetes.test_manifests import pod_security_violations

    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "batch-runner.yaml").read_text()) if d]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [service] = [d for d in docs if d["kind"] == "Service"]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert {d["metadata"]["namespace"] for d in docs} == {SYSTEM}
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod_security_violations(pod, "restricted") == []
    assert pod["serviceAccountName"] == "scoregate-batch-runner"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} == claims
    [container] = pod["containers"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}

    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--backend")
    add_arguments(parser)
    settings = settings_from_args(parser.parse_args(container["args"][1:]))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts[settings.state_dir]]["persistentVolumeClaim"]["claimName"] == "scoregate-batch-state"
    assert all(root in mounts for root in settings.data_roots) and settings.data_roots
    assert Path(settings.tls_cert).parent.as_posix() in mounts and settings.leader_election
    assert settings.port == int(next(p["containerPort"] for p in container["ports"] if p["name"] == "https"))


def test_the_batch_runner_takes_a_job_retention_and_refuses_a_negative_one():
    """Retention was fixed at 30 days on a cluster: `batch-runner` had no flag for it."""
    import argparse

    from serving.backends.kubernetes.batch_running import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args(["--state-dir", "/s"])).job_retention_days == 30
    assert settings_from_args(parser.parse_args(["--state-dir", "/s", "--job-retention-days", "0"])).job_retention_days == 0
    with pytest.raises(ValueError, match="--job-retention-days must be 0 or more"):
        settings_from_args(parser.parse_args(["--state-dir", "/s", "--job-retention-days", "-1"]))
