"""The ``vmxlab`` command line.

Each subcommand lives in ``vmxlab/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``.  Bad input ends with one line on stderr and a non-zero status,
never a traceback; an unexpected Python exception is reported as a vmxlab bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMANDS = ["run", "demo", "bench", "compare", "boot-linux", "mkinitramfs", "explain", "classify", "check-vmcs",
            "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmxlab",
        description="An x86 virtualization laboratory: protection rings, Intel VMX and KVM, runnable.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"vmxlab.commands.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"vmxlab: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("vmxlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
