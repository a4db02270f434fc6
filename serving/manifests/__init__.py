"""YAML → resources, with errors that name the file and the field.

documents.py reads files; online.py parses Azure ML v2 online endpoints and
deployments; instance_types.py parses InstanceType resources; this module tells the
kinds apart and checks that a set of documents applied together refer to each other.
Batch resources are recognised and handed to serving.batch.manifests when present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..resources import DEFAULT_INSTANCE_TYPE, Deployment, Endpoint, InstanceType
from .documents import Document, ManifestError, read_documents
from .instance_types import is_instance_type, parse_instance_type
from .online import DEPLOYMENT_ONLY, kept_fields, parse_deployment, parse_endpoint

__all__ = ["AppliedSet", "Document", "ManifestError", "key_of", "kind_of", "parse", "parse_all", "read_documents"]


def kind_of(doc: Document) -> str:
    schema = str(doc.body.get("$schema", "")).lower()
    if is_instance_type(doc):
        return "instance_type"
    if "batch" in schema or str(doc.body.get("kind", "")).lower() == "batch":
        return "batch"
    if "onlinedeployment" in schema or "endpoint_name" in doc.body:
        return "deployment"
    if "onlineendpoint" not in schema and DEPLOYMENT_ONLY & doc.body.keys():
        return "deployment"  # without endpoint_name: parse_deployment says it is required
    if "onlineendpoint" in schema or "name" in doc.body:
        return "endpoint"
    raise ManifestError(doc.source, None, "cannot tell the resource kind: set $schema or name")


def parse(doc: Document, current: Mapping[str, Endpoint] | None = None, ignored: list[str] | None = None):
    """`current`: the stored endpoints by name, whose splits a document may keep;
    `ignored` gets the Azure ML fields the document has and scoregate does not use."""
    kind = kind_of(doc)
    if kind == "instance_type":
        return parse_instance_type(doc)
    if kind == "batch":
        raise ManifestError(doc.source, "$schema", "batch endpoints and deployments are not supported here")
    if kind == "deployment":
        return parse_deployment(doc, ignored)
    name = doc.body.get("name")  # any YAML value: parse_endpoint names a wrong one
    return parse_endpoint(doc, (current or {}).get(name) if isinstance(name, str) else None, ignored)


@dataclass
class AppliedSet:
    endpoints: list[Endpoint] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    instance_types: list[InstanceType] = field(default_factory=list)
    # Per resource key (see key_of), the Azure ML fields accepted and ignored, if any.
    ignored_fields: dict[tuple, list[str]] = field(default_factory=dict)

    def __iter__(self):  # endpoints, deployments = parse_all(...) keeps working
        return iter((self.endpoints, self.deployments))


def _check_case(endpoints: list[Endpoint], existing: set[str], sources: dict[int, Document]) -> None:
    """Endpoint names are unique regardless of case: https://NAME.DOMAIN/score is, so of
    MyEndpoint and myendpoint a host-based request could only reach one. An endpoint
    stored under its exact name is updated (also one of a pair made before this rule)."""
    taken = {name.lower(): (name, None) for name in existing}
    for endpoint in endpoints:
        source = sources[id(endpoint)].source
        other, where = taken.get(endpoint.name.lower(), (endpoint.name, None))
        if other != endpoint.name and endpoint.name not in existing:
            owner = f"endpoint '{other}' in {where}" if where else f"the existing endpoint '{other}'"
            raise ManifestError(source, "name", f"endpoint '{endpoint.name}' differs only in case from {owner};"
                                " endpoint names are unique regardless of case (a host name is)")
        taken.setdefault(endpoint.name.lower(), (endpoint.name, source))


def key_of(resource) -> tuple:
    """What names a resource in one apply: (kind, name), a deployment with its endpoint."""
    if isinstance(resource, Deployment):
        return ("deployment", resource.endpoint_name, resource.name)
    if isinstance(resource, InstanceType):
        return ("instance type", resource.name)
    return ("endpoint", resource.name)


def parse_all(documents: list[Document], existing_endpoints: Iterable[str] | Mapping[str, Endpoint],
              existing_deployments: set[tuple[str, str]],
              existing_instance_types: set[str] = frozenset()) -> AppliedSet:
    """Parse a set of documents applied together and check they refer to each other.

    A deployment needs its endpoint and its instance type (existing or in the same
    set); traffic may only name deployments of that endpoint (existing or in the set),
    also traffic an endpoint keeps: given as a mapping, `existing_endpoints` are the
    stored endpoints, whose splits a document that leaves them out keeps.
    """
    current = existing_endpoints if isinstance(existing_endpoints, Mapping) else {}
    existing_endpoints = set(existing_endpoints)
    applied = AppliedSet()
    sources: dict[int, Document] = {}
    seen: dict[tuple, str] = {}
    for doc in documents:
        ignored: list[str] = []
        resource = parse(doc, current, ignored)
        if isinstance(resource, Deployment):
            applied.deployments.append(resource)
        elif isinstance(resource, InstanceType):
            applied.instance_types.append(resource)
        else:
            applied.endpoints.append(resource)
        key = key_of(resource)
        if key in seen:
            raise ManifestError(doc.source, "name", f"{key[0]} '{resource.name}' is also defined in {seen[key]}")
        seen[key] = doc.source
        if ignored:
            applied.ignored_fields[key] = sorted(ignored)
        sources[id(resource)] = doc
    _check_case(applied.endpoints, existing_endpoints, sources)
    endpoint_names = existing_endpoints | {e.name for e in applied.endpoints}
    deployment_keys = existing_deployments | {(d.endpoint_name, d.name) for d in applied.deployments}
    types = set(existing_instance_types) | {t.name for t in applied.instance_types} | {DEFAULT_INSTANCE_TYPE}
    for deployment in applied.deployments:
        doc = sources[id(deployment)]
        if deployment.endpoint_name not in endpoint_names:
            raise ManifestError(doc.source, "endpoint_name",
                                f"no endpoint '{deployment.endpoint_name}' (apply the endpoint too)")
        if deployment.instance_type not in types:
            raise ManifestError(doc.source, "instance_type",
                                f"no instance type '{deployment.instance_type}' (known: {', '.join(sorted(types))})")
    for endpoint in applied.endpoints:
        doc = sources[id(endpoint)]
        kept = kept_fields(doc, current.get(endpoint.name))
        for field_name, table in (("traffic", endpoint.traffic), ("mirror_traffic", endpoint.mirror_traffic)):
            for target in table:
                if (endpoint.name, target) not in deployment_keys:
                    how = f" ({field_name} is left out: the endpoint's current one is kept)" if field_name in kept else ""
                    raise ManifestError(doc.source, f"{field_name}.{target}",
                                        f"endpoint '{endpoint.name}' has no deployment '{target}'{how}")
    return applied
