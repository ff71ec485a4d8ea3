"""EFLAGS, computed lazily.

SDM Vol.1 3.4.3 defines the status flags (CF PF AF ZF SF OF).  Computing all six
after every ALU operation costs ~5x the operation itself in CPython, and most
results are overwritten before anything reads them.  So, as QEMU does, an ALU
instruction only *records* what it did::

    cpu.cc_op  = kind << 2 | size_index      # which formula
    cpu.cc_a, cpu.cc_b, cpu.cc_res           # operands and (masked) result

and the six bits are derived on demand (:func:`oszapc`) when PUSHF, LAHF, Jcc,
SETcc, an interrupt or a VM exit needs them.  ``K_FLAGS`` means "already
materialised": ``cc_res`` then holds the six bits themselves.

The other EFLAGS bits (TF IF DF IOPL NT RF VM AC ID, and the reserved bit 1
which reads as 1) live in ``cpu.eflags_sys``.
"""

from __future__ import annotations

# SDM Vol.1 3.4.3, Figure 3-8 (EFLAGS register)
CF = 1 << 0
RESERVED1 = 1 << 1  # always 1
PF = 1 << 2
AF = 1 << 4
ZF = 1 << 6
SF = 1 << 7
TF = 1 << 8
IF = 1 << 9
DF = 1 << 10
OF = 1 << 11
IOPL = 3 << 12
IOPL_SHIFT = 12
NT = 1 << 14
RF = 1 << 16
VM = 1 << 17
AC = 1 << 18
VIF = 1 << 19
VIP = 1 << 20
ID = 1 << 21

STATUS = CF | PF | AF | ZF | SF | OF  # the lazily computed part
#: bits software can ever set on this CPU model (no VME/PVI: VIF/VIP stay 0; VM: see README)
WRITABLE = STATUS | TF | IF | DF | IOPL | NT | RF | AC | ID

# Lazy-flag formula kinds (cc_op >> 2); the low two bits are the size index.
K_FLAGS = 0  # cc_res holds the six status bits
K_ADD = 1
K_ADC = 2  # add with carry-in 1 (ADC with CF=0 is recorded as K_ADD)
K_SUB = 3
K_SBB = 4  # subtract with borrow-in 1
K_LOGIC = 5  # AND/OR/XOR/TEST: CF=OF=0
K_INC = 6  # cc_b holds the preserved CF (0 or 1)
K_DEC = 7

SZ8, SZ16, SZ32 = 0, 1, 2
SIZE_INDEX = {1: SZ8, 2: SZ16, 4: SZ32}
BITS = (8, 16, 32, 64)
MASKS = (0xFF, 0xFFFF, 0xFFFFFFFF)
SIGNS = (0x80, 0x8000, 0x80000000)

#: PARITY[b] is PF for a result whose low byte is b (PF=1 for an even number of set bits)
PARITY = tuple(PF if bin(b).count("1") % 2 == 0 else 0 for b in range(256))


def op(kind: int, size: int) -> int:
    """The cc_op value for ``kind`` at operand ``size`` (1, 2 or 4 bytes)."""
    return kind << 2 | SIZE_INDEX[size]


def oszapc(cc_op: int, a: int, b: int, res: int) -> int:
    """The six status flags described by a lazy record (SDM Vol.2, each instruction's Flags Affected)."""
    kind = cc_op >> 2
    if kind == K_FLAGS:
        return res
    sign = SIGNS[cc_op & 3]
    flags = PARITY[res & 0xFF]
    if res == 0:
        flags |= ZF
    if res & sign:
        flags |= SF
    if kind == K_ADD:
        if res < a:
            flags |= CF
        if (a ^ res) & (b ^ res) & sign:
            flags |= OF
        return flags | ((a ^ b ^ res) & AF)
    if kind == K_SUB:
        if a < b:
            flags |= CF
        if (a ^ b) & (a ^ res) & sign:
            flags |= OF
        return flags | ((a ^ b ^ res) & AF)
    if kind == K_LOGIC:
        return flags
    if kind == K_INC:
        if res == sign:
            flags |= OF
        return flags | b | ((a ^ res) & AF)
    if kind == K_DEC:
        if res == sign - 1:
            flags |= OF
        return flags | b | ((a ^ res) & AF)
    if kind == K_ADC:
        if res <= a:
            flags |= CF
        if (a ^ res) & (b ^ res) & sign:
            flags |= OF
        return flags | ((a ^ b ^ res) & AF)
    if kind == K_SBB:
        if a <= b:
            flags |= CF
        if (a ^ b) & (a ^ res) & sign:
            flags |= OF
        return flags | ((a ^ b ^ res) & AF)
    raise AssertionError(f"bad cc_op {cc_op}")


def carry(cc_op: int, a: int, b: int, res: int) -> int:
    """CF alone (0 or 1): ADC/SBB/RCL/RCR and INC/DEC need it and it is cheap to get."""
    kind = cc_op >> 2
    if kind == K_SUB:
        return 1 if a < b else 0
    if kind == K_ADD:
        return 1 if res < a else 0
    if kind == K_LOGIC:
        return 0
    if kind in (K_INC, K_DEC):
        return b
    if kind == K_FLAGS:
        return res & CF
    return oszapc(cc_op, a, b, res) & CF


def _cond_table() -> tuple:
    """Condition codes 0..15 (SDM Vol.1 Appendix B, Table B-1) as predicates on the status bits."""
    return (
        lambda f: f & OF != 0,  # 0 O
        lambda f: f & OF == 0,  # 1 NO
        lambda f: f & CF != 0,  # 2 B/C/NAE
        lambda f: f & CF == 0,  # 3 AE/NB/NC
        lambda f: f & ZF != 0,  # 4 E/Z
        lambda f: f & ZF == 0,  # 5 NE/NZ
        lambda f: f & (CF | ZF) != 0,  # 6 BE/NA
        lambda f: f & (CF | ZF) == 0,  # 7 A/NBE
        lambda f: f & SF != 0,  # 8 S
        lambda f: f & SF == 0,  # 9 NS
        lambda f: f & PF != 0,  # A P/PE
        lambda f: f & PF == 0,  # B NP/PO
        lambda f: (f & SF != 0) != (f & OF != 0),  # C L/NGE
        lambda f: (f & SF != 0) == (f & OF != 0),  # D GE/NL
        lambda f: f & ZF != 0 or (f & SF != 0) != (f & OF != 0),  # E LE/NG
        lambda f: f & ZF == 0 and (f & SF != 0) == (f & OF != 0),  # F G/NLE
    )


CONDITIONS = _cond_table()
