"""The planner, table-driven: desired deployments + observed replicas → actions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from serving.backends import EXITED, READY, STARTING, STOPPING, ReplicaView
from serving.controller.planner import (StartReplica, StopReplica, max_surge, plan, restart_backoff_s,
                                       wanted_count)
from serving.resources import Deployment

NOW = 1000.0
BLUE = Deployment(name="blue", endpoint_name="ep", code="/code", scoring_script="score.py", instance_count=2)
HASH = BLUE.replica_spec_hash()


def replica(rid, state=READY, spec_hash=HASH, deployment="blue", started_at=1.0, restarts=0, ended_at=None,
            failed_stage=None, crash_streak=None):
    return ReplicaView(rid, "ep", deployment, spec_hash, state, "127.0.0.1", 1, 1, started_at,
                       restarts=restarts, ended_at=ended_at, failed_stage=failed_stage, crash_streak=crash_streak)


def summary(actions):
    out = []
    for a in actions:
        if isinstance(a, StartReplica):
            out.append(("start", a.deployment.name, a.crash_streak))
        elif isinstance(a, StopReplica):
            out.append(("stop", a.replica_id))
        else:
            out.append(("forget", a.replica_id))
    return sorted(out)


CASES = {
    "nothing running: start instance_count": (
        [BLUE], [], [("start", "blue", 0), ("start", "blue", 0)]),
    "all running: keep": (
        [BLUE], [replica("a"), replica("b", STARTING)], []),
    "one short: start one": (
        [BLUE], [replica("a")], [("start", "blue", 0)]),
    "one too many: stop a starting one first": (
        [BLUE], [replica("a"), replica("b"), replica("c", STARTING)], [("stop", "c")]),
    "one too many, all ready: stop the newest": (
        [BLUE], [replica("a", started_at=1), replica("b", started_at=3), replica("c", started_at=2)],
        [("stop", "b")]),
    "deployment deleted: stop all, forget exited": (
        [], [replica("a"), replica("b", EXITED, ended_at=NOW)], [("forget", "b"), ("stop", "a")]),
    "exited, back-off over: forget and restart with restarts+1": (
        [BLUE], [replica("a"), replica("b", EXITED, restarts=2, ended_at=NOW - 10)],
        [("forget", "b"), ("start", "blue", 3)]),
    "exited, back-off running: wait": (
        [BLUE], [replica("a"), replica("b", EXITED, restarts=3, started_at=NOW - 5, ended_at=NOW - 1)], []),
    "exited after a healthy run: replaced at once, a new streak": (
        [BLUE], [replica("a"), replica("b", EXITED, restarts=3, started_at=NOW - 100, ended_at=NOW - 1,
                                        failed_stage="running")],
        [("forget", "b"), ("start", "blue", 0)]),
    "crashed during init after a long time: still backs off": (
        [BLUE], [replica("a"), replica("b", EXITED, restarts=3, started_at=NOW - 100, ended_at=NOW - 1,
                                        failed_stage="init")], []),
    "stopping replicas are left alone": (
        [BLUE], [replica("a"), replica("b"), replica("c", STOPPING)], []),
    "new spec, nothing ready yet: start one new (surge 1), keep old serving": (
        [BLUE], [replica("a", spec_hash="old"), replica("b", spec_hash="old")],
        [("start", "blue", 0)]),
    "new spec, first new starting: wait for it": (
        [BLUE], [replica("a", spec_hash="old"), replica("b", spec_hash="old"), replica("n1", STARTING)], []),
    "new spec, first new ready: stop one old, start the next": (
        [BLUE], [replica("a", spec_hash="old", started_at=1), replica("b", spec_hash="old", started_at=2),
                 replica("n1")], [("stop", "a"), ("start", "blue", 0)]),
    "new spec on 8 replicas: surge of 2": (
        [replace(BLUE, instance_count=8)], [replica(f"o{i}", spec_hash="old") for i in range(8)],
        [("start", "blue", 0), ("start", "blue", 0)]),
    "new spec, one new ready: stop one old": (
        [BLUE], [replica("a", spec_hash="old", started_at=1), replica("b", spec_hash="old", started_at=2),
                 replica("n1"), replica("n2", STARTING)], [("stop", "a")]),
    "new spec, all new ready: stop all old": (
        [BLUE], [replica("a", spec_hash="old"), replica("b", spec_hash="old"), replica("n1"), replica("n2")],
        [("stop", "a"), ("stop", "b")]),
    "exited replica of an old spec: forget without restart count": (
        [BLUE], [replica("x", EXITED, spec_hash="old", ended_at=NOW), replica("a"), replica("b")],
        [("forget", "x")]),
    "scale to zero": (
        [replace(BLUE, instance_count=0)], [replica("a"), replica("b")], [("stop", "a"), ("stop", "b")]),
}


@pytest.mark.parametrize("desired, observed, expected", CASES.values(), ids=CASES.keys())
def test_plan(desired, observed, expected):
    assert summary(plan(desired, observed, NOW)) == sorted(expected)


def starts(actions):
    return [(a.crash_streak, a.restarts, a.replaces_exited) for a in actions if isinstance(a, StartReplica)]


def test_a_replacement_carries_on_its_slots_restarts_even_after_a_healthy_run():
    # Ran well for 100 s: no back-off and a new streak, but the slot was restarted a 6th time.
    long_run = replica("b", EXITED, restarts=5, crash_streak=2, started_at=NOW - 100, ended_at=NOW - 1,
                       failed_stage="running")
    assert starts(plan([BLUE], [replica("a"), long_run], NOW)) == [(0, 6, True)]
    quick = replace(long_run, started_at=NOW - 15, ended_at=NOW - 10)  # 5 s: quick, 2 s back-off over
    assert starts(plan([BLUE], [replica("a"), quick], NOW)) == [(3, 6, True)]


def test_the_back_off_follows_the_streak_not_the_restarts():
    many_restarts = replica("b", EXITED, restarts=9, crash_streak=0, started_at=NOW - 2, ended_at=NOW - 1)
    assert starts(plan([BLUE], [replica("a"), many_restarts], NOW)) == [(1, 10, True)]  # 0.5 s is over
    assert starts(plan([BLUE], [replica("a"), replace(many_restarts, crash_streak=3)], NOW)) == []  # 8 s is not


def test_without_a_streak_the_restarts_drive_the_back_off_as_on_a_cluster():
    pod = replica("b", EXITED, restarts=3, started_at=NOW - 5, ended_at=NOW - 1)
    assert starts(plan([BLUE], [replica("a"), pod], NOW)) == []
    assert starts(plan([BLUE], [replica("a"), pod], NOW + 10)) == [(4, 4, True)]


def test_new_replicas_and_those_of_a_new_version_start_at_0_restarts():
    stale = replica("x", EXITED, spec_hash="old", restarts=4, crash_streak=4, ended_at=NOW)
    assert starts(plan([BLUE], [stale, replica("a")], NOW)) == [(0, 0, False)]


def test_restart_backoff_doubles_and_is_capped():
    assert [restart_backoff_s(n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_backoff_s(50) == 30.0


def test_only_what_makes_a_replica_changes_its_hash():
    assert replace(BLUE, instance_count=5).replica_spec_hash() == HASH
    assert replace(BLUE, environment_variables={"A": "1"}).replica_spec_hash() != HASH


@pytest.mark.parametrize("count", range(1, 13))
@pytest.mark.parametrize("ready_per_round", [1, 2, 99])
def test_wanted_count_reads_back_the_count_through_a_rolling_update(count, ready_per_round):
    """What a new leader reads at any moment of a rollout — after a pass, or after replicas
    became ready with no leader to act — is the count, although up to max_surge more run."""
    old = replace(BLUE, instance_count=count)
    new = replace(old, environment_variables={"A": "1"})
    views = [replica(f"old-{i}", spec_hash=old.replica_spec_hash()) for i in range(count)]
    assert wanted_count(views) == count
    most_live = 0
    for step in range(4 * count + 4):
        for action in plan([new], views, NOW):
            if isinstance(action, StartReplica):
                views.append(replica(f"new-{step}-{len(views)}", STARTING, action.spec_hash, started_at=step))
            elif isinstance(action, StopReplica):
                views = [v for v in views if v.replica_id != action.replica_id]
        most_live = max(most_live, len(views))
        assert wanted_count(views) == count
        starting = [i for i, v in enumerate(views) if v.state == STARTING][:ready_per_round]
        for i in starting:  # ready before the next pass
            views[i] = replace(views[i], state=READY)
        assert wanted_count(views) == count
    assert [v.spec_hash for v in views] == [new.replica_spec_hash()] * count  # the rollout finished
    assert most_live == count + max_surge(count)


def test_wanted_count_without_a_rollout_counts_what_starts_or_runs():
    assert wanted_count([]) == 0
    assert wanted_count([replica("a"), replica("b", STARTING), replica("c", STOPPING)]) == 2
    assert wanted_count([replica("a"), replica("b", EXITED, ended_at=NOW)]) == 1  # lower, never higher
