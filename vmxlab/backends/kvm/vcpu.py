"""The VMM's :class:`~vmxlab.vmm.vcpu.Vcpu` on /dev/kvm: one KVM VM with one vCPU around a Machine.

What it sets up (api.rst section numbers in brackets):

* guest memory: the Machine's RAM and ROM windows as memory slots (guestmem.py) [4.35];
* KVM's private pages for real mode on Intel [4.40, 4.61];
* interrupts, one of two ways (``irqchip``):

  - ``"user"`` (default for ``vmxlab run``): the Machine's own 8259A and 8254 models, as on
    ``emu``; vmxlab injects the PIC's vector with KVM_INTERRUPT [4.16] when
    ``kvm_run.ready_for_interrupt_injection`` says the guest can take it, else sets
    ``request_interrupt_window`` and injects on KVM_EXIT_IRQ_WINDOW_OPEN.  HLT exits to
    userspace (KVM_EXIT_HLT) and waits here for the PIC.  Same devices, same behaviour.
  - ``"kernel"`` (Linux): KVM_CREATE_IRQCHIP + KVM_CREATE_PIT2 [4.24, 4.64] -- PIC, IOAPIC,
    LAPIC and PIT in the kernel, so timer interrupts and HLT never leave it.  The kernel then
    handles ports 0x20/0x21, 0xA0/0xA1, 0x40-0x43, 0x61 and 0x4D0/0x4D1 before any
    KVM_EXIT_IO is generated, so the Machine's PIC/PIT models stay attached but never see
    an access; device IRQ lines go to KVM_IRQ_LINE [4.25] through ``machine.irq_router``.

* CPUID: KVM_GET_SUPPORTED_CPUID, then the VMM's changes (``cpuid_filter``), then
  KVM_SET_CPUID2 [4.46, 4.47];
* MSRs: KVM_CAP_X86_USER_SPACE_MSR [7.x] so accesses KVM rejects (unknown or invalid MSRs)
  and those denied by an MSR filter (``msr_exits``, KVM_X86_SET_MSR_FILTER [4.97]) exit to
  the VMM as RDMSR/WRMSR;
* registers through ``kvm_run.s.regs`` (KVM_CAP_SYNC_REGS): KVM copies the registers out on
  every exit and reads back the parts marked dirty, because on the PVM hosts each
  KVM_GET_REGS/KVM_SET_REGS ioctl costs ~10 µs, as much as a whole exit;
* single-step and hardware breakpoints with KVM_SET_GUEST_DEBUG [4.59].

``run()`` returns what ``VmxCpu.vmresume`` returns on ``emu``: a :class:`VmExit` (exits.py maps
KVM's exits onto SDM exit reasons), an :class:`EntryFailure` (KVM_EXIT_FAIL_ENTRY), or a
:class:`GuestStopped` (timeout, a device's stop request, an error KVM reported).  Exits that
are KVM's business and not the VMM's are handled inside ``run()``: interrupt injection,
kicks, and -- on PVM hosts -- the instructions KVM's emulator cannot run (insn_fallback.py).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ...machine.loaders import EntryState
from ...machine.machine import Machine, StopReason, StopRequest
from ...vmx.api import EntryFailure, GuestStopped, VmExit
from ...vmx.exit_reasons import ExitReason
from . import constants as k
from . import structs as s
from .api import Kvm, KvmError, KvmUnavailable, _libc_ioctl
from .availability import is_pvm
from .entry import GPR64, LongModeState, entry_regs, entry_sregs, long_mode_regs, long_mode_sregs
from .exits import MAX_INSN, ExitTranslator, describe_instruction
from .guestmem import IDENTITY_MAP_ADDR, TSS_ADDR, map_machine_memory
from .kick import Kicker

KE = k.ExitReason

# ---- kvm_run layout (kvm.md §3.2; checked against the ctypes structs in tests) -----------------
_RUN_REASON = struct.Struct("<I")  # exit_reason @8
_RUN_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset @32
_RUN_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write @32
_RUN_MSR = struct.Struct("<B7xIIQ")  # error, reason, index, data @32
_RUN_DEBUG = struct.Struct("<I4xQQQ")  # exception, pc, dr6, dr7 @32
_SYNC = s.KVM_SYNC_REGS_OFFSET
_REG_RSP = _SYNC + 6 * 8
_REG_RIP = _SYNC + 16 * 8
_REG_RFLAGS = _SYNC + 17 * 8
_SREGS = _SYNC + ctypes.sizeof(s.KvmRegs)
_SEG = struct.Struct("<QIHBBBBBBBBBx")  # kvm_segment
_U64 = struct.Struct("<Q")
_U64x2 = struct.Struct("<QQ")
_OFF_CS = _SREGS + s.KvmSregs.cs.offset
_OFF_SS = _SREGS + s.KvmSregs.ss.offset
_OFF_CR0 = _SREGS + s.KvmSregs.cr0.offset
_OFF_EFER = _SREGS + s.KvmSregs.efer.offset
#: the hot path's single unpack, from offset 8 of kvm_run: exit_reason; the KVM_EXIT_IO fields
#: (direction, size, port, count, data_offset @32); RSP @304+48 and RIP @304+128 of the synced
#: kvm_regs; the synced CS kvm_segment @304+144 (base, limit, selector, type, present, dpl, db, s, l,
#: g, avl, unusable).  The tuple is also the key of the translated-exit cache.
_HOT = struct.Struct("<I20xBBHIQ" + f"{_REG_RSP - 48}x" + "Q" + f"{_REG_RIP - _REG_RSP - 8}x" + "Q"
                     + f"{_OFF_CS - _REG_RIP - 8}x" + "QIHBBBBBBBBBx")
_KVM_RUN = k.KVM_RUN
_EXIT_IO, _EXIT_MMIO, _EXIT_HLT = KE.IO, KE.MMIO, KE.HLT

_CR0_PE = 1
_CR0_PG = 1 << 31
_EFER_LMA = 1 << 10
_RFLAGS_IF = 1 << 9
_RFLAGS_TF = 1 << 8

#: what KVM_CAP_X86_USER_SPACE_MSR sends to userspace: MSRs KVM does not know, accesses it finds
#: invalid, and accesses an MSR filter denies (api.rst 7.x "KVM_CAP_X86_USER_SPACE_MSR")
MSR_EXIT_REASONS = k.KVM_MSR_EXIT_REASON_INVAL | k.KVM_MSR_EXIT_REASON_UNKNOWN | k.KVM_MSR_EXIT_REASON_FILTER

#: how often a vCPU with the in-kernel irqchip is looked at for "halted with interrupts off"
HALT_POLL_SECONDS = 0.5

CpuidFilter = Callable[[list[s.KvmCpuidEntry2]], list[s.KvmCpuidEntry2]]

# CPUID leaf 1 (SDM Vol.2A CPUID, Table 3-10/3-11)
CPUID1_ECX_HYPERVISOR = 1 << 31  # reserved for hypervisors; Linux's X86_FEATURE_HYPERVISOR


def default_cpuid_filter(entries: list[s.KvmCpuidEntry2]) -> list[s.KvmCpuidEntry2]:
    """What kvmtool and Firecracker change in KVM's supported CPUID (kvm.md §2.2 step 7): leaf 1
    EBX[31:24] = initial APIC ID 0 and ECX bit 31 = running under a hypervisor."""
    for e in entries:
        if e.function == 1:
            e.ebx &= 0x00FFFFFF
            e.ecx |= CPUID1_ECX_HYPERVISOR
    return entries


@dataclass
class KvmExitStats:
    """Counters for reports: KVM exits by KVM reason, and what vmxlab handled on its own."""

    kvm_exits: dict[str, int]
    kicks: int = 0
    injected_interrupts: int = 0
    emulated_instructions: int = 0

    def count(self, reason: int) -> None:
        try:
            name = KE(reason).name
        except ValueError:
            name = str(reason)
        self.kvm_exits[name] = self.kvm_exits.get(name, 0) + 1


@dataclass(frozen=True)
class KvmEntryFailure(EntryFailure):
    """KVM_EXIT_FAIL_ENTRY: the hardware refused the VM entry (api.rst 5 "KVM_EXIT_FAIL_ENTRY").

    On VMX hosts ``hardware_reason`` is the exit-reason field of the failed entry (bit 31 set,
    e.g. 0x80000021 = 33 invalid guest state, SDM Vol.3C 27.8); on SVM it is VMEXIT_INVALID."""

    hardware_reason: int = 0

    def __str__(self) -> str:
        return (f"KVM_EXIT_FAIL_ENTRY: the CPU refused VM entry, hardware entry failure reason "
                f"{self.hardware_reason:#x}")


class KvmGuestVcpu:
    """The ``kvm`` side of the Vcpu protocol (vmm/vcpu.py).  Not thread-safe: one thread runs it;
    other threads may only raise IRQ lines and request stops (both kick the vCPU)."""

    backend = "kvm"

    def __init__(self, machine: Machine, *, irqchip: str = "user", cpuid_filter: CpuidFilter | None = None,
                 msr_exits: Iterable[int] = (), kvm: Kvm | None = None, fallback: bool = True,
                 syscall_fixup: bool = False) -> None:
        if irqchip not in ("user", "kernel"):
            raise ValueError(f"irqchip {irqchip!r}: expected 'user' or 'kernel'")
        self.machine = machine
        self.irqchip = irqchip
        self.kvm = kvm if kvm is not None else Kvm()
        self.kvm.require(k.Cap.USER_MEMORY, k.Cap.SET_TSS_ADDR, k.Cap.EXT_CPUID, k.Cap.IMMEDIATE_EXIT,
                         k.Cap.SYNC_REGS, k.Cap.READONLY_MEM, k.Cap.X86_USER_SPACE_MSR, k.Cap.X86_MSR_FILTER)
        self.pvm = is_pvm()
        self.vm = vm = self.kvm.create_vm()
        try:
            vm.set_tss_addr(TSS_ADDR)
            vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
            map_machine_memory(vm, machine.memory)
            if irqchip == "kernel":
                self.kvm.require(k.Cap.IRQCHIP, k.Cap.PIT2)
                vm.create_irqchip()
                vm.create_pit2(k.KVM_PIT_SPEAKER_DUMMY)
                machine.irq_router = vm.irq_line
            vm.enable_cap(k.Cap.X86_USER_SPACE_MSR, MSR_EXIT_REASONS)
            self.msr_exits = sorted(set(msr_exits))
            self.syscalls = None
            if syscall_fixup and self.pvm:  # pvm_syscall.py: a host bug worked around
                from .pvm_syscall import IA32_LSTAR, SyscallTrampoline

                self.syscalls = SyscallTrampoline(self)
                self.msr_exits = sorted({*self.msr_exits, IA32_LSTAR})
            if self.msr_exits:
                vm.set_msr_filter(msr_filter_ranges(self.msr_exits))
            self.cpu = vm.create_vcpu(0)
            self.cpuid = (cpuid_filter or default_cpuid_filter)(self.kvm.supported_cpuid())
            self.cpu.set_cpuid2(self.cpuid)
        except BaseException:
            vm.close()
            raise
        self.fd = self.cpu.fd
        self.run_map = self.cpu.run_map
        self.kvm_run = self.cpu.kvm_run
        sync_parts = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
        if self.syscalls is not None:  # the SYSCALL trampoline looks at pending events
            sync_parts |= k.KVM_SYNC_X86_EVENTS
        self.sync = self.cpu.enable_sync_regs(sync_parts)
        self.kicker = Kicker(self.kvm_run)
        self.translator = ExitTranslator(self.read_linear, self._emulated_pio)
        self.stats = KvmExitStats({})
        self.fallback = None
        if fallback:
            from .insn_fallback import InstructionFallback

            self.fallback = InstructionFallback(self)
        self.io_exits = 0
        self.last_exit: VmExit | None = None
        self.last_error: str | None = None
        self._last_io: tuple = (0,) * 6  # the _HOT tuple of the last IO exit
        self._vmm_window = False  # the VMM asked for an interrupt window (inject_interrupt returned False)
        self._wake = threading.Event()
        self._armed: float | None = None
        self._next_halt_check: float | None = None
        # the virtual clock cannot follow an instruction count KVM does not have: host time
        machine.clock.wall = True
        machine.on_stop = self._on_stop
        if irqchip == "user":
            machine.on_intr = self._on_intr
        machine.on_a20_change = None  # KVM has no A20 gate: addresses never wrap at 1 MiB

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        self.kicker.close()
        self.vm.close()
        self.kvm.close()

    def _on_intr(self) -> None:
        """The PIC's INTR output may have changed (possibly on another thread)."""
        self._wake.set()
        if threading.get_ident() != self.kicker.vcpu_thread:
            self.kicker.kick()

    def _on_stop(self) -> None:
        self._wake.set()
        if threading.get_ident() != self.kicker.vcpu_thread:
            self.kicker.kick()

    # ------------------------------------------------------------------ entry state

    def apply_entry(self, entry: EntryState) -> None:
        """Put the guest in a loader's entry state (docs/entry-state.md), as EmuBackend does."""
        self.machine.set_a20(True)
        self.set_fpu_defaults()
        if entry.mode == "reset":
            self._reset_state()
            return
        sr = self.cpu.get_sregs()
        entry_sregs(sr, entry, self.machine)
        self.cpu.set_sregs(sr)
        r = s.KvmRegs()
        entry_regs(r, entry)
        self.cpu.set_regs(r)

    def apply_long_mode(self, state: LongModeState) -> None:
        """A 64-bit entry (Linux's 64-bit boot protocol): page tables and GDT are already in memory."""
        self.set_fpu_defaults()
        sr = self.cpu.get_sregs()
        long_mode_sregs(sr, state)
        self.cpu.set_sregs(sr)
        r = s.KvmRegs()
        long_mode_regs(r, state)
        self.cpu.set_regs(r)

    def _reset_state(self) -> None:
        """The RESET state of SDM Vol.3A Table 10-1, which is what KVM_CREATE_VCPU gives; written
        explicitly so a reused vCPU starts the same way.  CR0 = 0x60000010 (CD, NW, ET)."""
        sr = self.cpu.get_sregs()
        from .entry import TYPE_CODE_RX_ACCESSED, TYPE_DATA_RW_ACCESSED, _system_segments, set_segment

        set_segment(sr.cs, 0xF000, 0xFFFF0000, 0xFFFF, TYPE_CODE_RX_ACCESSED)
        for name in ("ds", "es", "fs", "gs", "ss"):
            set_segment(getattr(sr, name), 0, 0, 0xFFFF, TYPE_DATA_RW_ACCESSED)
        _system_segments(sr)
        sr.gdt.base, sr.gdt.limit = 0, 0xFFFF
        sr.idt.base, sr.idt.limit = 0, 0xFFFF
        sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer = 0x60000010, 0, 0, 0, 0
        self.cpu.set_sregs(sr)
        r = s.KvmRegs()
        r.rip, r.rflags, r.rdx = 0xFFF0, 0x2, self.cpuid_signature()  # EDX = processor signature
        self.cpu.set_regs(r)

    def cpuid_signature(self) -> int:
        """CPUID.1:EAX of the table the guest sees: what EDX holds after RESET (SDM Vol.3A 10.1.4)."""
        return next((e.eax for e in self.cpuid if e.function == 1), 0x600)

    def set_fpu_defaults(self) -> None:
        """x87 control word 0x37F and MXCSR 0x1F80, the FNINIT / power-up values (SDM Vol.1 8.1.5,
        10.2.3.1); kvmtool and Firecracker set the same (kvm.md §2.2 step 9).  Written through the
        XSAVE image because KVM_SET_FPU ignores MXCSR on the hosts here (structs.KvmXsave)."""
        x = self.cpu.get_xsave()
        struct.pack_into("<HHI", x.region, 0, 0x37F, 0, 0)
        struct.pack_into("<I", x.region, 24, 0x1F80)
        self.cpu.set_xsave(x)

    def set_msrs(self, values: dict[int, int]) -> None:
        self.cpu.set_msrs(values)

    def set_lint_for_pic(self) -> None:
        """With the in-kernel irqchip: LAPIC LVT LINT0 = ExtINT (the 8259A's INTR) and LINT1 = NMI,
        as a BIOS leaves them (SDM Vol.3A 11.5.1; kvmtool ``kvm_cpu__set_lint``)."""
        st = self.cpu.get_lapic()
        raw = bytearray(bytes(st))  # (not st.regs: a c_char array reads as bytes cut at the first NUL)
        for off, mode in ((0x350, 7), (0x360, 4)):
            v = struct.unpack_from("<I", raw, off)[0]
            v = (v & ~0x700) | mode << 8
            struct.pack_into("<I", raw, off, v)
        ctypes.memmove(ctypes.addressof(st), bytes(raw), len(raw))
        self.cpu.set_lapic(st)

    # ------------------------------------------------------------------ registers (synced)

    def _sync_get(self) -> s.KvmSyncRegs:
        return self.sync

    def _dirty(self, part: int) -> None:
        self.kvm_run.kvm_dirty_regs |= part

    def _cs(self) -> tuple:
        return _SEG.unpack_from(self.run_map, _OFF_CS)

    def cpl(self) -> int:
        """CPL = SS.DPL in protected mode (SDM Vol.3A 5.5); 0 in real mode."""
        cr0 = _U64.unpack_from(self.run_map, _OFF_CR0)[0]
        if not cr0 & _CR0_PE:
            return 0
        return _SEG.unpack_from(self.run_map, _OFF_SS)[5]

    def bitness(self) -> int:
        """16, 32 or 64: the default operand/address size of the code running (SDM Vol.3A 5.2.1)."""
        seg = _SEG.unpack_from(self.run_map, _OFF_CS)
        efer = _U64.unpack_from(self.run_map, _OFF_EFER)[0]
        cr0 = _U64.unpack_from(self.run_map, _OFF_CR0)[0]
        if efer & _EFER_LMA and seg[8]:  # CS.L
            return 64
        if cr0 & _CR0_PE and seg[6]:  # CS.D
            return 32
        return 16

    def _mode(self) -> tuple[int, int]:
        return self.bitness(), self.cpl()

    def _emulated_pio(self, cpl: int) -> bool:
        return self.pvm and cpl == 0

    def get_regs(self) -> dict[str, int]:
        """eax..edi, eip, eflags, the 64-bit names, selectors, cr0/cr2/cr3/cr4, efer, cpl."""
        r = self.sync.regs
        sr = self.sync.sregs
        d = {name: getattr(r, name) for name in GPR64}
        for name32, name64 in zip(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"),
                                  ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")):
            d[name32] = d[name64] & 0xFFFFFFFF
        d.update(rip=r.rip, eip=r.rip & 0xFFFFFFFF, rflags=r.rflags, eflags=r.rflags & 0xFFFFFFFF)
        for name in ("es", "cs", "ss", "ds", "fs", "gs"):
            d[name] = getattr(sr, name).selector
        d.update(cr0=sr.cr0, cr2=sr.cr2, cr3=sr.cr3, cr4=sr.cr4, efer=sr.efer, cpl=self.cpl())
        return d

    def set_regs(self, **values: int) -> None:
        """Set general-purpose registers, RIP or RFLAGS by name (eax=..., rip=...); 32-bit names
        write the low half and clear the upper (as a 32-bit register write in 64-bit mode does)."""
        r = self.sync.regs
        for name, value in values.items():
            if name in ("eip", "eflags") or (len(name) == 3 and name[0] == "e"):
                name = "r" + name[1:]
                value &= 0xFFFFFFFF
            if not hasattr(r, name):
                raise ValueError(f"no register {name!r}")
            setattr(r, name, value)
        self._dirty(k.KVM_SYNC_X86_REGS)

    def sregs_changed(self) -> None:
        """The caller modified ``self.sync.sregs``: have KVM load it on the next entry."""
        self._dirty(k.KVM_SYNC_X86_SREGS)

    def state_dict(self) -> dict:
        """The same shape as the software CPU's ``state_dict`` (for --json and ``vmxlab compare``)."""
        r = self.sync.regs
        sr = self.sync.sregs
        d: dict = {n: getattr(r, "r" + n[1:]) & 0xFFFFFFFF
                   for n in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")}
        d["eip"] = r.rip & 0xFFFFFFFF
        d["eflags"] = r.rflags & 0xFFFFFFFF
        for n in ("es", "cs", "ss", "ds", "fs", "gs"):
            seg = getattr(sr, n)
            d[n] = {"selector": seg.selector, "base": seg.base, "limit": seg.limit, "ar": segment_ar(seg)}
        d.update(cr0=sr.cr0, cr2=sr.cr2, cr3=sr.cr3, cr4=sr.cr4, efer=sr.efer, cpl=self.cpl(),
                 gdtr=(sr.gdt.base, sr.gdt.limit), idtr=(sr.idt.base, sr.idt.limit))
        return d

    # ------------------------------------------------------------------ guest memory

    def read_guest_physical(self, addr: int, size: int) -> bytes:
        return self.machine.memory.read_bytes(addr, size)

    def translate(self, linear: int) -> int | None:
        """Guest-linear to guest-physical through the guest's own paging (KVM_TRANSLATE)."""
        sr = self.sync.sregs
        if not sr.cr0 & _CR0_PG:
            return linear & 0xFFFFFFFF
        t = self.cpu.translate(linear)
        return t.physical_address if t.valid else None

    def read_linear(self, linear: int, n: int) -> bytes:
        """Guest bytes at a linear address, page by page (ValueError if a page is not mapped)."""
        out = bytearray()
        while n > 0:
            chunk = min(n, 0x1000 - (linear & 0xFFF))
            pa = self.translate(linear)
            if pa is None:
                raise ValueError(f"linear address {linear:#x} is not mapped")
            out += self.machine.memory.read_bytes(pa, chunk)
            linear += chunk
            n -= chunk
        return bytes(out)

    def write_linear(self, linear: int, data: bytes) -> None:
        while data:
            chunk = min(len(data), 0x1000 - (linear & 0xFFF))
            pa = self.translate(linear)
            if pa is None:
                raise ValueError(f"linear address {linear:#x} is not mapped")
            self.machine.memory.write_bytes(pa, data[:chunk])
            linear += chunk
            data = data[chunk:]

    # ------------------------------------------------------------------ running

    def run(self, max_instructions: int | None = None, timeout: float | None = None
            ) -> VmExit | EntryFailure | GuestStopped:
        """KVM_RUN until an exit the VMM must see.  ``max_instructions`` cannot be honoured (KVM
        counts no instructions); ``timeout`` is host seconds."""
        machine = self.machine
        rm = self.run_map
        fd = self.fd
        kicker = self.kicker
        kicker.vcpu_thread = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        user_pic = self.irqchip == "user"
        next_event = machine.clock.next_event_ns
        intc = machine.intc
        io_cache = self.translator.cache
        while True:
            if machine.stop is not None:
                return GuestStopped(machine.stop)
            if deadline is not None or not user_pic or next_event() is not None:
                stop = self._timers(deadline)
                if stop is not None:
                    return GuestStopped(stop)
            if user_pic and (self._vmm_window or intc is not None and intc.intr):
                self._interrupts()
            if _libc_ioctl(fd, _KVM_RUN, 0) < 0:
                err = ctypes.get_errno()
                kicker.rearm()
                if err in (errno_mod.EINTR, errno_mod.EAGAIN):
                    self.stats.kicks += 1
                    if not user_pic:
                        stop = self._halt_check()
                        if stop is not None:
                            return GuestStopped(stop)
                    continue
                raise KvmError(_KVM_RUN, err)
            # one unpack for the hot exit: reason, the IO fields, RSP, RIP, CS (see _HOT)
            hot = _HOT.unpack_from(rm, 8)
            if hot[0] == _EXIT_IO:
                self._last_io = hot
                self.io_exits += 1
                ex = io_cache.get(hot)
                if ex is None:
                    ex = self.translator.io(hot[1] == k.KVM_EXIT_IO_IN, hot[2], hot[3], hot[4], hot[7], hot[6],
                                            hot[8:], self._mode, key=hot)
                self.last_exit = ex
                return ex
            result = self._other_exit(hot[0])
            if result is not None:
                self.last_exit = result if isinstance(result, VmExit) else self.last_exit
                return result

    def _other_exit(self, reason: int) -> VmExit | EntryFailure | GuestStopped | None:
        """Every exit but IO (the hot one).  None: handled here, enter the guest again."""
        rm = self.run_map
        self.stats.count(reason)
        rip = _U64.unpack_from(rm, _REG_RIP)[0]
        rsp = _U64.unpack_from(rm, _REG_RSP)[0]
        tr = self.translator
        if reason == _EXIT_MMIO:
            phys, _data, _length, is_write = _RUN_MMIO.unpack_from(rm, 32)
            return tr.mmio(phys, bool(is_write), rip, rsp, self._cs(), self._mode)
        if reason == _EXIT_HLT:
            return tr.hlt(rip, rsp)
        if reason in (KE.X86_RDMSR, KE.X86_WRMSR):
            if self.syscalls is not None and self._syscall_msr(reason):
                return None
            return tr.msr(reason == KE.X86_WRMSR, rip, rsp)
        if reason == KE.IRQ_WINDOW_OPEN:
            self.kvm_run.request_interrupt_window = 0
            if self._vmm_window and not (self.machine.intc is not None and self.machine.intc.intr):
                self._vmm_window = False
                return tr.interrupt_window(rip, rsp)
            return None
        if reason == KE.SHUTDOWN:
            return tr.triple_fault(rip, rsp)
        if reason == KE.DEBUG:
            exception, pc, dr6, _dr7 = _RUN_DEBUG.unpack_from(rm, 32)
            return tr.debug(exception, pc, dr6, rsp)
        if reason == KE.INTR:
            return None
        if reason == KE.INTERNAL_ERROR:
            return self._internal_error(rip)
        if reason == KE.FAIL_ENTRY:
            hw = self.kvm_run.fail_entry.hardware_entry_failure_reason
            basic = hw & 0xFFFF
            why = ExitReason(basic) if basic in (33, 34, 41) else ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE
            return KvmEntryFailure(None, None, why, 0, None, hardware_reason=hw)
        if reason == KE.SYSTEM_EVENT:
            ev = self.kvm_run.system_event.type
            if ev == k.KVM_SYSTEM_EVENT_RESET:
                return GuestStopped(StopRequest(StopReason.RESET, detail="KVM_SYSTEM_EVENT_RESET"))
            return GuestStopped(StopRequest(StopReason.SHUTDOWN_REQUEST, detail=f"KVM system event {ev}"))
        try:
            name = KE(reason).name
        except ValueError:
            name = str(reason)
        return GuestStopped(StopRequest(StopReason.ERROR, detail=f"unexpected KVM exit {name} at RIP {rip:#x}"))

    def _syscall_msr(self, reason: int) -> bool:
        """IA32_LSTAR accesses belong to the SYSCALL trampoline (pvm_syscall.py), not to the VMM."""
        from .pvm_syscall import IA32_LSTAR

        m = self.kvm_run.msr
        if m.index != IA32_LSTAR:
            return False
        if reason == KE.X86_WRMSR:
            self.syscalls.wrmsr_lstar(m.data)
        else:
            m.data = self.syscalls.rdmsr_lstar()
        m.error = 0
        return True

    def _internal_error(self, rip: int) -> GuestStopped | None:
        """KVM_EXIT_INTERNAL_ERROR.  Suberror 1 (emulation) carries the instruction bytes: on PVM
        hosts these are instructions KVM's emulator lacks (kvm.md §2.6), which insn_fallback.py
        runs in Python; anything else stops the run with the instruction named."""
        if self.syscalls is not None and self.syscalls.is_landing(rip):
            self.syscalls.complete_syscall()
            return None
        ie = self.kvm_run.internal
        sub = ie.suberror
        code = b""
        if sub == k.KVM_INTERNAL_ERROR_EMULATION and ie.ndata >= 3 and ie.data[0] & 1:
            ef = self.kvm_run.emulation_failure
            code = bytes(ef.insn_bytes)[: min(ef.insn_size, MAX_INSN)]
        if code and self.fallback is not None and self.fallback.emulate(code):
            self.stats.emulated_instructions += 1
            return None
        names = {1: "emulation failure", 2: "exception while delivering an exception",
                 3: "error while delivering an event", 4: "unexpected hardware exit reason"}
        what = names.get(sub, f"suberror {sub}")
        if code:
            insn = describe_instruction(code, self.bitness(), rip)
            detail = f"KVM could not run {insn} at RIP {rip:#x} (KVM_EXIT_INTERNAL_ERROR, {what})"
        else:
            data = " ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
            detail = f"KVM_EXIT_INTERNAL_ERROR ({what}) at RIP {rip:#x}, data [{data}]"
        self.last_error = detail
        if sub in (2, 3):  # a fault while delivering an event: what a triple fault is made of
            return GuestStopped(StopRequest(StopReason.TRIPLE_FAULT, detail=detail))
        return GuestStopped(StopRequest(StopReason.ERROR, detail=detail))

    # ------------------------------------------------------------------ interrupts and time

    def _interrupts(self) -> None:
        """User-space PIC: inject its vector when the guest can take it, else ask for a window
        (api.rst 5 "request_interrupt_window", 4.16 KVM_INTERRUPT)."""
        intc = self.machine.intc
        if intc is None or not intc.intr:
            if self._vmm_window:
                self.kvm_run.request_interrupt_window = 1
            return
        rm = self.run_map
        if rm[12] and rm[13]:  # ready_for_interrupt_injection, if_flag
            vector = intc.acknowledge()
            self.cpu.interrupt(vector)
            self.stats.injected_interrupts += 1
            if intc.intr:
                self.kvm_run.request_interrupt_window = 1
        else:
            self.kvm_run.request_interrupt_window = 1

    def _timers(self, deadline: float | None) -> StopRequest | None:
        """Run due device-model timers; arm a kick for the next one or for the timeout."""
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return StopRequest(StopReason.TIMEOUT)
        clock = self.machine.clock
        wake = deadline
        if self.irqchip == "kernel":
            # HLT never leaves the kernel here: look at the vCPU now and then (_halt_check)
            if self._next_halt_check is None or now >= self._next_halt_check + HALT_POLL_SECONDS:
                self._next_halt_check = now + HALT_POLL_SECONDS
            wake = self._next_halt_check if wake is None else min(wake, self._next_halt_check)
        nxt = clock.next_event_ns()
        if nxt is not None:
            delta = nxt - clock.now_ns()
            if delta <= 0:
                clock.run_due()
                if self.machine.stop is not None:
                    return self.machine.stop
                nxt = clock.next_event_ns()
                delta = None if nxt is None else nxt - clock.now_ns()
            if delta is not None:
                t = now + max(delta, 0) / 1e9
                wake = t if wake is None else min(wake, t)
        if wake != self._armed:
            self._armed = wake
            self.kicker.arm(wake)
        return None

    def _halt_check(self) -> StopRequest | None:
        """In-kernel irqchip: KVM handles HLT itself, so a guest that halted with interrupts disabled
        (Linux after ``poweroff``, a ``cli; hlt`` guest) would wait forever.  KVM_GET_MP_STATE says
        whether the vCPU is halted; with RFLAGS.IF = 0 nothing but an NMI can wake it -- the same
        condition ``emu`` reports as "HLT with interrupts disabled"."""
        now = time.monotonic()
        if self._next_halt_check is not None and now < self._next_halt_check:
            return None
        self._next_halt_check = now + HALT_POLL_SECONDS
        if self.cpu.get_mp_state() == k.KVM_MP_STATE_HALTED and not self.sync.regs.rflags & _RFLAGS_IF:
            return StopRequest(StopReason.HALTED, detail="HLT with interrupts disabled")
        return None

    def wait_for_interrupt(self, timeout: float | None = None) -> StopRequest | None:
        """After a HLT exit (user-space PIC): wait until the PIC has a request, a timer is due or a
        stop is requested.  Returns a stop when nothing can wake the guest (as ``emu`` does:
        HLT with IF = 0, or no timer and no attached terminal) or at the timeout."""
        machine = self.machine
        deadline = None if timeout is None else time.monotonic() + timeout
        if_set = bool(self.sync.regs.rflags & _RFLAGS_IF)
        while True:
            if machine.stop is not None:
                return machine.stop
            intc = machine.intc
            if if_set and intc is not None and intc.intr:
                return None
            clock = machine.clock
            nxt = clock.next_event_ns()
            if not if_set or (nxt is None and not machine.input_attached):
                why = "interrupts disabled" if not if_set else "no timer or device can interrupt"
                return StopRequest(StopReason.HALTED, detail=f"HLT with {why}")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return StopRequest(StopReason.TIMEOUT)
            wait = None if deadline is None else deadline - now
            if nxt is not None:
                delta = (nxt - clock.now_ns()) / 1e9
                if delta <= 0:
                    clock.run_due()
                    continue
                wait = delta if wait is None else min(wait, delta)
            if machine.input_attached:
                wait = 0.05 if wait is None else min(wait, 0.05)
            self._wake.wait(wait)
            self._wake.clear()

    def kick(self) -> None:
        """Make a KVM_RUN in progress (or the next one) return (any thread)."""
        self.kicker.kick()

    # ------------------------------------------------------------------ completing exits

    def io_count(self, exit_: VmExit) -> int:
        """Elements of the last I/O exit: 1, or up to a page's worth for REP INS/OUTS."""
        return self._last_io[4]

    def io_out_value(self, exit_: VmExit) -> list[int]:
        _, _, size, _, count, data_offset = self._last_io[:6]
        rm = self.run_map
        if count == 1:
            if size == 1:
                return [rm[data_offset]]
            return [int.from_bytes(rm[data_offset : data_offset + size], "little")]
        return [int.from_bytes(rm[data_offset + i * size : data_offset + (i + 1) * size], "little")
                for i in range(count)]

    def complete_io_in(self, exit_: VmExit, values: list[int]) -> None:
        _, _, size, _, count, data_offset = self._last_io[:6]
        rm = self.run_map
        if count == 1 and size == 1:
            rm[data_offset] = values[0] & 0xFF
            return
        for i, v in enumerate(values[:count]):
            rm[data_offset + i * size : data_offset + (i + 1) * size] = (v & ((1 << (8 * size)) - 1)).to_bytes(
                size, "little")

    def complete_io_out(self, exit_: VmExit) -> None:
        """Nothing to do: KVM completes the OUT when it re-enters the guest."""

    def mmio_access(self, exit_: VmExit) -> tuple[int, int, bool, int]:
        phys, data, length, is_write = _RUN_MMIO.unpack_from(self.run_map, 32)
        value = int.from_bytes(data[:length], "little") if is_write else 0
        return phys, length, bool(is_write), value

    def complete_mmio_read(self, exit_: VmExit, value: int) -> None:
        length = _RUN_MMIO.unpack_from(self.run_map, 32)[2]
        self.run_map[40 : 40 + length] = (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")

    def complete_mmio_write(self, exit_: VmExit) -> None:
        """Nothing to do: KVM's emulator already finished the store."""

    def complete_rdmsr(self, exit_: VmExit, value: int | None) -> None:
        """Fill ``kvm_run.msr.data``; ``error = 1`` makes KVM inject #GP(0) (api.rst 5, RDMSR)."""
        m = self.kvm_run.msr
        if value is None:
            m.error = 1
        else:
            m.error = 0
            m.data = value & 0xFFFFFFFFFFFFFFFF

    def complete_wrmsr(self, exit_: VmExit, ok: bool) -> None:
        self.kvm_run.msr.error = 0 if ok else 1

    def msr_index(self, exit_: VmExit) -> int:
        """The MSR of a RDMSR/WRMSR exit (what ECX held; KVM reports it directly)."""
        return self.kvm_run.msr.index

    def wrmsr_value(self, exit_: VmExit) -> int:
        """EDX:EAX of a WRMSR exit."""
        return self.kvm_run.msr.data

    def skip_instruction(self, exit_: VmExit) -> None:
        """Advance past the exiting instruction where KVM has not done it already.

        KVM has finished HLT before its exit and finishes I/O, MMIO and MSR instructions itself
        when the guest is resumed, so for those there is nothing to do; for any other exit RIP
        is moved by the instruction length (as ``VmxCpu.skip_instruction`` does)."""
        if exit_.reason in (ExitReason.HLT, ExitReason.IO_INSTRUCTION, ExitReason.EPT_VIOLATION,
                            ExitReason.RDMSR, ExitReason.WRMSR, ExitReason.TRIPLE_FAULT,
                            ExitReason.EXCEPTION_OR_NMI, ExitReason.INTERRUPT_WINDOW):
            return
        r = self.sync.regs
        r.rip = exit_.guest_rip + exit_.instruction_length
        self._dirty(k.KVM_SYNC_X86_REGS)

    def inject_interrupt(self, vector: int) -> bool:
        """KVM_INTERRUPT if the guest can take an interrupt now; else request an interrupt window
        (reported to the VMM as exit 7) and return False.  Only with the user-space irqchip."""
        if self.irqchip != "user":
            raise RuntimeError("with the in-kernel irqchip, raise a line (machine.irq_line) instead")
        rm = self.run_map
        if rm[12] and rm[13]:
            self.cpu.interrupt(vector)
            self.stats.injected_interrupts += 1
            return True
        self._vmm_window = True
        self.kvm_run.request_interrupt_window = 1
        return False

    # ------------------------------------------------------------------ debugging

    def set_guest_debug(self, *, single_step: bool = False, breakpoints: Sequence[int] = ()) -> None:
        """Single-step (KVM_GUESTDBG_SINGLESTEP) and up to four hardware execution breakpoints
        (DR0-DR3 with DR7 L0-L3 and R/W = 00, SDM Vol.3B 18.2.4); each stop is a VmExit with
        reason 0 (#DB).  No arguments: debugging off."""
        if len(breakpoints) > 4:
            raise ValueError("at most four hardware breakpoints (DR0-DR3)")
        control = 0
        regs = [0] * 8
        if single_step or breakpoints:
            control = k.KVM_GUESTDBG_ENABLE
        if single_step:
            control |= k.KVM_GUESTDBG_SINGLESTEP
        if breakpoints:
            control |= k.KVM_GUESTDBG_USE_HW_BP
            dr7 = 0
            for i, addr in enumerate(breakpoints):
                regs[i] = addr
                dr7 |= 1 << (2 * i)  # Ln: local enable; R/W and LEN = 0: instruction execution
            regs[7] = dr7
        self.cpu.set_guest_debug(control, regs)


def segment_ar(seg: s.KvmSegment) -> int:
    """A ``kvm_segment``'s attributes in the VMX access-rights format (SDM Vol.3C Table 25-2), the
    format the software CPU's state uses."""
    return (seg.type | seg.s << 4 | seg.dpl << 5 | seg.present << 7 | seg.avl << 12 | seg.l << 13
            | seg.db << 14 | seg.g << 15 | seg.unusable << 16)


def msr_filter_ranges(msrs: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """KVM_X86_SET_MSR_FILTER ranges that deny exactly ``msrs`` (a 0 bit denies, api.rst 4.97):
    one range per MSR, so every other MSR keeps KVM's default handling."""
    if len(msrs) > s.KVM_MSR_FILTER_MAX_RANGES:
        raise KvmUnavailable(f"at most {s.KVM_MSR_FILTER_MAX_RANGES} MSRs can exit to the VMM on KVM")
    # bit 0 = the MSR itself (denied), bits 1-7 = the next seven (allowed)
    return [(k.KVM_MSR_FILTER_READ | k.KVM_MSR_FILTER_WRITE, index, b"\xfe") for index in msrs]
