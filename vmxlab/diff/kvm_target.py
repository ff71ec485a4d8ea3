"""The real CPU: run a program natively at CPL 3 through /dev/kvm.

Why 64-bit code.  On the PVM hosts here (../shared/reference/kvm.md §0) only
64-bit ring-3 code runs natively.  Measured on this machine type with a
``dec ecx; jnz`` loop started directly at CPL 3 through KVM_SET_SREGS:

=======================================================  ===============================
CPL-3 code segment                                       time per loop iteration
=======================================================  ===============================
64-bit (long mode, CS.L = 1)                             ~0.5-0.9 ns   (native)
32-bit compatibility mode (long mode, CS.L = 0, D = 1)   ~510 ns       (KVM's emulator)
32-bit protected mode, paging off (EFER = 0)             ~390 ns       (KVM's emulator)
32-bit protected mode, 32-bit paging                     SHUTDOWN at the first instruction
=======================================================  ===============================

(the same with Linux's own selectors 0x23/0x2b/0x33; with EFER = 0, KVM_SET_SREGS silently drops
CR0.PG -- it reads back as 0x11 -- for 32-bit, PSE and PAE paging alike.)  So 32-bit ring-3 code is
*not* run by the CPU here but by KVM's instruction emulator, which would make
this a test of KVM's emulator, not of the hardware.  The closest workable
alternative is what :mod:`vmxlab.diff.program` does: execute the same operation
as 64-bit code.  With 32-bit operand size and 32-bit address size (0x67) an
integer instruction computes exactly what it computes in 32-bit mode (SDM Vol.1
3.3.7, 3.6.1): the results of 32-bit operations are zero-extended into the upper
halves, which therefore stay 0 and are never read.  What cannot be checked this
way are instructions that are invalid or different in 64-bit mode (BCD, 32-bit
PUSH/POP and everything that uses the stack with 32-bit width, BOUND, INTO,
segment loads): :mod:`vmxlab.diff.gen` marks them (``Template.kvm64``) and they are
compared on the native32 target instead (native_target.py: 32-bit code in compatibility
mode in a user process of this machine).  On a host where KVM uses VMX or SVM, 32-bit
ring-3 code would run natively under KVM too; this target does not need that.

How a program ends.  The last instruction stores EAX to a page mapped to a
guest-physical address outside every memory slot: a KVM_EXIT_MMIO.  IOPL stays 0
(``out`` with IOPL = 3 would also exit, but PVM runs user code with the
hardware IOPL = 0, so PUSHF would disagree with the architectural value).
Exceptions go through a 64-bit IDT to ring-0 stubs that ``hlt``: KVM_EXIT_HLT,
and the frame on the ring-0 stack gives the vector, error code and faulting RIP
(SDM Vol.3A 6.14.2).  Those few ring-0 instructions run in KVM's emulator; the
values compared come from the frame the CPU (or PVM) built.

Measured costs on this machine (Python; the ranges are the spread between a quiet and a loaded
2-vCPU machine): KVM_SET_REGS / KVM_GET_REGS / KVM_SET_SREGS 10-20 µs each on PVM, so registers
travel through ``kvm_run.s.regs`` (KVM_CAP_SYNC_REGS) instead; a ring-3 ``out`` loop exits every
20-70 µs; one program, including the MMIO exit, its completion run and reading two pages, takes
about 120 µs.  After a fault (ring-0 handler, emulated) the next program runs natively again:
a 2-million-iteration loop takes ~1 ms.
"""

from __future__ import annotations

import struct

from ..backends.kvm import Cap, ExitReason, Kvm, KvmVcpu, KvmVm, segment
from ..backends.kvm import constants as k
from ..backends.kvm import structs as s
from . import layout as L
from .outcome import EXIT_PAGE_ACCESS, Fault, Outcome
from .program import Program

# 4-level paging entry bits (SDM Vol.3A 4.5, Table 4-15 .. 4-20)

_GDT = {
    L.SEL_KCODE: 0x00AF9B000000FFFF,  # 64-bit code, DPL 0
    L.SEL_KDATA: 0x00CF93000000FFFF,
    L.SEL_UDATA & ~3: 0x00CFF3000000FFFF,  # data, DPL 3
    L.SEL_UCODE64 & ~3: 0x00AFFB000000FFFF,  # 64-bit code, DPL 3
}


