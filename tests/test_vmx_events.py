"""Events in VMX non-root operation: the exception bitmap (#PF mask/match), event injection through the
guest IDT under the guest's privilege rules, IDT-vectoring information, interrupt-window exiting,
external interrupts and NMIs, the VMX-preemption timer (SDM Vol.3C 26.2, 27.6, 28.2.2-28.2.4)."""

from __future__ import annotations

from test_vmx_exits import EBX, ECX, guest, resume, run

from vmxlab.cpu.faults import Vector
from vmxlab.cpu.ops.system import read_tsc
from vmxlab.vmx.api import GuestStopped
from vmxlab.vmx.capabilities import PREEMPTION_TIMER_RATE
from vmxlab.vmx.controls import PIN_BASED_CTLS as PIN
from vmxlab.vmx.controls import PRIMARY_PROC_BASED_CTLS as P
from vmxlab.vmx.controls import VM_EXIT_CTLS
from vmxlab.vmx.exit_reasons import ExitReason as R
from vmxlab.vmx.fields import VmcsField as F
from vmxlab.vmx.qualifications import InterruptionInfo
from vmxlab.vmx.qualifications import InterruptionType as T
from vmxlab.vmx.setup import set_controls

GATE = """
%macro GATE 3
        mov eax, %2
        mov [0x2000 + %1*8], ax
        mov word [0x2000 + %1*8 + 2], 0x08
        mov word [0x2000 + %1*8 + 4], %3
        shr eax, 16
        mov [0x2000 + %1*8 + 6], ax
%endmacro
"""
INT_GATE_DPL0, INT_GATE_DPL3 = 0x8E00, 0xEE00
PINF = F.PIN_BASED_VM_EXECUTION_CONTROLS


def handler_guest(vectors: dict[int, int] | None = None, body: str = "", **kw):
    """A guest that installs ``handler`` (records [esp], [esp+4] in EBX, ECX, then VMCALL) for each
    vector, then runs ``body``; ``entry`` is the RIP after the set-up."""
    gates = "".join(f"        GATE {vec}, handler, {attr:#x}\n" for vec, attr in (vectors or {}).items())
    v = guest(
        GATE
        + gates
        + "        vmcall\nentry:\n"
        + body
        + """
        vmcall
handler:
        mov ebx, [esp]
        mov ecx, [esp+4]
        vmcall
    """,
        **kw,
    )
    e = run(v)
    assert e.reason == R.VMCALL
    v.skip_instruction(e)
    return v, v.vmread(F.GUEST_RIP)


# ------------------------------------------------------------------ the exception bitmap


def test_exception_bitmap_hardware_and_software_exceptions() -> None:
    v = guest("ud2\nint3\nint1\nmov al, 0x7F\nadd al, 1\ninto\nint 0x21")
    v.vmwrite(F.EXCEPTION_BITMAP, 0xFFFFFFFF)
    e = run(v)
    assert e.reason == R.EXCEPTION_OR_NMI and e.interruption == InterruptionInfo(6, T.HARDWARE_EXCEPTION)
    assert e.guest_rip == 0x100000 and e.interruption_error_code is None
    e = resume(v, InstructionLength(2))
    assert e.interruption == InterruptionInfo(3, T.SOFTWARE_EXCEPTION) and e.instruction_length == 1
    e = resume(v, e)
    assert (
        e.interruption == InterruptionInfo(1, T.PRIVILEGED_SOFTWARE_EXCEPTION) and e.instruction_length == 1
    )
    e = resume(v, e)
    assert e.interruption == InterruptionInfo(4, T.SOFTWARE_EXCEPTION) and e.guest_rip == 0x100008
    # INT n never consults the bitmap (bit 0x21 does not exist); its gate in the empty IDT is not a gate: #GP
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << Vector.GP)
    e = resume(v, e)
    assert e.interruption.vector == Vector.GP and e.interruption_error_code == 0x21 * 8 + 2
    assert e.idt_vectoring == InterruptionInfo(0x21, T.SOFTWARE_INTERRUPT) and e.instruction_length == 2


class InstructionLength:
    """Stand-in for a VmExit when only the length matters (UD2 has none: hardware exceptions do not
    report an instruction length)."""

    def __init__(self, n: int) -> None:
        self.instruction_length = n


