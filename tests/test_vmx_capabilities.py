"""The capability MSRs agree with themselves and with what the model implements (SDM Vol.3C App. A)."""

from __future__ import annotations

import pytest

from vmxlab.cpu.ops.system import CR4_SUPPORTED
from vmxlab.vmx.capabilities import (
    DEFAULT_CAPABILITIES,
    ENTRY_DEFAULT1,
    EPT_VPID_CAP,
    EXIT_DEFAULT1,
    PINBASED_DEFAULT1,
    PROCBASED_DEFAULT1,
    Msr,
)
from vmxlab.vmx.controls import (
    PIN_BASED_CTLS,
    PRIMARY_PROC_BASED_CTLS,
    SECONDARY_PROC_BASED_CTLS,
    VM_ENTRY_CTLS,
    VM_EXIT_CTLS,
)

C = DEFAULT_CAPABILITIES
MSRS = C.msrs()
CONTROL_MSRS = [
    Msr.IA32_VMX_PINBASED_CTLS,
    Msr.IA32_VMX_PROCBASED_CTLS,
    Msr.IA32_VMX_EXIT_CTLS,
    Msr.IA32_VMX_ENTRY_CTLS,
    Msr.IA32_VMX_PROCBASED_CTLS2,
    Msr.IA32_VMX_TRUE_PINBASED_CTLS,
    Msr.IA32_VMX_TRUE_PROCBASED_CTLS,
    Msr.IA32_VMX_TRUE_EXIT_CTLS,
    Msr.IA32_VMX_TRUE_ENTRY_CTLS,
]

#: the controls the model implements, by name -- allowed-1 must be exactly these plus default-1 bits
IMPLEMENTED = {
    Msr.IA32_VMX_PINBASED_CTLS: PIN_BASED_CTLS.EXTERNAL_INTERRUPT_EXITING
    | PIN_BASED_CTLS.NMI_EXITING
    | PIN_BASED_CTLS.ACTIVATE_VMX_PREEMPTION_TIMER,
    Msr.IA32_VMX_PROCBASED_CTLS: PRIMARY_PROC_BASED_CTLS.INTERRUPT_WINDOW_EXITING
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
    Msr.IA32_VMX_PROCBASED_CTLS2: SECONDARY_PROC_BASED_CTLS.ENABLE_EPT
    | SECONDARY_PROC_BASED_CTLS.DESCRIPTOR_TABLE_EXITING
    | SECONDARY_PROC_BASED_CTLS.ENABLE_VPID
    | SECONDARY_PROC_BASED_CTLS.WBINVD_EXITING
    | SECONDARY_PROC_BASED_CTLS.UNRESTRICTED_GUEST,
    Msr.IA32_VMX_EXIT_CTLS: VM_EXIT_CTLS.SAVE_DEBUG_CONTROLS
    | VM_EXIT_CTLS.ACKNOWLEDGE_INTERRUPT_ON_EXIT
    | VM_EXIT_CTLS.SAVE_IA32_EFER
    | VM_EXIT_CTLS.LOAD_IA32_EFER
    | VM_EXIT_CTLS.SAVE_VMX_PREEMPTION_TIMER_VALUE,
    Msr.IA32_VMX_ENTRY_CTLS: VM_ENTRY_CTLS.LOAD_DEBUG_CONTROLS | VM_ENTRY_CTLS.LOAD_IA32_EFER,
}
DEFAULT1 = {
    Msr.IA32_VMX_PINBASED_CTLS: PINBASED_DEFAULT1,
    Msr.IA32_VMX_PROCBASED_CTLS: PROCBASED_DEFAULT1,
    Msr.IA32_VMX_EXIT_CTLS: EXIT_DEFAULT1,
    Msr.IA32_VMX_ENTRY_CTLS: ENTRY_DEFAULT1,
    Msr.IA32_VMX_PROCBASED_CTLS2: 0,
}
TRUE_OF = {
    Msr.IA32_VMX_TRUE_PINBASED_CTLS: Msr.IA32_VMX_PINBASED_CTLS,
    Msr.IA32_VMX_TRUE_PROCBASED_CTLS: Msr.IA32_VMX_PROCBASED_CTLS,
    Msr.IA32_VMX_TRUE_EXIT_CTLS: Msr.IA32_VMX_EXIT_CTLS,
    Msr.IA32_VMX_TRUE_ENTRY_CTLS: Msr.IA32_VMX_ENTRY_CTLS,
}


@pytest.mark.parametrize("msr", CONTROL_MSRS, ids=lambda m: m.name)
def test_allowed0_is_within_allowed1(msr: Msr) -> None:
    value = MSRS[msr]
    allowed0, allowed1 = value & 0xFFFFFFFF, value >> 32
    assert allowed0 & ~allowed1 == 0, "a control that must be 1 must be allowed to be 1"


@pytest.mark.parametrize("msr", list(IMPLEMENTED), ids=lambda m: m.name)
def test_allowed1_is_exactly_the_implemented_controls_plus_default1(msr: Msr) -> None:
    value = MSRS[msr]
    assert value >> 32 == IMPLEMENTED[msr] | DEFAULT1[msr]
    assert value & 0xFFFFFFFF == DEFAULT1[msr], "non-TRUE MSRs report every default-1 bit as must-be-1"


