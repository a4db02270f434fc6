"""Command line: `python -m loadtests run | compare | scenario | bench | instructions ...`.

build_parser() and run_cli(argv) are separate so the gateway's CLI can mount
the same commands as `scoregate loadtest`; add_run_arguments() and
run_command() let it reuse just the `run` options under its own parser.
Scenarios and the benchmark bring their own parsers (loadtests.scenarios,
loadtests.bench) and are imported only when asked for.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
import sys
import time
from pathlib import Path

from .admin import GatewayError
from .generators.http import Target
from .profiles import ProfileError, parse_profile
from .results import RunResult, comparison_markdown
from .runner import MAX_DURATION, MAX_PROCESSES, MAX_WARMUP, RunSpec, WorkerError, run
from .targets import ResolvedTarget, merge_headers, resolve

DEFAULT_OUTPUT_ROOT = "loadtest-results"
COMMANDS = ("run", "compare", "scenario", "bench", "instructions", "ab")


class UsageError(ValueError):
    """Options that parse but cannot make the run asked for (exit code 2, like argparse)."""


def _number(kind, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type checking the range, so a bad value is a usage error (exit 2)
    like any other, not a failed run (exit 1) found later by RunSpec."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        above = value > low if low_open else value >= low
        if not (above and (high is None or value <= high)):  # NaN fails both
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            if high is not None:
                bound = f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}: {text!r}")
        return value
    return convert


def _positive(kind, high: float | None = None):
    return _number(kind, 0, high, low_open=True)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _profile(text: str) -> str:
    try:
        return parse_profile(text).spec
    except ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_target_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--url | --endpoint | --replica, and --state-dir to find the gateway."""
    where = p.add_mutually_exclusive_group(required=required)
    where.add_argument("--url", help="target URL (http:// or https://)")
    where.add_argument("--endpoint", metavar="NAME",
                       help="a scoregate endpoint: its scoring URL, key and CA from the state dir")
    where.add_argument("--replica", metavar="ENDPOINT/DEPLOYMENT",
                       help="straight to the first ready replica of a deployment (no gateway)")
    p.add_argument("--state-dir", help="the gateway's state dir (SCOREGATE_STATE_DIR or "
                   "./.scoregate) for --endpoint / --replica")
    p.add_argument("--method", default=None, type=str.upper,
                   help="HTTP method (GET for --url, POST for --endpoint / --replica)")
    p.add_argument("--header", "-H", action="append", type=_header, default=[],
                   metavar="'K: V'", help="request header; repeatable")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body-file", type=Path, help="send this file as the request body")
    body.add_argument("--body", help="send this text as the request body")
    p.add_argument("--cafile", help="PEM CA bundle to verify the server's certificate")
    p.add_argument("--timeout", type=_positive(float), default=10.0,
                   help="per-request timeout in seconds (10)")


def add_run_arguments(p: argparse.ArgumentParser, require_url: bool = True) -> None:
    """The options of `run`: a target (see add_target_arguments) and a load shape."""
    add_target_arguments(p, required=require_url)
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=_positive(float), help="open loop, constant req/s")
    load.add_argument("--profile", type=_profile,
                      help="open loop rate profile: step:100,200,400@2s | ramp:100,1000@10s "
                           "| burst:100,1000@2s+0.5s[/5s] | constant:200")
    load.add_argument("--closed-loop", action="store_true",
                      help="closed loop: --connections requests in flight, as fast as answered")
    p.add_argument("--connections", type=_positive(int),
                   help="connection pool size (open loop 256, closed loop 16)")
    p.add_argument("--duration", type=_positive(float, MAX_DURATION), required=True,
                   help=f"seconds (at most {MAX_DURATION:g})")
    p.add_argument("--warmup", type=_number(float, 0, MAX_WARMUP), default=0.0,
                   help="seconds of the same load first, not recorded: warm connection "
                        f"pools and caches (0; at most {MAX_WARMUP:g})")
    p.add_argument("--max-in-flight", type=_positive(int), default=10_000,
                   help="open loop: starts beyond this many outstanding are dropped (10000)")
    p.add_argument("--behind-threshold-ms", type=_positive(float), default=25.0,
                   help="flag the generator as behind when p99 start lateness exceeds this")
    p.add_argument("--processes", type=_positive(int, MAX_PROCESSES), default=1,
                   help="worker processes that split the load (1)")
    p.add_argument("--max-failure-rate", type=_number(float, 0, 1), metavar="SHARE",
                   help="exit 1 when more than this share (0..1) of the requests failed; "
                        "without it, only when none succeeded")
    p.add_argument("--output", type=Path, help=f"directory for results (default "
                   f"{DEFAULT_OUTPUT_ROOT}/LABEL-TIMESTAMP)")
    p.add_argument("--label", default=None, help="name of this run in reports")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown",
                   help="what to print on stdout at the end (markdown)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def build_parser(prog: str = "python -m loadtests") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Open- and closed-loop HTTP load tests with honest latencies.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="run a load test against a URL, an endpoint or a replica"))
    cmp_ = sub.add_parser("compare", help="one report for several runs (first = baseline)")
    cmp_.add_argument("dirs", nargs="+", type=Path, help="run output directories")
    cmp_.add_argument("--output", type=Path, required=True, help="directory for the report")
    cmp_.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    from .bench import add_bench_parser
    from .scenarios import add_scenario_parser

    add_scenario_parser(sub)
    add_bench_parser(sub)
    from .bench.ab import add_ab_parser
    from .bench.instructions import add_instructions_parser

    add_instructions_parser(sub)
    add_ab_parser(sub)
    return parser


