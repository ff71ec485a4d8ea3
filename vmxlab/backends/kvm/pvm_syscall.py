"""SYSCALL from guest user mode on PVM hosts: finish the privilege switch that the host leaves undone.

What goes wrong.  On the PVM hosts (kvm.md §0) guest ring-3 code runs natively and ring-0 code in
KVM's emulator.  When a ring-3 process executes SYSCALL, the host does most of what the SDM says
(Vol.2B "SYSCALL"): RCX = the next RIP, R11 = RFLAGS, RFLAGS &= ~IA32_FMASK, RIP = IA32_LSTAR --
but it leaves CS and SS (so the CPL) at their user values.  Measured here: after a ring-3 SYSCALL
the vCPU is at LSTAR with CS = 0x2B, CPL 3, RCX/R11 correct.  Linux's entry_SYSCALL_64 then
faults on its own first instruction fetch (a supervisor page fetched at CPL 3) and the kernel
kills init: "init[1]: segfault at ffffffff81c00080 ... RIP: 0033:entry_SYSCALL_64".

What vmxlab does.  It gets control at that moment and completes the switch:

1. IA32_LSTAR (MSR 0xC0000082) is put in KVM's MSR filter (api.rst 4.97), so the kernel's
   WRMSR of its syscall entry exits to vmxlab, which remembers the value and gives the *host* a
   different one: a trampoline address ``T`` in an unused, kernel-shared slot of the guest's
   top-level page table (Documentation/arch/x86/x86_64/mm.rst: "unused hole"), mapped
   user-accessible (so the CPL-3 fetch passes the permission check) to a guest-physical address
   with no memory behind it.  RDMSR of LSTAR returns the kernel's value, so the guest never sees
   ``T``.  The page-table pages live in the e820-reserved range below 1 MiB, which the kernel
   does not allocate from; the kernel copies the kernel half of its top-level table into every
   new process (pgd_alloc), so every address space gets the slot.
2. A SYSCALL from ring 3 now lands at ``T``; fetching from unbacked memory ends KVM's emulation
   with KVM_EXIT_INTERNAL_ERROR.  vmxlab recognises RIP = ``T`` and does the rest of SYSCALL: CS
   = IA32_STAR[47:32] (64-bit code, DPL 0), SS = IA32_STAR[47:32] + 8 (data, DPL 0), RIP = the
   kernel's LSTAR (SDM Vol.2B "SYSCALL", Operation), then resumes.  SYSRET is run by KVM's
   emulator correctly and needs nothing.

On hosts with VMX or SVM none of this is installed (it is only used when PVM is detected).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .entry import TYPE_CODE_RX_ACCESSED, TYPE_DATA_RW_ACCESSED, set_segment

if TYPE_CHECKING:
    from .vcpu import KvmGuestVcpu

IA32_STAR = 0xC0000081
IA32_LSTAR = 0xC0000082

#: candidate PML4 slots for the trampoline: unused holes of the 4-level layout in mm.rst
#: (fffffe8000000000, fffffc0000000000-fffffdffffffffff), all above KERNEL_PGD_BOUNDARY so that
#: pgd_alloc copies them into every process
CANDIDATE_SLOTS = (509, 504, 505, 506, 507)
#: guest-physical pages for the trampoline's PDPT, PD and PT: inside the e820-reserved range
#: 0x9FC00-0xFFFFF (vmxlab/linux/bootparams.py), never allocated by the kernel
TABLE_PAGES = (0xE0000, 0xE1000, 0xE2000)
#: where T points: no memory slot, no MMIO region -> a fetch cannot be emulated
UNBACKED_GPA = 0xF0000000

PTE_P, PTE_RW, PTE_US = 1, 2, 4
#: consecutive landings that may wait for an event before the switch is forced
MAX_DEFERRALS = 100


def canonical(slot: int) -> int:
    """The linear address of the first byte of a PML4 slot (sign-extended from bit 47)."""
    addr = slot << 39
    return addr | 0xFFFF000000000000 if addr & (1 << 47) else addr


class SyscallTrampoline:
    def __init__(self, vcpu: KvmGuestVcpu) -> None:
        self.vcpu = vcpu
        self.guest_lstar: int | None = None
        self.address: int | None = None  # T, once installed
        self.star: int | None = None
        self.fixups = 0
        #: landings that waited for an event KVM was delivering (see complete_syscall)
        self.deferrals = 0
        self._deferred = 0

    # ------------------------------------------------------------------ MSR exits

    def wrmsr_lstar(self, value: int) -> None:
        """The kernel sets its syscall entry: remember it, map T, point the host's LSTAR at T."""
        self.guest_lstar = value
        if self.address is None:
            self.address = self._install()
        if self.address is not None:
            self.vcpu.cpu.set_msrs({IA32_LSTAR: self.address})
        else:  # no free slot: behave as without the trampoline
            self.vcpu.cpu.set_msrs({IA32_LSTAR: value})
        self.star = None

    def rdmsr_lstar(self) -> int:
        if self.guest_lstar is None:
            return self.vcpu.cpu.get_msrs([IA32_LSTAR]).get(IA32_LSTAR, 0)
        return self.guest_lstar

    def _install(self) -> int | None:
        v = self.vcpu
        mem = v.machine.memory
        cr3 = v.sync.sregs.cr3 & 0x000FFFFFFFFFF000
        if v.sync.sregs.cr4 & (1 << 12):  # CR4.LA57: 5-level paging, not handled
            return None
        for slot in CANDIDATE_SLOTS:
            entry = cr3 + 8 * slot
            if mem.read(entry, 8) == 0:
                break
        else:
            return None
        pdpt, pd, pt = TABLE_PAGES
        for page in TABLE_PAGES:
            mem.write_bytes(page, bytes(4096))
        flags = PTE_P | PTE_RW | PTE_US
        mem.write_bytes(pdpt, struct.pack("<Q", pd | flags))
        mem.write_bytes(pd, struct.pack("<Q", pt | flags))
        mem.write_bytes(pt, struct.pack("<Q", UNBACKED_GPA | PTE_P | PTE_US))  # read-only, executable
        mem.write_bytes(entry, struct.pack("<Q", pdpt | flags))
        return canonical(slot)

    # ------------------------------------------------------------------ the landing

    def is_landing(self, rip: int) -> bool:
        return self.address is not None and rip == self.address

    def complete_syscall(self) -> bool:
        """SDM Vol.2B SYSCALL, the part the host skipped: CS and SS from IA32_STAR[47:32], CPL 0,
        RIP = the kernel's IA32_LSTAR.  (RCX, R11 and RFLAGS were already set by the host.)

        Not while KVM holds an event it is delivering (an injected interrupt, NMI or exception, in
        ``kvm_run.s.regs.events`` and in the sregs' interrupt bitmap): switched to CPL 0 here, the
        event would be delivered at the kernel's entry point on the *user* stack (a same-privilege
        delivery switches no stack, SDM Vol.3A 6.12.1) -- a double fault.  Then the vCPU resumes
        unchanged: the event is delivered in the user context, the handler returns to ``T``, and
        the next landing completes the SYSCALL.  Returns True if it switched."""
        v = self.vcpu
        ev = v.sync.events
        pending = (ev.interrupt.injected or ev.nmi.injected or ev.exception.injected or ev.exception.pending
                   or any(v.sync.sregs.interrupt_bitmap))
        if pending and self._deferred < MAX_DEFERRALS:
            self._deferred += 1
            self.deferrals += 1
            return False
        self._deferred = 0
        if self.star is None:
            self.star = v.cpu.get_msrs([IA32_STAR]).get(IA32_STAR, 0)
        sel = (self.star >> 32) & 0xFFFC
        sr = v.sync.sregs
        set_segment(sr.cs, sel, 0, 0xFFFFFFFF, TYPE_CODE_RX_ACCESSED, db=0, g=1, l_=1)
        set_segment(sr.ss, sel + 8, 0, 0xFFFFFFFF, TYPE_DATA_RW_ACCESSED, db=1, g=1)
        v.sregs_changed()
        v.set_regs(rip=self.guest_lstar)
        self.fixups += 1
        return True
