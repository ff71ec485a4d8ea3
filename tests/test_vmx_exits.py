"""Every implemented VM exit: reason, qualification, instruction length and instruction information
checked against the SDM's definitions (SDM Vol.3C 26.1, 28.2; Tables 28-1..28-14), with small NASM
guests entered through the Python API."""

from __future__ import annotations

import pytest

from vmxlab.assemble import assemble
from vmxlab.cpu.faults import Vector
from vmxlab.guestkit import write_snippet
from vmxlab.vmx.api import GuestStopped, VmExit
from vmxlab.vmx.controls import PRIMARY_PROC_BASED_CTLS as P
from vmxlab.vmx.controls import SECONDARY_PROC_BASED_CTLS as S
from vmxlab.vmx.exit_reasons import ExitReason as R
from vmxlab.vmx.fields import VmcsField as F
from vmxlab.vmx.qualifications import (
    ControlRegisterAccess,
    CrAccessType,
    DescriptorTableIdentity,
    InstructionInfo,
    IoInstructionInfo,
    IoQualification,
    LdtrTrIdentity,
    MovDrQualification,
    TaskSwitchQualification,
    TaskSwitchSource,
)
from vmxlab.vmx.setup import build_guest_vm, set_controls

PRI, SEC = F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
LOAD = {"real": 0x7C00}
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
ES, CS, SS, DS = range(4)


def guest(body: str, mode: str = "flat32", primary: int = 0, secondary: int = 0, engine: str = "fast", **kw):
    """Assemble ``body`` and return a VmxCpu ready to VMLAUNCH it (controls adjusted)."""
    code = assemble(write_snippet(body, "real" if mode == "real" else "pm32")).read_bytes()
    vm = build_guest_vm(
        code,
        mode=mode,
        load=LOAD.get(mode, 0x100000),
        stack=0x7000 if mode == "real" else 0x80000,
        engine=engine,
        **kw,
    )
    if primary:
        set_controls(vm.vcpu, PRI, primary)
    if secondary:
        set_controls(vm.vcpu, SEC, secondary)
    return vm.vcpu


def run(v, launch: bool = True, **kw) -> VmExit:
    r = v.vmlaunch(max_instructions=100_000, **kw) if launch else v.vmresume(max_instructions=100_000, **kw)
    assert isinstance(r, VmExit), str(r)
    return r


def resume(v, e: VmExit) -> VmExit:
    v.skip_instruction(e)
    return run(v, launch=False)


# ------------------------------------------------------------------ unconditional exits (SDM Vol.3C 26.1.2)


@pytest.mark.parametrize("engine", ["fast", "interp"])
def test_cpuid_always_exits(engine: str) -> None:
    v = guest("mov eax, 7\ncpuid\nvmcall", engine=engine)
    e = run(v)
    assert (e.reason, e.guest_rip, e.instruction_length, e.qualification) == (R.CPUID, 0x100005, 2, 0)
    assert v.regs[EAX] == 7  # nothing executed: the VMM emulates CPUID
    e = resume(v, e)
    assert e.reason == R.VMCALL and e.instruction_length == 3 and e.guest_rip == 0x100007


def test_cpuid_exits_from_ring3_and_real_mode() -> None:
    v = guest("cpuid", mode="flat32", cpl=3)
    assert run(v).reason == R.CPUID
    v = guest("cpuid", mode="real")
    e = run(v)
    assert e.reason == R.CPUID and e.guest_rip == 0x7C00 and e.instruction_length == 2


def test_invd_exits_unconditionally() -> None:
    e = run(guest("invd"))
    assert e.reason == R.INVD and e.instruction_length == 2


# ------------------------------------------------------------------ simple controls


def test_hlt_exits_only_with_hlt_exiting() -> None:
    v = guest("hlt", primary=P.HLT_EXITING)
    e = run(v)
    assert (e.reason, e.instruction_length) == (R.HLT, 1)
    assert v.vmread(F.GUEST_ACTIVITY_STATE) == 0  # the exit came before HLT executed
    v = guest("hlt")
    r = v.vmlaunch(max_instructions=1000)
    assert isinstance(r, GuestStopped) and r.stop.reason.value == "halted"
    assert v.in_guest


