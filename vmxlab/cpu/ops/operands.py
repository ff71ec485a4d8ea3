"""Operand access closures, built once per decoded instruction.

A handler factory turns an iced ``Instruction`` into small closures that read
or write its operands: a register slice, a memory location (segment +
effective-address function, checked through the CPU's segmented access), or
an immediate.  Decoding work (which register, which segment, the
displacement) happens here once, never per execution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iced_x86 import Instruction, OpKind, Register

if TYPE_CHECKING:
    from ..core import CPU

M32 = 0xFFFFFFFF

# iced register -> (gpr index, size in bytes, bit shift)
GPR: dict[int, tuple[int, int, int]] = {}
for _i, _n in enumerate(("AL", "CL", "DL", "BL")):
    GPR[getattr(Register, _n)] = (_i, 1, 0)
for _i, _n in enumerate(("AH", "CH", "DH", "BH")):
    GPR[getattr(Register, _n)] = (_i, 1, 8)
for _i, _n in enumerate(("AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI")):
    GPR[getattr(Register, _n)] = (_i, 2, 0)
for _i, _n in enumerate(("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI")):
    GPR[getattr(Register, _n)] = (_i, 4, 0)

#: iced segment register -> Sreg number (ES CS SS DS FS GS)
SREG = {getattr(Register, n): i for i, n in enumerate(("ES", "CS", "SS", "DS", "FS", "GS"))}
CREG = {getattr(Register, f"CR{i}"): i for i in range(16) if hasattr(Register, f"CR{i}")}
DREG = {getattr(Register, f"DR{i}"): i for i in range(16) if hasattr(Register, f"DR{i}")}

IMM_KINDS = {
    OpKind.IMMEDIATE8: 0xFF,
    OpKind.IMMEDIATE16: 0xFFFF,
    OpKind.IMMEDIATE32: M32,
    OpKind.IMMEDIATE8TO16: 0xFFFF,
    OpKind.IMMEDIATE8TO32: M32,
    OpKind.IMMEDIATE8_2ND: 0xFF,
}
MEM_KINDS = frozenset({OpKind.MEMORY})

Getter = Callable[["CPU"], int]
Setter = Callable[["CPU", int], None]


def addr_size(ins: Instruction) -> int:
    """The address size (2 or 4) of a memory operand: from its registers, else from the displacement."""
    for reg in (ins.memory_base, ins.memory_index):
        if reg != Register.NONE and reg in GPR:
            return GPR[reg][1]
    return 2 if ins.memory_displ_size == 2 else 4


def ea_function(ins: Instruction) -> Callable[[list[int]], int]:
    """Effective-address computation (SDM Vol.2 2.1.5), specialised on the addressing form.

    The offset is truncated to the address size: 16-bit addressing wraps at 64 KiB.
    """
    base = GPR[ins.memory_base][0] if ins.memory_base != Register.NONE else None
    index = GPR[ins.memory_index][0] if ins.memory_index != Register.NONE else None
    scale = ins.memory_index_scale
    mask = 0xFFFF if addr_size(ins) == 2 else M32
    disp = ins.memory_displacement & mask
    if base is None and index is None:
        return lambda r: disp
    if index is None:
        if disp == 0:
            if mask == M32:
                return lambda r: r[base]
            return lambda r: r[base] & 0xFFFF
        return lambda r: (r[base] + disp) & mask
    if base is None:
        return lambda r: (r[index] * scale + disp) & mask
    return lambda r: (r[base] + r[index] * scale + disp) & mask


def mem_segment(ins: Instruction) -> int:
    """The segment of the memory operand: the override prefix, else the default (SS for EBP/ESP bases)."""
    return SREG[ins.memory_segment]


def op_size(ins: Instruction, i: int) -> int:
    """Size in bytes of operand ``i``."""
    kind = ins.op_kind(i)
    if kind == OpKind.REGISTER:
        reg = ins.op_register(i)
        if reg in GPR:
            return GPR[reg][1]
        return 2 if reg in SREG else 4
    if kind == OpKind.MEMORY:
        return _MEMSIZE.get(ins.memory_size, 4)
    if kind in (OpKind.IMMEDIATE8, OpKind.IMMEDIATE8_2ND):
        return 1
    if kind in (OpKind.IMMEDIATE16, OpKind.IMMEDIATE8TO16):
        return 2
    return 4


def _memsize_table() -> dict[int, int]:
    from iced_x86 import MemorySize as MS

    sizes = {"UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "WORD_OFFSET": 2, "UINT32": 4, "INT32": 4,
             "DWORD_OFFSET": 4, "UINT64": 8, "INT64": 8, "SEG_PTR16": 4, "SEG_PTR32": 6, "FWORD6": 6,
             "BOUND16_WORD_WORD": 4, "BOUND32_DWORD_DWORD": 8}
    return {getattr(MS, n): v for n, v in sizes.items() if hasattr(MS, n)}


_MEMSIZE = _memsize_table()

READERS = {1: "rd8", 2: "rd16", 4: "rd32"}
WRITERS = {1: "wr8", 2: "wr16", 4: "wr32"}


def getter(ins: Instruction, i: int, size: int | None = None) -> Getter:
    """A closure returning operand ``i``'s current value (zero-extended)."""
    kind = ins.op_kind(i)
    if kind == OpKind.REGISTER:
        reg = ins.op_register(i)
        if reg in SREG:
            s = SREG[reg]
            return lambda c: c.segs[s].selector
        idx, rsize, shift = GPR[reg]
        if rsize == 4:
            return lambda c: c.regs[idx]
        if rsize == 2:
            return lambda c: c.regs[idx] & 0xFFFF
        if shift:
            return lambda c: (c.regs[idx] >> 8) & 0xFF
        return lambda c: c.regs[idx] & 0xFF
    if kind == OpKind.MEMORY:
        size = size or op_size(ins, i)
        ea = ea_function(ins)
        sreg = mem_segment(ins)
        if size in READERS:
            from ..core import CPU

            rd = getattr(CPU, READERS[size])
            return lambda c: rd(c, sreg, ea(c.regs))
        return lambda c: c.rd(sreg, ea(c.regs), size)
    if kind in IMM_KINDS:
        value = ins.immediate(i) & IMM_KINDS[kind]
        if size == 4 and kind == OpKind.IMMEDIATE8:
            value = ins.immediate(i) & 0xFF
        return lambda c: value
    raise NotImplementedError(f"operand kind {kind} of {ins}")


