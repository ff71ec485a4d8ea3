"""``vmxlab bench --external``: the bench/ guests under vmxlab, Bochs and QEMU TCG, side by side.

Why: a figure in M instructions/s means little alone; next to a C interpreter (Bochs) and a dynamic
binary translator (QEMU TCG) running the *same* guest bytes on the same machine in the same run, it
says where a pure-Python CPU stands.  The numbers are printed, never asserted (DESIGN.md).

How the three are made comparable:

* Same guest: each bench source is assembled once per ITER with nasm; vmxlab loads the flat image at
  0x100000 and enters it with ``--entry pm32:0x100000``.  For Bochs and QEMU the same binary is wrapped
  in bench/external/loader.asm, an option ROM that recreates vmxlab's pm32 entry state (boot GDT at
  0x500, CR0 = 0x11, zeroed RAM, ...) and jumps to the guest.  One loader for both emulators.
* Same stop: the guests end with ``out 0xF4`` (isa-debug-exit).  QEMU has that device.  Bochs has not,
  so it runs under its built-in debugger (Debian builds Bochs with it) with a linear-address
  breakpoint on every ``out 0xF4, al`` of the guest; at the breakpoint the debugger prints the tick
  count and AL (the exit status), and is told to quit.  The guest sources stay untouched.
* Same instructions: vmxlab counts retired instructions exactly.  The emulators run much longer ITERs
  (they are 6-140x faster, and a run must last seconds to rise above their start-up jitter), so their
  instruction count is vmxlab's count per ITER (from its runs at n and N) times their N - n: the loops
  are linear in ITER (checked against Bochs's own tick count, which equals its instruction count with
  ``clock: sync=none``).
* Start-up and warm-up removed: every engine's time is ``t(ITER=N) - t(ITER=n)``, each the best of
  ``repeat`` runs.  For the emulators that subtracts process start, BIOS POST, the loader and their
  translation warm-up; for vmxlab (timed over execution only, set-up excluded) block translation,
  compile() of hot blocks and, under PyPy, the JIT's warm-up.  The figures are steady-state speeds;
  ``vmxlab bench``'s own rows time whole runs.

Bochs's ``cpu: ips=`` only sets how its virtual clock relates to instructions (with ``clock:
sync=none`` nothing is throttled); it is set to vmxlab's instruction clock (10 ns per instruction,
machine.Clock) so a PIT-driven guest (kernel-mix) is preempted at the same instruction intervals.
QEMU's PIT follows host time; its kernel-mix therefore takes fewer timer interrupts per instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .assemble import assemble

EXTERNAL_DIR = Path(__file__).resolve().parent.parent / "bench" / "external"
LOADER = EXTERNAL_DIR / "loader.asm"
BENCH_DIR = EXTERNAL_DIR.parent

LOAD_ADDR = 0x100000  # where loader.asm (and vmxlab's bench rows) put the guest
OUT_F4_AL = b"\xe6\xf4"  # `out 0xF4, al`: every bench guest stops with it (isa-debug-exit)
GUEST_OUTPUT_MARKER = b"\x02vmxlab-bench\x03"  # loader.asm writes it to port 0xE9 before the guest runs
OPTION_ROM_BLOCK = 512
EMULATOR_MEM_MIB = 32
VMXLAB_NS_PER_INSTRUCTION = 10  # machine.Clock's default: Bochs's ips is set to match it
BOCHS_IPS = 1_000_000_000 // VMXLAB_NS_PER_INSTRUCTION
BOCHS_BIN = "bochs-bin"
BOCHS_SHARE = Path("/usr/share/bochs")
QEMU_BINS = ("qemu-system-i386", "qemu-system-x86_64")
RUN_TIMEOUT = 900.0
#: under PyPy vmxlab runs 2-5x faster once its JIT has warmed up, and the warm-up itself varies from run
#: to run by a good part of a second: longer runs keep t(N) - t(n) well above that noise
PYPY_FACTOR = 5


@dataclass(frozen=True)
class Comparison:
    """One guest measured on all three engines, each over ITER = n .. N with its own N: the emulators are
    6-140x faster than vmxlab and their runs must last seconds to rise above their start-up jitter."""

    name: str  # as the vmxlab bench row of the same guest (benchmarks.BENCHES)
    source: str
    small_iter: int  # n, the same for all three
    vmxlab_iter: int
    bochs_iter: int
    qemu_iter: int
    quick_divisor: int = 10  # --quick: every N / this

    def big_iter(self, engine: str, quick: bool) -> int:
        n = {"vmxlab": self.vmxlab_iter, "Bochs": self.bochs_iter}.get(engine, self.qemu_iter)
        if engine == "vmxlab" and platform.python_implementation() == "PyPy":
            n *= PYPY_FACTOR
        return max(2 * self.small_iter, n // self.quick_divisor) if quick else n


COMPARISONS: list[Comparison] = [
    Comparison("alu-mem-pm32", "alu_mem_pm32.asm", 1_000, 2_000_000, 50_000_000, 1_000_000_000),
    Comparison("alu-mem-ring3-paging", "alu_mem_ring3.asm", 1_000, 2_000_000, 50_000_000, 1_000_000_000),
    # kernel-mix: n is above 64 * 256 iterations, where each task has faulted in all of its data pages and the
    # work per iteration becomes constant (system calls, timer preemption; the count is linear from there on)
    Comparison("kernel-mix", "kernel_mix.asm", 20_000, 200_000, 10_000_000, 40_000_000, quick_divisor=4),
]


@dataclass
class EmulatorRun:
    """One emulator process from start to exit."""

    seconds: float
    ok: bool
    status: int | None = None  # the guest's isa-debug-exit value
    output: bytes = b""  # what the guest wrote to port 0xE9
    ticks: int | None = None  # Bochs: its tick count at the stop (= instructions with clock sync=none)
    detail: str = ""


@dataclass
class GuestImage:
    """A bench guest at one ITER, wrapped in the option ROM, and the addresses where it stops."""

    rom: Path
    exit_addresses: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ images


def build_image(source: Path, iters: int) -> GuestImage:
    """Assemble ``source`` with ITER = ``iters`` and wrap it in loader.asm as an option ROM.

    nasm cannot sum bytes, so the size byte (offset 2, in 512-byte blocks) and the checksum (the last
    byte; all bytes must add up to 0 mod 256) are set here.  The guest's ``out 0xF4, al`` addresses are
    where Bochs must stop: a byte match is exact enough, because a breakpoint only fires at the start
    of an executed instruction, and the two bytes there can only be that instruction."""
    guest = assemble(source, {"ITER": iters})
    data = guest.read_bytes()
    raw = assemble(LOADER, {"GUEST": f'"{guest}"'}).read_bytes()
    size = -(-(len(raw) + 1) // OPTION_ROM_BLOCK) * OPTION_ROM_BLOCK
    if size > 0x10000:
        raise ValueError(f"{source.name}: the option ROM would be {size} bytes (at most 64 KiB)")
    rom = bytearray(raw) + bytes(size - len(raw))
    rom[2] = size // OPTION_ROM_BLOCK
    rom[-1] = -sum(rom[:-1]) & 0xFF
    out = guest.with_suffix(".rom")
    out.write_bytes(rom)
    exits = [LOAD_ADDR + m.start() for m in re.finditer(re.escape(OUT_F4_AL), data)]
    return GuestImage(out, exits)


# ------------------------------------------------------------------------------------------ processes


def _run_process(cmd: list[str], *, stdin: bytes = b"", env: dict | None = None, cwd: str | None = None,
                 timeout: float = RUN_TIMEOUT, on_stderr_line: Callable[[bytes], None] | None = None,
                 ) -> tuple[int | None, bytes, bytes, float]:
    """Run ``cmd`` in its own process group; return (returncode or None on timeout, stdout, stderr, seconds).

    The wall time runs from just before the fork to the reaping of the process: what a user waits."""
    out: list[bytes] = []
    err: list[bytes] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=cwd, start_new_session=True)

    def read_out() -> None:
        out.append(proc.stdout.read())

    def read_err() -> None:
        for line in iter(proc.stderr.readline, b""):
            err.append(line)
            if on_stderr_line is not None:
                on_stderr_line(line)

    threads = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        rc: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    seconds = time.perf_counter() - t0
    for t in threads:
        t.join(5)
    return rc, b"".join(out), b"".join(err), seconds


def _drain_tty(path: str) -> None:
    """Read and drop everything Bochs's text-mode display writes to the pseudo-terminal it opened, so its
    screen updates never block on a full pty buffer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


