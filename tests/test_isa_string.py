"""String instructions (SDM Vol.2 MOVS CMPS SCAS LODS STOS INS OUTS, REP/REPE/REPNE).

Checks the architectural results (data, (E)SI/(E)DI/(E)CX, flags) for both directions, both
address sizes, overlapping copies, page-crossing runs, 64 KiB wrap, a fault part-way through a
repeated instruction, suspension by the instruction budget, and self-modifying code written by
REP STOS.  Expected values are computed here from the SDM's definitions, not by vmxlab.
"""

from __future__ import annotations

import pytest
from isa_support import CATCH, CATCH16, CF, PF, SF, STATUS, ZF, run

from vmxlab.machine.machine import StopReason


def test_rep_movs_forward_and_backward(engine: str) -> None:
    r = run("""
        mov esi, 0x9000
        mov ecx, 16
    .fill:
        mov [esi + ecx - 1], cl          ; bytes 1..16
        loop .fill
        cld
        mov esi, 0x9000
        mov edi, 0x9100
        mov ecx, 16
        rep movsb
        mov [0x9800], esi
        mov [0x9804], edi
        mov [0x9808], ecx
        std
        mov esi, 0x900C                  ; last dword of the source
        mov edi, 0x920C
        mov ecx, 4
        rep movsd
        cld
        mov [0x980C], esi
        mov [0x9810], edi
    """, engine)
    src = bytes(range(1, 17))
    assert r.mem(0x9100, 16) == src and r.mem(0x9200, 16) == src
    assert (r.dword(0x9800), r.dword(0x9804), r.dword(0x9808)) == (0x9010, 0x9110, 0)
    assert (r.dword(0x980C), r.dword(0x9810)) == (0x8FFC, 0x91FC)


def test_count_zero_does_nothing(engine: str) -> None:
    r = run("""
        mov byte [0x9000], 1
        mov byte [0x9100], 2
        mov esi, 0x9000
        mov edi, 0x9100
        xor ecx, ecx
        stc                              ; flags that a comparison would change
        rep movsb
        repe cmpsb
        repne scasb
        rep stosd
        pushfd
        pop dword [0x9800]
    """, engine)
    assert (r.esi, r.edi, r.ecx) == (0x9000, 0x9100, 0)
    assert r.byte(0x9100) == 2
    assert r.dword(0x9800) & CF


def test_overlapping_copies_keep_element_order(engine: str) -> None:
    """MOVS copies one element after the other, so a destination just ahead of the source
    replicates the first bytes (the classic fill idiom), unlike memmove."""
    r = run("""
        cld
        mov dword [0x9000], 0x44332211
        mov esi, 0x9000
        mov edi, 0x9001
        mov ecx, 63
        rep movsb                        ; fills 0x9001.. with 0x11
        mov dword [0x9100], 0x44332211
        mov esi, 0x9100
        mov edi, 0x9103
        mov ecx, 61
        rep movsb                        ; period 3: 11 22 33 11 22 33 ...
        mov dword [0x9200], 0x44332211
        mov dword [0x9204], 0x88776655
        mov esi, 0x9200
        mov edi, 0x9202
        mov ecx, 8
        rep movsd                        ; dword elements 2 bytes apart: each reads the previous store
        mov dword [0x9400], 0x04030201
        mov dword [0x9404], 0x08070605
        mov esi, 0x9401
        mov edi, 0x9400
        mov ecx, 7
        rep movsb                        ; forwards, destination below the source: a plain move down
        std
        mov dword [0x93FC], 0xDDCCBBAA
        mov esi, 0x93FF
        mov edi, 0x93FE
        mov ecx, 64                      ; backwards, destination just below the source
        rep movsb
        cld
    """, engine)
    assert r.mem(0x9000, 64) == b"\x11" * 64
    assert r.mem(0x9100, 64) == (b"\x11\x22\x33" * 22)[:64]
    # dword elements 2 bytes apart: simulate the SDM's element-by-element definition
    expect = bytearray(b"\x11\x22\x33\x44\x55\x66\x77\x88") + bytearray(40)
    for i in range(8):
        expect[2 + 4 * i: 6 + 4 * i] = expect[4 * i: 4 + 4 * i]
    assert r.mem(0x9200, 48) == bytes(expect)
    # backwards with the destination one below the source: each element reads the byte the previous
    # one wrote, so 0xDD runs down through the whole range
    assert r.mem(0x93BE, 66) == b"\x00" + b"\xDD" * 64 + b"\xDD"
    assert r.mem(0x9400, 8) == bytes([2, 3, 4, 5, 6, 7, 8, 8])


