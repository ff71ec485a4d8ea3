"""Where trace events go: JSON Lines, the Chrome trace-event format, or the live terminal view.

Chrome/Perfetto layout (https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU):
one process per VMX mode ("VMX root (VMM)", "VMX non-root (guest)", "no VMX"),
one thread per ring, so the viewer draws non-root's own rings 0-3 as separate
tracks under a separate heading from root: "ring -1" shows up as another axis,
not a fifth ring.  Time is the instruction count (1 instruction = 1 µs in the
viewer's units).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

MODE_PIDS = {"none": 1, "non-root": 2, "root": 3}
MODE_NAMES = {1: "no VMX (bare metal)", 2: "VMX non-root (guest)", 3: "VMX root (VMM, Python)"}


class JsonLinesSink:
    def __init__(self, path: Path) -> None:
        self.f: IO[str] = open(path, "w")  # noqa: SIM115 - closed by close()

    def __call__(self, ev: dict) -> None:
        self.f.write(json.dumps(ev, default=str) + "\n")

    def close(self) -> None:
        self.f.close()


class ChromeTraceSink:
    """Writes {"traceEvents": [...]}: a duration slice per stretch at one (mode, ring), instants for events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self.cur: tuple[str, int] | None = None
        self.cur_start = 0
        self.last_ts = 0
        for pid, name in MODE_NAMES.items():
            self.events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
            self.events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
            for ring in range(4):
                self.events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": ring,
                                    "args": {"name": f"ring {ring}"}})

    def _switch(self, mode: str, cpl: int, ts: int) -> None:
        if self.cur == (mode, cpl):
            return
        self._close_slice(ts)
        self.cur = (mode, cpl)
        self.cur_start = ts

    def _close_slice(self, ts: int) -> None:
        if self.cur is None:
            return
        mode, cpl = self.cur
        self.events.append({"ph": "X", "name": f"{'guest ' if mode == 'non-root' else ''}ring {cpl}",
                            "pid": MODE_PIDS.get(mode, 1), "tid": cpl, "ts": self.cur_start,
                            "dur": max(1, ts - self.cur_start)})

    def __call__(self, ev: dict) -> None:
        ts = ev.get("icount", self.last_ts)
        self.last_ts = ts
        mode = ev.get("vmx", "none")
        cpl = ev.get("cpl", 0)
        kind = ev["kind"]
        if kind == "vm-exit":
            # the guest stops here; the VMM (root, Python) handles the exit
            self._switch("non-root", cpl, ts)
            self._close_slice(ts)
            self.cur = ("root", 0)
            self.cur_start = ts
        else:
            self._switch(mode, cpl, ts)
        if kind in ("exception", "fault", "vm-exit", "vm-entry", "vm-entry-failure", "page-fault", "stop"):
            name = ev.get("name") or ev.get("reason_name") or kind
            self.events.append({"ph": "i", "s": "t", "name": f"{kind}: {name}", "pid": MODE_PIDS.get(mode, 1),
                                "tid": cpl, "ts": ts, "args": {k: v for k, v in ev.items() if k != "kind"}})

    def close(self) -> None:
        self._close_slice(self.last_ts + 1)
        with open(self.path, "w") as f:
            json.dump({"traceEvents": self.events, "displayTimeUnit": "ns"}, f, default=str)


class LiveSink:
    """``--show``: one compact line per ring/mode change, exception and VM exit, coloured on a terminal."""

    COLORS = {"ring": "cyan", "exception": "yellow", "fault": "red", "vm-exit": "magenta", "vm-entry": "green",
              "vm-entry-failure": "bold red", "page-fault": "red", "stop": "bold", "io": "blue", "note": "white",
              "mmio": "blue", "task-switch": "cyan"}

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.console = None
        try:
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False)
        except ImportError:  # rich is optional: plain text then
            self.console = None

    def __call__(self, ev: dict) -> None:
        kind = ev["kind"]
        where = f"{ev.get('icount', 0):>10} {ev.get('cs', 0):04x}:{ev.get('eip', 0):08x} "
        mode = {"none": "   ", "non-root": "NR ", "root": "ROOT"}.get(ev.get("vmx", "none"), "")
        text = f"{where}{mode}ring {ev.get('cpl', 0)}  {describe(ev)}"
        if self.console is not None and self.console.is_terminal:
            self.console.print(f"[{self.COLORS.get(kind, 'white')}]{text}[/]", markup=True, soft_wrap=True)
        else:
            self.stream.write(text + "\n")


def describe(ev: dict) -> str:
    """A short human description of one event (used by --show and the HTML report)."""
    kind = ev["kind"]
    if kind == "ring":
        return f"ring {ev['from']} -> ring {ev['to']}"
    if kind == "exception":
        ec = "" if ev.get("error_code") is None else f" error {ev['error_code']:#x}"
        to = ev.get("to_cpl")
        ring = "" if "to_cpl" not in ev else (
            f" ring {ev.get('from_cpl')} -> {to}" if to is not None else " (delivery faulted)")
        return f"deliver {ev['name']} ({ev['event']}){ec}{ring}"
    if kind == "fault":
        ec = "" if ev.get("error_code") is None else f"({ev['error_code']:#x})"
        return f"fault {ev['name']}{ec} {ev.get('detail', '')}".rstrip()
    if kind == "page-fault":
        return f"#PF CR2={ev['cr2']:#010x} " + " ".join(k for k, v in ev["error_fields"].items() if v)
    if kind == "vm-exit":
        return f"VM exit {ev.get('reason')} {ev.get('reason_name', '')} qual={ev.get('qualification', 0):#x}"
    if kind == "vm-entry":
        return "VM entry (VMLAUNCH)" if ev.get("launch") else "VM entry (VMRESUME)"
    if kind == "vm-entry-failure":
        return f"VM-entry failure: {ev.get('message', '')}"
    if kind == "io":
        return f"{ev['dir']} port {ev['port']:#x} size {ev['size']} value {ev['value']:#x}" + (
            "" if ev.get("claimed", True) else " (no device)")
    if kind == "mmio":
        where = ev.get("device") or "no device: all ones"
        return f"MMIO {ev['dir']} {ev['addr']:#010x} size {ev['size']} value {ev['value']:#x} ({where})"
    if kind == "task-switch":
        return f"task switch ({ev.get('source')}) TR {ev.get('from_tr', 0):#x} -> {ev.get('to_tr', 0):#x}"
    if kind == "note":
        return str(ev.get("text", "note"))
    if kind == "stop":
        return f"stop: {ev.get('reason')} {ev.get('detail', '')}".rstrip()
    return kind
