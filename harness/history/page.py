"""The history of one target as one self-contained HTML page: no file or network fetched when it is viewed.

The numbers are embedded as JSON in the page; a small script of its own draws, per scenario, one SVG
chart per metric (:data:`harness.history.series.METRICS`) for the cell chosen in a list: every result
as a point with its interval, unstable points as a red cross, points of files that did not assess
stability hollow, the level at each commit joined by a line, and each detected step as a dashed line
with its change. The steps of every cell, the commits and the files are plain HTML tables, readable
without the script. A first, separate script records any script error or ``console.error`` in the
page's ``data-errors`` attribute, so that a headless browser can tell a page that broke.
"""

from __future__ import annotations

import html
import json
import statistics
from typing import Any

from harness.history.series import METRICS, Series, TargetHistory

_ERRORS_JS = """
(function () {
  var root = document.documentElement;
  function note(text) { root.setAttribute("data-errors", (root.getAttribute("data-errors") || "") + text + "\\n"); }
  window.addEventListener("error", function (e) { note("error: " + e.message); });
  var original = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
"""

_DRAW_JS = """
(function () {
  var data = JSON.parse(document.getElementById("history-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var W = 720, H = 280, L = 78, R = 16, T = 28, B = 72;
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function tip(node, text) { el("title", {}, node).textContent = text; }
  function fmt(unit, v, digits) {
    if (v === null || v === undefined) return "";
    digits = digits || 4;
    if (unit === "s") {
      var scales = [[1, "s"], [1e-3, "ms"], [1e-6, "us"], [1e-9, "ns"]];
      for (var i = 0; i < scales.length; i++) {
        if (Math.abs(v) >= scales[i][0] || i === 3) return (v / scales[i][0]).toPrecision(digits) + " " + scales[i][1];
      }
    }
    if (unit === "bytes") {
      var names = ["B", "KiB", "MiB", "GiB", "TiB"], n = 0;
      while (Math.abs(v) >= 1024 && n < names.length - 1) { v /= 1024; n++; }
      return v.toPrecision(digits) + " " + names[n];
    }
    if (unit === "") return (v * 100).toPrecision(digits - 1) + "%";
    return String(Math.round(v * 100) / 100);
  }
  function chart(holder, metric, series) {
    var box = {"class": "chart", "data-metric": metric.key, viewBox: "0 0 " + W + " " + H, width: W, height: H};
    var svg = el("svg", box, holder);
    el("text", {x: L, y: 16, "class": "title"}, svg).textContent = metric.title;
    var n = data.commits.length;
    var x = function (pos) { return n === 1 ? (L + W - R) / 2 : L + (W - L - R) * pos / (n - 1); };
    if (!series || series.points.length === 0) {
      el("text", {x: L, y: H / 2, "class": "empty"}, svg).textContent = "not measured for this cell";
      svg.setAttribute("data-points", "0");
      return;
    }
    var lo = Infinity, hi = -Infinity;
    series.points.forEach(function (p) {
      [p.v, p.lo, p.hi].forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    });
    if (hi === lo) { var pad = Math.abs(hi) * 0.05 || 1; lo -= pad; hi += pad; }
    var span = hi - lo; lo -= span * 0.08; hi += span * 0.08;
    var y = function (v) { return T + (H - T - B) * (hi - v) / (hi - lo); };
    el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis"}, svg);
    el("line", {x1: L, y1: T, x2: L, y2: H - B, "class": "axis"}, svg);
    var digits = 4;  // more digits where a narrow range would print five equal ticks
    while (digits < 9 && fmt(metric.unit, lo, digits) === fmt(metric.unit, lo + (hi - lo) / 4, digits)) digits++;
    for (var t = 0; t <= 4; t++) {
      var v = lo + (hi - lo) * t / 4;
      el("line", {x1: L, y1: y(v), x2: W - R, y2: y(v), "class": "grid"}, svg);
      el("text", {x: L - 6, y: y(v) + 4, "class": "ytick"}, svg).textContent = fmt(metric.unit, v, digits);
    }
    var every = Math.max(1, Math.ceil(n / 24));
    data.commits.forEach(function (c, i) {
      if (i % every !== 0 && i !== n - 1) return;
      var turn = "rotate(40 " + x(i) + " " + (H - B + 12) + ")";
      var label = el("text", {x: x(i), y: H - B + 12, "class": "xtick", transform: turn}, svg);
      label.textContent = c.label;
    });
    var levels = series.levels.map(function (lv) { return x(lv[0]) + "," + y(lv[1]); });
    if (levels.length > 1) el("polyline", {points: levels.join(" "), "class": "level"}, svg);
    series.steps.forEach(function (s) {
      var sx = (x(s.before) + x(s.after)) / 2;
      var kind = s.confirmed ? "step" : "step unconfirmed";
      var mark = el("line", {x1: sx, y1: T, x2: sx, y2: H - B, "class": kind}, svg);
      var change = ((s.ratio - 1) * 100).toFixed(1);
      var text = el("text", {x: sx + 3, y: T + 10, "class": "steplabel"}, svg);
      text.textContent = (s.ratio >= 1 ? "+" : "") + change + "%" + (s.confirmed ? "" : " ?");
      var what = s.confirmed ? "step" : "unconfirmed step (too few later commits)";
      tip(mark, what + ": " + fmt(metric.unit, s.level_before) + " -> " + fmt(metric.unit, s.level_after));
    });
    series.points.forEach(function (p) {
      var px = x(p.x), py = y(p.v);
      var text = data.commits[p.x].label + ": " + fmt(metric.unit, p.v);
      if (p.lo !== null) text += " [" + fmt(metric.unit, p.lo) + ", " + fmt(metric.unit, p.hi) + "]";
      text += "\\n" + p.file + (p.u ? "\\n" + p.u : "") + (p.a ? "" : "\\nstability not assessed (older file)");
      if (p.lo !== null) el("line", {x1: px, y1: y(p.lo), x2: px, y2: y(p.hi), "class": "bar"}, svg);
      var mark;
      if (p.u) {
        var cross = "M" + (px - 5) + "," + (py - 5) + "L" + (px + 5) + "," + (py + 5);
        cross += "M" + (px - 5) + "," + (py + 5) + "L" + (px + 5) + "," + (py - 5);
        mark = el("path", {d: cross, "class": "point unstable"}, svg);
      } else {
        mark = el("circle", {cx: px, cy: py, r: 4, "class": p.a ? "point" : "point unassessed"}, svg);
      }
      tip(mark, text);
    });
    svg.setAttribute("data-points", String(series.points.length));
  }
  function show(section, scenario, index) {
    var holder = section.querySelector(".charts");
    while (holder.firstChild) holder.removeChild(holder.firstChild);
    var cell = scenario.cells[index];
    data.metrics.forEach(function (metric) { chart(holder, metric, cell.series[metric.key]); });
  }
  data.scenarios.forEach(function (scenario, s) {
    var section = document.getElementById("scenario-" + s);
    var pick = section.querySelector("select");
    scenario.cells.forEach(function (cell, i) {
      var option = document.createElement("option");
      option.value = String(i);
      var steps = cell.steps ? "  (" + cell.steps + " step" + (cell.steps > 1 ? "s" : "") + ")" : "";
      option.textContent = cell.cell + steps;
      pick.appendChild(option);
    });
    pick.value = String(scenario.first);
    pick.addEventListener("change", function () { show(section, scenario, Number(pick.value)); });
    show(section, scenario, scenario.first);
  });
  document.documentElement.setAttribute("data-drawn", "yes");
})();
"""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1500px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
svg.chart { border: 1px solid #ddd; background: #fff; }
svg .title { font-weight: 600; font-size: 13px; }
svg .axis { stroke: #444; } svg .grid { stroke: #eee; }
svg .ytick { font-size: 10px; text-anchor: end; } svg .xtick { font-size: 10px; }
svg .level { fill: none; stroke: #9ab; stroke-width: 1.5; }
svg .bar { stroke: #268; stroke-width: 1.5; }
svg .point { fill: #268; stroke: #268; } svg .point.unassessed { fill: #fff; stroke-width: 1.5; }
svg .point.unstable { stroke: #c22; stroke-width: 2.5; fill: none; }
svg .step { stroke: #e80; stroke-width: 2; stroke-dasharray: 6 4; } svg .step.unconfirmed { stroke: #aaa; }
svg .steplabel { font-size: 11px; fill: #a50; } svg .empty { fill: #888; }
select { font: inherit; margin: 0.3em 0 0.6em; max-width: 100%; }
"""


def _series_json(series: Series) -> dict[str, Any]:
    levels = [
        [position, statistics.median(p.value for p in series.points if p.position == position and p.unstable is None)]
        for position in series.level_positions
    ]
    return {
        "points": [
            {"x": p.position, "v": p.value, "lo": p.low, "hi": p.high, "u": p.unstable, "a": p.assessed, "file": p.file}
            for p in series.points
        ],
        "levels": levels,
        "steps": [
            {
                "before": series.level_positions[s.before],
                "after": series.level_positions[s.after],
                "level_before": s.level_before,
                "level_after": s.level_after,
                "ratio": s.ratio,
                "confirmed": s.confirmed,
            }
            for s in series.steps
        ],
    }


def page_data(history: TargetHistory) -> dict[str, Any]:
    """What the page's script draws, as JSON-ready data."""
    scenarios = []
    for scenario in history.scenarios():
        cells: dict[str, dict[str, Any]] = {}
        for series in (s for s in history.series if s.scenario == scenario):
            entry = cells.setdefault(series.cell, {"cell": series.cell, "series": {}, "steps": 0})
            entry["series"][series.metric] = _series_json(series)
            entry["steps"] += sum(s.confirmed for s in series.steps)
        listed = list(cells.values())
        first = next((i for i, c in enumerate(listed) if c["steps"]), 0)
        scenarios.append({"name": scenario, "cells": listed, "first": first})
    return {
        "target": history.target,
        "commits": [{"label": c.label, "commit": c.commit} for c in history.commits],
        "metrics": [{"key": key, "title": title, "unit": unit} for key, title, unit in METRICS],
        "scenarios": scenarios,
    }


def _steps_table(history: TargetHistory) -> str:
    rows = []
    labels = [c.label for c in history.commits]
    units = {key: unit for key, _, unit in METRICS}
    for series in history.series:
        for step in series.steps:
            before, after = series.level_positions[step.before], series.level_positions[step.after]
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(text)}</td>"
                    for text in (
                        series.scenario,
                        series.cell,
                        series.metric,
                        f"{labels[before]} → {labels[after]}",
                        f"{step.ratio - 1:+.1%}" + ("" if units[series.metric] else " (of the fraction)"),
                        "yes" if step.confirmed else "not yet (too few later commits)",
                    )
                )
                + "</tr>"
            )
    if not rows:
        return "<p>No step: no metric of any cell changed level by more than 5% for two commits or more.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("scenario", "cell", "metric", "between", "change", "persists"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def render_page(history: TargetHistory, rendered_by: str) -> str:
    """The whole page; ``rendered_by`` names the attnbench commit that rendered it."""
    payload = json.dumps(page_data(history), allow_nan=False).replace("</", "<\\/")
    target = html.escape(history.target)
    sections = []
    for index, scenario in enumerate(history.scenarios()):
        sections.append(
            f'<section class="scenario" id="scenario-{index}" data-scenario="{html.escape(scenario)}">'
            f"<h2>{html.escape(scenario)}</h2><label>cell <select></select></label>"
            '<div class="charts"></div></section>'
        )
    commits = "".join(
        f"<tr><td>{c.position + 1}</td><td>{html.escape(c.label)}</td><td>{html.escape(c.commit or '')}</td></tr>"
        for c in history.commits
    )
    files = "".join(f"<li>{html.escape(name)}</li>" for name in history.files)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>attnbench history: {target}</title>
<style>{_STYLE}</style>
<script>{_ERRORS_JS}</script>
</head><body>
<h1>attnbench history: {target}</h1>
<p>{_count(len(history.files), "result file")} over {_count(len(history.commits), "commit")},
in git's order (oldest left).
Each point is one result file: decode latency with its median's 95% interval, bandwidth with the interval
of the latency it divides by, max batch with its probes' repeatability. A red cross is a cell that was
unstable or failed a self-check; a hollow point comes from a file that did not assess stability. A dashed
line is a step: a change of level that held for two commits or more (grey: seen at the last commit only).
Rendered by attnbench {html.escape(rendered_by)}.</p>
{"".join(sections)}
<h2>Steps</h2>
{_steps_table(history)}
<h2>Commits</h2>
<table><tr><th>#</th><th>commit</th><th>full hash</th></tr>{commits}</table>
<h2>Result files</h2>
<ul>{files}</ul>
<script type="application/json" id="history-data">{payload}</script>
<script>{_DRAW_JS}</script>
</body></html>
"""
