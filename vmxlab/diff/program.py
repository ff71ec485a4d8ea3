"""Test programs for the differential harness: instructions, initial state, and their encodings.

An :class:`Insn` names an iced ``Code`` (the 32-bit form, e.g. ``ADD_RM32_R32``)
and its operands.  It is encoded twice: for the software CPU as 32-bit code, and
for the KVM target as 64-bit code with the *same operation*: 32-bit operand size
(no REX.W), 32-bit address size (iced adds the 0x67 prefix because memory
operands use 32-bit registers, or absolute disp32 addresses), so every effective
address wraps at 4 GiB exactly as in 32-bit mode (SDM Vol.1 3.3.7).  Near
branches take their 64-bit-mode codes (``JE_REL8_64``, ``LOOP_REL8_64_ECX``) and
are laid out by iced's BlockEncoder; string instructions get address size 32 so
they use ESI/EDI/ECX.  Why 64-bit code at all: see :mod:`vmxlab.diff.kvm_target`.

Every sequence ends with the same two instructions, ``mov [EXIT_PAGE], eax``
(a store that leaves the target: an MMIO exit on KVM, an MMIO device on the
software CPU) and ``jmp $``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Union

from iced_x86 import (
    BlockEncoder,
    Code,
    Decoder,
    Formatter,
    FormatterSyntax,
    Instruction,
    MemoryOperand,
    Mnemonic,
    OpCodeInfo,
    Register,
    RepPrefixKind,
)

from . import layout as L

GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG_NAMES = {name: getattr(Register, name.upper()) for name in (
    *GPR32, "ax", "cx", "dx", "bx", "sp", "bp", "si", "di", "al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")}

#: the flags a test may set initially and the harness compares: CF PF AF ZF SF OF and DF
STATUS = 0x8D5
DF = 0x400
IF = 0x200
RESERVED1 = 0x2


@dataclass(frozen=True)
class Reg:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Mem:
    """A memory operand: ``[base + index*scale + disp]`` with 32-bit registers, or absolute ``[disp]``."""

    disp: int
    base: str | None = None
    index: str | None = None
    scale: int = 1

    def iced(self) -> MemoryOperand:
        base = REG_NAMES[self.base] if self.base else Register.NONE
        index = REG_NAMES[self.index] if self.index else Register.NONE
        disp = self.disp & 0xFFFFFFFF
        if disp >= 0x80000000:
            disp -= 1 << 32  # iced wants the signed displacement for 32-bit addressing
        return MemoryOperand(base, index, self.scale, disp, 4 if (disp or not self.base) else 0)

    def __str__(self) -> str:
        parts = [p for p in (self.base, f"{self.index}*{self.scale}" if self.index else None) if p]
        return "[" + "+".join([*parts, f"{self.disp:#x}"]) + "]"


@dataclass(frozen=True)
class Imm:
    value: int

    def __str__(self) -> str:
        return f"{self.value:#x}"


@dataclass(frozen=True)
class Label:
    """A forward branch target: the index of an instruction of the sequence (len = the end)."""

    target: int

    def __str__(self) -> str:
        return f"<{self.target}>"


# typing.Union, not X | Y: this line runs at import, and Python 3.9 (PyPy 7.3.11) has no | on classes
Operand = Union[Reg, Mem, Imm, Label]  # noqa: UP007

_STRING_CREATORS = {
    Mnemonic.MOVSB: "create_movsb", Mnemonic.MOVSW: "create_movsw", Mnemonic.MOVSD: "create_movsd",
    Mnemonic.CMPSB: "create_cmpsb", Mnemonic.CMPSW: "create_cmpsw", Mnemonic.CMPSD: "create_cmpsd",
    Mnemonic.STOSB: "create_stosb", Mnemonic.STOSW: "create_stosw", Mnemonic.STOSD: "create_stosd",
    Mnemonic.LODSB: "create_lodsb", Mnemonic.LODSW: "create_lodsw", Mnemonic.LODSD: "create_lodsd",
    Mnemonic.SCASB: "create_scasb", Mnemonic.SCASW: "create_scasw", Mnemonic.SCASD: "create_scasd",
}
_NO_SEGMENT = {Mnemonic.STOSB, Mnemonic.STOSW, Mnemonic.STOSD, Mnemonic.SCASB, Mnemonic.SCASW, Mnemonic.SCASD}
_REP = {"": RepPrefixKind.NONE, "rep": RepPrefixKind.REPE, "repe": RepPrefixKind.REPE,
        "repne": RepPrefixKind.REPNE}

LABEL_BASE = 0x7000_0000  # fake IPs identifying instructions for the BlockEncoder
LABEL_STRIDE = 0x100


def code_named(name: str) -> int:
    return getattr(Code, name)


def is_branch(code_name: str) -> bool:
    return "_REL8_" in code_name or "_REL32_" in code_name or "_REL16_" in code_name


def code_for(code_name: str, bitness: int) -> int:
    """The iced Code for ``bitness``: near branches have distinct 64-bit-mode codes."""
    if bitness == 64 and is_branch(code_name):
        return code_named(code_name.replace("_32", "_64"))
    return code_named(code_name)


@dataclass(frozen=True)
class Insn:
    """One instruction: an iced Code name (32-bit form) and its explicit operands."""

    code: str
    ops: tuple[Operand, ...] = ()
    rep: str = ""

    @property
    def mnemonic(self) -> int:
        return OpCodeInfo(code_named(self.code)).mnemonic

    def build(self, bitness: int, labels: dict[int, int]) -> Instruction:
        """The iced Instruction for ``bitness`` (32 or 64); ``labels`` maps Label targets to fake IPs."""
        code = code_for(self.code, bitness)
        mn = OpCodeInfo(code).mnemonic
        if mn in _STRING_CREATORS:
            create = getattr(Instruction, _STRING_CREATORS[mn])
            if mn in _NO_SEGMENT:
                return create(32, _REP[self.rep])
            return create(32, Register.NONE, _REP[self.rep])
        if mn == Mnemonic.JMP and self.code == "JMP_PTR1632":  # jmp far selector:offset
            return Instruction.create_far_branch(code, self.ops[0].value, self.ops[1].value)
        if mn == Mnemonic.XLATB:  # [EBX + AL]; 0x67 in 64-bit mode
            return Instruction.create_mem(code, MemoryOperand(Register.EBX, Register.AL))
        ops = self.ops
        if ops and isinstance(ops[0], Label):
            return Instruction.create_branch(code, labels[ops[0].target])
        return _create(code, ops)

    def __str__(self) -> str:
        name = self.code.split("_")[0].lower()
        prefix = f"{self.rep} " if self.rep else ""
        return prefix + name + (" " + ", ".join(str(o) for o in self.ops) if self.ops else "")


def _create(code: int, ops: tuple[Operand, ...]) -> Instruction:
    """Instruction.create_* by operand pattern (registers, one memory operand, immediates)."""
    kinds = "".join("r" if isinstance(o, Reg) else "m" if isinstance(o, Mem) else "i" for o in ops)
    a = [REG_NAMES[o.name] if isinstance(o, Reg) else o.iced() if isinstance(o, Mem) else o.value
         for o in ops]
    creators = {
        "": Instruction.create, "r": Instruction.create_reg, "m": Instruction.create_mem,
        "i": Instruction.create_u32, "rr": Instruction.create_reg_reg, "rm": Instruction.create_reg_mem,
        "mr": Instruction.create_mem_reg, "ri": Instruction.create_reg_u32, "mi": Instruction.create_mem_u32,
        "rri": Instruction.create_reg_reg_u32, "rmi": Instruction.create_reg_mem_u32,
        "mri": Instruction.create_mem_reg_u32, "rrr": Instruction.create_reg_reg_reg,
        "mrr": Instruction.create_mem_reg_reg, "ir": Instruction.create_u32_reg,
        "ii": Instruction.create_u32_u32,
    }
    if kinds.endswith("i"):
        a[-1] = a[-1] & 0xFFFFFFFF
        info = OpCodeInfo(code)
        # sign-extended imm8 forms take the value as a signed number
        kind_name = _OPKIND_NAMES.get(info.op_kind(len(ops) - 1), "")
        if kind_name.startswith("IMM8SEX"):
            v = a[-1] & 0xFF
            a[-1] = v - 0x100 if v & 0x80 else v
            creators = {**creators, "ri": Instruction.create_reg_i32, "mi": Instruction.create_mem_i32,
                        "rri": Instruction.create_reg_reg_i32, "rmi": Instruction.create_reg_mem_i32,
                        "i": Instruction.create_i32}
    return creators[kinds](code, *a)


def _opkind_names() -> dict[int, str]:
    from iced_x86 import OpCodeOperandKind

    return {v: k for k, v in vars(OpCodeOperandKind).items() if isinstance(v, int)}


_OPKIND_NAMES = _opkind_names()

#: the two instructions that end every sequence
END = (Insn("MOV_RM32_R32", (Mem(L.EXIT_PAGE), Reg("eax"))), Insn("JMP_REL8_32", (Label(-1),)))


@dataclass(frozen=True)
class State:
    """The initial architectural state of a test (the rest is fixed by layout.py)."""

    regs: tuple[int, ...]  # EAX ECX EDX EBX ESP EBP ESI EDI
    flags: int = 0  # initial CF PF AF ZF SF OF DF (masked with STATUS | DF)
    seed: int = 0  # fills DATA and STACK deterministically

    def eflags(self) -> int:
        """IF = 1, IOPL = 0 (what user code always runs with; see kvm_target.py), bit 1 set."""
        return (self.flags & (STATUS | DF)) | IF | RESERVED1

    def pages(self) -> dict[int, bytes]:
        rng = random.Random(self.seed)
        return {page: rng.randbytes(L.PAGE) for page in L.COMPARED}


@dataclass(frozen=True)
class Encoded:
    code: bytes
    offsets: tuple[int, ...]  # start of instruction i (the end marker is len(insns))


@dataclass(frozen=True)
class Program:
    insns: tuple[Insn, ...]
    state: State
    name: str = ""
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def encode(self, bitness: int, end: tuple[Insn, ...] = ()) -> Encoded:
        """Machine code at layout.CODE for ``bitness``, ending with ``end`` (default :data:`END`);
        raises ValueError if it cannot be encoded."""
        end = end or END
        key = (bitness, end)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = encode(self.insns, bitness, end)
        return hit

    def listing(self) -> str:
        """The 32-bit code as NASM text, one instruction per line, numbered."""
        enc = self.encode(32)
        fmt = Formatter(FormatterSyntax.NASM)
        lines = []
        for i, ins in enumerate(Decoder(32, enc.code, ip=L.CODE)):
            if i >= len(self.insns):
                break
            lines.append(f"  {i:2d}: {fmt.format(ins)}")
        return "\n".join(lines)

    def describe(self) -> str:
        regs = " ".join(f"{n}={v:#010x}" for n, v in zip(GPR32, self.state.regs))
        return (f"{self.name or 'program'}:\n{self.listing()}\n  initial: {regs} "
                f"flags={self.state.flags:#06x} seed={self.state.seed}")


def encode(insns: tuple[Insn, ...], bitness: int, end: tuple[Insn, ...] = END) -> Encoded:
    """Lay out ``insns`` + ``end`` at layout.CODE.  Branch targets are Label indices (the end =
    len(insns)); Label(-1) is the last instruction of ``end`` (END's `jmp $`)."""
    n = len(insns)
    total = n + len(end)
    labels = {i: LABEL_BASE + i * LABEL_STRIDE for i in range(total)}
    labels[-1] = labels[total - 1]
    built = []
    for i, insn in enumerate((*insns, *end)):
        ins = insn.build(bitness, labels)
        ins.ip = labels[i]
        built.append(ins)
    enc = BlockEncoder(bitness)
    enc.add_many(built)
    code = enc.encode(L.CODE)
    offsets = [ins.ip - L.CODE for ins in Decoder(bitness, code, ip=L.CODE)]
    if len(offsets) != total:
        raise ValueError(f"{bitness}-bit encoding has {len(offsets)} instructions, expected {total} "
                         "(a branch was expanded)")
    return Encoded(code, tuple(offsets))
