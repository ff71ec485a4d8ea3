"""Guest memory for the ``kvm`` backend: the Machine's RAM and ROM windows as KVM memory slots.

One buffer, two users.  The devices, the loaders and the VMM read and write guest RAM
through ``machine.memory`` (:class:`~vmxlab.machine.memory.PhysicalMemory`); KVM maps
guest RAM from a page-aligned host address (KVM_SET_USER_MEMORY_REGION, api.rst 4.35).
So RAM moves into an anonymous ``mmap`` (:meth:`PhysicalMemory.use_buffer`) that is
registered as slot 0 at guest-physical 0: a store by the guest is visible to a device
model at once, and a loader's copy is visible to the guest.

ROM windows (``memory.add_rom``, e.g. the BIOS alias below 4 GiB for ``--format rom``)
become read-only slots (KVM_MEM_READONLY, KVM_CAP_READONLY_MEM): the guest fetches and
reads them directly, and a write exits as KVM_EXIT_MMIO, which the exit handler passes to
``memory.write`` -- it drops the write, as a ROM does.  MMIO regions get no slot: every
access to them exits as KVM_EXIT_MMIO.

The KVM-private pages (the real-mode TSS at 0xFFFBD000 and the identity-map page at
0xFFFBC000, api.rst 4.40/4.61) must not overlap any of this; :func:`check_layout` says so
in one line when they would.
"""

from __future__ import annotations

import mmap

from ...errors import UserError
from ...machine.memory import PhysicalMemory
from .api import KvmVm

PAGE = mmap.PAGESIZE
#: KVM_SET_TSS_ADDR: three pages KVM uses for real-mode emulation on Intel (kvmtool, Firecracker)
TSS_ADDR = 0xFFFBD000
#: KVM_SET_IDENTITY_MAP_ADDR: one page (the default; set explicitly so it is documented here)
IDENTITY_MAP_ADDR = 0xFFFBC000
KVM_PRIVATE = (IDENTITY_MAP_ADDR, TSS_ADDR + 3 * PAGE)


def anonymous_mapping(size: int) -> mmap.mmap:
    """Zeroed, page-aligned host memory KVM can map (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    return mmap.mmap(-1, size, flags=flags)


def check_layout(memory: PhysicalMemory) -> None:
    lo, hi = KVM_PRIVATE
    for r in memory.roms:
        if r.start < hi and lo < r.end:
            raise UserError(f"{r.name} at {r.start:#x} overlaps the pages KVM reserves at {lo:#x}-{hi:#x}")
    if memory.size > lo:
        raise UserError(f"{memory.size >> 20} MiB of RAM reaches KVM's reserved pages at {lo:#x}; "
                        "use --mem 3072 or less")


def map_machine_memory(vm: KvmVm, memory: PhysicalMemory) -> None:
    """Move RAM into a KVM-mappable buffer (slot 0 at 0) and map each ROM window read-only."""
    check_layout(memory)
    ram = anonymous_mapping(memory.size)
    memory.use_buffer(ram)
    vm.map_memory(0, ram, slot=0)
    for i, rom in enumerate(memory.roms, start=1):
        start = rom.start & ~(PAGE - 1)
        end = -(-rom.end // PAGE) * PAGE
        buf = anonymous_mapping(end - start)
        buf[rom.start - start : rom.start - start + len(rom.data)] = rom.data
        vm.map_memory(start, buf, slot=i, readonly=True)
