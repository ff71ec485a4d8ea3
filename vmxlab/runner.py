"""Build a machine from run options, load an image, run it: the path shared by the CLI, tests and bench.

``vmxlab run`` is a thin layer over :func:`run_image`; tests call it with
``echo=False`` and read the captured console from the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .machine.loaders import EntryState, load_flat, parse_entry
from .machine.machine import Console, Machine, StopReason, StopRequest

#: CLI exit statuses per stop reason (debug exit uses (v << 1) | 1, always odd; these are even)
EXIT_STATUS = {
    StopReason.SHUTDOWN_REQUEST: 0,
    StopReason.HALTED: 10,
    StopReason.TRIPLE_FAULT: 12,
    StopReason.BUDGET: 14,
    StopReason.RESET: 16,
    StopReason.VM_EXIT: 18,
    StopReason.TIMEOUT: 124,
    StopReason.ERROR: 70,
}


@dataclass
class RunOptions:
    image: Path
    format: str = "auto"  # flat | multiboot | rom | auto
    load: int | None = None
    entry: str | None = None
    stack: int | None = None
    mem_mib: int = 32
    max_instructions: int | None = None
    timeout: float | None = None
    engine: str = "fast"
    block_cache: int | None = None  # bound on the software CPU's block cache (None: the default)
    backend: str = "emu"
    cmdline: str = ""
    echo: bool = True
    wall_clock: bool = False
    defines: dict[str, str | int] = field(default_factory=dict)
    #: attach the host terminal to COM1 (raw mode, input thread) when stdin is a terminal
    serial_stdin: bool = False
    trace_path: Path | None = None
    trace_format: str = "jsonl"  # jsonl | chrome
    trace_kinds: list[str] | None = None
    show: bool = False
    vmx: bool = False  # run as a guest in VMX non-root operation under the Python VMM
    policy: object = "default"  # a preset name, or a vmxlab.vmm.policies.Policy
    keep_exit_log: bool = False  # --vmx: keep every VmExit (for experiments that inspect them)
    exits: list[str] = field(default_factory=list)  # --exit NAME=on|off overrides


@dataclass
class RunResult:
    stop: StopRequest
    #: None when the backend cannot count guest instructions (kvm)
    instructions: int | None
    seconds: float
    console: bytes
    machine: Machine
    backend: object
    entry: EntryState

    @property
    def mips(self) -> float:
        if self.instructions is None:
            return 0.0
        return self.instructions / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def exit_status(self) -> int:
        if self.stop.reason == StopReason.DEBUG_EXIT:
            return self.stop.status & 0xFF
        return EXIT_STATUS.get(self.stop.reason, 70)

    def summary(self) -> str:
        s = self.stop
        detail = f" ({s.detail})" if s.detail else ""
        post = f", last POST code {self.machine.post_codes[-1]:#04x}" if self.machine.post_codes else ""
        if self.instructions is None:  # kvm: no instruction count, say what the backend knows instead
            extra = getattr(self.backend, "summary", None)
            what = extra() if extra is not None else "instructions: n/a"
            return f"{what}, {self.seconds:.3f} s, stopped: {s.reason.value}{detail}{post}"
        return (f"{self.instructions} instructions in {self.seconds:.3f} s ({self.mips:.2f} M instr/s), "
                f"stopped: {s.reason.value}{detail}{post}")

    def as_dict(self) -> dict:
        d = {
            "stop_reason": self.stop.reason.value,
            "stop_detail": self.stop.detail,
            "exit_status": self.exit_status,
            "instructions": self.instructions,
            "seconds": round(self.seconds, 6),
            "mips": round(self.mips, 3),
            "console": self.console.decode("utf-8", "replace"),
            "post_codes": self.machine.post_codes[-16:],
            "unclaimed_ports": {f"{p:#x}": n for p, n in sorted(self.machine.ports.unclaimed.items())},
            "backend": getattr(self.backend, "name", "?"),
        }
        cpu = getattr(self.backend, "cpu", None)
        if cpu is not None and hasattr(cpu, "state_dict"):
            d["final_state"] = cpu.state_dict()
        elif hasattr(self.backend, "state_dict"):  # kvm: the vCPU's registers in the same shape
            d["final_state"] = self.backend.state_dict()
        if hasattr(self.backend, "exit_summary"):
            d["exits"] = self.backend.exit_summary()
        vm = getattr(self.backend, "vm", None)
        if vm is not None:
            d["vm_exits"] = vm.exit_counts()
            if vm.policy is not None:  # emu --vmx: the exit policy and the guest's registers from the VMCS
                d["policy"] = vm.policy.summary()
                d["final_state"] = vm.vcpu.get_regs()
        return d

    def exit_table(self) -> str:
        """VM exits by reason, one line each (the text summary of --vmx runs); "" without a VMM."""
        vm = getattr(self.backend, "vm", None)
        if vm is None:
            return ""
        rows = vm.exit_counts()
        total = sum(r["count"] for r in rows)
        policy = f"policy {vm.policy.summary()}" if vm.policy is not None else "exits KVM hands to user space"
        lines = [f"VM exits: {total} ({policy})"]
        lines += [f"  {r['count']:>8}  {r['reason']:>3} {r['name']}" for r in rows]
        return "\n".join(lines)


def resolve_image(path: Path, defines: dict | None = None) -> bytes:
    """Read an image; a ``.asm`` source is assembled with nasm first."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".asm":
        from .assemble import assemble

        path = assemble(path, defines)
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def build_machine(opts: RunOptions) -> Machine:
    from .devices.board import attach_standard_devices

    if not 1 <= opts.mem_mib <= 3072:
        raise UserError(f"--mem {opts.mem_mib}: choose between 1 and 3072 MiB")
    reserved = 0
    if opts.vmx:
        from .vmm.backend import RESERVED_MIB

        reserved = RESERVED_MIB
    machine = Machine.create(opts.mem_mib, Console(echo=opts.echo), wall_clock=opts.wall_clock,
                             reserved_mib=reserved)
    attach_standard_devices(machine)
    return machine


