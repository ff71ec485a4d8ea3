"""Bit and byte instructions (SDM Vol.1 7.3.7; Vol.2 BT, BTS, BTR, BTC, BSF, BSR, SETcc).

BT* with a memory operand and a register bit offset address a bit string that
extends beyond the operand: the offset is signed, and the operand actually
accessed is the word/doubleword at ``ea + size * (offset >> log2(bits))``
(SDM Vol.2 BT, "Bit(BitBase, BitOffset)" and Figure 3-2).  With an immediate
offset, or a register bit base, the offset is taken modulo the operand width.

Flags the SDM leaves undefined get one fixed value, chosen in the
``# undefined:`` lines of ``_bt_flags`` / ``_bsx_flags`` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic, OpKind

from .. import flags as fl
from . import Ctx, Handler, handles
from .operands import addr_size, ea_function, getter, is_mem, mem_segment, op_size, rmw, setter
from .results import BITS, SIGN, status

if TYPE_CHECKING:
    from ..core import CPU

#: log2 of the operand width in bits: the shift that turns a bit offset into an operand index
INDEX_SHIFT = {2: 4, 4: 5}
#: the operation on the selected bit (None for BT, which only reads)
_BIT_OPS: dict[int, Callable[[int, int], int] | None] = {
    Mnemonic.BT: None,
    Mnemonic.BTS: lambda v, m: v | m,
    Mnemonic.BTR: lambda v, m: v & ~m,
    Mnemonic.BTC: lambda v, m: v ^ m,
}


def _bt_flags(c: CPU, bit: int) -> None:
    """CF = the selected bit (SDM Vol.2 BT, Flags Affected: ZF unaffected)."""
    # undefined (checked on an Intel Xeon): OF SF AF PF keep their values
    c.set_status_flags((status(c) & ~fl.CF) | bit)


@handles("BT", "BTS", "BTR", "BTC")
def bit_test(ins: Instruction, ctx: Ctx) -> Handler:
    """BT/BTS/BTR/BTC r/m, r/imm8 (SDM Vol.2 BT, BTS, BTR, BTC)."""
    size = op_size(ins, 0)
    bits = BITS[size]
    modify = _BIT_OPS[ins.mnemonic]
    reg_offset = ins.op1_kind == OpKind.REGISTER
    get_off = getter(ins, 1, size)

    if not is_mem(ins, 0) or not reg_offset:
        # the offset is taken modulo the operand width (SDM Vol.2 BT: "imm8 ... MOD 16/32", register base)
        load, store = rmw(ins, 0) if modify is not None else (None, None)
        get_base = getter(ins, 0, size)

        def h_local(c: CPU) -> None:
            m = 1 << (get_off(c) & (bits - 1))
            if modify is None:
                v = get_base(c)
            else:
                where, v = load(c)
                store(c, where, modify(v, m))
            _bt_flags(c, 1 if v & m else 0)

        return h_local

    # memory bit base, register bit offset: the signed offset selects another operand in memory
    ea = ea_function(ins)
    sreg = mem_segment(ins)
    amask = 0xFFFF if addr_size(ins) == 2 else 0xFFFFFFFF
    sign = SIGN[size]
    shift = INDEX_SHIFT[size]

    def h_string(c: CPU) -> None:
        off = get_off(c)
        if off & sign:
            off -= sign << 1
        where = (ea(c.regs) + (off >> shift) * size) & amask
        m = 1 << (off & (bits - 1))
        if modify is None:
            v = c.rd(sreg, where, size)
        else:
            la = c.linear(sreg, where, size, True)
            v = c.lread_rmw(la, size)  # write intent: a #PF here has W = 1, as on hardware
            c.lwrite(la, size, modify(v, m))
        _bt_flags(c, 1 if v & m else 0)

    return h_string


def _bsx_flags(c: CPU, index: int | None) -> None:
    """ZF = 1 when the source is 0 (SDM Vol.2 BSF/BSR: "the ZF flag is set to 1 if the source operand is 0;
    otherwise, the ZF flag is cleared")."""
    if index is None:
        # undefined (measured on an Intel Xeon): CF = OF = SF = AF = 0 and PF = 1, as if the result were 0
        c.set_status_flags(fl.ZF | fl.PF)
    else:
        # undefined (measured on an Intel Xeon): CF = OF = SF = AF = 0, PF from the index
        c.set_status_flags(fl.PARITY[index])


@handles("BSF", "BSR")
def bit_scan(ins: Instruction, ctx: Ctx) -> Handler:
    """BSF/BSR r, r/m: index of the lowest/highest set bit; a zero source leaves the destination
    unchanged (SDM Vol.2 BSF: "the content of the destination operand is undefined"; this model, like
    current Intel and AMD processors, keeps it)."""
    size = op_size(ins, 0)
    get = getter(ins, 1, size)
    put = setter(ins, 0)
    forward = ins.mnemonic == Mnemonic.BSF

    def h(c: CPU) -> None:
        v = get(c)
        if v == 0:
            _bsx_flags(c, None)
            return
        index = (v & -v).bit_length() - 1 if forward else v.bit_length() - 1
        put(c, index)
        _bsx_flags(c, index)

    return h


@handles("SETO", "SETNO", "SETB", "SETAE", "SETE", "SETNE", "SETBE", "SETA", "SETS", "SETNS", "SETP", "SETNP",
         "SETL", "SETGE", "SETLE", "SETG")
def setcc(ins: Instruction, ctx: Ctx) -> Handler:
    """SETcc r/m8: 1 if the condition holds, else 0 (SDM Vol.2 SETcc; conditions in Vol.1 Appendix B)."""
    cc = ins.condition_code - 1  # iced ConditionCode: 1 = O ... 16 = G; the x86 cc nibble is 0..15
    put = setter(ins, 0)
    return lambda c: put(c, 1 if c.cond(cc) else 0)

