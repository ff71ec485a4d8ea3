"""Segment-register loads with the protection checks of SDM Vol.3A chapter 5 and Vol.2 MOV/POP.

Every check raises before any state changes; the error code of a selector
fault is the selector with RPL cleared (SDM Vol.3A 6.13, error-code format),
plus the EXT bit when the load is part of delivering an external event.

Which check gives which fault (SDM Vol.2 MOV, "Protected Mode Exceptions"):

================================================  ==============================
DS/ES/FS/GS: selector outside the GDT/LDT          #GP(selector)
DS/ES/FS/GS: system segment, execute-only code     #GP(selector)
DS/ES/FS/GS: data or non-conforming code with      #GP(selector)
RPL > DPL or CPL > DPL
DS/ES/FS/GS: not present                           #NP(selector)
DS/ES/FS/GS: null selector                         loads an unusable segment
SS: null selector                                  #GP(0)
SS: outside table, RPL != CPL, not writable data,  #GP(selector)
DPL != CPL
SS: not present                                    #SS(selector)
================================================  ==============================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .descriptors import Descriptor, read_descriptor, set_accessed
from .faults import CpuFault, Vector
from .state import (
    AR_CODE,
    AR_CONFORMING,
    AR_DB,
    AR_EXPAND_DOWN,
    AR_P,
    AR_READABLE,
    AR_UNUSABLE,
    AR_WRITABLE,
    CS,
    DS,
    ES,
    FS,
    GS,
    SS,
)

if TYPE_CHECKING:
    from .core import CPU

M32 = 0xFFFFFFFF
DATA_SREGS = (ES, DS, FS, GS)


def load_segment(cpu: CPU, sreg: int, selector: int) -> None:
    """MOV/POP/LDS.. to a data segment register or SS, in the current mode."""
    selector &= 0xFFFF
    if not cpu.pe:
        cpu.load_real_segment(sreg, selector)
    elif sreg == SS:
        load_ss(cpu, selector, cpu.cpl)
    else:
        load_data_segment(cpu, sreg, selector)
    if sreg in (ES, SS, DS):  # ES, SS, DS take part in the mode key's "flat" bit
        cpu.update_mode()


def check_data_segment(cpu: CPU, selector: int, cpl: int | None = None, vector: int = Vector.GP,
                       ext: int = 0) -> Descriptor | None:
    """The checks of SDM Vol.2 MOV for DS/ES/FS/GS; None for a null selector.

    A task switch makes the same checks with #TS instead of #GP and the new
    task's CPL (SDM Vol.3A 7.3 step 13, Table 7-1); ``vector``/``cpl`` select that.
    """
    if selector & 0xFFFC == 0:
        return None
    cpl = cpu.cpl if cpl is None else cpl
    ec = (selector & 0xFFFC) | ext
    desc = read_descriptor(cpu, selector, error_code=ec, vector=vector)
    if not desc.s or (desc.is_code and not desc.ar & AR_READABLE):
        raise CpuFault(vector, ec, detail=f"selector {selector:#x} is not a data or readable code segment")
    if not (desc.is_code and desc.ar & AR_CONFORMING):
        rpl = selector & 3
        if rpl > desc.dpl or cpl > desc.dpl:
            raise CpuFault(vector, ec, detail=f"selector {selector:#x}: RPL {rpl}/CPL {cpl} > DPL {desc.dpl}")
    if not desc.present:
        raise CpuFault(Vector.NP, ec, detail=f"segment {selector:#x} not present")
    return desc


def load_data_segment(cpu: CPU, sreg: int, selector: int) -> None:
    desc = check_data_segment(cpu, selector)
    if desc is None:
        # a null selector loads an unusable segment; using it faults (SDM Vol.3A 5.4.1)
        cpu.segs[sreg].load(selector, 0, 0, AR_UNUSABLE)
        return
    set_accessed(cpu, selector, desc)
    cpu.segs[sreg].load(selector, desc.base, desc.limit, desc.ar | 1)


def check_ss(cpu: CPU, selector: int, cpl: int, vector: int = Vector.GP, ext: int = 0) -> Descriptor:
    """The checks for loading SS at privilege ``cpl`` (SDM Vol.2 MOV).

    Stack switches through a gate or the TSS use #TS instead of #GP
    (``vector=TS``) and, while delivering an event, the EXT bit (SDM Vol.2 INT n,
    "INTER-PRIVILEGE-LEVEL-INTERRUPT": ``#TS(EXT)`` for a null SS,
    ``#TS(error_code(NewSS,0,EXT))`` otherwise); not present is #SS either way.
    """
    ec = (selector & 0xFFFC) | ext
    if selector & 0xFFFC == 0:
        raise CpuFault(vector, ext if vector != Vector.GP else 0, detail="null SS selector")
    desc = read_descriptor(cpu, selector, error_code=ec, vector=vector)
    if (selector & 3) != cpl or not desc.is_data or not desc.ar & AR_WRITABLE or desc.dpl != cpl:
        raise CpuFault(vector, ec,
                       detail=f"SS selector {selector:#x} is not a writable data segment at DPL {cpl}")
    if not desc.present:
        raise CpuFault(Vector.SS, ec, detail=f"stack segment {selector:#x} not present")
    return desc


def load_ss(cpu: CPU, selector: int, cpl: int) -> None:
    desc = check_ss(cpu, selector, cpl)
    set_accessed(cpu, selector, desc)
    cpu.segs[SS].load(selector, desc.base, desc.limit, desc.ar | 1)


def commit_ss(cpu: CPU, selector: int, desc: Descriptor) -> None:
    """Load SS from an already-checked descriptor (stack switches, far returns)."""
    set_accessed(cpu, selector, desc)
    cpu.segs[SS].load(selector, desc.base, desc.limit, desc.ar | 1)


def commit_cs(cpu: CPU, selector: int, desc: Descriptor, cpl: int) -> None:
    """Load CS from an already-checked code descriptor; its RPL becomes the CPL (SDM Vol.3A 5.8.1)."""
    set_accessed(cpu, selector, desc)
    selector = (selector & 0xFFFC) | cpl
    cpu.segs[CS].load(selector, desc.base, desc.limit, desc.ar | 1)
    cpu.cpl = cpl
    cpu.update_mode()


def check_code_target(cpu: CPU, selector: int, desc: Descriptor) -> None:
    """Direct far JMP/CALL to a code segment (SDM Vol.3A 5.8.1, Vol.2 JMP): conforming needs
    DPL <= CPL; nonconforming needs RPL <= CPL and DPL == CPL; then present (#NP)."""
    ec = selector & 0xFFFC
    if desc.ar & AR_CONFORMING:
        if desc.dpl > cpu.cpl:
            raise CpuFault(Vector.GP, ec,
                           detail=f"conforming code {selector:#x} DPL {desc.dpl} > CPL {cpu.cpl}")
    elif (selector & 3) > cpu.cpl or desc.dpl != cpu.cpl:
        raise CpuFault(Vector.GP, ec, detail=f"code segment {selector:#x}: RPL {selector & 3} / "
                                             f"DPL {desc.dpl} vs CPL {cpu.cpl}")
    if not desc.present:
        raise CpuFault(Vector.NP, ec, detail=f"code segment {selector:#x} not present")


def is_code(desc: Descriptor) -> bool:
    return desc.s and bool(desc.ar & AR_CODE)


def null_unusable_data_segments(cpu: CPU, new_cpl: int) -> None:
    """On a return to an outer level, null DS/ES/FS/GS whose DPL < new CPL unless they hold conforming
    code (SDM Vol.2 RET/IRET: "IF (SegmentSelector == NULL) OR (tempDesc(DPL) < CPL AND tempDesc(Type)
    is (data or non-conforming code)) THEN SegmentSelector := 0").  The outer ring must not keep a
    usable handle on a segment it could not load itself."""
    for sreg in DATA_SREGS:
        seg = cpu.segs[sreg]
        if seg.unusable or not seg.ar & AR_P:
            continue
        conforming_code = seg.ar & AR_CODE and seg.ar & AR_CONFORMING
        if not conforming_code and seg.dpl < new_cpl:
            seg.load(0, 0, 0, AR_UNUSABLE)


def stack_room(ar: int, limit: int, esp: int, nbytes: int) -> bool:
    """Whether ``nbytes`` can be pushed below ``esp`` on a stack segment with access rights ``ar``
    (SDM Vol.3A 5.3: expand-up offsets 0..limit; expand-down limit+1..FFFFH/FFFFFFFFH by the B flag).

    Used by gates and interrupt delivery, which check the whole frame before
    writing any of it (SDM Vol.2 CALL "IF stack does not have room ... #SS").
    """
    big = bool(ar & AR_DB)
    mask = M32 if big else 0xFFFF
    top = esp & mask
    lo_off = (top - nbytes) & mask
    hi_off = (top - 1) & mask
    if top - nbytes < 0 and top != 0:
        return False  # the frame would wrap around the bottom of the stack segment
    if ar & AR_EXPAND_DOWN:
        lo, hi = limit + 1, mask
    else:
        lo, hi = 0, limit
    return lo <= lo_off <= hi and lo <= hi_off <= hi and lo_off <= hi_off
