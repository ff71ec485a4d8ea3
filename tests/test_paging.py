"""Paging (SDM Vol.3A chapter 4): U/S, R/W, CR0.WP, not-present and reserved-bit faults with their error
codes and CR2, accessed/dirty bits, 4 MiB pages, global pages across MOV CR3, INVLPG of a large page,
PAE with NX, and #PF during #PF delivery.

Runs on the pmkit bench with paging on: linear 0-4 MiB is identity-mapped by the page table at
0xDE000 (user, writable).  The checks remap the test page at linear 0x300000 (its PTE is at
0xDEC00), whose candidate frames hold markers: physical 0x310000 = AAAA0000H, 0x311000 = BBBB0000H.
All bench checks were run on Bochs 2.7 with the same outcome.
"""

from __future__ import annotations

import fnmatch

import pytest
from protkit import Case, Check, check_results

from vmxlab.guestkit import run_snippet
from vmxlab.machine.machine import StopReason

PAGING = True  # the bench runs these with paging on
PTE = 0xDEC00  # PTE of linear 0x300000 in the bench's identity page table
P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
MARKERS = "mov dword [0x310000], 0xAAAA0000\nmov dword [0x311000], 0xBBBB0000"


def page(flags: int, frame: int = 0x310000, extra: str = "") -> str:
    """Ring-0 setup: the markers, then PTE(0x300000) = frame | flags, then INVLPG."""
    return f"{MARKERS}\nmov dword [{PTE:#x}], {frame | flags:#x}\ninvlpg [0x300000]\n{extra}"


def chk(name: str, expect: str, sdm: str, **case: object) -> Check:
    return Check(name, Case(**case), expect, sdm)  # type: ignore[arg-type]


WP_ON = "mov eax, cr0\nor eax, 0x10000\nmov cr0, eax"

