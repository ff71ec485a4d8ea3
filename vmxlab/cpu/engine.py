"""The run loop: fetch a block, execute it, handle what it raised; service events between blocks.

One loop serves real mode, protected mode and VMX non-root operation.  Events
are only taken at block boundaries, and blocks end at every instruction that
can unmask interrupts, so nothing is taken late.  When a block would run past
the next check point (a timer deadline or the instruction budget) it is run
instruction by instruction up to that point, so a timer interrupt arrives on
exactly the same instruction in every run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..machine.machine import StopReason, StopRequest
from . import flags as fl
from .blocks import Block
from .faults import CONTRIBUTORY, CodeModified, CpuFault, TripleFault, Vector, VmExitSignal
from .interrupts import EventKind, deliver
from .state import CS
from .translate import translate

if TYPE_CHECKING:
    from .core import CPU

M32 = 0xFFFFFFFF
TIMEOUT_POLL = 1 << 16  # instructions between wall-clock checks
HOT_THRESHOLD = 64  # executions before a block is compiled to Python source


class Engine:
    """Runs a CPU until something stops it; returns a :class:`StopRequest` value, never raises."""

    def __init__(self, cpu: CPU, *, fast: bool = True) -> None:
        self.cpu = cpu
        self.fast = fast
        self.limit_icount = 1 << 62
        self.deadline_wall: float | None = None
        self._compiler = None
        if fast:
            from .codegen import Compiler

            self._compiler = Compiler(cpu)

    # -------------------------------------------------------------- public

    def run(self, max_instructions: int | None = None, timeout: float | None = None) -> StopRequest:
        cpu = self.cpu
        machine = cpu.machine
        machine.stop = None
        self.limit_icount = cpu.icount + max_instructions if max_instructions is not None else 1 << 62
        self.deadline_wall = time.monotonic() + timeout if timeout is not None else None
        cpu.event_pending = True
        try:
            return self._loop()
        except TripleFault as t:
            return StopRequest(StopReason.TRIPLE_FAULT, detail=str(t))
        except _Stop as s:
            return s.request
        except VmExitSignal as e:
            # a VM exit raised on an event path outside the per-instruction handlers (interrupt window,
            # preemption timer, event injection, #DF delivery, triple fault): EIP is at a boundary already
            try:
                self.vm_exit(e)
            except _Stop as s:
                return s.request
            return StopRequest(StopReason.VM_EXIT, detail=f"VM exit {e.reason}")

    # -------------------------------------------------------------- loop

    def next_check(self) -> int:
        cpu = self.cpu
        nc = min(self.limit_icount, cpu.machine.clock.deadline_icount - cpu.idle_ticks)
        if cpu.shadow_until >= cpu.icount and cpu.event_pending:
            # an STI/MOV SS shadow covers one instruction: a held-back event is looked at right after it
            nc = min(nc, cpu.shadow_until + 1)
        if self.deadline_wall is not None:
            nc = min(nc, cpu.icount + TIMEOUT_POLL)
        return nc

    def _loop(self) -> StopRequest:
        cpu = self.cpu
        blocks = cpu.blocks.blocks
        compiler = self._compiler
        segs = cpu.segs
        next_check = self.next_check()
        while True:
            if cpu.event_pending or cpu.icount >= next_check:
                self._service()
                next_check = self.next_check()
                if cpu.halted:
                    continue
            # ---- fetch
            la = (segs[CS].base + cpu.eip) & M32
            p = cpu.tlb_x.get(la >> 12)
            try:
                pa = p | (la & 0xFFF) if p is not None else cpu.fetch_translate(la)
                blk = blocks.get(pa << 3 | cpu.mode_key)
                # the key is physical; the block's EIP-relative constants (branch targets, return
                # addresses) also depend on the EIP it was decoded at (CS base aliasing: 07C0:0 vs 0:7C00)
                if (blk is None or blk.eips[0] != cpu.eip
                        or (blk.page2_la is not None and not self._page2_ok(blk))):
                    blk = translate(cpu, pa, la, pa << 3 | cpu.mode_key)
                    cpu.blocks.add(blk)
            except CpuFault as f:  # #PF or #GP on the fetch itself
                self.exception(f)
                continue
            except VmExitSignal as e:
                self.vm_exit(e)
                continue
            # ---- execute
            n = blk.n
            if cpu.icount + n > next_check:
                self._run_partial(blk, next_check - cpu.icount)
                continue
            blk.hits += 1
            fast = blk.fast
            if fast is None and compiler is not None and blk.hits >= HOT_THRESHOLD:
                fast = compiler.compile(blk)
            cpu.cur_block = blk
            cpu.eip = blk.end_eip
            if fast is not None:
                try:
                    cpu.icount += fast(cpu, next_check - cpu.icount)
                except CpuFault as f:
                    self.exception(f)
                except CodeModified:
                    self._single_step_uncached()
                except VmExitSignal as e:
                    self.vm_exit(e)
                continue
            i = 0
            try:
                for op in blk.ops:
                    op(cpu)
                    i += 1
                cpu.icount += n
            except CpuFault as f:
                cpu.icount += i
                cpu.eip = blk.eips[i]
                self.exception(f)
            except CodeModified:
                cpu.icount += i
                cpu.eip = blk.eips[i]
                self._single_step_uncached()
            except VmExitSignal as e:
                cpu.icount += i
                cpu.eip = blk.eips[i]
                self.vm_exit(e)

    def _page2_ok(self, blk: Block) -> bool:
        """A block straddling two pages is valid only if the second page still maps the same frame."""
        cpu = self.cpu
        p = cpu.tlb_x.get(blk.page2_la >> 12)
        pa2 = p if p is not None else cpu.fetch_translate(blk.page2_la) & ~0xFFF
        return pa2 == blk.page2_pa

    def _run_partial(self, blk: Block, count: int) -> None:
        """Run the first ``count`` (>= 0) instructions of a block, then stop at an instruction boundary."""
        cpu = self.cpu
        cpu.cur_block = blk
        i = 0
        try:
            while i < count:
                cpu.eip = blk.eips[i + 1] if i + 1 < blk.n else blk.end_eip
                blk.ops[i](cpu)
                i += 1
                cpu.icount += 1
        except CpuFault as f:
            cpu.eip = blk.eips[i]
            self.exception(f)
        except CodeModified:
            cpu.eip = blk.eips[i]
            self._single_step_uncached()
        except VmExitSignal as e:
            cpu.eip = blk.eips[i]
            self.vm_exit(e)
        if count <= 0:
            cpu.eip = blk.eips[0]

    def _single_step_uncached(self) -> None:
        """Execute the instruction at EIP on its own, outside any cached block (after self-modification)."""
        cpu = self.cpu
        eip = cpu.eip
        la = (cpu.segs[CS].base + eip) & M32
        try:
            pa = cpu.fetch_translate(la)
            blk = translate(cpu, pa, la, -1)
            del blk.ops[1:], blk.eips[1:], blk.instrs[1:]
            ins = blk.instrs[0]
            blk.n = 1
            cpu.cur_block = None
            cpu.eip = (blk.eips[0] + ins.len) & (M32 if cpu.cs32 else 0xFFFF)
            blk.ops[0](cpu)
            cpu.icount += 1
        except CpuFault as f:
            cpu.eip = eip
            self.exception(f)
        except VmExitSignal as e:
            cpu.eip = eip
            self.vm_exit(e)

    # -------------------------------------------------------------- events

    def _service(self) -> None:
        """Between blocks: stop requests, budget, timeout, timers, interrupts, HLT."""
        cpu = self.cpu
        machine = cpu.machine
        cpu.event_pending = False
        if machine.stop is not None:
            raise _Stop(machine.stop)
        if cpu.icount >= self.limit_icount:
            raise _Stop(StopRequest(StopReason.BUDGET, detail=f"{cpu.icount} instructions"))
        if self.deadline_wall is not None and time.monotonic() >= self.deadline_wall:
            raise _Stop(StopRequest(StopReason.TIMEOUT))
        clock = machine.clock
        if cpu.icount + cpu.idle_ticks >= clock.deadline_icount:
            clock.run_due()
            if machine.stop is not None:
                raise _Stop(machine.stop)
        if cpu.pending_fault is not None:  # a fault in a new task's context (tasks.py)
            fault, cpu.pending_fault = cpu.pending_fault, None
            self.exception(fault)
            return
        if self._take_interrupt():
            return
        if cpu.halted:
            self._idle()

    def _take_interrupt(self) -> bool:
        """Deliver a pending NMI or INTR if it is not blocked (SDM Vol.3A 6.8.1, 6.9)."""
        cpu = self.cpu
        hooks = cpu.vmx
        if hooks is not None and hooks.pending_event(cpu):  # VMX: windows, injection, preemption timer
            return True
        if cpu.inhibit_pending:  # the block ended with STI / MOV SS / POP SS: shadow the next instruction
            cpu.inhibit_pending = False
            cpu.shadow_until = cpu.icount
        if cpu.icount <= cpu.shadow_until:  # STI / MOV SS interrupt shadow (SDM Vol.3A 6.8.3)
            cpu.event_pending = True
            return False
        if cpu.nmi_pending and not cpu.nmi_blocked:
            cpu.nmi_pending = False
            cpu.nmi_blocked = True
            self._deliver_event(Vector.NMI, None, EventKind.NMI)
            return True
        intc = cpu.machine.intc
        if intc is not None and intc.intr and cpu.eflags_sys & fl.IF:
            if hooks is not None and hooks.external_interrupt_exits(cpu):
                return True
            vector = intc.acknowledge()
            self._deliver_event(vector, None, EventKind.EXTERNAL)
            return True
        return False

    def _deliver_event(self, vector: int, error_code: int | None, kind: EventKind) -> None:
        cpu = self.cpu
        try:
            deliver(cpu, vector, error_code, kind, cpu.eip)
        except CpuFault as f:
            self.exception(f)
        except VmExitSignal as e:
            self.vm_exit(e)

    def _idle(self) -> None:
        """HLT: let virtual time pass until the next timer event, or stop if nothing can wake the CPU."""
        cpu = self.cpu
        machine = cpu.machine
        clock = machine.clock
        can_wake = bool(cpu.eflags_sys & fl.IF) or cpu.nmi_pending
        if can_wake and machine.input_attached:
            # a terminal feeds COM1 from another thread: wait for it (or for the clock) in host time
            time.sleep(0.001)
            if clock.deadline_icount < clock.NEVER and not clock.wall:
                cpu.idle_ticks += max(0, clock.deadline_icount - (cpu.icount + cpu.idle_ticks))
            cpu.event_pending = True
            return
        if not can_wake or clock.deadline_icount >= clock.NEVER:
            if cpu.vmx is not None and cpu.vmx.halt_can_wake(cpu):
                cpu.event_pending = True
                return
            why = "interrupts disabled" if not cpu.eflags_sys & fl.IF else "no timer or device can interrupt"
            raise _Stop(StopRequest(StopReason.HALTED, detail=f"HLT with {why}"))
        if clock.wall:
            time.sleep(0.0005)
        else:
            skip = clock.deadline_icount - (cpu.icount + cpu.idle_ticks)
            if skip > 0:
                cpu.idle_ticks += skip
            # time spent halted counts against the budget too, so a guest halted for good (its
            # timer interrupts masked, say) still stops at --max-instructions
            if cpu.icount + cpu.idle_ticks >= self.limit_icount:
                raise _Stop(StopRequest(StopReason.BUDGET, detail=f"{cpu.icount} instructions and "
                                        f"{cpu.idle_ticks} idle ticks (halted)"))
        cpu.event_pending = True

    # -------------------------------------------------------------- exceptions

    def exception(self, f: CpuFault) -> None:
        """Deliver a fault raised by an instruction, applying the double-fault rules (SDM Vol.3A 6.15)."""
        cpu = self.cpu
        cpu.cur_block = None  # delivery is not part of the block: its stores may hit any code
        kind = EventKind.HARDWARE_EXCEPTION
        try:
            self._deliver_fault(f, kind)
        except CpuFault as second:
            if second.vector == Vector.PF and second.cr2 is not None:
                cpu.cr2 = second.cr2  # the processor loads CR2 when it detects the #PF (SDM Vol.3A 6.15)
            if _is_double_fault(f.vector, second.vector):
                try:
                    self._deliver_fault(CpuFault(Vector.DF, 0, detail=f"{f} then {second}"), kind)
                except CpuFault as third:
                    self._triple_fault(f"#DF delivery failed with {third}")
            elif f.vector == Vector.DF:
                self._triple_fault(f"#DF delivery failed with {second}")
            else:
                self.exception(second)  # benign combination: handle serially
        except VmExitSignal as e:
            self.vm_exit(e)
        cpu.event_pending = True

    def _deliver_fault(self, f: CpuFault, kind: EventKind) -> None:
        cpu = self.cpu
        if cpu.trace is not None:
            cpu.trace.fault(cpu, f)
        if cpu.vmx is not None:  # before CR2 is loaded: a #PF that causes a VM exit leaves CR2 alone
            cpu.vmx.check_exception_exit(cpu, f.vector, f.error_code, kind, fault_address=f.cr2)
        if f.vector == Vector.PF and f.cr2 is not None:
            cpu.cr2 = f.cr2
        deliver(cpu, f.vector, f.error_code, kind, cpu.eip)

    def _triple_fault(self, detail: str) -> None:
        cpu = self.cpu
        if cpu.vmx is not None:
            cpu.vmx.triple_fault(cpu)  # a VM exit (reason 2) in non-root operation
        raise TripleFault(f"triple fault at {cpu.segs[CS].selector:04x}:{cpu.eip:08x}: {detail}")

    def vm_exit(self, e: VmExitSignal) -> None:
        cpu = self.cpu
        cpu.cur_block = None
        if cpu.vmx is None:
            raise _Stop(StopRequest(StopReason.ERROR, detail=f"VM exit {e.reason} outside VMX operation"))
        request = cpu.vmx.vm_exit(cpu, e)
        if request is not None:
            raise _Stop(request)


def _is_double_fault(first: int, second: int) -> bool:
    """SDM Vol.3A 6.15, Table 6-5: contributory+contributory or page fault+(contributory|page fault)."""
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return True
    return first == Vector.PF and (second in CONTRIBUTORY or second == Vector.PF)


class _Stop(Exception):  # noqa: N818
    def __init__(self, request: StopRequest) -> None:
        super().__init__(request.reason.value)
        self.request = request
