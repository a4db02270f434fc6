"""Run a load test in this process, or split it across worker processes.

One Python process tops out at a few thousand requests/s, so `processes=N`
spawns N workers that each take every N-th scheduled start (open loop) or
1/N of the connections (closed loop).  They begin at one shared wall-clock
instant so their per-second series line up, publish counters to shared
memory for the progress line, and send back a Recorder snapshot to merge.
Every wait here has a deadline; a worker that dies is reported, not waited
for.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass, replace
from typing import TextIO

from .generators.closed_loop import ClosedLoopConfig, run_closed_loop
from .generators.http import Target, new_event_loop
from .generators.open_loop import OpenLoopConfig, run_open_loop
from .profiles import parse_profile
from .progress import Progress
from .recorder import Recorder
from .results import RunResult

STARTUP_TIMEOUT = 60.0  # spawning and importing aiohttp in a worker
N_COUNTS = 5
MAX_DURATION = 86_400.0  # RunSpec's bounds; the CLI checks the same ones (exit 2)
MAX_WARMUP = 3_600.0
MAX_PROCESSES = 256


class WorkerError(RuntimeError):
    """A worker process failed or never reported back."""


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to run (a share of) a load test; crosses process boundaries."""

    target: Target
    duration: float
    mode: str = "open"  # "open" | "closed"
    profile: str | None = None
    connections: int = 0  # 0: 256 for open loop, 16 for closed loop
    max_in_flight: int = 10_000
    processes: int = 1
    label: str = "run"
    behind_threshold_ms: float = 25.0
    warmup: float = 0.0  # seconds of the same load first, unrecorded (warm pools, caches)

    def __post_init__(self) -> None:
        if self.mode not in ("open", "closed"):
            raise ValueError(f"mode must be 'open' or 'closed', not {self.mode!r}")
        if self.mode == "open":
            parse_profile(self.profile or "")  # fail early, in the parent
        if not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"duration must be between 0 and {MAX_DURATION:g} s")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be between 1 and {MAX_PROCESSES}")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise ValueError(f"warmup must be between 0 and {MAX_WARMUP:g} s")

    @property
    def total_connections(self) -> int:
        return self.connections or (256 if self.mode == "open" else 16)

    def config(self) -> dict:
        """The settings recorded in results.json."""
        return {"mode": self.mode, "method": self.target.method, "url": self.target.url,
                "profile": parse_profile(self.profile).spec if self.mode == "open" else None,
                "duration_s": self.duration, "connections": self.total_connections,
                "max_in_flight": self.max_in_flight if self.mode == "open" else None,
                "processes": self.processes, "timeout_s": self.target.timeout,
                "behind_threshold_ms": self.behind_threshold_ms, "warmup_s": self.warmup}


