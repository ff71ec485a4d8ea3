"""The task-state segment and hardware task switching (SDM Vol.3A chapter 7).

Two jobs:

* :func:`stack_for_privilege` reads SSn:ESPn for a stack switch to an inner ring
  (call gates, interrupt and trap gates; SDM Vol.3A 7.2.1).
* :func:`switch_tasks` performs a hardware task switch, initiated by JMP or CALL
  to a TSS or task gate (:func:`task_switch_far`), by an interrupt or exception
  through a task gate in the IDT (:func:`task_gate_event`), or by IRET with
  EFLAGS.NT = 1 (:func:`task_return`) -- SDM Vol.3A 7.3, with the busy/NT/link
  rules of Table 7-2 and the #TS/#NP/#SS conditions of Table 7-1.

Faults before the *commit point* (SDM Vol.3A 7.3, step 11: everything up to
loading TR) leave the old task untouched: every memory location the switch
will write is probed first, so a #PF happens before the first store.  Faults
after it "occur in the context of the new task": the switch completes, the
fault is parked in ``cpu.pending_fault`` and the run loop delivers it before
the new task's first instruction, with the new task's CS:EIP in the frame.

In VMX non-root operation a task switch always causes a VM exit (SDM Vol.3C
26.4.2; exit reason 9) after the checks on the gate and the new TSS descriptor:
``cpu.vmx.intercept(cpu, "task_switch", selector=, source=)`` with ``source`` in
the encoding of the exit qualification (SDM Vol.3C 28.2.1, Table 28-2).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from . import flags as fl
from .descriptors import (
    SYS_LDT,
    SYS_TASK_GATE,
    Descriptor,
    read_descriptor,
    set_accessed,
    set_tss_busy,
    table_limit_ok,
)
from .faults import CpuFault, Vector
from .segments import check_data_segment, commit_cs, commit_ss, stack_room
from .state import (
    AR_CONFORMING,
    AR_UNUSABLE,
    AR_WRITABLE,
    CR0_PG,
    CR0_TS,
    CS,
    DS,
    ES,
    ESP,
    FS,
    GS,
    SS,
)

if TYPE_CHECKING:
    from .core import CPU

M32 = 0xFFFFFFFF


class TaskSource(enum.IntEnum):
    """What started a task switch, numbered as in the VMX exit qualification (SDM Vol.3C Table 28-2)."""

    CALL = 0
    IRET = 1
    JMP = 2
    GATE = 3  # a task gate in the IDT: an interrupt or an exception (SDM calls this "INT" in Table 7-2)


# 32-bit TSS layout (SDM Vol.3A 7.2.1, Figure 7-2) and 16-bit TSS layout (Figure 7-10)
TSS32_MIN_LIMIT = 0x67
TSS16_MIN_LIMIT = 0x2B
TSS32_CR3 = 0x1C
TSS32_EIP = 0x20
TSS32_EFLAGS = 0x24
TSS32_GPR = 0x28  # EAX ECX EDX EBX ESP EBP ESI EDI, 4 bytes each
TSS32_SREG = 0x48  # ES CS SS DS FS GS, 4-byte slots
TSS32_LDT = 0x60
TSS16_IP = 0x0E
TSS16_FLAGS = 0x10
TSS16_GPR = 0x12  # AX CX DX BX SP BP SI DI
TSS16_SREG = 0x22  # ES CS SS DS
TSS16_LDT = 0x2A


def stack_for_privilege(cpu: CPU, cpl: int, ext: int = 0) -> tuple[int, int]:
    """SSn:ESPn from the current TSS (SDM Vol.3A 7.2.1 Figure 7-2; 16-bit TSS: Figure 7-11).

    Reading beyond the TSS limit is #TS(TSS selector + EXT) (SDM Vol.2 INT n,
    "IF (TSSstackAddress + 7) > current TSS limit"; for a 16-bit TSS the 4 bytes
    SPn:SSn must fit, as Bochs and QEMU check).
    """
    tr = cpu.tr
    ec = (tr.selector & 0xFFFC) | ext
    if tr.unusable:
        raise CpuFault(Vector.TS, ec, detail="no TSS loaded for the stack switch")
    if tr.ar & 0x8:  # 32-bit TSS (type 9 or B)
        off = 4 + cpl * 8
        if off + 7 > tr.limit:
            raise CpuFault(Vector.TS, ec, detail=f"TSS limit {tr.limit:#x} too small for SS{cpl}:ESP{cpl}")
        esp = cpu.lread(tr.base + off, 4, user=False)
        ss = cpu.lread(tr.base + off + 4, 2, user=False)
    else:
        off = 2 + cpl * 4
        if off + 3 > tr.limit:
            raise CpuFault(Vector.TS, ec, detail=f"TSS limit {tr.limit:#x} too small for SS{cpl}:SP{cpl}")
        esp = cpu.lread(tr.base + off, 2, user=False)
        ss = cpu.lread(tr.base + off + 2, 2, user=False)
    return ss, esp


# ---------------------------------------------------------------- the three ways in


def task_switch_far(cpu: CPU, selector: int, desc: Descriptor, source: str, next_ip: int) -> None:
    """JMP/CALL to a TSS descriptor or a task gate (SDM Vol.2 JMP/CALL "TASK-GATE", "TASK-STATE-SEGMENT").

    ``desc`` is the descriptor ``selector`` names; the saved EIP of the old task
    is ``next_ip`` (the instruction after the JMP/CALL).
    """
    how = TaskSource.JMP if source == "jmp" else TaskSource.CALL
    ec = selector & 0xFFFC
    rpl = selector & 3
    if desc.type == SYS_TASK_GATE:
        if desc.dpl < cpu.cpl or desc.dpl < rpl:
            raise CpuFault(Vector.GP, ec, detail=f"task gate {selector:#x}: DPL {desc.dpl} < CPL/RPL")
        if not desc.present:
            raise CpuFault(Vector.NP, ec, detail=f"task gate {selector:#x} not present")
        tss_sel = desc.gate_selector
        tss = _gdt_tss(cpu, tss_sel, Vector.GP, 0)
        if tss.tss_busy:
            raise CpuFault(Vector.GP, tss_sel & 0xFFFC, detail=f"task gate names busy TSS {tss_sel:#x}")
    else:
        tss_sel, tss = selector, desc
        if selector & 4:  # SDM Vol.3A 7.2.2: "TSS descriptors may only be placed in the GDT"
            raise CpuFault(Vector.GP, ec, detail=f"TSS selector {selector:#x} refers to the LDT")
        if desc.dpl < cpu.cpl or desc.dpl < rpl:
            raise CpuFault(Vector.GP, ec,
                           detail=f"TSS {selector:#x}: DPL {desc.dpl} < CPL {cpu.cpl}/RPL {rpl}")
    if not tss.present:
        raise CpuFault(Vector.NP, tss_sel & 0xFFFC, detail=f"TSS {tss_sel:#x} not present")
    switch_tasks(cpu, tss_sel, tss, how, next_ip)


def task_gate_event(cpu: CPU, gate: Descriptor, vector: int, error_code: int | None, kind: int,
                    return_eip: int) -> None:
    """An interrupt or exception through a task gate in the IDT (SDM Vol.2 INT n "TASK-GATE";
    Vol.3A 6.11.3).  The gate itself was checked by the caller (type, DPL for INT n, present)."""
    from .interrupts import EventKind

    ext = 0 if kind in (EventKind.SOFTWARE_INTERRUPT, EventKind.SOFTWARE_EXCEPTION) else 1
    tss_sel = gate.gate_selector
    tss = _gdt_tss(cpu, tss_sel, Vector.GP, ext)
    if tss.tss_busy:
        raise CpuFault(Vector.GP, (tss_sel & 0xFFFC) | ext, detail=f"task gate {vector} names a busy TSS")
    if not tss.present:
        raise CpuFault(Vector.NP, (tss_sel & 0xFFFC) | ext, detail=f"TSS {tss_sel:#x} not present")
    switch_tasks(cpu, tss_sel, tss, TaskSource.GATE, return_eip, error_code=error_code, ext=ext,
                 vector=vector)


def task_return(cpu: CPU, next_ip: int) -> None:
    """IRET with EFLAGS.NT = 1: return to the task named by the current TSS's previous-task link
    (SDM Vol.2 IRET "TASK-RETURN"; Vol.3A 7.4).  Problems with the link are #TS(link selector)."""
    tr = cpu.tr
    link = cpu.lread(tr.base, 2, user=False)
    ec = link & 0xFFFC
    if link & 4 or not table_limit_ok(cpu, link):
        raise CpuFault(Vector.TS, ec, detail=f"previous-task link {link:#x} is not a GDT selector")
    desc = read_descriptor(cpu, link, vector=Vector.TS)
    if not desc.is_tss or not desc.tss_busy:
        raise CpuFault(Vector.TS, ec, detail=f"previous-task link {link:#x} is not a busy TSS")
    if not desc.present:
        raise CpuFault(Vector.NP, ec, detail=f"previous task's TSS {link:#x} not present")
    switch_tasks(cpu, link, desc, TaskSource.IRET, next_ip)


