"""Far control transfers: JMP/CALL far, RET far, IRET, in real and protected mode.

Protected mode follows the pseudocode of SDM Vol.2 JMP, CALL, RET and IRET and
the rules of SDM Vol.3A 5.8 (privilege levels of control transfers, call
gates, stack switching) and 6.14 (IRET).  Every check happens before any
register changes, so a fault leaves the caller's state intact.

Not modelled: returns to virtual-8086 mode (IRET with VM=1 raises #GP(0), see
README) and hardware task switches through JMP/CALL/IRET (see tasks.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import flags as fl
from .descriptors import (
    SYS_CALL_GATE16,
    SYS_CALL_GATE32,
    SYS_TASK_GATE,
    SYS_TSS16_AVAIL,
    SYS_TSS32_AVAIL,
    Descriptor,
    read_descriptor,
)
from .faults import CpuFault, Vector
from .segments import (
    check_code_target,
    check_ss,
    commit_cs,
    commit_ss,
    null_unusable_data_segments,
    stack_room,
)
from .state import AR_CONFORMING, CS, ESP, SS

if TYPE_CHECKING:
    from .core import CPU

M32 = 0xFFFFFFFF


def _gp(selector: int, detail: str) -> CpuFault:
    return CpuFault(Vector.GP, selector & 0xFFFC, detail=detail)


def _check_offset(desc: Descriptor, offset: int) -> None:
    if offset > desc.limit:
        raise CpuFault(Vector.GP, 0, detail=f"offset {offset:#x} beyond code segment limit {desc.limit:#x}")


# ---------------------------------------------------------------- real mode


def _real_far(c: CPU, selector: int, offset: int, size: int) -> None:
    """Real mode: CS.selector = sel, CS.base = sel << 4, limit and attributes kept (SDM Vol.3A 21.1.1)."""
    if size == 2:
        offset &= 0xFFFF
    if offset > c.segs[CS].limit:
        raise CpuFault(Vector.GP, 0, detail=f"far target {offset:#x} beyond CS limit")
    c.load_real_segment(CS, selector)
    c.eip = offset
    c.update_mode()


# ---------------------------------------------------------------- JMP / CALL


def far_jmp(c: CPU, selector: int, offset: int, size: int, next_ip: int) -> None:
    """JMP ptr16:16/32 or m16:16/32 (SDM Vol.2 JMP)."""
    if not c.pe:
        _real_far(c, selector, offset, size)
        return
    if size == 2:
        offset &= 0xFFFF
    desc = _far_target(c, selector)
    if desc.s:
        check_code_target(c, selector, desc)
        _check_offset(desc, offset)
        commit_cs(c, selector, desc, c.cpl)
        c.eip = offset
        return
    if desc.type in (SYS_CALL_GATE16, SYS_CALL_GATE32):
        # SDM Vol.2 JMP "CALL-GATE": a JMP never changes privilege, so the target must be
        # conforming with DPL <= CPL or non-conforming with DPL = CPL -- checked before present
        code_sel, code, target = _through_call_gate(c, selector, desc, jmp=True)
        _check_offset(code, target)
        commit_cs(c, code_sel, code, c.cpl)
        c.eip = target
        return
    if desc.type in (SYS_TASK_GATE, SYS_TSS16_AVAIL, SYS_TSS32_AVAIL):
        from .tasks import task_switch_far

        task_switch_far(c, selector, desc, "jmp", next_ip)
        return
    raise _gp(selector, f"JMP to descriptor type {desc.type:#x}")


def far_call(c: CPU, selector: int, offset: int, size: int, next_ip: int) -> None:
    """CALL ptr16:16/32 or m16:16/32 (SDM Vol.2 CALL), including call gates with a stack switch."""
    if not c.pe:
        if size == 2:
            offset &= 0xFFFF
        if offset > c.segs[CS].limit:
            raise CpuFault(Vector.GP, 0, detail=f"far call target {offset:#x} beyond CS limit")
        _push_all(c, [c.segs[CS].selector, next_ip], size)
        _real_far(c, selector, offset, size)
        return
    if size == 2:
        offset &= 0xFFFF
    desc = _far_target(c, selector)
    if desc.s:
        check_code_target(c, selector, desc)
        _check_room(c, 2 * size)  # SDM Vol.2 CALL: #SS(0) comes before the offset's #GP(0)
        _check_offset(desc, offset)
        _push_all(c, [c.segs[CS].selector, next_ip], size)
        commit_cs(c, selector, desc, c.cpl)
        c.eip = offset
        return
    if desc.type in (SYS_CALL_GATE16, SYS_CALL_GATE32):
        _call_gate(c, selector, desc, next_ip)
        return
    if desc.type in (SYS_TASK_GATE, SYS_TSS16_AVAIL, SYS_TSS32_AVAIL):
        from .tasks import task_switch_far

        task_switch_far(c, selector, desc, "call", next_ip)
        return
    raise _gp(selector, f"CALL to descriptor type {desc.type:#x}")


def _far_target(c: CPU, selector: int) -> Descriptor:
    if selector & 0xFFFC == 0:
        raise CpuFault(Vector.GP, 0, detail="far transfer to a null selector")
    desc = read_descriptor(c, selector)
    if desc.s and not desc.is_code:
        raise _gp(selector, f"far transfer to data segment {selector:#x}")
    return desc


def _through_call_gate(c: CPU, gate_sel: int, gate: Descriptor,
                       jmp: bool = False) -> tuple[int, Descriptor, int]:
    """Gate checks shared by JMP and CALL (SDM Vol.3A 5.8.4, Table 5-1; Vol.2 JMP/CALL "CALL-GATE")."""
    if gate.dpl < c.cpl or gate.dpl < (gate_sel & 3):
        raise _gp(gate_sel, f"call gate {gate_sel:#x}: DPL {gate.dpl} < max(CPL {c.cpl}, RPL {gate_sel & 3})")
    if not gate.present:
        raise CpuFault(Vector.NP, gate_sel & 0xFFFC, detail=f"call gate {gate_sel:#x} not present")
    code_sel = gate.gate_selector
    if code_sel & 0xFFFC == 0:
        raise CpuFault(Vector.GP, 0, detail="call gate with a null code selector")
    code = read_descriptor(c, code_sel)
    if not code.is_code or code.dpl > c.cpl:
        raise _gp(code_sel, f"call gate target {code_sel:#x} is not code with DPL <= CPL")
    if jmp and not code.ar & AR_CONFORMING and code.dpl != c.cpl:
        raise _gp(code_sel, f"JMP through call gate to non-conforming code {code_sel:#x} with DPL {code.dpl} "
                            f"!= CPL {c.cpl} (only CALL may change privilege)")
    if not code.present:
        raise CpuFault(Vector.NP, code_sel & 0xFFFC, detail=f"code segment {code_sel:#x} not present")
    return code_sel, code, gate.gate_offset


def _check_room(c: CPU, nbytes: int, error_code: int = 0) -> None:
    """#SS(error_code) unless the current stack can take ``nbytes`` more (checked before any push)."""
    ss = c.segs[SS]
    if not stack_room(ss.ar, ss.limit, c.regs[ESP], nbytes):
        raise CpuFault(Vector.SS, error_code, detail=f"stack has no room for {nbytes} bytes")


