"""The HTML page of ``vmxlab report`` (CSS, JS and the SVG it draws all inline: the page works offline).

Kept in a Python module rather than a data file so it installs with the package without package-data
rules.  ``%%TITLE%%`` and ``%%DATA%%`` (the JSON from :func:`vmxlab.trace.report.summarize`) are
substituted by :func:`vmxlab.trace.report.render_html`.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%%TITLE%% - vmxlab timeline</title>
<style>
  body { font: 14px/1.4 "DejaVu Sans", system-ui, sans-serif; margin: 16px 22px; color: #1d2430; background: #fbfbfd; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 18px 0 6px; }
  .sub { color: #555; margin: 0 0 10px; max-width: 1100px; }
  .toolbar button { font: inherit; margin-right: 4px; padding: 2px 10px; }
  #scroller { overflow-x: auto; border: 1px solid #ccd; background: #fff; }
  svg text { font: 12px "DejaVu Sans", sans-serif; fill: #333; }
  .group-title { font-weight: bold; font-size: 12.5px; }
  .group-bg.root { fill: #f3eefb; } .group-bg.non-root { fill: #edf6ee; } .group-bg.none { fill: #eef2f8; }
  .lane-line { stroke: #dde; }
  .seg.root { fill: #8e5cc7; } .seg.non-root { fill: #3d9a4f; } .seg.none { fill: #4a74b5; }
  .marker { cursor: pointer; stroke: #222; stroke-width: 0.8; }
  .marker:hover { stroke-width: 2.2; }
  .marker.selected { stroke: #000; stroke-width: 2.5; }
  .kind-vm-exit { fill: #d6336c; } .kind-exception { fill: #f08c00; }
  .kind-vm-entry-failure { fill: #c92a2a; } .kind-page-fault { fill: #e8590c; }
  .axis { stroke: #999; } .tick { fill: #666; }
  .ring-1-note { fill: #8e5cc7; font-style: italic; }
  #layout { display: grid; grid-template-columns: minmax(0, 1fr) 400px; gap: 18px; align-items: start; }
  #details { border: 1px solid #ccd; background: #fff; padding: 8px 12px; overflow-wrap: anywhere; }
  #details h3 { margin: 2px 0 6px; font-size: 15px; }
  table { border-collapse: collapse; }
  td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .bar { display: inline-block; height: 10px; background: #d6336c; vertical-align: middle; }
  .legend span { margin-right: 14px; }
  .sw { display: inline-block; width: 12px; height: 12px; vertical-align: -1px; margin-right: 4px; }
  code { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; }
</style>
</head>
<body>
<h1>%%TITLE%%: rings &times; VMX mode</h1>
<p class="sub">Time runs across (guest instructions). Down the page, each VMX mode has <b>its own four rings</b>:
the guest in VMX non-root operation keeps rings 0&ndash;3, and the VMM runs in VMX root operation at its own ring 0.
"Ring&nbsp;&minus;1" is not a fifth ring: it is this second axis. Click a marker (VM exit, exception) for its details.
The Python VMM retires no guest instructions, so each stay in root operation is drawn at the instruction count of
its VM exit, with a minimum width.</p>
<div class="legend" id="legend">
  <span><i class="sw" style="background:#3d9a4f"></i>running in VMX non-root (guest)</span>
  <span><i class="sw" style="background:#8e5cc7"></i>VMX root (VMM)</span>
  <span><i class="sw" style="background:#4a74b5"></i>no VMX</span>
  <span><i class="sw" style="background:#d6336c"></i>VM exit</span>
  <span><i class="sw" style="background:#f08c00;border-radius:6px"></i>exception / interrupt</span>
  <span><i class="sw" style="background:#c92a2a"></i>VM-entry failure</span>
</div>
<div class="toolbar"><button id="zoom-in">zoom +</button><button id="zoom-out">zoom &minus;</button>
  <button id="zoom-reset">reset</button> <span id="summary"></span></div>
<div id="layout">
  <div>
    <div id="scroller"><svg id="timeline" xmlns="http://www.w3.org/2000/svg"></svg></div>
    <h2>VM exits by reason</h2>
    <table id="exit-stats"><thead><tr><th>reason</th><th>name</th><th>count</th><th></th></tr></thead><tbody></tbody></table>
    <h2>Exceptions and interrupts delivered</h2>
    <table id="exception-stats"><thead><tr><th>event</th><th>count</th></tr></thead><tbody></tbody></table>
  </div>
  <div id="details"><h3>Details</h3><p>Click a marker on the timeline.</p></div>
</div>
<script type="application/json" id="data">%%DATA%%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
const MODE_NAMES = {"root": "VMX root operation: the VMM (Python)", "non-root": "VMX non-root operation: the guest",
                    "none": "no VMX: bare metal"};
const LANE_H = 22, GAP = 26, LEFT = 230, TOP = 34, RIGHT = 24;
let zoom = 1;
function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function hex(v) { return (typeof v === "number") ? "0x" + v.toString(16) : String(v); }
function laneY(mode, cpl) {
  const g = D.modes.indexOf(mode);
  return TOP + g * (4 * LANE_H + GAP) + cpl * LANE_H;
}
function draw() {
  const svg = document.getElementById("timeline");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = Math.max(700, (document.getElementById("scroller").clientWidth - 4) * zoom);
  const height = TOP + D.modes.length * (4 * LANE_H + GAP) + 10;
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const W = width - LEFT - RIGHT;
  const x = t => LEFT + (t / D.end) * W;
  D.modes.forEach((mode, g) => {
    const y0 = TOP + g * (4 * LANE_H + GAP);
    el("rect", {x: 0, y: y0 - 16, width: width, height: 4 * LANE_H + 18, "class": "group-bg " + mode}, svg);
    el("text", {x: 6, y: y0 - 3, "class": "group-title"}, svg, MODE_NAMES[mode] || mode);
    for (let r = 0; r < 4; r++) {
      const y = y0 + r * LANE_H;
      el("line", {x1: LEFT, x2: width - RIGHT, y1: y + LANE_H / 2, y2: y + LANE_H / 2, "class": "lane-line"}, svg);
      el("text", {x: LEFT - 58, y: y + LANE_H / 2 + 4, "class": "lane-label", "data-mode": mode, "data-ring": r},
         svg, "ring " + r);
    }
  });
  if (D.modes.includes("root") && D.modes.includes("non-root")) {
    const yr = laneY("non-root", 0) - 16;
    el("text", {x: 6, y: yr + 30, "class": "ring-1-note"}, svg, "\"ring -1\" = this axis,");
    el("text", {x: 6, y: yr + 46, "class": "ring-1-note"}, svg, "not a ring");
  }
  el("line", {x1: LEFT, x2: width - RIGHT, y1: 14, y2: 14, "class": "axis"}, svg);
  for (let k = 0; k <= 5; k++) {
    const t = Math.round(D.end * k / 5);
    el("text", {x: x(t) - (k === 5 ? 60 : 0), y: 11, "class": "tick"}, svg, t.toLocaleString() + (k === 5 ? " instr" : ""));
    el("line", {x1: x(t), x2: x(t), y1: 14, y2: 20, "class": "axis"}, svg);
  }
  for (const s of D.segments) {
    if (!D.modes.includes(s.mode)) continue;
    const w = Math.max(s.mode === "root" ? 3 : 1.5, x(s.end) - x(s.start));
    el("rect", {x: x(s.start), y: laneY(s.mode, s.cpl) + 6, width: w, height: LANE_H - 12,
                "class": "seg " + s.mode}, svg);
  }
  const taken = new Map();  // markers at the same instruction count (an exit the VMM completed retires no
                            // instruction, so the next exit has the same count): spread them sideways
  D.markers.forEach((m, n) => {
    const key = m.mode + ":" + m.cpl + ":" + Math.round(x(m.t));
    const k = taken.get(key) || 0; taken.set(key, k + 1);
    const cx = x(m.t) + k * 11, cy = laneY(m.mode, m.cpl) + LANE_H / 2;
    let shape;
    if (m.kind === "vm-exit") {
      shape = el("polygon", {points: `${cx - 5},${cy - 8} ${cx + 5},${cy - 8} ${cx},${cy + 3}`}, svg);
    } else if (m.kind === "exception") {
      shape = el("circle", {cx: cx, cy: cy + 4, r: 4}, svg);
    } else {
      shape = el("rect", {x: cx - 5, y: cy - 5, width: 10, height: 10}, svg);
    }
    shape.setAttribute("class", "marker kind-" + m.kind);
    shape.setAttribute("data-n", n);
    el("title", {}, shape, m.label + " @ " + m.t);
    shape.addEventListener("click", () => show(n, shape));
  });
}
function row(tbody, k, v) {
  const tr = document.createElement("tr");
  const a = document.createElement("td"); a.textContent = k;
  const b = document.createElement("td"); b.textContent = v;
  tr.appendChild(a); tr.appendChild(b); tbody.appendChild(tr);
}
function section(box, title, obj) {
  const h = document.createElement("h4"); h.textContent = title; h.style.margin = "8px 0 2px"; box.appendChild(h);
  const t = document.createElement("table"); const tb = document.createElement("tbody"); t.appendChild(tb);
  for (const k in obj) {
    const v = obj[k];
    row(tb, k, (v !== null && typeof v === "object") ? JSON.stringify(v) : (typeof v === "number" ? hex(v) : String(v)));
  }
  box.appendChild(t);
}
function show(n, shape) {
  document.querySelectorAll(".marker.selected").forEach(e => e.classList.remove("selected"));
  if (shape) shape.classList.add("selected");
  const m = D.markers[n], ev = m.ev;
  const box = document.getElementById("details");
  box.innerHTML = "";
  const h = document.createElement("h3"); h.id = "details-title"; h.textContent = m.label; box.appendChild(h);
  const where = {"instruction count": ev.icount, "EIP": ev.eip, "CS": ev.cs, "CPL": ev.cpl, "VMX mode": ev.vmx};
  if (ev.kind === "vm-exit") { delete where.EIP; delete where.CS; where["CPL"] = ev.cpl + " (the guest's)"; }
  if (ev.kind === "vm-exit") {
    section(box, "VM exit", {"reason": ev.reason + " " + ev.reason_name, "qualification": ev.qualification});
    if (ev.fields) section(box, "qualification, by field (SDM Vol.3C 28.2.1)", ev.fields);
    if (ev.guest) section(box, "guest state", ev.guest);
    if (ev.text) { const p = document.createElement("p"); p.textContent = ev.text; box.appendChild(p); }
  } else if (ev.kind === "exception") {
    section(box, "event delivery", {"vector": ev.vector, "name": ev.name, "type": ev.event,
      "error code": ev.error_code === null ? "none" : ev.error_code,
      "CPL": ev.from_cpl + " -> " + (ev.to_cpl === null || ev.to_cpl === undefined ? "(delivery faulted)" : ev.to_cpl),
      "return EIP": ev.return_eip});
    if (ev.error_fields) section(box, "error code, by field", ev.error_fields);
  } else {
    const rest = {}; for (const k in ev) if (!["kind", "icount", "eip", "cs", "cpl", "vmx"].includes(k)) rest[k] = ev[k];
    section(box, ev.kind, rest);
  }
  section(box, "where", where);
}
function stats() {
  const tb = document.querySelector("#exit-stats tbody");
  const max = Math.max(1, ...D.exit_stats.map(s => s.count));
  for (const s of D.exit_stats) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td class="num">${s.reason}</td><td>${s.name}</td><td class="num">${s.count}</td>` +
                   `<td><span class="bar" style="width:${Math.round(200 * s.count / max)}px"></span></td>`;
    tb.appendChild(tr);
  }
  if (!D.exit_stats.length) tb.innerHTML = "<tr><td colspan=4>no VM exits in this trace (no VMX, or exits not traced)</td></tr>";
  const te = document.querySelector("#exception-stats tbody");
  for (const s of D.exception_stats) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${s.name}</td><td class="num">${s.count}</td>`;
    te.appendChild(tr);
  }
  if (!D.exception_stats.length) te.innerHTML = "<tr><td colspan=2>none</td></tr>";
  const total = D.exit_stats.reduce((a, s) => a + s.count, 0);
  document.getElementById("summary").textContent = `${D.events} events, ${D.end.toLocaleString()} instructions, ` +
    `${total} VM exits` + (D.stop ? `, stopped: ${D.stop.reason}` : "") +
    (D.dropped_markers ? ` (${D.dropped_markers} markers beyond the first ${D.markers.length} not drawn)` : "");
}
document.getElementById("zoom-in").onclick = () => { zoom *= 2; draw(); };
document.getElementById("zoom-out").onclick = () => { zoom = Math.max(1, zoom / 2); draw(); };
document.getElementById("zoom-reset").onclick = () => { zoom = 1; draw(); };
window.addEventListener("resize", draw);
stats();
draw();
document.body.setAttribute("data-ready", "1");
</script>
</body>
</html>
"""
