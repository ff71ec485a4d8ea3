"""System instructions (SDM Vol.2 each; privilege rules SDM Vol.3A 5.9 "Privileged instructions").

Privileged instructions raise #GP(0) at CPL > 0 before anything else.  In VMX
non-root operation the exit check (``cpu.vmx.intercept``) comes after those
faults and before the effect (SDM Vol.3C 26.1.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic

from .. import cpuid as cid
from ..faults import CpuFault, Vector
from ..paging import load_pdptes
from ..state import (
    CR0_CD,
    CR0_ET,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR0_WP,
    CR4_DE,
    CR4_PAE,
    CR4_PCE,
    CR4_PGE,
    CR4_PSE,
    CR4_TSD,
    CR4_UMIP,
    CR4_VMXE,
    EAX,
    EBX,
    ECX,
    EDX,
)
from . import Ctx, Handler, ends_block, handles
from .operands import CREG, DREG, GPR, addr_size, ea_function, getter, mem_segment, op_size, setter

if TYPE_CHECKING:
    from ..core import CPU

M32 = 0xFFFFFFFF
#: CR4 bits this model implements (SDM Vol.3A 2.5); setting any other bit is #GP(0)
CR4_SUPPORTED = CR4_TSD | CR4_DE | CR4_PSE | CR4_PAE | CR4_PGE | CR4_PCE | CR4_UMIP
#: CR0 bits that exist on this model; writes to the others are ignored (SDM Vol.3A 2.5)
CR0_DEFINED = 0xE005003F


def require_cpl0(c: CPU, what: str) -> None:
    """SDM Vol.3A 5.9: privileged instructions fault with #GP(0) unless CPL = 0."""
    if c.cpl:
        raise CpuFault(Vector.GP, 0, detail=f"{what} at CPL {c.cpl}")


def _intercept(c: CPU, name: str, **info: int) -> None:
    if c.vmx is not None:
        c.vmx.intercept(c, name, **info)


@handles("HLT", ends_block=True)
def hlt(ins: Instruction, ctx: Ctx) -> Handler:
    """HLT: stop until an interrupt, NMI or reset (SDM Vol.2 HLT); privileged."""

    def h(c: CPU) -> None:
        require_cpl0(c, "HLT")
        _intercept(c, "hlt")
        c.halted = True
        c.event_pending = True

    return h


@handles("NOP", "FNOP")
def nop(ins: Instruction, ctx: Ctx) -> Handler:
    return lambda c: None


@handles("PAUSE")
def pause(ins: Instruction, ctx: Ctx) -> Handler:
    return lambda c: _intercept(c, "pause")


