"""System control port A at 0x92 ("fast A20" and fast reset, as on PS/2 and later PCs).

Bit 1 gates address line 20; writing bit 0 = 1 resets the machine (a reset
stops the run with reason "reset", as ``reboot`` would on QEMU with -no-reboot).
"""

from __future__ import annotations

from ..machine.machine import Machine, StopReason

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
