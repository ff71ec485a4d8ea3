"""The Linux x86 boot protocol as vmxlab sets it up (vmxlab/linux/), checked without running a kernel:
setup-header parsing, the vmlinux inside the payload, zero-page fields, the e820 map, the command
line and initrd placement, the GDT, the identity-mapping page tables and the 64-bit entry registers.
The kernel is a synthetic bzImage built here (a header and an XZ-compressed ELF64)."""

from __future__ import annotations

import lzma
import struct

import pytest

from vmxlab.errors import UserError
from vmxlab.linux import bootparams as bp
from vmxlab.linux.boot import (
    BOOT_CS,
    BOOT_DS,
    BOOT_GDT,
    CMDLINE_ADDR,
    GDT_ADDR,
    PAGE_TABLES_ADDR,
    ZERO_PAGE_ADDR,
    load_linux,
)
from vmxlab.linux.bzimage import extract_vmlinux, parse_setup_header
from vmxlab.linux.pagetables import identity_map, walk
from vmxlab.machine.machine import Console, Machine

SETUP_SECTS = 4
KERNEL_PADDR = 0x1000000
ENTRY = 0x1000000


def elf64(segments: list[tuple[int, bytes, int]], entry: int) -> bytes:
    """An ELF64 x86-64 executable with one PT_LOAD per (p_paddr, data, p_memsz)."""
    phoff, phentsize = 64, 56
    data_off = phoff + phentsize * len(segments)
    phdrs, blobs = b"", b""
    for paddr, data, memsz in segments:
        off = data_off + len(blobs)
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, 0xFFFFFFFF80000000 + paddr, paddr, len(data), memsz, 0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, entry, phoff, 0, 0, 64, phentsize, len(segments),
                       64, 0, 0)
    return ehdr + phdrs + blobs


TEXT = b"\xf4" * 0x100 + b"TEXT"
BSS = 0x3000


def bzimage(version: int = 0x20F, xloadflags: int = 0x7F, payload: bytes | None = None) -> bytes:
    """Boot sector + setup (SETUP_SECTS sectors) + a protected-mode part holding the payload."""
    if payload is None:
        payload = lzma.compress(elf64([(KERNEL_PADDR, TEXT, len(TEXT) + BSS)], ENTRY), format=lzma.FORMAT_XZ)
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200] = 0xEB
    setup[0x201] = 0x6A  # jump over the header: the header ends at 0x202 + 0x6A = 0x26C
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    setup[0x234] = 1
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 0x7FF)
    decompressor = b"\x90" * 0x300
    struct.pack_into("<I", setup, 0x248, len(decompressor))
    struct.pack_into("<I", setup, 0x24C, len(payload))
    struct.pack_into("<Q", setup, 0x258, 0x1000000)
    struct.pack_into("<I", setup, 0x260, 0x800000)
    return bytes(setup) + decompressor + payload


def machine(mib: int = 64) -> Machine:
    return Machine.create(mib, Console(echo=False))


def test_setup_header_fields() -> None:
    h = parse_setup_header(bzimage())
    assert (h.setup_sects, h.version, h.version_str) == (4, 0x20F, "2.15")
    assert h.setup_size == 5 * 512 and h.header_end == 0x26C
    assert h.xloadflags & 1 and h.cmdline_size == 0x7FF and h.initrd_addr_max == 0x7FFFFFFF


