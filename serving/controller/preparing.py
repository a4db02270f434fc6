"""The first stages of a rollout: environment, model download, code download.

Runs once per deployment version, before any replica starts, so a version that cannot
work fails fast with its stage and reason instead of crash-looping replicas:
- environment: the instance type exists and fits this machine; the command or
  inference server the environment names can be found;
- model_download: a local `model.path` (or file://) must exist; an http(s):// one is
  downloaded once into the state dir (through HTTPS_PROXY / HTTP_PROXY / NO_PROXY like
  any HTTP client here), size-bounded, and checked against `model.sha256` when given;
- code_download: the code folder and scoring script exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import aiohttp

from ..backends import Artifacts
from ..backends.launching import LaunchError, check_environment
from ..resources import DEFAULT_INSTANCE, Deployment, InstanceType
from .rollout import Rollout

MAX_MODEL_BYTES = 20 * 1024 ** 3
CHUNK = 1 << 20


class StageFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


class Preparer:
    def __init__(self, cache_dir: Path, instance_types: Callable[[], list[InstanceType]]) -> None:
        self._cache_dir = Path(cache_dir)
        self._instance_types = instance_types

    async def prepare(self, deployment: Deployment, rollout: Rollout | None,
                      clock: Callable[[], float]) -> Artifacts:
        def enter(stage: str) -> None:
            if rollout is not None:
                rollout.enter(stage, clock())

        enter("environment")
        known = {t.name: t for t in await asyncio.to_thread(self._instance_types)}
        known.setdefault(DEFAULT_INSTANCE.name, DEFAULT_INSTANCE)
        # The content the version was made with (a rollback runs the old one again).
        instance_type = deployment.resolved_instance_type or known.get(deployment.instance_type)
        if instance_type is None:
            raise StageFailed("environment", f"no instance type '{deployment.instance_type}'")
        try:
            await asyncio.to_thread(check_environment, deployment, instance_type)
        except LaunchError as exc:
            raise StageFailed("environment", str(exc)) from None

        enter("model_download")
        model_dir = await self._model(deployment)

        enter("code_download")
        code_dir = deployment.code
        if code_dir is not None:
            if not Path(code_dir).is_dir():
                raise StageFailed("code_download", f"code folder {code_dir} does not exist")
            script = Path(code_dir) / (deployment.scoring_script or "score.py")
            if not script.is_file():
                raise StageFailed("code_download", f"scoring script {script} does not exist")
        return Artifacts(model_dir=model_dir, code_dir=code_dir, instance_type=instance_type)

    async def _model(self, deployment: Deployment) -> str | None:
        path = deployment.model_path
        if path is None:
            return None
        if path.startswith(("http://", "https://")):
            return str(await self._download(path, deployment.model_sha256))
        local = Path(path)
        if not local.exists():
            raise StageFailed("model_download", f"model path {path} does not exist")
        if local.is_file():
            if deployment.model_sha256:
                actual = await asyncio.to_thread(_sha256_of, local)
                if actual != deployment.model_sha256:
                    raise StageFailed("model_download", f"sha256 mismatch for {path}: expected "
                                      f"{deployment.model_sha256}, got {actual}")
            return str(local.parent)  # AZUREML_MODEL_DIR is a folder, as in Azure ML
        return str(local)

    async def _download(self, url: str, sha256: str | None) -> Path:
        name = os.path.basename(urlsplit(url).path) or "model"
        folder = self._cache_dir / hashlib.sha256(f"{url}|{sha256}".encode()).hexdigest()[:16]
        target, marker = folder / name, folder / ".complete"
        if marker.exists() and target.exists():
            return folder
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        partial = folder / f".{name}.partial"
        digest = hashlib.sha256()
        size = 0
        try:
            # trust_env: HTTPS_PROXY / HTTP_PROXY / NO_PROXY as the machine is configured.
            async with aiohttp.ClientSession(trust_env=True) as session:
                async with session.get(url) as response:
                    if response.status != 200:
                        raise StageFailed("model_download", f"GET {url} answered {response.status}")
                    with open(partial, "wb") as out:
                        async for chunk in response.content.iter_chunked(CHUNK):
                            size += len(chunk)
                            if size > MAX_MODEL_BYTES:
                                raise StageFailed("model_download", f"{url} is larger than {MAX_MODEL_BYTES} bytes")
                            digest.update(chunk)
                            await asyncio.to_thread(out.write, chunk)
        except (aiohttp.ClientError, OSError) as exc:
            raise StageFailed("model_download", f"GET {url} failed: {exc}") from None
        if sha256 and digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise StageFailed("model_download", f"sha256 mismatch for {url}: expected {sha256}, "
                              f"got {digest.hexdigest()}")
        os.replace(partial, target)
        marker.write_text(digest.hexdigest())
        return folder


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
