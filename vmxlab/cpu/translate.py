"""Decode guest code with iced-x86 into a :class:`Block` of handler closures.

A block starts at a physical address and ends at the first instruction that
branches, changes the mode key or interrupt state (``ops.ENDS_BLOCK``), at a
page boundary, or after ``MAX_BLOCK`` instructions.  An instruction that
straddles the page boundary gets a block of its own, whose second page is
re-checked on every entry (``page2_pa``).

Instructions the model does not implement decode to a handler raising #UD,
with the reason recorded so a run summary can tell "invalid opcode" from
"not modelled" (README status table lists the latter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Code, Decoder, DecoderError, FlowControl, Instruction

from . import ops
from .blocks import Block
from .faults import CpuFault, Vector
from .state import CS

if TYPE_CHECKING:
    from .core import CPU

MAX_BLOCK = 64
MAX_INSN = 15  # SDM Vol.2 2.3.11: an instruction longer than 15 bytes is #GP(0)

ops.load_all()
_CTX = {(c, s): ops.Ctx(c, s) for c in (False, True) for s in (False, True)}


def _raiser(fault_args: tuple, detail: str) -> ops.Handler:
    vector, code = fault_args

    def h(cpu: CPU) -> None:
        raise CpuFault(vector, code, detail=detail)

    return h


def _unimplemented(ins: Instruction) -> ops.Handler:
    detail = f"not modelled: {ins}"

    def h(cpu: CPU) -> None:
        cpu.last_unmodelled = str(ins)
        raise CpuFault(Vector.UD, None, detail=detail)

    return h


def make_handler(ins: Instruction, ctx: ops.Ctx) -> ops.Handler:
    """The handler for one decoded instruction (#UD for invalid or unmodelled ones)."""
    if ins.code == Code.INVALID:
        return _raiser((Vector.UD, None), "invalid opcode")
    factory = ops.FACTORIES.get(ins.mnemonic)
    if factory is None:
        return _unimplemented(ins)
    try:
        return factory(ins, ctx)
    except NotImplementedError:
        return _unimplemented(ins)


def ends_block(ins: Instruction) -> bool:
    return ins.flow_control != FlowControl.NEXT or ins.mnemonic in ops.ENDS_BLOCK or ins.code == Code.INVALID


def translate(cpu: CPU, pa: int, la: int, key: int) -> Block:
    """Decode a block at physical ``pa`` (linear ``la``, EIP ``cpu.eip``) for the current mode."""
    eip = cpu.eip
    ctx = _CTX[(cpu.cs32, cpu.ss32)]
    bitness = 32 if cpu.cs32 else 16
    ip_mask = ctx.ip_mask()
    cs = cpu.segs[CS]
    blk = Block(pa, key)
    room = 0x1000 - (pa & 0xFFF)
    data = cpu.memory.read_bytes(pa, room)
    decoder = Decoder(bitness, data, ip=eip)
    offset = 0
    while offset < room and blk.n < MAX_BLOCK:
        ins = decoder.decode()
        if ins.code == Code.INVALID and decoder.last_error == DecoderError.NO_MORE_BYTES:
            if blk.n:
                break  # let the straddling instruction start a block of its own
            ins = _decode_straddling(cpu, blk, data, la, eip, bitness)
        end_off = (eip + offset + ins.len - 1) & ip_mask
        if end_off > cs.hi or (eip + offset) & ip_mask < cs.lo:
            # SDM Vol.3A 5.3: fetching beyond the CS limit is #GP(0)
            handler = _raiser((Vector.GP, 0), f"fetch beyond CS limit at {eip + offset:#x}")
        else:
            handler = make_handler(ins, ctx)
        blk.ops.append(handler)
        blk.eips.append((eip + offset) & ip_mask)
        blk.instrs.append(ins)
        blk.n += 1
        offset += ins.len
        if ends_block(ins) or getattr(handler, "ends_block", False) or blk.page2_pa is not None:
            break
    blk.end_eip = (eip + offset) & ip_mask
    blk.nbytes = offset
    first_part = min(offset, room)
    blk.ranges.append((pa, pa + first_part))
    if blk.page2_pa is not None:
        blk.ranges.append((blk.page2_pa, blk.page2_pa + offset - first_part))
    return blk


def _decode_straddling(cpu: CPU, blk: Block, data: bytes, la: int, eip: int, bitness: int) -> Instruction:
    """Decode an instruction that continues on the next linear page (which may fault: #PF on fetch)."""
    la2 = ((la & ~0xFFF) + 0x1000) & 0xFFFFFFFF
    pa2 = cpu.fetch_translate(la2)
    blk.page2_la = la2
    blk.page2_pa = pa2 & ~0xFFF
    more = cpu.memory.read_bytes(blk.page2_pa, MAX_INSN)
    return Decoder(bitness, data + more, ip=eip).decode()
