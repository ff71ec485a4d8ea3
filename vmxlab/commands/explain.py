"""``vmxlab explain INSTRUCTION``: run one instruction at CPL 0 and CPL 3, on bare metal and in VMX non-root
operation with its exit control off and on, and say what happened and why (with the Popek-Goldberg class
decided by experiment and the SDM sections)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="what an instruction does at each ring, with and without VMX, and why",
                       description=__doc__)
    p.add_argument("instruction", nargs="*", help='e.g. sgdt, popf, in, "mov cr3" (see --list)')
    p.add_argument("--list", action="store_true", help="list the modelled instructions")
    p.add_argument("--policy", default="default", choices=["minimal", "default", "paranoid"],
                   help="the exit policy the VMX rows start from (the instruction's own control is then "
                        "switched off and on)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..explain.explain import explain
    from ..explain.instructions import TABLE
    from ..vmm.policies import PRESETS

    if args.list or not args.instruction:
        if not args.list:
            raise UserError("explain: name an instruction, e.g. `vmxlab explain sgdt` (or --list)")
        for i in TABLE:
            print(f"{i.name:<14} {i.asm.replace(chr(10), '; '):<44} {i.what}")
        return 0
    name = " ".join(args.instruction)
    e = explain(name, PRESETS[args.policy])
    if args.json:
        print(json.dumps(e.as_dict(), indent=2, default=int))
    else:
        _print(e)
    return 0


def _print(e) -> None:
    from ..explain.explain import render, verdict_lines

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(render(e))
        return
    i = e.insn
    console = Console(width=150, highlight=False)
    table = Table(title=f"{i.name}: {i.what}  [{i.asm.replace(chr(10), '; ')}]  ({i.sdm})", show_lines=True)
    for col, kw in (("where", {"no_wrap": True}), ("ring", {"no_wrap": True}), ("what happened", {"ratio": 3}),
                    ("why", {"ratio": 2})):
        table.add_column(col, **kw)
    for r in e.rows:
        table.add_row(r.where, str(r.cpl), r.happened, r.why)
    console.print(table)
    for line in verdict_lines(e.verdict):
        console.print(line, markup=False)