def test_invlpg_qualification_is_the_linear_address() -> None:
    e = run(guest("invlpg [0x12345678]", primary=P.INVLPG_EXITING))
    assert (e.reason, e.qualification, e.instruction_length) == (R.INVLPG, 0x12345678, 7)
    e = run(guest("mov ebx, 0x1000\ninvlpg [fs:ebx+0x20]", primary=P.INVLPG_EXITING))
    assert e.qualification == 0x1020


def test_rdpmc_privilege_fault_comes_first() -> None:
    e = run(guest("rdpmc", primary=P.RDPMC_EXITING))
    assert e.reason == R.RDPMC and e.instruction_length == 2
    v = guest("rdpmc", primary=P.RDPMC_EXITING, cpl=3)
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << Vector.GP)
    e = run(v)
    assert e.reason == R.EXCEPTION_OR_NMI and e.interruption.vector == Vector.GP


def test_rdtsc_exiting_and_tsc_offsetting() -> None:
    e = run(guest("rdtsc", primary=P.RDTSC_EXITING))
    assert e.reason == R.RDTSC and e.instruction_length == 2
    v = guest(
        "rdtsc\nmov ebx, eax\nmov esi, edx\nmov ecx, 0x10\nrdmsr\nvmcall",
        primary=P.USE_TSC_OFFSETTING | P.USE_MSR_BITMAPS,
    )
    v.write({F.TSC_OFFSET: 0x1234_0000_0000, F.MSR_BITMAPS: 0x1F00000})  # an all-zero bitmap: no MSR exits
    e = run(v)
    assert e.reason == R.VMCALL
    assert v.regs[ESI] == 0x1234 and v.regs[EDX] == 0x1234  # RDTSC and RDMSR(IA32_TSC) both offset
    assert v.cpu.icount + v.cpu.idle_ticks < 1 << 32


def test_pause_and_wbinvd() -> None:
    assert run(guest("pause", primary=P.PAUSE_EXITING)).reason == R.PAUSE
    assert isinstance(guest("pause\nvmcall").vmlaunch(), VmExit)
    e = run(guest("wbinvd", secondary=S.WBINVD_EXITING))
    assert e.reason == R.WBINVD_OR_WBNOINVD and e.instruction_length == 2
    assert run(guest("wbinvd\nvmcall")).reason == R.VMCALL


# ------------------------------------------------------------------ VMX instructions (18-27, 50, 53)


def _info(e: VmExit) -> InstructionInfo:
    return InstructionInfo.decode(e.instruction_information)


def test_vmcall_vmlaunch_vmresume_vmxoff() -> None:
    for text, reason, length in (
        ("vmcall", R.VMCALL, 3),
        ("vmlaunch", R.VMLAUNCH, 3),
        ("vmresume", R.VMRESUME, 3),
        ("vmxoff", R.VMXOFF, 3),
    ):
        e = run(guest(text))
        assert (e.reason, e.instruction_length, e.qualification, e.instruction_information) == (
            reason,
            length,
            0,
            0,
        )


def test_vmclear_instruction_information() -> None:
    e = run(guest("mov ebx, 0x1000\nmov esi, 2\nvmclear [ebx+esi*4+0x10]"))
    assert (
        e.reason == R.VMCLEAR and e.qualification == 0x10 and e.instruction_length == 6
    )  # 66 0F C7 /6 SIB disp8
    i = _info(e)
    assert (i.scale, i.address_size, i.register_operand, i.segment) == (2, 4, False, DS)
    assert (i.index, i.index_invalid, i.base, i.base_invalid) == (ESI, False, EBX, False)


def test_vmptrld_vmptrst_vmxon() -> None:
    e = run(guest("vmptrld [eax]"))
    i = _info(e)
    assert e.reason == R.VMPTRLD and (i.base, i.base_invalid, i.index_invalid) == (EAX, False, True)
    e = run(guest("vmptrst [0x2000]"))
    i = _info(e)
    assert e.reason == R.VMPTRST and e.qualification == 0x2000 and i.base_invalid and i.index_invalid
    e = run(guest("vmxon [ebp-8]"))
    i = _info(e)
    assert e.reason == R.VMXON and e.qualification == 0xFFFFFFF8 and (i.base, i.segment) == (EBP, SS)


def test_vmread_vmwrite_register_and_memory_forms() -> None:
    e = run(guest("vmread eax, ecx"))
    i = _info(e)
    assert e.reason == R.VMREAD and i.register_operand and (i.reg1, i.reg2) == (EAX, ECX)
    e = run(guest("vmwrite edx, [es:edi+0x40]"))
    i = _info(e)
    assert e.reason == R.VMWRITE and not i.register_operand and (i.reg2, i.base, i.segment) == (EDX, EDI, ES)
    assert e.qualification == 0x40
    e = run(guest("vmwrite esi, ebx"))
    i = _info(e)
    assert i.register_operand and (i.reg1, i.reg2) == (EBX, ESI)


