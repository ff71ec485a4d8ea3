"""Drive guests/kernel/pmkit.inc from Python: descriptors, cases, one guest per batch, parsed reports.

A :class:`Case` is one instruction under test at a CPL/IOPL, with the descriptors it needs written
into the GDT/LDT test slots; :func:`run_cases` assembles a guest that runs many cases in a row and
returns one outcome string per case.  The guest is an ordinary flat real-mode image, so the same
source also runs on Bochs or QEMU (that is how the expected outcomes of the conformance table were
cross-checked; see docs/protection.md).

Outcome strings (what tables write and tests compare):

* ``ok`` -- no fault; ``ok zf=1`` etc. when the case asks for flags, ``ok eax=...`` for registers
* ``#GP(0x68)`` -- a fault with its error code, saved EIP = the instruction under test
* ``#BP@+1`` -- an exception without error code whose saved EIP is 1 byte after it (a trap)
* ``#PF(0x7) cr2=0x300000`` -- a page fault shows CR2
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vmxlab.cpu.faults import Vector
from vmxlab.machine.machine import StopReason
from vmxlab.runner import RunOptions, run_image

KIT = Path(__file__).resolve().parent.parent / "guests" / "kernel" / "pmkit.inc"
LOAD = 0xD0000
ENTRY = "real:0xd000:0"

# fixed selectors of the bench (pmkit.inc)
SEL_CODE = {0: 0x08, 1: 0x19, 2: 0x2A, 3: 0x3B}
SEL_DATA = {0: 0x10, 1: 0x21, 2: 0x32, 3: 0x43}
SEL_TSS, SEL_LDT, SEL_TSS_B, SEL_CODE16 = 0x48, 0x50, 0x58, 0x60
T0, T1, T2, T3 = 0x68, 0x70, 0x78, 0x80  # GDT test slots
L0, L1 = 0x04, 0x0C  # LDT test slots (TI = 1)

ZF = 1 << 6
IF_ = 1 << 9


# ---------------------------------------------------------------- descriptors (SDM Vol.3A 3.4.5, 5.8.3)


def descriptor(base: int, limit: int, ar: int) -> int:
    """An 8-byte descriptor from base, 20-bit limit and access rights (type|S|DPL|P, flags in 15:12)."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (ar & 0xF0FF) << 40 | (limit & 0xF0000) << 32
            | (base & 0xFF000000) << 32)


def data(dpl: int = 0, *, present: bool = True, writable: bool = True, expand_down: bool = False,
         limit: int = 0xFFFFF, base: int = 0, gran: bool = True, big: bool = True) -> int:
    ar = 0x11 | (0x2 if writable else 0) | (0x4 if expand_down else 0) | dpl << 5 | (0x80 if present else 0)
    ar |= (0x8000 if gran else 0) | (0x4000 if big else 0)
    return descriptor(base, limit, ar)


def code(dpl: int = 0, *, present: bool = True, readable: bool = True, conforming: bool = False,
         limit: int = 0xFFFFF, base: int = 0, big: bool = True) -> int:
    ar = 0x19 | (0x2 if readable else 0) | (0x4 if conforming else 0) | dpl << 5 | (0x80 if present else 0)
    ar |= 0x8000 | (0x4000 if big else 0)
    return descriptor(base, limit, ar)


def system(type_: int, dpl: int = 0, *, present: bool = True, base: int = 0, limit: int = 0x67) -> int:
    """A system descriptor (TSS, LDT; SDM Vol.3A Table 3-2) with a byte-granular limit."""
    return descriptor(base, limit, type_ | dpl << 5 | (0x80 if present else 0))


def gate(type_: int, selector: int, offset: int = 0, dpl: int = 0, *, present: bool = True,
         params: int = 0) -> int:
    """A call/interrupt/trap/task gate (SDM Vol.3A Figure 5-8, Figure 6-2)."""
    ar = type_ | dpl << 5 | (0x80 if present else 0)
    return ((offset & 0xFFFF) | selector << 16 | params << 32 | ar << 40 | (offset & 0xFFFF0000) << 32)