def load_image(machine: Machine, opts: RunOptions, data: bytes) -> EntryState:
    fmt = opts.format
    if fmt == "auto":
        fmt = detect_format(data, opts)
    if fmt == "flat":
        addr = opts.load if opts.load is not None else 0x7C00
        load_flat(machine, data, addr)
        return parse_entry(opts.entry, addr, opts.stack)
    if fmt == "multiboot":
        from .machine.multiboot import load_multiboot

        # QEMU passes "<kernel path> <-append text>" as the multiboot command line
        return load_multiboot(machine, data, f"{opts.image} {opts.cmdline}")
    if fmt == "rom":
        from .machine.rom import load_rom

        return load_rom(machine, data)
    raise UserError(f"--format {fmt}: expected flat, multiboot, rom or auto")


def detect_format(data: bytes, opts: RunOptions) -> str:
    """Multiboot if a valid header is in the first 8 KiB (Multiboot spec 3.1.1), else flat."""
    from .machine.multiboot import find_header

    if opts.load is None and opts.entry is None and find_header(data) is not None:
        return "multiboot"
    return "flat"


def set_block_cache(backend, max_blocks: int | None) -> None:
    """Apply ``--block-cache``: it bounds the software CPU's translations, so it means nothing on kvm."""
    if max_blocks is None:
        return
    if max_blocks < 1:
        raise UserError(f"--block-cache {max_blocks}: must be at least 1")
    cpu = getattr(backend, "cpu", None)
    if cpu is None:
        raise UserError("--block-cache applies to the software CPU (--backend emu), not to kvm")
    cpu.blocks.max_blocks = max_blocks


def make_backend(machine: Machine, opts: RunOptions):
    if opts.vmx:
        if opts.backend not in ("emu", "auto"):
            raise UserError("--vmx runs the guest on the software CPU's VMX; use --backend emu")
        from .vmm.backend import VmmBackend
        from .vmm.policies import Policy, policy_from_options

        policy = opts.policy if isinstance(opts.policy, Policy) else policy_from_options(opts.policy, opts.exits)
        backend = VmmBackend(machine, policy, engine=opts.engine)
        backend.vm.keep_log = opts.keep_exit_log
        return backend
    if opts.backend == "emu":
        from .backends.emu import EmuBackend

        return EmuBackend(machine, engine=opts.engine)
    if opts.backend in ("kvm", "auto"):
        from .backends.select import select_backend

        return select_backend(machine, opts)
    raise UserError(f"--backend {opts.backend}: expected emu, kvm or auto")


def make_tracer(opts: RunOptions, backend):
    """A tracer with the sinks the options ask for, attached to the backend's CPU (None: no tracing)."""
    if opts.trace_path is None and not opts.show:
        return None
    from .trace.events import Tracer
    from .trace.sinks import ChromeTraceSink, JsonLinesSink, LiveSink

    sinks = []
    if opts.trace_path is not None:
        if opts.trace_format == "chrome":
            sinks.append(ChromeTraceSink(opts.trace_path))
        elif opts.trace_format == "jsonl":
            sinks.append(JsonLinesSink(opts.trace_path))
        else:
            raise UserError(f"--trace-format {opts.trace_format}: expected jsonl or chrome")
    if opts.show:
        sinks.append(LiveSink())
    kinds = opts.trace_kinds
    if opts.show and kinds is None:
        kinds = ["ring", "exception", "vm-entry", "vm-exit", "vm-entry-failure", "stop", "note"]
    tracer = Tracer(sinks, kinds)
    attach = getattr(backend, "attach_tracer", None)
    if attach is not None:
        attach(tracer)
    else:
        tracer.attach(backend.cpu)
    return tracer


def run_image(opts: RunOptions) -> RunResult:
    data = resolve_image(opts.image, opts.defines)
    machine = build_machine(opts)
    entry = load_image(machine, opts, data)
    backend = make_backend(machine, opts)
    set_block_cache(backend, opts.block_cache)
    backend.apply_entry(entry)
    tracer = make_tracer(opts, backend)
    uart = machine.devices.get("com1") if opts.serial_stdin else None
    if uart is not None:
        # host stdin -> COM1 when it is a terminal; Ctrl-A x quits
        machine.input_attached = uart.attach_terminal()
    t0 = time.perf_counter()
    try:
        stop = backend.run(opts.max_instructions, opts.timeout)
    finally:
        if uart is not None:
            uart.detach_terminal()
    seconds = time.perf_counter() - t0
    if tracer is not None:
        tracer.emit("stop", reason=stop.reason.value, detail=stop.detail)
        tracer.close()
    if getattr(backend, "counts_instructions", True):
        instructions: int | None = getattr(getattr(backend, "cpu", None), "icount", 0)
    else:
        instructions = None
    return RunResult(stop, instructions, seconds, bytes(machine.console.captured), machine, backend, entry)
