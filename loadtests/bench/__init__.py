"""`python -m loadtests bench`: scoregate vs direct vs nginx, on this machine, in one run.

What it answers: how much does the gateway cost, compared with calling the
replica directly and with a C reverse proxy doing the same job on the same
core?  See docs/performance.md for the method and the latest reading.
Modules: procs (pinned children), gateway (scoregate under test), nginx,
measure (one measurement, medians), orchestrate (the rounds), workers (the
`--workers N` scaling phase), report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

QUICK = {"runs": 1, "duration": 0.3, "rates": [100.0, 200.0], "warmup": 0.1, "noise_retries": 0,
         "idle_connections": 200, "handshake_seconds": 1}


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates needs numbers, e.g. 1000,3000: {text!r}") from None
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be > 0")
    return rates


def add_bench_parser(sub) -> None:
    from ..cli import _positive

    p = sub.add_parser("bench", help="benchmark scoregate against direct and nginx",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=_positive(int), help="rounds per figure (3; quick 1)")
    p.add_argument("--duration", type=_positive(float), help="seconds per measurement (5; quick 0.3)")
    p.add_argument("--rates", type=_rates, help="fixed open-loop rates (1000,3000; quick 100,200); "
                   "50%% of scoregate's max is always added")
    p.add_argument("--warmup", type=float, help="seconds of the same load before each "
                   "measurement, not recorded (1; quick 0.1)")
    p.add_argument("--connections", type=_positive(int), default=32,
                   help="closed-loop connections (32)")
    p.add_argument("--processes", type=_positive(int), default=1,
                   help="generator processes (1); they share the client core")
    p.add_argument("--gateway-cpu", type=int, default=0, help="core for scoregate and nginx (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core for generator + replica (1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin anything to cores")
    nginx = p.add_mutually_exclusive_group()
    nginx.add_argument("--install-nginx", action="store_true",
                       help="apt-get install nginx if it is missing")
    nginx.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    p.add_argument("--no-wrk", action="store_true", help="no wrk cross-check of max throughput")
    p.add_argument("--idle-connections", type=int, help="idle keep-alive TLS connections held "
                   "open to scoregate for its memory figure (10000; quick 200; 0 skips)")
    p.add_argument("--replica", choices=("fastserver", "modelserver"), default="fastserver",
                   help="the replica behind every proxy: loadtests' trivial fast server (default), "
                        "or scoregate's model server with a constant run()")
    p.add_argument("--noise-limit", type=float, default=0.15, help="redo a measurement when other "
                   "processes took more than this many cores meanwhile (0.15)")
    p.add_argument("--noise-retries", type=int, help="how many times to redo it (2; quick 0)")
    p.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                   help="also measure `scoregate serve --workers N` after the session and compare "
                        "its max throughput with one worker's (goal: >= 0.8 x N); a fair reading "
                        "needs N+1 cores, with fewer it is only indicative (1: no such phase)")
    p.add_argument("--quick", action="store_true",
                   help="seconds, not minutes: checks the benchmark works, measures nothing")
    p.add_argument("--output", type=Path, help="directory for results.json and summary.md "
                   "(loadtest-results/bench-TIMESTAMP)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    p.set_defaults(handler=bench_command)


def options_from_args(args: argparse.Namespace):
    from .orchestrate import BenchOptions

    quick = QUICK if args.quick else {}
    opts = BenchOptions(
        connections=args.connections, processes=args.processes,
        gateway_cpu=None if args.no_pin else args.gateway_cpu,
        client_cpu=None if args.no_pin else args.client_cpu,
        nginx="skip" if args.no_nginx else ("install" if args.install_nginx else "auto"),
        wrk=not args.no_wrk, noise_limit=args.noise_limit, replica=args.replica,
        workers=args.workers,
        progress=None if args.quiet else sys.stderr)
    for key in ("runs", "duration", "rates", "warmup", "noise_retries", "idle_connections",
                "handshake_seconds"):
        given = getattr(args, key, None)
        if given is not None:
            setattr(opts, key, given)
        elif key in quick:
            setattr(opts, key, quick[key])
    return opts


def bench_command(args: argparse.Namespace) -> int:
    from ..admin import GatewayError
    from .orchestrate import run_session
    from .procs import BenchError
    from .report import build, markdown

    opts = options_from_args(args)
    prog = "python -m loadtests" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name
    command = " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])
    try:
        session, setup = run_session(opts)
    except (BenchError, GatewayError, OSError) as exc:
        print(f"loadtests bench: error: {exc}", file=sys.stderr)
        return 1
    data = build(session, setup, command)
    out = args.output or Path("loadtest-results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = markdown(data)
    (out / "summary.md").write_text(text)
    if not args.no_plots and session.last_results:
        from ..report import write_plots

        half = setup["rates"][-1][0]
        chosen = [r for (rate, _), r in session.last_results.items() if rate == half]
        write_plots(chosen, out)
    print(text, end="")
    if not args.quiet:
        print(f"results in {out}", file=sys.stderr)
    return 0
