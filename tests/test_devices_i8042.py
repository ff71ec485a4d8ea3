"""The i8042 keyboard controller through ports 0x60/0x64: status, commands, reset, A20, keyboard."""

from __future__ import annotations

import pytest

from vmxlab.devices.board import attach_standard_devices
from vmxlab.machine.machine import Console, Machine, StopReason


class Board:
    def __init__(self) -> None:
        self.machine = Machine.create(32, Console(echo=False))
        attach_standard_devices(self.machine)
        self.irq1: list[bool] = []
        self.machine.irq_router = lambda irq, level: self.irq1.append(level) if irq == 1 else None

    def cmd(self, value: int) -> None:
        self.machine.ports.write(0x64, 1, value)

    def data(self, value: int) -> None:
        self.machine.ports.write(0x60, 1, value)

    def status(self) -> int:
        return self.machine.ports.read(0x64, 1)

    def read(self) -> int:
        return self.machine.ports.read(0x60, 1)

    def drain(self) -> list[int]:
        out = []
        while self.status() & 0x01:
            out.append(self.read())
        return out


@pytest.fixture
def b() -> Board:
    return Board()


def test_status_after_power_on(b: Board) -> None:
    assert b.status() == 0x14  # keyboard unlocked, system flag; buffers empty


def test_self_test_and_interface_test(b: Board) -> None:
    b.cmd(0xAA)
    assert b.status() & 0x01
    assert b.read() == 0x55
    assert not b.status() & 0x01
    b.cmd(0xAB)
    assert b.drain() == [0x00]


def test_command_byte_read_and_write(b: Board) -> None:
    b.cmd(0x20)
    assert b.drain() == [0x65]
    b.cmd(0x60)
    assert b.status() & 0x08  # last write was a command
    b.data(0x44)
    b.cmd(0x20)
    assert b.drain() == [0x44]


def test_command_fe_pulses_reset(b: Board) -> None:
    b.cmd(0xFE)
    assert b.machine.stop is not None and b.machine.stop.reason == StopReason.RESET


def test_command_ff_does_not_reset(b: Board) -> None:
    b.cmd(0xFF)
    assert b.machine.stop is None


def test_output_port_a20_and_reset(b: Board) -> None:
    b.cmd(0xD1)
    b.data(0xDD)  # A20 off, reset inactive
    assert b.machine.a20 is False
    assert b.machine.stop is None
    b.cmd(0xD0)
    assert b.drain() == [0xDD]
    b.cmd(0xD1)
    b.data(0xDF)
    assert b.machine.a20 is True
    b.cmd(0xD1)
    b.data(0xDE)  # bit 0 = 0 holds the CPU in reset
    assert b.machine.stop is not None and b.machine.stop.reason == StopReason.RESET


def test_keyboard_reset_and_identify(b: Board) -> None:
    b.data(0xFF)
    assert b.drain() == [0xFA, 0xAA]
    b.data(0xF2)
    assert b.drain() == [0xFA, 0xAB, 0x83]
    b.data(0xED)  # set LEDs takes an argument
    b.data(0x07)
    assert b.drain() == [0xFA, 0xFA]
    b.data(0xF0)
    b.data(0x00)  # get scan code set
    assert b.drain() == [0xFA, 0xFA, 2]


def test_one_irq1_edge_per_byte(b: Board) -> None:
    b.data(0xFF)  # two reply bytes; the command byte enables IRQ 1
    b.drain()
    assert b.irq1.count(True) == 2
    assert b.irq1[-1] is False


def test_no_irq1_when_disabled_in_command_byte(b: Board) -> None:
    b.cmd(0x60)
    b.data(0x44)
    b.cmd(0xAA)
    assert True not in b.irq1


def test_empty_data_port_repeats_last_byte(b: Board) -> None:
    assert b.read() == 0
    b.cmd(0xAA)
    assert b.read() == 0x55
    assert b.read() == 0x55
