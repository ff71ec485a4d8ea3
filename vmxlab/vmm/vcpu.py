"""What the VMM needs from a virtual CPU, on either backend.

The VMM (vmm/vm.py) runs one loop for both engines::

    result = vcpu.run()                       # enter the guest until a VM exit
    handler = HANDLERS[result.reason]         # dispatch on the SDM's basic exit reason
    handler(vm, result)                       # e.g. I/O to the device bus
    ... vcpu.run() again                      # resume (VMRESUME / KVM_RUN)

* ``emu``: the software CPU in VMX non-root operation (vmx/api.py's ``VmxCpu``):
  exits are real VMX exits with VMCS exit information; the handler completes
  the instruction (writes EAX for IN, advances GUEST_RIP).
* ``kvm``: ``KVM_RUN``; KVM's userspace exits are mapped onto the same
  :class:`~vmxlab.vmx.api.VmExit` values (IO -> reason 30 with the SDM I/O
  qualification, MMIO -> 48 EPT violation with the guest-physical address,
  HLT -> 12, RDMSR/WRMSR -> 31/32, SHUTDOWN -> 2 triple fault).  KVM finishes
  the instruction itself on the next KVM_RUN once the handler supplied the data.

So handlers never touch RIP or registers directly for I/O, MMIO and MSRs: they
call the ``complete_*`` methods and each backend does what its hardware needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..machine.loaders import EntryState
    from ..machine.machine import Machine
    from ..vmx.api import EntryFailure, GuestStopped, VmExit


class Vcpu(Protocol):
    backend: str  # "emu" or "kvm"
    machine: Machine

    def apply_entry(self, entry: EntryState) -> None:
        """Put the guest in a loader's entry state (docs/entry-state.md)."""

    def run(self, max_instructions: int | None = None, timeout: float | None = None
            ) -> VmExit | EntryFailure | GuestStopped:
        """Enter (or resume) the guest until the next VM exit or a stop."""

    # ---- completing the exiting instruction
    def io_out_value(self, exit_: VmExit) -> list[int]:
        """The value(s) an OUT/OUTS wrote (one per element for string I/O)."""

    def complete_io_in(self, exit_: VmExit, values: list[int]) -> None:
        """Give an IN/INS its value(s) and complete the instruction."""

    def complete_io_out(self, exit_: VmExit) -> None:
        """Complete an OUT/OUTS (emu: advance RIP, update ESI/ECX; kvm: nothing to do)."""

    def mmio_access(self, exit_: VmExit) -> tuple[int, int, bool, int]:
        """(guest-physical address, size, is_write, value written) of an MMIO exit."""

    def complete_mmio_read(self, exit_: VmExit, value: int) -> None:
        """Give an MMIO load its value and complete the instruction."""

    def complete_mmio_write(self, exit_: VmExit) -> None:
        """Complete an MMIO store."""

    def complete_rdmsr(self, exit_: VmExit, value: int | None) -> None:
        """Give RDMSR its value (None: inject #GP(0), as for an unknown MSR)."""

    def complete_wrmsr(self, exit_: VmExit, ok: bool) -> None:
        """Complete WRMSR (ok False: inject #GP(0))."""

    def skip_instruction(self, exit_: VmExit) -> None:
        """Advance the guest past the exiting instruction (CPUID, HLT, VMCALL, ...)."""

    # ---- guest state
    def get_regs(self) -> dict[str, int]:
        """eax..edi, eip, eflags (and the segment selectors, cr0, cr3, cr4, cpl)."""

    def set_regs(self, **values: int) -> None:
        """Set general-purpose registers by name (eax=..., ebx=...)."""

    def read_guest_physical(self, addr: int, size: int) -> bytes:
        """Read guest-physical memory (for handlers that look at guest data structures)."""

    def inject_interrupt(self, vector: int) -> bool:
        """Deliver an external interrupt now if the guest can take it; False: ask for an interrupt window."""
