"""Devices a guest uses to end the run with a status.

* QEMU's isa-debug-exit at port 0xF4: writing v stops the machine and the
  emulator exits with status (v << 1) | 1 (QEMU hw/misc/debugexit.c).
* Bochs's shutdown port 0x8900: writing the bytes "Shutdown" in sequence
  stops the machine with status 0 (Bochs iodev/unmapped.cc).
"""

from __future__ import annotations

from ..machine.machine import Machine, StopReason

DEBUG_EXIT_PORT = 0xF4
SHUTDOWN_PORT = 0x8900
_MAGIC = b"Shutdown"


class DebugExit:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def io_read(self, port: int, size: int) -> int:
        return 0xFFFFFFFF & ((1 << (8 * size)) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= (1 << (8 * size)) - 1
        self.machine.request_stop(StopReason.DEBUG_EXIT, (value << 1) | 1, f"isa-debug-exit wrote {value:#x}")


class ShutdownPort:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.matched = 0

    def io_read(self, port: int, size: int) -> int:
        return 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        ch = value & 0xFF
        if ch == _MAGIC[self.matched]:
            self.matched += 1
            if self.matched == len(_MAGIC):
                self.matched = 0
                self.machine.request_stop(StopReason.SHUTDOWN_REQUEST, 0,
                                          'guest wrote "Shutdown" to port 0x8900')
        else:
            self.matched = 1 if ch == _MAGIC[0] else 0
