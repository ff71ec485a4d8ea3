"""Exceptions and interrupts: double faults, triple faults, the EXT bit, RF in fault frames, traps vs
faults, hardware interrupts through gates a program cannot call (SDM Vol.3A chapter 6).

Bench checks (pmkit) were also run on Bochs 2.7 with the same outcome; the triple-fault checks use
vmxlab's own stop report.
"""

from __future__ import annotations

import pytest
from protkit import Case, Check, check_results

from vmxlab.guestkit import run_snippet
from vmxlab.machine.machine import StopReason


def chk(name: str, expect: str, sdm: str, **case: object) -> Check:
    case.setdefault("cpl", 0)
    return Check(name, Case(**case), expect, sdm)  # type: ignore[arg-type]


BAD_DS = {"gdt": {0x68: "data0"}, "body": "mov ax, 0x6b"}

CHECKS = [
    chk("double-fault-gp-gate-not-present", "#DF(0x0)",
        "6.15 Table 6-5: a contributory exception (#NP) while delivering a contributory one (#GP) is #DF(0)",
        cpl=3, setup="SET_IDT 13, {GATE(0x08, A(exc_13), 0x0E, 0)}", insn="mov ds, ax", **BAD_DS),
    chk("ext-bit-on-fault-while-delivering-an-exception", "#NP(0x71)",
        "6.13: EXT = 1 when the fault happened while delivering an earlier exception; #UD is benign, "
        "so the #NP is delivered on its own (Table 6-5)",
        setup="SET_IDT 6, {GATE(0x70, A(exc_6), 0x8E, 0)}", gdt={0x70: "code0-np"}, insn="ud2"),
    chk("no-ext-bit-for-int-n", "#NP(0x70)",
        "6.13: EXT = 0 for faults while delivering INT n / INT3 / INTO",
        setup="SET_IDT 0x21, {GATE(0x70, A(far_target), 0x8E, 0)}", gdt={0x70: "code0-np"}, insn="int 0x21"),
    chk("rf-set-in-fault-frame", "ok eax=0x10000",
        "18.3.1.1 / 6.5: the EFLAGS image pushed for a fault (not #DB) has RF = 1",
        cpl=3, setup="SET_IDT 13, {GATE(0x08, A(isr_rf), 0x8E, 0)}", insn="mov ds, ax", report="eax",
        **BAD_DS),
    chk("rf-clear-in-int-n-frame", "ok eax=0x0",
        "18.3.1.1: INT n is a trap, RF stays 0 in its frame",
        cpl=3, setup="SET_IDT 0x21, {GATE(0x08, A(isr_rf_noerr), 0xEE, 0)}", insn="int 0x21", report="eax"),
    chk("double-fault-through-task-gate", "ok eax=0x0 ebx=0x58 ecx=0x48",
        "6.15 / 7.3: with SS0 broken a ring-3 fault cannot be delivered (#TS, contributory) and neither can "
        "#DF on the same stack -- unless #DF is a task gate: the handler task gets a good stack, "
        "error code 0, and the broken task in its link",
        cpl=3, setup="TASK tss_b, task_df, 0x08, 0x10, 0xDA000, 0x2\nSET_IDT 8, {GATE(0x58, 0, 0x85, 0)}\n"
                     "mov dword [tss + 8], 0x43", insn="mov ds, ax", report="eax ebx ecx", **BAD_DS),
    chk("timer-interrupt-through-dpl0-gate-from-ring3", "ok eax=0x3b ebx=0x0 ecx=0x200 edx=0x0",
        "6.12.1.1: the gate DPL is not checked for hardware interrupts; ring 3 is interrupted at the "
        "spinning instruction (saved EIP), IF was 1 there, the interrupt gate cleared it",
        cpl=3, iopl=3, setup="SET_IDT 0x20, {GATE(0x08, A(isr_timer), 0x8E, 0)}\nTIMER_ON 1000",
        body="sti", insn="jmp $", report="eax ebx ecx edx"),
    chk("int-n-to-the-timer-gate-from-ring3", "#GP(0x102)",
        "6.12.1.1: the same gate called by INT 0x20 from ring 3 is #GP(vector*8+2)",
        cpl=3, setup="SET_IDT 0x20, {GATE(0x08, A(isr_timer), 0x8E, 0)}", insn="int 0x20"),
    chk("ext-bit-on-fault-while-delivering-an-interrupt", "#NP(0x103)",
        "6.13: a fault while delivering an external interrupt has EXT = 1 (#NP(vector*8+2+1)); the saved "
        "EIP is where the program was interrupted",
        cpl=3, iopl=3, setup="SET_IDT 0x20, {GATE(0x08, A(isr_timer), 0x0E, 0)}\nTIMER_ON 1000",
        body="sti", insn="jmp $"),
]