def _call_gate(c: CPU, gate_sel: int, gate: Descriptor, next_ip: int) -> None:
    """CALL through a call gate (SDM Vol.2 CALL "CALL-GATE", "MORE-PRIVILEGE", "SAME-PRIVILEGE";
    SDM Vol.3A 5.8.5 stack switching and Figure 5-13 parameter copy)."""
    code_sel, code, target = _through_call_gate(c, gate_sel, gate)
    size = 4 if gate.type == SYS_CALL_GATE32 else 2
    old_cs = c.segs[CS].selector
    if code.ar & AR_CONFORMING or code.dpl == c.cpl:
        _check_room(c, 2 * size)
        _check_offset(code, target)
        _push_all(c, [old_cs, next_ip], size)
        commit_cs(c, code_sel, code, c.cpl)
        c.eip = target
        return
    # more privileged: switch to the inner stack from the TSS and copy parameters (SDM Vol.3A 5.8.5)
    from .tasks import stack_for_privilege

    new_cpl = code.dpl
    new_ss, new_esp = stack_for_privilege(c, new_cpl)
    ss_desc = check_ss(c, new_ss, new_cpl, vector=Vector.TS)
    count = gate.gate_param_count
    need = (4 + count) * size
    if not stack_room(ss_desc.ar, ss_desc.limit, new_esp, need):
        raise CpuFault(Vector.SS, new_ss & 0xFFFC,
                       detail=f"inner stack has no room for the {need}-byte frame")
    _check_offset(code, target)
    # the parameters come from the caller's stack, read before anything changes (a fault there is
    # the caller's #SS(0) or #PF); they keep their order on the new stack (Figure 5-13)
    params = [c.peek(i * size, size) for i in range(count)]
    old_ss, old_esp = c.segs[SS].selector, c.regs[ESP]
    saved = (c.segs[SS].copy(), old_esp, c.cpl)
    commit_ss(c, new_ss, ss_desc)
    _set_stack_pointer(c, ss_desc, new_esp)
    c.cpl = new_cpl
    c.update_mode()
    try:
        _push_all(c, [old_ss, old_esp, *reversed(params), old_cs, next_ip], size)
    except CpuFault:  # #PF on the new stack: undo the switch so the fault is precise
        c.segs[SS].load(*saved[0].as_tuple())
        c.regs[ESP], c.cpl = saved[1], saved[2]
        c.update_mode()
        raise
    commit_cs(c, code_sel, code, new_cpl)
    c.eip = target


