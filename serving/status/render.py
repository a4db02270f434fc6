"""Server-side HTML of the status page, from a snapshot.

All the markup is made here, in one place: the first load gets the whole page, and
every refresh gets the same sections again (status.js swaps them in and draws the
charts from the snapshot's series). Every value is escaped. No inline script or style
(the page is served with a strict Content-Security-Policy): bars are SVG rects and
<progress> elements, colours come from classes in status.css.
"""

from __future__ import annotations

import math
import time
from html import escape

STATIC = "/static/status"
CHARTS = (("rps", "Requests/s"), ("latency", "Latency p50 / p99 (ms)"), ("utilization", "Utilization"),
          ("queue", "Queue length"))


def e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def fmt_num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) and value != int(value) else f"{int(value)}"


def fmt_ms(value) -> str:
    return "–" if value is None else (f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms")


def fmt_pct(ratio) -> str:
    return "–" if ratio is None else f"{ratio * 100:.1f}%"


def fmt_age(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _state_class(state) -> str:
    return "state state-" + "".join(c for c in str(state or "unknown").lower() if c.isalnum())


def traffic_bar(traffic: dict) -> str:
    """A horizontal SVG bar of an endpoint's traffic split, one rect per deployment."""
    parts, x = [], 0.0
    for i, (name, weight) in enumerate(traffic.items()):
        if weight <= 0:
            continue
        parts.append(f'<rect class="share s{i % 6}" x="{x}%" y="0" width="{weight}%" height="100%">'
                     f'<title>{e(name)} {e(weight)}%</title></rect>')
        x += weight
    legend = " · ".join(f'<span class="traffic-share" data-deployment="{e(n)}"><i class="dot s{i % 6}"></i>'
                        f'{e(n)} {e(w)}%</span>' for i, (n, w) in enumerate(traffic.items()))
    return (f'<svg class="split" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
            f'aria-label="traffic split">{"".join(parts)}</svg><div class="legend">{legend or "no traffic"}</div>')


def summary(s: dict) -> str:
    deps = s["deployments"]
    states: dict[str, int] = {}
    for d in deps:
        states[d["provisioning_state"]] = states.get(d["provisioning_state"], 0) + 1
    running = sum(1 for j in s["batch"]["jobs"] if j["status"] in ("Running", "Queued"))
    cells = [("Endpoints", len(s["endpoints"])),
             ("Deployments", ", ".join(f"{n} {k}" for k, n in sorted(states.items())) or "0"),
             ("Replicas ready", f'{sum(d["replicas_ready"] or 0 for d in deps)} / '
                                f'{sum(d["replicas_desired"] or 0 for d in deps)}'),
             ("Requests/s", fmt_num(round(sum(x["requests_per_s"] for x in s["endpoints"]), 1))),
             ("Batch jobs running", running)]
    boxes = "".join(f'<div><span class="label">{e(k)}</span><span class="value">{e(v)}</span></div>'
                    for k, v in cells)
    return f'<section id="summary" class="summary">{boxes}</section>'


def endpoints_table(s: dict) -> str:
    rows = "".join(
        f'<tr data-endpoint="{e(x["name"])}"><td class="endpoint-name">{e(x["name"])}</td><td>{e(x["auth_mode"])}</td>'
        f'<td class="traffic">{traffic_bar(x["traffic"])}</td>'
        f'<td>{e(", ".join(f"{k} {v}%" for k, v in x["mirror_traffic"].items()) or "–")}</td>'
        f'<td class="num">{fmt_num(x["requests_per_s"])}</td><td class="uri">{e(x["scoring_uri"])}</td></tr>'
        for x in s["endpoints"])
    empty = '<tr><td colspan="6" class="muted">no online endpoints</td></tr>'
    return ('<section id="endpoints"><h2>Endpoints</h2><table><thead><tr><th>Endpoint</th><th>Auth</th>'
            '<th>Traffic split</th><th>Mirror</th><th>Req/s</th><th>Scoring URI</th></tr></thead>'
            f'<tbody>{rows or empty}</tbody></table></section>')


def rollout_block(r: dict | None) -> str:
    if not r:
        return '<p class="muted">no rollout recorded yet</p>'
    head = (f'<p class="rollout-head">Rollout ({e(r.get("kind"))}): <span class="{_state_class(r.get("state"))}">'
            f'{e(r.get("state"))}</span> after {e(r.get("elapsed_s"))} s of a {e(r.get("budget"))} budget'
            f'{", rolled back" if r.get("rolled_back") else ""}</p>')
    if r.get("reason"):
        head += f'<p class="reason">stage {e(r.get("failed_stage"))}: {e(r["reason"])}</p>'
    rows = "".join(f'<tr><td>{e(st["name"])}</td><td class="num">{e(st["seconds"])} s</td>'
                   f'<td><span class="{_state_class(st["outcome"])}">{e(st["outcome"])}</span></td></tr>'
                   for st in r.get("stages", []))
    return (f'{head}<table class="stages"><thead><tr><th>Stage</th><th>Time</th><th>Outcome</th></tr>'
            f'</thead><tbody>{rows}</tbody></table>')


def replicas_table(replicas: list[dict]) -> str:
    if not replicas:
        return '<p class="muted">no replicas</p>'
    rows = "".join(
        f'<tr><td class="mono">{e(r["replica_id"])}</td>'
        f'<td><span class="{_state_class(r["health"])}">{e(r["health"])}</span>'
        f'{" (" + e(r["phase"]) + ")" if r.get("phase") else ""}'
        f'{" — " + e(r["reason"]) if r.get("reason") else ""}</td>'
        f'<td class="num">{e(r.get("restarts"))}</td><td class="num">{e(fmt_num(r.get("in_flight")))}</td>'
        f'<td class="num">{fmt_age(r.get("age_s"))}</td><td class="num">{e(r.get("pid") or "–")}</td>'
        f'<td class="mono">{e(r.get("version"))}</td></tr>' for r in replicas)
    return ('<table class="replicas"><thead><tr><th>Replica</th><th>Health</th><th>Restarts</th><th>In flight</th>'
            f'<th>Age</th><th>PID</th><th>Version</th></tr></thead><tbody>{rows}</tbody></table>')


def deployment_card(d: dict) -> str:
    live = d.get("live") or {}
    auto = d.get("autoscale")
    sc = d["scale"]
    scale = (f'autoscale {fmt_pct(auto.get("utilization"))} of target {e(sc.get("target_utilization_percentage"))}%, '
             f'{e(sc.get("min_instances"))}–{e(sc.get("max_instances"))} replicas') if auto else "manual scale"
    mirror = f' (+{d["mirror_percent"]}% mirror)' if d["mirror_percent"] else ""
    figures = [("Traffic", f'{d["traffic_percent"]}%{mirror}'),
               ("Replicas", f'{d["replicas_ready"]} / {d["replicas_desired"]}'),
               ("Req/s", fmt_num(live.get("requests_per_s"))), ("p50", fmt_ms(live.get("p50_ms"))),
               ("p99", fmt_ms(live.get("p99_ms"))), ("Errors", fmt_pct(live.get("error_ratio"))),
               ("Utilization", fmt_pct(live.get("utilization"))), ("Queue", fmt_num(live.get("queued"))),
               ("In flight", fmt_num(live.get("in_flight")))]
    dl = "".join(f'<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>' for k, v in figures)
    charts = "".join(f'<figure><figcaption>{e(title)}</figcaption><svg class="chart" data-key="{e(d["key"])}" '
                     f'data-chart="{name}" role="img" aria-label="{e(title)}"></svg></figure>'
                     for name, title in CHARTS)
    return (f'<article class="deployment" data-key="{e(d["key"])}"><header><h3>{e(d["endpoint_name"])} / '
            f'<span class="deployment-name">{e(d["name"])}</span></h3>'
            f'<span class="deployment-state {_state_class(d["provisioning_state"])}">'
            f'{e(d["provisioning_state"])}</span>'
            f'<span class="muted">version {e(d["version"])} · {e(d["instance_type"])} · {scale}</span></header>'
            f'<dl class="figures">{dl}</dl><div class="charts">{charts}</div>'
            f'<div class="columns"><div>{rollout_block(d.get("rollout"))}</div>'
            f'<div>{replicas_table(d["replicas"])}</div></div></article>')


def batch_section(s: dict) -> str:
    jobs = s["batch"]["jobs"]
    if not s["batch"]["endpoints"] and not jobs:
        return '<section id="batch"><h2>Batch jobs</h2><p class="muted">no batch endpoints</p></section>'
    rows = "".join(
        f'<tr data-job="{e(j["id"])}"><td class="mono">{e(j["id"])}</td>'
        f'<td>{e(j["endpoint_name"])} / {e(j["deployment_name"])}</td>'
        f'<td><span class="{_state_class(j["status"])}">{e(j["status"])}</span></td>'
        f'<td><progress max="1" value="{e(j["progress"])}"></progress> {fmt_pct(j["progress"])} '
        f'<span class="muted">({e(j["items"].get("succeeded", 0))} ok, {e(j["items"].get("failed", 0))} failed '
        f'of {e(j["items"].get("total", 0))})</span></td><td class="num">{fmt_age(j.get("elapsed_s"))}</td>'
        f'<td>{e(j.get("error") or "")}</td></tr>' for j in jobs)
    names = ", ".join(b["name"] for b in s["batch"]["endpoints"])
    return (f'<section id="batch"><h2>Batch jobs</h2><p class="muted">batch endpoints: {e(names) or "none"}</p>'
            '<table class="jobs"><thead><tr><th>Job</th><th>Endpoint / deployment</th><th>Status</th>'
            '<th>Progress</th><th>Duration</th><th>Error</th></tr></thead>'
            f'<tbody>{rows or "<tr><td colspan=6 class=muted>no jobs yet</td></tr>"}</tbody></table></section>')


def sections(s: dict) -> str:
    """Everything that refreshes: the page's <main> content."""
    deps = "".join(deployment_card(d) for d in s["deployments"]) or '<p class="muted">no online deployments</p>'
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["generated_at"]))
    version = s["gateway"].get("routing_table_version")
    routing = f" · routing table v{e(version)}" if version is not None else ""
    return (f'<p class="generated" id="generated">as of {e(generated)}'
            f'{routing}'
            f' · figures over the last {e(fmt_num(s["gateway"]["figures_window_s"]))} s</p>'
            f'{summary(s)}{endpoints_table(s)}<section id="deployments"><h2>Deployments</h2>{deps}</section>'
            f'{batch_section(s)}')


