"""`python -m loadtests instructions`: the gateway's instructions per request, counted.

Why: on a shared machine CPU time per request moves by 10-20 % from one run to the
next, so a change worth a few percent cannot be seen in the benchmark's figures.
Instructions executed do not move: the gateway runs under valgrind's callgrind with
counting off until the measurement; it then serves a first batch of N/4 and a second
batch of N keep-alive TLS requests (8 connections, every answer checked), and the
difference of the two counts over the difference of the requests is the cost of one
request, with connection set-up and other fixed costs cancelled. What the process does
while idle (timers, probes, the control plane's loops) is counted for two seconds
first (once the warm-up's after-work is done) and subtracted for the time each batch took. Repeatable to about ±0.5 % (runs
of the same code spread over 1-2.5k instructions: how many requests share one turn
of the event loop varies with timing, even under valgrind).

What it is not: a CPU time. It counts user-space instructions only (the kernel's work
for the socket calls and TLS records is not in it), and the gateway runs ~50 times
slower than normal, so one event-loop turn handles one request where a loaded gateway
batches several. Use it to compare two versions of the code; check the result with the
benchmark's CPU time per request. Needs valgrind (`apt install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from .gateway import RunningGateway, start_gateway
from .procs import BenchError, end_leftovers

CONNECTIONS = 8
IDLE_SETTLE_S = 1.0  # after the warm-up the gateway is busy for about a second more (not idle)
IDLE_SECONDS = 2.0  # then one reading: 2 s windows agree within ~3 %, 1 s ones do not
START_TIMEOUT_S = 600.0  # a gateway under valgrind starts in ~15 s here; a slow machine may need more
REQUEST_TIMEOUT_S = 30.0  # one request under valgrind: milliseconds; this bounds a stuck one


def add_instructions_parser(sub) -> None:
    from ..cli import _positive

    p = sub.add_parser("instructions", help="count the gateway's instructions per request (valgrind)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=_positive(int), default=3000,
                   help="requests in the second batch (3000; the first has a quarter)")
    p.add_argument("--replica", choices=("fastserver", "modelserver"), default="fastserver",
                   help="the replica behind the gateway (fastserver)")
    p.add_argument("--gateway-cpu", type=int, default=0, help="core for the gateway (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core for the replica (1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin anything to cores")
    p.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(handler=instructions_command)


def instructions_command(args: argparse.Namespace) -> int:
    try:
        figures = count_instructions(
            args.requests, replica=args.replica,
            gateway_cpu=None if args.no_pin else args.gateway_cpu,
            client_cpu=None if args.no_pin else args.client_cpu, progress=sys.stderr)
    except (BenchError, OSError) as exc:
        print(f"loadtests instructions: error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"gateway instructions per request: {figures['instructions_per_request']:,.0f} "
          f"({figures['requests']:,} requests over {CONNECTIONS} keep-alive TLS connections, "
          f"{figures['replica']} replica; idle {figures['idle_instructions_per_s'] / 1e6:.1f} M/s subtracted)")
    return 0


def count_instructions(requests: int, *, replica: str = "fastserver", gateway_cpu=0, client_cpu=1,
                       progress=None) -> dict:
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is not installed (apt install valgrind)")
    say = (lambda text: print(f"[instructions] {text}", file=progress, flush=True)) if progress else (lambda _t: None)
    with tempfile.TemporaryDirectory(prefix="scoregate-instructions-") as scratch:
        work = Path(scratch)
        out = work / "callgrind.out"
        say("starting scoregate serve under callgrind (counting off)")
        gw = start_gateway(work, gateway_cpu, client_cpu, timeout=START_TIMEOUT_S, replica=replica,
                           wrapper=("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                    f"--callgrind-out-file={out}"))
        try:
            _send(gw, max(50, requests // 10))  # warm: connections, caches, lazy imports
            _control(gw, "-i", "on")
            time.sleep(IDLE_SETTLE_S)
            idle = _count(gw, out, lambda: time.sleep(IDLE_SECONDS)) / IDLE_SECONDS
            say(f"idle: {idle / 1e6:.1f} M instructions/s")
            batches = []
            for n in (max(1, requests // 4), requests):
                started = time.monotonic()
                total = _count(gw, out, lambda n=n: _send(gw, n))
                batches.append({"requests": n, "instructions": total, "seconds": time.monotonic() - started})
                say(f"{n} requests: {total:,} instructions in {batches[-1]['seconds']:.1f} s")
        finally:
            gw.stop()
            if left := end_leftovers(scratch):
                say(f"ended {len(left)} process(es) the gateway left behind: {left}")
    first, second = batches
    extra = second["requests"] - first["requests"]
    raw = (second["instructions"] - first["instructions"]) / extra
    per_request = raw - idle * (second["seconds"] - first["seconds"]) / extra
    return {"requests": requests, "replica": replica, "connections": CONNECTIONS,
            "instructions_per_request": round(per_request), "raw_instructions_per_request": round(raw),
            "idle_instructions_per_s": round(idle), "batches": batches}


def _control(gw: RunningGateway, *args: str) -> None:
    done = subprocess.run(["callgrind_control", *args, str(gw.child.pid)], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {(done.stdout + done.stderr)[-300:]}")


def _count(gw: RunningGateway, out: Path, action) -> int:
    """Instructions the gateway executed during action(): zero the counters, act, dump."""
    _control(gw, "--zero")
    before = set(out.parent.glob(out.name + ".*"))
    action()
    _control(gw, "--dump")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for dump in set(out.parent.glob(out.name + ".*")) - before:
            match = re.search(r"^summary: (\d+)$", dump.read_text(errors="replace"), re.MULTILINE)
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise BenchError("callgrind wrote no profile dump")


def _send(gw: RunningGateway, requests: int) -> None:
    """`requests` scoring requests over CONNECTIONS keep-alive TLS connections; each must be 200.
    The client is this process (its core does not change what the gateway executes)."""
    url = urlsplit(gw.scoring_url)
    body = b'{"data": [[1, 2, 3, 4]]}'
    head = (f"POST {url.path} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {gw.key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    context = ssl.create_default_context(cafile=gw.gateway.ca_cert or None)
    left = [requests]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=context)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(head + body)
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    answer = await reader.readuntil(b"\r\n\r\n")
                    if not answer.startswith(b"HTTP/1.1 200 "):
                        raise BenchError(f"the gateway answered {answer[:200]!r}")
                    length = re.search(rb"(?im)^content-length: *(\d+)", answer)
                    if length is None:
                        raise BenchError("an answer without Content-Length")
                    await reader.readexactly(int(length.group(1)))
        finally:
            writer.close()

    async def main() -> None:
        await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))

    asyncio.run(main())
