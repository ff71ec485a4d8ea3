"""The interface between the software CPU and VMX non-root operation.

The CPU knows nothing about VMCS layouts.  When ``cpu.vmx`` is not None the
CPU is in VMX non-root operation and calls these methods at the points the
SDM defines (Vol.3C chapter 26, "VMX non-root operation"); the implementation
lives in :mod:`vmxlab.vmx`.  Each method either returns (no exit: the
instruction or event proceeds, possibly with a value the VMM controls, e.g. a
CR0 read shadow) or raises :class:`~vmxlab.cpu.faults.VmExitSignal`.

Call order inside an instruction handler (SDM Vol.3C 26.1.1): #UD and
privilege faults first, then the hook, then the instruction's effect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..machine.machine import StopRequest
    from .core import CPU
    from .faults import VmExitSignal


class VmxHooks(Protocol):
    # ---- instructions
    def intercept(self, cpu: CPU, name: str, **info: int) -> None:
        """An instruction that may exit: "cpuid", "hlt", "invd", "wbinvd", "invlpg" (linear=),
        "rdpmc", "rdtsc", "rdmsr"/"wrmsr" (msr=), "io" (port=, size=, is_in=, imm=, string=, rep=),
        "mov_dr" (dr=, gpr=, to_dr=), "descriptor_table" (instruction= 0 SGDT 1 SIDT 2 LGDT 3 LIDT),
        "ldtr_tr" (instruction= 0 SLDT 1 STR 2 LLDT 3 LTR), "pause", "wbinvd", "monitor", "mwait",
        "vmx" (instruction=reason number), "task_switch" (selector=, source= as in the exit qualification),
        ...  Raises VmExitSignal when the VMM's controls make it exit (implementation: vmx/nonroot.py)."""

    def read_cr(self, cpu: CPU, n: int, value: int, gpr: int | None) -> int:
        """MOV from CR0/CR3/CR4 (and SMSW, gpr None): exit (CR3-store exiting) or return the value the
        guest sees (read shadows for bits owned by the VMM, SDM Vol.3C 26.3)."""

    def write_cr(self, cpu: CPU, n: int, value: int, gpr: int) -> int:
        """MOV to CR0/CR3/CR4: exit, or return the value actually loaded (masked bits keep their value)."""

    def clts(self, cpu: CPU) -> bool:
        """CLTS: exit, or return False if TS must stay set (the VMM owns it), True to clear it."""

    def lmsw(self, cpu: CPU, source: int) -> int:
        """LMSW: exit, or return the source value to apply (bits owned by the VMM unchanged)."""

    def guest_tsc(self, cpu: CPU, tsc: int) -> int:
        """RDTSC/RDMSR(TSC) value seen by the guest (TSC offsetting)."""

    # ---- events
    def check_exception_exit(self, cpu: CPU, vector: int, error_code: int | None, kind: int,
                             next_ip: int | None = None, fault_address: int | None = None) -> None:
        """Before delivering an exception: exit if the exception bitmap (and #PF mask/match) says so.
        ``fault_address`` is a #PF's linear address (the exit qualification; CR2 is not yet loaded)."""

    def external_interrupt_exits(self, cpu: CPU) -> bool:
        """An unmasked INTR is pending: exit (external-interrupt exiting) or let it be delivered."""

    def pending_event(self, cpu: CPU) -> bool:
        """At an instruction boundary: VM-entry event injection, interrupt/NMI windows, the
        preemption timer.  Returns True if it delivered an event."""

    def halt_can_wake(self, cpu: CPU) -> bool:
        """HLT with nothing to wake the guest: True if something in VMX (preemption timer) still can."""

    def triple_fault(self, cpu: CPU) -> None:
        """A triple fault in non-root operation: VM exit reason 2 (raises VmExitSignal)."""

    def vm_exit(self, cpu: CPU, signal: VmExitSignal) -> StopRequest | None:
        """Perform the VM exit: save guest state, load host state; return a stop for the run loop."""


class EptTranslator(Protocol):
    """``cpu.ept`` in VMX non-root operation with "enable EPT": guest-physical to host-physical.

    Both methods raise VmExitSignal for an EPT violation (reason 48) or misconfiguration (49)
    with the qualification of SDM Vol.3C 28.2.1 (bit 7/8: linear address valid / final access).
    """

    def translate(self, gpa: int, acc: int, la: int | None, final: bool = True) -> int:
        """Translate the guest-physical address of a data/fetch access (acc: PF_W, PF_U, PF_I bits)."""

    def translate_walk(self, gpa: int, la: int | None, write: bool = False) -> int:
        """Translate the guest-physical address of a guest paging-structure entry (read, or A/D write)."""
