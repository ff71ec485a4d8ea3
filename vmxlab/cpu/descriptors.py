"""Segment descriptors: reading them from the GDT/LDT and decoding them (SDM Vol.3A 3.4.5, 3.5).

Descriptor reads are implicit supervisor accesses (SDM Vol.3A 4.6.1): they are
allowed at any CPL whatever the U/S bit of the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .faults import CpuFault, Vector
from .state import AR_CODE, AR_P, AR_S

if TYPE_CHECKING:
    from .core import CPU

# System descriptor types (SDM Vol.3A 3.5, Table 3-2), the "type" field with S = 0
SYS_TSS16_AVAIL = 0x1
SYS_LDT = 0x2
SYS_TSS16_BUSY = 0x3
SYS_CALL_GATE16 = 0x4
SYS_TASK_GATE = 0x5
SYS_INT_GATE16 = 0x6
SYS_TRAP_GATE16 = 0x7
SYS_TSS32_AVAIL = 0x9
SYS_TSS32_BUSY = 0xB
SYS_CALL_GATE32 = 0xC
SYS_INT_GATE32 = 0xE
SYS_TRAP_GATE32 = 0xF

SYS_TYPE_NAMES = {
    0x1: "16-bit TSS (available)", 0x2: "LDT", 0x3: "16-bit TSS (busy)", 0x4: "16-bit call gate",
    0x5: "task gate", 0x6: "16-bit interrupt gate", 0x7: "16-bit trap gate", 0x9: "32-bit TSS (available)",
    0xB: "32-bit TSS (busy)", 0xC: "32-bit call gate", 0xE: "32-bit interrupt gate", 0xF: "32-bit trap gate",
}


@dataclass(frozen=True)
class Descriptor:
    """A decoded 8-byte descriptor.  ``ar`` is in the VMX access-rights layout (see state.py)."""

    raw: int
    base: int
    limit: int  # scaled by G: the byte limit
    ar: int

    @classmethod
    def decode(cls, raw: int) -> Descriptor:
        lo = raw & 0xFFFFFFFF
        hi = raw >> 32
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0x000F0000)
        ar = ((hi >> 8) & 0xFF) | ((hi >> 8) & 0xF000)
        if ar & (1 << 15):  # G: limit in 4 KiB units (SDM Vol.3A 3.4.5)
            limit = (limit << 12) | 0xFFF
        return cls(raw, base, limit, ar)

    @property
    def type(self) -> int:
        return self.ar & 0xF

    @property
    def s(self) -> bool:
        return bool(self.ar & AR_S)

    @property
    def dpl(self) -> int:
        return (self.ar >> 5) & 3

    @property
    def present(self) -> bool:
        return bool(self.ar & AR_P)

    @property
    def is_code(self) -> bool:
        return self.s and bool(self.ar & AR_CODE)

    @property
    def is_data(self) -> bool:
        return self.s and not self.ar & AR_CODE

    # gate fields (SDM Vol.3A 5.8.3 Figure 5-8, 6.11 Figure 6-2)
    @property
    def gate_selector(self) -> int:
        return (self.raw >> 16) & 0xFFFF

    @property
    def gate_offset(self) -> int:
        off = self.raw & 0xFFFF
        if self.type & 0x8:  # 32-bit gates carry offset 31:16
            off |= (self.raw >> 32) & 0xFFFF0000
        return off

    @property
    def gate_param_count(self) -> int:
        return (self.raw >> 32) & 0x1F


def read_descriptor(cpu: CPU, selector: int, error_code: int | None = None, vector: int = Vector.GP) -> Descriptor:
    """Fetch the descriptor for ``selector`` from the GDT or LDT (TI bit).

    A selector beyond the table limit raises ``vector`` (default #GP) with
    error code ``selector & ~3`` (SDM Vol.3A 6.13), or ``error_code`` if given.
    """
    index = selector & 0xFFF8
    ec = (selector & 0xFFFC) if error_code is None else error_code
    if selector & 4:  # TI = 1: LDT
        ldtr = cpu.ldtr
        if ldtr.unusable or not ldtr.ar & AR_P or ldtr.selector & 0xFFFC == 0:
            raise CpuFault(vector, ec, detail=f"selector {selector:#x} refers to the LDT but LDTR is null")
        base, limit = ldtr.base, ldtr.limit
    else:
        base, limit = cpu.gdtr_base, cpu.gdtr_limit
    if index + 7 > limit:
        raise CpuFault(vector, ec, detail=f"selector {selector:#x} beyond table limit {limit:#x}")
    raw = cpu.lread(base + index, 8, user=False)
    return Descriptor.decode(raw)


def descriptor_address(cpu: CPU, selector: int) -> int:
    """Linear address of the descriptor of ``selector`` (for setting accessed/busy bits)."""
    base = cpu.ldtr.base if selector & 4 else cpu.gdtr_base
    return (base + (selector & 0xFFF8)) & 0xFFFFFFFF


def set_accessed(cpu: CPU, selector: int, desc: Descriptor) -> None:
    """Set the accessed bit of a code/data descriptor in memory (SDM Vol.3A 3.4.5.1)."""
    if desc.s and not desc.ar & 1:
        addr = descriptor_address(cpu, selector) + 5
        cpu.lwrite(addr, 1, (desc.raw >> 40) & 0xFF | 1, user=False)
