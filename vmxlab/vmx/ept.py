"""EPT, the extended page tables (SDM Vol.3C 29.3, "The Extended Page Table Mechanism (EPT)";
older editions 28.2): the walk from guest-physical to host-physical addresses that
:class:`EptTranslator` performs as ``cpu.ept`` while a guest runs with "enable EPT", and
:class:`EptBuilder`, which writes EPT paging structures into memory for a VMM.

The walk is 4 levels (PML4, PDPT, PD, PT; IA32_VMX_EPT_VPID_CAP bit 6) and
supports 2-MiB and 1-GiB pages, execute-only translations and, with EPTP bit 6,
accessed/dirty flags.  Failures exit:

* EPT misconfiguration (reason 49, SDM Vol.3C 29.3.3.1): a present entry (any of
  bits 2:0 set) with W = 1 and R = 0, a reserved bit set, or a leaf with memory
  type 2, 3 or 7.  The qualification is undefined (0); the guest-physical
  address is saved.
* EPT violation (reason 48, SDM Vol.3C 29.3.3.2): a not-present entry on the
  way, or an access the AND of the R/W/X bits does not allow.  The qualification
  is :class:`~vmxlab.vmx.qualifications.EptViolationQualification`.

VPIDs are accepted and ignored: nothing is tagged, every VM entry and exit
flushes the CPU's TLB (allowed by SDM Vol.3C 29.4.3: flushing more is always
correct).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..cpu.faults import VmExitSignal
from ..cpu.paging import MAXPHYADDR
from .capabilities import DEFAULT_CAPABILITIES, EPT_VPID_CAP, MEMORY_TYPE_UC, MEMORY_TYPE_WB, VmxCapabilities
from .exit_reasons import ExitReason
from .qualifications import EptViolationQualification

# EPT paging-structure entries (SDM Vol.3C 29.3.2, Tables 29-1 to 29-6)
EPT_READ = 1 << 0
EPT_WRITE = 1 << 1
EPT_EXECUTE = 1 << 2
EPT_RWX = EPT_READ | EPT_WRITE | EPT_EXECUTE
EPT_MEMORY_TYPE_SHIFT = 3  # bits 5:3 of a leaf entry
EPT_IGNORE_PAT = 1 << 6
EPT_LARGE_PAGE = 1 << 7  # bit 7 of a PDPTE (1 GiB) or PDE (2 MiB): the entry maps a page
EPT_ACCESSED = 1 << 8
EPT_DIRTY = 1 << 9
EPT_SUPPRESS_VE = 1 << 63
EPT_NONLEAF_RESERVED = 0xF8  # bits 7:3 of PML4Es and of PDPTEs/PDEs that reference a table
EPT_1G_RESERVED = 0x3FFFF000  # bits 29:12 of a PDPTE that maps a 1-GiB page
EPT_2M_RESERVED = 0x1FF000  # bits 20:12 of a PDE that maps a 2-MiB page
#: bits 51:MAXPHYADDR of any entry (physical-address bits the processor does not have)
EPT_ABOVE_MAXPHY = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)
PHYS_MASK = (1 << MAXPHYADDR) - 1
#: memory types a leaf may not use (SDM Vol.3C 29.3.3.1): 2, 3 and 7 are reserved
RESERVED_MEMORY_TYPES = frozenset({2, 3, 7})

# EPTP (SDM Vol.3C 25.6.11, Table 25-9 "Format of Extended-Page-Table Pointer")
EPTP_MEMORY_TYPE_MASK = 0x7
EPTP_WALK_LENGTH_SHIFT = 3  # bits 5:3: page-walk length minus 1
EPTP_WALK_LENGTH_MASK = 0x7
EPT_WALK_LENGTH = 4
EPTP_ACCESSED_DIRTY = 1 << 6
EPTP_RESERVED = 0xF80  # bits 11:7

LEVEL_NAMES = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
PAGE_SIZES = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}

# The CPU's access description (core.py PF_* bits): write and instruction fetch
ACC_WRITE = 1 << 1
ACC_FETCH = 1 << 4


def make_eptp(pml4: int, memory_type: int = MEMORY_TYPE_WB, accessed_dirty: bool = False) -> int:
    """An EPTP value for a 4-level walk from the PML4 table at ``pml4``."""
    return (
        pml4 & ~0xFFF
        | memory_type
        | (EPT_WALK_LENGTH - 1) << EPTP_WALK_LENGTH_SHIFT
        | (EPTP_ACCESSED_DIRTY if accessed_dirty else 0)
    )


def eptp_problem(eptp: int, caps: VmxCapabilities = DEFAULT_CAPABILITIES) -> str | None:
    """Why an EPTP is invalid, or None (the checks of SDM Vol.3C 27.2.1.1, "VM-Execution Control
    Fields", for "enable EPT" = 1)."""
    mt = eptp & EPTP_MEMORY_TYPE_MASK
    allowed = {MEMORY_TYPE_UC: EPT_VPID_CAP.MEMORY_TYPE_UC, MEMORY_TYPE_WB: EPT_VPID_CAP.MEMORY_TYPE_WB}
    if mt not in allowed or not caps.supports_ept(allowed[mt]):
        return f"EPTP memory type {mt} (bits 2:0) is not one IA32_VMX_EPT_VPID_CAP allows (0 UC, 6 WB)"
    walk = ((eptp >> EPTP_WALK_LENGTH_SHIFT) & EPTP_WALK_LENGTH_MASK) + 1
    if walk != EPT_WALK_LENGTH:
        return f"EPTP page-walk length {walk} (bits 5:3 + 1) is not 4"
    if eptp & EPTP_ACCESSED_DIRTY and not caps.supports_ept(EPT_VPID_CAP.ACCESSED_DIRTY_FLAGS):
        return "EPTP bit 6 (accessed/dirty flags) set but IA32_VMX_EPT_VPID_CAP bit 21 is 0"
    if eptp & EPTP_RESERVED:
        return f"EPTP reserved bits 11:7 set ({eptp & EPTP_RESERVED:#x})"
    if eptp >> MAXPHYADDR:
        return f"EPTP sets bits beyond the physical-address width ({MAXPHYADDR} bits)"
    return None


class Memory(Protocol):
    def read(self, addr: int, size: int) -> int: ...

    def write(self, addr: int, size: int, value: int) -> None: ...


class EptTranslator:
    """``cpu.ept``: guest-physical to host-physical through the EPT paging structures.

    A translation cache (guest frame -> host frame and the AND of R/W/X) stands
    for the processor's "guest-physical mappings" (SDM Vol.3C 29.4.1): it is
    filled only by successful walks, dropped by :meth:`invalidate` (INVEPT, VM
    entry), and a write through a cached entry whose dirty flag is not yet set
    takes the walk again.
    """

    def __init__(self, memory: Memory, eptp: int, caps: VmxCapabilities = DEFAULT_CAPABILITIES) -> None:
        self.memory = memory
        self.eptp = eptp
        self.pml4 = eptp & PHYS_MASK & ~0xFFF
        self.accessed_dirty = bool(eptp & EPTP_ACCESSED_DIRTY)
        self.execute_only = caps.supports_ept(EPT_VPID_CAP.EXECUTE_ONLY)
        self.pages_1g = caps.supports_ept(EPT_VPID_CAP.PDPTE_1GB_PAGES)
        self.pages_2m = caps.supports_ept(EPT_VPID_CAP.PDE_2MB_PAGES)
        #: guest frame -> (host frame, AND of RWX, dirty already set)
        self._cache: dict[int, tuple[int, int, bool]] = {}
        #: called after every walk that reads the structures (tests count walks; traces show them)
        self.on_walk: Callable[[int], None] | None = None
        #: why the last EPT misconfiguration happened (the exit itself has no qualification)
        self.last_misconfiguration = ""

    def invalidate(self) -> None:
        """Drop all cached guest-physical mappings (INVEPT, or a VM entry)."""
        self._cache.clear()

    # -------------------------------------------------------------- the cpu.ept protocol

    def translate(self, gpa: int, acc: int, la: int | None, final: bool = True) -> int:
        """The host-physical address of a data access or fetch at guest-physical ``gpa``."""
        kind = EPT_EXECUTE if acc & ACC_FETCH else EPT_WRITE if acc & ACC_WRITE else EPT_READ
        return self._translate(gpa, kind, la, final)

    def translate_walk(self, gpa: int, la: int | None, write: bool = False) -> int:
        """The host-physical address of a guest paging-structure entry (read, or A/D write).

        With EPT accessed/dirty flags enabled such accesses count as writes
        (SDM Vol.3C 29.3.3.2): they need W = 1 and set the dirty flag."""
        kind = EPT_WRITE if write or self.accessed_dirty else EPT_READ
        return self._translate(gpa, kind, la, False)

    def _translate(self, gpa: int, kind: int, la: int | None, final: bool) -> int:
        hit = self._cache.get(gpa >> 12)
        if hit is not None:
            frame, perms, dirty = hit
            if perms & kind and (kind != EPT_WRITE or dirty):
                return frame | (gpa & 0xFFF)
        return self._walk(gpa, kind, la, final)

    # -------------------------------------------------------------- the walk

    def _walk(self, gpa: int, kind: int, la: int | None, final: bool) -> int:
        mem = self.memory
        table = self.pml4
        perms = EPT_RWX
        used: list[tuple[int, int]] = []
        level = 4
        while True:
            index = (gpa >> (12 + 9 * (level - 1))) & 0x1FF
            addr = table + index * 8
            entry = mem.read(addr, 8)
            rwx = entry & EPT_RWX
            perms &= rwx
            if not rwx:
                raise self._violation(gpa, kind, 0, la, final)
            leaf = level == 1 or (level in (2, 3) and entry & EPT_LARGE_PAGE)
            problem = self._misconfiguration(entry, level, leaf)
            if problem is not None:
                self.last_misconfiguration = f"{LEVEL_NAMES[level]} {entry:#x} at {addr:#x}: {problem}"
                raise VmExitSignal(ExitReason.EPT_MISCONFIGURATION, 0, guest_physical=gpa)
            used.append((addr, entry))
            if leaf:
                break
            table = entry & PHYS_MASK & ~0xFFF
            level -= 1
        if not perms & kind:
            raise self._violation(gpa, kind, perms, la, final)
        size = PAGE_SIZES[level]
        frame = (entry & PHYS_MASK & ~(size - 1)) | (gpa & (size - 1) & ~0xFFF)
        if self.accessed_dirty:
            for i, (addr, e) in enumerate(used):
                want = EPT_ACCESSED | (EPT_DIRTY if kind == EPT_WRITE and i == len(used) - 1 else 0)
                if e & want != want:
                    mem.write(addr, 8, e | want)
        self._cache[gpa >> 12] = (frame, perms, kind == EPT_WRITE or not self.accessed_dirty)
        if self.on_walk is not None:
            self.on_walk(gpa)
        return frame | (gpa & 0xFFF)

    def _misconfiguration(self, entry: int, level: int, leaf: bool) -> str | None:
        """Why a present entry is an EPT misconfiguration (SDM Vol.3C 29.3.3.1), or None."""
        if entry & EPT_WRITE and not entry & EPT_READ:
            return "write permission without read permission"
        if entry & EPT_RWX == EPT_EXECUTE and not self.execute_only:
            return "execute-only entry but execute-only translations are not supported"
        if entry & EPT_ABOVE_MAXPHY:
            return "reserved physical-address bits set"
        if not leaf:
            if entry & EPT_NONLEAF_RESERVED:
                return "reserved bits 7:3 set in an entry that references a table"
            return None
        if level == 3 and (not self.pages_1g or entry & EPT_1G_RESERVED):
            return "1-GiB page not supported or bits 29:12 set"
        if level == 2 and (not self.pages_2m or entry & EPT_2M_RESERVED):
            return "2-MiB page not supported or bits 20:12 set"
        if (entry >> EPT_MEMORY_TYPE_SHIFT) & 7 in RESERVED_MEMORY_TYPES:
            return f"reserved memory type {(entry >> EPT_MEMORY_TYPE_SHIFT) & 7}"
        return None

    def _violation(self, gpa: int, kind: int, perms: int, la: int | None, final: bool) -> VmExitSignal:
        q = EptViolationQualification(
            read=kind == EPT_READ,
            write=kind == EPT_WRITE,
            fetch=kind == EPT_EXECUTE,
            readable=bool(perms & EPT_READ),
            writable=bool(perms & EPT_WRITE),
            executable=bool(perms & EPT_EXECUTE),
            linear_address_valid=la is not None,
            translated_access=final and la is not None,
        )
        info: dict[str, int] = {"guest_physical": gpa}
        if la is not None:
            info["guest_linear"] = la
        return VmExitSignal(ExitReason.EPT_VIOLATION, q.encode(), **info)


# --------------------------------------------------------------------- building EPT tables


class PageAllocator(Protocol):
    def page(self) -> int: ...


class EptBuilder:
    """Writes EPT paging structures into physical memory: what a VMM does to give a guest memory.

    ``map(gpa, hpa, size, perms=EPT_RWX)`` uses the largest page sizes that fit
    (1 GiB, 2 MiB, 4 KiB) unless ``page_size`` forces one; ``protect`` and
    ``unmap`` change single 4-KiB pages (splitting large pages is not done: map
    with ``page_size=4096`` what you will change later).
    """

    def __init__(self, memory: Memory, alloc: PageAllocator) -> None:
        self.memory = memory
        self.alloc = alloc
        self.pml4 = self._new_table()

    @classmethod
    def from_eptp(cls, memory: Memory, eptp: int, alloc: PageAllocator | None = None) -> EptBuilder:
        """Edit existing EPT paging structures (``alloc`` is needed only to create new tables)."""
        builder = cls.__new__(cls)
        builder.memory, builder.alloc, builder.pml4 = memory, alloc, eptp & PHYS_MASK & ~0xFFF
        return builder

    def _new_table(self) -> int:
        addr = self.alloc.page()
        for off in range(0, 4096, 8):
            self.memory.write(addr + off, 8, 0)
        return addr

    def eptp(self, memory_type: int = MEMORY_TYPE_WB, accessed_dirty: bool = False) -> int:
        return make_eptp(self.pml4, memory_type, accessed_dirty)

    def _table_for(self, gpa: int, level: int) -> int:
        """The table at ``level`` (3 PDPT, 2 PD, 1 PT) that maps ``gpa``, created as needed."""
        table = self.pml4
        for lv in range(4, level, -1):
            index = (gpa >> (12 + 9 * (lv - 1))) & 0x1FF
            addr = table + index * 8
            entry = self.memory.read(addr, 8)
            if not entry & EPT_RWX or (lv in (2, 3) and entry & EPT_LARGE_PAGE):
                new = self._new_table()
                self.memory.write(addr, 8, new | EPT_RWX)
                table = new
            else:
                table = entry & PHYS_MASK & ~0xFFF
        return table

    def entry_address(self, gpa: int, level: int = 1) -> int:
        """Physical address of the entry at ``level`` that maps ``gpa`` (tables created as needed)."""
        table = self._table_for(gpa, level)
        return table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8

    def set_entry(self, gpa: int, level: int, value: int) -> None:
        self.memory.write(self.entry_address(gpa, level), 8, value)

    def get_entry(self, gpa: int, level: int = 1) -> int:
        return self.memory.read(self.entry_address(gpa, level), 8)

    def map(
        self,
        gpa: int,
        hpa: int,
        size: int,
        perms: int = EPT_RWX,
        memory_type: int = MEMORY_TYPE_WB,
        page_size: int | None = None,
    ) -> None:
        if (gpa | hpa | size) & 0xFFF:
            raise ValueError("EPT mappings are in whole 4-KiB pages")
        end = gpa + size
        while gpa < end:
            for level in (3, 2, 1):
                ps = PAGE_SIZES[level]
                if page_size is not None and ps != page_size:
                    continue
                if gpa % ps == 0 and hpa % ps == 0 and end - gpa >= ps:
                    large = EPT_LARGE_PAGE if level > 1 else 0
                    self.set_entry(gpa, level, hpa | perms | memory_type << EPT_MEMORY_TYPE_SHIFT | large)
                    gpa += ps
                    hpa += ps
                    break
            else:
                raise ValueError(f"cannot map {gpa:#x} with page size {page_size}")

    def protect(self, gpa: int, perms: int) -> None:
        """Change the R/W/X bits of the 4-KiB page at ``gpa`` (it must be mapped with 4-KiB pages)."""
        addr = self.entry_address(gpa, 1)
        entry = self.memory.read(addr, 8)
        self.memory.write(addr, 8, entry & ~EPT_RWX | perms)

    def unmap(self, gpa: int, size: int = 4096) -> None:
        for page in range(gpa, gpa + size, 4096):
            self.set_entry(page, 1, 0)
