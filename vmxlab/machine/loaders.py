"""Image loaders: put an image into guest memory and say how the CPU must start.

A loader returns an :class:`EntryState` -- the architectural state at the
first instruction -- which each backend applies in its own way (the software
CPU's registers, or KVM_SET_SREGS/KVM_SET_REGS).  The documented entry states
are in docs/entry-state.md.

Formats: ``flat`` (a raw binary at ``--load ADDR``, entered in real mode or
32-bit flat protected mode), ``multiboot`` (see multiboot.py) and ``rom``
(see rom.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import UserError
from .machine import Machine

# The GDT vmxlab provides for a protected-mode entry, at a fixed low address (as QEMU's
# multiboot option ROM provides one): 0x10 = flat 32-bit code, 0x18 = flat 32-bit data.
# (QEMU's own table, pc-bios/optionrom/multiboot.S, uses 0x08 = code and 0x10 = data, as GRUB
# legacy does; the Multiboot spec 3.2 leaves the values undefined.)  The accessed bits are preset
# so the CPU never writes this table.
BOOT_GDT_ADDR = 0x500
BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_GDT = [
    0,
    0,
    0x00CF9B000000FFFF,  # 0x10: code, base 0, limit 4 GiB, 32-bit, DPL 0, accessed
    0x00CF93000000FFFF,  # 0x18: data, base 0, limit 4 GiB, 32-bit, DPL 0, writable, accessed
]


@dataclass
class EntryState:
    """Where and how the guest starts.  ``mode`` is "real", "pm32" or "reset"."""

    mode: str
    cs: int = 0
    eip: int = 0
    ss: int = 0
    esp: int = 0x7000
    ds: int = 0
    eflags: int = 0x2
    regs: dict[str, int] = field(default_factory=dict)
    gdt_base: int = 0
    gdt_limit: int = 0xFFFF
    idt_base: int = 0
    idt_limit: int = 0x3FF
    description: str = ""


def parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a number (use decimal or 0x hex)") from None


def parse_entry(spec: str | None, load_addr: int, stack: int | None) -> EntryState:
    """``real:SEG:OFF`` or ``pm32:EIP``; the default enters real mode at the load address."""
    if spec is None:
        # like a BIOS jumping to a boot sector: 0000:ADDR below 64 KiB, else SEG:0 below 1 MiB
        if load_addr < 0x10000:
            return real_entry(0, load_addr, stack)
        if load_addr < 0x100000 and load_addr % 16 == 0:
            return real_entry(load_addr >> 4, 0, stack)
        return pm32_entry(load_addr, stack)
    kind, _, rest = spec.partition(":")
    if kind == "real":
        seg, sep, off = rest.partition(":")
        if not sep:
            raise UserError(f"--entry {spec}: expected real:SEG:OFF, e.g. real:0x7c0:0")
        return real_entry(parse_int(seg, "--entry segment") & 0xFFFF,
                          parse_int(off, "--entry offset") & 0xFFFF, stack)
    if kind == "pm32":
        return pm32_entry(parse_int(rest, "--entry EIP"), stack)
    raise UserError(f"--entry {spec}: expected real:SEG:OFF or pm32:EIP")


def real_entry(seg: int, off: int, stack: int | None) -> EntryState:
    """Real mode after a BIOS: CR0 = 0x10, EFLAGS = 0x2, SS:SP = 0000:7000 (or ``stack``), A20 on."""
    return EntryState("real", cs=seg, eip=off, ss=0, esp=0x7000 if stack is None else stack & 0xFFFF,
                      description=f"real mode at {seg:04x}:{off:04x}")


def pm32_entry(eip: int, stack: int | None) -> EntryState:
    """32-bit flat protected mode, paging off: CS = 0x10, data = 0x18 from vmxlab's boot GDT."""
    return EntryState("pm32", cs=BOOT_CS, eip=eip, ss=BOOT_DS, ds=BOOT_DS,
                      esp=0x7000 if stack is None else stack, gdt_base=BOOT_GDT_ADDR,
                      gdt_limit=len(BOOT_GDT) * 8 - 1, idt_base=0, idt_limit=0,
                      description=f"32-bit protected mode at {eip:#x}")


def install_boot_gdt(machine: Machine) -> None:
    machine.memory.write_bytes(BOOT_GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT))


def load_flat(machine: Machine, data: bytes, addr: int) -> None:
    """Copy a raw binary to physical ``addr``; it must fit in RAM."""
    if not data:
        raise UserError("the image is empty")
    if addr < 0 or addr + len(data) > machine.memory.guest_size:
        raise UserError(
            f"a {len(data)}-byte image at {addr:#x} does not fit in {machine.memory.guest_size >> 20} MiB of RAM "
            "(choose another --load address or a larger --mem)")
    machine.memory.write_bytes(addr, data)
