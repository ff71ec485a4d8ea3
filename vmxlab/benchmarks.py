"""``vmxlab bench``: the speed and memory measurements behind the README's tables.

Each benchmark is a NASM guest in bench/ run to completion; the table shows
guest instructions per second.  Targets come from the issues and are printed
next to the figures, never asserted in tests (timings belong here, not in
tests: DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .machine.machine import StopReason
from .runner import RunOptions, run_image

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


@dataclass
class Bench:
    name: str
    description: str
    source: str
    iterations: int
    quick_iterations: int
    target_mips: float | None = None
    engine: str = "fast"
    extra: Callable[[argparse.Namespace], dict] | None = None
    #: run with a no-op Tracer attached (every report site called, nothing recorded): compared with the
    #: same guest at ``cpu.trace = None`` it measures what tracing costs when it is off.  Python cannot
    #: compile the report sites out, so "off" is one attribute test per site (DESIGN.md speed rules)
    noop_tracer: bool = False


BENCHES: list[Bench] = [
    Bench("alu-mem-pm32", "ALU+memory loop, 32-bit PM, paging off, ring 0", "alu_mem_pm32.asm",
          2_000_000, 300_000, target_mips=5.0),
    Bench("alu-mem-pm32-interp", "the same loop on the interp engine (closures only)", "alu_mem_pm32.asm",
          300_000, 50_000, engine="interp"),
    Bench("alu-mem-ring3-paging", "ALU+memory loop, ring 3, 32-bit paging on", "alu_mem_ring3.asm",
          2_000_000, 300_000, target_mips=25.0),
    Bench("ring3-noop-tracer", "the ring-3 loop with a no-op tracer attached (vs trace off above)",
          "alu_mem_ring3.asm", 2_000_000, 300_000, noop_tracer=True),
]


def machine_description() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    impl = platform.python_implementation()
    return f"{impl} {platform.python_version()} on {cpu}, {os.cpu_count()} CPUs"


def run_bench(b: Bench, quick: bool) -> dict:
    iters = b.quick_iterations if quick else b.iterations
    opts = RunOptions(image=BENCH_DIR / b.source, format="flat", load=0x100000, entry="pm32:0x100000",
                      echo=False, engine=b.engine, defines={"ITER": iters}, max_instructions=10**10)
    t0 = time.perf_counter()
    result = _run_with_noop_tracer(opts) if b.noop_tracer else run_image(opts)
    wall = time.perf_counter() - t0
    ok = result.stop.reason == StopReason.DEBUG_EXIT
    return {
        "name": b.name, "description": b.description, "instructions": result.instructions,
        "seconds": round(result.seconds, 4), "mips": round(result.mips, 2), "target_mips": b.target_mips,
        "ok": ok, "stop": result.stop.reason.value, "wall_with_setup": round(wall, 3),
    }


def _run_with_noop_tracer(opts: RunOptions):
    """run_image, with a Tracer that records nothing attached to the CPU before the run."""
    from .runner import RunResult, build_machine, load_image, make_backend, resolve_image
    from .trace.events import Tracer

    machine = build_machine(opts)
    entry = load_image(machine, opts, resolve_image(opts.image, opts.defines))
    backend = make_backend(machine, opts)
    backend.apply_entry(entry)
    Tracer([], kinds=[]).attach(backend.cpu)
    t0 = time.perf_counter()
    stop = backend.run(opts.max_instructions, opts.timeout)
    seconds = time.perf_counter() - t0
    return RunResult(stop, backend.cpu.icount, seconds, bytes(machine.console.captured), machine, backend, entry)


def tracing_cost(rows: list[dict]) -> str:
    """One line: the no-op tracer's M instr/s against trace off (reported, never asserted)."""
    by = {r["name"]: r for r in rows}
    off, on = by.get("alu-mem-ring3-paging"), by.get("ring3-noop-tracer")
    if not off or not on or not off["mips"]:
        return ""
    diff = 100.0 * (on["mips"] - off["mips"]) / off["mips"]
    return (f"tracing: a no-op tracer changes the ring-3 loop by {diff:+.1f}% ({off['mips']:.2f} -> {on['mips']:.2f} "
            "M instr/s); report sites sit on events (ring changes, exceptions, exits, I/O), never on the "
            "per-instruction path, so 'off' costs one attribute test per event")


def format_table(rows: list[dict]) -> str:
    head = f"{'benchmark':<24} {'instructions':>13} {'seconds':>8} {'M instr/s':>10} {'target':>8}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        target = f">= {r['target_mips']:g}" if r.get("target_mips") else ""
        status = "ok" if r["ok"] else f"FAILED ({r['stop']})"
        if r["ok"] and r.get("target_mips"):
            status = "meets target" if r["mips"] >= r["target_mips"] else "below target"
        lines.append(f"{r['name']:<24} {r['instructions']:>13,} {r['seconds']:>8.3f} {r['mips']:>10.2f} "
                     f"{target:>8}  {status}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    chosen = [b for b in BENCHES if not args.names or b.name in args.names]
    if not chosen:
        print(f"vmxlab bench: no benchmark named {' '.join(args.names)}; have: "
              f"{', '.join(b.name for b in BENCHES)}", file=sys.stderr)
        return 2
    rows = []
    for b in chosen:
        rows.append(run_bench(b, args.quick))
        if not args.json:
            print(f"  ran {b.name}", file=sys.stderr)
    if args.json:
        print(json.dumps({"machine": machine_description(), "results": rows}, indent=2))
    else:
        print(f"machine: {machine_description()}")
        print(format_table(rows))
        cost = tracing_cost(rows)
        if cost:
            print(cost)
    return 0 if all(r["ok"] for r in rows) else 1
