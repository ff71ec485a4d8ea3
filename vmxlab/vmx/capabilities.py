"""The VMX capability MSRs of the modelled processor (SDM Vol.3C Appendix A, "VMX Capability
Reporting Facility"), derived from what :mod:`vmxlab.vmx` implements.

Rules that shape the values:

* A control may be 1 ("allowed-1", bits 63:32 of a control MSR) only if the
  model implements it; it must be 1 ("allowed-0" = 1, bits 31:0) for the
  default-1 classes of SDM Vol.3C A.2 (reserved bits that read as 1 on every
  processor).  The TRUE_ MSRs (BASIC bit 55 = 1) report which default-1 bits
  this model lets software clear: CR3-load/store exiting and the debug-control
  save/load bits, which the model implements both ways.
* The processor implements IA-32 without Intel 64, so IA32_VMX_BASIC bit 48 =
  1 (VMXON region, VMCS and the structures they point to lie below 4 GiB), the
  "host address-space size" and "IA-32e mode guest" controls are allowed-0
  only, and natural-width fields are 32 bits.
* CR0/CR4 FIXED1 list the bits this CPU implements (a guest may not set what
  the CPU does not have); FIXED0 are PE, NE, PG and VMXE as on every VMX
  processor (SDM Vol.3C A.7, A.8).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..cpu.ops.system import CR0_DEFINED, CR4_SUPPORTED
from ..cpu.state import CR0_NE, CR0_PE, CR0_PG, CR4_VMXE
from .controls import (
    PIN_BASED_CTLS,
    PRIMARY_PROC_BASED_CTLS,
    SECONDARY_PROC_BASED_CTLS,
    VM_ENTRY_CTLS,
    VM_EXIT_CTLS,
)
from .fields import HIGHEST_INDEX, INDEX_SHIFT


class Msr(enum.IntEnum):
    """VMX-related MSR indices (SDM Vol.4 Table 2-2; SDM Vol.3C Appendix A)."""

    IA32_FEATURE_CONTROL = 0x3A
    IA32_VMX_BASIC = 0x480
    IA32_VMX_PINBASED_CTLS = 0x481
    IA32_VMX_PROCBASED_CTLS = 0x482
    IA32_VMX_EXIT_CTLS = 0x483
    IA32_VMX_ENTRY_CTLS = 0x484
    IA32_VMX_MISC = 0x485
    IA32_VMX_CR0_FIXED0 = 0x486
    IA32_VMX_CR0_FIXED1 = 0x487
    IA32_VMX_CR4_FIXED0 = 0x488
    IA32_VMX_CR4_FIXED1 = 0x489
    IA32_VMX_VMCS_ENUM = 0x48A
    IA32_VMX_PROCBASED_CTLS2 = 0x48B
    IA32_VMX_EPT_VPID_CAP = 0x48C
    IA32_VMX_TRUE_PINBASED_CTLS = 0x48D
    IA32_VMX_TRUE_PROCBASED_CTLS = 0x48E
    IA32_VMX_TRUE_EXIT_CTLS = 0x48F
    IA32_VMX_TRUE_ENTRY_CTLS = 0x490


class FEATURE_CONTROL(enum.IntFlag):  # noqa: N801
    """IA32_FEATURE_CONTROL (SDM Vol.3C 24.7, "Enabling and Entering VMX Operation")."""

    LOCK = 1 << 0
    ENABLE_VMX_INSIDE_SMX = 1 << 1
    ENABLE_VMX_OUTSIDE_SMX = 1 << 2


# ------------------------------------------------------------------ IA32_VMX_BASIC (SDM Vol.3C A.1)

#: VMCS revision identifier (bits 30:0): "vmxl" in ASCII, bit 31 clear
VMCS_REVISION_ID = 0x766D786C
VMCS_REGION_SIZE = 0x1000  # bits 44:32: bytes software allocates for a VMXON region / VMCS
BASIC_PHYSICAL_ADDRESS_WIDTH_32 = 1 << 48  # no Intel 64: VMX structures below 4 GiB
MEMORY_TYPE_UC = 0
MEMORY_TYPE_WB = 6
BASIC_MEMORY_TYPE_SHIFT = 50  # bits 53:50: memory type for the VMCS and referenced structures
BASIC_INS_OUTS_INFORMATION = 1 << 54  # VM exits due to INS/OUTS report instruction information
BASIC_TRUE_CONTROLS = 1 << 55  # the IA32_VMX_TRUE_*_CTLS MSRs exist
#: physical-address width for VMX structures (BASIC bit 48 = 1)
VMX_PHYSICAL_ADDRESS_BITS = 32

# ------------------------------------------------------------------ default-1 classes (SDM Vol.3C A.2)

PINBASED_DEFAULT1 = 0x00000016  # bits 1, 2, 4
PROCBASED_DEFAULT1 = 0x0401E172  # bits 1, 4-6, 8, 13-16, 26
EXIT_DEFAULT1 = 0x00036DFF  # bits 0-8, 10, 11, 13, 14, 16, 17
ENTRY_DEFAULT1 = 0x000011FF  # bits 0-8, 12

# ------------------------------------------------------------------ IA32_VMX_MISC (SDM Vol.3C A.6)

#: the VMX-preemption timer counts down by 1 each time TSC bit X changes; X = bits 4:0
PREEMPTION_TIMER_RATE = 5
MISC_ACTIVITY_HLT = 1 << 6
MISC_ACTIVITY_SHUTDOWN = 1 << 7
MISC_ACTIVITY_WAIT_FOR_SIPI = 1 << 8
CR3_TARGET_COUNT = 4  # bits 24:16
CR3_TARGET_SHIFT = 16
MSR_LIST_N = 0  # bits 27:25: recommended maximum list length is 512 * (N + 1)
MSR_LIST_SHIFT = 25
MAX_MSR_LIST = 512 * (MSR_LIST_N + 1)
MISC_VMWRITE_ANY_FIELD = 1 << 29  # not set: VM-exit information fields stay read-only
MISC_ZERO_LENGTH_SOFTWARE_INJECTION = 1 << 30  # not set: instruction length 1..15 required

# ------------------------------------------------------------------ IA32_VMX_EPT_VPID_CAP (SDM Vol.3C A.10)


class EPT_VPID_CAP(enum.IntFlag):  # noqa: N801
    EXECUTE_ONLY = 1 << 0
    PAGE_WALK_LENGTH_4 = 1 << 6
    MEMORY_TYPE_UC = 1 << 8
    MEMORY_TYPE_WB = 1 << 14
    PDE_2MB_PAGES = 1 << 16
    PDPTE_1GB_PAGES = 1 << 17
    INVEPT = 1 << 20
    ACCESSED_DIRTY_FLAGS = 1 << 21
    ADVANCED_EPT_VIOLATION_INFO = 1 << 22
    INVEPT_SINGLE_CONTEXT = 1 << 25
    INVEPT_ALL_CONTEXT = 1 << 26
    INVVPID = 1 << 32
    INVVPID_INDIVIDUAL_ADDRESS = 1 << 40
    INVVPID_SINGLE_CONTEXT = 1 << 41
    INVVPID_ALL_CONTEXT = 1 << 42
    INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43


@dataclass(frozen=True)
class AllowedSettings:
    """A control capability MSR (SDM Vol.3C A.3-A.5): bits 31:0 allowed-0, bits 63:32 allowed-1.

    ``must_be_one`` are the bits whose allowed-0 setting is 1 (VM entry fails
    if they are 0); ``may_be_one`` the bits whose allowed-1 setting is 1 (VM
    entry fails if any other bit is 1).
    """

    must_be_one: int
    may_be_one: int

    @property
    def msr(self) -> int:
        return self.may_be_one << 32 | self.must_be_one

    def violations(self, value: int) -> tuple[int, int]:
        """(bits that must be 1 but are 0, bits that must be 0 but are 1)."""
        return self.must_be_one & ~value, value & ~self.may_be_one & 0xFFFFFFFF

    def adjust(self, desired: int) -> int:
        """The value nearest to ``desired`` that VM entry accepts: what every VMM does with the
        capability MSRs before writing a control field (SDM Vol.3C A.3.1)."""
        return (desired | self.must_be_one) & self.may_be_one


@dataclass(frozen=True)
class VmxCapabilities:
    """Everything the capability MSRs report.  One default instance describes the model; a
    nested VMM may derive a reduced copy (``dataclasses.replace``) to offer to a guest hypervisor."""

    revision_id: int = VMCS_REVISION_ID
    pin: AllowedSettings = AllowedSettings(
        PINBASED_DEFAULT1,
        PINBASED_DEFAULT1
        | PIN_BASED_CTLS.EXTERNAL_INTERRUPT_EXITING
        | PIN_BASED_CTLS.NMI_EXITING
        | PIN_BASED_CTLS.ACTIVATE_VMX_PREEMPTION_TIMER,
    )
    primary: AllowedSettings = AllowedSettings(
        PROCBASED_DEFAULT1,
        PROCBASED_DEFAULT1
        | PRIMARY_PROC_BASED_CTLS.INTERRUPT_WINDOW_EXITING
        | PRIMARY_PROC_BASED_CTLS.USE_TSC_OFFSETTING
        | PRIMARY_PROC_BASED_CTLS.HLT_EXITING
        | PRIMARY_PROC_BASED_CTLS.INVLPG_EXITING
        | PRIMARY_PROC_BASED_CTLS.MWAIT_EXITING
        | PRIMARY_PROC_BASED_CTLS.RDPMC_EXITING
        | PRIMARY_PROC_BASED_CTLS.RDTSC_EXITING
        | PRIMARY_PROC_BASED_CTLS.CR3_LOAD_EXITING
        | PRIMARY_PROC_BASED_CTLS.CR3_STORE_EXITING
        | PRIMARY_PROC_BASED_CTLS.MOV_DR_EXITING
        | PRIMARY_PROC_BASED_CTLS.UNCONDITIONAL_IO_EXITING
        | PRIMARY_PROC_BASED_CTLS.USE_IO_BITMAPS
        | PRIMARY_PROC_BASED_CTLS.USE_MSR_BITMAPS
        | PRIMARY_PROC_BASED_CTLS.MONITOR_EXITING
        | PRIMARY_PROC_BASED_CTLS.PAUSE_EXITING
        | PRIMARY_PROC_BASED_CTLS.ACTIVATE_SECONDARY_CONTROLS,
    )
    #: TRUE_PROCBASED: CR3-load/store exiting may be 0
    true_primary_must_be_one: int = PROCBASED_DEFAULT1 & ~(
        PRIMARY_PROC_BASED_CTLS.CR3_LOAD_EXITING | PRIMARY_PROC_BASED_CTLS.CR3_STORE_EXITING
    )
    secondary: AllowedSettings = AllowedSettings(
        0,
        SECONDARY_PROC_BASED_CTLS.ENABLE_EPT
        | SECONDARY_PROC_BASED_CTLS.DESCRIPTOR_TABLE_EXITING
        | SECONDARY_PROC_BASED_CTLS.ENABLE_VPID
        | SECONDARY_PROC_BASED_CTLS.WBINVD_EXITING
        | SECONDARY_PROC_BASED_CTLS.UNRESTRICTED_GUEST,
    )
    exit: AllowedSettings = AllowedSettings(
        EXIT_DEFAULT1,
        EXIT_DEFAULT1
        | VM_EXIT_CTLS.SAVE_DEBUG_CONTROLS
        | VM_EXIT_CTLS.ACKNOWLEDGE_INTERRUPT_ON_EXIT
        | VM_EXIT_CTLS.SAVE_IA32_EFER
        | VM_EXIT_CTLS.LOAD_IA32_EFER
        | VM_EXIT_CTLS.SAVE_VMX_PREEMPTION_TIMER_VALUE,
    )
    #: TRUE_EXIT: "save debug controls" may be 0
    true_exit_must_be_one: int = EXIT_DEFAULT1 & ~VM_EXIT_CTLS.SAVE_DEBUG_CONTROLS
    entry: AllowedSettings = AllowedSettings(
        ENTRY_DEFAULT1, ENTRY_DEFAULT1 | VM_ENTRY_CTLS.LOAD_DEBUG_CONTROLS | VM_ENTRY_CTLS.LOAD_IA32_EFER
    )
    #: TRUE_ENTRY: "load debug controls" may be 0
    true_entry_must_be_one: int = ENTRY_DEFAULT1 & ~VM_ENTRY_CTLS.LOAD_DEBUG_CONTROLS
    preemption_timer_rate: int = PREEMPTION_TIMER_RATE
    activity_states: int = MISC_ACTIVITY_HLT
    cr3_target_count: int = CR3_TARGET_COUNT
    cr0_fixed0: int = CR0_PE | CR0_NE | CR0_PG
    cr0_fixed1: int = CR0_DEFINED
    cr4_fixed0: int = CR4_VMXE
    cr4_fixed1: int = CR4_SUPPORTED | CR4_VMXE
    ept_vpid_cap: int = (
        EPT_VPID_CAP.EXECUTE_ONLY
        | EPT_VPID_CAP.PAGE_WALK_LENGTH_4
        | EPT_VPID_CAP.MEMORY_TYPE_UC
        | EPT_VPID_CAP.MEMORY_TYPE_WB
        | EPT_VPID_CAP.PDE_2MB_PAGES
        | EPT_VPID_CAP.PDPTE_1GB_PAGES
        | EPT_VPID_CAP.INVEPT
        | EPT_VPID_CAP.ACCESSED_DIRTY_FLAGS
        | EPT_VPID_CAP.INVEPT_SINGLE_CONTEXT
        | EPT_VPID_CAP.INVEPT_ALL_CONTEXT
        | EPT_VPID_CAP.INVVPID
        | EPT_VPID_CAP.INVVPID_INDIVIDUAL_ADDRESS
        | EPT_VPID_CAP.INVVPID_SINGLE_CONTEXT
        | EPT_VPID_CAP.INVVPID_ALL_CONTEXT
        | EPT_VPID_CAP.INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS
    )

    # -------------------------------------------------------------- the controls VM entry checks

    @property
    def true_pin(self) -> AllowedSettings:
        return self.pin  # no default-1 pin-based bit can be cleared on this model

    @property
    def true_primary(self) -> AllowedSettings:
        return AllowedSettings(self.true_primary_must_be_one, self.primary.may_be_one)

    @property
    def true_exit(self) -> AllowedSettings:
        return AllowedSettings(self.true_exit_must_be_one, self.exit.may_be_one)

    @property
    def true_entry(self) -> AllowedSettings:
        return AllowedSettings(self.true_entry_must_be_one, self.entry.may_be_one)

    def entry_check_settings(self) -> dict[str, AllowedSettings]:
        """The settings VM entry enforces: the TRUE MSRs, since BASIC bit 55 = 1 (SDM Vol.3C A.2)."""
        return {
            "pin-based": self.true_pin,
            "primary processor-based": self.true_primary,
            "secondary processor-based": self.secondary,
            "VM-exit": self.true_exit,
            "VM-entry": self.true_entry,
        }

    def supports_ept(self, cap: EPT_VPID_CAP) -> bool:
        return bool(self.ept_vpid_cap & cap)

    # -------------------------------------------------------------- the MSR values

    @property
    def basic(self) -> int:
        return (
            self.revision_id & 0x7FFFFFFF
            | VMCS_REGION_SIZE << 32
            | BASIC_PHYSICAL_ADDRESS_WIDTH_32
            | MEMORY_TYPE_WB << BASIC_MEMORY_TYPE_SHIFT
            | BASIC_INS_OUTS_INFORMATION
            | BASIC_TRUE_CONTROLS
        )

    @property
    def misc(self) -> int:
        return (
            self.preemption_timer_rate & 0x1F
            | self.activity_states
            | self.cr3_target_count << CR3_TARGET_SHIFT
            | MSR_LIST_N << MSR_LIST_SHIFT
        )

    @property
    def vmcs_enum(self) -> int:
        return HIGHEST_INDEX << INDEX_SHIFT

    def msrs(self) -> dict[Msr, int]:
        """Every capability MSR by index, as RDMSR would return it."""
        return {
            Msr.IA32_VMX_BASIC: self.basic,
            Msr.IA32_VMX_PINBASED_CTLS: self.pin.msr,
            Msr.IA32_VMX_PROCBASED_CTLS: self.primary.msr,
            Msr.IA32_VMX_EXIT_CTLS: self.exit.msr,
            Msr.IA32_VMX_ENTRY_CTLS: self.entry.msr,
            Msr.IA32_VMX_MISC: self.misc,
            Msr.IA32_VMX_CR0_FIXED0: self.cr0_fixed0,
            Msr.IA32_VMX_CR0_FIXED1: self.cr0_fixed1,
            Msr.IA32_VMX_CR4_FIXED0: self.cr4_fixed0,
            Msr.IA32_VMX_CR4_FIXED1: self.cr4_fixed1,
            Msr.IA32_VMX_VMCS_ENUM: self.vmcs_enum,
            Msr.IA32_VMX_PROCBASED_CTLS2: self.secondary.msr,
            Msr.IA32_VMX_EPT_VPID_CAP: self.ept_vpid_cap,
            Msr.IA32_VMX_TRUE_PINBASED_CTLS: self.true_pin.msr,
            Msr.IA32_VMX_TRUE_PROCBASED_CTLS: self.true_primary.msr,
            Msr.IA32_VMX_TRUE_EXIT_CTLS: self.true_exit.msr,
            Msr.IA32_VMX_TRUE_ENTRY_CTLS: self.true_entry.msr,
        }

    def read_msr(self, index: int) -> int | None:
        return self.msrs().get(index)  # type: ignore[call-overload]


DEFAULT_CAPABILITIES = VmxCapabilities()
