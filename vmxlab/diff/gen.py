"""Random programs over the integer instruction set, for the differential harness.

The catalogue of instruction forms is derived from iced-x86's opcode tables
(``OpCodeInfo``), not written by hand: every legacy-encoded form valid in 32-bit
mode at CPL 3 whose operands are general registers, one memory operand,
immediates or a short forward branch -- *and whose mnemonic the software CPU
implements* (``vmxlab.cpu.ops.FACTORIES``, read when the catalogue is built), so
coverage grows as instruction families land.  A second filter keeps the forms
the KVM target can run as 64-bit code with the same meaning (see
kvm_target.py): valid in 64-bit mode and not using the stack.

The generator draws through a :class:`Chooser`, so the same code serves
hypothesis (``data.draw``; shrinking works) and plain ``random.Random``.
Values are biased toward the boundaries where flags change: 0, 1, the sign
bit, all ones, and shift counts 0/1/7/8/15/16/31/32.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from iced_x86 import Code, EncodingKind, Mnemonic, OpCodeInfo, OpCodeOperandKind

from . import layout as L
from .program import Imm, Insn, Label, Mem, Operand, Program, Reg, State

T = TypeVar("T")

_K = {v: k for k, v in vars(OpCodeOperandKind).items() if isinstance(v, int)}
_MN = {v: k for k, v in vars(Mnemonic).items() if isinstance(v, int)}
_CODES = {v: k for k, v in vars(Code).items() if isinstance(v, int)}

REGS = {
    1: ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"),
    2: ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di"),
    4: ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"),
}
_SIZE_OF_KIND = {"R8": 1, "R16": 2, "R32": 4}
_FIXED = {"AL": "al", "AX": "ax", "EAX": "eax", "CL": "cl", "DX": "dx"}
_IMM_BITS = {"IMM8": 8, "IMM16": 16, "IMM32": 32, "IMM8SEX16": 8, "IMM8SEX32": 8, "IMM8_CONST_1": 0}
_SUPPORTED_KINDS = {
    "R8_OR_MEM", "R16_OR_MEM", "R32_OR_MEM", "R8_REG", "R16_REG", "R32_REG", "R8_OPCODE", "R16_OPCODE",
    "R32_OPCODE", "MEM", "BR32_1", *_FIXED, *_IMM_BITS,
}
_STRING_KINDS = {"SEG_RSI", "ES_RDI", "SEG_RDI", "SEG_RBX_AL"}

#: mnemonics never generated, and why
EXCLUDED: dict[str, str] = {
    **dict.fromkeys(("CPUID", "RDTSC", "RDTSCP", "RDPMC", "RDRAND", "RDSEED", "RDPID", "XGETBV"),
                    "the value comes from the host, not from the instruction's semantics"),
    **dict.fromkeys(("SGDT", "SIDT", "SLDT", "STR", "SMSW"),
                    "UMIP on the host makes these fault natively, and their values are the host's"),
    **dict.fromkeys(("INT", "INT1", "INT3", "INTO"),
                    "PVM delivers software interrupts from CPL 3 itself (INT3 through a DPL-0 gate as #BP, "
                    "INT 0x80 as #UD) instead of #GP(vector*8+2)"),
    **dict.fromkeys(("SYSENTER", "SYSEXIT", "SYSCALL", "SYSRET", "IRET", "IRETD", "RETF", "LAR", "LSL",
                     "VERR", "VERW", "LLDT", "LTR", "LDS", "LES", "LFS", "LGS", "LSS", "ARPL"),
                    "system / segment instructions: compared by the protection tests, not here"),
    **dict.fromkeys(("VMCALL", "VMCLEAR", "VMLAUNCH", "VMPTRLD", "VMPTRST", "VMREAD", "VMRESUME", "VMWRITE",
                     "VMXOFF", "VMXON", "INVEPT", "INVVPID"), "VMX: the host CPU has none to compare with"),
    "FNOP": "x87",
}

#: iced codes never generated, and why
EXCLUDED_CODES: dict[str, str] = {
    "BSWAP_R16": "the result is undefined (SDM Vol.2 BSWAP)",
    "UD0_R16_RM16": "Intel and AMD decode UD0 differently (ModRM or not)",
    "UD0_R32_RM32": "Intel and AMD decode UD0 differently (ModRM or not)",
    "UD0": "Intel and AMD decode UD0 differently (ModRM or not)",
}


@dataclass(frozen=True)
class Template:
    """One instruction form: its iced code name and operand kinds."""

    code: str
    mnemonic: str
    kinds: tuple[str, ...]
    kvm64: bool  # the 64-bit KVM target can run it with the same meaning
    string: bool = False

    def __str__(self) -> str:
        return self.code


def _is_kvm64(info: OpCodeInfo, name: str) -> bool:
    """Valid in 64-bit mode with the same operation (SDM Vol.2 Appendix A.2.5: "i64"/"o64" forms)."""
    if info.is_stack_instruction:
        return False  # 64-bit stack width
    if "_REL8_" in name:
        return hasattr(Code, name.replace("_32", "_64"))
    return bool(info.mode64)


@functools.lru_cache(maxsize=4)
def catalogue(implemented: frozenset[int] | None = None) -> tuple[Template, ...]:
    """Every generatable form whose mnemonic is in ``implemented`` (default: the software CPU's)."""
    if implemented is None:
        from ..cpu.ops import FACTORIES, load_all

        load_all()
        implemented = frozenset(FACTORIES)
    out = []
    for code in range(len(_CODES)):
        info = OpCodeInfo(code)
        if info.encoding != EncodingKind.LEGACY or not info.is_instruction or not info.mode32:
            continue
        if info.decoder_option:  # forms a decoder only accepts with an option (CMPXCHG486, UMOV, ...)
            continue
        mn = info.mnemonic
        if mn not in implemented:
            continue
        mname = _MN[mn]
        name = _CODES[code]
        if mname in EXCLUDED or name in EXCLUDED_CODES:
            continue
        kinds = tuple(_K[info.op_kind(i)] for i in range(info.op_count))
        if "_REL8_" in name and not name.endswith(("_32", "_32_ECX")):
            continue  # 16-bit operand-size and CX forms of branches: IP wraps at 64 KiB
        if "_REL16_" in name or "_REL32_" in name:
            continue
        string = bool(kinds) and all(k in _STRING_KINDS or k in _FIXED for k in kinds) and \
            any(k in _STRING_KINDS for k in kinds)
        if not string and not all(k in _SUPPORTED_KINDS for k in kinds):
            continue
        if mname == "JMP" and "_REL8_" not in name:
            continue  # indirect and far jumps: the target would be random
        if info.is_stack_instruction and mname not in ("PUSH", "POP", "PUSHF", "PUSHFD", "POPF", "POPFD"):
            continue  # calls, returns, enter/leave, pusha/popa: not as random single instructions
        if mname in ("POPF", "POPFD"):
            continue  # could set TF (a #DB trap per instruction) or AC: hand-written cases only
        out.append(Template(name, mname, kinds, _is_kvm64(info, name), string))
    return tuple(out)


# -- drawing ---------------------------------------------------------------------------------------


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, items: Sequence[T]) -> T: ...