@pytest.mark.parametrize("true_msr", list(TRUE_OF), ids=lambda m: m.name)
def test_true_msrs_only_relax_default1_bits(true_msr: Msr) -> None:
    plain = MSRS[TRUE_OF[true_msr]]
    true = MSRS[true_msr]
    assert true >> 32 == plain >> 32
    assert true & 0xFFFFFFFF & ~plain == 0
    relaxed = plain & ~true & 0xFFFFFFFF
    assert relaxed & ~DEFAULT1[TRUE_OF[true_msr]] == 0


def test_relaxed_default1_bits_are_the_implemented_ones() -> None:
    assert MSRS[Msr.IA32_VMX_PROCBASED_CTLS] & ~MSRS[Msr.IA32_VMX_TRUE_PROCBASED_CTLS] & 0xFFFFFFFF == (
        PRIMARY_PROC_BASED_CTLS.CR3_LOAD_EXITING | PRIMARY_PROC_BASED_CTLS.CR3_STORE_EXITING
    )
    assert (
        MSRS[Msr.IA32_VMX_EXIT_CTLS] & ~MSRS[Msr.IA32_VMX_TRUE_EXIT_CTLS] & 0xFFFFFFFF
        == VM_EXIT_CTLS.SAVE_DEBUG_CONTROLS
    )
    assert (
        MSRS[Msr.IA32_VMX_ENTRY_CTLS] & ~MSRS[Msr.IA32_VMX_TRUE_ENTRY_CTLS] & 0xFFFFFFFF
        == VM_ENTRY_CTLS.LOAD_DEBUG_CONTROLS
    )


def test_no_intel64_controls() -> None:
    """Without Intel 64: no 64-bit host, no IA-32e guest, no CR8 exiting (SDM Vol.3C A.3-A.5)."""
    assert not MSRS[Msr.IA32_VMX_EXIT_CTLS] >> 32 & VM_EXIT_CTLS.HOST_ADDRESS_SPACE_SIZE
    assert not MSRS[Msr.IA32_VMX_ENTRY_CTLS] >> 32 & VM_ENTRY_CTLS.IA32E_MODE_GUEST
    assert not MSRS[Msr.IA32_VMX_PROCBASED_CTLS] >> 32 & (
        PRIMARY_PROC_BASED_CTLS.CR8_LOAD_EXITING | PRIMARY_PROC_BASED_CTLS.CR8_STORE_EXITING
    )


def test_basic() -> None:
    basic = MSRS[Msr.IA32_VMX_BASIC]
    assert basic & 0x7FFFFFFF == C.revision_id and not basic & 1 << 31
    assert (basic >> 32) & 0x1FFF == 4096
    assert basic >> 48 & 1, "physical addresses for VMX structures limited to 32 bits (no Intel 64)"
    assert basic >> 49 & 1 == 0, "no dual-monitor treatment"
    assert (basic >> 50) & 0xF == 6, "write-back"
    assert basic >> 54 & 1 and basic >> 55 & 1


def test_misc() -> None:
    misc = MSRS[Msr.IA32_VMX_MISC]
    assert misc & 0x1F == C.preemption_timer_rate
    assert (misc >> 6) & 7 == 1, "HLT is the only extra activity state"
    assert (misc >> 16) & 0x1FF == 4
    assert not misc >> 29 & 1, "VM-exit information fields are read-only"


def test_fixed_bits() -> None:
    assert MSRS[Msr.IA32_VMX_CR0_FIXED0] == 0x80000021  # PE NE PG
    assert MSRS[Msr.IA32_VMX_CR0_FIXED0] & ~MSRS[Msr.IA32_VMX_CR0_FIXED1] == 0
    assert MSRS[Msr.IA32_VMX_CR4_FIXED0] == 0x2000  # VMXE
    assert MSRS[Msr.IA32_VMX_CR4_FIXED1] == CR4_SUPPORTED | 0x2000


def test_ept_vpid_cap_matches_the_translator() -> None:
    cap = MSRS[Msr.IA32_VMX_EPT_VPID_CAP]
    for bit in (
        EPT_VPID_CAP.PAGE_WALK_LENGTH_4,
        EPT_VPID_CAP.MEMORY_TYPE_WB,
        EPT_VPID_CAP.PDE_2MB_PAGES,
        EPT_VPID_CAP.PDPTE_1GB_PAGES,
        EPT_VPID_CAP.INVEPT,
        EPT_VPID_CAP.ACCESSED_DIRTY_FLAGS,
        EPT_VPID_CAP.EXECUTE_ONLY,
        EPT_VPID_CAP.INVVPID,
    ):
        assert cap & bit, bit.name
    assert not cap & EPT_VPID_CAP.ADVANCED_EPT_VIOLATION_INFO


def test_adjust() -> None:
    assert C.true_primary.adjust(0) == 0x04006172
    assert C.true_primary.adjust(PRIMARY_PROC_BASED_CTLS.USE_TPR_SHADOW) == 0x04006172  # unsupported dropped
    assert C.pin.adjust(PIN_BASED_CTLS.NMI_EXITING) == 0x1E