def test_invept_invvpid() -> None:
    e = run(guest("invept ecx, [eax]"))
    i = _info(e)
    assert e.reason == R.INVEPT and i.reg2 == ECX and i.base == EAX and e.instruction_length == 5
    e = run(guest("invvpid edx, [ebx+8]"))
    i = _info(e)
    assert e.reason == R.INVVPID and i.reg2 == EDX and e.qualification == 8


def test_vmx_instructions_priority_ud_in_real_mode_exit_at_cpl3() -> None:
    v = guest("vmptrld [0x100]", mode="real")
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << Vector.UD)
    e = run(v)
    assert e.reason == R.EXCEPTION_OR_NMI and e.interruption.vector == Vector.UD
    assert run(guest("vmcall", mode="real")).reason == R.VMCALL  # VMCALL exits in any mode
    assert run(guest("vmclear [0x3000]", cpl=3)).reason == R.VMCLEAR  # exit comes before the CPL check


# ------------------------------------------------------------------ control registers (28)


def _cr(e: VmExit) -> ControlRegisterAccess:
    assert e.reason == R.CONTROL_REGISTER_ACCESS
    return e.decoded  # type: ignore[return-value]


def test_cr0_guest_host_mask_and_read_shadow() -> None:
    """kvm-unit-tests "CR shadowing": reads return the shadow, writing the shadow value does not exit,
    writing a different value of an owned bit exits with qualification 0x600 (mov cr0, esi)."""
    v = guest("""
        mov eax, cr0          ; shadow: TS=1 MP=0 though the real CR0 has TS=0 MP=1
        mov ebx, eax
        mov esi, eax
        mov cr0, esi          ; the shadow value again: no exit
        mov edi, cr0
        and esi, ~8           ; clear the owned TS bit: exits
        mov cr0, esi
    """)
    real = v.vmread(F.GUEST_CR0) | 0x2  # MP = 1
    v.write({F.GUEST_CR0: real, F.CR0_GUEST_HOST_MASK: 0xA, F.CR0_READ_SHADOW: 0x8})
    e = run(v)
    assert e.qualification == 0x600 and _cr(e) == ControlRegisterAccess(0, CrAccessType.MOV_TO_CR, ESI)
    assert v.regs[EBX] == (real & ~0xA) | 0x8 == v.regs[EDI]
    assert v.vmread(F.GUEST_CR0) == real  # owned bits kept their real value
    assert e.instruction_length == 3


def test_cr4_mask_write_and_gp_for_unsupported_values() -> None:
    v = guest("mov esi, 0x2008\nmov cr4, esi")
    v.write({F.CR4_GUEST_HOST_MASK: 0xC, F.CR4_READ_SHADOW: 0})  # TSD, DE owned by the VMM
    e = run(v)
    assert e.qualification == 0x604
    # CR4.VMXE is fixed to 1 in VMX operation: clearing it (not owned by the VMM) is #GP(0)
    v = guest("xor eax, eax\nmov cr4, eax")
    v.write({F.EXCEPTION_BITMAP: 1 << Vector.GP, F.CR4_GUEST_HOST_MASK: 0})
    e = run(v)
    assert (
        e.reason == R.EXCEPTION_OR_NMI
        and e.interruption.vector == Vector.GP
        and e.interruption_error_code == 0
    )
    # owned by the VMM: the write goes through and VMXE keeps its value
    v = guest("mov eax, 0x10\nmov cr4, eax\nmov ebx, cr4\nvmcall")
    v.write({F.CR4_GUEST_HOST_MASK: 0x2000, F.CR4_READ_SHADOW: 0})
    e = run(v)
    assert e.reason == R.VMCALL and v.vmread(F.GUEST_CR4) == 0x2010 and v.regs[EBX] == 0x10


