"""Hand-written edge cases for the differential harness: the boundaries where flags and faults change.

Carry and overflow boundaries of ADD/ADC/SUB/SBB/INC/DEC/NEG/CMP at 8, 16 and 32
bits; shifts and rotates by 0, 1, the operand width - 1, the width, 31 and 32
(counts are masked to 5 bits, SDM Vol.2 SAL/SAR/SHL/SHR "IA-32 Architecture
Compatibility"); MUL/IMUL overflow; DIV/IDIV edges (divide by zero, quotient
overflow, INT_MIN / -1, signs of remainders); BSF/BSR of 0; BCD adjustment across
the AF/CF boundaries; and one fault of each kind the harness compares (#DE, #GP,
#UD, #PF).

Cases are written as assembly text (``"add eax, ebx"``) and matched against the
iced opcode table by :func:`insn`, so a reader sees the instruction, not a code
name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from iced_x86 import Mnemonic

from . import layout as L
from .gen import REGS, Template, catalogue
from .program import Imm, Insn, Label, Mem, Operand, Program, Reg, State

_ALL_MNEMONICS = frozenset(v for v in vars(Mnemonic).values() if isinstance(v, int))
_SIZE_WORDS = {"byte": 1, "word": 2, "dword": 4, "qword": 8}
_REG_SIZE = {r: size for size, names in REGS.items() for r in names}


@functools.lru_cache(maxsize=1)
def _by_mnemonic() -> dict[str, list[Template]]:
    out: dict[str, list[Template]] = {}
    for t in catalogue(_ALL_MNEMONICS):
        out.setdefault(t.mnemonic, []).append(t)
    return out


def _parse_operand(text: str) -> tuple[Operand, int | None]:
    """An operand and its size in bytes if it has one (registers, ``dword [0x101000]``)."""
    text = text.strip().lower()
    m = re.fullmatch(r"(?:(byte|word|dword|qword)\s+)?\[(.+)\]", text)
    if m:
        size = _SIZE_WORDS[m.group(1)] if m.group(1) else None
        return _parse_address(m.group(2)), size
    if text in _REG_SIZE:
        return Reg(text), _REG_SIZE[text]
    if text.startswith("<") and text.endswith(">"):
        return Label(int(text[1:-1])), None
    return Imm(int(text, 0)), None


def _parse_address(text: str) -> Mem:
    """``0x101000``, ``ebx``, ``ebx+0x10``, ``ebx+esi*4+0x10`` (32-bit registers only)."""
    base = index = None
    scale, disp = 1, 0
    for term in text.replace(" ", "").split("+"):
        if "*" in term:
            index, s = term.split("*")
            scale = int(s)
        elif term in REGS[4]:
            if base is None:
                base = term
            else:
                index = term
        else:
            disp += int(term, 0)
    return Mem(disp, base, index, scale)


def _fits(kind: str, op: Operand, size: int | None, imm_ok_bits: int = 32) -> bool:
    head = kind.split("_")[0]
    want = {"R8": 1, "R16": 2, "R32": 4}.get(head)
    if kind in ("AL", "AX", "EAX", "CL", "DX"):
        return isinstance(op, Reg) and op.name == kind.lower()
    if kind.endswith("_OR_MEM"):
        return isinstance(op, (Reg, Mem)) and size == want
    if kind.endswith(("_REG", "_OPCODE")):
        return isinstance(op, Reg) and size == want
    if kind == "MEM":
        return isinstance(op, Mem)
    if kind == "IMM8_CONST_1":
        return isinstance(op, Imm) and op.value == 1
    if kind.startswith("IMM8SEX"):
        return isinstance(op, Imm) and (op.value < 0x80 or op.value >= (1 << imm_ok_bits) - 0x80)
    if kind == "IMM8":
        return isinstance(op, Imm) and op.value <= 0xFF
    if kind == "IMM16":
        return isinstance(op, Imm) and op.value <= 0xFFFF
    if kind == "IMM32":
        return isinstance(op, Imm)
    if kind == "BR32_1":
        return isinstance(op, Label)
    return False


def insn(text: str) -> Insn:
    """Assemble one line (Intel syntax, absolute memory operands) into an :class:`Insn`."""
    text = text.strip()
    rep = ""
    for prefix in ("repne ", "repe ", "rep "):
        if text.startswith(prefix):
            rep, text = prefix.strip(), text[len(prefix):]
    mn, _, rest = text.partition(" ")
    parsed = [_parse_operand(o) for o in rest.split(",")] if rest.strip() else []
    ops = [o for o, _ in parsed]
    sizes = [s for _, s in parsed]
    known = next((s for s in sizes if s), None)
    sizes = [s if s or not isinstance(o, Mem) else known for o, s in parsed]
    # forms the KVM target can run first (INC_RM32 before the 32-bit-only INC_R32 short form)
    for t in sorted(_by_mnemonic().get(mn.upper(), []), key=lambda t: not t.kvm64):
        if t.string:
            if not ops:
                return Insn(t.code, (), rep)
            continue
        imm_bits = 8 * (known or 4)
        if len(t.kinds) == len(ops) and all(_fits(k, o, s, imm_bits) for k, o, s in zip(t.kinds, ops, sizes)):
            return Insn(t.code, tuple(ops), rep)
    raise ValueError(f"cannot assemble {text!r}")


def prog(name: str, lines: str, regs: dict[str, int] | None = None, flags: int = 0, seed: int = 0) -> Program:
    """A program from ``;``-separated lines and initial registers (the rest 0, ESP = STACK_ESP)."""
    r = dict.fromkeys(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"), 0)
    r["esp"] = L.STACK_ESP
    r.update(regs or {})
    insns = tuple(insn(line) for line in lines.split(";") if line.strip())
    return Program(insns, State(tuple(r.values()), flags, seed), name)


CF, PF, AF, ZF, SF, OF, DF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800, 0x400
_ALL_STATUS = CF | PF | AF | ZF | SF | OF
_BOUNDS = {1: (0, 1, 0x7F, 0x80, 0xFF), 2: (0, 1, 0x7FFF, 0x8000, 0xFFFF),
           4: (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)}
_REGS = {1: ("al", "bl"), 2: ("ax", "bx"), 4: ("eax", "ebx")}


def carry_overflow() -> Iterator[Program]:
    """ADD ADC SUB SBB CMP XOR AND TEST INC DEC NEG NOT at the carry and overflow boundaries."""
    for size, values in _BOUNDS.items():
        a_reg, b_reg = _REGS[size]
        for op in ("add", "adc", "sub", "sbb", "cmp", "xor", "and", "test"):
            for a in values:
                for b in values:
                    for cf in ((0, 1) if op in ("adc", "sbb") else (0,)):
                        yield prog(f"{op}{size * 8} {a:#x},{b:#x} cf={cf}", f"{op} {a_reg}, {b_reg}",
                                   {"eax": a, "ebx": b}, flags=cf)
        for op in ("inc", "dec", "neg", "not"):
            for a in values:
                yield prog(f"{op}{size * 8} {a:#x}", f"{op} {a_reg}", {"eax": a}, flags=CF)
        yield prog(f"add{size * 8} to memory, carry out", f"add [{L.DATA:#x}], {b_reg}", {"ebx": values[-1]},
                   seed=size)


def shifts() -> Iterator[Program]:
    """Shifts and rotates by 0, 1, 2, width-1, width, width+1, 31, 32, 33; SHLD/SHRD likewise."""
    for size, (a_reg, b_reg) in _REGS.items():
        width = size * 8
        for op in ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr"):
            for count in sorted({0, 1, 2, width - 1, width, width + 1, 31, 32, 33}):
                for value in (0x1, _BOUNDS[size][3], _BOUNDS[size][4], 0x5A5A5A5A & ((1 << width) - 1)):
                    for fl in (0, CF | OF):
                        yield prog(f"{op}{width} {value:#x} by {count} flags={fl:#x}", f"{op} {a_reg}, cl",
                                   {"eax": value, "ecx": count}, flags=fl)
        if size > 1:
            for op in ("shld", "shrd"):
                for count in (0, 1, width - 1, width, width + 1, 31, 32):
                    regs = {"eax": _BOUNDS[size][3] | 1, "ebx": _BOUNDS[size][4] ^ 0x3C, "ecx": count}
                    yield prog(f"{op}{width} by {count}", f"{op} {a_reg}, {b_reg}, cl", regs, flags=CF)


def multiply() -> Iterator[Program]:
    """MUL and IMUL (one-, two-operand) around the overflow boundary; all status flags set on entry."""
    for a, b in ((0x7FFFFFFF, 2), (0xFFFFFFFF, 0xFFFFFFFF), (0x80000000, 0xFFFFFFFF), (0x10000, 0x10000),
                 (0xFFFF, 0xFFFF), (0, 5), (0x80, 0x2), (0xFF, 0xFF), (0x7F, 0x7F), (0x8000, 0xFFFF)):
        for form, size in (("mul ebx", 4), ("imul ebx", 4), ("imul eax, ebx", 4), ("mul bx", 2),
                           ("imul bx", 2), ("mul bl", 1), ("imul bl", 1)):
            m = (1 << (8 * size)) - 1
            yield prog(f"{form} {a & m:#x}*{b & m:#x}", form, {"eax": a & m, "ebx": b & m}, flags=_ALL_STATUS)


def divide() -> Iterator[Program]:
    """DIV and IDIV: by zero (#DE), quotient overflow (#DE), INT_MIN / -1 (#DE), signs of the remainder."""
    for edx, eax, d in ((0, 7, 0), (0, 7, 2), (1, 0, 1), (0, 0xFFFFFFFF, 0xFFFFFFFF),
                        (0xFFFFFFFF, 0x80000000, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFF9, 2), (0, 7, 0xFFFFFFFE),
                        (0x7FFFFFFF, 0xFFFFFFFF, 0x80000000), (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
                        (0, 0x80000000, 0xFFFFFFFF)):
        for op in ("div", "idiv"):
            for fl in (0, _ALL_STATUS):
                yield prog(f"{op} {edx:#x}:{eax:#x}/{d:#x} flags={fl:#x}", f"{op} ebx",
                           {"eax": eax, "edx": edx, "ebx": d}, flags=fl)
    for ax, d in ((0x8000, 0xFF), (0x7F00, 0x7F), (0xFF00, 0x2), (0x0100, 0xFF), (0xFF80, 0xFF)):
        for op in ("div", "idiv"):
            yield prog(f"{op}8 {ax:#x}/{d:#x}", f"{op} bl", {"eax": ax, "ebx": d}, flags=_ALL_STATUS)


def bits() -> Iterator[Program]:
    """BSF/BSR of 0 (destination and flags), BT/BTS/BTR/BTC at bit 0, 31 and beyond (offset mod 32)."""
    for value in (0, 1, 0x80000000, 0xFFFFFFFF):
        for op in ("bsf", "bsr"):
            yield prog(f"{op} {value:#x}", f"{op} eax, ebx", {"eax": 0x12345678, "ebx": value},
                       flags=_ALL_STATUS)
    for bit in (0, 31, 32, 63):
        for op in ("bt", "bts", "btr", "btc"):
            yield prog(f"{op} bit {bit}", f"{op} eax, ebx", {"eax": 0x80000001, "ebx": bit},
                       flags=_ALL_STATUS)


def bcd() -> Iterator[Program]:
    """DAA DAS AAA AAS around the AF/CF adjustment boundaries, AAM/AAD, AAM 0 (#DE) (SDM Vol.2)."""
    for al in (0x00, 0x09, 0x0A, 0x0F, 0x19, 0x90, 0x99, 0x9A, 0x9F, 0xA0, 0xF9, 0xFA, 0xFF):
        for fl in (0, AF, CF, AF | CF):
            for op in ("daa", "das", "aaa", "aas"):
                yield prog(f"{op} al={al:#x} flags={fl:#x}", op, {"eax": 0x1200 | al}, flags=fl | OF | SF)
    for ax in (0x0000, 0x0063, 0x00FF, 0x0909, 0x0A0A, 0xFFFF):
        yield prog(f"aam ax={ax:#x}", "aam 10", {"eax": ax}, flags=_ALL_STATUS)
        yield prog(f"aad ax={ax:#x}", "aad 10", {"eax": ax}, flags=_ALL_STATUS)
    yield prog("aam 0 (#DE)", "aam 0", {"eax": 0x55})


def faults() -> Iterator[Program]:
    """One of each fault the harness compares: #DE, #UD, #GP, #PF (not present, read-only, supervisor)."""
    yield prog("#DE div by zero", "div ecx", {"eax": 1})
    yield prog("#UD ud2", "ud2")
    yield prog("#GP hlt at CPL 3", "hlt")
    yield prog("#GP cli with IOPL 0", "cli")
    yield prog("#GP in with IOPL 0 and no I/O bitmap", "in al, dx", {"edx": 0x80})
    yield prog("#PF read not present", f"mov eax, [{L.NP_PAGE + 8:#x}]")
    yield prog("#PF write read-only", f"mov dword [{L.RO_PAGE + 8:#x}], 1")
    yield prog("#PF user read of a supervisor page", f"mov eax, [{L.SUPERVISOR_PAGE:#x}]")
    yield prog("rep stosb across a page boundary", "rep stosb",
               {"edi": L.DATA + L.PAGE - 4, "ecx": 10, "eax": 0x41})
    yield prog("#PF in the middle of rep stosd", "rep stosd", {"edi": L.RO_PAGE - 8, "ecx": 4, "eax": 0x41})


def privileged() -> Iterator[Program]:
    """Ring 3 against the protection rules: every privileged instruction the harness can express is
    #GP(0) at CPL 3 (SDM Vol.3A 5.9), and the IOPL-sensitive ones are #GP(0) with IOPL 0 and no I/O
    bitmap (SDM Vol.2 STI; Vol.1 19.5).  The ring-0 side of the same rules is in
    tests/test_conformance_protection.py."""
    for line in ("sti", "clts", "invd", "wbinvd", "rdmsr", "wrmsr", f"invlpg [{L.DATA:#x}]"):
        yield prog(f"#GP {line} at CPL 3", line, {"ecx": 0x10})
    yield prog("#GP out with IOPL 0", "out dx, al", {"edx": 0x80})


GROUPS = {"carry-overflow": carry_overflow, "shifts": shifts, "multiply": multiply, "divide": divide,
          "bits": bits, "bcd": bcd, "faults": faults, "privileged": privileged}


def edge_cases() -> Iterator[Program]:
    """Every hand-written case, group by group."""
    for group in GROUPS.values():
        yield from group()
