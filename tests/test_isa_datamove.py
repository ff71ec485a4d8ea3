"""Data movement and stack-frame instructions (SDM Vol.2: XADD, CMPXCHG, CMPXCHG8B, BSWAP, CBW/CWDE,
CWD/CDQ, XLAT, LDS/LES/LFS/LGS/LSS, PUSHA/POPA, ENTER/LEAVE, BOUND, SALC; LOCK).

Expected values are computed by hand from the SDM's Operation sections.
"""

from __future__ import annotations

from isa_support import AF, CATCH, CATCH16, CF, FAULT_AT, OF, PF, SF, STATUS, ZF, batch, run

ALL = STATUS

CASES = [
    # XADD: TEMP := SRC + DEST; SRC := DEST; DEST := TEMP, flags as ADD (EBX returned in the 4th slot)
    ("mov eax, 0xFFFFFFFF\n mov ebx, 1\n xadd eax, ebx", 0, 0, STATUS, CF | ZF | PF | AF, 0xFFFFFFFF),
    ("mov eax, 0x40000000\n xadd eax, eax", 0, 0x80000000, STATUS, OF | SF | PF, None),
    ("mov eax, 0x7F\n mov ebx, 0x180\n xadd bl, al", 0, 0x80, STATUS, SF | PF, 0x1FF),
    # CMPXCHG: accumulator == DEST ? DEST := SRC : accumulator := DEST; flags of CMP acc, DEST
    ("mov eax, 5\n mov ebx, 5\n mov ecx, 9\n cmpxchg ebx, ecx", 0, 5, STATUS, ZF | PF, 9),
    ("mov eax, 4\n mov ebx, 5\n mov ecx, 9\n cmpxchg ebx, ecx", 0, 5, STATUS, CF | SF | PF | AF, 5),
    ("mov eax, 0x1210\n mov ebx, 0x10\n mov ecx, 0x22\n cmpxchg bl, cl", 0, 0x1210, ZF, ZF, 0x22),
    ("mov eax, 0xFFFF0001\n mov ebx, 0x3\n mov ecx, 0x22\n cmpxchg bx, cx", 0, 0xFFFF0003, CF | ZF, CF, 3),
    # BSWAP; a 16-bit BSWAP clears the register (undefined: what Intel processors do)
    ("mov eax, 0x12345678\n bswap eax", 0, 0x78563412, 0, 0, None),
    ("mov eax, 0x12345678\n db 0x66, 0x0F, 0xC8", 0, 0x12340000, 0, 0, None),
    # CBW/CWDE/CWD/CDQ
    ("mov eax, 0x12345680\n cbw", 0, 0x1234FF80, 0, 0, None),
    ("mov eax, 0x1234007F\n cbw", 0, 0x1234007F, 0, 0, None),
    ("mov eax, 0x12348000\n cwde", 0, 0xFFFF8000, 0, 0, None),
    ("mov eax, 0x8000\n mov edx, 0x12345678\n cwd\n mov eax, edx", 0, 0x1234FFFF, 0, 0, None),
    ("mov eax, 0x7FFFFFFF\n mov edx, 0x12345678\n cdq\n mov eax, edx", 0, 0, 0, 0, None),
    ("mov eax, 0x80000000\n cdq\n mov eax, edx", 0, 0xFFFFFFFF, 0, 0, None),
    # SALC: AL := CF ? FF : 00, flags unchanged
    ("mov eax, 0x12345678\n salc", CF, 0x123456FF, STATUS, CF, None),
    ("mov eax, 0x12345678\n salc", ALL & ~CF, 0x12345600, STATUS, ALL & ~CF, None),
]


def test_exchange_and_conversion_cases(engine: str) -> None:
    got = batch([(asm, flags) for asm, flags, *_ in CASES], engine)
    for (asm, _, eax, mask, want, ebx), (g_eax, g_flags, _, g_ebx) in zip(CASES, got):
        assert (hex(g_eax), hex(g_flags & mask)) == (hex(eax), hex(want)), asm
        if ebx is not None:
            assert hex(g_ebx) == hex(ebx), asm