def test_page_crossing_bulk_copy(engine: str) -> None:
    """Runs that cross 4 KiB pages on both sides, misaligned, several pages long."""
    r = run("""
        mov edi, 0x200FFE
        xor ecx, ecx
    .fill:
        mov eax, ecx
        imul eax, eax, 7
        mov [edi + ecx], al
        inc ecx
        cmp ecx, 10004
        jne .fill
        cld
        mov esi, 0x200FFE
        mov edi, 0x300FFD
        mov ecx, 2501
        rep movsd
        mov [0x9800], esi
        mov [0x9804], edi
        std
        mov esi, 0x200FFE + 9999
        mov edi, 0x400FF0 + 9999
        mov ecx, 10000
        rep movsb
        cld
        mov eax, 0xA5A5A5A5
        mov edi, 0x500FFA
        mov ecx, 3000
        rep stosw
    """, engine)
    src = bytes((i * 7) & 0xFF for i in range(10004))
    assert r.mem(0x300FFD, 10004) == src
    assert (r.dword(0x9800), r.dword(0x9804)) == (0x200FFE + 10004, 0x300FFD + 10004)
    assert r.mem(0x400FF0, 10000) == src[:10000]
    assert r.mem(0x500FFA, 6000) == b"\xA5" * 6000
    assert r.byte(0x500FFA + 6000) == 0


def test_stos_lods_scas_cmps(engine: str) -> None:
    r = run("""
        cld
        mov edi, 0x9000
        mov eax, 0x61626364
        mov ecx, 4
        rep stosd
        mov byte [0x9010], 0
        std
        mov edi, 0x9106
        mov ax, 0x7A79
        mov ecx, 4
        rep stosw                        ; 0x9100..0x9107 backwards
        cld
        mov esi, 0x9000
        mov ecx, 3
        rep lodsb                        ; AL = the last byte loaded
        mov [0x9800], eax
        mov [0x9804], esi
        mov edi, 0x9000
        xor eax, eax
        mov ecx, -1
        repne scasb                      ; strlen: stops after the 0 at 0x9010
        mov [0x9808], ecx
        mov [0x980C], edi
        pushfd
        pop dword [0x9810]
        mov dword [0x9200], 0x44434241
        mov dword [0x9300], 0x44584241
        mov esi, 0x9200
        mov edi, 0x9300
        mov ecx, 4
        repe cmpsb                       ; stops after the mismatch at index 2 (0x43 vs 0x58)
        mov [0x9814], ecx
        mov [0x9818], esi
        pushfd
        pop dword [0x981C]
        mov esi, 0x9200
        mov edi, 0x9300
        mov ecx, 1
        cmpsd                            ; no prefix: one element
        mov [0x9820], esi
    """, engine)
    assert r.mem(0x9000, 16) == b"dcba" * 4
    assert r.mem(0x9100, 8) == b"yzyzyzyz"
    assert r.dword(0x9800) & 0xFF == ord("b") and r.dword(0x9804) == 0x9003
    assert (r.dword(0x9808), r.dword(0x980C)) == ((-1 - 17) & 0xFFFFFFFF, 0x9011)
    assert r.dword(0x9810) & ZF
    assert (r.dword(0x9814), r.dword(0x9818)) == (1, 0x9203)
    # last comparison 0x43 - 0x58 = 0xEB: CF, SF, not ZF
    assert r.dword(0x981C) & (CF | ZF | SF) == CF | SF
    assert r.dword(0x9820) == 0x9204