def setter(ins: Instruction, i: int) -> Setter:
    """A closure storing a value (already truncated to the operand size) into operand ``i``."""
    kind = ins.op_kind(i)
    if kind == OpKind.REGISTER:
        idx, rsize, shift = GPR[ins.op_register(i)]
        if rsize == 4:

            def set32(c: CPU, v: int) -> None:
                c.regs[idx] = v

            return set32
        if rsize == 2:

            def set16(c: CPU, v: int) -> None:
                r = c.regs
                r[idx] = (r[idx] & 0xFFFF0000) | v

            return set16
        if shift:

            def set8h(c: CPU, v: int) -> None:
                r = c.regs
                r[idx] = (r[idx] & 0xFFFF00FF) | (v << 8)

            return set8h

        def set8(c: CPU, v: int) -> None:
            r = c.regs
            r[idx] = (r[idx] & 0xFFFFFF00) | v

        return set8
    if kind == OpKind.MEMORY:
        size = op_size(ins, i)
        ea = ea_function(ins)
        sreg = mem_segment(ins)
        from ..core import CPU

        wr = getattr(CPU, WRITERS[size]) if size in WRITERS else None
        if wr is not None:
            return lambda c, v: wr(c, sreg, ea(c.regs), v)
        return lambda c, v: c.wr(sreg, ea(c.regs), size, v)
    raise NotImplementedError(f"operand kind {kind} of {ins} is not writable")


def rmw(ins: Instruction, i: int) -> tuple[Callable[[CPU], tuple[int, int]], Callable[[CPU, int, int], None]]:
    """Closures for a read-modify-write operand: ``load(c) -> (where, value)`` and ``store(c, where, v)``.

    For memory, ``where`` is the linear address, computed and checked for a
    writable segment once (SDM Vol.3A 5.5: the destination must be writable
    even before it is read); the store may still page-fault, before any
    register changes.
    """
    kind = ins.op_kind(i)
    if kind == OpKind.REGISTER:
        get = getter(ins, i)
        put = setter(ins, i)
        return (lambda c: (0, get(c))), (lambda c, w, v: put(c, v))
    size = op_size(ins, i)
    ea = ea_function(ins)
    sreg = mem_segment(ins)

    def load(c: CPU) -> tuple[int, int]:
        la = c.linear(sreg, ea(c.regs), size, True)
        return la, c.lread_rmw(la, size)  # write intent: a #PF here has W = 1, as on hardware

    def store(c: CPU, la: int, v: int) -> None:
        c.lwrite(la, size, v)

    return load, store


def is_mem(ins: Instruction, i: int) -> bool:
    return ins.op_kind(i) == OpKind.MEMORY


def is_reg(ins: Instruction, i: int) -> bool:
    return ins.op_kind(i) == OpKind.REGISTER


def op_bits(ins: Instruction) -> int:
    """Operand size of the instruction in bytes (from its first operand, or the code's size)."""
    if ins.op_count:
        return op_size(ins, 0)
    return 4
