"""A soak: steady load on an endpoint for a long time while faults are injected every
few seconds; the gateway's memory must stay within a stated bound.

    python -m loadtests.soak --endpoint NAME [--state-dir DIR] --duration 1800 --rate 50
                             --fault-every 5 --max-growth-mb 64

Faults, in turn: SIGKILL one replica of the endpoint (the controller restarts it),
a burst of malformed requests on raw TLS connections, and a handful of slowloris
connections left open. The gateway's resident memory (VmRSS of the pid in its
gateway.json) is sampled every second; growth is measured from the end of the first
tenth of the run (warm-up) to the end. Prints a Markdown summary; exit code 1 when the
growth is over the bound or the endpoint does not answer 200 at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import ssl
import sys
import time
from collections import Counter

import aiohttp

from tls import client_context

from .admin import Gateway, live_replicas, main_deployment
from .targets import endpoint_target

MALFORMED = (
    b"POST /api/v1/endpoint/{e}/score HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/v1/endpoint/{e}/score HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
    b"\x16\x03\x01 not http at all\r\n\r\n",
)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, gateway: Gateway, endpoint: str, rate: float, duration_s: float, fault_every_s: float,
                 seed: int = 11) -> None:
        self.gateway, self.endpoint = gateway, endpoint
        self.rate, self.duration_s, self.fault_every_s = rate, duration_s, fault_every_s
        self.target = endpoint_target(gateway, endpoint)
        self.rng = random.Random(seed)
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()
        self.faults: Counter = Counter()
        self.rss: list[tuple[float, float]] = []
        self._slow: list[asyncio.StreamWriter] = []

    async def run(self) -> None:
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=client_context(self.target.cafile), limit=256)) as session:
            tasks = [asyncio.create_task(self._load(session, started)),
                     asyncio.create_task(self._faults(started)),
                     asyncio.create_task(self._sample(started))]
            await asyncio.gather(*tasks)
            self.final_status = await self._one(session)
        for writer in self._slow:
            writer.close()

    async def _load(self, session, started: float) -> None:
        pending: set[asyncio.Task] = set()
        n = 0
        while (now := time.monotonic()) - started < self.duration_s:
            due = started + n / self.rate
            if due > now:
                await asyncio.sleep(due - now)
            n += 1
            if len(pending) < 512:
                task = asyncio.create_task(self._count(session))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                self.errors["generator-overloaded"] += 1
        if pending:
            await asyncio.wait(pending, timeout=30)

    async def _one(self, session) -> int:
        async with session.post(self.target.url, data=b'{"data": [[5.1, 3.5, 1.4, 0.2]]}',
                                headers=dict(self.target.headers)) as response:
            await response.read()
            return response.status

    async def _count(self, session) -> None:
        try:
            self.statuses[await self._one(session)] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1

    async def _faults(self, started: float) -> None:
        kinds = ("kill_replica", "malformed", "slowloris")
        i = 0
        while time.monotonic() - started < self.duration_s - self.fault_every_s:
            await asyncio.sleep(self.fault_every_s)
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                await getattr(self, f"_{kind}")()
                self.faults[kind] += 1
            except Exception as exc:  # a fault that cannot be injected is reported, not fatal
                self.faults[f"{kind}-skipped:{type(exc).__name__}"] += 1

    async def _kill_replica(self) -> None:
        view = await asyncio.to_thread(self.gateway.endpoint, self.endpoint)
        deployment = await asyncio.to_thread(self.gateway.deployment, self.endpoint, main_deployment(view))
        pids = [r["pid"] for r in live_replicas(deployment) if r.get("pid")]
        if pids:
            os.kill(self.rng.choice(pids), signal.SIGKILL)

    async def _open_tls(self):
        url = self.target.url.split("//", 1)[1].split("/", 1)[0]
        host, port = url.rsplit(":", 1)
        context = ssl.create_default_context(cafile=self.target.cafile)
        return await asyncio.open_connection(host, int(port), ssl=context, server_hostname="localhost")

    async def _malformed(self) -> None:
        for payload in MALFORMED:
            reader, writer = await self._open_tls()
            writer.write(payload.replace(b"{e}", self.endpoint.encode()))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(4096), 5)
            except asyncio.TimeoutError:
                pass
            writer.close()

    async def _slowloris(self) -> None:
        for _ in range(20):
            if len(self._slow) >= 200:
                self._slow.pop(0).close()
            _, writer = await self._open_tls()
            writer.write(b"POST /api/v1/endpoint/x/score HTTP/1.1\r\nHo")
            self._slow.append(writer)

    async def _sample(self, started: float) -> None:
        while (elapsed := time.monotonic() - started) < self.duration_s:
            self.rss.append((elapsed, rss_mb(self.gateway.pid)))
            await asyncio.sleep(1.0)
        self.rss.append((time.monotonic() - started, rss_mb(self.gateway.pid)))

    def report(self, max_growth_mb: float) -> tuple[str, bool]:
        warm = next((mb for t, mb in self.rss if t >= self.duration_s / 10), self.rss[0][1])
        end, peak = self.rss[-1][1], max(mb for _, mb in self.rss)
        growth = end - warm
        ok = growth <= max_growth_mb and self.final_status == 200
        sent = sum(self.statuses.values()) + sum(self.errors.values())
        lines = [
            f"## Soak of endpoint {self.endpoint}: {self.duration_s:g} s at {self.rate:g} requests/s",
            "", "| figure | value |", "|---|---|",
            f"| requests | {sent} |",
            f"| answers by status | {json.dumps(dict(sorted(self.statuses.items())))} |",
            f"| client errors | {json.dumps(dict(self.errors))} |",
            f"| faults injected | {json.dumps(dict(self.faults))} |",
            f"| gateway RSS after warm-up / end / peak | {warm:.1f} / {end:.1f} / {peak:.1f} MB |",
            f"| growth (bound) | {growth:+.1f} MB ({max_growth_mb:g} MB) |",
            f"| endpoint answers at the end | {self.final_status} |",
            f"| verdict | {'within bounds' if ok else 'OVER BOUND or not serving'} |",
        ]
        return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--state-dir")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s (default 50)")
    parser.add_argument("--fault-every", type=float, default=5.0, help="seconds between faults (default 5)")
    parser.add_argument("--max-growth-mb", type=float, default=64.0, help="memory bound (default 64 MB)")
    args = parser.parse_args(argv)
    gateway = Gateway.from_state_dir(args.state_dir)
    soak = Soak(gateway, args.endpoint, args.rate, min(args.duration, 24 * 3600), args.fault_every)
    asyncio.run(soak.run())
    text, ok = soak.report(args.max_growth_mb)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
