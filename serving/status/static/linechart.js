/* A small SVG line chart for the scoregate status page (no dependencies, no build).
 *
 * LineChart.draw(svg, {t, series, unit, guides, minSpan})
 *   t       x values: seconds relative to now (<= 0), one per point
 *   series  [{label, values}] — values may hold null (a gap in the line)
 *   unit    text after the numbers in the legend ("ms", "%", "")
 *   guides  [{value, label}] — dashed horizontal lines (e.g. a utilization target)
 *   minSpan the x axis shows at least this many seconds (default 30)
 * The chart fits the SVG's rendered size; each series is one or more <polyline
 * class="line sN" data-points="K">, the newest point a <circle>. Hovering shows the
 * values at the nearest point.
 */
(function (global) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var M = { left: 44, right: 10, top: 16, bottom: 18 };

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) node.setAttribute(k, attrs[k]); }
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var exp = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * exp >= value) return steps[i] * exp; }
    return 10 * exp;
  }

  function fmt(value) {
    if (value === null || value === undefined || isNaN(value)) return "–";
    var a = Math.abs(value);
    if (a >= 1000) return (value / 1000).toFixed(a >= 10000 ? 0 : 1) + "k";
    if (a >= 100 || value === Math.round(value)) return String(Math.round(value));
    if (a >= 10) return value.toFixed(1);
    return value.toFixed(2);
  }

  function segments(t, values, x, y) {
    var out = [], current = [];
    for (var i = 0; i < t.length; i++) {
      var v = values[i];
      if (v === null || v === undefined || isNaN(v)) {
        if (current.length) out.push(current);
        current = [];
      } else {
        current.push([x(t[i]), y(v)]);
      }
    }
    if (current.length) out.push(current);
    return out;
  }

  function draw(svg, opts) {
    var t = opts.t || [], series = opts.series || [], unit = opts.unit || "", guides = opts.guides || [];
    var box = svg.getBoundingClientRect();
    var W = Math.max(160, Math.round(box.width || 300)), H = Math.max(80, Math.round(box.height || 120));
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var lo = Math.min(-(opts.minSpan || 30), t.length ? t[0] : 0), hi = 0;
    var top = 0;
    series.forEach(function (s) { (s.values || []).forEach(function (v) { if (v > top) top = v; }); });
    guides.forEach(function (g) { if (g.value > top) top = g.value; });
    top = niceMax(top * 1.05);
    var pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    var x = function (v) { return M.left + (v - lo) / (hi - lo) * pw; };
    var y = function (v) { return M.top + ph - Math.min(v, top) / top * ph; };

    var axes = el("g", { "class": "axes" }, svg);
    for (var i = 0; i <= 4; i++) {
      var value = top * i / 4, py = y(value).toFixed(1);
      el("line", { x1: M.left, x2: W - M.right, y1: py, y2: py, "class": i ? "grid" : "axis" }, axes);
      el("text", { x: M.left - 4, y: py, dy: "0.32em", "text-anchor": "end", "class": "tick" }, axes, fmt(value));
    }
    [lo, lo / 2, 0].forEach(function (v) {
      el("text", { x: x(v).toFixed(1), y: H - 4, "text-anchor": v === 0 ? "end" : (v === lo ? "start" : "middle"),
        "class": "tick" }, axes, v === 0 ? "now" : Math.round(v) + "s");
    });
    guides.forEach(function (g) {
      var gy = y(g.value).toFixed(1);
      el("line", { x1: M.left, x2: W - M.right, y1: gy, y2: gy, "class": "guide" }, axes);
      el("text", { x: W - M.right, y: gy, dy: "-0.3em", "text-anchor": "end", "class": "tick" }, axes, g.label);
    });

    var legend = el("text", { x: M.left, y: 11, "class": "legend" }, svg);
    series.forEach(function (s, n) {
      var cls = "s" + (s.color !== undefined ? s.color : n);
      var values = s.values || [], count = 0;
      segments(t, values, x, y).forEach(function (points) {
        count += points.length;
        el("polyline", { "class": "line " + cls, "data-points": points.length,
          points: points.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" ") }, svg);
      });
      var last = null;
      for (var k = values.length - 1; k >= 0; k--) { if (values[k] !== null && values[k] !== undefined) { last = k; break; } }
      if (last !== null) el("circle", { cx: x(t[last]).toFixed(1), cy: y(values[last]).toFixed(1), r: 2.5, "class": "dot " + cls }, svg);
      el("tspan", { "class": "key " + cls }, legend, (n ? "   " : "") + "■ ");
      el("tspan", {}, legend, s.label + " " + (last !== null ? fmt(values[last]) : "–") + unit);
      svg.setAttribute("data-points-" + n, String(count));
    });
    if (!t.length) el("text", { x: M.left + pw / 2, y: M.top + ph / 2, "text-anchor": "middle", "class": "tick" }, svg, "collecting…");
    hover(svg, t, series, x, unit, H);
  }

  function hover(svg, t, series, x, unit, H) {
    if (!t.length) return;
    var cursor = el("line", { y1: M.top, y2: H - M.bottom, "class": "cursor", visibility: "hidden" }, svg);
    var label = el("text", { y: M.top + 10, "class": "hover", visibility: "hidden" }, svg);
    var overlay = el("rect", { x: M.left, y: M.top, width: Math.max(0, x(0) - M.left),
      height: Math.max(0, H - M.top - M.bottom), "class": "overlay" }, svg);
    overlay.addEventListener("mousemove", function (ev) {
      var rect = svg.getBoundingClientRect(), scale = svg.viewBox.baseVal.width / rect.width;
      var px = (ev.clientX - rect.left) * scale, best = 0;
      for (var i = 1; i < t.length; i++) { if (Math.abs(x(t[i]) - px) < Math.abs(x(t[best]) - px)) best = i; }
      var cx = x(t[best]).toFixed(1);
      cursor.setAttribute("x1", cx); cursor.setAttribute("x2", cx); cursor.setAttribute("visibility", "visible");
      label.textContent = Math.round(t[best]) + "s: " + series.map(function (s) {
        return s.label + " " + fmt((s.values || [])[best]) + unit; }).join(", ");
      label.setAttribute("x", cx);
      label.setAttribute("text-anchor", px > svg.viewBox.baseVal.width / 2 ? "end" : "start");
      label.setAttribute("visibility", "visible");
    });
    overlay.addEventListener("mouseleave", function () {
      cursor.setAttribute("visibility", "hidden"); label.setAttribute("visibility", "hidden");
    });
  }

  global.LineChart = { draw: draw, niceMax: niceMax, format: fmt };
})(window);
