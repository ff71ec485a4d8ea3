"""Control transfer (SDM Vol.2: JMP Jcc CALL RET LOOP/LOOPcc JCXZ/JECXZ INT n/INT3/INTO/INT1 IRET).

Near transfers check the target against the CS limit (#GP(0), SDM Vol.2 JMP
"IF tempEIP is not within code segment limit").  Far transfers and IRET go
through :mod:`vmxlab.cpu.far`, which implements the real-mode and
protected-mode rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic, OpKind

from ..faults import CpuFault, Vector
from ..interrupts import EventKind
from ..state import CS, ECX
from . import Ctx, Handler, handles
from .operands import getter

if TYPE_CHECKING:
    from ..core import CPU


def operand_size(ins: Instruction, ctx: Ctx) -> int:
    """Operand size in bytes of a branch/stack instruction (16/32-bit forms differ by prefix 66)."""
    bits = ins.op_code().operand_size
    if bits:
        return bits // 8
    return 4 if ctx.code32 else 2


def _check_target(c: CPU, target: int) -> None:
    if target > c.segs[CS].hi:
        raise CpuFault(Vector.GP, 0, detail=f"branch target {target:#x} beyond CS limit")


def _next_ip(ins: Instruction, ctx: Ctx) -> int:
    return ins.next_ip & ctx.ip_mask()


@handles("JMP")
def jmp(ins: Instruction, ctx: Ctx) -> Handler:
    kind = ins.op0_kind
    if kind in (OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32):
        target = ins.near_branch_target

        def jmp_rel(c: CPU) -> None:
            if target > c.segs[CS].hi:
                _check_target(c, target)
            c.eip = target

        return jmp_rel
    if kind in (OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32):
        from ..far import far_jmp

        sel = ins.far_branch_selector
        off = ins.far_branch32 if kind == OpKind.FAR_BRANCH32 else ins.far_branch16
        size = 4 if kind == OpKind.FAR_BRANCH32 else 2
        return lambda c: far_jmp(c, sel, off, size, _next_ip(ins, ctx))
    if ins.is_jmp_far_indirect:
        return _far_indirect(ins, ctx, call=False)
    # near indirect: JMP r/m16/32
    size = operand_size(ins, ctx)
    get = getter(ins, 0, size)

    def jmp_ind(c: CPU) -> None:
        target = get(c)
        _check_target(c, target)
        c.eip = target

    return jmp_ind


def _far_indirect(ins: Instruction, ctx: Ctx, call: bool) -> Handler:
    """JMP/CALL m16:16 / m16:32: offset then selector in memory."""
    from ..far import far_call, far_jmp
    from .operands import addr_size, ea_function, mem_segment

    size = operand_size(ins, ctx)
    ea = ea_function(ins)
    sreg = mem_segment(ins)
    amask = 0xFFFF if addr_size(ins) == 2 else 0xFFFFFFFF
    next_ip = _next_ip(ins, ctx)
    transfer = far_call if call else far_jmp

    def h(c: CPU) -> None:
        off_addr = ea(c.regs)
        off = c.rd(sreg, off_addr, size)
        sel = c.rd16(sreg, (off_addr + size) & amask)
        transfer(c, sel, off, size, next_ip)

    return h


@handles("JO", "JNO", "JB", "JAE", "JE", "JNE", "JBE", "JA",
         "JS", "JNS", "JP", "JNP", "JL", "JGE", "JLE", "JG")
def jcc(ins: Instruction, ctx: Ctx) -> Handler:
    cc = ins.condition_code - 1  # iced ConditionCode: 1 = O ... 16 = G; x86 cc nibble is 0..15
    target = ins.near_branch_target

    def h(c: CPU) -> None:
        if c.cond(cc):
            if target > c.segs[CS].hi:
                _check_target(c, target)
            c.eip = target

    return h


@handles("JCXZ", "JECXZ")
def jcxz(ins: Instruction, ctx: Ctx) -> Handler:
    mask = 0xFFFFFFFF if ins.mnemonic == Mnemonic.JECXZ else 0xFFFF
    target = ins.near_branch_target

    def h(c: CPU) -> None:
        if c.regs[ECX] & mask == 0:
            _check_target(c, target)
            c.eip = target

    return h


@handles("LOOP", "LOOPE", "LOOPNE")
def loop(ins: Instruction, ctx: Ctx) -> Handler:
    """LOOP/LOOPcc: decrement CX or ECX (by address size) without touching flags, then branch."""
    amask = 0xFFFF if ins.op_code().address_size == 16 else 0xFFFFFFFF
    target = ins.near_branch_target
    m = ins.mnemonic

    def h(c: CPU) -> None:
        r = c.regs
        count = (r[ECX] - 1) & amask
        if m == Mnemonic.LOOPE:
            taken = count != 0 and c.cond(4)
        elif m == Mnemonic.LOOPNE:
            taken = count != 0 and c.cond(5)
        else:
            taken = count != 0
        if taken:
            _check_target(c, target)
        r[ECX] = (r[ECX] & ~amask & 0xFFFFFFFF) | count
        if taken:
            c.eip = target

    return h


@handles("CALL")
def call(ins: Instruction, ctx: Ctx) -> Handler:
    size = operand_size(ins, ctx)
    next_ip = _next_ip(ins, ctx)
    kind = ins.op0_kind
    if kind in (OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32):
        target = ins.near_branch_target

        def call_rel(c: CPU) -> None:
            if target > c.segs[CS].hi:
                _check_target(c, target)
            c.push(next_ip, size)
            c.eip = target

        return call_rel
    if kind in (OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32):
        from ..far import far_call

        sel = ins.far_branch_selector
        off = ins.far_branch32 if kind == OpKind.FAR_BRANCH32 else ins.far_branch16
        fsize = 4 if kind == OpKind.FAR_BRANCH32 else 2
        return lambda c: far_call(c, sel, off, fsize, next_ip)
    if ins.is_call_far_indirect:
        return _far_indirect(ins, ctx, call=True)
    get = getter(ins, 0, size)

    def call_ind(c: CPU) -> None:
        target = get(c)
        _check_target(c, target)
        c.push(next_ip, size)
        c.eip = target

    return call_ind


@handles("RET")
def ret(ins: Instruction, ctx: Ctx) -> Handler:
    """RET near [imm16]: pop EIP, check the limit, then release imm16 more bytes."""
    size = operand_size(ins, ctx)
    extra = ins.immediate16 if ins.op_count else 0

    def h(c: CPU) -> None:
        target = c.peek(0, size)
        _check_target(c, target)
        c.adjust_sp(size + extra)
        c.eip = target

    return h


@handles("RETF")
def retf(ins: Instruction, ctx: Ctx) -> Handler:
    from ..far import far_ret

    size = operand_size(ins, ctx)
    extra = ins.immediate16 if ins.op_count else 0
    return lambda c: far_ret(c, size, extra)


@handles("IRET", "IRETD")
def iret(ins: Instruction, ctx: Ctx) -> Handler:
    from ..far import iret as do_iret

    size = operand_size(ins, ctx)
    next_ip = _next_ip(ins, ctx)
    return lambda c: do_iret(c, size, next_ip)


def software_interrupt(c: CPU, vector: int, kind: EventKind, next_ip: int) -> None:
    """INT n / INT3 / INTO / INT1: a trap, so the saved EIP is the next instruction (SDM Vol.3A 6.5)."""
    from ..interrupts import deliver

    if c.vmx is not None and kind != EventKind.SOFTWARE_INTERRUPT:
        c.vmx.check_exception_exit(c, vector, None, kind, next_ip=next_ip)
    deliver(c, vector, None, kind, next_ip)


@handles("INT", ends_block=True)
def int_n(ins: Instruction, ctx: Ctx) -> Handler:
    vector = ins.immediate8
    next_ip = _next_ip(ins, ctx)
    return lambda c: software_interrupt(c, vector, EventKind.SOFTWARE_INTERRUPT, next_ip)


@handles("INT3", ends_block=True)
def int3(ins: Instruction, ctx: Ctx) -> Handler:
    next_ip = _next_ip(ins, ctx)
    return lambda c: software_interrupt(c, Vector.BP, EventKind.SOFTWARE_EXCEPTION, next_ip)


@handles("INT1", ends_block=True)
def int1(ins: Instruction, ctx: Ctx) -> Handler:
    next_ip = _next_ip(ins, ctx)
    return lambda c: software_interrupt(c, Vector.DB, EventKind.PRIV_SOFTWARE_EXCEPTION, next_ip)


@handles("INTO", ends_block=True)
def into(ins: Instruction, ctx: Ctx) -> Handler:
    next_ip = _next_ip(ins, ctx)

    def h(c: CPU) -> None:
        if c.cond(0):  # OF
            software_interrupt(c, Vector.OF, EventKind.SOFTWARE_EXCEPTION, next_ip)

    return h
