"""The event trace: JSON Lines, the Chrome trace format, the live view, and what each event says."""

from __future__ import annotations

import json
from pathlib import Path

from vmxlab.cli import main
from vmxlab.guestkit import write_snippet
from vmxlab.runner import RunOptions, run_image

TRIPLE = """
        mov eax, 1
        out 0x80, al
        int3                    ; no IDT: #BP -> #GP(IDT) -> #GP -> #DF -> triple fault
"""


def run_traced(tmp_path: Path, fmt: str, kinds=None) -> Path:
    out = tmp_path / f"trace.{fmt}"
    opts = RunOptions(image=write_snippet(TRIPLE, "pm32", epilogue=False), format="flat", load=0x100000,
                      entry="pm32:0x100000", echo=False, trace_path=out, trace_format=fmt, trace_kinds=kinds,
                      max_instructions=1000)
    run_image(opts)
    return out


def test_jsonl_events_describe_the_fault_cascade(tmp_path: Path) -> None:
    events = [json.loads(line) for line in run_traced(tmp_path, "jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "stop" and events[-1]["reason"] == "triple-fault"
    delivered = [(e["name"], e["error_code"]) for e in events if e["kind"] == "exception"]
    # SDM Vol.3A 6.13: an IDT-related error code sets bit 1 (IDT) with the vector in bits 15:3
    assert delivered == [("#BP", None), ("#GP", 3 * 8 + 2), ("#DF", 0)]
    gp = [e for e in events if e["kind"] == "exception" and e["name"] == "#GP"][0]
    assert gp["error_fields"] == {"ext": False, "idt": True, "ti": False, "index": 3}
    io = [e for e in events if e["kind"] == "io"]
    assert io and io[0]["port"] == 0x80 and io[0]["dir"] == "out" and io[0]["value"] == 1
    assert all({"icount", "eip", "cpl", "vmx"} <= e.keys() for e in events)


def test_kind_filter(tmp_path: Path) -> None:
    events = [json.loads(line) for line in run_traced(tmp_path, "jsonl", ["io"]).read_text().splitlines()]
    assert {e["kind"] for e in events} == {"io"}


def test_chrome_trace_has_rings_as_threads_and_modes_as_processes(tmp_path: Path) -> None:
    data = json.loads(run_traced(tmp_path, "chrome").read_text())
    evs = data["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs if e.get("name") == "thread_name"}
    assert names[(2, 3)] == "ring 3"  # VMX non-root has its own rings 0-3
    procs = {e["pid"]: e["args"]["name"] for e in evs if e.get("name") == "process_name"}
    assert "non-root" in procs[2] and "root" in procs[3]
    slices = [e for e in evs if e["ph"] == "X"]
    assert slices and all(e["dur"] >= 1 for e in slices)
    instants = [e["name"] for e in evs if e["ph"] == "i"]
    assert any("#DF" in n for n in instants)


def test_show_prints_events_live(capsys) -> None:
    src = write_snippet(TRIPLE, "pm32", epilogue=False)
    main(["run", str(src), "--load", "0x100000", "--entry", "pm32:0x100000", "--show"])
    err = capsys.readouterr().err
    assert "deliver #BP (software-exception)" in err
    assert "stop: triple-fault" in err


def test_unknown_trace_kind_is_a_user_error(tmp_path: Path, capsys) -> None:
    src = write_snippet("nop", "pm32")
    status = main(["run", str(src), "--trace", str(tmp_path / "t"), "--trace-kinds", "bogus"])
    assert status == 2
    assert "unknown trace kind" in capsys.readouterr().err
