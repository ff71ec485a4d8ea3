"""Hardware task switching (SDM Vol.3A 7.3): JMP/CALL to a TSS or task gate, task gates in the IDT,
IRET with NT, busy bits, NT and the previous-task link, faults before and after the commit point.

Runs on the pmkit bench.  ``task_report`` (pmkit.inc) reports EAX = TR, EBX = EFLAGS.NT, ECX = the
previous-task link in the second TSS, EDX = the type of the bench's own TSS descriptor (9 available,
B busy).  Every check was also run on Bochs 2.7 with the same outcome.
"""

from __future__ import annotations

import pytest
from protkit import Case, Check, check_results

# the second TSS (selector 0x58) as a ring-0 task entering task_report, stack at 0xDA000
TASK_B = "TASK tss_b, task_report, 0x08, 0x10, 0xDA000, 0x2"


def chk(name: str, expect: str, sdm: str, **case: object) -> Check:
    case.setdefault("cpl", 0)
    return Check(name, Case(**case), expect, sdm)  # type: ignore[arg-type]


CHECKS = [
    chk("jmp-to-tss", "ok eax=0x58 ebx=0x0 ecx=0x0 edx=0x900",
        "7.3 / Table 7-2: JMP sets the new busy bit, clears the old one, leaves NT and the link alone",
        setup=TASK_B, insn="jmp 0x58:0", report="eax ebx ecx edx"),
    chk("call-to-tss", "ok eax=0x58 ebx=0x4000 ecx=0x48 edx=0xb00",
        "7.3 / Table 7-2: CALL sets NT in the new task, the link to the old TSS, keeps the old task busy",
        setup=TASK_B, insn="call 0x58:0", report="eax ebx ecx edx"),
    chk("call-then-iret-returns", "ok eax=0x48 ebx=0x900 ecx=0x0 edx=0x1234",
        "7.4: IRET with NT = 1 returns to the linked task (its busy bit stays set, the nested task's is "
        "cleared, the caller's registers come back from its TSS)",
        setup="TASK tss_b, task_return, 0x08, 0x10, 0xDA000, 0x2",
        body="mov edx, 0x1234",
        insn="call 0x58:0\nstr eax\nmov ebx, 0x58\nlar ebx, ebx\nand ebx, 0xF00\n"
             "pushfd\npop ecx\nand ecx, 0x4000",
        report="eax ebx ecx edx"),
    chk("jmp-to-busy-tss", "#GP(0x48)", "Vol.2 JMP: #GP(TSS selector) if the TSS is busy",
        insn="jmp 0x48:0"),
    chk("jmp-to-tss-dpl-below-cpl", "#GP(0x58)", "Vol.2 JMP: #GP(TSS selector) if TSS DPL < CPL",
        cpl=3, setup=TASK_B, insn="jmp 0x58:0"),
    chk("jmp-to-tss-not-present", "#NP(0x68)", "Vol.2 JMP: #NP(TSS selector) if the TSS is not present",
        gdt={0x68: "DESC(A(tss_c), 0x67, 0x09)"}, insn="jmp 0x68:0"),
    chk("tss-limit-too-small", "#TS(0x68)", "7.3 step 3 / Table 7-1: #TS(new TSS) if its limit < 67H",
        gdt={0x68: "DESC(A(tss_c), 0x20, 0x89)"}, insn="jmp 0x68:0"),
    chk("task-gate-from-ring3", "ok eax=0x58 ebx=0x0 ecx=0x0 edx=0x900",
        "Vol.2 JMP TASK-GATE: a DPL-3 task gate lets ring 3 switch to a ring-0 task",
        cpl=3, setup=TASK_B, gdt={0x68: "GATE(0x58, 0, 0xE5, 0)"}, insn="jmp 0x6b:0",
        report="eax ebx ecx edx"),
    chk("task-gate-dpl-below-cpl", "#GP(0x68)", "Vol.2 JMP: #GP(task gate selector) if gate DPL < CPL",
        cpl=3, setup=TASK_B, gdt={0x68: "GATE(0x58, 0, 0x85, 0)"}, insn="jmp 0x6b:0"),
    chk("task-gate-to-busy-tss", "#GP(0x48)", "Vol.2 JMP TASK-GATE: #GP(TSS selector) if the TSS is busy",
        gdt={0x68: "GATE(0x48, 0, 0x85, 0)"}, insn="jmp 0x68:0"),
    chk("int-through-task-gate", "ok eax=0x58 ebx=0x4000 ecx=0x48 edx=0xb00",
        "6.11.3 / 7.3: an interrupt through a task gate nests (NT, link, old task stays busy)",
        cpl=3, setup=TASK_B + "\nSET_IDT 0x21, {GATE(0x58, 0, 0xE5, 0)}", insn="int 0x21",
        report="eax ebx ecx edx"),
    chk("exception-through-task-gate-pushes-error-code", "ok eax=0x68 ebx=0xd9ffc",
        "Vol.2 INT n TASK-GATE: the error code is pushed on the new task's stack",
        cpl=3, gdt={0x68: "data0"},
        setup="TASK tss_b, task_errcode, 0x08, 0x10, 0xDA000, 0x2\nSET_IDT 13, {GATE(0x58, 0, 0x85, 0)}",
        body="mov ax, 0x6b", insn="mov ds, ax", report="eax ebx"),
    chk("new-task-ss-not-writable", "#TS(0x38)@+7",
        "Table 7-1: #TS(SS) if the new SS is not a writable data segment -- after the commit point, so "
        "the fault belongs to the new task (saved EIP = its first instruction)",
        setup="TASK tss_b, c{n}_next, 0x3b, 0x3b, 0xDC800, 0x2", insn="jmp 0x58:0"),
    chk("new-task-cs-not-present", "#NP(0x70)@+7", "Table 7-1: #NP(CS) if the new CS is not present",
        gdt={0x70: "code0-np"}, setup="TASK tss_b, c{n}_next, 0x70, 0x10, 0xDA000, 0x2", insn="jmp 0x58:0"),
    chk("new-task-ldt-not-an-ldt", "#TS(0x10)@+7", "Table 7-1: #TS(LDT selector) if the LDT is invalid",
        setup="TASK tss_b, c{n}_next, 0x08, 0x10, 0xDA000, 0x2\nmov dword [tss_b + 0x60], 0x10",
        insn="jmp 0x58:0"),
    chk("iret-nt-link-not-busy", "#TS(0x58)",
        "Vol.2 IRET TASK-RETURN: #TS(link) if the linked TSS is not busy",
        body="pushfd\nor dword [esp], 0x4000\npopfd\nmov word [tss], 0x58", insn="iretd"),
    chk("task-switch-sets-cr0-ts", "ok eax=0x8",
        "7.3 step 12: the processor sets CR0.TS on every task switch",
        setup="TASK tss_b, task_cr0, 0x08, 0x10, 0xDA000, 0x2", insn="jmp 0x58:0", report="eax"),
    chk("task-switch-loads-new-eflags", "ok eax=0x202",
        "7.3 step 12: EFLAGS comes from the new TSS (IF = 1 here)",
        setup="TASK tss_b, task_flags, 0x08, 0x10, 0xDA000, 0x202", insn="jmp 0x58:0", report="eax"),
]

