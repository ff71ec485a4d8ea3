"""Compare two outcomes of the same program: registers, EFLAGS, the compared pages, the fault.

EFLAGS are compared on CF PF AF ZF SF OF DF, the flags an unprivileged program
changes, minus the mask of :data:`UNDEFINED_MASKS` for flags the SDM calls
undefined *and* the hardware comparison showed to vary (see that table).  IF,
IOPL, RF and the rest are not compared: PVM shows the host's view of some of
them (kvm_target.py), and the exception-frame RF is set by delivery, not by the
instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layout as L
from .outcome import EXIT_PAGE_ACCESS, Fault, Outcome
from .program import DF, GPR32, STATUS, Program

COMPARED_FLAGS = STATUS | DF
FLAG_NAMES = ((0x1, "CF"), (0x4, "PF"), (0x10, "AF"), (0x40, "ZF"), (0x80, "SF"), (0x800, "OF"),
              (0x400, "DF"))

#: iced code-name prefix -> EFLAGS bits not compared after that instruction, with the reason.
#: Only flags the SDM calls undefined *and* that a hardware comparison showed not to follow a
#: rule the software CPU can model belong here (DESIGN/issue 2).  Entries are vendor-specific where
#: noted: the software CPU models Intel (its CPUID says GenuineIntel).
UNDEFINED_MASKS: dict[str, tuple[int, str]] = {}


def flag_names(bits: int) -> str:
    return " ".join(name for bit, name in FLAG_NAMES if bits & bit) or "-"


@dataclass(frozen=True)
class Difference:
    what: str
    expected: str  # the hardware (KVM) value
    got: str  # the software CPU's value

    def __str__(self) -> str:
        return f"{self.what}: hardware {self.expected}, vmxlab {self.got}"


def flag_mask(program: Program) -> int:
    """Compared EFLAGS bits for ``program``: all status flags and DF minus the masks of its instructions
    (a masked flag stays masked even if a later instruction defines it again: simple and conservative)."""
    mask = COMPARED_FLAGS
    for insn in program.insns:
        for prefix, (bits, _why) in UNDEFINED_MASKS.items():
            if insn.code.startswith(prefix):
                mask &= ~bits
    return mask


def compare(program: Program, hw: Outcome, sw: Outcome, *,
            supervisor_absent: bool = False) -> list[Difference]:
    """Every difference between the hardware outcome ``hw`` and the software CPU's ``sw``.

    ``supervisor_absent``: the hardware target has no pages below layout.SUPERVISOR_LIMIT (the
    native32 target, where the kernel owns them): a #PF there has P = 0 instead of P = 1.  A
    target without an exit page faults where the software CPU reports EXIT_PAGE_ACCESS.
    """
    diffs: list[Difference] = []
    if hw.fault and hw.fault.vector == 14 and hw.fault.cr2 is not None and sw.error == EXIT_PAGE_ACCESS \
            and hw.fault.cr2 & ~(L.PAGE - 1) == L.EXIT_PAGE:
        return diffs  # both touched the exit page: nothing comparable
    if hw.error or sw.error:
        if hw.error != sw.error:
            diffs.append(Difference("run", hw.error or "ok", sw.error or "ok"))
        return diffs
    hf, sf = hw.fault, sw.fault
    if (hf is None) != (sf is None) or (hf and sf and (hf.vector, hf.index) != (sf.vector, sf.index)):
        diffs.append(Difference("end", str(hf) if hf else "ran to the end",
                                str(sf) if sf else "ran to the end"))
        return diffs  # registers are not comparable at different points
    if hf and sf:
        if supervisor_absent and hf.vector == 14 and hf.cr2 is not None and hf.cr2 < L.SUPERVISOR_LIMIT \
                and hf.error_code is not None and sf.error_code is not None:
            hf = Fault(hf.vector, hf.error_code | (sf.error_code & 1), hf.index, hf.cr2)
        if hf.error_code != sf.error_code:
            diffs.append(Difference("error code", f"{hf.error_code}", f"{sf.error_code}"))
        if hf.cr2 != sf.cr2:
            diffs.append(Difference("CR2", f"{hf.cr2:#x}", f"{sf.cr2:#x}"))
    for name, a, b in zip(GPR32, hw.regs, sw.regs):
        if a != b:
            diffs.append(Difference(name, f"{a:#010x}", f"{b:#010x}"))
    mask = flag_mask(program)
    if (hw.eflags ^ sw.eflags) & mask:
        diffs.append(Difference("eflags", f"{hw.eflags & mask:#x} ({flag_names(hw.eflags & mask)})",
                                f"{sw.eflags & mask:#x} ({flag_names(sw.eflags & mask)}); "
                                f"differ in {flag_names((hw.eflags ^ sw.eflags) & mask)}"))
    for page in L.COMPARED:
        a, b = hw.pages.get(page, b""), sw.pages.get(page, b"")
        if a != b:
            first = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
            diffs.append(Difference(f"memory {page + first:#x}", a[first : first + 8].hex(),
                                    b[first : first + 8].hex()))
    return diffs


def report(program: Program, hw: Outcome, sw: Outcome, diffs: list[Difference]) -> str:
    lines = [program.describe(), f"  hardware: {hw.describe()}", f"  vmxlab:   {sw.describe()}"]
    lines += [f"  - {d}" for d in diffs]
    return "\n".join(lines)
