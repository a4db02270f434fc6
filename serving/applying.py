"""Applying a set of YAML documents: online resources to the Store, batch ones to the
BatchService, in one validated step shared by `serve PATHS` and `POST /api/v1/apply`.

Endpoint names are unique across online and batch endpoints, regardless of case (a
scoring URL names one endpoint, and a host name is case-insensitive). Nothing is
written unless every document is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .manifests import AppliedSet, Document, ManifestError, key_of, parse_all
from .store import Store


@dataclass
class Applied:
    online: AppliedSet
    batch_endpoints: list = field(default_factory=list)
    batch_deployments: list = field(default_factory=list)

    def summary(self) -> list[dict]:
        """One entry per resource; an online one whose YAML had Azure ML fields scoregate
        accepts and does not use names them (`ignored_fields`, `warning`)."""
        return [
            *({"kind": "instance_type", "name": t.name, **self._ignored(t)} for t in self.online.instance_types),
            *({"kind": "endpoint", "name": e.name, **self._ignored(e)} for e in self.online.endpoints),
            *({"kind": "deployment", "name": d.name, "endpoint_name": d.endpoint_name, **self._ignored(d)}
              for d in self.online.deployments),
            *({"kind": "batch_endpoint", "name": e.name} for e in self.batch_endpoints),
            *({"kind": "batch_deployment", "name": d.name, "endpoint_name": d.endpoint_name}
              for d in self.batch_deployments),
        ]

    def _ignored(self, resource) -> dict:
        fields = self.online.ignored_fields.get(key_of(resource))
        if not fields:
            return {}
        return {"ignored_fields": fields,
                "warning": f"accepted and ignored (Azure ML fields with no meaning here): {', '.join(fields)}"}


def parse_documents(documents: list[Document], store: Store, batch=None) -> Applied:
    """Blocking (store reads): validate everything, write nothing."""
    from .batch.manifests import is_batch, parse_batch_all

    batch_docs = [d for d in documents if is_batch(d)]
    online_docs = [d for d in documents if not is_batch(d)]
    current = {r.endpoint.name: r.endpoint for r in store.list_endpoints()}  # splits left out are kept
    online_names = set(current)
    online = parse_all(online_docs, current,
                       {(d.endpoint_name, d.name) for d in store.list_deployments()},
                       {t.name for t in store.list_instance_types()})
    applied = Applied(online)
    batch_names: set[str] = set()
    if batch_docs:
        if batch is None:
            raise ManifestError(batch_docs[0].source, "$schema", "batch endpoints are not served by this gateway")
        batch_names = batch.endpoint_names()
        applied.batch_endpoints, applied.batch_deployments = parse_batch_all(
            batch_docs, batch_names, batch.deployment_keys())
    elif batch is not None:
        batch_names = batch.endpoint_names()
    online_new = {e.name for e in online.endpoints}
    batch_new = {e.name for e in applied.batch_endpoints}
    for name in sorted(_same_name(online_new, batch_names | batch_new) | _same_name(batch_new, online_names)):
        source = next((d.source for d in documents if d.body.get("name") == name), "apply")
        raise ManifestError(source, "name", f"endpoint name '{name}' is used by both an online and a batch "
                            "endpoint; endpoint names are unique across both, regardless of case")
    return applied


def _same_name(names: set[str], others: set[str]) -> set[str]:
    """The names that are also among `others`, compared regardless of case."""
    lowered = {other.lower() for other in others}
    return {name for name in names if name.lower() in lowered}


def write(applied: Applied, store: Store, batch=None, retry: set[tuple[str, str]] = frozenset()) -> None:
    """Blocking: store what parse_documents validated; `retry`: the applied deployments
    whose failed rollout gets a new attempt (Store.apply)."""
    online = applied.online
    store.apply(online.endpoints, online.deployments, online.instance_types, retry=retry)
    if batch is not None and (applied.batch_endpoints or applied.batch_deployments):
        batch.apply(applied.batch_endpoints, applied.batch_deployments)
