"""Integer arithmetic and logic (SDM Vol.2: ADD ADC SUB SBB CMP AND OR XOR TEST INC DEC NEG NOT
MUL IMUL DIV IDIV).  Status flags are recorded lazily (see cpu/flags.py)."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic

from .. import flags as fl
from ..faults import CpuFault, Vector
from . import Ctx, Handler, handles
from .operands import getter, is_reg, op_size, rmw, setter

if TYPE_CHECKING:
    from ..core import CPU

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x80000000}

_BINOPS = {
    Mnemonic.ADD: (operator.add, fl.K_ADD, True),
    Mnemonic.SUB: (operator.sub, fl.K_SUB, True),
    Mnemonic.CMP: (operator.sub, fl.K_SUB, False),
    Mnemonic.AND: (operator.and_, fl.K_LOGIC, True),
    Mnemonic.OR: (operator.or_, fl.K_LOGIC, True),
    Mnemonic.XOR: (operator.xor, fl.K_LOGIC, True),
    Mnemonic.TEST: (operator.and_, fl.K_LOGIC, False),
}


def signed(value: int, size: int) -> int:
    return value - (SIGN[size] << 1) if value & SIGN[size] else value


@handles("ADD", "SUB", "CMP", "AND", "OR", "XOR", "TEST")
def binop(ins: Instruction, ctx: Ctx) -> Handler:
    """Two-operand ALU ops: dest = dest OP src, flags from the result (CMP/TEST: flags only)."""
    fn, kind, writes = _BINOPS[ins.mnemonic]
    size = op_size(ins, 0)
    mask = MASK[size]
    cc = fl.op(kind, size)
    get_b = getter(ins, 1, size)
    if not writes:
        get_a = getter(ins, 0, size)

        def compare(c: CPU) -> None:
            a = get_a(c)
            b = get_b(c)
            c.cc_res = fn(a, b) & mask
            c.cc_op = cc
            c.cc_a = a
            c.cc_b = b

        return compare
    if is_reg(ins, 0):
        get_a = getter(ins, 0)
        put = setter(ins, 0)

        def reg_op(c: CPU) -> None:
            a = get_a(c)
            b = get_b(c)
            r = fn(a, b) & mask
            put(c, r)
            c.cc_op = cc
            c.cc_a = a
            c.cc_b = b
            c.cc_res = r

        return reg_op
    load, store = rmw(ins, 0)

    def mem_op(c: CPU) -> None:
        b = get_b(c)
        la, a = load(c)
        r = fn(a, b) & mask
        store(c, la, r)
        c.cc_op = cc
        c.cc_a = a
        c.cc_b = b
        c.cc_res = r

    return mem_op


@handles("ADC", "SBB")
def carry_op(ins: Instruction, ctx: Ctx) -> Handler:
    """ADC/SBB: the carry-in selects the flag formula (K_ADC/K_SBB when CF was 1)."""
    size = op_size(ins, 0)
    mask = MASK[size]
    add = ins.mnemonic == Mnemonic.ADC
    cc0 = fl.op(fl.K_ADD if add else fl.K_SUB, size)
    cc1 = fl.op(fl.K_ADC if add else fl.K_SBB, size)
    get_b = getter(ins, 1, size)
    load, store = rmw(ins, 0)

    def h(c: CPU) -> None:
        b = get_b(c)
        where, a = load(c)
        carry = c.get_cf()
        r = ((a + b + carry) if add else (a - b - carry)) & mask
        store(c, where, r)
        c.cc_op = cc1 if carry else cc0
        c.cc_a = a
        c.cc_b = b
        c.cc_res = r

    return h


@handles("INC", "DEC")
def incdec(ins: Instruction, ctx: Ctx) -> Handler:
    """INC/DEC: like ADD/SUB 1 but CF is preserved (kept in cc_b, see flags.K_INC)."""
    size = op_size(ins, 0)
    mask = MASK[size]
    inc = ins.mnemonic == Mnemonic.INC
    delta = 1 if inc else -1
    cc = fl.op(fl.K_INC if inc else fl.K_DEC, size)
    load, store = rmw(ins, 0)

    def h(c: CPU) -> None:
        where, a = load(c)
        r = (a + delta) & mask
        cf = c.get_cf()
        store(c, where, r)
        c.cc_op = cc
        c.cc_a = a
        c.cc_b = cf
        c.cc_res = r

    return h


@handles("NEG")
def neg(ins: Instruction, ctx: Ctx) -> Handler:
    """NEG: 0 - dest; CF = (dest != 0) falls out of the SUB formula."""
    size = op_size(ins, 0)
    mask = MASK[size]
    cc = fl.op(fl.K_SUB, size)
    load, store = rmw(ins, 0)

    def h(c: CPU) -> None:
        where, a = load(c)
        r = -a & mask
        store(c, where, r)
        c.cc_op = cc
        c.cc_a = 0
        c.cc_b = a
        c.cc_res = r

    return h


@handles("NOT")
def not_(ins: Instruction, ctx: Ctx) -> Handler:
    """NOT: one's complement; no flags affected."""
    mask = MASK[op_size(ins, 0)]
    load, store = rmw(ins, 0)

    def h(c: CPU) -> None:
        where, a = load(c)
        store(c, where, ~a & mask)

    return h