def test_memory_exchanges_and_lock(engine: str) -> None:
    r = run("""
        mov dword [0x9000], 5
        mov ecx, 7
        lock xadd [0x9000], ecx          ; [m] = 12, ECX = 5
        mov [0x9100], ecx
        mov dword [0x9004], 5
        mov eax, 5
        mov ecx, 9
        lock cmpxchg [0x9004], ecx        ; equal: [m] = 9
        setz [0x9104]
        mov eax, 1
        cmpxchg [0x9004], ecx             ; not equal: EAX = 9, [m] keeps 9
        mov [0x9108], eax
        setz [0x9105]
        mov dword [0x9010], 0x22222222
        mov dword [0x9014], 0x11111111
        mov edx, 0x11111111
        mov eax, 0x22222222
        mov ecx, 0xAAAAAAAA
        mov ebx, 0xBBBBBBBB
        stc
        lock cmpxchg8b [0x9010]           ; equal: m64 := ECX:EBX, ZF = 1, CF untouched
        setz [0x9106]
        setc [0x9107]
        xor eax, eax                      ; ZF = 1 before the mismatch
        xor edx, edx
        cmpxchg8b [0x9010]                ; not equal: EDX:EAX := m64, ZF = 0
        mov [0x910C], eax
        mov [0x9110], edx
        setz [0x910A]
        mov dword [0x9018], 0
        mov ebx, 35
        lock bts [0x9018], ebx            ; dword at 0x901C, bit 3
        lock inc dword [0x9018]
        lock add dword [0x9018], 0x10
    """, engine)
    assert (r.dword(0x9000), r.dword(0x9100)) == (12, 5)
    assert r.dword(0x9004) == 9 and r.byte(0x9104) == 1
    assert r.dword(0x9108) == 9 and r.byte(0x9105) == 0
    assert (r.dword(0x9010), r.dword(0x9014)) == (0xBBBBBBBB, 0xAAAAAAAA)
    assert (r.byte(0x9106), r.byte(0x9107)) == (1, 1)
    assert (r.dword(0x910C), r.dword(0x9110), r.byte(0x910A)) == (0xBBBBBBBB, 0xAAAAAAAA, 0)
    assert (r.dword(0x9018), r.dword(0x901C)) == (0x11, 0x8)


def test_lock_on_a_non_lockable_instruction_is_ud(engine: str) -> None:
    r = run(CATCH + """
        mov dword [0x8100], bad
        mov ebx, 0x1234
    bad:
        db 0xF0                           ; LOCK MOV EAX, EBX: #UD (SDM Vol.2 LOCK)
        mov eax, ebx
    """, engine)
    assert r.fault == (6, r.dword(0x8100))
    assert r.eax != 0x1234


def test_xlat(engine: str) -> None:
    r = run("""
        mov edi, 0x9800
        xor ecx, ecx
    .fill:
        lea eax, [ecx + ecx * 2]
        mov [edi + ecx], al
        inc ecx
        cmp ecx, 256
        jne .fill
        mov ebx, 0x9800
        mov eax, 0xABCDEF05
        xlatb                             ; AL := [DS:EBX + AL] = 15
        mov [0x9000], eax
        mov eax, 0x000000FF
        xlatb                             ; AL = 0xFF -> 3 * 255 & 0xFF = 0xFD
        mov [0x9004], eax
    """, engine)
    assert r.dword(0x9000) == 0xABCDEF0F
    assert r.dword(0x9004) == 0xFD


def test_xlat_real_mode_segment_override_and_wrap(engine: str) -> None:
    r = run("""
        mov byte [0x9805], 0x11          ; DS:9805
        mov byte [0x8805], 0x22          ; DS:8805
        mov ax, 0x0100
        mov es, ax                       ; ES base 0x1000: ES:8805 is linear 0x9805
        mov bx, 0x8800
        mov al, 5
        xlatb                            ; DS:8805 -> 0x22
        mov [0x9000], al
        mov al, 5
        es xlatb                         ; ES:8805 -> 0x11
        mov [0x9001], al
        mov byte [0x0003], 0x33          ; (vector 0 of the IVT; no exception is taken here)
        mov bx, 0xFFFF
        mov al, 4
        xlatb                            ; BX + AL wraps to DS:0003
        mov [0x9002], al
    """, engine, "real")
    assert r.mem(0x9000, 3) == bytes([0x22, 0x11, 0x33])


