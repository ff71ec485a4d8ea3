"""Guest-physical memory: one RAM bytearray, MMIO holes, read-only ROM windows.

Why one bytearray: every guest load and store on the hot path is a
``struct.unpack_from``/``pack_into`` on it (see DESIGN.md, speed rule 4), and the
CPU's TLB maps linear pages straight to offsets in it.  Anything that is not RAM
(MMIO devices, ROM aliases, unbacked addresses) is never put in a TLB and goes
through :meth:`PhysicalMemory.read` / :meth:`write`, the slow path.

Unbacked physical addresses read as all ones and drop writes, as on a PC bus.

Self-modifying code: the CPU registers the physical pages it has translated
code from in :attr:`code_pages`; any write into such a page that does not come
from the CPU's fast path (device DMA, loaders, the slow path) calls
:attr:`on_code_write` so the block cache can drop stale blocks.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MiB = 1 << 20

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_STRUCTS = {1: _U8, 2: _U16, 4: _U32, 8: _U64}
_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


class MmioDevice(Protocol):
    """A device that answers loads and stores in a physical address window."""

    def mmio_read(self, addr: int, size: int) -> int: ...

    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


@dataclass
class MmioRegion:
    start: int
    size: int
    device: MmioDevice
    name: str

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class RomRegion:
    """A read-only window (e.g. the BIOS ROM aliased just below 4 GiB)."""

    start: int
    data: bytes
    name: str

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class PhysicalMemory:
    """RAM from physical 0 up to ``size``; MMIO and ROM windows elsewhere."""

    def __init__(self, size: int = 32 * MiB) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError("memory size must be a positive multiple of 4 KiB")
        self.size = size
        #: the RAM the guest is told about (e820, multiboot, CMOS); a VMM may keep memory above it
        #: for its own structures (VMCS, EPT tables), which the guest cannot reach
        self.guest_size = size
        self.ram = bytearray(size)
        self.mmio: list[MmioRegion] = []
        self.roms: list[RomRegion] = []
        #: physical page numbers that hold translated code (maintained by the CPU)
        self.code_pages: set[int] = set()
        #: called with a physical page number when something writes into a code page
        #: (called as on_code_write(addr, size): the block cache drops exactly the overlapping blocks)
        self.on_code_write: Callable[[int, int], None] | None = None
        #: counters of accesses that no region claimed, for the trace and tests
        self.unbacked_reads = 0
        self.unbacked_writes = 0
        #: trace hook, called as on_mmio(addr, size, is_write, value, region name or None) for every access
        #: that is not RAM or ROM (MMIO regions and unbacked addresses).  None = off: RAM accesses never
        #: come here, and the MMIO slow path pays one attribute test
        self.on_mmio: Callable[[int, int, bool, int, str | None], None] | None = None

    def use_buffer(self, buffer: bytearray | mmap.mmap) -> None:
        """Move RAM into ``buffer`` (same size), copying what is there, and use it from now on.

        Why: the ``kvm`` backend needs guest RAM in an ``mmap`` that KVM can map into the
        guest (KVM_SET_USER_MEMORY_REGION takes a page-aligned host address), while the
        loaders and devices were written against :attr:`ram`.  An ``mmap`` offers the same
        API they use (slicing, slice assignment, ``struct.pack_into``/``unpack_from``), so
        after this call the devices, the loaders and the guest all see one buffer.  Call it
        before anything caches ``ram`` (the software CPU does, in its constructor).
        """
        if len(buffer) != self.size:
            raise ValueError(f"buffer of {len(buffer):#x} bytes for {self.size:#x} bytes of RAM")
        buffer[:] = self.ram
        self.ram = buffer

    # -- layout -----------------------------------------------------------------

    def add_mmio(self, start: int, size: int, device: MmioDevice, name: str = "mmio") -> MmioRegion:
        """Claim [start, start+size) for ``device``.  MMIO may not overlap RAM or other windows."""
        region = MmioRegion(start, size, device, name)
        self._check_free(start, size, name)
        self.mmio.append(region)
        self.mmio.sort(key=lambda r: r.start)
        return region

    def add_rom(self, start: int, data: bytes, name: str = "rom") -> RomRegion:
        """Map ``data`` read-only at ``start`` (outside RAM)."""
        region = RomRegion(start, bytes(data), name)
        self._check_free(start, len(data), name)
        self.roms.append(region)
        return region

    def _check_free(self, start: int, size: int, name: str) -> None:
        end = start + size
        if start < self.size:
            raise ValueError(f"{name} at {start:#x} overlaps RAM (0..{self.size:#x})")
        for r in (*self.mmio, *self.roms):
            if start < r.end and r.start < end:
                raise ValueError(f"{name} at {start:#x} overlaps {r.name} at {r.start:#x}")

    def is_ram(self, addr: int, size: int = 1) -> bool:
        return addr + size <= self.size

    def region_at(self, addr: int) -> MmioRegion | RomRegion | None:
        for r in self.mmio:
            if r.start <= addr < r.end:
                return r
        for r in self.roms:
            if r.start <= addr < r.end:
                return r
        return None

    # -- accesses (slow path: anything, any alignment) ------------------------------

    def read(self, addr: int, size: int) -> int:
        """Load ``size`` (1, 2, 4 or 8) bytes little-endian from physical ``addr``."""
        if addr + size <= self.size:
            return _STRUCTS[size].unpack_from(self.ram, addr)[0]
        region = self.region_at(addr)
        if region is not None and addr + size <= region.end:
            if isinstance(region, MmioRegion):
                value = region.device.mmio_read(addr, size)
                if self.on_mmio is not None:
                    self.on_mmio(addr, size, False, value, region.name)
                return value
            return int.from_bytes(region.data[addr - region.start : addr - region.start + size], "little")
        if region is None and addr >= self.size:
            self.unbacked_reads += 1
            if self.on_mmio is not None:
                self.on_mmio(addr, size, False, _ONES[size], None)
            return _ONES[size]
        # straddles two regions: assemble byte by byte
        value = 0
        for i in range(size):
            value |= self.read(addr + i, 1) << (8 * i)
        return value

    def write(self, addr: int, size: int, value: int) -> None:
        """Store ``size`` bytes of ``value`` little-endian at physical ``addr``."""
        if addr + size <= self.size:
            _STRUCTS[size].pack_into(self.ram, addr, value & _ONES[size])
            if self.code_pages:
                self._note_write(addr, size)
            return
        region = self.region_at(addr)
        if region is not None and addr + size <= region.end:
            if isinstance(region, MmioRegion):
                region.device.mmio_write(addr, size, value & _ONES[size])
                if self.on_mmio is not None:
                    self.on_mmio(addr, size, True, value & _ONES[size], region.name)
            return  # ROM: writes are dropped
        if region is None and addr >= self.size:
            self.unbacked_writes += 1
            if self.on_mmio is not None:
                self.on_mmio(addr, size, True, value & _ONES[size], None)
            return
        for i in range(size):
            self.write(addr + i, 1, (value >> (8 * i)) & 0xFF)

    def read_bytes(self, addr: int, n: int) -> bytes:
        if addr + n <= self.size:
            return bytes(self.ram[addr : addr + n])
        return bytes(self.read(addr + i, 1) for i in range(n))

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Copy ``data`` into guest memory (loaders, device DMA); honours code-page tracking."""
        n = len(data)
        if addr + n <= self.size:
            self.ram[addr : addr + n] = data
            if self.code_pages:
                self._note_write(addr, n)
            return
        for i, b in enumerate(data):
            self.write(addr + i, 1, b)

    def _note_write(self, addr: int, n: int) -> None:
        if self.on_code_write is None:
            return
        code = self.code_pages
        for page in range(addr >> PAGE_SHIFT, ((addr + n - 1) >> PAGE_SHIFT) + 1):
            if page in code:
                self.on_code_write(addr, n)
                return
