"""The guest's own rings keep working in VMX non-root operation: privilege faults come before VM
exits (SDM Vol.3C 26.1.1), and system calls between guest rings cause no exits at all."""

from __future__ import annotations

from test_vmx_events import GATE, INT_GATE_DPL0, INT_GATE_DPL3
from test_vmx_exits import EBX, ECX, EDX, guest, run

from vmxlab.cpu.faults import Vector
from vmxlab.vmx.controls import PRIMARY_PROC_BASED_CTLS as P
from vmxlab.vmx.exit_reasons import ExitReason as R
from vmxlab.vmx.fields import VmcsField as F

#: ring 0 sets up #GP and INT 0x80 handlers, IRETs to ring 3 at user:, which runs USER
RING3 = (
    GATE
    + """
        GATE 13, gp_handler, {gp:#x}
        GATE 0x80, syscall, {sc:#x}
        push 0x23               ; SS
        push 0x7F000            ; ESP
        push 0x002              ; EFLAGS: IOPL 0, IF 0
        push 0x1B               ; CS
        push user
        iret
user:
        {user}
        vmcall                  ; reached at ring 3
gp_handler:
        mov ebx, [esp]          ; error code
        mov ecx, [esp+8]        ; CS of the faulting code
        mov edx, 0x6B6B
        vmcall
syscall:
        mov edx, [esp+4]        ; caller's CS
        mov ebx, 0x5C5C
        iret
"""
)


def ring3_guest(user: str, **kw):
    return guest(RING3.format(user=user, gp=INT_GATE_DPL0, sc=INT_GATE_DPL3), **kw)


def test_in_at_ring3_with_iopl0_is_gp_in_the_guest_not_an_exit() -> None:
    """Demo step 4: the guest's protection acts first, even with unconditional I/O exiting."""
    v = ring3_guest("in al, 0x60", primary=P.UNCONDITIONAL_IO_EXITING)
    e = run(v)
    assert e.reason == R.VMCALL, "no I/O exit: #GP was delivered inside the guest"
    assert v.regs[EDX] == 0x6B6B and v.regs[EBX] == 0 and v.regs[ECX] == 0x1B
    assert v.vmread(F.GUEST_CS_SELECTOR) == 0x08  # the handler runs at ring 0


def test_in_at_ring0_exits() -> None:
    e = run(guest("in al, 0x60", primary=P.UNCONDITIONAL_IO_EXITING))
    assert e.reason == R.IO_INSTRUCTION


def test_cli_and_hlt_at_ring3_are_gp() -> None:
    v = ring3_guest("cli")
    assert run(v).reason == R.VMCALL and v.regs[EDX] == 0x6B6B
    v = ring3_guest("hlt", primary=P.HLT_EXITING)  # HLT exiting on, but HLT at CPL 3 faults first
    assert run(v).reason == R.VMCALL and v.regs[EDX] == 0x6B6B
    v = ring3_guest("mov ecx, 0x10\nrdmsr")  # RDMSR at CPL 3: #GP, not exit 31
    assert run(v).reason == R.VMCALL and v.regs[EDX] == 0x6B6B


def test_system_calls_between_rings_cause_no_exits() -> None:
    """Demo step 7: INT 0x80 from ring 3 through a DPL-3 gate, IRET back: no VM exit in between."""
    v = ring3_guest("int 0x80\nint 0x80\nint 0x80", primary=P.HLT_EXITING | P.UNCONDITIONAL_IO_EXITING)
    e = run(v)
    assert e.reason == R.VMCALL and v.regs[EBX] == 0x5C5C and v.regs[EDX] == 0x1B
    assert v.vmread(F.GUEST_CS_SELECTOR) == 0x1B and v.vmread(F.GUEST_SS_ACCESS_RIGHTS) >> 5 & 3 == 3


def test_int_through_dpl0_gate_from_ring3_is_gp() -> None:
    v = guest(RING3.format(user="int 0x80", gp=INT_GATE_DPL0, sc=INT_GATE_DPL0))
    e = run(v)
    assert e.reason == R.VMCALL and v.regs[EDX] == 0x6B6B and v.regs[EBX] == 0x80 * 8 + 2


def test_ring3_guest_exit_saves_cpl3_state() -> None:
    v = ring3_guest("cpuid")
    e = run(v)
    assert e.reason == R.CPUID and v.vmread(F.GUEST_CS_SELECTOR) == 0x1B
    assert v.vmread(F.GUEST_SS_ACCESS_RIGHTS) == 0xC0F3 and v.vmread(F.GUEST_RSP) == 0x7F000
    v.skip_instruction(e)
    e = run(v, launch=False)  # re-entry at CPL 3 passes the checks and continues in ring 3
    assert e.reason == R.VMCALL and v.vmread(F.GUEST_CS_SELECTOR) == 0x1B


def test_exception_bitmap_sees_the_ring3_gp() -> None:
    v = ring3_guest("in al, 0x60")
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << Vector.GP)
    e = run(v)
    assert (
        e.reason == R.EXCEPTION_OR_NMI
        and e.interruption.vector == Vector.GP
        and e.interruption_error_code == 0
    )
    assert v.vmread(F.GUEST_CS_SELECTOR) == 0x1B
