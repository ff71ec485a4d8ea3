"""System control ports A (0x92) and B (0x61).

Port A ("fast A20" and fast reset, as on PS/2 and later PCs): bit 1 gates
address line 20; writing bit 0 = 1 resets the machine (a reset stops the run
with reason "reset", as ``reboot`` would on QEMU with -no-reboot).

Port B (PC/AT): timer 2 gate and output, speaker data, refresh toggle.
"""

from __future__ import annotations

from ..machine.machine import Machine, StopReason
from .pit8254 import Pit8254

PORT = 0x92


class SystemControlA:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def io_read(self, port: int, size: int) -> int:
        return 0x02 if self.machine.a20 else 0x00

    def io_write(self, port: int, size: int, value: int) -> None:
        self.machine.set_a20(bool(value & 0x02))
        if value & 0x01:
            self.machine.request_stop(StopReason.RESET, 0, "reset through port 0x92")


PORT_B = 0x61
PORT_B_GATE2 = 0x01  # timer 2 gate (speaker)
PORT_B_SPEAKER_DATA = 0x02
PORT_B_WRITABLE = 0x0F  # bits 2-3: parity / channel check enables (stored, no errors are raised)
PORT_B_REFRESH = 0x10  # toggles with every DRAM refresh request (about every 15 us)
PORT_B_OUT2 = 0x20  # timer 2 output
REFRESH_TICKS = 18  # counter 1 of a PC/AT BIOS: mode 2, count 18 (15.08 us at 1.193182 MHz)


class SystemControlB:
    """System control port B at 0x61 (IBM PC/AT Technical Reference, "Port 61h").

    Why it is modelled: timer 2 is the only PIT counter a guest can gate and whose output it can
    read, through this port -- Linux calibrates the TSC that way, BIOS-style delay loops count the
    refresh toggle in bit 4.  The refresh toggle follows the machine clock (counter 1 is not
    actually programmed for it)."""

    def __init__(self, machine: Machine, pit: Pit8254) -> None:
        self.machine = machine
        self.pit = pit
        self.value = 0

    def io_read(self, port: int, size: int) -> int:
        refresh = PORT_B_REFRESH if (self.pit.now() // REFRESH_TICKS) & 1 else 0
        out2 = PORT_B_OUT2 if self.pit.out(2) else 0
        return (self.value & PORT_B_WRITABLE) | refresh | out2

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & PORT_B_WRITABLE
        self.pit.set_gate(2, bool(value & PORT_B_GATE2))
