"""The Popek-Goldberg classifier, decided by experiment on the software CPU (``vmxlab classify``).

Definitions (Popek & Goldberg, CACM 17(7), 1974; reference/theory.md 1), applied to x86:

* the *mode* M is the CPL: supervisor = CPL 0, user = CPL 3;
* the *resources* R (PG's relocation-bounds register) are what a VMM allocates and may set
  differently from what its guest believes: where the GDT/IDT/TSS/page directory are, TR, LDTR,
  CR3, CR0.TS (lazy FPU switching), IA32_SYSENTER_CS, and the real interrupt flag (a VMM keeps
  interrupts on to stay in control).  Placement B of :mod:`vmxlab.explain.lab` is that second
  set of values;
* a *trap* is any event delivered through the IDT (an exception or INT n): control goes to the
  supervisor through the trap vector, PG's "new PSW from E[1]".

Then, over the starting states tried (CPL 0/3 x IF 0/1 with the tables at A, CPL 0/3 with
the resources at B, every operand variant of the table):

* **privileged**: traps at CPL 3 and does not trap at CPL 0, in *every* state pair tried;
* **control-sensitive**: in some state it changes the mode or a resource (or touches a device,
  or halts the processor) without trapping;
* **mode-sensitive**: some pair of states that differ only in the CPL, neither trapping, gives
  different results or different changes;
* **location-sensitive**: moving the resources (A -> B) changes the result of a non-trapping run;
* sensitive = any of the three; innocuous = not sensitive.

Theorem 1 ("a VMM may be constructed if the sensitive instructions are a subset of the
privileged ones") is then checked on legacy IA-32 (it fails: the computed set of sensitive,
unprivileged instructions is compared with Robin & Irvine's list), and again for a guest in
VMX non-root operation with an exit policy: each sensitive instruction must either exit to
the VMM or behave exactly as on bare metal in the same guest state, touching no device
behind the VMM's back (VT-x restores the condition: the guest keeps its own CPL 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .instructions import ROBIN_IRVINE, TABLE, Insn
from .lab import CR0_GUEST, CR4_PSE, GDT_LIMIT, IDT_LIMIT, PLACEMENTS, Lab, Observation, Start, shared_lab

#: (IF, placement) of the supervisor/user state pairs
PAIRS = ((0, "A"), (1, "A"), (1, "B"))


def initial_resources(start: Start) -> dict[str, Any]:
    """The resources of a starting state, in :meth:`Observation.resources` form (what "unchanged" means)."""
    p = PLACEMENTS[start.placement]
    return {
        "cpl": start.cpl, "iopl": start.iopl, "if": start.if_, "cr0": CR0_GUEST | p.cr0_ts, "cr3": p.page_directory,
        "cr4": CR4_PSE, "gdtr": (p.gdt, GDT_LIMIT), "idtr": (p.idt, IDT_LIMIT), "ldtr": p.ldtr, "tr": p.tr,
        "sysenter_cs": p.sysenter_cs, "halted": False, "tlb_entry": True, "io": (),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:#x}" if v > 9 else str(v)
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return f"base {v[0]:#x} limit {v[1]:#x}"
    if isinstance(v, tuple):
        return ", ".join(f"{d} port {p:#x}" for d, p, _ in v) or "none"
    return str(v)


def changes(obs: Observation) -> dict[str, tuple[Any, Any]]:
    """Resources the run changed: name -> (before, after)."""
    before = initial_resources(obs.start)
    after = obs.resources()
    return {k: (before[k], after[k]) for k in before if before[k] != after[k]}


def describe_changes(ch: dict[str, tuple[Any, Any]]) -> str:
    if not ch:
        return "changes no resource"
    parts = []
    for k, (a, b) in ch.items():
        if k == "io":
            parts.append(f"accesses a device ({_fmt(b)})")
        elif k == "tlb_entry":
            parts.append("drops a cached translation (TLB)")
        elif k == "halted":
            parts.append("halts the processor")
        else:
            parts.append(f"changes {k.upper() if len(k) <= 4 else k} {_fmt(a)} -> {_fmt(b)}")
    return ", ".join(parts)


def describe_outputs(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where two runs' results differ, e.g. "EAX 0xcf9b00 vs 0; ZF 1 vs 0"."""
    parts = []
    for k in a:
        if a[k] == b.get(k):
            continue
        if k == "status":
            for bit, name in ((6, "ZF"), (0, "CF")):
                if (a[k] >> bit) & 1 != (b[k] >> bit) & 1:
                    parts.append(f"{name} {(a[k] >> bit) & 1} vs {(b[k] >> bit) & 1}")
        elif k == "out":
            ba, bb = bytes.fromhex(a[k]), bytes.fromhex(b[k])
            if ba[6:] == bb[6:] and ba[:2] != bb[:2] or ba[2:6] != bb[2:6]:
                parts.append(f"stored {ba[:6].hex(' ')} vs {bb[:6].hex(' ')}")
            else:
                parts.append(f"stored {ba.hex(' ')} vs {bb.hex(' ')}")
        else:
            parts.append(f"{k.upper()} {_fmt(a[k])} vs {_fmt(b[k])}")
    return "; ".join(parts)


