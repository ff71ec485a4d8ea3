"""Multiboot v1 kernels, loaded the way ``qemu-system-x86_64 -kernel`` loads them.

Why QEMU's way: a teaching kernel written for ``qemu -kernel`` should boot here unchanged and see
the same boot information at the same addresses.  QEMU's behaviour (hw/i386/multiboot.c and its
option ROM pc-bios/optionrom/multiboot.S) is summarised here; the spec is the Multiboot
Specification version 0.6.96, cited as "MB" with the section number.

* The header: a 32-bit aligned magic 0x1BADB002 whose flags and checksum sum to 0 (mod 2^32), in the
  first 8192 bytes (MB 3.1.1); QEMU accepts it at offsets below 8192 - 48.
* Flags (MB 3.1.2): bits 0-15 are requirements, and a boot loader that cannot meet one must fail.
  Bit 0 (page-align modules) and bit 1 (memory information) are always met; bit 2 (video mode
  table) is refused -- QEMU only warns "multiboot knows VBE. we don't."; vmxlab follows the spec.
  Any other bit 3-15 is refused as unknown.
* With flag bit 16 (the "a.out kludge", MB 3.1.3) the address fields of the header say where the
  file goes: the file from offset ``header_offset - (header_addr - load_addr)`` is copied to
  ``load_addr`` up to ``load_end_addr`` (0: to the end of the file), zero-filled up to
  ``bss_end_addr`` (0: no bss), and entered at ``entry_addr``.
* Without it the file must be an ELF32 i386 executable: PT_LOAD segments are copied to their
  physical addresses (p_paddr), zero-filled to p_memsz, and entered at e_entry.  An x86-64 ELF is
  refused ("Cannot load x86-64 image, give a 32bit one." in QEMU).
* After the kernel's last byte, rounded up to a page, come the module list (empty), the command line
  ("<kernel path> <cmdline>", as QEMU builds it) and the boot loader name.
* The memory map is at 0x9000 and the multiboot information structure at 0x9500 (QEMU's
  MULTIBOOT_STRUCT_ADDR + 0 and + 0x500).  QEMU's option ROM copies the map from the BIOS's e820;
  vmxlab writes the same shape: RAM below 0x9FC00, reserved 0x9FC00-0x100000 (EBDA, VGA, BIOS),
  RAM from 1 MiB to the end of memory.  mem_lower = 639 KiB and mem_upper = the KiB of RAM
  contiguous above 1 MiB (MB 3.3), boot_device = 0x8000FFFF, flags = memory | boot device |
  cmdline | modules | mmap | boot loader name (0x24F).
* Machine state (MB 3.2): EAX = 0x2BADB002, EBX = the information structure, 32-bit protected mode
  with flat 4 GiB code and data segments, paging and interrupts off, A20 on; ECX = the entry point
  (QEMU jumps through ECX).

Differences from QEMU: the boot loader name is "vmxlab", not "qemu"; the segments come from
vmxlab's boot GDT (loaders.py: CS = 0x10, data = 0x18) where QEMU's option ROM has CS = 0x08,
data = 0x10 (the spec leaves the selector values undefined, MB 3.2).
"""

from __future__ import annotations

import struct

from ..errors import UserError
from .loaders import EntryState, pm32_entry
from .machine import Machine

HEADER_MAGIC = 0x1BADB002  # MB 3.1.2
BOOTLOADER_MAGIC = 0x2BADB002  # MB 3.2: in EAX at entry
SEARCH_LIMIT = 8192  # MB 3.1.1
QEMU_SEARCH_END = SEARCH_LIMIT - 48  # QEMU reads 12 header words at every candidate offset
PAGE = 4096

# header flags (MB 3.1.2)
FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO_MODE = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16
REQUIRED_MASK = 0xFFFF
SUPPORTED_REQUIREMENTS = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO

