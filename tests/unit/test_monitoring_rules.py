"""deploy/monitoring: the Prometheus alert rules and the Grafana dashboard.

- `promtool check rules` and `promtool test rules` (the rules' own unit tests) pass;
  every dashboard query parses too (fed to promtool as recording rules);
- without promtool, and always: a small PromQL reader checks each expression's syntax
  (brackets, label matchers, ranges, known functions) and extracts its metric names;
- every metric name used is one the gateway really exports (read from the registries
  of the real router, autoscaler, TLS and control-plane metrics), or one listed in
  PROPOSED (named in the rules before the code exports it);
- the dashboard has the structure Grafana imports and the panels the issue asks for.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "scoregate-alerts.yml"
RULE_TESTS = MONITORING / "scoregate-alerts.test.yml"
DASHBOARD = MONITORING / "scoregate-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

# Used by a rule or a dashboard panel before the code exports it (none at the moment).
PROPOSED: set[str] = set()
OBSERVABILITY_DOC = REPO / "docs" / "observability.md"

GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                '"$endpoint"': '".*"', '"$deployment"': '".*"'}

FUNCTIONS = {"rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "avg_over_time",
             "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "time", "vector", "abs",
             "clamp_min", "clamp_max", "absent", "predict_linear", "label_replace", "scalar", "round"}
AGGREGATIONS = {"sum", "avg", "max", "min", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group"}
BINARY_WORDS = {"and", "or", "unless", "bool"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(r'\s*(?:(?P<dur>\[\d+[smhdwy]\])|(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<str>"(?:[^"\\]|\\.)*")'
                   r'|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){},]))')


# -- a small PromQL reader ------------------------------------------------------------------
def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, expr.strip()
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read {text[pos:pos + 20]!r} in {expr!r}")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression; ValueError if it is malformed."""
    toks, names, depth, i = tokens(expr), set(), 0, 0
    while i < len(toks):
        kind, value = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and value in GROUPING:
            if following == "(":  # a label list: skip it
                close = next(j for j in range(i + 1, len(toks)) if toks[j][1] == ")")
                inside = toks[i + 2:close]
                if not all((k == "ident") if n % 2 == 0 else (v == ",") for n, (k, v) in enumerate(inside)):
                    raise ValueError(f"bad label list after {value} in {expr!r}")
                i = close + 1
                continue
        elif kind == "ident" and value in AGGREGATIONS and following in ("(", "by", "without"):
            pass
        elif kind == "ident" and following == "(":
            if value not in FUNCTIONS:
                raise ValueError(f"unknown function {value} in {expr!r}")
        elif kind == "ident" and value not in BINARY_WORDS:
            names.add(value)
        if value == "{":
            i = _matchers(toks, i + 1, expr)
            continue
        depth += {"(": 1, ")": -1}.get(value, 0)
        if depth < 0:
            raise ValueError(f"unbalanced ) in {expr!r}")
        i += 1
    if depth:
        raise ValueError(f"unbalanced ( in {expr!r}")
    return names


def _matchers(toks, i: int, expr: str) -> int:
    """Check `label op "value", ...}` from toks[i]; return the index after the }."""
    while True:
        if toks[i][1] == "}":
            return i + 1
        label, op, value = toks[i:i + 3]
        if label[0] != "ident" or op[1] not in ("=", "!=", "=~", "!~") or value[0] != "str":
            raise ValueError(f"bad label matcher in {expr!r}")
        i += 3
        if toks[i][1] == ",":
            i += 1
        elif toks[i][1] != "}":
            raise ValueError(f"expected , or }} in {expr!r}")


def test_the_promql_reader_finds_names_and_refuses_nonsense():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"1|2", y!="-"}[5m]))) / on (le) b'
            ' > 0.1 and c{}')
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    for bad in ("rate(a[5m]", "a{x=1}", "frobnicate(a)", "sum by (le a)", "a{x=\"1\" y=\"2\"}", "a $ b"):
        with pytest.raises(ValueError):
            metric_names(bad)


