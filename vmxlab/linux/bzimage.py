"""A Linux bzImage: the real-mode setup header, the protected-mode kernel, and the vmlinux inside it.

Source: Documentation/arch/x86/boot.rst ("THE LINUX/x86 BOOT PROTOCOL"), cited below as boot.rst
with the section name; the header offsets are those of "The Real-Mode Kernel Header".

Layout of a bzImage file::

    [ boot sector + setup code: (setup_sects or 4) + 1 sectors of 512 bytes ]  header at 0x1F1
    [ protected-mode kernel: the decompressor + the compressed vmlinux ("payload") ]

Why pull the vmlinux out.  A bzImage normally decompresses itself in the guest.  On the PVM
hosts every ring-0 instruction runs in KVM's emulator (kvm.md §0), so decompressing 8 MB of
XZ there would take longer than the rest of the boot; Python's ``lzma`` does it in a second.
boot.rst ("Details of Header Fields", payload_offset/payload_length, protocol 2.08+) documents
the payload for exactly this use; the result is an ELF64 vmlinux whose PT_LOAD segments go to
their physical addresses (p_paddr) and whose entry (e_entry) is the physical address of
``startup_64`` -- the 64-bit boot protocol's entry point (boot.rst "64-bit BOOT PROTOCOL").
"""

from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass

from ..errors import UserError

SECTOR = 512
HEADER_OFFSET = 0x1F1
BOOT_FLAG = 0xAA55  # at 0x1FE
HDRS_MAGIC = b"HdrS"  # at 0x202

# loadflags (boot.rst "Details of Header Fields")
LOADED_HIGH = 0x01
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80
# xloadflags
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1

#: the bzImage's 64-bit entry point is 0x200 bytes into the protected-mode kernel (boot.rst
#: "64-bit BOOT PROTOCOL": "the 64-bit entry point ... is at the load address + 0x200")
BZIMAGE_64BIT_ENTRY_OFFSET = 0x200


@dataclass(frozen=True)
class SetupHeader:
    """The fields of ``struct setup_header`` vmxlab reads (boot.rst "The Real-Mode Kernel Header")."""

    setup_sects: int  # 0x1F1
    boot_flag: int  # 0x1FE
    version: int  # 0x206
    loadflags: int  # 0x211
    code32_start: int  # 0x214
    initrd_addr_max: int  # 0x22C (protocol 2.03+)
    kernel_alignment: int  # 0x230
    relocatable_kernel: int  # 0x234
    xloadflags: int  # 0x236 (2.12+)
    cmdline_size: int  # 0x238 (2.06+)
    payload_offset: int  # 0x248 (2.08+)
    payload_length: int  # 0x24C
    pref_address: int  # 0x258 (2.10+)
    init_size: int  # 0x260
    header_end: int  # 0x202 + byte at 0x201: the end of the header (the jump at 0x200 skips it)

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode kernel (boot.rst: setup_sects 0 means 4)."""
        return ((self.setup_sects or 4) + 1) * SECTOR

    @property
    def version_str(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


def parse_setup_header(image: bytes) -> SetupHeader:
    """Read and check the header: a one-line UserError for anything that is not a usable bzImage."""
    if len(image) < 0x268:
        raise UserError("the kernel image is too small to be a Linux bzImage")
    u8 = lambda off: image[off]  # noqa: E731
    u16 = lambda off: struct.unpack_from("<H", image, off)[0]  # noqa: E731
    u32 = lambda off: struct.unpack_from("<I", image, off)[0]  # noqa: E731
    if u16(0x1FE) != BOOT_FLAG or image[0x202:0x206] != HDRS_MAGIC:
        raise UserError("not a Linux bzImage (no 0xAA55 boot flag and \"HdrS\" header at 0x1FE/0x202)")
    h = SetupHeader(setup_sects=u8(0x1F1), boot_flag=u16(0x1FE), version=u16(0x206), loadflags=u8(0x211),
                    code32_start=u32(0x214), initrd_addr_max=u32(0x22C), kernel_alignment=u32(0x230),
                    relocatable_kernel=u8(0x234), xloadflags=u16(0x236), cmdline_size=u32(0x238),
                    payload_offset=u32(0x248), payload_length=u32(0x24C),
                    pref_address=struct.unpack_from("<Q", image, 0x258)[0], init_size=u32(0x260),
                    header_end=0x202 + u8(0x201))
    if h.version < 0x20C:
        raise UserError(f"boot protocol {h.version_str}: vmxlab needs 2.12 or later (a 64-bit entry point)")
    if not h.loadflags & LOADED_HIGH:
        raise UserError("this kernel wants to be loaded at 0x10000 (a zImage): use a bzImage")
    return h


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD of the vmlinux ELF: ``data`` goes to ``paddr``, zero-filled up to ``memsz``."""

    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class Vmlinux:
    entry: int  # physical address of startup_64
    segments: tuple[LoadSegment, ...]

    @property
    def start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def decompress_payload(image: bytes, h: SetupHeader) -> bytes:
    """The compressed vmlinux at setup_size + payload_offset (boot.rst: "payload_offset ... from the
    beginning of the protected-mode code"); the format is recognised by its magic number."""
    start = h.setup_size + h.payload_offset
    payload = image[start : start + h.payload_length]
    if payload[:6] == b"\xfd7zXZ\x00":
        # the kernel's XZ stream ends with the uncompressed size (4 bytes) the decompressor appends
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        raise UserError("the kernel payload is zstd-compressed, which Python cannot decompress without a "
                        "third-party module; use --entry bzimage (the kernel decompresses itself)")
    raise UserError(f"unknown kernel payload compression (magic {payload[:6].hex()}); use --entry bzimage")


def parse_vmlinux(elf: bytes) -> Vmlinux:
    """PT_LOAD segments and entry of an ELF64 x86-64 executable (System V gABI, ELF-64 Object File
    Format: e_entry @0x18, e_phoff @0x20, e_phentsize @0x36, e_phnum @0x38; p_type, p_offset,
    p_paddr, p_filesz, p_memsz @0/8/24/32/40 of each program header)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or struct.unpack_from("<H", elf, 0x12)[0] != 62:
        raise UserError("the kernel payload is not an x86-64 ELF vmlinux")
    entry, phoff = struct.unpack_from("<QQ", elf, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segs = []
    for i in range(phnum):
        off = phoff + i * phentsize
        p_type = struct.unpack_from("<I", elf, off)[0]
        if p_type != 1:  # PT_LOAD
            continue
        p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from("<QQQQQ", elf, off + 8)
        segs.append(LoadSegment(p_paddr, elf[p_offset : p_offset + p_filesz], p_memsz))
    if not segs:
        raise UserError("the vmlinux has no PT_LOAD segments")
    return Vmlinux(entry, tuple(segs))


def extract_vmlinux(image: bytes, h: SetupHeader | None = None) -> Vmlinux:
    h = h or parse_setup_header(image)
    return parse_vmlinux(decompress_payload(image, h))
