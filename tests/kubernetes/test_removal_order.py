"""Which pods a scale-down removes, as the ReplicaSet controller picks them: the backend's
views mark those STOPPING before the watch shows it (replicas.removal_rank), so the order
must be the controller's. The deletion cost only orders pods alike in placement, phase and
readiness: a pod on no node, a Pending one or a not-ready one goes before a marked one."""

from __future__ import annotations

from serving.backends.kubernetes import names
from serving.backends.kubernetes.replicas import ObservationMemory, Version, replica_views
from tests.kubernetes.cluster import _rank


def pod(name: str, *, node: str | None = "node-1", phase: str = "Running", ready: bool = True,
        cost: str | None = None, created: str = "2026-11-29T10:00:00Z") -> dict:
    annotations = {names.ANNOTATION_DELETION_COST: cost} if cost is not None else {}
    return {"metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "annotations": annotations,
                         "creationTimestamp": created},
            "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def stopping(pods: list[dict], target: int) -> list[str]:
    version = Version("team", "iris-blue-1", "iris", "blue", "hash", target)
    views = replica_views(version, pods, set(), ObservationMemory(), 0.0)
    return sorted(v.replica_id.split("/")[1] for v in views if v.state == "stopping")


def test_a_marked_ready_pod_stays_while_a_pod_that_is_not_ready_goes():
    marked = pod("marked", cost=names.STOP_DELETION_COST)
    for other in (pod("unready", ready=False), pod("pending", phase="Pending", ready=False),
                  pod("unscheduled", node=None, phase="Pending", ready=False)):
        assert stopping([marked, other], target=1) == [other["metadata"]["name"]]
        assert sorted([marked, other], key=_rank)[0] is other  # the emulator's controller agrees


def test_among_pods_alike_the_cost_decides_then_the_newest_goes():
    marked, plain = pod("marked", cost=names.STOP_DELETION_COST), pod("plain")
    assert stopping([plain, marked], target=1) == ["marked"]
    older, newer = pod("older", created="2026-11-29T10:00:00Z"), pod("newer", created="2026-11-29T10:05:00Z")
    assert stopping([older, newer], target=1) == ["newer"]
    assert [p["metadata"]["name"] for p in sorted([older, newer], key=_rank)] == ["newer", "older"]
