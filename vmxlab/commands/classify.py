"""``vmxlab classify``: the Popek-Goldberg classes of every modelled instruction, decided by experiment on the
software CPU; Theorem 1 on legacy IA-32 (fails: compared with Robin & Irvine's list) and under VMX non-root
operation with an exit policy (holds)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="Popek-Goldberg classes by experiment; Theorem 1 with and without VMX",
                       description=__doc__)
    p.add_argument("instructions", nargs="*", help="only these (default: the whole table)")
    p.add_argument("--policy", default="default", choices=["minimal", "default", "paranoid"],
                   help="exit policy for the VMX non-root check (default: default)")
    p.add_argument("--exit", dest="exits", action="append", default=[], metavar="CONTROL=on|off",
                   help="override one exit control of the policy, e.g. --exit descriptor-table=on")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain.classify import classify
    from ..explain.instructions import lookup
    from ..vmm.policies import policy_from_options

    names = [lookup(n).name for n in args.instructions] or None
    policy = policy_from_options(args.policy, args.exits)
    result = classify(names, policy)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=int))
        return 0
    print(render(result))
    return 0


def render(c) -> str:
    """The tables as plain text: classes with witnesses; Theorem 1 on IA-32; Robin & Irvine; under VMX."""
    out = ["Popek-Goldberg classes, decided by experiment on the software CPU",
           "(mode = CPL 0/3; resources = table placement, TR, LDTR, CR3, CR0.TS, SYSENTER_CS, IF;",
           " trap = an event delivered through the IDT; every state pair: CPL 0/3 x IF 0/1 x resources A/B)", ""]
    w = max(len(n) for n in c.verdicts) + 2
    out.append(f"{'instruction':<{w}} {'P':>2} {'C':>2} {'M':>2} {'L':>2}  class   / witness")
    for n, v in c.verdicts.items():
        flags = "".join(f"{'x' if f else '.':>3}" for f in (v.privileged, v.control_sensitive, v.mode_sensitive,
                                                            v.location_sensitive))
        out.append(f"{n:<{w}}{flags}  {v.classes}")
        for key in ("privileged", "control", "mode", "location"):
            if key in v.witnesses and (key != "privileged" or v.privileged or v.sensitive):
                out.append(f"{'':<{w + 14}}{v.witnesses[key]}")
        if v.iopl_sensitive:
            out.append(f"{'':<{w + 14}}{v.iopl_sensitive}")
    out += ["", "P privileged, C control-sensitive, M mode-sensitive, L location-sensitive", ""]
    su = c.sensitive_unprivileged
    out.append(f"Theorem 1 on legacy IA-32 (sensitive subset of privileged): "
               f"{'HOLDS' if c.theorem1_legacy else 'FAILS'} -- {len(su)} sensitive, unprivileged: "
               + ", ".join(su))
    out += ["", "Compared with Robin & Irvine (USENIX Security 2000), 17 sensitive unprivileged instructions:"]
    for r in c.comparison:
        out.append(f"  {r['instruction']:<34} agree: {r['agree']:<4} computed: {r['computed']}")
        out.append(f"  {'':<34} {r['why']}")
    if c.vmx:
        out += ["", f"Under VMX non-root operation, policy {c.policy}:",
                "each sensitive instruction must exit, or act only on guest-owned state (same result as on bare "
                "metal in the same guest state, no device touched behind the VMM)"]
        for rows in c.vmx.values():
            for r in rows:
                out.append(f"  {'ok ' if r.ok else 'BAD'} {r.name:<24} guest ring {r.cpl}: {r.outcome:<11} {r.detail}")
        out.append(f"Theorem 1 for this VMM: {'HOLDS' if c.theorem1_vmx else 'FAILS'}"
                   + ("" if c.theorem1_vmx else " (see the BAD rows)"))
    return "\n".join(out)


__all__ = ["render", "run", "add_parser"]