@handles("UD0", "UD1", "UD2")
def ud2(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        raise CpuFault(Vector.UD, None, detail=str(ins))

    return h


@handles("CPUID")
def cpuid(ins: Instruction, ctx: Ctx) -> Handler:
    """CPUID: unconditional VM exit in non-root operation (SDM Vol.3C 26.1.2)."""

    def h(c: CPU) -> None:
        _intercept(c, "cpuid")
        r = c.regs
        a, b, cc, d = cid.lookup(c.cpuid_table, r[EAX], r[ECX])
        r[EAX], r[EBX], r[ECX], r[EDX] = a & M32, b & M32, cc & M32, d & M32

    return h


def read_tsc(c: CPU) -> int:
    """The time-stamp counter: one tick per retired instruction or idle tick, plus the TSC base."""
    return (c.icount + c.idle_ticks + c.tsc_base) & 0xFFFFFFFFFFFFFFFF


@handles("RDTSC")
def rdtsc(ins: Instruction, ctx: Ctx) -> Handler:
    """RDTSC: #GP(0) if CR4.TSD and CPL > 0 (SDM Vol.2 RDTSC); may exit (RDTSC exiting)."""

    def h(c: CPU) -> None:
        if c.cr4 & CR4_TSD and c.cpl and c.pe:
            raise CpuFault(Vector.GP, 0, detail="RDTSC with CR4.TSD at CPL > 0")
        _intercept(c, "rdtsc")
        tsc = read_tsc(c)
        if c.vmx is not None:
            tsc = c.vmx.guest_tsc(c, tsc)
        c.regs[EAX] = tsc & M32
        c.regs[EDX] = (tsc >> 32) & M32

    return h


#: performance counters of the model (P6: PerfCtr0/1, SDM Vol.3B 21.6.7): they exist but never count
PMC_COUNT = 2


@handles("RDPMC")
def rdpmc(ins: Instruction, ctx: Ctx) -> Handler:
    """RDPMC: #GP(0) at CPL > 0 unless CR4.PCE (SDM Vol.2 RDPMC); #GP(0) for a counter index the
    model does not have.  The two counters read 0: the model counts nothing, but a program can see
    that CR4.PCE really opens the instruction to ring 3."""

    def h(c: CPU) -> None:
        if c.cpl and c.pe and not c.cr4 & CR4_PCE:
            raise CpuFault(Vector.GP, 0, detail="RDPMC at CPL > 0 without CR4.PCE")
        _intercept(c, "rdpmc")  # the counter index is checked after the exit (only CPL/PCE come first)
        index = c.regs[ECX]
        if index >= PMC_COUNT:
            raise CpuFault(Vector.GP, 0, detail=f"RDPMC: counter {index:#x} does not exist on this model")
        c.regs[EAX] = 0
        c.regs[EDX] = 0

    return h


# ---------------------------------------------------------------- descriptor-table registers


def _pseudo_descriptor(ins: Instruction) -> tuple:
    return ea_function(ins), mem_segment(ins), addr_size(ins)


@handles("LGDT", "LIDT", ends_block=True)
def lgdt(ins: Instruction, ctx: Ctx) -> Handler:
    """LGDT/LIDT m16&32: limit then base; with a 16-bit operand only 24 base bits (SDM Vol.2 LGDT)."""
    ea, sreg, asize = _pseudo_descriptor(ins)
    amask = 0xFFFF if asize == 2 else M32
    is_gdt = ins.mnemonic == Mnemonic.LGDT
    base_mask = M32 if (ins.op_code().operand_size or (32 if ctx.code32 else 16)) == 32 else 0xFFFFFF
    name = "LGDT" if is_gdt else "LIDT"

    def h(c: CPU) -> None:
        if c.pe:
            require_cpl0(c, name)
        _intercept(c, "descriptor_table", instruction=2 if is_gdt else 3)
        off = ea(c.regs)
        limit = c.rd16(sreg, off)
        base = c.rd32(sreg, (off + 2) & amask) & base_mask
        if is_gdt:
            c.gdtr_base, c.gdtr_limit = base, limit
        else:
            c.idtr_base, c.idtr_limit = base, limit

    return h


def check_umip(c: CPU, what: str) -> None:
    """CR4.UMIP: SGDT SIDT SLDT SMSW STR at CPL > 0 raise #GP(0) (SDM Vol.3A 2.5)."""
    if c.cr4 & CR4_UMIP and c.cpl and c.pe:
        raise CpuFault(Vector.GP, 0, detail=f"{what} at CPL {c.cpl} with CR4.UMIP")


@handles("SGDT", "SIDT")
def sgdt(ins: Instruction, ctx: Ctx) -> Handler:
    """SGDT/SIDT: not privileged -- they work at any CPL (sensitive but unprivileged, Robin & Irvine)."""
    ea, sreg, asize = _pseudo_descriptor(ins)
    amask = 0xFFFF if asize == 2 else M32
    is_gdt = ins.mnemonic == Mnemonic.SGDT

    def h(c: CPU) -> None:
        check_umip(c, "SGDT" if is_gdt else "SIDT")
        _intercept(c, "descriptor_table", instruction=0 if is_gdt else 1)
        off = ea(c.regs)
        base, limit = (c.gdtr_base, c.gdtr_limit) if is_gdt else (c.idtr_base, c.idtr_limit)
        # both stores are checked before either is made: a limit store that fits but a base store
        # that faults must not leave half a pseudo-descriptor (SDM Vol.3A 6.5, precise faults)
        c.linear(sreg, (off + 2) & amask, 4, write=True)
        c.wr16(sreg, off, limit)
        c.wr32(sreg, (off + 2) & amask, base)

    return h


# ---------------------------------------------------------------- control and debug registers


def mov_control_register(ins: Instruction, ctx: Ctx) -> Handler:
    """MOV to/from CRn and DRn (SDM Vol.2 MOV—Move to/from Control/Debug Registers)."""
    r0, r1 = ins.op_register(0), ins.op_register(1)
    if r0 in CREG:
        return ends_block(_mov_to_cr(CREG[r0], GPR[r1][0]))
    if r1 in CREG:
        return _mov_from_cr(CREG[r1], GPR[r0][0])
    if r0 in DREG:
        return ends_block(_mov_dr(DREG[r0], GPR[r1][0], to_dr=True))
    return _mov_dr(DREG[r1], GPR[r0][0], to_dr=False)


def _mov_from_cr(n: int, gpr: int) -> Handler:
    def h(c: CPU) -> None:
        if n not in (0, 2, 3, 4):
            raise CpuFault(Vector.UD, None, detail=f"CR{n} does not exist")
        require_cpl0(c, f"MOV from CR{n}")
        value = (c.cr0, 0, c.cr2, c.cr3, c.cr4)[n]
        if c.vmx is not None:
            value = c.vmx.read_cr(c, n, value, gpr)
        c.regs[gpr] = value & M32

    return h


def _mov_to_cr(n: int, gpr: int) -> Handler:
    def h(c: CPU) -> None:
        if n not in (0, 2, 3, 4):
            raise CpuFault(Vector.UD, None, detail=f"CR{n} does not exist")
        require_cpl0(c, f"MOV to CR{n}")
        value = c.regs[gpr]
        if c.vmx is not None:
            value = c.vmx.write_cr(c, n, value, gpr)  # may exit; returns the value to load
        write_cr(c, n, value)

    return h


def write_cr(c: CPU, n: int, value: int) -> None:
    """Load a control register with the checks and side effects of SDM Vol.3A 2.5 and 4.10.4."""
    value &= M32
    if n == 0:
        value = (value & CR0_DEFINED) | CR0_ET  # ET is hardwired to 1 on this model
        if value & CR0_PG and not value & CR0_PE:
            raise CpuFault(Vector.GP, 0, detail="CR0.PG = 1 with CR0.PE = 0")
        if value & CR0_NW and not value & CR0_CD:
            raise CpuFault(Vector.GP, 0, detail="CR0.NW = 1 with CR0.CD = 0")
        old = c.cr0
        # SDM Vol.3A 4.4.1: with PAE paging in use afterwards, a MOV to CR0 that modifies CD, NW
        # or PG loads the PDPTEs (a reserved bit in a present one is #GP(0), nothing changes)
        reload_pdptes = value & CR0_PG and c.cr4 & CR4_PAE and (old ^ value) & (CR0_PG | CR0_CD | CR0_NW)
        if reload_pdptes:
            saved, c.cr0 = c.cr0, value
            try:
                load_pdptes(c)
            finally:
                c.cr0 = saved
        c.cr0 = value
        if (old ^ value) & (CR0_PG | CR0_WP | CR0_PE):
            c.tlb_flush(all_entries=True)
        c.update_mode()
    elif n == 2:
        c.cr2 = value
    elif n == 3:
        old_cr3 = c.cr3
        c.cr3 = value
        if c.pg and c.cr4 & CR4_PAE:
            try:
                load_pdptes(c)
            except CpuFault:
                c.cr3 = old_cr3
                raise
        c.tlb_flush(all_entries=not c.cr4 & CR4_PGE)
    elif n == 4:
        # CR4.VMXE exists for the software running in VMX operation: in non-root operation it is fixed
        # to 1 (IA32_VMX_CR4_FIXED0); the CPU itself never runs code in VMX root operation
        supported = CR4_SUPPORTED | (CR4_VMXE if c.vmx is not None else 0)
        if value & ~supported:
            raise CpuFault(Vector.GP, 0, detail=f"reserved CR4 bits {value & ~supported:#x}")
        old = c.cr4
        # SDM Vol.3A 4.4.1: ... or a MOV to CR4 that modifies PAE, PGE or PSE
        if c.pg and value & CR4_PAE and (old ^ value) & (CR4_PAE | CR4_PGE | CR4_PSE):
            saved, c.cr4 = c.cr4, value
            try:
                load_pdptes(c)
            finally:
                c.cr4 = saved
        c.cr4 = value
        if (old ^ value) & (CR4_PSE | CR4_PGE | CR4_PAE):
            c.tlb_flush(all_entries=True)
        c.update_mode()


def _mov_dr(n: int, gpr: int, to_dr: bool) -> Handler:
    """MOV DRn: DR4/DR5 alias DR6/DR7 unless CR4.DE, which makes them #UD (SDM Vol.3A 18.2.2)."""

    def h(c: CPU) -> None:
        idx = n
        if n in (4, 5):
            if c.cr4 & CR4_DE:
                raise CpuFault(Vector.UD, None, detail=f"DR{n} with CR4.DE = 1")
            idx = n + 2
        if n > 7:
            raise CpuFault(Vector.UD, None, detail=f"DR{n} does not exist")
        require_cpl0(c, f"MOV {'to' if to_dr else 'from'} DR{n}")
        _intercept(c, "mov_dr", dr=n, gpr=gpr, to_dr=int(to_dr))
        if to_dr:
            v = c.regs[gpr]
            if idx == 6:
                v = (v & 0x0000E00F) | 0xFFFF0FF0
            elif idx == 7:
                v = (v & 0xFFFF2BFF) | 0x400
            c.dr[idx] = v
        else:
            c.regs[gpr] = c.dr[idx]

    return h


@handles("CLTS", ends_block=True)
def clts(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        require_cpl0(c, "CLTS")
        if c.vmx is not None and not c.vmx.clts(c):
            return  # the VMM's CR0 mask owns TS: it stays set (SDM Vol.3C 26.3)
        c.cr0 &= ~CR0_TS

    return h


@handles("LMSW", ends_block=True)
def lmsw(ins: Instruction, ctx: Ctx) -> Handler:
    """LMSW: loads CR0 bits 3:0 (PE MP EM TS); can set PE but never clear it (SDM Vol.2 LMSW)."""
    get = getter(ins, 0, 2)

    def h(c: CPU) -> None:
        require_cpl0(c, "LMSW")
        src = get(c)
        if c.vmx is not None:
            src = c.vmx.lmsw(c, src)
        new = (c.cr0 & ~0xE) | (src & 0xF) | (c.cr0 & CR0_PE)
        write_cr(c, 0, new)

    return h


@handles("SMSW")
def smsw(ins: Instruction, ctx: Ctx) -> Handler:
    """SMSW: CR0[15:0] at any CPL (a register destination with 32-bit operand gets CR0[31:0] on P6+)."""
    put = setter(ins, 0)
    size = op_size(ins, 0)

    def h(c: CPU) -> None:
        check_umip(c, "SMSW")
        value = c.cr0
        if c.vmx is not None:
            value = c.vmx.read_cr(c, 0, value, None)
        put(c, value & (M32 if size == 4 else 0xFFFF))

    return h


@handles("INVLPG")
def invlpg(ins: Instruction, ctx: Ctx) -> Handler:
    ea = ea_function(ins)
    sreg = mem_segment(ins)

    def h(c: CPU) -> None:
        require_cpl0(c, "INVLPG")
        seg = c.segs[sreg]
        la = (seg.base + ea(c.regs)) & M32
        _intercept(c, "invlpg", linear=la)
        c.tlb_flush_page(la)

    return h


@handles("INVD", "WBINVD")
def invd(ins: Instruction, ctx: Ctx) -> Handler:
    """INVD/WBINVD: privileged cache flushes; the model has no caches, so only the checks and exits."""
    name = "invd" if ins.mnemonic == Mnemonic.INVD else "wbinvd"

    def h(c: CPU) -> None:
        require_cpl0(c, name.upper())
        _intercept(c, name)

    return h


# ---------------------------------------------------------------- MSRs


@handles("RDMSR")
def rdmsr(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        require_cpl0(c, "RDMSR")
        index = c.regs[ECX]
        _intercept(c, "rdmsr", msr=index)
        value = read_msr(c, index)
        c.regs[EAX] = value & M32
        c.regs[EDX] = (value >> 32) & M32

    return h


@handles("WRMSR", ends_block=True)
def wrmsr(ins: Instruction, ctx: Ctx) -> Handler:
    def h(c: CPU) -> None:
        require_cpl0(c, "WRMSR")
        index = c.regs[ECX]
        _intercept(c, "wrmsr", msr=index)
        write_msr(c, index, c.regs[EDX] << 32 | c.regs[EAX])

    return h


def read_msr(c: CPU, index: int) -> int:
    """RDMSR of the documented MSR set; anything else is #GP(0) (SDM Vol.2 RDMSR)."""
    if index == cid.MSR_TSC:
        tsc = read_tsc(c)
        return c.vmx.guest_tsc(c, tsc) if c.vmx is not None else tsc  # TSC offsetting (SDM Vol.3C 26.3)
    if index == cid.MSR_EFER:
        return c.efer
    if index in cid.MSR_RESET:
        return c.msr.get(index, cid.MSR_RESET[index])
    raise CpuFault(Vector.GP, 0, detail=f"RDMSR of unknown MSR {index:#x}")


def write_msr(c: CPU, index: int, value: int) -> None:
    if index == cid.MSR_TSC:
        c.tsc_base = (value - (c.icount + c.idle_ticks)) & 0xFFFFFFFFFFFFFFFF
        return
    if index not in cid.MSR_WRITABLE:
        raise CpuFault(Vector.GP, 0, detail=f"WRMSR to unknown MSR {index:#x}")
    if value & ~cid.MSR_WRITABLE[index]:
        raise CpuFault(Vector.GP, 0, detail=f"WRMSR {cid.MSR_NAMES[index]}: reserved bits in {value:#x}")
    if index == cid.MSR_FEATURE_CONTROL and c.msr.get(index, 0) & 1:
        raise CpuFault(Vector.GP, 0, detail="IA32_FEATURE_CONTROL is locked")
    if index == cid.MSR_EFER:
        if (value ^ c.efer) & (1 << 11):
            c.tlb_flush(all_entries=True)
        c.efer = value
        return
    c.msr[index] = value