def trap_text(obs: Observation) -> str:
    t = obs.trap
    if t is None:
        return "no trap"
    ec = "" if t.get("error_code") is None else f"({t['error_code']:#x})"
    return f"{t['name']}{ec}"


@dataclass
class Verdict:
    """One instruction's classes, each with the witness that proves it."""

    name: str
    privileged: bool
    control_sensitive: bool
    mode_sensitive: bool
    location_sensitive: bool
    witnesses: dict[str, str]
    iopl_sensitive: str | None = None
    robin_irvine: str | None = None
    experiments: int = 0

    @property
    def sensitive(self) -> bool:
        return self.control_sensitive or self.mode_sensitive or self.location_sensitive

    @property
    def classes(self) -> str:
        out = []
        if self.privileged:
            out.append("privileged")
        for flag, name in ((self.control_sensitive, "control"), (self.mode_sensitive, "mode"),
                           (self.location_sensitive, "location")):
            if flag:
                out.append(f"{name}-sensitive")
        if not self.sensitive:
            out.append("innocuous")
        return ", ".join(out)


def classify_insn(insn: Insn, lab: Lab | None = None) -> Verdict:
    """Run every state pair for ``insn`` on the bare software CPU and decide its classes."""
    lab = lab or shared_lab()
    w: dict[str, str] = {}
    privileged = True
    control = mode = location = False
    n = 0
    runs: dict[tuple[int, Start], Observation] = {}

    def run(v: int, s: Start) -> Observation:
        nonlocal n
        if (v, s) not in runs:
            runs[(v, s)] = lab.bare(insn, v, s)
            n += 1
        return runs[(v, s)]

    pairs_tried = 0
    for v in range(len(insn.variants)):
        for if_, placement in PAIRS:
            s = run(v, Start(0, 0, if_, placement))
            u = run(v, Start(3, 0, if_, placement))
            pairs_tried += 1
            if privileged and not (u.trapped and not s.trapped):
                privileged = False
                why = (f"at {u.start.label()} it does not trap" if not u.trapped
                       else f"it traps at {s.start.label()} too ({trap_text(s)})")
                w["privileged"] = f"not privileged: {why}" + _variant_note(insn, v)
            if not s.trapped and not u.trapped and not mode:
                ds, du = describe_outputs(_out(insn, s), _out(insn, u)), ""
                cs, cu = changes(s), changes(u)
                cs.pop("cpl", None)
                cu.pop("cpl", None)
                if ds or cs != cu:
                    mode = True
                    du = ds or f"at CPL 0 it {describe_changes(cs)}, at CPL 3 it {describe_changes(cu)}"
                    w["mode"] = (f"{du} (CPL 0 vs CPL 3, otherwise the same state: IOPL 0, IF {if_}"
                                 f"{', placement B' if placement == 'B' else ''}); neither traps"
                                 + _variant_note(insn, v))
        for cpl in (0, 3):
            a = run(v, Start(cpl, 0, 0, "A"))
            b = run(v, Start(cpl, 0, 1, "B"))
            if not a.trapped and not b.trapped and not location:
                diff = describe_outputs(_out(insn, a), _out(insn, b))
                if diff:
                    location = True
                    w["location"] = (f"{diff} (at CPL {cpl}: resources at A vs as a VMM sets them, B)"
                                     + _variant_note(insn, v))
    if privileged:
        s0 = runs[(0, Start(0, 0, 0, "A"))]
        u0 = runs[(0, Start(3, 0, 0, "A"))]
        w["privileged"] = (f"privileged: at CPL 3 it traps ({trap_text(u0)}), at CPL 0 it does not, in all "
                           f"{pairs_tried} state pairs tried" + ("" if s0.completed else ""))
    for (v, s), obs in sorted(runs.items(), key=lambda kv: (kv[0][1].cpl, kv[0][0])):
        if obs.trapped or control:
            continue
        ch = changes(obs)
        if ch:
            control = True
            w["control"] = f"at {s.label()} it {describe_changes(ch)} without trapping" + _variant_note(insn, v)
    # IOPL: a VMM keeps its guests at IOPL 0 (only CPL 0 can change IOPL: SDM Vol.2 POPF, IRET), so the
    # classes above use IOPL 0; the IOPL 3 probe says whether IOPL would matter
    iopl_note = None
    u_iopl0 = runs[(0, Start(3, 0, 0, "A"))]
    u_iopl3 = run(0, Start(3, 3, 0, "A"))
    if u_iopl0.trapped != u_iopl3.trapped:
        iopl_note = (f"IOPL-sensitive: at CPL 3 it {'traps' if u_iopl0.trapped else 'does not trap'} with "
                     f"IOPL 0 and {'traps' if u_iopl3.trapped else 'does not trap'} with IOPL 3 "
                     f"({describe_changes(changes(u_iopl3))} there)")
    if not (control or mode or location):
        w["sensitive"] = ("innocuous: no resource changes without a trap, and no state pair (CPL 0/3, "
                          "resources A/B) gives different results without trapping")
    return Verdict(insn.name, privileged, control, mode, location, w, iopl_note, insn.robin_irvine, n)


