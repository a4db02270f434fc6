"""SecretKeeper: endpoint keys and the store's named secrets, in Kubernetes Secrets.

Each endpoint's keys live in Secret `scoregate-keys-ENDPOINT` (`primaryKey`,
`secondaryKey`) in the endpoint's namespace, labelled for the store's watch and owned by
the OnlineEndpoint or BatchEndpoint, so they are garbage-collected with it. The keeper creates them when
the store first sees an endpoint without them (once at a time per endpoint, retried on
the next change), regenerates one key at a time with a resourceVersion precondition (the
other key keeps working), and keeps named secrets (e.g. the token signing key) in Secret
`scoregate-secrets`. store.py owns the watch of these Secrets and reads keys_of().

Reading is guarded in one place (`secret_text`): a Secret edited by hand into bytes that
are not base64 of text (e.g. `--from-file` of random bytes) gives `UnreadableSecret`,
naming the Secret and the key. `readable_keys()` turns that into "the last readable keys
stay in use", logged once, for the store and the routers alike; `named_secret()` into a
StoreError, without writing to the Secret (the same key is read by the routers).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from typing import Callable

from ...store import StoreError
from . import names
from .api import SECRETS, KubeApi, status_of
from .watching import ObjectCache
from .workloads import owner_reference

log = logging.getLogger("scoregate.store.kubernetes")
NAMED_SECRETS = "scoregate-secrets"
TOKEN_SIGNING_KEY = "aml_token"  # the key in NAMED_SECRETS that signs aml_token tokens (serving/tokens.py)


def signing_namespace(namespaces) -> str:
    """Where NAMED_SECRETS lives: the first namespace watched ("default" for all), for the
    controller, the routers and the store alike, so they all use one signing key."""
    return (tuple(namespaces or ()) or ("default",))[0]


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class UnreadableSecret(ValueError):
    """A Secret's value that is not base64 of UTF-8 text; the message names the Secret and key."""


def secret_text(secret: dict, key: str) -> str | None:
    """The text under `key` of a Secret's `data`, None when the key is absent. Strict base64,
    as the API server writes it (a lenient decode would drop stray characters and read
    another key than the routers do)."""
    value = (secret.get("data") or {}).get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (ValueError, TypeError) as exc:  # binascii.Error, UnicodeDecodeError; TypeError: not a string
        meta = secret.get("metadata") or {}
        raise UnreadableSecret(f"Secret {meta.get('namespace') or '?'}/{meta.get('name') or '?'}: key {key} is not "
                               f"base64 of UTF-8 text ({exc})") from None


