"""A hypervisor's view of VMX, in Python: VMXON, build a VMCS field by field, VMLAUNCH/VMRESUME.

Python is VMX root operation.  ``VmxCpu`` wraps the software CPU (which runs
only guests) and gives the VMM the VMX instructions with SDM semantics
(:mod:`vmxlab.vmx.vmcs`) plus the one thing hardware does implicitly: running
the guest until the next VM exit.  A VMM written against it reads like one
written against the SDM::

    vcpu = VmxCpu(cpu)
    vcpu.vmxon(vmxon_region).check()
    vcpu.vmclear(vmcs_region).check()
    vcpu.vmptrld(vmcs_region).check()
    vcpu.vmwrite(VmcsField.GUEST_RIP, 0x100000)
    ...
    result = vcpu.vmlaunch()
    while isinstance(result, VmExit):
        if result.reason == ExitReason.CPUID: ...
        vcpu.skip_instruction(result)
        result = vcpu.vmresume()

``vmlaunch``/``vmresume`` return one of three values:

* :class:`VmExit` -- the guest ran and exited; every exit-information field decoded;
* :class:`EntryFailure` -- VMfailInvalid, VMfailValid(n) (4, 5, 7, 8: the VM stays
  in root operation) or a VM-entry failure exit (33, 34), with the failed check
  explained (:class:`~vmxlab.vmx.entry_checks.CheckFailure`);
* :class:`GuestStopped` -- the simulation stopped without a VM exit (instruction
  budget, timeout, a device stop such as the debug-exit port, HLT that nothing
  can wake).  The guest is still in VMX non-root operation: call
  :meth:`VmxCpu.continue_guest` to go on.

The guest's general-purpose registers other than ESP live in ``cpu.regs``
across exits, as on hardware (the VMCS does not hold them): ``vcpu.regs``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from ..cpu.engine import Engine
from ..cpu.state import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_VMXE
from ..machine.machine import StopRequest
from .capabilities import DEFAULT_CAPABILITIES, FEATURE_CONTROL, Msr, VmxCapabilities
from .controls import SECONDARY_PROC_BASED_CTLS
from .entry_checks import (
    CheckContext,
    CheckFailure,
    all_failures,
    check_controls,
    check_guest_state,
    check_host_state,
)
from .ept import EptTranslator
from .exit_reasons import BASIC_REASON_MASK, VM_ENTRY_FAILURE, ExitReason, describe
from .fields import VmcsField
from .nonroot import Injection, NonRootOperation
from .qualifications import EntryFailureQualification, InterruptionInfo, decode_qualification
from .transitions import load_guest_state, load_host_state, load_msr_list
from .vmcs import (
    InstructionContext,
    Vmcs,
    VmInstructionError,
    VmxInstructionFailed,
    VmxResult,
    VmxState,
    VmxStatus,
    invept,
    invvpid,
    vmclear,
    vmlaunch_vmresume_checks,
    vmptrld,
    vmptrst,
    vmread,
    vmwrite,
    vmxoff,
    vmxon,
)

if TYPE_CHECKING:
    from ..cpu.core import CPU

F = VmcsField


@dataclass
class RootState:
    """The processor state of VMX root operation, i.e. of the notional CPU that runs the Python VMM.

    VMXON checks it (SDM Vol.3C 31.3): CR0/CR4 supported in VMX operation,
    CR4.VMXE = 1, CPL 0, IA32_FEATURE_CONTROL locked with VMX enabled outside
    SMX.  The defaults are what a BIOS and a 32-bit paging kernel leave; change
    them to see VMXON fault (#UD without CR4.VMXE, #GP(0) when unlocked ...).
    """

    cr0: int = CR0_PE | CR0_NE | CR0_ET | CR0_PG
    cr4: int = CR4_VMXE
    cpl: int = 0
    rflags: int = 0x2
    feature_control: int = int(FEATURE_CONTROL.LOCK | FEATURE_CONTROL.ENABLE_VMX_OUTSIDE_SMX)

    def context(self) -> InstructionContext:
        return InstructionContext(self.cr0, self.cr4, self.cpl, self.rflags, self.feature_control)


@dataclass(frozen=True)
class VmExit:
    """A VM exit, as a VMM reads it from the VMCS (SDM Vol.3C 28.2 "Recording VM-Exit Information")."""

    reason: ExitReason | int
    raw_reason: int
    qualification: int
    decoded: object | None  # the typed qualification (ControlRegisterAccess, IoQualification, ...)
    guest_rip: int
    guest_rsp: int
    instruction_length: int
    instruction_information: int
    guest_linear_address: int
    guest_physical_address: int
    interruption: InterruptionInfo | None
    interruption_error_code: int | None
    idt_vectoring: InterruptionInfo | None
    idt_vectoring_error_code: int | None

    @classmethod
    def from_vmcs(cls, v: Vmcs) -> VmExit:
        raw = v[F.EXIT_REASON]
        basic = raw & BASIC_REASON_MASK
        try:
            reason: ExitReason | int = ExitReason(basic)
        except ValueError:
            reason = basic
        q = v[F.EXIT_QUALIFICATION]
        ii = InterruptionInfo.decode(v[F.VM_EXIT_INTERRUPTION_INFORMATION])
        iv = InterruptionInfo.decode(v[F.IDT_VECTORING_INFORMATION])
        return cls(
            reason,
            raw,
            q,
            decode_qualification(basic, q),
            v[F.GUEST_RIP],
            v[F.GUEST_RSP],
            v[F.VM_EXIT_INSTRUCTION_LENGTH],
            v[F.VM_EXIT_INSTRUCTION_INFORMATION],
            v[F.GUEST_LINEAR_ADDRESS],
            v[F.GUEST_PHYSICAL_ADDRESS],
            ii if ii.valid else None,
            v[F.VM_EXIT_INTERRUPTION_ERROR_CODE] if ii.valid and ii.error_code_valid else None,
            iv if iv.valid else None,
            v[F.IDT_VECTORING_ERROR_CODE] if iv.valid and iv.error_code_valid else None,
        )

    @property
    def name(self) -> str:
        return self.reason.name if isinstance(self.reason, ExitReason) else f"reason {self.reason}"

    def __str__(self) -> str:
        parts = [f"VM exit {describe(self.raw_reason)} at RIP {self.guest_rip:#x}"]
        if self.decoded is not None:
            parts.append(str(self.decoded))
        elif self.qualification:
            parts.append(f"qualification {self.qualification:#x}")
        if self.interruption is not None:
            parts.append(f"interruption {self.interruption}")
        if self.idt_vectoring is not None:
            parts.append(f"during delivery of {self.idt_vectoring}")
        return ", ".join(parts)


@dataclass(frozen=True)
class EntryFailure:
    """VMLAUNCH/VMRESUME did not enter the guest.

    ``result`` is the VMfail outcome (VMfailInvalid, or VMfailValid with
    ``error`` 4, 5, 7, 8, 26) -- the VMM is still in root operation with RFLAGS
    per the result -- or None for a VM-entry failure *exit* (``reason`` 33 or
    34, bit 31 set in the exit-reason field, host state loaded).  ``check``
    names the failed VM-entry check when there is one.
    """

    result: VmxResult | None
    error: VmInstructionError | None = None
    reason: ExitReason | None = None
    qualification: int = 0
    check: CheckFailure | None = None

    @property
    def is_exit(self) -> bool:
        return self.reason is not None

    def __str__(self) -> str:
        if self.check is not None:
            return str(self.check)
        if self.result is not None:
            return str(self.result)
        reason = describe(int(self.reason or 0) | VM_ENTRY_FAILURE)
        return f"VM-entry failure {reason}, qualification {self.qualification}"


@dataclass(frozen=True)
class GuestStopped:
    """The run stopped without a VM exit; the guest is still in VMX non-root operation."""

    stop: StopRequest

    def __str__(self) -> str:
        return f"guest stopped without a VM exit: {self.stop.reason.value} {self.stop.detail}".rstrip()


# typing.Union, not X | Y: this line runs at import, and Python 3.9 (PyPy 7.3.11) has no | on classes
RunResult = Union[VmExit, EntryFailure, GuestStopped]  # noqa: UP007


class VmxCpu:
    """The VMX instructions and VM entry for one software CPU, executed by Python as VMX root."""

    def __init__(
        self, cpu: CPU, engine: Engine | str | None = None, caps: VmxCapabilities = DEFAULT_CAPABILITIES
    ) -> None:
        self.cpu = cpu
        if engine is None or isinstance(engine, str):
            engine = Engine(cpu, fast=(engine or "fast") == "fast")
        self.engine = engine
        self.state = VmxState(caps)
        self.root = RootState()
        #: the hooks of the current stay in non-root operation (set from VM entry to VM exit)
        self.nonroot: NonRootOperation | None = None
        self.last_exit: VmExit | None = None

    # ------------------------------------------------------------------ state

    @property
    def caps(self) -> VmxCapabilities:
        return self.state.caps

    @property
    def memory(self):
        return self.cpu.memory

    @property
    def vmcs(self) -> Vmcs | None:
        """The current VMCS (None if there is none)."""
        return self.state.current

    @property
    def regs(self) -> list[int]:
        """The guest's general-purpose registers (EAX ECX EDX EBX ESP EBP ESI EDI; ESP is GUEST_RSP)."""
        return self.cpu.regs

    @property
    def in_guest(self) -> bool:
        """True while the guest is in non-root operation after a :class:`GuestStopped`."""
        return self.nonroot is not None

    def capability_msr(self, index: Msr | int) -> int | None:
        """RDMSR of a VMX capability MSR (what a VMM reads before it writes any control)."""
        return self.caps.read_msr(index)

    # ------------------------------------------------------------------ the VMX instructions

    def vmxon(self, region: int) -> VmxResult:
        return vmxon(self.state, self.root.context(), self.memory, region)

    def vmxoff(self) -> VmxResult:
        return vmxoff(self.state, self.root.context())

    def vmclear(self, address: int) -> VmxResult:
        return vmclear(self.state, self.root.context(), self.memory, address)

    def vmptrld(self, address: int) -> VmxResult:
        return vmptrld(self.state, self.root.context(), self.memory, address)

    def vmptrst(self) -> int:
        result = vmptrst(self.state, self.root.context())
        if not result.ok or result.value is None:
            raise VmxInstructionFailed(result)
        return result.value

    def vmread(self, encoding: VmcsField | int) -> int:
        """VMREAD.  Because VMREAD fails by returning an error instead of the data, a failure raises
        :class:`VmxInstructionFailed` (the VM-instruction error field holds the reason)."""
        result = vmread(self.state, self.root.context(), int(encoding))
        if not result.ok or result.value is None:
            raise VmxInstructionFailed(result)
        return result.value

    def vmwrite(self, encoding: VmcsField | int, value: int) -> VmxResult:
        return vmwrite(self.state, self.root.context(), int(encoding), value)

    def write(self, values: dict[VmcsField, int]) -> None:
        """VMWRITE several fields; any failure raises (a bug in the VMM, not a guest event)."""
        for f, value in values.items():
            self.vmwrite(f, value).check()

    def invept(self, inv_type: int, eptp: int = 0) -> VmxResult:
        """INVEPT: invalidate EPT-derived translations (the CPU's TLB; the EPT walk cache)."""
        result = invept(self.state, self.root.context(), inv_type, eptp)
        if result.ok:
            self.cpu.tlb_flush(all_entries=True)
            if self.nonroot is not None and self.nonroot.ept is not None:
                self.nonroot.ept.invalidate()
        return result

    def invvpid(self, inv_type: int, vpid: int, linear: int = 0) -> VmxResult:
        result = invvpid(self.state, self.root.context(), inv_type, vpid, linear)
        if result.ok:
            self.cpu.tlb_flush(all_entries=True)
        return result

    # ------------------------------------------------------------------ VM entry

    def vmlaunch(self, max_instructions: int | None = None, timeout: float | None = None) -> RunResult:
        return self._enter(True, max_instructions, timeout)

    def vmresume(self, max_instructions: int | None = None, timeout: float | None = None) -> RunResult:
        return self._enter(False, max_instructions, timeout)

    def continue_guest(self, max_instructions: int | None = None, timeout: float | None = None) -> RunResult:
        """Go on running a guest that stopped without a VM exit (:class:`GuestStopped`)."""
        if self.nonroot is None:
            raise RuntimeError("no guest is in VMX non-root operation: use vmlaunch/vmresume")
        return self._run(max_instructions, timeout)

    def check_context(self) -> CheckContext:
        vmcs = self.vmcs
        if vmcs is None:
            raise RuntimeError("no current VMCS")
        return CheckContext(
            vmcs, self.caps, self.memory, self.state.vmxon_pointer, self.state.current_vmcs_pointer
        )

    def explain_entry(self) -> list[CheckFailure]:
        """Every VM-entry check the current VMCS fails (VM entry itself reports only the first)."""
        return all_failures(self.check_context())

    def _trace(self, kind: str, **fields: object) -> None:
        """Report to the trace stream (trace/events.py kinds vm-entry, vm-exit, vm-entry-failure)."""
        tracer = self.cpu.trace
        if tracer is not None:
            tracer.emit(kind, **fields)

    def _enter(self, launch: bool, max_instructions: int | None, timeout: float | None) -> RunResult:
        result = self._enter_checked(launch, max_instructions, timeout)
        if isinstance(result, EntryFailure):
            check = result.check
            self._trace(
                "vm-entry-failure",
                vmx="root",
                error=int(result.error) if result.error else None,
                reason=int(result.reason) if result.reason else None,
                qualification=result.qualification,
                check=check.check if check else None,
                field=check.field if check else None,
                value=check.value if check else None,
                sdm=check.sdm_section if check else None,
                message=str(result),
            )
        return result

    def _enter_checked(self, launch: bool, max_instructions: int | None, timeout: float | None) -> RunResult:
        if self.nonroot is not None:
            raise RuntimeError("the guest is still in VMX non-root operation: use continue_guest()")
        state = self.state
        basic = vmlaunch_vmresume_checks(state, self.root.context(), launch)
        if basic is not None:
            return EntryFailure(basic, basic.error)
        ctx = self.check_context()
        vmcs = ctx.vmcs
        if vmcs.checks_needed():  # see Vmcs.checks_needed: unchanged fields cannot fail again
            # SDM Vol.3C 27.2: controls, then host state -> VMfailValid(7 / 8); nothing is loaded
            for check, error in (
                (check_controls, VmInstructionError.VM_ENTRY_WITH_INVALID_CONTROL_FIELDS),
                (check_host_state, VmInstructionError.VM_ENTRY_WITH_INVALID_HOST_STATE_FIELDS),
            ):
                failure = check(ctx)
                if failure is not None:
                    return EntryFailure(state.vmfail(error, failure.message), error, check=failure)
            # SDM Vol.3C 27.3: guest state -> VM-entry failure exit 33
            failure = check_guest_state(ctx)
            if failure is not None:
                return self._entry_failure_exit(
                    vmcs, ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE, failure.qualification, failure
                )
            vmcs.mark_verified()
        cpu = self.cpu
        injection_info = ctx.injection
        load_guest_state(cpu, vmcs, ctx.secondary, injection_info is not None)
        # SDM Vol.3C 27.4: the VM-entry MSR-load area -> exit 34, qualification = failing entry
        n = load_msr_list(
            cpu, self.memory, vmcs[F.VM_ENTRY_MSR_LOAD_ADDRESS], vmcs[F.VM_ENTRY_MSR_LOAD_COUNT]
        )
        if n:
            return self._entry_failure_exit(vmcs, ExitReason.VM_ENTRY_FAILURE_MSR_LOADING, n, None)
        if launch:
            from .vmcs import LaunchState

            vmcs.launch_state = LaunchState.LAUNCHED
        ept = None
        if ctx.secondary & SECONDARY_PROC_BASED_CTLS.ENABLE_EPT:
            ept = EptTranslator(self.memory, vmcs[F.EPT_POINTER], self.caps)
        injection = None
        if injection_info is not None:
            injection = Injection(
                injection_info, vmcs[F.VM_ENTRY_EXCEPTION_ERROR_CODE], vmcs[F.VM_ENTRY_INSTRUCTION_LENGTH]
            )
        hooks = NonRootOperation(cpu, vmcs, self.caps, self.engine, ept, injection)
        cpu.vmx = hooks
        cpu.ept = ept
        cpu.tlb_flush(all_entries=True)
        self.nonroot = hooks
        self._trace("vm-entry", vmx="non-root", launch=launch, guest_rip=cpu.eip)
        return self._run(max_instructions, timeout)

    def _entry_failure_exit(
        self, vmcs: Vmcs, reason: ExitReason, qualification: int, check: CheckFailure | None
    ) -> EntryFailure:
        """A VM-entry failure during or after loading guest state (SDM Vol.3C 27.8): exit reason with
        bit 31 set and the qualification; no guest state is saved; host state and the VM-exit
        MSR-load area are loaded as on a VM exit."""
        vmcs[F.EXIT_REASON] = int(reason) | VM_ENTRY_FAILURE
        vmcs[F.EXIT_QUALIFICATION] = qualification
        load_host_state(self.cpu, vmcs)
        load_msr_list(self.cpu, self.memory, vmcs[F.VM_EXIT_MSR_LOAD_ADDRESS], vmcs[F.VM_EXIT_MSR_LOAD_COUNT])
        return EntryFailure(None, None, reason, qualification, check)

    def _run(self, max_instructions: int | None, timeout: float | None) -> RunResult:
        hooks = self.nonroot
        assert hooks is not None
        stop = self.engine.run(max_instructions, timeout)
        if hooks.exit_signal is None:
            return GuestStopped(stop)
        self.nonroot = None
        hooks.vmcs.mark_exit_saved()
        exit_ = VmExit.from_vmcs(hooks.vmcs)
        self.last_exit = exit_
        if self.cpu.trace is not None:
            decoded = dataclasses.asdict(exit_.decoded) if dataclasses.is_dataclass(exit_.decoded) else None
            self._trace(
                "vm-exit",
                vmx="non-root",
                reason=exit_.raw_reason & BASIC_REASON_MASK,
                reason_name=exit_.name,
                qualification=exit_.qualification,
                fields=decoded,
                guest={
                    "rip": exit_.guest_rip,
                    "instruction_length": exit_.instruction_length,
                    "cpl": (hooks.vmcs[F.GUEST_SS_ACCESS_RIGHTS] >> 5) & 3,
                },
                text=str(exit_),
            )
        return exit_

    # ------------------------------------------------------------------ helpers for exit handlers

    def skip_instruction(self, exit_: VmExit | None = None) -> None:
        """GUEST_RIP += VM-exit instruction length: "emulate" the exiting instruction as done."""
        exit_ = exit_ or self.last_exit
        if exit_ is None:
            raise RuntimeError("no VM exit to skip")
        mask = 0xFFFFFFFF if self.vmread(F.GUEST_CS_ACCESS_RIGHTS) & (1 << 14) else 0xFFFF
        self.vmwrite(F.GUEST_RIP, (self.vmread(F.GUEST_RIP) + exit_.instruction_length) & mask).check()

    def inject(self, info: InterruptionInfo, error_code: int = 0, instruction_length: int = 0) -> None:
        """Write the VM-entry event-injection fields (delivered by the next VM entry)."""
        self.write(
            {
                F.VM_ENTRY_INTERRUPTION_INFORMATION: info.encode(),
                F.VM_ENTRY_EXCEPTION_ERROR_CODE: error_code,
                F.VM_ENTRY_INSTRUCTION_LENGTH: instruction_length,
            }
        )


__all__ = [
    "VmxCpu",
    "VmExit",
    "EntryFailure",
    "GuestStopped",
    "RootState",
    "RunResult",
    "VmxResult",
    "VmxStatus",
    "VmxInstructionFailed",
    "EntryFailureQualification",
]