# boot information (MB 3.3) -- flags and field offsets
MBI_FLAG_MEMORY = 1 << 0
MBI_FLAG_BOOT_DEVICE = 1 << 1
MBI_FLAG_CMDLINE = 1 << 2
MBI_FLAG_MODULES = 1 << 3
MBI_FLAG_MMAP = 1 << 6
MBI_FLAG_BOOTLOADER = 1 << 9
MBI_FLAGS = (MBI_FLAG_MEMORY | MBI_FLAG_BOOT_DEVICE | MBI_FLAG_CMDLINE | MBI_FLAG_MODULES | MBI_FLAG_MMAP
             | MBI_FLAG_BOOTLOADER)
MBI_SIZE = 88  # up to and including the boot loader name / apm table fields QEMU fills
OFF_FLAGS, OFF_MEM_LOWER, OFF_MEM_UPPER, OFF_BOOT_DEVICE, OFF_CMDLINE = 0, 4, 8, 12, 16
OFF_MODS_COUNT, OFF_MODS_ADDR, OFF_MMAP_LENGTH, OFF_MMAP_ADDR, OFF_BOOTLOADER = 20, 24, 44, 48, 64
BOOT_DEVICE_NONE = 0x8000FFFF  # what QEMU passes: BIOS drive 0x80, no partition

# where QEMU puts things (hw/i386/multiboot.c)
MMAP_ADDR = 0x9000
MBI_ADDR = MMAP_ADDR + 0x500
LOW_RAM_END = 0x9FC00  # SeaBIOS keeps 1 KiB of EBDA below 640 KiB: int 0x12 reports 639 KiB
HIGH_RAM_START = 0x100000
MMAP_AVAILABLE = 1
MMAP_RESERVED = 2
MMAP_ENTRY = struct.Struct("<IQQI")  # size (of the rest: 20), base_addr, length, type (MB 3.3)

BOOTLOADER_NAME = b"vmxlab"

# ELF (System V ABI, Intel386 supplement)
ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC, ET_DYN = 2, 3
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1
ELF32_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
ELF32_PHDR = struct.Struct("<IIIIIIII")