def test_cr3_load_and_store_exiting_with_targets() -> None:
    v = guest(
        "mov eax, 0x5000\nmov cr3, eax\nmov ebx, 0x6000\nmov cr3, ebx\nmov edx, cr3\nvmcall",
        mode="paged32",
        primary=P.CR3_LOAD_EXITING | P.CR3_STORE_EXITING,
    )
    v.write({F.CR3_TARGET_COUNT: 1, F.CR3_TARGET_VALUE0: 0x5000})
    v.memory.write_bytes(0x5000, v.memory.read_bytes(0x4000, 4096))  # a second page directory
    e = run(v)
    assert e.qualification == 0x3 | EBX << 8 and _cr(e).access_type == CrAccessType.MOV_TO_CR
    assert v.vmread(F.GUEST_CR3) == 0x5000  # the target value loaded without an exit
    v.vmwrite(F.GUEST_CR3, 0x6000)
    v.memory.write_bytes(0x6000, v.memory.read_bytes(0x4000, 4096))
    e = resume(v, e)
    assert e.qualification == 0x13 | EDX << 8 and _cr(e).access_type == CrAccessType.MOV_FROM_CR


def test_clts() -> None:
    v = guest("clts")
    v.write({F.GUEST_CR0: v.vmread(F.GUEST_CR0) | 8, F.CR0_GUEST_HOST_MASK: 8, F.CR0_READ_SHADOW: 8})
    e = run(v)
    assert e.qualification == 0x20 and _cr(e).access_type == CrAccessType.CLTS and e.instruction_length == 2
    v = guest("clts\nvmcall")  # owned TS with shadow 0: no exit, TS stays set
    v.write({F.GUEST_CR0: v.vmread(F.GUEST_CR0) | 8, F.CR0_GUEST_HOST_MASK: 8, F.CR0_READ_SHADOW: 0})
    assert run(v).reason == R.VMCALL and v.vmread(F.GUEST_CR0) & 8
    v = guest("clts\nvmcall")
    v.vmwrite(F.GUEST_CR0, v.vmread(F.GUEST_CR0) | 8)
    assert run(v).reason == R.VMCALL and not v.vmread(F.GUEST_CR0) & 8


def test_lmsw_register_and_memory() -> None:
    v = guest("mov ax, 0xF\nlmsw ax")
    v.write({F.CR0_GUEST_HOST_MASK: 0x4, F.CR0_READ_SHADOW: 0})  # EM owned, shadow EM = 0
    e = run(v)
    q = _cr(e)
    assert q.access_type == CrAccessType.LMSW and q.lmsw_source_data == 0xF and not q.lmsw_operand_memory
    assert e.instruction_length == 3
    v = guest("mov word [0x3000], 4\nlmsw [0x3000]")
    v.write({F.CR0_GUEST_HOST_MASK: 0x4, F.CR0_READ_SHADOW: 0})
    e = run(v)
    q = _cr(e)
    assert q.lmsw_operand_memory and q.lmsw_source_data == 4 and e.guest_linear_address == 0x3000
    v = guest("mov ax, 0x2\nlmsw ax\nvmcall")  # MP not owned: loads, no exit
    v.write({F.CR0_GUEST_HOST_MASK: 0x4, F.CR0_READ_SHADOW: 0})
    assert run(v).reason == R.VMCALL and v.vmread(F.GUEST_CR0) & 0xF == 0x3


def test_smsw_reads_the_shadow() -> None:
    v = guest("smsw eax\nvmcall")
    v.write({F.CR0_GUEST_HOST_MASK: 0x8, F.CR0_READ_SHADOW: 0x8})
    run(v)
    assert v.regs[EAX] & 8


# ------------------------------------------------------------------ MOV DR (29)


def test_mov_dr() -> None:
    v = guest("mov eax, 0x400\nmov dr7, eax", primary=P.MOV_DR_EXITING)
    e = run(v)
    assert e.reason == R.MOV_DR and e.decoded == MovDrQualification(7, False, EAX) and e.qualification == 0x7
    e = run(guest("mov ebx, dr1", primary=P.MOV_DR_EXITING))
    assert e.qualification == 0x311 and e.instruction_length == 3
    v = guest("mov ebx, dr1", primary=P.MOV_DR_EXITING, cpl=3)  # #GP at CPL 3 comes first
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << Vector.GP)
    assert run(v).reason == R.EXCEPTION_OR_NMI


# ------------------------------------------------------------------ I/O (30)


def _io(e: VmExit) -> IoQualification:
    assert e.reason == R.IO_INSTRUCTION
    return e.decoded  # type: ignore[return-value]


