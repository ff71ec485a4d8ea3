"""``vmxlab report``: the two-axis timeline page, checked in a real browser (headless Debian chromium).

The browser test opens the page from disk, checks that the lanes (four rings per VMX mode), the
markers and the statistics are rendered, clicks a VM-exit marker with a real mouse event and reads
the details panel, then saves docs/report-screenshot.png (the README shows it).  It skips, saying
why, when chromium is not installed (.ci/run installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cdp import Browser, chromium_path

from vmxlab.assemble import GUESTS
from vmxlab.cli import main
from vmxlab.runner import RunOptions, run_image
from vmxlab.trace.report import load_trace, render_html, segments

DOCS = Path(__file__).resolve().parent.parent / "docs"


def vmx_trace(tmp_path: Path) -> Path:
    """The demo's workload (syscalls from ring 3, CPUID, port I/O) as a VMX guest, traced."""
    out = tmp_path / "tour9.jsonl"
    opts = RunOptions(image=GUESTS / "demo" / "tour.asm", format="flat", load=0x100000, entry="pm32:0x100000",
                      echo=False, max_instructions=5_000_000, defines={"EXPERIMENT": 9}, vmx=True, trace_path=out)
    run_image(opts)
    return out


def test_segments_put_the_vmm_in_root_and_the_guest_rings_in_non_root(tmp_path: Path) -> None:
    events = load_trace(vmx_trace(tmp_path))
    segs = segments(events)
    lanes = {(s["mode"], s["cpl"]) for s in segs}
    # the guest runs at its own ring 3 and ring 0 inside non-root; the VMM at ring 0 of root operation
    assert {("non-root", 0), ("non-root", 3), ("root", 0)} <= lanes
    assert ("root", 3) not in lanes and ("none", 0) not in lanes
    exits = [e for e in events if e["kind"] == "vm-exit"]
    # every exit is followed by a stay in root at that instruction count
    assert all(any(s["mode"] == "root" and s["start"] == e["icount"] for s in segs) for e in exits)


def test_page_is_self_contained_and_carries_the_exit_statistics(tmp_path: Path) -> None:
    page, data = render_html(load_trace(vmx_trace(tmp_path)), "t")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<script src" not in page and "<link" not in page
    stats = {s["name"]: s["count"] for s in data["exit_stats"]}
    assert stats["CPUID"] == 50 and stats["IO_INSTRUCTION"] > 0
    assert data["modes"] == ["root", "non-root"]
    exit_marker = next(m for m in data["markers"] if m["kind"] == "vm-exit" and m["ev"]["reason"] == 30)
    assert exit_marker["ev"]["fields"]["port"] is not None  # the decoded qualification travels with the marker


def test_report_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "ring"}\nnot json\n')
    assert main(["report", str(bad), "--html", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:2" in err
    assert main(["report", str(tmp_path / "missing"), "--html", str(tmp_path / "o.html")]) == 2
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["report", str(tmp_path / "empty.jsonl"), "--html", str(tmp_path / "o.html")]) == 2


def test_bare_run_draws_the_no_vmx_group(tmp_path: Path) -> None:
    out = tmp_path / "bare.jsonl"
    run_image(RunOptions(image=GUESTS / "demo" / "tour.asm", format="flat", load=0x100000, entry="pm32:0x100000",
                         echo=False, max_instructions=5_000_000, defines={"EXPERIMENT": 7, "SYSCALLS": 5},
                         trace_path=out))
    _, data = render_html(load_trace(out))
    assert data["modes"] == ["none"] and not data["exit_stats"]


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium; "
                    ".ci/run does it)")
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    trace = vmx_trace(tmp_path)
    html_path = tmp_path / "report.html"
    assert main(["report", str(trace), "--html", str(html_path), "--title", "demo workload (tour 9) under VMX"]) == 0
    browser = Browser(1400, 900)
    try:
        browser.open(html_path.as_uri())
        lanes = browser.evaluate("[...document.querySelectorAll('.lane-label')].map(e => e.dataset.mode + ':' + "
                                 "e.dataset.ring)")
        assert lanes == [f"{m}:{r}" for m in ("root", "non-root") for r in range(4)]
        n_exits = browser.evaluate("document.querySelectorAll('.marker.kind-vm-exit').length")
        n_exc = browser.evaluate("document.querySelectorAll('.marker.kind-exception').length")
        assert n_exits == 157 and n_exc > 0
        rows = browser.evaluate("[...document.querySelectorAll('#exit-stats tbody tr')].map(r => r.innerText)")
        assert any("CPUID" in r and "50" in r for r in rows)
        # zoom in until markers stand apart, then click the first CPUID exit with the mouse: the details
        # panel names the reason and shows the guest state
        for _ in range(7):
            browser.click("#zoom-in")
        n = browser.evaluate("[...document.querySelectorAll('.marker.kind-vm-exit')].findIndex(e => "
                             "e.textContent.includes('CPUID'))")
        assert n >= 0
        browser.click(f"polygon.marker.kind-vm-exit[data-n='{_data_n(browser, n)}']")
        details = browser.evaluate("document.getElementById('details').innerText")
        assert "VM exit 10 CPUID" in details and "guest state" in details and "rip" in details
        # an I/O exit: the qualification split into the SDM's named fields
        n_io = browser.evaluate("[...document.querySelectorAll('.marker.kind-vm-exit')].findIndex(e => "
                                "e.textContent.includes('IO_INSTRUCTION'))")
        browser.click(f"polygon.marker.kind-vm-exit[data-n='{_data_n(browser, n_io)}']")
        details = browser.evaluate("document.getElementById('details').innerText")
        assert "qualification, by field" in details and "direction_in" in details and "port" in details
        assert browser.evaluate("document.querySelectorAll('.marker.selected').length") == 1
        # an exception marker shows vector and the CPL change of its delivery
        browser.click("circle.marker.kind-exception")
        details = browser.evaluate("document.getElementById('details').innerText")
        assert "INT 0x80" in details and "3 -> 0" in details
        browser.click("#zoom-reset")
        browser.click(f"polygon.marker.kind-vm-exit[data-n='{_data_n(browser, n_io)}']")
        DOCS.mkdir(exist_ok=True)
        shot = tmp_path / "shot.png"
        browser.screenshot(str(shot))
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
        (DOCS / "report-screenshot.png").write_bytes(data)
    finally:
        browser.close()


def _data_n(browser: Browser, index: int) -> str:
    return browser.evaluate(f"document.querySelectorAll('.marker.kind-vm-exit')[{index}].dataset.n")


def test_trace_has_the_event_fields_the_issue_lists(tmp_path: Path) -> None:
    events = load_trace(vmx_trace(tmp_path))
    exc = next(e for e in events if e["kind"] == "exception")
    assert exc["from_cpl"] == 3 and exc["to_cpl"] == 0 and exc["vector"] == 0x80
    ex = next(e for e in events if e["kind"] == "vm-exit" and e["reason"] == 30)
    assert ex["fields"]["port"] is not None and ex["vmx"] == "non-root"
    io = [e for e in events if e["kind"] == "io"]
    assert io and all(e["vmx"] == "root" for e in io)  # the VMM's device model does the access
    assert all({"icount", "eip", "cpl", "vmx", "kind"} <= e.keys() for e in events)
    json.dumps(events)