@pytest.mark.parametrize("image, message", [
    (b"\0" * 0x1000, "not a Linux bzImage"),
    (bzimage(version=0x20B), "boot protocol 2.11"),
    (b"MZ", "too small"),
])
def test_bad_images_are_one_line_errors(image: bytes, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_setup_header(image)


def test_vmlinux_from_the_payload() -> None:
    vm = extract_vmlinux(bzimage())
    assert vm.entry == ENTRY and vm.start == KERNEL_PADDR and vm.end == KERNEL_PADDR + len(TEXT) + BSS
    assert vm.segments[0].data == TEXT


def test_zstd_payload_is_explained() -> None:
    with pytest.raises(UserError, match="zstd"):
        extract_vmlinux(bzimage(payload=b"\x28\xb5\x2f\xfd" + bytes(64)))


def test_load_linux_zero_page_cmdline_initrd_e820() -> None:
    m = machine(64)
    m.memory.write_bytes(KERNEL_PADDR + len(TEXT), b"\xAA" * BSS)  # stale bytes where the bss goes
    image = bzimage()
    initrd = b"07070100" + bytes(5000)
    lb = load_linux(m, image, initrd=initrd, cmdline="console=ttyS0 quiet")
    mem = m.memory
    # the kernel: PT_LOAD at p_paddr, bss zeroed, entry = e_entry (startup_64)
    assert mem.read_bytes(KERNEL_PADDR, len(TEXT)) == TEXT and mem.read_bytes(KERNEL_PADDR + len(TEXT), BSS) == \
        bytes(BSS)
    assert lb.rip == ENTRY and lb.entry_kind == "vmlinux"
    zp = mem.read_bytes(ZERO_PAGE_ADDR, 4096)
    assert zp == lb.zero_page
    # the setup header copied at the same offsets (boot.rst), then the loader's fields
    assert zp[0x1F1] == SETUP_SECTS and zp[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", zp, 0x206)[0] == \
        0x20F
    assert zp[0x210] == 0xFF  # type_of_loader: undefined
    assert zp[0x211] & 0x80 and zp[0x211] & 0x01 and not zp[0x211] & 0x40  # CAN_USE_HEAP, LOADED_HIGH
    assert struct.unpack_from("<H", zp, 0x224)[0] == 0xFE00  # heap_end_ptr
    assert struct.unpack_from("<I", zp, 0x228)[0] == CMDLINE_ADDR
    assert mem.read_bytes(CMDLINE_ADDR, 20) == b"console=ttyS0 quiet\0"
    # the initrd: page-aligned at the top of RAM
    addr, size = struct.unpack_from("<II", zp, 0x218)
    assert size == len(initrd) and addr % 4096 == 0 and addr + size <= 64 << 20 and addr + size > (64 << 20) - 4096
    assert mem.read_bytes(addr, size) == initrd and (addr, size) == (lb.initrd_addr, lb.initrd_size)
    # e820: RAM below the EBDA, the legacy hole reserved, RAM from 1 MiB to the end
    e820 = bp.read_e820(zp)
    assert e820 == [bp.E820Entry(0, 0x9FC00, bp.E820_RAM), bp.E820Entry(0x9FC00, 0x60400, bp.E820_RESERVED),
                    bp.E820Entry(0x100000, (64 << 20) - 0x100000, bp.E820_RAM)]
    assert zp[0x1E8] == 3


def test_gdt_page_tables_and_entry_registers() -> None:
    m = machine(64)
    lb = load_linux(m, bzimage(), cmdline="")
    mem = m.memory
    gdt = [mem.read(GDT_ADDR + 8 * i, 8) for i in range(4)]
    assert gdt == BOOT_GDT
    code, data = gdt[BOOT_CS >> 3], gdt[BOOT_DS >> 3]
    assert (code >> 53) & 1 == 1 and (code >> 54) & 1 == 0  # L = 1, D = 0: 64-bit code (SDM Vol.3A 3.4.5)
    assert (code >> 40) & 0xFF == 0x9B and (data >> 40) & 0xFF == 0x93  # present, DPL 0, code r-x / data rw
    assert lb.cr3 == PAGE_TABLES_ADDR
    for linear in (0, 0x7000, CMDLINE_ADDR, KERNEL_PADDR + 0x123, lb.initrd_addr or 0x3F00000, 0xFFFFF000):
        assert walk(lambda a: mem.read(a, 8), lb.cr3, linear) == linear  # identity
    assert walk(lambda a: mem.read(a, 8), lb.cr3, 1 << 32) is None  # beyond the 4 GiB mapped
    st = lb.long_mode_state()
    assert (st.rip, st.cs, st.ds, st.cr3) == (ENTRY, 0x10, 0x18, PAGE_TABLES_ADDR)
    assert st.regs["rsi"] == ZERO_PAGE_ADDR  # boot.rst: %rsi holds the boot_params address
    assert st.rflags == 2  # interrupts disabled


def test_long_mode_sregs_follow_the_protocol() -> None:
    from vmxlab.backends.kvm import structs as s
    from vmxlab.backends.kvm.entry import long_mode_regs, long_mode_sregs

    lb = load_linux(machine(64), bzimage())
    sr, r = s.KvmSregs(), s.KvmRegs()
    st = lb.long_mode_state()
    long_mode_sregs(sr, st)
    long_mode_regs(r, st)
    assert sr.cr0 & 0x80000001 == 0x80000001 and sr.cr4 & 0x20 and sr.efer & 0x500 == 0x500  # PG|PE, PAE, LME|LMA
    assert sr.cs.l == 1 and sr.cs.db == 0 and sr.cs.selector == 0x10 and sr.ds.selector == sr.ss.selector == 0x18
    assert (sr.gdt.base, sr.gdt.limit) == (GDT_ADDR, 31)
    assert r.rsi == ZERO_PAGE_ADDR and r.rip == ENTRY and r.rflags == 2


def test_bzimage_entry_loads_the_protected_mode_kernel_at_1mib() -> None:
    m = machine(64)
    image = bzimage()
    lb = load_linux(m, image, entry="bzimage")
    assert lb.rip == 0x100000 + 0x200
    assert m.memory.read_bytes(0x100000, 0x300) == image[5 * 512 : 5 * 512 + 0x300]


def test_errors_for_small_memory_and_long_cmdline() -> None:
    with pytest.raises(UserError, match="does not fit"):
        load_linux(machine(17), bzimage(), initrd=bytes(2 << 20))
    with pytest.raises(UserError, match="at most 2047"):
        load_linux(machine(64), bzimage(), cmdline="x" * 3000)
    with pytest.raises(UserError, match="no 64-bit entry"):
        load_linux(machine(64), bzimage(xloadflags=0))


def test_identity_map_entries() -> None:
    cr3, pages = identity_map(0x9000, 4)
    assert cr3 == 0x9000 and len(pages) == 2 + 4
    assert struct.unpack_from("<Q", pages[0x9000], 0)[0] == 0xA000 | 3
    assert struct.unpack_from("<Q", pages[0xA000], 8 * 3)[0] == 0xE000 | 3
    assert struct.unpack_from("<Q", pages[0xC000], 8 * 5)[0] == (1 << 30) + 5 * (2 << 20) | 0x83  # P|RW|PS


def test_pvm_cmdline_is_added_only_on_pvm() -> None:
    from vmxlab.commands.boot_linux import build_cmdline

    plain = build_cmdline("quiet", False, None)
    assert plain.startswith("console=ttyS0") and plain.endswith("quiet") and "clearcpuid" not in plain
    pvm = build_cmdline("", True, "uname -a")
    assert "noxsave" in pvm and "clearcpuid=" in pvm and pvm.endswith('VMXLAB_RUN="uname -a"')
    with pytest.raises(UserError, match="double quotes"):
        build_cmdline("", False, 'echo "x"')
