"""Linear-address translation: 32-bit paging and PAE paging (SDM Vol.3A chapter 4).

:func:`walk` is the TLB-miss path.  It reads the paging structures (through EPT
when the CPU is in VMX non-root operation with EPT on), checks every
permission, then sets the accessed/dirty flags and returns the physical
address -- or raises #PF with CR2 and the error code of SDM Vol.3A 4.7.

The modelled CPU has MAXPHYADDR = 36 (CPUID.80000008H:EAX[7:0]); physical
addresses above the RAM simply read as all ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .faults import CpuFault, Vector
from .state import CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, EFER_NXE

if TYPE_CHECKING:
    from .core import CPU

MAXPHYADDR = 36
PHYS_MASK = (1 << MAXPHYADDR) - 1

P = 1 << 0
RW = 1 << 1
US = 1 << 2
A = 1 << 5
D = 1 << 6
PS = 1 << 7
G = 1 << 8
XD = 1 << 63

# error-code bits (SDM Vol.3A 4.7, Figure 4-12); the access code uses the same bits
EC_P, EC_W, EC_U, EC_RSVD, EC_I = 1, 2, 4, 8, 16

# Reserved bits (SDM Vol.3A 4.4.2 Table 4-8 .. 4-11, with MAXPHYADDR = 36)
_PAE_ABOVE_MAXPHY = ((1 << 63) - 1) & ~PHYS_MASK  # bits 62:36
PDPTE_RESERVED = 0x1E6 | _PAE_ABOVE_MAXPHY | XD  # bits 2:1, 8:5, 62:36 and 63 (SDM 4.4.1 Table 4-8)
PAE_2M_RESERVED = 0x1FE000  # bits 20:13 of a 2 MiB PDE
PSE_4M_RESERVED = 0x3FE000  # bits 21:13 of a 4 MiB PDE: PSE-36 is not modelled, so PA[39:32] must be 0


def _read_entry(cpu: CPU, addr: int, size: int, la: int) -> int:
    """Read a paging-structure entry at guest-physical ``addr`` (EPT-translated in non-root)."""
    if cpu.ept is not None:
        addr = cpu.ept.translate_walk(addr, la)
    return cpu.memory.read(addr, size)


def _write_entry(cpu: CPU, addr: int, size: int, value: int, la: int) -> None:
    if cpu.ept is not None:
        addr = cpu.ept.translate_walk(addr, la, write=True)
    cpu.memory.write(addr, size, value)


def _fault(cpu: CPU, la: int, acc: int, present: bool, rsvd: bool = False) -> CpuFault:
    """Build #PF (SDM Vol.3A 4.7): CR2 = la; I/D only with PAE + NXE (no SMEP on this model)."""
    code = acc & (EC_W | EC_U)
    if present:
        code |= EC_P
    if rsvd:
        code |= EC_RSVD | EC_P
    if acc & EC_I and cpu.cr4 & CR4_PAE and cpu.efer & EFER_NXE:
        code |= EC_I
    return CpuFault(Vector.PF, code, cr2=la, detail=f"linear {la:#010x}")


def _check(cpu: CPU, la: int, acc: int, rw: int, us: int, xd: int) -> None:
    """Permission checks on the combined R/W, U/S and XD of the walk (SDM Vol.3A 4.6)."""
    user = acc & EC_U
    if user and not us:
        raise _fault(cpu, la, acc, True)
    if acc & EC_W and not rw and (user or cpu.cr0 & CR0_WP):
        raise _fault(cpu, la, acc, True)
    if acc & EC_I and xd:
        raise _fault(cpu, la, acc, True)


def translate_only(cpu: CPU, la: int, acc: int) -> tuple[int, bool, int]:
    """The walk itself, without TLB bookkeeping: (guest-)physical address, global, large-page shift.

    Used as is by a VMM that must translate a guest-linear address from the guest's paging state in
    the VMCS (vmm/guest_memory.py); ``cpu`` then only needs cr0, cr3, cr4, efer, pdptes, memory, ept.
    """
    if cpu.cr4 & CR4_PAE:
        return _walk_pae(cpu, la, acc)
    return _walk_32(cpu, la, acc)


def walk(cpu: CPU, la: int, acc: int) -> int:
    """Translate ``la`` for access ``acc`` (EC_W | EC_U | EC_I bits); return the physical address.

    Besides the address, the walk tells the TLB two things it must remember to
    flush exactly what the SDM says: whether the translation is global (kept
    across MOV CR3 when CR4.PGE = 1, SDM Vol.3A 4.10.2.4) and whether it came
    from a 2/4 MiB page (INVLPG of any address in it drops the whole page,
    SDM Vol.3A 4.10.4.1, although the TLB caches it 4 KiB at a time).
    """
    pa, glob, large = translate_only(cpu, la, acc)
    if glob and cpu.cr4 & CR4_PGE:
        cpu.tlb_global.add(la >> 12)
    elif cpu.tlb_global:
        cpu.tlb_global.discard(la >> 12)  # the page is no longer global: MOV CR3 must drop it
    if large:
        first = (la >> large) << (large - 12)  # first 4 KiB page number of the large page
        span = (first, 1 << (large - 12))
        for region in range(first >> 9, (first + span[1]) >> 9):  # 2 MiB regions it covers
            cpu.tlb_large[region] = span
    if not cpu.machine.a20:
        pa &= ~(1 << 20)  # the A20 gate masks the physical address (SDM Vol.3A 21.1.1 / PC hardware)
    if cpu.ept is not None:
        return cpu.ept.translate(pa, acc, la, final=True)
    return pa


