"""What every scenario shares: options, the load + action driver, the report.

A scenario is a load shape plus (maybe) one action against the gateway in
the middle of it — apply a new version, kill a replica, watch the replica
count — and a verdict in the terms a user asks about.  Load and action run
in one event loop so the action's timestamps and the requests' share a clock
(EventRecorder.t0); hence one generator process per scenario, which is
plenty for the rates these scenarios need (use `run --processes` for more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, TextIO

from ..admin import Gateway, GatewayError
from ..generators.http import Target
from ..results import RunResult
from ..runner import RunSpec, run_async
from .timeline import EventRecorder, Watch

SCENARIO_JSON = "scenario.json"
ACTION_GRACE_S = 5.0  # an action still busy when the load ends gets this long to finish


class ScenarioError(RuntimeError):
    """The scenario cannot run as asked (e.g. it needs --endpoint)."""


@dataclass
class Context:
    """Parsed options and the resolved target, handed to a scenario's run()."""

    args: argparse.Namespace
    target: Target
    label: str
    progress: TextIO | None = None

    @property
    def smoke(self) -> bool:
        return bool(self.args.smoke)

    def pick(self, given, normal, smoke):
        """The user's value, else the smoke-mode or normal default."""
        if given is not None:
            return given
        return smoke if self.smoke else normal

    def gateway(self) -> tuple[Gateway, str]:
        """The gateway and endpoint of --endpoint NAME; scenarios that act need them."""
        if not self.args.endpoint:
            from ..cli import UsageError

            raise UsageError(f"the {self.args.scenario} scenario acts on the gateway: "
                                "give --endpoint NAME (and --state-dir if needed)")
        return Gateway.from_state_dir(self.args.state_dir), self.args.endpoint

    def spec(self, profile: str, duration: float) -> RunSpec:
        return RunSpec(target=self.target, duration=duration, mode="open", profile=profile,
                       connections=self.args.connections or 0, label=self.label,
                       warmup=self.args.warmup)


@dataclass
class ScenarioReport:
    """The verdict (headline + facts) and the evidence (timeline, run)."""

    scenario: str
    headline: str
    facts: dict = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)  # Markdown blocks
    timeline: list[dict] = field(default_factory=list)  # {"t_s": ..., "event": ...}
    run: RunResult | None = None

    def to_dict(self) -> dict:
        return {"schema": "scoregate.loadtest.scenario/v1", "scenario": self.scenario,
                "headline": self.headline, "facts": self.facts, "timeline": self.timeline,
                "run": self.run.to_dict() if self.run else None}

    def markdown(self) -> str:
        lines = [f"# Scenario: {self.scenario}", "", f"**{self.headline}**", ""]
        for block in self.sections:
            lines += [block.rstrip(), ""]
        if self.timeline:
            lines += ["## Timeline", "", "| t (s) | event |", "|---:|---|"]
            lines += [f"| {e['t_s']:.2f} | {_cell(e['event'])} |" for e in self.timeline]
            lines.append("")
        if self.run is not None:
            run_md = self.run.summary_markdown().replace("# Load test:", "## The load:", 1)
            lines.append(run_md.rstrip())
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path, plots: bool = True) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / SCENARIO_JSON).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        if self.run is not None:
            self.run.write(out_dir)  # results.json + the run's summary.md...
        (out_dir / "summary.md").write_text(self.markdown())  # ...which this replaces
        if plots and self.run is not None:
            from ..report import write_plots

            write_plots([self.run], out_dir)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def facts_table(rows: list[tuple[str, object]]) -> str:
    """A two-column Markdown table of what the user cares about."""
    return "\n".join(["| | |", "|---|---|"] + [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows])


Action = Callable[[Watch], Awaitable[None]]


async def run_load(ctx: Context, profile: str, duration: float,
                   action: Action | None = None) -> tuple[RunResult, EventRecorder]:
    """Run the load; run `action` next to it. The action's error is raised after the load."""
    rec = EventRecorder()
    load = asyncio.ensure_future(run_async(ctx.spec(profile, duration), ctx.progress, rec))
    act = asyncio.ensure_future(action(Watch(rec, load, ACTION_GRACE_S - 0.5))) if action else None
    try:
        result = await load
    except BaseException:
        if act is not None:
            act.cancel()
        raise
    if act is not None:
        done, _ = await asyncio.wait({act}, timeout=ACTION_GRACE_S)
        if not done:
            act.cancel()
            await asyncio.wait({act}, timeout=5.0)
        elif act.exception() is not None:
            exc = act.exception()
            if isinstance(exc, (GatewayError, ScenarioError, OSError)):
                raise ScenarioError(f"{ctx.args.scenario}: {exc}") from exc
            raise exc
    return result, rec


def seconds_label(t: float | None) -> str:
    return "-" if t is None else f"{t:.2f} s"


def default_output(scenario: str) -> Path:
    from ..cli import DEFAULT_OUTPUT_ROOT

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scenario)
    return Path(DEFAULT_OUTPUT_ROOT) / f"scenario-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


async def admin(fn, *args):
    """A blocking admin API call, off the event loop that runs the load."""
    return await asyncio.to_thread(fn, *args)
