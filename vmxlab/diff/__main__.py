"""``python -m vmxlab.diff``: compare many random programs against the real CPU and summarise.

For exploring beyond what CI runs (tests/test_differential.py): a plain random.Random generator
(no hypothesis: faster, reproducible from ``--seed``), differences grouped by the instruction
forms involved, one full report per group, and the rate in programs per second.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time

from ..backends.kvm import kvm_usable
from . import gen
from .compare import compare, report
from .known import classify


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmxlab.diff", description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=6, help="instruction forms per program (1..N)")
    ap.add_argument("--target", choices=("kvm", "native32"), default="kvm")
    ap.add_argument("--only", default="", help="comma-separated mnemonics (default: every implemented one)")
    ap.add_argument("--reports", type=int, default=10, help="full reports to print")
    args = ap.parse_args(argv)

    from .emu_target import EmuTarget

    if args.target == "kvm":
        usable, why = kvm_usable()
        if not usable:
            print(f"vmxlab.diff: {why}", file=sys.stderr)
            return 2
        from .kvm_target import KvmTarget

        hw = KvmTarget()
        templates = gen.kvm_templates()
    else:
        from .native_target import Native32Target, NativeUnavailable

        try:
            hw = Native32Target()
        except NativeUnavailable as e:
            print(f"vmxlab.diff: {e}", file=sys.stderr)
            return 2
        templates = gen.catalogue()
    if args.only:
        wanted = {m.strip().upper() for m in args.only.split(",")}
        templates = tuple(t for t in templates if t.mnemonic in wanted)
        if not templates:
            print(f"vmxlab.diff: no implemented instruction form matches --only {args.only}", file=sys.stderr)
            return 2
    sw = EmuTarget()
    chooser = gen.RandomChooser(random.Random(args.seed))
    new: collections.Counter[str] = collections.Counter()
    known: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    t0 = time.perf_counter()
    ran = 0
    for _ in range(args.programs):
        program = gen.program(chooser, templates, args.max_len)
        try:
            program.encode(32)
            program.encode(hw.bitness)
        except ValueError:
            continue
        a, b = hw.run(program), sw.run(program)
        ran += 1
        diffs = compare(program, a, b, supervisor_absent=getattr(hw, "supervisor_absent", False),
                        private=getattr(hw, "private", ()))
        if not diffs:
            continue
        k = classify(program, a, b, diffs)
        key = f"known {k.key}" if k else " / ".join(sorted({i.code for i in program.insns}))
        (known if k else new)[key] += 1
        examples.setdefault(key, report(program, a, b, diffs))
    seconds = time.perf_counter() - t0
    hw.close()
    print(f"{ran} programs on {args.target} in {seconds:.1f} s ({ran / seconds:.0f}/s): "
          f"{sum(new.values())} differ, {sum(known.values())} known divergences")
    for key, n in (*known.most_common(), *new.most_common(40)):
        print(f"{n:6d}  {key}")
    for key in list(examples)[: args.reports]:
        print(examples[key])
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