def test_gp_with_error_code_and_delivery_without_exit() -> None:
    v = guest("mov ax, 0x57\nmov ds, ax")
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << Vector.GP)
    e = run(v)
    assert e.interruption == InterruptionInfo(13, T.HARDWARE_EXCEPTION, error_code_valid=True)
    assert e.interruption_error_code == 0x54 and e.guest_rip == 0x100004
    v, entry = handler_guest({13: INT_GATE_DPL0}, "mov ax, 0x57\nmov ds, ax")
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == 0x54 and v.regs[ECX] == entry + 4


def test_page_fault_mask_match_and_cr2() -> None:
    body = "mov eax, [0x2000000]\nmov dword [0x2400000], 1\nvmcall"
    v, entry = handler_guest({14: INT_GATE_DPL0}, body, mode="paged32")
    v.cpu.cr2 = 0xDEAD
    v.write({F.EXCEPTION_BITMAP: 1 << 14, F.PAGE_FAULT_ERROR_CODE_MASK: 0, F.PAGE_FAULT_ERROR_CODE_MATCH: 0})
    e = run(v, launch=False)
    assert e.interruption == InterruptionInfo(14, T.HARDWARE_EXCEPTION, error_code_valid=True)
    assert e.qualification == 0x2000000 and e.interruption_error_code == 0 and e.guest_rip == entry
    assert v.cpu.cr2 == 0xDEAD, "a #PF that causes a VM exit does not load CR2"
    # bit 14 = 1, mask = match = W: only write faults exit; the read fault goes to the guest handler
    v.write({F.PAGE_FAULT_ERROR_CODE_MASK: 2, F.PAGE_FAULT_ERROR_CODE_MATCH: 2})
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == 0 and v.cpu.cr2 == 0x2000000
    v.vmwrite(F.GUEST_RIP, entry + 5)
    e = run(v, launch=False)
    assert e.reason == R.EXCEPTION_OR_NMI and e.qualification == 0x2400000 and e.interruption_error_code == 2
    # bit 14 = 0 inverts the sense: now only faults that do NOT match exit
    v.write({F.EXCEPTION_BITMAP: 0, F.GUEST_RIP: entry})
    e = run(v, launch=False)
    assert e.reason == R.EXCEPTION_OR_NMI and e.qualification == 0x2000000


def test_idt_vectoring_for_a_fault_during_delivery() -> None:
    """#PF pushing the INT 0x21 frame on an unmapped stack: exit for the #PF, IDT-vectoring = the INT."""
    v, entry = handler_guest({0x21: INT_GATE_DPL3}, "mov esp, 0x2001000\nint 0x21", mode="paged32")
    v.vmwrite(F.EXCEPTION_BITMAP, 1 << 14)
    e = run(v, launch=False)
    assert e.interruption.vector == 14 and e.qualification == 0x2000FFC
    assert e.idt_vectoring == InterruptionInfo(0x21, T.SOFTWARE_INTERRUPT)
    assert e.instruction_length == 2 and e.guest_rip == entry + 5


# ------------------------------------------------------------------ event injection (SDM Vol.3C 27.6)


def _inject(v, vector: int, type_: T, ec: int | None = None, length: int = 0) -> None:
    v.inject(InterruptionInfo(vector, type_, error_code_valid=ec is not None), ec or 0, length)


def test_inject_external_interrupt_through_the_guest_idt() -> None:
    v, entry = handler_guest({0x30: INT_GATE_DPL0}, "nop")
    v.vmwrite(F.GUEST_RFLAGS, 0x202)
    _inject(v, 0x30, T.EXTERNAL_INTERRUPT)
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == entry  # returns to the interrupted instruction
    assert not v.vmread(F.GUEST_RFLAGS) & 0x200  # an interrupt gate clears IF
    assert not v.vmread(F.VM_ENTRY_INTERRUPTION_INFORMATION) >> 31, "VM exit clears the valid bit"


def test_inject_hardware_exception_with_error_code() -> None:
    v, entry = handler_guest({13: INT_GATE_DPL0}, "nop")
    _inject(v, 13, T.HARDWARE_EXCEPTION, ec=0x18)
    run(v, launch=False)
    assert (v.regs[EBX], v.regs[ECX]) == (0x18, entry)


