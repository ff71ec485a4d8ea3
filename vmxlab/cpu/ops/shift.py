"""Shifts and rotates (SDM Vol.2: SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR, SHLD, SHRD).

Every form masks its count to 5 bits (SDM Vol.2 SAL/SAR/SHL/SHR "countMASK",
RCL/RCR/ROL/ROR "COUNTMASK", SHLD/SHRD "COUNT MOD 32"); a masked count of 0
changes nothing, not even the flags.  A memory destination is still checked
for writability (the read is the first half of a read-modify-write).

The flags are materialised (``cpu.set_status_flags``), not lazy: CF is the
last bit shifted out and OF a sign change, which the ALU formulas do not
describe.  Flags the SDM leaves undefined get one fixed value, chosen in the
``# undefined:`` lines of each ``_op_*`` function and nowhere else, so a
mismatch found by the hardware comparison is fixed in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic, OpKind, Register

from .. import flags as fl
from . import Ctx, Handler, handles
from .operands import getter, op_size, rmw
from .results import BITS, MASK, SIGN, signed, status, szp

if TYPE_CHECKING:
    from ..core import CPU

COUNT_MASK = 0x1F  # SDM Vol.2 SAL/SAR/SHL/SHR: countMASK is 1FH outside 64-bit mode
OF_SHIFT = 11  # bit position of OF in EFLAGS (SDM Vol.1 3.4.3)
ROT_FLAGS = fl.CF | fl.OF  # ROL/ROR/RCL/RCR change only these (SDM Vol.2 RCL/RCR/ROL/ROR, Flags Affected)

#: an operation on a value of one size: (dest, masked count 1..31, cpu) -> (result, six status flags)
Op = Callable[[int, int, "CPU"], tuple[int, int]]
#: builds an Op for an operand size; ``keeps_of`` is set for the one form whose OF survives a count > 1
OpFactory = Callable[[int, bool], Op]


def _op_shl(size: int, keeps_of: bool) -> Op:
    """SHL/SAL (SDM Vol.2 SAL/SAR/SHL/SHR): CF = last bit shifted out; OF = MSB(result) XOR CF."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        r = (a << n) & mask
        cf = (a >> (bits - n)) & 1 if n <= bits else 0
        # undefined (values measured on an Intel Xeon): CF for n > bits is 0; OF for n > 1 is the 1-bit
        # rule applied to the original operand, MSB(dest) XOR MSB-1(dest); AF = 0
        of = (1 if a & sign else 0) ^ (1 if a & (sign >> 1) else 0)
        return r, szp(r, size) | cf | of << OF_SHIFT

    return op


def _op_shr(size: int, keeps_of: bool) -> Op:
    """SHR (SDM Vol.2 SAL/SAR/SHL/SHR): CF = last bit shifted out; OF = MSB(original) for a 1-bit shift."""
    sign = SIGN[size]

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        r = a >> n
        cf = (a >> (n - 1)) & 1
        # undefined (measured on an Intel Xeon): CF for n > bits is 0; OF for n > 1 is the 1-bit rule
        # applied to the original operand, MSB(dest); AF = 0
        of = 1 if a & sign else 0
        return r, szp(r, size) | cf | of << OF_SHIFT

    return op


def _op_sar(size: int, keeps_of: bool) -> Op:
    """SAR (SDM Vol.2 SAL/SAR/SHL/SHR): signed shift rounding toward -infinity; OF = 0 for a 1-bit shift."""
    mask = MASK[size]

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        sa = signed(a, size)
        r = (sa >> n) & mask
        # undefined: OF for n > 1 is 0; AF = 0; CF for n >= bits is the sign bit (copies of it shift out)
        cf = (sa >> (n - 1)) & 1
        return r, szp(r, size) | cf

    return op