class Emulator:
    """An external emulator that can run a GuestImage; ``missing()`` says why it cannot, if it cannot."""

    label = "?"

    def missing(self) -> str | None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def run(self, image: GuestImage, timeout: float = RUN_TIMEOUT) -> EmulatorRun:
        raise NotImplementedError


class Bochs(Emulator):
    """Bochs 2.7 as Debian builds it (with the internal debugger, which is how the run is stopped)."""

    label = "Bochs"

    #: "Next at t=123" is printed when the simulation stops; the second one is the breakpoint's
    NEXT_AT = re.compile(rb"Next at t=(\d+)")
    BREAKPOINT = re.compile(rb"\(\d+\) Breakpoint \d+, (0x[0-9a-f]+)")
    RAX = re.compile(rb"rax: ([0-9a-f]{8})_([0-9a-f]{8})")
    SCREEN = re.compile(rb'Bochs connected to screen "([^"]+)"')

    def missing(self) -> str | None:
        if shutil.which(BOCHS_BIN) is None:
            return f"{BOCHS_BIN} not found (apt-get install -y bochs bochsbios)"
        if not (BOCHS_SHARE / "BIOS-bochs-latest").exists():
            return f"{BOCHS_SHARE}/BIOS-bochs-latest not found (apt-get install -y bochsbios)"
        return None

    def version(self) -> str:
        _, out, err, _ = _run_process([BOCHS_BIN, "--help", "features"], timeout=30)
        m = re.search(rb"Bochs x86 Emulator ([\w.]+)", out + err)
        return f"Bochs {m.group(1).decode() if m else '?'}"

    def config(self, image: GuestImage, log: str) -> str:
        """The bochsrc.  ``clock: sync=none``: time advances by instructions only (nothing waits for the
        host clock); the display is the text one (the only headless GUI Debian ships) and is drained."""
        return "\n".join([
            f"megs: {EMULATOR_MEM_MIB}",
            f"cpu: count=1, ips={BOCHS_IPS}, reset_on_triple_fault=0",
            f'romimage: file="{BOCHS_SHARE}/BIOS-bochs-latest"',
            f'vgaromimage: file="{BOCHS_SHARE}/VGABIOS-lgpl-latest"',
            f'optromimage1: file="{image.rom}", address=0xd0000',
            "pci: enabled=1, chipset=i440fx",
            "display_library: term",
            "port_e9_hack: enabled=1",
            "clock: sync=none, time0=946684800",
            "boot: floppy",
            "floppya: type=1_44",
            "magic_break: enabled=0",
            "speaker: enabled=0",
            "sound: driver=dummy",
            f'log: "{log}"',
            "panic: action=fatal",
            "error: action=report",
            "info: action=report",
            "debug: action=ignore",
            "",
        ])

    def run(self, image: GuestImage, timeout: float = RUN_TIMEOUT) -> EmulatorRun:
        with tempfile.TemporaryDirectory(prefix="vmxlab-bochs-") as work:
            rc_file = Path(work, "bochsrc")
            rc_file.write_text(self.config(image, str(Path(work, "bochs.log"))))
            # the debugger stops before the first BIOS instruction: set the breakpoints, continue; at the
            # breakpoint show the registers (AL = exit status) and quit
            script = "".join(f"lb {a:#x}\n" for a in image.exit_addresses) + "c\nr\nq\n"
            env = dict(os.environ, TERM="vt100", LINES="25", COLUMNS="80")
            env.pop("DISPLAY", None)

            def on_err(line: bytes) -> None:
                m = self.SCREEN.search(line)
                if m:
                    threading.Thread(target=_drain_tty, args=(m.group(1).decode(),), daemon=True).start()

            rc, out, err, seconds = _run_process([BOCHS_BIN, "-q", "-f", str(rc_file)], stdin=script.encode(),
                                                 env=env, cwd=work, timeout=timeout, on_stderr_line=on_err)
        return self.parse(out, err, rc, seconds)

    @classmethod
    def parse(cls, out: bytes, err: bytes, rc: int | None, seconds: float) -> EmulatorRun:
        """Make sense of the debugger's stdout: guest output after the marker, the breakpoint, ticks, AL."""
        if rc is None:
            return EmulatorRun(seconds, False, detail="timeout")
        bp = cls.BREAKPOINT.search(out)
        if bp is None:
            m = re.search(rb"Bochs is exiting with the following message:\n([^\n]*)", err)
            why = m.group(1).decode(errors="replace").strip() if m else f"exit status {rc}"
            return EmulatorRun(seconds, False, detail=f"the guest never reached out 0xF4 ({why})")
        output = b""
        start = out.find(GUEST_OUTPUT_MARKER)
        if start >= 0:
            output = out[start + len(GUEST_OUTPUT_MARKER):bp.start()]
        ticks = [int(t) for t in cls.NEXT_AT.findall(out)]
        rax = cls.RAX.search(out, bp.end())
        status = int(rax.group(2), 16) & 0xFF if rax else None
        return EmulatorRun(seconds, True, status=status, output=output, ticks=ticks[-1] if ticks else None)