def _set_stack_pointer(c: CPU, ss_desc: Descriptor, value: int) -> None:
    """Load the stack pointer after SS changed: ESP for a 32-bit stack, only SP for a 16-bit one
    (B = 0), the upper half of ESP keeping its old value (as Bochs and hardware do; this is the
    "ESP leak" Linux's espfix works around)."""
    if ss_desc.ar & (1 << 14):
        c.regs[ESP] = value & M32
    else:
        c.regs[ESP] = (c.regs[ESP] & 0xFFFF0000) | (value & 0xFFFF)


def _push_all(c: CPU, values: list[int], size: int) -> None:
    """Push values in order; if any push faults, ESP is restored (the frame is all or nothing)."""
    esp = c.regs[ESP]
    mask = M32 if size == 4 else 0xFFFF
    try:
        for v in values:
            c.push(v & mask, size)
    except CpuFault:
        c.regs[ESP] = esp
        raise


# ---------------------------------------------------------------- RET far


def far_ret(c: CPU, size: int, extra: int) -> None:
    """RET far [imm16] (SDM Vol.2 RET, "PROTECTED-MODE" and "RETURN-TO-OUTER-PRIVILEGE-LEVEL")."""
    offset = c.peek(0, size)
    selector = c.peek(size, size) & 0xFFFF
    if not c.pe:
        if size == 2:
            offset &= 0xFFFF
        if offset > c.segs[CS].limit:
            raise CpuFault(Vector.GP, 0, detail=f"far return target {offset:#x} beyond CS limit")
        c.adjust_sp(2 * size + extra)
        c.load_real_segment(CS, selector)
        c.eip = offset
        c.update_mode()
        return
    desc = _return_code_segment(c, selector)
    rpl = selector & 3
    if rpl == c.cpl:
        _check_offset(desc, offset)
        c.adjust_sp(2 * size + extra)
        commit_cs(c, selector, desc, rpl)
        c.eip = offset
        return
    new_esp = c.peek(2 * size + extra, size)
    new_ss = c.peek(3 * size + extra, size) & 0xFFFF
    ss_desc = _return_stack_segment(c, new_ss, rpl)
    _check_offset(desc, offset)
    commit_cs(c, selector, desc, rpl)
    commit_ss(c, new_ss, ss_desc)
    _set_stack_pointer(c, ss_desc, new_esp)
    c.adjust_sp(extra)  # "release parameters from calling procedure's stack"
    null_unusable_data_segments(c, rpl)
    c.update_mode()  # after the nulling: DS/ES flatness is part of the block-cache mode key
    c.eip = offset


def _return_code_segment(c: CPU, selector: int) -> Descriptor:
    """Checks on the CS popped by RET/IRET (SDM Vol.2 RET: RPL < CPL, type, DPL vs RPL, present)."""
    if selector & 0xFFFC == 0:
        raise CpuFault(Vector.GP, 0, detail="far return to a null selector")
    desc = read_descriptor(c, selector)
    rpl = selector & 3
    if rpl < c.cpl:
        raise _gp(selector, f"return to a more privileged level (RPL {rpl} < CPL {c.cpl})")
    if not desc.is_code:
        raise _gp(selector, f"return to non-code selector {selector:#x}")
    if desc.ar & AR_CONFORMING and desc.dpl > rpl or not desc.ar & AR_CONFORMING and desc.dpl != rpl:
        raise _gp(selector, f"return code segment {selector:#x}: DPL {desc.dpl} vs RPL {rpl}")
    if not desc.present:
        raise CpuFault(Vector.NP, selector & 0xFFFC, detail=f"return code segment {selector:#x} not present")
    return desc


def _return_stack_segment(c: CPU, selector: int, rpl: int, not_present: int = Vector.SS) -> Descriptor:
    """SS checks on a return to an outer level: #GP(selector) for type/privilege; not present is
    #SS(selector) for RET (SDM Vol.2 RET pseudocode) and #NP(selector) for IRET (SDM Vol.2 IRET,
    Protected Mode Exceptions: "#NP(selector) If the return code or stack segment is not present";
    its pseudocode says #SS, but Bochs and QEMU follow the exception list)."""
    if selector & 0xFFFC == 0:
        raise CpuFault(Vector.GP, 0, detail="return to an outer level with a null SS")
    desc = read_descriptor(c, selector)
    if (selector & 3) != rpl or not desc.is_data or not desc.ar & 2 or desc.dpl != rpl:
        raise _gp(selector, f"return SS {selector:#x} is not a writable data segment at DPL {rpl}")
    if not desc.present:
        raise CpuFault(not_present, selector & 0xFFFC,
                       detail=f"return stack segment {selector:#x} not present")
    return desc


