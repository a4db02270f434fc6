"""SigningKeyKeeper: the controller makes sure the aml_token signing key exists.

Why: routers check `authMode: aml_token` tokens with the key `aml_token` of Secret
`scoregate-secrets` in the signing namespace (discovery.py), and cluster users mint tokens
from the same key (token_minting.py). Nothing else creates that Secret on a cluster, so
without this an aml_token endpoint could not be called at all.

The leader watches the Secret by name and creates it with a random key whenever it is
missing: at start (before the first reconcile pass, so an endpoint is never served
without it for long) and after someone deletes it, which is how the key is rotated. A
create answered 409 means someone else made it first; theirs is kept (the watch brings
it). It never writes to a Secret that exists: one without the `aml_token` key is logged,
not changed. Failures are logged and retried with back-off; they never stop the
controller, whose key-authenticated endpoints do not need the Secret.
"""

from __future__ import annotations

import asyncio
import base64
import logging

from . import names
from .api import SECRETS, Backoff, KubeApi, status_of
from .keys import NAMED_SECRETS, TOKEN_SIGNING_KEY, new_key
from .watching import ObjectCache

log = logging.getLogger("scoregate.kubernetes.signing_key")
COMPONENT = "token-signing-key"


def new_signing_secret(namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": NAMED_SECRETS, "namespace": namespace,
                         "labels": {names.LABEL_MANAGED_BY: names.MANAGER, names.LABEL_COMPONENT: COMPONENT}},
            "data": {TOKEN_SIGNING_KEY: base64.b64encode(new_key().encode()).decode()}}


class SigningKeyKeeper:
    def __init__(self, api: KubeApi, namespace: str) -> None:
        self._api, self.namespace = api, namespace
        self._wake = asyncio.Event()
        self._cache = ObjectCache(api, SECRETS, namespaces=[namespace],
                                  field_selector=f"metadata.name={NAMED_SECRETS}",
                                  on_event=lambda _kind, _obj: self._wake.set())
        self._first_look = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warned = False

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start keeping the Secret; return once it was looked at and, if missing, its create
        answered (or after `timeout_s`); what failed is retried in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aml_token signing key")
        try:
            await asyncio.wait_for(self._first_look.wait(), timeout_s)
        except TimeoutError:
            log.warning("the aml_token signing key Secret %s/%s is not checked yet; still trying",
                        self.namespace, NAMED_SECRETS)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._cache.close()

    async def _run(self) -> None:
        await self._cache.start(None)  # retries on its own until it has listed
        backoff = Backoff(initial_s=0.5, maximum_s=30.0)
        while True:
            self._wake.clear()  # an event from here on means: look again
            done = await self._ensure()
            self._first_look.set()  # a refusal is retried in the background, not waited for
            if done:
                backoff.reset()
                await self._wake.wait()
            else:
                await asyncio.sleep(backoff.next_delay())

    async def _ensure(self) -> bool:
        """Create the Secret if the watch shows none; False if the API refused (try again)."""
        where = f"{self.namespace}/{NAMED_SECRETS}"
        secret = self._cache.get(self.namespace, NAMED_SECRETS)
        if secret is not None:
            if TOKEN_SIGNING_KEY not in (secret.get("data") or {}) and not self._warned:
                self._warned = True
                log.warning("Secret %s has no %s key: aml_token endpoints refuse every token until it has one "
                            "(delete the Secret and the controller makes a new one)", where, TOKEN_SIGNING_KEY)
            return True
        try:
            self._cache.put(await self._api.create(SECRETS, self.namespace, new_signing_secret(self.namespace)))
            log.info("created the aml_token signing key in Secret %s", where)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if status_of(exc) != 409:
                log.warning("cannot create the aml_token signing key Secret %s: %s", where, exc)
                return False
            log.info("Secret %s was made by someone else meanwhile; keeping theirs", where)
        self._warned = False
        return True