def _tss64_descriptor(base: int, limit: int) -> tuple[int, int]:
    """A 16-byte available 64-bit TSS descriptor (SDM Vol.3A 8.2.3, Figure 8-4)."""
    lo = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89 << 40 | ((limit >> 16) & 0xF) << 48 | \
        ((base >> 24) & 0xFF) << 56
    return lo, base >> 32


def _gate64(offset: int, selector: int) -> bytes:
    """A 64-bit interrupt gate, DPL 0 (SDM Vol.3A 6.14.1, Figure 6-8)."""
    lo = (offset & 0xFFFF) | selector << 16 | 0x8E00 << 32 | ((offset >> 16) & 0xFFFF) << 48
    return struct.pack("<QQ", lo, offset >> 32)


class KvmTarget:
    """One VM with one vCPU, reused for every program (only memory and registers change)."""

    name = "kvm"
    bitness = 64

    def __init__(self) -> None:
        self.kvm = Kvm()
        self.vm: KvmVm = self.kvm.create_vm()
        self.vm.set_tss_addr()
        self.ram = self.vm.add_memory(0, L.RAM_SIZE)
        self._build_tables()
        self.vcpu: KvmVcpu = self.vm.create_vcpu(0)
        self.user_sregs = self._user_sregs()
        self.vcpu.set_sregs(self.user_sregs)
        self._in_user = True
        self.runs = 0
        # KVM_CAP_SYNC_REGS: registers travel in kvm_run instead of two ~10 µs ioctls per program
        self.sync = None
        if self.kvm.check_extension(Cap.SYNC_REGS) & k.KVM_SYNC_X86_REGS:
            self.sync = self.vcpu.enable_sync_regs(k.KVM_SYNC_X86_REGS)

    def close(self) -> None:
        self.vm.close()
        self.kvm.close()

    # -- set-up ------------------------------------------------------------------------------

    def _build_tables(self) -> None:
        w = self.ram.write
        gdt = bytearray(8 * 8)
        for sel, desc in _GDT.items():
            struct.pack_into("<Q", gdt, sel, desc)
        struct.pack_into("<QQ", gdt, L.SEL_TSS, *_tss64_descriptor(L.TSS, 0x67))
        w(L.GDT, bytes(gdt))
        tss = bytearray(0x68)
        struct.pack_into("<Q", tss, 4, L.STACK0_TOP)  # RSP0
        struct.pack_into("<H", tss, 0x66, 0x68)  # I/O map base beyond the limit: no bitmap
        w(L.TSS, bytes(tss))
        w(L.IDT, b"".join(_gate64(L.HANDLERS + L.HANDLER_STRIDE * v, L.SEL_KCODE) for v in range(32)))
        for v in range(32):
            w(L.HANDLERS + L.HANDLER_STRIDE * v, L.HANDLER_STUB)
        pml4, pdpt, pd, pt = (L.PAGE_TABLES + i * L.PAGE for i in range(4))
        w(pml4, struct.pack("<Q", pdpt | L.PTE_TABLE))
        w(pdpt, struct.pack("<Q", pd | L.PTE_TABLE))
        w(pd, struct.pack("<Q", pt | L.PTE_TABLE))
        w(pt, struct.pack("<512Q", *L.page_table_entries(512)))
        self.cr3 = pml4

    def _user_sregs(self) -> s.KvmSregs:
        sr = self.vcpu.get_sregs()
        sr.cs = segment(L.SEL_UCODE64, 0, 0xFFFFFFFF, 0xB, dpl=3, db=0, l_=1)
        data = segment(L.SEL_UDATA, 0, 0xFFFFFFFF, 0x3, dpl=3)
        sr.ds = sr.es = sr.ss = sr.fs = sr.gs = data
        sr.tr = segment(L.SEL_TSS, L.TSS, 0x67, 0xB, dpl=0, db=0, s_=0, g=0)
        sr.ldt = segment(0, 0, 0, 0x2, s_=0, present=0)
        sr.gdt.base, sr.gdt.limit = L.GDT, 8 * 8 - 1
        sr.idt.base, sr.idt.limit = L.IDT, 32 * 16 - 1
        sr.cr0 = 0x80010033  # PG WP NE ET MP PE (SDM Vol.3A 2.5)
        sr.cr3 = self.cr3
        sr.cr4 = 0x20  # PAE
        sr.efer = 0x500  # LMA LME
        return sr

    # -- running -------------------------------------------------------------------------------

    def run(self, program: Program) -> Outcome:
        enc = program.encode(64)
        st = program.state
        mem = self.ram.mem
        mem[L.CODE : L.CODE + L.PAGE] = enc.code.ljust(L.PAGE, b"\xcc")
        for page, data in st.pages().items():
            mem[page : page + L.PAGE] = data
        vcpu = self.vcpu
        if not self._in_user:
            vcpu.set_sregs(self.user_sregs)
            self._in_user = True
        r = vcpu._regs if self.sync is None else self.sync.regs
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi = st.regs
        r.r8 = r.r9 = r.r10 = r.r11 = r.r12 = r.r13 = r.r14 = r.r15 = 0
        r.rip = L.CODE
        r.rflags = st.eflags()
        if self.sync is None:
            vcpu.set_regs(r)
        else:
            vcpu.kvm_run.kvm_dirty_regs = k.KVM_SYNC_X86_REGS
        run = vcpu.run()
        self.runs += 1
        reason = run.exit_reason
        regs = vcpu.get_regs() if self.sync is None else s.KvmRegs.from_buffer_copy(self.sync.regs)
        gpr = tuple(v & 0xFFFFFFFF for v in (regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp,
                                             regs.rsi, regs.rdi))
        pages = {p: bytes(mem[p : p + L.PAGE]) for p in L.COMPARED}
        mmio_addr, mmio_write, mmio_len = run.mmio.phys_addr, run.mmio.is_write, run.mmio.len
        if reason in (ExitReason.MMIO, ExitReason.IO):
            # finish the access before the next KVM_SET_REGS: an MMIO or I/O exit completes on the
            # next KVM_RUN (api.rst, KVM_RUN), which would otherwise overwrite the new registers
            run.immediate_exit = 1
            vcpu.run()
            run.immediate_exit = 0
        at_end = mmio_addr == L.EXIT_GPA and mmio_write and mmio_len == 4
        if reason == ExitReason.MMIO and mmio_addr & ~(L.PAGE - 1) == L.EXIT_GPA and not at_end:
            return Outcome(gpr, regs.rflags, pages, error=EXIT_PAGE_ACCESS)
        if reason == ExitReason.MMIO and at_end:
            upper = regs.rax >> 32 | regs.rcx >> 32 | regs.rdx >> 32 | regs.rbx >> 32 | regs.rsi >> 32 | \
                regs.rdi >> 32 | regs.rbp >> 32
            if upper:  # the 32-bit equivalence argument above would be broken
                return Outcome(gpr, regs.rflags, pages, error=f"upper register halves not zero ({upper:#x})")
            return Outcome(gpr, regs.rflags & 0xFFFFFFFF, pages)
        if reason == ExitReason.HLT:
            self._in_user = False
            vector = L.handler_vector(regs.rip)
            if vector is None:
                return Outcome(gpr, regs.rflags, pages, error=f"HLT at {regs.rip:#x}")
            frame = struct.unpack_from("<6Q", mem, regs.rsp)
            ec = None
            if vector in L.ERROR_CODE_VECTORS:
                ec, frame = frame[0], frame[1:]
            rip, _cs, rflags, rsp = frame[:4]
            cr2 = None
            if vector == 14:
                cr2 = vcpu.get_sregs().cr2 & 0xFFFFFFFF
            index = _index_of(enc.offsets, rip - L.CODE)
            gpr = gpr[:4] + (rsp & 0xFFFFFFFF,) + gpr[5:]
            return Outcome(gpr, rflags & 0xFFFFFFFF, pages, fault=Fault(vector, ec, index, cr2))
        self._in_user = False
        detail = ExitReason(reason).name if reason in ExitReason._value2member_map_ else str(reason)
        if reason == ExitReason.MMIO:
            detail += f" {'write' if mmio_write else 'read'} {mmio_addr:#x} len {mmio_len}"
        if reason == ExitReason.INTERNAL_ERROR:
            detail += f" suberror {run.internal.suberror} data " + " ".join(
                f"{run.internal.data[i]:#x}" for i in range(min(run.internal.ndata, 4)))
        return Outcome(gpr, regs.rflags, pages, error=f"KVM exit {detail} at rip {regs.rip:#x}")


def _index_of(offsets: tuple[int, ...], off: int) -> int:
    """The instruction index whose encoding starts at ``off`` (-1 if none: a fault outside the program)."""
    try:
        return offsets.index(off)
    except ValueError:
        return -1
