"""InstanceType resources, in Azure ML's custom-resource shape or flat.

    apiVersion: amlarc.azureml.com/v1alpha1        # or flat: kind + name + node_selector
    kind: InstanceType                              #          + resources
    metadata: {name: cpu-small}
    spec:
      nodeSelector: {pool: cpu}
      resources:
        requests: {cpu: "500m", memory: 1Gi}
        limits: {cpu: "1", memory: 1Gi}
"""

from __future__ import annotations

from ..resources import InstanceType, parse_cpu, parse_memory
from .documents import Document
from .fields import FieldReader

_QUANTITIES = {"cpu": parse_cpu, "memory": parse_memory, "nvidia.com/gpu": lambda q: int(q)}


def is_instance_type(doc: Document) -> bool:
    return str(doc.body.get("kind", "")).lower() == "instancetype"


def parse_instance_type(doc: Document) -> InstanceType:
    r, body = FieldReader(doc), doc.body
    if "spec" in body or "metadata" in body:
        r.check_fields(body, {"apiVersion", "kind", "metadata", "spec"}, ignored=set())
        meta = r.mapping(body.get("metadata"), "metadata")
        name = r.name(meta.get("name"), "metadata.name")
        spec = r.mapping(body.get("spec"), "spec")
        r.check_fields(spec, {"nodeSelector", "resources"}, "spec.", ignored=set())
        selector, resources, where = spec.get("nodeSelector"), spec.get("resources"), "spec."
    else:
        r.check_fields(body, {"kind", "name", "node_selector", "resources", "description"}, ignored=set())
        name = r.name(body.get("name"), "name")
        selector, resources, where = body.get("node_selector"), body.get("resources"), ""
    node_selector = r.strings(selector, f"{where}nodeSelector" if where else "node_selector")
    blocks = r.mapping(resources, f"{where}resources")
    r.check_fields(blocks, {"requests", "limits"}, f"{where}resources.", ignored=set())
    parsed = {}
    for block in ("requests", "limits"):
        field = f"{where}resources.{block}"
        values = r.strings(blocks.get(block), field)
        for key, quantity in values.items():
            reader = _QUANTITIES.get(key)
            if reader is None:
                r.fail(f"{field}.{key}", f"unknown resource (expected one of: {', '.join(_QUANTITIES)})")
            try:
                reader(quantity)
            except ValueError:
                r.fail(f"{field}.{key}", f"not a valid quantity: {quantity!r}")
        parsed[block] = values
    for key in set(parsed["requests"]) & set(parsed["limits"]):
        if _QUANTITIES[key](parsed["requests"][key]) > _QUANTITIES[key](parsed["limits"][key]):
            r.fail(f"{where}resources.requests.{key}", "must not exceed the limit")
    return InstanceType(name=name, node_selector=node_selector, requests=parsed["requests"],
                        limits=parsed["limits"])