def find_header(data: bytes) -> tuple[int, int] | None:
    """(offset, flags) of the first valid multiboot header QEMU would accept, or None."""
    end = min(QEMU_SEARCH_END, len(data) - 11)
    for off in range(0, max(end, 0), 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    return None


def _header_or_error(data: bytes) -> tuple[int, int]:
    found = find_header(data)
    if found is not None:
        return found
    limit = min(QEMU_SEARCH_END, len(data) - 11)
    for off in range(0, max(limit, 0), 4):
        if struct.unpack_from("<I", data, off)[0] == HEADER_MAGIC:
            raise UserError(f"multiboot header at offset {off:#x} has a bad checksum "
                            "(magic + flags + checksum must be 0 mod 2^32, Multiboot spec 3.1.2)")
    raise UserError("no multiboot header (magic 0x1BADB002, 32-bit aligned) in the first 8 KiB of the image; "
                    "for a raw binary use --format flat")


def _check_flags(flags: int) -> None:
    """MB 3.1.2: fail if a requirement (bits 0-15) cannot be met."""
    if flags & FLAG_VIDEO_MODE:
        raise UserError("the multiboot kernel requires a video mode (header flag bit 2), which vmxlab "
                        "does not provide; clear the flag")
    unknown = flags & REQUIRED_MASK & ~(SUPPORTED_REQUIREMENTS | FLAG_VIDEO_MODE)
    if unknown:
        raise UserError(f"the multiboot kernel requires unknown features (header flags {unknown:#x} in bits "
                        "0-15); vmxlab supports bits 0 and 1")


class _Image:
    """Pieces to copy, gathered and checked before anything is written to guest memory."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.low = 1 << 32
        self.high = 0

    def add(self, addr: int, data: bytes, size: int) -> None:
        self.chunks.append((addr, data + bytes(size - len(data))))
        self.low = min(self.low, addr)
        self.high = max(self.high, addr + size)


def _load_aout(data: bytes, off: int) -> tuple[_Image, int]:
    """MB 3.1.3: the address fields of the header."""
    if off + 32 > len(data):
        raise UserError(f"the multiboot header at offset {off:#x} is truncated: the a.out-kludge address "
                        "fields (flag bit 16) need 32 bytes")
    fields = struct.unpack_from("<5I", data, off + 12)
    header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr = fields
    if header_addr < load_addr:
        raise UserError(f"multiboot header_addr {header_addr:#x} is below load_addr {load_addr:#x}")
    text_offset = off - (header_addr - load_addr)
    if text_offset < 0:
        raise UserError(f"multiboot header_addr - load_addr = {header_addr - load_addr:#x} is larger than "
                        f"the header's offset {off:#x} in the file")
    if load_end_addr:
        if load_end_addr < load_addr:
            raise UserError(f"multiboot load_end_addr {load_end_addr:#x} is below load_addr {load_addr:#x}")
        load_size = load_end_addr - load_addr
        if text_offset + load_size > len(data):
            raise UserError(f"the image is truncated: load_end_addr asks for {load_size:#x} bytes from file "
                            f"offset {text_offset:#x}, the file has {len(data):#x}")
    else:
        load_size = len(data) - text_offset
    if bss_end_addr:
        if bss_end_addr < load_addr + load_size:
            raise UserError(f"multiboot bss_end_addr {bss_end_addr:#x} is below the end of the loaded image "
                            f"{load_addr + load_size:#x}")
        mem_size = bss_end_addr - load_addr
    else:
        mem_size = load_size
    img = _Image()
    img.add(load_addr, data[text_offset:text_offset + load_size], mem_size)
    return img, entry_addr


def _load_elf(data: bytes) -> tuple[_Image, int]:
    """PT_LOAD segments at p_paddr (what QEMU's load_elf does for a multiboot kernel)."""
    if len(data) < 20 or data[:4] != ELF_MAGIC:
        raise UserError("the multiboot kernel is not an ELF file and its header does not set flag bit 16 "
                        "(a.out kludge) with load addresses")
    machine = struct.unpack_from("<H", data, 18)[0]
    if data[4] == ELFCLASS64 or machine == EM_X86_64:
        raise UserError("the multiboot kernel is a 64-bit ELF; Multiboot v1 loads 32-bit kernels "
                        "(link with -m elf_i386, or use the a.out-kludge header)")
    if len(data) < ELF32_EHDR.size:
        raise UserError(f"the ELF header is truncated ({len(data)} bytes, an ELF32 header has 52)")
    (ident, e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum,
     *_rest) = ELF32_EHDR.unpack_from(data, 0)
    if ident[4] != ELFCLASS32 or ident[5] != ELFDATA2LSB:
        raise UserError("the ELF kernel is not 32-bit little-endian (ELFCLASS32, ELFDATA2LSB)")
    if e_machine != EM_386:
        raise UserError(f"the ELF kernel is for machine {e_machine}, not i386 (EM_386 = 3)")
    if e_type not in (ET_EXEC, ET_DYN):
        raise UserError(f"the ELF kernel has type {e_type}, not an executable (ET_EXEC)")
    if e_phnum == 0 or e_phentsize < ELF32_PHDR.size:
        raise UserError("the ELF kernel has no program headers to load")
    table_end = e_phoff + e_phnum * e_phentsize
    if table_end > len(data):
        raise UserError(f"the image is truncated: the ELF program header table ends at {table_end:#x}, "
                        f"the file at {len(data):#x}")
    img = _Image()
    for i in range(e_phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _pflags, _align = ELF32_PHDR.unpack_from(
            data, e_phoff + i * e_phentsize)
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise UserError(f"ELF segment {i} has p_filesz {p_filesz:#x} > p_memsz {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise UserError(f"the image is truncated: ELF segment {i} needs file bytes up to "
                            f"{p_offset + p_filesz:#x}, the file has {len(data):#x}")
        img.add(p_paddr, data[p_offset:p_offset + p_filesz], p_memsz)
    if not img.chunks:
        raise UserError("the ELF kernel has no PT_LOAD segment")
    return img, e_entry


def _page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def memory_map(ram_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) entries: low RAM, the reserved hole below 1 MiB, RAM above 1 MiB."""
    entries = [(0, min(LOW_RAM_END, ram_size), MMAP_AVAILABLE),
               (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, MMAP_RESERVED)]
    if ram_size > HIGH_RAM_START:
        entries.append((HIGH_RAM_START, ram_size - HIGH_RAM_START, MMAP_AVAILABLE))
    return entries


def load_multiboot(machine: Machine, data: bytes, cmdline: str) -> EntryState:
    """Load a Multiboot v1 kernel; ``cmdline`` is the whole command line the kernel sees (QEMU passes
    "<kernel path> <-append text>")."""
    if not data:
        raise UserError("the image is empty")
    off, flags = _header_or_error(data)
    _check_flags(flags)
    img, entry = _load_aout(data, off) if flags & FLAG_AOUT_KLUDGE else _load_elf(data)

    ram = machine.memory.guest_size
    for addr, chunk in img.chunks:
        if addr + len(chunk) > ram:
            raise UserError(f"the kernel segment at {addr:#x}-{addr + len(chunk):#x} lies outside the "
                            f"{ram >> 20} MiB of RAM (use a larger --mem)")
        if addr < MBI_ADDR + MBI_SIZE and addr + len(chunk) > MMAP_ADDR:
            raise UserError(f"the kernel segment at {addr:#x}-{addr + len(chunk):#x} overlaps the multiboot "
                            f"information at {MMAP_ADDR:#x}-{MBI_ADDR + MBI_SIZE:#x} (link it at 1 MiB)")

    # strings after the kernel, as QEMU lays out its buffer (no modules: the list is empty)
    info_base = img.low + _page_align(img.high - img.low)
    cmdline_bytes = cmdline.encode() + b"\0"
    cmdline_addr = info_base
    loader_addr = cmdline_addr + len(cmdline_bytes)
    strings = cmdline_bytes + BOOTLOADER_NAME + b"\0"
    if info_base + len(strings) > ram:
        raise UserError(f"no room for the multiboot command line after the kernel at {info_base:#x} "
                        f"in {ram >> 20} MiB of RAM (use a larger --mem)")

    mem = machine.memory
    for addr, chunk in img.chunks:
        mem.write_bytes(addr, chunk)
    mem.write_bytes(info_base, strings)

    mmap = b"".join(MMAP_ENTRY.pack(MMAP_ENTRY.size - 4, base, length, kind)
                    for base, length, kind in memory_map(ram))
    mem.write_bytes(MMAP_ADDR, mmap)
    mem_upper = max(ram - HIGH_RAM_START, 0) // 1024
    mbi = bytearray(MBI_SIZE)
    for offset, value in ((OFF_FLAGS, MBI_FLAGS), (OFF_MEM_LOWER, LOW_RAM_END // 1024),
                          (OFF_MEM_UPPER, mem_upper), (OFF_BOOT_DEVICE, BOOT_DEVICE_NONE),
                          (OFF_CMDLINE, cmdline_addr), (OFF_MODS_COUNT, 0), (OFF_MODS_ADDR, info_base),
                          (OFF_MMAP_LENGTH, len(mmap)), (OFF_MMAP_ADDR, MMAP_ADDR),
                          (OFF_BOOTLOADER, loader_addr)):
        struct.pack_into("<I", mbi, offset, value)
    mem.write_bytes(MBI_ADDR, bytes(mbi))

    state = pm32_entry(entry, None)
    state.regs = {"eax": BOOTLOADER_MAGIC, "ebx": MBI_ADDR, "ecx": entry}
    state.description = f"multiboot kernel at {img.low:#x}-{img.high:#x}, entry {entry:#x}"
    return state
