"""The VMCS and the VMX instructions: field encodings, VMREAD/VMWRITE access rules, VM-instruction
error numbers, VMsucceed/VMfailInvalid/VMfailValid and their RFLAGS effects (SDM Vol.3C 25.11.2,
31.2, 31.4 Table 31-1)."""

from __future__ import annotations

import pytest

from vmxlab.cpu.faults import Vector
from vmxlab.cpu.flags import CF, OF, PF, SF, ZF
from vmxlab.machine.memory import PhysicalMemory
from vmxlab.vmx import fields as fl
from vmxlab.vmx.capabilities import DEFAULT_CAPABILITIES, FEATURE_CONTROL, VMCS_REVISION_ID
from vmxlab.vmx.fields import FieldType, FieldWidth, VmcsField, high
from vmxlab.vmx.vmcs import (
    INVALID_VMCS_POINTER,
    InstructionContext,
    InveptType,
    InvvpidType,
    LaunchState,
    VmInstructionError,
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

E = VmInstructionError
ROOT = InstructionContext(cr0=0x80000031, cr4=0x2000)
VMXON_REGION, VMCS_A, VMCS_B = 0x1000, 0x2000, 0x3000


@pytest.fixture
def mem() -> PhysicalMemory:
    m = PhysicalMemory(1 << 20)
    for addr in (VMXON_REGION, VMCS_A, VMCS_B):
        m.write(addr, 4, VMCS_REVISION_ID)
    return m


@pytest.fixture
def vmx(mem: PhysicalMemory) -> VmxState:
    state = VmxState()
    assert vmxon(state, ROOT, mem, VMXON_REGION).ok
    return state


def current(vmx: VmxState, mem: PhysicalMemory, addr: int = VMCS_A) -> VmxState:
    assert vmclear(vmx, ROOT, mem, addr).ok
    assert vmptrld(vmx, ROOT, mem, addr).ok
    return vmx


# ------------------------------------------------------------------ encodings


@pytest.mark.parametrize("field", list(VmcsField))
def test_width_and_type_come_from_the_encoding(field: VmcsField) -> None:
    """Encoding bits 14:13 width, 11:10 type, bit 0 access, bit 12 zero (SDM Vol.3C Table 25-21)."""
    assert field & 1 == 0 and not field & (1 << 12) and field >> 15 == 0
    assert field.width == FieldWidth((field >> 13) & 3)
    assert field.type == FieldType((field >> 10) & 3)
    prefix = {
        FieldType.CONTROL: (
            "VIRTUAL",
            "IO_",
            "MSR",
            "VM_",
            "TSC",
            "APIC",
            "EPT",
            "VMREAD",
            "VMWRITE",
            "PIN",
            "PRIMARY",
            "SECONDARY",
            "EXCEPTION",
            "PAGE",
            "CR",
            "TPR",
            "PLE",
        ),
        FieldType.EXIT_INFORMATION: ("GUEST_PHYSICAL", "VM_", "EXIT", "IDT", "IO_", "GUEST_LINEAR"),
        FieldType.GUEST_STATE: ("GUEST", "VMCS_LINK", "VMX_PREEMPTION"),
        FieldType.HOST_STATE: ("HOST",),
    }[field.type]
    assert field.name.startswith(prefix), field.name


def test_well_known_encodings() -> None:
    """Spot checks against SDM Vol.3C Appendix B."""
    assert VmcsField.GUEST_RIP == 0x681E and VmcsField.EXIT_REASON == 0x4402
    assert VmcsField.EPT_POINTER == 0x201A and VmcsField.GUEST_PHYSICAL_ADDRESS == 0x2400
    assert VmcsField.VM_EXIT_INSTRUCTION_INFORMATION == 0x440E and VmcsField.HOST_RIP == 0x6C16
    assert high(VmcsField.TSC_OFFSET) == 0x2011
    with pytest.raises(ValueError):
        high(VmcsField.GUEST_RIP)


def test_vmcs_enum_reports_highest_index() -> None:
    assert DEFAULT_CAPABILITIES.vmcs_enum >> 1 == max((f >> 1) & 0x1FF for f in VmcsField)


# ------------------------------------------------------------------ VMREAD / VMWRITE


@pytest.mark.parametrize("field", [f for f in VmcsField if f.type != FieldType.EXIT_INFORMATION])
def test_every_writable_field_round_trips_truncated_to_its_width(vmx, mem, field: VmcsField) -> None:
    current(vmx, mem)
    pattern = 0xA5A5_5A5A_F00D_BEEF
    assert vmwrite(vmx, ROOT, field, pattern).ok
    expected = pattern & ((1 << field.bits) - 1)
    assert vmread(vmx, ROOT, field).value == expected
    assert (
        field.bits
        == {FieldWidth.BITS16: 16, FieldWidth.BITS32: 32, FieldWidth.BITS64: 64, FieldWidth.NATURAL: 32}[
            field.width
        ]
    )  # natural width is 32 bits without Intel 64


@pytest.mark.parametrize("field", [f for f in VmcsField if f.type == FieldType.EXIT_INFORMATION])
def test_exit_information_fields_are_read_only(vmx, mem, field: VmcsField) -> None:
    current(vmx, mem)
    r = vmwrite(vmx, ROOT, field, 1)
    assert r.status is VmxStatus.FAIL_VALID and r.error == E.VMWRITE_TO_READ_ONLY_VMCS_COMPONENT
    assert vmread(vmx, ROOT, VmcsField.VM_INSTRUCTION_ERROR).value == 13
    assert vmread(vmx, ROOT, field).ok


@pytest.mark.parametrize(
    "field", [f for f in VmcsField if f.width == FieldWidth.BITS64 and f.type != FieldType.EXIT_INFORMATION]
)
def test_high_access_aliases_the_upper_half(vmx, mem, field: VmcsField) -> None:
    current(vmx, mem)
    vmwrite(vmx, ROOT, field, 0x1111_2222_3333_4444)
    assert vmread(vmx, ROOT, high(field)).value == 0x1111_2222
    assert vmwrite(vmx, ROOT, high(field), 0xDEAD_BEEF_9999_8888).ok  # only the low 32 bits of the source
    assert vmread(vmx, ROOT, field).value == 0x9999_8888_3333_4444
    assert vmread(vmx, ROOT, field, operand_bits=32).value == 0x3333_4444


@pytest.mark.parametrize(
    "encoding", [0x0001, 0x0803, 0x4001, 0x681F, 0x6C18, 0x1000, 0x8000, 0x2030, 0x4830, 0xFFFFFFFF, 0x0002]
)
def test_unsupported_components_fail_with_error_12(vmx, mem, encoding: int) -> None:
    """High access of a non-64-bit field, reserved bits 12 and 31:15, indexes without a field."""
    current(vmx, mem)
    for r in (vmread(vmx, ROOT, encoding), vmwrite(vmx, ROOT, encoding, 0)):
        assert r.status is VmxStatus.FAIL_VALID
        assert r.error == E.VMREAD_VMWRITE_UNSUPPORTED_VMCS_COMPONENT
    assert vmread(vmx, ROOT, VmcsField.VM_INSTRUCTION_ERROR).value == 12


def test_vmread_vmwrite_without_current_vmcs_fail_invalid(vmx) -> None:
    for r in (vmread(vmx, ROOT, VmcsField.GUEST_RIP), vmwrite(vmx, ROOT, VmcsField.GUEST_RIP, 0)):
        assert r.status is VmxStatus.FAIL_INVALID and r.error is None


def test_rflags_effects() -> None:
    """SDM Vol.3C 31.2: succeed clears CF PF AF ZF SF OF; FailInvalid sets CF; FailValid sets ZF."""
    from vmxlab.vmx.vmcs import VmxResult

    dirty = 0x2 | CF | PF | ZF | SF | OF | (1 << 9)
    assert VmxResult(VmxStatus.SUCCEED).rflags(dirty) == 0x2 | (1 << 9)
    assert VmxResult(VmxStatus.FAIL_INVALID).rflags(dirty) == 0x2 | CF | (1 << 9)
    assert VmxResult(VmxStatus.FAIL_VALID, E.VMLAUNCH_WITH_NON_CLEAR_VMCS).rflags(dirty) == 0x2 | ZF | (
        1 << 9
    )
    assert VmxResult(VmxStatus.FAULT, fault_vector=13).rflags(dirty) == dirty


# ------------------------------------------------------------------ VMXON


def test_vmxon_checks(mem) -> None:
    """SDM Vol.3C 31.3 VMXON: #UD (real mode, CR4.VMXE=0), #GP(0) (CPL, fixed bits, FEATURE_CONTROL),
    VMfailInvalid (alignment, width, revision), VMfail(15) in VMX root operation."""
    s = VmxState()
    r = vmxon(s, InstructionContext(cr0=0x10, cr4=0x2000), mem, VMXON_REGION)
    assert r.status is VmxStatus.FAULT and r.fault_vector == Vector.UD
    assert vmxon(s, InstructionContext(cr0=0x80000031, cr4=0), mem, VMXON_REGION).fault_vector == Vector.UD
    assert (
        vmxon(s, InstructionContext(0x80000031, 0x2000, cpl=3), mem, VMXON_REGION).fault_vector == Vector.GP
    )
    no_ne = vmxon(s, InstructionContext(0x80000011, 0x2000), mem, VMXON_REGION)
    assert no_ne.fault_vector == Vector.GP and no_ne.fault_error_code == 0
    assert (
        vmxon(
            s,
            InstructionContext(0x80000031, 0x2000, feature_control=FEATURE_CONTROL.ENABLE_VMX_OUTSIDE_SMX),
            mem,
            VMXON_REGION,
        ).fault_vector
        == Vector.GP
    )
    assert (
        vmxon(
            s, InstructionContext(0x80000031, 0x2000, feature_control=FEATURE_CONTROL.LOCK), mem, VMXON_REGION
        ).fault_vector
        == Vector.GP
    )
    assert vmxon(s, ROOT, mem, VMXON_REGION + 0x10).status is VmxStatus.FAIL_INVALID
    assert vmxon(s, ROOT, mem, 1 << 32).status is VmxStatus.FAIL_INVALID
    mem.write(VMCS_B, 4, VMCS_REVISION_ID ^ 1)
    assert vmxon(s, ROOT, mem, VMCS_B).status is VmxStatus.FAIL_INVALID
    mem.write(VMCS_B, 4, VMCS_REVISION_ID | 1 << 31)
    assert vmxon(s, ROOT, mem, VMCS_B).status is VmxStatus.FAIL_INVALID
    assert not s.in_vmx_operation
    assert vmxon(s, ROOT, mem, VMXON_REGION).ok and s.in_vmx_operation
    assert s.current_vmcs_pointer == INVALID_VMCS_POINTER
    assert (
        vmxon(s, ROOT, mem, VMXON_REGION).status is VmxStatus.FAIL_INVALID
    )  # no current VMCS: VMfailInvalid
    current(s, mem)
    r = vmxon(s, ROOT, mem, VMXON_REGION)
    assert r.status is VmxStatus.FAIL_VALID and r.error == E.VMXON_IN_VMX_ROOT_OPERATION == 15


def test_instructions_outside_vmx_operation_are_ud(mem) -> None:
    s = VmxState()
    for r in (
        vmxoff(s, ROOT),
        vmclear(s, ROOT, mem, VMCS_A),
        vmptrld(s, ROOT, mem, VMCS_A),
        vmptrst(s, ROOT),
        vmread(s, ROOT, 0),
        vmwrite(s, ROOT, 0, 0),
        vmlaunch_vmresume_checks(s, ROOT, True),
    ):
        assert r is not None and r.status is VmxStatus.FAULT and r.fault_vector == Vector.UD


def test_instructions_at_cpl3_are_gp(vmx, mem) -> None:
    ring3 = InstructionContext(0x80000031, 0x2000, cpl=3)
    for r in (vmxoff(vmx, ring3), vmclear(vmx, ring3, mem, VMCS_A), vmptrst(vmx, ring3)):
        assert r.fault_vector == Vector.GP and r.fault_error_code == 0


# ------------------------------------------------------------------ VMCLEAR / VMPTRLD / VMPTRST


def test_vmclear_errors(vmx, mem) -> None:
    current(vmx, mem, VMCS_B)
    for addr in (VMCS_A + 8, 1 << 33):
        r = vmclear(vmx, ROOT, mem, addr)
        assert r.status is VmxStatus.FAIL_VALID and r.error == E.VMCLEAR_WITH_INVALID_PHYSICAL_ADDRESS == 2
    r = vmclear(vmx, ROOT, mem, VMXON_REGION)
    assert r.error == E.VMCLEAR_WITH_VMXON_POINTER == 3
    assert vmread(vmx, ROOT, VmcsField.VM_INSTRUCTION_ERROR).value == 3


def test_vmclear_of_current_vmcs_makes_it_invalid(vmx, mem) -> None:
    current(vmx, mem)
    assert vmptrst(vmx, ROOT).value == VMCS_A
    assert vmclear(vmx, ROOT, mem, VMCS_A).ok
    assert vmptrst(vmx, ROOT).value == INVALID_VMCS_POINTER
    assert vmclear(vmx, ROOT, mem, VMCS_A + 1).status is VmxStatus.FAIL_INVALID  # VMfail without current VMCS


def test_vmptrld_errors(vmx, mem) -> None:
    current(vmx, mem, VMCS_B)
    assert vmptrld(vmx, ROOT, mem, VMCS_A | 0x800).error == E.VMPTRLD_WITH_INVALID_PHYSICAL_ADDRESS == 9
    assert vmptrld(vmx, ROOT, mem, VMXON_REGION).error == E.VMPTRLD_WITH_VMXON_POINTER == 10
    mem.write(VMCS_A, 4, 0x1234)
    assert vmptrld(vmx, ROOT, mem, VMCS_A).error == E.VMPTRLD_WITH_INCORRECT_VMCS_REVISION_IDENTIFIER == 11
    mem.write(VMCS_A, 4, VMCS_REVISION_ID | 1 << 31)  # shadow-VMCS indicator without VMCS shadowing
    assert vmptrld(vmx, ROOT, mem, VMCS_A).error == 11
    assert vmptrst(vmx, ROOT).value == VMCS_B  # failed loads leave the current VMCS alone


def test_vmcss_keep_their_fields(vmx, mem) -> None:
    current(vmx, mem, VMCS_A)
    vmwrite(vmx, ROOT, VmcsField.GUEST_RIP, 0xAAAA)
    current(vmx, mem, VMCS_B)
    vmwrite(vmx, ROOT, VmcsField.GUEST_RIP, 0xBBBB)
    assert vmptrld(vmx, ROOT, mem, VMCS_A).ok
    assert vmread(vmx, ROOT, VmcsField.GUEST_RIP).value == 0xAAAA


def test_vmxoff_leaves_vmx_operation(vmx, mem) -> None:
    current(vmx, mem)
    assert vmxoff(vmx, ROOT).ok
    assert not vmx.in_vmx_operation and vmx.current is None
    assert vmptrst(vmx, ROOT).fault_vector == Vector.UD


# ------------------------------------------------------------------ VMLAUNCH / VMRESUME basic checks


def test_launch_state_errors(vmx, mem) -> None:
    assert vmlaunch_vmresume_checks(vmx, ROOT, True).status is VmxStatus.FAIL_INVALID
    current(vmx, mem)
    r = vmlaunch_vmresume_checks(vmx, ROOT, False)
    assert r.error == E.VMRESUME_WITH_NON_LAUNCHED_VMCS == 5
    assert vmlaunch_vmresume_checks(vmx, ROOT, True) is None
    vmx.current.launch_state = LaunchState.LAUNCHED
    assert vmlaunch_vmresume_checks(vmx, ROOT, True).error == E.VMLAUNCH_WITH_NON_CLEAR_VMCS == 4
    assert vmlaunch_vmresume_checks(vmx, ROOT, False) is None
    mov_ss = InstructionContext(0x80000031, 0x2000, blocked_by_mov_ss=True)
    assert (
        vmlaunch_vmresume_checks(vmx, mov_ss, False).error == E.VM_ENTRY_WITH_EVENTS_BLOCKED_BY_MOV_SS == 26
    )
    assert vmclear(vmx, ROOT, mem, VMCS_A).ok and vmptrld(vmx, ROOT, mem, VMCS_A).ok
    assert vmx.current.launch_state is LaunchState.CLEAR


def test_invept_invvpid_operands(vmx, mem) -> None:
    current(vmx, mem)
    from vmxlab.vmx.ept import make_eptp

    assert invept(vmx, ROOT, InveptType.ALL_CONTEXT, 0).ok
    assert invept(vmx, ROOT, InveptType.SINGLE_CONTEXT, make_eptp(0x5000)).ok
    assert invept(vmx, ROOT, 3, 0).error == E.INVALID_OPERAND_TO_INVEPT_INVVPID == 28
    assert invept(vmx, ROOT, InveptType.SINGLE_CONTEXT, 0x5000).error == 28  # walk length 1: invalid EPTP
    assert invvpid(vmx, ROOT, InvvpidType.SINGLE_CONTEXT, 1).ok
    assert invvpid(vmx, ROOT, InvvpidType.SINGLE_CONTEXT, 0).error == 28
    assert invvpid(vmx, ROOT, InvvpidType.ALL_CONTEXT, 0).ok
    assert invvpid(vmx, ROOT, 4, 1).error == 28
    assert invvpid(vmx, ROOT, InvvpidType.INDIVIDUAL_ADDRESS, 1 << 16).error == 28


def test_field_helpers() -> None:
    assert fl.name_of(0x2011) == "TSC_OFFSET_HIGH" and fl.name_of(0x681E) == "GUEST_RIP"
    assert fl.supported(0x2011) and not fl.supported(0x681F)