# ---------------------------------------------------------------- IRET and EFLAGS loads


def merge_eflags(c: CPU, new: int, size: int, cpl: int, keep_rf: bool) -> None:
    """Load EFLAGS from POPF/IRET under the privilege rules (SDM Vol.2 POPF, IRET):
    IOPL changes only at CPL 0, IF only when CPL <= IOPL, VM/VIF/VIP never here;
    other bits silently keep their value -- no fault (this is what makes POPF sensitive
    but not privileged).  A 16-bit operand size reaches FLAGS[15:0] only.

    RF is never left set: the processor clears it when the next instruction
    completes (SDM Vol.3A 18.3.1.1), and the model has no instruction breakpoints
    for it to suppress, so an RF=1 image (the frame of a fault) loads as RF=0 --
    later interrupt frames then show RF=0 as they do on hardware.
    """
    del keep_rf  # kept for the callers' readability: IRET "loads" RF, POPF clears it; both end as 0
    old = c.get_eflags()
    changeable = fl.STATUS | fl.TF | fl.DF | fl.NT | fl.AC | fl.ID
    if not c.pe or cpl == 0:
        changeable |= fl.IOPL | fl.IF
    elif cpl <= (old >> fl.IOPL_SHIFT) & 3:
        changeable |= fl.IF
    if size == 2:
        changeable &= 0xFFFF
    value = ((old & ~changeable) | (new & changeable)) & ~fl.RF
    c.set_eflags(value)


def iret(c: CPU, size: int, next_ip: int | None = None) -> None:
    """IRET/IRETD (SDM Vol.2 IRET, Vol.3A 6.14).  ``next_ip`` is saved in the TSS if IRET
    switches tasks (EFLAGS.NT = 1); by default the engine's fall-through EIP."""
    if not c.pe:
        eip = c.peek(0, size)
        selector = c.peek(size, size) & 0xFFFF
        flags = c.peek(2 * size, size)
        if size == 2:
            eip &= 0xFFFF
        if eip > c.segs[CS].limit:
            raise CpuFault(Vector.GP, 0, detail=f"IRET target {eip:#x} beyond CS limit")
        c.adjust_sp(3 * size)
        c.load_real_segment(CS, selector)
        c.eip = eip
        merge_eflags(c, flags, size, 0, keep_rf=True)
        c.update_mode()
        c.nmi_blocked = False
        return
    # SDM Vol.3A 6.7.1: "An execution of the IRET instruction unblocks NMIs even if the
    # instruction causes a fault."
    c.nmi_blocked = False
    if c.eflags_sys & fl.NT:
        from .tasks import task_return

        task_return(c, c.eip if next_ip is None else next_ip)
        return
    eip = c.peek(0, size)
    selector = c.peek(size, size) & 0xFFFF
    flags = c.peek(2 * size, size)
    if size == 4 and flags & fl.VM and c.cpl == 0:
        # RETURN-TO-VIRTUAL-8086-MODE: virtual-8086 mode is not modelled (docs/protection.md)
        raise CpuFault(Vector.GP, 0, detail="IRET to virtual-8086 mode is not modelled")
    desc = _return_code_segment(c, selector)
    rpl = selector & 3
    old_cpl = c.cpl
    if rpl == old_cpl:
        _check_offset(desc, eip)
        c.adjust_sp(3 * size)
        commit_cs(c, selector, desc, rpl)
        merge_eflags(c, flags, size, old_cpl, keep_rf=True)
        c.eip = eip
        return
    new_esp = c.peek(3 * size, size)
    new_ss = c.peek(4 * size, size) & 0xFFFF
    ss_desc = _return_stack_segment(c, new_ss, rpl, Vector.NP)
    _check_offset(desc, eip)
    merge_eflags(c, flags, size, old_cpl, keep_rf=True)  # IF/IOPL rules use the old CPL
    commit_cs(c, selector, desc, rpl)
    commit_ss(c, new_ss, ss_desc)
    _set_stack_pointer(c, ss_desc, new_esp)
    null_unusable_data_segments(c, rpl)
    c.update_mode()  # after the nulling: DS/ES flatness is part of the block-cache mode key
    c.eip = eip
