"""The Python hypervisor API: VMXON against the root state, VMfail outcomes of VMLAUNCH/VMRESUME, the
exit values, guests that stop without an exit, and the VMCS set-up helpers."""

from __future__ import annotations

import pytest
from test_vmx_exits import EAX, guest, run

from vmxlab.cpu.core import CPU
from vmxlab.cpu.faults import Vector
from vmxlab.machine.machine import Console, Machine, StopReason
from vmxlab.vmx.api import EntryFailure, GuestStopped, VmExit, VmxCpu
from vmxlab.vmx.capabilities import Msr
from vmxlab.vmx.exit_reasons import ExitReason as R
from vmxlab.vmx.fields import VmcsField as F
from vmxlab.vmx.setup import build_guest_vm
from vmxlab.vmx.vmcs import VmInstructionError, VmxInstructionFailed, VmxStatus


def fresh() -> VmxCpu:
    m = Machine.create(4, Console(echo=False))
    v = VmxCpu(CPU(m))
    v.memory.write(0x1000, 4, v.caps.revision_id)
    v.memory.write(0x2000, 4, v.caps.revision_id)
    return v


def test_vmxon_uses_the_root_state() -> None:
    v = fresh()
    v.root.cr4 = 0
    r = v.vmxon(0x1000)
    assert r.status is VmxStatus.FAULT and r.fault_vector == Vector.UD
    v.root.cr4 = 0x2000
    v.root.feature_control = 0
    assert v.vmxon(0x1000).fault_vector == Vector.GP
    v.root.feature_control = 5
    assert v.vmxon(0x1000).ok and v.state.in_vmx_operation


def test_vmread_raises_on_failure_and_vmwrite_returns_the_outcome() -> None:
    v = fresh()
    v.vmxon(0x1000).check()
    with pytest.raises(VmxInstructionFailed):
        v.vmread(F.GUEST_RIP)  # no current VMCS: VMfailInvalid
    v.vmclear(0x2000).check()
    v.vmptrld(0x2000).check()
    assert v.vmptrst() == 0x2000
    assert v.vmwrite(F.GUEST_RIP, 5).ok and v.vmread(F.GUEST_RIP) == 5
    r = v.vmwrite(F.EXIT_REASON, 1)
    assert not r and r.error == VmInstructionError.VMWRITE_TO_READ_ONLY_VMCS_COMPONENT
    with pytest.raises(VmxInstructionFailed) as info:
        v.vmread(0x1234)
    assert info.value.result.error == 12
    assert v.capability_msr(Msr.IA32_VMX_BASIC) & 0x7FFFFFFF == v.caps.revision_id


def test_vmlaunch_vmresume_launch_state_errors() -> None:
    v = build_guest_vm(bytes([0x0F, 0x01, 0xC1])).vcpu
    r = v.vmresume()
    assert isinstance(r, EntryFailure) and r.error == VmInstructionError.VMRESUME_WITH_NON_LAUNCHED_VMCS
    assert v.vmread(F.VM_INSTRUCTION_ERROR) == 5
    assert isinstance(v.vmlaunch(), VmExit)
    r = v.vmlaunch()
    assert r.error == VmInstructionError.VMLAUNCH_WITH_NON_CLEAR_VMCS and r.result.rflags(0x2) == 0x42
    assert isinstance(v.vmresume(), VmExit)
    v.vmclear(v.vmptrst()).check()
    r = v.vmresume()
    assert (
        r.result.status is VmxStatus.FAIL_INVALID and r.result.rflags(0x2) == 0x3
    )  # VMCLEAR left no current VMCS


def test_exit_value_fields_and_text() -> None:
    v = guest("mov dx, 0x80\nout dx, al", primary=1 << 24)
    e = run(v)
    assert e.name == "IO_INSTRUCTION" and e.guest_rip == 0x100004 and e.guest_rsp == 0x80000
    assert "IoQualification" in str(e) and "30 IO_INSTRUCTION" in str(e)
    assert v.last_exit is e


