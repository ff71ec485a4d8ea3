"""VMX non-root operation: the ``cpu.vmx`` hooks and the VM exit (SDM Vol.3C chapter 26, "VMX
Non-Root Operation", and chapter 28, "VM Exits"; older editions 25 and 27).

:class:`NonRootOperation` is installed as ``cpu.vmx`` by VM entry.  The CPU
calls it at the points of the protocol in :mod:`vmxlab.cpu.vmxhooks`, always
*after* the instruction's #UD and privilege checks (SDM Vol.3C 26.1.1,
"Relative Priority of Faults and VM Exits"), so a guest's own rings act first.
Each hook is one small "should this exit?" predicate, in the order the SDM
lists them (26.1.2 unconditional exits, 26.1.3 conditional exits, 26.2 other
causes); an exit raises :class:`~vmxlab.cpu.faults.VmExitSignal`, and the run
loop hands it to :meth:`NonRootOperation.vm_exit`, the single routine that
records the exit information, saves the guest state, loads the host state and
returns control to Python (VMX root operation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..cpu import flags as fl
from ..cpu.faults import CpuFault, Vector, VmExitSignal
from ..cpu.interrupts import EventKind, deliver
from ..cpu.ops.system import read_tsc
from ..cpu.state import CR0_PE, CR0_PG, CR0_TS, ES
from ..machine.machine import StopReason, StopRequest
from .controls import PIN_BASED_CTLS, PRIMARY_PROC_BASED_CTLS, SECONDARY_PROC_BASED_CTLS, VM_EXIT_CTLS, bits
from .exit_reasons import VM_ENTRY_FAILURE, ExitReason, describe
from .fields import CR3_TARGET_VALUE, VmcsField
from .insn import (
    address_size,
    displacement,
    instruction_at_rip,
    memory_instruction_info,
    memory_operand_index,
    memory_operand_linear,
    modrm_reg_register,
)
from .qualifications import (
    ControlRegisterAccess,
    CrAccessType,
    InterruptionInfo,
    InterruptionType,
    IoInstructionInfo,
    IoQualification,
    MovDrQualification,
    TaskSwitchQualification,
    TaskSwitchSource,
)
from .transitions import (
    ABORT_LOADING_HOST_MSRS,
    ABORT_SAVING_GUEST_MSRS,
    load_host_state,
    load_msr_list,
    save_guest_state,
    store_msr_list,
)

if TYPE_CHECKING:
    from ..cpu.core import CPU
    from ..cpu.engine import Engine
    from .capabilities import VmxCapabilities
    from .ept import EptTranslator
    from .vmcs import Vmcs

F = VmcsField
P = bits(PRIMARY_PROC_BASED_CTLS)
S = bits(SECONDARY_PROC_BASED_CTLS)
PIN = bits(PIN_BASED_CTLS)
EXIT = bits(VM_EXIT_CTLS)
M32 = 0xFFFFFFFF

# MSR bitmaps (SDM Vol.3C 25.6.9, "MSR-Bitmap Address"): four 1-KiB bitmaps in one page
MSR_LOW_END = 0x1FFF
MSR_HIGH_START = 0xC0000000
MSR_HIGH_END = 0xC0001FFF
MSR_BITMAP_READ_LOW = 0
MSR_BITMAP_READ_HIGH = 1024
MSR_BITMAP_WRITE_LOW = 2048
MSR_BITMAP_WRITE_HIGH = 3072
# I/O bitmaps (SDM Vol.3C 25.6.4): A covers ports 0000-7FFF, B 8000-FFFF
IO_BITMAP_B_FIRST_PORT = 0x8000
IO_PORT_LIMIT = 0x10000

#: exits caused by executing an instruction: they report the instruction length (SDM Vol.3C 28.2.4)
INSTRUCTION_EXITS = frozenset(
    {
        ExitReason.CPUID,
        ExitReason.GETSEC,
        ExitReason.HLT,
        ExitReason.INVD,
        ExitReason.INVLPG,
        ExitReason.RDPMC,
        ExitReason.RDTSC,
        ExitReason.RSM,
        ExitReason.VMCALL,
        ExitReason.VMCLEAR,
        ExitReason.VMLAUNCH,
        ExitReason.VMPTRLD,
        ExitReason.VMPTRST,
        ExitReason.VMREAD,
        ExitReason.VMRESUME,
        ExitReason.VMWRITE,
        ExitReason.VMXOFF,
        ExitReason.VMXON,
        ExitReason.CONTROL_REGISTER_ACCESS,
        ExitReason.MOV_DR,
        ExitReason.IO_INSTRUCTION,
        ExitReason.RDMSR,
        ExitReason.WRMSR,
        ExitReason.MWAIT,
        ExitReason.MONITOR,
        ExitReason.PAUSE,
        ExitReason.ACCESS_TO_GDTR_OR_IDTR,
        ExitReason.ACCESS_TO_LDTR_OR_TR,
        ExitReason.INVEPT,
        ExitReason.RDTSCP,
        ExitReason.INVVPID,
        ExitReason.WBINVD_OR_WBNOINVD,
        ExitReason.XSETBV,
    }
)
#: VMX instructions whose exits report instruction information (SDM Vol.3C Tables 28-9, 28-13, 28-14)
VMX_INSTRUCTIONS_WITH_INFO = frozenset(
    {
        ExitReason.VMCLEAR,
        ExitReason.VMPTRLD,
        ExitReason.VMPTRST,
        ExitReason.VMREAD,
        ExitReason.VMWRITE,
        ExitReason.VMXON,
        ExitReason.INVEPT,
        ExitReason.INVVPID,
    }
)
VMX_INSTRUCTIONS_WITH_REG2 = frozenset(
    {ExitReason.VMREAD, ExitReason.VMWRITE, ExitReason.INVEPT, ExitReason.INVVPID}
)
SOFTWARE_EVENT_KINDS = frozenset(
    {EventKind.SOFTWARE_INTERRUPT, EventKind.PRIV_SOFTWARE_EXCEPTION, EventKind.SOFTWARE_EXCEPTION}
)
NO_ERROR_CODE = -1
EPT_QUALIFICATION_FETCH = 1 << 2  # VmExitSignal info values are ints: "no error code"


class Injection:
    """An event to inject at VM entry (SDM Vol.3C 27.6, "Event Injection")."""

    __slots__ = ("info", "error_code", "length")

    def __init__(self, info: InterruptionInfo, error_code: int, length: int) -> None:
        self.info = info
        self.error_code = error_code
        self.length = length


class NonRootOperation:
    """``cpu.vmx`` for one stay in VMX non-root operation (from a VM entry to the next VM exit).

    The controls are read from the VMCS once, at VM entry: the VMCS cannot
    change while the guest runs (Python, the only VMX root operation, is not
    running), which is also what a processor assumes of its VMCS cache.
    """

    def __init__(
        self,
        cpu: CPU,
        vmcs: Vmcs,
        caps: VmxCapabilities,
        engine: Engine,
        ept: EptTranslator | None,
        injection: Injection | None,
    ) -> None:
        self.cpu = cpu
        self.vmcs = vmcs
        self.caps = caps
        self.engine = engine
        self.ept = ept
        self.memory = cpu.memory
        v = vmcs
        self.pin = v[F.PIN_BASED_VM_EXECUTION_CONTROLS]
        self.primary = v[F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
        self.secondary = (
            v[F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
            if self.primary & P.ACTIVATE_SECONDARY_CONTROLS
            else 0
        )
        self.exit_controls = v[F.VM_EXIT_CONTROLS]
        self.exception_bitmap = v[F.EXCEPTION_BITMAP]
        self.pfec_mask = v[F.PAGE_FAULT_ERROR_CODE_MASK]
        self.pfec_match = v[F.PAGE_FAULT_ERROR_CODE_MATCH]
        self.cr0_mask, self.cr0_shadow = v[F.CR0_GUEST_HOST_MASK], v[F.CR0_READ_SHADOW]
        self.cr4_mask, self.cr4_shadow = v[F.CR4_GUEST_HOST_MASK], v[F.CR4_READ_SHADOW]
        self.cr3_targets = [v[f] for f in CR3_TARGET_VALUE[: v[F.CR3_TARGET_COUNT]]]
        self.io_bitmap_a, self.io_bitmap_b = v[F.IO_BITMAP_A], v[F.IO_BITMAP_B]
        self.msr_bitmap = v[F.MSR_BITMAPS]
        self.tsc_offset = v[F.TSC_OFFSET] if self.primary & P.USE_TSC_OFFSETTING else 0
        self.unrestricted = bool(self.secondary & S.UNRESTRICTED_GUEST)
        self.injection = injection
        #: the exit that ended this stay (set by :meth:`vm_exit`)
        self.exit_signal: VmExitSignal | None = None
        #: VMX abort indicator if the exit aborted (SDM Vol.3C 28.7), else 0
        self.abort = 0
        #: called after the exit completed, with this object (the API records the exit)
        self.on_exit: Callable[[NonRootOperation], None] | None = None
        # the VMX-preemption timer (SDM Vol.3C 26.5.1): it counts down each time TSC bit X changes
        self.timer_shift = caps.preemption_timer_rate
        self.timer_deadline: int | None = None
        if self.pin & PIN.ACTIVATE_VMX_PREEMPTION_TIMER:
            value = v[F.VMX_PREEMPTION_TIMER_VALUE]
            self.timer_deadline = ((read_tsc(cpu) >> self.timer_shift) + value) << self.timer_shift
            clock = cpu.machine.clock
            at_icount = self.timer_deadline - cpu.tsc_base
            clock.schedule(int(at_icount * clock.ns_per_instruction), self._timer_fired)
        self._intercepts: dict[str, Callable[[CPU, dict], None]] = {
            "cpuid": lambda c, i: self._exit(ExitReason.CPUID),
            "getsec": lambda c, i: self._exit(ExitReason.GETSEC),
            "invd": lambda c, i: self._exit(ExitReason.INVD),
            "xsetbv": lambda c, i: self._exit(ExitReason.XSETBV),
            "hlt": self._control(P.HLT_EXITING, ExitReason.HLT),
            "invlpg": self._invlpg,
            "rdpmc": self._control(P.RDPMC_EXITING, ExitReason.RDPMC),
            "rdtsc": self._control(P.RDTSC_EXITING, ExitReason.RDTSC),
            "pause": self._control(P.PAUSE_EXITING, ExitReason.PAUSE),
            "monitor": self._control(P.MONITOR_EXITING, ExitReason.MONITOR),
            "mwait": self._control(P.MWAIT_EXITING, ExitReason.MWAIT),
            "wbinvd": self._secondary(S.WBINVD_EXITING, ExitReason.WBINVD_OR_WBNOINVD),
            "rdmsr": lambda c, i: self._msr(i["msr"], write=False),
            "wrmsr": lambda c, i: self._msr(i["msr"], write=True),
            "io": self._io,
            "mov_dr": self._mov_dr,
            "descriptor_table": self._descriptor_table(ExitReason.ACCESS_TO_GDTR_OR_IDTR),
            "ldtr_tr": self._descriptor_table(ExitReason.ACCESS_TO_LDTR_OR_TR),
            "vmx": lambda c, i: self._exit(ExitReason(i["instruction"])),
            "task_switch": self._task_switch,
        }

    # ================================================================== helpers

    @staticmethod
    def _exit(reason: int, qualification: int = 0, **info: int) -> None:
        raise VmExitSignal(reason, qualification, **info)

    def _control(self, bit: int, reason: ExitReason) -> Callable[[CPU, dict], None]:
        def check(cpu: CPU, info: dict) -> None:
            if self.primary & bit:
                raise VmExitSignal(reason, 0)

        return check

    def _secondary(self, bit: int, reason: ExitReason) -> Callable[[CPU, dict], None]:
        def check(cpu: CPU, info: dict) -> None:
            if self.secondary & bit:
                raise VmExitSignal(reason, 0)

        return check

    def _bit(self, base: int, bit_index: int) -> bool:
        return bool(self.memory.read(base + (bit_index >> 3), 1) >> (bit_index & 7) & 1)

    # ================================================================== instructions (SDM Vol.3C 26.1)

    def intercept(self, cpu: CPU, name: str, **info: int) -> None:
        check = self._intercepts.get(name)
        if check is not None:
            check(cpu, info)

    def _invlpg(self, cpu: CPU, info: dict) -> None:
        if self.primary & P.INVLPG_EXITING:
            raise VmExitSignal(
                ExitReason.INVLPG, info.get("linear", 0) & M32
            )  # qualification: linear address

    def _msr(self, msr: int, write: bool) -> None:
        """RDMSR/WRMSR (SDM Vol.3C 26.1.3): exit unless "use MSR bitmaps" and the bit for ECX is 0."""
        msr &= M32
        is_write = write
        reason = ExitReason.WRMSR if is_write else ExitReason.RDMSR
        if not self.primary & P.USE_MSR_BITMAPS:
            raise VmExitSignal(reason, 0)
        if msr <= MSR_LOW_END:
            offset = MSR_BITMAP_WRITE_LOW if is_write else MSR_BITMAP_READ_LOW
            index = msr
        elif MSR_HIGH_START <= msr <= MSR_HIGH_END:
            offset = MSR_BITMAP_WRITE_HIGH if is_write else MSR_BITMAP_READ_HIGH
            index = msr - MSR_HIGH_START
        else:
            raise VmExitSignal(reason, 0)  # outside both ranges: always exits
        if self._bit(self.msr_bitmap + offset, index):
            raise VmExitSignal(reason, 0)

    def _io(self, cpu: CPU, info: dict) -> None:
        """IN/OUT/INS/OUTS (SDM Vol.3C 26.1.3): with "use I/O bitmaps", exit if any accessed port's bit
        is 1 or the access wraps past FFFFH ("unconditional I/O exiting" is then ignored); else exit
        iff "unconditional I/O exiting"."""
        port, size = info["port"] & 0xFFFF, info["size"]
        if self.primary & P.USE_IO_BITMAPS:
            exits = port + size > IO_PORT_LIMIT or any(
                self._bit(self.io_bitmap_a, p)
                if p < IO_BITMAP_B_FIRST_PORT
                else self._bit(self.io_bitmap_b, p - IO_BITMAP_B_FIRST_PORT)
                for p in range(port, port + size)
            )
        else:
            exits = bool(self.primary & P.UNCONDITIONAL_IO_EXITING)
        if exits:
            q = IoQualification(
                size=size,
                direction_in=bool(info.get("is_in")),
                string=bool(info.get("string")),
                rep=bool(info.get("rep")),
                immediate=bool(info.get("imm")),
                port=port,
            )
            raise VmExitSignal(ExitReason.IO_INSTRUCTION, q.encode())

    def _mov_dr(self, cpu: CPU, info: dict) -> None:
        if self.primary & P.MOV_DR_EXITING:
            q = MovDrQualification(info["dr"], not info.get("to_dr"), info.get("gpr", 0))
            raise VmExitSignal(ExitReason.MOV_DR, q.encode())

    def _descriptor_table(self, reason: ExitReason) -> Callable[[CPU, dict], None]:
        def check(cpu: CPU, info: dict) -> None:
            if self.secondary & S.DESCRIPTOR_TABLE_EXITING:
                raise VmExitSignal(reason, 0, identity=info.get("instruction", 0))

        return check

    def _task_switch(self, cpu: CPU, info: dict) -> None:
        """Task switches always exit in VMX non-root operation (SDM Vol.3C 26.4.2)."""
        q = TaskSwitchQualification(info["selector"], TaskSwitchSource(info["source"]))
        raise VmExitSignal(ExitReason.TASK_SWITCH, q.encode())

    # ================================================================== control registers (SDM Vol.3C 26.3)

    def read_cr(self, cpu: CPU, n: int, value: int, gpr: int | None) -> int:
        """MOV from CR0/CR4 and SMSW read the shadow for bits the VMM owns; MOV from CR3 may exit."""
        if n == 0:
            return (value & ~self.cr0_mask) | (self.cr0_shadow & self.cr0_mask)
        if n == 4:
            return (value & ~self.cr4_mask) | (self.cr4_shadow & self.cr4_mask)
        if n == 3 and self.primary & P.CR3_STORE_EXITING:
            q = ControlRegisterAccess(3, CrAccessType.MOV_FROM_CR, gpr or 0)
            raise VmExitSignal(ExitReason.CONTROL_REGISTER_ACCESS, q.encode())
        return value

    def write_cr(self, cpu: CPU, n: int, value: int, gpr: int) -> int:
        """MOV to CR0/CR4 exits iff a bit owned by the VMM (mask = 1) differs from its read shadow;
        otherwise owned bits keep their value and the rest must be legal in VMX operation (#GP).
        MOV to CR3 exits with "CR3-load exiting" unless the value is one of the CR3-target values."""
        if n in (0, 4):
            mask, shadow = (self.cr0_mask, self.cr0_shadow) if n == 0 else (self.cr4_mask, self.cr4_shadow)
            if (value ^ shadow) & mask:
                q = ControlRegisterAccess(n, CrAccessType.MOV_TO_CR, gpr)
                raise VmExitSignal(ExitReason.CONTROL_REGISTER_ACCESS, q.encode())
            current = cpu.cr0 if n == 0 else cpu.cr4
            new = (current & mask) | (value & ~mask)
            self._check_fixed(n, new)
            return new
        if n == 3 and self.primary & P.CR3_LOAD_EXITING and value not in self.cr3_targets:
            q = ControlRegisterAccess(3, CrAccessType.MOV_TO_CR, gpr)
            raise VmExitSignal(ExitReason.CONTROL_REGISTER_ACCESS, q.encode())
        return value

    def _check_fixed(self, n: int, value: int) -> None:
        """#GP(0) for a value VMX operation does not support (SDM Vol.3C 26.3, "MOV to CR0/CR4": with
        "unrestricted guest", PE and PG are free)."""
        caps = self.caps
        if n == 0:
            fixed0 = caps.cr0_fixed0 & ~((CR0_PE | CR0_PG) if self.unrestricted else 0)
            fixed1 = caps.cr0_fixed1
        else:
            fixed0, fixed1 = caps.cr4_fixed0, caps.cr4_fixed1
        if fixed0 & ~value or value & ~fixed1:
            raise CpuFault(Vector.GP, 0, detail=f"MOV to CR{n} {value:#x}: not supported in VMX operation")

    def clts(self, cpu: CPU) -> bool:
        """CLTS exits iff CR0 mask.TS = 1 and shadow.TS = 1; with mask.TS = 1 and shadow.TS = 0 it
        leaves TS alone (returns False)."""
        if self.cr0_mask & CR0_TS:
            if self.cr0_shadow & CR0_TS:
                q = ControlRegisterAccess(0, CrAccessType.CLTS)
                raise VmExitSignal(ExitReason.CONTROL_REGISTER_ACCESS, q.encode())
            return False
        return True

    def lmsw(self, cpu: CPU, source: int) -> int:
        """LMSW exits if it would change a bit of 3:1 the VMM owns relative to the shadow, or set an
        owned PE that the shadow has clear; otherwise owned bits keep their value."""
        mask = self.cr0_mask & 0xF
        shadow = self.cr0_shadow
        if (mask & 0xE) & (source ^ shadow) or (mask & CR0_PE and source & CR0_PE and not shadow & CR0_PE):
            q = ControlRegisterAccess(0, CrAccessType.LMSW, lmsw_source_data=source & 0xFFFF)
            raise VmExitSignal(ExitReason.CONTROL_REGISTER_ACCESS, q.encode())
        return (source & ~mask) | (cpu.cr0 & mask)

    def guest_tsc(self, cpu: CPU, tsc: int) -> int:
        """RDTSC and RDMSR(IA32_TSC) with "use TSC offsetting": TSC + offset (SDM Vol.3C 26.3)."""
        return (tsc + self.tsc_offset) & 0xFFFFFFFFFFFFFFFF

    # ================================================================== events (SDM Vol.3C 26.2, 26.7)

    def check_exception_exit(
        self,
        cpu: CPU,
        vector: int,
        error_code: int | None,
        kind: int,
        next_ip: int | None = None,
        fault_address: int | None = None,
    ) -> None:
        """The exception bitmap; for #PF, exit iff ((PFEC & mask) == match) equals bitmap bit 14."""
        if vector == Vector.PF:
            matches = ((error_code or 0) & self.pfec_mask) == self.pfec_match
            exits = matches == bool(self.exception_bitmap >> Vector.PF & 1)
        else:
            exits = bool(self.exception_bitmap >> vector & 1)
        if exits:
            qualification = (
                (fault_address if fault_address is not None else cpu.cr2) if vector == Vector.PF else 0
            )
            raise VmExitSignal(
                ExitReason.EXCEPTION_OR_NMI,
                qualification & M32,
                vector=vector,
                type=int(kind),
                error_code=NO_ERROR_CODE if error_code is None else error_code,
            )

    def _blocked_by_shadow(self, cpu: CPU) -> bool:
        return cpu.inhibit_pending or cpu.icount <= cpu.shadow_until

    def external_interrupt_exits(self, cpu: CPU) -> bool:
        """With "external-interrupt exiting", an interrupt exits instead of being delivered; with
        "acknowledge interrupt on exit" its vector goes into the exit interruption information."""
        if not self.pin & PIN.EXTERNAL_INTERRUPT_EXITING:
            return False
        intc = cpu.machine.intc
        if self.exit_controls & EXIT.ACKNOWLEDGE_INTERRUPT_ON_EXIT and intc is not None:
            vector = intc.acknowledge()
            raise VmExitSignal(
                ExitReason.EXTERNAL_INTERRUPT,
                0,
                vector=vector,
                type=int(InterruptionType.EXTERNAL_INTERRUPT),
                error_code=NO_ERROR_CODE,
            )
        raise VmExitSignal(ExitReason.EXTERNAL_INTERRUPT, 0)

    def pending_event(self, cpu: CPU) -> bool:
        """At an instruction boundary, in priority order (SDM Vol.3C 27.6 and 26.7): the event VM
        entry injects; the VMX-preemption timer; an NMI with "NMI exiting"; the interrupt window; an
        external interrupt with "external-interrupt exiting" (RFLAGS.IF does not block it then)."""
        if self.injection is not None:
            self._inject(cpu)
            return True
        if self.timer_deadline is not None and read_tsc(cpu) >= self.timer_deadline:
            raise VmExitSignal(ExitReason.VMX_PREEMPTION_TIMER_EXPIRED, 0)
        shadow = self._blocked_by_shadow(cpu)
        if cpu.nmi_pending and not cpu.nmi_blocked and not shadow:
            if self.pin & PIN.NMI_EXITING:
                cpu.nmi_pending = False
                raise VmExitSignal(
                    ExitReason.EXCEPTION_OR_NMI,
                    0,
                    vector=Vector.NMI,
                    type=int(InterruptionType.NMI),
                    error_code=NO_ERROR_CODE,
                )
            return False  # the run loop delivers it through the guest IDT
        if self.primary & P.INTERRUPT_WINDOW_EXITING and cpu.eflags_sys & fl.IF and not shadow:
            raise VmExitSignal(ExitReason.INTERRUPT_WINDOW, 0)
        intc = cpu.machine.intc
        if (
            self.pin & PIN.EXTERNAL_INTERRUPT_EXITING
            and intc is not None
            and intc.intr
            and not shadow
        ):
            self.external_interrupt_exits(cpu)
        return False

    def _inject(self, cpu: CPU) -> None:
        """Deliver the VM-entry event through the guest IDT/IVT under the guest's rules (SDM Vol.3C
        27.6.1.1): INT n and INT3/INTO check the gate DPL against the CPL, software events return to
        RIP + VM-entry instruction length, an NMI blocks NMIs; the exception bitmap is not consulted
        for the injected event itself, but faults during its delivery are ordinary exceptions."""
        inj = self.injection
        assert inj is not None
        self.injection = None
        kind = EventKind(int(inj.info.type))
        ip_mask = M32 if cpu.cs32 else 0xFFFF
        return_eip = (cpu.eip + inj.length) & ip_mask if kind in SOFTWARE_EVENT_KINDS else cpu.eip
        if kind == EventKind.NMI:
            cpu.nmi_blocked = True
        ec = inj.error_code if inj.info.error_code_valid else None
        try:
            deliver(cpu, inj.info.vector, ec, kind, return_eip)
        except CpuFault as f:
            self.engine.exception(f)
        cpu.event_pending = True  # look again before the handler's first instruction (timer, windows)

    def halt_can_wake(self, cpu: CPU) -> bool:
        """HLT with nothing the CPU alone can wake it with: the preemption timer, or an interrupt that
        exits despite IF = 0, still can.  Virtual time jumps to the next clock event."""
        clock = cpu.machine.clock
        wakes = self.timer_deadline is not None or (
            self.pin & PIN.EXTERNAL_INTERRUPT_EXITING and clock.deadline_icount < clock.NEVER
        )
        if not wakes:
            return False
        skip = clock.deadline_icount - (cpu.icount + cpu.idle_ticks)
        if skip > 0:
            cpu.idle_ticks += skip
        return True

    def _timer_fired(self) -> None:
        self.cpu.event_pending = True

    def triple_fault(self, cpu: CPU) -> None:
        """A triple fault in VMX non-root operation is a VM exit, not a shutdown (SDM Vol.3C 26.2)."""
        raise VmExitSignal(ExitReason.TRIPLE_FAULT, 0)

    # ================================================================== VM exit (SDM Vol.3C chapter 28)

    def vm_exit(self, cpu: CPU, signal: VmExitSignal) -> StopRequest:
        """Record the exit information (28.2), save guest state (28.3) and MSRs (28.4), load host state
        (28.5) and MSRs (28.6), leave non-root operation, and stop the run loop."""
        v = self.vmcs
        reason = int(signal.reason)
        info = signal.info
        qualification = signal.qualification & M32
        length = 0
        instruction_info = 0
        guest_linear: int | None = info.get("guest_linear")
        delivering = getattr(cpu, "delivering", None)
        # ---- 28.2.1-28.2.5: basic information, instruction length and information
        ins = None
        needs_instruction = (
            reason in INSTRUCTION_EXITS
            or (reason == ExitReason.EXCEPTION_OR_NMI and info.get("type") in SOFTWARE_EVENT_KINDS)
            or (reason == ExitReason.TASK_SWITCH and qualification >> 30 != TaskSwitchSource.TASK_GATE_IN_IDT)
            # the SDM leaves the length undefined for EPT violations; a VMM emulating MMIO needs it, so a
            # data access reports the length of its instruction (as Bochs does)
            or (
                reason == ExitReason.EPT_VIOLATION
                and not qualification & EPT_QUALIFICATION_FETCH
                and delivering is None
            )
        )
        if needs_instruction:
            ins = instruction_at_rip(cpu)
            if ins is not None:
                length = ins.len
        if ins is not None:
            qualification, instruction_info, guest_linear = self._instruction_details(
                cpu, reason, ins, qualification, instruction_info, guest_linear, info
            )
        v[F.EXIT_REASON] = reason
        v[F.EXIT_QUALIFICATION] = qualification
        v[F.GUEST_LINEAR_ADDRESS] = guest_linear if guest_linear is not None else 0
        if "guest_physical" in info:
            v[F.GUEST_PHYSICAL_ADDRESS] = info["guest_physical"]
        # exit interruption information (28.2.2): exceptions, NMIs, acknowledged interrupts
        if "vector" in info:
            ec = info.get("error_code", NO_ERROR_CODE)
            v[F.VM_EXIT_INTERRUPTION_INFORMATION] = InterruptionInfo(
                info["vector"], info["type"], error_code_valid=ec != NO_ERROR_CODE
            ).encode()
            v[F.VM_EXIT_INTERRUPTION_ERROR_CODE] = ec if ec != NO_ERROR_CODE else 0
        else:
            v[F.VM_EXIT_INTERRUPTION_INFORMATION] = 0
        # IDT-vectoring information (28.2.4): the exit happened while delivering an event
        if delivering is not None:
            d_vector, d_ec, d_kind, d_return = delivering
            v[F.IDT_VECTORING_INFORMATION] = InterruptionInfo(
                d_vector, int(d_kind), error_code_valid=d_ec is not None
            ).encode()
            v[F.IDT_VECTORING_ERROR_CODE] = d_ec or 0
            if d_kind in SOFTWARE_EVENT_KINDS:
                length = (d_return - cpu.eip) & (M32 if cpu.cs32 else 0xFFFF)
        else:
            v[F.IDT_VECTORING_INFORMATION] = 0
        v[F.VM_EXIT_INSTRUCTION_LENGTH] = length
        v[F.VM_EXIT_INSTRUCTION_INFORMATION] = instruction_info
        # VM exits clear the valid bit of the VM-entry interruption information (SDM Vol.3C 28.2.5? 27.2)
        v[F.VM_ENTRY_INTERRUPTION_INFORMATION] = v[F.VM_ENTRY_INTERRUPTION_INFORMATION] & 0x7FFFFFFF
        # ---- 28.3 save guest state, 28.4 MSRs
        save_guest_state(cpu, v, self.ept is not None, self._timer_remaining(cpu))
        if store_msr_list(cpu, self.memory, v[F.VM_EXIT_MSR_STORE_ADDRESS], v[F.VM_EXIT_MSR_STORE_COUNT]):
            self.abort = ABORT_SAVING_GUEST_MSRS
        self._leave(cpu)
        # ---- 28.5 load host state, 28.6 MSRs
        abort = load_host_state(cpu, v)
        if load_msr_list(cpu, self.memory, v[F.VM_EXIT_MSR_LOAD_ADDRESS], v[F.VM_EXIT_MSR_LOAD_COUNT]):
            abort = abort or ABORT_LOADING_HOST_MSRS
        self.abort = self.abort or abort
        self.exit_signal = signal
        if self.on_exit is not None:
            self.on_exit(self)
        return StopRequest(StopReason.VM_EXIT, status=reason, detail=describe(reason))

    def _instruction_details(
        self,
        cpu: CPU,
        reason: int,
        ins,
        qualification: int,
        instruction_info: int,
        guest_linear: int | None,
        info: dict,
    ) -> tuple[int, int, int | None]:
        """Qualification, instruction information and guest-linear address that come from the encoding."""
        cs32 = cpu.cs32
        if reason in (ExitReason.ACCESS_TO_GDTR_OR_IDTR, ExitReason.ACCESS_TO_LDTR_OR_TR):
            op32 = (ins.op_code().operand_size or (32 if cs32 else 16)) == 32
            identity = info.get("identity", 0)
            ii = memory_instruction_info(
                ins, cs32, reg2=identity, operand_size_32=op32 and reason == ExitReason.ACCESS_TO_GDTR_OR_IDTR
            )
            return displacement(ins, cs32), ii.encode(), guest_linear
        if reason in VMX_INSTRUCTIONS_WITH_INFO:
            reg2 = modrm_reg_register(ins) if reason in VMX_INSTRUCTIONS_WITH_REG2 else 0
            return (
                displacement(ins, cs32),
                memory_instruction_info(ins, cs32, reg2=reg2).encode(),
                guest_linear,
            )
        if reason == ExitReason.IO_INSTRUCTION and qualification & (1 << 4):  # INS/OUTS
            asize = address_size(ins, cs32)
            is_in = bool(qualification & (1 << 3))
            # INS stores to ES:(E)DI; OUTS reads DS:(E)SI or the segment override
            seg = ES if is_in else _string_source_segment(ins)
            offset = cpu.regs[7 if is_in else 6] & (0xFFFF if asize == 2 else M32)
            linear = (cpu.segs[seg].base + offset) & M32
            return qualification, IoInstructionInfo(asize, seg).encode(), linear
        lmsw = reason == ExitReason.CONTROL_REGISTER_ACCESS and (qualification >> 4) & 3 == CrAccessType.LMSW
        if lmsw and memory_operand_index(ins) is not None:
            return qualification | 1 << 6, instruction_info, memory_operand_linear(cpu, ins)
        return qualification, instruction_info, guest_linear

    def _timer_remaining(self, cpu: CPU) -> int | None:
        if self.timer_deadline is None:
            return None
        return max(0, (self.timer_deadline >> self.timer_shift) - (read_tsc(cpu) >> self.timer_shift))

    def _leave(self, cpu: CPU) -> None:
        """Leave non-root operation: hooks off, EPT off, timer cancelled, TLB flushed (no VPID tags)."""
        if self.timer_deadline is not None:
            cpu.machine.clock.cancel(self._timer_fired)
        cpu.vmx = None
        cpu.ept = None
        cpu.tlb_flush(all_entries=True)


def _string_source_segment(ins) -> int:
    from ..cpu.ops.operands import SREG

    return SREG.get(ins.memory_segment, 3)


def entry_failure_reason(reason: int) -> int:
    return reason | VM_ENTRY_FAILURE
