"""One measurement of one target, and the median-with-spread of several.

A figure from one run can be luck; each figure in the report is the median
of --runs runs, with min–max, and a measurement that did not hold its rate
(failures, ok-throughput below 95 % of the rate, a generator that fell
behind) is flagged rather than dropped, so an overloaded target shows up as
overloaded instead of vanishing from the table.  wrk (a C client), when
installed, measures closed-loop throughput too: the Python generator tops
out at ~10k req/s per core, far below what nginx can proxy.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..generators.http import Target
from ..results import RunResult
from ..runner import RunSpec, WorkerError, run
from .noise import NoiseMeter

BODY = b'{"data": [[1.0, 2.0, 3.0, 4.0]]}'
HELD = 0.95  # an open-loop run "held" its rate when ok-throughput >= 95 % of it


@dataclass(frozen=True)
class BenchTarget:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    cafile: str | None = None

    def target(self, timeout: float) -> Target:
        headers = (("Content-Type", "application/json"), *self.headers)
        return Target(self.url, "POST", headers, BODY, self.cafile, timeout)


def figures(result: RunResult, rate: float | None = None) -> dict:
    """The numbers the report uses, from one run."""
    ok = result.latency_ok
    elapsed = result.elapsed_s or result.duration or 1.0
    out = {"throughput": round(result.ok / elapsed, 1), "ok": result.ok,
           "failed": result.failed, "p50_ms": ok.percentile_ms(50),
           "p99_ms": ok.percentile_ms(99), "mean_ms": round(ok.mean_us / 1000.0, 3),
           "fell_behind": result.fell_behind, "errors": {**result.errors, **{
               f"http {k}": v for k, v in result.status.items() if int(k) >= 400}}}
    if rate is not None:
        held = result.ok / result.duration if result.duration else 0.0
        out["target_kept_up"] = held >= HELD * rate and not result.failed
        out["lateness_p99_ms"] = result.lateness.percentile_ms(99)
        out["held_rate"] = out["target_kept_up"] and not result.fell_behind
    return out


def measure(bt: BenchTarget, duration: float, *, rate: float | None = None,
            connections: int = 32, processes: int = 1, timeout: float = 5.0,
            cores: set[int] | None = None, warmup: float = 0.0,
            pids: list[int] | None = None) -> tuple[dict, RunResult | None]:
    """Closed loop (rate None) or open loop at `rate`; (figures, result).

    figures["foreign_cores"]: CPU other processes took on `cores` meanwhile. With `pids`
    (a proxy's processes) at a fixed rate, figures["cpu_us_per_request"]: their CPU time
    over the requests sent, the warm-up's included (rate × warm-up: an open loop sends
    on schedule) — at a low rate each request wakes an idle core and runs with cold
    caches, so it costs several times its price at saturation.
    """
    mode = "closed" if rate is None else "open"
    spec = RunSpec(bt.target(timeout), duration, mode=mode,
                   profile=None if rate is None else f"constant:{rate:g}",
                   connections=connections if rate is None else 0,
                   processes=processes, label=bt.name, warmup=warmup)
    cpu_before = process_cpu_s(pids) if pids and rate is not None else None
    try:
        with NoiseMeter(cores) as meter:
            result = run(spec, None)
    except (OSError, ValueError, WorkerError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}, None
    out = {**figures(result, rate), "foreign_cores": meter.foreign_cores}
    if cpu_before is not None:  # a fixed rate (cpu_before is read only then)
        cpu_after = process_cpu_s(pids)
        sent = result.ok + result.failed + rate * warmup
        if cpu_after is not None and sent > 0:
            out["cpu_us_per_request"] = round((cpu_after - cpu_before) / sent * 1e6, 1)
    return out, result


def wrk_available() -> str | None:
    return shutil.which("wrk")


def process_cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes (all their threads), None if one is gone."""
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def measure_wrk(wrk: str, bt: BenchTarget, duration: float, connections: int,
                cores: set[int] | None = None, pids: list[int] | None = None,
                threads: int = 1) -> dict:
    """wrk -t`threads` (1) closed loop with the same request; throughput and service-time
    p50/p99, and with `pids` (the proxy's processes) its CPU time per request."""
    threads = max(1, min(threads, connections))  # wrk needs a connection per thread
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua(BODY.decode())}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in bt.headers]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    seconds = max(1, round(duration))
    cpu_before = process_cpu_s(pids) if pids else None
    try:
        with NoiseMeter(cores) as meter:
            done = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                                   "--timeout", "5s", "-s", script.name, bt.url],
                                  capture_output=True, text=True, timeout=seconds + 30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"wrk: {exc}"}
    finally:
        Path(script.name).unlink(missing_ok=True)
    cpu_after = process_cpu_s(pids) if pids else None
    if done.returncode != 0:
        return {"error": f"wrk exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}"}
    out = {**parse_wrk(done.stdout), "foreign_cores": meter.foreign_cores}
    if cpu_before is not None and cpu_after is not None and out.get("requests"):
        out["cpu_us_per_request"] = round((cpu_after - cpu_before) / out["requests"] * 1e6, 1)
    return out


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()
    return round(float(value) * _UNITS[unit], 3)


def parse_wrk(text: str) -> dict:
    """Requests/sec, latency p50/p99 and errors from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not rps:
        return {"error": f"cannot read wrk output: {text[-300:]}"}
    out = {"throughput": float(rps.group(1))}
    total = re.search(r"(\d+) requests in", text)
    if total:
        out["requests"] = int(total.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        if m:
            out[key] = _ms(m.group(1))
    errors = {}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        errors["non-2xx"] = int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors.update({k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                                   sock.groups()) if int(v)})
    out["errors"] = errors
    return out


def spread(values: list[float]) -> dict | None:
    """{"median", "min", "max", "n"} of the values, or None if there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}
