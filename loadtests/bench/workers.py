"""The `--workers N` phase: does `scoregate serve --workers N` scale with its cores?

After the usual session (one router process), a second scoregate is started with
`serve --workers N` on the same manifests and replica, and its maximum throughput is
measured closed-loop with wrk, `runs` times, with the same connections as the 1-worker
wrk rounds; scaling = N-worker median / 1-worker median, and the goal is ≥ 0.8 × N.

A fair reading needs N + 1 cores: one per worker, none shared with the generator and
the replica (the client side). plan_workers() decides, from the usable cores alone:
with enough, worker i is pinned to its own gateway core (the main process, which only
keeps the control plane, may use any of those N cores) and the client side gets the
client core plus up to N - 1 spare cores (wrk then runs one thread per client core);
with too few, everything shares every usable core, the reading is labelled indicative
and the goal says it is not measurable here — a contended reading never passes or
fails it. CPU per request is the main process's plus the workers' (not the replica's,
nor the multiprocessing resource tracker's); the share of requests each worker served
comes from the admin port's scoregate_requests_total{worker="i"}, before and after.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..admin import Gateway, GatewayError
from .gateway import ENDPOINT, RunningGateway, start_gateway
from .measure import BenchTarget, measure, measure_wrk, process_cpu_s, wrk_available
from .noise import TICK, _core_busy
from .procs import BenchError, cpu_list, pin_process

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkersPlan:
    """Where the N-worker gateway and its client run, and whether the reading can
    decide the goal."""

    workers: int
    gateway_cpus: tuple[int, ...] | None  # None: not pinned
    client_cpus: tuple[int, ...] | None
    pin_each_worker: bool  # worker i alone on gateway_cpus[i]
    measurable: bool
    reason: str  # why the goal cannot be decided here ("" when it can)
    pinning: str  # for people
    wrk_threads: int


def plan_workers(available: Sequence[int], workers: int, gateway_cpu: int | None,
                 client_cpu: int | None) -> WorkersPlan:
    """Pure: the pinning of the workers phase from the usable cores, N, and the main
    session's two cores (None, None when it was not pinned)."""
    cores = sorted(set(available))
    k = len(cores)
    if k < workers + 1:
        shared = tuple(cores)
        return WorkersPlan(
            workers, shared, shared, False, False,
            f"not measurable here: needs {workers + 1} cores ({workers} for the workers, 1 for "
            f"the generator and replica); this machine has {k}",
            f"indicative only: the main process, the {workers} workers, the replica and wrk "
            f"all share the {k} usable core(s) ({cpu_list(shared)}), unpinned among them", 1)
    if gateway_cpu is None or client_cpu is None or gateway_cpu == client_cpu \
            or not {gateway_cpu, client_cpu} <= set(cores):
        return WorkersPlan(
            workers, None, None, False, False,
            "not measurable: the session was not pinned (--no-pin or unusable cores), so the "
            "workers and the generator may share cores",
            "not pinned: every process runs where the kernel puts it", 1)
    gateway = tuple(([gateway_cpu] + [c for c in cores if c not in (gateway_cpu, client_cpu)])[:workers])
    spare = [c for c in cores if c not in gateway and c != client_cpu]
    client = (client_cpu, *spare[:workers - 1])
    return WorkersPlan(
        workers, gateway, client, True, True, "",
        f"worker i alone on core {cpu_list(gateway)}[i], the main process on cores "
        f"{cpu_list(gateway)}; replica and wrk (-t{len(client)}) on core(s) {cpu_list(client)}",
        len(client))