class Qemu(Emulator):
    """QEMU with the TCG accelerator (never KVM), the i386 system emulator when installed."""

    label = "QEMU TCG"

    def binary(self) -> str | None:
        for name in QEMU_BINS:
            if shutil.which(name):
                return name
        return None

    def missing(self) -> str | None:
        if self.binary() is None:
            return "qemu-system-i386 not found (apt-get install -y qemu-system-x86)"
        return None

    def version(self) -> str:
        _, out, _, _ = _run_process([self.binary() or QEMU_BINS[0], "--version"], timeout=30)
        m = re.search(rb"version ([\w.]+)", out)
        return f"QEMU {m.group(1).decode() if m else '?'} TCG"

    def command(self, image: GuestImage, e9_path: str) -> list[str]:
        return [
            self.binary() or QEMU_BINS[0], "-M", "pc", "-m", str(EMULATOR_MEM_MIB), "-accel", "tcg", "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
            "-option-rom", image.rom.as_posix().replace(",", ",,"),
            "-chardev", f"file,id=e9,path={e9_path.replace(',', ',,')}",
            "-device", "isa-debugcon,iobase=0xe9,chardev=e9",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]

    def run(self, image: GuestImage, timeout: float = RUN_TIMEOUT) -> EmulatorRun:
        with tempfile.TemporaryDirectory(prefix="vmxlab-qemu-") as work:
            e9 = Path(work, "e9.bin")
            rc, _, err, seconds = _run_process(self.command(image, str(e9)), cwd=work, timeout=timeout)
            raw = e9.read_bytes() if e9.exists() else b""
        return self.parse(raw, err, rc, seconds)

    @staticmethod
    def parse(e9: bytes, err: bytes, rc: int | None, seconds: float) -> EmulatorRun:
        """isa-debug-exit makes QEMU exit with (value << 1) | 1; anything else is a failure."""
        if rc is None:
            return EmulatorRun(seconds, False, detail="timeout")
        start = e9.find(GUEST_OUTPUT_MARKER)
        output = e9[start + len(GUEST_OUTPUT_MARKER):] if start >= 0 else b""
        if rc & 1 and start >= 0:
            return EmulatorRun(seconds, True, status=rc >> 1, output=output)
        text = err.decode(errors="replace").strip().splitlines()
        why = f"exit status {rc}" + (f": {text[-1]}" if text else "")
        return EmulatorRun(seconds, False, output=output, detail=why)


