"""Exception and interrupt delivery (SDM Vol.3A chapter 6; real mode: Vol.3A 21.1.4).

:func:`deliver` pushes the frame and transfers control to the handler named
by the IVT (real mode) or the IDT gate (protected mode), including the stack
switch to an inner ring through the TSS (SDM Vol.3A 6.12.1).  Faults raised
*during* delivery propagate to the engine, which applies the double-fault
rules of SDM Vol.3A 6.15.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from . import flags as fl
from .descriptors import (
    SYS_INT_GATE16,
    SYS_INT_GATE32,
    SYS_TASK_GATE,
    SYS_TRAP_GATE16,
    SYS_TRAP_GATE32,
    Descriptor,
    read_descriptor,
)
from .faults import CpuFault, Vector
from .segments import check_ss, commit_cs, commit_ss, stack_room
from .state import AR_CONFORMING, AR_DB, CS, ESP, SS

if TYPE_CHECKING:
    from .core import CPU


class EventKind(enum.IntEnum):
    """What raised the event; matches the VMX interruption-type field (SDM Vol.3C 25.8.3)."""

    EXTERNAL = 0  # external interrupt (INTR)
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4  # INT n
    PRIV_SOFTWARE_EXCEPTION = 5  # INT1 (ICEBP)
    SOFTWARE_EXCEPTION = 6  # INT3, INTO


def _ext(kind: EventKind) -> int:
    """The EXT bit of error codes: 1 unless the event is a software interrupt/exception (SDM 6.13)."""
    return 0 if kind in (EventKind.SOFTWARE_INTERRUPT, EventKind.SOFTWARE_EXCEPTION) else 1


def deliver(cpu: CPU, vector: int, error_code: int | None, kind: EventKind, return_eip: int) -> None:
    """Deliver an event: push the frame, load CS:EIP of the handler.

    ``return_eip`` is the EIP saved in the frame: the faulting instruction for
    faults, the next instruction for traps and INT n.
    """
    if cpu.trace is not None:
        cpu.trace.event_delivery(cpu, vector, error_code, kind, return_eip)
    cpu.halted = False
    # the event being delivered, for a VM exit during its delivery (VMX IDT-vectoring information,
    # SDM Vol.3C 28.2.4); it stays set if delivery faults, and is cleared once delivery completed
    cpu.delivering = (vector, error_code, kind, return_eip)
    if not cpu.pe:
        _deliver_real(cpu, vector, return_eip)
    else:
        _deliver_protected(cpu, vector, error_code, kind, return_eip)
    cpu.delivering = None


def _deliver_real(cpu: CPU, vector: int, return_eip: int) -> None:
    """Real-mode delivery through the IVT (SDM Vol.3A 21.1.4, Vol.2 INT n "REAL-ADDRESS-MODE")."""
    if vector * 4 + 3 > cpu.idtr_limit:
        raise CpuFault(Vector.GP, 0, detail=f"vector {vector} beyond IVT limit {cpu.idtr_limit:#x}")
    entry = cpu.lread(cpu.idtr_base + vector * 4, 4, user=False)
    ss = cpu.segs[SS]
    if not stack_room(ss.ar, ss.limit, cpu.regs[ESP], 6):
        raise CpuFault(Vector.SS, 0, detail="stack has no room for the 6-byte real-mode frame")
    flags = cpu.get_eflags()
    _push_checked(cpu, [flags & 0xFFFF, cpu.segs[CS].selector, return_eip & 0xFFFF], 2)
    cpu.eflags_sys &= ~(fl.IF | fl.TF | fl.AC | fl.RF)
    cpu.load_real_segment(CS, entry >> 16)
    cpu.eip = entry & 0xFFFF
    cpu.update_mode()


IDT_GATE_TYPES = (SYS_TASK_GATE, SYS_INT_GATE16, SYS_TRAP_GATE16, SYS_INT_GATE32, SYS_TRAP_GATE32)


def read_gate(cpu: CPU, vector: int, kind: EventKind) -> Descriptor:
    """Fetch and check the IDT gate for ``vector`` (SDM Vol.2 INT n, "PROTECTED-MODE")."""
    ext = _ext(kind)
    idt_ec = vector * 8 + 2 + ext
    if vector * 8 + 7 > cpu.idtr_limit:
        raise CpuFault(Vector.GP, idt_ec, detail=f"vector {vector} beyond IDT limit {cpu.idtr_limit:#x}")
    gate = Descriptor.decode(cpu.lread(cpu.idtr_base + vector * 8, 8, user=False))
    if gate.s or gate.type not in IDT_GATE_TYPES:
        raise CpuFault(Vector.GP, idt_ec, detail=f"IDT entry {vector} is not a gate (type {gate.type:#x})")
    # INT n / INT3 / INTO check the gate DPL; INT1 and hardware events do not (SDM 6.12.1.1)
    if kind in (EventKind.SOFTWARE_INTERRUPT, EventKind.SOFTWARE_EXCEPTION) and gate.dpl < cpu.cpl:
        raise CpuFault(Vector.GP, idt_ec, detail=f"INT {vector:#x}: gate DPL {gate.dpl} < CPL {cpu.cpl}")
    if not gate.present:
        raise CpuFault(Vector.NP, idt_ec, detail=f"IDT gate {vector} not present")
    return gate


#: exceptions of the fault class other than #DB (SDM Vol.3A 6.5, Table 6-1 "Type" column): the
#: processor sets RF in the EFLAGS image it pushes for them (SDM Vol.3A 18.3.1.1), so that IRET back
#: to the faulting instruction does not re-trigger an instruction breakpoint on it
FAULTS_SETTING_RF = frozenset({Vector.DE, Vector.BR, Vector.UD, Vector.NM, Vector.TS, Vector.NP, Vector.SS,
                               Vector.GP, Vector.PF, Vector.MF, Vector.AC, Vector.XM, Vector.VE})


def _deliver_protected(cpu: CPU, vector: int, error_code: int | None, kind: EventKind,
                       return_eip: int) -> None:
    """SDM Vol.2 INT n "PROTECTED-MODE" and Vol.3A 6.12.1: gate, handler code segment, then the
    stack (inner ring from the TSS, or the current one), every check before anything is pushed."""
    gate = read_gate(cpu, vector, kind)
    ext = _ext(kind)
    if gate.type == SYS_TASK_GATE:
        from .tasks import task_gate_event

        task_gate_event(cpu, gate, vector, error_code, kind, return_eip)
        return
    selector = gate.gate_selector
    if selector & 0xFFFC == 0:
        raise CpuFault(Vector.GP, ext, detail=f"IDT gate {vector} has a null code selector")
    ec = (selector & 0xFFFC) | ext
    desc = read_descriptor(cpu, selector, error_code=ec)
    if not desc.is_code or desc.dpl > cpu.cpl:
        raise CpuFault(Vector.GP, ec, detail=f"IDT gate {vector}: {selector:#x} is not code with DPL <= CPL")
    if not desc.present:
        raise CpuFault(Vector.NP, ec, detail=f"handler code segment {selector:#x} not present")
    size = 4 if gate.type & 0x8 else 2
    offset = gate.gate_offset
    old_flags = cpu.get_eflags()
    if kind == EventKind.HARDWARE_EXCEPTION and vector in FAULTS_SETTING_RF:
        old_flags |= fl.RF
    old_cs = cpu.segs[CS].selector
    frame = [old_flags, old_cs, return_eip]
    if error_code is not None:
        frame.append(error_code)
    if not desc.ar & AR_CONFORMING and desc.dpl < cpu.cpl:
        _inter_privilege(cpu, desc, offset, size, frame, ext)
    else:
        # INTRA-PRIVILEGE-LEVEL-INTERRUPT: "IF current stack does not have room ... #SS(EXT)"
        ss = cpu.segs[SS]
        if not stack_room(ss.ar, ss.limit, cpu.regs[ESP], len(frame) * size):
            raise CpuFault(Vector.SS, ext, detail="stack has no room for the interrupt frame")
        if offset > desc.limit:
            raise CpuFault(Vector.GP, ext, detail=f"handler offset {offset:#x} beyond CS limit")
        _push_checked(cpu, frame, size)
    commit_cs(cpu, selector, desc, desc.dpl if not desc.ar & AR_CONFORMING else cpu.cpl)
    cpu.eip = offset
    # SDM Vol.3A 6.12.1.3: clear TF, VM, RF, NT; an interrupt gate also clears IF
    cpu.eflags_sys &= ~(fl.TF | fl.VM | fl.RF | fl.NT)
    if gate.type in (SYS_INT_GATE16, SYS_INT_GATE32):
        cpu.eflags_sys &= ~fl.IF


def _push_checked(cpu: CPU, values: list[int], size: int) -> None:
    """Push a frame on the current stack; a fault (#PF) leaves ESP unchanged."""
    esp = cpu.regs[ESP]
    try:
        for v in values:
            cpu.push(v & (0xFFFFFFFF if size == 4 else 0xFFFF), size)
    except CpuFault:
        cpu.regs[ESP] = esp
        raise


def _inter_privilege(cpu: CPU, desc: Descriptor, offset: int, size: int, frame: list[int], ext: int) -> None:
    """INTER-PRIVILEGE-LEVEL-INTERRUPT (SDM Vol.2 INT n; Vol.3A 6.12.1): SS:ESP for the handler's
    ring from the TSS, checked (#TS/#SS with EXT), then SS, ESP, EFLAGS, CS, EIP[, error code]
    pushed on the new stack.  A #PF while pushing undoes the stack switch (the fault is then
    reported in the interrupted context, as hardware does)."""
    from .tasks import stack_for_privilege

    new_cpl = desc.dpl
    new_ss, new_esp = stack_for_privilege(cpu, new_cpl, ext)
    ss_desc = check_ss(cpu, new_ss, new_cpl, vector=Vector.TS, ext=ext)
    full = [cpu.segs[SS].selector, cpu.regs[ESP], *frame]
    if not stack_room(ss_desc.ar, ss_desc.limit, new_esp, len(full) * size):
        raise CpuFault(Vector.SS, (new_ss & 0xFFFC) | ext, detail="inner stack has no room for the frame")
    if offset > desc.limit:
        raise CpuFault(Vector.GP, ext, detail=f"handler offset {offset:#x} beyond CS limit")
    saved_ss = cpu.segs[SS].copy()
    saved_esp = cpu.regs[ESP]
    saved_cpl = cpu.cpl
    commit_ss(cpu, new_ss, ss_desc)
    if ss_desc.ar & AR_DB:
        cpu.regs[ESP] = new_esp
    else:  # a 16-bit stack: only SP is loaded (Bochs "SP = ESP_for_cpl_x; // leave upper 16bits")
        cpu.regs[ESP] = (saved_esp & 0xFFFF0000) | (new_esp & 0xFFFF)
    cpu.cpl = new_cpl
    cpu.update_mode()
    try:
        _push_checked(cpu, full, size)
    except CpuFault:
        cpu.segs[SS].load(*saved_ss.as_tuple())
        cpu.regs[ESP] = saved_esp
        cpu.cpl = saved_cpl
        cpu.update_mode()
        raise