def _op_rol(size: int, keeps_of: bool) -> Op:
    """ROL (SDM Vol.2 RCL/RCR/ROL/ROR): rotate by count MOD size; CF = LSB(result) whenever the masked
    count is non-zero (also for a multiple of the size); OF = MSB(result) XOR CF for a 1-bit rotate."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        k = n % bits
        r = ((a << k) | (a >> (bits - k))) & mask if k else a
        cf = r & 1
        old = status(c)
        if n > 1 and keeps_of:
            # undefined (measured on an Intel Xeon): a register rotated by imm8 > 1 keeps OF
            return r, (old & ~fl.CF) | cf
        # undefined (measured on an Intel Xeon): otherwise (CL count, memory operand) a count > 1 applies
        # the 1-bit rule to the original operand, MSB(dest) XOR MSB-1(dest)
        of = (1 if a & sign else 0) ^ (1 if a & (sign >> 1) else 0)
        return r, (old & ~ROT_FLAGS) | cf | of << OF_SHIFT

    return op


def _op_ror(size: int, keeps_of: bool) -> Op:
    """ROR (SDM Vol.2 RCL/RCR/ROL/ROR): CF = MSB(result); OF = MSB(result) XOR MSB-1(result) (1-bit)."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        k = n % bits
        r = ((a >> k) | (a << (bits - k))) & mask if k else a
        cf = 1 if r & sign else 0
        old = status(c)
        if n > 1 and keeps_of:
            # undefined (measured on an Intel Xeon): a register rotated by imm8 > 1 keeps OF
            return r, (old & ~fl.CF) | cf
        # undefined (measured on an Intel Xeon): otherwise (CL count, memory operand) a count > 1 applies
        # the 1-bit rule to the original operand, LSB(dest) XOR MSB(dest)
        of = (a & 1) ^ (1 if a & sign else 0)
        return r, (old & ~ROT_FLAGS) | cf | of << OF_SHIFT

    return op


def _op_rcl(size: int, keeps_of: bool) -> Op:
    """RCL (SDM Vol.2 RCL/RCR/ROL/ROR): rotate the (size+1)-bit value CF:dest left by count MOD (size+1)
    (8-bit: MOD 9, 16-bit: MOD 17, 32-bit: the masked count); OF = MSB(result) XOR CF for a 1-bit rotate."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]
    width = bits + 1
    wmask = (1 << width) - 1

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        k = n % width
        old = status(c)
        if k == 0:
            # undefined: a masked count that is a multiple of size+1 changes nothing, flags included
            return a, old
        w = (old & fl.CF) << bits | a
        w = ((w << k) | (w >> (width - k))) & wmask
        r = w & mask
        cf = w >> bits
        # undefined (measured on an Intel Xeon): OF for n > 1 is the 1-bit rule applied to the original
        # operand, MSB(dest) XOR MSB-1(dest)
        of = (1 if a & sign else 0) ^ (1 if a & (sign >> 1) else 0)
        return r, (old & ~ROT_FLAGS) | cf | of << OF_SHIFT

    return op


def _op_rcr(size: int, keeps_of: bool) -> Op:
    """RCR (SDM Vol.2 RCL/RCR/ROL/ROR): rotate CF:dest right; OF = MSB(dest) XOR CF before a 1-bit
    rotate, which equals MSB(result) XOR MSB-1(result) after it."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]
    width = bits + 1
    wmask = (1 << width) - 1

    def op(a: int, n: int, c: CPU) -> tuple[int, int]:
        k = n % width
        old = status(c)
        if k == 0:
            # undefined: a masked count that is a multiple of size+1 changes nothing, flags included
            return a, old
        w = (old & fl.CF) << bits | a
        w = ((w >> k) | (w << (width - k))) & wmask
        r = w & mask
        cf = w >> bits
        # undefined (measured on an Intel Xeon): OF for n > 1 is the 1-bit rule applied to the original
        # operand, MSB(dest) XOR the old CF
        of = (1 if a & sign else 0) ^ (old & fl.CF)
        return r, (old & ~ROT_FLAGS) | cf | of << OF_SHIFT

    return op


_OPS: dict[int, OpFactory] = {
    Mnemonic.SHL: _op_shl,
    Mnemonic.SAL: _op_shl,
    Mnemonic.SHR: _op_shr,
    Mnemonic.SAR: _op_sar,
    Mnemonic.ROL: _op_rol,
    Mnemonic.ROR: _op_ror,
    Mnemonic.RCL: _op_rcl,
    Mnemonic.RCR: _op_rcr,
}


