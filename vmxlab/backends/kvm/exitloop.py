"""The interim VMM of the ``kvm`` backend: one exit dispatcher over named exit reasons.

This is the place the lead's VMM (vmm/vm.py and its handler table) replaces: it has the
same shape -- ``result = vcpu.run()``, look the SDM exit reason up in a table, call a
small handler, resume -- and only the handlers a PC guest needs on this backend:

* 30 I/O instruction  -> the Machine's port bus (every device model of devices/);
* 48 EPT violation    -> the Machine's MMIO regions (``machine.memory.read/write``);
* 12 HLT              -> wait for the PIC or a device timer, or stop as ``emu`` does;
* 31/32 RDMSR/WRMSR   -> virtual MSRs (none by default: #GP(0), what KVM itself does for an
  MSR it does not know);
* 2 triple fault      -> stop with StopReason.TRIPLE_FAULT;
* 0 exception (#DB)   -> stop (single-step / breakpoint reached);
* 7 interrupt window  -> nothing (the vCPU injects the PIC's interrupts itself).

Budget: KVM counts no instructions, so ``max_instructions`` cannot stop a run; only the
timeout (host seconds) does.  The summary says "instructions: n/a".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

from ...machine.machine import StopReason, StopRequest
from ...vmx.api import EntryFailure, GuestStopped, VmExit
from ...vmx.exit_reasons import ExitReason
from .vcpu import KvmGuestVcpu

# typing.Optional, not X | None: this line runs at import, and Python 3.9 (PyPy 7.3.11) has no | on classes
Handler = Callable[[VmExit], Optional[StopRequest]]  # noqa: UP045


class InterimVmm:
    """Exit dispatch for one :class:`KvmGuestVcpu` until vmm/vm.py takes over."""

    def __init__(self, vcpu: KvmGuestVcpu, msrs: dict[int, int] | None = None) -> None:
        self.vcpu = vcpu
        self.machine = vcpu.machine
        #: virtual MSRs answered by RDMSR/WRMSR exits (MSRs in the vCPU's ``msr_exits``)
        self.msrs: dict[int, int] = dict(msrs or {})
        self.handlers: dict[int, Handler] = {
            ExitReason.IO_INSTRUCTION: self.io_instruction,
            ExitReason.EPT_VIOLATION: self.ept_violation,
            ExitReason.HLT: self.hlt,
            ExitReason.RDMSR: self.rdmsr,
            ExitReason.WRMSR: self.wrmsr,
            ExitReason.TRIPLE_FAULT: self.triple_fault,
            ExitReason.EXCEPTION_OR_NMI: self.exception,
            ExitReason.INTERRUPT_WINDOW: lambda exit_: None,
        }
        #: VM exits by SDM reason (counted by the reason value: an enum's .name costs a microsecond)
        self.counts: dict[int, int] = {}
        #: every VM exit in order, when a caller wants them (tests; None: not kept)
        self.record: list[VmExit] | None = None
        #: a vmxlab.trace Tracer (``--trace``/``--show``): each exit becomes a "vm-exit" event
        self.tracer = None

    def run(self, max_instructions: int | None = None, timeout: float | None = None) -> StopRequest:
        machine = self.machine
        machine.stop = None
        vcpu = self.vcpu
        handlers = self.handlers
        counts = self.counts
        record = self.record
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = vcpu.run(None, remaining)
            if result.__class__ is not VmExit:
                if isinstance(result, GuestStopped):
                    return result.stop
                if isinstance(result, EntryFailure):
                    return StopRequest(StopReason.ERROR, detail=str(result))
            reason = result.reason
            counts[reason] = counts.get(reason, 0) + 1
            if record is not None:
                record.append(result)
            if self.tracer is not None:
                self._trace(result)
            handler = handlers.get(reason)
            if handler is None:
                return StopRequest(StopReason.ERROR, detail=f"no handler for {result}")
            stop = handler(result)
            if stop is not None:
                return stop
            if machine.stop is not None:
                return machine.stop

    def _trace(self, ex: VmExit) -> None:
        self.tracer.emit("vm-exit", eip=ex.guest_rip, cs=self.vcpu.sync.sregs.cs.selector, cpl=self.vcpu.cpl(),
                         reason=int(ex.reason), reason_name=ex.name, qualification=ex.qualification,
                         fields=str(ex.decoded) if ex.decoded is not None else None,
                         guest={"rip": ex.guest_rip, "rsp": ex.guest_rsp, "length": ex.instruction_length,
                                "gpa": ex.guest_physical_address}, vmx="non-root")

    @property
    def exit_counts(self) -> dict[str, int]:
        """VM exits by SDM reason name (for the summary and ``vmxlab compare``)."""
        return {(r.name if isinstance(r, ExitReason) else str(r)): n for r, n in self.counts.items()}

    # ------------------------------------------------------------------ handlers

    def io_instruction(self, exit_: VmExit) -> StopRequest | None:
        """SDM Vol.3C 28.2.1 Table 28-5: the qualification gives port, size and direction."""
        q = exit_.decoded
        ports = self.machine.ports
        if q.direction_in:
            n = self.vcpu.io_count(exit_)  # elements: 1, or more for REP INS
            self.vcpu.complete_io_in(exit_, [ports.read(q.port, q.size) for _ in range(n)])
        else:
            for value in self.vcpu.io_out_value(exit_):
                ports.write(q.port, q.size, value)
            self.vcpu.complete_io_out(exit_)
        return None

    def ept_violation(self, exit_: VmExit) -> StopRequest | None:
        """A guest-physical address with no RAM behind it: an MMIO region (or unbacked: all ones)."""
        addr, size, is_write, value = self.vcpu.mmio_access(exit_)
        memory = self.machine.memory
        natural = size in (1, 2, 4, 8)
        if is_write:
            if natural:
                memory.write(addr, size, value)
            else:
                memory.write_bytes(addr, value.to_bytes(size, "little"))
            self.vcpu.complete_mmio_write(exit_)
        else:
            value = memory.read(addr, size) if natural else int.from_bytes(memory.read_bytes(addr, size), "little")
            self.vcpu.complete_mmio_read(exit_, value)
        return None

    def hlt(self, exit_: VmExit) -> StopRequest | None:
        """HLT waits for the next interrupt (SDM Vol.2A "HLT"); the vCPU knows how."""
        self.vcpu.skip_instruction(exit_)
        return self.vcpu.wait_for_interrupt()

    def rdmsr(self, exit_: VmExit) -> StopRequest | None:
        self.vcpu.complete_rdmsr(exit_, self.msrs.get(self.vcpu.msr_index(exit_)))
        return None

    def wrmsr(self, exit_: VmExit) -> StopRequest | None:
        index = self.vcpu.msr_index(exit_)
        ok = index in self.msrs
        if ok:
            self.msrs[index] = self.vcpu.wrmsr_value(exit_)
        self.vcpu.complete_wrmsr(exit_, ok)
        return None

    def triple_fault(self, exit_: VmExit) -> StopRequest | None:
        """SDM Vol.3A 6.15 "Double Fault Exception": a fault while delivering #DF shuts the CPU down."""
        return StopRequest(StopReason.TRIPLE_FAULT, detail=f"triple fault at RIP {exit_.guest_rip:#x}")

    def exception(self, exit_: VmExit) -> StopRequest | None:
        return StopRequest(StopReason.VM_EXIT, detail=str(exit_))
