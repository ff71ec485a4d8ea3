"""Decimal (BCD) arithmetic adjustments (SDM Vol.2: DAA, DAS, AAA, AAS, AAM, AAD).

Each follows the SDM's Operation section; flags the SDM calls undefined get one
fixed value, chosen in the ``# undefined:`` lines of each handler and nowhere
else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction

from .. import flags as fl
from ..faults import CpuFault, Vector
from ..state import EAX
from . import Ctx, Handler, handles
from .results import SZP8, status

if TYPE_CHECKING:
    from ..core import CPU

LOW_NIBBLE = 0x0F
MAX_DIGIT = 9
DAA_LOW_FIX = 0x06  # decimal adjustment of the low digit
DAA_HIGH_FIX = 0x60  # ... and of the high digit
DAA_HIGH_LIMIT = 0x99  # largest packed-BCD byte
ASCII_FIX = 0x106  # AAA: AX := AX + 106H
AAS_FIX_AL = 6  # AAS: AX := AX - 6; AH := AH - 1
AH_ONE = 0x100  # 1 in AH, as an AX value
KEEP_AH_LOW_DIGIT = 0xFF0F  # AL := AL AND 0FH with AH kept
AAD_FLAGS = fl.op(fl.K_ADD, 1)  # AAD's flags are those of an 8-bit ADD


def _set_al(c: CPU, al: int) -> None:
    r = c.regs
    r[EAX] = (r[EAX] & 0xFFFFFF00) | al


@handles("DAA")
def daa(ins: Instruction, ctx: Ctx) -> Handler:
    """DAA (SDM Vol.2 DAA): adjust AL after adding two packed-BCD values."""

    def h(c: CPU) -> None:
        f = status(c)
        old_al = c.regs[EAX] & 0xFF
        old_cf = f & fl.CF
        al = old_al
        cf = 0
        af = 0
        if (old_al & LOW_NIBBLE) > MAX_DIGIT or f & fl.AF:
            al = old_al + DAA_LOW_FIX
            cf = old_cf | (al >> 8)
            al &= 0xFF
            af = fl.AF
        if old_al > DAA_HIGH_LIMIT or old_cf:
            al = (al + DAA_HIGH_FIX) & 0xFF
            cf = 1
        else:
            cf = 0
        # undefined (measured on an Intel Xeon): OF = 0
        _set_al(c, al)
        c.set_status_flags(SZP8[al] | af | cf)

    return h


@handles("DAS")
def das(ins: Instruction, ctx: Ctx) -> Handler:
    """DAS (SDM Vol.2 DAS): adjust AL after subtracting two packed-BCD values."""

    def h(c: CPU) -> None:
        f = status(c)
        old_al = c.regs[EAX] & 0xFF
        old_cf = f & fl.CF
        al = old_al
        cf = 0
        af = 0
        if (old_al & LOW_NIBBLE) > MAX_DIGIT or f & fl.AF:
            borrow = 1 if al < DAA_LOW_FIX else 0
            al = (al - DAA_LOW_FIX) & 0xFF
            cf = old_cf | borrow
            af = fl.AF
        if old_al > DAA_HIGH_LIMIT or old_cf:
            al = (al - DAA_HIGH_FIX) & 0xFF
            cf = 1
        # undefined (measured on an Intel Xeon): OF = 0
        _set_al(c, al)
        c.set_status_flags(SZP8[al] | af | cf)

    return h


@handles("AAA")
def aaa(ins: Instruction, ctx: Ctx) -> Handler:
    """AAA (SDM Vol.2 AAA): adjust AL after an unpacked-BCD addition; AX := AX + 106H on a carry."""

    def h(c: CPU) -> None:
        f = status(c)
        r = c.regs
        ax = r[EAX] & 0xFFFF
        if (ax & LOW_NIBBLE) > MAX_DIGIT or f & fl.AF:
            ax = (ax + ASCII_FIX) & 0xFFFF
            adjust = fl.AF | fl.CF
        else:
            adjust = 0
        ax &= KEEP_AH_LOW_DIGIT
        r[EAX] = (r[EAX] & 0xFFFF0000) | ax
        # undefined (measured on an Intel Xeon): SF ZF PF from the final AL, OF = 0
        c.set_status_flags(SZP8[ax & 0xFF] | adjust)

    return h


@handles("AAS")
def aas(ins: Instruction, ctx: Ctx) -> Handler:
    """AAS (SDM Vol.2 AAS): adjust AL after an unpacked-BCD subtraction; AX := AX - 6, AH := AH - 1."""

    def h(c: CPU) -> None:
        f = status(c)
        r = c.regs
        ax = r[EAX] & 0xFFFF
        if (ax & LOW_NIBBLE) > MAX_DIGIT or f & fl.AF:
            ax = (ax - AAS_FIX_AL) & 0xFFFF
            ax = (ax - AH_ONE) & 0xFFFF
            adjust = fl.AF | fl.CF
        else:
            adjust = 0
        ax &= KEEP_AH_LOW_DIGIT
        r[EAX] = (r[EAX] & 0xFFFF0000) | ax
        # undefined (measured on an Intel Xeon): SF ZF PF from the final AL, OF = 0
        c.set_status_flags(SZP8[ax & 0xFF] | adjust)

    return h


@handles("AAM")
def aam(ins: Instruction, ctx: Ctx) -> Handler:
    """AAM imm8 (SDM Vol.2 AAM): AH := AL / imm8; AL := AL MOD imm8; #DE if imm8 = 0."""
    base = ins.immediate(0) & 0xFF

    def h(c: CPU) -> None:
        if base == 0:
            raise CpuFault(Vector.DE, None, detail="AAM with a zero base")
        r = c.regs
        al = r[EAX] & 0xFF
        q, m = divmod(al, base)
        r[EAX] = (r[EAX] & 0xFFFF0000) | q << 8 | m
        # undefined (measured on an Intel Xeon): OF AF CF = 0
        c.set_status_flags(SZP8[m])

    return h


@handles("AAD")
def aad(ins: Instruction, ctx: Ctx) -> Handler:
    """AAD imm8 (SDM Vol.2 AAD): AL := (AL + AH * imm8) AND FFH; AH := 0."""
    base = ins.immediate(0) & 0xFF

    def h(c: CPU) -> None:
        r = c.regs
        al = r[EAX] & 0xFF
        ah = (r[EAX] >> 8) & 0xFF
        product = (ah * base) & 0xFF
        res = (al + product) & 0xFF
        r[EAX] = (r[EAX] & 0xFFFF0000) | res
        # undefined (measured on an Intel Xeon): OF AF CF as for the 8-bit ADD of AL and AH * imm8
        c.cc_op = AAD_FLAGS
        c.cc_a = al
        c.cc_b = product
        c.cc_res = res

    return h