EMULATORS: list[type[Emulator]] = [Bochs, Qemu]


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class VmxlabRun:
    """One vmxlab run: exact instruction count, execution time (set-up excluded), output, exit value."""

    instructions: int
    seconds: float
    output: bytes
    status: int


class VmxlabFailed(Exception):
    """vmxlab did not reach the guest's isa-debug-exit: the row is reported as failed, not timed."""


def run_vmxlab(source: Path, iters: int) -> VmxlabRun:
    """Run the guest as the bench rows do (flat at 0x100000, pm32 entry, fast engine).  The status is the
    value written to isa-debug-exit (vmxlab's stop status is QEMU's process status, (value << 1) | 1)."""
    from .machine.machine import StopReason
    from .runner import RunOptions, run_image

    r = run_image(RunOptions(image=source, format="flat", load=LOAD_ADDR, entry=f"pm32:{LOAD_ADDR:#x}", echo=False,
                             defines={"ITER": iters}, max_instructions=10**10))
    if r.stop.reason != StopReason.DEBUG_EXIT:
        raise VmxlabFailed(f"ITER={iters}: vmxlab stopped with {r.stop.reason.value} {r.stop.detail}".rstrip())
    return VmxlabRun(r.instructions or 0, r.seconds, r.console, r.stop.status >> 1)


