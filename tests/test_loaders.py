"""Image loaders: Multiboot v1 (ELF32 and a.out kludge) as QEMU loads it, every bad-image error,
ROM images at the reset vector, and the documented entry states (docs/entry-state.md)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vmxlab.assemble import assemble
from vmxlab.backends.emu import EmuBackend
from vmxlab.errors import UserError
from vmxlab.machine.loaders import BOOT_GDT, BOOT_GDT_ADDR, parse_entry
from vmxlab.machine.machine import Console, Machine, StopReason
from vmxlab.machine.multiboot import MBI_ADDR, MMAP_ADDR, find_header, load_multiboot
from vmxlab.machine.rom import load_rom
from vmxlab.runner import RunOptions, run_image

ROOT = Path(__file__).resolve().parent.parent
MB_MAGIC = 0x1BADB002


def nasm(tmp_path: Path, name: str, source: str) -> bytes:
    src = tmp_path / f"{name}.asm"
    src.write_text(source)
    return assemble(src).read_bytes()


def mb_header(flags: int, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = -(MB_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack("<III", MB_MAGIC, flags, checksum)


def elf32(segments: list[tuple[int, bytes, int]], entry: int, *, ei_class: int = 1, machine: int = 3,
          e_type: int = 2, ptype: int = 1) -> bytes:
    """A minimal ELF executable: the header, one program header per (p_paddr, data, p_memsz), the data."""
    phoff, phentsize = 52, 32
    offset = phoff + phentsize * len(segments)
    phdrs, blobs = b"", b""
    for paddr, data, memsz in segments:
        offset = (offset + 15) & ~15
        pad = offset - (phoff + phentsize * len(segments) + len(blobs))
        blobs += bytes(pad) + data
        # p_vaddr differs from p_paddr on purpose: the loader must use the physical address
        phdrs += struct.pack("<IIIIIIII", ptype, offset, paddr + 0xC0000000, paddr, len(data), memsz, 5, 16)
        offset += len(data)
    ident = b"\x7fELF" + bytes([ei_class, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIIIIIHHHHHH", ident, e_type, machine, 1, entry, phoff, 0, 0, 52, phentsize,
                       len(segments), 40, 0, 0)
    return ehdr + phdrs + blobs


KERNEL = """
        bits 32
        org 0x100000
%include "vmxlab.inc"
        dd 0x1BADB002, 0x00000003, -(0x1BADB002 + 3)   ; page-align + memory info
start:
        cmp eax, 0x2BADB002
        jne .bad
        mov esi, [ebx + 16]                 ; cmdline
        call puts
        mov al, '|'
        out 0xE9, al
        mov esi, [ebx + 64]                 ; boot loader name
        call puts
        cmp dword [0x101000], 0             ; in the bss
        jne .bad
        EXIT_STATUS 0x10
.bad:   EXIT_STATUS 0x11
puts:   lodsb
        test al, al
        jz .r
        out 0xE9, al
        jmp puts
