"""Port I/O: IN and OUT (SDM Vol.2 IN, OUT; the protection rules of SDM Vol.3A 20.5 / Vol.1 19.5).

Order of checks (SDM Vol.3C 26.1.1): the I/O privilege check (CPL > IOPL,
then the TSS I/O permission bitmap) raises #GP(0) first; only an access the
guest's own protection allows can cause a VM exit (reason 30); then the
access reaches the device bus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic, OpKind

from ..faults import CpuFault, Vector
from ..state import EDX
from . import Ctx, Handler, ends_block, handles
from .operands import getter, op_size, setter

if TYPE_CHECKING:
    from ..core import CPU


def check_io_permission(c: CPU, port: int, size: int) -> None:
    """#GP(0) unless CPL <= IOPL or every bit for port..port+size-1 in the TSS I/O bitmap is 0
    (SDM Vol.1 19.5.2).  Real mode has no I/O protection."""
    if not c.pe or c.cpl <= c.iopl:
        return
    tr = c.tr
    # only a 32-bit TSS has an I/O bitmap (SDM Vol.3A 7.2.1); the base is the word at offset 0x66
    if tr.unusable or (tr.ar & 0xF) not in (0x9, 0xB) or tr.limit < 0x67:
        raise CpuFault(Vector.GP, 0,
                       detail=f"I/O to port {port:#x} at CPL {c.cpl} > IOPL {c.iopl}, no I/O bitmap")
    base = c.lread(tr.base + 0x66, 2, user=False)
    first = base + (port >> 3)
    # two bytes are always read, so a check near the end of the map needs both within the limit
    if first + 1 > tr.limit:
        raise CpuFault(Vector.GP, 0, detail=f"port {port:#x} beyond the TSS I/O bitmap (limit {tr.limit:#x})")
    bits = c.lread(tr.base + first, 2, user=False)
    mask = ((1 << size) - 1) << (port & 7)
    if bits & mask:
        raise CpuFault(Vector.GP, 0, detail=f"port {port:#x} denied by the TSS I/O bitmap at CPL {c.cpl}")


def io_access(c: CPU, port: int, size: int, is_in: bool, value: int = 0, **exit_info: int) -> int:
    """The shared path of IN/OUT/INS/OUTS after decoding: permission, VM exit, device."""
    check_io_permission(c, port, size)
    if c.vmx is not None:
        c.vmx.intercept(c, "io", port=port, size=size, is_in=is_in, **exit_info)
    bus = c.machine.ports
    if is_in:
        return bus.read(port, size)
    bus.write(port, size, value)
    if c.machine.stop is not None:
        c.event_pending = True
    return 0


MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


@handles("IN")
def in_(ins: Instruction, ctx: Ctx) -> Handler:
    size = op_size(ins, 0)
    put = setter(ins, 0)
    if ins.op1_kind == OpKind.IMMEDIATE8:
        port = ins.immediate8
        return ends_block(lambda c: put(c, io_access(c, port, size, True, imm=1) & MASK[size]))
    return ends_block(lambda c: put(c, io_access(c, c.regs[EDX] & 0xFFFF, size, True, imm=0) & MASK[size]))


@handles("OUT")
def out(ins: Instruction, ctx: Ctx) -> Handler:
    size = op_size(ins, 1)
    get = getter(ins, 1, size)
    if ins.op0_kind == OpKind.IMMEDIATE8:
        port = ins.immediate8
        return ends_block(lambda c: io_access(c, port, size, False, get(c), imm=1) and None)
    return ends_block(lambda c: io_access(c, c.regs[EDX] & 0xFFFF, size, False, get(c), imm=0) and None)


_ = Mnemonic  # mnemonics are named in the decorators
