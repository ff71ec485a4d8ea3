"""Flag instructions (SDM Vol.2: CLC STC CMC CLD STD CLI STI PUSHF/PUSHFD POPF/POPFD LAHF SAHF).

CLI/STI are IOPL-sensitive: #GP(0) when CPL > IOPL in protected mode (the
model has no virtual-8086 mode and no CR4.PVI).  POPF never faults for
privilege: bits the current privilege may not change are silently kept --
the classic sensitive-but-unprivileged instruction (see far.merge_eflags).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction

from .. import flags as fl
from ..faults import CpuFault, Vector
from . import Ctx, Handler, handles
from .control import operand_size

if TYPE_CHECKING:
    from ..core import CPU


def _status_update(c: CPU, set_bits: int, clear_bits: int, toggle: int = 0) -> None:
    f = fl.oszapc(c.cc_op, c.cc_a, c.cc_b, c.cc_res)
    c.set_status_flags(((f | set_bits) & ~clear_bits) ^ toggle)


@handles("CLC")
def clc(ins: Instruction, ctx: Ctx) -> Handler:
    return lambda c: _status_update(c, 0, fl.CF)


@handles("STC")
def stc(ins: Instruction, ctx: Ctx) -> Handler:
    return lambda c: _status_update(c, fl.CF, 0)


@handles("CMC")
def cmc(ins: Instruction, ctx: Ctx) -> Handler:
    return lambda c: _status_update(c, 0, 0, fl.CF)


@handles("CLD")
def cld(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        c.eflags_sys &= ~fl.DF

    return h


@handles("STD")
def std(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        c.eflags_sys |= fl.DF

    return h


def _check_iopl(c: CPU, what: str) -> None:
    if c.pe and c.cpl > c.iopl:
        raise CpuFault(Vector.GP, 0, detail=f"{what} at CPL {c.cpl} > IOPL {c.iopl}")


@handles("CLI", ends_block=True)
def cli(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        _check_iopl(c, "CLI")
        c.eflags_sys &= ~fl.IF

    return h


@handles("STI", ends_block=True)
def sti(ins: Instruction, ctx: Ctx) -> Handler:
    """STI: IF = 1; if IF was 0, interrupts stay blocked until after the next instruction (SDM Vol.2 STI)."""

    def h(c: CPU) -> None:
        _check_iopl(c, "STI")
        if not c.eflags_sys & fl.IF:
            c.eflags_sys |= fl.IF
            c.inhibit_pending = True
        c.event_pending = True

    return h


@handles("PUSHF", "PUSHFD")
def pushf(ins: Instruction, ctx: Ctx) -> Handler:
    """PUSHF(D): the real EFLAGS with VM and RF cleared in the image (SDM Vol.2 PUSHF)."""
    size = operand_size(ins, ctx)

    def h(c: CPU) -> None:
        value = c.get_eflags() & ~(fl.VM | fl.RF)
        c.push(value & (0xFFFFFFFF if size == 4 else 0xFFFF), size)

    return h


@handles("POPF", "POPFD", ends_block=True)
def popf(ins: Instruction, ctx: Ctx) -> Handler:
    from ..far import merge_eflags

    size = operand_size(ins, ctx)

    def h(c: CPU) -> None:
        value = c.peek(0, size)
        c.adjust_sp(size)
        merge_eflags(c, value, size, c.cpl, keep_rf=False)
        c.event_pending = True

    return h


@handles("LAHF")
def lahf(ins: Instruction, ctx: Ctx) -> Handler:
    """AH = SF:ZF:0:AF:0:PF:1:CF."""

    def h(c: CPU) -> None:
        f = (fl.oszapc(c.cc_op, c.cc_a, c.cc_b, c.cc_res) & 0xD5) | fl.RESERVED1
        c.regs[0] = (c.regs[0] & 0xFFFF00FF) | (f << 8)

    return h


@handles("SAHF")
def sahf(ins: Instruction, ctx: Ctx) -> Handler:
    """SF ZF AF PF CF = AH bits 7 6 4 2 0; OF unchanged."""

    def h(c: CPU) -> None:
        f = fl.oszapc(c.cc_op, c.cc_a, c.cc_b, c.cc_res)
        ah = (c.regs[0] >> 8) & 0xD5
        c.set_status_flags((f & fl.OF) | ah)

    return h