def _gdt_tss(cpu: CPU, tss_sel: int, vector: int, ext: int) -> Descriptor:
    """The TSS descriptor a task gate names: in the GDT, of a TSS type (SDM Vol.2 JMP "TASK-GATE":
    "IF TSS segment selector local/global bit is set to local or index not within GDT limits
    THEN #GP(TSS selector)"; "IF descriptor is not a TSS segment THEN #GP(TSS selector)")."""
    ec = (tss_sel & 0xFFFC) | ext
    if tss_sel & 4 or not table_limit_ok(cpu, tss_sel):
        raise CpuFault(vector, ec, detail=f"task gate's TSS selector {tss_sel:#x} is not in the GDT")
    desc = read_descriptor(cpu, tss_sel, error_code=ec, vector=vector)
    if not desc.is_tss:
        raise CpuFault(vector, ec, detail=f"task gate's selector {tss_sel:#x} is not a TSS")
    return desc


# ---------------------------------------------------------------- the switch


def _probe(cpu: CPU, la: int, size: int, write: bool) -> None:
    """Translate every page of [la, la+size) for an implicit supervisor access, so the stores of the
    switch cannot fault halfway (SDM Vol.3A 7.3 step 5: "Check that the old TSS, new TSS, and all
    segment descriptors used in the task switch are paged into system memory")."""
    from .core import ACC_READ, ACC_WRITE

    acc = ACC_WRITE if write else ACC_READ
    first = la & M32
    last = (la + size - 1) & M32
    cpu.translate(first, acc)
    if (first >> 12) != (last >> 12):
        cpu.translate(last, acc)


