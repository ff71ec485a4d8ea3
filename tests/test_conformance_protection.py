"""Table-driven protection conformance: instruction x CPL x IOPL x descriptor -> outcome.

The table is tests/conformance/protection.toml.  Each family there names a rule below; a rule is
the SDM pseudocode of the instruction restated in a few lines (written from the manual, not from
vmxlab's implementation), and gives the expected outcome of every combination of the family's
axes.  All cases run on the pmkit bench (guests/kernel/pmkit.inc), many per guest, under both
engines.  The same generated guests were run on Bochs 2.7 and QEMU-TCG (docs/protection.md,
"Cross-checking"): rows marked ``reference = false`` are the ones those CPU models cannot confirm.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from protkit import SEL_CODE, SEL_DATA, T0, T1, Case, code, data, gate, named, run_cases, system

TABLE = Path(__file__).resolve().parent / "conformance" / "protection.toml"
BATCH = 48


# ---------------------------------------------------------------- descriptors by name


def kind_desc(kind: str, dpl: int, present: bool = True) -> int | None:
    """The test descriptor of a family's ``kind`` axis."""
    if kind == "null":
        return None
    if kind.startswith("data"):
        return data(dpl, present=present, writable=kind != "data-ro")
    if kind.startswith("code"):
        return code(dpl, present=present, readable="x" not in kind[5:], conforming=kind.endswith("c"))
    if kind == "callgate":
        return gate(0xC, SEL_CODE[0], 0, dpl, present=present)
    sys_type = {"ldt": 0x2, "tss": 0x9}.get(kind)
    if sys_type is None:
        sys_type = int(kind[3:], 16)  # "sys5" -> type 5
    return system(sys_type, dpl, present=present)


def system_type(kind: str) -> int | None:
    if kind in ("ldt", "tss", "callgate"):
        return {"ldt": 0x2, "tss": 0x9, "callgate": 0xC}[kind]
    if kind.startswith("sys"):
        return int(kind[3:], 16)
    return None


# ---------------------------------------------------------------- the rules (SDM Vol.2 pseudocode)


def gp(ec: int) -> str:
    return f"#GP({ec:#x})"


def rule_data_segment_load(p: dict) -> str:
    """SDM Vol.2 MOV: IF segment is not a data or readable code segment or ((data or nonconforming
    code) and ((RPL > DPL) or (CPL > DPL))) THEN #GP(selector); IF not present THEN #NP(selector)."""
    kind = p["kind"]
    if kind not in ("data", "data-ro", "code-r", "code-rc"):
        return gp(T0)
    if kind != "code-rc" and (p["rpl"] > p["dpl"] or p["cpl"] > p["dpl"]):
        return gp(T0)
    if not p["present"]:
        return f"#NP({T0:#x})"
    return "ok"


def rule_stack_segment_load(p: dict) -> str:
    """SDM Vol.2 MOV: SS: IF RPL != CPL or not a writable data segment or DPL != CPL THEN
    #GP(selector); IF not present THEN #SS(selector)."""
    if p["rpl"] != p["cpl"] or p["kind"] != "data" or p["dpl"] != p["cpl"]:
        return gp(T0)
    if not p["present"]:
        return f"#SS({T0:#x})"
    return "ok"


def rule_far_to_code(p: dict) -> str:
    """SDM Vol.2 JMP/CALL to a code segment: data -> #GP(sel); conforming: DPL > CPL -> #GP(sel);
    non-conforming: RPL > CPL or DPL != CPL -> #GP(sel); not present -> #NP(sel); CS.RPL := CPL."""
    kind, cpl, dpl = p["kind"], p["cpl"], p["dpl"]
    if kind == "data":
        return gp(T0)
    if kind == "code-rc" and dpl > cpl or kind == "code-r" and (p["rpl"] > cpl or dpl != cpl):
        return gp(T0)
    if not p["present"]:
        return f"#NP({T0:#x})"
    return f"ok eax={T0 | cpl:#x}"


def rule_call_gate(p: dict) -> str:
    """SDM Vol.2 CALL/JMP "CALL-GATE" (the gate in T0, its code segment in T1)."""
    cpl, dpl, conf = p["cpl"], p["dpl"], p["conforming"]
    is_call = p["insn"].startswith("call")
    if p["gate_dpl"] < cpl or p["gate_dpl"] < p["rpl"]:
        return gp(T0)
    if dpl > cpl:
        return gp(T1)
    if not is_call and not conf and dpl != cpl:
        return gp(T1)
    new_cpl = dpl if is_call and not conf and dpl < cpl else cpl
    return f"ok eax={T1 | new_cpl:#x} ebx={SEL_DATA[new_cpl]:#x}"


