/* Keeps the scoregate status page live: polls the JSON URL, swaps in the server-rendered
 * sections and draws each deployment's charts from the snapshot's series (linechart.js).
 * One request at a time; paused while the tab is hidden; a 401 (the gateway restarted
 * with a new token) reloads the page, which then shows the sign-in form.
 */
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-json-url") || "/status.json?view=page";
  var every = parseInt(body.getAttribute("data-refresh-ms"), 10) || 2000;
  var main = document.getElementById("sections");
  var live = document.getElementById("live");
  var latest = null;

  function chartOptions(kind, d, windowS) {
    var s = (d.live && d.live.series) || {};
    var base = { t: s.t || [], minSpan: 30 };
    if (kind === "rps") {
      base.series = [{ label: "req/s", values: s.requests_per_s }];
    } else if (kind === "latency") {
      base.series = [{ label: "p50", values: s.p50_ms }, { label: "p99", values: s.p99_ms }];
      base.unit = " ms";
    } else if (kind === "utilization") {
      base.series = [{ label: "utilization", values: (s.utilization || []).map(function (v) { return v * 100; }) }];
      base.unit = "%";
      var target = d.autoscale && d.scale && d.scale.target_utilization_percentage;
      if (target) base.guides = [{ value: target, label: "target " + target + "%" }];
    } else {
      base.series = [{ label: "queued", values: s.queued }];
    }
    return base;
  }

  function drawCharts() {
    if (!latest || !window.LineChart) return;
    var byKey = {};
    latest.deployments.forEach(function (d) { byKey[d.key] = d; });
    var charts = main.querySelectorAll("svg.chart");
    for (var i = 0; i < charts.length; i++) {
      var d = byKey[charts[i].getAttribute("data-key")];
      if (d) window.LineChart.draw(charts[i], chartOptions(charts[i].getAttribute("data-chart"), d));
    }
    body.setAttribute("data-charts-drawn", String(charts.length));
  }

  function setLive(ok, text) {
    if (!live) return;
    live.textContent = text;
    live.className = ok ? "live" : "live stale";
  }

  function poll() {
    if (document.hidden) { setTimeout(poll, every); return; }
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        latest = data.snapshot;
        main.innerHTML = data.html;
        drawCharts();
        setLive(true, "live · " + new Date(latest.generated_at * 1000).toLocaleTimeString());
        body.setAttribute("data-updates", String((parseInt(body.getAttribute("data-updates"), 10) || 0) + 1));
      })
      .catch(function (err) { setLive(false, "not updating (" + err.message + ")"); })
      .then(function () { setTimeout(poll, every); });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 150);
  });
  poll();
})();
