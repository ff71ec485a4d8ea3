"""The 8254 programmable interval timer of the PC: counters 0-2 at ports 0x40-0x42, control word at 0x43.

Why a timer model driven by the machine's clock: the PIT is the first timer interrupt any PC guest
uses (IRQ 0), and on ``emu`` the clock counts retired instructions, so a timer interrupt lands on
the same instruction in every run.  Counts are never stepped: the state of a counter at any moment
is computed from the time its count was loaded, and the next IRQ 0 edge is booked with
``clock.schedule``.  In wall-clock mode the same code runs on host time.

Source: Intel 8254 Programmable Interval Timer datasheet (order no. 231164-005), cited as
"8254" with the section name.  PC wiring (IBM PC/AT Technical Reference): input clock
14.31818 MHz / 12 = 1.193182 MHz on all three counters; counter 0 OUT -> IRQ 0; counters 0 and 1
have GATE tied high; counter 2's GATE is port 0x61 bit 0 and its OUT is readable at port 0x61 bit 5
(see sysctrl.py).

Modes:

* 0 (interrupt on terminal count), 2 (rate generator), 3 (square wave): modelled as the datasheet
  describes, including the one-clock delay before a written count is loaded, gate control, and
  mode 2's rule that a new count takes effect at the end of the current period.  In mode 3 a new
  count also takes effect at the end of the current *period* (the datasheet: half-period).
* 1 and 5 (hardware-triggered one-shot / strobe): modelled; they start on a GATE rising edge, which
  only counter 2 can see (port 0x61).
* 4 (software-triggered strobe): modelled.
* BCD counting (control word bit 0) is honoured for counts and read-back.

IRQ 0 is modelled by its rising edges, which is what the edge-triggered 8259A latches: one per
period in modes 2 and 3 (OUT goes low for one clock in mode 2 and for half the period in mode 3;
the line is driven low then high at the edge), one at terminal count in mode 0.  Until the guest
writes a control word a counter is idle with OUT high (the power-on state is undefined in the
datasheet; a BIOS would have programmed mode 3), so no interrupt arrives unasked.
"""

from __future__ import annotations

from collections.abc import Callable

from ..machine.machine import IrqLine, Machine

PIT_HZ = 1_193_182  # 14.31818 MHz / 12 (IBM PC/AT Technical Reference)
NS_PER_S = 1_000_000_000
PORT_COUNTER0 = 0x40
PORT_CONTROL = 0x43
IRQ = 0

# control word fields (8254 "Control word format")
CW_SC_SHIFT = 6  # select counter; 3 = read-back command
CW_RW_SHIFT = 4  # 0 = counter latch command, 1 = LSB, 2 = MSB, 3 = LSB then MSB
CW_M_SHIFT = 1
CW_BCD = 0x01
RW_LATCH, RW_LSB, RW_MSB, RW_BOTH = 0, 1, 2, 3
SC_READBACK = 3
# read-back command (8254 "Read-back command"): bits are active low
RB_COUNT_N = 0x20
RB_STATUS_N = 0x10
# status byte (8254 "Status byte")
ST_OUTPUT = 0x80
ST_NULL_COUNT = 0x40


def ticks_at(ns: int) -> int:
    """PIT input-clock ticks elapsed at ``ns`` nanoseconds of machine time."""
    return ns * PIT_HZ // NS_PER_S