def named(name: str) -> int | str:
    """Descriptors of the [[case]] rows: "data3", "code0-np", "data3-limit-0xfff-bytes", ...; anything
    with a parenthesis is a NASM expression (GATE(...) with a label address)."""
    if "(" in name:
        return name
    parts = name.split("-")
    head, mods = parts[0], parts[1:]
    present = "np" not in mods
    limit = None
    if "limit" in mods:
        limit = int(mods[mods.index("limit") + 1], 16)
    if head in ("ldt", "tss"):
        return system(0x2 if head == "ldt" else 0x9, 0, present=present)
    dpl = int(head[-1])
    if head.startswith("code"):
        return code(dpl, present=present, readable="execute" not in mods)
    kw: dict = dict(present=present, writable="ro" not in mods, expand_down="expand" in mods,
                    big="small" not in mods)
    if limit is not None:
        kw.update(limit=limit, gran=False)
    return data(dpl, **kw)


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """One instruction under test.

    ``body`` runs at ``cpl`` before the instruction (prepare registers); ``insn`` is the
    instruction under test (may be several lines: only the first is "the" instruction for the
    saved-EIP offset); ``setup`` runs at CPL 0 first.  ``gdt``/``ldt`` map selectors to
    descriptors (ints, or NASM expressions such as ``"GATE(...)"``).  ``report`` picks what an
    ``ok`` outcome shows: "" (nothing), "zf", "eax", "eax zf", "if iopl", ...
    """

    insn: str
    cpl: int = 3
    iopl: int = 0
    body: str = ""
    setup: str = ""
    gdt: dict[int, int | str] = field(default_factory=dict)
    ldt: dict[int, int | str] = field(default_factory=dict)
    report: str = ""
    cr4: int = 0
    name: str = ""

    def asm(self, n: int) -> str:
        lines = [f"case_{n}:", f"        CASE_INSN c{n}_insn"]
        for table, entries in (("SET_GDT", self.gdt), ("SET_LDT", self.ldt)):
            for sel, d in entries.items():
                if isinstance(d, str):
                    d = named(d)  # a descriptor name, or a NASM expression (label addresses)
                value = f"{d:#x}" if isinstance(d, int) else d
                lines.append(f"        {table} {sel:#x}, {{{value}}}")
        if self.cr4:
            lines += ["        mov eax, cr4", f"        or eax, {self.cr4:#x}", "        mov cr4, eax"]
        lines += _indent(self.setup)
        lines.append(f"        ENTER {self.cpl}, {self.iopl}, c{n}_body")
        lines.append(f"c{n}_body:")
        lines += _indent(self.body)
        lines.append(f"c{n}_insn:")
        lines += _indent(self.insn)
        lines.append(f"c{n}_next:")
        lines.append("        int 0x30")
        return "\n".join(lines).replace("{n}", str(n)).replace("{next}", f"c{n}_next")


def _indent(text: str) -> list[str]:
    out = []
    for line in text.strip("\n").splitlines():
        line = line.strip()
        if not line:
            continue
        out.append(line if line.endswith(":") and " " not in line else "        " + line)
    return out


def source(cases: list[Case], *, paging: bool = False, cr4: int = 0, extra: str = "") -> str:
    """The NASM source of one guest running ``cases`` in order."""
    parts = [f"%define TEST_PAGING {int(paging)}", f"%define TEST_CR4 {cr4:#x}", f'%include "{KIT}"', ""]
    parts.append("cases:  dd " + ", ".join(f"case_{i}" for i in range(len(cases))))
    parts.append(f"NCASES equ {len(cases)}")
    parts += [c.asm(i) for i, c in enumerate(cases)]
    parts.append(extra)
    return "\n".join(parts) + "\n"


_TMP = Path(tempfile.gettempdir()) / "vmxlab-pmkit"


def write_source(src: str) -> Path:
    _TMP.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(src.encode() + KIT.read_bytes()).hexdigest()[:16]
    path = _TMP / f"pmkit-{key}.asm"
    if not path.exists():
        path.write_text(src)
    return path


