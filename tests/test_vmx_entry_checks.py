"""Every VM-entry check fails when it should, with the SDM's outcome and the check named (SDM Vol.3C
27.2: VMfailValid(7) controls, VMfailValid(8) host state; 27.3: exit 33 | bit 31; 27.4: exit 34)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from vmxlab.vmx.api import EntryFailure, VmExit
from vmxlab.vmx.capabilities import DEFAULT_CAPABILITIES, AllowedSettings
from vmxlab.vmx.controls import (
    PIN_BASED_CTLS,
    PRIMARY_PROC_BASED_CTLS,
    SECONDARY_PROC_BASED_CTLS,
    VM_ENTRY_CTLS,
    VM_EXIT_CTLS,
)
from vmxlab.vmx.entry_checks import CONTROL_CHECKS, GUEST_CHECKS, HOST_CHECKS
from vmxlab.vmx.exit_reasons import ExitReason
from vmxlab.vmx.fields import VmcsField as F
from vmxlab.vmx.setup import build_guest_vm, set_controls
from vmxlab.vmx.vmcs import LaunchState, VmInstructionError

VMCALL = bytes([0x0F, 0x01, 0xC1])
CONTROLS, HOST, GUEST = 7, 8, 33
PIN, PRI, SEC = (
    F.PIN_BASED_VM_EXECUTION_CONTROLS,
    F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
    F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
)
VALID = 1 << 31


def bits(field: F, value: int) -> Callable:
    return lambda v: set_controls(v, field, value)


def write(**values: int) -> Callable:
    return lambda v: v.write({F[k]: x for k, x in values.items()})


def both(*fns: Callable) -> Callable:
    def apply(v) -> None:
        for fn in fns:
            fn(v)

    return apply


CAPS_VNMI = replace(
    DEFAULT_CAPABILITIES,
    pin=AllowedSettings(
        DEFAULT_CAPABILITIES.pin.must_be_one,
        DEFAULT_CAPABILITIES.pin.may_be_one | PIN_BASED_CTLS.VIRTUAL_NMIS,
    ),
)
CAPS_NMI_WINDOW = replace(
    DEFAULT_CAPABILITIES,
    primary=AllowedSettings(
        DEFAULT_CAPABILITIES.primary.must_be_one,
        DEFAULT_CAPABILITIES.primary.may_be_one | PRIMARY_PROC_BASED_CTLS.NMI_WINDOW_EXITING,
    ),
)
CAPS_64BIT_HOST = replace(
    DEFAULT_CAPABILITIES,
    exit=AllowedSettings(
        DEFAULT_CAPABILITIES.exit.must_be_one,
        DEFAULT_CAPABILITIES.exit.may_be_one | VM_EXIT_CTLS.HOST_ADDRESS_SPACE_SIZE,
    ),
)


@dataclass
class Case:
    check: str
    mutate: Callable
    outcome: int
    mode: str = "paged32"  # paged32: restricted guest with EPT; flat32/real: unrestricted guest
    caps: object = None
    qualification: int = 0
    use_ept: bool = True

    def __str__(self) -> str:
        return self.check


def int_info(vector: int, type_: int, ec: bool = False) -> int:
    return VALID | type_ << 8 | vector | (1 << 11 if ec else 0)


CASES = [
    # ---------------------------------------------------------------- 27.2.1 controls -> VMfailValid(7)
    Case("pin_based_controls_reserved_bits", write(PIN_BASED_VM_EXECUTION_CONTROLS=0), CONTROLS),
    Case("pin_based_controls_reserved_bits", bits(PIN, PIN_BASED_CTLS.PROCESS_POSTED_INTERRUPTS), CONTROLS),
    Case("primary_controls_reserved_bits", bits(PRI, PRIMARY_PROC_BASED_CTLS.USE_TPR_SHADOW), CONTROLS),
    Case(
        "primary_controls_reserved_bits",
        write(PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS=1 << 31),
        CONTROLS,
    ),
    Case("secondary_controls_reserved_bits", bits(SEC, SECONDARY_PROC_BASED_CTLS.ENABLE_PML), CONTROLS),
    Case("cr3_target_count", write(CR3_TARGET_COUNT=5), CONTROLS),
    Case(
        "io_bitmap_addresses",
        both(
            bits(PRI, PRIMARY_PROC_BASED_CTLS.USE_IO_BITMAPS), write(IO_BITMAP_A=0x1000, IO_BITMAP_B=0x2800)
        ),
        CONTROLS,
    ),
    Case(
        "io_bitmap_addresses",
        both(
            bits(PRI, PRIMARY_PROC_BASED_CTLS.USE_IO_BITMAPS), write(IO_BITMAP_A=1 << 32, IO_BITMAP_B=0x2000)
        ),
        CONTROLS,
    ),
    Case(
        "msr_bitmap_address",
        both(bits(PRI, PRIMARY_PROC_BASED_CTLS.USE_MSR_BITMAPS), write(MSR_BITMAPS=0x10)),
        CONTROLS,
    ),
    Case("virtual_nmis_need_nmi_exiting", bits(PIN, PIN_BASED_CTLS.VIRTUAL_NMIS), CONTROLS, caps=CAPS_VNMI),
    Case(
        "nmi_window_needs_virtual_nmis",
        bits(PRI, PRIMARY_PROC_BASED_CTLS.NMI_WINDOW_EXITING),
        CONTROLS,
        caps=CAPS_NMI_WINDOW,
    ),
    Case(
        "vpid_not_zero",
        both(bits(SEC, SECONDARY_PROC_BASED_CTLS.ENABLE_VPID), write(VIRTUAL_PROCESSOR_ID=0)),
        CONTROLS,
    ),
    Case(
        "eptp_valid", lambda v: v.vmwrite(F.EPT_POINTER, v.vmread(F.EPT_POINTER) & ~0x38 | 2 << 3), CONTROLS
    ),
    Case("eptp_valid", lambda v: v.vmwrite(F.EPT_POINTER, v.vmread(F.EPT_POINTER) & ~7 | 2), CONTROLS),
    Case("eptp_valid", lambda v: v.vmwrite(F.EPT_POINTER, v.vmread(F.EPT_POINTER) | 1 << 7), CONTROLS),
    Case(
        "unrestricted_guest_needs_ept",
        lambda v: set_controls(v, SEC, clear_bits=SECONDARY_PROC_BASED_CTLS.ENABLE_EPT),
        CONTROLS,
        mode="flat32",
    ),
    Case("exit_controls_reserved_bits", bits(F.VM_EXIT_CONTROLS, VM_EXIT_CTLS.LOAD_IA32_PAT), CONTROLS),
    Case(
        "preemption_timer_save_needs_timer",
        bits(F.VM_EXIT_CONTROLS, VM_EXIT_CTLS.SAVE_VMX_PREEMPTION_TIMER_VALUE),
        CONTROLS,
    ),
    Case("exit_msr_store_area", write(VM_EXIT_MSR_STORE_COUNT=1, VM_EXIT_MSR_STORE_ADDRESS=0x1008), CONTROLS),
    Case(
        "exit_msr_load_area", write(VM_EXIT_MSR_LOAD_COUNT=2, VM_EXIT_MSR_LOAD_ADDRESS=0xFFFFFFF0), CONTROLS
    ),
    Case("entry_controls_reserved_bits", bits(F.VM_ENTRY_CONTROLS, VM_ENTRY_CTLS.IA32E_MODE_GUEST), CONTROLS),
    Case("entry_interruption_type", write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(0x20, 1)), CONTROLS),
    Case("entry_interruption_type", write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(0, 7)), CONTROLS),
    Case("entry_interruption_vector", write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(3, 2)), CONTROLS),
    Case("entry_interruption_vector", write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(32, 3)), CONTROLS),
    Case("entry_deliver_error_code", write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(13, 3)), CONTROLS),
    Case(
        "entry_deliver_error_code", write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(6, 3, ec=True)), CONTROLS
    ),
    Case(
        "entry_deliver_error_code",
        write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(13, 3, ec=True)),
        CONTROLS,
        mode="real",
    ),
    Case(
        "entry_interruption_reserved_bits",
        write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(0x20, 0) | 1 << 12, GUEST_RFLAGS=0x202),
        CONTROLS,
    ),
    Case(
        "entry_exception_error_code",
        write(
            VM_ENTRY_INTERRUPTION_INFORMATION=int_info(13, 3, ec=True), VM_ENTRY_EXCEPTION_ERROR_CODE=0x10000
        ),
        CONTROLS,
    ),
    Case(
        "entry_instruction_length",
        write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(0x80, 4), VM_ENTRY_INSTRUCTION_LENGTH=0),
        CONTROLS,
    ),
    Case(
        "entry_instruction_length",
        write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(3, 6), VM_ENTRY_INSTRUCTION_LENGTH=16),
        CONTROLS,
    ),
    Case("entry_msr_load_area", write(VM_ENTRY_MSR_LOAD_COUNT=1, VM_ENTRY_MSR_LOAD_ADDRESS=0x1004), CONTROLS),
    # ---------------------------------------------------------------- 27.2.2-27.2.4 host -> VMfailValid(8)
    Case("host_cr0_fixed_bits", write(HOST_CR0=0x80000011), HOST),
    Case("host_cr0_fixed_bits", write(HOST_CR0=0x80000031 | 1 << 20), HOST),
    Case("host_cr4_fixed_bits", write(HOST_CR4=0), HOST),
    Case("host_cr4_fixed_bits", write(HOST_CR4=0x2000 | 1 << 12), HOST),
    Case(
        "host_efer",
        both(bits(F.VM_EXIT_CONTROLS, VM_EXIT_CTLS.LOAD_IA32_EFER), write(HOST_IA32_EFER=1 << 8)),
        HOST,
    ),
    Case("host_selectors_rpl_ti", write(HOST_DS_SELECTOR=0x13), HOST),
    Case("host_selectors_rpl_ti", write(HOST_TR_SELECTOR=0x1C), HOST),
    Case("host_cs_tr_not_null", write(HOST_CS_SELECTOR=0), HOST),
    Case("host_cs_tr_not_null", write(HOST_TR_SELECTOR=0), HOST),
    Case("host_ss_not_null", write(HOST_SS_SELECTOR=0), HOST),
    Case(
        "host_address_space_size",
        bits(F.VM_EXIT_CONTROLS, VM_EXIT_CTLS.HOST_ADDRESS_SPACE_SIZE),
        HOST,
        caps=CAPS_64BIT_HOST,
    ),
    # ---------------------------------------------------------------- 27.3.1 guest -> exit 33
    Case("guest_cr0_fixed_bits", write(GUEST_CR0=0x80000011), GUEST),
    Case("guest_cr0_fixed_bits", write(GUEST_CR0=0x00000031), GUEST),  # PG = 0 needs unrestricted guest
    Case("guest_cr0_fixed_bits", write(GUEST_CR0=0x80000031 | 1 << 19), GUEST),
    Case("guest_cr0_pg_needs_pe", write(GUEST_CR0=0x80000030), GUEST, mode="flat32"),
    Case("guest_cr4_fixed_bits", write(GUEST_CR4=0x10), GUEST),
    Case("guest_cr4_fixed_bits", write(GUEST_CR4=0x2010 | 1 << 9), GUEST),  # OSFXSR: no SSE on this CPU
    Case(
        "guest_debugctl",
        both(bits(F.VM_ENTRY_CONTROLS, VM_ENTRY_CTLS.LOAD_DEBUG_CONTROLS), write(GUEST_IA32_DEBUGCTL=1 << 4)),
        GUEST,
    ),
    Case(
        "guest_efer",
        both(bits(F.VM_ENTRY_CONTROLS, VM_ENTRY_CTLS.LOAD_IA32_EFER), write(GUEST_IA32_EFER=1 << 10)),
        GUEST,
    ),
    Case(
        "guest_efer",
        both(bits(F.VM_ENTRY_CONTROLS, VM_ENTRY_CTLS.LOAD_IA32_EFER), write(GUEST_IA32_EFER=1)),
        GUEST,
    ),
    Case("guest_virtual_8086", write(GUEST_RFLAGS=0x20002), GUEST),
    Case("guest_tr_ldtr_selector_ti", write(GUEST_TR_SELECTOR=0x2C), GUEST),
    Case(
        "guest_tr_ldtr_selector_ti",
        write(GUEST_LDTR_SELECTOR=0x34, GUEST_LDTR_ACCESS_RIGHTS=0x82, GUEST_LDTR_LIMIT=0xFF),
        GUEST,
    ),
    Case("guest_ss_rpl_equals_cs_rpl", write(GUEST_SS_SELECTOR=0x13), GUEST),
    Case("guest_cs_type", write(GUEST_CS_ACCESS_RIGHTS=0xC093), GUEST),  # data CS needs unrestricted guest
    Case("guest_cs_type", write(GUEST_CS_ACCESS_RIGHTS=0xC09A), GUEST),  # not accessed
    Case("guest_ss_type", write(GUEST_SS_ACCESS_RIGHTS=0xC09B), GUEST),
    Case("guest_data_segment_types", write(GUEST_DS_ACCESS_RIGHTS=0xC092), GUEST),
    Case("guest_data_segment_types", write(GUEST_FS_ACCESS_RIGHTS=0xC099), GUEST),  # execute-only code
    Case("guest_segments_s_bit", write(GUEST_ES_ACCESS_RIGHTS=0xC083), GUEST),
    Case("guest_segments_dpl", write(GUEST_CS_ACCESS_RIGHTS=0xC0FB), GUEST),  # CS.DPL 3 != SS.DPL 0
    Case("guest_segments_dpl", write(GUEST_SS_ACCESS_RIGHTS=0xC0F3, GUEST_CS_ACCESS_RIGHTS=0xC0FB), GUEST),
    Case("guest_segments_dpl", write(GUEST_GS_SELECTOR=0x13), GUEST),  # RPL 3 > DPL 0
    Case(
        "guest_segments_dpl",
        write(GUEST_SS_ACCESS_RIGHTS=0xF3, GUEST_CS_ACCESS_RIGHTS=0xFB),
        GUEST,
        mode="real",
    ),
    Case("guest_segments_present", write(GUEST_DS_ACCESS_RIGHTS=0xC013), GUEST),
    Case("guest_segments_reserved_and_limit", write(GUEST_CS_LIMIT=0xFFFFF000), GUEST),
    Case(
        "guest_segments_reserved_and_limit",
        write(GUEST_SS_LIMIT=0x100000, GUEST_SS_ACCESS_RIGHTS=0x4093),
        GUEST,
    ),
    Case("guest_segments_reserved_and_limit", write(GUEST_DS_ACCESS_RIGHTS=0xC193), GUEST),
    Case("guest_tr", write(GUEST_TR_ACCESS_RIGHTS=0x89), GUEST),
    Case("guest_tr", write(GUEST_TR_ACCESS_RIGHTS=0x1008B), GUEST),
    Case("guest_tr", write(GUEST_TR_ACCESS_RIGHTS=0x0B), GUEST),
    Case("guest_ldtr", write(GUEST_LDTR_ACCESS_RIGHTS=0x83, GUEST_LDTR_LIMIT=0xFF), GUEST),
    Case("guest_descriptor_table_limits", write(GUEST_GDTR_LIMIT=0x10000), GUEST),
    Case("guest_rflags_reserved", write(GUEST_RFLAGS=0), GUEST),
    Case("guest_rflags_reserved", write(GUEST_RFLAGS=0x8002), GUEST),
    Case("guest_rflags_vm", write(GUEST_RFLAGS=0x20002), GUEST, mode="real"),
    Case(
        "guest_rflags_if_for_external_interrupt",
        write(VM_ENTRY_INTERRUPTION_INFORMATION=int_info(0x20, 0)),
        GUEST,
    ),
    Case("guest_activity_state", write(GUEST_ACTIVITY_STATE=2), GUEST),
    Case(
        "guest_activity_state",
        write(
            GUEST_ACTIVITY_STATE=1,
            GUEST_SS_ACCESS_RIGHTS=0xC0F3,
            GUEST_CS_ACCESS_RIGHTS=0xC0FB,
            GUEST_SS_SELECTOR=0x23,
            GUEST_CS_SELECTOR=0x1B,
        ),
        GUEST,
    ),
    Case(
        "guest_activity_state",
        write(GUEST_ACTIVITY_STATE=1, GUEST_RFLAGS=0x202, GUEST_INTERRUPTIBILITY_STATE=1),
        GUEST,
    ),
    Case(
        "guest_activity_state",
        write(GUEST_ACTIVITY_STATE=1, VM_ENTRY_INTERRUPTION_INFORMATION=int_info(6, 3)),
        GUEST,
    ),
    Case("guest_interruptibility", write(GUEST_INTERRUPTIBILITY_STATE=1 << 5), GUEST),
    Case("guest_interruptibility", write(GUEST_INTERRUPTIBILITY_STATE=3, GUEST_RFLAGS=0x202), GUEST),
    Case("guest_interruptibility", write(GUEST_INTERRUPTIBILITY_STATE=1), GUEST),  # STI blocking with IF = 0
    Case("guest_interruptibility", write(GUEST_INTERRUPTIBILITY_STATE=4), GUEST),
    Case(
        "guest_interruptibility",
        write(
            GUEST_INTERRUPTIBILITY_STATE=2,
            GUEST_RFLAGS=0x202,
            VM_ENTRY_INTERRUPTION_INFORMATION=int_info(0x20, 0),
        ),
        GUEST,
    ),
    Case(
        "guest_interruptibility",
        write(GUEST_INTERRUPTIBILITY_STATE=2, VM_ENTRY_INTERRUPTION_INFORMATION=int_info(2, 2)),
        GUEST,
    ),
    Case(
        "guest_interruptibility",
        write(
            GUEST_INTERRUPTIBILITY_STATE=1,
            GUEST_RFLAGS=0x202,
            VM_ENTRY_INTERRUPTION_INFORMATION=int_info(2, 2),
        ),
        GUEST,
        qualification=3,
    ),
    Case("guest_pending_debug_exceptions", write(GUEST_PENDING_DEBUG_EXCEPTIONS=1 << 4), GUEST),
    Case(
        "guest_pending_debug_exceptions",
        write(GUEST_PENDING_DEBUG_EXCEPTIONS=0, GUEST_RFLAGS=0x302, GUEST_INTERRUPTIBILITY_STATE=1),
        GUEST,
    ),
    Case(
        "guest_pending_debug_exceptions",
        write(GUEST_PENDING_DEBUG_EXCEPTIONS=1 << 14, GUEST_ACTIVITY_STATE=1),
        GUEST,
    ),
    Case("guest_vmcs_link_pointer", write(VMCS_LINK_POINTER=0), GUEST, qualification=4),
    Case("guest_vmcs_link_pointer", write(VMCS_LINK_POINTER=0x123), GUEST, qualification=4),
    Case(
        "guest_vmcs_link_pointer",
        lambda v: v.vmwrite(F.VMCS_LINK_POINTER, v.vmptrst()),
        GUEST,
        qualification=4,
    ),
    Case("guest_pdptes", write(GUEST_CR4=0x2030, GUEST_PDPTE0=0x5003), GUEST, qualification=2),
    Case(
        "guest_pdptes",
        lambda v: (
            v.memory.write(0x7000, 8, 0x8007),
            v.memory.write(0x7008, 8, 0),
            v.write({F.GUEST_CR4: 0x2030, F.GUEST_CR3: 0x7000}),
        ),
        GUEST,
        qualification=2,
        use_ept=False,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_check_fails_with_the_sdm_outcome(case: Case) -> None:
    vm = build_guest_vm(
        VMCALL,
        mode=case.mode,
        load=0x100000 if case.mode != "real" else 0x7C00,
        stack=0x7000,
        caps=case.caps,
        use_ept=case.use_ept,
    )
    v = vm.vcpu
    assert v.explain_entry() == [], "the baseline must pass every check"
    case.mutate(v)
    result = v.vmlaunch(max_instructions=1000)
    assert isinstance(result, EntryFailure), result
    assert result.check is not None and result.check.check == case.check, str(result)
    assert result.check.sdm_section.startswith("27.") and result.check.fix and result.check.message
    if case.outcome in (CONTROLS, HOST):
        assert not result.is_exit and result.error == case.outcome
        assert v.vmread(F.VM_INSTRUCTION_ERROR) == case.outcome
        assert v.cpu.vmx is None and v.vmcs.launch_state is LaunchState.CLEAR
    else:
        assert result.reason == ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE
        assert v.vmread(F.EXIT_REASON) == 33 | 1 << 31
        assert v.vmread(F.EXIT_QUALIFICATION) == case.qualification == result.qualification
        assert v.cpu.cr0 & 0x80000001 == 0x80000001 and v.cpu.segs[1].selector == 0x08  # host state loaded
        assert v.vmcs.launch_state is LaunchState.CLEAR and v.cpu.vmx is None
    assert any(f.check == case.check for f in v.explain_entry())


def test_every_check_has_a_failing_case() -> None:
    names = {c.__name__ for c in CONTROL_CHECKS + HOST_CHECKS + GUEST_CHECKS}
    assert names == {c.check for c in CASES}


def test_controls_are_checked_before_host_state() -> None:
    v = build_guest_vm(VMCALL, mode="paged32").vcpu
    v.write({F.HOST_CR4: 0, F.CR3_TARGET_COUNT: 9, F.GUEST_RFLAGS: 0})
    r = v.vmlaunch()
    assert r.error == VmInstructionError.VM_ENTRY_WITH_INVALID_CONTROL_FIELDS
    assert {f.check for f in v.explain_entry()} == {
        "cr3_target_count",
        "host_cr4_fixed_bits",
        "guest_rflags_reserved",
    }


def test_unrestricted_guest_relaxes_pe_and_pg() -> None:
    v = build_guest_vm(bytes([0x0F, 0x01, 0xC1]), mode="real", load=0x7C00, stack=0x7000).vcpu
    r = v.vmlaunch()
    assert isinstance(r, VmExit) and r.reason == ExitReason.VMCALL and r.guest_rip == 0x7C00


def test_msr_loading_failure_is_exit_34_with_the_entry_number() -> None:
    v = build_guest_vm(VMCALL, mode="paged32").vcpu
    area = 0x8000
    v.memory.write(area, 8, 0x174)  # IA32_SYSENTER_CS: loads fine
    v.memory.write(area + 8, 8, 0x10)
    v.memory.write(area + 16, 8, 0xDEAD)  # no such MSR: WRMSR would #GP
    v.memory.write(area + 24, 8, 0)
    v.write({F.VM_ENTRY_MSR_LOAD_ADDRESS: area, F.VM_ENTRY_MSR_LOAD_COUNT: 2})
    r = v.vmlaunch()
    assert isinstance(r, EntryFailure) and r.reason == ExitReason.VM_ENTRY_FAILURE_MSR_LOADING
    assert r.qualification == 2 and v.vmread(F.EXIT_REASON) == 34 | 1 << 31
    assert v.vmcs.launch_state is LaunchState.CLEAR
    v.write({F.VM_ENTRY_MSR_LOAD_COUNT: 1})
    r = v.vmlaunch()
    assert isinstance(r, VmExit) and r.reason == ExitReason.VMCALL
    assert v.vmread(F.GUEST_IA32_SYSENTER_CS) == 0x10  # loaded at entry, saved at exit
