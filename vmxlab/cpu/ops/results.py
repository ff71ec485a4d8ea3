"""SF, ZF and PF of a result, for instructions that materialise their status flags.

Shifts, rotates, bit tests and the BCD adjustments set a mix of flags that the
lazy ALU formulas of :mod:`vmxlab.cpu.flags` do not describe (CF from the last
bit shifted out, OF from a sign change), so their handlers compute the six
bits at once and store them with ``cpu.set_status_flags``.  Their common part,
"SF, ZF and PF are set according to the result" (SDM Vol.1 3.4.3.1), is here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import flags as fl

if TYPE_CHECKING:
    from ..core import CPU

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x80000000}
BITS = {1: 8, 2: 16, 4: 32}

#: SZP8[b]: SF, ZF and PF of the 8-bit result b
SZP8 = tuple(fl.PARITY[b] | (fl.ZF if b == 0 else 0) | (fl.SF if b & 0x80 else 0) for b in range(256))


def szp(result: int, size: int) -> int:
    """SF ZF PF of ``result`` (already truncated to ``size`` bytes)."""
    if size == 1:
        return SZP8[result]
    f = fl.PARITY[result & 0xFF]
    if result == 0:
        f |= fl.ZF
    if result & SIGN[size]:
        f |= fl.SF
    return f


def status(c: CPU) -> int:
    """The six status flags as they stand (materialising the lazy record)."""
    return fl.oszapc(c.cc_op, c.cc_a, c.cc_b, c.cc_res)


def signed(value: int, size: int) -> int:
    """``value`` (``size`` bytes, zero-extended) as a signed integer."""
    return value - (SIGN[size] << 1) if value & SIGN[size] else value