def _set_mul_flags(c: CPU, overflow: bool, low: int, size: int) -> None:
    """MUL/IMUL: CF = OF = overflow; SF and PF from the low half, ZF = AF = 0 (undefined in the SDM;
    the values an Intel Xeon produces, which the differential test against the host CPU checks)."""
    f = fl.PARITY[low & 0xFF]
    if low & SIGN[size]:
        f |= fl.SF
    if overflow:
        f |= fl.CF | fl.OF
    c.set_status_flags(f)


def _acc_get(c: CPU, size: int) -> int:
    r = c.regs
    return r[0] & MASK[size]


@handles("MUL")
def mul(ins: Instruction, ctx: Ctx) -> Handler:
    """MUL r/m: AX = AL*src | DX:AX = AX*src | EDX:EAX = EAX*src (SDM Vol.2 MUL)."""
    size = op_size(ins, 0)
    get_src = getter(ins, 0, size)
    mask = MASK[size]
    bits = size * 8

    def h(c: CPU) -> None:
        src = get_src(c)
        r = c.regs
        prod = (r[0] & mask) * src
        low = prod & mask
        high = prod >> bits
        if size == 1:
            r[0] = (r[0] & 0xFFFF0000) | prod
        elif size == 2:
            r[0] = (r[0] & 0xFFFF0000) | low
            r[2] = (r[2] & 0xFFFF0000) | high
        else:
            r[0] = low
            r[2] = high
        _set_mul_flags(c, high != 0, low, size)

    return h


@handles("IMUL")
def imul(ins: Instruction, ctx: Ctx) -> Handler:
    """IMUL: one-operand (widening), two-operand and three-operand forms (SDM Vol.2 IMUL)."""
    if ins.op_count == 1:
        return _imul1(ins)
    size = op_size(ins, 0)
    mask = MASK[size]
    put = setter(ins, 0)
    if ins.op_count == 2:
        get_a = getter(ins, 0, size)
        get_b = getter(ins, 1, size)
    else:
        get_a = getter(ins, 1, size)
        get_b = getter(ins, 2, size)

    def h(c: CPU) -> None:
        a = signed(get_a(c), size)
        b = signed(get_b(c), size)
        prod = a * b
        low = prod & mask
        put(c, low)
        _set_mul_flags(c, signed(low, size) != prod, low, size)

    return h


def _imul1(ins: Instruction) -> Handler:
    size = op_size(ins, 0)
    get_src = getter(ins, 0, size)
    mask = MASK[size]
    bits = size * 8

    def h(c: CPU) -> None:
        r = c.regs
        prod = signed(r[0] & mask, size) * signed(get_src(c), size)
        low = prod & mask
        high = (prod >> bits) & mask
        if size == 1:
            r[0] = (r[0] & 0xFFFF0000) | (prod & 0xFFFF)
        elif size == 2:
            r[0] = (r[0] & 0xFFFF0000) | low
            r[2] = (r[2] & 0xFFFF0000) | high
        else:
            r[0] = low
            r[2] = high
        _set_mul_flags(c, signed(low, size) != prod, low, size)

    return h


@handles("DIV", "IDIV")
def div(ins: Instruction, ctx: Ctx) -> Handler:
    """DIV/IDIV: #DE when the divisor is 0 or the quotient does not fit (SDM Vol.2 DIV, IDIV).

    Quotients truncate toward zero and the remainder takes the dividend's sign.
    The status flags are undefined; this model leaves them unchanged.
    """
    size = op_size(ins, 0)
    get_src = getter(ins, 0, size)
    mask = MASK[size]
    bits = size * 8
    is_signed = ins.mnemonic == Mnemonic.IDIV

    def h(c: CPU) -> None:
        src = get_src(c)
        r = c.regs
        if size == 1:
            dividend = r[0] & 0xFFFF
        elif size == 2:
            dividend = (r[2] & 0xFFFF) << 16 | (r[0] & 0xFFFF)
        else:
            dividend = r[2] << 32 | r[0]
        if src == 0:
            raise CpuFault(Vector.DE, None, detail="division by zero")
        if is_signed:
            n = signed(dividend, size * 2) if size < 4 else dividend - ((dividend >> 63) << 64)
            d = signed(src, size)
            q = abs(n) // abs(d)
            if (n < 0) != (d < 0):
                q = -q
            rem = n - q * d
            if not -(1 << (bits - 1)) <= q < (1 << (bits - 1)):
                raise CpuFault(Vector.DE, None, detail="quotient overflow")
        else:
            q, rem = divmod(dividend, src)
            if q > mask:
                raise CpuFault(Vector.DE, None, detail="quotient overflow")
        q &= mask
        rem &= mask
        if size == 1:
            r[0] = (r[0] & 0xFFFF0000) | rem << 8 | q
        elif size == 2:
            r[0] = (r[0] & 0xFFFF0000) | q
            r[2] = (r[2] & 0xFFFF0000) | rem
        else:
            r[0] = q
            r[2] = rem

    return h
