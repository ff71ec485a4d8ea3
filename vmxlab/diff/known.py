"""Divergences between the software CPU and the hardware that are understood and reported to the
owner of the code concerned, but not fixed yet.

Each entry recognises one divergence from the two outcomes, so the differential
test can count it and print it in its summary instead of failing on it, while
any *other* difference still fails the test.  ``VMXLAB_DIFF_STRICT=1`` turns
known divergences into failures too.  Remove an entry when the fix lands: the
test then proves the fix on hardware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .compare import Difference
from .outcome import Outcome
from .program import Insn, Program

#: read-modify-write instructions whose load vmxlab still does with read intent (the generic
#: operands.rmw path does it with write intent since the hardware comparison found it)
RMW_READ_INTENT = ("BTS", "BTR", "BTC", "CMPXCHG8B")


def _mnemonic(insn: Insn) -> str:
    return insn.code.split("_")[0]


def _insn_at(program: Program, index: int) -> Insn | None:
    return program.insns[index] if 0 <= index < len(program.insns) else None


def _rmw_pf_write_bit(program: Program, hw: Outcome, sw: Outcome, diffs: list[Difference]) -> bool:
    """CMPXCHG8B m64, and BTS/BTR/BTC with a memory bit base and a register bit offset, fault on
    their load: hardware sets W (bit 1) in the #PF error code -- the load is done with write intent
    (CMPXCHG8B always writes, SDM Vol.2 CMPXCHG8B), so a read-only page faults at once -- where
    vmxlab reports a read (bits.py h_string and datamove.py CMPXCHG8B use lread, not lread_rmw).  For
    an access that straddles a read-only and a not-present page vmxlab then faults on the second page."""
    if not (hw.fault and sw.fault and hw.fault.vector == sw.fault.vector == 14):
        return False
    if hw.fault.index != sw.fault.index:
        return False
    if not {d.what for d in diffs} <= {"error code", "CR2"}:
        return False
    hec, sec = hw.fault.error_code or 0, sw.fault.error_code or 0
    insn = _insn_at(program, hw.fault.index)
    return insn is not None and _mnemonic(insn) in RMW_READ_INTENT and bool(hec & 2) and not sec & 2


def _cmps_access_order(program: Program, hw: Outcome, sw: Outcome, diffs: list[Difference]) -> bool:
    """CMPS faults on both operands: hardware reports ES:EDI (it loads the destination operand first, as
    QEMU's gen_cmps does), vmxlab reports DS:ESI (a #PF, or the #GP of a DS:ESI access across 4 GiB)."""
    hf, sf = hw.fault, sw.fault
    if not (hf and sf and hf.vector == 14 and hf.index == sf.index and hf.cr2 is not None):
        return False
    insn = _insn_at(program, hf.index)
    if insn is None or not _mnemonic(insn).startswith("CMPS") or abs(hf.cr2 - hw.regs[7]) >= 4:
        return False
    if sf.vector == 14:
        return sf.cr2 is not None and abs(sf.cr2 - hw.regs[6]) < 4
    return sf.vector in (12, 13) and hw.regs[6] >= 0xFFFFFFF9


def _straddles_4g(program: Program, hw: Outcome, sw: Outcome, diffs: list[Difference]) -> bool:
    """An access that straddles the 4 GiB boundary (a dword at 0xFFFFFFFF) through a flat segment with
    limit 0xFFFFFFFF: vmxlab raises #GP(0) (#SS(0) for SS) by the limit rule of SDM Vol.3A 5.3 ("a doubleword at an
    offset greater than the effective limit - 3"), but the hardware does not check it -- in real 32-bit
    code (the native32 target, compatibility mode) the access goes ahead and faults #PF on its first
    byte (Bochs skips limit checks for 4-GiB segments for the same reason)."""
    f = hw.fault if hw.fault and hw.fault.vector == 14 else None
    return f is not None and f.cr2 is not None and f.cr2 >= 0xFFFFFFF9 and bool(sw.fault) and \
        sw.fault.vector in (12, 13)  # type: ignore[union-attr]  # #SS through SS (EBP/ESP bases), else #GP


@dataclass(frozen=True)
class Known:
    key: str
    owner: str  # the module that has to change
    description: str
    matches: Callable[[Program, Outcome, Outcome, list[Difference]], bool]


KNOWN: tuple[Known, ...] = (
    Known("rmw-pf-write-bit", "vmxlab/cpu/ops/bits.py (BTS/BTR/BTC h_string), datamove.py (CMPXCHG8B)",
          _rmw_pf_write_bit.__doc__ or "",
          _rmw_pf_write_bit),
    Known("straddles-4g", "vmxlab/cpu/core.py (segment limit check)", _straddles_4g.__doc__ or "",
          _straddles_4g),
    Known("cmps-access-order", "vmxlab/cpu/ops/string.py", _cmps_access_order.__doc__ or "",
          _cmps_access_order),
)


def classify(program: Program, hw: Outcome, sw: Outcome, diffs: list[Difference]) -> Known | None:
    """The known divergence these differences are, or None for a new one."""
    for k in KNOWN:
        if k.matches(program, hw, sw, diffs):
            return k
    return None
