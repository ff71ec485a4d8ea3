"""The ``emu`` virtual CPU: the software CPU in VMX non-root operation, driven through vmx/api.py.

Set-up is what a hypervisor does before its first VMLAUNCH (SDM Vol.3C 25.x,
27.x): VMXON, a VMCS, controls from the exit policy adjusted to the capability
MSRs, host state, an identity EPT over guest RAM (and the ROM windows), I/O
and MSR bitmaps, then the guest state from the loader's entry state.

Guest-physical memory: [0, guest RAM) is identity-mapped by EPT; the VMX
structures (VMXON region, VMCS, EPT tables, bitmaps, shadow tables) live in a
VMM area above it, which the guest cannot reach -- an access there is an EPT
violation like any MMIO address.

Completing exits.  IN/OUT and RDMSR/WRMSR are completed by writing the guest's
registers and advancing GUEST_RIP.  String I/O and MMIO are completed by
*replaying* the instruction for exactly one step with the access let through:
I/O exiting turned off (I/O), or the MMIO page mapped in EPT for that one
instruction.  The software CPU then performs the access with its own exact
semantics (REP, DF, segment checks, faults) against the VMM's device model --
the role KVM's x86 instruction emulator plays for KVM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cpu.core import CPU
from ..cpu.state import (
    AR_UNUSABLE,
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR4_VMXE,
)
from ..machine.loaders import BOOT_GDT, EntryState, install_boot_gdt
from ..machine.machine import Machine, StopReason, StopRequest
from ..vmx.api import EntryFailure, GuestStopped, VmExit, VmxCpu
from ..vmx.controls import PRIMARY_PROC_BASED_CTLS as PRI
from ..vmx.controls import SECONDARY_PROC_BASED_CTLS as SEC
from ..vmx.ept import EPT_LARGE_PAGE, EPT_RWX, EptBuilder
from ..vmx.fields import GUEST_ACCESS_RIGHTS, GUEST_BASE, GUEST_LIMIT, GUEST_SELECTOR, VmcsField
from ..vmx.guest_state import VMCS_LINK_POINTER_NONE, ActivityState
from ..vmx.qualifications import InterruptionInfo, InterruptionType
from ..vmx.setup import (
    AR_TSS32_BUSY,
    PageAllocator,
    enter_vmx_operation,
    write_controls,
    write_host_state,
)
from .policies import Policy

if TYPE_CHECKING:
    from ..trace.events import Tracer

F = VmcsField
PAGE = 0x1000
#: how much memory above guest RAM the VMM reserves for its own structures
VMM_AREA = 2 << 20
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class EmuVcpu:
    """One vCPU on the software CPU; implements the VMM's Vcpu protocol (vmm/vcpu.py)."""

    backend = "emu"

    def __init__(self, machine: Machine, policy: Policy, *, guest_size: int, engine: str = "fast") -> None:
        self.machine = machine
        self.policy = policy
        self.guest_size = guest_size
        self.cpu = CPU(machine)
        self.vmx = VmxCpu(self.cpu, engine)
        self.alloc = PageAllocator(machine.memory, guest_size, machine.memory.size)
        self.regions = enter_vmx_operation(self.vmx, self.alloc)
        self.launched = False
        self.stopped_in_guest = False
        self._setup_controls()

    # ------------------------------------------------------------------ set-up

    def _setup_controls(self) -> None:
        p = self.policy
        vmx = self.vmx
        primary = p.primary
        if not p.msr_all and p.msr_bitmaps:
            primary |= PRI.USE_MSR_BITMAPS
        secondary = p.secondary | SEC.ENABLE_EPT | SEC.UNRESTRICTED_GUEST
        write_controls(vmx, pin=p.pin, primary=primary, secondary=secondary,
                       exception_bitmap=p.exception_bitmap)
        write_host_state(vmx, self.alloc)
        self.ept = EptBuilder(vmx.memory, self.alloc)
        self.ept.map(0, 0, self.guest_size, EPT_RWX)
        for rom in self.machine.memory.roms:  # e.g. the BIOS alias below 4 GiB: read/execute only
            self.ept.map(rom.start, rom.start, (len(rom.data) + PAGE - 1) & ~(PAGE - 1), 0b101)
        vmx.vmwrite(F.EPT_POINTER, self.ept.eptp()).check()
        if primary & PRI.USE_MSR_BITMAPS:
            self.msr_bitmap = self.alloc.page()
            vmx.vmwrite(F.MSR_BITMAPS, self.msr_bitmap).check()

    def intercept_msr(self, index: int, read: bool = True, write: bool = True) -> None:
        """Make RDMSR/WRMSR of ``index`` exit (SDM Vol.3C 25.6.9: read-low at +0, read-high at +1024,
        write-low at +2048, write-high at +3072; one bit per MSR)."""
        if not hasattr(self, "msr_bitmap"):
            return
        if index <= 0x1FFF:
            offsets, bit = (0, 2048), index
        elif 0xC0000000 <= index <= 0xC0001FFF:
            offsets, bit = (1024, 3072), index - 0xC0000000
        else:
            return  # MSRs outside both ranges always exit
        for off, wanted in zip(offsets, (read, write)):
            if wanted:
                addr = self.msr_bitmap + off + bit // 8
                mem = self.machine.memory
                mem.write(addr, 1, mem.read(addr, 1) | 1 << (bit % 8))

    def apply_entry(self, entry: EntryState) -> None:
        """Guest state from a loader's entry state: real mode, 32-bit flat, or the reset vector."""
        vmx = self.vmx
        cr0_seen = CR0_ET | (CR0_PE if entry.mode == "pm32" else 0)
        vmx.write({
            F.CR0_GUEST_HOST_MASK: CR0_NE if not self.policy.cr_all else 0xFFFFFFFF,
            F.CR0_READ_SHADOW: cr0_seen,
            F.CR4_GUEST_HOST_MASK: CR4_VMXE if not self.policy.cr_all else 0xFFFFFFFF,
            F.CR4_READ_SHADOW: 0,
            F.GUEST_CR0: cr0_seen | CR0_NE,
            F.GUEST_CR3: 0,
            F.GUEST_CR4: CR4_VMXE,
            F.GUEST_DR7: 0x400,
            F.GUEST_RIP: entry.eip,
            F.GUEST_RFLAGS: entry.eflags | 0x2,
            F.GUEST_ACTIVITY_STATE: ActivityState.ACTIVE,
            F.GUEST_INTERRUPTIBILITY_STATE: 0,
            F.GUEST_PENDING_DEBUG_EXCEPTIONS: 0,
            F.VMCS_LINK_POINTER: VMCS_LINK_POINTER_NONE,
            F.VM_ENTRY_INTERRUPTION_INFORMATION: 0,
            F.GUEST_GDTR_BASE: entry.gdt_base, F.GUEST_GDTR_LIMIT: entry.gdt_limit,
            F.GUEST_IDTR_BASE: entry.idt_base, F.GUEST_IDTR_LIMIT: entry.idt_limit,
        })
        self._segment(6, 0, 0, 0, AR_UNUSABLE)  # no LDT
        # TR must be a usable busy 32-bit TSS even in real mode (SDM Vol.3C 27.3.1.2)
        self._segment(7, 0, 0, 0xFFFF, AR_TSS32_BUSY)
        if entry.mode == "reset":
            # SDM Vol.3A 10.1.1 Table 10-1: CS F000 base FFFF0000, EIP FFF0, other segments 0
            vmx.write({F.GUEST_RIP: 0xFFF0, F.GUEST_RSP: 0})
            for i in (0, 2, 3, 4, 5):
                self._segment(i, 0, 0, 0xFFFF, 0x93)
            self._segment(1, 0xF000, 0xFFFF0000, 0xFFFF, 0x93)
            self.cpu.regs[:] = [0, 0, 0x633, 0, 0, 0, 0, 0]
            return
        self.cpu.regs[:] = [0] * 8
        for name, value in entry.regs.items():
            self.cpu.regs[GPR_NAMES.index(name)] = value
        if entry.mode == "real":
            for i in (0, 3, 4, 5):
                self._segment(i, entry.ds, entry.ds << 4, 0xFFFF, 0x93)
            self._segment(2, entry.ss, entry.ss << 4, 0xFFFF, 0x93)
            self._segment(1, entry.cs, entry.cs << 4, 0xFFFF, 0x93)
            vmx.vmwrite(F.GUEST_RSP, entry.esp & 0xFFFF).check()
        else:
            install_boot_gdt(self.machine)
            from ..cpu.descriptors import Descriptor

            code = Descriptor.decode(BOOT_GDT[entry.cs >> 3])
            data = Descriptor.decode(BOOT_GDT[entry.ds >> 3])
            self._segment(1, entry.cs, code.base, code.limit, code.ar)
            for i in (0, 2, 3, 4, 5):
                self._segment(i, entry.ds, data.base, data.limit, data.ar)
            vmx.vmwrite(F.GUEST_RSP, entry.esp).check()

    def _segment(self, i: int, selector: int, base: int, limit: int, ar: int) -> None:
        self.vmx.write({GUEST_SELECTOR[i]: selector, GUEST_BASE[i]: base, GUEST_LIMIT[i]: limit,
                        GUEST_ACCESS_RIGHTS[i]: ar})

    def attach_tracer(self, tracer: Tracer) -> None:
        tracer.attach(self.cpu)

    # ------------------------------------------------------------------ running

    @property
    def icount(self) -> int:
        return self.cpu.icount

    def run(self, max_instructions: int | None = None, timeout: float | None = None
            ) -> VmExit | EntryFailure | GuestStopped:
        """VMLAUNCH the first time, VMRESUME after an exit, or go on after a stop without an exit."""
        vmx = self.vmx
        if vmx.in_guest:
            result = vmx.continue_guest(max_instructions, timeout)
        elif not self.launched:
            self.launched = True
            result = vmx.vmlaunch(max_instructions, timeout)
        else:
            result = vmx.vmresume(max_instructions, timeout)
        return result

    def step_guest(self) -> VmExit | EntryFailure | GuestStopped | None:
        """Run exactly one guest instruction (VM entry, one instruction); None if it completed
        without a VM exit (the guest is then still in non-root operation)."""
        result = self.run(max_instructions=1)
        if isinstance(result, GuestStopped) and result.stop.reason == StopReason.BUDGET:
            return None
        return result

    # ------------------------------------------------------------------ guest registers

    def vmread(self, f: VmcsField) -> int:
        return self.vmx.vmread(f)

    def vmwrite(self, f: VmcsField, value: int) -> None:
        self.vmx.vmwrite(f, value).check()

    def get_regs(self) -> dict[str, int]:
        regs = dict(zip(GPR_NAMES, self.cpu.regs))
        regs["esp"] = self.vmread(F.GUEST_RSP)
        regs["eip"] = self.vmread(F.GUEST_RIP)
        regs["eflags"] = self.vmread(F.GUEST_RFLAGS)
        regs["cr0"] = self.vmread(F.GUEST_CR0)
        regs["cr3"] = self.vmread(F.GUEST_CR3)
        regs["cr4"] = self.vmread(F.GUEST_CR4)
        regs["cpl"] = (self.vmread(F.GUEST_SS_ACCESS_RIGHTS) >> 5) & 3
        for i, n in enumerate(("es", "cs", "ss", "ds", "fs", "gs")):
            regs[n] = self.vmread(GUEST_SELECTOR[i])
        return regs

    def set_regs(self, **values: int) -> None:
        for name, value in values.items():
            if name == "esp":
                self.vmwrite(F.GUEST_RSP, value)
            elif name == "eip":
                self.vmwrite(F.GUEST_RIP, value)
            else:
                self.cpu.regs[GPR_NAMES.index(name)] = value & 0xFFFFFFFF

    def gpr(self, n: int) -> int:
        """General-purpose register number ``n`` (encoding order); ESP is GUEST_RSP."""
        return self.vmread(F.GUEST_RSP) if n == 4 else self.cpu.regs[n]

    def set_gpr(self, n: int, value: int) -> None:
        if n == 4:
            self.vmwrite(F.GUEST_RSP, value & 0xFFFFFFFF)
        else:
            self.cpu.regs[n] = value & 0xFFFFFFFF

    def set_cr2(self, value: int) -> None:
        """CR2 is not in the VMCS: the guest's value stays in the CPU across exits."""
        self.cpu.cr2 = value & 0xFFFFFFFF

    def read_guest_physical(self, addr: int, size: int) -> bytes:
        return self.machine.memory.read_bytes(addr, size)

    # ------------------------------------------------------------------ completing instructions

    def skip_instruction(self, exit_: VmExit) -> None:
        """Complete the exiting instruction: advance GUEST_RIP and end an STI / MOV SS interrupt shadow,
        which covered exactly this instruction (SDM Vol.3C 25.4.2 Table 25-3; KVM's
        skip_emulated_instruction does the same)."""
        self.vmx.skip_instruction(exit_)
        blocking = self.vmread(F.GUEST_INTERRUPTIBILITY_STATE)
        if blocking & 3:
            self.vmwrite(F.GUEST_INTERRUPTIBILITY_STATE, blocking & ~3)

    # the completion protocol shared with the kvm vCPU (vmm/vcpu.py): on emu the VMM finishes the
    # instruction itself -- registers, then GUEST_RIP

    def io_count(self, exit_: VmExit) -> int:
        return 1  # string I/O is replayed instead (replay_io)

    def io_out_value(self, exit_: VmExit) -> list[int]:
        return [self.cpu.regs[0] & MASKS[exit_.decoded.size]]

    def complete_io_in(self, exit_: VmExit, values: list[int]) -> None:
        mask = MASKS[exit_.decoded.size]
        self.cpu.regs[0] = (self.cpu.regs[0] & ~mask & 0xFFFFFFFF) | (values[0] & mask)
        self.skip_instruction(exit_)

    def complete_io_out(self, exit_: VmExit) -> None:
        self.skip_instruction(exit_)

    def msr_index(self, exit_: VmExit) -> int:
        return self.cpu.regs[1]  # ECX (SDM Vol.2 RDMSR/WRMSR)

    def wrmsr_value(self, exit_: VmExit) -> int:
        return self.cpu.regs[2] << 32 | self.cpu.regs[0]  # EDX:EAX

    def complete_rdmsr(self, exit_: VmExit, value: int | None) -> None:
        """RDMSR gets EDX:EAX, or #GP(0) for an MSR the VMM does not provide (SDM Vol.2 RDMSR)."""
        if value is None:
            self.inject_exception(13, 0)  # #GP(0)
            return
        self.cpu.regs[0] = value & 0xFFFFFFFF
        self.cpu.regs[2] = (value >> 32) & 0xFFFFFFFF
        self.skip_instruction(exit_)

    def complete_wrmsr(self, exit_: VmExit, ok: bool) -> None:
        if not ok:
            self.inject_exception(13, 0)  # #GP(0)
            return
        self.skip_instruction(exit_)

    def inject(self, vector: int, kind: InterruptionType, error_code: int | None = None,
               instruction_length: int = 0) -> None:
        info = InterruptionInfo(vector, kind, error_code_valid=error_code is not None)
        self.vmx.inject(info, error_code or 0, instruction_length)

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        self.inject(vector, InterruptionType.HARDWARE_EXCEPTION, error_code)

    def guest_can_take_interrupt(self) -> bool:
        """RFLAGS.IF = 1 and no STI/MOV-SS blocking (SDM Vol.3C 27.3.1.5, 27.6.1)."""
        return bool(self.vmread(F.GUEST_RFLAGS) & (1 << 9)) and not self.vmread(F.GUEST_INTERRUPTIBILITY_STATE) & 3

    def inject_interrupt(self, vector: int) -> bool:
        if not self.guest_can_take_interrupt():
            return False
        self.inject(vector, InterruptionType.EXTERNAL_INTERRUPT)
        if self.vmread(F.GUEST_ACTIVITY_STATE) == ActivityState.HLT:
            self.vmwrite(F.GUEST_ACTIVITY_STATE, ActivityState.ACTIVE)
        return True

    def request_interrupt_window(self, on: bool) -> None:
        f = F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        value = self.vmread(f)
        bit = PRI.INTERRUPT_WINDOW_EXITING
        self.vmwrite(f, value | bit if on else value & ~bit)

    def halt(self) -> None:
        """Put the guest in the HLT activity state (it resumes when an event is injected)."""
        self.vmwrite(F.GUEST_ACTIVITY_STATE, ActivityState.HLT)

    def replay_io(self, exit_: VmExit) -> VmExit | EntryFailure | GuestStopped | None:
        """Let the exiting I/O instruction through for one step: the CPU performs it on the machine's
        bus with its exact string/REP/fault semantics.  Returns a new exit if that step caused one."""
        f = F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        saved = self.vmread(f)
        self.vmwrite(f, saved & ~(PRI.UNCONDITIONAL_IO_EXITING | PRI.USE_IO_BITMAPS))
        try:
            return self.step_guest()
        finally:
            self._restore_after_step(f, saved)

    def split_to_4k(self, gpa: int) -> None:
        """Make the EPT map ``gpa``'s page with a 4-KiB entry, splitting a 2-MiB or 1-GiB mapping into
        512 smaller entries with the same permissions (SDM Vol.3C 29.3.2: bit 7 marks a large page),
        so the VMM can change one page's permissions."""
        ept = self.ept
        for level in (3, 2):
            addr = ept.entry_address(gpa, level)
            entry = self.machine.memory.read(addr, 8)
            if entry & EPT_LARGE_PAGE and entry & EPT_RWX:
                size = 1 << (12 + 9 * (level - 1))
                base = entry & ~(size - 1) & ((1 << 52) - 1)
                flags = entry & 0x3F  # R/W/X and memory type
                self.machine.memory.write(addr, 8, 0)  # not present: _table_for builds a table below
                child = size >> 9
                for i in range(512):
                    ept.set_entry((gpa & ~(size - 1)) + i * child, level - 1,
                                  base + i * child | flags | (EPT_LARGE_PAGE if level - 1 > 1 else 0))

    def set_page_perms(self, gpa: int, perms: int) -> None:
        """Change one guest page's EPT permissions (4-KiB granularity)."""
        self.split_to_4k(gpa)
        self.ept.protect(gpa & ~(PAGE - 1), perms)

    def replay_with_page(self, gpa: int) -> VmExit | EntryFailure | GuestStopped | None:
        """Map guest-physical page ``gpa`` to the same host-physical page (an MMIO window of the
        machine) for one instruction, so the CPU's access reaches the device model."""
        page = gpa & ~(PAGE - 1)
        self.split_to_4k(page)
        saved = self.ept.get_entry(page)
        self.ept.set_entry(page, 1, page | EPT_RWX | 6 << 3)  # write-back memory type
        self._flush_ept_caches()
        try:
            return self.step_guest()
        finally:
            self.ept.set_entry(page, 1, saved)
            self._flush_ept_caches()

    def _flush_ept_caches(self) -> None:
        """After the VMM changed EPT entries: what INVEPT does (SDM Vol.3C 29.4.3.1)."""
        self.cpu.tlb_flush(all_entries=True)
        hooks = self.vmx.nonroot
        if hooks is not None and hooks.ept is not None:
            hooks.ept.invalidate()

    def _restore_after_step(self, f: VmcsField, value: int) -> None:
        """Put a control back after a one-instruction replay.  If the guest is still in non-root
        operation (the step ended without an exit), the running stay read its controls at VM
        entry, so the cached copy is restored too."""
        self.vmx.vmcs[f] = value
        hooks = self.vmx.nonroot
        if hooks is not None and f == F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS:
            hooks.primary = value

    def stop_request(self, reason: StopReason, detail: str = "") -> StopRequest:
        return StopRequest(reason, 0, detail)
