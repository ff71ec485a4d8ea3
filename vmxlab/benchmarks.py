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
    #: run as a guest in VMX non-root operation under the Python VMM with this policy (EPT on)
    vmx_policy: str | None = None
    #: report microseconds per VM exit instead of (besides) instructions per second
    per_exit: bool = False
    target_us_per_exit: float | None = None


BENCHES: list[Bench] = [
    Bench("alu-mem-pm32", "ALU+memory loop, 32-bit PM, paging off, ring 0", "alu_mem_pm32.asm",
          2_000_000, 300_000, target_mips=5.0),
    Bench("alu-mem-pm32-interp", "the same loop on the interp engine (closures only)", "alu_mem_pm32.asm",
          300_000, 50_000, engine="interp"),
    Bench("alu-mem-ring3-paging", "ALU+memory loop, ring 3, 32-bit paging on", "alu_mem_ring3.asm",
          2_000_000, 300_000, target_mips=25.0),
    Bench("ring3-noop-tracer", "the ring-3 loop with a no-op tracer attached (vs trace off above)",
          "alu_mem_ring3.asm", 2_000_000, 300_000, noop_tracer=True),
    Bench("alu-mem-ring3-vmx-ept", "the ring-3 loop in VMX non-root with EPT (policy minimal)", "alu_mem_ring3.asm",
          2_000_000, 300_000, vmx_policy="minimal"),
    Bench("kernel-mix", "syscalls, page faults, PIT preemption, two address spaces", "kernel_mix.asm",
          20_000, 5_000, target_mips=10.0),
    Bench("kernel-mix-vmx-ept", "the kernel mix in VMX non-root with EPT (policy default)", "kernel_mix.asm",
          20_000, 5_000, vmx_policy="default"),
    Bench("vm-exit-roundtrip", "guest OUT -> VM exit -> Python handler -> VMRESUME, per exit", "exit_roundtrip.asm",
          2_000, 500, vmx_policy="minimal", per_exit=True, target_us_per_exit=5.0),
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
                      echo=False, engine=b.engine, defines={"ITER": iters}, max_instructions=10**10,
                      vmx=b.vmx_policy is not None, policy=b.vmx_policy or "default")
    t0 = time.perf_counter()
    result = _run_with_noop_tracer(opts) if b.noop_tracer else run_image(opts)
    wall = time.perf_counter() - t0
    ok = result.stop.reason == StopReason.DEBUG_EXIT
    row = {
        "name": b.name, "description": b.description, "instructions": result.instructions,
        "seconds": round(result.seconds, 4), "mips": round(result.mips, 2), "target_mips": b.target_mips,
        "ok": ok, "stop": result.stop.reason.value, "wall_with_setup": round(wall, 3),
    }
    vm = getattr(result.backend, "vm", None)
    if vm is not None:
        exits = sum(vm.stats.values())
        row["vm_exits"] = exits
        if b.per_exit and exits:
            row["us_per_exit"] = round(result.seconds / exits * 1e6, 1)
            row["target_us_per_exit"] = b.target_us_per_exit
    return row


def memory_row(mem_mib: int = 64) -> dict:
    """Peak resident size of a process running the ring-3 loop with a ``mem_mib`` guest: the interpreter,
    iced-x86, the block cache and the guest's RAM.  Measured in a fresh child as its own VmHWM (the
    high-water mark of its address space since exec; getrusage would also count the pages it shared
    with this process before exec)."""
    import subprocess

    script = (
        "import sys; from pathlib import Path; from vmxlab.runner import RunOptions, run_image\n"
        f"r = run_image(RunOptions(Path({str(BENCH_DIR / 'alu_mem_ring3.asm')!r}), format='flat', load=0x100000,"
        f" entry='pm32:0x100000', mem_mib={mem_mib}, echo=False, defines={{'ITER': 300000}}))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(r.stop.reason.value, hwm)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    reason, _, hwm = proc.stdout.strip().rpartition(" ")
    ok = proc.returncode == 0 and reason == StopReason.DEBUG_EXIT.value
    rss = round(int(hwm) / 1024, 1) if hwm.isdigit() else 0.0
    return {"name": f"memory-{mem_mib}mib-guest", "rss_mib": rss, "target_mib": 150, "ok": ok}


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
    head = f"{'benchmark':<24} {'instructions':>13} {'seconds':>8} {'M instr/s':>10} {'target':>10}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "rss_mib" in r:
            status = "meets target" if r["ok"] and r["rss_mib"] <= r["target_mib"] else "above target"
            lines.append(f"{r['name']:<24} {'':>13} {'':>8} {r['rss_mib']:>7.1f} MiB {'<= 150 MiB':>10}  {status}"
                         " (peak RSS of the whole process)")
            continue
        target = f">= {r['target_mips']:g}" if r.get("target_mips") else ""
        status = "ok" if r["ok"] else f"FAILED ({r['stop']})"
        if r["ok"] and r.get("target_mips"):
            status = "meets target" if r["mips"] >= r["target_mips"] else "below target"
        if "us_per_exit" in r:
            target = f"<= {r['target_us_per_exit']:g} us"
            status = f"{r['us_per_exit']:.1f} us per exit ({r['vm_exits']} exits)"
            if r["ok"]:
                status += ": meets target" if r["us_per_exit"] <= r["target_us_per_exit"] else ": below target"
        lines.append(f"{r['name']:<24} {r['instructions']:>13,} {r['seconds']:>8.3f} {r['mips']:>10.2f} "
                     f"{target:>10}  {status}")
    return "\n".join(lines)


def vmx_overhead(rows: list[dict]) -> list[str]:
    """VMX non-root with EPT against the same workload without VMX (issue-7 target: within 10%)."""
    by = {r["name"]: r for r in rows}
    out = []
    for bare, virt in (("alu-mem-ring3-paging", "alu-mem-ring3-vmx-ept"), ("kernel-mix", "kernel-mix-vmx-ept")):
        a, b = by.get(bare), by.get(virt)
        if a and b and a["mips"]:
            diff = 100.0 * (b["mips"] - a["mips"]) / a["mips"]
            verdict = "within" if diff >= -10 else "outside"
            out.append(f"VMX+EPT: {virt} runs at {diff:+.1f}% of {bare} ({verdict} the 10% target; "
                       f"{b.get('vm_exits', 0)} VM exits)")
    return out


def main(args: argparse.Namespace) -> int:
    chosen = [b for b in BENCHES if not args.names or b.name in args.names]
    want_memory = not args.names or any(n.startswith("memory") for n in args.names)
    if not chosen and not want_memory:
        print(f"vmxlab bench: no benchmark named {' '.join(args.names)}; have: "
              f"{', '.join(b.name for b in BENCHES)}", file=sys.stderr)
        return 2
    rows = []
    for b in chosen:
        rows.append(run_bench(b, args.quick))
        if not args.json:
            print(f"  ran {b.name}", file=sys.stderr)
    if want_memory:
        rows.append(memory_row())
    if args.json:
        print(json.dumps({"machine": machine_description(), "results": rows}, indent=2))
    else:
        print(f"machine: {machine_description()}")
        print(format_table(rows))
        cost = tracing_cost(rows)
        if cost:
            print(cost)
        for line in vmx_overhead(rows):
            print(line)
    return 0 if all(r["ok"] for r in rows) else 1
