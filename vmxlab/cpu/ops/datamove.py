"""Data movement (SDM Vol.2: MOV MOVZX MOVSX XCHG LEA PUSH POP and friends)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic, OpKind, Register

from .. import flags as fl
from ..core import ACC_WRITE, PF_U
from ..faults import CpuFault, Vector
from ..segments import load_segment
from ..state import CS, DS, EAX, EBP, EBX, ECX, EDI, EDX, ES, ESI, ESP, FS, GS, SS
from . import Ctx, Handler, ends_block, handles
from .control import operand_size
from .operands import (
    CREG,
    DREG,
    GPR,
    SREG,
    addr_size,
    ea_function,
    getter,
    is_mem,
    is_reg,
    mem_segment,
    op_size,
    rmw,
    setter,
)

if TYPE_CHECKING:
    from ..core import CPU

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
M32 = 0xFFFFFFFF
QWORD = 8  # CMPXCHG8B operand size in bytes
NESTING_LEVELS = 32  # SDM Vol.2 ENTER: NestingLevel := imm8 MOD 32
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1


@handles("MOV")
def mov(ins: Instruction, ctx: Ctx) -> Handler:
    r0 = ins.op_register(0) if ins.op0_kind == OpKind.REGISTER else None
    r1 = ins.op_register(1) if ins.op1_kind == OpKind.REGISTER else None
    if r0 in CREG or r1 in CREG or r0 in DREG or r1 in DREG:
        from .system import mov_control_register

        return mov_control_register(ins, ctx)
    if r0 in SREG:
        return _mov_to_sreg(ins, SREG[r0])
    if r1 in SREG:
        sreg = SREG[r1]
        put = setter(ins, 0)
        if is_reg(ins, 0) and op_size(ins, 0) == 4:
            return lambda c: put(c, c.segs[sreg].selector)  # zero-extended into a 32-bit register
        return lambda c: put(c, c.segs[sreg].selector)
    size = op_size(ins, 0)
    get = getter(ins, 1, size)
    put = setter(ins, 0)
    return lambda c: put(c, get(c))


def _mov_to_sreg(ins: Instruction, sreg: int) -> Handler:
    """MOV Sreg, r/m16 (SDM Vol.2 MOV): CS is not a valid destination (#UD); SS starts an interrupt shadow."""
    if sreg == CS:
        return _ud("MOV CS is invalid")
    get = getter(ins, 1, 2)

    def h(c: CPU) -> None:
        load_segment(c, sreg, get(c) & 0xFFFF)
        if sreg == SS:
            c.inhibit_pending = True
            c.event_pending = True

    return ends_block(h)  # the mode key (flat segments, stack size) may have changed


def _ud(detail: str) -> Handler:
    def h(c: CPU) -> None:
        raise CpuFault(Vector.UD, None, detail=detail)

    return h


@handles("MOVZX", "MOVSX")
def movx(ins: Instruction, ctx: Ctx) -> Handler:
    dsize = op_size(ins, 0)
    ssize = op_size(ins, 1)
    get = getter(ins, 1, ssize)
    put = setter(ins, 0)
    if ins.mnemonic == Mnemonic.MOVZX:
        return lambda c: put(c, get(c))
    sign = 1 << (ssize * 8 - 1)
    ext = MASK[dsize] & ~MASK[ssize]

    def h(c: CPU) -> None:
        v = get(c)
        put(c, v | ext if v & sign else v)

    return h


@handles("LEA")
def lea(ins: Instruction, ctx: Ctx) -> Handler:
    """LEA: the effective address (in the address size), truncated to the operand size; no memory access."""
    if not is_mem(ins, 1):
        return _ud("LEA with a register source")
    ea = ea_function(ins)
    mask = MASK[op_size(ins, 0)]
    put = setter(ins, 0)
    return lambda c: put(c, ea(c.regs) & mask)


@handles("XCHG")
def xchg(ins: Instruction, ctx: Ctx) -> Handler:
    """XCHG: with a memory operand the store comes first, so a fault leaves the register intact."""
    size = op_size(ins, 0)
    mem_first = is_mem(ins, 0)
    m, r = (0, 1) if mem_first or not is_mem(ins, 1) else (1, 0)
    load, store = rmw(ins, m)
    get_r = getter(ins, r, size)
    put_r = setter(ins, r)

    def h(c: CPU) -> None:
        where, a = load(c)
        b = get_r(c)
        store(c, where, b)
        put_r(c, a)

    return h


@handles("PUSH")
def push(ins: Instruction, ctx: Ctx) -> Handler:
    """PUSH r/m, imm, Sreg (SDM Vol.2 PUSH).  PUSH ESP pushes the value before the decrement."""
    size = operand_size(ins, ctx)
    if ins.op0_kind == OpKind.REGISTER and ins.op_register(0) in SREG:
        sreg = SREG[ins.op_register(0)]

        def push_sreg(c: CPU) -> None:
            # 32-bit operand size: ESP moves by 4 and the selector is written with a 16-bit store,
            # as on recent Intel processors (SDM Vol.2 PUSH, operation note on segment registers).
            esp = c.regs[ESP]
            new = (esp - size) & (0xFFFFFFFF if c.ss32 else 0xFFFF)
            c.wr16(SS, new, c.segs[sreg].selector)
            c.regs[ESP] = new if c.ss32 else (esp & 0xFFFF0000) | new

        return push_sreg
    get = getter(ins, 0, size)
    if ins.op0_kind in (OpKind.IMMEDIATE8, OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32):
        value = ins.immediate(0) & MASK[size]
        return lambda c: c.push(value, size)
    return lambda c: c.push(get(c), size)


@handles("POP")
def pop(ins: Instruction, ctx: Ctx) -> Handler:
    """POP r/m, Sreg (SDM Vol.2 POP).  A memory destination addressed through ESP uses the
    incremented ESP; if the store faults ESP is restored."""
    size = operand_size(ins, ctx)
    if ins.op0_kind == OpKind.REGISTER and ins.op_register(0) in SREG:
        sreg = SREG[ins.op_register(0)]
        if sreg == CS:
            return _ud("POP CS is invalid")

        def pop_sreg(c: CPU) -> None:
            value = c.peek(0, size) & 0xFFFF
            load_segment(c, sreg, value)
            c.adjust_sp(size)
            if sreg == SS:
                c.inhibit_pending = True
                c.event_pending = True

        return ends_block(pop_sreg)
    put = setter(ins, 0)
    if is_reg(ins, 0):

        def pop_reg(c: CPU) -> None:
            value = c.peek(0, size)
            c.adjust_sp(size)
            put(c, value)

        return pop_reg

    def pop_mem(c: CPU) -> None:
        value = c.peek(0, size)
        esp = c.regs[ESP]
        c.adjust_sp(size)
        try:
            put(c, value)
        except CpuFault:
            c.regs[ESP] = esp
            raise

    return pop_mem


# ---------------------------------------------------------------------- exchange (SDM Vol.1 7.3.1.2)


def probe_write(c: CPU, sreg: int, off: int, size: int) -> None:
    """Raise the fault a store of ``size`` bytes at ``sreg:off`` would raise, without storing.

    For instructions that must fault before a side effect (ENTER's final stack check, INS before
    it reads the port).  Segment checks first, then the page walk for a write (which may set the
    accessed and dirty bits, as the store that follows would).
    """
    la = c.linear(sreg, off, size, True)
    if c.tlb_w.get(la >> 12) is not None and (la & PAGE_MASK) + size <= PAGE_SIZE:
        return
    acc = ACC_WRITE | (PF_U if c.cpl == 3 else 0)
    c.translate(la, acc)
    last = (la + size - 1) & M32
    if (last ^ la) >> PAGE_SHIFT:
        c.translate(last, acc)


@handles("XADD")
def xadd(ins: Instruction, ctx: Ctx) -> Handler:
    """XADD r/m, r (SDM Vol.2 XADD): TEMP := SRC + DEST; SRC := DEST; DEST := TEMP; flags as ADD."""
    size = op_size(ins, 0)
    mask = MASK[size]
    cc = fl.op(fl.K_ADD, size)
    load, store = rmw(ins, 0)
    get_src = getter(ins, 1, size)
    put_src = setter(ins, 1)
    mem = is_mem(ins, 0)

    def h(c: CPU) -> None:
        where, d = load(c)
        s = get_src(c)
        t = (d + s) & mask
        if mem:
            store(c, where, t)  # memory before registers: a faulting store leaves SRC intact
            put_src(c, d)
        else:
            put_src(c, d)  # the SDM order: with the same register twice the sum wins
            store(c, where, t)
        c.cc_op = cc
        c.cc_a = d
        c.cc_b = s
        c.cc_res = t

    return h


def _acc_setter(size: int) -> Callable[[CPU, int], None]:
    """Store into AL, AX or EAX."""

    def put(c: CPU, v: int) -> None:
        r = c.regs
        r[EAX] = v if size == 4 else (r[EAX] & ~MASK[size] & M32) | v

    return put


@handles("CMPXCHG")
def cmpxchg(ins: Instruction, ctx: Ctx) -> Handler:
    """CMPXCHG r/m, r (SDM Vol.2 CMPXCHG): compare the accumulator with DEST; equal: DEST := SRC,
    else the accumulator := DEST.  DEST is written either way (the processor never produces a
    locked read without a write); the flags are those of CMP accumulator, DEST."""
    size = op_size(ins, 0)
    mask = MASK[size]
    cc = fl.op(fl.K_SUB, size)
    load, store = rmw(ins, 0)
    get_src = getter(ins, 1, size)
    put_acc = _acc_setter(size)

    def h(c: CPU) -> None:
        where, d = load(c)
        acc = c.regs[EAX] & mask
        if acc == d:
            store(c, where, get_src(c))
        else:
            store(c, where, d)
            put_acc(c, d)
        c.cc_op = cc
        c.cc_a = acc
        c.cc_b = d
        c.cc_res = (acc - d) & mask

    return h


@handles("CMPXCHG8B")
def cmpxchg8b(ins: Instruction, ctx: Ctx) -> Handler:
    """CMPXCHG8B m64 (SDM Vol.2 CMPXCHG8B): EDX:EAX = m64 ? m64 := ECX:EBX, ZF = 1 : EDX:EAX := m64,
    ZF = 0.  The other flags are unaffected.  (The register form is #UD; iced decodes it as invalid.)"""
    ea = ea_function(ins)
    sreg = mem_segment(ins)

    def h(c: CPU) -> None:
        la = c.linear(sreg, ea(c.regs), QWORD, True)
        m = c.lread_rmw(la, QWORD)  # CMPXCHG8B always writes: its load has write intent (W = 1 in #PF)
        r = c.regs
        f = fl.oszapc(c.cc_op, c.cc_a, c.cc_b, c.cc_res)
        if m == (r[EDX] << 32 | r[EAX]):
            c.lwrite(la, QWORD, r[ECX] << 32 | r[EBX])
            c.set_status_flags(f | fl.ZF)
        else:
            c.lwrite(la, QWORD, m)
            r[EAX] = m & M32
            r[EDX] = m >> 32
            c.set_status_flags(f & ~fl.ZF)

    return h


@handles("BSWAP")
def bswap(ins: Instruction, ctx: Ctx) -> Handler:
    """BSWAP r32 (SDM Vol.2 BSWAP): reverse the byte order."""
    idx, size, _ = GPR[ins.op_register(0)]
    if size == 2:
        # undefined (SDM Vol.2 BSWAP: "the result is undefined" for a 16-bit register): the register
        # becomes 0, as on Intel processors (and Bochs)
        def h16(c: CPU) -> None:
            c.regs[idx] &= 0xFFFF0000

        return h16

    def h(c: CPU) -> None:
        c.regs[idx] = int.from_bytes(c.regs[idx].to_bytes(4, "little"), "big")

    return h


# ---------------------------------------------------------------------- conditional move, conversions


@handles("CMOVO", "CMOVNO", "CMOVB", "CMOVAE", "CMOVE", "CMOVNE", "CMOVBE", "CMOVA", "CMOVS", "CMOVNS",
         "CMOVP", "CMOVNP", "CMOVL", "CMOVGE", "CMOVLE", "CMOVG")
def cmovcc(ins: Instruction, ctx: Ctx) -> Handler:
    """CMOVcc r, r/m (SDM Vol.2 CMOVcc): the source is read (and may fault) whatever the condition."""
    cc = ins.condition_code - 1  # iced ConditionCode 1..16 -> the x86 cc nibble 0..15
    get = getter(ins, 1, op_size(ins, 0))
    put = setter(ins, 0)

    def h(c: CPU) -> None:
        v = get(c)
        if c.cond(cc):
            put(c, v)

    return h


@handles("CBW", "CWDE")
def cbw(ins: Instruction, ctx: Ctx) -> Handler:
    """CBW: AX := SignExtend(AL); CWDE: EAX := SignExtend(AX) (SDM Vol.2 CBW/CWDE/CDQE)."""
    if ins.mnemonic == Mnemonic.CBW:

        def h8(c: CPU) -> None:
            r = c.regs
            al = r[EAX] & 0xFF
            r[EAX] = (r[EAX] & 0xFFFF0000) | (al | 0xFF00 if al & 0x80 else al)

        return h8

    def h16(c: CPU) -> None:
        r = c.regs
        ax = r[EAX] & 0xFFFF
        r[EAX] = ax | 0xFFFF0000 if ax & 0x8000 else ax

    return h16


@handles("CWD", "CDQ")
def cwd(ins: Instruction, ctx: Ctx) -> Handler:
    """CWD: DX := the sign of AX in every bit; CDQ: EDX := the sign of EAX (SDM Vol.2 CWD/CDQ/CQO)."""
    if ins.mnemonic == Mnemonic.CWD:

        def h16(c: CPU) -> None:
            r = c.regs
            r[EDX] = (r[EDX] & 0xFFFF0000) | (0xFFFF if r[EAX] & 0x8000 else 0)

        return h16

    def h32(c: CPU) -> None:
        r = c.regs
        r[EDX] = M32 if r[EAX] & 0x80000000 else 0

    return h32


@handles("XLATB")
def xlat(ins: Instruction, ctx: Ctx) -> Handler:
    """XLAT: AL := [seg:(E)BX + ZeroExtend(AL)] (SDM Vol.2 XLAT); DS unless overridden; the sum wraps
    at the address size."""
    sreg = mem_segment(ins)
    amask = 0xFFFF if ins.memory_base == Register.BX else M32

    def h(c: CPU) -> None:
        r = c.regs
        v = c.rd8(sreg, (r[EBX] + (r[EAX] & 0xFF)) & amask)
        r[EAX] = (r[EAX] & 0xFFFFFF00) | v

    return h


# ---------------------------------------------------------------------- far pointers (SDM Vol.2 LDS/LES/...)

_FAR_POINTER_SREG = {Mnemonic.LDS: DS, Mnemonic.LES: ES, Mnemonic.LFS: FS, Mnemonic.LGS: GS, Mnemonic.LSS: SS}


@handles("LDS", "LES", "LFS", "LGS", "LSS")
def load_far_pointer(ins: Instruction, ctx: Ctx) -> Handler:
    """LDS/LES/LFS/LGS/LSS r, m16:16/m16:32 (SDM Vol.2 LDS/LES/LFS/LGS/LSS): offset then selector in
    memory; the segment load (with all its protection checks) comes before the register write.
    LSS starts no interrupt shadow: only MOV SS and POP SS do (SDM Vol.2 MOV, POP)."""
    sreg = _FAR_POINTER_SREG[ins.mnemonic]
    size = op_size(ins, 0)
    ea = ea_function(ins)
    seg = mem_segment(ins)
    amask = 0xFFFF if addr_size(ins) == 2 else M32
    put = setter(ins, 0)

    def h(c: CPU) -> None:
        off = ea(c.regs)
        value = c.rd(seg, off, size)
        selector = c.rd16(seg, (off + size) & amask)
        load_segment(c, sreg, selector)
        put(c, value)

    return ends_block(h)  # the mode key (flat segments, stack size) may have changed


# ---------------------------------------------------------------------- PUSHA/POPA, ENTER/LEAVE


def _stack_mask(c: CPU) -> int:
    """SS.B selects ESP or SP as the stack pointer (SDM Vol.3A 3.4.5, "B (default size) flag")."""
    return M32 if c.ss32 else 0xFFFF


def _set_sp(c: CPU, sp: int) -> None:
    r = c.regs
    r[ESP] = sp if c.ss32 else (r[ESP] & 0xFFFF0000) | sp


@handles("PUSHA", "PUSHAD")
def pusha(ins: Instruction, ctx: Ctx) -> Handler:
    """PUSHA/PUSHAD (SDM Vol.2 PUSHA/PUSHAD): push EAX ECX EDX EBX, the original ESP, EBP ESI EDI.
    All eight stores happen before ESP changes, so a fault leaves the registers as they were."""
    size = operand_size(ins, ctx)
    mask = MASK[size]

    def h(c: CPU) -> None:
        r = c.regs
        smask = _stack_mask(c)
        sp = r[ESP] & smask
        for v in (r[EAX], r[ECX], r[EDX], r[EBX], r[ESP], r[EBP], r[ESI], r[EDI]):
            sp = (sp - size) & smask
            c.wr(SS, sp, size, v & mask)
        _set_sp(c, sp)

    return h


#: POPA's stack slots from the top: EDI ESI EBP (ESP's slot skipped) EBX EDX ECX EAX (SDM Vol.2 POPA)
_POPA_ORDER = (EDI, ESI, EBP, None, EBX, EDX, ECX, EAX)


@handles("POPA", "POPAD")
def popa(ins: Instruction, ctx: Ctx) -> Handler:
    """POPA/POPAD (SDM Vol.2 POPA/POPAD): all loads first, then the registers; the ESP image is skipped."""
    size = operand_size(ins, ctx)
    keep = M32 & ~MASK[size]

    def h(c: CPU) -> None:
        r = c.regs
        smask = _stack_mask(c)
        sp = r[ESP] & smask
        values = []
        for i, reg in enumerate(_POPA_ORDER):
            if reg is not None:
                values.append((reg, c.rd(SS, (sp + i * size) & smask, size)))
        for reg, v in values:
            r[reg] = (r[reg] & keep) | v
        _set_sp(c, (sp + 8 * size) & smask)

    return h


@handles("ENTER")
def enter(ins: Instruction, ctx: Ctx) -> Handler:
    """ENTER imm16, imm8 (SDM Vol.2 ENTER): push (E)BP, copy NestingLevel-1 frame pointers from the
    old frame, push the new frame pointer, then allocate imm16 bytes.  NestingLevel = imm8 MOD 32.

    Every load and store (and a write check of the new top of stack, which the processor makes
    although it stores nothing there) happens before EBP or ESP change."""
    size = operand_size(ins, ctx)
    mask = MASK[size]
    alloc = ins.immediate(0) & 0xFFFF
    level = ins.immediate(1) % NESTING_LEVELS

    def h(c: CPU) -> None:
        r = c.regs
        ss32 = c.ss32
        smask = _stack_mask(c)
        esp = r[ESP]
        ebp = r[EBP]
        sp = (esp - size) & smask
        c.wr(SS, sp, size, ebp & mask)  # Push(EBP)
        frame = sp if ss32 else (esp & 0xFFFF0000) | sp  # FrameTemp := ESP
        if level:
            bp = ebp & smask
            for _ in range(level - 1):
                bp = (bp - size) & smask  # EBP := EBP - size; Push([SS:EBP]) -- on a copy of EBP
                v = c.rd(SS, bp, size)
                sp = (sp - size) & smask
                c.wr(SS, sp, size, v)
            sp = (sp - size) & smask
            c.wr(SS, sp, size, frame & mask)  # Push(FrameTemp)
        sp = (sp - alloc) & smask
        probe_write(c, SS, sp, size)
        r[EBP] = frame if size == 4 else (ebp & 0xFFFF0000) | (frame & 0xFFFF)
        _set_sp(c, sp)

    return h


@handles("LEAVE")
def leave(ins: Instruction, ctx: Ctx) -> Handler:
    """LEAVE (SDM Vol.2 LEAVE): (E)SP := (E)BP (by stack size), then (E)BP := Pop() (by operand size).
    The load comes first, so a fault leaves ESP unchanged."""
    size = operand_size(ins, ctx)

    def h(c: CPU) -> None:
        r = c.regs
        smask = _stack_mask(c)
        sp = r[EBP] & smask
        v = c.rd(SS, sp, size)
        _set_sp(c, (sp + size) & smask)
        r[EBP] = v if size == 4 else (r[EBP] & 0xFFFF0000) | v

    return h
