"""The 8254 PIT and port 0x61 in virtual time: periods in modes 0, 2, 3 (and 1, 4, 5), counter
reads, latch and read-back commands, BCD, timer 2's gate and output (Intel 8254 datasheet).

Time is driven by hand: the machine's clock reads a fake instruction count (10 ns each), and
``advance`` fires every booked event at its own time, as the CPU's run loop does."""

from __future__ import annotations

import pytest

from vmxlab.devices.board import attach_standard_devices
from vmxlab.devices.pit8254 import PIT_HZ, Pit8254, ns_at, ticks_at
from vmxlab.machine.machine import Console, Machine

CH0, CH2, CTRL, PORT_B = 0x40, 0x42, 0x43, 0x61
NS_PER_INSN = 10


class Board:
    def __init__(self) -> None:
        self.machine = Machine.create(32, Console(echo=False))
        attach_standard_devices(self.machine)
        self.icount = 0
        self.machine.clock.icount_fn = lambda: self.icount
        self.edges: list[int] = []  # PIT ticks of IRQ 0 rising edges
        self.machine.irq_router = self._irq
        self.pit: Pit8254 = self.machine.devices["pit"]

    def _irq(self, irq: int, level: bool) -> None:
        if irq == 0 and level:
            self.edges.append(ticks_at(self.machine.clock.now_ns()))

    def now_tick(self) -> int:
        return ticks_at(self.machine.clock.now_ns())

    def advance_ticks(self, ticks: int) -> None:
        """Let ``ticks`` PIT clocks pass, running each event when it is due."""
        clock = self.machine.clock
        target_ns = ns_at(self.now_tick() + ticks)
        while (nxt := clock.next_event_ns()) is not None and nxt <= target_ns:
            self.icount = max(self.icount, -(-nxt // NS_PER_INSN))
            clock.run_due()
        self.icount = max(self.icount, -(-target_ns // NS_PER_INSN))
        clock.run_due()

    def outb(self, port: int, value: int) -> None:
        self.machine.ports.write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.machine.ports.read(port, 1)

    def program(self, counter: int, mode: int, count: int, bcd: bool = False) -> int:
        """Control word (LSB then MSB) and count; returns the tick of the count write."""
        self.outb(CTRL, counter << 6 | 0x30 | mode << 1 | int(bcd))
        self.outb(CH0 + counter, count & 0xFF)
        self.outb(CH0 + counter, count >> 8)
        return self.now_tick()

    def read_count(self, counter: int) -> int:
        self.outb(CTRL, counter << 6)  # counter latch command
        return self.inb(CH0 + counter) | self.inb(CH0 + counter) << 8

    def status(self, counter: int) -> int:
        self.outb(CTRL, 0xC0 | 0x20 | 2 << counter)  # read-back: status only
        return self.inb(CH0 + counter)


@pytest.fixture
def b() -> Board:
    board = Board()
    board.icount = 12345  # start at an arbitrary time
    return board


def test_no_interrupt_until_programmed(b: Board) -> None:
    b.advance_ticks(PIT_HZ)  # one virtual second
    assert b.edges == []


def test_mode2_rate_generator_period(b: Board) -> None:
    n = 1193  # ~1 ms
    t0 = b.program(0, 2, n)
    b.advance_ticks(10 * n + n // 2)
    # the count is loaded on the clock after the write; an edge ends each period
    assert b.edges == [t0 + 1 + k * n for k in range(1, 11)]


def test_mode3_square_wave_period_and_output(b: Board) -> None:
    n = 1000
    t0 = b.program(0, 3, n)
    b.advance_ticks(5 * n + 1)
    assert [e - t0 - 1 for e in b.edges] == [n * k for k in range(1, 6)]
    start = t0 + 1
    b.advance_ticks(start + 5 * n + 100 - b.now_tick())  # 100 ticks into a period: high half
    assert b.status(0) & 0x80
    assert b.read_count(0) == n - 200  # mode 3 counts down by two
    b.advance_ticks(500)  # 600 ticks in: low half
    assert not b.status(0) & 0x80


def test_mode3_odd_count_halves(b: Board) -> None:
    n = 5  # high for 3 clocks, low for 2 (8254 mode 3, odd counts)
    t0 = b.program(0, 3, n)
    b.advance_ticks(t0 + 1 - b.now_tick())
    outs = []
    for _ in range(n):
        outs.append(bool(b.status(0) & 0x80))
        b.advance_ticks(1)
    assert outs == [True, True, True, False, False]


def test_mode0_interrupt_on_terminal_count_once(b: Board) -> None:
    n = 500
    t0 = b.program(0, 0, n)
    assert not b.status(0) & 0x80  # OUT low after the control word
    b.advance_ticks(n // 2)
    assert b.read_count(0) == n - (b.now_tick() - t0 - 1)
    b.advance_ticks(10 * n)
    assert b.edges == [t0 + 1 + n]
    assert b.status(0) & 0x80  # OUT stays high


def test_mode0_new_count_restarts_and_lowers_out(b: Board) -> None:
    b.program(0, 0, 100)
    b.advance_ticks(200)
    assert b.status(0) & 0x80
    t1 = b.program(0, 0, 300)
    assert not b.status(0) & 0x80
    b.advance_ticks(400)
    assert b.edges[-1] == t1 + 1 + 300 and len(b.edges) == 2


def test_mode2_new_count_applies_after_current_period(b: Board) -> None:
    t0 = b.program(0, 2, 1000)
    b.advance_ticks(300)
    b.outb(CH0, 2000 & 0xFF)  # same mode: only the count
    b.outb(CH0, 2000 >> 8)
    b.advance_ticks(5000)
    start = t0 + 1
    assert b.edges[:3] == [start + 1000, start + 3000, start + 5000]


def test_counter_latch_freezes_the_value_until_read(b: Board) -> None:
    b.program(0, 2, 10000)
    b.advance_ticks(1000)
    b.outb(CTRL, 0x00)  # latch counter 0
    b.advance_ticks(500)
    latched = b.inb(CH0) | b.inb(CH0) << 8
    assert latched == 10000 - 999  # loaded one clock after the write
    now = b.read_count(0)
    assert now == latched - 500


def test_read_back_status_byte(b: Board) -> None:
    b.outb(CTRL, 0x34)  # counter 0, LSB+MSB, mode 2, binary
    assert b.status(0) & 0x40  # null count: nothing loaded yet
    b.outb(CH0, 0x00)
    b.outb(CH0, 0x10)
    b.advance_ticks(2)
    st = b.status(0)
    assert st & 0x3F == 0x34  # RW = 3, mode 2, binary
    assert not st & 0x40
    assert st & 0x80
    # read-back of status and count: status first, then the count
    b.outb(CTRL, 0xC0 | 0x02)
    assert b.inb(CH0) == st
    count = b.inb(CH0) | b.inb(CH0) << 8
    assert 0 < count <= 0x1000


def test_lsb_only_and_msb_only_access(b: Board) -> None:
    b.outb(CTRL, 0x10 | 2 << 1)  # counter 0, LSB only, mode 2
    b.outb(CH0, 200)
    b.advance_ticks(51)
    assert b.inb(CH0) == 150
    b.outb(CTRL, 0x20 | 2 << 1)  # MSB only
    t0 = b.now_tick()
    b.outb(CH0, 0x02)  # count 0x200
    b.advance_ticks(0x200 * 3 + 10)
    edges = [e for e in b.edges if e > t0]
    assert edges[1] - edges[0] == 0x200


def test_bcd_counting(b: Board) -> None:
    b.program(0, 2, 0x1000, bcd=True)  # 1000 decimal
    b.advance_ticks(1 + 250)
    assert b.read_count(0) == 0x0750
    b.edges.clear()
    b.advance_ticks(3000)
    assert len(b.edges) == 3


def test_count_zero_means_65536(b: Board) -> None:
    t0 = b.program(0, 2, 0)
    b.advance_ticks(2 * 65536 + 10)
    assert b.edges == [t0 + 1 + 65536, t0 + 1 + 2 * 65536]


def test_timer2_gate_and_output_through_port_61(b: Board) -> None:
    b.program(2, 0, 1000)
    b.advance_ticks(5000)
    assert not b.inb(PORT_B) & 0x20  # gate low: not counting
    b.outb(PORT_B, 0x01)  # gate on
    assert b.inb(PORT_B) & 0x01
    b.advance_ticks(500)
    assert not b.inb(PORT_B) & 0x20
    b.outb(PORT_B, 0x00)  # gate off: the count freezes
    frozen = b.read_count(2)
    b.advance_ticks(5000)
    assert b.read_count(2) == frozen
    b.outb(PORT_B, 0x01)
    b.advance_ticks(frozen + 1)
    assert b.inb(PORT_B) & 0x20  # terminal count reached
    assert b.edges == []  # timer 2 has no interrupt


def test_port_61_refresh_bit_toggles(b: Board) -> None:
    seen = set()
    for _ in range(8):
        seen.add(b.inb(PORT_B) & 0x10)
        b.advance_ticks(9)
    assert seen == {0, 0x10}


def test_mode1_needs_a_gate_trigger(b: Board) -> None:
    b.program(2, 1, 300)
    b.advance_ticks(1000)
    assert b.inb(PORT_B) & 0x20  # OUT high: not triggered
    b.outb(PORT_B, 0x01)  # rising gate edge triggers the one-shot
    b.advance_ticks(10)
    assert not b.inb(PORT_B) & 0x20
    b.advance_ticks(300)
    assert b.inb(PORT_B) & 0x20


def test_mode4_strobe(b: Board) -> None:
    t0 = b.program(0, 4, 700)
    b.advance_ticks(5000)
    assert b.edges == [t0 + 1 + 700 + 1]


def test_wall_clock_mode_uses_host_time() -> None:
    m = Machine.create(32, Console(echo=False), wall_clock=True)
    attach_standard_devices(m)
    pit: Pit8254 = m.devices["pit"]
    m.ports.write(CTRL, 1, 0x34)
    m.ports.write(CH0, 1, 0xFF)
    m.ports.write(CH0, 1, 0xFF)
    assert m.clock.next_event_ns() is not None  # an IRQ 0 edge is booked on the host clock
    assert pit.counters[0].n == 0xFFFF