def _out(insn: Insn, o: Observation) -> dict[str, Any]:
    return o.outputs(insn.timing, "ds" in insn.shows)


def _variant_note(insn: Insn, v: int) -> str:
    if len(insn.variants) < 2:
        return ""
    d = insn.variants[v]
    what = d.get("_asm") or ", ".join(f"{k.upper()} = {int(x):#x}" for k, x in d.items())
    return f" [{what}]" if what else f" [{insn.asm}]"


# ====================================================================== Robin & Irvine

#: why an instruction on Robin & Irvine's list does or does not come out sensitive-and-unprivileged here
RI_NOTES = {
    "pushf": ("PUSHF stores the same EFLAGS at CPL 0 and CPL 3, so it is not mode-sensitive; it is sensitive "
              "because it shows the *real* IF, which a VMM keeps at 1 (resources B) while the guest believes "
              "0 -- after a guest kernel's POPF was silently ignored (see POPF), PUSHF reveals it"),
    "popf": "POPF ignores IF/IOPL at CPL 3 with IOPL 0 without a trap: the guest kernel's CLI-by-POPF is lost",
    "smsw": "SMSW reads CR0[15:0] at any CPL: the real TS/PE bits the VMM set, not the guest's",
    "sgdt": "SGDT reads GDTR at any CPL: the address of the table the CPU uses, which is the VMM's",
    "sidt": "SIDT reads IDTR at any CPL: the address of the VMM's IDT",
    "sldt": "SLDT reads the LDTR selector at any CPL",
    "str": "STR reads the TR selector at any CPL: the VMM's TSS",
    "lar": "LAR compares the descriptor's DPL with the CPL and reports in ZF: a deprivileged kernel sees "
           "its own ring-0 descriptors as invisible",
    "lsl": "LSL does the same DPL/CPL check as LAR",
    "verr": "VERR answers by CPL, without trapping",
    "verw": "VERW answers by CPL, without trapping",
    "mov-from-cs": "reading CS shows RPL = CPL: the guest kernel sees it is not at ring 0",
    "push-cs": "pushing CS shows RPL = CPL",
    "pop-ds": ("POP DS traps (#GP) exactly when the CPL makes a difference -- loading a DPL-0 segment at CPL 3 -- "
               "and gives the same result otherwise, so by Popek & Goldberg's definitions it is innocuous: a "
               "trap-and-emulate VMM sees every case it must emulate.  Robin & Irvine list segment loads because a "
               "deprivileged guest kernel cannot load its own DPL-0 segments natively (it needs the VMM) and the "
               "hidden descriptor caches can diverge from the tables, which a one-instruction experiment does "
               "not show"),
    "int": ("INT n goes through the IDT -- it *is* Popek & Goldberg's trap, to whoever owns the IDT (the VMM) -- "
            "in both modes: at CPL 3 through a DPL-0 gate it raises #GP, at CPL 0 it enters the handler, both "
            "reach the VMM.  Robin & Irvine list CALL/JMP far, INT n and RET far because their gate and stack "
            "checks use the deprivileged CPL (ring compression); this table models INT n only"),
}


