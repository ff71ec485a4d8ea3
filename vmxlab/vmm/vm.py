"""The VMM: a virtual machine, its vCPU loop, and one small handler per VM-exit reason.

SimpleVisor's shape in Python: :meth:`VirtualMachine.run` enters the guest,
gets a :class:`~vmxlab.vmx.api.VmExit` that speaks the SDM's language, and
dispatches on the basic exit reason through :data:`HANDLERS` to a method named
after it.  A handler either completes the guest's instruction (and the loop
resumes the guest) or returns a stop.

What the VMM virtualizes (issue 4, "The VMM"):

* I/O (30) -> the device bus, which the VMM owns (``VmmPorts``: the machine's
  devices plus the VMM's own, e.g. the VMware-style backdoor port);
* CPUID (10) -> a faked CPUID table (the VMM decides what the guest may see);
* LGDT/LIDT/SGDT/SIDT (46), LLDT/LTR/SLDT/STR (47) -> virtual GDTR/IDTR and
  shadow tables (shadow_tables.py);
* RDMSR/WRMSR (31/32) -> virtual MSRs;
* control-register accesses (28) -> CR0/CR4 read shadows, CR3;
* EPT violations (48) -> MMIO devices (and writes to shadowed tables);
* HLT (12) -> wait for the next interrupt; external interrupts (1) -> the
  VMM acknowledges the PIC and injects the vector; exceptions (0) -> reflected;
* triple fault (2) -> stop with a report.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cpu import cpuid as cid
from ..cpu.faults import CpuFault, Vector
from ..cpu.state import CR0_PE, CR0_PG, CR0_TS, CR4_PAE, CR4_VMXE
from ..machine.iobus import PortBus
from ..machine.machine import Machine, StopReason, StopRequest
from ..vmx.api import EntryFailure, GuestStopped, VmExit
from ..vmx.exit_reasons import ExitReason as R
from ..vmx.fields import GUEST_PDPTE, VmcsField
from ..vmx.qualifications import CrAccessType, InstructionInfo, InterruptionType
from .emu_vcpu import EmuVcpu
from .guest_memory import GuestMemory
from .policies import Policy
from .shadow_tables import ShadowTables

F = VmcsField
MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
EAX, ECX, EDX, EBX = 0, 1, 2, 3

# The VMware "backdoor" (a well-known VMM-detection trick): IN EAX, DX with DX = 0x5658 ('VX') and
# EAX = 0x564D5868 ('VMXh').  Bare metal has no device there (reads all ones); a VMM that emulates
# it answers with EBX = 'VMXh'.  vmxlab's VMM answers the same way, so guests can see the VMM.
BACKDOOR_PORT = 0x5658
BACKDOOR_MAGIC = 0x564D5868

# VMCALL hypercalls (EAX = function): vmxlab's tiny paravirtual interface
HYPERCALL_PUTCHAR = 1  # EBX low byte to the console
HYPERCALL_SHUTDOWN = 2  # stop the VM (status EBX)
HYPERCALL_SIGNATURE = 0x564D5831  # returns EBX:ECX:EDX = "vmxlabVMM   "


class VmmPorts(PortBus):
    """The I/O bus as the guest sees it under the VMM: the VMM's own ports first, then the machine's."""

    def __init__(self, inner: PortBus) -> None:
        self.inner = inner
        super().__init__()
        self.vmm_ports: dict[int, tuple[Callable[[int, int], int], Callable[[int, int, int], None]]] = {}
        self.unclaimed = inner.unclaimed

    # the trace hooks belong to the device bus behind the VMM (so tracing sees every device access)
    @property
    def on_access(self):
        return self.inner.on_access

    @on_access.setter
    def on_access(self, hook) -> None:
        self.inner.on_access = hook

    @property
    def on_unclaimed(self):
        return self.inner.on_unclaimed

    @on_unclaimed.setter
    def on_unclaimed(self, hook) -> None:
        self.inner.on_unclaimed = hook

    def add(self, port: int, read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> None:
        self.vmm_ports[port] = (read, write)

    def device_at(self, port: int):
        return self.inner.device_at(port)

    def read(self, port: int, size: int) -> int:
        handler = self.vmm_ports.get(port & 0xFFFF)
        if handler is not None:
            return handler[0](port, size) & MASK[size]
        return self.inner.read(port, size)

    def write(self, port: int, size: int, value: int) -> None:
        handler = self.vmm_ports.get(port & 0xFFFF)
        if handler is not None:
            handler[1](port, size, value)
        else:
            self.inner.write(port, size, value)


@dataclass
class VirtualMsrs:
    """The MSRs the guest may use, kept by the VMM (SDM Vol.4).  IA32_FEATURE_CONTROL reads as locked
    with VMX disabled, matching the faked CPUID without VMX: this guest cannot use VMX."""

    values: dict[int, int] = field(default_factory=lambda: {
        cid.MSR_APIC_BASE: 0xFEE00900, cid.MSR_FEATURE_CONTROL: 1, cid.MSR_MISC_ENABLE: 1,
    })


class VirtualMachine:
    """A guest, the vCPU it runs on, and the VMM's view of it (exit counts, virtual state)."""

    def __init__(self, machine: Machine, vcpu: EmuVcpu, policy: Policy | None,
                 cpuid_table: dict | None = None, msrs: dict[int, int] | None = None) -> None:
        self.machine = machine
        self.vcpu = vcpu
        self.policy = policy
        #: the software CPU's VMX (True) or /dev/kvm (False): KVM produces only the exits a PC guest
        #: needs in user space (I/O, MMIO, HLT, MSRs, shutdown, debug) and completes instructions itself
        self.emu = vcpu.backend == "emu"
        #: a Tracer for exits on kvm (on emu the VMX layer reports its own VM entries and exits)
        self.tracer = None
        self.stats: Counter[int] = Counter()
        self.exits_log: list[VmExit] = []
        self.keep_log = False
        self.cpuid = cpuid_table if cpuid_table is not None else guest_cpuid_table()
        self.msrs = VirtualMsrs()
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0]
        self.pending_irq: int | None = None
        self._depth = 0  # nesting of handle(): a replayed instruction may exit again
        if msrs:
            self.msrs.values.update(msrs)
        self.ports = VmmPorts(machine.ports)
        machine.ports = self.ports
        self.ports.add(BACKDOOR_PORT, self._backdoor_read, lambda p, s, v: None)
        self.shadows: ShadowTables | None = None
        if self.emu:
            self.guest = GuestMemory(vcpu.vmx)
            self.guest.on_write = self._guest_written
            for msr in (cid.MSR_FEATURE_CONTROL, cid.MSR_APIC_BASE, cid.MSR_MISC_ENABLE, 0x480, 0x481, 0x482):
                vcpu.intercept_msr(msr)

    def start(self) -> None:
        """After the guest state is in place: shadow tables (if the policy runs the guest on them)."""
        if self.emu and self.policy is not None and self.policy.shadow_tables:
            self.shadows = ShadowTables(self.vcpu)

    # ------------------------------------------------------------------ the loop

    def run(self, max_instructions: int | None = None, timeout: float | None = None) -> StopRequest:
        vcpu = self.vcpu
        self.machine.stop = None
        if not self.emu:
            max_instructions = None  # KVM counts no guest instructions: only the timeout bounds a run
        limit = None if max_instructions is None else vcpu.icount + max_instructions
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if limit is None else limit - vcpu.icount
            if remaining is not None and remaining <= 0:
                return StopRequest(StopReason.BUDGET, detail=f"{vcpu.icount} instructions")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return StopRequest(StopReason.TIMEOUT)
            result = vcpu.run(remaining, left)
            stop = self.handle(result)
            if stop is not None:
                return stop
            if self.machine.stop is not None:
                return self.machine.stop

    def handle(self, result: VmExit | EntryFailure | GuestStopped | None) -> StopRequest | None:
        """Dispatch one result of a VM entry (None: a replayed instruction finished without an exit)."""
        if result is None:
            return None
        if isinstance(result, GuestStopped):
            return result.stop
        if isinstance(result, EntryFailure):
            return StopRequest(StopReason.ERROR, detail=f"VM entry failed: {result}")
        self.stats[result.raw_reason & 0xFFFF] += 1
        if self.tracer is not None:
            self._trace_exit(result)
        if self._depth > 8:  # a replayed instruction keeps exiting the same way: a VMM bug, not a guest one
            return StopRequest(StopReason.ERROR, detail=f"the VMM cannot complete the guest's instruction: {result}")
        if self.keep_log:
            self.exits_log.append(result)
        handler = HANDLERS.get(result.reason)
        if handler is None:
            return StopRequest(StopReason.ERROR, detail=f"the VMM has no handler for {result}")
        self._depth += 1
        try:
            return handler(self, result)
        except CpuFault as fault:  # the guest's operand faulted while the VMM emulated: the guest's event
            self.vcpu.inject_exception(fault.vector, fault.error_code)
            if fault.vector == Vector.PF and fault.cr2 is not None:
                self.vcpu.set_cr2(fault.cr2)
            return None
        finally:
            self._depth -= 1

    def _guest_written(self, pa: int, size: int) -> None:
        """The VMM wrote guest memory (e.g. SGDT's answer): keep shadowed tables in step with it."""
        if self.shadows is not None:
            table = self.shadows.table_for(pa)
            if table is not None:
                table.sync()

    def note(self, text: str) -> None:
        tracer = self.vcpu.cpu.trace
        if tracer is not None:
            tracer.emit("note", vmx="root", text=text)

    # ------------------------------------------------------------------ exit statistics

    def exit_counts(self) -> list[dict]:
        """Exits by reason (number, SDM name, count), most frequent first."""
        out = []
        for number, count in self.stats.most_common():
            try:
                name = R(number).name
            except ValueError:
                name = f"reason {number}"
            out.append({"reason": number, "name": name, "count": count})
        return out

    def counts_by_name(self) -> dict[str, int]:
        """VM exits by SDM reason name (for summaries and ``vmxlab compare``)."""
        return {row["name"]: row["count"] for row in self.exit_counts()}

    def _trace_exit(self, e: VmExit) -> None:
        """kvm only: a "vm-exit" trace event per exit, in the same shape the emu VMX layer emits."""
        regs = self.vcpu.get_regs()
        self.tracer.emit("vm-exit", eip=e.guest_rip, cs=regs.get("cs", 0), cpl=regs.get("cpl", 0),
                         reason=int(e.raw_reason & 0xFFFF), reason_name=e.name, qualification=e.qualification,
                         fields=str(e.decoded) if e.decoded is not None else None, vmx="non-root",
                         guest={"rip": e.guest_rip, "rsp": e.guest_rsp, "length": e.instruction_length,
                                "gpa": e.guest_physical_address})

    # ------------------------------------------------------------------ handlers: events

    def on_exception(self, e: VmExit) -> StopRequest | None:
        """Exit 0: an exception the exception bitmap intercepts.  The VMM has no use for it here, so it
        reflects it into the guest unchanged -- #PF with CR2 = the qualification (SDM Vol.3C 28.2.1:
        CR2 is not loaded when a #PF exits)."""
        if not self.emu:  # KVM reports only debug events (single-step, breakpoints): a stop for the user
            return StopRequest(StopReason.VM_EXIT, detail=str(e))
        info = e.interruption
        if info is None:
            return None
        if info.vector == Vector.PF:
            self.vcpu.set_cr2(e.qualification)
        length = e.instruction_length if info.type in (InterruptionType.SOFTWARE_EXCEPTION,
                                                        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION) else 0
        self.vcpu.inject(info.vector, info.type, e.interruption_error_code, length)
        return None

    def on_external_interrupt(self, e: VmExit) -> StopRequest | None:
        """Exit 1: the VMM acknowledges the interrupt controller and injects the vector when the guest
        can take it, else asks for an interrupt window (SDM Vol.3C 26.7.5)."""
        intc = self.machine.intc
        if intc is None or not intc.intr:
            return None
        vector = intc.acknowledge()
        if not self.vcpu.inject_interrupt(vector):
            self.pending_irq = vector
            self.vcpu.request_interrupt_window(True)
        return None

    def on_interrupt_window(self, e: VmExit) -> StopRequest | None:
        if not self.emu:  # the KVM vCPU injects the PIC's pending interrupt itself on its next entry
            return None
        self.vcpu.request_interrupt_window(False)
        if self.pending_irq is not None and self.vcpu.inject_interrupt(self.pending_irq):
            self.pending_irq = None
        return None

    def on_triple_fault(self, e: VmExit) -> StopRequest:
        """SDM Vol.3A 6.15: a fault while delivering #DF shuts the processor down -- the guest's, here."""
        regs = self.vcpu.get_regs()
        return StopRequest(StopReason.TRIPLE_FAULT, detail=f"guest triple fault at {regs.get('cs', 0):04x}:"
                           f"{regs.get('eip', e.guest_rip):08x} (VM exit 2)")

    def on_preemption_timer(self, e: VmExit) -> None:
        return None

    def on_task_switch(self, e: VmExit) -> StopRequest:
        return StopRequest(StopReason.ERROR, detail=f"guest task switch ({e.decoded}): the VMM does not "
                           "emulate hardware task switches (VM exit 9)")

    # ------------------------------------------------------------------ handlers: instructions

    def on_cpuid(self, e: VmExit) -> None:
        """Exit 10 (always): answer from the VMM's table, not the CPU's."""
        v = self.vcpu
        a, b, c, d = cid.lookup(self.cpuid, v.gpr(EAX), v.gpr(ECX))
        v.set_gpr(EAX, a)
        v.set_gpr(EBX, b)
        v.set_gpr(ECX, c)
        v.set_gpr(EDX, d)
        v.skip_instruction(e)

    def on_hlt(self, e: VmExit) -> StopRequest | None:
        """Exit 12: the guest waits for an interrupt.  The VMM completes HLT by putting the vCPU in the
        HLT activity state; an injected interrupt wakes it (SDM Vol.3C 27.6.1)."""
        v = self.vcpu
        v.skip_instruction(e)
        if not self.emu:
            return v.wait_for_interrupt()  # KVM: block until the PIC, a timer or the terminal has something
        if not v.vmread(F.GUEST_RFLAGS) & (1 << 9):
            return StopRequest(StopReason.HALTED, detail="the guest executed HLT with interrupts disabled")
        if self.pending_irq is not None and v.inject_interrupt(self.pending_irq):
            self.pending_irq = None
            return None
        v.halt()
        return None

    def on_skip(self, e: VmExit) -> None:
        """INVD, WBINVD, INVLPG, PAUSE, MONITOR, MWAIT: nothing to virtualize in this machine (no caches;
        the TLB is flushed at every VM entry), so the VMM just completes them."""
        self.vcpu.skip_instruction(e)

    def on_rdpmc(self, e: VmExit) -> None:
        """Exit 15: the model has no performance counters: #GP(0) as for an invalid counter."""
        self.vcpu.inject_exception(Vector.GP, 0)

    def on_rdtsc(self, e: VmExit) -> None:
        """Exit 16: the VMM supplies the time stamp (here: the guest's TSC with the VMM's offset)."""
        from ..cpu.ops.system import read_tsc

        v = self.vcpu
        tsc = read_tsc(v.cpu)
        v.set_gpr(EAX, tsc & 0xFFFFFFFF)
        v.set_gpr(EDX, tsc >> 32)
        v.skip_instruction(e)

    def on_vmcall(self, e: VmExit) -> StopRequest | None:
        """Exit 18: a hypercall (see HYPERCALL_*); unknown functions return EAX = -1 (ENOSYS-like)."""
        v = self.vcpu
        fn = v.gpr(EAX)
        v.skip_instruction(e)
        if fn == HYPERCALL_PUTCHAR:
            self.machine.console.write(bytes([v.gpr(EBX) & 0xFF]), "vmcall")
            v.set_gpr(EAX, 0)
        elif fn == HYPERCALL_SHUTDOWN:
            return StopRequest(StopReason.SHUTDOWN_REQUEST, v.gpr(EBX) & 0xFF, "guest asked by VMCALL")
        elif fn == HYPERCALL_SIGNATURE:
            sig = b"vmxlabVMM   "
            v.set_gpr(EBX, int.from_bytes(sig[0:4], "little"))
            v.set_gpr(ECX, int.from_bytes(sig[4:8], "little"))
            v.set_gpr(EDX, int.from_bytes(sig[8:12], "little"))
            v.set_gpr(EAX, 0)
        else:
            v.set_gpr(EAX, 0xFFFFFFFF)
        return None

    def on_vmx_instruction(self, e: VmExit) -> None:
        """A VMX instruction in the guest: this VMM offers no nested VMX, so #UD, as KVM without nested."""
        self.vcpu.inject_exception(Vector.UD)

    def on_io(self, e: VmExit) -> StopRequest | None:
        """Exit 30: the VMM's device model answers.  IN/OUT are completed here; INS/OUTS are replayed
        with the access let through (emu_vcpu.replay_io) so REP/DF/faults stay exact."""
        q = e.decoded
        v = self.vcpu
        if q.string and self.emu:
            return self.handle(v.replay_io(e))
        if q.direction_in:
            v.complete_io_in(e, [self.ports.read(q.port, q.size) for _ in range(v.io_count(e))])
        else:
            for value in v.io_out_value(e):
                self.ports.write(q.port, q.size, value)
            v.complete_io_out(e)
        return None

    def _backdoor_read(self, port: int, size: int) -> int:
        v = self.vcpu
        if size == 4 and v.gpr(EAX) == BACKDOOR_MAGIC:
            v.set_gpr(EBX, BACKDOOR_MAGIC)  # "I am a VMM"
            self.note("VMM backdoor port 0x5658 answered")
            return 6  # a version number, as VMware returns
        return 0xFFFFFFFF

    def on_rdmsr(self, e: VmExit) -> None:
        """Exit 31: the VMM's virtual MSRs; an MSR it does not know gets #GP(0), as on hardware."""
        v = self.vcpu
        v.complete_rdmsr(e, self._read_msr(v.msr_index(e)))

    def on_wrmsr(self, e: VmExit) -> None:
        v = self.vcpu
        v.complete_wrmsr(e, self._write_msr(v.msr_index(e), v.wrmsr_value(e)))

    _SYSENTER = {cid.MSR_SYSENTER_CS: F.GUEST_IA32_SYSENTER_CS, cid.MSR_SYSENTER_ESP: F.GUEST_IA32_SYSENTER_ESP,
                 cid.MSR_SYSENTER_EIP: F.GUEST_IA32_SYSENTER_EIP}

    def _read_msr(self, index: int) -> int | None:
        v = self.vcpu
        if not self.emu:
            return self.msrs.values.get(index)
        if index == cid.MSR_TSC:
            from ..cpu.ops.system import read_tsc

            return read_tsc(v.cpu)
        if index == cid.MSR_EFER:
            return v.cpu.efer
        if index in self._SYSENTER:
            return v.vmread(self._SYSENTER[index])
        return self.msrs.values.get(index)

    def _write_msr(self, index: int, value: int) -> bool:
        v = self.vcpu
        if not self.emu:
            if index not in self.msrs.values:
                return False
            self.msrs.values[index] = value
            return True
        if index == cid.MSR_EFER:
            if value & ~cid.MSR_WRITABLE[cid.MSR_EFER]:
                return False
            v.cpu.efer = value
            return True
        if index in self._SYSENTER:
            v.vmwrite(self._SYSENTER[index], value & 0xFFFFFFFF)
            return True
        if index == cid.MSR_TSC:
            v.cpu.tsc_base = (value - (v.cpu.icount + v.cpu.idle_ticks)) & 0xFFFFFFFFFFFFFFFF
            return True
        if index in (cid.MSR_APIC_BASE, cid.MSR_MISC_ENABLE):
            self.msrs.values[index] = value
            return True
        return False  # FEATURE_CONTROL is locked; VMX capability MSRs do not exist for this guest

    def on_cr_access(self, e: VmExit) -> StopRequest | None:
        """Exit 28: the VMM keeps the guest's view of CR0/CR4 in the read shadows and the real value in
        the guest-state area with the bits VMX operation needs (CR0.NE, CR4.VMXE) forced on."""
        q = e.decoded
        v = self.vcpu
        if q.access_type == CrAccessType.MOV_TO_CR:
            value = v.gpr(q.general_purpose_register)
            self._write_cr(q.control_register, value)
        elif q.access_type == CrAccessType.MOV_FROM_CR:
            v.set_gpr(q.general_purpose_register, v.vmread(F.GUEST_CR3))
        elif q.access_type == CrAccessType.CLTS:
            self._write_cr(0, v.vmread(F.CR0_READ_SHADOW) & ~CR0_TS)
        else:  # LMSW: bits 3:0 of CR0 from the source; it never clears PE (SDM Vol.2 LMSW)
            shadow = v.vmread(F.CR0_READ_SHADOW)
            src = q.lmsw_source_data
            self._write_cr(0, (shadow & ~0xE) | (src & 0xF) | (shadow & CR0_PE))
        v.skip_instruction(e)
        return None

    def _write_cr(self, n: int, value: int) -> None:
        """Emulate MOV to CR0/CR3/CR4 with the architectural checks (SDM Vol.3A 2.5)."""
        from ..cpu.ops.system import CR4_SUPPORTED

        v = self.vcpu
        value &= 0xFFFFFFFF
        if n == 0:
            if value & CR0_PG and not value & CR0_PE or value & (1 << 29) and not value & (1 << 30):
                raise CpuFault(Vector.GP, 0)
            v.vmwrite(F.CR0_READ_SHADOW, value)
            v.vmwrite(F.GUEST_CR0, value | v.vmx.caps.cr0_fixed0 & ~(CR0_PE | CR0_PG))
            self._load_pdptes()
            if self.shadows is not None:
                self.shadows.gdt.sync()
                self.shadows.idt.sync()
        elif n == 3:
            v.vmwrite(F.GUEST_CR3, value)
            self._load_pdptes()
        elif n == 4:
            if value & ~CR4_SUPPORTED:
                raise CpuFault(Vector.GP, 0)
            v.vmwrite(F.CR4_READ_SHADOW, value)
            v.vmwrite(F.GUEST_CR4, value | CR4_VMXE)
            self._load_pdptes()

    def _load_pdptes(self) -> None:
        """With EPT, PAE paging's PDPTEs come from the VMCS at VM entry (SDM Vol.3C 27.3.2.4): a VMM
        that emulates a CR write enabling PAE paging loads them, as the CPU would have."""
        v = self.vcpu
        cr0, cr4 = v.vmread(F.GUEST_CR0), v.vmread(F.GUEST_CR4)
        if not (cr0 & CR0_PG and cr4 & CR4_PAE):
            return
        base = v.vmread(F.GUEST_CR3) & 0xFFFFFFE0
        for i, f in enumerate(GUEST_PDPTE):
            v.vmwrite(f, self.machine.memory.read(base + 8 * i, 8))

    def on_mov_dr(self, e: VmExit) -> None:
        """Exit 29: debug registers are the VMM's to give; DR7 lives in the guest-state area."""
        q = e.decoded
        v = self.vcpu
        n = q.debug_register
        if q.from_dr:
            value = v.vmread(F.GUEST_DR7) if n == 7 else self.dr[n if n < 7 else 6]
            v.set_gpr(q.general_purpose_register, value)
        elif n == 7:
            v.vmwrite(F.GUEST_DR7, (v.gpr(q.general_purpose_register) & 0xFFFF2BFF) | 0x400)
        else:
            self.dr[n if n < 6 else 6] = v.gpr(q.general_purpose_register)
        v.skip_instruction(e)

    def on_descriptor_table(self, e: VmExit) -> None:
        """Exit 46: LGDT/LIDT update the virtual register (and the shadow); SGDT/SIDT store the virtual
        register -- the table the guest loaded, never the VMM's shadow (SDM Vol.3C 26.1.3)."""
        info = InstructionInfo.decode(e.instruction_information)
        identity = info.reg2 & 3  # 0 SGDT, 1 SIDT, 2 LGDT, 3 LIDT (SDM Vol.3C Table 28-10)
        la = self._operand_address(e, info)
        table = None
        if self.shadows is not None:
            table = self.shadows.gdt if identity in (0, 2) else self.shadows.idt
        base_f, limit_f = (F.GUEST_GDTR_BASE, F.GUEST_GDTR_LIMIT) if identity in (0, 2) else (
            F.GUEST_IDTR_BASE, F.GUEST_IDTR_LIMIT)
        if identity >= 2:  # LGDT / LIDT
            limit = self.guest.read(la, 2)
            base = self.guest.read((la + 2) & 0xFFFFFFFF, 4)
            if not info.operand_size_32:
                base &= 0xFFFFFF
            if table is not None:
                table.load(base, limit)
                table.loaded_by_guest = True
                if self.policy.intercept_loads_only and self.shadows.gdt.loaded_by_guest \
                        and self.shadows.idt.loaded_by_guest:
                    self._set_secondary(1 << 2, False)  # from now on SGDT/SIDT run natively
            else:
                self.vcpu.vmwrite(base_f, base)
                self.vcpu.vmwrite(limit_f, limit)
        else:  # SGDT / SIDT
            if table is not None:
                base, limit = table.virtual.base, table.virtual.limit
            else:
                base, limit = self.vcpu.vmread(base_f), self.vcpu.vmread(limit_f)
            self.guest.write_bytes(la, limit.to_bytes(2, "little") + base.to_bytes(4, "little"))
            self.note(f"{('SGDT', 'SIDT')[identity]} answered with the virtual register {base:#x}/{limit:#x}")
        self.vcpu.skip_instruction(e)

    def on_ldtr_tr(self, e: VmExit) -> StopRequest | None:
        """Exit 47: SLDT/STR store the selector; LLDT/LTR are replayed with descriptor-table exiting
        off, so the CPU performs the descriptor checks and sets the busy bit exactly."""
        info = InstructionInfo.decode(e.instruction_information)
        identity = info.reg2 & 3  # 0 SLDT, 1 STR, 2 LLDT, 3 LTR (SDM Vol.3C Table 28-11)
        v = self.vcpu
        if identity < 2:
            selector = v.vmread(F.GUEST_LDTR_SELECTOR if identity == 0 else F.GUEST_TR_SELECTOR)
            if info.register_operand:
                v.set_gpr(info.reg1, selector)
            else:
                self.guest.write(self._operand_address(e, info), 2, selector)
            v.skip_instruction(e)
            return None
        result = self._replay_without(F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, 1 << 2)
        if identity == 3 and self.shadows is not None and result is None:
            self.shadows.gdt.write_back_descriptor(v.cpu.tr.selector)
        return self.handle(result)

    def _set_secondary(self, bit: int, on: bool) -> None:
        f = F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        value = self.vcpu.vmread(f)
        self.vcpu.vmwrite(f, value | bit if on else value & ~bit)

    def _replay_without(self, control: VmcsField, bit: int):
        v = self.vcpu
        saved = v.vmread(control)
        v.vmwrite(control, saved & ~bit)
        try:
            return v.step_guest()
        finally:
            v.vmx.vmcs[control] = saved
            hooks = v.vmx.nonroot
            if hooks is not None:
                hooks.secondary = saved if control == F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS \
                    else hooks.secondary

    def _operand_address(self, e: VmExit, info: InstructionInfo) -> int:
        """Guest-linear address of a memory operand from the instruction information and the
        displacement in the qualification (SDM Vol.3C 28.2.1, 28.2.5)."""
        v = self.vcpu
        mask = 0xFFFF if info.address_size == 2 else 0xFFFFFFFF
        off = e.qualification
        if not info.base_invalid:
            off += v.gpr(info.base)
        if not info.index_invalid:
            off += v.gpr(info.index) << info.scale
        seg_base = v.vmread((F.GUEST_ES_BASE, F.GUEST_CS_BASE, F.GUEST_SS_BASE, F.GUEST_DS_BASE,
                             F.GUEST_FS_BASE, F.GUEST_GS_BASE)[info.segment])
        return (seg_base + (off & mask)) & 0xFFFFFFFF

    def on_ept_violation(self, e: VmExit) -> StopRequest | None:
        """Exit 48: a guest-physical address outside guest RAM (an MMIO device, or nothing), or a write to
        a table the VMM shadows.  The instruction is replayed with that page reachable for one step."""
        gpa = e.guest_physical_address
        v = self.vcpu
        if not self.emu:
            return self._mmio_by_completion(e)
        if self.shadows is not None:
            table = self.shadows.table_for(gpa)
            if table is not None:
                table._unprotect()
                v._flush_ept_caches()
                result = v.step_guest()
                table.sync()
                self.note(f"guest wrote its {table.name} at {gpa:#x}: shadow updated")
                return self.handle(result)
        if v.guest_size <= gpa < self.machine.memory.size:
            # the VMM's own area: never let the guest see it -- behave as unbacked memory
            return StopRequest(StopReason.ERROR, detail=f"guest touched the VMM's memory at {gpa:#x}")
        self.note(f"MMIO access at guest-physical {gpa:#x}")
        return self.handle(v.replay_with_page(gpa))

    def _mmio_by_completion(self, e: VmExit) -> None:
        """kvm: KVM's emulator decoded the access; the VMM supplies the device's answer (or takes the
        store) from the machine's MMIO regions -- unbacked addresses read as all ones."""
        addr, size, is_write, value = self.vcpu.mmio_access(e)
        memory = self.machine.memory
        natural = size in (1, 2, 4, 8)
        if is_write:
            if natural:
                memory.write(addr, size, value)
            else:
                memory.write_bytes(addr, value.to_bytes(size, "little"))
            self.vcpu.complete_mmio_write(e)
        else:
            value = memory.read(addr, size) if natural else int.from_bytes(memory.read_bytes(addr, size), "little")
            self.vcpu.complete_mmio_read(e, value)
        return None

    def on_ept_misconfiguration(self, e: VmExit) -> StopRequest:
        return StopRequest(StopReason.ERROR, detail=f"EPT misconfiguration at {e.guest_physical_address:#x}: "
                           "a bug in the VMM's EPT tables")


