"""Slot shares (pure): targets, placement, and the hand-over that keeps the limit while
shares move between routers that apply them late and report them later still."""

from __future__ import annotations

import random

import pytest

from serving.backends.kubernetes.shares import Allocator, Report, SharesDoc, targets

P3 = ("ns/p1", "ns/p2", "ns/p3")


def per_replica_sums(grants, replicas):
    return [sum(g.get(p, 0) for g in grants.values()) for p in replicas]


def test_enough_slots_every_router_gets_a_uniform_share_in_proportion_to_demand():
    grants = targets(10, P3, {"a": 8.0, "b": 2.0}, {}, {})
    assert per_replica_sums(grants, P3) == [10, 10, 10]
    assert {r: set(g.values()) for r, g in grants.items()} == {"a": {7}, "b": {3}}  # 1 each + 8 by 80/20
    idle = targets(4, P3, {"a": 0.0, "b": 0.0, "c": 0.0}, {}, {})
    assert per_replica_sums(idle, P3) == [4, 4, 4] and all(min(g.values()) >= 1 for g in idle.values())


def test_fewer_slots_than_routers_deals_out_replicas():
    grants = targets(1, P3, {"a": 1.0, "b": 1.0, "c": 1.0}, {}, {})
    assert per_replica_sums(grants, P3) == [1, 1, 1]
    assert sorted(sum(g.values()) for g in grants.values()) == [1, 1, 1]  # one replica each, disjoint
    again = targets(1, P3, {"a": 5.0, "b": 1.0, "c": 1.0}, grants, {})
    assert again == grants  # sticky: no reshuffle while everyone keeps one
    busy = targets(1, P3, {"a": 9.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.0}, {}, {})
    assert per_replica_sums(busy, P3) == [1, 1, 1] and sum(busy["a"].values()) == 1  # never two routers on one


def test_a_router_owed_a_slot_gets_it_in_time():
    credit, grants, holders = {}, {}, []
    for _ in range(40):  # one slot, two equally busy routers
        grants = targets(1, ("ns/p1",), {"a": 1.0, "b": 1.0}, grants, credit)
        holders.append(next(r for r, g in grants.items() if g["ns/p1"]))
    changes = sum(1 for x, y in zip(holders, holders[1:]) if x != y)
    assert set(holders) == {"a", "b"} and changes <= 8  # shared, without ping-pong every round


def test_report_and_doc_round_trip():
    report = Report(3, {"iris/blue": 2.5}, {"iris/blue": 1.25}, {"iris/blue": {"ns/p1": (2, 1)}})
    assert Report.from_json(report.to_json()) == report
    doc, _ = Allocator("a").round({"iris/blue": (2, ("ns/p1",))}, {"a": report, "b": Report()})
    assert SharesDoc.from_json(doc.to_json()) == doc
    assert doc.grants_for("a", "iris/blue") == {"ns/p1": 1} and doc.grants_for("zed", "iris/blue") is None


def test_a_config_map_holds_a_doc_none_or_an_unreadable_entry():
    doc, _ = Allocator("a").round({"iris/blue": (2, ("ns/p1",))}, {"a": Report()})
    assert SharesDoc.from_config_map({"data": {"shares.json": doc.to_json()}}, "shares.json") == doc
    for nothing in (None, {}, {"data": None}, {"data": {}}, {"data": {"shares.json": ""}}):
        assert SharesDoc.from_config_map(nothing, "shares.json") is None
    for broken in ("{not json", "[]", '{"version": "x"}', '{"deployments": {"k": 3}}'):
        with pytest.raises(ValueError, match="shares.json cannot be read"):
            SharesDoc.from_config_map({"data": {"shares.json": broken}}, "shares.json")


@pytest.mark.parametrize("seed", range(12))
def test_the_limit_holds_while_shares_move(seed):
    """Routers apply published docs late, admit and finish requests at random, report with
    a random lag; demand jumps around; the coordinator is replaced every 20 rounds. At no moment
    may a replica have more requests in flight than its limit."""
    rng = random.Random(seed)
    limit = rng.choice([1, 2, 3, 5])
    replicas = P3[: rng.choice([1, 2, 3])]
    routers = ["a", "b", "c"][: rng.choice([2, 3])]
    key = "iris/blue"
    docs = [SharesDoc()]
    allocator = Allocator("a")
    applied = {r: 0 for r in routers}
    in_flight = {r: {p: 0 for p in replicas} for r in routers}
    reports: dict[str, list[Report]] = {r: [Report()] for r in routers}
    delivered = {r: 0 for r in routers}
    served = 0
    for step in range(300):
        if step % 20 == 19:  # take-over: a new coordinator resumes from the last published doc
            allocator = Allocator(rng.choice(routers), docs[-1])
        for r in routers:
            applied[r] = rng.randint(applied[r], len(docs) - 1)
            grants = docs[applied[r]].grants_for(r, key) or {}
            for p in replicas:
                if in_flight[r][p] and rng.random() < 0.5:
                    in_flight[r][p] -= 1
                    served += 1
                allowed = grants.get(p, 0)
                while in_flight[r][p] < allowed and rng.random() < 0.7:
                    in_flight[r][p] += 1
            slots = {p: (grants.get(p, 0), in_flight[r][p]) for p in replicas}
            demand = rng.choice([0.0, 1.0, 3.0, 10.0])
            reports[r].append(Report(docs[applied[r]].version, {key: demand}, {key: demand}, {key: slots}))
        for p in replicas:
            assert sum(in_flight[r][p] for r in routers) <= limit, (step, p, in_flight)
        for r in routers:
            if rng.random() < 0.3:  # reports arrive late, and only now and then
                delivered[r] = rng.randint(delivered[r], len(reports[r]) - 1)
        doc, changed = allocator.round({key: (limit, replicas)}, {r: reports[r][delivered[r]] for r in routers})
        if changed:
            docs.append(doc)
            allocator.published(doc)
    # slots did get used, not just held back (at most about one release per slot and step in two)
    assert served > 0.3 * limit * len(replicas) * 300 * 0.5, served


def test_a_replica_stays_in_the_report_while_requests_to_it_run():
    """Dealt to another router, a replica leaves this router's table; a slow request to it
    must still be reported, or its slot would be dealt out while in use."""
    from types import SimpleNamespace

    from serving.backends.kubernetes.router_running import ReportBuilder

    in_flight = {"ns/p1": 1}
    allowed = {"iris/blue": {"ns/p1": 1}}
    router = SimpleNamespace(load=lambda e, d: (sum(in_flight.values()), 0),
                             in_flight_for=lambda r: in_flight.get(r, 0),
                             take_utilization=lambda e, d: SimpleNamespace(average_level=1.0))
    build = ReportBuilder(router, SimpleNamespace(allowed=lambda: allowed))
    assert build(1).slots == {"iris/blue": {"ns/p1": (1, 1)}}
    allowed["iris/blue"] = {"ns/p2": 1}  # p1 went to another router; its request is still running
    assert build(2).slots == {"iris/blue": {"ns/p1": (0, 1), "ns/p2": (1, 0)}}
    in_flight.clear()
    build(3)
    assert build(4).slots == {"iris/blue": {"ns/p2": (1, 0)}}  # done: no longer reported