def run_source(src: str, engine: str = "fast", max_instructions: int = 5_000_000) -> tuple[str, object]:
    """Run a generated guest on vmxlab; return its console text and the run result."""
    opts = RunOptions(image=write_source(src), format="flat", load=LOAD, entry=ENTRY, mem_mib=16,
                      max_instructions=max_instructions, engine=engine, echo=False)
    result = run_image(opts)
    return result.console.decode("ascii", "replace"), result


def run_cases(cases: list[Case], engine: str = "fast", *, paging: bool = False, cr4: int = 0,
              extra: str = "") -> list[str]:
    """Run ``cases`` in one guest; return one outcome string per case (see module docstring)."""
    text, result = run_source(source(cases, paging=paging, cr4=cr4, extra=extra), engine)
    lines = [ln for ln in text.splitlines() if ln[:2] in ("X ", "N ")]
    outcomes = [outcome(ln, c) for ln, c in zip(lines, cases)]
    if len(outcomes) < len(cases):
        stop = result.stop  # type: ignore[attr-defined]
        why = f"guest stopped after {len(outcomes)} of {len(cases)} cases: {stop.reason.value} {stop.detail}"
        outcomes += [f"<no report: {why}>"] * (len(cases) - len(outcomes))
    elif result.stop.reason != StopReason.SHUTDOWN_REQUEST:  # type: ignore[attr-defined]
        outcomes.append(f"<unexpected stop {result.stop.reason.value}>")  # type: ignore[attr-defined]
    return outcomes


def outcome(line: str, case: Case) -> str:
    """Normalise one report line into the table's outcome notation."""
    f = line.split()
    if f[0] == "X":
        vector = int(f[1], 16)
        name = "#" + Vector(vector).name if vector in Vector._value2member_map_ else f"#{vector}"
        text = name if f[2] == "--------" else f"{name}({int(f[2], 16):#x})"
        off = int(f[3], 16)
        if off:
            text += f"@{'+' if off < 0x80000000 else '-'}{off if off < 0x80000000 else 0x100000000 - off}"
        if vector == Vector.PF and len(f) > 5:
            text += f" cr2={int(f[5], 16):#x}"
        return text
    eax, ebx, ecx, edx, flags = (int(x, 16) for x in f[1:6])
    shown = []
    for item in case.report.split():
        if item == "zf":
            shown.append(f"zf={int(bool(flags & ZF))}")
        elif item == "if":
            shown.append(f"if={int(bool(flags & IF_))}")
        elif item == "iopl":
            shown.append(f"iopl={(flags >> 12) & 3}")
        elif item in ("eax", "ebx", "ecx", "edx"):
            shown.append(f"{item}={dict(eax=eax, ebx=ebx, ecx=ecx, edx=edx)[item]:#x}")
        elif item in ("ax", "bx", "cx", "dx"):
            v = dict(ax=eax, bx=ebx, cx=ecx, dx=edx)[item] & 0xFFFF
            shown.append(f"{item}={v:#x}")
    return " ".join(["ok", *shown])


@dataclass
class Check:
    """A named case with its expected outcome and the SDM passage it comes from."""

    name: str
    case: Case
    expect: str
    sdm: str
    reference: bool = True  # False: Bochs/QEMU cannot confirm it (feature missing from their models)

    @property
    def id(self) -> str:
        return self.name


_CHECK_RESULTS: dict[tuple[int, str], dict[str, str]] = {}


def check_results(checks: list[Check], engine: str, *, paging: bool = False, batch: int = 40,
                  extra: str = "") -> dict[str, str]:
    """Outcomes of ``checks`` by name, run in batches and cached per (list, engine)."""
    key = (id(checks), engine)
    if key not in _CHECK_RESULTS:
        out: dict[str, str] = {}
        for i in range(0, len(checks), batch):
            chunk = checks[i:i + batch]
            got_all = run_cases([c.case for c in chunk], engine, paging=paging, extra=extra)
            for chk, got in zip(chunk, got_all):
                out[chk.name] = got
        _CHECK_RESULTS[key] = out
    return _CHECK_RESULTS[key]