.r:     ret
"""


@pytest.fixture
def kernel_elf(tmp_path: Path) -> bytes:
    code = nasm(tmp_path, "kernel", KERNEL)
    return elf32([(0x100000, code, 0x2000)], entry=0x10000C)


def fresh(mem_mib: int = 32) -> Machine:
    return Machine.create(mem_mib, Console(echo=False))


def u32(m: Machine, addr: int) -> int:
    return m.memory.read(addr, 4)


def cstring(m: Machine, addr: int) -> bytes:
    out = bytearray()
    while (c := m.memory.read(addr + len(out), 1)) != 0:
        out.append(c)
    return bytes(out)


# ---------------------------------------------------------------------------- multiboot: ELF


def test_elf_kernel_is_loaded_to_paddr_with_bss_zeroed(kernel_elf: bytes) -> None:
    m = fresh()
    m.memory.write_bytes(0x100000, b"\xAA" * 0x3000)  # garbage where the kernel and bss go
    entry = load_multiboot(m, kernel_elf, "kernel.elf console=com1")
    assert m.memory.read(0x100000, 4) == MB_MAGIC  # the segment's first bytes are the header
    assert m.memory.read_bytes(0x101000, 0x1000) == bytes(0x1000)
    assert entry.mode == "pm32" and entry.eip == 0x10000C
    assert entry.regs["eax"] == 0x2BADB002 and entry.regs["ebx"] == MBI_ADDR
    assert entry.cs == 0x10 and entry.ds == 0x18 and entry.eflags == 0x2


def test_multiboot_information_as_qemu_lays_it_out(kernel_elf: bytes) -> None:
    m = fresh(32)
    load_multiboot(m, kernel_elf, "kernel.elf console=com1")
    mbi = MBI_ADDR
    assert MBI_ADDR == 0x9500 and MMAP_ADDR == 0x9000
    assert u32(m, mbi) == 0x24F  # memory, boot device, cmdline, mods, mmap, loader name
    assert u32(m, mbi + 4) == 639
    assert u32(m, mbi + 8) == 31 * 1024
    assert u32(m, mbi + 12) == 0x8000FFFF
    assert u32(m, mbi + 20) == 0  # mods_count
    # strings follow the kernel, rounded up to a page: 0x100000 + 0x2000
    assert u32(m, mbi + 16) == 0x102000
    assert cstring(m, u32(m, mbi + 16)) == b"kernel.elf console=com1"
    assert cstring(m, u32(m, mbi + 64)) == b"vmxlab"
    assert u32(m, mbi + 48) == MMAP_ADDR
    length = u32(m, mbi + 44)
    entries = []
    off = 0
    while off < length:
        size, base, ln, kind = struct.unpack("<IQQI", m.memory.read_bytes(MMAP_ADDR + off, 24))
        entries.append((base, ln, kind))
        off += size + 4
    assert entries == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, 31 << 20, 1)]


def test_elf_kernel_runs_end_to_end(kernel_elf: bytes, tmp_path: Path, engine: str) -> None:
    img = tmp_path / "kernel.elf"
    img.write_bytes(kernel_elf)
    r = run_image(RunOptions(image=img, cmdline="quiet", echo=False, engine=engine, max_instructions=100_000))
    assert r.stop.reason == StopReason.DEBUG_EXIT and r.exit_status == 0x21, r.console
    assert r.console == f"{img} quiet|vmxlab".encode()  # QEMU's "<kernel path> <cmdline>"


def test_format_auto_detects_multiboot(kernel_elf: bytes) -> None:
    assert find_header(kernel_elf) is not None
    assert find_header(b"\x90" * 100) is None


# ---------------------------------------------------------------------------- multiboot: a.out kludge

AOUT = """
        bits 32
        org 0x200000
%include "vmxlab.inc"
file_start:
        jmp start
        align 4
header: dd 0x1BADB002, 0x00010002, -(0x1BADB002 + 0x00010002)
        dd header                ; header_addr
        dd file_start            ; load_addr
        dd LOAD_END              ; load_end_addr (0: the whole file)
        dd BSS_END               ; bss_end_addr (0: none)
        dd start                 ; entry_addr
start:  cmp eax, 0x2BADB002
        jne .bad
        mov esi, message
.next:  lodsb
        test al, al
        jz .done
        out 0xE9, al
        jmp .next
.done:  cmp dword [end_of_file + 16], 0
        jne .bad
        EXIT_STATUS 0x20
