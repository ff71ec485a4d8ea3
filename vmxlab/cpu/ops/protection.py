"""Segment and task-register system instructions, and the fast system calls (SDM Vol.2 each).

* LLDT, LTR: privileged loads of LDTR and TR (#GP(0) at CPL > 0, SDM Vol.3A 5.9).
* SLDT, STR: work at any CPL -- sensitive but not privileged (Robin & Irvine), unless
  CR4.UMIP makes them #GP(0) at CPL > 0 (SDM Vol.3A 2.5).
* LAR, LSL, VERR, VERW: ask "could I use this selector?" without faulting; the answer
  is ZF (SDM Vol.3A 5.10.1 "Checking Access Rights", 5.10.3 "Checking Read/Write Rights").
* ARPL: raise a selector's RPL to the caller's, the defence against a confused deputy
  (SDM Vol.3A 5.10.4 "Checking Caller Access Privileges").
* SYSENTER, SYSEXIT: ring 3 <-> ring 0 without descriptor-table reads, through the
  IA32_SYSENTER_CS/ESP/EIP MSRs and flat segments derived from IA32_SYSENTER_CS
  (SDM Vol.2 SYSENTER/SYSEXIT, Vol.3A 5.8.7).

All of them except SYSENTER/SYSEXIT are "not recognized in real-address mode" (#UD).
VMX: LLDT/LTR/SLDT/STR may exit ("descriptor-table exiting", exit reason 47, hook name
"ldtr_tr"); the hook runs after the #UD and privilege checks and before the memory
operand is touched (SDM Vol.3C 26.1.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic

from .. import cpuid as cid
from .. import flags as fl
from ..descriptors import (
    SYS_CALL_GATE16,
    SYS_CALL_GATE32,
    SYS_LDT,
    SYS_TASK_GATE,
    SYS_TSS16_AVAIL,
    SYS_TSS16_BUSY,
    SYS_TSS32_AVAIL,
    SYS_TSS32_BUSY,
    Descriptor,
    peek_descriptor,
    read_descriptor,
    set_tss_busy,
)
from ..faults import CpuFault, Vector
from ..state import (
    AR_CODE,
    AR_CONFORMING,
    AR_READABLE,
    AR_UNUSABLE,
    AR_WRITABLE,
    CS,
    ECX,
    EDX,
    ESP,
    SS,
)
from . import Ctx, Handler, handles
from .operands import GPR, getter, is_reg, op_size, rmw, setter
from .system import check_umip, require_cpl0

if TYPE_CHECKING:
    from ..core import CPU

M32 = 0xFFFFFFFF

#: system-descriptor types LAR reports (SDM Vol.2 LAR, Table 3-57 "Segment and Gate Types": all but
#: interrupt and trap gates); LSL only those that have a limit: TSSs and LDTs (SDM Vol.2 LSL)
LAR_SYSTEM_TYPES = frozenset({SYS_TSS16_AVAIL, SYS_LDT, SYS_TSS16_BUSY, SYS_CALL_GATE16, SYS_TASK_GATE,
                              SYS_TSS32_AVAIL, SYS_TSS32_BUSY, SYS_CALL_GATE32})
LSL_SYSTEM_TYPES = frozenset({SYS_TSS16_AVAIL, SYS_LDT, SYS_TSS16_BUSY, SYS_TSS32_AVAIL, SYS_TSS32_BUSY})

# VMX "ldtr_tr" instruction identities (SDM Vol.3C Table 28-11, instruction-information field)
SLDT_ID, STR_ID, LLDT_ID, LTR_ID = 0, 1, 2, 3

#: the hidden parts SYSENTER/SYSEXIT load regardless of the GDT (SDM Vol.2 SYSENTER: "Set rest of CS
#: to a fixed value"): base 0, limit FFFFFH with G = 1, 32-bit, present; code execute/read accessed,
#: data read/write accessed
FLAT_CODE_AR = 0xC09B
FLAT_DATA_AR = 0xC093
DPL3 = 3 << 5


def _require_pe(c: CPU, what: str) -> None:
    """SDM Vol.2 LLDT/LTR/...: "#UD The LLDT instruction is not recognized in real-address mode"."""
    if not c.pe:
        raise CpuFault(Vector.UD, None, detail=f"{what} is not recognized in real-address mode")


def _intercept(c: CPU, instruction: int) -> None:
    if c.vmx is not None:
        c.vmx.intercept(c, "ldtr_tr", instruction=instruction)


def _set_zf(c: CPU, value: bool) -> None:
    """ZF only; the other status flags keep their values (SDM Vol.2 LAR/LSL/VERR/ARPL "Flags Affected")."""
    f = fl.oszapc(c.cc_op, c.cc_a, c.cc_b, c.cc_res)
    c.set_status_flags((f | fl.ZF) if value else (f & ~fl.ZF))


def _visible(c: CPU, selector: int, desc: Descriptor) -> bool:
    """The privilege part of LAR/LSL/VERR/VERW: DPL >= CPL and DPL >= RPL, except for conforming
    code segments, whose DPL is not checked (SDM Vol.2 LAR "Operation")."""
    if desc.is_code and desc.ar & AR_CONFORMING:
        return True
    return desc.dpl >= c.cpl and desc.dpl >= (selector & 3)


# ---------------------------------------------------------------- LLDT / SLDT / LTR / STR


@handles("LLDT")
def lldt(ins: Instruction, ctx: Ctx) -> Handler:
    """LLDT r/m16 (SDM Vol.2 LLDT): a null selector makes LDTR unusable; otherwise an LDT
    descriptor in the GDT (#GP(selector) if TI = 1, outside the GDT or not an LDT; #NP if not present)."""
    get = getter(ins, 0, 2)

    def h(c: CPU) -> None:
        _require_pe(c, "LLDT")
        require_cpl0(c, "LLDT")
        _intercept(c, LLDT_ID)
        selector = get(c) & 0xFFFF
        if selector & 0xFFFC == 0:
            c.ldtr.load(selector, 0, 0, AR_UNUSABLE)
            return
        ec = selector & 0xFFFC
        if selector & 4:
            raise CpuFault(Vector.GP, ec, detail=f"LLDT {selector:#x}: the selector must refer to the GDT")
        desc = read_descriptor(c, selector)
        if desc.s or desc.type != SYS_LDT:
            raise CpuFault(Vector.GP, ec,
                           detail=f"LLDT {selector:#x}: not an LDT descriptor (type {desc.type:#x})")
        if not desc.present:
            raise CpuFault(Vector.NP, ec, detail=f"LLDT {selector:#x}: LDT not present")
        c.ldtr.load(selector, desc.base, desc.limit, desc.ar)

    return h


@handles("LTR")
def ltr(ins: Instruction, ctx: Ctx) -> Handler:
    """LTR r/m16 (SDM Vol.2 LTR): #GP(0) for a null selector; #GP(selector) for TI = 1, outside the
    GDT, or not an *available* TSS; #NP if not present; then the descriptor is marked busy."""
    get = getter(ins, 0, 2)

    def h(c: CPU) -> None:
        _require_pe(c, "LTR")
        require_cpl0(c, "LTR")
        _intercept(c, LTR_ID)
        selector = get(c) & 0xFFFF
        if selector & 0xFFFC == 0:
            raise CpuFault(Vector.GP, 0, detail="LTR with a null selector")
        ec = selector & 0xFFFC
        if selector & 4:
            raise CpuFault(Vector.GP, ec, detail=f"LTR {selector:#x}: the selector must refer to the GDT")
        desc = read_descriptor(c, selector)
        if desc.s or desc.type not in (SYS_TSS16_AVAIL, SYS_TSS32_AVAIL):
            busy = " (it is busy)" if desc.is_tss else ""
            raise CpuFault(Vector.GP, ec, detail=f"LTR {selector:#x}: not an available TSS{busy}")
        if not desc.present:
            raise CpuFault(Vector.NP, ec, detail=f"LTR {selector:#x}: TSS not present")
        set_tss_busy(c, selector, True)  # "locked read-modify-write operation on the entire descriptor"
        c.tr.load(selector, desc.base, desc.limit, desc.ar | 0x2)

    return h


def _store_selector(ins: Instruction, name: str, ident: int, which: str) -> Handler:
    """SLDT/STR: the selector to r/m16; a 32-bit register destination is zero-extended (SDM Vol.2 SLDT:
    "the high-order 16 bits of the register are cleared for the Pentium 4, Intel Xeon, and P6")."""
    put = setter(ins, 0)
    mask = M32 if is_reg(ins, 0) and op_size(ins, 0) == 4 else 0xFFFF

    def h(c: CPU) -> None:
        _require_pe(c, name)
        check_umip(c, name)
        _intercept(c, ident)
        put(c, getattr(c, which).selector & mask)

    return h


@handles("SLDT")
def sldt(ins: Instruction, ctx: Ctx) -> Handler:
    return _store_selector(ins, "SLDT", SLDT_ID, "ldtr")


@handles("STR")
def str_(ins: Instruction, ctx: Ctx) -> Handler:
    return _store_selector(ins, "STR", STR_ID, "tr")


# ---------------------------------------------------------------- LAR / LSL / VERR / VERW


@handles("LAR", "LSL")
def lar_lsl(ins: Instruction, ctx: Ctx) -> Handler:
    """LAR/LSL r, r/m16: load access rights / segment limit if the selector is visible at CPL and RPL
    and of a type the instruction accepts; ZF says whether it was (SDM Vol.2 LAR, LSL).

    LAR returns descriptor dword 2 masked with 00FxFF00H (x = limit 19:16, "undefined" in the SDM; what
    hardware and Bochs return); LSL the byte-granular limit.  A 16-bit operand gets the low word.
    """
    is_lar = ins.mnemonic == Mnemonic.LAR
    get = getter(ins, 1, 2)
    put = setter(ins, 0)
    size = op_size(ins, 0)
    name = "LAR" if is_lar else "LSL"
    types = LAR_SYSTEM_TYPES if is_lar else LSL_SYSTEM_TYPES

    def h(c: CPU) -> None:
        _require_pe(c, name)
        selector = get(c) & 0xFFFF
        desc = peek_descriptor(c, selector) if selector & 0xFFFC else None
        ok = desc is not None and (desc.s or desc.type in types) and _visible(c, selector, desc)
        if ok:
            assert desc is not None
            if is_lar:
                value = (desc.raw >> 32) & (0x00FFFF00 if size == 4 else 0xFF00)
            else:
                value = desc.limit & (M32 if size == 4 else 0xFFFF)
            put(c, value)
        _set_zf(c, ok)

    return h


@handles("VERR", "VERW")
def verr_verw(ins: Instruction, ctx: Ctx) -> Handler:
    """VERR/VERW r/m16: ZF = 1 if the segment could be read (VERR: data or readable code) or written
    (VERW: writable data) at the current CPL with this RPL -- the MOV checks without the fault
    (SDM Vol.2 VERR/VERW; conforming readable code passes VERR whatever its DPL).  The present
    bit is not checked."""
    write = ins.mnemonic == Mnemonic.VERW
    get = getter(ins, 0, 2)
    name = "VERW" if write else "VERR"

    def h(c: CPU) -> None:
        _require_pe(c, name)
        selector = get(c) & 0xFFFF
        desc = peek_descriptor(c, selector) if selector & 0xFFFC else None
        if desc is None or not desc.s:
            ok = False
        elif write:
            ok = not desc.ar & AR_CODE and bool(desc.ar & AR_WRITABLE) and _visible(c, selector, desc)
        elif desc.ar & AR_CODE and not desc.ar & AR_READABLE:
            ok = False
        else:
            ok = _visible(c, selector, desc)
        _set_zf(c, ok)

    return h


@handles("ARPL")
def arpl(ins: Instruction, ctx: Ctx) -> Handler:
    """ARPL r/m16, r16 (SDM Vol.2 ARPL): if DEST.RPL < SRC.RPL then DEST.RPL := SRC.RPL, ZF := 1;
    else ZF := 0.  A memory destination is read and written as one operand (#GP if not writable
    even when nothing changes, since the processor accesses it read-modify-write)."""
    src = getter(ins, 1, 2)
    if is_reg(ins, 0):
        # 32-bit code decodes the register form as ARPL r32/m16, r32 (iced ARPL_R32M16_R32); the
        # operation is still 16 bits wide: only bits 15:0 of the register change (as in Bochs)
        idx = GPR[ins.op_register(0)][0]

        def load(c: CPU) -> tuple[int, int]:
            return 0, c.regs[idx] & 0xFFFF

        def store(c: CPU, where: int, value: int) -> None:
            c.regs[idx] = (c.regs[idx] & 0xFFFF0000) | value
    else:
        load, store = rmw(ins, 0)

    def h(c: CPU) -> None:
        _require_pe(c, "ARPL")
        where, dest = load(c)
        dest &= 0xFFFF
        rpl = src(c) & 3
        if dest & 3 < rpl:
            store(c, where, (dest & 0xFFFC) | rpl)
            _set_zf(c, True)
        else:
            _set_zf(c, False)

    return h


# ---------------------------------------------------------------- SYSENTER / SYSEXIT


def _sysenter_cs(c: CPU) -> int:
    return c.msr.get(cid.MSR_SYSENTER_CS, cid.MSR_RESET[cid.MSR_SYSENTER_CS]) & 0xFFFF


@handles("SYSENTER", ends_block=True)
def sysenter(ins: Instruction, ctx: Ctx) -> Handler:
    """SYSENTER (SDM Vol.2 SYSENTER): #GP(0) in real mode or when IA32_SYSENTER_CS[15:2] = 0; else
    CPL 0 with CS = SYSENTER_CS & FFFCH and SS = CS + 8, both flat 4 GiB 32-bit segments whatever the
    GDT holds; ESP/EIP from IA32_SYSENTER_ESP/EIP; IF and VM cleared.  Nothing is saved: the caller
    passes its return EIP/ESP in registers (Linux: EDX/ECX for SYSEXIT)."""

    def h(c: CPU) -> None:
        cs = _sysenter_cs(c)
        if not c.pe or cs & 0xFFFC == 0:
            raise CpuFault(Vector.GP, 0, detail="SYSENTER with CR0.PE = 0 or IA32_SYSENTER_CS[15:2] = 0")
        c.eflags_sys &= ~(fl.VM | fl.IF | fl.RF)
        c.regs[ESP] = c.msr.get(cid.MSR_SYSENTER_ESP, 0) & M32
        c.eip = c.msr.get(cid.MSR_SYSENTER_EIP, 0) & M32
        c.segs[CS].load(cs & 0xFFFC, 0, M32, FLAT_CODE_AR)
        c.segs[SS].load((cs & 0xFFFC) + 8, 0, M32, FLAT_DATA_AR)
        c.cpl = 0
        c.update_mode()

    return h


@handles("SYSEXIT", ends_block=True)
def sysexit(ins: Instruction, ctx: Ctx) -> Handler:
    """SYSEXIT (SDM Vol.2 SYSEXIT): #GP(0) unless protected mode, CPL 0 and IA32_SYSENTER_CS[15:2] != 0;
    then CPL 3 with CS = (SYSENTER_CS + 16) | 3, SS = (SYSENTER_CS + 24) | 3 (flat, DPL 3),
    EIP = EDX, ESP = ECX.  The data segment registers are not touched: a kernel that loaded DS with
    a DPL-0 selector must reload it (the segment stays usable at CPL 3 until then)."""

    def h(c: CPU) -> None:
        cs = _sysenter_cs(c)
        if not c.pe or c.cpl != 0 or cs & 0xFFFC == 0:
            raise CpuFault(Vector.GP, 0,
                           detail="SYSEXIT needs CR0.PE = 1, CPL 0 and IA32_SYSENTER_CS[15:2] != 0")
        c.eip = c.regs[EDX] & M32
        c.regs[ESP] = c.regs[ECX] & M32
        c.segs[CS].load(((cs + 16) & 0xFFFF) | 3, 0, M32, FLAT_CODE_AR | DPL3)
        c.segs[SS].load(((cs + 24) & 0xFFFF) | 3, 0, M32, FLAT_DATA_AR | DPL3)
        c.cpl = 3
        c.update_mode()

    return h

