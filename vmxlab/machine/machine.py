"""The machine around a CPU: memory, I/O bus, virtual clock, interrupt lines, stop requests.

Devices depend only on this module (DESIGN.md: devices know nothing of the
hypervisor).  Both backends drive the same :class:`Machine`: the software CPU
reads interrupt requests from :attr:`Machine.intc`; the KVM backend forwards
:class:`IrqLine` changes to ``KVM_IRQ_LINE``.

Time is virtual by default: ``clock.now_ns()`` is derived from the number of
instructions retired, so a run is exactly reproducible (a PIT interrupt lands on
the same instruction every time).  ``--wall-clock`` switches to host time.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from .iobus import PortBus
from .memory import MiB, PhysicalMemory


class StopReason(enum.Enum):
    """Why a run ended.  Values are the CLI exit-status classes (see cli.py)."""

    DEBUG_EXIT = "debug-exit"  # isa-debug-exit port 0xF4: status (v << 1) | 1
    SHUTDOWN_REQUEST = "shutdown-request"  # Bochs port 0x8900 "Shutdown", or poweroff
    RESET = "reset"  # i8042 0xFE / port 0x92 bit 0 / triple fault with reset policy
    TRIPLE_FAULT = "triple-fault"  # SDM Vol.3A 6.15 #DF: a fault while delivering #DF
    HALTED = "halted"  # HLT with interrupts disabled and nothing that can wake it
    BUDGET = "budget"  # --max-instructions reached
    TIMEOUT = "timeout"  # --timeout wall-clock seconds elapsed
    VM_EXIT = "vm-exit"  # (VMX) a VM exit returned to the VMM
    ERROR = "error"  # internal error or unsupported feature; detail says which


@dataclass
class StopRequest:
    reason: StopReason
    status: int = 0
    detail: str = ""


class InterruptController(Protocol):
    """What the CPU needs from a PIC/APIC: the INTR line and INTA."""

    intr: bool

    def acknowledge(self) -> int: ...

    def set_irq(self, irq: int, level: bool) -> None: ...


class IrqLine:
    """One interrupt request line from a device to the machine's interrupt controller."""

    __slots__ = ("machine", "irq", "level")

    def __init__(self, machine: Machine, irq: int) -> None:
        self.machine = machine
        self.irq = irq
        self.level = False

    def set(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.level = level
            self.machine.route_irq(self.irq, level)

    def pulse(self) -> None:
        """An edge: raise then lower (edge-triggered 8259 inputs latch the rising edge)."""
        self.set(True)
        self.set(False)


class Clock:
    """Virtual time in nanoseconds, driven by the retired-instruction count (or the host clock).

    Devices call :meth:`schedule`; the CPU calls :meth:`run_due` when its
    instruction count passes :attr:`deadline_icount`, so checking for timer
    events costs one integer comparison per block.
    """

    NEVER = 1 << 62

    def __init__(self, ns_per_instruction: float = 10.0, wall: bool = False) -> None:
        self.ns_per_instruction = ns_per_instruction
        self.wall = wall
        self._t0 = time.perf_counter_ns()
        self.icount_fn: Callable[[], int] = lambda: 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        #: instruction count at which the next event is due (the CPU compares against this)
        self.deadline_icount = self.NEVER
        #: called when the deadline moves earlier (a device scheduled a sooner event), so a run loop
        #: that cached the old deadline looks again; Machine wires it to its CPU wake-up hook
        self.on_deadline_change: Callable[[], None] | None = None

    def now_ns(self) -> int:
        if self.wall:
            return time.perf_counter_ns() - self._t0
        return int(self.icount_fn() * self.ns_per_instruction)

    def schedule(self, at_ns: int, callback: Callable[[], None]) -> None:
        heapq.heappush(self._events, (at_ns, next(self._seq), callback))
        self._update_deadline()

    def cancel(self, callback: Callable[[], None]) -> None:
        self._events = [e for e in self._events if e[2] != callback]
        heapq.heapify(self._events)
        self._update_deadline()

    def run_due(self) -> None:
        now = self.now_ns()
        while self._events and self._events[0][0] <= now:
            _, _, cb = heapq.heappop(self._events)
            cb()
        self._update_deadline()

    def next_event_ns(self) -> int | None:
        return self._events[0][0] if self._events else None

    def _update_deadline(self) -> None:
        old = self.deadline_icount
        if not self._events:
            self.deadline_icount = self.NEVER
        elif self.wall:
            # host time: poll every few thousand instructions
            self.deadline_icount = self.icount_fn() + 4096
        else:
            due = self._events[0][0]
            self.deadline_icount = max(0, int(-(-due // self.ns_per_instruction)))
        if self.deadline_icount < old and self.on_deadline_change is not None:
            self.on_deadline_change()


class Console:
    """Where guest console bytes go: the host's stdout, a buffer, or both."""

    def __init__(self, stream: BinaryIO | None = None, echo: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.echo = echo
        self.captured = bytearray()
        self.by_channel: dict[str, bytearray] = {}

    def write(self, data: bytes, channel: str = "console") -> None:
        self.captured += data
        self.by_channel.setdefault(channel, bytearray()).extend(data)
        if self.echo:
            self.stream.write(data)
            self.stream.flush()

    def text(self) -> str:
        return self.captured.decode("utf-8", "replace")


@dataclass
class Machine:
    """Memory + ports + clock + devices + the stop flag: everything but the CPU."""

    memory: PhysicalMemory
    ports: PortBus = field(default_factory=PortBus)
    clock: Clock = field(default_factory=Clock)
    console: Console = field(default_factory=Console)
    intc: InterruptController | None = None
    #: backends may replace this to route device IRQs elsewhere (KVM_IRQ_LINE)
    irq_router: Callable[[int, bool], None] | None = None
    stop: StopRequest | None = None
    a20: bool = True
    devices: dict[str, object] = field(default_factory=dict)
    #: a host terminal feeds a device from another thread: HLT waits for it instead of stopping
    input_attached: bool = False
    #: POST codes seen on ports 0x80/0x190 (last is what the summary shows)
    post_codes: list[int] = field(default_factory=list)
    #: called after A20 changes so the CPU can flush its TLB
    on_a20_change: Callable[[bool], None] | None = None
    #: called by the interrupt controller when its INTR output may have changed (the CPU
    #: then looks at ``intc.intr`` at the next instruction boundary)
    on_intr: Callable[[], None] | None = None
    #: called when a device requests a stop, so the CPU stops at the next instruction boundary
    on_stop: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.clock.on_deadline_change = self._timer_moved

    def _timer_moved(self) -> None:
        # A device scheduled an event sooner than the CPU's cached check point: wake the run
        # loop the same way an INTR change does (the CPU re-reads the clock deadline then).
        if self.on_intr is not None:
            self.on_intr()

    @classmethod
    def create(cls, mem_mib: int = 32, console: Console | None = None, wall_clock: bool = False,
               reserved_mib: int = 0) -> Machine:
        """``reserved_mib`` more MiB of RAM above the guest's, for a VMM's own structures."""
        memory = PhysicalMemory((mem_mib + reserved_mib) * MiB)
        memory.guest_size = mem_mib * MiB
        m = cls(memory=memory, clock=Clock(wall=wall_clock))
        if console is not None:
            m.console = console
        return m

    def irq_line(self, irq: int) -> IrqLine:
        return IrqLine(self, irq)

    def route_irq(self, irq: int, level: bool) -> None:
        if self.irq_router is not None:
            self.irq_router(irq, level)
        elif self.intc is not None:
            self.intc.set_irq(irq, level)

    def request_stop(self, reason: StopReason, status: int = 0, detail: str = "") -> None:
        if self.stop is None:  # the first request wins
            self.stop = StopRequest(reason, status, detail)
            if self.on_stop is not None:
                self.on_stop()

    def notify_intr(self) -> None:
        """For interrupt controllers: the INTR line changed."""
        if self.on_intr is not None:
            self.on_intr()

    def set_a20(self, enabled: bool) -> None:
        if enabled != self.a20:
            self.a20 = enabled
            if self.on_a20_change is not None:
                self.on_a20_change(enabled)

    def add_device(self, name: str, device: object) -> object:
        self.devices[name] = device
        return device
