"""``--format rom``: a BIOS-style ROM image started from the reset vector, as a PC starts.

Why: CPU conformance ROMs such as test386.asm (reference/emulation.md 5.1) run as the BIOS, with no
OS and no loader; they begin at the reset vector and expect the ROM in both places a PC decodes it:

* just below 4 GiB (0xFFFF0000 for 64 KiB, 0xFFFE0000 for 128 KiB), where the first instruction is
  fetched: after reset CS has selector 0xF000 but base 0xFFFF0000, EIP = 0xFFF0 (SDM Vol.3A 10.1.4,
  "First Instruction Executed"), so the CPU fetches from 0xFFFFFFF0;
* at the top of the first MiB (0xF0000 or 0xE0000), where the first far jump (test386: ``jmp
  F000:0045``) lands once CS is reloaded.

The alias below 4 GiB is a read-only window (``memory.add_rom``).  The copy below 1 MiB is ordinary
RAM, so it stays writable: a PC chipset can shadow the BIOS into RAM the same way, and test386 never
writes into its own image (it keeps its data at 0x20000, its tables at 0x1000 and in segments 0x40
and 0x60), so nothing depends on it being read-only.  RAM must therefore cover the first MiB.
"""

from __future__ import annotations

from ..errors import UserError
from .loaders import EntryState
from .machine import Machine

KiB = 1024
ROM_SIZES = (64 * KiB, 128 * KiB)
ONE_MIB = 1 << 20
FOUR_GIB = 1 << 32


def load_rom(machine: Machine, data: bytes) -> EntryState:
    """Map a 64 or 128 KiB ROM at the top of the first MiB and just below 4 GiB; start at reset."""
    size = len(data)
    if size not in ROM_SIZES:
        raise UserError(f"a ROM image must be 64 KiB or 128 KiB (65536 or 131072 bytes), this one has {size} "
                        "bytes; for a raw binary use --format flat")
    mem = machine.memory
    if mem.size < ONE_MIB:
        raise UserError("--format rom needs at least 1 MiB of RAM (the ROM is copied below 1 MiB)")
    low = ONE_MIB - size
    high = FOUR_GIB - size
    mem.write_bytes(low, data)
    try:
        mem.add_rom(high, data, "bios-rom")
    except ValueError as e:  # RAM or another window up there: not with --mem <= 3072
        raise UserError(f"cannot map the ROM below 4 GiB: {e}") from None
    return EntryState("reset", description=f"reset vector, {size >> 10} KiB ROM at {low:#x} and {high:#x}")