CHECKS = [
    chk("user-read-of-supervisor-page", "#PF(0x5) cr2=0x300000",
        "4.6.1: user-mode reads need U/S = 1; error code P | U (4.7)",
        setup=page(P | RW), insn="mov eax, [0x300000]"),
    chk("user-write-to-read-only-page", "#PF(0x7) cr2=0x300004",
        "4.6.1: user-mode writes need R/W = 1; error code P | W | U",
        setup=page(P | US), insn="mov [0x300004], eax"),
    chk("user-read-allowed", "ok eax=0xaaaa0000", "4.6.1", setup=page(P | US), insn="mov eax, [0x300000]",
        report="eax"),
    chk("supervisor-write-to-read-only-wp0", "ok", "4.6.1: with CR0.WP = 0 supervisor writes ignore R/W",
        cpl=0, setup=page(P | US), insn="mov [0x300000], eax"),
    chk("supervisor-write-to-read-only-wp1", "#PF(0x3) cr2=0x300000",
        "2.5 CR0.WP / 4.6.1: with WP = 1 supervisor writes to read-only pages fault (P | W)",
        cpl=0, setup=page(P | US, extra=WP_ON), insn="mov [0x300000], eax"),
    chk("not-present-user-read", "#PF(0x4) cr2=0x300008", "4.7: P = 0 for a not-present page",
        setup=page(0), insn="mov eax, [0x300008]"),
    chk("not-present-user-write", "#PF(0x6) cr2=0x300000", "4.7", setup=page(0), insn="mov [0x300000], eax"),
    chk("not-present-supervisor-read", "#PF(0x0) cr2=0x300000", "4.7", cpl=0, setup=page(0),
        insn="mov eax, [0x300000]"),
    chk("fetch-from-not-present-page", "#PF(0x4)@* cr2=0x300000",
        "4.7: an instruction fetch from a not-present page (I/D stays 0 without PAE+NXE); the saved EIP "
        "is the target", setup=page(0), insn="call 0x300000"),
    chk("pde-us-0-overrides-pte", "#PF(0x5) cr2=0x400000",
        "4.6.1: the U/S bits of all levels must be 1 for user access",
        setup="mov dword [0xDF000], 0x310000 | 7\nmov dword [0xDD004], 0xDF000 | 3\ninvlpg [0x400000]",
        insn="mov eax, [0x400000]"),
    chk("rmw-on-not-present-page-faults-as-write", "#PF(0x6) cr2=0x300000",
        "4.7: a read-modify-write instruction loads with write intent: W = 1 already at the load",
        setup=page(0), insn="add [0x300000], eax"),
    chk("rmw-on-read-only-page-faults-as-write", "#PF(0x7) cr2=0x300000",
        "4.6.1 / 4.7: the load of ADD [m], r checks write access", setup=page(P | US),
        insn="add [0x300000], eax"),
    chk("accessed-bit-on-read", "ok ebx=0x20", "4.8: a read sets A in the PTE, not D",
        setup=page(P | RW | US), insn="mov eax, [0x300000]\nmov ebx, [0xDEC00]\nand ebx, 0x60", report="ebx"),
    chk("dirty-bit-on-write", "ok ebx=0x60", "4.8: a write sets A and D in the PTE",
        setup=page(P | RW | US), insn="mov [0x300000], eax\nmov ebx, [0xDEC00]\nand ebx, 0x60", report="ebx"),
    chk("dirty-bit-not-set-by-faulting-write", "ok ebx=0x0",
        "4.8: nothing is set when the access faults", cpl=0,
        setup=page(P | US, extra=WP_ON + "\nSET_IDT 14, {GATE(0x08, A(pf_pte), 0x8E, 0)}"),
        insn="mov [0x300000], eax", report="ebx"),
    chk("4mib-page", "ok eax=0xbbbb0000", "4.3 Table 4-4: with CR4.PSE, a PDE with PS = 1 maps 4 MiB",
        cr4=0x10, setup=f"{MARKERS}\nmov dword [0xDD004], 0x000000 | {P | RW | US | PS}\ninvlpg [0x400000]",
        insn="mov eax, [0x711000]", report="eax"),
    chk("4mib-page-reserved-bit", "#PF(0xd) cr2=0x700000",
        "4.3 Table 4-4 / 4.7: a reserved bit (21) in a 4-MiB PDE is #PF with RSVD | P (| U)",
        cr4=0x10, setup=f"mov dword [0xDD004], 0x200000 | {P | RW | US | PS}\ninvlpg [0x400000]",
        insn="mov eax, [0x700000]"),
    chk("invlpg-drops-the-whole-4mib-page", "ok eax=0xbbbb0000",
        "4.10.4.1: INVLPG invalidates the translation of the whole page containing the address -- for a "
        "4 MiB page every 4 KiB of it", cpl=0, cr4=0x10,
        setup=f"{MARKERS}\nmov dword [0xDD004], 0x400000 | {P | RW | PS}\n"
              "invlpg [0x710000]\ninvlpg [0x711000]\nmov eax, [0x710000]\nmov eax, [0x711000]\n"
              f"mov dword [0xDD004], 0x000000 | {P | RW | PS}",
        insn="invlpg [0x710000]\nmov eax, [0x711000]", report="eax"),
    chk("global-page-survives-cr3-reload", "ok eax=0xaaaa0000",
        "4.10.2.4 / 4.10.4.1: with CR4.PGE, MOV to CR3 keeps global translations", cpl=0, cr4=0x80,
        setup=page(P | RW | G) + "\nmov eax, [0x300000]\nmov dword [0xDEC00], 0x311000 | 0x103\n"
                                 "mov eax, cr3\nmov cr3, eax",
        insn="mov eax, [0x300000]", report="eax"),
    chk("non-global-page-flushed-by-cr3-reload", "ok eax=0xbbbb0000",
        "4.10.4.1: MOV to CR3 invalidates non-global translations", cpl=0, cr4=0x80,
        setup=page(P | RW) + "\nmov eax, [0x300000]\nmov dword [0xDEC00], 0x311000 | 3\n"
                             "mov eax, cr3\nmov cr3, eax",
        insn="mov eax, [0x300000]", report="eax"),
    chk("invlpg-drops-a-global-page", "ok eax=0xbbbb0000",
        "4.10.4.1: INVLPG invalidates global translations too", cpl=0, cr4=0x80,
        setup=page(P | RW | G) + "\nmov eax, [0x300000]\nmov dword [0xDEC00], 0x311000 | 0x103",
        insn="invlpg [0x300000]\nmov eax, [0x300000]", report="eax"),
    chk("page-fault-while-delivering-page-fault", "ok eax=0x0 ebx=0x58 ecx=0x300ffc",
        "6.15 Table 6-5: #PF while delivering #PF is #DF (here a task gate, so it can be shown); CR2 "
        "holds the second fault's address (the ring-0 stack)",
        setup=page(0) + "\nTASK tss_b, task_df_cr2, 0x08, 0x10, 0xDA000, 0x2\n"
                        "SET_IDT 8, {GATE(0x58, 0, 0x85, 0)}\nmov dword [tss + 4], 0x301000",
        body="xor eax, eax", insn="mov eax, [0x5000]\nmov eax, [0x300000]", report="eax ebx ecx"),
]

EXTRA = """
pf_pte:                             ; #PF handler: EBX = A/D bits of the PTE of 0x300000
        mov ebx, [0xDEC00]
        and ebx, 0x60
        add esp, 8
        int 0x30
task_df_cr2:                        ; the #DF task: EAX = error code, EBX = TR, ECX = CR2
        mov eax, [esp]
        str ebx
        mov ecx, cr2
        int 0x30
"""

