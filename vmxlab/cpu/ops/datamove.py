"""Data movement (SDM Vol.2: MOV MOVZX MOVSX XCHG LEA PUSH POP and friends)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic, OpKind

from ..faults import CpuFault, Vector
from ..segments import load_segment
from ..state import CS, ESP, SS
from . import Ctx, Handler, ends_block, handles
from .control import operand_size
from .operands import CREG, DREG, SREG, ea_function, getter, is_mem, is_reg, op_size, rmw, setter

if TYPE_CHECKING:
    from ..core import CPU

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


@handles("MOV")
def mov(ins: Instruction, ctx: Ctx) -> Handler:
    r0 = ins.op_register(0) if ins.op0_kind == OpKind.REGISTER else None
    r1 = ins.op_register(1) if ins.op1_kind == OpKind.REGISTER else None
    if r0 in CREG or r1 in CREG or r0 in DREG or r1 in DREG:
        from .system import mov_control_register

        return mov_control_register(ins, ctx)
    if r0 in SREG:
        return _mov_to_sreg(ins, SREG[r0])
    if r1 in SREG:
        sreg = SREG[r1]
        put = setter(ins, 0)
        if is_reg(ins, 0) and op_size(ins, 0) == 4:
            return lambda c: put(c, c.segs[sreg].selector)  # zero-extended into a 32-bit register
        return lambda c: put(c, c.segs[sreg].selector)
    size = op_size(ins, 0)
    get = getter(ins, 1, size)
    put = setter(ins, 0)
    return lambda c: put(c, get(c))


def _mov_to_sreg(ins: Instruction, sreg: int) -> Handler:
    """MOV Sreg, r/m16 (SDM Vol.2 MOV): CS is not a valid destination (#UD); SS starts an interrupt shadow."""
    if sreg == CS:
        return _ud("MOV CS is invalid")
    get = getter(ins, 1, 2)

    def h(c: CPU) -> None:
        load_segment(c, sreg, get(c) & 0xFFFF)
        if sreg == SS:
            c.inhibit_pending = True
            c.event_pending = True

    return ends_block(h)  # the mode key (flat segments, stack size) may have changed


def _ud(detail: str) -> Handler:
    def h(c: CPU) -> None:
        raise CpuFault(Vector.UD, None, detail=detail)

    return h


@handles("MOVZX", "MOVSX")
def movx(ins: Instruction, ctx: Ctx) -> Handler:
    dsize = op_size(ins, 0)
    ssize = op_size(ins, 1)
    get = getter(ins, 1, ssize)
    put = setter(ins, 0)
    if ins.mnemonic == Mnemonic.MOVZX:
        return lambda c: put(c, get(c))
    sign = 1 << (ssize * 8 - 1)
    ext = MASK[dsize] & ~MASK[ssize]

    def h(c: CPU) -> None:
        v = get(c)
        put(c, v | ext if v & sign else v)

    return h


@handles("LEA")
def lea(ins: Instruction, ctx: Ctx) -> Handler:
    """LEA: the effective address (in the address size), truncated to the operand size; no memory access."""
    if not is_mem(ins, 1):
        return _ud("LEA with a register source")
    ea = ea_function(ins)
    mask = MASK[op_size(ins, 0)]
    put = setter(ins, 0)
    return lambda c: put(c, ea(c.regs) & mask)


@handles("XCHG")
def xchg(ins: Instruction, ctx: Ctx) -> Handler:
    """XCHG: with a memory operand the store comes first, so a fault leaves the register intact."""
    size = op_size(ins, 0)
    mem_first = is_mem(ins, 0)
    m, r = (0, 1) if mem_first or not is_mem(ins, 1) else (1, 0)
    load, store = rmw(ins, m)
    get_r = getter(ins, r, size)
    put_r = setter(ins, r)

    def h(c: CPU) -> None:
        where, a = load(c)
        b = get_r(c)
        store(c, where, b)
        put_r(c, a)

    return h


@handles("PUSH")
def push(ins: Instruction, ctx: Ctx) -> Handler:
    """PUSH r/m, imm, Sreg (SDM Vol.2 PUSH).  PUSH ESP pushes the value before the decrement."""
    size = operand_size(ins, ctx)
    if ins.op0_kind == OpKind.REGISTER and ins.op_register(0) in SREG:
        sreg = SREG[ins.op_register(0)]

        def push_sreg(c: CPU) -> None:
            # 32-bit operand size: ESP moves by 4 and the selector is written with a 16-bit store,
            # as on recent Intel processors (SDM Vol.2 PUSH, operation note on segment registers).
            esp = c.regs[ESP]
            new = (esp - size) & (0xFFFFFFFF if c.ss32 else 0xFFFF)
            c.wr16(SS, new, c.segs[sreg].selector)
            c.regs[ESP] = new if c.ss32 else (esp & 0xFFFF0000) | new

        return push_sreg
    get = getter(ins, 0, size)
    if ins.op0_kind in (OpKind.IMMEDIATE8, OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32):
        value = ins.immediate(0) & MASK[size]
        return lambda c: c.push(value, size)
    return lambda c: c.push(get(c), size)


@handles("POP")
def pop(ins: Instruction, ctx: Ctx) -> Handler:
    """POP r/m, Sreg (SDM Vol.2 POP).  A memory destination addressed through ESP uses the
    incremented ESP; if the store faults ESP is restored."""
    size = operand_size(ins, ctx)
    if ins.op0_kind == OpKind.REGISTER and ins.op_register(0) in SREG:
        sreg = SREG[ins.op_register(0)]
        if sreg == CS:
            return _ud("POP CS is invalid")

        def pop_sreg(c: CPU) -> None:
            value = c.peek(0, size) & 0xFFFF
            load_segment(c, sreg, value)
            c.adjust_sp(size)
            if sreg == SS:
                c.inhibit_pending = True
                c.event_pending = True

        return ends_block(pop_sreg)
    put = setter(ins, 0)
    if is_reg(ins, 0):

        def pop_reg(c: CPU) -> None:
            value = c.peek(0, size)
            c.adjust_sp(size)
            put(c, value)

        return pop_reg

    def pop_mem(c: CPU) -> None:
        value = c.peek(0, size)
        esp = c.regs[ESP]
        c.adjust_sp(size)
        try:
            put(c, value)
        except CpuFault:
            c.regs[ESP] = esp
            raise

    return pop_mem