def _h(name: str) -> Callable[[VirtualMachine, VmExit], StopRequest | None]:
    return getattr(VirtualMachine, name)


HANDLERS: dict[int, Callable[[VirtualMachine, VmExit], StopRequest | None]] = {
    R.EXCEPTION_OR_NMI: _h("on_exception"),
    R.EXTERNAL_INTERRUPT: _h("on_external_interrupt"),
    R.TRIPLE_FAULT: _h("on_triple_fault"),
    R.INTERRUPT_WINDOW: _h("on_interrupt_window"),
    R.TASK_SWITCH: _h("on_task_switch"),
    R.CPUID: _h("on_cpuid"),
    R.HLT: _h("on_hlt"),
    R.INVD: _h("on_skip"),
    R.INVLPG: _h("on_skip"),
    R.RDPMC: _h("on_rdpmc"),
    R.RDTSC: _h("on_rdtsc"),
    R.VMCALL: _h("on_vmcall"),
    R.CONTROL_REGISTER_ACCESS: _h("on_cr_access"),
    R.MOV_DR: _h("on_mov_dr"),
    R.IO_INSTRUCTION: _h("on_io"),
    R.RDMSR: _h("on_rdmsr"),
    R.WRMSR: _h("on_wrmsr"),
    R.MWAIT: _h("on_skip"),
    R.MONITOR: _h("on_skip"),
    R.PAUSE: _h("on_skip"),
    R.ACCESS_TO_GDTR_OR_IDTR: _h("on_descriptor_table"),
    R.ACCESS_TO_LDTR_OR_TR: _h("on_ldtr_tr"),
    R.EPT_VIOLATION: _h("on_ept_violation"),
    R.EPT_MISCONFIGURATION: _h("on_ept_misconfiguration"),
    R.VMX_PREEMPTION_TIMER_EXPIRED: _h("on_preemption_timer"),
    R.WBINVD_OR_WBNOINVD: _h("on_skip"),
}
for _r in (R.VMCLEAR, R.VMLAUNCH, R.VMPTRLD, R.VMPTRST, R.VMREAD, R.VMRESUME, R.VMWRITE, R.VMXOFF, R.VMXON,
           R.INVEPT, R.INVVPID):
    HANDLERS[_r] = _h("on_vmx_instruction")


def guest_cpuid_table() -> dict:
    """The CPUID the VMM shows its guests: the modelled CPU's, plus the hypervisor-present bit
    (CPUID.1:ECX[31], reserved for VMMs to set) and the vendor leaf 0x40000000 = "vmxlabVMM   "
    (the convention KVM and Hyper-V follow); VMX stays hidden (no nested VMX)."""
    table = cid.default_table()
    a, b, c, d = table[(1, 0)]
    table[(1, 0)] = (a, b, (c | cid.ECX_HYPERVISOR) & ~cid.ECX_VMX, d)
    sig = b"vmxlabVMM   "
    table[(0x40000000, 0)] = (0x40000000, int.from_bytes(sig[0:4], "little"), int.from_bytes(sig[4:8], "little"),
                              int.from_bytes(sig[8:12], "little"))
    return table


__all__ = ["VirtualMachine", "HANDLERS", "VmmPorts", "guest_cpuid_table", "CR4_VMXE"]
