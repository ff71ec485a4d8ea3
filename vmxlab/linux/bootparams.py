"""The zero page (``struct boot_params``) and the e820 memory map a 64-bit Linux boot needs.

Source: Documentation/arch/x86/boot.rst (cited as boot.rst) -- "The Real-Mode Kernel Header",
"Details of Header Fields", "64-bit BOOT PROTOCOL" -- and Documentation/arch/x86/zero-page.rst
for the offsets outside the setup header (e820_entries at 0x1E8, e820_table at 0x2D0).

What a boot loader does for the 64-bit protocol (boot.rst "64-bit BOOT PROTOCOL": "the boot
loader ... needs to fill ... boot_params ... including the setup header"): copy the kernel's
setup header into the zero page at the same offsets (0x1F1 up to its end), then fill in the
loader's fields: type_of_loader, loadflags, cmd_line_ptr, ramdisk_image/ramdisk_size,
heap_end_ptr, and the e820 map (the information a BIOS INT 15h E820 call would give).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .bzimage import CAN_USE_HEAP, HEADER_OFFSET, KEEP_SEGMENTS, SetupHeader

ZERO_PAGE_SIZE = 4096

# zero-page offsets (zero-page.rst) and setup-header offsets (boot.rst)
E820_ENTRIES = 0x1E8  # u8
E820_TABLE = 0x2D0  # struct boot_e820_entry[E820_MAX_ENTRIES_ZEROPAGE]
E820_MAX_ENTRIES_ZEROPAGE = 128
TYPE_OF_LOADER = 0x210  # u8
LOADFLAGS = 0x211  # u8
RAMDISK_IMAGE = 0x218  # u32
RAMDISK_SIZE = 0x21C  # u32
HEAP_END_PTR = 0x224  # u16
CMD_LINE_PTR = 0x228  # u32
EXT_RAMDISK_IMAGE = 0x0C0  # u32: bits 63:32 of ramdisk_image
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8

#: boot.rst "type_of_loader": 0xFF = undefined / a loader without an assigned ID
LOADER_UNDEFINED = 0xFF

# e820 types (the ACPI "Address Range Types"; arch/x86/include/uapi/asm/e820.h)
E820_RAM = 1
E820_RESERVED = 2

#: the end of conventional memory a PC BIOS reports: the EBDA starts at 0x9FC00 (Firecracker's
#: EBDA_START), and 0xA0000-0xFFFFF is the VGA window and the BIOS ROMs
EBDA_START = 0x9FC00
HIGH_MEMORY = 0x100000

_E820 = struct.Struct("<QQI")  # addr, size, type: 20 bytes, packed


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def e820_map(ram_size: int) -> list[E820Entry]:
    """RAM below the EBDA, the EBDA/VGA/BIOS hole reserved, RAM from 1 MiB to the end of guest RAM
    (the map Firecracker's ``configure_64bit_boot`` gives, without a PCI hole: vmxlab's RAM ends
    below 3 GiB)."""
    return [E820Entry(0, EBDA_START, E820_RAM),
            E820Entry(EBDA_START, HIGH_MEMORY - EBDA_START, E820_RESERVED),
            E820Entry(HIGH_MEMORY, ram_size - HIGH_MEMORY, E820_RAM)]


def build_zero_page(image: bytes, header: SetupHeader, *, cmdline_addr: int, initrd_addr: int = 0,
                    initrd_size: int = 0, e820: list[E820Entry], heap_end: int = 0xFE00) -> bytes:
    """The 4 KiB boot_params for ``image`` (boot.rst "64-bit BOOT PROTOCOL")."""
    zp = bytearray(ZERO_PAGE_SIZE)
    zp[HEADER_OFFSET : header.header_end] = image[HEADER_OFFSET : header.header_end]
    zp[TYPE_OF_LOADER] = LOADER_UNDEFINED
    # CAN_USE_HEAP: heap_end_ptr is valid; KEEP_SEGMENTS stays clear (the kernel reloads its own)
    zp[LOADFLAGS] = (zp[LOADFLAGS] | CAN_USE_HEAP) & ~KEEP_SEGMENTS
    struct.pack_into("<H", zp, HEAP_END_PTR, heap_end)
    struct.pack_into("<I", zp, CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", zp, EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    struct.pack_into("<I", zp, RAMDISK_IMAGE, initrd_addr & 0xFFFFFFFF)
    struct.pack_into("<I", zp, EXT_RAMDISK_IMAGE, initrd_addr >> 32)
    struct.pack_into("<I", zp, RAMDISK_SIZE, initrd_size & 0xFFFFFFFF)
    struct.pack_into("<I", zp, EXT_RAMDISK_SIZE, initrd_size >> 32)
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise ValueError("too many e820 entries for the zero page")
    zp[E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        _E820.pack_into(zp, E820_TABLE + 20 * i, e.addr, e.size, e.type)
    return bytes(zp)


def read_e820(zero_page: bytes) -> list[E820Entry]:
    """The e820 map stored in a zero page (for tests and for ``boot-linux --dry-run``)."""
    n = zero_page[E820_ENTRIES]
    return [E820Entry(*_E820.unpack_from(zero_page, E820_TABLE + 20 * i)) for i in range(n)]
