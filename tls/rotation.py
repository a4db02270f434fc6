"""ServerTLS: the TLS side of one listener, with SNI and certificate rotation.

A listener (aiohttp's TCPSite, asyncio.start_server) keeps the one SSLContext it was
given for its whole life, and a context's certificate cannot be swapped safely while
connections are being set up from it (reloads run in a worker thread). So the
listener gets a *front* context that never changes after startup, and its
`sni_callback` switches every new connection to the context of the certificate
chosen from the current CertificateSet. Rotation builds a new context and a new set
and swaps the reference: new handshakes see the new certificate, connections already
open keep the context they were set up with.

A new file that does not load (bad PEM, wrong key, expired) is refused: the old
certificate stays, the error is logged naming the file, and a metric counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

from .errors import TLSConfigError
from .loader import CertificateSource, PemMaterial, ServingCertificate, build_certificate
from .metrics import TLSMetrics
from .pem import StrPath, read_file
from .sni import CertificateSet
from .tickets import install_ticket_keys

log = logging.getLogger("scoregate.tls")

MIN_WATCH_INTERVAL_S = 0.05
MAX_WATCH_INTERVAL_S = 3600.0
MAX_REMEMBERED_NAMES = 256  # server names whose certificate choice is kept


@dataclasses.dataclass(frozen=True)
class ReloadResult:
    name: str
    outcome: str  # "reloaded", "unchanged", "refused" or "pending" (change seen, settling)
    error: str | None = None
    serial: int | None = None  # of the certificate served after this attempt


class ServerTLS:
    """Certificates of one listener, chosen by SNI, reloadable without a restart.

    Construct it at startup (raises TLSConfigError naming the file if any certificate
    cannot be used), hand `context` to the listener, start `watch()` and call
    `close()` at shutdown.
    """

    def __init__(
        self,
        sources: Sequence[CertificateSource],
        *,
        default: str | None = None,
        client_ca_file: StrPath | None = None,
        metrics: TLSMetrics | None = None,
        listener: str = "https",
        ticket_keys: bytes | None = None,
    ) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise TLSConfigError(f"certificate names must be unique: {names}")
        self._sources = {s.name: s for s in sources}
        self._client_ca = Path(client_ca_file) if client_ca_file is not None else None
        self._metrics = metrics
        self.listener = listener
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # name -> digest seen once, waiting to settle
        self._refused: dict[str, str] = {}  # name -> digest that failed (not retried by watch)
        self._watch_task: asyncio.Task[None] | None = None

        ca = self._read_client_ca()
        materials = {s.name: s.read() for s in sources}
        certs = [self._build(n, m, ca, m.digest + _digest(ca)) for n, m in materials.items()]
        # What the files held when last loaded from them; the watcher compares to it.
        self._file_digest = {c.name: c.digest for c in certs}
        configured = {s.name: s.server_names for s in sources if s.server_names}
        self._serve(CertificateSet(certs, default, configured))
        self.context = self._front_context(materials[self._set.default.name], ca)
        # Shared with the other processes serving this port (tls.tickets), or the context's own.
        self.shares_ticket_keys = ticket_keys is not None and install_ticket_keys(self.context, ticket_keys)
        if metrics is not None:
            self.attach_metrics(metrics)

    @classmethod
    def from_files(
        cls,
        cert_file: StrPath,
        key_file: StrPath,
        *,
        password_file: StrPath | None = None,
        password_env: str | None = None,
        **kwargs: object,
    ) -> ServerTLS:
        """One certificate named "default" (the `--tls-cert/--tls-key` case)."""
        source = CertificateSource(
            "default", Path(cert_file), Path(key_file),
            Path(password_file) if password_file is not None else None, password_env,
        )
        return cls([source], **kwargs)  # type: ignore[arg-type]

    def attach_metrics(self, metrics: TLSMetrics) -> None:
        """Report to `metrics` from now on (for when the registry exists only after
        the listener's settings were built). Call it before the listener starts."""
        self._metrics = metrics
        self.context.sslobject_class = metrics.observing_sslobject_class(self.listener)
        self._serve(self._set)  # choices made from now on are counted
        for cert in self._set:
            self._served(cert)

    @property
    def certificates(self) -> CertificateSet:
        """The set new handshakes are served from right now."""
        return self._set

    @property
    def _set(self) -> CertificateSet:
        return self._choices[0]

    def _serve(self, certs: CertificateSet) -> None:
        # One reference swap (atomic for handshakes): the set, and the choices made from it.
        self._choices: tuple[CertificateSet, dict] = (certs, {})

    # -- the handshake side --------------------------------------------------------
    def _front_context(self, default: PemMaterial, ca: tuple[bytes, str] | None) -> ssl.SSLContext:
        # The listener's context. It never changes after this: OpenSSL copies its
        # policy and client-certificate mode into each connection, and the callback
        # then points the connection at the chosen certificate's context. It carries
        # the default certificate only so it is complete on its own.
        ctx = build_certificate("front", default, client_ca=ca).context
        ctx.sni_callback = self._on_server_name
        return ctx

    def _on_server_name(self, conn: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # Runs in every handshake: a name seen before costs one dict look-up.
        try:
            certs, choices = self._choices
            choice = choices.get(server_name)
            if choice is None:
                choice = self._choose(certs, choices, server_name)
            conn.context = choice[0]
            if choice[1] is not None:
                choice[1][0] += 1
        except Exception:  # an exception here would print a traceback per handshake
            log.exception("choosing a certificate for %r failed; serving the default", server_name)
        return None

    def _choose(self, certs: CertificateSet, choices: dict, server_name: str | None) -> tuple:
        """(context, selection count or None) for `server_name`, remembered for the first
        MAX_REMEMBERED_NAMES names (clients choose the names: the memory stays bounded)."""
        chosen = certs.select(server_name)
        count = None
        if self._metrics is not None:
            count = self._metrics.handshakes(self.listener).selection(chosen.certificate.name, chosen.match)
        choice = (chosen.certificate.context, count)
        if len(choices) < MAX_REMEMBERED_NAMES:
            choices[server_name] = choice
        return choice

    # -- rotation ------------------------------------------------------------------
    def reload(self) -> list[ReloadResult]:
        """Re-read every certificate's files now and load those that changed.

        Blocking file I/O and key parsing: from async code call it through
        `asyncio.to_thread`. Never raises for a bad file: see the results.
        """
        with self._lock:
            return [self._check(name, settle=False) for name in self._sources]

    def poll(self) -> list[ReloadResult] | None:
        """One watcher round. A change is loaded once two rounds in a row saw the same
        bytes, so a certificate and key copied one after the other are not refused
        half-way; bytes already refused are not retried until they change again.
        Returns None when another reload is running."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return [self._check(name, settle=True) for name in self._sources]
        finally:
            self._lock.release()

    def reload_pem(
        self, name: str, cert_pem: bytes, key_pem: bytes, password: bytes | None = None
    ) -> ReloadResult:
        """Serve `name` from these bytes (e.g. from a Kubernetes Secret) if they load.

        They are served until this is called again or the files of `name` change and
        load; unchanged files do not override them. Blocking, like reload().
        """
        if name not in self._sources:
            raise KeyError(name)
        material = PemMaterial(cert_pem, key_pem, password, f"{name}: certificate PEM", f"{name}: key PEM")
        with self._lock:
            try:
                ca = self._read_client_ca()
            except TLSConfigError as exc:
                return self._refuse(name, str(exc), None)
            return self._try_load(name, material, ca, material.digest + _digest(ca))

    def _check(self, name: str, settle: bool) -> ReloadResult:
        current = self._set[name]
        try:
            ca = self._read_client_ca()
            material = self._sources[name].read()
            digest, error = material.digest + _digest(ca), None
        except TLSConfigError as exc:
            material, ca, digest, error = None, None, f"error:{exc}", str(exc)
        if digest == self._file_digest[name]:
            self._pending.pop(name, None)
            if self._refused.pop(name, None) is not None and self._metrics is not None:
                self._metrics.reload_failing.labels(name=name).set(0)  # files were put back
            return ReloadResult(name, "unchanged", serial=current.serial)
        if settle:
            if self._refused.get(name) == digest:
                return ReloadResult(name, "refused", error="unchanged since refused", serial=current.serial)
            if self._pending.get(name) != digest:
                self._pending[name] = digest
                return ReloadResult(name, "pending", serial=current.serial)
        self._pending.pop(name, None)
        if material is None:
            return self._refuse(name, error or "unreadable", digest)
        result = self._try_load(name, material, ca, digest)
        if result.outcome == "reloaded":
            self._file_digest[name] = digest
        return result

    def _try_load(
        self, name: str, material: PemMaterial, ca: tuple[bytes, str] | None, digest: str
    ) -> ReloadResult:
        try:
            cert = self._build(name, material, ca, digest)
        except TLSConfigError as exc:
            return self._refuse(name, str(exc), digest)
        old = self._set[name]
        self._serve(self._set.replace(cert))
        self._refused.pop(name, None)
        self._served(cert)
        if self._metrics is not None:
            self._metrics.reloaded(name, ok=True)
        log.info("certificate %s reloaded: serial %x -> %x, expires %s",
                 name, old.serial, cert.serial, cert.not_after.isoformat())
        return ReloadResult(name, "reloaded", serial=cert.serial)

    def _refuse(self, name: str, error: str, digest: str | None) -> ReloadResult:
        if digest is not None:
            self._refused[name] = digest
        if self._metrics is not None:
            self._metrics.reloaded(name, ok=False)
        serial = self._set[name].serial
        log.error("certificate %s: new files refused, still serving serial %x: %s", name, serial, error)
        return ReloadResult(name, "refused", error=error, serial=serial)

    @staticmethod
    def _build(
        name: str, material: PemMaterial, ca: tuple[bytes, str] | None, digest: str
    ) -> ServingCertificate:
        return dataclasses.replace(build_certificate(name, material, client_ca=ca), digest=digest)

    def _served(self, cert: ServingCertificate) -> None:
        if self._metrics is not None:
            self._metrics.set_expiry(cert.name, cert.not_after)

    def _read_client_ca(self) -> tuple[bytes, str] | None:
        if self._client_ca is None:
            return None
        return read_file(self._client_ca, "client CA"), str(self._client_ca)

    # -- the watcher ---------------------------------------------------------------
    def watch(self, interval_s: float = 10.0) -> asyncio.Task[None]:
        """Start (once) an asyncio task that polls the files every `interval_s` seconds.

        Each round runs poll() in a worker thread, reads at most 1 MiB per file, is
        skipped while a reload is still running, and never ends the task on error.
        """
        if not MIN_WATCH_INTERVAL_S <= interval_s <= MAX_WATCH_INTERVAL_S:
            raise ValueError(
                f"interval_s must be between {MIN_WATCH_INTERVAL_S} and {MAX_WATCH_INTERVAL_S}"
            )
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(interval_s), name=f"tls-watch-{self.listener}"
            )
        return self._watch_task

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # keep watching: the next round may succeed
                log.exception("certificate watch round failed")

    async def close(self) -> None:
        """Stop the watcher; open connections are not affected."""
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _digest(ca: tuple[bytes, str] | None) -> str:
    if ca is None:
        return ""
    return "+ca:" + PemMaterial(ca[0], b"").digest