def _set_ad(cpu: CPU, addr: int, entry: int, flags: int, la: int, size: int) -> None:
    """Set accessed/dirty flags in an entry if they are not yet set (SDM Vol.3A 4.8)."""
    if entry & flags != flags:
        _write_entry(cpu, addr, size, entry | flags, la)


def _walk_32(cpu: CPU, la: int, acc: int) -> tuple[int, bool, int]:
    """32-bit paging (SDM Vol.3A 4.3): 4 KiB pages, and 4 MiB pages when CR4.PSE = 1."""
    pde_addr = (cpu.cr3 & 0xFFFFF000) | ((la >> 20) & 0xFFC)
    pde = _read_entry(cpu, pde_addr, 4, la)
    if not pde & P:
        raise _fault(cpu, la, acc, False)
    if pde & PS and cpu.cr4 & CR4_PSE:
        if pde & PSE_4M_RESERVED:
            raise _fault(cpu, la, acc, True, rsvd=True)
        _check(cpu, la, acc, pde & RW, pde & US, 0)
        _set_ad(cpu, pde_addr, pde, A | (D if acc & EC_W else 0), la, 4)
        return (pde & 0xFFC00000) | (la & 0x3FFFFF), bool(pde & G), 22
    pte_addr = (pde & 0xFFFFF000) | ((la >> 10) & 0xFFC)
    pte = _read_entry(cpu, pte_addr, 4, la)
    if not pte & P:
        raise _fault(cpu, la, acc, False)
    _check(cpu, la, acc, pde & pte & RW, pde & pte & US, 0)
    _set_ad(cpu, pde_addr, pde, A, la, 4)
    _set_ad(cpu, pte_addr, pte, A | (D if acc & EC_W else 0), la, 4)
    return (pte & 0xFFFFF000) | (la & 0xFFF), bool(pte & G), 0


def _walk_pae(cpu: CPU, la: int, acc: int) -> tuple[int, bool, int]:
    """PAE paging (SDM Vol.3A 4.4): PDPTE registers, 2 MiB and 4 KiB pages, XD with EFER.NXE."""
    nxe = cpu.efer & EFER_NXE
    rsvd_xd = 0 if nxe else XD  # bit 63 is reserved unless NXE (SDM Vol.3A 4.4.2)
    pdpte = cpu.pdptes[la >> 30]
    if not pdpte & P:
        raise _fault(cpu, la, acc, False)
    pde_addr = (pdpte & PHYS_MASK & ~0xFFF) | ((la >> 18) & 0xFF8)
    pde = _read_entry(cpu, pde_addr, 8, la)
    if not pde & P:
        raise _fault(cpu, la, acc, False)
    if pde & (_PAE_ABOVE_MAXPHY | rsvd_xd):
        raise _fault(cpu, la, acc, True, rsvd=True)
    if pde & PS:
        if pde & PAE_2M_RESERVED:
            raise _fault(cpu, la, acc, True, rsvd=True)
        _check(cpu, la, acc, pde & RW, pde & US, pde & XD if nxe else 0)
        _set_ad(cpu, pde_addr, pde, A | (D if acc & EC_W else 0), la, 8)
        return (pde & PHYS_MASK & ~0x1FFFFF) | (la & 0x1FFFFF), bool(pde & G), 21
    pte_addr = (pde & PHYS_MASK & ~0xFFF) | ((la >> 9) & 0xFF8)
    pte = _read_entry(cpu, pte_addr, 8, la)
    if not pte & P:
        raise _fault(cpu, la, acc, False)
    if pte & (_PAE_ABOVE_MAXPHY | rsvd_xd):
        raise _fault(cpu, la, acc, True, rsvd=True)
    xd = (pde | pte) & XD if nxe else 0
    _check(cpu, la, acc, pde & pte & RW, pde & pte & US, xd)
    _set_ad(cpu, pde_addr, pde, A, la, 8)
    _set_ad(cpu, pte_addr, pte, A | (D if acc & EC_W else 0), la, 8)
    return (pte & PHYS_MASK & ~0xFFF) | (la & 0xFFF), bool(pte & G), 0


def load_pdptes(cpu: CPU) -> None:
    """Load the four PDPTE registers from CR3 (SDM Vol.3A 4.4.1): on MOV to CR3 with PAE paging,
    and when CR0/CR4 changes enable PAE paging.  A reserved bit in a present PDPTE is #GP(0)."""
    base = cpu.cr3 & 0xFFFFFFE0
    entries = []
    for i in range(4):
        addr = base + 8 * i
        if cpu.ept is not None:
            addr = cpu.ept.translate_walk(addr, None)
        e = cpu.memory.read(addr, 8)
        if e & P and e & PDPTE_RESERVED:
            raise CpuFault(Vector.GP, 0, detail=f"reserved bit in PDPTE{i} {e:#x}")
        entries.append(e)
    cpu.pdptes = entries
