"""The router's serving certificate from a kubernetes.io/tls Secret, rotated on change.

tls.ServerTLS is built from files (OpenSSL loads chains only from files), so at start the
Secret's `tls.crt` / `tls.key` go through a private temporary folder that is removed at
once (as tls/loader.py does for every load). Then the Secret is watched — by name, which
is all RBAC's resourceNames allows to list and watch — and every change is handed to
`ServerTLS.reload_pem`: new handshakes get the new certificate, open connections keep
theirs. A Secret that does not load (bad PEM, key mismatch, expired) is refused by
ServerTLS and the previous certificate stays; a deleted Secret also leaves it in place.
Without a Secret the router serves a development certificate (tls.devcert).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tls import ServerTLS, TLSConfigError, ensure_dev_certificates

from .api import SECRETS, KubeApi, status_of
from .watching import ObjectCache

log = logging.getLogger("scoregate.kubernetes.certificates")
CERT_NAME = "default"


def parse_secret_ref(text: str, default_namespace: str, flag: str = "--tls-secret") -> tuple[str, str]:
    """`NAME` (in default_namespace) or `NAMESPACE/NAME`."""
    namespace, _, name = text.rpartition("/")
    if not name:
        raise ValueError(f"{flag} must be NAME or NAMESPACE/NAME, got {text!r}")
    return namespace or default_namespace, name


def _pem_pair(secret: dict) -> tuple[bytes, bytes]:
    data = secret.get("data") or {}
    if "tls.crt" not in data or "tls.key" not in data:
        meta = secret.get("metadata") or {}
        raise TLSConfigError(f"Secret {meta.get('namespace')}/{meta.get('name')} has no tls.crt and tls.key")
    return base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])


def _server_tls_from_pem(cert_pem: bytes, key_pem: bytes) -> ServerTLS:
    folder = Path(tempfile.mkdtemp(prefix="scoregate-tls-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        cert, key = folder / "tls.crt", folder / "tls.key"
        for path, data in ((cert, cert_pem), (key, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(data)
        return ServerTLS.from_files(cert, key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class SecretCertificate:
    """ServerTLS fed from one Secret; start() fails if the Secret is missing or unusable."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self._api, self.namespace, self.name = api, namespace, name
        self._cache = ObjectCache(api, SECRETS, namespaces=[namespace], field_selector=f"metadata.name={name}",
                                  on_event=self._on_event)
        self.server_tls: ServerTLS | None = None
        self._loaded: tuple[bytes, bytes] | None = None
        self._reloading: asyncio.Task | None = None
        self.reloads: list[str] = []  # outcomes, for tests and logs

    async def start(self, timeout_s: float = 60.0) -> ServerTLS:
        try:
            secret = await self._api.get(SECRETS, self.namespace, self.name)
        except Exception as exc:
            if status_of(exc) == 404:
                raise TLSConfigError(f"TLS Secret {self.namespace}/{self.name} does not exist") from None
            raise
        self._loaded = _pem_pair(secret)
        self.server_tls = await asyncio.to_thread(_server_tls_from_pem, *self._loaded)
        await self._cache.start(timeout_s)
        return self.server_tls

    async def close(self) -> None:
        await self._cache.close()
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)
        if self.server_tls is not None:
            await self.server_tls.close()

    def _on_event(self, kind: str, secret: dict) -> None:
        if self.server_tls is None:
            return
        if kind == "DELETED":
            log.warning("TLS Secret %s/%s was deleted; still serving the last certificate", self.namespace, self.name)
            return
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        """Load the newest content of the Secret (events seen meanwhile are folded in)."""
        while True:
            secret = self._cache.get(self.namespace, self.name)
            if secret is None or self.server_tls is None:
                return
            try:
                pair = _pem_pair(secret)
            except (TLSConfigError, ValueError) as exc:
                log.error("TLS Secret %s/%s refused: %s", self.namespace, self.name, exc)
                self.reloads.append("refused")
                return
            if pair == self._loaded:
                return
            result = await asyncio.to_thread(self.server_tls.reload_pem, CERT_NAME, *pair)
            self._loaded = pair
            self.reloads.append(result.outcome)


async def development_tls(directory: str | None) -> tuple[ServerTLS, str]:
    """A development CA + server certificate (kept in `directory`, else a temporary one)."""
    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="scoregate-router-dev-tls-"))
    paths = await asyncio.to_thread(ensure_dev_certificates, folder)
    return await asyncio.to_thread(ServerTLS.from_files, paths.cert, paths.key), str(paths.ca_cert)
