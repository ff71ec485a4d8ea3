"""Decimal adjustments (SDM Vol.2 DAA, DAS, AAA, AAS, AAM, AAD), worked out by hand from the SDM's
Operation sections.  "undefined:" marks vmxlab's documented choice (measured on an Intel Xeon)."""

from __future__ import annotations

from isa_support import AF, CATCH, CATCH16, CF, OF, PF, SF, STATUS, ZF, batch, run

CASES = [
    # DAA: 15 + 27 = 42
    ("mov eax, 0x15\n add al, 0x27\n daa", 0, 0x42, STATUS, AF | PF),
    # DAA: 99 + 01 = 100 -> AL 00, CF 1
    ("mov eax, 0x99\n add al, 0x01\n daa", 0, 0x00, STATUS, CF | AF | ZF | PF),
    # DAA: 88 + 88 = 176 -> AL 76, CF 1 (both adjustments)
    ("mov eax, 0x88\n add al, 0x88\n daa", 0, 0x76, STATUS, CF | AF),
    # DAS: 42 - 27 = 15
    ("mov eax, 0x42\n sub al, 0x27\n das", 0, 0x15, STATUS, AF),
    # DAS: 10 - 20 = -10 -> 90 with a borrow
    ("mov eax, 0x10\n sub al, 0x20\n das", 0, 0x90, STATUS, CF | SF | PF),
    # DAS with AF set and AL < 6: the low adjustment borrows (CF := old CF OR borrow)
    ("mov eax, 0x03\n das", AF, 0xFD, STATUS, CF | AF | SF),
    # AAA: 9 + 8 = 17 -> AX 0107; undefined: SF ZF PF from AL, OF = 0
    ("mov eax, 0x0009\n add al, 0x08\n aaa", 0, 0x0107, STATUS, AF | CF),
    # AAA: AX := AX + 106H carries out of AL into AH
    ("mov eax, 0x00FA\n aaa", 0, 0x0200, STATUS, AF | CF | ZF | PF),
    ("mov eax, 0x0105\n aaa", CF, 0x0105, STATUS, PF),  # AF = 0, digit <= 9: no adjustment
    # AAS: 25 - 8 = 17 -> AX 0107
    ("mov eax, 0x0205\n sub al, 0x08\n aas", 0, 0x0107, STATUS, AF | CF),
    ("mov eax, 0x0203\n aas", AF, 0x000D, STATUS, AF | CF),
    ("mov eax, 0x0209\n aas", CF, 0x0209, STATUS, PF),
    # AAM: AH := AL / imm8, AL := AL MOD imm8; undefined: OF AF CF = 0
    ("mov eax, 0x3F\n aam", CF | OF | AF, 0x0603, STATUS, PF),
    ("mov eax, 0xAB\n aam 16", 0, 0x0A0B, STATUS, 0),
    ("mov eax, 0x1200\n aam", 0, 0x0000, STATUS, ZF | PF),
    # AAD: AL := AL + AH * imm8, AH := 0; undefined: OF AF CF as for the 8-bit ADD AL + AH*imm8
    ("mov eax, 0x0607\n aad", 0, 0x0043, STATUS, AF),
    ("mov eax, 0x0A00\n aad 25", 0, 0x00FA, STATUS, SF | PF),
    ("mov eax, 0x1480\n aad", 0, 0x0048, STATUS, CF | OF | PF),
]


def test_bcd_cases(engine: str) -> None:
    got = batch([(asm, flags) for asm, flags, *_ in CASES], engine)
    for (asm, _, eax, mask, want), (g_eax, g_flags, _, _) in zip(CASES, got):
        assert (hex(g_eax), hex(g_flags & mask)) == (hex(eax), hex(want)), asm


def test_bcd_real_mode(engine: str) -> None:
    got = batch([("mov ax, 0x0077\n add al, 0x66\n daa", 0), ("mov ax, 0x0905\n aad", 0)], engine, "real")
    assert got[0][0] & 0xFFFF == 0x0043 and got[0][1] & CF  # 77 + 66 = 143
    assert got[1][0] & 0xFFFF == 0x005F  # 9 * 10 + 5 = 95


def test_aam_zero_is_divide_error(engine: str) -> None:
    r = run(CATCH + """
        mov eax, 0x1234
        mov dword [0x8100], bad
    bad:
        aam 0
    """, engine)
    assert r.fault == (0, r.dword(0x8100))
    assert r.eax == 0x1234


def test_aam_zero_real_mode(engine: str) -> None:
    r = run(CATCH16 + """
        mov ax, 0x1234
        mov word [0x8100], bad
    bad:
        aam 0
    """, engine, "real")
    assert r.fault == (0, r.word(0x8100))
    assert r.eax & 0xFFFF == 0x1234