def test_far_pointer_loads_pm32(engine: str) -> None:
    r = run(CATCH + """
        mov dword [0x9000], 0x12345678
        mov word [0x9004], 0x18
        mov dword [0x9008], 0x6F00
        mov word [0x900C], 0x18
        mov dword [0x9010], 0xCAFEBABE
        mov word [0x9014], 0x40           ; beyond the GDT limit
        mov word [0x9018], 0x5678
        mov word [0x901A], 0x18
        lds esi, [0x9000]
        les edi, [0x9000]
        lfs ebx, [0x9000]
        mov ax, 0
        mov gs, ax
        lss esp, [0x9008]
        lgs cx, [0x9018]                  ; 16-bit offset, selector at +2
        mov [0x9100], gs
        mov edx, 0x1111
        mov dword [0x8100], bad
    bad:
        lgs edx, [0x9010]                 ; #GP(0x40); EDX and GS unchanged
    """, engine)
    assert (r.esi, r.edi, r.ebx) == (0x12345678, 0x12345678, 0x12345678)
    assert r.ecx & 0xFFFF == 0x5678
    assert r.word(0x9100) == 0x18
    assert r.fault == (13, r.dword(0x8100)) and r.dword(FAULT_AT + 8) == 0x40
    assert r.edx == 0x1111
    assert r.esp == 0x6F00 - 8  # #GP pushed EFLAGS CS EIP and an error code; the stub popped two


def test_far_pointer_loads_real_mode(engine: str) -> None:
    r = run("""
        mov word [0x9000], 0x1234
        mov word [0x9002], 0x2000
        les di, [0x9000]
        lds si, [0x9000]                 ; DS changes last: the operand was read with the old DS
        mov ax, es
        mov bx, ds
        xor cx, cx
        mov ds, cx
        mov [0x9100], ax
        mov [0x9102], bx
        mov [0x9104], di
        mov [0x9106], si
    """, engine, "real")
    assert [r.word(0x9100 + 2 * i) for i in range(4)] == [0x2000, 0x2000, 0x1234, 0x1234]


def test_pusha_popa(engine: str) -> None:
    r = run("""
        mov esp, 0x7000
        mov eax, 1
        mov ecx, 2
        mov edx, 3
        mov ebx, 4
        mov ebp, 6
        mov esi, 7
        mov edi, 8
        pushad
        mov [0x9000], esp
        mov dword [0x6FEC], 0xDEAD        ; the ESP image is skipped by POPAD
        mov dword [0x6FFC], 0x101         ; new EAX
        mov dword [0x6FE0], 0x108         ; new EDI
        xor eax, eax
        xor edi, edi
        popad
        mov [0x9004], esp
        mov [0x9008], eax
        mov [0x900C], edi
        mov [0x9010], ebx
        mov ebx, 0xFFFF0004
        mov esp, 0x6800
        pushaw                            ; 16-bit images
        mov [0x9014], esp
        popaw
        mov [0x9018], ebx
    """, engine)
    assert r.dword(0x9000) == 0x6FE0
    assert [r.dword(0x6FE0 + 4 * i) for i in range(8)] == [0x108, 7, 6, 0xDEAD, 4, 3, 2, 0x101]
    assert (r.dword(0x9004), r.dword(0x9008), r.dword(0x900C), r.dword(0x9010)) == (0x7000, 0x101, 0x108, 4)
    assert r.dword(0x9014) == 0x6800 - 16
    assert r.word(0x6800 - 16 + 8) == 0x0004  # BX image (DI SI BP SP BX ...)
    assert r.word(0x6800 - 16 + 6) == 0x6800  # SP image
    assert r.dword(0x9018) == 0xFFFF0004


