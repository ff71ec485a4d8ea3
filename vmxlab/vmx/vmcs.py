"""The VMCS and the VMX instructions' semantics, in one place (SDM Vol.3C chapter 25 "Virtual
Machine Control Structures" and chapter 31 "VMX Instruction Reference"; older editions 24 and 30).

Everything here is plain functions over plain state so that two callers share
it: the Python API (:mod:`vmxlab.vmx.api`, where Python is VMX root operation)
and, later, nested VMX, where a guest hypervisor's VMXON/VMPTRLD/VMREAD... exit
to the Python VMM, which runs the same functions on that guest's virtual VMX
state.  Each instruction returns a :class:`VmxResult` value: VMsucceed,
VMfailInvalid, VMfailValid(n) -- or the fault (#UD, #GP(0)) the instruction
raises before any of those (SDM Vol.3C 31.2, "Conventions").

The VMCS content lives in Python (a dict by field encoding); its 4-KiB region
in physical memory holds what software may see: the revision identifier
(dword 0) and the VMX-abort indicator (dword 1) (SDM Vol.3C 25.2, "Format of
the VMCS Region").  The dict plays the role of the processor's VMCS cache.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ..cpu.faults import Vector
from ..cpu.flags import AF, CF, OF, PF, SF, VM, ZF
from ..cpu.state import CR0_PE, CR4_VMXE
from .capabilities import DEFAULT_CAPABILITIES, FEATURE_CONTROL, VMX_PHYSICAL_ADDRESS_BITS, VmxCapabilities
from .fields import (
    ACCESS_HIGH,
    FieldType,
    FieldWidth,
    VmcsField,
    field_type,
    field_width,
    is_high_access,
    name_of,
    supported,
    width_mask,
)

#: the current-VMCS pointer when there is no current VMCS (SDM Vol.3C 25.1)
INVALID_VMCS_POINTER = 0xFFFFFFFFFFFFFFFF
PAGE_MASK = 0xFFF
REVISION_ID_MASK = 0x7FFFFFFF
SHADOW_VMCS_INDICATOR = 1 << 31  # bit 31 of dword 0 of a VMCS region (SDM Vol.3C 25.2)
VMX_ABORT_INDICATOR_OFFSET = 4


class VmInstructionError(enum.IntEnum):
    """VM-instruction error numbers, field 0x4400 (SDM Vol.3C 31.4, Table 31-1 "VM-Instruction
    Error Numbers")."""

    VMCALL_IN_VMX_ROOT_OPERATION = 1
    VMCLEAR_WITH_INVALID_PHYSICAL_ADDRESS = 2
    VMCLEAR_WITH_VMXON_POINTER = 3
    VMLAUNCH_WITH_NON_CLEAR_VMCS = 4
    VMRESUME_WITH_NON_LAUNCHED_VMCS = 5
    VMRESUME_AFTER_VMXOFF = 6
    VM_ENTRY_WITH_INVALID_CONTROL_FIELDS = 7
    VM_ENTRY_WITH_INVALID_HOST_STATE_FIELDS = 8
    VMPTRLD_WITH_INVALID_PHYSICAL_ADDRESS = 9
    VMPTRLD_WITH_VMXON_POINTER = 10
    VMPTRLD_WITH_INCORRECT_VMCS_REVISION_IDENTIFIER = 11
    VMREAD_VMWRITE_UNSUPPORTED_VMCS_COMPONENT = 12
    VMWRITE_TO_READ_ONLY_VMCS_COMPONENT = 13
    VMXON_IN_VMX_ROOT_OPERATION = 15
    VM_ENTRY_WITH_INVALID_EXECUTIVE_VMCS_POINTER = 16
    VM_ENTRY_WITH_NON_LAUNCHED_EXECUTIVE_VMCS = 17
    VM_ENTRY_WITH_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER = 18
    VMCALL_WITH_NON_CLEAR_VMCS = 19
    VMCALL_WITH_INVALID_VM_EXIT_CONTROL_FIELDS = 20
    VMCALL_WITH_INCORRECT_MSEG_REVISION_IDENTIFIER = 22
    VMXOFF_UNDER_DUAL_MONITOR_TREATMENT = 23
    VMCALL_WITH_INVALID_SMM_MONITOR_FEATURES = 24
    VM_ENTRY_WITH_INVALID_EXECUTIVE_VMCS_CONTROLS = 25
    VM_ENTRY_WITH_EVENTS_BLOCKED_BY_MOV_SS = 26
    INVALID_OPERAND_TO_INVEPT_INVVPID = 28


class VmxStatus(enum.Enum):
    """The four ways a VMX instruction can end (SDM Vol.3C 31.2)."""

    SUCCEED = "VMsucceed"
    FAIL_INVALID = "VMfailInvalid"
    FAIL_VALID = "VMfailValid"
    FAULT = "fault"


#: RFLAGS bits every VMX instruction outcome defines (SDM Vol.3C 31.2)
VMX_RESULT_FLAGS = CF | PF | AF | ZF | SF | OF


@dataclass(frozen=True)
class VmxResult:
    """The outcome of one VMX instruction.

    RFLAGS effects (SDM Vol.3C 31.2): VMsucceed clears CF PF AF ZF SF OF;
    VMfailInvalid sets CF and clears the rest; VMfailValid(n) sets ZF, clears
    the rest and writes n to the VM-instruction error field of the current
    VMCS.  A fault leaves RFLAGS alone.
    """

    status: VmxStatus
    error: VmInstructionError | None = None
    value: int | None = None  # VMREAD data, VMPTRST pointer
    fault_vector: int | None = None
    fault_error_code: int | None = None
    detail: str = ""

    def __bool__(self) -> bool:
        return self.status is VmxStatus.SUCCEED

    @property
    def ok(self) -> bool:
        return self.status is VmxStatus.SUCCEED

    def rflags(self, rflags: int) -> int:
        """RFLAGS after the instruction, given RFLAGS before it."""
        if self.status is VmxStatus.FAULT:
            return rflags
        rflags &= ~VMX_RESULT_FLAGS
        if self.status is VmxStatus.FAIL_INVALID:
            rflags |= CF
        elif self.status is VmxStatus.FAIL_VALID:
            rflags |= ZF
        return rflags

    def check(self) -> VmxResult:
        """Return self if the instruction succeeded, else raise :class:`VmxInstructionFailed`."""
        if not self.ok:
            raise VmxInstructionFailed(self)
        return self

    def __str__(self) -> str:
        if self.status is VmxStatus.FAIL_VALID and self.error is not None:
            s = f"VMfailValid({int(self.error)} {self.error.name})"
        elif self.status is VmxStatus.FAULT:
            name = Vector(self.fault_vector).name if self.fault_vector in Vector._value2member_map_ else "?"
            ec = "" if self.fault_error_code is None else f"({self.fault_error_code})"
            s = f"#{name}{ec}"
        else:
            s = self.status.value
        return f"{s}: {self.detail}" if self.detail else s


class VmxInstructionFailed(Exception):
    """Raised by :meth:`VmxResult.check` (and the API's VMREAD) when a VMX instruction did not succeed."""

    def __init__(self, result: VmxResult) -> None:
        super().__init__(str(result))
        self.result = result


def succeed(value: int | None = None) -> VmxResult:
    return VmxResult(VmxStatus.SUCCEED, value=value)


def fault(vector: int, error_code: int | None, detail: str) -> VmxResult:
    return VmxResult(VmxStatus.FAULT, fault_vector=vector, fault_error_code=error_code, detail=detail)


# ------------------------------------------------------------------------- the VMCS


class LaunchState(enum.Enum):
    """SDM Vol.3C 25.1: "clear" after VMCLEAR, "launched" after a successful VMLAUNCH."""

    CLEAR = "clear"
    LAUNCHED = "launched"


@dataclass
class Vmcs:
    """One VMCS: its region address, launch state and field values (full values by encoding)."""

    address: int
    launch_state: LaunchState = LaunchState.CLEAR
    values: dict[int, int] = field(default_factory=dict)
    #: fields written since the last VM entry whose checks all passed (see :meth:`checks_needed`)
    written: set[int] = field(default_factory=set)
    #: every VM-entry check passed on this VMCS's contents at the last entry
    verified: bool = False

    # -- processor-side access (VM entry/exit write exit-information fields too)

    def __getitem__(self, f: VmcsField) -> int:
        # VmcsField is an IntEnum: it hashes and compares as its encoding, no int() needed
        return self.values.get(f, 0)

    def __setitem__(self, f: VmcsField, value: int) -> None:
        # int(): a VMM may write IntFlag controls; stored as IntFlag, every later ``ctl & bit`` on the VM
        # entry/exit path would run enum's Python-level __and__ (docs/speed.md)
        value = int(value)
        self.values[f] = value & _WIDTH_MASKS.get(f) if f in _WIDTH_MASKS else value & width_mask(f)
        self.written.add(f)

    def checks_needed(self) -> bool:
        """Whether VM entry must run its checks (SDM Vol.3C 27.2-27.3) again.

        The checks are a function of the VMCS's fields (and the capability MSRs, which do not
        change).  After an entry whose checks passed, a VMM that only advances GUEST_RIP (what
        completing an exiting instruction does) cannot make any of them fail, so they are not
        repeated; any other VMWRITE re-runs all of them.  State a VM exit saves is the guest's
        own, checked state and does not count as a write (see :meth:`mark_exit_saved`)."""
        return not self.verified or bool(self.written - _RIP_ONLY)

    def mark_verified(self) -> None:
        self.verified = True
        self.written.clear()

    def mark_exit_saved(self) -> None:
        """The VM exit finished saving guest state and exit information: nothing written yet by the VMM."""
        self.written.clear()

    # -- VMREAD / VMWRITE semantics (SDM Vol.3C 31.4 VMREAD, VMWRITE)

    def read_component(self, encoding: int) -> int | None:
        """The value VMREAD returns for ``encoding``, or None for an unsupported component.
        A high-access encoding reads bits 63:32 of the 64-bit field (SDM Vol.3C 25.11.2)."""
        if not supported(encoding):
            return None
        value = self.values.get(encoding & ~ACCESS_HIGH, 0)
        return value >> 32 if is_high_access(encoding) else value

    def write_component(self, encoding: int, value: int) -> VmInstructionError | None:
        """VMWRITE ``value`` to ``encoding``: the error it fails with, or None.

        Truncation follows the field width: a 16-bit field keeps bits 15:0, a
        natural-width field bits 31:0 on this processor; a high-access write
        replaces bits 63:32 of the 64-bit field and keeps its low half.
        """
        if not supported(encoding):
            return VmInstructionError.VMREAD_VMWRITE_UNSUPPORTED_VMCS_COMPONENT
        if field_type(encoding) == FieldType.EXIT_INFORMATION:
            # IA32_VMX_MISC bit 29 = 0: VM-exit information fields are read-only
            return VmInstructionError.VMWRITE_TO_READ_ONLY_VMCS_COMPONENT
        base = encoding & ~ACCESS_HIGH
        value = int(value)  # a plain int even when the VMM passes IntFlag controls (see __setitem__)
        if is_high_access(encoding):
            old = self.values.get(base, 0)
            self.values[base] = (old & 0xFFFFFFFF) | (value & 0xFFFFFFFF) << 32
        else:
            self.values[base] = value & width_mask(encoding)
        self.written.add(base)
        return None

    def dump(self) -> dict[str, int]:
        """Every field that has a value, by name (for reports and the entry explainer)."""
        return {name_of(k): v for k, v in sorted(self.values.items())}


_WIDTH_MASKS: dict[int, int] = {int(f): width_mask(f) for f in VmcsField}
_RIP_ONLY = frozenset({int(VmcsField.GUEST_RIP)})


class PhysMem(Protocol):
    """What the VMX instructions need of physical memory (the machine's, or a guest's for nested)."""

    def read(self, addr: int, size: int) -> int: ...

    def write(self, addr: int, size: int, value: int) -> None: ...


@dataclass
class VmxState:
    """The VMX state of one logical processor (SDM Vol.3C 24.7 "Enabling and Entering VMX
    Operation", 25.1 "Overview" of the VMCS): in VMX operation or not, the VMXON pointer, the
    current-VMCS pointer, and the VMCSs the processor has seen (its VMCS cache)."""

    caps: VmxCapabilities = DEFAULT_CAPABILITIES
    in_vmx_operation: bool = False
    vmxon_pointer: int | None = None
    current_vmcs_pointer: int = INVALID_VMCS_POINTER
    vmcss: dict[int, Vmcs] = field(default_factory=dict)

    @property
    def current(self) -> Vmcs | None:
        if self.current_vmcs_pointer == INVALID_VMCS_POINTER:
            return None
        return self.vmcss.get(self.current_vmcs_pointer)

    def vmfail(self, error: VmInstructionError, detail: str = "") -> VmxResult:
        """VMfail(n): VMfailValid with the error written to the current VMCS if there is one, else
        VMfailInvalid (SDM Vol.3C 31.2)."""
        vmcs = self.current
        if vmcs is None:
            return VmxResult(VmxStatus.FAIL_INVALID, error=error, detail=detail)
        vmcs[VmcsField.VM_INSTRUCTION_ERROR] = int(error)
        return VmxResult(VmxStatus.FAIL_VALID, error=error, detail=detail)

    def vmfail_invalid(self, detail: str) -> VmxResult:
        return VmxResult(VmxStatus.FAIL_INVALID, detail=detail)


@dataclass(frozen=True)
class InstructionContext:
    """The processor state the VMX instructions' #UD/#GP checks look at (SDM Vol.3C 31.3)."""

    cr0: int
    cr4: int
    cpl: int = 0
    rflags: int = 0x2
    feature_control: int = int(FEATURE_CONTROL.LOCK | FEATURE_CONTROL.ENABLE_VMX_OUTSIDE_SMX)
    #: events blocked by MOV SS at the VMLAUNCH/VMRESUME (SDM Vol.3C 31.3 VMLAUNCH, error 26)
    blocked_by_mov_ss: bool = False


def _valid_region_address(addr: int) -> bool:
    """4-KiB aligned and within the VMX physical-address width (IA32_VMX_BASIC bit 48 = 1: 32 bits)."""
    return addr & PAGE_MASK == 0 and addr >> VMX_PHYSICAL_ADDRESS_BITS == 0


def _ud_unless_protected(ctx: InstructionContext, name: str) -> VmxResult | None:
    """The #UD conditions shared by the VMX instructions: CR0.PE = 0 or RFLAGS.VM = 1 (no IA-32e
    mode on this processor, so the "IA32_EFER.LMA = 1 and CS.L = 0" case cannot arise)."""
    if not ctx.cr0 & CR0_PE:
        return fault(Vector.UD, None, f"{name} in real-address mode")
    if ctx.rflags & VM:
        return fault(Vector.UD, None, f"{name} in virtual-8086 mode")
    return None


def _root_checks(state: VmxState, ctx: InstructionContext, name: str) -> VmxResult | None:
    """#UD outside VMX operation or in real/virtual-8086 mode, then #GP(0) at CPL > 0."""
    if not state.in_vmx_operation:
        return fault(Vector.UD, None, f"{name} outside VMX operation")
    bad = _ud_unless_protected(ctx, name)
    if bad is not None:
        return bad
    if ctx.cpl > 0:
        return fault(Vector.GP, 0, f"{name} at CPL {ctx.cpl}")
    return None


# ------------------------------------------------------------------------- the instructions


def vmxon(state: VmxState, ctx: InstructionContext, mem: PhysMem, addr: int) -> VmxResult:
    """VMXON (SDM Vol.3C 31.3 "VMXON—Enter VMX Operation")."""
    bad = _ud_unless_protected(ctx, "VMXON")
    if bad is not None:
        return bad
    if not ctx.cr4 & CR4_VMXE:
        return fault(Vector.UD, None, "VMXON with CR4.VMXE = 0")
    if state.in_vmx_operation:
        if ctx.cpl > 0:
            return fault(Vector.GP, 0, f"VMXON at CPL {ctx.cpl}")
        return state.vmfail(VmInstructionError.VMXON_IN_VMX_ROOT_OPERATION, "already in VMX operation")
    caps = state.caps
    if ctx.cpl > 0:
        return fault(Vector.GP, 0, f"VMXON at CPL {ctx.cpl}")
    cr0_bad = (caps.cr0_fixed0 & ~ctx.cr0) | (ctx.cr0 & ~caps.cr0_fixed1)
    cr4_bad = (caps.cr4_fixed0 & ~ctx.cr4) | (ctx.cr4 & ~caps.cr4_fixed1)
    if cr0_bad or cr4_bad:
        return fault(
            Vector.GP,
            0,
            f"VMXON with CR0/CR4 not supported in VMX operation (CR0 bits {cr0_bad:#x}, "
            f"CR4 bits {cr4_bad:#x}; see IA32_VMX_CR0/CR4_FIXED0/1)",
        )
    fc = ctx.feature_control
    if not fc & FEATURE_CONTROL.LOCK:
        return fault(Vector.GP, 0, "VMXON with IA32_FEATURE_CONTROL not locked (bit 0)")
    if not fc & FEATURE_CONTROL.ENABLE_VMX_OUTSIDE_SMX:
        return fault(Vector.GP, 0, "VMXON with VMX disabled outside SMX in IA32_FEATURE_CONTROL (bit 2)")
    if not _valid_region_address(addr):
        return state.vmfail_invalid(f"VMXON region {addr:#x} not 4-KiB aligned or above 4 GiB")
    rev = mem.read(addr, 4)
    if rev & REVISION_ID_MASK != caps.revision_id or rev & SHADOW_VMCS_INDICATOR:
        return state.vmfail_invalid(
            f"VMXON region revision {rev:#x} != VMCS revision identifier "
            f"{caps.revision_id:#x} (IA32_VMX_BASIC bits 30:0)"
        )
    state.in_vmx_operation = True
    state.vmxon_pointer = addr
    state.current_vmcs_pointer = INVALID_VMCS_POINTER
    return succeed()


def vmxoff(state: VmxState, ctx: InstructionContext) -> VmxResult:
    """VMXOFF (SDM Vol.3C 31.3 "VMXOFF—Leave VMX Operation")."""
    bad = _root_checks(state, ctx, "VMXOFF")
    if bad is not None:
        return bad
    state.in_vmx_operation = False
    state.vmxon_pointer = None
    state.current_vmcs_pointer = INVALID_VMCS_POINTER
    return succeed()


def vmclear(state: VmxState, ctx: InstructionContext, mem: PhysMem, addr: int) -> VmxResult:
    """VMCLEAR (SDM Vol.3C 31.3 "VMCLEAR—Clear Virtual-Machine Control Structure"): launch state
    "clear"; if it was the current VMCS, there is no current VMCS afterwards."""
    bad = _root_checks(state, ctx, "VMCLEAR")
    if bad is not None:
        return bad
    if not _valid_region_address(addr):
        return state.vmfail(
            VmInstructionError.VMCLEAR_WITH_INVALID_PHYSICAL_ADDRESS,
            f"{addr:#x} not 4-KiB aligned or above 4 GiB",
        )
    if addr == state.vmxon_pointer:
        return state.vmfail(VmInstructionError.VMCLEAR_WITH_VMXON_POINTER, f"{addr:#x} is the VMXON region")
    vmcs = state.vmcss.setdefault(addr, Vmcs(addr))
    vmcs.launch_state = LaunchState.CLEAR
    if addr == state.current_vmcs_pointer:
        state.current_vmcs_pointer = INVALID_VMCS_POINTER
    return succeed()


def vmptrld(state: VmxState, ctx: InstructionContext, mem: PhysMem, addr: int) -> VmxResult:
    """VMPTRLD (SDM Vol.3C 31.3 "VMPTRLD—Load Pointer to Virtual-Machine Control Structure")."""
    bad = _root_checks(state, ctx, "VMPTRLD")
    if bad is not None:
        return bad
    if not _valid_region_address(addr):
        return state.vmfail(
            VmInstructionError.VMPTRLD_WITH_INVALID_PHYSICAL_ADDRESS,
            f"{addr:#x} not 4-KiB aligned or above 4 GiB",
        )
    if addr == state.vmxon_pointer:
        return state.vmfail(VmInstructionError.VMPTRLD_WITH_VMXON_POINTER, f"{addr:#x} is the VMXON region")
    rev = mem.read(addr, 4)
    # bit 31 = 1 marks a shadow VMCS, allowed only with "VMCS shadowing", which this model lacks
    if rev & REVISION_ID_MASK != state.caps.revision_id or rev & SHADOW_VMCS_INDICATOR:
        return state.vmfail(
            VmInstructionError.VMPTRLD_WITH_INCORRECT_VMCS_REVISION_IDENTIFIER,
            f"region {addr:#x} has revision {rev:#x}, expected {state.caps.revision_id:#x}",
        )
    state.vmcss.setdefault(addr, Vmcs(addr))
    state.current_vmcs_pointer = addr
    return succeed()


def vmptrst(state: VmxState, ctx: InstructionContext) -> VmxResult:
    """VMPTRST (SDM Vol.3C 31.3): the current-VMCS pointer (all ones if none) in ``value``."""
    bad = _root_checks(state, ctx, "VMPTRST")
    if bad is not None:
        return bad
    return succeed(state.current_vmcs_pointer)


def vmread(state: VmxState, ctx: InstructionContext, encoding: int, operand_bits: int = 64) -> VmxResult:
    """VMREAD (SDM Vol.3C 31.3 "VMREAD—Read Field from Virtual-Machine Control Structure").

    ``operand_bits`` is the destination size (32 for a guest outside 64-bit
    mode, where the value is truncated; the Python API reads whole fields)."""
    bad = _root_checks(state, ctx, "VMREAD")
    if bad is not None:
        return bad
    vmcs = state.current
    if vmcs is None:
        return state.vmfail_invalid("VMREAD without a current VMCS")
    value = vmcs.read_component(encoding)
    if value is None:
        return state.vmfail(
            VmInstructionError.VMREAD_VMWRITE_UNSUPPORTED_VMCS_COMPONENT,
            f"no VMCS component with encoding {encoding:#x}",
        )
    return succeed(value & ((1 << operand_bits) - 1))


def vmwrite(state: VmxState, ctx: InstructionContext, encoding: int, value: int) -> VmxResult:
    """VMWRITE (SDM Vol.3C 31.3 "VMWRITE—Write Field to Virtual-Machine Control Structure")."""
    bad = _root_checks(state, ctx, "VMWRITE")
    if bad is not None:
        return bad
    vmcs = state.current
    if vmcs is None:
        return state.vmfail_invalid("VMWRITE without a current VMCS")
    error = vmcs.write_component(encoding, value)
    if error is not None:
        what = (
            "unsupported"
            if error == VmInstructionError.VMREAD_VMWRITE_UNSUPPORTED_VMCS_COMPONENT
            else "read-only"
        )
        return state.vmfail(error, f"{name_of(encoding)} ({encoding:#x}) is {what}")
    return succeed()


def vmlaunch_vmresume_checks(state: VmxState, ctx: InstructionContext, launch: bool) -> VmxResult | None:
    """The checks VMLAUNCH/VMRESUME make before the VM-entry checks (SDM Vol.3C 31.3 "VMLAUNCH/
    VMRESUME—Launch/Resume Virtual Machine", and 27.1 "Basic VM-Entry Checks").  None = go on."""
    name = "VMLAUNCH" if launch else "VMRESUME"
    bad = _root_checks(state, ctx, name)
    if bad is not None:
        return bad
    vmcs = state.current
    if vmcs is None:
        return state.vmfail_invalid(f"{name} without a current VMCS")
    if ctx.blocked_by_mov_ss:
        return state.vmfail(
            VmInstructionError.VM_ENTRY_WITH_EVENTS_BLOCKED_BY_MOV_SS, "events blocked by MOV SS"
        )
    if launch and vmcs.launch_state is not LaunchState.CLEAR:
        return state.vmfail(
            VmInstructionError.VMLAUNCH_WITH_NON_CLEAR_VMCS,
            "the VMCS is launched: use VMRESUME, or VMCLEAR it first",
        )
    if not launch and vmcs.launch_state is not LaunchState.LAUNCHED:
        return state.vmfail(
            VmInstructionError.VMRESUME_WITH_NON_LAUNCHED_VMCS, "the VMCS is clear: use VMLAUNCH first"
        )
    return None


class InveptType(enum.IntEnum):
    """INVEPT types (SDM Vol.3C 31.3 "INVEPT—Invalidate Translations Derived from EPT")."""

    SINGLE_CONTEXT = 1
    ALL_CONTEXT = 2


class InvvpidType(enum.IntEnum):
    """INVVPID types (SDM Vol.3C 31.3 "INVVPID—Invalidate Translations Based on VPID")."""

    INDIVIDUAL_ADDRESS = 0
    SINGLE_CONTEXT = 1
    ALL_CONTEXT = 2
    SINGLE_CONTEXT_RETAINING_GLOBALS = 3


def invept(state: VmxState, ctx: InstructionContext, inv_type: int, eptp: int) -> VmxResult:
    """INVEPT: checks only; the caller invalidates (this model caches no EPT translations beyond the
    CPU's TLB, so every type flushes everything, which the SDM allows)."""
    from .capabilities import EPT_VPID_CAP
    from .ept import eptp_problem

    bad = _root_checks(state, ctx, "INVEPT")
    if bad is not None:
        return bad
    supported_types = {
        InveptType.SINGLE_CONTEXT: EPT_VPID_CAP.INVEPT_SINGLE_CONTEXT,
        InveptType.ALL_CONTEXT: EPT_VPID_CAP.INVEPT_ALL_CONTEXT,
    }
    cap = supported_types.get(inv_type)  # type: ignore[call-overload]
    if cap is None or not state.caps.supports_ept(cap):
        return state.vmfail(VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID, f"INVEPT type {inv_type}")
    if inv_type == InveptType.SINGLE_CONTEXT:
        problem = eptp_problem(eptp, state.caps)
        if problem is not None:
            return state.vmfail(VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID, problem)
    return succeed()


def invvpid(state: VmxState, ctx: InstructionContext, inv_type: int, vpid: int, linear: int = 0) -> VmxResult:
    """INVVPID: checks only (VPIDs are accepted and not used as TLB tags: every VM entry and exit
    flushes the TLB, so there is nothing tagged to invalidate)."""
    from .capabilities import EPT_VPID_CAP

    bad = _root_checks(state, ctx, "INVVPID")
    if bad is not None:
        return bad
    supported_types = {
        InvvpidType.INDIVIDUAL_ADDRESS: EPT_VPID_CAP.INVVPID_INDIVIDUAL_ADDRESS,
        InvvpidType.SINGLE_CONTEXT: EPT_VPID_CAP.INVVPID_SINGLE_CONTEXT,
        InvvpidType.ALL_CONTEXT: EPT_VPID_CAP.INVVPID_ALL_CONTEXT,
        InvvpidType.SINGLE_CONTEXT_RETAINING_GLOBALS: EPT_VPID_CAP.INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS,
    }
    cap = supported_types.get(inv_type)  # type: ignore[call-overload]
    if cap is None or not state.caps.supports_ept(cap):
        return state.vmfail(VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID, f"INVVPID type {inv_type}")
    if vpid >> 16:
        return state.vmfail(
            VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID, "INVVPID descriptor bits 63:16"
        )
    if inv_type != InvvpidType.ALL_CONTEXT and vpid == 0:
        return state.vmfail(VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID, "INVVPID with VPID 0")
    if inv_type == InvvpidType.INDIVIDUAL_ADDRESS and linear >> 32:
        return state.vmfail(
            VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID, "non-canonical linear address"
        )
    return succeed()


def vmcall_in_root(state: VmxState, ctx: InstructionContext) -> VmxResult:
    """VMCALL in VMX root operation without the dual-monitor treatment: VMfail(1) (SDM Vol.3C 31.3
    "VMCALL—Call to VM Monitor")."""
    if not state.in_vmx_operation:
        return fault(Vector.UD, None, "VMCALL outside VMX operation")
    if ctx.cpl > 0:
        return fault(Vector.GP, 0, f"VMCALL at CPL {ctx.cpl}")
    return state.vmfail(VmInstructionError.VMCALL_IN_VMX_ROOT_OPERATION, "VMCALL in VMX root operation")


def write_abort_indicator(mem: PhysMem, vmcs: Vmcs, indicator: int) -> None:
    """VMX abort: the processor writes a nonzero indicator to dword 1 of the VMCS region and shuts
    down (SDM Vol.3C 28.7, "VMX Aborts")."""
    mem.write(vmcs.address + VMX_ABORT_INDICATOR_OFFSET, 4, indicator)


__all__ = [
    "VmcsField",
    "FieldWidth",
    "FieldType",
    "field_width",
    "Vmcs",
    "VmxState",
    "VmxResult",
    "VmxStatus",
    "VmInstructionError",
    "LaunchState",
    "InstructionContext",
    "VmxInstructionFailed",
    "vmxon",
    "vmxoff",
    "vmclear",
    "vmptrld",
    "vmptrst",
    "vmread",
    "vmwrite",
    "vmlaunch_vmresume_checks",
    "invept",
    "invvpid",
]
