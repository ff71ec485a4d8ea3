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
from .segments import check_code_target, check_ss, commit_cs, commit_ss, null_unusable_data_segments
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
        code_sel, code, target = _through_call_gate(c, selector, desc)
        if code.ar & AR_CONFORMING and code.dpl > c.cpl or not code.ar & AR_CONFORMING and code.dpl != c.cpl:
            raise _gp(code_sel, f"JMP through call gate to code segment {code_sel:#x} with DPL {code.dpl}")
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


def _through_call_gate(c: CPU, gate_sel: int, gate: Descriptor) -> tuple[int, Descriptor, int]:
    """Gate checks shared by JMP and CALL (SDM Vol.3A 5.8.4, Table 5-1)."""
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
    if not code.present:
        raise CpuFault(Vector.NP, code_sel & 0xFFFC, detail=f"code segment {code_sel:#x} not present")
    return code_sel, code, gate.gate_offset


def _call_gate(c: CPU, gate_sel: int, gate: Descriptor, next_ip: int) -> None:
    code_sel, code, target = _through_call_gate(c, gate_sel, gate)
    size = 4 if gate.type == SYS_CALL_GATE32 else 2
    _check_offset(code, target)
    old_cs = c.segs[CS].selector
    if code.ar & AR_CONFORMING or code.dpl == c.cpl:
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
    params = [c.peek(i * size, size) for i in range(count)]  # from the caller's stack, in order
    old_ss, old_esp = c.segs[SS].selector, c.regs[ESP]
    need = (4 + count) * size
    stack32 = bool(ss_desc.ar & (1 << 14))
    top = new_esp if stack32 else new_esp & 0xFFFF
    lo = ss_desc.limit + 1 if ss_desc.ar & 0x4 else 0  # expand-down stacks start above the limit
    if top - need < lo:
        raise CpuFault(Vector.SS, new_ss & 0xFFFC, detail="inner stack too small for the call-gate frame")
    saved = (c.segs[SS].copy(), old_esp, c.cpl)
    commit_ss(c, new_ss, ss_desc)
    c.regs[ESP] = new_esp
    c.cpl = new_cpl
    c.update_mode()
    try:
        _push_all(c, [old_ss, old_esp, *reversed(params), old_cs, next_ip], size)
    except CpuFault:
        c.segs[SS].load(*saved[0].as_tuple())
        c.regs[ESP], c.cpl = saved[1], saved[2]
        c.update_mode()
        raise
    commit_cs(c, code_sel, code, new_cpl)
    c.eip = target


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
    c.regs[ESP] = new_esp if size == 4 else (c.regs[ESP] & 0xFFFF0000) | (new_esp & 0xFFFF)
    c.adjust_sp(extra)
    c.update_mode()
    null_unusable_data_segments(c, rpl)
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


def _return_stack_segment(c: CPU, selector: int, rpl: int) -> Descriptor:
    """SS checks on a return to an outer level: #GP(selector) for type/privilege, #SS if not present."""
    if selector & 0xFFFC == 0:
        raise CpuFault(Vector.GP, 0, detail="return to an outer level with a null SS")
    desc = read_descriptor(c, selector)
    if (selector & 3) != rpl or not desc.is_data or not desc.ar & 2 or desc.dpl != rpl:
        raise _gp(selector, f"return SS {selector:#x} is not a writable data segment at DPL {rpl}")
    if not desc.present:
        raise CpuFault(Vector.SS, selector & 0xFFFC, detail=f"return stack segment {selector:#x} not present")
    return desc


# ---------------------------------------------------------------- IRET and EFLAGS loads


def merge_eflags(c: CPU, new: int, size: int, cpl: int, keep_rf: bool) -> None:
    """Load EFLAGS from POPF/IRET under the privilege rules (SDM Vol.2 POPF, IRET):
    IOPL changes only at CPL 0, IF only when CPL <= IOPL, VM/VIF/VIP never here;
    other bits silently keep their value -- no fault (this is what makes POPF sensitive
    but not privileged)."""
    old = c.get_eflags()
    changeable = fl.STATUS | fl.TF | fl.DF | fl.NT | fl.AC | fl.ID
    if keep_rf:
        changeable |= fl.RF
    if not c.pe or cpl == 0:
        changeable |= fl.IOPL | fl.IF
    elif cpl <= (old >> fl.IOPL_SHIFT) & 3:
        changeable |= fl.IF
    if size == 2:
        changeable &= 0xFFFF
    value = (old & ~changeable) | (new & changeable)
    if not keep_rf:
        value &= ~fl.RF
    c.set_eflags(value)


def iret(c: CPU, size: int) -> None:
    """IRET/IRETD (SDM Vol.2 IRET, Vol.3A 6.14)."""
    eip = c.peek(0, size)
    selector = c.peek(size, size) & 0xFFFF
    flags = c.peek(2 * size, size)
    if not c.pe:
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
    if c.eflags_sys & fl.NT:
        from .tasks import task_return

        task_return(c)
        return
    if size == 4 and flags & fl.VM and c.cpl == 0:
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
        c.nmi_blocked = False
        return
    new_esp = c.peek(3 * size, size)
    new_ss = c.peek(4 * size, size) & 0xFFFF
    ss_desc = _return_stack_segment(c, new_ss, rpl)
    _check_offset(desc, eip)
    merge_eflags(c, flags, size, old_cpl, keep_rf=True)
    commit_cs(c, selector, desc, rpl)
    commit_ss(c, new_ss, ss_desc)
    c.regs[ESP] = new_esp if size == 4 else (c.regs[ESP] & 0xFFFF0000) | (new_esp & 0xFFFF)
    c.update_mode()
    null_unusable_data_segments(c, rpl)
    c.eip = eip
    c.nmi_blocked = False