def test_inject_software_interrupt_returns_after_the_instruction() -> None:
    v, entry = handler_guest({0x80: INT_GATE_DPL0}, "nop")
    _inject(v, 0x80, T.SOFTWARE_INTERRUPT, length=2)
    run(v, launch=False)
    assert v.regs[EBX] == entry + 2


def test_injected_software_interrupt_obeys_the_gate_dpl() -> None:
    """INT n injected at CPL 3 through a DPL-0 gate: #GP(vector*8+2), as for a real INT n."""
    v, entry = handler_guest({0x80: INT_GATE_DPL0}, "nop")
    v.write(
        {
            F.GUEST_CS_SELECTOR: 0x1B,
            F.GUEST_CS_ACCESS_RIGHTS: 0xC0FB,
            F.GUEST_SS_SELECTOR: 0x23,
            F.GUEST_SS_ACCESS_RIGHTS: 0xC0F3,
            F.EXCEPTION_BITMAP: 1 << Vector.GP,
        }
    )
    _inject(v, 0x80, T.SOFTWARE_INTERRUPT, length=2)
    e = run(v, launch=False)
    assert e.interruption.vector == Vector.GP and e.interruption_error_code == 0x80 * 8 + 2
    assert e.idt_vectoring == InterruptionInfo(0x80, T.SOFTWARE_INTERRUPT)
    assert e.guest_rip == entry and e.instruction_length == 2
    # a privileged software exception (INT1) is not checked against the gate DPL
    _inject(v, 0x80, T.PRIVILEGED_SOFTWARE_EXCEPTION, length=1)
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == entry + 1


def test_inject_nmi_blocks_nmis() -> None:
    v, entry = handler_guest({2: INT_GATE_DPL0}, "nop")
    _inject(v, 2, T.NMI)
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == entry
    assert v.vmread(F.GUEST_INTERRUPTIBILITY_STATE) & 8, "blocking by NMI while in the NMI handler"


def test_inject_into_real_mode_through_the_ivt() -> None:
    v = guest("nop\nvmcall\nhandler:\nmov bx, sp\nmov bx, [ss:bx]\nvmcall", mode="real")
    v.memory.write(0x30 * 4, 4, 0x7C04)  # IVT[0x30] = 0000:7C04
    _inject(v, 0x30, T.SOFTWARE_INTERRUPT, length=2)
    e = run(v)
    assert e.reason == R.VMCALL and e.guest_rip == 0x7C09 and v.regs[EBX] & 0xFFFF == 0x7C02


def test_injection_wakes_a_halted_guest() -> None:
    v, entry = handler_guest({0x30: INT_GATE_DPL0}, "hlt")
    v.write({F.GUEST_ACTIVITY_STATE: 1, F.GUEST_RFLAGS: 0x202})
    _inject(v, 0x30, T.EXTERNAL_INTERRUPT)
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == entry


# ------------------------------------------------------------------ interrupt window, interrupts, NMIs


def test_interrupt_window_after_the_sti_shadow() -> None:
    v = guest("sti\nnop\nnop\nvmcall", primary=P.INTERRUPT_WINDOW_EXITING)
    e = run(v)
    assert e.reason == R.INTERRUPT_WINDOW and e.guest_rip == 0x100002 and e.instruction_length == 0
    assert v.vmread(F.GUEST_INTERRUPTIBILITY_STATE) == 0
    e = run(v, launch=False)  # IF = 1 and no shadow: exits again before any instruction
    assert e.reason == R.INTERRUPT_WINDOW and e.guest_rip == 0x100002
    v = guest("nop\nvmcall", primary=P.INTERRUPT_WINDOW_EXITING)
    v.write({F.GUEST_RFLAGS: 0x202, F.GUEST_INTERRUPTIBILITY_STATE: 1})  # blocked by STI: one instruction
    e = run(v)
    assert e.reason == R.INTERRUPT_WINDOW and e.guest_rip == 0x100001


class FakeIntc:
    """An interrupt controller with one pending vector."""

    def __init__(self, vector: int) -> None:
        self.intr = True
        self.vector = vector
        self.acks = 0

    def acknowledge(self) -> int:
        self.acks += 1
        self.intr = False
        return self.vector

    def set_irq(self, irq: int, level: bool) -> None:
        pass