def target_from_args(args: argparse.Namespace, url: str | None = None,
                     headers: list[tuple[str, str]] | None = None) -> tuple[Target, str]:
    """The request to send and a default label, from the target options.

    `url`/`headers` given by a caller win over --url/--endpoint/--replica.
    Resolving --endpoint / --replica calls the gateway's admin API (GatewayError).
    """
    body = args.body_file.read_bytes() if args.body_file else (
        args.body.encode() if args.body is not None else None)
    if url:
        where = ResolvedTarget(url)
    else:
        where = resolve(args.url, getattr(args, "endpoint", None),
                        getattr(args, "replica", None), getattr(args, "state_dir", None))
    given = tuple(args.header) + tuple(headers or ())
    target = Target(url=where.url, method=args.method or where.default_method,
                    headers=merge_headers(where.headers, given), body=body,
                    cafile=args.cafile or where.cafile, timeout=args.timeout)
    return target, where.label or _default_label(where.url)


def spec_from_args(args: argparse.Namespace, url: str | None = None,
                   headers: list[tuple[str, str]] | None = None) -> RunSpec:
    """A RunSpec from parsed `run` options (url/headers may come from the caller)."""
    target, label = target_from_args(args, url, headers)
    mode = "closed" if args.closed_loop else "open"
    profile = None
    if mode == "open":
        profile = args.profile or parse_profile(f"{args.rate:g}").spec
        try:
            parse_profile(profile).check_fits(args.duration)
        except ProfileError as exc:
            raise UsageError(str(exc)) from None
    return RunSpec(target=target, duration=args.duration, mode=mode, profile=profile,
                   connections=args.connections or 0, max_in_flight=args.max_in_flight,
                   processes=args.processes, label=args.label or label,
                   behind_threshold_ms=args.behind_threshold_ms, warmup=args.warmup)


def _default_label(url: str) -> str:
    host = re.sub(r"^\w+://", "", url).split("/")[0]
    return host or "run"


def _output_dir(args: argparse.Namespace, label: str) -> Path:
    if args.output:
        return args.output
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    return Path(DEFAULT_OUTPUT_ROOT) / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_command(args: argparse.Namespace, spec: RunSpec | None = None) -> int:
    """Run, write results.json, summary.md and plots, print the summary.

    Exit codes: 0 done; 1 no request succeeded, more failed than
    --max-failure-rate, or the run could not be made; 2 bad options (an
    unknown endpoint included); 3 no gateway running (--endpoint / --replica).
    """
    try:
        spec = spec or spec_from_args(args)
        if spec.target.method == "POST" and spec.target.body is None and not args.quiet:
            # a scoring script answers an empty body with an error: say why every answer may be one
            print("loadtests: note: no --body or --body-file: every POST is sent without a body",
                  file=sys.stderr)
        result = run(spec, None if args.quiet else sys.stderr)
    except GatewayError as exc:
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except UsageError as exc:
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, WorkerError) as exc:
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return 1
    out = _output_dir(args, spec.label)
    result.write(out)
    if not args.no_plots:
        from .report import write_plots

        write_plots([result], out)
    if args.format == "json":
        import json

        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary_markdown(), end="")
    if not args.quiet:
        print(f"results in {out}", file=sys.stderr)
        if result.fell_behind:
            print("warning: the generator fell behind its schedule: "
                  + "; ".join(result.behind_reasons()), file=sys.stderr)
    failure = failure_verdict(result, getattr(args, "max_failure_rate", None))
    if failure:
        print(f"loadtests: error: {failure}", file=sys.stderr)
        return 1
    return 0


def failure_verdict(result: RunResult, max_failure_rate: float | None = None) -> str | None:
    """Why the run must exit 1, or None: a script or CI job must not read a run whose
    every request failed (a wrong URL, a dead gateway) as a passing load test."""
    if result.ok == 0:
        return f"no request succeeded ({result.failed} of {result.completed} failed)"
    if max_failure_rate is not None and result.failed > max_failure_rate * result.completed:
        return (f"{result.failed} of {result.completed} requests failed "
                f"({100 * result.failed / result.completed:.1f} %), "
                f"more than --max-failure-rate {max_failure_rate:g}")
    return None


def compare_command(args: argparse.Namespace) -> int:
    try:
        results = [RunResult.load(d) for d in args.dirs]
    except (OSError, ValueError, KeyError) as exc:
        print(f"loadtests: error: cannot read results: {exc}", file=sys.stderr)
        return 1
    names = [(d.parent if d.is_file() else d).resolve().name for d in args.dirs]
    for result, label in zip(results, distinct_labels([r.label for r in results], names)):
        result.label = label
    args.output.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(results)
    (args.output / "summary.md").write_text(text)
    if not args.no_plots:
        from .report import write_plots

        write_plots(results, args.output)
    print(text, end="")
    return 0


def distinct_labels(labels: list[str], names: list[str]) -> list[str]:
    """Labels that tell the runs apart in tables and legends: runs of one endpoint all
    say 'gateway:iris', so a label shared by several gets its run directory's name
    (and a number when even that is shared)."""
    counts = Counter(labels)
    out = [f"{label} ({name})" if counts[label] > 1 else label
           for label, name in zip(labels, names)]
    again = Counter(out)
    seen: Counter[str] = Counter()
    for i, label in enumerate(out):
        if again[label] > 1:
            seen[label] += 1
            out[i] = f"{label} #{seen[label]}"
    return out


def run_cli(argv: list[str] | None = None, prog: str = "python -m loadtests") -> int:
    """Parse argv and run the command; `run` may be omitted (`--url ... --rate ...`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    args = build_parser(prog).parse_args(argv)
    if args.command == "compare":
        return compare_command(args)
    if args.command in ("scenario", "bench", "instructions", "ab"):
        return args.handler(args)
    return run_command(args)
