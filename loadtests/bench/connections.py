"""Connection-level figures: new TLS handshakes per second, session resumption, and
the memory of many idle keep-alive TLS connections.

Handshakes are timed with `openssl s_time -new` (a C client: every connection is a full
handshake, no resumption, no request), pinned to the client core like the other
generators. Resumption is checked with two `openssl s_client` runs sharing a session
file. Idle connections are opened by this process: each completes its TLS handshake and
one request (a keep-alive connection that has been used), then stays open while the
proxy's resident memory is read and a separate client keeps being served.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from .measure import process_cpu_s
from .procs import pinned


def openssl() -> str | None:
    return shutil.which("openssl")


def handshake_rate(host: str, port: int, seconds: int, cpu: int | None,
                   pids: list[int] | None = None) -> dict:
    """Full TLS handshakes with `openssl s_time -new`: the rate reached, and with `pids`
    (the proxy's processes) its CPU time per handshake. s_time's own client work is a
    good part of a handshake, so on a machine where it shares a core the rate is the
    client's; the proxy's CPU time per handshake is its own cost, and 1 s divided by it
    is what one core of the proxy could take."""
    binary = openssl()
    if binary is None:
        return {"error": "openssl is not installed"}
    cmd = pinned([binary, "s_time", "-connect", f"{host}:{port}", "-new", "-time", str(seconds)], cpu)
    before = process_cpu_s(pids) if pids else None
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"s_time: {exc}"}
    elapsed = time.monotonic() - started
    after = process_cpu_s(pids) if pids else None
    found = re.search(r"(\d+) connections in \d+ real seconds", done.stdout)
    if not found or int(found.group(1)) == 0:
        return {"error": f"cannot read s_time output: {(done.stdout + done.stderr)[-300:]}"}
    count = int(found.group(1))
    out = {"handshakes": count, "handshakes_per_s": round(count / elapsed, 1)}
    if before is not None and after is not None:
        per = (after - before) / count
        out["cpu_us_per_handshake"] = round(per * 1e6, 1)
        out["capacity_per_core"] = round(1 / per, 1) if per > 0 else None
    return out


def resumption_works(host: str, port: int, cafile: str | None) -> bool | None:
    """True when a second connection resumes the first one's TLS session."""
    binary = openssl()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        session = str(Path(tmp) / "session.pem")
        base = [binary, "s_client", "-connect", f"{host}:{port}", "-servername", "localhost"]
        if cafile:
            base += ["-CAfile", cafile]
        # -ign_eof keeps the client reading until the server's session ticket has arrived.
        request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        try:
            subprocess.run([*base, "-sess_out", session, "-ign_eof"], input=request,
                           capture_output=True, timeout=30)
            second = subprocess.run([*base, "-sess_in", session, "-ign_eof"], input=request,
                                    capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return b"Reused," in second.stdout


async def _exchange(host: str, port: int, context: ssl.SSLContext, request: bytes,
                    timeout_s: float) -> tuple[asyncio.StreamWriter, int]:
    """A new TLS connection, one request, its whole answer read; (writer, status)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return writer, int(head.split(b" ", 2)[1])


_FAILURES = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError)


async def _open_idle(host: str, port: int, context: ssl.SSLContext, request: bytes, count: int,
                     concurrency: int, deadline: float) -> tuple[list, int]:
    """Open `count` TLS connections, one request each; (open writers, failures)."""
    writers: list[asyncio.StreamWriter] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal failures
        async with gate:
            if time.monotonic() > deadline:
                failures += 1
                return
            try:
                writer, _ = await _exchange(host, port, context, request, 30.0)
                writers.append(writer)
            except _FAILURES:
                failures += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return writers, failures


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def idle_connections(host: str, port: int, cafile: str | None, pid: int, count: int,
                           served_request: bytes, probes: int = 50, timeout_s: float = 180.0) -> dict:
    """Hold `count` used, idle keep-alive TLS connections to the proxy; meanwhile measure
    its RSS and serve `probes` requests on fresh connections."""
    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    idle_request = b"GET /bench-idle HTTP/1.1\r\nHost: localhost\r\n\r\n"  # a cheap 404, kept alive
    rss_before = rss_mb(pid)
    started = time.monotonic()
    writers, failures = await _open_idle(host, port, context, idle_request, count, 200,
                                         started + timeout_s)
    opened_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    rss_held = rss_mb(pid)
    statuses, latencies = [], []
    for _ in range(probes):
        t0 = time.perf_counter()
        try:
            writer, status = await _exchange(host, port, context, served_request, 10.0)
            statuses.append(status)
            writer.close()
        except _FAILURES:
            statuses.append(0)
        latencies.append((time.perf_counter() - t0) * 1000)
    still_open = sum(1 for w in writers if not w.transport.is_closing())
    for writer in writers:
        writer.transport.abort()
    latencies.sort()
    return {"requested": count, "held": len(writers), "failed": failures, "still_open": still_open,
            "open_s": round(opened_s, 1), "rss_before_mb": rss_before, "rss_held_mb": rss_held,
            "probe_ok": sum(1 for s in statuses if s == 200), "probes": probes,
            "probe_p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "probe_max_ms": round(latencies[-1], 2) if latencies else None}