def switch_tasks(cpu: CPU, new_sel: int, new: Descriptor, source: TaskSource, old_eip: int,
                 error_code: int | None = None, ext: int = 0, vector: int | None = None) -> None:
    """SWITCH-TASKS (SDM Vol.3A 7.3, steps 3-13)."""
    nested = source in (TaskSource.CALL, TaskSource.GATE)
    # step 3: the new TSS must be big enough for a task state
    new_min = TSS32_MIN_LIMIT if new.tss32 else TSS16_MIN_LIMIT
    if new.limit < new_min:
        raise CpuFault(Vector.TS, (new_sel & 0xFFFC) | ext,
                       detail=f"TSS {new_sel:#x} limit {new.limit:#x} < {new_min:#x}")
    if cpu.vmx is not None:  # SDM Vol.3C 26.4.2: task switches always exit, after the checks above
        info = {"selector": new_sel, "source": int(source)}
        if vector is not None:
            info["vector"] = vector
        if error_code is not None:
            info["error_code"] = error_code
        cpu.vmx.intercept(cpu, "task_switch", **info)
    old_sel = cpu.tr.selector
    old_base, old32 = cpu.tr.base, bool(cpu.tr.ar & 0x8)
    old_max = 0x5F if old32 else 0x29  # the last byte the save writes (GS slot / DS slot)
    if cpu.tr.limit < old_max:
        raise CpuFault(Vector.TS, (old_sel & 0xFFFC) | ext,
                       detail=f"current TSS limit {cpu.tr.limit:#x} too small")
    nbase = new.base

    # step 5: everything the switch reads or writes must be present (faults here change nothing)
    _probe(cpu, nbase, new_min + 1, write=False)
    if nested:
        _probe(cpu, nbase, 2, write=True)  # the previous-task link
    if old32:
        _probe(cpu, old_base + TSS32_EIP, TSS32_LDT - TSS32_EIP, write=True)
    else:
        _probe(cpu, old_base + TSS16_IP, TSS16_LDT - TSS16_IP, write=True)
    _probe(cpu, cpu.gdtr_base + (new_sel & 0xFFF8) + 5, 1, write=source != TaskSource.IRET)
    if source in (TaskSource.JMP, TaskSource.IRET):
        _probe(cpu, cpu.gdtr_base + (old_sel & 0xFFF8) + 5, 1, write=True)

    # step 6: JMP and IRET leave the old task: its busy bit is cleared
    if source in (TaskSource.JMP, TaskSource.IRET):
        set_tss_busy(cpu, old_sel, False)
    # step 7: IRET clears NT in the saved image (the old task is no longer nested)
    old_flags = cpu.get_eflags()
    if source == TaskSource.IRET:
        old_flags &= ~fl.NT
    # step 8: save the dynamic state of the old task
    regs = cpu.regs
    seg_sels = [s.selector for s in cpu.segs]  # ES CS SS DS FS GS
    if old32:
        w = cpu.lwrite
        w(old_base + TSS32_EIP, 4, old_eip, False)
        w(old_base + TSS32_EFLAGS, 4, old_flags, False)
        for i in range(8):
            w(old_base + TSS32_GPR + 4 * i, 4, regs[i], False)
        for i in range(6):
            w(old_base + TSS32_SREG + 4 * i, 2, seg_sels[i], False)
    else:
        w = cpu.lwrite
        w(old_base + TSS16_IP, 2, old_eip & 0xFFFF, False)
        w(old_base + TSS16_FLAGS, 2, old_flags & 0xFFFF, False)
        for i in range(8):
            w(old_base + TSS16_GPR + 2 * i, 2, regs[i] & 0xFFFF, False)
        for i in range(4):
            w(old_base + TSS16_SREG + 2 * i, 2, seg_sels[i], False)
    # step 9 (link half): CALL and events record where to return to
    if nested:
        cpu.lwrite(nbase, 2, old_sel, False)
    # load the new task's state image (SDM order: after the save, so a TSS that overlaps the
    # old one reads what was just stored)
    r = cpu.lread
    if new.tss32:
        new_cr3 = r(nbase + TSS32_CR3, 4, False)
        new_eip = r(nbase + TSS32_EIP, 4, False)
        new_flags = r(nbase + TSS32_EFLAGS, 4, False)
        new_regs = [r(nbase + TSS32_GPR + 4 * i, 4, False) for i in range(8)]
        new_sels = [r(nbase + TSS32_SREG + 4 * i, 2, False) for i in range(6)]
        ldt_sel = r(nbase + TSS32_LDT, 2, False)
    else:
        # SDM Vol.3A 7.6: loading from a 16-bit TSS modifies the upper halves of the registers
        # (this model sets them to FFFFH, as Bochs does); FS and GS become null
        new_cr3 = None
        new_eip = r(nbase + TSS16_IP, 2, False)
        new_flags = r(nbase + TSS16_FLAGS, 2, False)
        new_regs = [0xFFFF0000 | r(nbase + TSS16_GPR + 2 * i, 2, False) for i in range(8)]
        new_sels = [r(nbase + TSS16_SREG + 2 * i, 2, False) for i in range(4)] + [0, 0]
        ldt_sel = r(nbase + TSS16_LDT, 2, False)
    # step 10: CALL, JMP and events mark the new task busy (IRET returns to a task that still is)
    if source != TaskSource.IRET:
        set_tss_busy(cpu, new_sel, True)

    # ---- commit point (step 11): the old task is gone; from here faults belong to the new task
    cpu.tr.load(new_sel, new.base, new.limit, new.ar | 0x2)
    cpu.cr0 |= CR0_TS  # step 12 (SDM Vol.3A 7.3): the x87/SSE state now belongs to the old task
    cpu.dr[7] &= ~0x155  # local breakpoint enables L0-L3 and LE are per task (SDM Vol.3A 17.2.4)
    if nested:
        new_flags |= fl.NT
    try:
        _load_new_task(cpu, new_eip, new_flags, new_regs, new_sels, ldt_sel, new_cr3, ext)
        if error_code is not None:
            # SDM Vol.2 INT n "TASK-GATE": push the error code on the new task's stack
            size = 4 if new.tss32 else 2
            ss = cpu.segs[SS]
            if not stack_room(ss.ar, ss.limit, regs[ESP], size):
                raise CpuFault(Vector.SS, ext, detail="new task's stack has no room for the error code")
            cpu.push(error_code, size)
        if cpu.eip > cpu.segs[CS].hi:
            raise CpuFault(Vector.GP, ext, detail=f"new task's EIP {cpu.eip:#x} beyond its CS limit")
    except CpuFault as f:
        cpu.pending_fault = f
        cpu.event_pending = True
    if cpu.trace is not None and hasattr(cpu.trace, "task_switch"):
        cpu.trace.task_switch(cpu, old_sel, new_sel, source.name.lower())