for c in CHECKS:
    c.case.name = c.name


@pytest.mark.parametrize("engine", ["fast", "interp"])
@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_paging_check(check: Check, engine: str) -> None:
    got = check_results(CHECKS, engine, paging=True, extra=EXTRA)[check.name]
    assert fnmatch.fnmatchcase(got, check.expect), \
        f"{check.name}: expected {check.expect}, got {got} (SDM Vol.3A {check.sdm})"


# ---------------------------------------------------------------- PAE and NX (vmxlab snippets)

PAE_SETUP = """
        ; PAE paging (SDM Vol.3A 4.4): PDPT at 0x200000, PD at 0x201000 (2 MiB pages for 0-2 MiB),
        ; PT at 0x202000 for 2-4 MiB; the test page is linear 0x300000 -> PTE 0x100 of that PT
        mov edi, 0x200000
        mov ecx, 0x3000 / 4
        xor eax, eax
        rep stosd
        mov dword [0x200000], 0x201000 | 1
        mov dword [0x201000], 0x000000 | 0x87
        mov dword [0x201008], 0x202000 | 7
        mov ecx, 0x200
        mov edi, 0x202000
        mov eax, 0x200000 | 7
    .pt: mov [edi], eax
        add eax, 0x1000
        add edi, 8
        loop .pt
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, 0x200000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
"""


def _pae(body: str, engine: str):
    return run_snippet(PAE_SETUP + body, engine=engine)


def test_pae_nx_blocks_fetch(engine: str) -> None:
    """4.6.2: with EFER.NXE and XD = 1 an instruction fetch faults: #PF(P | I/D) = 0x11 at CPL 0."""
    r = _pae("""
        mov ecx, 0xC0000080
        rdmsr
        or eax, 0x800
        wrmsr
        mov byte [0x300000], 0xC3          ; ret
        mov dword [0x202000 + 0x100 * 8 + 4], 0x80000000
        invlpg [0x300000]
        lidt [idt]
        call 0x300000
        jmp __end
    pf: mov esi, [esp]                     ; error code
        jmp __end
        align 8
    idtt: times 14 dq 0
        dw pf, 0x10, 0x8E00, 0x10
    idt: dw 15 * 8 - 1
        dd idtt
    """, engine)
    cpu = r.backend.cpu
    assert cpu.regs[6] == 0x11
    assert cpu.cr2 == 0x300000


def test_pae_xd_reserved_without_nxe(engine: str) -> None:
    """4.4.2: with NXE = 0, bit 63 is reserved: #PF(P | RSVD) -- I/D stays 0 because NXE = 0 (4.7)."""
    r = _pae("""
        mov dword [0x202000 + 0x100 * 8 + 4], 0x80000000
        invlpg [0x300000]
        lidt [idt]
        mov eax, [0x300000]
        jmp __end
    pf: mov esi, [esp]
        jmp __end
        align 8
    idtt: times 14 dq 0
        dw pf, 0x10, 0x8E00, 0x10
    idt: dw 15 * 8 - 1
        dd idtt
    """, engine)
    assert r.backend.cpu.regs[6] == 0x9


def test_pdpte_reserved_bit_faults_mov_cr3(engine: str) -> None:
    """4.4.1: loading CR3 with PAE paging loads the PDPTEs; a reserved bit in a present one is #GP(0)
    and CR3 keeps its value."""
    r = _pae("""
        mov dword [0x200008], 0x203000 | 1 | 0x100   ; PDPTE 1 with reserved bit 8
        lidt [idt]
        mov eax, 0x200000
        mov cr3, eax
        mov esi, 0x1111
        jmp __end
    gp: mov esi, [esp]
        add esi, 0x4400
        jmp __end
        align 8
    idtt: times 13 dq 0
        dw gp, 0x10, 0x8E00, 0x10
    idt: dw 14 * 8 - 1
        dd idtt
    """, engine)
    assert r.backend.cpu.regs[6] == 0x4400
    assert r.backend.cpu.cr3 == 0x200000


def test_paging_without_pages_is_a_triple_fault(engine: str) -> None:
    """Turning paging on with an empty page directory: the next fetch faults, so does the delivery,
    then #DF: the guest stops with a triple-fault report."""
    r = run_snippet("""
        mov edi, 0x200000
        mov ecx, 1024
        xor eax, eax
        rep stosd
        mov eax, 0x200000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        nop
    """, engine=engine)
    assert r.stop.reason == StopReason.TRIPLE_FAULT
    assert r.backend.cpu.cr2 != 0
