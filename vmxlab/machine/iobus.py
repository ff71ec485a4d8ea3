"""The port-I/O bus: 65536 byte-wide ports, each claimed by at most one device.

A port that no device claims reads as all ones and drops writes, as on a PC's
ISA bus; such accesses are counted (and reported to the trace through
:attr:`PortBus.on_unclaimed`) because an unclaimed access is usually a guest
bug worth seeing.

Wide accesses (``in ax, dx``; ``out dx, eax``) reach byte-wide devices as
consecutive byte accesses to port, port+1, ... (the ISA bus splits them the
same way).  A device that models 16/32-bit registers itself (e.g. PCI config
data at 0xCFC) registers with ``wide=True`` and receives the whole access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class PortDevice(Protocol):
    def io_read(self, port: int, size: int) -> int: ...

    def io_write(self, port: int, size: int, value: int) -> None: ...


class PortBus:
    """Dispatch ``in``/``out`` to devices by port number."""

    def __init__(self) -> None:
        self._dev: list[PortDevice | None] = [None] * 0x10000
        self._wide: list[bool] = [False] * 0x10000
        self.unclaimed: dict[int, int] = {}
        #: called as on_unclaimed(port, size, is_write, value) for every unclaimed access
        self.on_unclaimed: Callable[[int, int, bool, int], None] | None = None
        #: called as on_access(port, size, is_write, value) for every access (trace); None = off
        self.on_access: Callable[[int, int, bool, int], None] | None = None

    def register(self, first: int, count: int, device: PortDevice, *, wide: bool = False) -> None:
        for port in range(first, first + count):
            if self._dev[port] is not None and self._dev[port] is not device:
                raise ValueError(f"I/O port {port:#x} is already claimed by {self._dev[port]!r}")
            self._dev[port] = device
            self._wide[port] = wide

    def device_at(self, port: int) -> PortDevice | None:
        return self._dev[port & 0xFFFF]

    def read(self, port: int, size: int) -> int:
        port &= 0xFFFF
        dev = self._dev[port]
        if dev is not None and (size == 1 or self._wide[port]):
            value = dev.io_read(port, size)
        else:
            value = 0
            for i in range(size):
                value |= self._read_byte((port + i) & 0xFFFF) << (8 * i)
        if self.on_access is not None:
            self.on_access(port, size, False, value)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        port &= 0xFFFF
        if self.on_access is not None:
            self.on_access(port, size, True, value)
        dev = self._dev[port]
        if dev is not None and (size == 1 or self._wide[port]):
            dev.io_write(port, size, value)
            return
        for i in range(size):
            self._write_byte((port + i) & 0xFFFF, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port: int) -> int:
        dev = self._dev[port]
        if dev is None:
            self._count_unclaimed(port, 1, False, 0xFF)
            return 0xFF
        return dev.io_read(port, 1) & 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        dev = self._dev[port]
        if dev is None:
            self._count_unclaimed(port, 1, True, value)
            return
        dev.io_write(port, 1, value)

    def _count_unclaimed(self, port: int, size: int, is_write: bool, value: int) -> None:
        self.unclaimed[port] = self.unclaimed.get(port, 0) + 1
        if self.on_unclaimed is not None:
            self.on_unclaimed(port, size, is_write, value)