class SecretKeeper:
    def __init__(self, api: KubeApi, cache: ObjectCache, *, default_namespace: str,
                 on_change: Callable[[], None]) -> None:
        self._api, self._cache = api, cache
        self._default_namespace = default_namespace
        self._on_change = on_change
        self._creating: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        # readable_keys(): the keys last read per (namespace, endpoint), and those unreadable now
        self._last_keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._unreadable: set[tuple[str, str]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def keys_of(self, namespace: str, endpoint: str) -> tuple[str, str] | None:
        """The endpoint's keys ("" for a key missing), None without a Secret; raises
        UnreadableSecret for content that is not base64 of text."""
        secret = self._cache.get(namespace, names.keys_secret_name(endpoint))
        if secret is None:
            return None
        return tuple(secret_text(secret, k) or "" for k in ("primaryKey", "secondaryKey"))

    def readable_keys(self, namespace: str, endpoint: str) -> tuple[str, str] | None:
        """keys_of() that never raises: a Secret that stops being readable (edited by hand)
        is logged once, naming the Secret and key, and the keys last read stay in use
        (None if there were none: `unreadable()` then tells that from "no Secret")."""
        where = (namespace, endpoint)
        try:
            keys = self.keys_of(namespace, endpoint)
        except UnreadableSecret as exc:
            if where not in self._unreadable:
                self._unreadable.add(where)
                log.error("%s; %s", exc, f"the keys of endpoint {endpoint} last read stay in use"
                          if where in self._last_keys else f"endpoint {endpoint} has no usable keys until it is fixed")
            return self._last_keys.get(where)
        if where in self._unreadable:
            self._unreadable.discard(where)
            log.info("the keys of endpoint %s can be read again", endpoint)
        if keys is None:
            self._last_keys.pop(where, None)
        else:
            self._last_keys[where] = keys
        return keys

    def unreadable(self, namespace: str, endpoint: str) -> bool:
        return (namespace, endpoint) in self._unreadable

    def forget_keys_except(self, listed: set[tuple[str, str]]) -> None:
        """Drop the keys remembered for endpoints no longer listed (a deleted endpoint's
        keys must not come back for a new endpoint of its name)."""
        for gone in [k for k in self._last_keys if k not in listed]:
            del self._last_keys[gone]
        self._unreadable &= listed

    def ensure_keys_later(self, endpoint_obj: dict) -> None:
        key = (endpoint_obj["metadata"]["namespace"], endpoint_obj["metadata"]["name"])
        if key in self._creating:
            return
        self._creating.add(key)
        task = asyncio.get_running_loop().create_task(self._create_keys(endpoint_obj))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create_keys(self, endpoint_obj: dict) -> None:
        meta = endpoint_obj["metadata"]
        name = names.keys_secret_name(meta["name"])
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": meta["namespace"],
                             "labels": {names.LABEL_MANAGED_BY: names.MANAGER,
                                        names.LABEL_COMPONENT: names.COMPONENT_KEYS,
                                        names.LABEL_ENDPOINT: meta["name"]},
                             "ownerReferences": [owner_reference(endpoint_obj)]},
                "data": {k: _encoded(new_key()) for k in ("primaryKey", "secondaryKey")}}
        try:
            self._cache.put(await self._api.create(SECRETS, meta["namespace"], body))
            log.info("created the keys of endpoint %s in Secret %s/%s", meta["name"], meta["namespace"], name)
        except Exception as exc:
            if status_of(exc) != 409:  # 409: it exists already; the watch brings it
                log.warning("cannot create the keys of endpoint %s: %s", meta["name"], exc)
                await asyncio.sleep(1.0)
        finally:
            self._creating.discard((meta["namespace"], meta["name"]))
        self._on_change()

    async def regenerate(self, namespace: str, endpoint: str, key_type: str) -> None:
        """A new primary or secondary key; the other one keeps working."""
        name = names.keys_secret_name(endpoint)
        for _attempt in range(5):
            secret = await self._api.get(SECRETS, namespace, name)
            secret.setdefault("data", {})[f"{key_type}Key"] = _encoded(new_key())
            try:
                self._cache.put(await self._api.replace(SECRETS, namespace, name, secret))
                return
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
        raise RuntimeError(f"the keys of endpoint {endpoint} kept changing while being regenerated")

    async def named_secret(self, name: str) -> str:
        """A random secret kept in Secret scoregate-secrets (created on first use)."""
        namespace = self._default_namespace
        for _attempt in range(5):
            try:
                secret = await self._api.get(SECRETS, namespace, NAMED_SECRETS)
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
                secret = None
            data = (secret or {}).get("data") or {}
            if name in data:
                try:
                    return secret_text(secret, name) or ""
                except UnreadableSecret as exc:  # never overwritten: the routers read the same key
                    log.error("%s; the store cannot give secret %s until it is text (or removed: then a new one "
                              "is made)", exc, name)
                    raise StoreError(f"{exc}: put text there, or remove the key to have a new secret made") from None
            data = {**data, name: _encoded(new_key())}
            try:
                if secret is None:
                    await self._api.create(SECRETS, namespace, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                                                "metadata": {"name": NAMED_SECRETS}, "data": data})
                else:
                    await self._api.replace(SECRETS, namespace, NAMED_SECRETS, {**secret, "data": data})
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
        raise RuntimeError(f"the secret {name} kept changing while being created")
