"""The debug console at port 0xE9 (the Bochs/QEMU "port E9 hack").

A byte written to the port appears on the console; a read returns 0xE9, which
guests use to detect the device (Bochs iodev/unmapped.cc; QEMU hw/char/debugcon.c).
"""

from __future__ import annotations

from ..machine.machine import Console

PORT = 0xE9


class DebugConsole:
    def __init__(self, console: Console) -> None:
        self.console = console

    def io_read(self, port: int, size: int) -> int:
        return PORT

    def io_write(self, port: int, size: int, value: int) -> None:
        self.console.write(bytes([value & 0xFF]), "e9")
