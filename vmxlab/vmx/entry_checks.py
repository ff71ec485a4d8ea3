"""The checks VM entry makes, one small function each (SDM Vol.3C chapter 27, "VM Entries"; older
editions chapter 26).

Three groups, run in the SDM's order, the first failure wins:

1. VMX controls (27.2.1) -> VMfailValid(7) "VM entry with invalid control field(s)";
2. host-state area (27.2.2-27.2.4) -> VMfailValid(8) "... invalid host-state field(s)";
3. guest-state area (27.3.1) -> a VM exit with basic reason 33 and bit 31 set
   ("VM-entry failure due to invalid guest state"), qualification per 27.8.

(MSR loading, 27.4, fails with reason 34 and runs after the guest state is
loaded: see :mod:`vmxlab.vmx.transitions`.)

Every check returns ``None`` or a :class:`CheckFailure` that names the rule,
the field and its value, the SDM section, what is wrong and how to fix it, so
that a failed VM entry can be *explained* (the explainer CLI builds on
:func:`all_failures`).  Checks cover every field and feature this model
implements; checks of features the capability MSRs forbid (TPR shadow, PML,
VMCS shadowing, ...) are unnecessary because their controls cannot be 1.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..cpu.flags import IF, RESERVED1, TF, VM
from ..cpu.paging import PDPTE_RESERVED
from ..cpu.state import (
    AR_CODE,
    AR_DPL_SHIFT,
    AR_G,
    AR_P,
    AR_S,
    AR_TYPE,
    AR_UNUSABLE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
)
from .capabilities import (
    MISC_ACTIVITY_HLT,
    MISC_ZERO_LENGTH_SOFTWARE_INJECTION,
    VMX_PHYSICAL_ADDRESS_BITS,
    AllowedSettings,
    VmxCapabilities,
)
from .controls import (
    PIN_BASED_CTLS,
    PRIMARY_PROC_BASED_CTLS,
    SECONDARY_PROC_BASED_CTLS,
    VM_ENTRY_CTLS,
    VM_EXIT_CTLS,
    bit_names,
)
from .ept import eptp_problem
from .exit_reasons import ExitReason
from .fields import (
    GUEST_ACCESS_RIGHTS,
    GUEST_LIMIT,
    GUEST_PDPTE,
    GUEST_SELECTOR,
    HOST_SELECTOR,
    SEGMENT_NAMES,
    VmcsField,
)
from .guest_state import (
    INTERRUPTIBILITY_RESERVED,
    PENDING_DEBUG_BS,
    PENDING_DEBUG_RESERVED,
    VMCS_LINK_POINTER_NONE,
    ActivityState,
    Interruptibility,
)
from .qualifications import (
    INTERRUPTION_RESERVED,
    INTERRUPTION_TYPE_RESERVED,
    SOFTWARE_TYPES,
    EntryFailureQualification,
    InterruptionInfo,
    InterruptionType,
)
from .vmcs import PAGE_MASK, REVISION_ID_MASK, SHADOW_VMCS_INDICATOR, PhysMem, Vmcs, VmInstructionError

F = VmcsField

# SDM Vol.3C sections, with titles because numbering moves between editions
S_EXEC = "27.2.1.1 Checks on VM-Execution Control Fields"
S_EXIT = "27.2.1.2 Checks on VM-Exit Control Fields"
S_ENTRY = "27.2.1.3 Checks on VM-Entry Control Fields"
S_HOST_CR = "27.2.2 Checks on Host Control Registers, MSRs, and SSP"
S_HOST_SEG = "27.2.3 Checks on Host Segment and Descriptor-Table Registers"
S_ADDR_SIZE = "27.2.4 Checks Related to Address-Space Size"
S_GUEST_CR = "27.3.1.1 Checks on Guest Control Registers, Debug Registers, and MSRs"
S_GUEST_SEG = "27.3.1.2 Checks on Guest Segment Registers"
S_GUEST_DT = "27.3.1.3 Checks on Guest Descriptor-Table Registers"
S_GUEST_RIP = "27.3.1.4 Checks on Guest RIP, RFLAGS, and SSP"
S_GUEST_NONREG = "27.3.1.5 Checks on Guest Non-Register State"
S_PDPTE = "27.3.1.6 Checks on Guest Page-Directory-Pointer-Table Entries"

ES, CS, SS, DS, FS, GS, LDTR, TR = range(8)
AR_RESERVED = 0xFFFE0F00  # bits 31:17 and 11:8 of an access-rights field
RFLAGS_RESERVED = 0xFFC08028  # bits 31:22, 15, 5, 3 (bit 1 must be 1)
#: error-code-delivering exceptions for event injection: #DF #TS #NP #SS #GP #PF #AC (SDM Vol.3C 27.2.1.3)
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17})
MAX_INSTRUCTION_LENGTH = 15
MSR_ENTRY_SIZE = 16  # bytes per VM-exit/VM-entry MSR-area entry (SDM Vol.3C 25.7.2 Table 25-15)
#: IA32_DEBUGCTL bits this model accepts: LBR (0) and BTF (1); the rest is reserved here
DEBUGCTL_BTF = 1 << 1
DEBUGCTL_SUPPORTED = 0x3
#: CS types for VM entry: accessed code (9, 11, 13, 15); 3 (accessed read/write data) with unrestricted guest
CS_TYPES = frozenset({9, 11, 13, 15})
CS_TYPE_UNRESTRICTED_DATA = 3
SS_TYPES = frozenset({3, 7})
TSS_BUSY_TYPES = frozenset({3, 11})
LDT_TYPE = 2
CONFORMING_CODE_TYPES = frozenset({13, 15})


class CheckClass(enum.Enum):
    CONTROLS = "VMX controls"
    HOST_STATE = "host-state area"
    GUEST_STATE = "guest-state area"


@dataclass(frozen=True)
class CheckFailure:
    """A failed VM-entry check, explained.

    ``error_or_reason`` is the VM-instruction error (7 controls, 8 host state)
    or the basic exit reason (33 guest state, 34 MSR loading).
    """

    error_or_reason: int
    field: str
    value: int
    sdm_section: str
    message: str
    fix: str
    check: str = ""
    qualification: int = 0

    @property
    def is_vmfail(self) -> bool:
        return self.error_or_reason in (
            VmInstructionError.VM_ENTRY_WITH_INVALID_CONTROL_FIELDS,
            VmInstructionError.VM_ENTRY_WITH_INVALID_HOST_STATE_FIELDS,
        )

    @property
    def outcome(self) -> str:
        if self.is_vmfail:
            return f"VMfailValid({self.error_or_reason} {VmInstructionError(self.error_or_reason).name})"
        return f"VM-entry failure: exit reason {self.error_or_reason} {ExitReason(self.error_or_reason).name}"

    def __str__(self) -> str:
        return (
            f"{self.outcome}: {self.field} = {self.value:#x}: {self.message} "
            f"(SDM Vol.3C {self.sdm_section}); fix: {self.fix}"
        )


@dataclass
class CheckContext:
    """What the checks read: the VMCS, the capabilities, memory, and the VMX state's pointers."""

    vmcs: Vmcs
    caps: VmxCapabilities
    memory: PhysMem | None = None
    vmxon_pointer: int | None = None
    current_vmcs_pointer: int | None = None
    pin: int = field(init=False)
    primary: int = field(init=False)
    secondary: int = field(init=False)
    exit: int = field(init=False)
    entry: int = field(init=False)

    def __post_init__(self) -> None:
        v = self.vmcs
        self.pin = v[F.PIN_BASED_VM_EXECUTION_CONTROLS]
        self.primary = v[F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
        # without "activate secondary controls" the secondary controls act as 0 (SDM Vol.3C 25.6.2)
        self.secondary = (
            v[F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
            if self.primary & PRIMARY_PROC_BASED_CTLS.ACTIVATE_SECONDARY_CONTROLS
            else 0
        )
        self.exit = v[F.VM_EXIT_CONTROLS]
        self.entry = v[F.VM_ENTRY_CONTROLS]

    @property
    def unrestricted(self) -> bool:
        return bool(self.secondary & SECONDARY_PROC_BASED_CTLS.UNRESTRICTED_GUEST)

    @property
    def injection(self) -> InterruptionInfo | None:
        info = InterruptionInfo.decode(self.vmcs[F.VM_ENTRY_INTERRUPTION_INFORMATION])
        return info if info.valid else None


Check = Callable[[CheckContext], "CheckFailure | None"]

_CONTROL = int(VmInstructionError.VM_ENTRY_WITH_INVALID_CONTROL_FIELDS)
_HOST = int(VmInstructionError.VM_ENTRY_WITH_INVALID_HOST_STATE_FIELDS)
_GUEST = int(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE)


def _fail(
    kind: int, fld: VmcsField | str, value: int, section: str, message: str, fix: str, qualification: int = 0
) -> CheckFailure:
    name = fld.name if isinstance(fld, VmcsField) else fld
    return CheckFailure(kind, name, value, section, message, fix, qualification=qualification)


def _address_ok(addr: int) -> bool:
    """A 4-KiB-aligned physical address within the VMX address width (IA32_VMX_BASIC bit 48 = 1)."""
    return addr & PAGE_MASK == 0 and addr >> VMX_PHYSICAL_ADDRESS_BITS == 0


# ============================================================================ 27.2.1 controls


def _allowed(
    ctx: CheckContext, fld: VmcsField, value: int, settings: AllowedSettings, flags: type, msr: str
) -> CheckFailure | None:
    missing, forbidden = settings.violations(value)
    if missing:
        return _fail(
            _CONTROL,
            fld,
            value,
            S_EXEC
            if fld not in (F.VM_EXIT_CONTROLS, F.VM_ENTRY_CONTROLS)
            else S_EXIT
            if fld == F.VM_EXIT_CONTROLS
            else S_ENTRY,
            f"default-1 bits {', '.join(bit_names(flags, missing))} are 0 ({msr} allowed-0 settings)",
            f"OR the field with {settings.must_be_one:#x} (adjust every control field with the "
            "capability MSR before writing it)",
        )
    if forbidden:
        return _fail(
            _CONTROL,
            fld,
            value,
            S_EXEC
            if fld not in (F.VM_EXIT_CONTROLS, F.VM_ENTRY_CONTROLS)
            else S_EXIT
            if fld == F.VM_EXIT_CONTROLS
            else S_ENTRY,
            f"bits {', '.join(bit_names(flags, forbidden))} are 1 but {msr} does not allow them "
            "(not supported by this processor)",
            f"clear bits {forbidden:#x}: AND the field with {settings.may_be_one:#x}",
        )
    return None


def pin_based_controls_reserved_bits(ctx: CheckContext) -> CheckFailure | None:
    return _allowed(
        ctx,
        F.PIN_BASED_VM_EXECUTION_CONTROLS,
        ctx.pin,
        ctx.caps.true_pin,
        PIN_BASED_CTLS,
        "IA32_VMX_TRUE_PINBASED_CTLS",
    )


def primary_controls_reserved_bits(ctx: CheckContext) -> CheckFailure | None:
    return _allowed(
        ctx,
        F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
        ctx.primary,
        ctx.caps.true_primary,
        PRIMARY_PROC_BASED_CTLS,
        "IA32_VMX_TRUE_PROCBASED_CTLS",
    )


def secondary_controls_reserved_bits(ctx: CheckContext) -> CheckFailure | None:
    return _allowed(
        ctx,
        F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
        ctx.secondary,
        ctx.caps.secondary,
        SECONDARY_PROC_BASED_CTLS,
        "IA32_VMX_PROCBASED_CTLS2",
    )


def cr3_target_count(ctx: CheckContext) -> CheckFailure | None:
    n = ctx.vmcs[F.CR3_TARGET_COUNT]
    if n > ctx.caps.cr3_target_count:
        return _fail(
            _CONTROL,
            F.CR3_TARGET_COUNT,
            n,
            S_EXEC,
            f"the CR3-target count is greater than {ctx.caps.cr3_target_count} (IA32_VMX_MISC bits 24:16)",
            f"use at most {ctx.caps.cr3_target_count} CR3-target values",
        )
    return None


def io_bitmap_addresses(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.primary & PRIMARY_PROC_BASED_CTLS.USE_IO_BITMAPS:
        return None
    for fld in (F.IO_BITMAP_A, F.IO_BITMAP_B):
        addr = ctx.vmcs[fld]
        if not _address_ok(addr):
            return _fail(
                _CONTROL,
                fld,
                addr,
                S_EXEC,
                'with "use I/O bitmaps", the address must be 4-KiB aligned (bits 11:0 = 0) and below '
                "4 GiB (IA32_VMX_BASIC bit 48 = 1)",
                "point the field at a 4-KiB page below 4 GiB",
            )
    return None


def msr_bitmap_address(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.primary & PRIMARY_PROC_BASED_CTLS.USE_MSR_BITMAPS:
        return None
    addr = ctx.vmcs[F.MSR_BITMAPS]
    if not _address_ok(addr):
        return _fail(
            _CONTROL,
            F.MSR_BITMAPS,
            addr,
            S_EXEC,
            'with "use MSR bitmaps", the address must be 4-KiB aligned and below 4 GiB',
            "point the field at a 4-KiB page below 4 GiB",
        )
    return None


def virtual_nmis_need_nmi_exiting(ctx: CheckContext) -> CheckFailure | None:
    if ctx.pin & PIN_BASED_CTLS.VIRTUAL_NMIS and not ctx.pin & PIN_BASED_CTLS.NMI_EXITING:
        return _fail(
            _CONTROL,
            F.PIN_BASED_VM_EXECUTION_CONTROLS,
            ctx.pin,
            S_EXEC,
            '"virtual NMIs" is 1 but "NMI exiting" is 0',
            "set NMI exiting or clear virtual NMIs",
        )
    return None


def nmi_window_needs_virtual_nmis(ctx: CheckContext) -> CheckFailure | None:
    if ctx.primary & PRIMARY_PROC_BASED_CTLS.NMI_WINDOW_EXITING and not ctx.pin & PIN_BASED_CTLS.VIRTUAL_NMIS:
        return _fail(
            _CONTROL,
            F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
            ctx.primary,
            S_EXEC,
            '"NMI-window exiting" is 1 but "virtual NMIs" is 0',
            "clear NMI-window exiting",
        )
    return None


def vpid_not_zero(ctx: CheckContext) -> CheckFailure | None:
    if ctx.secondary & SECONDARY_PROC_BASED_CTLS.ENABLE_VPID and ctx.vmcs[F.VIRTUAL_PROCESSOR_ID] == 0:
        return _fail(
            _CONTROL,
            F.VIRTUAL_PROCESSOR_ID,
            0,
            S_EXEC,
            'with "enable VPID", the VPID must not be 0000H (VPID 0 is the host\'s)',
            "write a nonzero VPID, e.g. 1",
        )
    return None


def eptp_valid(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.secondary & SECONDARY_PROC_BASED_CTLS.ENABLE_EPT:
        return None
    eptp = ctx.vmcs[F.EPT_POINTER]
    problem = eptp_problem(eptp, ctx.caps)
    if problem is not None:
        return _fail(
            _CONTROL,
            F.EPT_POINTER,
            eptp,
            S_EXEC,
            problem,
            "build the EPTP as PML4 address | 3 << 3 (4-level walk) | 6 (WB) [| 1 << 6 for A/D flags]",
        )
    return None


def unrestricted_guest_needs_ept(ctx: CheckContext) -> CheckFailure | None:
    if ctx.unrestricted and not ctx.secondary & SECONDARY_PROC_BASED_CTLS.ENABLE_EPT:
        return _fail(
            _CONTROL,
            F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
            ctx.secondary,
            S_EXEC,
            '"unrestricted guest" is 1 but "enable EPT" is 0 (a guest with paging off needs EPT)',
            'set "enable EPT" with a valid EPTP, or clear "unrestricted guest"',
        )
    return None


def exit_controls_reserved_bits(ctx: CheckContext) -> CheckFailure | None:
    return _allowed(
        ctx, F.VM_EXIT_CONTROLS, ctx.exit, ctx.caps.true_exit, VM_EXIT_CTLS, "IA32_VMX_TRUE_EXIT_CTLS"
    )


def preemption_timer_save_needs_timer(ctx: CheckContext) -> CheckFailure | None:
    if (
        ctx.exit & VM_EXIT_CTLS.SAVE_VMX_PREEMPTION_TIMER_VALUE
        and not ctx.pin & PIN_BASED_CTLS.ACTIVATE_VMX_PREEMPTION_TIMER
    ):
        return _fail(
            _CONTROL,
            F.VM_EXIT_CONTROLS,
            ctx.exit,
            S_EXIT,
            '"save VMX-preemption timer value" is 1 but "activate VMX-preemption timer" is 0',
            "set the pin-based control or clear the VM-exit control",
        )
    return None


def _msr_area(
    ctx: CheckContext, count_field: VmcsField, addr_field: VmcsField, section: str
) -> CheckFailure | None:
    count = ctx.vmcs[count_field]
    if count == 0:
        return None
    addr = ctx.vmcs[addr_field]
    if addr & 0xF:
        return _fail(
            _CONTROL,
            addr_field,
            addr,
            section,
            "an MSR area must be 16-byte aligned (bits 3:0 = 0)",
            "align the MSR area on 16 bytes",
        )
    last = addr + count * MSR_ENTRY_SIZE - 1
    if addr >> VMX_PHYSICAL_ADDRESS_BITS or last >> VMX_PHYSICAL_ADDRESS_BITS:
        return _fail(
            _CONTROL,
            addr_field,
            addr,
            section,
            f"the MSR area ({count} entries) extends beyond 4 GiB (IA32_VMX_BASIC bit 48 = 1)",
            "place the MSR area below 4 GiB",
        )
    return None


def exit_msr_store_area(ctx: CheckContext) -> CheckFailure | None:
    return _msr_area(ctx, F.VM_EXIT_MSR_STORE_COUNT, F.VM_EXIT_MSR_STORE_ADDRESS, S_EXIT)


def exit_msr_load_area(ctx: CheckContext) -> CheckFailure | None:
    return _msr_area(ctx, F.VM_EXIT_MSR_LOAD_COUNT, F.VM_EXIT_MSR_LOAD_ADDRESS, S_EXIT)


def entry_controls_reserved_bits(ctx: CheckContext) -> CheckFailure | None:
    return _allowed(
        ctx, F.VM_ENTRY_CONTROLS, ctx.entry, ctx.caps.true_entry, VM_ENTRY_CTLS, "IA32_VMX_TRUE_ENTRY_CTLS"
    )


def entry_interruption_type(ctx: CheckContext) -> CheckFailure | None:
    info = ctx.injection
    if info is None:
        return None
    raw = ctx.vmcs[F.VM_ENTRY_INTERRUPTION_INFORMATION]
    if info.type == INTERRUPTION_TYPE_RESERVED or info.type == InterruptionType.OTHER_EVENT:
        return _fail(
            _CONTROL,
            F.VM_ENTRY_INTERRUPTION_INFORMATION,
            raw,
            S_ENTRY,
            f'interruption type {int(info.type)} is reserved (7 "other event" needs the monitor trap '
            "flag, which this processor does not support)",
            "use 0 external interrupt, 2 NMI, 3 hardware exception, 4 software interrupt, "
            "5 privileged software exception or 6 software exception",
        )
    return None


def entry_interruption_vector(ctx: CheckContext) -> CheckFailure | None:
    info = ctx.injection
    if info is None:
        return None
    raw = ctx.vmcs[F.VM_ENTRY_INTERRUPTION_INFORMATION]
    if info.type == InterruptionType.NMI and info.vector != 2:
        return _fail(
            _CONTROL,
            F.VM_ENTRY_INTERRUPTION_INFORMATION,
            raw,
            S_ENTRY,
            f"an NMI must have vector 2, not {info.vector}",
            "set the vector to 2",
        )
    if info.type == InterruptionType.HARDWARE_EXCEPTION and info.vector > 31:
        return _fail(
            _CONTROL,
            F.VM_ENTRY_INTERRUPTION_INFORMATION,
            raw,
            S_ENTRY,
            f"a hardware exception must have a vector 0-31, not {info.vector}",
            "inject vectors above 31 as external or software interrupts",
        )
    return None


def entry_deliver_error_code(ctx: CheckContext) -> CheckFailure | None:
    info = ctx.injection
    if info is None:
        return None
    raw = ctx.vmcs[F.VM_ENTRY_INTERRUPTION_INFORMATION]
    pe = bool(ctx.vmcs[F.GUEST_CR0] & CR0_PE)
    must = (
        (not ctx.unrestricted or pe)
        and info.type == InterruptionType.HARDWARE_EXCEPTION
        and info.vector in VECTORS_WITH_ERROR_CODE
    )
    if must != info.error_code_valid:
        if must:
            msg = f"exception {info.vector} delivers an error code in protected mode: bit 11 must be 1"
            fix = "set bit 11 and write the error code to VM_ENTRY_EXCEPTION_ERROR_CODE"
        else:
            msg = (
                "bit 11 (deliver error code) must be 0: only hardware exceptions 8, 10-14 and 17 push an "
                "error code, and none does in real mode"
            )
            fix = "clear bit 11"
        return _fail(_CONTROL, F.VM_ENTRY_INTERRUPTION_INFORMATION, raw, S_ENTRY, msg, fix)
    return None


def entry_interruption_reserved_bits(ctx: CheckContext) -> CheckFailure | None:
    raw = ctx.vmcs[F.VM_ENTRY_INTERRUPTION_INFORMATION]
    if ctx.injection is not None and raw & INTERRUPTION_RESERVED:
        return _fail(
            _CONTROL,
            F.VM_ENTRY_INTERRUPTION_INFORMATION,
            raw,
            S_ENTRY,
            f"reserved bits 30:12 are set ({raw & INTERRUPTION_RESERVED:#x})",
            "clear bits 30:12",
        )
    return None


def entry_exception_error_code(ctx: CheckContext) -> CheckFailure | None:
    info = ctx.injection
    ec = ctx.vmcs[F.VM_ENTRY_EXCEPTION_ERROR_CODE]
    if info is not None and info.error_code_valid and ec >> 16:
        return _fail(
            _CONTROL,
            F.VM_ENTRY_EXCEPTION_ERROR_CODE,
            ec,
            S_ENTRY,
            "bits 31:16 of the VM-entry exception error code must be 0",
            "use a 16-bit error code",
        )
    return None


def entry_instruction_length(ctx: CheckContext) -> CheckFailure | None:
    info = ctx.injection
    if info is None or info.type not in SOFTWARE_TYPES:
        return None
    n = ctx.vmcs[F.VM_ENTRY_INSTRUCTION_LENGTH]
    low = 0 if ctx.caps.misc & MISC_ZERO_LENGTH_SOFTWARE_INJECTION else 1
    if not low <= n <= MAX_INSTRUCTION_LENGTH:
        return _fail(
            _CONTROL,
            F.VM_ENTRY_INSTRUCTION_LENGTH,
            n,
            S_ENTRY,
            f"injecting a software interrupt or exception needs an instruction length of {low}-15 "
            "(the return address is RIP + length)",
            "write the length of the INT n / INT3 / INTO",
        )
    return None


def entry_msr_load_area(ctx: CheckContext) -> CheckFailure | None:
    return _msr_area(ctx, F.VM_ENTRY_MSR_LOAD_COUNT, F.VM_ENTRY_MSR_LOAD_ADDRESS, S_ENTRY)


CONTROL_CHECKS: list[Check] = [
    pin_based_controls_reserved_bits,
    primary_controls_reserved_bits,
    secondary_controls_reserved_bits,
    cr3_target_count,
    io_bitmap_addresses,
    msr_bitmap_address,
    virtual_nmis_need_nmi_exiting,
    nmi_window_needs_virtual_nmis,
    vpid_not_zero,
    eptp_valid,
    unrestricted_guest_needs_ept,
    exit_controls_reserved_bits,
    preemption_timer_save_needs_timer,
    exit_msr_store_area,
    exit_msr_load_area,
    entry_controls_reserved_bits,
    entry_interruption_type,
    entry_interruption_vector,
    entry_deliver_error_code,
    entry_interruption_reserved_bits,
    entry_exception_error_code,
    entry_instruction_length,
    entry_msr_load_area,
]

# ============================================================================ 27.2.2-27.2.4 host state


def _fixed(
    kind: int, fld: VmcsField, value: int, fixed0: int, fixed1: int, section: str, reg: str, relaxed: int = 0
) -> CheckFailure | None:
    need = fixed0 & ~relaxed
    missing = need & ~value
    extra = value & ~fixed1 & 0xFFFFFFFF
    if missing:
        return _fail(
            kind,
            fld,
            value,
            section,
            f"{reg} bits {missing:#x} must be 1 in VMX operation (IA32_VMX_{reg}_FIXED0 = {fixed0:#x})",
            f"set bits {missing:#x}",
        )
    if extra:
        return _fail(
            kind,
            fld,
            value,
            section,
            f"{reg} bits {extra:#x} must be 0 in VMX operation (IA32_VMX_{reg}_FIXED1 = {fixed1:#x})",
            f"clear bits {extra:#x}",
        )
    return None


def host_cr0_fixed_bits(ctx: CheckContext) -> CheckFailure | None:
    return _fixed(
        _HOST, F.HOST_CR0, ctx.vmcs[F.HOST_CR0], ctx.caps.cr0_fixed0, ctx.caps.cr0_fixed1, S_HOST_CR, "CR0"
    )


def host_cr4_fixed_bits(ctx: CheckContext) -> CheckFailure | None:
    return _fixed(
        _HOST, F.HOST_CR4, ctx.vmcs[F.HOST_CR4], ctx.caps.cr4_fixed0, ctx.caps.cr4_fixed1, S_HOST_CR, "CR4"
    )


def host_efer(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.exit & VM_EXIT_CTLS.LOAD_IA32_EFER:
        return None
    efer = ctx.vmcs[F.HOST_IA32_EFER]
    if efer & ~EFER_NXE:
        return _fail(
            _HOST,
            F.HOST_IA32_EFER,
            efer,
            S_HOST_CR,
            "reserved IA32_EFER bits are set (this processor implements only NXE; LMA and LME must "
            'equal "host address-space size", which is 0)',
            "clear every bit but NXE (11)",
        )
    return None


def host_selectors_rpl_ti(ctx: CheckContext) -> CheckFailure | None:
    for fld in (*HOST_SELECTOR, F.HOST_TR_SELECTOR):
        sel = ctx.vmcs[fld]
        if sel & 7:
            return _fail(
                _HOST,
                fld,
                sel,
                S_HOST_SEG,
                "host selectors must have RPL = 0 and TI = 0 (bits 2:0)",
                f"use {sel & ~7:#x}",
            )
    return None


def host_cs_tr_not_null(ctx: CheckContext) -> CheckFailure | None:
    for fld in (F.HOST_CS_SELECTOR, F.HOST_TR_SELECTOR):
        if ctx.vmcs[fld] == 0:
            return _fail(
                _HOST,
                fld,
                0,
                S_HOST_SEG,
                "the host CS and TR selectors cannot be 0000H",
                "write the selectors of the host's code segment and TSS",
            )
    return None


def host_ss_not_null(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.exit & VM_EXIT_CTLS.HOST_ADDRESS_SPACE_SIZE and ctx.vmcs[F.HOST_SS_SELECTOR] == 0:
        return _fail(
            _HOST,
            F.HOST_SS_SELECTOR,
            0,
            S_HOST_SEG,
            'the host SS selector cannot be 0000H when "host address-space size" is 0',
            "write the selector of the host's stack segment",
        )
    return None


def host_address_space_size(ctx: CheckContext) -> CheckFailure | None:
    """This processor does not support Intel 64, so neither a 64-bit host nor an IA-32e guest exists."""
    if ctx.exit & VM_EXIT_CTLS.HOST_ADDRESS_SPACE_SIZE:
        return _fail(
            _HOST,
            F.VM_EXIT_CONTROLS,
            ctx.exit,
            S_ADDR_SIZE,
            '"host address-space size" must be 0 outside IA-32e mode',
            "clear VM-exit control bit 9",
        )
    if ctx.entry & VM_ENTRY_CTLS.IA32E_MODE_GUEST:
        return _fail(
            _HOST,
            F.VM_ENTRY_CONTROLS,
            ctx.entry,
            S_ADDR_SIZE,
            '"IA-32e mode guest" must be 0 outside IA-32e mode',
            "clear VM-entry control bit 9",
        )
    return None


HOST_CHECKS: list[Check] = [
    host_cr0_fixed_bits,
    host_cr4_fixed_bits,
    host_efer,
    host_selectors_rpl_ti,
    host_cs_tr_not_null,
    host_ss_not_null,
    host_address_space_size,
]

# ============================================================================ 27.3.1 guest state


def guest_cr0_fixed_bits(ctx: CheckContext) -> CheckFailure | None:
    relaxed = CR0_PE | CR0_PG if ctx.unrestricted else 0
    f = _fixed(
        _GUEST,
        F.GUEST_CR0,
        ctx.vmcs[F.GUEST_CR0],
        ctx.caps.cr0_fixed0,
        ctx.caps.cr0_fixed1,
        S_GUEST_CR,
        "CR0",
        relaxed,
    )
    if (
        f is not None
        and not ctx.unrestricted
        and ctx.vmcs[F.GUEST_CR0] & (CR0_PE | CR0_PG) != CR0_PE | CR0_PG
    ):
        return replace(
            f, fix=f.fix + ' (or enable "unrestricted guest" with EPT to run with paging or protection off)'
        )
    return f


def guest_cr0_pg_needs_pe(ctx: CheckContext) -> CheckFailure | None:
    cr0 = ctx.vmcs[F.GUEST_CR0]
    if ctx.unrestricted and cr0 & CR0_PG and not cr0 & CR0_PE:
        return _fail(
            _GUEST,
            F.GUEST_CR0,
            cr0,
            S_GUEST_CR,
            "CR0.PG = 1 requires CR0.PE = 1",
            "set CR0.PE or clear CR0.PG",
        )
    return None


def guest_cr4_fixed_bits(ctx: CheckContext) -> CheckFailure | None:
    return _fixed(
        _GUEST,
        F.GUEST_CR4,
        ctx.vmcs[F.GUEST_CR4],
        ctx.caps.cr4_fixed0,
        ctx.caps.cr4_fixed1,
        S_GUEST_CR,
        "CR4",
    )


def guest_debugctl(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.entry & VM_ENTRY_CTLS.LOAD_DEBUG_CONTROLS:
        return None
    v = ctx.vmcs[F.GUEST_IA32_DEBUGCTL]
    if v & ~DEBUGCTL_SUPPORTED:
        return _fail(
            _GUEST,
            F.GUEST_IA32_DEBUGCTL,
            v,
            S_GUEST_CR,
            "reserved IA32_DEBUGCTL bits are set (this processor has LBR and BTF only)",
            "clear every bit but 1:0",
        )
    return None


def guest_efer(ctx: CheckContext) -> CheckFailure | None:
    if not ctx.entry & VM_ENTRY_CTLS.LOAD_IA32_EFER:
        return None
    efer = ctx.vmcs[F.GUEST_IA32_EFER]
    if efer & (EFER_LMA | EFER_LME):
        return _fail(
            _GUEST,
            F.GUEST_IA32_EFER,
            efer,
            S_GUEST_CR,
            'IA32_EFER.LMA must equal "IA-32e mode guest" (0) and LME must equal LMA when CR0.PG = 1',
            "clear LMA (bit 10) and LME (bit 8)",
        )
    if efer & ~EFER_NXE:
        return _fail(
            _GUEST,
            F.GUEST_IA32_EFER,
            efer,
            S_GUEST_CR,
            "reserved IA32_EFER bits are set (this processor implements only NXE)",
            "keep only bit 11",
        )
    return None


def _seg(ctx: CheckContext, i: int) -> tuple[int, int, int]:
    v = ctx.vmcs
    return v[GUEST_SELECTOR[i]], v[GUEST_LIMIT[i]], v[GUEST_ACCESS_RIGHTS[i]]


def _usable(ar: int) -> bool:
    return not ar & AR_UNUSABLE


def _dpl(ar: int) -> int:
    return (ar >> AR_DPL_SHIFT) & 3


def guest_virtual_8086(ctx: CheckContext) -> CheckFailure | None:
    rflags = ctx.vmcs[F.GUEST_RFLAGS]
    if rflags & VM and ctx.vmcs[F.GUEST_CR0] & CR0_PE:
        return _fail(
            _GUEST,
            F.GUEST_RFLAGS,
            rflags,
            S_GUEST_SEG,
            "a virtual-8086 guest (RFLAGS.VM = 1) is architecturally allowed, but vmxlab's CPU does not "
            "model virtual-8086 mode",
            'run real-mode code with "unrestricted guest" instead',
        )
    return None


def guest_tr_ldtr_selector_ti(ctx: CheckContext) -> CheckFailure | None:
    sel = ctx.vmcs[F.GUEST_TR_SELECTOR]
    if sel & 4:
        return _fail(
            _GUEST,
            F.GUEST_TR_SELECTOR,
            sel,
            S_GUEST_SEG,
            "the TR selector's TI flag (bit 2) must be 0",
            "TSS descriptors live in the GDT: clear bit 2",
        )
    sel, _, ar = _seg(ctx, LDTR)
    if _usable(ar) and sel & 4:
        return _fail(
            _GUEST,
            F.GUEST_LDTR_SELECTOR,
            sel,
            S_GUEST_SEG,
            "a usable LDTR's selector must have TI = 0",
            "clear bit 2",
        )
    return None


def guest_ss_rpl_equals_cs_rpl(ctx: CheckContext) -> CheckFailure | None:
    if ctx.unrestricted:
        return None
    ss, cs = ctx.vmcs[F.GUEST_SS_SELECTOR], ctx.vmcs[F.GUEST_CS_SELECTOR]
    if ss & 3 != cs & 3:
        return _fail(
            _GUEST,
            F.GUEST_SS_SELECTOR,
            ss,
            S_GUEST_SEG,
            f"SS.RPL ({ss & 3}) must equal CS.RPL ({cs & 3}): both are the CPL",
            "give SS and CS selectors the same RPL",
        )
    return None


def guest_cs_type(ctx: CheckContext) -> CheckFailure | None:
    _, _, ar = _seg(ctx, CS)
    t = ar & AR_TYPE
    if t in CS_TYPES or (ctx.unrestricted and t == CS_TYPE_UNRESTRICTED_DATA):
        return None
    allowed = "9, 11, 13 or 15" + (" or 3" if ctx.unrestricted else "")
    return _fail(
        _GUEST,
        F.GUEST_CS_ACCESS_RIGHTS,
        ar,
        S_GUEST_SEG,
        f"CS type {t} is not an accessed code segment ({allowed})",
        "use type 0xB (execute/read, accessed), e.g. access rights 0xC09B for flat 32-bit code",
    )


def guest_ss_type(ctx: CheckContext) -> CheckFailure | None:
    _, _, ar = _seg(ctx, SS)
    if _usable(ar) and ar & AR_TYPE not in SS_TYPES:
        return _fail(
            _GUEST,
            F.GUEST_SS_ACCESS_RIGHTS,
            ar,
            S_GUEST_SEG,
            f"a usable SS must be read/write accessed data (type 3 or 7), not type {ar & AR_TYPE}",
            "use access rights 0xC093 for a flat 32-bit stack",
        )
    return None


def guest_data_segment_types(ctx: CheckContext) -> CheckFailure | None:
    for i in (DS, ES, FS, GS):
        _, _, ar = _seg(ctx, i)
        if not _usable(ar):
            continue
        t = ar & AR_TYPE
        if not t & 1:
            return _fail(
                _GUEST,
                GUEST_ACCESS_RIGHTS[i],
                ar,
                S_GUEST_SEG,
                f"a usable {SEGMENT_NAMES[i]} must have the accessed bit (type bit 0) set",
                "set bit 0 of the access rights",
            )
        if t & AR_CODE and not t & 2:
            return _fail(
                _GUEST,
                GUEST_ACCESS_RIGHTS[i],
                ar,
                S_GUEST_SEG,
                f"{SEGMENT_NAMES[i]} holds an execute-only code segment; it must be readable",
                "set the readable bit (type bit 1)",
            )
    return None


def guest_segments_s_bit(ctx: CheckContext) -> CheckFailure | None:
    for i in (CS, SS, DS, ES, FS, GS):
        _, _, ar = _seg(ctx, i)
        if (i == CS or _usable(ar)) and not ar & AR_S:
            return _fail(
                _GUEST,
                GUEST_ACCESS_RIGHTS[i],
                ar,
                S_GUEST_SEG,
                f"{SEGMENT_NAMES[i]} must be a code or data segment (S bit 4 = 1)",
                "set bit 4",
            )
    return None


def guest_segments_dpl(ctx: CheckContext) -> CheckFailure | None:
    _, _, cs_ar = _seg(ctx, CS)
    ss_sel, _, ss_ar = _seg(ctx, SS)
    t = cs_ar & AR_TYPE
    cs_dpl, ss_dpl = _dpl(cs_ar), _dpl(ss_ar)
    if t == CS_TYPE_UNRESTRICTED_DATA and cs_dpl != 0:
        return _fail(
            _GUEST,
            F.GUEST_CS_ACCESS_RIGHTS,
            cs_ar,
            S_GUEST_SEG,
            "a data-type CS (unrestricted guest) must have DPL 0",
            "clear bits 6:5",
        )
    if t in (9, 11) and cs_dpl != ss_dpl:
        return _fail(
            _GUEST,
            F.GUEST_CS_ACCESS_RIGHTS,
            cs_ar,
            S_GUEST_SEG,
            f"a nonconforming CS must have DPL = SS.DPL ({cs_dpl} != {ss_dpl})",
            "make CS.DPL and SS.DPL the CPL",
        )
    if t in CONFORMING_CODE_TYPES and cs_dpl > ss_dpl:
        return _fail(
            _GUEST,
            F.GUEST_CS_ACCESS_RIGHTS,
            cs_ar,
            S_GUEST_SEG,
            f"a conforming CS must have DPL <= SS.DPL ({cs_dpl} > {ss_dpl})",
            "lower CS.DPL",
        )
    if not ctx.unrestricted and ss_dpl != ss_sel & 3:
        return _fail(
            _GUEST,
            F.GUEST_SS_ACCESS_RIGHTS,
            ss_ar,
            S_GUEST_SEG,
            f"SS.DPL ({ss_dpl}) must equal the RPL of the SS selector ({ss_sel & 3})",
            "make them equal (both are the CPL)",
        )
    if (t == CS_TYPE_UNRESTRICTED_DATA or not ctx.vmcs[F.GUEST_CR0] & CR0_PE) and ss_dpl != 0:
        return _fail(
            _GUEST,
            F.GUEST_SS_ACCESS_RIGHTS,
            ss_ar,
            S_GUEST_SEG,
            "SS.DPL must be 0 in real mode (CR0.PE = 0) or with a data-type CS",
            "clear bits 6:5",
        )
    if not ctx.unrestricted:
        for i in (DS, ES, FS, GS):
            sel, _, ar = _seg(ctx, i)
            if _usable(ar) and ar & AR_TYPE <= 11 and _dpl(ar) < sel & 3:
                return _fail(
                    _GUEST,
                    GUEST_ACCESS_RIGHTS[i],
                    ar,
                    S_GUEST_SEG,
                    f"{SEGMENT_NAMES[i]}.DPL ({_dpl(ar)}) is less than the selector's RPL ({sel & 3})",
                    "use an RPL no greater than the DPL",
                )
    return None


def guest_segments_present(ctx: CheckContext) -> CheckFailure | None:
    for i in (CS, SS, DS, ES, FS, GS):
        _, _, ar = _seg(ctx, i)
        if (i == CS or _usable(ar)) and not ar & AR_P:
            return _fail(
                _GUEST,
                GUEST_ACCESS_RIGHTS[i],
                ar,
                S_GUEST_SEG,
                f"a usable {SEGMENT_NAMES[i]} must be present (P bit 7 = 1)",
                "set bit 7, or mark the register unusable (bit 16)",
            )
    return None


def _reserved_and_granularity(ctx: CheckContext, i: int) -> CheckFailure | None:
    _, limit, ar = _seg(ctx, i)
    if ar & AR_RESERVED:
        return _fail(
            _GUEST,
            GUEST_ACCESS_RIGHTS[i],
            ar,
            S_GUEST_SEG,
            f"{SEGMENT_NAMES[i]} access-rights reserved bits (11:8, 31:17) are set ({ar & AR_RESERVED:#x})",
            "clear them",
        )
    if ar & AR_G and limit & 0xFFF != 0xFFF:
        return _fail(
            _GUEST,
            GUEST_LIMIT[i],
            limit,
            S_GUEST_SEG,
            f"{SEGMENT_NAMES[i]}: G = 1 but limit bits 11:0 are not all 1 (a page-granular limit ends "
            "in FFFH)",
            "use a limit ending in FFF, or clear G (bit 15)",
        )
    if not ar & AR_G and limit >> 20:
        return _fail(
            _GUEST,
            GUEST_LIMIT[i],
            limit,
            S_GUEST_SEG,
            f"{SEGMENT_NAMES[i]}: limit above 1 MiB - 1 but G = 0",
            "set G (bit 15) for limits of 1 MiB+",
        )
    return None


def guest_segments_reserved_and_limit(ctx: CheckContext) -> CheckFailure | None:
    for i in (CS, SS, DS, ES, FS, GS):
        _, _, ar = _seg(ctx, i)
        if i == CS or _usable(ar):
            f = _reserved_and_granularity(ctx, i)
            if f is not None:
                return f
    return None


def guest_tr(ctx: CheckContext) -> CheckFailure | None:
    _, _, ar = _seg(ctx, TR)
    fld = F.GUEST_TR_ACCESS_RIGHTS
    if ar & AR_UNUSABLE:
        return _fail(
            _GUEST,
            fld,
            ar,
            S_GUEST_SEG,
            "TR must be usable (bit 16 = 0)",
            "load a busy 32-bit TSS: access rights 0x8B",
        )
    if ar & AR_TYPE not in TSS_BUSY_TYPES:
        return _fail(
            _GUEST,
            fld,
            ar,
            S_GUEST_SEG,
            f"TR type {ar & AR_TYPE} must be a busy TSS (3 16-bit, 11 32-bit)",
            "use type 11 (0x8B)",
        )
    if ar & AR_S:
        return _fail(_GUEST, fld, ar, S_GUEST_SEG, "TR must be a system segment (S = 0)", "clear bit 4")
    if not ar & AR_P:
        return _fail(_GUEST, fld, ar, S_GUEST_SEG, "TR must be present (P = 1)", "set bit 7")
    return _reserved_and_granularity(ctx, TR)


def guest_ldtr(ctx: CheckContext) -> CheckFailure | None:
    _, _, ar = _seg(ctx, LDTR)
    if not _usable(ar):
        return None
    fld = F.GUEST_LDTR_ACCESS_RIGHTS
    if ar & AR_TYPE != LDT_TYPE:
        return _fail(
            _GUEST,
            fld,
            ar,
            S_GUEST_SEG,
            f"a usable LDTR must have type 2 (LDT), not {ar & AR_TYPE}",
            "use access rights 0x82, or mark LDTR unusable (0x10000)",
        )
    if ar & AR_S:
        return _fail(_GUEST, fld, ar, S_GUEST_SEG, "LDTR must be a system segment (S = 0)", "clear bit 4")
    if not ar & AR_P:
        return _fail(_GUEST, fld, ar, S_GUEST_SEG, "a usable LDTR must be present", "set bit 7")
    return _reserved_and_granularity(ctx, LDTR)


def guest_descriptor_table_limits(ctx: CheckContext) -> CheckFailure | None:
    for fld in (F.GUEST_GDTR_LIMIT, F.GUEST_IDTR_LIMIT):
        v = ctx.vmcs[fld]
        if v >> 16:
            return _fail(
                _GUEST,
                fld,
                v,
                S_GUEST_DT,
                "bits 31:16 of a GDTR/IDTR limit must be 0",
                "descriptor-table limits are 16 bits",
            )
    return None


def guest_rflags_reserved(ctx: CheckContext) -> CheckFailure | None:
    v = ctx.vmcs[F.GUEST_RFLAGS]
    if v & RFLAGS_RESERVED or not v & RESERVED1:
        return _fail(
            _GUEST,
            F.GUEST_RFLAGS,
            v,
            S_GUEST_RIP,
            "RFLAGS reserved bits 31:22, 15, 5, 3 must be 0 and bit 1 must be 1",
            f"use {(v & ~RFLAGS_RESERVED) | RESERVED1:#x}",
        )
    return None


def guest_rflags_vm(ctx: CheckContext) -> CheckFailure | None:
    v = ctx.vmcs[F.GUEST_RFLAGS]
    if v & VM and not ctx.vmcs[F.GUEST_CR0] & CR0_PE:
        return _fail(
            _GUEST, F.GUEST_RFLAGS, v, S_GUEST_RIP, "RFLAGS.VM must be 0 when CR0.PE = 0", "clear bit 17"
        )
    return None


def guest_rflags_if_for_external_interrupt(ctx: CheckContext) -> CheckFailure | None:
    info = ctx.injection
    v = ctx.vmcs[F.GUEST_RFLAGS]
    if info is not None and info.type == InterruptionType.EXTERNAL_INTERRUPT and not v & IF:
        return _fail(
            _GUEST,
            F.GUEST_RFLAGS,
            v,
            S_GUEST_RIP,
            "RFLAGS.IF must be 1 when injecting an external interrupt",
            "wait for an interrupt window (interrupt-window exiting), or set IF",
        )
    return None


def guest_activity_state(ctx: CheckContext) -> CheckFailure | None:
    a = ctx.vmcs[F.GUEST_ACTIVITY_STATE]
    supported = {ActivityState.ACTIVE} | ({ActivityState.HLT} if ctx.caps.misc & MISC_ACTIVITY_HLT else set())
    if a not in supported:
        return _fail(
            _GUEST,
            F.GUEST_ACTIVITY_STATE,
            a,
            S_GUEST_NONREG,
            f"activity state {a} is not supported (IA32_VMX_MISC bits 8:6: HLT only)",
            "use 0 (active) or 1 (HLT)",
        )
    if a == ActivityState.HLT and _dpl(ctx.vmcs[F.GUEST_SS_ACCESS_RIGHTS]) != 0:
        return _fail(
            _GUEST,
            F.GUEST_ACTIVITY_STATE,
            a,
            S_GUEST_NONREG,
            "the HLT activity state needs SS.DPL = 0 (HLT is privileged)",
            "enter active, or at CPL 0",
        )
    blocking = ctx.vmcs[F.GUEST_INTERRUPTIBILITY_STATE] & (
        Interruptibility.BLOCKING_BY_STI | Interruptibility.BLOCKING_BY_MOV_SS
    )
    if a != ActivityState.ACTIVE and blocking:
        return _fail(
            _GUEST,
            F.GUEST_ACTIVITY_STATE,
            a,
            S_GUEST_NONREG,
            "the activity state must be active while blocking by STI or MOV SS is set",
            "clear interruptibility bits 1:0 or enter active",
        )
    info = ctx.injection
    if a == ActivityState.HLT and info is not None:
        ok = info.type in (InterruptionType.EXTERNAL_INTERRUPT, InterruptionType.NMI) or (
            info.type == InterruptionType.HARDWARE_EXCEPTION and info.vector in (1, 18)
        )
        if not ok:
            return _fail(
                _GUEST,
                F.GUEST_ACTIVITY_STATE,
                a,
                S_GUEST_NONREG,
                "in the HLT state only an external interrupt, an NMI, #DB or #MC can be injected",
                "enter active to inject this event",
            )
    return None


def guest_interruptibility(ctx: CheckContext) -> CheckFailure | None:
    v = ctx.vmcs[F.GUEST_INTERRUPTIBILITY_STATE]
    fld = F.GUEST_INTERRUPTIBILITY_STATE
    sti, movss = v & Interruptibility.BLOCKING_BY_STI, v & Interruptibility.BLOCKING_BY_MOV_SS
    if v & INTERRUPTIBILITY_RESERVED:
        return _fail(
            _GUEST, fld, v, S_GUEST_NONREG, "reserved interruptibility bits 31:4 are set", "clear them"
        )
    if sti and movss:
        return _fail(
            _GUEST,
            fld,
            v,
            S_GUEST_NONREG,
            "blocking by STI and by MOV SS cannot both be set",
            "keep one of bits 0 and 1",
        )
    if sti and not ctx.vmcs[F.GUEST_RFLAGS] & IF:
        return _fail(
            _GUEST,
            fld,
            v,
            S_GUEST_NONREG,
            "blocking by STI needs RFLAGS.IF = 1 (STI set IF)",
            "clear bit 0 or set RFLAGS.IF",
        )
    if v & Interruptibility.BLOCKING_BY_SMI:
        return _fail(_GUEST, fld, v, S_GUEST_NONREG, "blocking by SMI must be 0 outside SMM", "clear bit 2")
    info = ctx.injection
    if info is not None and info.type == InterruptionType.EXTERNAL_INTERRUPT and (sti or movss):
        return _fail(
            _GUEST,
            fld,
            v,
            S_GUEST_NONREG,
            "an external interrupt cannot be injected while blocked by STI or MOV SS",
            "clear bits 1:0",
        )
    if info is not None and info.type == InterruptionType.NMI and movss:
        return _fail(
            _GUEST, fld, v, S_GUEST_NONREG, "an NMI cannot be injected while blocked by MOV SS", "clear bit 1"
        )
    if info is not None and info.type == InterruptionType.NMI and sti:
        return _fail(
            _GUEST,
            fld,
            v,
            S_GUEST_NONREG,
            "an NMI cannot be injected while blocked by STI on this processor",
            "clear bit 0",
            qualification=EntryFailureQualification.NMI_INJECTION_WITH_BLOCKING_BY_STI,
        )
    return None


def guest_pending_debug_exceptions(ctx: CheckContext) -> CheckFailure | None:
    v = ctx.vmcs[F.GUEST_PENDING_DEBUG_EXCEPTIONS]
    fld = F.GUEST_PENDING_DEBUG_EXCEPTIONS
    if v & PENDING_DEBUG_RESERVED:
        return _fail(
            _GUEST,
            fld,
            v,
            S_GUEST_NONREG,
            "reserved pending-debug-exception bits are set",
            "only bits 3:0, 12 and 14 are defined",
        )
    blocked = ctx.vmcs[F.GUEST_INTERRUPTIBILITY_STATE] & (
        Interruptibility.BLOCKING_BY_STI | Interruptibility.BLOCKING_BY_MOV_SS
    )
    if blocked or ctx.vmcs[F.GUEST_ACTIVITY_STATE] == ActivityState.HLT:
        tf = bool(ctx.vmcs[F.GUEST_RFLAGS] & TF)
        btf = bool(ctx.vmcs[F.GUEST_IA32_DEBUGCTL] & DEBUGCTL_BTF)
        bs = bool(v & PENDING_DEBUG_BS)
        if tf and not btf and not bs:
            return _fail(
                _GUEST,
                fld,
                v,
                S_GUEST_NONREG,
                "with RFLAGS.TF = 1 (and BTF = 0) in a shadow or HLT, BS (bit 14) must be 1",
                "set bit 14 (a single-step trap is pending)",
            )
        if (not tf or btf) and bs:
            return _fail(
                _GUEST,
                fld,
                v,
                S_GUEST_NONREG,
                "BS (bit 14) must be 0 when RFLAGS.TF = 0 or BTF = 1 in a shadow or HLT",
                "clear bit 14",
            )
    return None


def guest_vmcs_link_pointer(ctx: CheckContext) -> CheckFailure | None:
    ptr = ctx.vmcs[F.VMCS_LINK_POINTER]
    if ptr == VMCS_LINK_POINTER_NONE:
        return None
    q = EntryFailureQualification.INVALID_VMCS_LINK_POINTER
    fix = "write FFFFFFFF_FFFFFFFFH (no shadow VMCS)"
    if not _address_ok(ptr):
        return _fail(
            _GUEST,
            F.VMCS_LINK_POINTER,
            ptr,
            S_GUEST_NONREG,
            "the VMCS link pointer is not all ones, so it must be a 4-KiB aligned address below 4 GiB",
            fix,
            q,
        )
    if ctx.memory is not None:
        rev = ctx.memory.read(ptr, 4)
        if rev & REVISION_ID_MASK != ctx.caps.revision_id or rev & SHADOW_VMCS_INDICATOR:
            return _fail(
                _GUEST,
                F.VMCS_LINK_POINTER,
                ptr,
                S_GUEST_NONREG,
                f"the VMCS at the link pointer has revision {rev:#x}, not {ctx.caps.revision_id:#x} "
                'with bit 31 = "VMCS shadowing" (0)',
                fix,
                q,
            )
    if ptr == ctx.current_vmcs_pointer:
        return _fail(
            _GUEST,
            F.VMCS_LINK_POINTER,
            ptr,
            S_GUEST_NONREG,
            "the VMCS link pointer must not be the current-VMCS pointer",
            fix,
            q,
        )
    return None


def guest_pdptes(ctx: CheckContext) -> CheckFailure | None:
    """PAE paging without IA-32e mode: the PDPTEs VM entry loads (from the VMCS with EPT, else from
    guest CR3) must have no reserved bit set in a present entry; failure has qualification 2."""
    v = ctx.vmcs
    if not (v[F.GUEST_CR0] & CR0_PG and v[F.GUEST_CR4] & CR4_PAE):
        return None
    q = EntryFailureQualification.PDPTE_LOADING
    if ctx.secondary & SECONDARY_PROC_BASED_CTLS.ENABLE_EPT:
        for i, fld in enumerate(GUEST_PDPTE):
            e = v[fld]
            if e & 1 and e & PDPTE_RESERVED:
                return _fail(
                    _GUEST, fld, e, S_PDPTE, f"PDPTE{i} is present with reserved bits set", "clear them", q
                )
        return None
    if ctx.memory is None:
        return None
    base = v[F.GUEST_CR3] & 0xFFFFFFE0
    for i in range(4):
        e = ctx.memory.read(base + 8 * i, 8)
        if e & 1 and e & PDPTE_RESERVED:
            return _fail(
                _GUEST,
                F.GUEST_CR3,
                v[F.GUEST_CR3],
                S_PDPTE,
                f"PDPTE{i} at {base + 8 * i:#x} (from guest CR3) is present with reserved bits set ({e:#x})",
                "fix the guest's page-directory-pointer table",
                q,
            )
    return None


GUEST_CHECKS: list[Check] = [
    guest_cr0_fixed_bits,
    guest_cr0_pg_needs_pe,
    guest_cr4_fixed_bits,
    guest_debugctl,
    guest_efer,
    guest_virtual_8086,
    guest_tr_ldtr_selector_ti,
    guest_ss_rpl_equals_cs_rpl,
    guest_cs_type,
    guest_ss_type,
    guest_data_segment_types,
    guest_segments_s_bit,
    guest_segments_dpl,
    guest_segments_present,
    guest_segments_reserved_and_limit,
    guest_tr,
    guest_ldtr,
    guest_descriptor_table_limits,
    guest_rflags_reserved,
    guest_rflags_vm,
    guest_rflags_if_for_external_interrupt,
    guest_activity_state,
    guest_interruptibility,
    guest_pending_debug_exceptions,
    guest_vmcs_link_pointer,
    guest_pdptes,
]

GROUPS: dict[CheckClass, list[Check]] = {
    CheckClass.CONTROLS: CONTROL_CHECKS,
    CheckClass.HOST_STATE: HOST_CHECKS,
    CheckClass.GUEST_STATE: GUEST_CHECKS,
}


def _run(checks: list[Check], ctx: CheckContext) -> CheckFailure | None:
    for check in checks:
        failure = check(ctx)
        if failure is not None:
            return _named(failure, check)
    return None


def _named(failure: CheckFailure, check: Check) -> CheckFailure:
    return replace(failure, check=check.__name__)


def first_failure(ctx: CheckContext) -> CheckFailure | None:
    """What VM entry reports: the first failing check in SDM order (controls, host, guest)."""
    for checks in GROUPS.values():
        failure = _run(checks, ctx)
        if failure is not None:
            return failure
    return None


def all_failures(ctx: CheckContext) -> list[CheckFailure]:
    """Every failing check (for the explainer: fix them all at once)."""
    out = []
    for checks in GROUPS.values():
        for check in checks:
            failure = check(ctx)
            if failure is not None:
                out.append(_named(failure, check))
    return out


def check_controls(ctx: CheckContext) -> CheckFailure | None:
    return _run(CONTROL_CHECKS, ctx)


def check_host_state(ctx: CheckContext) -> CheckFailure | None:
    return _run(HOST_CHECKS, ctx)


def check_guest_state(ctx: CheckContext) -> CheckFailure | None:
    return _run(GUEST_CHECKS, ctx)
