"""Fixtures: a real HTTP Kubernetes API (ApiServerEmulator over kmock), the real
kubernetes-asyncio client configured from a kubeconfig file, and a fake cluster that plays
the ReplicaSet controller, the scheduler and the kubelet (cluster.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path

import kmock
import pytest
import yaml

from serving.backends.kubernetes.api import KubeApi, load_api_client

from tests.kubernetes.apiserver import ApiServerEmulator
from tests.kubernetes.cluster import FakeCluster

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))


@pytest.fixture
async def apiserver():
    async with ApiServerEmulator() as server, kmock.Server(server):
        server.install_crds(CRD_FILES)
        yield server
        await server.drop_watches()  # as a stopping API server does; else aiohttp waits 60 s for them


@pytest.fixture
def kubeconfig(apiserver, tmp_path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": str(apiserver.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
    }))
    return str(path)


@pytest.fixture
async def kube_api(kubeconfig):
    api = KubeApi(await load_api_client(kubeconfig))
    yield api
    await api.close()


@pytest.fixture
async def cluster(apiserver):
    fake = FakeCluster(apiserver)
    fake.start()
    yield fake
    await fake.close()


async def eventually(check, timeout_s: float = 5.0, interval_s: float = 0.02, *,
                     what: str = "condition", context=lambda: ""):
    """Wait until check() (awaited when it returns an awaitable) gives a truthy value, and
    return it; else fail with the last value and `context()` (e.g. process log tails)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            extra = context()
            raise AssertionError(f"{what} not met within {timeout_s} s; last value: {value!r}"
                                 + (f"\n{extra}" if extra else ""))
        await asyncio.sleep(interval_s)
