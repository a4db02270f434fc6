"""SecretKeeper: endpoint keys and the store's named secrets, in Kubernetes Secrets.

Each endpoint's keys live in Secret `scoregate-keys-ENDPOINT` (`primaryKey`,
`secondaryKey`) in the endpoint's namespace, labelled for the store's watch and owned by
the OnlineEndpoint or BatchEndpoint, so they are garbage-collected with it. The keeper creates them when
the store first sees an endpoint without them (once at a time per endpoint, retried on
the next change), regenerates one key at a time with a resourceVersion precondition (the
other key keeps working), and keeps named secrets (e.g. the token signing key) in Secret
`scoregate-secrets`. store.py owns the watch of these Secrets and reads keys_of().
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from typing import Callable

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


class SecretKeeper:
    def __init__(self, api: KubeApi, cache: ObjectCache, *, default_namespace: str,
                 on_change: Callable[[], None]) -> None:
        self._api, self._cache = api, cache
        self._default_namespace = default_namespace
        self._on_change = on_change
        self._creating: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def keys_of(self, namespace: str, endpoint: str) -> tuple[str, str] | None:
        secret = self._cache.get(namespace, names.keys_secret_name(endpoint))
        if secret is None:
            return None
        data = secret.get("data") or {}
        return tuple(base64.b64decode(data.get(k, "")).decode() for k in ("primaryKey", "secondaryKey"))

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
                return base64.b64decode(data[name]).decode()
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