def test_cmps_flags_are_cmp_flags(engine: str) -> None:
    r = run("""
        mov byte [0x9000], 0x80
        mov byte [0x9100], 0x01
        mov esi, 0x9000
        mov edi, 0x9100
        cmpsb                            ; 0x80 - 0x01 = 0x7F: OF, AF, no CF
        pushfd
        pop dword [0x9800]
        mov al, 0x01
        mov edi, 0x9000
        scasb                            ; 0x01 - 0x80 = 0x81: CF, OF, SF
        pushfd
        pop dword [0x9804]
    """, engine)
    assert r.dword(0x9800) & STATUS == 0x800 | 0x10  # OF | AF (0x7F has 7 bits: PF = 0)
    assert r.dword(0x9804) & STATUS == CF | 0x800 | SF | PF


def test_segment_override_applies_to_the_source_only(engine: str) -> None:
    r = run("""
        mov byte [0x1005], 0x11          ; FS:0005 with FS = 0x100
        mov byte [0x0005], 0x22          ; DS:0005
        mov ax, 0x100
        mov fs, ax
        mov ax, 0x200
        mov es, ax                       ; destination ES:0010 = linear 0x2010
        cld
        mov si, 5
        mov di, 0x10
        fs movsb                         ; from FS:SI
        mov si, 5
        movsb                            ; from DS:SI
        mov si, 5
        mov di, 0x20
        es lodsb                         ; ES:0005 (linear 0x2005)
        mov [0x9000], al
    """, engine, "real")
    assert (r.byte(0x2010), r.byte(0x2011)) == (0x11, 0x22)
    assert r.byte(0x9000) == r.byte(0x2005)


def test_16bit_addressing_wraps_at_64k(engine: str) -> None:
    r = run("""
        mov byte [0xFFFE], 0xA1
        mov byte [0xFFFF], 0xA2
        mov byte [0x0000], 0xA3          ; (the IVT; nothing faults here)
        mov byte [0x0001], 0xA4
        mov ax, 0x0800
        mov es, ax
        cld
        mov si, 0xFFFE
        xor di, di
        mov cx, 4
        rep movsb                        ; SI wraps FFFF -> 0000
        mov [0x9000], si
        mov [0x9002], di
        mov ecx, 0x00010002              ; 16-bit addressing counts with CX only
        mov di, 0x100
        mov al, 0x5A
        rep stosb
        mov [0x9004], ecx
    """, engine, "real")
    assert r.mem(0x8000, 4) == b"\xA1\xA2\xA3\xA4"
    assert (r.word(0x9000), r.word(0x9002)) == (0x0002, 0x0004)
    assert r.mem(0x8100, 3) == b"\x5A\x5A\x00"
    assert r.dword(0x9004) == 0x00010000


def test_address_size_prefix_in_pm32(engine: str) -> None:
    r = run("""
        cld
        mov edi, 0xABCD9000              ; a16: only DI is used (and updated)
        mov ecx, 0x12340003
        mov al, 0x77
        a16 rep stosb
        mov [0x9800], edi
        mov [0x9804], ecx
    """, engine)
    assert r.mem(0x9000, 4) == b"\x77\x77\x77\x00"
    assert (r.dword(0x9800), r.dword(0x9804)) == (0xABCD9003, 0x12340000)


def test_fault_part_way_keeps_completed_iterations(engine: str) -> None:
    """A word store at offset FFFF crosses the real-mode segment limit: #GP after 7 elements, with
    CX/DI describing exactly those 7 and the saved IP pointing at the REP STOSW itself."""
    r = run(CATCH16 + """
        mov ax, 0x0800
        mov es, ax
        cld
        mov di, 0xFFF1
        mov cx, 10
        mov ax, 0xBEEF
        mov word [0x8100], bad
    bad:
        rep stosw
    """, engine, "real")
    assert r.fault == (13, r.word(0x8100))
    assert (r.ecx & 0xFFFF, r.edi & 0xFFFF) == (3, 0xFFFF)
    assert r.mem(0x8000 + 0xFFF1, 14) == b"\xEF\xBE" * 7


