"""One benchmark session: start everything, measure in interleaved rounds, stop everything.

Rounds interleave the targets (round 1: each target once, round 2: ...) so
that a drift of the machine (another process, thermal limits) spreads over
all targets instead of biasing whichever ran last.  The closed-loop rounds
come first because the third fixed rate is half of scoregate's median
maximum.  The generator (this process) and the replica share the client
core; scoregate and nginx each run alone on the gateway core, one at a time.
With --workers N (>= 2), a second scoregate with `serve --workers N` is measured
after the session's processes have stopped (bench.workers).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import asyncio
from urllib.parse import urlsplit

from ..generators.http import new_event_loop
from .connections import handshake_rate, idle_connections, resumption_works
from .gateway import DEPLOYMENT, ENDPOINT, gateway_interpreter, start_gateway
from .measure import BenchTarget, measure, measure_wrk, spread, wrk_available
from .nginx import find_nginx, install_nginx, nginx_version, start_nginx
from .procs import start_fastserver
from .workers import plan_workers, run_workers_phase

GATEWAY, DIRECT, NGINX, FAST = "scoregate", "direct", "nginx", "fastserver"


@dataclass
class BenchOptions:
    runs: int = 3
    duration: float = 5.0
    rates: list[float] = field(default_factory=lambda: [1000.0, 3000.0])
    half_of_max: bool = True
    connections: int = 32
    processes: int = 1
    gateway_cpu: int | None = 0
    client_cpu: int | None = 1
    nginx: str = "auto"  # auto | install | skip
    wrk: bool = True
    warmup: float = 1.0  # per measurement: same load first, unrecorded (warm connection pools)
    timeout: float = 5.0
    noise_limit: float = 0.15  # cores other processes may take before a measurement is redone
    noise_retries: int = 2
    replica: str = "fastserver"  # fastserver | modelserver (loadtests.bench.gateway)
    idle_connections: int = 10000  # held open to the gateway for its memory figure (0: skip)
    handshake_seconds: int = 3
    workers: int = 1  # >= 2: after the session, a `serve --workers N` phase (bench.workers)
    progress: TextIO | None = None


def pick_cpus(opts: BenchOptions) -> tuple[int | None, int | None, str]:
    """The two cores to use, or no pinning (with the reason) when there are not two."""
    available = sorted(os.sched_getaffinity(0))
    wanted = (opts.gateway_cpu, opts.client_cpu)
    if None in wanted:
        return None, None, "not pinned (--no-pin)"
    if not set(wanted) <= set(available) or wanted[0] == wanted[1]:
        return None, None, (f"not pinned: cores {wanted} are not two distinct cores of "
                            f"the {len(available)} available ({available})")
    return wanted[0], wanted[1], (f"gateway/nginx on core {wanted[0]}, "
                                  f"generator + replica on core {wanted[1]}")


class Session:
    """Targets, children, and the figures measured so far."""

    def __init__(self, opts: BenchOptions, workdir: Path) -> None:
        self.opts, self.workdir = opts, workdir
        self.children: list = []
        self.targets: dict[str, BenchTarget] = {}
        self.skipped: dict[str, str] = {}
        self.info: dict = {}
        self.closed: dict[str, list[dict]] = {}
        self.wrk: dict[str, list[dict]] = {}
        self.open: dict[float, dict[str, list[dict]]] = {}
        self.last_results: dict[str, object] = {}
        self.cores: set[int] | None = None  # the pinned cores, for the noise meter
        self.proxy_pids: dict[str, int] = {}  # the proxies' own processes, for CPU per request
        self.handshakes: dict[str, list[dict]] = {}
        self.resumption: dict[str, bool | None] = {}
        self.idle: dict | None = None
        self.client_cpu: int | None = None
        self.workers: dict | None = None  # the --workers N phase (bench.workers), if run

    def say(self, text: str) -> None:
        if self.opts.progress is not None:
            print(f"[bench] {text}", file=self.opts.progress, flush=True)

    # -- setup --------------------------------------------------------------------
    def start(self, gateway_cpu: int | None, client_cpu: int | None) -> None:
        if gateway_cpu is not None and client_cpu is not None:
            self.cores = {gateway_cpu, client_cpu}
        self.client_cpu = client_cpu
        if self.opts.replica != "fastserver":  # else "direct" is the fast server itself
            fast, port = start_fastserver(self.workdir, client_cpu)
            self.children.append(fast)
            self.targets[FAST] = BenchTarget(FAST, f"http://127.0.0.1:{port}/score")
        self.say(f"starting scoregate serve ({self.opts.replica} replica)")
        gw = start_gateway(self.workdir / "scoregate", gateway_cpu, client_cpu, replica=self.opts.replica)
        self.children.append(gw)
        self.proxy_pids[GATEWAY] = gw.child.pid
        self.info["replica"] = self.opts.replica
        self.info["gateway_python"] = gateway_interpreter(gw.child.pid)
        auth = (("Authorization", f"Bearer {gw.key}"),)
        ca = gw.gateway.ca_cert
        self.targets[DIRECT] = BenchTarget(DIRECT, f"http://127.0.0.1:{gw.replica_port}/score")
        self.targets[GATEWAY] = BenchTarget(GATEWAY, gw.scoring_url, auth, ca)
        self._gateway_key = gw.key
        self.info["replica_pid"] = gw.replica_pid
        nginx = self._nginx_binary()
        if nginx:
            child, nport = start_nginx(nginx, self.workdir / "nginx", gateway_cpu,
                                       upstream_port=gw.replica_port, cert=gw.cert,
                                       cert_key=gw.cert_key, key=gw.key, endpoint=ENDPOINT,
                                       deployment=DEPLOYMENT)
            self.children.append(child)
            self.proxy_pids[NGINX] = child.pid
            self.info["nginx"] = nginx_version(nginx)
            self.targets[NGINX] = BenchTarget(
                NGINX, f"https://127.0.0.1:{nport}/api/v1/endpoint/{ENDPOINT}/score", auth, ca)

    def _nginx_binary(self) -> str | None:
        if self.opts.nginx == "skip":
            self.skipped[NGINX] = "skipped (--no-nginx)"
            return None
        found = find_nginx()
        if found is None and self.opts.nginx == "install":
            self.say("installing nginx with apt-get")
            found = install_nginx(self.workdir / "apt.log")
            if found is None:
                self.skipped[NGINX] = "could not install nginx with apt-get (see the log)"
                return None
        if found is None:
            self.skipped[NGINX] = ("nginx is not installed: run with --install-nginx "
                                   "(apt-get install nginx) to include it")
        return found

    def stop(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                self.say(f"stopping {child}: {exc}")
        self.children.clear()

    # -- measuring ----------------------------------------------------------------
    def _quiet(self, what: str, attempt) -> tuple[dict, object]:
        """attempt() -> (figures, result), redone while other processes took more than
        noise_limit cores (at most noise_retries times); the quietest attempt is kept."""
        best = None
        for tries in range(1 + self.opts.noise_retries):
            figs, result = attempt()
            noise = figs.get("foreign_cores")
            if best is None or (noise or 0.0) < (best[0].get("foreign_cores") or 0.0):
                best = (figs, result)
            if noise is None or noise <= self.opts.noise_limit:
                break
            self.say(f"{what}: other processes took {noise:.2f} cores meanwhile"
                     + (", measuring again" if tries < self.opts.noise_retries else ""))
        best[0]["attempts"] = tries + 1
        return best

    def closed_rounds(self) -> None:
        wrk = wrk_available() if self.opts.wrk else None
        if self.opts.wrk and not wrk:
            self.info["wrk"] = "not installed (apt-get install wrk)"
        for i in range(self.opts.runs):
            for name, bt in self.targets.items():
                figs, _ = self._quiet(f"closed loop {name}", lambda: measure(
                    bt, self.opts.duration, connections=self.opts.connections,
                    processes=self.opts.processes, timeout=self.opts.timeout, cores=self.cores,
                    warmup=self.opts.warmup))
                self.closed.setdefault(name, []).append(figs)
                self.say(f"round {i + 1}/{self.opts.runs} closed loop {name}: "
                         f"{figs.get('throughput', figs.get('error'))} req/s")
                if wrk:
                    w, _ = self._quiet(f"wrk {name}", lambda: (measure_wrk(
                        wrk, bt, self.opts.duration, self.opts.connections, self.cores,
                        pids=self._pids(name)), None))
                    self.wrk.setdefault(name, []).append(w)
                    self.say(f"round {i + 1}/{self.opts.runs} wrk {name}: "
                             f"{w.get('throughput', w.get('error'))} req/s")

    def _pids(self, name: str) -> list[int] | None:
        """The target's proxy process and its children (nginx's workers), not the replica
        (a child of the gateway, excluded by name)."""
        pid = self.proxy_pids.get(name)
        if pid is None:
            return None
        if name == GATEWAY:
            return [pid]
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                return [pid, *(int(c) for c in handle.read().split())]
        except OSError:
            return [pid]

    def gateway_max(self) -> float | None:
        s = spread([f.get("throughput") for f in self.closed.get(GATEWAY, [])])
        return s["median"] if s else None

    def rates(self) -> list[tuple[float, str]]:
        out = [(r, f"{r:g} req/s") for r in self.opts.rates]
        top = self.gateway_max()
        if self.opts.half_of_max and top:
            half = max(1.0, round(top / 2.0))
            out.append((half, f"50% of scoregate's max ({half:g} req/s)"))
        return out

    def open_rounds(self, rates: list[tuple[float, str]]) -> None:
        for i in range(self.opts.runs):
            for rate, _ in rates:
                for name, bt in self.targets.items():
                    figs, result = self._quiet(f"{rate:g} req/s {name}", lambda: measure(
                        bt, self.opts.duration, rate=rate, processes=self.opts.processes,
                        timeout=self.opts.timeout, cores=self.cores, warmup=self.opts.warmup,
                        pids=self._pids(name)))
                    self.open.setdefault(rate, {}).setdefault(name, []).append(figs)
                    if result is not None:
                        result.label = f"{name} @ {rate:g} req/s"
                        self.last_results[(rate, name)] = result
                    self.say(f"round {i + 1}/{self.opts.runs} {rate:g} req/s {name}: "
                             f"p50 {figs.get('p50_ms', '-')} ms, p99 {figs.get('p99_ms', '-')} ms"
                             f"{'' if figs.get('held_rate') else ' (did not hold the rate)'}")


    def connection_rounds(self) -> None:
        """Full TLS handshakes per second (scoregate and nginx, every round), whether a
        session resumes, and scoregate's memory with many idle keep-alive connections."""
        proxies = [name for name in (GATEWAY, NGINX) if name in self.targets]
        for i in range(self.opts.runs):
            for name in proxies:
                port = urlsplit(self.targets[name].url).port
                figs, _ = self._quiet(f"handshakes {name}", lambda: (
                    handshake_rate("127.0.0.1", port, self.opts.handshake_seconds, self.client_cpu,
                                   self._pids(name)), None))
                self.handshakes.setdefault(name, []).append(figs)
                self.say(f"round {i + 1}/{self.opts.runs} new TLS connections {name}: "
                         f"{figs.get('handshakes_per_s', figs.get('error'))}/s, "
                         f"{figs.get('cpu_us_per_handshake', '?')} µs CPU each")
        for name in proxies:
            bt = self.targets[name]
            self.resumption[name] = resumption_works("127.0.0.1", urlsplit(bt.url).port, bt.cafile)
        if self.opts.idle_connections and GATEWAY in self.targets:
            bt = self.targets[GATEWAY]
            url = urlsplit(bt.url)
            body = b'{"data": [[1.0, 2.0, 3.0, 4.0]]}'
            request = (f"POST {url.path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                       f"{self._gateway_key}\r\nContent-Type: application/json\r\nContent-Length: "
                       f"{len(body)}\r\nConnection: close\r\n\r\n").encode() + body
            self.say(f"holding {self.opts.idle_connections} idle TLS connections to scoregate")
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                self.idle = runner.run(idle_connections(
                    "127.0.0.1", url.port, bt.cafile, self.proxy_pids[GATEWAY],
                    self.opts.idle_connections, request))
            self.say(f"idle connections: {self.idle}")


def run_session(opts: BenchOptions) -> tuple[Session, dict]:
    """Run the whole benchmark; (session with raw figures, setup facts)."""
    gateway_cpu, client_cpu, pinning = pick_cpus(opts)
    original = os.sched_getaffinity(0)
    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="scoregate-bench-") as tmp:
        session = Session(opts, Path(tmp))
        try:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})  # the generator; workers inherit it
            session.start(gateway_cpu, client_cpu)
            session.closed_rounds()
            rates = session.rates()
            session.open_rounds(rates)
            session.connection_rounds()
        finally:
            session.stop()
            os.sched_setaffinity(0, original)
        plan = None
        if opts.workers >= 2:  # after the usual session, with its processes gone
            plan = plan_workers(sorted(original), opts.workers, gateway_cpu, client_cpu)
            session.workers = run_workers_phase(session, plan)
    setup = {"pinning": pinning, "gateway_cpu": gateway_cpu, "client_cpu": client_cpu,
             "workers_pinning": plan.pinning if plan else None, "rates": rates,
             "started_at": started, "elapsed_s": round(time.time() - started, 1),
             "loadavg_before": [round(x, 2) for x in load_before],
             "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    return session, setup