def robin_irvine_comparison(verdicts: dict[str, Verdict]) -> list[dict[str, str]]:
    """Each entry of Robin & Irvine's list and each computed sensitive-unprivileged instruction, with the
    agreement or the difference explained."""
    computed = {n for n, v in verdicts.items() if v.sensitive and not v.privileged}
    rows = []
    listed = set()
    for ri_name, ours in ROBIN_IRVINE.items():
        listed.add(ours)
        v = verdicts.get(ours) if ours else None
        if v is None:
            rows.append({"instruction": ri_name, "robin_irvine": "sensitive, unprivileged", "computed": "not modelled",
                         "agree": "n/a", "why": "not in this table"})
            continue
        agree = ours in computed
        why = RI_NOTES.get(ours, "")
        if agree:
            why = (why + "; " if why else "") + "witness: " + _main_witness(v)
        rows.append({"instruction": ri_name, "robin_irvine": "sensitive, unprivileged", "computed": v.classes,
                     "agree": "yes" if agree else "no", "why": why})
    for name in sorted(computed - listed):
        v = verdicts[name]
        why = {"iret": ("IRET pops EFLAGS with POPF's rules (IF only if CPL <= IOPL, IOPL only at CPL 0), silently: "
                        "the same flaw as POPF.  The list as given in reference/theory.md does not name it")}.get(
            name, "not on the list as given in reference/theory.md")
        rows.append({"instruction": name.upper(), "robin_irvine": "not listed", "computed": v.classes, "agree": "no",
                     "why": why + "; witness: " + _main_witness(v)})
    return rows


def _main_witness(v: Verdict) -> str:
    for key in ("mode", "location", "control"):
        if key in v.witnesses:
            return v.witnesses[key]
    return v.witnesses.get("privileged", "")


# ====================================================================== VMX non-root


@dataclass
class VmxRow:
    name: str
    cpl: int
    outcome: str  # "exits", "guest fault", "native"
    detail: str
    equivalent: bool
    device_behind_vmm: bool

    @property
    def ok(self) -> bool:
        return self.equivalent and not self.device_behind_vmm


def _comparable(o: Observation, timing: bool) -> dict[str, Any]:
    r = o.resources()
    r.pop("tlb_entry")  # VM entry flushes the TLB (SDM Vol.3C 29.4.3.1 without VPID): a cache, not state
    r.pop("io")  # through the VMM or directly: compared separately
    t = None if o.trap is None else (int(o.trap["vector"]), o.trap.get("error_code"))
    return {**o.outputs(timing, True), **r, "trap": t, "completed": o.completed}