def test_rep_is_suspended_and_resumed_by_the_budget(engine: str) -> None:
    body = """
        mov edi, 0x200000
        mov ecx, 20000
        mov al, 0x5A
        rep stosb
        mov ebx, 1
    """
    r = run(body, engine, stop=StopReason.BUDGET, max_instructions=4)
    done = r.edi - 0x200000
    assert 0 < done < 20000 and r.ecx == 20000 - done  # suspended between iterations
    assert r.eip == 0x100000 + 5 + 5 + 2  # the REP STOSB itself (mov edi / mov ecx / mov al)
    assert r.mem(0x200000, done) == b"\x5A" * done and r.byte(0x200000 + done) == 0
    full = run(body, engine)
    assert (full.ecx, full.edi, full.ebx) == (0, 0x200000 + 20000, 1)


def test_self_modifying_code_through_rep_stos(engine: str) -> None:
    r = run("""
        xor ebx, ebx
        mov esi, 2
    again:
        call target                      ; translated and run unpatched the first time
        mov edi, target
        mov al, 0x90
        mov ecx, 2
        cld
        rep stosb                        ; replace the JMP SHORT with two NOPs
        dec esi
        jnz again
        jmp done
    target:
        jmp short .skip
        inc ebx
    .skip:
        ret
    done:
    """, engine)
    assert r.ebx == 1


def test_outs_and_ins(engine: str) -> None:
    r = run("""
        jmp .go
    .msg: db "hello"
    .go:
        cld
        mov esi, .msg
        mov dx, 0xE9
        mov ecx, 5
        rep outsb                        ; debug console
        std
        mov esi, .msg + 4
        mov ecx, 5
        rep outsb                        ; backwards
        cld
        mov dx, 0x3FF                    ; UART scratch register
        mov al, 0x5A
        out dx, al
        mov edi, 0x9000
        mov ecx, 3
        rep insb
        insb
        mov [0x9800], edi
        mov [0x9804], ecx
    """, engine)
    assert r.console == b"helloolleh"
    assert r.mem(0x9000, 5) == b"\x5A\x5A\x5A\x5A\x00"
    assert (r.dword(0x9800), r.dword(0x9804)) == (0x9004, 0)


def test_ins_checks_the_destination_before_reading_the_port(engine: str) -> None:
    r = run(CATCH16 + """
        mov ax, 0x0800
        mov es, ax
        mov di, 0xFFFF
        mov dx, 0x3FF
        mov word [0x8100], bad
    bad:
        insw                             ; word at ES:FFFF: #GP
    """, engine, "real")
    assert r.fault == (13, r.word(0x8100))
    assert r.edi & 0xFFFF == 0xFFFF


def test_f2_prefix_repeats_movs(engine: str) -> None:
    r = run("""
        mov dword [0x9000], 0x04030201
        mov esi, 0x9000
        mov edi, 0x9100
        mov ecx, 4
        cld
        db 0xF2                          ; REPNE MOVSB repeats like REP
        movsb
    """, engine)
    assert r.mem(0x9100, 4) == b"\x01\x02\x03\x04" and r.ecx == 0


def test_fault_part_way_in_a_hot_block(engine: str, request: pytest.FixtureRequest) -> None:
    """The same precision when the block holding the REP has been compiled (it ran 80 times first)."""
    r = run(CATCH + """
        ; a 64 KiB data segment at GDT index 4 (0x20) next to vmxlab's boot GDT at 0x500
        mov dword [0x520], 0x0000FFFF
        mov dword [0x524], 0x00009300   ; base 0, limit 0xFFFF (byte granular), data read/write
        lgdt [gdtr]
        mov ax, 0x20
        mov es, ax
        cld
        mov ebx, 100
    again:
        mov edi, 0x1000
        dec ebx
        cmp ebx, 20
        jnz go
        mov edi, 0xFFF1                  ; the 80th time: a word store at 0xFFFF exceeds the limit
    go: jmp last
    last:
        mov ecx, 10
        mov eax, 0xBEEF
        rep stosw
        jmp again
    gdtr: dw 5 * 8 - 1
          dd 0x500
    """, engine)
    assert r.fault is not None and r.fault[0] == 13
    assert (r.ecx, r.edi) == (3, 0xFFFF)
