"""Slot shares: how N routers split each replica's `max_concurrent_requests_per_instance` (pure).

Every router admits locally against its own grant, so the common request needs no round
trip; the coordinator (coordination.py) runs `Allocator.round()` about once a second.
- Targets: with limit L ≥ routers R, every router gets a uniform share of every replica
  (at least 1, the rest of L in proportion to demand, summing to L). With L < R — the
  default L is 1 — uniform shares cannot give everyone a slot, so the replicas' slots are
  dealt out instead: each router gets 1 slot on a subset of the replicas (at least one
  replica where there are enough slots), in proportion to demand. Rounding favours the
  current holder; a router owed a slot for a while earns credit and gets it, so no router
  starves and slots do not ping-pong between equal routers every round.
- Hand-over: a router may still use an old grant until its report shows it applied the
  new one and its requests drained. So a slot taken from A is given to B only once A's
  *held* count (grant, what its table allows, what is in flight: the most it may be
  using) has dropped: per replica, the sum over routers of max(held, grant) never
  exceeds the limit. Shrinks apply at once; growth waits for room.
The grants, the held counts and the summed demand (for the autoscaler) are one
`SharesDoc`, which the coordinator writes to a ConfigMap; a new coordinator resumes from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

Grants = dict[str, dict[str, int]]  # router -> replica -> slots
STICKY_BONUS = 0.5  # how much a current holder is preferred when rounding
CREDIT_RATE = 0.1  # how fast an owed fraction of a slot turns into priority


@dataclass(frozen=True)
class Report:
    """One router's report: the doc version it applied, demand and its slots in use."""

    seen: int = 0
    demand: dict[str, float] = field(default_factory=dict)  # key -> max(now, average) in flight + queued
    level: dict[str, float] = field(default_factory=dict)  # key -> time-averaged in flight + queued
    slots: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # key -> replica -> (allowed, in flight)

    def to_json(self) -> str:
        return json.dumps({"seen": self.seen, "demand": {k: [round(self.demand.get(k, 0.0), 3),
                                                             round(self.level.get(k, 0.0), 3)]
                                                         for k in sorted(set(self.demand) | set(self.level))},
                           "slots": {k: {r: list(v) for r, v in s.items()} for k, s in self.slots.items()}},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        pairs = data.get("demand") or {}
        return cls(int(data.get("seen", 0)), {k: float(v[0]) for k, v in pairs.items()},
                   {k: float(v[1]) for k, v in pairs.items()},
                   {k: {r: (int(v[0]), int(v[1])) for r, v in s.items()} for k, s in (data.get("slots") or {}).items()})


@dataclass(frozen=True)
class DeploymentShares:
    limit: int
    replicas: tuple[str, ...]
    grants: Grants
    held: Grants
    level: float = 0.0  # sum over routers of the time-averaged in flight + queued

    @property
    def utilization(self) -> float:
        """(in flight + queued) / (replicas × limit), across all routers."""
        capacity = len(self.replicas) * self.limit
        return self.level / capacity if capacity else self.level

    def to_dict(self) -> dict:
        def aligned(grants: Grants) -> dict:
            return {r: [g.get(p, 0) for p in self.replicas] for r, g in sorted(grants.items())}
        return {"limit": self.limit, "replicas": list(self.replicas), "grants": aligned(self.grants),
                "held": aligned(self.held), "level": round(self.level, 3),
                "utilization": round(self.utilization, 3)}

    @classmethod
    def from_dict(cls, data: dict) -> DeploymentShares:
        replicas = tuple(data.get("replicas") or ())

        def unaligned(grants: dict) -> Grants:
            return {r: dict(zip(replicas, (int(n) for n in counts))) for r, counts in (grants or {}).items()}
        return cls(int(data["limit"]), replicas, unaligned(data.get("grants")), unaligned(data.get("held")),
                   float(data.get("level", 0.0)))


@dataclass(frozen=True)
class SharesDoc:
    version: int = 0
    coordinator: str = ""
    routers: tuple[str, ...] = ()
    deployments: dict[str, DeploymentShares] = field(default_factory=dict)  # "endpoint/deployment"

    def grants_for(self, router: str, key: str) -> dict[str, int] | None:
        """This router's slots per replica; None when the coordinator has not decided for it."""
        shares = self.deployments.get(key)
        if shares is None or router not in self.routers:
            return None
        granted = shares.grants.get(router, {})
        return {p: granted.get(p, 0) for p in shares.replicas}

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "coordinator": self.coordinator, "routers": list(self.routers),
                           "deployments": {k: d.to_dict() for k, d in sorted(self.deployments.items())}},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SharesDoc:
        data = json.loads(text)
        return cls(int(data.get("version", 0)), str(data.get("coordinator", "")), tuple(data.get("routers") or ()),
                   {k: DeploymentShares.from_dict(d) for k, d in (data.get("deployments") or {}).items()})

    @classmethod
    def from_config_map(cls, config_map: dict | None, key: str) -> SharesDoc | None:
        """The document a ConfigMap holds under `key`; None when there is none (no object,
        or no such entry). ValueError, saying why, when the entry cannot be read."""
        text = ((config_map or {}).get("data") or {}).get(key)
        if not text:
            return None
        try:
            return cls.from_json(text)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{key} cannot be read: {exc}") from None


