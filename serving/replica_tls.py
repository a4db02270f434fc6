"""Router→replica mTLS for the local backend: certificates from the internal CA.

Each replica gets a short-lived server certificate for 127.0.0.1 in
`STATE_DIR/tls/replicas/REPLICA/`; the router presents a client certificate from the
same CA and trusts only that CA. Certificates are renewed in place every hour (a
replica's model server watches its files; the router reloads its client chain), long
before they expire.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from pathlib import Path

from tls import InternalCA, IssuedFiles
from .tasks import cancel_and_wait

log = logging.getLogger("scoregate.replica_tls")

RENEW_EVERY_S = 3600.0


class ReplicaTLS:
    def __init__(self, tls_dir: Path) -> None:
        self._tls_dir = Path(tls_dir)
        self._ca = InternalCA.load_or_create(self._tls_dir / "internal-ca")
        self._client_dir = self._tls_dir / "router-client"
        self._client_files = self._ca.ensure_client_files(self._client_dir)
        self.client_context: ssl.SSLContext = self._ca.client_context(self._client_files)
        self._task: asyncio.Task | None = None
        # Called after the client certificate was renewed and loaded (e.g. to have the
        # worker processes of `--workers` load it too).
        self.on_client_renewed = None

    def issue(self, folder: Path) -> IssuedFiles:
        """Blocking: the server certificate of one replica (called from a worker thread)."""
        return self._ca.ensure_server_files(folder, ["127.0.0.1"])

    def renew(self) -> IssuedFiles | None:
        """Blocking: reissue what is past two thirds of its life; the new router client
        files if they were reissued (to load from the event loop's thread)."""
        files = self._ca.ensure_client_files(self._client_dir)
        replicas = self._tls_dir / "replicas"
        for folder in replicas.iterdir() if replicas.is_dir() else ():
            self._ca.ensure_server_files(folder, ["127.0.0.1"])
        return files if files.reissued else None

    @property
    def client_dir(self) -> Path:
        """The router's client certificate files (cert.pem, key.pem)."""
        return self._client_dir

    @property
    def ca_file(self) -> Path:
        return self._ca.cert_file

    def forget(self, replica_id: str) -> None:
        shutil.rmtree(self._tls_dir / "replicas" / replica_id, ignore_errors=True)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                files = await asyncio.to_thread(self.renew)
                if files is not None:
                    self.client_context.load_cert_chain(files.cert, files.key)
                    if self.on_client_renewed is not None:
                        self.on_client_renewed()
            except Exception:
                log.exception("renewing replica certificates failed")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
