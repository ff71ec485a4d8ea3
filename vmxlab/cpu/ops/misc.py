"""BOUND (SDM Vol.2 BOUND) and the undocumented SALC (opcode D6, "set AL from carry").

BOUND is a check that faults: #BR is a fault, so the saved EIP is the BOUND
instruction itself (SDM Vol.3A 6.15, interrupt 5) and the handler can fix the
bounds and retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction

from ..faults import CpuFault, Vector
from ..state import EAX
from . import Ctx, Handler, handles
from .operands import addr_size, ea_function, getter, mem_segment, op_size
from .results import signed

if TYPE_CHECKING:
    from ..core import CPU


@handles("BOUND")
def bound(ins: Instruction, ctx: Ctx) -> Handler:
    """BOUND r, m16&16 / m32&32: #BR unless lower <= index <= upper, all signed; the bounds are the two
    operands at ea and ea + size (SDM Vol.2 BOUND).  The register form is #UD (iced: invalid/EVEX)."""
    size = op_size(ins, 0)
    get_index = getter(ins, 0, size)
    ea = ea_function(ins)
    sreg = mem_segment(ins)
    amask = 0xFFFF if addr_size(ins) == 2 else 0xFFFFFFFF

    def h(c: CPU) -> None:
        off = ea(c.regs)
        lower = signed(c.rd(sreg, off, size), size)
        upper = signed(c.rd(sreg, (off + size) & amask, size), size)
        index = signed(get_index(c), size)
        if index < lower or index > upper:
            raise CpuFault(Vector.BR, None, detail=f"BOUND: {index} outside [{lower}, {upper}]")

    return h


@handles("SALC")
def salc(ins: Instruction, ctx: Ctx) -> Handler:
    """SALC: AL := 0FFH if CF else 0; flags unchanged.  Undocumented by Intel until recent SDMs list D6 as
    reserved, but executed by every IA-32 processor outside 64-bit mode (and by Bochs/QEMU)."""

    def h(c: CPU) -> None:
        r = c.regs
        r[EAX] = (r[EAX] & 0xFFFFFF00) | (0xFF if c.get_cf() else 0)

    return h
