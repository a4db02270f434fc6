"""Decide, don't act: desired deployments + observed replicas → a list of actions.

A pure function, so every case is a table-driven test. serving.controller.loop applies
the actions through a Backend. The rules, per deployment:
- keep `instance_count` replicas of the current spec starting or ready;
- replace an exited replica after a back-off that doubles with its streak of quick
  failures (0.5 s to 30 s), so a replica that crashes at start cannot spin the machine;
  the replacement carries on its restart count (its slot's, as a pod's restartCount);
- rolling update: new-spec replicas are started at most `max_surge` above the wanted
  count (25% of it, at least 1, as Kubernetes does), and an old-spec replica is stopped
  only when a new one is ready to take its place (max unavailable 0), so replicas are
  replaced one by one for small deployments;
- replicas of deployments that are no longer desired are stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends import EXITED, READY, STARTING, ReplicaView
from ..resources import Deployment

RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A replica that had been ready and ran this long before it exited was healthy: its
# replacement starts a new streak (no back-off), as Kubernetes resets CrashLoopBackOff
# after a good run. Replicas that crash before they are ready keep backing off.
HEALTHY_RUN_S = 10.0


def crash_streak(replica: ReplicaView) -> int:
    """The quick failures in a row behind the back-off and the crash limit; a backend that
    keeps no streak (a cluster: its pods count restarts themselves) gives its restarts."""
    return replica.restarts if replica.crash_streak is None else replica.crash_streak


def _healthy_run(replica: ReplicaView, now: float) -> bool:
    was_ready = replica.failed_stage in ("running", "liveness")
    return was_ready and (replica.ended_at or now) - replica.started_at >= HEALTHY_RUN_S


@dataclass(frozen=True)
class StartReplica:
    deployment: Deployment
    spec_hash: str
    crash_streak: int = 0  # consecutive quick failures before this start (drives the back-off)
    restarts: int = 0  # of the slot: the replaced replica's + 1, never reset (what users see)
    replaces_exited: bool = False


@dataclass(frozen=True)
class StopReplica:
    replica_id: str
    reason: str


@dataclass(frozen=True)
class ForgetReplica:
    """Drop the record of an exited replica (it is being replaced)."""

    replica_id: str


Action = StartReplica | StopReplica | ForgetReplica


def max_surge(instance_count: int) -> int:
    return max(1, -(-instance_count // 4))


def wanted_count(replicas: list[ReplicaView]) -> int:
    """The count plan() last ran one deployment at, read back from its replicas: where a
    new controller leader continues from, as it has no memory of that count. Not the
    number that run: a rolling update runs up to max_surge(count) more. No version runs
    more than the count, and while the new one has fewer, the surge is used up — so the
    count is the larger of the largest version and the smallest count whose surge covers
    all that run. Replicas becoming ready between passes change neither; exited ones
    make it lower, never higher. (After a scale-down in mid-rollout it may read above
    the count until the old version is gone.)"""
    per_version: dict[str, int] = {}
    for replica in replicas:
        if replica.state in (STARTING, READY):
            per_version[replica.spec_hash] = per_version.get(replica.spec_hash, 0) + 1
    live, count = sum(per_version.values()), 0
    while count + max_surge(count) < live:
        count += 1
    return max([count, *per_version.values()])


def restart_backoff_s(restarts: int) -> float:
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S * (2 ** max(0, restarts)))


def plan(desired: list[Deployment], observed: list[ReplicaView], now: float,
         hold: set[tuple[str, str]] = frozenset()) -> list[Action]:
    """`hold`: deployments whose replicas are left exactly as they are this pass."""
    actions: list[Action] = []
    by_deployment: dict[tuple[str, str], list[ReplicaView]] = {}
    for replica in observed:
        by_deployment.setdefault((replica.endpoint, replica.deployment), []).append(replica)

    wanted_keys = set()
    for deployment in desired:
        key = (deployment.endpoint_name, deployment.name)
        wanted_keys.add(key)
        actions.extend(_plan_deployment(deployment, by_deployment.get(key, []), now))

    for key, replicas in by_deployment.items():
        if key in wanted_keys or key in hold:
            continue
        for replica in replicas:
            if replica.state == EXITED:
                actions.append(ForgetReplica(replica.replica_id))
            elif replica.state in (STARTING, READY):
                actions.append(StopReplica(replica.replica_id, "deployment deleted"))
    return actions


def _plan_deployment(deployment: Deployment, replicas: list[ReplicaView], now: float) -> list[Action]:
    actions: list[Action] = []
    spec_hash = deployment.replica_spec_hash()
    want = deployment.instance_count
    live = [r for r in replicas if r.state in (STARTING, READY)]
    current = [r for r in live if r.spec_hash == spec_hash]
    stale = [r for r in live if r.spec_hash != spec_hash]
    exited = [r for r in replicas if r.state == EXITED]

    # Replace exited replicas once their back-off is over; the others wait.
    restarts_due: list[tuple[int, int]] = []  # (crash streak, restarts) of each replacement
    waiting = 0
    for replica in exited:
        stale_spec = replica.spec_hash != spec_hash
        healthy_run = _healthy_run(replica, now)
        streak = crash_streak(replica)
        due = stale_spec or healthy_run or now - (replica.ended_at or now) >= restart_backoff_s(streak)
        if due:
            actions.append(ForgetReplica(replica.replica_id))
            if not stale_spec:
                restarts_due.append((0 if healthy_run else streak + 1, replica.restarts + 1))
        else:
            waiting += 1
    replacing = len(restarts_due)

    ready_current = sum(1 for r in current if r.state == READY)
    keep_stale = max(0, want - ready_current)
    stale.sort(key=lambda r: (r.state == READY, r.started_at), reverse=True)  # keep ready ones
    stopping_stale = stale[keep_stale:]
    for replica in stopping_stale:
        actions.append(StopReplica(replica.replica_id, "replaced by a new version"))
    missing = want - len(current) - waiting
    if stale:
        # Rolling update: never more than want + surge replicas alive at once.
        missing = min(missing, want + max_surge(want) - (len(live) - len(stopping_stale)) - waiting)
    restarts_due.sort()
    for i in range(max(0, missing)):
        streak, restarts = restarts_due[i] if i < len(restarts_due) else (0, 0)
        actions.append(StartReplica(deployment, spec_hash, streak, restarts, replaces_exited=i < replacing))

    if len(current) > want:
        # Stop the surplus: replicas still starting first, then the newest.
        surplus = sorted(current, key=lambda r: (r.state == READY, -r.started_at))
        for replica in surplus[: len(current) - want]:
            actions.append(StopReplica(replica.replica_id, "scaled down"))

    return actions
