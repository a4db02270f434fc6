"""A rollout: one deployment version on its way to ready, within a time budget.

Stages, in order: environment (can this machine run it?), model_download, code_download,
init (the replica process runs the user's init(); its port is still closed) and
readiness (readiness probes). Each stage's start, end and outcome are recorded; the
first failure ends the rollout with that stage and a reason a person can act on. This
module only keeps the record; serving.controller.rollouts decides when stages change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

STAGES = ("environment", "model_download", "code_download", "init", "readiness")
IN_PROGRESS, SUCCEEDED, FAILED = "InProgress", "Succeeded", "Failed"


def failure_text(stage: str | None, reason: str) -> str:
    """How a failed rollout ended, for messages: "failed to roll out in stage S (reason)"."""
    return f"failed to roll out in stage {stage} ({reason})"


def unavailable_text(stage: str | None, reason: str) -> str:
    """Why a deployment whose only version failed has no replica (a pinned request's 503)."""
    return f"it {failure_text(stage, reason)}; apply a fixed version"


def format_duration(seconds: float) -> str:
    """1200 → "20m0s", 75.5 → "1m15s", 3 → "3s" (the way the reasons show budgets)."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class StageRecord:
    name: str
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None  # Succeeded | Failed

    def seconds(self, now: float) -> float:
        return round((self.ended_at or now) - self.started_at, 3)


@dataclass
class Rollout:
    spec_hash: str
    kind: str  # "create" or "update"
    budget_s: float
    started_at: float
    state: str = IN_PROGRESS
    stages: list[StageRecord] = field(default_factory=list)
    reason: str = ""
    failed_stage: str | None = None
    rolled_back: bool = False
    finished_at: float | None = None
    # The version rolled out (Deployment.to_dict()), saved with the record: a controller that
    # did not start the rollout (a new leader) can then make it the last good version when
    # its replicas turn out to be ready. None in records written before it was kept.
    version: dict | None = None
    # The provisioning attempt (DeploymentRecord.attempt) this rollout answers: when the
    # user asks for another while it is Failed, the same version is rolled out again.
    attempt: str = ""

    @property
    def stage(self) -> str | None:
        return self.stages[-1].name if self.stages else None

    def enter(self, stage: str, now: float) -> None:
        """Move to `stage`, closing the current one as succeeded (never backwards)."""
        if self.state != IN_PROGRESS or stage == self.stage:
            return
        if self.stage is not None and STAGES.index(stage) < STAGES.index(self.stage):
            return
        self._close(now, SUCCEEDED)
        self.stages.append(StageRecord(stage, now))

    def succeed(self, now: float) -> None:
        if self.state == IN_PROGRESS:
            self._close(now, SUCCEEDED)
            self.state, self.finished_at = SUCCEEDED, now

    def fail(self, stage: str, reason: str, now: float) -> None:
        if self.state != IN_PROGRESS:
            return
        if self.stage != stage:
            self.enter(stage, now)
        self._close(now, FAILED)
        self.state, self.failed_stage, self.reason, self.finished_at = FAILED, stage, reason, now

    def failure(self) -> str:
        return failure_text(self.failed_stage, self.reason)

    def over_budget(self, now: float) -> bool:
        return self.state == IN_PROGRESS and now - self.started_at > self.budget_s

    def _close(self, now: float, outcome: str) -> None:
        if self.stages and self.stages[-1].ended_at is None:
            self.stages[-1].ended_at, self.stages[-1].outcome = now, outcome

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Rollout":
        """A saved record; members this release does not know (written by a newer one, which
        a rolled-back controller may read on a cluster) are left out, not a TypeError on
        every reconcile pass."""
        values = {k: v for k, v in data.items() if k in _ROLLOUT_FIELDS}
        values["stages"] = [StageRecord(**{k: v for k, v in stage.items() if k in _STAGE_FIELDS})
                            for stage in data.get("stages", [])]
        return cls(**values)

    def view(self, now: float) -> dict:
        """What `deployment show` prints about it."""
        return {
            "version": self.spec_hash,  # the deployment version this rollout is of
            "state": self.state,
            "kind": self.kind,
            "stage": self.stage,
            "started_at": self.started_at,
            "elapsed_s": round((self.finished_at or now) - self.started_at, 3),
            "budget": format_duration(self.budget_s),
            "stages": [{"name": s.name, "seconds": s.seconds(now), "outcome": s.outcome or "InProgress"}
                       for s in self.stages],
            **({"failed_stage": self.failed_stage, "reason": self.reason} if self.state == FAILED else {}),
            **({"rolled_back": True} if self.rolled_back else {}),
            **({"attempt": self.attempt} if self.attempt else {}),
        }


_ROLLOUT_FIELDS = frozenset(f.name for f in fields(Rollout))
_STAGE_FIELDS = frozenset(f.name for f in fields(StageRecord))