class RandomChooser:
    """Draw with ``random.Random`` (fast; no shrinking)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, items: Sequence[T]) -> T:
        return items[self.rng.randrange(len(items))]


class HypothesisChooser:
    """Draw through hypothesis's ``data.draw`` so failing programs shrink."""

    def __init__(self, data) -> None:  # hypothesis.strategies.DataObject
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, items: Sequence[T]) -> T:
        return items[self.data.draw(self.st.integers(0, len(items) - 1))]


_BOUNDARY32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0x80000001, 0xFFFFFFFE, 0xFFFFFFFF)
_COUNTS = (0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 255)


def value(c: Chooser, bits: int = 32) -> int:
    """An operand value: a boundary, a small number, or anything, in about equal parts."""
    mask = (1 << bits) - 1
    kind = c.integer(0, 3)
    if kind == 0:
        return c.choice(_BOUNDARY32) & mask
    if kind == 1:
        v = c.integer(0, 16)
        return (-v & mask) if c.integer(0, 1) else v
    if kind == 2:
        return c.choice(_COUNTS) & mask
    return c.integer(0, mask)


def mem_operand(c: Chooser, size: int, write: bool) -> Mem:
    """Mostly the start of the DATA page (so accesses alias); sometimes a faulting page or a
    register-based address (which checks the address arithmetic, usually with a #PF)."""
    k = c.integer(0, 15)
    if k <= 11:
        return Mem(L.DATA + c.integer(0, 0x40))
    if k == 12:
        page = c.choice((L.NP_PAGE, L.RO_PAGE, L.SUPERVISOR_PAGE))  # CODE differs per target
        return Mem(page + c.integer(0, 0x20))
    if k == 13:
        return Mem(L.DATA + L.PAGE - c.integer(1, size + 1))  # may cross into STACK
    base = c.choice(REGS[4])
    if c.integer(0, 1):
        return Mem(c.integer(0, 0xFFFFFFFF), base)
    index = c.choice(tuple(r for r in REGS[4] if r != "esp"))
    return Mem(c.integer(0, 0xFFFF), base, index, c.choice((1, 2, 4, 8)))