def rule_int_gate(p: dict) -> str:
    """SDM Vol.2 INT n: not an interrupt/trap/task gate -> #GP(vector*8+2); gate DPL < CPL ->
    #GP(vector*8+2); not present -> #NP(vector*8+2); else the handler runs at CPL 0 with the
    saved EIP after INT n (2 bytes)."""
    ec = 0x21 * 8 + 2
    if p["kind"] not in ("int32", "trap32") or p["gate_dpl"] < p["cpl"]:
        return gp(ec)
    if not p["present"]:
        return f"#NP({ec:#x})"
    return f"ok eax=0x8 ebx=0x2 ecx={SEL_CODE[p['cpl']]:#x}"


def rule_cpl0_only(p: dict) -> str:
    """SDM Vol.3A 5.9: #GP(0) unless CPL = 0."""
    return gp(0) if p["cpl"] > 0 else "ok"


def rule_always_ok(p: dict) -> str:
    return "ok"


def rule_rdpmc(p: dict) -> str:
    """SDM Vol.2 RDPMC: IF (CR4.PCE = 1) or (CPL = 0) THEN ... ELSE #GP(0)."""
    return "ok" if p["pce"] or p["cpl"] == 0 else gp(0)


def rule_rdtsc(p: dict) -> str:
    """SDM Vol.2 RDTSC: IF (CR4.TSD = 0) or (CPL = 0) THEN ... ELSE #GP(0)."""
    return "ok" if not p["tsd"] or p["cpl"] == 0 else gp(0)


def rule_iopl(p: dict) -> str:
    """SDM Vol.2 CLI/STI: IF CPL <= IOPL THEN ... ELSE #GP(0)."""
    return "ok" if p["cpl"] <= p["iopl"] else gp(0)


IO_BITMAP = {"allow": 0x00, "deny": 0xFF, "allow-first-byte-only": 0xFE}


def rule_io(p: dict) -> str:
    """SDM Vol.1 19.5.2: IF CPL > IOPL, every bit of the I/O bitmap for the bytes accessed must be 0."""
    if p["cpl"] <= p["iopl"]:
        return "ok"
    size = 2 if "ax" in p["insn"] else 1
    allowed = ~IO_BITMAP[p["bitmap"]] & 0xFF
    return "ok" if all(allowed >> i & 1 for i in range(size)) else gp(0)


def rule_popf(p: dict) -> str:
    """SDM Vol.2 POPF/IRET: IOPL loads only at CPL 0, IF only when CPL <= IOPL; no fault."""
    cpl, iopl = p["cpl"], p["iopl"]
    new_iopl = iopl ^ 3 if cpl == 0 else iopl
    new_if = 1 if cpl <= iopl else 0
    return f"ok if={new_if} iopl={new_iopl}"


LAR_TYPES = {0x1, 0x2, 0x3, 0x4, 0x5, 0x9, 0xB, 0xC}  # SDM Vol.2 LAR, valid system types
LSL_TYPES = {0x1, 0x2, 0x3, 0x9, 0xB}  # SDM Vol.2 LSL
MARK = 0x12345678


def _visible(p: dict) -> bool:
    """LAR/LSL/VERR/VERW: DPL >= CPL and DPL >= RPL, not checked for conforming code."""
    return p["kind"] in ("code-rc", "code-xc") or (p["dpl"] >= p["cpl"] and p["dpl"] >= p["rpl"])


def rule_lar(p: dict) -> str:
    """SDM Vol.2 LAR (reported value masked with 00F0FF00H: the x nibble is undefined)."""
    st = system_type(p["kind"])
    ok = p["kind"] != "null" and (st is None or st in LAR_TYPES) and _visible(p)
    if ok:
        value = (kind_desc(p["kind"], p["dpl"]) >> 32) & 0x00F0FF00  # type: ignore[operator]
    else:
        value = MARK & 0x00F0FF00
    return f"ok zf={int(ok)} eax={value:#x}"


def rule_lsl(p: dict) -> str:
    """SDM Vol.2 LSL: the byte-granular limit (G = 1: limit << 12 | FFFH)."""
    st = system_type(p["kind"])
    ok = p["kind"] != "null" and (st is None or st in LSL_TYPES) and _visible(p)
    value = (0xFFFFFFFF if st is None else 0x67) if ok else MARK
    return f"ok zf={int(ok)} eax={value:#x}"


def rule_verr_verw(p: dict) -> str:
    """SDM Vol.2 VERR/VERW."""
    kind = p["kind"]
    if kind in ("null", "tss"):
        return "ok zf=0"
    if p["insn"].startswith("verw"):
        ok = kind == "data" and _visible(p)
    else:
        ok = kind not in ("code-x", "code-xc") and _visible(p)
    return f"ok zf={int(ok)}"


def rule_arpl(p: dict) -> str:
    """SDM Vol.2 ARPL."""
    dest, src = p["dest_rpl"], p["src_rpl"]
    if dest < src:
        return f"ok zf=1 eax={0x12340068 | src:#x}"
    return f"ok zf=0 eax={0x12340068 | dest:#x}"


