"""``vmxlab explain INSTRUCTION``: what one instruction does at CPL 0 and CPL 3, on bare metal and as a VMX
guest with its exit control off and on -- each row an experiment run for real, with the rule behind it.

The rows come from :class:`vmxlab.explain.lab.Lab` runs of the instruction's snippet in the table
(vmxlab/explain/instructions.py); the "why" column is chosen by what the run showed (a trap, a VM
exit, a native run) and cites the SDM section or the paper; the verdict at the end is the
classifier's (:mod:`vmxlab.explain.classify`), with its witnesses.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from ..vmm.policies import DEFAULT, Policy
from .classify import Verdict, changes, classify_insn, describe_changes, trap_text
from .instructions import Insn, lookup
from .lab import Lab, Observation, Start, shared_lab


@dataclass
class Row:
    where: str  # "no VMX" / "VMX non-root, <control> off" ...
    cpl: int
    happened: str
    why: str
    exits: list[str] = field(default_factory=list)
    trap: str | None = None


@dataclass
class Explanation:
    insn: Insn
    rows: list[Row]
    verdict: Verdict

    def as_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "instruction": self.insn.name, "snippet": self.insn.asm, "what": self.insn.what, "sdm": self.insn.sdm,
            "control": self.insn.control, "exit_reason": self.insn.exit_reason,
            "rows": [asdict(r) for r in self.rows],
            "popek_goldberg": {"classes": v.classes, "privileged": v.privileged, "sensitive": v.sensitive,
                               "witnesses": v.witnesses, "iopl": v.iopl_sensitive},
            "robin_irvine": v.robin_irvine is not None,
        }


def show_results(insn: Insn, o: Observation) -> str:
    """The results the table says this instruction is about, in words."""
    parts = []
    r = o.regs
    for item in insn.shows:
        if item == "out6":
            limit, base = struct.unpack_from("<HI", o.out)
            parts.append(f"stored limit {limit:#x} base {base:#x}")
        elif item == "out4":
            parts.append(f"stored {struct.unpack_from('<I', o.out)[0]:#x}")
        elif item in ("eax", "ecx", "edx", "ebx"):
            parts.append(f"{item.upper()} = {r[item]:#x}")
        elif item in ("ax", "al"):
            parts.append(f"{item.upper()} = {r['eax'] & (0xFFFF if item == 'ax' else 0xFF):#x}")
        elif item == "edx:eax":
            parts.append(f"EDX:EAX = {(r['edx'] << 32) | r['eax']:#x} (a time stamp)")
        elif item == "stack":
            parts.append(f"pushed {o.stack:#x}")
        elif item == "if":
            parts.append(f"IF = {(o.eflags >> 9) & 1}")
        elif item == "iopl":
            parts.append(f"IOPL = {(o.eflags >> 12) & 3}")
        elif item == "zf":
            parts.append(f"ZF = {(o.eflags >> 6) & 1}")
        elif item == "ds":
            parts.append(f"DS = {o.ds:#x}")
    ch = changes(o)
    if "tlb" not in insn.shows:
        ch.pop("tlb_entry", None)
    for shown in ("if", "iopl"):
        if shown in insn.shows:
            ch.pop(shown, None)
    if ch:
        parts.append(describe_changes(ch))
    return "; ".join(parts) or "completed"


def _row(insn: Insn, o: Observation, where: str, control_state: str | None) -> Row:
    exits = [f"{e['reason']} {e['reason_name']}" for e in o.exits]
    if o.where == "bare":
        if o.trapped:
            happened = f"{trap_text(o)}: traps"
            if o.trap and o.trap.get("event") == "software-interrupt":
                happened = f"enters the handler through IDT gate {int(o.trap['vector']):#x} (ring {o.cpl})"
                why = "INT n delivers through the IDT gate; the gate's DPL must be >= CPL (SDM Vol.3A 6.12.1.1)"
            elif o.start.cpl == 3:
                why = f"CPL 3 fails the instruction's privilege check ({insn.sdm})"
            else:
                why = f"{insn.sdm}"
        else:
            happened = show_results(insn, o)
            why = f"allowed at CPL {o.start.cpl} ({insn.sdm})"
    else:
        if exits:
            happened = f"VM exit {', '.join(exits)}; the VMM completed it: {show_results(insn, o)}"
            why = insn.exit_sdm or "the exit control is on"
        elif o.trapped and (o.trap or {}).get("event") != "software-interrupt":
            happened = f"{trap_text(o)} inside the guest, no VM exit"
            why = "the guest's own privilege checks come before VM exits (SDM Vol.3C 26.1.1)"
        else:
            happened = (f"no VM exit; {show_results(insn, o)}" if not o.trapped else
                        f"no VM exit; enters the guest's handler through its IDT (ring {o.cpl})")
            if control_state == "off":
                why = f"{insn.control} exiting off: it runs in non-root operation on the guest's own state"
            else:
                why = insn.exit_sdm or "no control makes it exit"
    return Row(where, o.start.cpl, happened, why, exits, trap_text(o) if o.trapped else None)


def explain(name: str, policy: Policy = DEFAULT, lab: Lab | None = None) -> Explanation:
    """Run the experiments for one instruction (``name`` as in the table, e.g. "sgdt", "mov cr3")."""
    insn = lookup(name)
    lab = lab or shared_lab()
    rows: list[Row] = []
    for cpl in (0, 3):
        rows.append(_row(insn, lab.bare(insn, 0, Start(cpl)), "no VMX", None))
    if insn.control is not None:
        for on in (False, True):
            p = policy.with_exit(insn.control, on)
            for cpl in (0, 3):
                o = lab.vmx(insn, 0, Start(cpl), p)
                rows.append(_row(insn, o, f"VMX non-root, {insn.control} {'on' if on else 'off'}",
                                 "on" if on else "off"))
    else:
        for cpl in (0, 3):
            o = lab.vmx(insn, 0, Start(cpl), policy)
            label = "VMX non-root (always exits)" if insn.always_exits else "VMX non-root (no exit control)"
            rows.append(_row(insn, o, label, None))
    return Explanation(insn, rows, classify_insn(insn, lab))


def render(e: Explanation) -> str:
    """Plain text (the command uses rich tables when it can)."""
    i, v = e.insn, e.verdict
    lines = [f"{i.name}: {i.what}   [{i.asm.replace(chr(10), '; ')}]   ({i.sdm})", ""]
    for r in e.rows:
        lines.append(f"  {r.where:<34} ring {r.cpl}  {r.happened}")
        lines.append(f"  {'':<34}         why: {r.why}")
    lines += ["", *verdict_lines(v)]
    return "\n".join(lines)


def verdict_lines(v: Verdict) -> list[str]:
    lines = [f"Popek-Goldberg class (by experiment): {v.classes}"]
    for key in ("privileged", "control", "mode", "location", "sensitive"):
        if key in v.witnesses:
            lines.append(f"  - {v.witnesses[key]}")
    if v.iopl_sensitive:
        lines.append(f"  - {v.iopl_sensitive}")
    if v.sensitive and not v.privileged:
        lines.append("  => sensitive but not privileged: on legacy IA-32 a trap-and-emulate VMM never sees it "
                     "(Theorem 1's condition fails; Popek & Goldberg 1974)")
    if v.robin_irvine:
        lines.append(f"  Robin & Irvine (2000) list it among the 17 sensitive, unprivileged instructions "
                     f"(group {v.robin_irvine})")
    return lines


__all__ = ["explain", "render", "Explanation", "Row", "verdict_lines"]
