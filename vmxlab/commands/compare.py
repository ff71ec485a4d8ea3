"""``vmxlab compare IMAGE``: run an image on the software CPU and on /dev/kvm, print the differences.

Why: the software CPU claims to be an x86; a real CPU is the referee.  The same image, loader,
entry state and device models run once on each backend, and four things are compared:

1. the console output, per channel (COM1, port 0xE9);
2. the port-I/O sequence -- every IN/OUT the guest performed, in order, with its value.  On
   ``kvm`` each one is a VM exit (reason 30); on ``emu`` each one is the instruction a VMM
   would see exit.  This is the exit sequence both backends can produce for any guest;
3. how the run stopped (reason, status);
4. the final architectural registers: general-purpose registers, EIP, EFLAGS, segment
   registers (selector, base, limit, access rights), CR0/CR2/CR3/CR4, EFER, GDTR, IDTR.

Differences that come from the host and not from either CPU model are listed and explained,
never hidden (:data:`HOST_DEPENDENT`): they are marked "host-dependent" and do not make the
result fail.  Everything else is a real difference (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from ..cpu.state import CR0_PG, EFER_LMA
from ..errors import UserError
from ..machine.machine import StopReason, StopRequest
from .run import add_run_options, options_from_args

#: what differs between a software model and the host CPU for reasons outside both models
HOST_DEPENDENT = {
    "cpuid": "CPUID: emu answers with its own model's table (vmxlab/cpu/cpuid.py: a P6-class part with no "
             "FPU/SSE); kvm answers with KVM's table for the host CPU -- and on PVM hosts ring-0 CPUID "
             "returns mostly the host's own bits whatever KVM_SET_CPUID2 says (kvm.md §0).",
    "tsc": "RDTSC: emu derives the TSC from its instruction count; kvm reads the host's TSC.",
    "timer": "PIT and CMOS time: emu's clock is virtual (instruction count x 10 ns, reproducible); on kvm "
             "there is no instruction count, so the device models run on host time (--wall-clock).",
    "a20": "A20: emu models the A20 gate (port 0x92, i8042); KVM has none, addresses never wrap at 1 MiB.",
    "instructions": "Instruction count and --max-instructions: KVM counts no instructions (n/a).",
    "pvm-paging": "PVM host: guest paging outside long mode (32-bit or PAE) is refused -- MOV to CR0 with "
                  "PG = 1 raises #GP (measured; PVM runs 64-bit guests only), so a guest that turns paging on "
                  "in protected mode diverges there on kvm.  A host with VMX or SVM runs it.",
}

#: ports whose read values depend on time: 8254 counters and the CMOS data port
TIME_PORTS = {0x40, 0x41, 0x42, 0x61, 0x71}

REGISTERS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags", "es", "cs", "ss", "ds",
             "fs", "gs", "cr0", "cr2", "cr3", "cr4", "efer", "gdtr", "idtr")


@dataclass
class Side:
    backend: str
    stop: StopRequest
    console: dict[str, bytes]
    io: list[tuple[str, int, int, int]]
    state: dict
    seconds: float
    exits: dict | None = None
    instructions: int | None = None
    pvm: bool = False  # the kvm side ran on a PVM host


@dataclass
class Difference:
    what: str
    detail: str
    host_dependent: str | None = None  # a key of HOST_DEPENDENT when explained by the host


@dataclass
class Report:
    image: str
    emu: Side
    kvm: Side
    differences: list[Difference] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def real_differences(self) -> list[Difference]:
        return [d for d in self.differences if d.host_dependent is None]

    @property
    def result(self) -> str:
        """identical / host-dependent only (every difference explained by the host) / different."""
        if self.real_differences:
            return "different"
        return "host-dependent only" if self.differences else "identical"

    def as_dict(self) -> dict:
        return {
            "image": self.image,
            "identical": self.identical,
            "notes": self.notes,
            "differences": [d.__dict__ for d in self.differences],
            "host_dependent_explanations": {d.host_dependent: HOST_DEPENDENT[d.host_dependent]
                                            for d in self.differences if d.host_dependent},
            "emu": {"stop": self.emu.stop.reason.value, "status": self.emu.stop.status,
                    "instructions": self.emu.instructions, "io_accesses": len(self.emu.io),
                    "seconds": round(self.emu.seconds, 4)},
            "kvm": {"stop": self.kvm.stop.reason.value, "status": self.kvm.stop.status,
                    "io_accesses": len(self.kvm.io), "exits": self.kvm.exits, "seconds": round(self.kvm.seconds, 4)},
            "result": self.result,
        }


def run_side(opts, backend: str) -> Side:
    """Run the image on one backend, recording console channels and every port access."""
    import time

    from ..runner import build_machine, load_image, make_backend, resolve_image

    opts.backend = backend
    opts.echo = False
    data = resolve_image(opts.image, opts.defines)
    machine = build_machine(opts)
    entry = load_image(machine, opts, data)
    be = make_backend(machine, opts)
    io: list[tuple[str, int, int, int]] = []

    def on_access(port: int, size: int, is_write: bool, value: int) -> None:
        io.append(("out" if is_write else "in", port, size, value))

    machine.ports.on_access = on_access
    try:
        be.apply_entry(entry)
        t0 = time.perf_counter()
        stop = be.run(opts.max_instructions if backend == "emu" else None, opts.timeout)
        seconds = time.perf_counter() - t0
        if hasattr(be, "state_dict"):
            state = be.state_dict()
            state["cpuid_signature"] = be.vcpu.cpuid_signature()
        else:
            state = be.cpu.state_dict()
        exits = be.exit_summary() if hasattr(be, "exit_summary") else None
        icount = getattr(getattr(be, "cpu", None), "icount", None) if backend == "emu" else None
    finally:
        close = getattr(be, "close", None)
        if close is not None:
            close()
    console = {ch: bytes(b) for ch, b in machine.console.by_channel.items()}
    pvm = backend == "kvm" and be.vcpu.pvm
    return Side(backend, stop, console, io, state, seconds, exits, icount, pvm)


def compare_sides(image: str, emu: Side, kvm: Side) -> Report:
    rep = Report(image, emu, kvm)
    # 1. console, per channel
    for ch in sorted(set(emu.console) | set(kvm.console)):
        a, b = emu.console.get(ch, b""), kvm.console.get(ch, b"")
        if a == b:
            rep.identical.append(f"console {ch} ({len(a)} bytes)")
        else:
            rep.differences.append(Difference(f"console {ch}", _first_text_difference(a, b),
                                              _console_host_cause(a, b)))
    # 2. port-I/O sequence
    if emu.io == kvm.io:
        rep.identical.append(f"port-I/O sequence ({len(emu.io)} accesses)")
    else:
        rep.differences.extend(_io_differences(emu.io, kvm.io))
    # 3. stop
    if (emu.stop.reason, emu.stop.status) == (kvm.stop.reason, kvm.stop.status):
        rep.identical.append(f"stop: {emu.stop.reason.value}, status {emu.stop.status}")
    else:
        rep.differences.append(Difference("stop", f"emu: {emu.stop.reason.value} {emu.stop.detail} / "
                                                  f"kvm: {kvm.stop.reason.value} {kvm.stop.detail}"))
    # 4. final registers: only when the runs ended on their own (a timeout stops each run wherever it is)
    if StopReason.TIMEOUT in (emu.stop.reason, kvm.stop.reason) or emu.stop.reason == StopReason.BUDGET:
        rep.notes.append("final registers not compared: a run was stopped by the timeout or the instruction "
                         "budget, so the two stopped at unrelated points")
        _explain_pvm_paging(rep)
        return rep
    same = []
    real_mode = not (emu.state.get("cr0", 0) & 1) and not (kvm.state.get("cr0", 0) & 1)
    for name in REGISTERS:
        a, b = emu.state.get(name), kvm.state.get(name)
        if a is None or b is None:
            continue
        if real_mode and isinstance(a, dict) and isinstance(b, dict):
            # In real mode a segment load sets only selector and base; the hidden access rights are
            # not visible to software and implementations differ (a VM entry accepts CS type 3 or
            # 11 for a real-mode guest, SDM Vol.3C 27.3.1.2), so they are not compared.
            a = {k: v for k, v in a.items() if k != "ar"}
            b = {k: v for k, v in b.items() if k != "ar"}
        if _norm(a) == _norm(b):
            same.append(name)
        else:
            rep.differences.append(Difference(f"register {name}", f"emu {_fmt(a)} / kvm {_fmt(b)}",
                                              _register_host_cause(name, a, b, emu, kvm)))
    rep.identical.append(f"final registers ({', '.join(same)})" if same else "final registers: none compared")
    _explain_pvm_paging(rep)
    return rep


def _explain_pvm_paging(rep: Report) -> None:
    """PVM hosts refuse paging outside long mode: MOV to CR0 with PG = 1 raises #GP in a 32-bit guest
    (measured; PVM runs 64-bit guests only).  When the software CPU turned 32-bit or PAE paging on and
    the KVM run never did, every difference from there on is that host limit: tag them, keep them."""
    e, k = rep.emu.state, rep.kvm.state
    legacy_paging = e.get("cr0", 0) & CR0_PG and not e.get("efer", 0) & EFER_LMA
    if not (rep.kvm.pvm and legacy_paging and not k.get("cr0", 0) & CR0_PG):
        return
    for d in rep.differences:
        if d.host_dependent is None:
            d.host_dependent = "pvm-paging"


def _register_host_cause(name: str, a, b, emu: Side, kvm: Side) -> str | None:
    """A register holding each CPU's CPUID signature (EDX after RESET, SDM Vol.3A 10.1.4) differs
    because the CPUs differ."""
    from ..cpu.cpuid import FAMILY_MODEL_STEPPING

    sig = kvm.state.get("cpuid_signature")
    if name == "edx" and a == FAMILY_MODEL_STEPPING and sig is not None and b == sig:
        return "cpuid"
    return None


def _norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _fmt(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} {x:#x}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(f"{x:#x}" for x in v) + ")"
    return f"{v:#x}"


def _first_text_difference(a: bytes, b: bytes) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, n - 20)
    return (f"first difference at byte {n}: emu {a[start:n + 30]!r} / kvm {b[start:n + 30]!r} "
            f"({len(a)} vs {len(b)} bytes)")


def _console_host_cause(a: bytes, b: bytes) -> str | None:
    """Output that quotes CPUID (vendor or brand strings) differs because the CPUs differ."""
    markers = (b"GenuineIntel", b"AuthenticAMD", b"vmxlab software CPU", b"KVMKVMKVM")
    if any(m in a or m in b for m in markers):
        return "cpuid"
    return None


def _io_differences(a: list, b: list) -> list[Difference]:
    out = []
    n = min(len(a), len(b))
    time_only = True
    first = None
    for i in range(n):
        if a[i] != b[i]:
            same_access = a[i][:3] == b[i][:3]
            if not (same_access and a[i][0] == "in" and a[i][1] in TIME_PORTS):
                time_only = False
                first = first if first is not None else i
                break
            first = first if first is not None else i
    if len(a) != len(b):
        time_only = False
    if first is None:
        first = n
    ctx = lambda seq: ", ".join(f"{d} {p:#x}/{s}={v:#x}" for d, p, s, v in seq[first:first + 3])  # noqa: E731
    detail = (f"{len(a)} vs {len(b)} accesses; first difference at #{first}: emu [{ctx(a)}] / kvm [{ctx(b)}]")
    out.append(Difference("port-I/O sequence", detail, "timer" if time_only else None))
    return out


def format_report(rep: Report) -> str:
    e, k = rep.emu, rep.kvm
    lines = [f"vmxlab compare {rep.image}",
             f"  emu: {e.stop.reason.value} (status {e.stop.status}), {e.instructions} instructions, "
             f"{len(e.io)} port accesses, {e.seconds:.3f} s",
             f"  kvm: {k.stop.reason.value} (status {k.stop.status}), instructions n/a, "
             f"{sum((k.exits or {}).get('vm_exits', {}).values())} VM exits, {k.seconds:.3f} s"]
    for s in rep.identical:
        lines.append(f"  same     {s}")
    for d in rep.differences:
        tag = f"host-dependent ({d.host_dependent})" if d.host_dependent else "DIFFERENT"
        lines.append(f"  {tag:<9} {d.what}: {d.detail}")
    for n in rep.notes:
        lines.append(f"  note     {n}")
    causes = sorted({d.host_dependent for d in rep.differences if d.host_dependent})
    lines.append("  host-dependent differences seen: " + (", ".join(causes) if causes else "none"))
    for c in causes:
        lines.append(f"    {c}: {HOST_DEPENDENT[c]}")
    lines.append("  not comparable here: " + HOST_DEPENDENT["instructions"])
    if rep.real_differences:
        lines.append(f"result: {len(rep.real_differences)} difference(s) between the CPU models")
    elif rep.differences:
        lines.append(f"result: no difference from the CPU models; {len(rep.differences)} host-dependent "
                     "difference(s), listed and explained above")
    else:
        lines.append("result: identical")
    return "\n".join(lines)


def compare_image(opts) -> Report:
    import copy

    from ..backends.select import kvm_available

    ok, why = kvm_available()
    if not ok:
        raise UserError(f"compare needs /dev/kvm: {why}")
    emu = run_side(copy.copy(opts), "emu")
    kvm = run_side(copy.copy(opts), "kvm")
    return compare_sides(str(opts.image), emu, kvm)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="run an image on emu and on kvm and print the differences",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run, timeout=None)


def run(args: argparse.Namespace) -> int:
    if args.backend != "emu":
        raise UserError("compare runs both backends itself; drop --backend")
    opts = options_from_args(args, echo=False)
    if opts.timeout is None:
        opts.timeout = 60.0  # a guest that never stops must not hang the comparison
    if opts.max_instructions is None:
        opts.max_instructions = 50_000_000
    rep = compare_image(opts)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2))
    else:
        print(format_report(rep))
    sys.stdout.flush()
    return 0 if not rep.real_differences else 1
