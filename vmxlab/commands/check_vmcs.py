"""``vmxlab check-vmcs FILE.json``: run every VM-entry check (SDM Vol.3C 27.2-27.3) on a VMCS given as JSON
(field name or encoding -> value) and explain each failure: the check, the field and its value, the SDM
section, the fix.  Fields the file does not give keep the values of a valid VMCS (--base; --template
prints it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-vmcs", help="explain why a VMCS fails VM entry (every failing check)",
                       description=__doc__)
    p.add_argument("file", type=Path, nargs="?", help='JSON object, e.g. {"GUEST_CR0": "0x60000011"}')
    p.add_argument("--base", default="flat32", choices=["flat32", "real", "paged32"],
                   help="the valid VMCS missing fields come from (vmx/setup.py build_guest_vm)")
    p.add_argument("--template", action="store_true", help="print the base VMCS as JSON and exit")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..explain.entry import check_vmcs, explain_failure, load_json, template

    if args.template:
        print(json.dumps(template(args.base), indent=2))
        return 0
    if args.file is None:
        raise UserError("check-vmcs: give a JSON file (or --template for a valid VMCS to start from)")
    fields = load_json(args.file)
    failures = check_vmcs(fields, args.base)
    if args.json:
        print(json.dumps([{"check": f.check, "outcome": f.outcome, "field": f.field, "value": f.value,
                           "sdm": f"Vol.3C {f.sdm_section}", "problem": f.message, "fix": f.fix}
                          for f in failures], indent=2))
    elif not failures:
        print(f"{args.file}: passes every VM-entry check ({len(fields)} field(s) over the {args.base} base VMCS)")
    else:
        print(f"{args.file}: {len(failures)} failing VM-entry check(s); VM entry reports the first "
              f"({failures[0].outcome})\n")
        print("\n\n".join(explain_failure(f) for f in failures))
    return 1 if failures else 0
