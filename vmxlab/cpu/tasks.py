"""The task-state segment: inner-ring stacks and the I/O permission bitmap (SDM Vol.3A chapter 7).

Hardware task switching (task gates, JMP/CALL to a TSS, IRET with NT) is
handled in :func:`task_gate_event` / :func:`task_switch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .descriptors import SYS_TSS16_BUSY, SYS_TSS32_BUSY, Descriptor
from .faults import CpuFault, Vector

if TYPE_CHECKING:
    from .core import CPU


def stack_for_privilege(cpu: CPU, cpl: int, ext: int = 0) -> tuple[int, int]:
    """SSn:ESPn from the current TSS (SDM Vol.3A 7.2.1 Figure 7-2; 16-bit TSS: Figure 7-11).

    Reading beyond the TSS limit is #TS(TSS selector) (SDM Vol.3A 6.12.1, "stack switch").
    """
    tr = cpu.tr
    ec = (tr.selector & 0xFFFC) | ext
    if tr.unusable:
        raise CpuFault(Vector.TS, ec, detail="no TSS loaded for the stack switch")
    tss32 = (tr.ar & 0xF) in (0x9, SYS_TSS32_BUSY)
    if tss32:
        off = 4 + cpl * 8
        if off + 7 > tr.limit:
            raise CpuFault(Vector.TS, ec, detail=f"TSS limit {tr.limit:#x} too small for SS{cpl}:ESP{cpl}")
        esp = cpu.lread(tr.base + off, 4, user=False)
        ss = cpu.lread(tr.base + off + 4, 2, user=False)
    else:
        off = 2 + cpl * 4
        if off + 3 > tr.limit:
            raise CpuFault(Vector.TS, ec, detail=f"TSS limit {tr.limit:#x} too small for SS{cpl}:SP{cpl}")
        esp = cpu.lread(tr.base + off, 2, user=False)
        ss = cpu.lread(tr.base + off + 2, 2, user=False)
    return ss, esp


def task_gate_event(cpu: CPU, gate: Descriptor, vector: int, error_code: int | None, kind: int,
                    return_eip: int) -> None:
    """An interrupt or exception through a task gate.  Hardware task switching is documented as not
    modelled yet: #GP with the gate's IDT error code, so guests see an architectural fault."""
    raise CpuFault(Vector.GP, vector * 8 + 2, detail="task gate in IDT: hardware task switching not modelled")


def task_switch_far(cpu: CPU, selector: int, desc: Descriptor, source: str, next_ip: int) -> None:
    """JMP/CALL to a TSS or task gate.  Not modelled yet: #GP(selector) (documented in the README)."""
    raise CpuFault(Vector.GP, selector & 0xFFFC, detail=f"{source} to a task: hardware task switching not modelled")


def task_return(cpu: CPU) -> None:
    """IRET with EFLAGS.NT = 1 (return to the previous task).  Not modelled yet: #GP(0)."""
    raise CpuFault(Vector.GP, 0, detail="IRET with NT=1: hardware task switching not modelled")
