"""The guest instruction behind an instruction-caused VM exit, decoded for the exit-information fields.

The exit hooks run inside the instruction's handler, which knows its operands
but not its encoding; the VM-exit instruction length (SDM Vol.3C 28.2.4,
"Information for VM Exits Due to Instruction Execution"), the instruction-
information field (Tables 28-8 to 28-14) and the displacement qualification
(Table 28-1, "Exit Qualification for ... LGDT, LIDT, ... VMX instructions") all
come from the encoding.  So at the exit -- while the CPU still holds the guest
state and CS:EIP still points at the instruction -- it is decoded once more
with iced-x86.  That costs one decode per exit, nothing on the fast path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Decoder, Instruction, OpKind, Register

from ..cpu.faults import CpuFault, VmExitSignal
from ..cpu.ops.operands import GPR, SREG
from ..cpu.state import CS
from .qualifications import InstructionInfo

if TYPE_CHECKING:
    from ..cpu.core import CPU

MAX_INSTRUCTION_LENGTH = 15  # SDM Vol.2 2.3.11
#: the address size reported for register operands (field undefined: encodes as 0)
REGISTER_FORM_ADDRESS_SIZE = 2
M32 = 0xFFFFFFFF

#: string-instruction memory operands and their address size (iced OpKind -> bytes)
STRING_OPERAND_ADDRESS_SIZE = {
    OpKind.MEMORY_SEG_SI: 2,
    OpKind.MEMORY_SEG_ESI: 4,
    OpKind.MEMORY_SEG_DI: 2,
    OpKind.MEMORY_SEG_EDI: 4,
    OpKind.MEMORY_ESDI: 2,
    OpKind.MEMORY_ESEDI: 4,
}


def instruction_at_rip(cpu: CPU) -> Instruction | None:
    """Decode the instruction at the guest's CS:EIP (None if its bytes cannot be fetched now)."""
    la = (cpu.segs[CS].base + cpu.eip) & M32
    try:
        first = cpu.fetch_translate(la)
        room = 0x1000 - (la & 0xFFF)
        data = cpu.memory.read_bytes(first, min(room, MAX_INSTRUCTION_LENGTH))
        if room < MAX_INSTRUCTION_LENGTH:
            second = cpu.fetch_translate((la + room) & M32)
            data += cpu.memory.read_bytes(second, MAX_INSTRUCTION_LENGTH - room)
    except (CpuFault, VmExitSignal):
        return None
    ins = Decoder(32 if cpu.cs32 else 16, data, ip=cpu.eip).decode()
    return ins if ins.len else None


def gpr_number(reg: int) -> int:
    """The register number VMX uses (0 EAX .. 7 EDI, SDM Vol.3C Table 28-3) for an iced register."""
    return GPR[reg][0] if reg in GPR else 0


def address_size(ins: Instruction, cs32: bool) -> int:
    """Address size in bytes of the instruction's memory operand (or of the code, without one)."""
    for i in range(ins.op_count):
        kind = ins.op_kind(i)
        if kind in STRING_OPERAND_ADDRESS_SIZE:
            return STRING_OPERAND_ADDRESS_SIZE[kind]
    for reg in (ins.memory_base, ins.memory_index):
        if reg != Register.NONE and reg in GPR:
            return GPR[reg][1]
    if ins.memory_displ_size:
        return 2 if ins.memory_displ_size == 2 else 4
    if any(ins.op_kind(i) == OpKind.MEMORY for i in range(ins.op_count)):
        return 2 if ins.memory_displ_size == 2 else 4
    return 4 if cs32 else 2


def memory_operand_index(ins: Instruction) -> int | None:
    for i in range(ins.op_count):
        if ins.op_kind(i) == OpKind.MEMORY:
            return i
    return None