def apportion(total: int, demands: dict[str, float], cap: int, previous: dict[str, int],
              credit: dict[str, float]) -> dict[str, int]:
    """`total` units in proportion to demand (equal if none), at most `cap` each."""
    routers = sorted(demands)
    weights = {r: max(0.0, demands[r]) for r in routers}
    weight_sum = sum(weights.values())
    ideal = {r: total * weights[r] / weight_sum if weight_sum > 0 else total / len(routers) for r in routers}
    given = {r: min(cap, int(ideal[r])) for r in routers}
    left = total - sum(given.values())
    while left > 0:
        candidates = [r for r in routers if given[r] < cap]
        if not candidates:
            break
        best = max(candidates, key=lambda r: (ideal[r] - given[r] + credit.get(r, 0.0)
                                              + (STICKY_BONUS if previous.get(r, 0) > given[r] else 0.0),
                                              -routers.index(r)))
        given[best] += 1
        left -= 1
    for r in routers:
        owed = ideal[r] - given[r]
        credit[r] = min(1.0, credit.get(r, 0.0) + CREDIT_RATE * owed) if owed > 0 else 0.0
    return given


def place(units: dict[str, int], replicas: Sequence[str], limit: int, previous: Grants) -> Grants:
    """Units per router → slots per replica: even spread, at most `limit` per replica,
    a router's remainder on the replicas with most room (ties: the ones it had)."""
    count = len(replicas)
    out = {r: {p: units[r] // count for p in replicas} for r in units}
    room = {p: limit - sum(out[r][p] for r in units) for p in replicas}
    for index, router in enumerate(sorted(units, key=lambda r: (-(units[r] % count), r))):
        had = previous.get(router, {})
        order = sorted(range(count), key=lambda i: (-room[replicas[i]], -had.get(replicas[i], 0), (i - index) % count))
        for i in order[:units[router] % count]:
            if room[replicas[i]] > 0:
                out[router][replicas[i]] += 1
                room[replicas[i]] -= 1
    return out


def targets(limit: int, replicas: Sequence[str], demands: dict[str, float], previous: Grants,
            credit: dict[str, float]) -> Grants:
    routers = sorted(demands)
    if not routers or not replicas or limit <= 0:
        return {r: {p: 0 for p in replicas} for r in routers}
    if limit >= len(routers):
        had = {r: max(previous.get(r, {}).values(), default=1) - 1 for r in routers}
        extra = apportion(limit - len(routers), demands, limit, had, credit)
        return {r: {p: 1 + extra[r] for p in replicas} for r in routers}
    total, count = limit * len(replicas), len(replicas)
    had = {r: sum(previous.get(r, {}).get(p, 0) for p in replicas) for r in routers}
    if total >= len(routers):
        extra = apportion(total - len(routers), demands, count - 1, {r: n - 1 for r, n in had.items()}, credit)
        units = {r: 1 + n for r, n in extra.items()}
    else:
        units = apportion(total, demands, 1, had, credit)
    return place(units, replicas, limit, previous)


def hand_over(limit: int, replicas: Sequence[str], target: Grants, grants: Grants, held: Grants) -> Grants:
    """New grants toward `target` that never let max(held, grant) summed over routers pass the limit."""
    new = {r: {p: min(target[r].get(p, 0), max(grants.get(r, {}).get(p, 0), held.get(r, {}).get(p, 0)))
               for p in replicas} for r in target}
    order = sorted(new)
    for p in replicas:
        free = limit - sum(max(held.get(r, {}).get(p, 0), new.get(r, {}).get(p, 0)) for r in set(held) | set(new))
        while free > 0:
            growers = [r for r in order if new[r][p] < target[r].get(p, 0)]
            if not growers:
                break
            best = max(growers, key=lambda r: (target[r][p] - new[r][p], -order.index(r)))
            new[best][p] += 1
            free -= 1
    return new


class Allocator:
    """The coordinator's memory between rounds, restored from the last doc on take-over."""

    def __init__(self, identity: str, doc: SharesDoc | None = None) -> None:
        self.identity = identity
        self.doc = doc or SharesDoc()
        # A router confirms a grant increase by reporting a doc version at least this one;
        # after a take-over nobody has confirmed anything yet.
        self._raised_at = {r: self.doc.version for r in self.doc.routers}
        self._credit: dict[str, dict[str, float]] = {}

    def round(self, deployments: dict[str, tuple[int, tuple[str, ...]]],
              reports: dict[str, Report]) -> tuple[SharesDoc, bool]:
        """(the next doc, whether any grant changed). `deployments`: key -> (limit, ready replicas)."""
        version = self.doc.version + 1
        routers = tuple(sorted(reports))
        out: dict[str, DeploymentShares] = {}
        raised: set[str] = set()
        for key, (limit, replicas) in sorted(deployments.items()):
            before = self.doc.deployments.get(key)
            grants = {r: g for r, g in (before.grants if before else {}).items() if r in reports}
            held_before = before.held if before else {}
            held: Grants = {}
            for router, report in reports.items():
                slots = report.slots.get(key, {})
                confirmed = report.seen >= self._raised_at.get(router, 0)
                held[router] = {}
                for p in replicas:
                    in_use = max(slots.get(p, (0, 0)))
                    floor = grants.get(router, {}).get(p, 0)
                    if not confirmed:
                        floor = max(floor, held_before.get(router, {}).get(p, 0))
                    held[router][p] = max(floor, in_use)
            demands = {r: reports[r].demand.get(key, 0.0) for r in routers}
            wanted = targets(limit, replicas, demands, grants, self._credit.setdefault(key, {}))
            new = hand_over(limit, replicas, wanted, grants, held)
            for router, slots in new.items():
                if any(n > grants.get(router, {}).get(p, 0) for p, n in slots.items()):
                    raised.add(router)
            held = {r: {p: max(held[r].get(p, 0), new[r].get(p, 0)) for p in replicas} for r in routers}
            level = sum(reports[r].level.get(key, 0.0) for r in routers)
            out[key] = DeploymentShares(limit, replicas, new, held, level)
        for key in [k for k in self._credit if k not in deployments]:
            del self._credit[key]
        changed = routers != self.doc.routers or {k: (d.limit, d.replicas, d.grants) for k, d in out.items()} != {
            k: (d.limit, d.replicas, d.grants) for k, d in self.doc.deployments.items()}
        for router in raised:
            self._raised_at[router] = version
        return SharesDoc(version, self.identity, routers, out), changed

    def published(self, doc: SharesDoc) -> None:
        """The doc was written: it is the base of the next round."""
        self.doc = doc
