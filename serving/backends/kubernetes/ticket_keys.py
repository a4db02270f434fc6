"""TLS session ticket keys shared by the router pods, kept in a Secret.

Why: OpenSSL gives each router pod random ticket keys of its own, and the Service in
front of the routers spreads a client's connections over the pods, so (N-1)/N of its
resumptions would land on a pod that cannot open its ticket and cost a full handshake.
`serve --workers` shares one key set between processes (tls/tickets.py); here the pods
share one through Secret `scoregate-tls-ticket-keys` (key `ticket.key`, the 80 bytes
tls/tickets.py takes), as ingress controllers keep theirs.

Whoever needs the Secret first creates it with random keys; a create answered 409 means
another router won the race, and its Secret is read instead — so every router ends with
the same keys and nobody overwrites them. The Secret is then watched by name (what RBAC's
resourceNames allows): a new `ticket.key` (an operator rotating it) is installed at once.
One key only: tickets made under the previous key are not opened after a rotation (a
returning client makes one full handshake and gets a new ticket), which is what OpenSSL's
key-setting call offers. Content that is not 80 bytes is refused and the keys in use
stay; a deleted Secret also leaves them. Anything that stops sharing (the API refuses,
tls/tickets.py cannot install keys) is logged and the pod keeps its own keys: resumption
then works per pod, as before — never a reason not to serve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl

from tls.tickets import TICKET_KEYS_BYTES, install_ticket_keys, new_ticket_keys

from . import names
from .api import SECRETS, Backoff, KubeApi, is_retryable, status_of
from .watching import ObjectCache

log = logging.getLogger("scoregate.kubernetes.ticket_keys")

DEFAULT_SECRET = "scoregate-tls-ticket-keys"
DATA_KEY = "ticket.key"
START_ATTEMPTS = 5  # retryable API errors at start (503, connection refused) before giving up


class TicketKeysError(ValueError):
    """The Secret does not hold usable ticket keys."""


def keys_of(secret: dict) -> bytes:
    """The 80 bytes in the Secret's `ticket.key`."""
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace')}/{meta.get('name')}"
    value = (secret.get("data") or {}).get(DATA_KEY)
    if value is None:
        raise TicketKeysError(f"{where} has no {DATA_KEY}")
    try:
        keys = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TicketKeysError(f"{where}: {DATA_KEY} is not base64") from None
    if len(keys) != TICKET_KEYS_BYTES:
        raise TicketKeysError(f"{where}: {DATA_KEY} holds {len(keys)} bytes, not {TICKET_KEYS_BYTES} "
                              f"(make it with `openssl rand {TICKET_KEYS_BYTES}`)")
    return keys


def new_secret(namespace: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {names.LABEL_NAME: "scoregate-router", names.LABEL_COMPONENT: "tls-ticket-keys",
                                    names.LABEL_MANAGED_BY: names.MANAGER}},
            "data": {DATA_KEY: base64.b64encode(new_ticket_keys()).decode()}}


class SharedTicketKeys:
    """Installs the Secret's ticket keys into `context` (the listener's) and follows the Secret.
    `shared` says whether this pod uses the Secret's keys (False: its own, logged why)."""

    def __init__(self, api: KubeApi, context: ssl.SSLContext, namespace: str, name: str = DEFAULT_SECRET) -> None:
        self._api, self._context, self.namespace, self.name = api, context, namespace, name
        self._cache = ObjectCache(api, SECRETS, namespaces=[namespace], field_selector=f"metadata.name={name}",
                                  on_event=self._on_event)
        self.keys: bytes | None = None  # installed now
        self.installs: list[str] = []  # outcomes after start ("installed", "refused"), for tests and logs
        self._watching = False  # events install content (not while keys the context refused are kept)
        self._following: asyncio.Task | None = None

    @property
    def shared(self) -> bool:
        return self.keys is not None

    async def start(self, timeout_s: float = 10.0) -> bool:
        """Obtain the Secret (creating it if missing), install its keys, watch it."""
        where = f"{self.namespace}/{self.name}"
        try:
            secret = await self._obtain()
            keys = keys_of(secret)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("TLS ticket keys Secret %s unusable, this router keeps its own ticket keys (a client "
                        "resuming on another router gets a full handshake) until it can use it: %s", where, exc)
            # Follow the Secret anyway (in the background: start is not held up), so that a
            # Secret fixed later (content, RBAC, an API server that was down) is installed.
            self._watching = True
            self._following = asyncio.get_running_loop().create_task(self._cache.start(None),
                                                                     name="ticket keys watch")
            return False
        if not install_ticket_keys(self._context, keys):
            log.warning("TLS ticket keys from Secret %s not installed, this router keeps its own ticket keys", where)
            return False
        self.keys = keys  # from here on, events (the list's included) install newer content
        self._watching = True
        try:
            await self._cache.start(timeout_s)
        except TimeoutError:  # the cache goes on trying in the background
            log.warning("TLS ticket keys Secret %s not watched yet; a rotation is installed once it is", where)
        log.info("TLS session ticket keys shared through Secret %s", where)
        return True

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        await self._cache.close()

    async def _obtain(self) -> dict:
        backoff = Backoff(initial_s=0.2, maximum_s=2.0)
        for attempt in range(START_ATTEMPTS):
            try:
                try:
                    return await self._api.get(SECRETS, self.namespace, self.name)
                except Exception as exc:
                    if status_of(exc) != 404:
                        raise
                try:
                    created = await self._api.create(SECRETS, self.namespace, new_secret(self.namespace, self.name))
                    log.info("created TLS ticket keys Secret %s/%s", self.namespace, self.name)
                    return created
                except Exception as exc:
                    if status_of(exc) != 409:
                        raise
                return await self._api.get(SECRETS, self.namespace, self.name)  # another router made it first
            except Exception as exc:
                # 404 here: made and deleted again at once; like a 503, worth another try
                again = is_retryable(exc) or status_of(exc) == 404
                if not again or attempt == START_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(backoff.next_delay())
        raise AssertionError("unreachable")

    def _on_event(self, kind: str, secret: dict) -> None:
        """Runs on the event loop, the thread handshakes run on: the keys change between handshakes."""
        if not self._watching:
            return
        if kind == "DELETED":
            log.warning("TLS ticket keys Secret %s/%s was deleted; keeping the keys in use", self.namespace, self.name)
            return
        try:
            keys = keys_of(secret)
        except TicketKeysError as exc:
            log.error("TLS ticket keys refused, keeping the keys in use: %s", exc)
            self.installs.append("refused")
            return
        if keys == self.keys:
            return
        if install_ticket_keys(self._context, keys):
            if self.keys is None:
                log.info("TLS session ticket keys shared through Secret %s/%s from now on", self.namespace, self.name)
            self.keys = keys
            self.installs.append("installed")
            log.info("new TLS ticket keys from Secret %s/%s installed; tickets made under the previous keys "
                     "now get a full handshake", self.namespace, self.name)
        else:
            self.installs.append("refused")