def instruction(c: Chooser, t: Template, index: int, length: int) -> list[Insn]:
    """One instance of ``t`` (string forms come with the register set-up they need)."""
    if t.string:
        return _string(c, t)
    ops: list[Operand] = []
    write_first = t.mnemonic not in ("CMP", "TEST", "BT", "PUSH")
    for i, kind in enumerate(t.kinds):
        head = kind.split("_")[0]
        if kind in _FIXED:
            ops.append(Reg(_FIXED[kind]))
        elif kind.endswith("_OR_MEM"):
            size = _SIZE_OF_KIND[head]
            if c.integer(0, 2) == 0:
                ops.append(mem_operand(c, size, write=(i == 0 and write_first)))
            else:
                ops.append(Reg(c.choice(REGS[size])))
        elif kind.endswith(("_REG", "_OPCODE")):
            ops.append(Reg(c.choice(REGS[_SIZE_OF_KIND[head]])))
        elif kind == "MEM":
            size = 8 if t.mnemonic == "CMPXCHG8B" else 4
            ops.append(mem_operand(c, size, write=True))
        elif kind == "IMM8_CONST_1":
            ops.append(Imm(1))
        elif kind in _IMM_BITS:
            ops.append(Imm(value(c, _IMM_BITS[kind])))
        elif kind == "BR32_1":
            ops.append(Label(c.integer(index + 1, min(length, index + 4))))
    return [Insn(t.code, tuple(ops))]


def _string(c: Chooser, t: Template) -> list[Insn]:
    """``mov esi/edi/ecx`` into the DATA page with a small count, then the (rep) string instruction."""
    rep = ""
    if t.mnemonic.startswith(("CMPS", "SCAS")):
        rep = c.choice(("", "repe", "repne"))
    elif t.mnemonic != "XLATB":
        rep = c.choice(("", "rep"))
    setup = [
        Insn("MOV_R32_IMM32", (Reg("esi"), Imm(L.DATA + 0x80 + c.integer(0, 0x60)))),
        Insn("MOV_R32_IMM32", (Reg("edi"), Imm(L.DATA + 0x80 + c.integer(0, 0x60)))),
        Insn("MOV_R32_IMM32", (Reg("ecx"), Imm(c.integer(0, 12)))),
    ]
    if t.mnemonic == "XLATB":
        return [Insn("MOV_R32_IMM32", (Reg("ebx"), Imm(L.DATA + c.integer(0, 0x100)))), Insn(t.code)]
    return [*setup, Insn(t.code, (), rep)]


def state(c: Chooser) -> State:
    regs = tuple(value(c) for _ in range(8))
    regs = regs[:4] + (L.STACK_ESP + 4 * c.integer(-16, 16),) + regs[5:]
    return State(regs, c.integer(0, 0x8D5 | 0x400) & (0x8D5 | 0x400), c.integer(0, 1 << 20))


def program(c: Chooser, templates: Sequence[Template], max_len: int = 6, name: str = "") -> Program:
    """A random program of 1..max_len instruction forms from ``templates``, with a random state."""
    n = c.integer(1, max_len)
    insns: list[Insn] = []
    chosen = [c.choice(templates) for _ in range(n)]
    # branch targets are instruction indices after expansion of string set-ups: expand first
    for i, t in enumerate(chosen):
        if t.kinds == ("BR32_1",):
            insns.append(Insn(t.code, (Label(-2),)))  # placeholder, fixed below
        else:
            insns.extend(instruction(c, t, i, n))
    total = len(insns)
    fixed = []
    for i, insn in enumerate(insns):
        if insn.ops == (Label(-2),):
            insn = Insn(insn.code, (Label(c.integer(i + 1, min(total, i + 4))),))
        fixed.append(insn)
    return Program(tuple(fixed), state(c), name)


def kvm_templates(templates: Sequence[Template] | None = None) -> tuple[Template, ...]:
    return tuple(t for t in (templates or catalogue()) if t.kvm64)
