"""Does a wrong key's rejection time depend on how much of it is right?

    python -m loadtests.auth_timing --endpoint NAME [--state-dir DIR] [--samples 2000]

Sends, in random order, wrong keys that share no leading character with the real key
and wrong keys that share all but the last one, and compares their 401 latencies. A
key comparison that stops at the first differing byte would make the second kind
measurably slower. Requests come from many loopback source addresses (127.0.0.2 …) so
the gateway's failed-auth throttle never kicks in. Prints medians, trimmed means and
the difference in units of the measurement's own noise.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

import aiohttp

from tls import client_context

from .admin import Gateway
from .targets import endpoint_target


def _variants(key: str, rng: random.Random) -> tuple[str, str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    first = rng.choice([c for c in alphabet if c != key[0]])
    none_shared = first + "".join(rng.choice(alphabet) for _ in range(len(key) - 1))
    last = rng.choice([c for c in alphabet if c != key[-1]])
    all_but_one = key[:-1] + last
    return none_shared, all_but_one


async def measure(url: str, key: str, cafile: str | None, samples: int, sources: int,
                  seed: int = 7) -> dict[str, list[float]]:
    rng = random.Random(seed)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        ssl=client_context(cafile) if url.startswith("https") else False,
        local_addr=(f"127.0.0.{2 + i % 250}", 0), limit=1)) for i in range(sources)]
    timings: dict[str, list[float]] = {"none_shared": [], "all_but_one": []}
    try:
        for n in range(samples):
            kind = rng.choice(("none_shared", "all_but_one"))
            wrong = _variants(key, rng)[0 if kind == "none_shared" else 1]
            session = sessions[n % sources]
            started = time.perf_counter()
            async with session.post(url, data=b"{}", headers={"Authorization": f"Bearer {wrong}"}) as r:
                await r.read()
                if r.status != 401:
                    raise SystemExit(f"expected 401, got {r.status} (is the throttle seeing too few sources?)")
            timings[kind].append((time.perf_counter() - started) * 1e6)
    finally:
        for session in sessions:
            await session.close()
    return timings


def summarize(timings: dict[str, list[float]]) -> str:
    def trimmed(values: list[float]) -> float:
        ordered = sorted(values)
        cut = len(ordered) // 10
        return statistics.fmean(ordered[cut: len(ordered) - cut])

    a, b = timings["none_shared"], timings["all_but_one"]
    noise = statistics.pstdev(sorted(a + b)[len(a + b) // 10: -len(a + b) // 10 or None])
    lines = ["| wrong key | samples | median µs | trimmed mean µs |", "|---|---|---|---|"]
    for name, values in timings.items():
        lines.append(f"| {name.replace('_', ' ')} | {len(values)} | {statistics.median(values):.1f} | "
                     f"{trimmed(values):.1f} |")
    diff = trimmed(b) - trimmed(a)
    lines.append(f"\ndifference of trimmed means: {diff:+.1f} µs = {diff / noise:+.3f} × the spread "
                 f"({noise:.1f} µs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.auth_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--state-dir")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--sources", type=int, default=200, help="loopback source addresses to spread over")
    args = parser.parse_args(argv)
    target = endpoint_target(Gateway.from_state_dir(args.state_dir), args.endpoint)
    key = dict(target.headers)["Authorization"].removeprefix("Bearer ")
    timings = asyncio.run(measure(target.url, key, target.cafile, min(args.samples, 20000), args.sources))
    print(summarize(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
