"""End-to-end smoke tests of the run pipeline: assemble, load, run, stop reasons."""

from __future__ import annotations

from vmxlab.guestkit import run_snippet
from vmxlab.machine.machine import StopReason


def test_arithmetic_and_halt(engine: str) -> None:
    r = run_snippet("""
        mov eax, 40
        add eax, 2
        mov ebx, eax
        sub ebx, 50
    """, engine=engine)
    assert r.stop.reason == StopReason.HALTED
    st = r.backend.cpu.state_dict()
    assert st["eax"] == 42
    assert st["ebx"] == (42 - 50) & 0xFFFFFFFF
    assert st["eflags"] & 0x81  # SF and CF set by 42 - 50


def test_debug_console_and_exit(engine: str) -> None:
    r = run_snippet("""
        mov al, 'O'
        out 0xE9, al
        mov al, 'K'
        out 0xE9, al
        EXIT_STATUS 3
    """, engine=engine)
    assert r.console == b"OK"
    assert r.stop.reason == StopReason.DEBUG_EXIT
    assert r.exit_status == 7


def test_budget_stops_exactly(engine: str) -> None:
    r = run_snippet("""
    spin:
        inc eax
        jmp spin
    """, max_instructions=1001, engine=engine)
    assert r.stop.reason == StopReason.BUDGET
    assert r.instructions == 1001
    assert r.backend.cpu.regs[0] == 501  # inc, jmp, inc, ... : 501 incs in 1001 instructions
