"""Rollouts: from desired deployment versions to what the planner should run.

For each deployment, every reconcile pass:
- a new desired version (spec hash) starts a Rollout with its budget (the deployment's
  `rollout_timeout_s`, else the gateway's, 20 minutes by default); its first stages
  (environment, model and code download) run in serving.controller.preparing;
- once prepared, the planner runs the new version; the replicas' progress drives the
  init and readiness stages; the rollout succeeds when enough new replicas are ready,
  and that version becomes the deployment's last good one (kept in the store);
- it fails fast when a stage cannot succeed — init() raised, a probe gave up, a
  replica exited `crash_limit` times, the budget ran out — and the deployment then runs
  its last good version again (an automatic rollback), or nothing if it never had one.
  The rolled-back version runs at the replica count desired now (instance_count, or the
  autoscaler's): a count is no part of a version, so a scale still takes effect.
- a new version desired while a rollout is in progress first gets that rollout's verdict
  from the replicas as they are: if they are all ready (they may have become so after the
  last pass; on a cluster the status already says Succeeded and routers serve them), that
  version is the last good one and the new one is an update of it — surge, never a stop of
  the old replicas before new ones are ready — whatever the timing of the edit. The last
  good version is also kept in memory, as the store may give it back late (a watch).
- a controller that did not start a rollout in progress (a new leader on a cluster) takes
  it over from the saved record, which carries the version rolled out: the same verdict
  then applies to the replicas the previous controller started. Until it has prepared a
  version whose replicas already run, it leaves them as they are.
- a failed version is tried again only when the user asks (an apply, or on a cluster the
  retry annotation, changes the record's `attempt`): a new rollout of it from the first
  stage. Any other rollout takes the new attempt on unchanged; the loop never retries.
Until a version is prepared, the last good one keeps serving: a failed rollout changes
nothing for traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ..backends import EXITED, READINESS, READY, STARTING, Artifacts, ReplicaView
from ..resources import Deployment
from ..store import DeploymentRecord
from .planner import crash_streak
from .preparing import Preparer, StageFailed
from .rollout import FAILED, IN_PROGRESS, SUCCEEDED, Rollout, format_duration, unavailable_text

log = logging.getLogger("scoregate.rollout")

Key = tuple[str, str]
DEFAULT_BUDGET_S = 20 * 60.0


@dataclass
class Plan:
    run: list[Deployment] = field(default_factory=list)  # what the planner should run
    hold: set[Key] = field(default_factory=set)  # leave these deployments' replicas alone
    available: set[Key] = field(default_factory=set)  # deployments with a serving version
    # Deployments whose only version failed to roll out: why (for the routing table).
    failed: dict[Key, str] = field(default_factory=dict)
    # Deployments starting a new attempt of a failed version: forget their exited replicas.
    fresh: set[Key] = field(default_factory=set)


def _retry_asked(rollout: Rollout, attempt: str) -> bool:
    """Whether the user asked for a new attempt of this rollout's version: only a Failed
    rollout is tried again. Any other takes the attempt on and goes on as it was, so that
    an unchanged apply never restarts healthy replicas nor a rollout in progress."""
    if rollout.attempt == attempt:
        return False
    if rollout.state == FAILED:
        return True
    rollout.attempt = attempt
    return False


class RolloutManager:
    def __init__(self, preparer: Preparer, *, default_budget_s: float = DEFAULT_BUDGET_S,
                 crash_limit: int = 3, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] = lambda: None, metrics=None) -> None:
        self._preparer = preparer
        self._metrics = metrics  # serving.metrics.ControlPlaneMetrics
        self._default_budget_s = default_budget_s
        self._crash_limit = crash_limit
        self._clock = clock
        self._on_change = on_change
        self._rollouts: dict[Key, Rollout] = {}
        self._artifacts: dict[tuple[Key, str], Artifacts] = {}
        self._preparing: dict[tuple[Key, str], asyncio.Task] = {}
        self._to_save: dict[Key, tuple[Rollout, Deployment | None]] = {}
        self._versions: dict[Key, Deployment] = {}  # the version each current rollout is for
        # The last good version this manager recorded: the store's copy can lag behind it
        # (on a cluster the status patch comes back through a watch).
        self._good: dict[Key, Deployment] = {}

    # -- reading ----------------------------------------------------------------------------
    def rollout(self, key: Key) -> Rollout | None:
        return self._rollouts.get(key)

    def artifacts_for(self, key: Key, spec_hash: str) -> Artifacts | None:
        return self._artifacts.get((key, spec_hash))

    def take_changes(self) -> dict[Key, tuple[Rollout, Deployment | None]]:
        """Rollouts to save (with the new last good version, if one just succeeded)."""
        changes, self._to_save = self._to_save, {}
        return changes

    def keep_unsaved(self, key: Key, rollout: Rollout, last_good: Deployment | None) -> None:
        """A change the store refused: saved with the next ones. A newer rollout queued
        meanwhile replaces it, and takes its last good version unless it has its own."""
        newer = self._to_save.get(key)
        self._to_save[key] = (newer[0], newer[1] or last_good) if newer else (rollout, last_good)

    # -- one pass ---------------------------------------------------------------------------
    def step(self, records: list[DeploymentRecord], replicas: list[ReplicaView],
             wanted: Callable[[Deployment], int]) -> Plan:
        now = self._clock()
        plan = Plan()
        by_key: dict[Key, list[ReplicaView]] = {}
        for view in replicas:
            by_key.setdefault((view.endpoint, view.deployment), []).append(view)
        live = set()
        for record in records:
            desired = record.deployment
            key = (desired.endpoint_name, desired.name)
            live.add(key)
            spec_hash = desired.replica_spec_hash()
            self._take_over(key, record, spec_hash)
            self._conclude_superseded(key, spec_hash, by_key.get(key, []), wanted, now)
            good = self._good.get(key) or record.last_good
            rollout = self._current(key, record, good, spec_hash, now, plan)
            self._versions[key] = desired
            good_hash = good.replica_spec_hash() if good else None
            if rollout.state == IN_PROGRESS:
                self._ensure_prepared(key, desired, spec_hash, rollout)
            if good is not None and good_hash != spec_hash:
                self._ensure_prepared(key, good, good_hash, None)
            if rollout.state == IN_PROGRESS and (key, spec_hash) in self._artifacts:
                self._advance(key, rollout, desired, spec_hash, by_key.get(key, []), wanted(desired), now)
            if rollout.over_budget(now):
                stage = rollout.stage or "environment"
                self._fail(key, rollout, stage, f"budget of {format_duration(rollout.budget_s)} "
                           f"exhausted in stage {stage}", good, now)

            if rollout.state == SUCCEEDED or (rollout.state == IN_PROGRESS and (key, spec_hash) in self._artifacts):
                plan.run.append(replace(desired, instance_count=wanted(desired)))
            elif good is not None and good_hash != spec_hash:
                if (key, good_hash) in self._artifacts:
                    # The last good version, at the count asked for now: a count is no part
                    # of a version, and a scale after a failed update must not be ignored.
                    plan.run.append(replace(good, instance_count=wanted(desired)))
                else:
                    plan.hold.add(key)  # keep what runs until the last good version is prepared
            elif rollout.state == IN_PROGRESS and any(r.spec_hash == spec_hash and r.state in (STARTING, READY)
                                                      for r in by_key.get(key, [])):
                # Replicas of a version not prepared here: another controller started them
                # (a previous leader). Running it at 0 for a pass would stop them.
                plan.hold.add(key)
            else:
                plan.run.append(replace(desired, instance_count=0))
            if rollout.state == SUCCEEDED or good is not None:
                plan.available.add(key)
            elif rollout.state == FAILED:
                plan.failed[key] = unavailable_text(rollout.failed_stage, rollout.reason)
        self._forget_others(live)
        return plan

    def _take_over(self, key: Key, record: DeploymentRecord, spec_hash: str) -> None:
        """A deployment this manager has no rollout for yet (it just became the leader, or
        started) while the saved rollout of another version is in progress: take that
        rollout and its version over, so that a version replaced before this pass gets its
        verdict from the replicas the previous controller started (_conclude_superseded)."""
        if key in self._rollouts or not record.rollout:
            return
        saved = Rollout.from_dict(record.rollout)
        if saved.state != IN_PROGRESS or saved.spec_hash == spec_hash or not saved.version:
            return
        version = Deployment.from_dict(saved.version)
        if version.replica_spec_hash() == saved.spec_hash:  # else hashed by another release
            self._rollouts[key], self._versions[key] = saved, version
            log.info("taking over the rollout of %s/%s version %s (%s, started by another controller)",
                     key[0], key[1], saved.spec_hash, saved.kind)

    def _conclude_superseded(self, key: Key, spec_hash: str, replicas: list[ReplicaView],
                             wanted: Callable[[Deployment], int], now: float) -> None:
        """A new version is desired while the current rollout is in progress. Its replicas
        may all be ready already — they became ready after the last pass, and on a cluster
        the status says Succeeded and the routers send them traffic — so give it the
        verdict that pass would have given before it is replaced: if it succeeded, the new
        version is an update of it (surge, and a rollback to it if the new one fails).
        Also for a rollout taken over from a previous controller, which prepared it there."""
        rollout, version = self._rollouts.get(key), self._versions.get(key)
        if rollout is None or version is None or rollout.state != IN_PROGRESS or rollout.spec_hash == spec_hash:
            return
        mine = [r for r in replicas if r.spec_hash == rollout.spec_hash]
        if (key, rollout.spec_hash) not in self._artifacts and not any(r.state == READY for r in mine):
            return  # neither prepared here nor serving: nothing of it runs
        self._succeed_if_ready(key, rollout, version, mine, wanted(version), now)

    def _current(self, key: Key, record: DeploymentRecord, good: Deployment | None, spec_hash: str,
                 now: float, plan: Plan) -> Rollout:
        rollout = self._rollouts.get(key)
        if rollout is None and record.rollout:
            saved = Rollout.from_dict(record.rollout)
            if saved.spec_hash == spec_hash and saved.state != IN_PROGRESS:
                rollout = saved  # finished before a restart: keep its verdict
        retry = rollout is not None and rollout.spec_hash == spec_hash and _retry_asked(rollout, record.attempt)
        if rollout is None or rollout.spec_hash != spec_hash or retry:
            budget = record.deployment.rollout_timeout_s or self._default_budget_s
            kind = "update" if good is not None else "create"
            rollout = Rollout(spec_hash, kind, budget, now, version=record.deployment.to_dict(),
                              attempt=record.attempt)
            log.info("rollout of %s/%s version %s started (%s%s, budget %s)", key[0], key[1], spec_hash, kind,
                     f", attempt {record.attempt} asked for by an apply" if retry else "", format_duration(budget))
            if retry:
                self._start_afresh(key, spec_hash, plan)
            self._record(key, rollout)
        self._rollouts[key] = rollout
        return rollout

    def _start_afresh(self, key: Key, spec_hash: str, plan: Plan) -> None:
        """A new attempt of a failed version runs every stage again: its preparation is
        redone (what failed may be outside the YAML: a download, a dependency) and the
        replicas that exited in the failed attempt are forgotten, so that neither their
        exits nor their restart back-off count against it."""
        self._artifacts.pop((key, spec_hash), None)
        plan.fresh.add(key)

    def _ensure_prepared(self, key: Key, deployment: Deployment, spec_hash: str, rollout: Rollout | None) -> None:
        job = (key, spec_hash)
        if job in self._artifacts or job in self._preparing:
            return
        task = asyncio.get_running_loop().create_task(self._prepare(key, deployment, spec_hash, rollout))
        self._preparing[job] = task

    async def _prepare(self, key: Key, deployment: Deployment, spec_hash: str, rollout: Rollout | None) -> None:
        try:
            artifacts = await self._preparer.prepare(deployment, rollout, self._clock)
            self._artifacts[(key, spec_hash)] = artifacts
            if rollout is not None and self._rollouts.get(key) is rollout:
                rollout.enter("init", self._clock())
                self._record(key, rollout)
        except StageFailed as exc:
            if rollout is None:
                log.error("cannot prepare the last good version of %s/%s: %s", key[0], key[1], exc)
            elif self._rollouts.get(key) is rollout:
                self._fail(key, rollout, exc.stage, exc.reason, None, self._clock())
            else:  # replaced by a newer version meanwhile: its rollout is what counts now
                log.info("preparing the replaced version %s of %s/%s failed: %s", spec_hash, key[0], key[1], exc)
        except Exception as exc:  # a bug must not leave the rollout hanging until its budget
            log.exception("preparing %s/%s failed", *key)
            if rollout is not None and self._rollouts.get(key) is rollout:
                self._fail(key, rollout, rollout.stage or "environment", f"internal error: {exc}", None,
                           self._clock())
        finally:
            self._preparing.pop((key, spec_hash), None)
            self._on_change()

    def _advance(self, key: Key, rollout: Rollout, desired: Deployment, spec_hash: str,
                 replicas: list[ReplicaView], wanted: int, now: float) -> None:
        mine = [r for r in replicas if r.spec_hash == spec_hash]
        for replica in mine:
            if replica.state != EXITED:
                continue
            stage = replica.failed_stage or "init"
            if stage in ("environment", "model_download", "code_download", "readiness") \
                    or (stage == "init" and "init()" in replica.reason):
                return self._fail(key, rollout, stage, replica.reason, None, now)
            streak = crash_streak(replica)
            if streak + 1 >= self._crash_limit:
                return self._fail(key, rollout, stage if stage in ("init", "readiness") else "readiness",
                                  f"the replica exited {streak + 1} times; last: {replica.reason}",
                                  None, now)
        self._succeed_if_ready(key, rollout, desired, mine, wanted, now)

    def _succeed_if_ready(self, key: Key, rollout: Rollout, desired: Deployment, mine: list[ReplicaView],
                          wanted: int, now: float) -> None:
        if any(r.state == READY or r.phase == READINESS for r in mine):
            rollout.enter("readiness", now)
        if sum(1 for r in mine if r.state == READY) >= wanted:
            rollout.succeed(now)
            if self._metrics is not None:
                self._metrics.rollout_finished(key, True)
            log.info("rollout of %s/%s version %s succeeded in %.1fs", key[0], key[1], rollout.spec_hash,
                     now - rollout.started_at)
            self._good[key] = desired
            self._record(key, rollout, desired)

    def _record(self, key: Key, rollout: Rollout, last_good: Deployment | None = None) -> None:
        """Queue the rollout for the store; a last good version queued earlier in the same
        pass (a superseded rollout that succeeded) is saved with it, not dropped."""
        pending = self._to_save.get(key)
        self._to_save[key] = (rollout, last_good or (pending[1] if pending else None))

    def _fail(self, key: Key, rollout: Rollout, stage: str, reason: str, _good, now: float) -> None:
        if rollout.state != IN_PROGRESS:
            return
        rollout.fail(stage, reason, now)
        rollout.rolled_back = rollout.kind == "update"
        if self._metrics is not None:
            self._metrics.rollout_finished(key, False)
        log.error("rollout of %s/%s version %s failed in stage %s: %s%s", key[0], key[1], rollout.spec_hash,
                  stage, reason, "; rolled back to the previous version" if rollout.rolled_back else "")
        self._record(key, rollout)
        self._on_change()

    def _forget_others(self, live: set[Key]) -> None:
        for key in [k for k in self._rollouts if k not in live]:
            del self._rollouts[key]
            if self._metrics is not None:
                self._metrics.forget(key)
        for known in (self._versions, self._good):
            for key in [k for k in known if k not in live]:
                del known[key]
        for job in [j for j in self._artifacts if j[0] not in live]:
            del self._artifacts[job]
        for job, task in list(self._preparing.items()):
            if job[0] not in live:
                task.cancel()

    async def close(self) -> None:
        tasks = list(self._preparing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
