"""The teaching kernel (guests/kernel/teaching.asm, docs/teaching-kernel.md): ring 3 makes system calls
through an int 0x80 gate, is preempted by the PIT, and every privileged thing it tries is caught by
the CPU and reported by the kernel with the right vector and error code."""

from __future__ import annotations

import re

import pytest

from vmxlab.guestkit import run_guest
from vmxlab.machine.machine import StopReason

#: what each probe must raise: (vector, error code[, CR2]) -- the SDM section is in the kernel source
EXPECTED = {
    "cli": (13, 0), "sti": (13, 0), "in": (13, 0), "out": (13, 0), "hlt": (13, 0),
    "kernel-write": (14, 0x7, 0x100000),      # present | write | user (SDM Vol.3A 4.7)
    "readonly-write": (14, 0x7, 0x802000),
    "load-dpl0-ds": (13, 0x10),               # #GP(selector)
    "lgdt": (13, 0), "mov-cr3": (13, 0), "read-cr0": (13, 0), "wrmsr": (13, 0),
    "int-dpl0-gate": (13, 0x20 * 8 + 2),      # #GP(vector * 8 + 2): IDT, not EXT
    "call-ring0": (13, 0x08),
    "kernel-jump": (14, 0x5, 0x100040),       # a fetch from a supervisor page: present | user
}


@pytest.fixture(scope="module", params=["fast", "interp"])
def run(request: pytest.FixtureRequest):
    return run_guest("kernel/teaching", engine=request.param, max_instructions=5_000_000)


def test_kernel_runs_to_a_clean_power_off(run) -> None:
    assert run.stop.reason == StopReason.SHUTDOWN_REQUEST, run.stop
    assert run.exit_status == 0


def test_every_violation_is_caught_with_vector_and_error_code(run) -> None:
    e9 = run.machine.console.by_channel["e9"].decode()
    seen = {}
    pattern = r"violation (\S+) vector=(\d+) error=([0-9a-f]{4}) eip=([0-9a-f]{8})(?: cr2=([0-9a-f]{8}))?"
    for m in re.finditer(pattern, e9):
        name, vector, error, _eip, cr2 = m.groups()
        seen[name] = (int(vector), int(error, 16)) + ((int(cr2, 16),) if cr2 else ())
    assert seen == EXPECTED


def test_system_calls_timer_and_summary(run) -> None:
    com1 = run.machine.console.by_channel["com1"].decode()
    assert "[ring 3] hello from ring 3 (CPL 3): this text went through int 0x80" in com1
    ticks = re.findall(r"\[timer\]  tick (\d): interrupted ring (\d) at 001b:008000", com1)
    assert ticks == [("1", "3"), ("2", "3"), ("3", "3")]   # the PIT preempted ring 3 three times
    assert "NOT CAUGHT" not in com1 and "PANIC" not in com1
    assert f"the task exited: {len(EXPECTED)} violations caught" in com1
    assert re.search(r"the GDT is at 0010[0-9a-f]{4}", com1)  # SGDT at CPL 3 works (not privileged)