def test_guest_stopped_then_continued() -> None:
    v = guest("spin:\ninc eax\ncmp eax, 5000\njne spin\nvmcall")
    r = v.vmlaunch(max_instructions=1000)
    assert isinstance(r, GuestStopped) and r.stop.reason == StopReason.BUDGET and v.in_guest
    with pytest.raises(RuntimeError):
        v.vmresume()
    e = v.continue_guest()
    assert isinstance(e, VmExit) and e.reason == R.VMCALL and v.regs[EAX] == 5000 and not v.in_guest


def test_debug_exit_device_stops_the_guest_without_a_vm_exit() -> None:
    v = guest("mov al, 3\nout 0xF4, al\nvmcall")
    r = v.vmlaunch()
    assert isinstance(r, GuestStopped) and r.stop.reason == StopReason.DEBUG_EXIT


def test_host_state_after_exit() -> None:
    v = guest("vmcall")
    run(v)
    cpu = v.cpu
    assert cpu.vmx is None and cpu.ept is None and cpu.cpl == 0
    assert cpu.cr0 == v.vmread(F.HOST_CR0) and cpu.cr3 == v.vmread(F.HOST_CR3)
    assert cpu.segs[1].selector == 0x08 and cpu.segs[1].ar == 0xC09B and cpu.tr.ar == 0x8B
    assert cpu.ldtr.unusable and cpu.get_eflags() == 0x2 and cpu.dr[7] == 0x400


def test_explain_entry_lists_every_failure() -> None:
    v = build_guest_vm(bytes([0xF4])).vcpu
    v.write({F.GUEST_RFLAGS: 0, F.HOST_CS_SELECTOR: 0, F.CR3_TARGET_COUNT: 7})
    checks = [f.check for f in v.explain_entry()]
    assert checks == ["cr3_target_count", "host_cs_tr_not_null", "guest_rflags_reserved"]
    assert all("SDM Vol.3C 27." in str(f) for f in v.explain_entry())


@pytest.mark.parametrize("mode", ["real", "flat32", "paged32"])
def test_helpers_fill_a_valid_vmcs(mode: str) -> None:
    load = 0x7C00 if mode == "real" else 0x100000
    v = build_guest_vm(
        bytes([0x0F, 0xA2]), mode=mode, load=load, stack=0x7000, use_ept=mode != "paged32"
    ).vcpu
    assert v.explain_entry() == []
    e = v.vmlaunch()
    assert isinstance(e, VmExit) and e.reason == R.CPUID and e.guest_rip == load


def test_helpers_hide_vmx_from_the_guest() -> None:
    """CR4.VMXE reads as 0 and CR0.NE as in a real-mode CPU; writes that keep them neither exit nor #GP."""
    v = guest(
        "mov eax, cr0\nmov ebx, eax\nor eax, 1\nmov cr0, eax\n"
        "mov ecx, cr4\nxor edx, edx\nmov cr4, edx\nvmcall",
        mode="real",
    )
    e = run(v)
    assert e.reason == R.VMCALL
    regs = v.regs
    assert regs[3] & 0xFFFF == 0x10 and regs[1] == 0  # EBX: CR0 as the guest sees it; ECX: CR4
    assert (
        v.vmread(F.GUEST_CR0) & 0x21 == 0x21 and v.vmread(F.GUEST_CR4) == 0x2000
    )  # PE set, NE and VMXE kept


def test_trace_events() -> None:
    from vmxlab.trace.events import ListSink, Tracer

    v = guest("cpuid\nvmcall")
    sink = ListSink()
    Tracer([sink]).attach(v.cpu)
    e = run(v)
    v.vmwrite(F.GUEST_RFLAGS, 0)
    v.vmresume()
    entry, exit_, failure = sink.of("vm-entry"), sink.of("vm-exit"), sink.of("vm-entry-failure")
    assert len(entry) == 1 and entry[0]["launch"] and entry[0]["vmx"] == "non-root"
    assert (
        exit_[0]["reason"] == 10
        and exit_[0]["reason_name"] == "CPUID"
        and exit_[0]["guest"]["rip"] == e.guest_rip
    )
    assert failure[0]["reason"] == 33 and failure[0]["check"] == "guest_rflags_reserved" and failure[0]["sdm"]
