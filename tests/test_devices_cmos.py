"""The CMOS RTC/NVRAM through ports 0x70/0x71 (MC146818A; PC/AT NVRAM layout)."""

from __future__ import annotations

import datetime as dt

import pytest

from vmxlab.devices.cmos import Cmos
from vmxlab.machine.machine import Console, Machine

BASE = dt.datetime(2024, 2, 29, 23, 59, 58)  # a Thursday, one second before a leap-day rollover


class Board:
    def __init__(self, mem_mib: int = 32) -> None:
        self.machine = Machine.create(mem_mib, Console(echo=False))
        self.icount = 0
        self.machine.clock.icount_fn = lambda: self.icount  # 10 ns per instruction
        self.cmos = Cmos(self.machine, base_time=BASE).attach()

    def read(self, reg: int) -> int:
        self.machine.ports.write(0x70, 1, reg)
        return self.machine.ports.read(0x71, 1)

    def write(self, reg: int, value: int) -> None:
        self.machine.ports.write(0x70, 1, reg)
        self.machine.ports.write(0x71, 1, value)

    def advance_seconds(self, s: float) -> None:
        self.icount += int(s * 1e8)


@pytest.fixture
def b() -> Board:
    return Board()


def test_status_registers(b: Board) -> None:
    assert b.read(0x0A) == 0x26  # UIP = 0
    assert b.read(0x0B) == 0x02  # 24-hour, BCD
    assert b.read(0x0C) == 0x00
    assert b.read(0x0D) == 0x80  # valid RAM and time


def test_time_in_bcd(b: Board) -> None:
    regs = (0, 2, 4, 6, 7, 8, 9, 0x32)  # s, min, h, weekday (1 = Sunday), day, month, year, century
    assert [b.read(r) for r in regs] == [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]


def test_time_follows_the_machine_clock(b: Board) -> None:
    b.advance_seconds(3)
    assert [b.read(r) for r in (0, 2, 4, 7, 8)] == [0x01, 0x00, 0x00, 0x01, 0x03]  # 1 March 00:00:01


def test_memory_size_bytes() -> None:
    b = Board(32)
    assert b.read(0x15) | b.read(0x16) << 8 == 640
    assert b.read(0x17) | b.read(0x18) << 8 == 31 * 1024
    assert b.read(0x30) | b.read(0x31) << 8 == 31 * 1024
    assert b.read(0x34) | b.read(0x35) << 8 == (32 - 16) * 16  # 64 KiB blocks above 16 MiB


def test_extended_memory_saturates() -> None:
    b = Board(128)
    assert b.read(0x17) | b.read(0x18) << 8 == 0xFFFF
    assert b.read(0x34) | b.read(0x35) << 8 == (128 - 16) * 16


def test_nvram_is_writable_and_index_carries_nmi_bit(b: Board) -> None:
    b.write(0x80 | 0x40, 0x5A)
    assert b.cmos.nmi_disabled
    assert b.read(0x40) == 0x5A
    assert not b.cmos.nmi_disabled


def test_writing_time_moves_the_clock(b: Board) -> None:
    b.write(4, 0x12)  # hours = 12 (BCD)
    b.write(2, 0x34)
    assert (b.read(4), b.read(2)) == (0x12, 0x34)
    b.advance_seconds(60)
    assert b.read(2) == 0x35


def test_binary_and_12_hour_modes(b: Board) -> None:
    b.write(0x0B, 0x04)  # binary, 12-hour
    assert b.read(4) == 0x80 | 11  # 11 PM
    assert b.read(0) == 58


def test_uip_never_reads_set(b: Board) -> None:
    b.write(0x0A, 0xA6)
    assert b.read(0x0A) == 0x26
