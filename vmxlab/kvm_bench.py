"""``vmxlab bench --kvm``: the cost of one port-I/O VM exit under vmxlab's kvm backend, a minimal
C VMM and QEMU, on the same guest, in one run.

The guest (bench/kvm_exit_loop.asm) is a boot sector that executes ``out dx, al`` ITER times and
then writes to the isa-debug-exit port 0xF4.  Each OUT is one exit to the VMM in user space and
back, so (time of the run) / (number of exits) is the round trip: KVM_RUN, the exit, the VMM's
handling, the re-entry.  What each VMM does per exit:

* ``C``: bench/kvm_exit_vmm.c, built here with gcc -O2: KVM_RUN in a loop, reads port, size and
  the data byte (the least any VMM does).
* ``vmxlab``: the kvm backend as ``vmxlab run --backend kvm`` uses it: KVM_RUN through ctypes, the
  exit translated into an SDM VM exit (reason 30 with its qualification), the exit dispatcher,
  the port bus and the device model (the debug console at 0xE9 appends the byte to the console).
* ``vmxlab vCPU``: only ``KvmGuestVcpu.run()`` in a loop (binding + exit translation, no handler).
* ``QEMU``: ``qemu-system-x86_64 -accel kvm``, booted by SeaBIOS from the image as a disk; its
  time is t(ITER) - t(0) of two whole runs, which removes start-up and the BIOS.

Each figure is the median of ``repeat`` runs.  The ratio is to the C VMM; the target (issue 5)
is vmxlab within 1.1x of C.  Timings never appear in tests (DESIGN.md); they live here.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .assemble import assemble

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
GUEST = BENCH_DIR / "kvm_exit_loop.asm"
C_VMM = BENCH_DIR / "kvm_exit_vmm.c"
TARGET_RATIO = 1.1


def guest_image(iterations: int) -> Path:
    return assemble(GUEST, {"ITER": iterations})


def build_c_vmm(workdir: Path) -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    out = workdir / "kvm_exit_vmm"
    subprocess.run([gcc, "-O2", "-o", str(out), str(C_VMM)], check=True, capture_output=True)
    return out


def run_c(binary: Path, image: Path) -> dict:
    proc = subprocess.run([str(binary), str(image)], capture_output=True, text=True, check=True)
    d = json.loads(proc.stdout)
    return {"exits": d["exits"], "seconds": d["seconds"]}


def run_vmxlab(image: Path) -> dict:
    from .runner import RunOptions, run_image

    r = run_image(RunOptions(image=image, format="flat", load=0x7C00, backend="kvm", echo=False))
    exits = r.backend.vcpu.io_exits
    r.backend.close()
    return {"exits": exits, "seconds": r.seconds}


def run_vmxlab_vcpu(image: Path) -> dict:
    """Only the vCPU: run() until the debug-exit port, no exit handler, no devices."""
    from .backends.kvm.vcpu import KvmGuestVcpu
    from .machine.loaders import real_entry
    from .machine.machine import Console, Machine

    m = Machine.create(1, Console(echo=False))
    m.memory.write_bytes(0x7C00, image.read_bytes())
    v = KvmGuestVcpu(m)
    v.apply_entry(real_entry(0, 0x7C00, None))
    n = 0
    t0 = time.perf_counter()
    while True:
        ex = v.run()
        n += 1
        if ex.decoded.port == 0xF4:
            break
    seconds = time.perf_counter() - t0
    v.close()
    return {"exits": n, "seconds": seconds}


def run_qemu(image: Path) -> float | None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    t0 = time.perf_counter()
    proc = subprocess.run([qemu, "-accel", "kvm", "-display", "none", "-nodefaults", "-no-user-config", "-m", "16",
                           "-drive", f"file={image},format=raw,if=ide",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-boot", "c"],
                          capture_output=True, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 1:  # isa-debug-exit: status (0 << 1) | 1
        return None
    return seconds


def measure(iterations: int = 100_000, repeat: int = 3) -> dict:
    rows: dict[str, list[float]] = {"C": [], "vmxlab": [], "vmxlab vCPU": [], "QEMU": []}
    exits: dict[str, int] = {}
    image = guest_image(iterations)
    empty = guest_image(0)
    with tempfile.TemporaryDirectory() as tmp:
        cbin = build_c_vmm(Path(tmp))
        for _ in range(repeat):  # interleaved, so a slow moment of the host hits every VMM alike
            if cbin is not None:
                d = run_c(cbin, image)
                rows["C"].append(d["seconds"] / d["exits"])
                exits["C"] = d["exits"]
            d = run_vmxlab(image)
            rows["vmxlab"].append(d["seconds"] / d["exits"])
            exits["vmxlab"] = d["exits"]
            d = run_vmxlab_vcpu(image)
            rows["vmxlab vCPU"].append(d["seconds"] / d["exits"])
            exits["vmxlab vCPU"] = d["exits"]
            full, base = run_qemu(image), run_qemu(empty)
            if full is not None and base is not None:
                rows["QEMU"].append((full - base) / (iterations + 1))
                exits["QEMU"] = iterations + 1
    results = []
    c_median = statistics.median(rows["C"]) if rows["C"] else None
    for name, vals in rows.items():
        if not vals:
            results.append({"vmm": name, "available": False})
            continue
        med = statistics.median(vals)
        results.append({"vmm": name, "available": True, "exits": exits[name], "us_per_exit": round(med * 1e6, 2),
                        "min_us": round(min(vals) * 1e6, 2), "max_us": round(max(vals) * 1e6, 2),
                        "exits_per_second": round(1 / med),
                        "ratio_to_c": round(med / c_median, 3) if c_median else None})
    return {"iterations": iterations, "repeat": repeat, "results": results, "target_ratio": TARGET_RATIO}


def format_table(m: dict) -> str:
    head = f"{'VMM':<14} {'us/exit':>8} {'(min-max)':>15} {'exits/s':>9} {'vs C':>6}"
    lines = [f"port-I/O exit round trip, {m['iterations']} OUTs per run, median of {m['repeat']}", head,
             "-" * len(head)]
    for r in m["results"]:
        if not r["available"]:
            lines.append(f"{r['vmm']:<14} {'n/a':>8}")
            continue
        rng = f"({r['min_us']:.2f}-{r['max_us']:.2f})"
        ratio = f"{r['ratio_to_c']:.2f}x" if r["ratio_to_c"] is not None else ""
        lines.append(f"{r['vmm']:<14} {r['us_per_exit']:>8.2f} {rng:>15} {r['exits_per_second']:>9,} {ratio:>6}")
    vm = next((r for r in m["results"] if r["vmm"] == "vmxlab" and r["available"]), None)
    if vm is not None and vm["ratio_to_c"] is not None:
        verdict = "meets" if vm["ratio_to_c"] <= m["target_ratio"] else "misses"
        lines.append(f"vmxlab {verdict} the target of {m['target_ratio']}x the C VMM ({vm['ratio_to_c']:.2f}x)")
    return "\n".join(lines)


def main(quick: bool = False, as_json: bool = False) -> int:
    from .backends.select import kvm_available

    ok, why = kvm_available()
    if not ok:
        print(f"vmxlab bench --kvm: skipped: {why}")
        return 0
    m = measure(20_000 if quick else 100_000, 3)
    print(json.dumps(m, indent=2) if as_json else format_table(m))
    return 0