def vmx_rows(insn: Insn, policy, lab: Lab | None = None) -> list[VmxRow]:
    """The instruction at guest CPL 0 and 3 in VMX non-root operation under ``policy``, against bare metal."""
    lab = lab or shared_lab()
    rows = []
    for v in range(len(insn.variants)):
        for cpl in (0, 3):
            start = Start(cpl, 0, 0, "A")
            bare = lab.bare(insn, v, start)
            guest = lab.vmx(insn, v, start, policy)
            equivalent = _comparable(bare, insn.timing) == _comparable(guest, insn.timing)
            direct = [e for e in guest.events if e["kind"] == "io" and e.get("vmx") == "non-root"]
            if guest.exits:
                names = ", ".join(f"{e['reason']} {e['reason_name']}" for e in guest.exits)
                outcome, detail = "exits", f"VM exit {names}; the VMM completed it"
            elif guest.trapped:
                outcome, detail = "guest fault", (f"{trap_text(guest)} in the guest, no VM exit: the guest's own "
                                                  "rings act first (SDM Vol.3C 26.1.1)")
            else:
                outcome, detail = "native", "runs in non-root operation on the guest's own state, no VM exit"
            if not equivalent:
                diff = describe_outputs(_comparable(bare, insn.timing), _comparable(guest, insn.timing))
                detail += f"; DIFFERS from bare metal: {diff}"
            rows.append(VmxRow(insn.name + _variant_note(insn, v), cpl, outcome, detail, equivalent, bool(direct)))
    return rows


# ====================================================================== the whole table


@dataclass
class Classification:
    verdicts: dict[str, Verdict]
    comparison: list[dict[str, str]]
    vmx: dict[str, list[VmxRow]] = field(default_factory=dict)
    policy: str = ""

    @property
    def sensitive_unprivileged(self) -> list[str]:
        return [n for n, v in self.verdicts.items() if v.sensitive and not v.privileged]

    @property
    def theorem1_legacy(self) -> bool:
        return not self.sensitive_unprivileged

    @property
    def theorem1_vmx(self) -> bool:
        return all(r.ok for rows in self.vmx.values() for r in rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "definitions": {
                "mode": "CPL (supervisor = 0, user = 3)",
                "resources": "GDT/IDT/TSS/page-directory placement, TR, LDTR, CR3, CR0.TS, IA32_SYSENTER_CS, IF",
                "trap": "an event delivered through the IDT",
            },
            "instructions": {n: {**asdict(v), "sensitive": v.sensitive, "classes": v.classes}
                             for n, v in self.verdicts.items()},
            "theorem1_legacy_ia32": {
                "holds": self.theorem1_legacy, "sensitive_unprivileged": self.sensitive_unprivileged,
            },
            "robin_irvine": self.comparison,
            "vmx": {"policy": self.policy, "theorem1_holds": self.theorem1_vmx,
                    "rows": {n: [{**asdict(r), "ok": r.ok} for r in rows] for n, rows in self.vmx.items()}},
        }


def classify(names: list[str] | None = None, policy=None, lab: Lab | None = None) -> Classification:
    """Classify the table's instructions (or ``names``); with ``policy``, also check them under VMX."""
    lab = lab or shared_lab()
    insns = [i for i in TABLE if names is None or i.name in names]
    verdicts = {i.name: classify_insn(i, lab) for i in insns}
    result = Classification(verdicts, robin_irvine_comparison(verdicts))
    if policy is not None:
        result.policy = policy.summary()
        for i in insns:
            if verdicts[i.name].sensitive:
                result.vmx[i.name] = vmx_rows(i, policy, lab)
    return result


__all__ = ["classify", "classify_insn", "Classification", "Verdict", "vmx_rows", "robin_irvine_comparison"]
