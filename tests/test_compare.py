"""``vmxlab compare``: every bundled guest runs identically on emu and kvm (console, port-I/O
sequence, stop, final registers), and the report logic classifies differences -- host-dependent
ones explained, not hidden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmxlab.backends.kvm.availability import kvm_usable
from vmxlab.commands.compare import HOST_DEPENDENT, Side, compare_sides, format_report
from vmxlab.machine.machine import StopReason, StopRequest

ROOT = Path(__file__).resolve().parent.parent
#: the bundled programs a user runs with `vmxlab run`: guests/*.asm and the teaching kernel.  Not here:
#: guests/demo/tour.asm (runs under `vmxlab demo`'s VMM only) and guests/explain/lab.asm (a template
#: assembled with -D values by `vmxlab explain`).
BUNDLED = sorted([p.name for p in (ROOT / "guests").glob("*.asm")] + ["kernel/teaching.asm"])

_OK, _WHY = kvm_usable()


@pytest.mark.parametrize("guest", BUNDLED)
@pytest.mark.kvm
@pytest.mark.skipif(not _OK, reason=f"/dev/kvm not usable: {_WHY}")
def test_bundled_guest_runs_identically_on_both_backends(guest: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vmxlab.cli import main

    rc = main(["compare", str(ROOT / "guests" / guest), "--json", "--timeout", "60"])
    report = json.loads(capsys.readouterr().out)
    real = [d for d in report["differences"] if d["host_dependent"] is None]
    assert rc == 0 and not real, real
    if report["result"] != "identical":
        # only an explained host limit may remain (the teaching kernel turns on 32-bit paging, which PVM
        # hosts refuse); it is reported, not hidden
        assert report["result"] == "host-dependent only"
        assert {d["host_dependent"] for d in report["differences"]} <= set(report["host_dependent_explanations"])
        pytest.xfail(f"host limit: {'; '.join(report['host_dependent_explanations'].values())}")
    assert report["result"] == "identical"
    assert any(s.startswith("port-I/O sequence") for s in report["identical"])
    assert any(s.startswith("final registers") for s in report["identical"])
    assert report["emu"]["stop"] == report["kvm"]["stop"]


def test_bundled_guests_exist() -> None:
    assert {"hello.asm", "pm_switch.asm"} <= set(BUNDLED)


def side(backend: str, **kw) -> Side:
    base = dict(backend=backend, stop=StopRequest(StopReason.SHUTDOWN_REQUEST), console={"com1": b"hi\n"},
                io=[("out", 0x3F8, 1, 0x68), ("out", 0x3F8, 1, 0x69)],
                state={"eax": 1, "eip": 0x7C10, "cr0": 0x10, "cs": {"selector": 0, "base": 0, "limit": 0xFFFF,
                                                                   "ar": 0x93}},
                seconds=0.01, exits={"vm_exits": {"IO_INSTRUCTION": 2}}, instructions=10)
    base.update(kw)
    return Side(**base)


def test_identical_runs_report_identical() -> None:
    kvm_state = dict(side("emu").state, cs={"selector": 0, "base": 0, "limit": 0xFFFF, "ar": 0x9B})
    rep = compare_sides("g", side("emu"), side("kvm", state=kvm_state))
    # real mode: the hidden access rights of CS are implementation-specific and not compared
    assert rep.real_differences == [] and "result: identical" in format_report(rep)


def test_a_console_difference_is_real() -> None:
    rep = compare_sides("g", side("emu"), side("kvm", console={"com1": b"ho\n"}))
    assert [d.what for d in rep.real_differences] == ["console com1"]
    assert "first difference at byte 1" in rep.real_differences[0].detail


def test_a_register_difference_is_real_and_named() -> None:
    rep = compare_sides("g", side("emu"), side("kvm", state=dict(side("emu").state, eax=2)))
    assert [d.what for d in rep.real_differences] == ["register eax"]
    assert "emu 0x1 / kvm 0x2" in rep.real_differences[0].detail


def test_pvm_legacy_paging_divergence_is_tagged_not_hidden() -> None:
    emu = side("emu", console={"com1": b"paging on"}, state={"cr0": 0x80000011, "efer": 0, "eax": 1})
    kvm = side("kvm", console={"com1": b"PANIC #GP"}, state={"cr0": 0x11, "efer": 0, "eax": 2}, pvm=True)
    rep = compare_sides("g", emu, kvm)
    assert rep.real_differences == [] and rep.result == "host-dependent only"
    assert {d.host_dependent for d in rep.differences} == {"pvm-paging"} and len(rep.differences) == 3
    assert "listed and explained" in format_report(rep)
    # the same divergence on a host that is not PVM is a real difference
    assert compare_sides("g", emu, side("kvm", console={"com1": b"PANIC #GP"}, state=kvm.state)).real_differences


def test_timed_out_runs_do_not_compare_registers() -> None:
    rep = compare_sides("g", side("emu", stop=StopRequest(StopReason.TIMEOUT)),
                        side("kvm", stop=StopRequest(StopReason.TIMEOUT), state={"eax": 5, "eip": 9, "cr0": 0x10}))
    assert rep.differences == [] and "final registers not compared" in rep.notes[0]


def test_timer_reads_are_host_dependent() -> None:
    a = side("emu", io=[("in", 0x40, 1, 0x12)])
    b = side("kvm", io=[("in", 0x40, 1, 0x99)])
    rep = compare_sides("g", a, b)
    assert rep.real_differences == []
    assert [d.host_dependent for d in rep.differences] == ["timer"]
    assert HOST_DEPENDENT["timer"] in format_report(rep)


def test_cpuid_text_on_the_console_is_host_dependent() -> None:
    rep = compare_sides("g", side("emu", console={"com1": b"GenuineIntel vmxlab software CPU"}),
                        side("kvm", console={"com1": b"GenuineIntel Intel(R) Xeon(R)"}))
    assert rep.real_differences == [] and rep.differences[0].host_dependent == "cpuid"


def test_stop_difference_is_real() -> None:
    rep = compare_sides("g", side("emu"), side("kvm", stop=StopRequest(StopReason.TRIPLE_FAULT)))
    assert [d.what for d in rep.real_differences] == ["stop"]


def test_compare_without_kvm_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import vmxlab.backends.select as sel
    from vmxlab.cli import main

    monkeypatch.setattr(sel, "kvm_available", lambda: (False, "/dev/kvm: no such device"))
    rc = main(["compare", str(ROOT / "guests" / "hello.asm")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "vmxlab: compare needs /dev/kvm: /dev/kvm: no such device"


def test_backend_kvm_without_kvm_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import vmxlab.backends.select as sel
    from vmxlab.cli import main

    monkeypatch.setattr(sel, "kvm_available", lambda: (False, "/dev/kvm: permission denied — add yourself "
                                                               "to the kvm group"))
    rc = main(["run", str(ROOT / "guests" / "hello.asm"), "--backend", "kvm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["vmxlab: --backend kvm: /dev/kvm: permission denied — add yourself to the kvm group"]


def test_backend_auto_falls_back_to_emu(monkeypatch: pytest.MonkeyPatch) -> None:
    import vmxlab.backends.select as sel
    from vmxlab.guestkit import run_guest

    monkeypatch.setattr(sel, "kvm_available", lambda: (False, "no /dev/kvm"))
    r = run_guest("hello", backend="auto")
    assert r.backend.name == "emu" and r.stop.reason == StopReason.SHUTDOWN_REQUEST