RULES = {name[5:]: fn for name, fn in globals().items() if name.startswith("rule_")}


# ---------------------------------------------------------------- expanding the table


@dataclass
class Row:
    id: str
    case: Case
    expect: str
    sdm: str
    reference: bool


def _subst(text: str, p: dict) -> str:
    for key in ("sel", "dest_rpl", "src_rpl"):
        if key in p:
            text = text.replace("{" + key + "}", f"{p[key]:#x}")
    return text


def _family_case(fam: dict, p: dict) -> Case:
    gdt: dict = {}
    sel = T0 | p.get("rpl", 0)
    kind = p.get("kind")
    name = fam["name"]
    setup = fam.get("setup", "")
    cr4 = 0
    if name == "call-gate":
        gdt[T0] = f"GATE({T1}, A(far_target), {0x8C | p['gate_dpl'] << 5}, 0)"
        gdt[T1] = code(p["dpl"], conforming=p["conforming"])
    elif name == "int-n-gate":
        ar = {"int32": 0x0E, "trap32": 0x0F, "callgate": 0x0C}.get(kind, 0)
        present = 0x80 if p["present"] else 0
        if kind == "data":
            value = f"{data(p['gate_dpl'], present=p['present']):#x}"
        else:
            value = f"GATE(0x08, A(isr_target), {ar | p['gate_dpl'] << 5 | present:#x}, 0)"
        setup += f"\nSET_IDT 0x21, {{{value}}}"
    elif kind is not None and kind != "null":
        gdt[T0] = kind_desc(kind, p["dpl"], p.get("present", True))
    if kind == "null":
        sel = p.get("rpl", 0)
    if name == "port-io":
        setup += f"\nmov byte [iomap + 0x10], {IO_BITMAP[p['bitmap']]:#x}"
    if p.get("pce"):
        cr4 |= 0x100
    if p.get("tsd"):
        cr4 |= 0x4
    if fam.get("umip"):
        cr4 |= 0x800
    p = dict(p, sel=sel)
    return Case(insn=_subst(p["insn"], p), cpl=p.get("cpl", 3), iopl=p.get("iopl", 0),
                body=_subst(fam.get("body", ""), p), setup=setup, gdt=gdt, report=fam.get("report", ""),
                cr4=cr4)


def _row_case(row: dict) -> Case:
    return Case(insn=row["insn"], cpl=row.get("cpl", 3), iopl=row.get("iopl", 0), body=row.get("body", ""),
                setup=row.get("setup", ""), report=row.get("report", ""),
                gdt={int(k, 0): named(v) for k, v in row.get("gdt", {}).items()},
                ldt={int(k, 0): named(v) for k, v in row.get("ldt", {}).items()})


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value).replace(" ", "_").replace(",", "").replace("[", "").replace("]", "")


def load_rows() -> list[Row]:
    table = tomllib.loads(TABLE.read_text())
    rows = []
    for fam in table.get("family", []):
        insns = fam["insn"] if isinstance(fam["insn"], list) else [fam["insn"]]
        axes = fam.get("axes", {})
        keys = list(axes)
        for insn in insns:
            for combo in itertools.product(*(axes[k] for k in keys)):
                p = dict(zip(keys, combo), insn=insn)
                expect = RULES[fam["rule"]](p)
                label = "-".join(f"{k}{_fmt(v)}" for k, v in zip(keys, combo))
                ident = f"{fam['name']}[{_fmt(insn.splitlines()[0])}|{label}]"
                rows.append(Row(ident, _family_case(fam, p), expect, fam["sdm"], fam.get("reference", True)))
    for row in table.get("case", []):
        rows.append(Row(row["name"], _row_case(row), row["expect"], row["sdm"], row.get("reference", True)))
    return rows


ROWS = load_rows()
_RESULTS: dict[str, dict[str, str]] = {}


def results(engine: str) -> dict[str, str]:
    """Run every row once per engine (batched), cached for the whole module."""
    if engine not in _RESULTS:
        out: dict[str, str] = {}
        for i in range(0, len(ROWS), BATCH):
            chunk = ROWS[i:i + BATCH]
            for row, got in zip(chunk, run_cases([r.case for r in chunk], engine)):
                out[row.id] = got
        _RESULTS[engine] = out
    return _RESULTS[engine]


def test_table_is_large_and_unique() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate case ids in protection.toml"
    assert len(ROWS) > 900
    assert {r.expect.split("(")[0] for r in ROWS} >= {"ok", "#GP", "#NP", "#SS", "#TS"}


@pytest.mark.parametrize("engine", ["fast", "interp"])
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_conformance(row: Row, engine: str) -> None:
    got = results(engine)[row.id]
    assert got == row.expect, f"{row.id}: expected {row.expect}, got {got}  (SDM {row.sdm})"
