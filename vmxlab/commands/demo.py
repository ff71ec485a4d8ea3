"""``vmxlab demo``: the tour of "ring -1" -- protection rings, VMX non-root operation, VM exits --
each step a guest run for real, printed as a table."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the tour: rings, VMX non-root operation and VM exits, run for real",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable rows")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (for documentation)")
    p.add_argument("--engine", default="fast", choices=["fast", "interp"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain.demo import tour

    if not args.json:
        print("vmxlab demo: running the tour guests (guests/demo/tour.asm) ...", file=sys.stderr)
    rows = tour(args.engine)
    failed = [(r.step, k) for r in rows for k, ok in r.checks.items() if not ok]
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    elif args.markdown:
        print("| # | ring | VMX mode | instruction | what happened | why |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            cells = (r.step, r.ring, r.mode, f"`{r.instruction}`", r.happened, r.why)
            print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    else:
        _print_table(rows)
        if failed:
            print(f"\nUNEXPECTED: {failed}", file=sys.stderr)
    return 1 if failed else 0


def _print_table(rows) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        from ..explain.demo import render

        print(render(rows))
        return
    table = Table(title="ring -1, run for real: the guest's rings (CPL) and VMX mode are two separate axes",
                  show_lines=True)
    for col, kw in (("#", {"no_wrap": True}), ("ring", {"no_wrap": True}), ("VMX mode", {}),
                    ("instruction", {}), ("what happened", {"ratio": 3}), ("why", {"ratio": 2})):
        table.add_column(col, **kw)
    for r in rows:
        table.add_row(r.step, r.ring, r.mode, r.instruction, r.happened, r.why)
    Console(width=160).print(table)