def time_vmxlab(source: Path, small: int, big: int, repeat: int) -> dict:
    """vmxlab by the emulators' method: (I(big) - I(small)) / (t(big) - t(small)), best of ``repeat``, with
    exact counts.  The difference also removes block translation and compilation, as it removes the
    emulators' own translation warm-up."""
    best: dict[int, VmxlabRun] = {}
    for _ in range(repeat):
        for n in (small, big):
            try:
                run = run_vmxlab(source, n)
            except VmxlabFailed as e:
                return {"ok": False, "detail": str(e)}
            if n not in best or run.seconds < best[n].seconds:
                best[n] = run
    instructions = best[big].instructions - best[small].instructions
    dt = best[big].seconds - best[small].seconds
    return {"ok": True, "iter": big, "small_iter": small, "instructions": instructions, "seconds": round(dt, 3),
            "t_big": round(best[big].seconds, 3), "t_small": round(best[small].seconds, 3),
            "mips": round(instructions / dt / 1e6, 2) if dt > 0 else 0.0,
            "per_iteration": instructions / (big - small), "status": best[small].status,
            "small_output": best[small].output.decode(errors="replace")}


def time_emulator(emu: Emulator, source: Path, small: int, big: int, repeat: int,
                  per_iteration: float) -> dict:
    """t(big) - t(small), each the best of ``repeat`` runs (alternating, so a busy moment on the shared
    machine hits both alike); M instructions/s from vmxlab's per-iteration count."""
    images = {n: build_image(source, n) for n in (small, big)}
    best: dict[int, EmulatorRun] = {}
    for _ in range(repeat):
        for n in (small, big):
            run = emu.run(images[n])
            if not run.ok:
                return {"ok": False, "detail": f"ITER={n}: {run.detail}"}
            if n not in best or run.seconds < best[n].seconds:
                best[n] = run
    dt = best[big].seconds - best[small].seconds
    instructions = round(per_iteration * (big - small))
    row = {
        "ok": True, "iter": big, "small_iter": small, "instructions": instructions,
        "seconds": round(dt, 3), "t_big": round(best[big].seconds, 3), "t_small": round(best[small].seconds, 3),
        "mips": round(instructions / dt / 1e6, 1) if dt > 0 else 0.0,
        "status": best[big].status, "output": best[big].output.decode(errors="replace"),
        "small_output": best[small].output.decode(errors="replace"),
    }
    if best[big].ticks is not None and best[small].ticks is not None:
        row["emulator_counted"] = best[big].ticks - best[small].ticks
    return row


