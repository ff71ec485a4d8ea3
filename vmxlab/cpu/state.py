"""Architectural names and the segment-register model.

Register and segment numbers are the x86 encodings (ModRM.reg, and the Sreg
order ES CS SS DS FS GS), which are also the numbers VMX uses in exit
qualifications and instruction information (SDM Vol.3C 28.2.5).

A segment register is its visible selector plus the hidden descriptor cache
(SDM Vol.3A 3.4.3).  The cache keeps the access rights in the VMX
guest-state format (SDM Vol.3C 25.4.1, Table 25-2) so VM entry and VM exit
copy them without conversion: type[3:0] S[4] DPL[6:5] P[7] AVL[12] L[13]
D/B[14] G[15] unusable[16].
"""

from __future__ import annotations

# General-purpose registers in encoding order (SDM Vol.2 Table 2-1)
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")

# Segment registers in Sreg encoding order (SDM Vol.2 3.1.1.3)
ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
LDTR, TR = 6, 7  # indices used by the trace and VMX state tables

# CR0 (SDM Vol.3A 2.5)
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31

# CR4 (SDM Vol.3A 2.5)
CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_MCE = 1 << 6
CR4_PGE = 1 << 7
CR4_PCE = 1 << 8
CR4_OSFXSR = 1 << 9
CR4_UMIP = 1 << 11
CR4_VMXE = 1 << 13

# IA32_EFER (SDM Vol.3A 2.2.1)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

# Access-rights fields (VMX format, SDM Vol.3C Table 25-2; descriptor byte 5 + flags nibble)
AR_TYPE = 0xF
AR_ACCESSED = 1 << 0
AR_WRITABLE = 1 << 1  # data segments
AR_READABLE = 1 << 1  # code segments
AR_EXPAND_DOWN = 1 << 2  # data segments
AR_CONFORMING = 1 << 2  # code segments
AR_CODE = 1 << 3
AR_S = 1 << 4  # 1 = code/data, 0 = system
AR_DPL_SHIFT = 5
AR_P = 1 << 7
AR_AVL = 1 << 12
AR_L = 1 << 13
AR_DB = 1 << 14
AR_G = 1 << 15
AR_UNUSABLE = 1 << 16

#: real-mode hidden part after reset or a real-mode load: present, writable/readable data, accessed
AR_REAL_DATA = AR_P | AR_S | AR_WRITABLE | AR_ACCESSED  # 0x93
AR_REAL_CODE = AR_P | AR_S | AR_CODE | AR_READABLE | AR_ACCESSED  # 0x9B


#: ``Segment.hi`` of a segment whose valid offsets reach 0xFFFFFFFF: above any offset + size
NO_UPPER_BOUND = 1 << 36


class Segment:
    """One segment register: selector and hidden descriptor cache.

    ``lo``/``hi`` are the inclusive range of valid offsets, precomputed from the
    limit and the expand-down bit (SDM Vol.3A 5.3) so every access does a
    single range check; ``readable``/``writable`` precompute the type checks of
    SDM Vol.3A 5.5.  ``flat`` marks base 0 with the full 4 GiB range, the case
    the fast paths specialise on.
    """

    __slots__ = ("selector", "base", "limit", "ar", "lo", "hi", "readable", "writable", "flat")

    def __init__(self, selector: int = 0, base: int = 0, limit: int = 0xFFFF, ar: int = AR_REAL_DATA) -> None:
        self.selector = selector
        self.base = base
        self.limit = limit
        self.ar = ar
        self.lo = 0
        self.hi = limit
        self.readable = True
        self.writable = True
        self.flat = False
        self.refresh()

    def load(self, selector: int, base: int, limit: int, ar: int) -> None:
        self.selector = selector
        self.base = base & 0xFFFFFFFF
        self.limit = limit & 0xFFFFFFFF
        self.ar = ar
        self.refresh()

    def refresh(self) -> None:
        """Recompute the derived check fields after the hidden part changed."""
        ar = self.ar
        if ar & AR_UNUSABLE or not ar & AR_P:
            # null/unusable selector: every access faults (SDM Vol.3A 5.4.1); lo > hi does that
            self.lo, self.hi = 1, 0
            self.readable = self.writable = False
            self.flat = False
            return
        if ar & AR_CODE:
            self.readable = bool(ar & AR_READABLE)
            self.writable = False
            self.lo, self.hi = 0, self.limit
        else:
            self.readable = True
            self.writable = bool(ar & AR_WRITABLE)
            if ar & AR_EXPAND_DOWN:
                # valid offsets are limit+1 .. 0xFFFF (B=0) or 0xFFFFFFFF (B=1)
                self.lo = self.limit + 1
                self.hi = 0xFFFFFFFF if ar & AR_DB else 0xFFFF
            else:
                self.lo, self.hi = 0, self.limit
        if self.hi == 0xFFFFFFFF:
            # A segment reaching 4 GiB has no upper bound in practice: an access at offset 0xFFFFFFFF
            # wraps to linear 0 instead of faulting (measured on the host CPU by the differential
            # test; Bochs skips the limit check for 4-GiB segments too).  The offset arithmetic wraps
            # in the linear-address computation.
            self.hi = NO_UPPER_BOUND
        self.flat = self.base == 0 and self.lo == 0 and self.hi == NO_UPPER_BOUND

    @property
    def dpl(self) -> int:
        return (self.ar >> AR_DPL_SHIFT) & 3

    @property
    def rpl(self) -> int:
        return self.selector & 3

    @property
    def db(self) -> bool:
        return bool(self.ar & AR_DB)

    @property
    def unusable(self) -> bool:
        return bool(self.ar & AR_UNUSABLE)

    def copy(self) -> Segment:
        return Segment(self.selector, self.base, self.limit, self.ar)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.selector, self.base, self.limit, self.ar)

    def __repr__(self) -> str:
        return f"Segment(sel={self.selector:#06x}, base={self.base:#x}, limit={self.limit:#x}, ar={self.ar:#x})"


def real_mode_segment(selector: int, ar: int = AR_REAL_DATA) -> Segment:
    """A segment as loaded in real mode: base = selector * 16 (SDM Vol.3A 21.1.1)."""
    return Segment(selector & 0xFFFF, (selector & 0xFFFF) << 4, 0xFFFF, ar)