EXTRA = """
isr_rf:                             ; a fault with error code: EAX = RF in the pushed EFLAGS
        mov eax, [esp + 12]
        and eax, 0x10000
        int 0x30
isr_rf_noerr:
        mov eax, [esp + 8]
        and eax, 0x10000
        int 0x30
task_df:                            ; the #DF task: EAX = error code, EBX = TR, ECX = previous-task link
        mov eax, [esp]
        str ebx
        movzx ecx, word [tss_b]
        int 0x30
isr_timer:                          ; EAX = saved CS, EBX = saved EIP - instruction,
                                    ; ECX = saved IF, EDX = IF now
        mov eax, [esp + 4]
        mov ebx, [esp]
        sub ebx, [cur_insn]
        mov ecx, [esp + 8]
        and ecx, 0x200
        pushfd
        pop edx
        and edx, 0x200
        push eax
        TIMER_OFF
        pop eax
        int 0x30
"""


@pytest.mark.parametrize("engine", ["fast", "interp"])
@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_interrupt_check(check: Check, engine: str) -> None:
    got = check_results(CHECKS, engine, extra=EXTRA)[check.name]
    assert got == check.expect, f"{check.name}: expected {check.expect}, got {got} (SDM Vol.3A {check.sdm})"


def test_triple_fault_is_a_shutdown_stop(engine: str) -> None:
    """SDM Vol.3A 6.15 (interrupt 8): a fault while delivering #DF shuts the processor down; vmxlab
    stops the run with reason "triple-fault" and a report, it does not crash."""
    r = run_snippet("""
        lidt [idt0]
        ud2                 ; #UD -> IDT limit 0: #GP -> #GP again: #DF -> #GP: shutdown
        jmp $
    idt0: dw 0
          dd 0
    """, engine=engine)
    assert r.stop.reason == StopReason.TRIPLE_FAULT
    assert "#DF delivery failed" in r.stop.detail
    assert r.exit_status == 12


def test_real_mode_triple_fault(engine: str) -> None:
    """Real mode has no IDT gates but the same shutdown: an IVT with limit 0 cannot deliver anything."""
    r = run_snippet("""
        lidt [idt0]
        int 0x21
        jmp $
    idt0: dw 0
          dd 0
    """, mode="real", engine=engine)
    assert r.stop.reason == StopReason.TRIPLE_FAULT


def test_hlt_wakes_on_timer_and_iret_resumes(engine: str) -> None:
    """HLT with IF = 1 waits for the next interrupt (SDM Vol.2 HLT); the handler's IRET returns after the
    HLT.  Counts 3 ticks of the PIT (mode 2, count 256) through the 8259A at vector 0x20 in real mode;
    the budget includes the virtual time spent halted."""
    r = run_snippet("""
        cli
        xor ax, ax
        mov ds, ax
        mov word [0x20 * 4], tick
        mov word [0x20 * 4 + 2], 0
        mov al, 0x11
        out 0x20, al
        mov al, 0x20
        out 0x21, al
        mov al, 4
        out 0x21, al
        mov al, 1
        out 0x21, al
        mov al, 0xFE
        out 0x21, al
        mov al, 0x34
        out 0x43, al
        mov al, 0
        out 0x40, al
        mov al, 0x01
        out 0x40, al
        xor bx, bx
        sti
    idle:
        hlt
        cmp bx, 3
        jb idle
        jmp __end
    tick:
        inc bx
        mov al, 0x20
        out 0x20, al
        iret
    """, mode="real", engine=engine, max_instructions=2_000_000)
    assert r.stop.reason == StopReason.HALTED
    assert r.backend.cpu.regs[3] & 0xFFFF == 3
