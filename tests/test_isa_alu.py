"""Arithmetic edge cases (SDM Vol.2 ADD ADC SUB SBB CMP INC DEC NEG MUL IMUL DIV IDIV): carry and
overflow boundaries, and #DE delivered to the guest's handler with the faulting instruction's EIP.
Values are worked out by hand; "undefined:" marks a documented choice (measured on an Intel Xeon)."""

from __future__ import annotations

import pytest
from isa_support import AF, CATCH, CATCH16, CF, OF, PF, SF, STATUS, ZF, batch, run

CASES = [
    ("mov eax, 0x7FFFFFFF\n add eax, 1", 0, 0x80000000, STATUS, OF | SF | AF | PF),
    ("mov eax, 0xFFFFFFFF\n add eax, 1", 0, 0, STATUS, CF | ZF | AF | PF),
    ("mov eax, 0xFFFFFFFF\n adc eax, 0", CF, 0, STATUS, CF | ZF | AF | PF),
    ("mov eax, 0\n adc al, 0x7F", CF, 0x80, STATUS, OF | SF | AF),
    ("mov eax, 0x80000000\n sub eax, 1", 0, 0x7FFFFFFF, STATUS, OF | AF | PF),
    ("mov eax, 0\n sbb eax, 0", CF, 0xFFFFFFFF, STATUS, CF | SF | AF | PF),
    ("mov eax, 0xFFFF\n sbb ax, 0xFFFF", CF, 0xFFFF, STATUS, CF | SF | AF | PF),
    ("mov eax, 0x7F\n cmp al, 0x80", 0, 0x7F, STATUS, CF | OF | SF | PF),
    ("mov eax, 0x7FFFFFFF\n inc eax", CF, 0x80000000, STATUS, CF | OF | SF | AF | PF),
    ("mov eax, 0x8000\n dec ax", 0, 0x7FFF, STATUS, OF | AF | PF),
    ("mov eax, 0x80000000\n neg eax", 0, 0x80000000, STATUS, CF | OF | SF | PF),
    ("mov eax, 0\n neg eax", CF, 0, STATUS, ZF | PF),
    # MUL/IMUL: CF = OF = "upper half significant"; undefined: SF PF from the low half, ZF = AF = 0
    ("mov eax, 0x80000000\n mov ebx, 2\n mul ebx", 0, 0, STATUS, CF | OF | PF),
    ("mov eax, 0x10\n mov ebx, 0x10\n mul bl", ZF, 0x100, STATUS, CF | OF | PF),
    ("mov ebx, 0x80000000\n imul eax, ebx, -1", 0, 0x80000000, STATUS, CF | OF | SF | PF),
    ("mov eax, -2\n mov ecx, 3\n imul ecx", 0, (-6) & 0xFFFFFFFF, STATUS, SF | PF),
    ("mov eax, 3\n mov ecx, 0\n mul ecx", 0, 0, ZF, 0),
]


def test_alu_edges(engine: str) -> None:
    got = batch([(asm, flags) for asm, flags, *_ in CASES], engine)
    for (asm, _, eax, mask, want), (g_eax, g_flags, _, _) in zip(CASES, got):
        assert (hex(g_eax), hex(g_flags & mask)) == (hex(eax), hex(want)), asm


def test_division_results(engine: str) -> None:
    got = batch([
        ("mov edx, 1\n mov eax, 0\n mov ebx, 2\n div ebx", 0),            # 2^32 / 2
        ("mov eax, -7\n cdq\n mov ebx, 2\n idiv ebx", 0),                  # -7 / 2 = -3 rem -1
        ("mov eax, 7\n cdq\n mov ebx, -2\n idiv ebx", 0),                  # 7 / -2 = -3 rem 1
        ("mov eax, 0xFF81\n mov ebx, 0xFF\n idiv bl", 0),                  # -127 / -1 = 127
        ("mov eax, 0xFFFF\n mov edx, 0xFFFE\n mov ebx, 0xFFFF\n div bx", 0),  # FFFEFFFF / FFFF
    ], engine)
    assert (got[0][0], got[0][2]) == (0x80000000, 0)
    assert (got[1][0], got[1][2]) == ((-3) & 0xFFFFFFFF, 0xFFFFFFFF)
    assert (got[2][0], got[2][2]) == ((-3) & 0xFFFFFFFF, 1)
    assert got[3][0] & 0xFFFF == 0x007F
    assert (got[4][0] & 0xFFFF, got[4][2] & 0xFFFF) == (0xFFFF, 0xFFFE)


@pytest.mark.parametrize("setup, instr", [
    ("mov eax, 5\n xor edx, edx\n xor ebx, ebx", "div ebx"),                       # divide by zero
    ("mov eax, 0x80000000\n mov edx, 0xFFFFFFFF\n mov ebx, -1", "idiv ebx"),      # -2^31 / -1
    ("mov eax, 0x0200\n mov ebx, 2", "div bl"),                                   # quotient 0x100 > FF
    ("mov eax, 0xFF80\n mov ebx, 0xFF", "idiv bl"),                               # -128 / -1 = 128
    ("mov eax, 0\n mov edx, 0x8000\n mov ebx, 0x8000", "div bx"),                 # quotient 0x10000
])
def test_divide_error_reaches_the_handler(engine: str, setup: str, instr: str) -> None:
    r = run(CATCH + f"""
        {setup}
        mov dword [0x8100], bad
        mov esi, eax
        mov edi, edx
    bad:
        {instr}
    """, engine)
    assert r.fault == (0, r.dword(0x8100))  # #DE is a fault: EIP of the DIV/IDIV itself
    assert (r.eax, r.edx) == (r.esi, r.edi)  # nothing written


def test_divide_error_real_mode_ivt(engine: str) -> None:
    r = run(CATCH16 + """
        mov ax, 100
        xor dx, dx
        xor cx, cx
        mov word [0x8100], bad
    bad:
        div cx
    """, engine, "real")
    assert r.fault == (0, r.word(0x8100))
    assert r.eax & 0xFFFF == 100
