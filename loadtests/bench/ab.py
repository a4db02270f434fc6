"""`python -m loadtests ab A B`: which of two versions of the gateway costs less CPU per request.

Why: on a shared machine the CPU time per request of one benchmark run moves by 10-20 %
from one run (or hour) to the next, so two runs taken at different times cannot tell a
change of a few percent from the machine's drift. Here both gateways are up at once (A's
code from one checkout, B's from another, or the same code with other `serve` flags),
pinned to the same core, their replicas and wrk on the other core, and wrk loads them in
alternating bursts (A B, B A, A B, ...). Each pair is taken within seconds, so drift
cancels in the ratio of the pair; the report is the median ratio A/B with its quartiles.
With `--handshakes` the bursts are full TLS handshakes (`openssl s_time -new`, no
resumption) instead of requests, and the figure is the CPU time per handshake.

What it is not: an absolute figure. The gateway that is not loaded still runs its idle
work on the same core, so both read higher than in `loadtests bench`; compare the ratio.
Needs wrk (apt install wrk), or openssl for `--handshakes`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .connections import handshake_rate, openssl
from .gateway import RunningGateway, start_gateway
from .measure import BenchTarget, measure_wrk
from .procs import BenchError

START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Side:
    """One gateway of the comparison: the checkout whose code it runs, `serve` flags, and
    NAME=VALUE environment settings."""

    root: Path
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return " ".join((str(self.root), *self.args, *self.env))


def add_ab_parser(sub) -> None:
    from ..cli import _positive

    p = sub.add_parser("ab", help="paired CPU A/B of two versions of the gateway (wrk)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="checkout whose code gateway A runs (a folder with serving/)")
    p.add_argument("b", type=Path, help="checkout whose code gateway B runs (may be the same as A)")
    p.add_argument("--a-args", default="", help="extra `scoregate serve` flags for A, e.g. '--access-log off'")
    p.add_argument("--b-args", default="", help="extra `scoregate serve` flags for B")
    p.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE", help="environment for A")
    p.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="environment for B")
    p.add_argument("--pairs", type=_positive(int), default=12, help="pairs of bursts (12)")
    p.add_argument("--seconds", type=_positive(int), default=3, help="length of one burst (3 s)")
    p.add_argument("--connections", type=_positive(int), default=32, help="wrk connections (32)")
    p.add_argument("--gateway-cpu", type=int, default=0, help="core for both gateways (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core for the replicas and wrk (1)")
    p.add_argument("--handshakes", action="store_true",
                   help="compare CPU per full TLS handshake (openssl s_time -new) instead of per request")
    p.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(handler=ab_command)


def ab_command(args: argparse.Namespace) -> int:
    sides = []
    for root, extra, env in ((args.a, args.a_args, args.a_env), (args.b, args.b_args, args.b_env)):
        if not (root / "serving").is_dir():
            print(f"loadtests ab: error: {root} is not a scoregate checkout (no serving/ in it)", file=sys.stderr)
            return 2
        if any("=" not in item for item in env):
            print("loadtests ab: error: environment settings are NAME=VALUE", file=sys.stderr)
            return 2
        sides.append(Side(root.resolve(), tuple(shlex.split(extra)), tuple(env)))
    try:
        figures = compare(sides[0], sides[1], pairs=args.pairs, seconds=args.seconds,
                          connections=args.connections, gateway_cpu=args.gateway_cpu,
                          client_cpu=args.client_cpu, progress=sys.stderr, handshakes=args.handshakes)
    except (BenchError, OSError) as exc:
        print(f"loadtests ab: error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures))
    return 0


def compare(a: Side, b: Side, *, pairs: int, seconds: int, connections: int = 32, gateway_cpu: int = 0,
            client_cpu: int = 1, progress=None, handshakes: bool = False) -> dict:
    """Start both gateways, load them in alternating bursts, return the figures."""
    wrk = shutil.which("wrk")
    if handshakes and not openssl():
        raise BenchError("openssl is not installed (apt install openssl)")
    if not handshakes and not wrk:
        raise BenchError("wrk is not installed (apt install wrk)")
    unit = "handshake" if handshakes else "request"
    say = (lambda text: print(f"[ab] {text}", file=progress, flush=True)) if progress else (lambda _t: None)
    gateways: list[RunningGateway] = []
    bursts: list[list[dict]] = [[], []]
    with tempfile.TemporaryDirectory(prefix="scoregate-ab-") as scratch:
        try:
            for index, side in enumerate((a, b)):
                work = Path(scratch) / "ab"[index]
                work.mkdir()
                say(f"starting gateway {'AB'[index]}: {side.label}")
                gateways.append(start_gateway(
                    work, gateway_cpu, client_cpu, timeout=START_TIMEOUT_S, extra_args=side.args,
                    wrapper=("env", f"PYTHONPATH={side.root}", *side.env)))
            for pair in range(pairs):
                for index in ((0, 1) if pair % 2 == 0 else (1, 0)):
                    gw = gateways[index]
                    if handshakes:
                        burst = handshake_rate("127.0.0.1", urlsplit(gw.scoring_url).port, seconds, client_cpu, [gw.child.pid])
                    else:
                        target = BenchTarget("AB"[index], gw.scoring_url, (("Authorization", f"Bearer {gw.key}"),))
                        burst = measure_wrk(wrk, target, seconds, connections, {client_cpu}, [gw.child.pid])
                    if "error" in burst:
                        raise BenchError(f"gateway {'AB'[index]}: {burst['error']}")
                    if burst.get("errors"):
                        raise BenchError(f"gateway {'AB'[index]} answered with errors: {burst['errors']}")
                    bursts[index].append(burst)
                say(f"pair {pair + 1}/{pairs}: A {bursts[0][-1].get(f'cpu_us_per_{unit}')} µs, "
                    f"B {bursts[1][-1].get(f'cpu_us_per_{unit}')} µs per {unit}")
        finally:
            for gw in gateways:
                gw.stop()
    return figures_of(a, b, bursts, seconds=seconds, connections=connections, unit=unit)


def figures_of(a: Side, b: Side, bursts: list[list[dict]], *, seconds: int, connections: int,
               unit: str = "request") -> dict:
    """Medians per side and the per-pair ratio of CPU per request or handshake (A over B)."""
    cpu = [[burst.get(f"cpu_us_per_{unit}") for burst in side] for side in bursts]
    ratios = [x / y for x, y in zip(*cpu) if x and y]
    if not ratios:
        raise BenchError("no pair with a CPU figure for both gateways (is /proc readable?)")
    rate = "throughput" if unit == "request" else "handshakes_per_s"

    def spread(values: list[float]) -> dict:
        values = [v for v in values if v]
        quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) >= 2 else [values[0]] * 3
        return {"median": round(statistics.median(values), 3), "q1": round(quartiles[0], 3),
                "q3": round(quartiles[2], 3), "min": min(values), "max": max(values), "n": len(values)}

    return {
        "a": a.label, "b": b.label, "pairs": len(ratios), "seconds": seconds, "unit": unit,
        **({"connections": connections} if unit == "request" else {}),
        f"cpu_us_per_{unit}": {"a": spread(cpu[0]), "b": spread(cpu[1])},
        rate: {"a": spread([burst[rate] for burst in bursts[0]]),
               "b": spread([burst[rate] for burst in bursts[1]])},
        "ratio_a_over_b": spread(ratios),
        "bursts": {"a": bursts[0], "b": bursts[1]},
    }


def report(figures: dict) -> str:
    unit = figures.get("unit", "request")
    cpu, ratio = figures[f"cpu_us_per_{unit}"], figures["ratio_a_over_b"]
    return "\n".join((
        f"A: {figures['a']}",
        f"B: {figures['b']}",
        f"CPU per {unit}, median (q1-q3): A {cpu['a']['median']} µs ({cpu['a']['q1']}-{cpu['a']['q3']}), "
        f"B {cpu['b']['median']} µs ({cpu['b']['q1']}-{cpu['b']['q3']})",
        f"ratio A/B per pair: {ratio['median']} (q1 {ratio['q1']}, q3 {ratio['q3']}) over {figures['pairs']} pairs "
        f"of {figures['seconds']} s {'s_time' if unit == 'handshake' else 'wrk'} bursts"
        + (" — A costs less" if ratio["q3"] < 1 else " — B costs less" if ratio["q1"] > 1 else
           " — no difference beyond the spread"),
    ))
