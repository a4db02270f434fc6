"""`scoregate endpoint get-token --backend kubernetes`: an aml_token access token on a cluster.

Why here and not through an API: on a cluster there is no management API to ask, and the
routers accept any token signed with the key in Secret `scoregate-secrets` (signing_key.py).
So whoever may read that Secret with their own credentials (kubeconfig) may mint tokens;
RBAC on the Secret is the access control, as it is for the keys Secrets. The token is
serving/tokens.py's, exactly what the embedded gateway's `POST /endpoints/E/token` returns
(same claims, expiry and JSON). The endpoint is read first so a key endpoint, or a name
that does not exist, is refused as the embedded gateway refuses it.
"""

from __future__ import annotations

import base64
import binascii
import os

from ...tokens import MAX_LIFETIME_S, TokenIssuer
from . import names
from .api import ONLINE_ENDPOINTS, SECRETS, KubeApi, context_namespace, load_api_client, status_of
from .keys import NAMED_SECRETS, TOKEN_SIGNING_KEY


class MintingError(Exception):
    """One line for the user; `exit_code` as the CLI's (1 failed, 2 bad input)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _refused(exc: Exception, what: str) -> MintingError:
    status = status_of(exc)
    if status == 403:
        return MintingError(f"your credentials may not read {what} (RBAC: get)")
    return MintingError(f"cannot read {what}: {'HTTP ' + str(status) if status else exc}")


async def mint_token(endpoint: str, *, namespace: str | None = None, signing_namespace: str | None = None,
                     kubeconfig: str | None = None, context: str | None = None,
                     lifetime_s: float = 3600.0) -> dict:
    if not 1 <= lifetime_s <= MAX_LIFETIME_S:
        raise MintingError(f"--lifetime must be from 1 s to {MAX_LIFETIME_S // 3600} h", 2)
    if kubeconfig is not None and not os.path.isfile(os.path.expanduser(kubeconfig)):
        # else kubernetes-asyncio says "Expected key current-context in kube-config"
        raise MintingError(f"no kubeconfig file {kubeconfig}", 2)
    namespace = namespace or context_namespace(kubeconfig, context)  # as kubectl without -n
    signing_namespace = signing_namespace or namespace
    api = KubeApi(await load_api_client(kubeconfig, context))
    try:
        try:
            obj = await api.get(ONLINE_ENDPOINTS, namespace, endpoint)
        except Exception as exc:
            if status_of(exc) == 404:
                raise MintingError(f"no OnlineEndpoint {namespace}/{endpoint}") from None
            raise _refused(exc, f"OnlineEndpoint {namespace}/{endpoint}") from None
        auth_mode = (obj.get("spec") or {}).get("authMode", "key")
        if auth_mode != "aml_token":
            raise MintingError(f"endpoint '{endpoint}' uses auth_mode {auth_mode}; tokens are for aml_token "
                               f"endpoints (its keys are in Secret {namespace}/{names.keys_secret_name(endpoint)})",
                               2)  # refused as asked, as `scoregate serve`'s get-token refuses it
        where = f"Secret {signing_namespace}/{NAMED_SECRETS}"
        try:
            secret = await api.get(SECRETS, signing_namespace, NAMED_SECRETS)
        except Exception as exc:
            if status_of(exc) == 404:
                raise MintingError(f"no {where} yet: the controller makes it (is one running for namespace "
                                   f"{signing_namespace}, its first --namespace?)") from None
            raise _refused(exc, where) from None
        try:
            key = base64.b64decode((secret.get("data") or {})[TOKEN_SIGNING_KEY], validate=True).decode()
        except (KeyError, binascii.Error, UnicodeDecodeError):
            raise MintingError(f"{where} has no usable {TOKEN_SIGNING_KEY} key") from None
        return TokenIssuer(key).issue(endpoint, lifetime_s)
    finally:
        await api.close()