def test_external_interrupt_exiting_with_and_without_acknowledge() -> None:
    v = guest("nop\nvmcall")
    set_controls(v, PINF, PIN.EXTERNAL_INTERRUPT_EXITING)
    set_controls(v, F.VM_EXIT_CONTROLS, VM_EXIT_CTLS.ACKNOWLEDGE_INTERRUPT_ON_EXIT)
    v.cpu.machine.intc = intc = FakeIntc(0x30)
    e = run(v)  # IF = 0: external-interrupt exiting ignores RFLAGS.IF
    assert e.reason == R.EXTERNAL_INTERRUPT and e.guest_rip == 0x100000 and e.instruction_length == 0
    assert e.interruption == InterruptionInfo(0x30, T.EXTERNAL_INTERRUPT) and intc.acks == 1
    set_controls(v, F.VM_EXIT_CONTROLS, clear_bits=VM_EXIT_CTLS.ACKNOWLEDGE_INTERRUPT_ON_EXIT)
    intc.intr = True
    e = run(v, launch=False)
    assert e.reason == R.EXTERNAL_INTERRUPT and e.interruption is None and intc.acks == 1 and intc.intr


def test_external_interrupt_without_exiting_goes_to_the_guest() -> None:
    v, entry = handler_guest({0x30: INT_GATE_DPL0}, "sti\nnop\nnop")
    v.cpu.machine.intc = FakeIntc(0x30)
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == entry + 2  # after STI and its shadow


def test_nmi_exiting() -> None:
    v = guest("nop\nvmcall")
    set_controls(v, PINF, PIN.NMI_EXITING)
    v.cpu.nmi_pending = True
    e = run(v)
    assert e.reason == R.EXCEPTION_OR_NMI and e.interruption == InterruptionInfo(2, T.NMI)
    assert not v.cpu.nmi_pending and not v.vmread(F.GUEST_INTERRUPTIBILITY_STATE) & 8
    v, entry = handler_guest({2: INT_GATE_DPL0}, "nop")
    v.cpu.nmi_pending = True
    e = run(v, launch=False)
    assert e.reason == R.VMCALL and v.regs[EBX] == entry


# ------------------------------------------------------------------ VMX-preemption timer (52)


def test_preemption_timer_expires_on_time() -> None:
    v = guest("spin:\ninc eax\njmp spin")
    set_controls(v, PINF, PIN.ACTIVATE_VMX_PREEMPTION_TIMER)
    set_controls(v, F.VM_EXIT_CONTROLS, VM_EXIT_CTLS.SAVE_VMX_PREEMPTION_TIMER_VALUE)
    v.vmwrite(F.VMX_PREEMPTION_TIMER_VALUE, 10)
    start = read_tsc(v.cpu)
    e = run(v)
    assert e.reason == R.VMX_PREEMPTION_TIMER_EXPIRED and e.qualification == 0
    deadline = ((start >> PREEMPTION_TIMER_RATE) + 10) << PREEMPTION_TIMER_RATE
    assert read_tsc(v.cpu) == deadline
    assert v.vmread(F.VMX_PREEMPTION_TIMER_VALUE) == 0


def test_preemption_timer_zero_exits_before_the_first_instruction() -> None:
    v = guest("inc eax\nvmcall")
    set_controls(v, PINF, PIN.ACTIVATE_VMX_PREEMPTION_TIMER)
    v.vmwrite(F.VMX_PREEMPTION_TIMER_VALUE, 0)
    e = run(v)
    assert e.reason == R.VMX_PREEMPTION_TIMER_EXPIRED and e.guest_rip == 0x100000 and v.regs[0] == 0


def test_preemption_timer_wakes_hlt() -> None:
    v = guest("hlt\nvmcall")
    set_controls(v, PINF, PIN.ACTIVATE_VMX_PREEMPTION_TIMER)
    v.vmwrite(F.VMX_PREEMPTION_TIMER_VALUE, 100)
    e = run(v)
    assert e.reason == R.VMX_PREEMPTION_TIMER_EXPIRED and e.guest_rip == 0x100001
    assert v.vmread(F.GUEST_ACTIVITY_STATE) == 1  # exited from the HLT state
    set_controls(v, PINF, clear_bits=PIN.ACTIVATE_VMX_PREEMPTION_TIMER)
    r = v.vmresume(max_instructions=100)  # without the timer nothing can wake it (IF = 0)
    assert isinstance(r, GuestStopped) and r.stop.reason.value == "halted"