def test_pusha_popa_real_mode(engine: str) -> None:
    r = run("""
        mov sp, 0x7000
        mov ax, 0xA1
        mov bx, 0xB1
        mov bp, 0xB9
        pusha
        mov [0x9000], sp
        xor ax, ax
        xor bx, bx
        popa
        mov [0x9002], sp
        mov [0x9004], ax
        mov [0x9006], bx
        mov [0x9008], bp
    """, engine, "real")
    assert r.word(0x9000) == 0x7000 - 16
    assert r.word(0x7000 - 16 + 6) == 0x7000  # SP image
    assert (r.word(0x9002), r.word(0x9004), r.word(0x9006), r.word(0x9008)) == (0x7000, 0xA1, 0xB1, 0xB9)


def test_enter_leave_nesting_levels(engine: str) -> None:
    r = run("""
        mov dword [0x6EFC], 0xAAAA0001
        mov dword [0x6EF8], 0xAAAA0002
        mov esp, 0x7000
        mov ebp, 0x6F00
        enter 16, 3
        mov [0x9000], esp
        mov [0x9004], ebp
        leave
        mov [0x9008], esp
        mov [0x900C], ebp
        mov esp, 0x6800
        enter 0, 0
        mov [0x9010], esp
        mov [0x9014], ebp
        leave
        enter 8, 33                       ; nesting level 33 MOD 32 = 1
        mov [0x9018], esp
        mov [0x901C], ebp
        leave
        mov [0x9020], esp
        mov [0x9024], ebp
    """, engine)
    # enter 16, 3: push EBP; copy 2 frame pointers from [EBP-4], [EBP-8]; push the frame; allocate 16
    assert [r.dword(0x6FF0 + 4 * i) for i in range(4)] == [0x6FFC, 0xAAAA0002, 0xAAAA0001, 0x6F00]
    assert (r.dword(0x9000), r.dword(0x9004)) == (0x6FE0, 0x6FFC)
    assert (r.dword(0x9008), r.dword(0x900C)) == (0x7000, 0x6F00)
    assert (r.dword(0x9010), r.dword(0x9014)) == (0x67FC, 0x67FC)
    assert (r.dword(0x9018), r.dword(0x901C)) == (0x67FC - 4 - 8, 0x67FC)
    assert (r.dword(0x67FC), r.dword(0x67F8)) == (0x6F00, 0x67FC)  # level 1: only the new frame pointer
    assert (r.dword(0x9020), r.dword(0x9024)) == (0x6800, 0x6F00)


def test_enter_leave_16bit_real_mode(engine: str) -> None:
    r = run("""
        mov word [0x6EFE], 0x1111
        mov sp, 0x7000
        mov bp, 0x6F00
        enter 4, 2
        mov [0x9000], sp
        mov [0x9002], bp
        leave
        mov [0x9004], sp
        mov [0x9006], bp
    """, engine, "real")
    assert [r.word(0x6FFA + 2 * i) for i in range(3)] == [0x6FFE, 0x1111, 0x6F00]
    assert (r.word(0x9000), r.word(0x9002)) == (0x6FF6, 0x6FFE)
    assert (r.word(0x9004), r.word(0x9006)) == (0x7000, 0x6F00)


def test_bound(engine: str) -> None:
    r = run(CATCH + """
        mov dword [0x9000], -5
        mov dword [0x9004], 10
        mov eax, 10
        bound eax, [0x9000]               ; in range
        mov eax, -5
        bound eax, [0x9000]
        mov ebx, 1
        mov eax, 11
        mov dword [0x8100], bad
    bad:
        bound eax, [0x9000]               ; #BR, a fault: EIP is the BOUND
        mov ebx, 2
    """, engine)
    assert r.fault == (5, r.dword(0x8100))
    assert r.ebx == 1


def test_bound_16bit_signed(engine: str) -> None:
    r = run(CATCH16 + """
        mov word [0x9000], 0xFFF0         ; -16
        mov word [0x9002], 0x0010         ; 16
        mov ax, 0xFFF0
        bound ax, [0x9000]
        mov ax, 0xFFEF                    ; -17: out of range
        mov word [0x8100], bad
    bad:
        bound ax, [0x9000]
    """, engine, "real")
    assert r.fault == (5, r.word(0x8100))