.bad:   EXIT_STATUS 0x21
message: db "a.out kludge", 0
end_of_file:
"""


def aout(tmp_path: Path, load_end: str = "end_of_file", bss_end: str = "end_of_file + 0x1000") -> bytes:
    src = AOUT.replace("LOAD_END", load_end).replace("BSS_END", bss_end)
    return nasm(tmp_path, f"aout{abs(hash(src))}", src)


def test_aout_kludge_loads_at_load_addr(tmp_path: Path) -> None:
    image = aout(tmp_path) + b"\xEE" * 64  # trailing bytes beyond load_end_addr are not loaded
    m = fresh()
    m.memory.write_bytes(0x200000, b"\xAA" * 0x2000)
    entry = load_multiboot(m, image, "k")
    assert m.memory.read_bytes(0x200000, len(image) - 64) == image[:-64]
    end = 0x200000 + len(image) - 64
    assert m.memory.read_bytes(end, 0x1000) == bytes(0x1000)  # bss zeroed, trailing bytes not copied
    assert entry.eip == 0x200000 + image.index(b"\x3d\x02\xb0\xad\x2b")  # "cmp eax, 0x2BADB002"
    assert u32(m, MBI_ADDR + 16) == 0x200000 + 0x2000  # after kernel + bss, page-aligned


def test_aout_kludge_without_load_end_and_bss(tmp_path: Path, engine: str) -> None:
    image = aout(tmp_path, load_end="0", bss_end="0")
    img = tmp_path / "aout.bin"
    img.write_bytes(image)
    r = run_image(RunOptions(image=img, format="multiboot", echo=False, engine=engine,
                             max_instructions=100_000))
    assert r.console == b"a.out kludge"
    assert r.exit_status == 0x41


# ---------------------------------------------------------------------------- multiboot: bad images


def bad(data: bytes, match: str, mem_mib: int = 32) -> None:
    with pytest.raises(UserError, match=match) as info:
        load_multiboot(fresh(mem_mib), data, "x")
    assert "\n" not in str(info.value)


def test_empty_image() -> None:
    bad(b"", "empty")


def test_no_header() -> None:
    bad(b"\x90" * 9000, "no multiboot header")


def test_header_beyond_8k_is_not_found() -> None:
    bad(bytes(8192) + mb_header(0x10000), "no multiboot header")


def test_bad_checksum() -> None:
    bad(bytes(16) + mb_header(0, checksum=1), r"offset 0x10 has a bad checksum")


def test_video_mode_required() -> None:
    bad(mb_header(0x10004) + bytes(64), "video mode")


def test_unknown_requirement() -> None:
    bad(mb_header(0x10020) + bytes(64), "unknown features")


def test_not_elf_without_aout_kludge() -> None:
    bad(mb_header(0x3) + bytes(64), "not an ELF file")


def test_elf64_refused(kernel_elf: bytes) -> None:
    data = bytearray(kernel_elf)
    data[4] = 2  # ELFCLASS64
    struct.pack_into("<H", data, 18, 62)  # EM_X86_64
    bad(bytes(data), "64-bit ELF")


def test_elf_for_another_machine() -> None:
    bad(elf32([(0x100000, mb_header(0) + bytes(16), 0x100)], 0x100000, machine=40), "not i386")


def test_elf_not_executable() -> None:
    bad(elf32([(0x100000, mb_header(0) + bytes(16), 0x100)], 0x100000, e_type=1), "not an executable")


def test_elf_without_load_segments() -> None:
    bad(elf32([(0x100000, mb_header(0) + bytes(16), 0x100)], 0x100000, ptype=4), "no PT_LOAD")


def test_elf_segment_outside_ram() -> None:
    bad(elf32([(0x1FFF000, mb_header(0) + bytes(16), 0x2000)], 0x1FFF000), "outside the 32 MiB of RAM")


def test_elf_segment_overlapping_boot_information() -> None:
    bad(elf32([(0x8000, mb_header(0) + bytes(16), 0x2000)], 0x8000), "overlaps the multiboot information")


def test_elf_filesz_larger_than_memsz() -> None:
    bad(elf32([(0x100000, mb_header(0) + bytes(64), 16)], 0x100000), "p_filesz")


def test_truncated_elf_segment() -> None:
    data = elf32([(0x100000, mb_header(0) + bytes(4000), 0x2000)], 0x100000)
    bad(data[:2000], "truncated: ELF segment 0")


def test_truncated_elf_program_headers() -> None:
    data = bytearray(elf32([(0x100000, mb_header(0) + bytes(16), 0x100)], 0x100000))
    struct.pack_into("<I", data, 28, 0x7000)  # e_phoff beyond the file
    bad(bytes(data), "program header table ends at")


def test_truncated_aout_header() -> None:
    bad(bytes(8) + mb_header(0x10000), "truncated")


def test_aout_load_end_beyond_file(tmp_path: Path) -> None:
    bad(aout(tmp_path, load_end="end_of_file + 0x100"), "truncated: load_end_addr")


def test_aout_load_end_below_load_addr(tmp_path: Path) -> None:
    bad(aout(tmp_path, load_end="0x100000"), "load_end_addr 0x100000 is below load_addr")


def test_aout_bss_end_below_load_end(tmp_path: Path) -> None:
    bad(aout(tmp_path, bss_end="end_of_file - 4"), "bss_end_addr .* is below the end")


def test_aout_header_addr_below_load_addr() -> None:
    fields = struct.pack("<5I", 0x100000, 0x100010, 0, 0, 0x100000)
    bad(mb_header(0x10000) + fields, "header_addr 0x100000 is below load_addr")


def test_aout_header_addr_too_far_from_load_addr() -> None:
    fields = struct.pack("<5I", 0x100100, 0x100000, 0, 0, 0x100000)
    bad(mb_header(0x10000) + fields, "larger than the header's offset")


def test_aout_outside_ram() -> None:
    fields = struct.pack("<5I", 0x3000000, 0x3000000, 0, 0, 0x3000000)
    bad(mb_header(0x10000) + fields, "outside the 32 MiB of RAM")


def test_cli_reports_a_bad_image_in_one_line(tmp_path: Path) -> None:
    img = tmp_path / "bad.bin"
    img.write_bytes(bytes(16) + mb_header(0, checksum=5))
    p = subprocess.run([sys.executable, "-m", "vmxlab", "run", str(img), "--format", "multiboot"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "bad checksum" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------- ROM images

ROM = """
        bits 16
        org 0
