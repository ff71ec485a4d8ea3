"""Segment-register loads with the protection checks of SDM Vol.3A chapter 5 and Vol.2 MOV/POP.

Every check raises before any state changes; the error code of a selector
fault is the selector with RPL cleared (SDM Vol.3A 6.13, error-code format).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .descriptors import Descriptor, read_descriptor, set_accessed
from .faults import CpuFault, Vector
from .state import AR_CODE, AR_CONFORMING, AR_P, AR_READABLE, AR_UNUSABLE, AR_WRITABLE, CS, SS

if TYPE_CHECKING:
    from .core import CPU


def load_segment(cpu: CPU, sreg: int, selector: int) -> None:
    """MOV/POP/LDS.. to a data segment register or SS, in the current mode."""
    selector &= 0xFFFF
    if not cpu.pe:
        cpu.load_real_segment(sreg, selector)
    elif sreg == SS:
        load_ss(cpu, selector, cpu.cpl)
    else:
        load_data_segment(cpu, sreg, selector)
    if sreg in (0, 2, 3):  # ES, SS, DS take part in the mode key's "flat" bit
        cpu.update_mode()


def check_data_segment(cpu: CPU, selector: int) -> Descriptor | None:
    """The checks of SDM Vol.2 MOV for DS/ES/FS/GS; None for a null selector."""
    if selector & 0xFFFC == 0:
        return None
    desc = read_descriptor(cpu, selector)
    ec = selector & 0xFFFC
    if not desc.s or (desc.is_code and not desc.ar & AR_READABLE):
        raise CpuFault(Vector.GP, ec, detail=f"selector {selector:#x} is not a data or readable code segment")
    if not (desc.is_code and desc.ar & AR_CONFORMING):
        rpl = selector & 3
        if rpl > desc.dpl or cpu.cpl > desc.dpl:
            raise CpuFault(Vector.GP, ec, detail=f"selector {selector:#x}: RPL {rpl}/CPL {cpu.cpl} > DPL {desc.dpl}")
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


def check_ss(cpu: CPU, selector: int, cpl: int, vector: int = Vector.GP) -> Descriptor:
    """The checks for loading SS at privilege ``cpl`` (SDM Vol.2 MOV; #TS instead of #GP for stack
    switches, where ``vector`` is TS and the not-present fault is #SS as well)."""
    ec = selector & 0xFFFC
    if ec == 0:
        raise CpuFault(vector, 0, detail="null SS selector")
    desc = read_descriptor(cpu, selector, vector=vector)
    if (selector & 3) != cpl or not desc.is_data or not desc.ar & AR_WRITABLE or desc.dpl != cpl:
        raise CpuFault(vector, ec, detail=f"SS selector {selector:#x} is not a writable data segment at DPL {cpl}")
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
            raise CpuFault(Vector.GP, ec, detail=f"conforming code {selector:#x} DPL {desc.dpl} > CPL {cpu.cpl}")
    elif (selector & 3) > cpu.cpl or desc.dpl != cpu.cpl:
        raise CpuFault(Vector.GP, ec,
                       detail=f"code segment {selector:#x}: RPL {selector & 3} / DPL {desc.dpl} vs CPL {cpu.cpl}")
    if not desc.present:
        raise CpuFault(Vector.NP, ec, detail=f"code segment {selector:#x} not present")


def is_code(desc: Descriptor) -> bool:
    return desc.s and bool(desc.ar & AR_CODE)


def null_unusable_data_segments(cpu: CPU, new_cpl: int) -> None:
    """On a return to an outer level, null DS/ES/FS/GS whose DPL < new CPL unless they hold conforming
    code (SDM Vol.2 RET/IRET: "segment registers ... are invalid ... loaded with null selector")."""
    for sreg in (0, 3, 4, 5):
        seg = cpu.segs[sreg]
        if seg.unusable or not seg.ar & AR_P:
            continue
        conforming_code = seg.ar & AR_CODE and seg.ar & AR_CONFORMING
        if not conforming_code and seg.dpl < new_cpl:
            seg.load(0, 0, 0, AR_UNUSABLE)
