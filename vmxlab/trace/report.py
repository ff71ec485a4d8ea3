"""``vmxlab report``: a JSON Lines trace -> one self-contained HTML page with the two-axis timeline.

Why two axes: "ring -1" suggests a fifth ring below ring 0.  The page draws time
(instructions) across and, down the page, one group of four rings per VMX mode:
VMX root operation (the Python VMM; it runs at its own ring 0), VMX non-root
operation (the guest, with *its own* rings 0-3) and "no VMX" (bare-metal runs).
Each stretch of execution is a bar in the lane of its (mode, ring); VM exits,
VM-entry failures, exceptions and page faults are markers, and clicking one shows
the event: exit reason name and number, the qualification split into the SDM's
named fields, the guest state; exception vector, error code and from/to CPL.

Time in the VMM is not guest instructions (the Python VMM retires none), so a stay
in root operation is drawn at the instruction count of its exit with a minimum
width, and the page says so.

Everything (data, CSS, JS, SVG) is inline: no server, no CDN, works offline.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import UserError
from .report_assets import PAGE

MARKER_KINDS = ("vm-exit", "vm-entry-failure", "exception", "page-fault")
MAX_MARKERS = 4000
MAX_SEGMENTS = 20000
MODES = ("root", "non-root", "none")


def load_trace(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines trace; a bad file is a one-line user error naming the line."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    events = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError as e:
                    hint = " (a --trace-format chrome file? write the trace with the default jsonl format)" \
                        if n == 1 and line.startswith("{\"traceEvents\"") else ""
                    raise UserError(f"{path}:{n}: not a JSON Lines trace event ({e.msg}){hint}") from None
                if not isinstance(ev, dict) or "kind" not in ev:
                    raise UserError(f"{path}:{n}: not a vmxlab trace event (no \"kind\")")
                events.append(ev)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected JSON Lines from vmxlab run --trace)") from None
    if not events:
        raise UserError(f"{path}: the trace is empty")
    return events


def segments(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stretches of execution at one (VMX mode, ring): [start, end) in instructions.

    The mode and ring between two events are those of the later event's context, except across a VM
    exit (the guest stops at the exit: what follows, until the next VM entry, is the VMM in root
    operation) and a VM entry (from then on the guest, at the CPL the entry loaded)."""
    out: list[dict[str, Any]] = []
    cur: tuple[str, int] | None = None
    start = 0

    def close(at: int) -> None:
        if cur is not None:
            out.append({"mode": cur[0], "cpl": cur[1], "start": start, "end": max(at, start)})

    for ev in events:
        t = int(ev.get("icount", 0) or 0)
        kind = ev["kind"]
        mode = ev.get("vmx", "none")
        cpl = int(ev.get("cpl", 0) or 0)
        if kind == "vm-exit":
            want: tuple[str, int] = ("non-root", cpl)
        elif kind == "ring":
            want = (mode, int(ev.get("from", cpl)))
        else:
            want = (mode, cpl)
        if cur != want:
            close(t)
            cur, start = want, t
        if kind == "ring":
            close(t)
            cur, start = (mode, int(ev["to"])), t
        elif kind == "vm-exit":
            close(t)
            cur, start = ("root", 0), t
    if events:
        close(int(events[-1].get("icount", 0) or 0) + 1)
    merged: list[dict[str, Any]] = []
    for s in out:
        if merged and merged[-1]["mode"] == s["mode"] and merged[-1]["cpl"] == s["cpl"] \
                and merged[-1]["end"] >= s["start"]:
            merged[-1]["end"] = max(merged[-1]["end"], s["end"])
        else:
            merged.append(dict(s))
    return merged


def _label(ev: dict[str, Any]) -> str:
    kind = ev["kind"]
    if kind == "vm-exit":
        return f"VM exit {ev.get('reason')} {ev.get('reason_name', '')}"
    if kind == "vm-entry-failure":
        return "VM-entry failure"
    if kind == "exception":
        return f"{ev.get('name')} ({ev.get('event')})"
    if kind == "page-fault":
        return f"#PF CR2={int(ev.get('cr2', 0)):#x}"
    return kind


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    segs = segments(events)
    if len(segs) > MAX_SEGMENTS:  # keep the page light: every k-th stretch (the statistics stay exact)
        k = len(segs) // MAX_SEGMENTS + 1
        segs = segs[::k]
    markers = []
    for i, ev in enumerate(events):
        if ev["kind"] in MARKER_KINDS:
            lane_mode = ev.get("vmx", "none")
            lane_cpl = int(ev.get("from_cpl", ev.get("cpl", 0)) or 0) if ev["kind"] == "exception" \
                else int(ev.get("cpl", 0) or 0)
            if ev["kind"] == "vm-exit":
                lane_mode = "non-root"
            markers.append({"i": i, "kind": ev["kind"], "t": int(ev.get("icount", 0) or 0), "mode": lane_mode,
                            "cpl": lane_cpl, "label": _label(ev), "ev": ev})
    dropped = max(0, len(markers) - MAX_MARKERS)
    markers = markers[:MAX_MARKERS]
    exits = Counter((int(e.get("reason", -1)), str(e.get("reason_name", ""))) for e in events
                    if e["kind"] == "vm-exit")
    excs = Counter(str(e.get("name")) for e in events if e["kind"] == "exception")
    kinds = Counter(e["kind"] for e in events)
    modes = sorted({s["mode"] for s in segs} | {m["mode"] for m in markers}, key=MODES.index)
    if "non-root" in modes and "root" not in modes:
        modes.insert(0, "root")
    stop = next((e for e in reversed(events) if e["kind"] == "stop"), None)
    end = max([s["end"] for s in segs] + [m["t"] for m in markers] + [1])
    return {
        "segments": segs, "markers": markers, "dropped_markers": dropped, "modes": modes, "end": end,
        "exit_stats": [{"reason": r, "name": n, "count": c} for (r, n), c in exits.most_common()],
        "exception_stats": [{"name": n, "count": c} for n, c in excs.most_common()],
        "kinds": dict(kinds), "events": len(events),
        "stop": None if stop is None else {"reason": stop.get("reason"), "detail": stop.get("detail")},
    }


def render_html(events: list[dict[str, Any]], title: str = "vmxlab trace") -> tuple[str, dict[str, Any]]:
    data = summarize(events)
    blob = json.dumps(data, default=str, separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.replace("%%TITLE%%", html.escape(title)).replace("%%DATA%%", blob)
    return page, data


def write_html(events: list[dict[str, Any]], out: Path, title: str = "vmxlab trace") -> dict[str, int]:
    page, data = render_html(events, title)
    try:
        out.write_text(page)
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror})") from None
    return {"events": data["events"], "exits": sum(s["count"] for s in data["exit_stats"]),
            "exceptions": sum(s["count"] for s in data["exception_stats"])}


__all__ = ["load_trace", "segments", "summarize", "render_html", "write_html"]