def _share(total: int, n: int, i: int) -> int:
    return max(1, total // n + (1 if i < total % n else 0))


async def run_share(spec: RunSpec, index: int = 0, recorder: Recorder | None = None,
                    start_at: float | None = None) -> Recorder:
    """Run worker `index`'s share of the spec on the current event loop."""
    n = spec.processes
    rec = recorder if recorder is not None else Recorder()
    conns = _share(spec.total_connections, n, index)
    if spec.mode == "closed":
        cfg = ClosedLoopConfig(spec.duration, conns, spec.warmup)
        return await run_closed_loop(spec.target, cfg, rec, start_at)
    cfg = OpenLoopConfig(spec.profile, spec.duration, conns,
                         _share(spec.max_in_flight, n, index), index, n, spec.warmup)
    return await run_open_loop(spec.target, cfg, rec, start_at)


async def _with_progress(spec: RunSpec, progress: Progress | None,
                         rec: Recorder | None = None) -> Recorder:
    rec = rec if rec is not None else Recorder()
    job = asyncio.ensure_future(run_share(spec, 0, rec))
    started = time.perf_counter()
    deadline = started + spec.warmup + spec.duration + spec.target.timeout + 30.0
    while not job.done() and time.perf_counter() < deadline:
        await asyncio.wait({job}, timeout=1.0)
        elapsed = time.perf_counter() - started - spec.warmup
        if progress is not None and not job.done() and elapsed > 0:
            progress.tick(elapsed, rec.counts())
    if not job.done():  # only if a bound below failed; never wait forever
        job.cancel()
        await asyncio.wait({job}, timeout=5.0)
        raise TimeoutError(f"load test did not finish within {deadline - started:.0f} s")
    rec = job.result()
    if progress is not None:
        progress.tick(max(0.1, time.perf_counter() - started - spec.warmup), rec.counts())
    return rec


def _progress(spec: RunSpec, stream: TextIO | None) -> Progress:
    target_rate = parse_profile(spec.profile).rate if spec.mode == "open" else None
    return Progress(stream, spec.label, spec.duration, target_rate)


async def run_async(spec: RunSpec, progress_stream: TextIO | None = None,
                    recorder: Recorder | None = None) -> RunResult:
    """Run in the current event loop, e.g. next to a scenario's own actions.

    Always one process: worker processes need a blocking parent (use run()).
    A scenario passes its own `recorder` to watch the run as it happens (its
    t0 is set when the first request is due) and to read per-second buckets.
    """
    spec = replace(spec, processes=1)
    started_at = time.time()
    rec = await _with_progress(spec, _progress(spec, progress_stream), recorder)
    return RunResult.from_recorder(rec, spec.label, spec.config(), started_at)


def run(spec: RunSpec, progress_stream: TextIO | None = None) -> RunResult:
    """Run the spec to completion (blocking) and return the merged result."""
    if spec.processes == 1:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(run_async(spec, progress_stream))
    rec, started_at = _run_processes(spec, _progress(spec, progress_stream))
    return RunResult.from_recorder(rec, spec.label, spec.config(), started_at)


def _run_processes(spec: RunSpec, progress: Progress) -> tuple[Recorder, float]:
    ctx = mp.get_context("spawn")
    n = spec.processes
    shared = ctx.Array("d", N_COUNTS * n, lock=False)
    start_at = ctx.Value("d", 0.0, lock=False)
    go = ctx.Event()
    inbox = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(spec, i, shared, start_at, go, inbox),
                         name=f"loadtests-worker-{i}", daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    try:
        _collect(inbox, procs, "ready", time.monotonic() + STARTUP_TIMEOUT)
        lead = 0.2 + spec.warmup + (1.0 if spec.warmup else 0.0)  # warm-up, then its drain
        start_at.value = time.time() + lead
        go.set()
        time.sleep(lead)  # so progress ticks fall on whole seconds of the run
        end = time.monotonic() + spec.duration + spec.target.timeout + 30.0

        def tick() -> None:
            elapsed = time.time() - start_at.value
            if elapsed > 0:
                totals = [sum(shared[i * N_COUNTS + k] for i in range(n))
                          for k in range(N_COUNTS)]
                progress.tick(elapsed, tuple(totals))

        snaps = _collect(inbox, procs, "done", end, tick)
        tick()
    finally:
        go.set()  # release workers still waiting if we bailed out early
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
    rec = Recorder.merge([Recorder.from_snapshot(snaps[i]) for i in range(n)])
    return rec, start_at.value


def _collect(inbox, procs, kind: str, deadline: float, tick=None) -> dict:
    """Wait for one `kind` message per worker; raise on error, death or deadline."""
    got: dict[int, object] = {}
    next_tick = time.monotonic() + 1.0
    while len(got) < len(procs):
        now = time.monotonic()
        if now > deadline:
            raise WorkerError(f"workers did not report {kind!r} in time ({len(got)}/{len(procs)})")
        if tick is not None and now >= next_tick:
            tick()
            next_tick += 1.0
        try:
            msg_kind, index, payload = inbox.get(timeout=0.2)
        except queue.Empty:
            dead = [p.name for i, p in enumerate(procs) if i not in got and p.exitcode is not None]
            if dead:
                raise WorkerError(f"worker(s) exited without reporting: {', '.join(dead)}")
            continue
        if msg_kind == "error":
            raise WorkerError(f"worker {index} failed: {payload}")
        if msg_kind == kind:
            got[index] = payload
    return got


def _worker_main(spec: RunSpec, index: int, shared, start_at, go, outbox) -> None:
    """Entry point of a spawned worker: wait for the common start, run, report."""
    try:
        outbox.put(("ready", index, None))
        if not go.wait(timeout=STARTUP_TIMEOUT) or start_at.value <= 0:
            return
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            rec = runner.run(_worker_async(spec, index, shared, start_at.value))
        outbox.put(("done", index, rec.snapshot()))
    except BaseException as exc:  # report every failure to the parent
        outbox.put(("error", index, f"{type(exc).__name__}: {exc}"))


async def _worker_async(spec: RunSpec, index: int, shared, start_at: float) -> Recorder:
    rec = Recorder()
    base = index * N_COUNTS

    def publish() -> None:
        shared[base:base + N_COUNTS] = [float(c) for c in rec.counts()]

    job = asyncio.ensure_future(run_share(spec, index, rec, start_at))
    while not job.done():
        await asyncio.wait({job}, timeout=0.25)
        publish()
    result = await job
    publish()
    return result


__all__ = ["RunSpec", "WorkerError", "run", "run_async", "run_share"]
