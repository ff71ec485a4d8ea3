"""POST-code ports: 0x80 (the PC diagnostic port) and 0x190 (test386.asm's default POST_PORT).

Every byte written is recorded in ``machine.post_codes``; the run summary shows
the last one, which tells which test a conformance ROM stopped in.
"""

from __future__ import annotations

from ..machine.machine import Machine

PORTS = (0x80, 0x190)


class PostPort:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.on_code = None  # optional trace hook: on_code(port, value)

    def io_read(self, port: int, size: int) -> int:
        return self.machine.post_codes[-1] if self.machine.post_codes else 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        self.machine.post_codes.append(value & 0xFF)
        if self.on_code is not None:
            self.on_code(port, value & 0xFF)
