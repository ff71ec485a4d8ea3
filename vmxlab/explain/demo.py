"""``vmxlab demo``: the tour of "ring -1", every row an experiment run for real.

Each step runs guests/demo/tour.asm (one experiment per build) on the software
CPU -- bare, or as a guest in VMX non-root operation under the Python VMM with
a chosen exit policy -- and reads what the guest printed and which VM exits the
VMM saw.  Nothing in the table is written by hand: the "what happened" column
is computed from the run, and the "why" column names the rule (SDM section or
paper) the result demonstrates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..assemble import GUESTS
from ..runner import RunOptions, RunResult, run_image
from ..vmm.policies import DEFAULT, PRESETS, Policy

TOUR = GUESTS / "demo" / "tour.asm"
BUDGET = 20_000_000

_RESULT = re.compile(r"RESULT (\w+) a=([0-9a-f]{8}) b=([0-9a-f]{8}) c=([0-9a-f]{8})")
_EXC = re.compile(r"EXC ([0-9a-f]{2}) err=([0-9a-f]{8}) eip=([0-9a-f]{8}) cpl=(\d)")


@dataclass
class Outcome:
    """What one run of the tour guest showed."""

    run: RunResult
    result: tuple[str, int, int, int] | None
    exception: tuple[int, int, int, int] | None
    exits: dict[str, int]

    @property
    def total_exits(self) -> int:
        return sum(self.exits.values())

    def exits_of(self, *reasons: int) -> int:
        return sum(n for key, n in self.exits.items() if int(key.split()[0]) in reasons)


@dataclass
class Row:
    step: str
    ring: str
    mode: str
    instruction: str
    happened: str
    why: str
    checks: dict[str, bool] = field(default_factory=dict)


def run_tour(experiment: int, policy: Policy | None, *, engine: str = "fast", **defines: int) -> Outcome:
    """Run experiment ``experiment`` bare (policy None) or under the VMM with ``policy``."""
    opts = RunOptions(image=TOUR, format="flat", load=0x100000, entry="pm32:0x100000", echo=False,
                      max_instructions=BUDGET, engine=engine, defines={"EXPERIMENT": experiment, **defines},
                      vmx=policy is not None, policy=policy or "default", keep_exit_log=True)
    run = run_image(opts)
    text = run.console.decode("ascii", "replace")
    m = _RESULT.search(text)
    e = _EXC.search(text)
    exits: dict[str, int] = {}
    vm = getattr(run.backend, "vm", None)
    if vm is not None:
        exits = {f"{r['reason']} {r['name']}": r["count"] for r in vm.exit_counts()}
    return Outcome(run,
                   (m.group(1), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16)) if m else None,
                   tuple(int(x, 16) if i < 3 else int(x) for i, x in enumerate(e.groups())) if e else None,
                   exits)


def _with(policy: Policy, name: str, on: bool) -> Policy:
    return policy.with_exit(name, on)


def tour(engine: str = "fast") -> list[Row]:
    rows: list[Row] = []
    # 1. SGDT at ring 3 without VMX
    bare = run_tour(1, None, engine=engine)
    _, base, limit, loaded = bare.result or ("", 0, 0, 0)
    rows.append(Row(
        "1", "3", "no VMX", "sgdt",
        f"legal; returned base {base:#x} limit {limit:#x} = the GDT the kernel loaded ({loaded:#x})",
        "sensitive but not privileged: SGDT works at any CPL (SDM Vol.2 SGDT; Robin & Irvine 2000)",
        {"sgdt returned the loaded GDT": base == loaded and bare.exception is None}))
    # 2a. under a VMM that runs the guest on a shadow GDT but does not intercept SGDT
    shadow = replace(_with(DEFAULT, "descriptor-table", True), shadow_tables=True, intercept_loads_only=True)
    broken = run_tour(1, shadow, engine=engine)
    _, sbase, _, sloaded = broken.result or ("", 0, 0, 0)
    rows.append(Row(
        "2a", "3", "VMX non-root", "sgdt (not intercepted)",
        f"returned {sbase:#x}: the VMM's shadow GDT, not the guest's {sloaded:#x} -- the illusion breaks",
        "a software VMM sees the kernel's LGDT but SGDT runs natively (Adams & Agesen 2006)",
        {"sgdt revealed the shadow": sbase != sloaded}))
    # 2b. with descriptor-table exiting
    fixed_policy = replace(_with(DEFAULT, "descriptor-table", True), shadow_tables=True)
    fixed = run_tour(1, fixed_policy, engine=engine)
    _, fbase, _, floaded = fixed.result or ("", 0, 0, 0)
    n46 = fixed.exits_of(46)
    rows.append(Row(
        "2b", "3", "VMX non-root", "sgdt + descriptor-table exiting",
        f"VM exit 46 ({n46}x); the VMM answered {fbase:#x} = the GDT the guest loaded",
        "descriptor-table exiting (SDM Vol.3C 26.1.3, exit reason 46); the VMM keeps a virtual GDTR",
        {"sgdt exits and sees its own GDT": fbase == floaded and n46 >= 1}))
    # 3. IN at ring 0: bare metal has no device at the backdoor port; the VMM answers
    bare3 = run_tour(2, None, engine=engine)
    vmx3 = run_tour(2, DEFAULT, engine=engine)
    b_magic, b_value = (bare3.result[1], bare3.result[2]) if bare3.result else (0, 0)
    v_magic, v_version = (vmx3.result[1], vmx3.result[2]) if vmx3.result else (0, 0)
    rows.append(Row(
        "3", "0", "no VMX / non-root", "in eax, dx (port 0x5658)",
        f"bare metal: no device there, EAX reads all ones ({b_value:#x}); under the VMM: VM exit 30 "
        f"({vmx3.exits_of(30)}x incl. console output), the VMM's device answers EBX='VMXh' ({v_magic:#x}), "
        f"version {v_version}",
        "legal at ring 0 yet exits: I/O exiting (SDM Vol.3C 26.1.3, reason 30) -- the VMM fakes the hardware",
        {"bare reads nothing": b_magic != 0x564D5868 and b_value == 0xFFFFFFFF,
         "VMM answers": v_magic == 0x564D5868}))
    # 4. IN at ring 3 with IOPL 0: the guest's own protection acts first
    vmx4 = run_tour(3, DEFAULT, engine=engine)
    exc4 = vmx4.exception
    io_exits_by_in = _exits_at(vmx4, 30, exc4[2] if exc4 else None)
    rows.append(Row(
        "4", "3", "VMX non-root", "in al, 0x71 (IOPL 0)",
        f"#GP({exc4[1]:#x}) inside the guest at ring {exc4[3]}; VM exits for this IN: {io_exits_by_in}"
        if exc4 else "no fault (unexpected)",
        "privilege faults come before VM exits (SDM Vol.3C 26.1.1): the guest's rings still work",
        {"#GP in the guest": bool(exc4) and exc4[0] == 13, "no exit for the IN": io_exits_by_in == 0}))
    # 5. CLI at ring 3
    vmx5 = run_tour(4, DEFAULT, engine=engine)
    exc5 = vmx5.exception
    rows.append(Row(
        "5", "3", "VMX non-root", "cli",
        f"#GP({exc5[1]:#x}) in the guest at ring {exc5[3]}" if exc5 else "no fault (unexpected)",
        "IOPL-sensitive: CPL 3 > IOPL 0 (SDM Vol.2 CLI); CLI never exits",
        {"#GP in the guest": bool(exc5) and exc5[0] == 13}))
    # 6. CPUID always exits; HLT exits with HLT exiting
    vmx6 = run_tour(5, DEFAULT, engine=engine)
    ecx, v0, v1 = vmx6.result[1:] if vmx6.result else (0, 0, 0)
    vendor = (v0.to_bytes(4, "little") + v1.to_bytes(4, "little")).decode("ascii", "replace")
    rows.append(Row(
        "6a", "0", "VMX non-root", "cpuid",
        f"VM exit 10 ({vmx6.exits_of(10)}x); the VMM's table: hypervisor bit {ecx >> 31}, vendor '{vendor}...'",
        "CPUID exits unconditionally (SDM Vol.3C 26.1.2): the VMM decides what the guest sees",
        {"cpuid exited": vmx6.exits_of(10) >= 2, "hypervisor bit": bool(ecx >> 31)}))
    vmx6b = run_tour(6, DEFAULT, engine=engine)
    ticks = vmx6b.result[1] if vmx6b.result else 0
    rows.append(Row(
        "6b", "0", "VMX non-root", "sti; hlt (timer)",
        f"VM exit 12 ({vmx6b.exits_of(12)}x) and external-interrupt exits ({vmx6b.exits_of(1)}x); "
        f"the VMM injected {ticks} timer interrupts that woke the guest",
        "HLT exiting (SDM Vol.3C 26.1.3); the VMM injects events on VM entry (SDM Vol.3C 27.6)",
        {"hlt exited": vmx6b.exits_of(12) >= 1, "timer delivered": ticks >= 3}))
    # 7. system calls: ring transitions inside the guest cost no exits
    with_calls = run_tour(7, DEFAULT, engine=engine, SYSCALLS=1000)
    no_calls = run_tour(7, DEFAULT, engine=engine, SYSCALLS=0)
    extra = with_calls.total_exits - no_calls.total_exits
    calls = with_calls.result[1] if with_calls.result else 0
    rows.append(Row(
        "7", "3<->0", "VMX non-root", "int 0x80 / iret (x1000)",
        f"{calls} system calls, 2x{calls} ring changes, {extra} extra VM exits",
        "the guest keeps its own rings 0-3 in non-root operation: ring changes are not VM exits",
        {"no exits for syscalls": extra == 0 and calls == 1000}))
    # 8. MMIO: a load from a guest-physical address with no RAM
    vmx8 = run_tour(8, DEFAULT, engine=engine)
    value = vmx8.result[1] if vmx8.result else 0
    rows.append(Row(
        "8", "0", "VMX non-root", "mov edx, [0xFED00000]",
        f"EPT violation, VM exit 48 ({vmx8.exits_of(48)}x); the VMM emulated the bus: read {value:#x}",
        "EPT: guest-physical addresses the VMM did not map exit (SDM Vol.3C 29.3.3.2)",
        {"EPT exit": vmx8.exits_of(48) >= 1, "bus value": value == 0xFFFFFFFF}))
    # 9. the same workload under every policy
    counts = {name: run_tour(9, PRESETS[name], engine=engine) for name in ("minimal", "default", "paranoid")}
    parts = []
    for name, out in counts.items():
        top = ", ".join(f"{k.split()[1].lower()} {v}" for k, v in sorted(out.exits.items(), key=lambda kv: -kv[1])[:4])
        parts.append(f"{name}: {out.total_exits} exits ({top})")
    same = len({o.result for o in counts.values()}) == 1
    rows.append(Row(
        "9", "3/0", "VMX non-root", "workload (syscalls, cpuid, in, rdtsc, mov cr3, sgdt)",
        "; ".join(parts) + ("; same result under all three" if same else "; RESULTS DIFFER"),
        "as few exits as possible, but enough: the policy decides which sensitive instructions trap",
        {"same answers": same,
         "minimal <= default <= paranoid": counts["minimal"].total_exits <= counts["default"].total_exits
         <= counts["paranoid"].total_exits}))
    return rows


def _exits_at(out: Outcome, reason: int, eip: int | None) -> int:
    """VM exits of ``reason`` whose guest RIP is ``eip`` (from the VMM's exit log)."""
    vm = getattr(out.run.backend, "vm", None)
    if vm is None or eip is None:
        return 0
    return sum(1 for e in vm.exits_log if (e.raw_reason & 0xFFFF) == reason and e.guest_rip == eip)


def render(rows: list[Row]) -> str:
    """A plain-text table (rich is used by the command when the terminal supports it)."""
    head = ("#", "ring", "VMX mode", "instruction", "what happened", "why")
    lines = [" | ".join(head)]
    for r in rows:
        lines.append(" | ".join((r.step, r.ring, r.mode, r.instruction, r.happened, r.why)))
    return "\n".join(lines)


__all__ = ["tour", "render", "run_tour", "Row"]