def _load_new_task(cpu: CPU, eip: int, eflags: int, regs: list[int], sels: list[int], ldt_sel: int,
                   cr3: int | None, ext: int) -> None:
    """Steps 12-13: registers, EFLAGS, CR3 and LDTR, then the segment registers with the checks of
    SDM Vol.3A Table 7-1.  Selectors are loaded first with unusable caches, so a fault shows the
    new task's selectors (as hardware and Bochs do).  ``ext`` is the EXT bit of the error codes:
    1 when the switch delivers an external event or an exception through a task gate (SDM 6.13)."""
    from .ops.system import write_cr

    cpu.regs[:] = [v & M32 for v in regs]
    cpu.eip = eip & M32
    # EFLAGS.VM in a task image would start a virtual-8086 task: not modelled (docs/protection.md)
    cpu.set_eflags((eflags & ~fl.VM) | fl.RESERVED1)
    for i, sel in enumerate(sels):
        cpu.segs[i].load(sel, 0, 0, AR_UNUSABLE)
    cpu.ldtr.load(ldt_sel, 0, 0, AR_UNUSABLE)
    new_cpl = sels[CS] & 3
    # until SS is loaded there is no usable stack: with CPL 3 a fault here is delivered with a
    # stack switch to the new TSS's ring-0 stack (what Bochs does, "to force a privilege level
    # change and stack switch if SS is not properly loaded")
    cpu.cpl = 3
    cpu.update_mode()
    if cr3 is not None and cpu.cr0 & CR0_PG:
        try:
            write_cr(cpu, 3, cr3)  # flushes non-global TLB entries; PAE reloads the PDPTEs
        except CpuFault:
            cpu.pdptes = [0, 0, 0, 0]
            raise CpuFault(Vector.TS, ext, detail=f"new task's CR3 {cr3:#x} has invalid PDPTEs") from None
    # LDTR (Table 7-1: #TS(LDT selector) for TI=1, outside the GDT, wrong type, not present)
    if ldt_sel & 0xFFFC:
        ec = (ldt_sel & 0xFFFC) | ext
        if ldt_sel & 4 or not table_limit_ok(cpu, ldt_sel):
            raise CpuFault(Vector.TS, ec, detail=f"new task's LDT selector {ldt_sel:#x} is not in the GDT")
        ldt = read_descriptor(cpu, ldt_sel, error_code=ec, vector=Vector.TS)
        if ldt.s or ldt.type != SYS_LDT or not ldt.present:
            raise CpuFault(Vector.TS, ec, detail=f"new task's LDT {ldt_sel:#x} is not a present LDT")
        cpu.ldtr.load(ldt_sel, ldt.base, ldt.limit, ldt.ar)
    # SS: writable data with DPL = CS.RPL = SS.RPL, present (#SS)
    ss_sel = sels[SS]
    ec = (ss_sel & 0xFFFC) | ext
    if ss_sel & 0xFFFC == 0:
        raise CpuFault(Vector.TS, ext, detail="new task's SS is null")
    ss = read_descriptor(cpu, ss_sel, error_code=ec, vector=Vector.TS)
    if not ss.is_data or not ss.ar & AR_WRITABLE:
        raise CpuFault(Vector.TS, ec, detail=f"new task's SS {ss_sel:#x} is not writable data")
    if not ss.present:
        raise CpuFault(Vector.SS, ec, detail=f"new task's SS {ss_sel:#x} not present")
    if ss.dpl != new_cpl or ss.dpl != ss_sel & 3:
        raise CpuFault(Vector.TS, ec, detail=f"new task's SS {ss_sel:#x}: DPL {ss.dpl} vs CPL {new_cpl}")
    commit_ss(cpu, ss_sel, ss)
    cpu.cpl = new_cpl
    cpu.update_mode()  # the stack size (SS.B) is part of the mode: a fault from here on pushes on it
    # DS ES FS GS: the MOV checks with #TS for type/privilege, #NP for not present
    for sreg in (DS, ES, FS, GS):
        sel = sels[sreg]
        desc = check_data_segment(cpu, sel, cpl=new_cpl, vector=Vector.TS, ext=ext)
        if desc is not None:
            set_accessed(cpu, sel, desc)
            cpu.segs[sreg].load(sel, desc.base, desc.limit, desc.ar | 1)
    cpu.update_mode()
    # CS: code, DPL = RPL (non-conforming) or DPL <= RPL (conforming), present (#NP)
    cs_sel = sels[CS]
    ec = (cs_sel & 0xFFFC) | ext
    if cs_sel & 0xFFFC == 0:
        raise CpuFault(Vector.TS, ext, detail="new task's CS is null")
    cs = read_descriptor(cpu, cs_sel, error_code=ec, vector=Vector.TS)
    if not cs.is_code:
        raise CpuFault(Vector.TS, ec, detail=f"new task's CS {cs_sel:#x} is not code")
    if (cs.ar & AR_CONFORMING and cs.dpl > new_cpl) or (not cs.ar & AR_CONFORMING and cs.dpl != new_cpl):
        raise CpuFault(Vector.TS, ec, detail=f"new task's CS {cs_sel:#x}: DPL {cs.dpl} vs RPL {new_cpl}")
    if not cs.present:
        raise CpuFault(Vector.NP, ec, detail=f"new task's CS {cs_sel:#x} not present")
    commit_cs(cpu, cs_sel, cs, new_cpl)


__all__ = ["TaskSource", "stack_for_privilege", "switch_tasks", "task_gate_event", "task_return",
           "task_switch_far"]