def run_comparisons(quick: bool = False, repeat: int = 3, names: list[str] | None = None,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Measure every Comparison on vmxlab and on each installed emulator; return a JSON-able report."""
    say = progress or (lambda msg: None)
    emulators = [cls() for cls in EMULATORS]
    info = {}
    for emu in emulators:
        why = emu.missing()
        info[emu.label] = {"missing": why} if why else {"version": emu.version()}
    rows = []
    for c in COMPARISONS:
        if names and c.name not in names:
            continue
        source = BENCH_DIR / c.source
        big = c.big_iter("vmxlab", quick)
        say(f"  {c.name}: vmxlab ITER={big:,} and {c.small_iter:,}, best of {repeat}")
        row: dict = {"name": c.name, "source": c.source, "vmxlab": time_vmxlab(source, c.small_iter, big, repeat)}
        for emu in emulators:
            if info[emu.label].get("missing"):
                row[emu.label] = {"ok": False, "skipped": info[emu.label]["missing"]}
                continue
            if not row["vmxlab"]["ok"]:  # no instruction count per ITER to time them by
                row[emu.label] = {"ok": False, "skipped": "vmxlab failed on this guest"}
                continue
            big = c.big_iter(emu.label, quick)
            say(f"  {c.name}: {emu.label} ITER={big:,} and {c.small_iter:,}, best of {repeat}")
            row[emu.label] = time_emulator(emu, source, c.small_iter, big, repeat, row["vmxlab"]["per_iteration"])
        rows.append(row)
    return {"emulators": info, "repeat": repeat, "rows": rows}


# ------------------------------------------------------------------------------------------ report


def _ratio(vmxlab_mips: float, their_mips: float) -> str:
    if not their_mips:
        return ""
    r = vmxlab_mips / their_mips
    return f"{r:.3f}x (1/{1 / r:.0f})" if r < 1 else f"{r:.2f}x"


def format_report(report: dict) -> str:
    """The side-by-side table: one line per guest and engine, vmxlab's speed as a ratio of each emulator's."""
    lines = []
    for label, info in report["emulators"].items():
        lines.append(f"{label}: " + (f"skipped: {info['missing']}" if info.get("missing") else info["version"]))
    lines.append(f"speed = instructions / (t(ITER=N) - t(ITER=n)), t the best of {report['repeat']} runs: start-up, "
                 "BIOS, loader and translation warm-up cancel; the ITER column is N - n")
    lines.append("instructions: vmxlab's exact count; for Bochs and QEMU vmxlab's count per ITER x (N - n)")
    head = (f"{'guest':<22} {'engine':<9} {'ITER':>15} {'instructions':>15} {'seconds':>8} {'M instr/s':>10}"
            f"  {'vmxlab/them':<16} check")
    lines += [head, "-" * len(head)]
    for row in report["rows"]:
        v = row["vmxlab"]
        if not v["ok"]:
            lines.append(f"{row['name']:<22} {'vmxlab':<9} FAILED: {v['detail']}")
        else:
            lines.append(f"{row['name']:<22} {'vmxlab':<9} {v['iter'] - v['small_iter']:>15,} "
                         f"{v['instructions']:>15,} {v['seconds']:>8.3f} {v['mips']:>10.2f}  {'':<16} "
                         f"status {v['status']}")
        for label in report["emulators"]:
            r = row[label]
            if r.get("skipped"):
                lines.append(f"{'':<22} {label:<9} skipped: {r['skipped']}")
                continue
            if not r["ok"]:
                lines.append(f"{'':<22} {label:<9} FAILED: {r['detail']}")
                continue
            lines.append(f"{'':<22} {label:<9} {r['iter'] - r['small_iter']:>15,} {r['instructions']:>15,} "
                         f"{r['seconds']:>8.3f} {r['mips']:>10.1f}  {_ratio(v['mips'], r['mips']):<16} "
                         f"{check_text(row, r)}")
    return "\n".join(lines)


def check_text(row: dict, r: dict) -> str:
    """What was checked about an emulator's runs: exit status, output equal to vmxlab's, Bochs's count."""
    v = row["vmxlab"]
    notes = [f"status {r['status']}" + ("" if r["status"] == v["status"] else f" (vmxlab: {v['status']})")]
    if v["small_output"]:
        notes.append("output = vmxlab's" if r["small_output"] == v["small_output"] else "OUTPUT DIFFERS")
    if "emulator_counted" in r:
        diff = r["emulator_counted"] - r["instructions"]
        notes.append(f"Bochs counted {'the same' if diff == 0 else f'{diff:+,}'}")
    return ", ".join(notes)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``vmxlab bench --external``."""
    import sys

    from .benchmarks import machine_description

    repeat = max(1, getattr(args, "repeat", None) or (1 if args.quick else 3))
    report = run_comparisons(quick=args.quick, repeat=repeat, names=args.names or None,
                             progress=None if args.json else lambda m: print(m, file=sys.stderr))
    report["machine"] = machine_description()
    if not report["rows"]:
        print(f"vmxlab bench --external: no comparison named {' '.join(args.names)}; have: "
              f"{', '.join(c.name for c in COMPARISONS)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}")
        print(format_report(report))
    failed = [r for row in report["rows"] for k, r in row.items()
              if isinstance(r, dict) and r.get("ok") is False and not r.get("skipped")]
    return 1 if failed else 0
