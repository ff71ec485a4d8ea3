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
        """Decode 8 descriptor bytes.  Descriptors are immutable values of their raw bits, so decoded
        ones are remembered: interrupt delivery and far transfers decode the same few gates and
        segments over and over (a system call decodes three)."""
        d = _DECODED.get(raw)
        if d is None:
            if len(_DECODED) > 4096:
                _DECODED.clear()
            d = _DECODED[raw] = cls._decode(raw)
        return d

    @classmethod
    def _decode(cls, raw: int) -> Descriptor:
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

    @property
    def is_tss(self) -> bool:
        """A 16- or 32-bit TSS descriptor, available or busy (SDM Vol.3A 7.2.2)."""
        return not self.s and self.type in (SYS_TSS16_AVAIL, SYS_TSS16_BUSY, SYS_TSS32_AVAIL, SYS_TSS32_BUSY)

    @property
    def tss_busy(self) -> bool:
        return bool(self.type & 0x2)

    @property
    def tss32(self) -> bool:
        return bool(self.type & 0x8)


def table_limit_ok(cpu: CPU, selector: int) -> bool:
    """Whether the 8 bytes of ``selector``'s descriptor lie inside its table (SDM Vol.3A 3.5.1).

    A selector with TI = 1 needs a usable LDT; LDTR is unusable after LLDT 0 and
    after a task switch to a task without an LDT (SDM Vol.3A 3.5.1, 7.2.5).
    """
    index = selector & 0xFFF8
    if selector & 4:
        ldtr = cpu.ldtr
        if ldtr.unusable or not ldtr.ar & AR_P:
            return False
        return index + 7 <= ldtr.limit
    return index + 7 <= cpu.gdtr_limit


_DECODED: dict[int, Descriptor] = {}


def read_descriptor(cpu: CPU, selector: int, error_code: int | None = None,
                    vector: int = Vector.GP) -> Descriptor:
    """Fetch the descriptor for ``selector`` from the GDT or LDT (TI bit).

    A selector beyond the table limit raises ``vector`` (default #GP) with
    error code ``selector & ~3`` (SDM Vol.3A 6.13), or ``error_code`` if given.
    Callers check for the null selector first: its meaning differs per instruction.
    """
    ec = (selector & 0xFFFC) if error_code is None else error_code
    if not table_limit_ok(cpu, selector):
        where = "LDT" if selector & 4 else "GDT"
        raise CpuFault(vector, ec, detail=f"selector {selector:#x} outside the {where} (or no LDT loaded)")
    return Descriptor.decode(cpu.lread(descriptor_address(cpu, selector), 8, user=False))


def peek_descriptor(cpu: CPU, selector: int) -> Descriptor | None:
    """The descriptor of a non-null ``selector``, or None if it lies outside its table.

    For LAR, LSL, VERR and VERW, which report an inaccessible selector with ZF = 0
    instead of faulting (SDM Vol.2 LAR: "If the segment selector ... is outside the
    descriptor table limit, ... ZF is cleared").  A page fault on the table itself
    still faults: the table read is an ordinary implicit supervisor access.
    """
    if not table_limit_ok(cpu, selector):
        return None
    return Descriptor.decode(cpu.lread(descriptor_address(cpu, selector), 8, user=False))


def descriptor_address(cpu: CPU, selector: int) -> int:
    """Linear address of the descriptor of ``selector`` (for setting accessed/busy bits)."""
    base = cpu.ldtr.base if selector & 4 else cpu.gdtr_base
    return (base + (selector & 0xFFF8)) & 0xFFFFFFFF


def set_accessed(cpu: CPU, selector: int, desc: Descriptor) -> None:
    """Set the accessed bit of a code/data descriptor in memory (SDM Vol.3A 3.4.5.1).

    The store is an implicit supervisor write: with CR0.WP = 1 a read-only GDT
    page faults (SDM Vol.3A 4.6.1).  A GDT in ROM simply keeps the bit clear.
    """
    if desc.s and not desc.ar & 1:
        addr = descriptor_address(cpu, selector) + 5
        cpu.lwrite(addr, 1, ((desc.raw >> 40) & 0xFF) | 1, user=False)


def set_tss_busy(cpu: CPU, selector: int, busy: bool) -> None:
    """Set or clear the busy bit (type bit 1) of the GDT TSS descriptor of ``selector``
    (SDM Vol.3A 7.2.2; LTR and task switches do this as a locked read-modify-write)."""
    addr = (cpu.gdtr_base + (selector & 0xFFF8) + 5) & 0xFFFFFFFF
    byte5 = cpu.lread(addr, 1, user=False)
    new = (byte5 | 0x2) if busy else (byte5 & ~0x2)
    if new != byte5:
        cpu.lwrite(addr, 1, new, user=False)
