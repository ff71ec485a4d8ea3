"""Compare two outcomes of the same program: registers, EFLAGS, the compared pages, the fault.

EFLAGS are compared on CF PF AF ZF SF OF DF, the flags an unprivileged program
changes, minus the mask of :data:`UNDEFINED_MASKS` for flags the SDM calls
undefined *and* the hardware comparison showed to vary (see that table).  IF,
IOPL, RF and the rest are not compared: PVM shows the host's view of some of
them (kvm_target.py), and the exception-frame RF is set by delivery, not by the
instruction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from . import layout as L
from .outcome import EXIT_PAGE_ACCESS, Fault, Outcome
from .program import DF, GPR32, STATUS, Program

COMPARED_FLAGS = STATUS | DF
CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
FLAG_NAMES = ((CF, "CF"), (PF, "PF"), (AF, "AF"), (ZF, "ZF"), (SF, "SF"), (OF, "OF"), (DF, "DF"))

#: Flags the SDM calls undefined after each instruction (SDM Vol.2, "Flags Affected" of each).
#:
#: The software CPU gives them the values Intel processors produce (its CPUID says GenuineIntel).
#: On the Intel host of the development machines (Xeon, family 6 model 0x8F) the comparison found
#: every one of them to follow a fixed rule that vmxlab reproduces -- over 100,000 random programs
#: and the hand-written cases -- so *nothing* is masked there: :data:`UNDEFINED_MASKS` is empty.
#: AMD documents different values for several of them (e.g. the flags after MUL, DIV, BSF and the
#: BCD adjustments, APM Vol.3), so on a host of another vendor these flags are not compared, and a
#: program that *reads* one of them afterwards (Jcc, SETcc, ADC, ...) is not compared at all.
SDM_UNDEFINED: dict[str, int] = {
    "MUL": SF | ZF | AF | PF, "IMUL": SF | ZF | AF | PF,
    "DIV": CF | OF | SF | ZF | AF | PF, "IDIV": CF | OF | SF | ZF | AF | PF,
    "BSF": CF | OF | SF | AF | PF, "BSR": CF | OF | SF | AF | PF,
    "BT": OF | SF | AF | PF, "BTS": OF | SF | AF | PF, "BTR": OF | SF | AF | PF, "BTC": OF | SF | AF | PF,
    "SHL": OF | AF, "SAL": OF | AF, "SHR": OF | AF, "SAR": OF | AF,  # OF if count > 1, AF if count != 0
    "ROL": OF, "ROR": OF, "RCL": OF, "RCR": OF,  # OF if count > 1
    "SHLD": STATUS, "SHRD": STATUS,  # OF if count > 1, all if count > operand size
    "AAA": OF | SF | ZF | PF, "AAS": OF | SF | ZF | PF, "DAA": OF, "DAS": OF, "AAM": OF | AF | CF,
    "AAD": OF | AF | CF,
}
#: mnemonics that read a status flag (a masked, undefined flag would leak into registers or control flow)
FLAG_READERS = frozenset({
    "JO", "JNO", "JB", "JAE", "JE", "JNE", "JBE", "JA", "JS", "JNS", "JP", "JNP", "JL", "JGE", "JLE", "JG",
    "ADC", "SBB", "RCL", "RCR", "LAHF", "PUSHF", "PUSHFD", "LOOPE", "LOOPNE", "CMC", "SALC", "DAA", "DAS",
    "AAA", "AAS", "INTO", "CMPSB", "CMPSW", "CMPSD", "SCASB", "SCASW", "SCASD",  # REPE/REPNE read ZF
}) | {f"SET{cc}" for cc in ("O", "NO", "B", "AE", "E", "NE", "BE", "A", "S", "NS", "P", "NP", "L", "GE",
                              "LE", "G")} | {f"CMOV{cc}" for cc in ("O", "NO", "B", "AE", "E", "NE", "BE", "A",
                                                                   "S", "NS", "P", "NP", "L", "GE", "LE", "G")}

MODEL_VENDOR = "GenuineIntel"  # vmxlab/cpu/cpuid.py, leaf 0


@functools.cache
def host_vendor() -> str:
    """The CPU vendor of this machine (/proc/cpuinfo), whose ring-3 code the hardware targets run."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _mask_table() -> dict[str, int]:
    return {} if host_vendor() == MODEL_VENDOR else dict(SDM_UNDEFINED)


#: mnemonic -> EFLAGS bits not compared after that instruction on this host (see SDM_UNDEFINED)
UNDEFINED_MASKS: dict[str, int] = _mask_table()


def flag_names(bits: int) -> str:
    return " ".join(name for bit, name in FLAG_NAMES if bits & bit) or "-"


@dataclass(frozen=True)
class Difference:
    what: str
    expected: str  # the hardware (KVM) value
    got: str  # the software CPU's value

    def __str__(self) -> str:
        return f"{self.what}: hardware {self.expected}, vmxlab {self.got}"


def _mnemonic(code: str) -> str:
    return code.split("_")[0]


def flag_mask(program: Program) -> int | None:
    """Compared EFLAGS bits for ``program``: all status flags and DF minus the masks of its instructions
    (a masked flag stays masked even if a later instruction defines it again: simple and conservative).
    None when a masked flag may be read by a later instruction: then nothing is comparable."""
    mask = COMPARED_FLAGS
    for insn in program.insns:
        mn = _mnemonic(insn.code)
        if mask != COMPARED_FLAGS and mn in FLAG_READERS:
            return None
        mask &= ~UNDEFINED_MASKS.get(mn, 0)
    return mask


def compare(program: Program, hw: Outcome, sw: Outcome, *, supervisor_absent: bool = False,
            private: tuple[tuple[int, int], ...] = ()) -> list[Difference]:
    """Every difference between the hardware outcome ``hw`` and the software CPU's ``sw``.

    ``supervisor_absent``: the hardware target has no pages below layout.SUPERVISOR_LIMIT (the
    native32 target, where the kernel owns them): a #PF there has P = 0 instead of P = 1.  A
    target without an exit page faults where the software CPU reports EXIT_PAGE_ACCESS.
    ``private``: address ranges the hardware target uses itself; a #PF there is not comparable.
    """
    diffs: list[Difference] = []
    mask = flag_mask(program)
    if mask is None:
        return diffs
    for f in (hw.fault, sw.fault):
        if f and f.vector == 14 and f.cr2 is not None and any(lo <= f.cr2 < hi for lo, hi in private):
            return diffs
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
