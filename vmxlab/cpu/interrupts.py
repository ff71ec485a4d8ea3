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
from .segments import check_ss, commit_cs, commit_ss
from .state import AR_CONFORMING, CS, ESP, SS

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
    if not cpu.pe:
        _deliver_real(cpu, vector, return_eip)
    else:
        _deliver_protected(cpu, vector, error_code, kind, return_eip)


def _deliver_real(cpu: CPU, vector: int, return_eip: int) -> None:
    """Real-mode delivery through the IVT (SDM Vol.3A 21.1.4, Vol.2 INT n "REAL-ADDRESS-MODE")."""
    if vector * 4 + 3 > cpu.idtr_limit:
        raise CpuFault(Vector.GP, 0, detail=f"vector {vector} beyond IVT limit {cpu.idtr_limit:#x}")
    entry = cpu.lread(cpu.idtr_base + vector * 4, 4, user=False)
    flags = cpu.get_eflags()
    cpu.push(flags & 0xFFFF, 2)
    cpu.push(cpu.segs[CS].selector, 2)
    cpu.push(return_eip & 0xFFFF, 2)
    cpu.eflags_sys &= ~(fl.IF | fl.TF | fl.AC | fl.RF)
    cpu.load_real_segment(CS, entry >> 16)
    cpu.eip = entry & 0xFFFF
    cpu.update_mode()


def read_gate(cpu: CPU, vector: int, kind: EventKind) -> Descriptor:
    """Fetch and check the IDT gate for ``vector`` (SDM Vol.2 INT n, "PROTECTED-MODE")."""
    ext = _ext(kind)
    idt_ec = vector * 8 + 2 + ext
    if vector * 8 + 7 > cpu.idtr_limit:
        raise CpuFault(Vector.GP, idt_ec, detail=f"vector {vector} beyond IDT limit {cpu.idtr_limit:#x}")
    gate = Descriptor.decode(cpu.lread(cpu.idtr_base + vector * 8, 8, user=False))
    if gate.s or gate.type not in (SYS_TASK_GATE, SYS_INT_GATE16, SYS_TRAP_GATE16, SYS_INT_GATE32, SYS_TRAP_GATE32):
        raise CpuFault(Vector.GP, idt_ec, detail=f"IDT entry {vector} is not a gate (type {gate.type:#x})")
    # INT n / INT3 / INTO check the gate DPL; INT1 and hardware events do not (SDM 6.12.1.1)
    if kind in (EventKind.SOFTWARE_INTERRUPT, EventKind.SOFTWARE_EXCEPTION) and gate.dpl < cpu.cpl:
        raise CpuFault(Vector.GP, idt_ec, detail=f"INT {vector:#x}: gate DPL {gate.dpl} < CPL {cpu.cpl}")
    if not gate.present:
        raise CpuFault(Vector.NP, idt_ec, detail=f"IDT gate {vector} not present")
    return gate


def _deliver_protected(cpu: CPU, vector: int, error_code: int | None, kind: EventKind, return_eip: int) -> None:
    gate = read_gate(cpu, vector, kind)
    ext = _ext(kind)
    if gate.type == SYS_TASK_GATE:
        from .tasks import task_gate_event

        task_gate_event(cpu, gate, vector, error_code, kind, return_eip)
        return
    selector = gate.gate_selector
    if selector & 0xFFFC == 0:
        raise CpuFault(Vector.GP, ext, detail=f"IDT gate {vector} has a null code selector")
    desc = read_descriptor(cpu, selector, error_code=(selector & 0xFFFC) | ext)
    ec = (selector & 0xFFFC) | ext
    if not desc.is_code or desc.dpl > cpu.cpl:
        raise CpuFault(Vector.GP, ec, detail=f"IDT gate {vector}: {selector:#x} is not code with DPL <= CPL")
    if not desc.present:
        raise CpuFault(Vector.NP, ec, detail=f"handler code segment {selector:#x} not present")
    gate32 = bool(gate.type & 0x8)
    size = 4 if gate32 else 2
    offset = gate.gate_offset
    if offset > desc.limit:
        raise CpuFault(Vector.GP, ext, detail=f"handler offset {offset:#x} beyond CS limit")
    old_flags = cpu.get_eflags()
    old_cs = cpu.segs[CS].selector
    if not desc.ar & AR_CONFORMING and desc.dpl < cpu.cpl:
        _inter_privilege(cpu, desc.dpl, size, old_flags, old_cs, return_eip, error_code, ext)
    else:
        frame = [old_flags, old_cs, return_eip]
        if error_code is not None:
            frame.append(error_code)
        _push_checked(cpu, frame, size)
    commit_cs(cpu, selector, desc, desc.dpl if not desc.ar & AR_CONFORMING else cpu.cpl)
    cpu.eip = offset
    # SDM Vol.3A 6.12.1.3: clear TF, VM, RF, NT; an interrupt gate also clears IF
    cpu.eflags_sys &= ~(fl.TF | fl.VM | fl.RF | fl.NT)
    if gate.type in (SYS_INT_GATE16, SYS_INT_GATE32):
        cpu.eflags_sys &= ~fl.IF


def _push_checked(cpu: CPU, values: list[int], size: int) -> None:
    """Push a frame on the current stack; a fault leaves ESP unchanged (SDM: #SS before any push)."""
    esp = cpu.regs[ESP]
    try:
        for v in values:
            cpu.push(v & (0xFFFFFFFF if size == 4 else 0xFFFF), size)
    except CpuFault:
        cpu.regs[ESP] = esp
        raise


def _inter_privilege(cpu: CPU, new_cpl: int, size: int, old_flags: int, old_cs: int, return_eip: int,
                     error_code: int | None, ext: int) -> None:
    """Switch to the inner stack from the TSS and push SS, ESP, EFLAGS, CS, EIP[, error] (SDM 6.12.1)."""
    from .tasks import stack_for_privilege

    new_ss, new_esp = stack_for_privilege(cpu, new_cpl, ext)
    ss_desc = check_ss(cpu, new_ss, new_cpl, vector=Vector.TS)
    old_ss = cpu.segs[SS].selector
    old_esp = cpu.regs[ESP]
    saved_ss = cpu.segs[SS].copy()
    saved_cpl = cpu.cpl
    frame = [old_ss, old_esp, old_flags, old_cs, return_eip]
    if error_code is not None:
        frame.append(error_code)
    # Build the frame on the new stack at the new privilege; undo everything if a push faults.
    commit_ss(cpu, new_ss, ss_desc)
    cpu.regs[ESP] = new_esp
    cpu.cpl = new_cpl
    cpu.update_mode()
    try:
        _push_checked(cpu, frame, size)
    except CpuFault as f:
        cpu.segs[SS].load(*saved_ss.as_tuple())
        cpu.regs[ESP] = old_esp
        cpu.cpl = saved_cpl
        cpu.update_mode()
        if f.vector == Vector.PF:
            raise
        raise CpuFault(Vector.SS, (new_ss & 0xFFFC) | ext, detail="inner stack too small for the frame") from f
