"""Experiments on the software CPU: one instruction, one starting state, on bare metal or in VMX non-root.

Why this shape: Popek and Goldberg define their classes over *states*: "privileged"
means "traps in every user-mode state and in no supervisor-mode state", "sensitive"
means "some state exists in which it changes the mode or resources, or in which its
result depends on them".  An experiment is therefore (instruction, starting state) ->
observation, and the starting state must be set exactly -- CPL, IOPL, IF, where the
system tables are -- not reached through a boot sequence that might differ.  So
Python sets the state directly (on the bare CPU, or in the VMCS guest-state area for
a VMX guest), points EIP at the instruction's snippet in the image built from
guests/explain/lab.asm and the table (vmxlab/explain/instructions.py), runs exactly
the snippet's instructions, and reads the state back.  Every experiment starts from
fresh state, so experiments cannot influence each other; traps and VM exits are
read from the event trace (vmxlab/trace/events.py), the same stream users see.

The machine of every experiment: 32-bit protected mode with paging (4-MiB identity
pages over the low 16 MiB, user-accessible), a GDT with ring-0 and ring-3 flat
code/data, two TSS descriptors and an LDT descriptor; an IDT whose 32 exception
gates, gate 0x80 (DPL 3) and gate 0x81 (DPL 0) lead to a ring-0 ``jmp $``.  Two
*placements* of the system tables exist (A and B: different addresses for the
GDT, IDT, TSS, page directory, a different TR selector, an LDT loaded or not,
another IA32_SYSENTER_CS): moving them is what a VMM does when it runs a guest on
tables of its own, and PG's location-sensitivity asks whether that is visible.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..assemble import GUESTS, assemble
from ..cpu.state import AR_UNUSABLE, CS, DS, ES, FS, GS, SS
from ..machine.machine import Console, Machine
from ..trace.events import ListSink, Tracer
from .instructions import CODE0, CODE3, DATA0, DATA3, LDT_SEL, MSR_SYSENTER_CS, TABLE, Insn

LAB_SOURCE = GUESTS / "explain" / "lab.asm"
CODE_BASE = 0x100000
OUT = 0x6000  # 16-byte result buffer (user-writable)
IN_GDT = 0x6100  # pseudo-descriptor of the other placement's GDT (for LGDT)
IN_IDT = 0x6108  # ... and IDT (for LIDT)
USER_STACK = 0x80000
KERNEL_STACK = 0x90000  # TSS.ESP0
MEM_MIB = 4
TSS_A, TSS_B = 0x28, 0x30

# VMX-format access rights (SDM Vol.3C Table 25-2), the format the software CPU's segment caches use
AR_CODE = {0: 0xC09B, 3: 0xC0FB}
AR_DATA = {0: 0xC093, 3: 0xC0F3}
AR_TSS_BUSY = 0x8B
AR_LDT = 0x82
CR0_GUEST = 0x80000011  # PG | ET | PE: what the guest's kernel set (and sees)
CR0_NE = 0x20
CR4_PSE = 0x10
CR4_VMXE = 0x2000
EFLAGS_IF = 1 << 9
STATUS_FLAGS = 0x8D5  # CF PF AF ZF SF OF
ZF = 1 << 6


@dataclass(frozen=True)
class Placement:
    """Where the system tables are (a VMM that runs a guest on its own tables moves all of these)."""

    name: str
    gdt: int
    idt: int
    tss: int
    page_directory: int
    ldt: int
    tr: int
    ldtr: int
    sysenter_cs: int
    cr0_ts: int  # CR0.TS: a VMM that switches FPU state lazily runs its guests with TS = 1


PLACEMENTS = {
    "A": Placement("A", 0x10000, 0x11000, 0x12000, 0x13000, 0x14000, TSS_A, 0, 0, 0),
    "B": Placement("B", 0x20000, 0x21000, 0x22000, 0x23000, 0x24000, TSS_B, LDT_SEL, 0x08, 0x8),
}
GDT_LIMIT = 8 * 8 - 1
IDT_LIMIT = 256 * 8 - 1


@dataclass(frozen=True)
class Start:
    """A starting state: Popek-Goldberg's mode M is the CPL (supervisor = 0, user = 3)."""

    cpl: int = 0
    iopl: int = 0
    if_: int = 0
    placement: str = "A"

    def label(self) -> str:
        extra = ", resources as a VMM sets them (placement B)" if self.placement != "A" else ""
        return f"CPL {self.cpl}, IOPL {self.iopl}, IF {self.if_}{extra}"