def test_io_unconditional_exiting_qualifications() -> None:
    v = guest("in al, 0x60\nmov dx, 0x3F8\nout dx, eax\nin ax, dx", primary=P.UNCONDITIONAL_IO_EXITING)
    e = run(v)
    assert e.qualification == 0x00600048 and _io(e) == IoQualification(1, True, False, False, True, 0x60)
    assert e.instruction_length == 2
    e = resume(v, e)
    assert e.qualification == 0x03F80003 and e.instruction_length == 1
    e = resume(v, e)
    assert _io(e) == IoQualification(2, True, False, False, False, 0x3F8) and e.instruction_length == 2


def test_io_without_exiting_reaches_the_device() -> None:
    v = guest("mov al, 'k'\nout 0xE9, al\nvmcall")
    assert run(v).reason == R.VMCALL
    assert bytes(v.cpu.machine.console.captured) == b"k"


def test_io_bitmaps() -> None:
    """kvm-unit-tests "I/O bitmap": A covers 0-7FFF, B 8000-FFFF; a partially covered access exits; an
    access wrapping past FFFF exits; "use I/O bitmaps" overrides unconditional I/O exiting."""
    v = guest(
        """
        mov dx, 0x5000
        in al, dx            ; bit set in A: exit
        mov dx, 0x5001
        in al, dx            ; clear: no exit
        mov dx, 0x9000
        out dx, al           ; bit set in B: exit
        mov dx, 0x4FFE
        in eax, dx           ; 4FFE-5001 includes 5000: exit
        mov dx, 0xFFFF
        in eax, dx           ; wraps: exit
        vmcall
    """,
        primary=P.USE_IO_BITMAPS | P.UNCONDITIONAL_IO_EXITING,
    )
    a, b = 0x1F00000, 0x1F01000
    v.memory.write(a + (0x5000 >> 3), 1, 1)
    v.memory.write(b + ((0x9000 - 0x8000) >> 3), 1, 1)
    v.write({F.IO_BITMAP_A: a, F.IO_BITMAP_B: b})
    ports = []
    e = run(v)
    while e.reason == R.IO_INSTRUCTION:
        ports.append((_io(e).port, _io(e).size))
        e = resume(v, e)
    assert e.reason == R.VMCALL
    assert ports == [(0x5000, 1), (0x9000, 1), (0x4FFE, 4), (0xFFFF, 4)]


def test_string_io_information() -> None:
    v = guest(
        """
        mov esi, 0x3000
        mov ecx, 2
        mov dx, 0x80
        rep outsb
        mov edi, 0x3100
        insw
    """,
        primary=P.UNCONDITIONAL_IO_EXITING,
    )
    e = run(v)
    q = _io(e)
    assert q.string and q.rep and not q.direction_in and q.port == 0x80 and q.size == 1
    assert e.guest_linear_address == 0x3000 and e.instruction_length == 2
    assert IoInstructionInfo.decode(e.instruction_information) == IoInstructionInfo(4, DS)
    v.vmwrite(F.GUEST_RIP, v.vmread(F.GUEST_RIP) + 2)
    v.regs[ECX] = 0
    e = run(v, launch=False)
    q = _io(e)
    assert q.string and not q.rep and q.direction_in and q.size == 2 and e.guest_linear_address == 0x3100
    assert IoInstructionInfo.decode(e.instruction_information).address_size == 4


# ------------------------------------------------------------------ RDMSR / WRMSR (31, 32)


def test_msr_exits_and_bitmaps() -> None:
    v = guest("mov ecx, 0x174\nrdmsr\nwrmsr")
    e = run(v)
    assert (e.reason, e.instruction_length) == (R.RDMSR, 2)  # no MSR bitmaps: every RDMSR exits
    assert resume(v, e).reason == R.WRMSR
    v = guest(
        """
        mov ecx, 0x174
        rdmsr                  ; read-low bit clear: no exit
        wrmsr                  ; write-low bit set: exit
        mov ecx, 0xC0000080
        rdmsr                  ; read-high bit set: exit
        wrmsr                  ; write-high clear: no exit
        mov ecx, 0x40000000
        rdmsr                  ; outside both ranges: exit
        vmcall
    """,
        primary=P.USE_MSR_BITMAPS,
    )
    bm = 0x1F00000
    v.memory.write(bm + 2048 + (0x174 >> 3), 1, 1 << (0x174 & 7))
    v.memory.write(bm + 1024 + (0x80 >> 3), 1, 1 << (0x80 & 7))
    v.vmwrite(F.MSR_BITMAPS, bm)
    seen = []
    e = run(v)
    while e.reason in (R.RDMSR, R.WRMSR):
        seen.append((e.reason, v.regs[ECX]))
        e = resume(v, e)
    assert seen == [(R.WRMSR, 0x174), (R.RDMSR, 0xC0000080), (R.RDMSR, 0x40000000)]


