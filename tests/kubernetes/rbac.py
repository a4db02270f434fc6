"""Least-privilege checks of the RBAC shipped in deploy/ against what a component really asks.

`RecordingApiServer` is the emulator that also notes, per bearer token, every request as
the RBAC check a real API server makes for it: (namespace, apiGroup, resource[/subresource],
resourceName, verb). A list or watch with `fieldSelector=metadata.name=X` counts as a
request for the name X, as for the authorizer (that is how `resourceNames` allows them);
a create never has a name (RBAC cannot narrow create by name). A write setting an owner
reference with blockOwnerDeletion also records the check admission makes (update on the
owner's finalizers), which the emulator does not enforce. Give each component its own
token (`kubeconfig_with_token`) so the test's own requests stay out of its record.

`shipped_rbac(files, service_account)` reads the Roles, ClusterRoles and their bindings from
files under deploy/; `refused()` and `unused()` compare the two.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple

import kmock
import pytest
import yaml

from tests.kubernetes.apiserver import ApiServerEmulator
from tests.kubernetes.conftest import CRD_FILES, ROOT

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
CLUSTER = "*"  # the scope of a ClusterRoleBinding: every namespace, and cluster-scoped objects


class Request(NamedTuple):
    namespace: str  # "" for a cluster-scoped object
    group: str
    resource: str  # plural, or plural/subresource
    name: str | None
    verb: str


class Grant(NamedTuple):
    scope: str  # a namespace, or CLUSTER
    group: str
    resource: str
    name: str | None  # None: any name
    verb: str


def verb_of(request) -> str:
    method = request.method.value
    watch = request.params.get("watch") in ("true", "True", "1")
    if method == "GET":
        return "get" if request.name else ("watch" if watch else "list")
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return VERBS.get(method, method.lower())


def name_of(request) -> str | None:
    if request.name:
        return request.name
    if request.method.value == "GET":  # list/watch by name: fieldSelector=metadata.name=X
        for term in (request.params.get("fieldSelector") or "").split(","):
            field, _, value = term.partition("=")
            if field.strip() == "metadata.name" and value:
                return value.lstrip("=").strip()
    return None


class RecordingApiServer(ApiServerEmulator):
    """The emulator, also recording each request's RBAC check under its bearer token."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.requests: dict[str, set[Request]] = defaultdict(set)

    def requests_of(self, token: str) -> set[Request]:
        return set(self.requests.get(token, ()))

    def _answer(self, request):
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            resource = request.resource
            plural = resource.plural + (f"/{request.subresource}" if request.subresource else "")
            made = self.requests[auth.removeprefix("Bearer ")]
            made.add(Request(request.namespace or "", resource.group or "", plural, name_of(request), verb_of(request)))
            made.update(self._owner_checks(request))
        return super()._answer(request)

    def _owner_checks(self, request) -> set[Request]:
        """What admission (OwnerReferencesPermissionEnforcement) checks for a write that sets
        an ownerReference with blockOwnerDeletion: update on the owner's finalizers."""
        body = request.data if request.method.value in ("POST", "PUT", "PATCH") else None
        refs = ((body.get("metadata") or {}).get("ownerReferences") or []) if isinstance(body, dict) else []
        checks = set()
        for ref in refs:
            if ref.get("blockOwnerDeletion"):
                group = ref["apiVersion"].rpartition("/")[0]
                plural = next(res[2] for res, info in self.kinds.items()
                              if res[0] == group and info.kind == ref["kind"])
                checks.add(Request(request.namespace or "", group, f"{plural}/finalizers", ref["name"], "update"))
        return checks


@pytest.fixture
async def apiserver():
    """Overrides conftest's `apiserver` in a module that imports it."""
    async with RecordingApiServer() as server, kmock.Server(server):
        server.install_crds(CRD_FILES)
        yield server
        await server.drop_watches()


def kubeconfig_with_token(kubeconfig: str, token: str, path: Path) -> str:
    """A copy of the test kubeconfig whose user sends `token` (what the recording keys on)."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    config["users"][0]["user"]["token"] = token
    path.write_text(yaml.safe_dump(config))
    return str(path)


def shipped_rbac(files: Iterable[str], service_account: str, namespace: str = "scoregate-system") -> set[Grant]:
    """What the ServiceAccount gets from the Roles/ClusterRoles and (Cluster)RoleBindings in
    `files` (paths under deploy/): a ClusterRole bound by a RoleBinding grants in that
    binding's namespace, a ClusterRoleBinding everywhere (CLUSTER)."""
    docs = [d for f in files for d in yaml.safe_load_all((ROOT / "deploy" / f).read_text()) if d]
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    bound = {(d["roleRef"]["kind"], d["roleRef"]["name"],
              d["metadata"]["namespace"] if d["kind"] == "RoleBinding" else CLUSTER)
             for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and subject in d["subjects"]}
    granted: set[Grant] = set()
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        scopes = {scope for kind, name, scope in bound if kind == doc["kind"] and name == doc["metadata"]["name"]
                  and (kind == "ClusterRole" or scope == doc["metadata"]["namespace"])}
        for scope in scopes:
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for name in rule.get("resourceNames") or [None]:
                            for verb in rule["verbs"]:
                                granted.add(Grant(scope, group, resource, name, verb))
    return granted


def covers(grant: Grant, request: Request) -> bool:
    return (grant.scope in (CLUSTER, request.namespace) and grant.group == request.group
            and grant.resource == request.resource and grant.verb == request.verb
            and grant.name in (None, request.name))


def refused(granted: set[Grant], requests: set[Request]) -> list[Request]:
    """The requests no grant allows (what a real API server would answer 403)."""
    return sorted((r for r in requests if not any(covers(g, r) for g in granted)), key=str)


def unused(granted: set[Grant], requests: set[Request]) -> set[Grant]:
    """The grants that allowed none of the requests."""
    return {g for g in granted if not any(covers(g, r) for r in requests)}