EXTRA = """
task_errcode:                       ; EAX = the error code on the new task's stack, EBX = ESP
        mov eax, [esp]
        mov ebx, esp
        int 0x30
task_cr0:                           ; EAX = CR0.TS
        mov eax, cr0
        and eax, 8
        int 0x30
task_flags:                         ; EAX = EFLAGS (IF and bit 1)
        pushfd
        pop eax
        and eax, 0x202
        cli
        int 0x30
"""

for c in CHECKS:
    c.case.name = c.name


@pytest.mark.parametrize("engine", ["fast", "interp"])
@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_task_switch(check: Check, engine: str) -> None:
    got = check_results(CHECKS, engine, extra=EXTRA)[check.name]
    assert got == check.expect, f"{check.name}: expected {check.expect}, got {got} (SDM Vol.3A {check.sdm})"


def test_jmp_to_16_bit_tss(engine: str) -> None:
    """A 16-bit TSS (type 1, SDM Vol.3A 7.6 Figure 7-10): IP, FLAGS, the word registers, ES CS SS DS and
    the LDT come from it; FS/GS become null; the upper halves of the general registers are modified
    (FFFFH in this model, as Bochs); the old 32-bit task saves its state and loses its busy bit."""
    from vmxlab.guestkit import run_snippet

    r = run_snippet("""
        ; GDT at 0x2000: code 0x08, data 0x10, code 0x18 (base 0x100000, 64 KiB, for the 16-bit task's
        ; IP), 32-bit TSS 0x20 at 0x3000, 16-bit TSS 0x28 at 0x3100 (limit 2BH)
        mov dword [0x2008], 0x0000FFFF
        mov dword [0x200C], 0x00CF9A00
        mov dword [0x2010], 0x0000FFFF
        mov dword [0x2014], 0x00CF9200
        mov dword [0x2018], 0x0000FFFF
        mov dword [0x201C], 0x00409A10
        mov dword [0x2020], 0x30000067
        mov dword [0x2024], 0x00008900
        mov dword [0x2028], 0x3100002B
        mov dword [0x202C], 0x00008100
        mov word [0x2100], 0x2F
        mov dword [0x2102], 0x2000
        lgdt [0x2100]
        jmp 0x08:.cs
    .cs:
        mov word [0x3100 + 0x0E], task16 - 0x100000   ; IP
        mov word [0x3100 + 0x10], 0x0002              ; FLAGS
        mov word [0x3100 + 0x12], 0x1234              ; AX
        mov word [0x3100 + 0x1A], 0x7000              ; SP
        mov word [0x3100 + 0x22], 0x10                ; ES
        mov word [0x3100 + 0x24], 0x18                ; CS
        mov word [0x3100 + 0x26], 0x10                ; SS
        mov word [0x3100 + 0x28], 0x10                ; DS
        mov ax, 0x20
        ltr ax
        mov ax, 0x10
        mov fs, ax
        jmp 0x28:0
    after:
        jmp __end
    task16:
        mov ebx, eax
        mov ecx, fs
        jmp __end
    """, engine=engine)
    cpu = r.backend.cpu
    assert cpu.tr.selector == 0x28 and cpu.tr.ar & 0xF == 0x3          # busy 16-bit TSS
    assert cpu.regs[3] == 0xFFFF1234                                   # EBX = the loaded AX
    assert cpu.regs[1] == 0                                            # FS is null
    assert r.machine.memory.read(0x2025, 1) == 0x89                    # the old TSS is available again
    assert r.machine.memory.read(0x3000 + 0x4C, 2) == 0x08             # its saved CS
