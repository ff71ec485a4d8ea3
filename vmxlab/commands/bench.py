"""``vmxlab bench``: run the benchmark guests in bench/ and print a table of M instructions/s."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and print a table", description=__doc__)
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kvm", action="store_true",
                   help="the /dev/kvm exit-cost table instead: vmxlab vs a C VMM vs QEMU (vmxlab/kvm_bench.py)")
    p.add_argument("--external", action="store_true",
                   help="the same guests under Bochs and QEMU TCG too, with vmxlab's speed as a ratio of theirs "
                        "(vmxlab/bench_external.py; minutes)")
    p.add_argument("--repeat", type=int, metavar="N", help="--external: best of N runs (default 3, --quick 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "kvm", False):
        from ..kvm_bench import main as kvm_main

        return kvm_main(quick=args.quick, as_json=args.json)
    if getattr(args, "external", False):
        from ..bench_external import main as external_main

        return external_main(args)
    from ..benchmarks import main as bench_main

    return bench_main(args)
