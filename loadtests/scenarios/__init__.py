"""Scenarios: `python -m loadtests scenario NAME ...`, one small module each.

Each module has NAME, HELP, add_arguments(parser) and `async run(ctx)` that
returns a ScenarioReport.  This package wires them into the CLI with the
options they share (target, rate, duration, --smoke, output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from . import autoscale, burst, replica_failure, rollout, steady, step
from .base import Context, ScenarioError, ScenarioReport, default_output

SCENARIOS = {m.NAME: m for m in (steady, step, burst, rollout, replica_failure, autoscale)}

__all__ = ["SCENARIOS", "Context", "ScenarioError", "ScenarioReport", "add_scenario_parser",
           "run_scenario"]


def _common(p: argparse.ArgumentParser) -> None:
    from ..cli import _number, _positive, add_target_arguments
    from ..runner import MAX_WARMUP

    add_target_arguments(p)
    p.add_argument("--rate", type=_positive(float), help="requests/s (per-scenario default)")
    p.add_argument("--duration", type=_positive(float), help="seconds of load (per scenario)")
    p.add_argument("--warmup", type=_number(float, 0, MAX_WARMUP), default=0.0,
                   help="seconds of load at the starting rate first, not recorded (0)")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds at a low rate: checks the scenario works, measures little")
    p.add_argument("--connections", type=_positive(int), help="connection pool size (256)")
    p.add_argument("--output", type=Path, help="directory for results "
                   "(default loadtest-results/scenario-NAME-TIMESTAMP)")
    p.add_argument("--label", help="name of the run in reports")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown",
                   help="what to print on stdout at the end (markdown)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def add_scenario_parser(sub) -> None:
    """`scenario NAME ...` under the loadtests CLI's subcommands."""
    parser = sub.add_parser("scenario", help="run a scenario (steady, step, burst, rollout, "
                            "replica-failure, autoscale)")
    names = parser.add_subparsers(dest="scenario", required=True, metavar="NAME")
    for name, module in SCENARIOS.items():
        p = names.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0])
        _common(p)
        module.add_arguments(p)
    parser.set_defaults(handler=scenario_command)


async def run_scenario(args: argparse.Namespace, progress=None) -> ScenarioReport:
    """Resolve the target and run the named scenario in the current event loop."""
    from ..cli import target_from_args

    target, label = await asyncio.to_thread(target_from_args, args)
    ctx = Context(args, target, args.label or label, progress)
    return await SCENARIOS[args.scenario].run(ctx)


def scenario_command(args: argparse.Namespace) -> int:
    """Run, write scenario.json + summary.md + results.json + plots, print the verdict."""
    from ..admin import GatewayError
    from ..cli import UsageError
    from ..generators.http import new_event_loop
    from ..profiles import ProfileError
    from ..runner import WorkerError

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            report = runner.run(run_scenario(args, None if args.quiet else sys.stderr))
    except GatewayError as exc:
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (UsageError, ProfileError) as exc:  # options that cannot make the run: 2, as argparse's
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return 2
    except (ScenarioError, OSError, ValueError, WorkerError, TimeoutError) as exc:
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return 1
    out = args.output or default_output(args.scenario)
    report.write(out, plots=not args.no_plots)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.markdown(), end="")
    if not args.quiet:
        print(f"results in {out}", file=sys.stderr)
    return 0