def displacement(ins: Instruction, cs32: bool) -> int:
    """The sign-extended displacement of the memory operand (0 without one), natural width (32 bits).

    SDM Vol.3C Table 28-1: for LGDT/LIDT/LLDT/LTR/SGDT/SIDT/SLDT/STR, INVEPT,
    INVVPID and the VMX instructions with a memory operand, "the exit
    qualification receives the value of the instruction's displacement field,
    which is sign-extended to 64 bits if necessary (32 bits on processors
    that do not support Intel 64)"."""
    if memory_operand_index(ins) is None:
        return 0
    asize = address_size(ins, cs32)
    disp = ins.memory_displacement
    if asize == 2:
        disp &= 0xFFFF
        if disp & 0x8000:
            disp -= 0x10000
    else:
        disp &= M32
        if disp & 0x80000000:
            disp -= 1 << 32
    return disp & M32


def memory_instruction_info(
    ins: Instruction, cs32: bool, *, reg2: int = 0, operand_size_32: bool = False
) -> InstructionInfo:
    """The instruction-information field for an instruction with an r/m operand (SDM Vol.3C
    Tables 28-9, 28-10, 28-11, 28-13, 28-14): memory operand -> scale/index/base/segment; register
    operand -> reg1 and bit 10."""
    asize = address_size(ins, cs32)
    m = memory_operand_index(ins)
    if m is None:
        # register form: reg1 is the r/m register (operand 0 for SLDT/STR/LLDT/LTR, VMREAD's destination
        # is operand 0, VMWRITE's source operand 1).  Address size, segment, index and base are undefined
        # without a memory operand; they read as 0, as on Bochs (cross-checked with refrun)
        rm = _rm_register(ins)
        return InstructionInfo(
            reg1=gpr_number(rm),
            address_size=REGISTER_FORM_ADDRESS_SIZE,
            register_operand=True,
            index_invalid=False,
            base_invalid=False,
            operand_size_32=operand_size_32,
            reg2=reg2,
        )
    scale = {1: 0, 2: 1, 4: 2, 8: 3}.get(ins.memory_index_scale, 0)
    index_invalid = ins.memory_index == Register.NONE
    base_invalid = ins.memory_base == Register.NONE
    return InstructionInfo(
        scale=0 if index_invalid else scale,
        address_size=asize,
        register_operand=False,
        operand_size_32=operand_size_32,
        segment=SREG.get(ins.memory_segment, 3),
        index=0 if index_invalid else gpr_number(ins.memory_index),
        index_invalid=index_invalid,
        base=0 if base_invalid else gpr_number(ins.memory_base),
        base_invalid=base_invalid,
        reg2=reg2,
    )


def _rm_register(ins: Instruction) -> int:
    """The ModRM.rm register operand of a register-form instruction."""
    from iced_x86 import Mnemonic

    if ins.mnemonic == Mnemonic.VMWRITE:
        return ins.op_register(1)
    return ins.op_register(0)


def modrm_reg_register(ins: Instruction) -> int:
    """The ModRM.reg register of VMREAD (operand 1: the field encoding), VMWRITE (operand 0) and
    INVEPT/INVVPID (operand 0: the type): "reg2" in SDM Vol.3C Tables 28-9 and 28-14."""
    from iced_x86 import Mnemonic

    if ins.mnemonic == Mnemonic.VMREAD:
        return gpr_number(ins.op_register(1))
    return gpr_number(ins.op_register(0))


def memory_operand_linear(cpu: CPU, ins: Instruction) -> int | None:
    """Linear address of the instruction's explicit memory operand (segment base + effective address)."""
    if memory_operand_index(ins) is None:
        return None
    regs = cpu.regs
    ea = ins.memory_displacement
    if ins.memory_base != Register.NONE:
        ea += regs[gpr_number(ins.memory_base)]
    if ins.memory_index != Register.NONE:
        ea += regs[gpr_number(ins.memory_index)] * ins.memory_index_scale
    ea &= 0xFFFF if address_size(ins, cpu.cs32) == 2 else M32
    return (cpu.segs[SREG.get(ins.memory_segment, 3)].base + ea) & M32