def test_rdmsr_of_unknown_msr_exits_before_gp() -> None:
    e = run(guest("mov ecx, 0x12345\nrdmsr"))
    assert e.reason == R.RDMSR


# ------------------------------------------------------------------ descriptor-table exiting (46, 47)


def test_descriptor_table_exits_46() -> None:
    v = guest(
        "mov ebx, 0x3000\nsgdt [ebx+4]\nsidt [0x3100]\nlgdt [eax]\nlidt [ss:esi*4]\no16 lgdt [eax]",
        secondary=S.DESCRIPTOR_TABLE_EXITING,
    )
    e = run(v)
    i = _info(e)
    assert e.reason == R.ACCESS_TO_GDTR_OR_IDTR and e.qualification == 4 and e.instruction_length == 4
    assert i.identity == DescriptorTableIdentity.SGDT and i.operand_size_32 and i.address_size == 4
    assert (i.base, i.base_invalid, i.index_invalid, i.segment) == (EBX, False, True, DS)
    e = resume(v, e)
    assert _info(e).identity == DescriptorTableIdentity.SIDT and e.qualification == 0x3100
    e = resume(v, e)
    assert _info(e).identity == DescriptorTableIdentity.LGDT and _info(e).base == EAX
    e = resume(v, e)
    i = _info(e)
    assert i.identity == DescriptorTableIdentity.LIDT and (i.index, i.scale, i.segment) == (ESI, 2, SS)
    assert i.base_invalid
    e = resume(v, e)
    assert _info(e).identity == DescriptorTableIdentity.LGDT and not _info(e).operand_size_32


def test_descriptor_table_exits_47() -> None:
    v = guest(
        "sldt ax\nstr [0x3000]\nmov ax, 0\nlldt ax\nmov cx, 0x28\nltr cx",
        secondary=S.DESCRIPTOR_TABLE_EXITING,
    )
    e = run(v)
    i = _info(e)
    assert e.reason == R.ACCESS_TO_LDTR_OR_TR and i.register_operand and i.reg1 == EAX
    assert i.identity == LdtrTrIdentity.SLDT
    e = resume(v, e)
    assert (
        _info(e).identity == LdtrTrIdentity.STR
        and not _info(e).register_operand
        and e.qualification == 0x3000
    )
    e = resume(v, e)
    assert _info(e).identity == LdtrTrIdentity.LLDT
    e = resume(v, e)
    assert _info(e).identity == LdtrTrIdentity.LTR and _info(e).reg1 == ECX


def test_sgdt_without_exiting_is_legal_at_ring3() -> None:
    v = guest("sgdt [0x3000]\nvmcall", cpl=3)
    assert run(v).reason == R.VMCALL
    assert v.memory.read(0x3002, 4) == 0x1000  # the guest sees its GDT base (GuestTables.gdt)


# ------------------------------------------------------------------ task switch (9), triple fault (2)


def test_task_switch_always_exits() -> None:
    v = guest("jmp 0x30:0")
    tables = 0x1000
    # a second, available 32-bit TSS at selector 0x30 (base 0x3800, limit 0x67)
    v.memory.write(tables + 0x30, 8, 0x67 | 0x3800 << 16 | 0x89 << 40)
    v.vmwrite(F.GUEST_GDTR_LIMIT, 0x37)
    e = run(v)
    assert e.reason == R.TASK_SWITCH
    assert e.decoded == TaskSwitchQualification(0x30, TaskSwitchSource.JMP) and e.instruction_length == 7


def test_triple_fault_exits() -> None:
    v = guest("ud2")
    v.vmwrite(F.GUEST_IDTR_LIMIT, 0)  # #UD cannot be delivered, nor #GP, nor #DF
    e = run(v)
    assert e.reason == R.TRIPLE_FAULT and e.guest_rip == 0x100000


