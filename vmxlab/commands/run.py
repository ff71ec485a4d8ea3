"""``vmxlab run IMAGE``: run a guest image and report how it stopped."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..machine.loaders import parse_int
from ..runner import RunOptions, run_image


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs an image (run, compare, trace)."""
    p.add_argument("image", type=Path, help="flat binary, multiboot kernel, ROM, or a NASM .asm source")
    p.add_argument("--format", default="auto", choices=["auto", "flat", "multiboot", "rom"],
                   help="image format (auto: multiboot if a multiboot header is found, else flat)")
    p.add_argument("--load", help="physical load address of a flat image (default 0x7c00)")
    p.add_argument("--entry", help="real:SEG:OFF or pm32:EIP (default: real mode at the load address)")
    p.add_argument("--stack", help="initial SP/ESP (default 0x7000)")
    p.add_argument("--mem", type=int, default=32, metavar="MiB", help="guest RAM in MiB (default 32)")
    p.add_argument("--max-instructions", type=int, metavar="N", help="stop after N instructions")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds of wall-clock time")
    p.add_argument("--engine", default="fast", choices=["fast", "interp"],
                   help="software CPU engine: fast (hot blocks compiled) or interp (closures only)")
    p.add_argument("--block-cache", type=int, metavar="N",
                   help="software CPU: cache at most N translated blocks; when full the cache is dropped and "
                        "refilled (default 16384, ~110 MiB)")
    p.add_argument("--backend", default="emu", choices=["emu", "kvm", "auto"],
                   help="emu: the software CPU; kvm: /dev/kvm; auto: kvm when usable")
    p.add_argument("--cmdline", default="", help="multiboot command line")
    p.add_argument("--wall-clock", action="store_true", help="drive timers from host time, not instruction count")
    p.add_argument("--serial", choices=["none", "stdio"], default="none",
                   help="stdio: the host terminal becomes COM1's keyboard (raw mode; Ctrl-A x quits)")
    p.add_argument("--vmx", action="store_true",
                   help="run the image as a guest in VMX non-root operation under the Python VMM")
    p.add_argument("--policy", default="default", choices=["minimal", "default", "paranoid"],
                   help="exit policy for --vmx (which instructions and events exit)")
    p.add_argument("--exit", dest="exits", action="append", default=[], metavar="CONTROL=on|off",
                   help="override one exit control of the policy, e.g. --exit hlt=off, --exit descriptor-table=on")
    p.add_argument("--trace", type=Path, metavar="FILE", help="write every event to FILE")
    p.add_argument("--trace-format", default="jsonl", choices=["jsonl", "chrome"],
                   help="jsonl (one JSON object per line) or chrome (open in Perfetto / chrome://tracing)")
    p.add_argument("--trace-kinds", metavar="K1,K2", help="only these event kinds (ring, exception, fault, "
                   "page-fault, vm-entry, vm-exit, vm-entry-failure, io, mmio, stop)")
    p.add_argument("--show", action="store_true", help="print ring/mode changes and exits as they happen")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="nasm define when IMAGE is a .asm source")


def options_from_args(args: argparse.Namespace, echo: bool = True) -> RunOptions:
    defines = {}
    for d in args.defines:
        k, _, v = d.partition("=")
        defines[k] = v or 1
    return RunOptions(
        image=args.image, format=args.format,
        load=parse_int(args.load, "--load") if args.load else None,
        entry=args.entry, stack=parse_int(args.stack, "--stack") if args.stack else None,
        mem_mib=args.mem, max_instructions=args.max_instructions, timeout=args.timeout,
        engine=args.engine, block_cache=args.block_cache, backend=args.backend, cmdline=args.cmdline, echo=echo,
        wall_clock=args.wall_clock, defines=defines,
        serial_stdin=args.serial == "stdio", vmx=args.vmx, policy=args.policy, exits=args.exits,
        trace_path=args.trace, trace_format=args.trace_format,
        trace_kinds=args.trace_kinds.split(",") if args.trace_kinds else None, show=args.show,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a guest image", description=__doc__)
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print a machine-readable summary instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args, echo=not args.json)
    result = run_image(opts)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        sys.stdout.flush()
        if result.console and not result.console.endswith(b"\n"):
            print(file=sys.stderr)
        print(f"vmxlab: {result.summary()}", file=sys.stderr)
        table = result.exit_table()
        if table:
            print(table, file=sys.stderr)
    return result.exit_status