def ns_at(tick: int) -> int:
    """The first nanosecond at which ``tick`` ticks have elapsed."""
    return -(-tick * NS_PER_S // PIT_HZ)


def to_bcd(value: int) -> int:
    return int(str(value % 10000), 16)


def from_bcd(value: int) -> int:
    digits = f"{value:04x}"
    return int(digits) if digits.isdigit() else int("".join(str(min(int(d, 16), 9)) for d in digits))


class Counter:
    """One of the three counters.  Times are in PIT ticks; ``now`` is passed in by :class:`Pit8254`."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.gate = gate
        self.mode = 0
        self.rw = RW_BOTH
        self.bcd = False
        self.programmed = False  # a control word has been written since power-on
        self.n = 0x10000  # the count in use (1..65536, or 1..10000 in BCD)
        self.start: int | None = None  # tick at which the count was loaded into the counting element
        self.frozen: int | None = None  # elapsed ticks when GATE stopped the count (modes 0, 2, 3, 4)
        self.next_n: int | None = None  # modes 2/3: a count written while counting, loaded at...
        self.next_start = 0  # ...this tick (the end of the current period)
        self.has_count = False  # a count has been written since the control word
        self.write_msb_next = False
        self.lsb_written = 0
        self.lsb_read = False  # RW_BOTH read flip-flop: the LSB has been read, the MSB is next
        self.latched: list[int] = []  # output latch bytes, first to read first
        self.status: int | None = None  # latched status byte (read before a latched count)
        self.null_count = True
        self.out_when_idle = True

    # -- state at a given tick ---------------------------------------------------------------

    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def settle(self, now: int) -> None:
        """Apply a count reload that became due (modes 2/3: the period in progress has ended)."""
        if self.next_n is not None and now >= self.next_start:
            self.n = self.next_n
            self.start = self.next_start
            self.next_n = None

    def elapsed(self, now: int) -> int | None:
        if self.start is None:
            return None
        if self.frozen is not None:
            return self.frozen
        return now - self.start

    def out(self, now: int) -> bool:
        """The OUT pin (8254 "Mode definitions")."""
        self.settle(now)
        e = self.elapsed(now)
        mode, n = self.mode, self.n
        if e is None or e < 0:
            return self.out_when_idle
        if mode == 0 or mode == 1:
            return e >= n
        if mode == 2:
            return not self.gate or e % n != n - 1
        if mode == 3:
            return not self.gate or e % n < (n + 1) // 2
        return e != n  # modes 4 and 5: low for one clock at terminal count

    def count(self, now: int) -> int:
        """The counting element, as the guest would latch it."""
        self.settle(now)
        e = self.elapsed(now)
        n = self.n
        if e is None or e < 0:
            return n % self.modulus
        if self.mode == 2:
            return n - e % n
        if self.mode == 3:
            return self._square_wave_count(e % n, n)
        return (n - e) % self.modulus

    @staticmethod
    def _square_wave_count(pos: int, n: int) -> int:
        """Mode 3 counts by two; an odd count loses one extra on the first clock of each half
        (8254 "Mode 3"): even N: N, N-2, ..., 2 twice; odd N: N, N-1, N-3, ..., 2 then N, N-3, ..., 2."""
        high = (n + 1) // 2
        if pos < high:
            return n if pos == 0 else n - 1 - 2 * (pos - 1) if n & 1 else n - 2 * pos
        pos -= high
        return n if pos == 0 else n - 3 - 2 * (pos - 1) if n & 1 else n - 2 * pos

    def next_edge(self, now: int) -> int | None:
        """Tick of the next rising edge of OUT strictly after ``now``, or None."""
        self.settle(now)
        if self.start is None or self.frozen is not None:
            return None
        s, n = self.start, self.n
        if self.mode in (2, 3):
            if not self.gate:
                return None
            # a pending reload (next_n) happens at the end of this period, which is this edge
            return s + n if now < s + n else s + ((now - s) // n + 1) * n
        edge = s + n if self.mode in (0, 1) else s + n + 1
        return edge if edge > now else None

    # -- programming -------------------------------------------------------------------------------

    def control(self, rw: int, mode: int, bcd: bool) -> None:
        """A control word for this counter (8254 "Write operations"): OUT to its initial state."""
        self.rw, self.mode, self.bcd = rw, mode if mode < 6 else mode - 4, bcd
        self.programmed = True
        self.start = None
        self.frozen = None
        self.next_n = None
        self.has_count = False
        self.write_msb_next = False
        self.lsb_read = False
        self.latched = []
        self.status = None
        self.null_count = True
        self.out_when_idle = self.mode != 0  # mode 0: OUT low; all others: OUT high

    def write(self, value: int, now: int) -> bool:
        """A byte to the counter's port; returns True when a full count was written."""
        if self.rw == RW_LSB:
            raw = value
        elif self.rw == RW_MSB:
            raw = value << 8
        elif not self.write_msb_next:
            self.lsb_written = value
            self.write_msb_next = True
            if self.mode == 0 and self.start is not None:
                # 8254 "Mode 0": writing the first byte disables counting, OUT goes low at once
                self.start = None
                self.out_when_idle = False
            return False
        else:
            raw = self.lsb_written | value << 8
            self.write_msb_next = False
        self.load(raw, now)
        return True

    def load(self, raw: int, now: int) -> None:
        n = from_bcd(raw) if self.bcd else raw
        if n == 0:
            n = self.modulus  # 0 is the maximum count (8254 "Counter operation")
        if self.mode == 2 and n == 1:
            n = 2  # a count of 1 is illegal in mode 2 (8254 "Mode 2")
        self.null_count = True
        self.has_count = True
        load_at = now + 1  # the count is loaded into the counting element on the next CLK
        if self.mode in (2, 3) and self.start is not None and self.frozen is None:
            # a new count does not disturb the current period (8254 "Mode 2", "Mode 3")
            self.settle(now)
            edge = self.next_edge(now)
            self.next_n, self.next_start = n, edge if edge is not None else load_at
            return
        self.n = n
        if self.mode in (1, 5):
            self.start = None  # waits for a GATE trigger
            self.out_when_idle = True
            return
        self.start = load_at
        self.frozen = None
        if not self.gate:  # counting is disabled until GATE rises (modes 0, 2, 3, 4)
            self.frozen = -1

    def set_gate(self, level: bool, now: int) -> None:
        """GATE input (8254 "Gate" table): enables counting in modes 0/2/3/4, triggers modes 1/2/3/5."""
        if level == self.gate:
            return
        self.gate = level
        self.settle(now)
        if not self.programmed:
            return
        mode = self.mode
        if level:
            if mode in (1, 2, 3, 5) and self.has_count:
                self.start = now + 1  # rising edge: (re)load the count and start
                self.frozen = None
                self.next_n = None
            elif self.frozen is not None and self.start is not None:
                resumed = max(self.frozen, 0)
                self.start = now - resumed
                self.frozen = None
        elif mode in (0, 2, 3, 4) and self.start is not None and self.frozen is None:
            self.frozen = max(now - self.start, -1)

    # -- reading -------------------------------------------------------------------------------------

    def latch_count(self, now: int) -> None:
        """Counter latch command; a second latch before the first is read is ignored (8254)."""
        if self.latched:
            return
        value = self.count(now)
        value = to_bcd(value) if self.bcd else value & 0xFFFF
        if self.rw == RW_LSB:
            self.latched = [value & 0xFF]
        elif self.rw == RW_MSB:
            self.latched = [value >> 8]
        else:
            self.latched = [value & 0xFF, value >> 8]

    def latch_status(self, now: int) -> None:
        if self.status is not None:
            return
        if self.start is not None and now >= self.start:
            self.null_count = False
        self.status = ((ST_OUTPUT if self.out(now) else 0) | (ST_NULL_COUNT if self.null_count else 0)
                       | self.rw << CW_RW_SHIFT | self.mode << CW_M_SHIFT | (CW_BCD if self.bcd else 0))

    def read(self, now: int) -> int:
        if self.status is not None:
            value, self.status = self.status, None
            return value
        if self.latched:
            return self.latched.pop(0)
        value = self.count(now)
        value = to_bcd(value) if self.bcd else value & 0xFFFF
        if self.rw == RW_LSB:
            return value & 0xFF
        if self.rw == RW_MSB:
            return value >> 8
        self.lsb_read = not self.lsb_read
        return value & 0xFF if self.lsb_read else value >> 8


class Pit8254:
    """The three counters on the ISA bus, with counter 0 driving IRQ 0."""

    def __init__(self, machine: Machine, irq: IrqLine | None = None) -> None:
        self.machine = machine
        self.clock = machine.clock
        self.irq = irq if irq is not None else machine.irq_line(IRQ)
        self.irq.level = True  # OUT0 idles high: the first rising edge needs a fall first
        # GATE 0 and 1 are tied high on the PC; GATE 2 is port 0x61 bit 0 (low at power-on)
        self.counters = [Counter(0, True), Counter(1, True), Counter(2, False)]
        self._generation = 0
        self.on_irq: Callable[[int], None] | None = None  # trace hook: on_irq(tick)

    def attach(self) -> Pit8254:
        self.machine.ports.register(PORT_COUNTER0, 4, self)
        self.machine.add_device("pit", self)
        return self

    def now(self) -> int:
        return ticks_at(self.clock.now_ns())

    # -- ports --------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        if port == PORT_CONTROL:
            return 0xFF  # the control word register cannot be read (8254 "Read operations")
        return self.counters[port - PORT_COUNTER0].read(self.now())

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        now = self.now()
        if port != PORT_CONTROL:
            c = self.counters[port - PORT_COUNTER0]
            c.write(value, now)
            if c.index == 0:
                self._counter0_changed(now)
            return
        sc = value >> CW_SC_SHIFT
        if sc == SC_READBACK:
            for i, c in enumerate(self.counters):
                if value & (2 << i):
                    if not value & RB_STATUS_N:
                        c.latch_status(now)
                    if not value & RB_COUNT_N:
                        c.latch_count(now)
            return
        c = self.counters[sc]
        rw = (value >> CW_RW_SHIFT) & 3
        if rw == RW_LATCH:
            c.latch_count(now)
            return
        c.control(rw, (value >> CW_M_SHIFT) & 7, bool(value & CW_BCD))
        if c.index == 0:
            self._counter0_changed(now)

    # -- GATE 2 / OUT 2 (port 0x61) -------------------------------------------------------------------

    def set_gate(self, index: int, level: bool) -> None:
        now = self.now()
        self.counters[index].set_gate(level, now)
        if index == 0:
            self._counter0_changed(now)

    def out(self, index: int) -> bool:
        return self.counters[index].out(self.now())

    # -- IRQ 0 ------------------------------------------------------------------------------------------

    def _counter0_changed(self, now: int) -> None:
        """Counter 0 was reprogrammed: drive IRQ 0 to OUT0's new level (a control word or a count
        can raise or lower it, 8254 "Mode definitions") and book its next rising edge; older
        bookings are ignored by generation."""
        self._generation += 1
        self.irq.set(self.counters[0].out(now))
        self._book(now)

    def _book(self, now: int) -> None:
        edge = self.counters[0].next_edge(now)
        if edge is None:
            return
        gen = self._generation
        self.clock.schedule(ns_at(edge), lambda: self._edge(gen, edge))

    def _edge(self, gen: int, tick: int) -> None:
        if gen != self._generation:
            return
        c = self.counters[0]
        c.settle(tick)
        if c.mode in (0, 1):
            self.irq.set(True)  # terminal count: OUT stays high until reprogrammed
        else:
            self.irq.set(False)  # modes 2-5: the short low phase, then the rising edge
            self.irq.set(True)
        if self.on_irq is not None:
            self.on_irq(tick)
        # book from the present: on a late wall clock, missed periods are dropped (the 8259A
        # would have merged them into one request anyway)
        self._book(max(tick, self.now()))