%include "vmxlab.inc"
        times PAD db 0xFF
start:  mov ax, cs                  ; F000 once the far jump reloaded CS
        cmp ax, 0xF000
        jne .bad
        mov al, 0x42
        out 0x80, al                ; a POST code
        mov al, 'R'
        out 0xE9, al
        SHUTDOWN
.bad:   EXIT_STATUS 1
        times PAD + 0xFFF0 - ($ - $$) db 0xFF
reset:  jmp 0xF000:start - PAD      ; the first instruction, at 0xFFFFFFF0
        times PAD + 0x10000 - ($ - $$) db 0xFF
"""


def rom(tmp_path: Path, kib: int) -> bytes:
    return nasm(tmp_path, f"rom{kib}", ROM.replace("PAD", str((kib - 64) * 1024)))


@pytest.mark.parametrize("kib", [64, 128])
def test_rom_at_reset_vector(tmp_path: Path, kib: int, engine: str) -> None:
    image = rom(tmp_path, kib)
    assert len(image) == kib * 1024
    path = tmp_path / f"test{kib}.rom"
    path.write_bytes(image)
    r = run_image(RunOptions(image=path, format="rom", echo=False, engine=engine, max_instructions=10_000))
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert r.console == b"R"
    assert r.machine.post_codes == [0x42]
    assert r.entry.mode == "reset"


def test_rom_mapping(tmp_path: Path) -> None:
    image = rom(tmp_path, 128)
    m = fresh()
    load_rom(m, image)
    assert m.memory.read_bytes(0xE0000, len(image)) == image
    assert m.memory.read_bytes(0xFFFE0000, 16) == image[:16]
    assert m.memory.read(0xFFFFFFF0, 1) == 0xEA  # jmp far
    m.memory.write(0xFFFFFFF0, 1, 0x90)
    assert m.memory.read(0xFFFFFFF0, 1) == 0xEA  # the alias below 4 GiB is read-only
    m.memory.write(0xFFFF0, 1, 0x90)
    assert m.memory.read(0xFFFF0, 1) == 0x90  # the copy below 1 MiB is RAM


def test_rom_reset_state(tmp_path: Path) -> None:
    m = fresh()
    backend = EmuBackend(m)
    backend.apply_entry(load_rom(m, rom(tmp_path, 64)))
    st = backend.cpu.state_dict()
    assert st["cs"]["selector"] == 0xF000 and st["cs"]["base"] == 0xFFFF0000 and st["eip"] == 0xFFF0
    assert st["cr0"] == 0x60000010 and st["eflags"] == 0x2 and st["edx"] == 0x633  # SDM Vol.3A 10.1.1


@pytest.mark.parametrize("size", [0, 1000, 65535, 65537, 96 * 1024, 256 * 1024])
def test_rom_bad_size(size: int) -> None:
    with pytest.raises(UserError, match="must be 64 KiB or 128 KiB") as info:
        load_rom(fresh(), bytes(size))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- flat entry states


def entered(entry_spec: str | None, load: int, stack: int | None = None) -> dict:
    m = fresh()
    backend = EmuBackend(m)
    m.set_a20(False)
    backend.apply_entry(parse_entry(entry_spec, load, stack))
    st = backend.cpu.state_dict()
    st["a20"] = m.a20
    return st


def test_real_mode_entry_state() -> None:
    st = entered("real:0x7c0:0x10", 0x7C00)
    assert st["cr0"] == 0x10 and st["eflags"] == 0x2 and st["a20"] is True
    assert st["cs"] == {"selector": 0x7C0, "base": 0x7C00, "limit": 0xFFFF, "ar": 0x93}  # SDM Table 10-1
    for s in ("ds", "es", "fs", "gs", "ss"):
        assert st[s]["selector"] == 0 and st[s]["base"] == 0 and st[s]["limit"] == 0xFFFF
    assert st["eip"] == 0x10 and st["esp"] == 0x7000
    assert tuple(st["idtr"]) == (0, 0x3FF)
    assert all(st[r] == 0 for r in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"))


def test_real_mode_stack_option() -> None:
    assert entered(None, 0x7C00, stack=0x9000)["esp"] == 0x9000


def test_pm32_entry_state() -> None:
    st = entered("pm32:0x100000", 0x100000)
    assert st["cr0"] == 0x11 and st["eflags"] == 0x2 and st["a20"] is True
    assert st["cs"]["selector"] == 0x10 and st["cs"]["base"] == 0 and st["cs"]["limit"] == 0xFFFFFFFF
    for s in ("ds", "es", "fs", "gs", "ss"):
        assert st[s]["selector"] == 0x18 and st[s]["limit"] == 0xFFFFFFFF
    assert tuple(st["gdtr"]) == (BOOT_GDT_ADDR, len(BOOT_GDT) * 8 - 1)
    assert st["eip"] == 0x100000 and st["esp"] == 0x7000


def test_pm32_boot_gdt_in_memory() -> None:
    m = fresh()
    backend = EmuBackend(m)
    backend.apply_entry(parse_entry("pm32:0x100000", 0x100000, None))
    raw = m.memory.read_bytes(BOOT_GDT_ADDR, len(BOOT_GDT) * 8)
    assert list(struct.unpack(f"<{len(BOOT_GDT)}Q", raw)) == BOOT_GDT
    assert BOOT_GDT[2] == 0x00CF9B000000FFFF and BOOT_GDT[3] == 0x00CF93000000FFFF