def _count_getter(ins: Instruction, i: int) -> Callable[[CPU], int] | int:
    """The masked count: a constant for the immediate and 1 forms, else a closure reading CL."""
    if ins.op_kind(i) == OpKind.REGISTER:
        if ins.op_register(i) != Register.CL:
            raise NotImplementedError(f"shift count in {ins}")
        return lambda c: c.regs[1] & COUNT_MASK
    return ins.immediate(i) & COUNT_MASK


@handles("SHL", "SAL", "SHR", "SAR", "ROL", "ROR", "RCL", "RCR")
def shift(ins: Instruction, ctx: Ctx) -> Handler:
    """Shift/rotate r/m by 1, imm8 or CL; count masked to 5 bits, a zero count is a no-op."""
    size = op_size(ins, 0)
    count = _count_getter(ins, 1)
    op = _OPS[ins.mnemonic](size, isinstance(count, int) and ins.op0_kind == OpKind.REGISTER)
    load, store = rmw(ins, 0)
    if isinstance(count, int):
        n = count
        if n == 0:

            def h0(c: CPU) -> None:
                load(c)  # SDM Vol.2 SAL: a 0 count leaves the flags alone; the access is still checked

            return h0

        def h_imm(c: CPU) -> None:
            where, a = load(c)
            r, f = op(a, n, c)
            store(c, where, r)
            c.set_status_flags(f)

        return h_imm
    get_n = count

    def h_cl(c: CPU) -> None:
        where, a = load(c)
        n = get_n(c)
        if n == 0:
            return
        r, f = op(a, n, c)
        store(c, where, r)
        c.set_status_flags(f)

    return h_cl


# ---------------------------------------------------------------------- SHLD / SHRD


def _op_shld(size: int) -> Callable[[int, int, int], tuple[int, int]]:
    """SHLD dest, src, n (SDM Vol.2 SHLD): dest:src shifted left, the high half kept."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]

    def op(a: int, b: int, n: int) -> tuple[int, int]:
        # undefined (measured on an Intel Xeon): for a 16-bit operand and n > 16 the result and CF come
        # from the 48-bit value dest:src:dest shifted left by n; OF for n > 1 is the 1-bit rule applied
        # to the original operands, MSB(dest) XOR MSB-1(dest); AF = 0
        w = (a << (2 * bits)) | (b << bits) | a
        s = w << n
        r = (s >> (2 * bits)) & mask
        cf = (s >> (3 * bits)) & 1
        of = (1 if a & sign else 0) ^ (1 if a & (sign >> 1) else 0)
        return r, szp(r, size) | cf | of << OF_SHIFT

    return op


def _op_shrd(size: int) -> Callable[[int, int, int], tuple[int, int]]:
    """SHRD dest, src, n (SDM Vol.2 SHRD): src:dest shifted right, the low half kept."""
    bits, mask, sign = BITS[size], MASK[size], SIGN[size]

    def op(a: int, b: int, n: int) -> tuple[int, int]:
        # undefined (measured on an Intel Xeon): for a 16-bit operand and n > 16 the result and CF come
        # from the 48-bit value dest:src:dest shifted right by n; OF for n > 1 is the 1-bit rule applied
        # to the original operands, MSB(dest) XOR LSB(src); AF = 0
        w = (a << (2 * bits)) | (b << bits) | a
        r = (w >> n) & mask
        cf = (w >> (n - 1)) & 1
        of = (1 if a & sign else 0) ^ (b & 1)
        return r, szp(r, size) | cf | of << OF_SHIFT

    return op


@handles("SHLD", "SHRD")
def double_shift(ins: Instruction, ctx: Ctx) -> Handler:
    """SHLD/SHRD r/m, r, imm8/CL: count MOD 32; 0 is a no-op (SDM Vol.2 SHLD, SHRD)."""
    size = op_size(ins, 0)
    op = (_op_shld if ins.mnemonic == Mnemonic.SHLD else _op_shrd)(size)
    load, store = rmw(ins, 0)
    get_src = getter(ins, 1, size)
    count = _count_getter(ins, 2)

    def h(c: CPU) -> None:
        where, a = load(c)
        n = count if isinstance(count, int) else count(c)
        if n == 0:
            return
        r, f = op(a, get_src(c), n)
        store(c, where, r)
        c.set_status_flags(f)

    return h
