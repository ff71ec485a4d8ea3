"""Virtual GDTR/IDTR and shadow descriptor tables -- what software VMMs did before VT-x.

A binary-translating VMM (VMware's, Adams & Agesen 2006) could not let a guest
own the real GDTR/IDTR, so it ran the guest on *shadow* copies of the guest's
tables placed in the VMM's memory, and kept the guest's own GDTR/IDTR values
in virtual registers.  The flaw Robin & Irvine (2000) pointed out: SGDT/SIDT
are not privileged, so a guest that executes them sees the shadow's address,
not the table it loaded -- the illusion breaks.

VMX's "descriptor-table exiting" control fixes exactly that: SGDT/SIDT/LGDT/
LIDT exit (reason 46) and the VMM answers from the virtual registers.  This
module models both sides: the shadow copies (real tables the CPU uses) and the
virtual registers the guest believes in.

The shadows live in the VMM's area above guest RAM, mapped into guest-physical
space by EPT at the same address (identity), and are reachable by the guest's
linear addresses only while guest paging is off; with guest paging on, the VMM
keeps the guest's own table in the real GDTR/IDTR (the exits and the virtual
registers still work) -- see docs/vmm.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cpu.state import CR0_PE, CR0_PG
from ..vmx.ept import EPT_READ, EPT_RWX
from ..vmx.fields import VmcsField

if TYPE_CHECKING:
    from .emu_vcpu import EmuVcpu

F = VmcsField
PAGE = 0x1000
MAX_TABLE = 0x10000  # a GDT or IDT limit is 16 bits (SDM Vol.3A 3.5.1, 6.10)


@dataclass
class TableRegister:
    base: int
    limit: int


class ShadowTable:
    """One shadow (GDT or IDT): a 64 KiB area in the VMM's memory, EPT-mapped at the same address."""

    def __init__(self, vcpu: EmuVcpu, base_field: VmcsField, limit_field: VmcsField, name: str) -> None:
        self.vcpu = vcpu
        self.base_field = base_field
        self.limit_field = limit_field
        self.name = name
        self.address = vcpu.alloc.pages(MAX_TABLE // PAGE)
        vcpu.ept.map(self.address, self.address, MAX_TABLE, EPT_RWX)
        self.virtual = TableRegister(vcpu.vmread(base_field), vcpu.vmread(limit_field))
        self.protected: set[int] = set()
        #: the guest executed LGDT/LIDT for this table (as opposed to the loader's initial value)
        self.loaded_by_guest = False

    def guest_paging(self) -> bool:
        return bool(self.vcpu.vmread(F.GUEST_CR0) & CR0_PG)

    def active(self) -> bool:
        """Shadowing applies in protected mode with paging off: in real mode the GDT is unused and
        the IVT is ordinary low memory; with paging on the shadow is not linearly reachable."""
        cr0 = self.vcpu.vmread(F.GUEST_CR0)
        return bool(cr0 & CR0_PE) and not cr0 & CR0_PG

    def load(self, base: int, limit: int) -> None:
        """The guest loaded its table register (LGDT/LIDT, emulated): remember it, rebuild the shadow."""
        self.virtual = TableRegister(base & 0xFFFFFFFF, limit & 0xFFFF)
        self.sync()

    def sync(self) -> None:
        """Copy the guest's table into the shadow and point the real register at the shadow; write-protect
        the guest's table in EPT so that later changes exit and are copied too."""
        vcpu = self.vcpu
        self._unprotect()
        if not self.active():
            vcpu.vmwrite(self.base_field, self.virtual.base)
            vcpu.vmwrite(self.limit_field, self.virtual.limit)
            return
        size = self.virtual.limit + 1
        data = vcpu.machine.memory.read_bytes(self.virtual.base, size)
        vcpu.machine.memory.write_bytes(self.address, data)
        vcpu.vmwrite(self.base_field, self.address)
        vcpu.vmwrite(self.limit_field, self.virtual.limit)
        first, last = self.virtual.base >> 12, (self.virtual.base + size - 1) >> 12
        for page in range(first, last + 1):
            if page << 12 < vcpu.guest_size:
                vcpu.set_page_perms(page << 12, EPT_READ | 0b100)  # read + execute: writes exit (48)
                self.protected.add(page << 12)
        vcpu._flush_ept_caches()

    def _unprotect(self) -> None:
        for page in self.protected:
            self.vcpu.set_page_perms(page, EPT_RWX)
        self.protected.clear()

    def covers(self, gpa: int) -> bool:
        return (gpa & ~(PAGE - 1)) in self.protected

    def write_back_descriptor(self, selector: int) -> None:
        """After the CPU changed a descriptor in the shadow (LTR's busy bit, accessed bits), copy it
        to the guest's table so the guest sees its own table change as on hardware."""
        index = selector & 0xFFF8
        if not self.active() or index + 7 > self.virtual.limit:
            return
        mem = self.vcpu.machine.memory
        was = set(self.protected)
        self._unprotect()
        mem.write_bytes(self.virtual.base + index, mem.read_bytes(self.address + index, 8))
        for page in was:
            self.vcpu.set_page_perms(page, EPT_READ | 0b100)
            self.protected.add(page)
        self.vcpu._flush_ept_caches()


class ShadowTables:
    """The VMM's GDT and IDT shadows with their virtual registers."""

    def __init__(self, vcpu: EmuVcpu) -> None:
        self.gdt = ShadowTable(vcpu, F.GUEST_GDTR_BASE, F.GUEST_GDTR_LIMIT, "GDT")
        self.idt = ShadowTable(vcpu, F.GUEST_IDTR_BASE, F.GUEST_IDTR_LIMIT, "IDT")
        self.gdt.sync()
        self.idt.sync()

    def table_for(self, gpa: int) -> ShadowTable | None:
        for t in (self.gdt, self.idt):
            if t.covers(gpa):
                return t
        return None
