"""The CMOS RTC and NVRAM of the PC/AT (Motorola MC146818A): index port 0x70, data port 0x71.

Why: PC guests read the time and the BIOS's memory-size bytes from it, and Linux reads the RTC at
boot (kvm.md 2.5: register A with UIP = 0, B = 0x02, D = 0x80).  Register A's UIP bit always reads
0, so a guest's "wait until no update is in progress" loop never spins.

Source: Motorola MC146818A Real-Time Clock Plus RAM datasheet, cited as "MC146818A" with the
section name; the NVRAM layout is the IBM PC/AT BIOS's (Technical Reference, "CMOS RAM Address
Map"), with QEMU's and SeaBIOS's convention for memory above 16 MiB at 0x34/0x35.

The clock: the wall time at which the machine was built (UTC, or ``base_time``) plus the machine's
elapsed time (virtual by default, so two runs of the same guest from the same ``base_time`` read
the same seconds).  Writing a time register moves the clock.  Alarms, the periodic and update
interrupts (register C, IRQ 8) are not modelled: register C always reads 0.
"""

from __future__ import annotations

import datetime as dt

from ..machine.machine import Machine

INDEX_PORT = 0x70
DATA_PORT = 0x71
NMI_DISABLE = 0x80  # bit 7 of the index port (PC/AT): masks NMI

# registers (MC146818A "Address map")
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32  # IBM PC/AT: century in BCD
TIME_REGS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

REG_A_UIP = 0x80
REG_A_DEFAULT = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
REG_B_24H = 0x02
REG_B_BINARY = 0x04  # DM: binary instead of BCD
REG_B_DEFAULT = REG_B_24H
REG_D_VRT = 0x80  # valid RAM and time
HOUR_PM = 0x80  # 12-hour mode

# NVRAM (IBM PC/AT BIOS)
SHUTDOWN_STATUS = 0x0F
EQUIPMENT = 0x14
BASE_MEM_LO, BASE_MEM_HI = 0x15, 0x16  # KiB of conventional memory (640)
EXT_MEM_LO, EXT_MEM_HI = 0x17, 0x18  # KiB above 1 MiB, at most 0xFFFF (POST-reported copy: 0x30/0x31)
EXT_MEM2_LO, EXT_MEM2_HI = 0x30, 0x31
HIGH_MEM_LO, HIGH_MEM_HI = 0x34, 0x35  # 64 KiB blocks above 16 MiB (QEMU/SeaBIOS)

KiB = 1024
MiB = 1024 * KiB


def bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def unbcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Cmos:
    """128 bytes of MC146818A registers and NVRAM behind the index/data port pair."""

    def __init__(self, machine: Machine, base_time: dt.datetime | None = None) -> None:
        self.machine = machine
        if base_time is None:
            # timezone.utc, not dt.UTC (3.11): the CMOS also runs on PyPy's Python 3.9 (docs/bench.md)
            base_time = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)  # noqa: UP017
        self.base_time = base_time
        self.index = 0
        self.nmi_disabled = False
        self.ram = bytearray(128)
        self.ram[REG_A] = REG_A_DEFAULT
        self.ram[REG_B] = REG_B_DEFAULT
        self.ram[REG_D] = REG_D_VRT
        self.ram[EQUIPMENT] = 0x00  # no diskette, no x87 coprocessor, video EGA/VGA (bits 5-4 = 0)
        self._set_memory_size(machine.memory.guest_size)

    def attach(self) -> Cmos:
        self.machine.ports.register(INDEX_PORT, 2, self)
        self.machine.add_device("cmos", self)
        return self

    def _set_memory_size(self, size: int) -> None:
        base_kib = 640 if size >= 640 * KiB else size // KiB
        ext_kib = min(max(size - MiB, 0) // KiB, 0xFFFF)
        high_64k = min(max(size - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
        for lo, value in ((BASE_MEM_LO, base_kib), (EXT_MEM_LO, ext_kib), (EXT_MEM2_LO, ext_kib),
                          (HIGH_MEM_LO, high_64k)):
            self.ram[lo] = value & 0xFF
            self.ram[lo + 1] = value >> 8

    # -- the clock -------------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        return self.base_time + dt.timedelta(microseconds=self.machine.clock.now_ns() // 1000)

    def _encode(self, value: int) -> int:
        return value if self.ram[REG_B] & REG_B_BINARY else bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[REG_B] & REG_B_BINARY else unbcd(value)

    def _time_reg(self, reg: int) -> int:
        t = self.now()
        if reg == SECONDS:
            return self._encode(t.second)
        if reg == MINUTES:
            return self._encode(t.minute)
        if reg == HOURS:
            if self.ram[REG_B] & REG_B_24H:
                return self._encode(t.hour)
            hour12 = t.hour % 12 or 12
            return self._encode(hour12) | (HOUR_PM if t.hour >= 12 else 0)
        if reg == DAY_OF_WEEK:
            return self._encode(t.isoweekday() % 7 + 1)  # 1 = Sunday
        if reg == DAY_OF_MONTH:
            return self._encode(t.day)
        if reg == MONTH:
            return self._encode(t.month)
        if reg == YEAR:
            return self._encode(t.year % 100)
        return bcd(t.year // 100)  # CENTURY is BCD whatever DM says (a BIOS convention)

    def _set_time_reg(self, reg: int, value: int) -> None:
        """Writing a time register moves the clock by the difference (MC146818A "Time, calendar...")."""
        t = self.now()
        try:
            if reg == SECONDS:
                new = t.replace(second=self._decode(value))
            elif reg == MINUTES:
                new = t.replace(minute=self._decode(value))
            elif reg == HOURS:
                if self.ram[REG_B] & REG_B_24H:
                    hour = self._decode(value)
                else:
                    hour = self._decode(value & ~HOUR_PM) % 12 + (12 if value & HOUR_PM else 0)
                new = t.replace(hour=hour)
            elif reg == DAY_OF_MONTH:
                new = t.replace(day=self._decode(value))
            elif reg == MONTH:
                new = t.replace(month=self._decode(value))
            elif reg == YEAR:
                new = t.replace(year=t.year // 100 * 100 + self._decode(value))
            elif reg == CENTURY:
                new = t.replace(year=unbcd(value) * 100 + t.year % 100)
            else:
                return  # day of week follows from the date
        except ValueError:
            return  # an impossible date: ignore the write
        self.base_time += new - t

    # -- ports ---------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        if port == INDEX_PORT:
            return 0xFF  # the index register is write-only
        reg = self.index
        if reg in TIME_REGS:
            return self._time_reg(reg)
        if reg == REG_A:
            return self.ram[REG_A] & ~REG_A_UIP
        if reg == REG_C:
            return 0  # no interrupt flags: periodic/alarm/update interrupts are not modelled
        return self.ram[reg]

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == INDEX_PORT:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & NMI_DISABLE)
            return
        reg = self.index
        if reg in TIME_REGS:
            self._set_time_reg(reg, value)
        elif reg == REG_A:
            self.ram[REG_A] = value & ~REG_A_UIP
        elif reg in (REG_C, REG_D):
            return  # read-only
        else:
            self.ram[reg] = value
