"""Bit instructions (SDM Vol.2 BT, BTS, BTR, BTC, BSF, BSR, SETcc, CMOVcc).

Expected values are worked out by hand from the SDM; "undefined:" marks vmxlab's documented
choice for a flag the SDM leaves undefined (measured on an Intel Xeon).
"""

from __future__ import annotations

from isa_support import CATCH16, CF, OF, PF, SF, STATUS, ZF, batch, run

ALL = STATUS

CASES = [
    # register bit base: the offset is taken modulo the operand width
    ("mov eax, 0x10\n mov ebx, 36\n bt eax, ebx", 0, 0x10, CF, CF),
    ("mov eax, 0\n bts eax, 31", ALL, 0x80000000, STATUS, ALL & ~CF),  # undefined: OF SF AF PF kept, ZF kept
    ("mov eax, -1\n btr eax, 0", 0, 0xFFFFFFFE, STATUS, CF),
    ("mov eax, 0x0F\n mov ebx, 3\n btc eax, ebx", 0, 0x07, CF, CF),
    ("mov eax, 0x0F\n btc eax, 4", CF, 0x1F, CF, 0),
    ("mov eax, 0xFFFF0001\n bt ax, 16", 0, 0xFFFF0001, CF, CF),  # imm8 MOD 16
    ("mov eax, 0xFFFF0000\n mov ebx, 17\n bts ax, bx", 0, 0xFFFF0002, CF, 0),
    # BSF/BSR: index of the lowest/highest set bit; undefined: CF OF SF AF = 0, PF from the index
    ("mov ebx, 0x00010100\n bsf eax, ebx", ALL, 8, STATUS, 0),
    ("mov ebx, 0x00010100\n bsr eax, ebx", ALL, 16, STATUS, 0),
    ("mov ebx, 0x80000000\n bsf eax, ebx", ALL, 31, STATUS, 0),
    ("mov ebx, 0x00000003\n bsr eax, ebx", ALL, 1, STATUS, 0),
    ("mov ebx, 0x00000001\n bsr eax, ebx", ALL, 0, STATUS, PF),
    ("mov eax, 0xFFFF1234\n mov ebx, 0x8000\n bsr ax, bx", ALL, 0xFFFF000F, STATUS, PF),
    # zero source: ZF = 1, the destination keeps its value; undefined: PF = 1, CF OF SF AF = 0
    ("mov eax, 0x12345678\n mov ebx, 0\n bsf eax, ebx", CF | SF | OF, 0x12345678, STATUS, ZF | PF),
    ("mov eax, 0x12345678\n mov ebx, 0\n bsr ax, bx", 0, 0x12345678, ZF, ZF),
]


def test_bit_cases(engine: str) -> None:
    got = batch([(asm, flags) for asm, flags, *_ in CASES], engine)
    for (asm, _, eax, mask, want), (g_eax, g_flags, _, _) in zip(CASES, got):
        assert (hex(g_eax), hex(g_flags & mask)) == (hex(eax), hex(want)), asm


def test_bit_string_in_memory(engine: str) -> None:
    """A register bit offset addresses beyond the operand, signed (SDM Vol.2 BT, Figure 3-2)."""
    r = run("""
        mov edi, 0x9600
        mov ecx, 16
        xor eax, eax
    .clear:
        mov dword [edi + ecx * 4 - 32], eax
        dec ecx
        jnz .clear
        mov dword [0x95FC], 0x80000000
        mov ebx, -1                  ; bit 31 of the dword before the base
        bt dword [0x9600], ebx
        setc [0x9700]
        mov ebx, 100                 ; dword at base + 12, bit 4
        bts dword [0x9600], ebx
        setc [0x9701]
        mov bx, -17                  ; word at base - 4, bit 15
        bts word [0x9610], bx
        mov ebx, 0x7FFFFFE0 + 3      ; far positive offset: dword at ea + 0x0FFFFFFC, bit 3
        mov esi, 0x9600 - 0x0FFFFFFC ; ... which is 0x9600
        bts dword [esi], ebx
        bt dword [0x9604], 33        ; immediate: MOD 32, no displacement -> bit 1 of [0x9604]
        setc [0x9702]
        mov dword [0x9620], 0xFFFFFFFF
        mov ebx, 64 + 5
        btr dword [0x9618], ebx      ; dword at 0x9620, bit 5
        mov ebx, -32 + 2
        btc dword [0x9624], ebx      ; dword at 0x9620, bit 2
    """, engine)
    assert r.byte(0x9700) == 1
    assert r.byte(0x9701) == 0
    assert r.dword(0x960C) == 0x8010  # bit 4 (offset 100) and bit 15 (word offset -17 from 0x9610)
    assert r.dword(0x95FC) == 0x80000000
    assert r.dword(0x9600) == 0x8  # bit 3 through the far positive offset
    assert r.byte(0x9702) == 0
    assert r.dword(0x9620) == 0xFFFFFFFF & ~(1 << 5) & ~(1 << 2)


def test_setcc_and_cmovcc(engine: str) -> None:
    r = run("""
        mov eax, 1
        mov ebx, 2
        cmp eax, ebx             ; 1 - 2: CF = 1, ZF = 0, SF = 1, OF = 0
        setb [0x9700]
        setl [0x9701]
        setg [0x9702]
        seta [0x9703]
        setbe [0x9704]
        sete [0x9705]
        sets [0x9706]
        seto [0x9707]
        mov ecx, 0x11111111
        mov edx, 0x22222222
        mov esi, 0x33333333
        cmovl ecx, edx           ; taken
        cmovg esi, edx           ; not taken
        mov edi, 0xAAAA5555
        cmovae di, [0x9700]      ; not taken: DI unchanged
        mov eax, 0x7FFFFFFF
        add eax, 1               ; OF = 1, SF = 1
        setge bl                 ; SF == OF -> 1
        setno bh
        setp [0x9708]            ; 0x80000000: low byte 0 -> PF = 1
    """, engine)
    assert r.mem(0x9700, 9) == bytes([1, 1, 0, 0, 1, 0, 1, 0, 1])
    assert (r.ecx, r.esi, r.edi) == (0x22222222, 0x33333333, 0xAAAA5555)
    assert r.ebx & 0xFFFF == 0x0001


def test_cmov_reads_its_source_even_when_not_taken(engine: str) -> None:
    """SDM Vol.2 CMOVcc: the source operand is read whatever the condition, so it can fault."""
    r = run(CATCH16 + """
        xor ax, ax               ; ZF = 1
        mov bx, 0x1234
        cmovnz bx, [0xFFFF]      ; a word at offset FFFF crosses the real-mode limit: #GP
        mov bx, 0x5678
    """, engine, "real")
    assert r.fault is not None and r.fault[0] == 13
    assert r.ebx & 0xFFFF == 0x1234