# -- the admin port (outside /api/v1, so not Gateway.call) -------------------------------
def admin_get(gateway: Gateway, path: str, timeout: float = 15.0) -> bytes:
    request = urllib.request.Request(f"{gateway.admin_url}{path}",
                                     headers={"Authorization": f"Bearer {gateway.admin_token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayError(f"GET {path} on the admin port: {exc}") from None


def worker_pids(gateway: Gateway) -> dict[int, int | None]:
    """{worker index: pid} of the listening workers, from GET /healthz."""
    body = json.loads(admin_get(gateway, "/healthz"))
    return {int(w["index"]): w.get("pid") for w in body.get("workers") or [] if w.get("listening")}


_REQUESTS = re.compile(r"^scoregate_requests_total\{(.*?)\} (\S+)$", re.M)


def requests_by_worker(metrics_text: str, endpoint: str = ENDPOINT) -> dict[str, float]:
    """{worker index: scoring requests answered} for one endpoint, from /metrics text."""
    out: dict[str, float] = {}
    for labels, value in _REQUESTS.findall(metrics_text):
        worker = re.search(r'worker="(\d+)"', labels)
        if worker and f'endpoint="{endpoint}"' in labels:
            out[worker.group(1)] = out.get(worker.group(1), 0.0) + float(value)
    return out


def _scrape(gateway: Gateway) -> dict[str, float] | None:
    try:
        return requests_by_worker(admin_get(gateway, "/metrics").decode(errors="replace"))
    except GatewayError:
        return None


def _shares(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    served = {w: after[w] - before.get(w, 0.0) for w in after}
    total = sum(served.values())
    return {w: round(n / total, 3) for w, n in sorted(served.items())} if total > 0 else None


# -- processes ---------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The start time (ticks since boot) of a live process, which tells a pid from its
    reuse; None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _affinity(pid: int) -> str:
    try:
        return cpu_list(os.sched_getaffinity(pid))
    except OSError:
        return "?"


def _busy_cores(cores: set[int] | None) -> int | None:
    try:
        return _core_busy(cores) if cores else None
    except OSError:
        return None


class WorkersPhase:
    """Start the N-worker gateway, measure it, stop it (and anything it left behind)."""

    def __init__(self, session, plan: WorkersPlan) -> None:
        self.session, self.opts, self.plan = session, session.opts, plan
        self.gw: RunningGateway | None = None
        self.pids: dict[str, int] = {}  # role -> pid (main, worker0.., replica, others)
        self.started: dict[int, int | None] = {}  # pid -> start time, for the final sweep
        self.wrk = wrk_available() if self.opts.wrk else None
        self.data: dict = {"workers": plan.workers, "plan": asdict(plan), "runs": []}

    def run(self) -> dict:
        original = os.sched_getaffinity(0)
        try:
            if self.plan.client_cpus is not None:  # the generator (and wrk) run here
                os.sched_setaffinity(0, set(self.plan.client_cpus))
            self._start()
            self._measure()
        except (BenchError, GatewayError, OSError) as exc:
            self.data["error"] = f"{type(exc).__name__}: {exc}"
            self.session.say(f"workers phase: {self.data['error']}")
        finally:
            self._stop()
            os.sched_setaffinity(0, original)
        return self.data

    # -- start -----------------------------------------------------------------------
    def _start(self) -> None:
        n, plan = self.plan.workers, self.plan
        self.session.say(f"workers phase: starting scoregate serve --workers {n}; {plan.pinning}")
        self.gw = start_gateway(self.session.workdir / "scoregate-workers", plan.gateway_cpus,
                                plan.client_cpus, replica=self.opts.replica,
                                extra_args=("--workers", str(n)))
        main = self.gw.child.pid
        deadline = time.monotonic() + START_TIMEOUT_S
        workers: dict[int, int | None] = {}
        while time.monotonic() < deadline:
            if self.gw.child.exited:
                raise BenchError(f"scoregate serve --workers {n} exited:\n{self.gw.child.tail()}")
            try:
                workers = worker_pids(self.gw.gateway)
            except (GatewayError, ValueError):
                workers = {}
            if len(workers) == n and all(workers.values()):
                break
            time.sleep(0.1)
        else:
            raise BenchError(f"{n} workers were not listening within {START_TIMEOUT_S:g} s "
                             f"(listening: {sorted(workers)}):\n{self.gw.child.tail()}")
        for index, pid in sorted(workers.items()):
            if plan.pin_each_worker:
                pin_process(pid, plan.gateway_cpus[index])
            self.pids[f"worker {index}"] = pid
        self.pids = {"main": main, **self.pids, "replica": self.gw.replica_pid}
        known = set(self.pids.values())
        for other in _children(main):
            if other not in known:
                cmd = _cmdline(other)
                self.pids["resource tracker" if "resource_tracker" in cmd
                          else f"other child {other} ({cmd[:60] or '?'})"] = other
        self.started = {pid: _start_time(pid) for pid in self.pids.values()}
        self.data["processes"] = [
            {"role": role, "pid": pid, "cpus": _affinity(pid),
             "cpu_measured": role == "main" or role.startswith("worker ")}
            for role, pid in self.pids.items()]
        client = cpu_list(plan.client_cpus) if plan.client_cpus else "not pinned"
        self.data["processes"].append({"role": "generator (wrk)" if self.wrk else "generator",
                                       "pid": None, "cpus": client, "cpu_measured": False})

    # -- measure ---------------------------------------------------------------------
    def _measured_pids(self) -> list[int]:
        return [pid for role, pid in self.pids.items() if role == "main" or role.startswith("worker ")]

    def _cores(self) -> set[int] | None:
        if self.plan.gateway_cpus is None:
            return None
        return set(self.plan.gateway_cpus) | set(self.plan.client_cpus or ())

    def _one(self, bt: BenchTarget, duration: float) -> dict:
        """One closed-loop reading with the CPU of the measured processes and the client
        cores' business (pinned runs only)."""
        client = set(self.plan.client_cpus or ()) if self.plan.pin_each_worker else None
        busy_before, wall = _busy_cores(client), time.monotonic()
        if self.wrk:
            figs = measure_wrk(self.wrk, bt, duration, self.opts.connections, self._cores(),
                               pids=self._measured_pids(), threads=self.plan.wrk_threads)
        else:
            cpu_before = process_cpu_s(self._measured_pids())
            figs, _ = measure(bt, duration, connections=self.opts.connections,
                              processes=max(self.opts.processes, len(self.plan.client_cpus or ())),
                              timeout=self.opts.timeout, cores=self._cores())
            cpu_after = process_cpu_s(self._measured_pids())
            done = (figs.get("ok") or 0) + (figs.get("failed") or 0)
            if cpu_before is not None and cpu_after is not None and done:
                figs["cpu_us_per_request"] = round((cpu_after - cpu_before) / done * 1e6, 1)
        busy_after, wall = _busy_cores(client), time.monotonic() - wall
        if busy_before is not None and busy_after is not None and wall > 0:
            figs["client_cores_busy"] = round((busy_after - busy_before) / TICK / wall / len(client), 3)
        return figs

    def _measure(self) -> None:
        assert self.gw is not None
        gw, n = self.gw, self.plan.workers
        bt = BenchTarget(f"scoregate --workers {n}", gw.scoring_url,
                         (("Authorization", f"Bearer {gw.key}"),), gw.gateway.ca_cert)
        if self.wrk:
            threads = max(1, min(self.plan.wrk_threads, self.opts.connections))
            self.data["generator"] = f"wrk -t{threads} -c{self.opts.connections}"
        else:
            self.data["generator"] = (f"loadtests closed loop, {self.opts.connections} connections "
                                      "(wrk not used)")
        if self.opts.warmup > 0:  # warm the workers' connection pools, unrecorded
            self._one(bt, max(1.0, self.opts.warmup) if self.wrk else self.opts.warmup)
        for i in range(self.opts.runs):
            before = _scrape(gw.gateway)
            figs, _ = self.session._quiet(f"workers {n}", lambda: (self._one(bt, self.opts.duration), None))
            figs["worker_share"] = _shares(before, _scrape(gw.gateway))
            self.data["runs"].append(figs)
            self.session.say(f"round {i + 1}/{self.opts.runs} {bt.name}: "
                             f"{figs.get('throughput', figs.get('error'))} req/s, "
                             f"{figs.get('cpu_us_per_request', '?')} µs CPU per request, "
                             f"per worker {figs.get('worker_share')}")

    # -- stop ------------------------------------------------------------------------
    def _stop(self) -> None:
        if self.gw is None:
            return
        for pid in [self.gw.child.pid, *_children(self.gw.child.pid)]:  # restarted workers too
            if pid not in self.started:
                self.started[pid] = _start_time(pid)
                self.pids.setdefault(f"process {pid}", pid)
        try:
            self.data["exit_code"] = self.gw.stop()
        except Exception as exc:  # still sweep below
            self.session.say(f"stopping the workers gateway: {exc}")
        left = []
        deadline = time.monotonic() + 10.0
        for role, pid in self.pids.items():
            # Children the gateway should have stopped; the start time tells a reused pid.
            def still(pid=pid) -> bool:
                return self.started.get(pid) is not None and _start_time(pid) == self.started[pid]
            while still() and time.monotonic() < deadline:
                time.sleep(0.05)
            if still():
                try:
                    os.kill(pid, signal.SIGKILL)
                    left.append(role)
                except ProcessLookupError:
                    pass
        self.data["left_running"] = left  # killed by the bench; should stay empty
        self.gw = None


def run_workers_phase(session, plan: WorkersPlan) -> dict:
    return WorkersPhase(session, plan).run()