@dataclass
class Observation:
    """What one experiment showed.  ``trap`` is the first event delivered through the IDT (PG's trap:
    control goes to the supervisor through the trap vector); ``exits`` are the VM exits of the run."""

    insn: str
    variant: int
    start: Start
    where: str  # "bare" or "vmx"
    trap: dict[str, Any] | None
    exits: list[dict[str, Any]]
    completed: bool
    stop: str
    regs: dict[str, int]
    eflags: int
    cpl: int
    cr0: int
    cr3: int
    cr4: int
    gdtr: tuple[int, int]
    idtr: tuple[int, int]
    ldtr: int
    tr: int
    ds: int
    msr: int
    out: bytes
    stack: int
    halted: bool
    tlb: bool
    io: list[tuple[str, int, int]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trapped(self) -> bool:
        return self.trap is not None

    def outputs(self, timing: bool = False, ds: bool = False) -> dict[str, Any]:
        """The instruction's results: registers, status flags, the OUT buffer, the stack top, and DS for
        the instructions that load it (DS is otherwise part of the starting state: 0x10 at CPL 0,
        0x23 at CPL 3)."""
        regs = dict(self.regs)
        if timing:  # time stamps: equivalence holds up to timing (Popek & Goldberg 1974)
            regs.pop("eax", None)
            regs.pop("edx", None)
        out = {**regs, "status": self.eflags & STATUS_FLAGS, "out": self.out.hex(), "stack": self.stack}
        if ds:
            out["ds"] = self.ds
        return out

    def resources(self) -> dict[str, Any]:
        """Mode and resources (PG's M and R, for x86): everything a VMM must own or virtualize."""
        return {
            "cpl": self.cpl, "iopl": (self.eflags >> 12) & 3, "if": (self.eflags >> 9) & 1, "cr0": self.cr0,
            "cr3": self.cr3, "cr4": self.cr4, "gdtr": self.gdtr, "idtr": self.idtr, "ldtr": self.ldtr,
            "tr": self.tr, "sysenter_cs": self.msr, "halted": self.halted, "tlb_entry": self.tlb,
            "io": tuple(self.io),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "start": self.start.label(), "where": self.where, "trap": self.trap,
            "exits": [{"reason": e.get("reason"), "name": e.get("reason_name")} for e in self.exits],
            "completed": self.completed, "outputs": self.outputs(), "resources": _jsonable(self.resources()),
        }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ====================================================================== the image


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    count: int  # instructions in the snippet


@dataclass
class Image:
    data: bytes
    spans: dict[tuple[str, int], Span]
    handler: int


def snippet(insn: Insn, variant: int) -> str:
    v = insn.variants[variant]
    return str(v.get("_asm", insn.asm))


def generated_source(insns: list[Insn]) -> str:
    """The experiments file lab.asm includes: an index, then each snippet followed by its parking loop."""
    keys = [(i, v) for i in insns for v in range(len(i.variants))]
    lines = ["index:"]
    lines += [f"        dd exp_{n}, exp_{n}_end" for n in range(len(keys))]
    for n, (insn, v) in enumerate(keys):
        lines.append(f"exp_{n}:                     ; {insn.name} variant {v}")
        for line in snippet(insn, v).splitlines():
            line = line.strip()
            lines.append(line if line.endswith(":") else "        " + line)
        lines.append(f"exp_{n}_end:")
        lines.append(f"        jmp exp_{n}_end")
    return "\n".join(lines) + "\n"


@cache
def build_image(names: tuple[str, ...] | None = None) -> Image:
    """Assemble lab.asm with the generated experiments (nasm output is cached by content)."""
    import hashlib

    import iced_x86

    insns = [i for i in TABLE if names is None or i.name in names]
    src = generated_source(insns)
    tmp = Path(tempfile.gettempdir()) / "vmxlab-explain"
    tmp.mkdir(parents=True, exist_ok=True)
    inc = tmp / f"experiments-{hashlib.sha256(src.encode()).hexdigest()[:16]}.inc"
    if not inc.exists():
        inc.write_text(src)
    defines: dict[str, str | int] = {"EXPERIMENTS": f'"{inc}"', "CODE_BASE": CODE_BASE, "OUT": OUT,
                                     "IN_GDT": IN_GDT, "IN_IDT": IN_IDT}
    data = assemble(LAB_SOURCE, defines).read_bytes()
    keys = [(i.name, v) for i in insns for v in range(len(i.variants))]
    index = 16  # lab.asm: a 2-byte `jmp handler`, then `align 16`, then the index
    spans: dict[tuple[str, int], Span] = {}
    for n, key in enumerate(keys):
        start, end = struct.unpack_from("<II", data, index + 8 * n)
        code = data[start - CODE_BASE:end - CODE_BASE]
        decoder = iced_x86.Decoder(32, code, ip=start)
        count = sum(1 for _ in decoder)
        spans[key] = Span(start, end, count)
    return Image(data, spans, CODE_BASE)


# ====================================================================== machine state


def _descriptor(base: int, limit: int, ar: int) -> int:
    """An 8-byte segment descriptor (SDM Vol.3A 3.4.5) from base, limit and access rights."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (ar & 0xF0FF) << 40 | (limit & 0xF0000) << 32
            | (base >> 24) << 56)


def _gate(offset: int, selector: int, ar: int) -> int:
    """A 32-bit interrupt gate (SDM Vol.3A Figure 6-2)."""
    return (offset & 0xFFFF) | selector << 16 | ar << 40 | (offset >> 16) << 48


def _gdt(p: Placement) -> bytes:
    a, b = PLACEMENTS["A"], PLACEMENTS["B"]
    entries = [
        0,
        _descriptor(0, 0xFFFFF, 0xC09B), _descriptor(0, 0xFFFFF, 0xC093),
        _descriptor(0, 0xFFFFF, 0xC0FB), _descriptor(0, 0xFFFFF, 0xC0F3),
        _descriptor(a.tss, 0x67, 0x8B if p.tr == TSS_A else 0x89),
        _descriptor(b.tss, 0x67, 0x8B if p.tr == TSS_B else 0x89),
        _descriptor(p.ldt, 0xF, AR_LDT),
    ]
    return b"".join(struct.pack("<Q", e) for e in entries)


def _idt(handler: int) -> bytes:
    gates = [0] * 256
    for v in range(32):
        gates[v] = _gate(handler, CODE0, 0x8E)
    gates[0x80] = _gate(handler, CODE0, 0xEE)  # DPL 3: callable from ring 3 (a system call)
    gates[0x81] = _gate(handler, CODE0, 0x8E)  # DPL 0
    return b"".join(struct.pack("<Q", g) for g in gates)


def prepare_memory(memory, image: Image, placement: Placement) -> None:
    """Everything the experiments read: the image, both placements' tables, OUT, IN_GDT/IN_IDT."""
    memory.write_bytes(CODE_BASE, image.data)
    for p in PLACEMENTS.values():
        memory.write_bytes(p.gdt, _gdt(p))
        memory.write_bytes(p.idt, _idt(image.handler))
        tss = bytearray(0x68)
        struct.pack_into("<I", tss, 4, KERNEL_STACK)
        struct.pack_into("<H", tss, 8, DATA0)
        struct.pack_into("<H", tss, 0x66, 0x68)  # no I/O permission bitmap: IOPL decides (SDM Vol.1 19.5.2)
        memory.write_bytes(p.tss, bytes(tss))
        memory.write_bytes(p.page_directory, b"".join(struct.pack("<I", (i << 22) | 0x87) for i in range(4))
                           + bytes(4096 - 16))
        memory.write_bytes(p.ldt, bytes(16))
    other = PLACEMENTS["B" if placement.name == "A" else "A"]
    memory.write_bytes(OUT, bytes(16))
    memory.write_bytes(IN_GDT, struct.pack("<HI", GDT_LIMIT, other.gdt) + struct.pack("<HI", IDT_LIMIT, other.idt))
    memory.write_bytes(USER_STACK - 16, bytes(16))


def _tss_base(p: Placement) -> int:
    return PLACEMENTS["A"].tss if p.tr == TSS_A else PLACEMENTS["B"].tss


def initial_regs(insn: Insn, variant: int) -> list[int]:
    regs = [0] * 8
    names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
    for src in (insn.regs, insn.variants[variant]):
        for k, value in src.items():
            if k in names:
                regs[names.index(k)] = int(value) & 0xFFFFFFFF
    regs[4] = USER_STACK
    return regs


def set_bare_state(cpu, insn: Insn, variant: int, start: Start, span: Span) -> None:
    """Load the starting state into a bare CPU (no VMX), as a kernel would have left it."""
    p = PLACEMENTS[start.placement]
    cpu.regs[:] = initial_regs(insn, variant)
    cpu.cr0, cpu.cr3, cpu.cr4, cpu.cr2, cpu.efer = CR0_GUEST | p.cr0_ts, p.page_directory, CR4_PSE, 0, 0
    code_sel, data_sel = (CODE0, DATA0) if start.cpl == 0 else (CODE3, DATA3)
    cpu.segs[CS].load(code_sel, 0, 0xFFFFFFFF, AR_CODE[start.cpl])
    for s in (SS, DS, ES, FS, GS):
        cpu.segs[s].load(data_sel, 0, 0xFFFFFFFF, AR_DATA[start.cpl])
    cpu.tr.load(p.tr, _tss_base(p), 0x67, AR_TSS_BUSY)
    if p.ldtr:
        cpu.ldtr.load(p.ldtr, p.ldt, 0xF, AR_LDT)
    else:
        cpu.ldtr.load(0, 0, 0, AR_UNUSABLE)
    cpu.gdtr_base, cpu.gdtr_limit = p.gdt, GDT_LIMIT
    cpu.idtr_base, cpu.idtr_limit = p.idt, IDT_LIMIT
    cpu.cpl = start.cpl
    cpu.set_eflags(0x2 | start.if_ << 9 | start.iopl << 12)
    cpu.msr[MSR_SYSENTER_CS] = p.sysenter_cs
    cpu.eip = span.start
    cpu.halted = False
    cpu.pending_fault = None
    cpu.delivering = None
    cpu.shadow_until = -1
    cpu.inhibit_pending = False
    cpu.update_mode()
    cpu.tlb_flush(all_entries=True)
    cpu.lread(OUT, 4, user=False)  # OUT's translation is cached: INVLPG (and MOV CR3) visibly drop it


def set_vmcs_guest_state(vcpu, insn: Insn, variant: int, start: Start, span: Span) -> None:
    """The same starting state, written into the VMCS guest-state area (SDM Vol.3C 25.4) by the VMM."""
    from ..vmx.fields import GUEST_ACCESS_RIGHTS, GUEST_BASE, GUEST_LIMIT, GUEST_SELECTOR, VmcsField

    F = VmcsField
    p = PLACEMENTS[start.placement]
    code_sel, data_sel = (CODE0, DATA0) if start.cpl == 0 else (CODE3, DATA3)

    def seg(i: int, sel: int, base: int, limit: int, ar: int) -> None:
        vcpu.vmx.write({GUEST_SELECTOR[i]: sel, GUEST_BASE[i]: base, GUEST_LIMIT[i]: limit,
                        GUEST_ACCESS_RIGHTS[i]: ar})

    seg(1, code_sel, 0, 0xFFFFFFFF, AR_CODE[start.cpl])
    for i in (0, 2, 3, 4, 5):
        seg(i, data_sel, 0, 0xFFFFFFFF, AR_DATA[start.cpl])
    seg(7, p.tr, _tss_base(p), 0x67, AR_TSS_BUSY)
    if p.ldtr:
        seg(6, p.ldtr, p.ldt, 0xF, AR_LDT)
    else:
        seg(6, 0, 0, 0, AR_UNUSABLE)
    vcpu.vmx.write({
        F.CR0_READ_SHADOW: CR0_GUEST | p.cr0_ts, F.GUEST_CR0: CR0_GUEST | CR0_NE | p.cr0_ts,
        F.CR4_READ_SHADOW: CR4_PSE, F.GUEST_CR4: CR4_PSE | CR4_VMXE, F.GUEST_CR3: p.page_directory,
        F.GUEST_GDTR_BASE: p.gdt, F.GUEST_GDTR_LIMIT: GDT_LIMIT, F.GUEST_IDTR_BASE: p.idt,
        F.GUEST_IDTR_LIMIT: IDT_LIMIT, F.GUEST_RFLAGS: 0x2 | start.if_ << 9 | start.iopl << 12,
        F.GUEST_RIP: span.start, F.GUEST_RSP: USER_STACK, F.GUEST_IA32_SYSENTER_CS: p.sysenter_cs,
    })
    vcpu.cpu.regs[:] = initial_regs(insn, variant)


# ====================================================================== running


def _record(tracer: Tracer, sink: ListSink) -> tuple[dict | None, list[dict], list[tuple[str, int, int]]]:
    tracer.flush()
    trap = None
    exits: list[dict] = []
    io: list[tuple[str, int, int]] = []
    for ev in sink.events:
        kind = ev["kind"]
        if kind == "exception" and trap is None:
            trap = {k: ev.get(k) for k in ("vector", "name", "error_code", "event", "from_cpl", "to_cpl")}
        elif kind == "vm-exit":
            exits.append(ev)
        elif kind == "io":
            io.append((ev["dir"], ev["port"], ev["value"]))
    return trap, exits, io


def _tlb_has(cpu, la: int) -> bool:
    page = la >> 12
    return any(page in d for d in (cpu.tlb_sr, cpu.tlb_sw, cpu.tlb_ur, cpu.tlb_uw))


class Lab:
    """Runs experiments: :meth:`bare` on the software CPU alone, :meth:`vmx` as a guest of the Python VMM."""

    def __init__(self, names: tuple[str, ...] | None = None) -> None:
        self.image = build_image(names)
        self._bare = None

    def span(self, insn: Insn, variant: int) -> Span:
        return self.image.spans[(insn.name, variant)]

    # ------------------------------------------------------------------ bare metal

    def _bare_machine(self):
        if self._bare is None:
            from ..cpu.core import CPU
            from ..cpu.engine import Engine
            from ..devices.board import attach_standard_devices

            machine = Machine.create(MEM_MIB, Console(echo=False))
            attach_standard_devices(machine)
            cpu = CPU(machine)
            self._bare = (machine, cpu, Engine(cpu, fast=False))
        return self._bare

    def bare(self, insn: Insn, variant: int, start: Start) -> Observation:
        """Run the snippet on the bare software CPU (no VMX operation: the guest *is* the machine)."""
        machine, cpu, engine = self._bare_machine()
        span = self.span(insn, variant)
        prepare_memory(machine.memory, self.image, PLACEMENTS[start.placement])
        machine.stop = None
        set_bare_state(cpu, insn, variant, start, span)
        sink = ListSink()
        tracer = Tracer([sink], ["exception", "io", "vm-exit"])
        tracer.attach(cpu)
        try:
            stop = engine.run(max_instructions=span.count)
        finally:
            trap, exits, io = _record(tracer, sink)
            tracer.detach()
        mem = machine.memory
        esp = cpu.regs[4]
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        return Observation(
            insn.name, variant, start, "bare", trap, exits, cpu.eip == span.end and trap is None,
            stop.reason.value, dict(zip(names, cpu.regs)), cpu.get_eflags(), cpu.cpl, cpu.cr0, cpu.cr3, cpu.cr4,
            (cpu.gdtr_base, cpu.gdtr_limit), (cpu.idtr_base, cpu.idtr_limit), cpu.ldtr.selector, cpu.tr.selector,
            cpu.segs[DS].selector, cpu.msr.get(MSR_SYSENTER_CS, 0), mem.read_bytes(OUT, 16),
            mem.read(esp, 4) if esp + 4 <= mem.size else 0, cpu.halted, _tlb_has(cpu, OUT), io, sink.events)

    # ------------------------------------------------------------------ VMX non-root

    def vmx(self, insn: Insn, variant: int, start: Start, policy) -> Observation:
        """Run the snippet as a guest in VMX non-root operation under the Python VMM with ``policy``."""
        from ..devices.board import attach_standard_devices
        from ..machine.loaders import pm32_entry
        from ..vmm.backend import RESERVED_MIB, VmmBackend

        span = self.span(insn, variant)
        machine = Machine.create(MEM_MIB, Console(echo=False), reserved_mib=RESERVED_MIB)
        attach_standard_devices(machine)
        prepare_memory(machine.memory, self.image, PLACEMENTS[start.placement])
        backend = VmmBackend(machine, policy, engine="interp")
        backend.vcpu.apply_entry(pm32_entry(span.start, USER_STACK))
        set_vmcs_guest_state(backend.vcpu, insn, variant, start, span)
        backend.vm.start()
        backend.vm.keep_log = True
        sink = ListSink()
        tracer = Tracer([sink], ["exception", "io", "vm-exit", "vm-entry-failure"])
        tracer.attach(backend.cpu)
        try:
            stop = backend.vm.run(max_instructions=span.count)
        finally:
            trap, exits, io = _record(tracer, sink)
            tracer.detach()
        return self._observe_vmx(insn, variant, start, backend, stop, span, trap, exits, io, sink.events)

    def _observe_vmx(self, insn, variant, start, backend, stop, span, trap, exits, io, events) -> Observation:
        """The guest's view of its state: live in the CPU while the guest is in non-root operation, else in
        the VMCS; CR0/CR4 bits the VMM owns read from the read shadows, as the guest's MOV/SMSW would
        (SDM Vol.3C 26.3); GDTR/IDTR are the VMM's virtual registers when it runs the guest on shadows."""
        from ..vmx.fields import GUEST_SELECTOR, VmcsField
        from ..vmx.guest_state import ActivityState

        F = VmcsField
        vcpu = backend.vcpu
        vmx = vcpu.vmx
        cpu = vcpu.cpu
        v = vmx.vmcs
        m0, s0 = v[F.CR0_GUEST_HOST_MASK], v[F.CR0_READ_SHADOW]
        m4, s4 = v[F.CR4_GUEST_HOST_MASK], v[F.CR4_READ_SHADOW]
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        regs = dict(zip(names, cpu.regs))
        if vmx.in_guest:
            regs["esp"] = cpu.regs[4]
            eip, eflags, cpl = cpu.eip, cpu.get_eflags(), cpu.cpl
            cr0, cr3, cr4 = cpu.cr0, cpu.cr3, cpu.cr4
            gdtr, idtr = (cpu.gdtr_base, cpu.gdtr_limit), (cpu.idtr_base, cpu.idtr_limit)
            ldtr, tr, ds = cpu.ldtr.selector, cpu.tr.selector, cpu.segs[DS].selector
            msr, halted = cpu.msr.get(MSR_SYSENTER_CS, 0), cpu.halted
        else:
            regs["esp"] = v[F.GUEST_RSP]
            eip, eflags, cpl = v[F.GUEST_RIP], v[F.GUEST_RFLAGS], (v[F.GUEST_SS_ACCESS_RIGHTS] >> 5) & 3
            cr0, cr3, cr4 = v[F.GUEST_CR0], v[F.GUEST_CR3], v[F.GUEST_CR4]
            gdtr, idtr = (v[F.GUEST_GDTR_BASE], v[F.GUEST_GDTR_LIMIT]), (v[F.GUEST_IDTR_BASE], v[F.GUEST_IDTR_LIMIT])
            ldtr, tr, ds = v[GUEST_SELECTOR[6]], v[GUEST_SELECTOR[7]], v[GUEST_SELECTOR[3]]
            msr = v[F.GUEST_IA32_SYSENTER_CS]
            halted = v[F.GUEST_ACTIVITY_STATE] == ActivityState.HLT or stop.reason.value == "halted"
        shadows = backend.vm.shadows
        if shadows is not None:
            gdtr = (shadows.gdt.virtual.base, shadows.gdt.virtual.limit)
            idtr = (shadows.idt.virtual.base, shadows.idt.virtual.limit)
        mem = backend.machine.memory
        esp = regs["esp"]
        return Observation(
            insn.name, variant, start, "vmx", trap, exits, eip == span.end and trap is None, stop.reason.value,
            regs, eflags, cpl, (cr0 & ~m0) | (s0 & m0), cr3, (cr4 & ~m4) | (s4 & m4), gdtr, idtr, ldtr, tr, ds,
            msr, mem.read_bytes(OUT, 16), mem.read(esp, 4) if esp + 4 <= mem.size else 0, halted,
            _tlb_has(cpu, OUT), io, events)


@cache
def shared_lab() -> Lab:
    """One lab (one image) per process: explain and classify share it."""
    return Lab()


__all__ = ["Lab", "Start", "Observation", "PLACEMENTS", "shared_lab", "build_image", "generated_source"]
