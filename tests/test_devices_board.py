"""The standard board: every device at its port, unclaimed ports reading all ones."""

from __future__ import annotations

from vmxlab.devices.board import attach_standard_devices
from vmxlab.machine.machine import Console, Machine


def make() -> Machine:
    m = Machine.create(32, Console(echo=False))
    attach_standard_devices(m)
    return m


def test_devices_claim_their_ports() -> None:
    m = make()
    expected = {
        0x20: "pic", 0x21: "pic", 0xA0: "pic", 0xA1: "pic", 0x4D0: "pic", 0x4D1: "pic",
        0x40: "pit", 0x43: "pit", 0x61: "sysctrl-b", 0x60: "i8042", 0x64: "i8042",
        0x70: "cmos", 0x71: "cmos", 0x3F8: "com1", 0x3FF: "com1", 0x92: "sysctrl-a",
        0xE9: "debugcon", 0xF4: "debug-exit", 0x8900: "shutdown", 0x80: "post", 0x190: "post",
    }
    for port, name in expected.items():
        assert m.ports.device_at(port) is m.devices[name], hex(port)
    assert m.intc is m.devices["pic"]


def test_unclaimed_ports_read_all_ones() -> None:
    m = make()
    assert m.ports.read(0x2F8, 1) == 0xFF  # COM2: not fitted
    assert m.ports.read(0xCF8, 4) == 0xFFFFFFFF  # PCI configuration: no PCI
    m.ports.write(0xCFC, 4, 0x12345678)
    # a dword access counts once per byte port (iobus splits it like the ISA bus)
    assert m.ports.unclaimed[0xCF8] == 1 and m.ports.unclaimed[0xCFC] == 1 and m.ports.unclaimed[0xCFF] == 1
