"""`scoregate top`: the status page's live view as a refreshing table in the terminal.

For people on a server without a browser. Plain ANSI escapes (alternate screen, clear,
colour only on a terminal and without NO_COLOR), no curses. It shows the gateway's own
snapshot (`GET /api/v1/status`); a gateway without that route is read through the
admin API and `/metrics` instead (serving.status.remote). Not on a terminal (a pipe, a
test), each refresh is printed after the previous one, without escapes. With `-o json`
each refresh is the snapshot itself, one JSON document a line (JSON lines), for scripts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from typing import TextIO

from .client import AdminClient, CliError, GatewayNotRunning

SPARKS = "▁▂▃▄▅▆▇█"
COLORS = {"Succeeded": "32", "healthy": "32", "Completed": "32", "Failed": "31", "exited": "31",
          "ejected": "31", "Canceled": "31", "Creating": "33", "Updating": "33", "starting": "33",
          "Running": "33", "Queued": "33"}


class _Source:
    """The gateway's snapshot, or one made from the admin API by an older gateway."""

    def __init__(self, client: AdminClient) -> None:
        self.client = client
        self.remote = None

    def fetch(self) -> dict:
        if self.remote is None:
            try:
                return self.client.get("/status")
            except GatewayNotRunning:
                raise
            except CliError:
                from .status.remote import RemoteSnapshot

                self.remote = RemoteSnapshot(self.client)
        return self.remote.fetch()


def sparkline(values: list, width: int) -> str:
    points = [v for v in values[-width:]]
    top = max((v for v in points if v is not None), default=0) or 1
    return "".join(" " if v is None else SPARKS[min(7, int(v / top * 7.999))] for v in points).rjust(width)


def _num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) and value != int(value) else str(int(value))


def _table(header: list[str], rows: list[list[str]], paint) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(paint(cell, cell.ljust(w)) for cell, w in zip(row, widths)).rstrip())
    return lines


def render_frame(snapshot: dict, *, width: int = 120, color: bool = False) -> str:
    """One screen of `top` for a snapshot (serving.status.snapshot shape)."""

    def paint(value: str, padded: str) -> str:
        code = COLORS.get(value.strip()) if color else None
        return f"\x1b[{code}m{padded}\x1b[0m" if code else padded

    gateway = snapshot.get("gateway", {})
    stamp = time.strftime("%H:%M:%S", time.localtime(snapshot.get("generated_at", time.time())))
    where = f" — {gateway['scoring_url']}" if gateway.get("scoring_url") else ""
    lines = [f"scoregate top{where} — {stamp} "
             f"(rates over the last {_num(gateway.get('figures_window_s'))} s; Ctrl-C to quit)", ""]
    spark_width = max(0, min(30, width - 112))
    rows = []
    for d in snapshot.get("deployments", []):
        live = d.get("live") or {}
        row = [d["key"], d.get("provisioning_state") or "-", f"{d.get('traffic_percent', 0)}%",
               f"{d.get('replicas_ready')}/{d.get('replicas_desired')}", _num(live.get("requests_per_s")),
               _num((live.get("error_ratio") or 0) * 100), _num(live.get("p50_ms")), _num(live.get("p99_ms")),
               _num(round((live.get("utilization") or 0) * 100)), _num(live.get("queued")),
               _num(live.get("in_flight"))]
        if spark_width:
            row.append(sparkline((live.get("series") or {}).get("requests_per_s", []), spark_width))
        rows.append(row)
    header = ["DEPLOYMENT", "STATE", "TRAFFIC", "READY", "REQ/S", "ERR%", "P50MS", "P99MS", "UTIL%", "QUEUE",
              "INFLIGHT"] + (["REQ/S HISTORY"] if spark_width else [])
    lines += _table(header, rows, paint) if rows else ["no online deployments"]
    lines += _rollouts(snapshot) + _unhealthy(snapshot) + _jobs(snapshot, paint)
    return "\n".join(line[:width] if not color else line for line in lines) + "\n"


def _rollouts(snapshot: dict) -> list[str]:
    out = []
    for d in snapshot.get("deployments", []):
        r = d.get("rollout") or {}
        if r.get("state") == "InProgress":
            out.append(f"  {d['key']}: {r.get('kind')} in stage {r.get('stage')} for {r.get('elapsed_s')} s "
                       f"(budget {r.get('budget')})")
        elif r.get("state") == "Failed":
            out.append(f"  {d['key']}: failed in stage {r.get('failed_stage')}: {r.get('reason')}"
                       f"{' (rolled back)' if r.get('rolled_back') else ''}")
    return ["", "ROLLOUTS", *out] if out else []


def _unhealthy(snapshot: dict) -> list[str]:
    out = [f"  {d['key']} {r['replica_id']}: {r['health']}{' (' + r['phase'] + ')' if r.get('phase') else ''}"
           f", {r.get('restarts') or 0} restarts{': ' + r['reason'] if r.get('reason') else ''}"
           for d in snapshot.get("deployments", []) for r in d.get("replicas", []) if r.get("health") != "healthy"]
    return ["", "REPLICAS NOT HEALTHY", *out] if out else []


def _jobs(snapshot: dict, paint) -> list[str]:
    jobs = (snapshot.get("batch") or {}).get("jobs", [])[:10]
    if not jobs:
        return []
    rows = []
    for j in jobs:
        filled = int(round((j.get("progress") or 0) * 20))
        items = j.get("items") or {}
        rows.append([j["id"], f"{j.get('endpoint_name')}/{j.get('deployment_name')}", j.get("status") or "-",
                     "[" + "#" * filled + "." * (20 - filled) + f"] {(j.get('progress') or 0) * 100:.0f}%",
                     f"{items.get('succeeded', 0)}+{items.get('failed', 0)}/{items.get('total', 0)}",
                     _num(j.get("elapsed_s"))])
    return ["", *_table(["BATCH JOB", "ENDPOINT/DEPLOYMENT", "STATUS", "PROGRESS", "ITEMS", "SECONDS"], rows, paint)]


def run_top(client: AdminClient, interval_s: float = 2.0, iterations: int | None = None, *,
            out: TextIO | None = None, output: str = "table") -> int:
    """Refresh every interval_s until Ctrl-C (or `iterations` frames); returns the exit
    code. output "json": a snapshot a line, never a screen (a script reads it, also on a
    terminal). CliError / GatewayNotRunning propagate to the CLI, which prints them."""
    out = out or sys.stdout
    as_json = output == "json"
    tty = out.isatty() and not as_json
    color = tty and "NO_COLOR" not in os.environ
    source, shown = _Source(client), 0
    if tty:
        out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
    try:
        while iterations is None or shown < iterations:
            width = shutil.get_terminal_size((120, 40)).columns if tty else 160
            if as_json:
                out.write(json.dumps(source.fetch()) + "\n")
            else:
                frame = render_frame(source.fetch(), width=width, color=color)
                out.write("\x1b[H\x1b[2J" + frame if tty else frame + "\n")
            out.flush()
            shown += 1
            if iterations is None or shown < iterations:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            out.write("\x1b[?25h\x1b[?1049l")
            out.flush()
    return 0