@pytest.mark.parametrize("engine", ["fast", "interp"])
def test_exit_from_a_hot_block_is_precise(engine: str) -> None:
    """An exit raised inside a block the fast engine has compiled (after 64 runs) still reports the
    exiting instruction and the registers before it."""
    v = guest(
        """
        xor ebx, ebx
        mov ecx, 1000
    again:
        mov dx, bx
        in al, dx
        inc ebx
        loop again
        vmcall
    """,
        primary=P.USE_IO_BITMAPS,
        engine=engine,
    )
    a = 0x1F00000
    v.memory.write(a + (300 >> 3), 1, 1 << (300 & 7))
    v.write({F.IO_BITMAP_A: a, F.IO_BITMAP_B: a + 0x1000})
    e = run(v)
    assert e.reason == R.IO_INSTRUCTION and _io(e).port == 300 and e.guest_rip == 0x10000A
    assert v.regs[EBX] == 300 and v.regs[ECX] == 700 and e.instruction_length == 1
    e = resume(v, e)
    assert e.reason == R.VMCALL and v.regs[EBX] == 1000


#: exits of one guest run on Bochs 2.7 (corei7_haswell_4770) by a 32-bit hypervisor through refrun
#: (reason, qualification, length, instruction information); Bochs leaves bit 11 (operand size) of
#: the reason-46 information 0 where the SDM defines it: the two differing values carry the SDM's bit 11
BOCHS_CROSS_CHECK = [
    (10, 0x00000000, 2, None),
    (30, 0x00600048, 2, None),
    (30, 0x03F80003, 1, None),
    (28, 0x00000600, 3, None),
    (28, 0x00000313, 3, None),
    (28, 0x00000003, 3, None),
    (29, 0x00000007, 3, None),
    (46, 0x00000004, 4, 0x01C18080 | 1 << 11),
    (47, 0x00000000, 4, 0x00000400),
    (47, 0x00000000, 3, 0x10C18080),
    (14, 0x12345678, 7, None),
    (28, 0x00080030, 3, None),
    (48, 0x00000181, 5, None),
    (48, 0x000001AA, 10, None),
    (46, 0x00000100, 9, 0x180D0082 | 1 << 11),
    (12, 0x00000000, 1, None),
    (18, 0x00000000, 3, None),
]


def test_exits_match_bochs() -> None:
    from vmxlab.vmx.ept import EPT_EXECUTE, EPT_READ, EptBuilder

    v = guest(
        """
        cpuid
        in al, 0x60
        mov dx, 0x3F8
        out dx, eax
        mov esi, cr0
        or esi, 8
        mov cr0, esi
        mov ebx, cr3
        mov eax, 0x4000
        mov cr3, eax
        mov eax, 0x400
        mov dr7, eax
        mov ebx, 0x3000
        sgdt [ebx+4]
        sldt ax
        mov ecx, 0x3000
        str [ecx]
        invlpg [0x12345678]
        mov ax, 8
        lmsw ax
        mov eax, [0x6000]
        mov dword [0x5000], 1
        mov ebx, 0x3000
        sidt [ss:ebx*4+0x100]
        hlt
        vmcall
    """,
        mode="paged32",
        ept_page_size=4096,
        primary=P.HLT_EXITING
        | P.INVLPG_EXITING
        | P.CR3_LOAD_EXITING
        | P.CR3_STORE_EXITING
        | P.MOV_DR_EXITING
        | P.UNCONDITIONAL_IO_EXITING,
        secondary=S.DESCRIPTOR_TABLE_EXITING,
    )
    v.write({F.CR0_GUEST_HOST_MASK: 8, F.CR0_READ_SHADOW: 0})
    ept = EptBuilder.from_eptp(v.memory, v.vmread(F.EPT_POINTER))
    ept.protect(0x5000, EPT_READ | EPT_EXECUTE)
    ept.unmap(0x6000)
    seen = []
    e = run(v)
    while True:
        seen.append((e.raw_reason, e.qualification, e.instruction_length, e.instruction_information))
        if e.reason == R.VMCALL:
            break
        if e.reason == R.EPT_VIOLATION:  # give the page back and retry the instruction
            page = e.guest_physical_address & ~0xFFF
            ept.set_entry(page, 1, page | 0x37)
            e = run(v, launch=False)
        else:
            e = resume(v, e)
    assert [(r, q, n) for r, q, n, _ in seen] == [(r, q, n) for r, q, n, _ in BOCHS_CROSS_CHECK]
    for (r, _, _, info), (_, _, _, expected) in zip(seen, BOCHS_CROSS_CHECK):
        if expected is not None:
            assert info == expected, (r, hex(info), hex(expected))