def page(s: dict, *, refresh_ms: int, json_url: str) -> str:
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>scoregate status</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="{STATIC}/status.css">'
            f'<link rel="icon" href="{STATIC}/favicon.svg" type="image/svg+xml">'
            '<noscript><meta http-equiv="refresh" content="10"></noscript></head>'
            f'<body data-refresh-ms="{refresh_ms}" data-json-url="{e(json_url)}">'
            '<header class="top"><h1>scoregate</h1><span id="live" class="live">live</span>'
            '<form method="post" action="/logout"><button type="submit">Log out</button></form></header>'
            f'<main id="sections">{sections(s)}</main>'
            f'<script src="{STATIC}/linechart.js"></script><script src="{STATIC}/status.js"></script>'
            '</body></html>')


def login_page(message: str = "") -> str:
    note = f'<p class="reason">{e(message)}</p>' if message else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>scoregate status — sign in</title>'
            f'<link rel="stylesheet" href="{STATIC}/status.css"></head><body class="login"><main>'
            '<h1>scoregate</h1><p>The status page needs the gateway\'s admin token '
            '(<code>admin_token</code> in <code>STATE_DIR/gateway.json</code>).</p>'
            f'{note}<form method="post" action="/login"><label>Admin token '
            '<input type="password" name="token" autocomplete="off" autofocus required></label>'
            '<button type="submit">Sign in</button></form></main></body></html>')