# -- what the gateway exports ---------------------------------------------------------------
def exported_names() -> set[str]:
    """Sample names of every metric family the gateway registers on /metrics."""
    from router import RouterApp, RouterSettings, RoutingTableHolder
    from serving.controller.autoscaling import Autoscaling
    from tls import TLSMetrics

    router = RouterApp(RouterSettings(), RoutingTableHolder())
    registry = router.recorder.registry
    Autoscaling(lambda _e, _d: None, registry=registry)
    TLSMetrics(registry)
    try:
        from serving.metrics import ControlPlaneMetrics
    except ImportError:  # not there yet: its names then fail the check below
        pass
    else:
        ControlPlaneMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("_sum", "_count", ""), "info": ("_info",)}
    return {f.name + s for f in registry.collect() for s in suffixes.get(f.type, ("",))}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana variables filled in) for every target."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


# -- the alert rules --------------------------------------------------------------------------
@needs_promtool
def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    done = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                          timeout=60, cwd=MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_well_formed_and_cover_the_issue():
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    alerts = {}
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Scoregate[A-Z][A-Za-z]+", rule["alert"]) and rule["alert"] not in alerts
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"])
        metric_names(rule["expr"])  # parses
        alerts[rule["alert"]] = rule["expr"]
    assert 'status=~"5..|424"' in alerts["ScoregateHighErrorRatio"]
    assert 'status=~"429|503"' in alerts["ScoregateRequestsRefused"]
    assert "scoregate_deployment_queued_requests" in alerts["ScoregateQueueSaturated"]
    assert "scoregate_replica_restarts_total" in alerts["ScoregateReplicaRestarts"]
    assert "scoregate_rollout_failed" in alerts["ScoregateRolloutFailed"]
    assert "14 * 86400" in alerts["ScoregateCertificateExpiresSoon"]
    test_doc = yaml.safe_load(RULE_TESTS.read_text())
    tested = {case["alertname"] for t in test_doc["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(alerts), "every alert has a promtool test in which it fires"


def test_every_metric_in_the_rules_and_the_dashboard_is_exported():
    exported = exported_names()
    assert "scoregate_requests_total" in exported and "scoregate_request_duration_seconds_bucket" in exported
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule["alert"])
    for title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(title)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported | PROPOSED}
    assert not unknown, f"metrics the gateway does not export: {unknown}"
    assert not PROPOSED & exported, "a PROPOSED metric is exported now: take it off the list"


def test_the_metrics_table_of_the_docs_lists_what_the_rules_and_the_dashboard_use():
    """docs/observability.md's table is "the ones the dashboard and the alerts use": each of
    those is in it, each name in it is exported, and none is called missing."""
    doc = OBSERVABILITY_DOC.read_text()
    # the first table; "Also exported" lists metrics of other processes too (workers, a cluster)
    table = set(re.findall(r"^\| `(scoregate_\w+)`", doc.partition("Also exported")[0], re.M))
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    used |= {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families - table == set(), "used by the rules or the dashboard, not in the docs' table"
    exported = exported_names()
    assert {name for name in table if not {name, name + "_bucket"} & exported} == set()
    assert "does not export yet" not in doc


# -- the dashboard ------------------------------------------------------------------------------
def test_dashboard_structure():
    board = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "templating", "schemaVersion", "time"):
        assert key in board
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "endpoint", "deployment"} <= variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat") and panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or var.startswith("__"), f"unknown variable ${var}"
    # No two panels overlap.
    cells = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_dashboard_has_the_panels_the_issue_asks_for():
    queries = " ".join(expr for _title, expr in dashboard_queries())
    for needle in ("rate(scoregate_requests_total", 'status=~"5..|424"', 'status=~"429|503"',
                   "histogram_quantile(0.5, sum by (le, endpoint, deployment) (rate(scoregate_request_duration",
                   "histogram_quantile(0.99, sum by (le, endpoint, deployment) (rate(scoregate_request_duration",
                   "scoregate_deployment_queued_requests", "scoregate_deployment_utilization_ratio",
                   "scoregate_deployment_ready_replicas", "scoregate_tls_certificate_expiry_timestamp_seconds"):
        assert needle in queries, needle
    for _title, expr in dashboard_queries():
        metric_names(expr)


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path):
    records = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_t, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
