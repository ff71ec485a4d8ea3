"""The ``kvm`` backend end to end on /dev/kvm: the same guests and device models as ``emu``, KVM's
exits as SDM VM exits, interrupts through the user-space 8259A, HLT, triple fault, MMIO, MSR exits,
single-step and breakpoints, the ROM reset vector, Multiboot, the PVM instruction fallbacks and the
SYSCALL completion.  Skipped, with the reason, where /dev/kvm cannot be used."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from vmxlab.assemble import assemble
from vmxlab.backends.kvm.availability import kvm_usable
from vmxlab.guestkit import run_guest, run_snippet, write_snippet
from vmxlab.machine.machine import Console, Machine, StopReason
from vmxlab.runner import RunOptions, build_machine, load_image, make_backend, resolve_image, run_image
from vmxlab.vmx.api import GuestStopped, VmExit
from vmxlab.vmx.exit_reasons import ExitReason
from vmxlab.vmx.qualifications import IoQualification

_OK, _WHY = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _OK, reason=f"/dev/kvm not usable: {_WHY}")]

ROOT = Path(__file__).resolve().parent.parent


def channels(r) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in r.machine.console.by_channel.items()}


def kvm_snippet(body: str, mode: str = "pm32", **kw):
    kw.setdefault("timeout", 10.0)
    return run_snippet(body, mode, backend="kvm", **kw)


# ---------------------------------------------------------------------------- bundled guests


def test_hello_on_kvm() -> None:
    r = run_guest("hello", backend="kvm", timeout=10)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert channels(r) == {"com1": b"Hello from a real-mode guest over COM1!\n",
                           "e9": b"Hello from a real-mode guest over port 0xE9!\n"}
    assert r.instructions is None  # KVM counts no instructions: reported as n/a
    assert "instructions: n/a" in r.summary()
    # every byte printed is at least one OUT, and every OUT is one VM exit (reason 30)
    assert r.backend.vm.counts_by_name()["IO_INSTRUCTION"] >= len(b"".join(channels(r).values()))
    assert set(r.backend.vm.counts_by_name()) == {"IO_INSTRUCTION"}


def test_pm_switch_on_kvm() -> None:
    r = run_guest("pm_switch", backend="kvm", timeout=10)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert channels(r)["e9"] == b"(0xE9) real mode\n(0xE9) protected mode\n(0xE9) real mode again\n"
    st = r.backend.state_dict()
    assert st["cr0"] & 1 == 0 and st["cs"]["selector"] == 0
    assert r.machine.memory.read(0x200000, 4) == 0x600DF00D  # the guest's store reached the shared RAM


def test_cli_run_backend_kvm_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from vmxlab.cli import main

    rc = main(["run", str(ROOT / "guests" / "hello.asm"), "--backend", "kvm", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    import json

    d = json.loads(out)
    assert d["backend"] == "kvm" and d["instructions"] is None and d["exits"]["vm_exits"]["IO_INSTRUCTION"] > 0
    assert d["final_state"]["cr0"] & 1 == 0


def test_backend_auto_picks_kvm() -> None:
    r = run_guest("hello", backend="auto", timeout=10)
    assert r.backend.name == "kvm" and r.stop.reason == StopReason.SHUTDOWN_REQUEST


# ---------------------------------------------------------------------------- interrupts and HLT

from test_guests_basic import ECHO_GUEST, TIMER_GUEST  # noqa: E402


def test_pit_interrupts_through_the_user_space_pic() -> None:
    r = kvm_snippet(TIMER_GUEST, "real", epilogue=False, defines={"TICKS": 10})
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert r.console == b"10"
    assert r.backend.vcpu.stats.injected_interrupts == 10  # each one with KVM_INTERRUPT
    assert r.machine.devices["pic"].state()["isr"] == 0


def test_hlt_exits_and_wakes_on_the_timer() -> None:
    r = kvm_snippet(TIMER_GUEST, "real", epilogue=False, defines={"TICKS": 5, "USE_HLT": 1})
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert r.console == b"05"
    assert r.backend.vm.counts_by_name().get("HLT", 0) >= 5


def test_missing_eoi_blocks_the_timer_until_the_timeout() -> None:
    r = kvm_snippet(TIMER_GUEST, "real", epilogue=False, defines={"TICKS": 10, "NO_EOI": 1}, timeout=0.5)
    assert r.stop.reason == StopReason.TIMEOUT
    assert r.machine.memory.read(0x600, 2) == 1
    assert r.machine.devices["pic"].state()["isr"] & 1


def test_uart_input_from_another_thread_wakes_hlt() -> None:
    path = write_snippet(ECHO_GUEST, "real", epilogue=False)
    opts = RunOptions(image=path, format="flat", load=0x7C00, entry="real:0:0x7c00", echo=False, backend="kvm")
    m = build_machine(opts)
    entry = load_image(m, opts, resolve_image(path))
    be = make_backend(m, opts)
    be.apply_entry(entry)
    m.input_attached = True
    feeder = threading.Timer(0.2, lambda: m.devices["com1"].feed(b"kvm\n"))
    feeder.start()
    stop = be.run(None, 10)
    feeder.join()
    assert stop.reason == StopReason.SHUTDOWN_REQUEST, stop
    assert bytes(m.console.by_channel["e9"]) == b"kvm\n" and bytes(m.console.by_channel["com1"]) == b"kvm\n"


def test_hlt_with_interrupts_disabled_halts() -> None:
    r = kvm_snippet("nop")
    assert r.stop.reason == StopReason.HALTED and "interrupts disabled" in r.stop.detail


def test_hlt_with_nothing_to_wake_halts() -> None:
    r = kvm_snippet("sti\nhlt")
    assert r.stop.reason == StopReason.HALTED and "no timer" in r.stop.detail


def test_triple_fault() -> None:
    r = kvm_snippet("lidt [idt]\nud2\nidt: dw 0\ndd 0")
    assert r.stop.reason == StopReason.TRIPLE_FAULT, r.stop
    assert r.exit_status == 12


# ---------------------------------------------------------------------------- the Vcpu protocol


def vcpu_for(body: str, mode: str = "pm32", **kw):
    """A KvmGuestVcpu on a machine with ``body`` loaded (no exit loop: the test is the VMM)."""
    from vmxlab.backends.kvm.vcpu import KvmGuestVcpu

    path = write_snippet(body, mode)
    opts = RunOptions(image=path, format="flat", load={"real": 0x7C00, "pm32": 0x100000}[mode],
                      entry={"real": "real:0:0x7c00", "pm32": "pm32:0x100000"}[mode], echo=False)
    m = build_machine(opts)
    entry = load_image(m, opts, resolve_image(path))
    v = KvmGuestVcpu(m, **kw)
    v.apply_entry(entry)
    return m, v


def test_io_exits_carry_the_sdm_qualification_and_complete_in() -> None:
    m, v = vcpu_for("in al, 0x60\nmov bl, al\nmov dx, 0x3f8\nmov al, 'k'\nout dx, al\nmov al, bl\nout 0xF4, al")
    try:
        ex = v.run(timeout=5)
        assert isinstance(ex, VmExit) and ex.reason == ExitReason.IO_INSTRUCTION
        assert ex.decoded == IoQualification(1, True, False, False, True, 0x60)
        assert ex.guest_rip == 0x100000 and ex.instruction_length == 2
        v.complete_io_in(ex, [0x5A])
        ex = v.run(timeout=5)
        assert ex.decoded == IoQualification(1, False, False, False, False, 0x3F8)
        assert v.io_out_value(ex) == [ord("k")]
        assert ex.instruction_length == 1 and ex.guest_rip == 0x100000 + 2 + 2 + 4 + 2
        ex = v.run(timeout=5)
        assert ex.decoded.port == 0xF4 and v.io_out_value(ex) == [0x5A]  # IN's value reached AL
        assert v.get_regs()["ebx"] & 0xFF == 0x5A
    finally:
        v.close()


class Register32:
    """An MMIO device with one 32-bit register (records accesses)."""

    def __init__(self) -> None:
        self.value = 0x11223344
        self.log: list[tuple] = []

    def mmio_read(self, addr: int, size: int) -> int:
        self.log.append(("r", addr, size))
        return (self.value >> 8 * (addr & 3)) & ((1 << 8 * size) - 1)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.log.append(("w", addr, size, value))
        self.value = value


def test_mmio_exits_reach_the_machines_mmio_regions() -> None:
    body = """
        mov dword [0xD0000000], 0xCAFEF00D
        mov eax, [0xD0000000]
        cmp eax, 0xCAFEF00D
        jne .bad
        mov ax, [0xD0000002]
        cmp ax, 0xCAFE
        jne .bad
        EXIT_STATUS 0x2A
    .bad:
        EXIT_STATUS 0x55
    """
    path = write_snippet(body, "pm32")
    opts = RunOptions(image=path, format="flat", load=0x100000, entry="pm32:0x100000", echo=False,
                      backend="kvm", timeout=5)
    m = build_machine(opts)
    dev = Register32()
    m.memory.add_mmio(0xD0000000, 0x1000, dev, "test-register")
    entry = load_image(m, opts, resolve_image(path))
    be = make_backend(m, opts)
    be.apply_entry(entry)
    stop = be.run(None, 5)
    assert stop.reason == StopReason.DEBUG_EXIT and stop.status == (0x2A << 1) | 1, (stop, dev.log)
    assert dev.log == [("w", 0xD0000000, 4, 0xCAFEF00D), ("r", 0xD0000000, 4), ("r", 0xD0000002, 2)]
    assert be.vm.counts_by_name()["EPT_VIOLATION"] == 3


def test_rdmsr_wrmsr_exit_to_the_vmm_for_filtered_msrs() -> None:
    from vmxlab.backends.kvm.backend import KvmBackend

    msr = 0x0000_0C8F  # IA32_PQR_ASSOC: a real MSR, put in the filter so it exits to the VMM
    body = f"""
        mov ecx, {msr}
        mov eax, 0x11111111
        mov edx, 0x22222222
        wrmsr
        xor eax, eax
        xor edx, edx
        rdmsr
        cmp eax, 0x11111111
        jne .bad
        cmp edx, 0x22222222
        jne .bad
        EXIT_STATUS 0x21
    .bad:
        EXIT_STATUS 0x22
    """
    path = write_snippet(body, "pm32")
    opts = RunOptions(image=path, format="flat", load=0x100000, entry="pm32:0x100000", echo=False)
    m = build_machine(opts)
    entry = load_image(m, opts, resolve_image(path))
    be = KvmBackend(m, msr_exits={msr: 0})
    be.vm.keep_log = True
    be.apply_entry(entry)
    stop = be.run(None, 5)
    assert stop.status == (0x21 << 1) | 1, stop
    reasons = [e.reason for e in be.vm.exits_log if e.reason != ExitReason.IO_INSTRUCTION]
    assert reasons == [ExitReason.WRMSR, ExitReason.RDMSR]
    assert be.vm.msrs.values[msr] == 0x22222222_11111111


def test_unknown_msr_gives_gp_through_the_vmm() -> None:
    # an MSR KVM does not know exits (KVM_MSR_EXIT_REASON_UNKNOWN); the VMM has no value: #GP(0)
    body = """
        lidt [idt]
        mov ecx, 0x4B564DFF
        rdmsr
        EXIT_STATUS 1
    gp: EXIT_STATUS 0x0D
    idt: dw 8 * 14 - 1
         dd table
    table: times 13 dq 0
         dw gp - $$ + 0x100000 & 0xFFFF, 0x10, 0x8E00, (gp - $$ + 0x100000) >> 16
    """
    r = kvm_snippet(body)
    assert r.stop.status == (0x0D << 1) | 1, r.stop
    assert r.backend.vm.counts_by_name()["RDMSR"] == 1


def test_single_step_and_hardware_breakpoint() -> None:
    m, v = vcpu_for("nop\nnop\nmov eax, 1\nnop\nmov ebx, 2\nout 0xF4, al")
    try:
        v.set_guest_debug(single_step=True)
        ex = v.run(timeout=5)
        assert ex.reason == ExitReason.EXCEPTION_OR_NMI and ex.interruption.vector == 1
        assert ex.qualification & 0x4000  # DR6.BS: single step
        assert ex.guest_rip == 0x100001
        target = 0x100000 + 1 + 1 + 5 + 1  # mov ebx, 2
        v.set_guest_debug(breakpoints=[target])
        ex = v.run(timeout=5)
        assert ex.reason == ExitReason.EXCEPTION_OR_NMI and ex.guest_rip == target
        assert v.get_regs()["eax"] == 1 and v.get_regs()["ebx"] == 0
        v.set_guest_debug()
        ex = v.run(timeout=5)
        assert ex.reason == ExitReason.IO_INSTRUCTION and v.get_regs()["ebx"] == 2
    finally:
        v.close()


# ---------------------------------------------------------------------------- images


ROM = """
bits 16
org 0
start:
    mov ax, 0xF000
    mov ds, ax
    mov si, msg
.l: mov al, [si]
    test al, al
    jz .done
    out 0xE9, al
    inc si
    jmp .l
.done:
    mov al, 3
    out 0xF4, al
    cli
    hlt
msg: db "reset vector", 0
times 0xFFF0 - ($ - $$) db 0xFF
    jmp 0xF000:start
times 0x10000 - ($ - $$) db 0xFF
"""


def test_rom_runs_from_the_reset_vector(tmp_path: Path) -> None:
    src = tmp_path / "rom.asm"
    src.write_text(ROM)
    img = assemble(src)
    r = run_image(RunOptions(image=img, format="rom", echo=False, backend="kvm", timeout=5))
    assert r.console == b"reset vector" and r.exit_status == 7
    assert r.backend.state_dict()["edx"] == r.backend.vcpu.cpuid_signature()  # EDX after RESET


def test_multiboot_aout_kernel(tmp_path: Path) -> None:
    from test_loaders import aout

    img = tmp_path / "aout.bin"
    img.write_bytes(aout(tmp_path))
    r = run_image(RunOptions(image=img, format="multiboot", echo=False, backend="kvm", timeout=5))
    assert r.console == b"a.out kludge" and r.exit_status == 0x41


# ---------------------------------------------------------------------------- 64-bit guests, fallbacks


def long_mode_guest(tmp_path: Path, body: str, **vcpu_kw):
    """A 64-bit ring-0 guest at 0x100000 (Linux's boot GDT and 4 GiB identity map)."""
    from vmxlab.backends.kvm.entry import LongModeState
    from vmxlab.backends.kvm.vcpu import KvmGuestVcpu
    from vmxlab.devices.board import attach_standard_devices
    from vmxlab.linux.boot import BOOT_CS, BOOT_DS, BOOT_GDT, GDT_ADDR
    from vmxlab.linux.pagetables import identity_map
    from vmxlab.vmm.vm import VirtualMachine

    src = tmp_path / "g64.asm"
    src.write_text("bits 64\norg 0x100000\n" + body)
    code = assemble(src).read_bytes()
    m = Machine.create(8, Console(echo=False), wall_clock=True)
    attach_standard_devices(m)
    m.memory.write_bytes(0x100000, code)
    m.memory.write_bytes(GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT))
    cr3, pages = identity_map(0x9000, 1)
    for a, p in pages.items():
        m.memory.write_bytes(a, p)
    v = KvmGuestVcpu(m, **vcpu_kw)
    v.apply_long_mode(LongModeState(rip=0x100000, cr3=cr3, gdt_base=GDT_ADDR, gdt=BOOT_GDT, cs=BOOT_CS,
                                    ds=BOOT_DS, regs={"rsp": 0x8000}, cr4_extra=0x600))  # OSFXSR, OSXMMEXCPT
    return m, v, VirtualMachine(m, v, None)


FALLBACK_GUEST = """
RES equ 0x3000
        stac
        pushfq
        pop qword [RES]          ; +0: RFLAGS with AC
        clac
        pushfq
        pop qword [RES + 8]      ; +8: RFLAGS without AC
        fwait
        mov dword [RES + 16], 0x9F80
        ldmxcsr [RES + 16]
        stmxcsr [RES + 20]       ; +20: MXCSR read back
        mov edx, 0x12345678
        movd xmm1, edx
        movq rsi, xmm1
        mov [RES + 24], rsi      ; +24: 0x12345678
        movdqu xmm2, [pattern]
        movdqu [RES + 32], xmm2  ; +32: the 16-byte pattern
        pxor xmm2, xmm2
        movq [RES + 48], xmm2    ; +48: 0
        mov rax, 1
        xor edx, edx
        mov rbx, 0x55
        mov rcx, 0x66
        lock cmpxchg16b [RES + 64]   ; equal: stores RCX:RBX
        setz byte [RES + 56]     ; +56: ZF = 1
        mov al, 0
        out 0xF4, al
        hlt
align 16
pattern: db 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
"""


def test_instructions_kvm_cannot_emulate_run_in_python(tmp_path: Path) -> None:
    """On PVM hosts these go through insn_fallback.py; elsewhere the CPU runs them: same results."""
    m, v, vmm = long_mode_guest(tmp_path, FALLBACK_GUEST)
    try:
        m.memory.write_bytes(0x3040, struct.pack("<QQ", 1, 0))  # the cmpxchg16b target = RDX:RAX
        stop = vmm.run(None, 10)
        assert stop.reason == StopReason.DEBUG_EXIT, (stop, v.last_error)
        rd = lambda off, n=8: int.from_bytes(m.memory.read_bytes(0x3000 + off, n), "little")  # noqa: E731
        assert rd(0) & (1 << 18) and not rd(8) & (1 << 18)  # STAC / CLAC
        assert rd(20, 4) == 0x9F80  # LDMXCSR / STMXCSR
        assert rd(24) == 0x12345678  # MOVD xmm, r32; MOVQ r64, xmm
        assert m.memory.read_bytes(0x3020, 16) == bytes(range(16))  # MOVDQU load and store
        assert rd(48) == 0  # PXOR
        assert rd(56, 1) == 1 and rd(64) == 0x55 and rd(72) == 0x66  # CMPXCHG16B
        if v.pvm:
            assert {"stac", "clac", "ldmxcsr", "movd", "cmpxchg16b"} <= set(v.fallback.counts)
    finally:
        v.close()


SYSCALL_GUEST = """
        mov ecx, 0xC0000081          ; STAR: kernel CS 0x10 (SS 0x18), SYSRET base 0x18
        xor eax, eax
        mov edx, (0x18 << 16) | 0x10
        wrmsr
        mov ecx, 0xC0000082          ; LSTAR
        mov rax, entry
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, 0xC0000082          ; the kernel reads its own value back
        rdmsr
        mov [0x3000], eax
        mov ecx, 0xC0000084          ; FMASK: IF, TF
        mov eax, 0x300
        xor edx, edx
        wrmsr
        mov ecx, 0xC0000080          ; EFER.SCE
        rdmsr
        or eax, 1
        wrmsr
        push 0x23
        push 0x7000
        push 0x202
        push 0x2b
        push user
        iretq
entry:  mov ax, cs                   ; the kernel's entry: record CS and the return RIP
        mov [0x3008], ax
        mov [0x3010], rcx
        inc dword [0x3018]
        cmp dword [0x3018], 2
        je .done
        o64 sysret
.done:  mov al, 0
        out 0xF4, al
        hlt
user:   mov eax, 1
        syscall
        mov eax, 2
        syscall
        hlt
"""


def test_syscall_from_ring3_enters_the_kernel_at_cpl0(tmp_path: Path) -> None:
    """A ring-3 SYSCALL arrives at LSTAR with CS = STAR[47:32] (SDM Vol.2B SYSCALL).  PVM hosts leave
    CS at the user value; vmxlab's trampoline (pvm_syscall.py) completes the switch."""
    from vmxlab.backends.kvm.pvm_syscall import TABLE_PAGES

    gdt = [0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF]
    m, v, vmm = long_mode_guest(tmp_path, SYSCALL_GUEST, syscall_fixup=True)
    try:
        m.memory.write_bytes(0x500, b"".join(struct.pack("<Q", d) for d in gdt))
        sr = v.cpu.get_sregs()
        sr.gdt.limit = len(gdt) * 8 - 1
        sr.tr.base, sr.tr.limit, sr.tr.type, sr.tr.s, sr.tr.present = 0x2000, 0x67, 11, 0, 1
        v.cpu.set_sregs(sr)
        m.memory.write(0x2004, 8, 0x8800)  # TSS.RSP0
        # user-accessible identity map (U/S at every level) for the ring-3 part
        for a in range(0x9000, 0x9000 + 3 * 4096, 8):
            e = m.memory.read(a, 8)
            if e:
                m.memory.write(a, 8, e | 4)
        stop = vmm.run(None, 10)
        assert stop.reason == StopReason.DEBUG_EXIT, (stop, v.last_error)
        assert m.memory.read(0x3008, 2) == 0x10  # CS at the kernel's entry
        assert m.memory.read(0x3018, 4) == 2
        user = 0x100000 + assemble_offset(tmp_path, "user")
        assert m.memory.read(0x3010, 8) == user + 5 + 2 + 5 + 2  # RCX: after the second SYSCALL
        entry = 0x100000 + assemble_offset(tmp_path, "entry")
        assert m.memory.read(0x3000, 4) == entry & 0xFFFFFFFF  # RDMSR(LSTAR) = the kernel's value
        if v.pvm:
            assert v.syscalls.fixups == 2 and m.memory.read(TABLE_PAGES[2], 8) & 1
    finally:
        v.close()


def assemble_offset(tmp_path: Path, label: str) -> int:
    """Offset of ``label`` in the last long-mode guest (from a nasm listing-free re-assembly)."""
    src = (tmp_path / "g64.asm").read_text()
    probe = tmp_path / "probe.asm"
    probe.write_text(src + f"\nlabel_offset: dq {label} - 0x100000\n")
    data = assemble(probe).read_bytes()
    return struct.unpack_from("<Q", data, len(data) - 8)[0]


# ---------------------------------------------------------------------------- timing hygiene


def test_kick_ends_a_guest_that_never_exits() -> None:
    t0 = time.monotonic()
    r = kvm_snippet(".l: jmp .l", timeout=0.3)
    assert r.stop.reason == StopReason.TIMEOUT
    assert r.backend.vcpu.stats.kicks >= 1
    assert time.monotonic() - t0 < 30  # a kicked KVM_RUN returns (not a timing measurement)


def test_guest_stopped_is_returned_by_the_vcpu() -> None:
    m, v = vcpu_for(".l: jmp .l")
    try:
        res = v.run(timeout=0.2)
        assert isinstance(res, GuestStopped) and res.stop.reason == StopReason.TIMEOUT
    finally:
        v.close()


def test_cpuid_table_is_the_vmms() -> None:
    """KVM_GET_SUPPORTED_CPUID, the VMM's changes, KVM_SET_CPUID2: the guest sees the VMM's vendor."""
    from vmxlab.backends.kvm.backend import KvmBackend

    def vmm_cpuid(entries):
        for e in entries:
            if e.function == 0:
                e.ebx, e.edx, e.ecx = (int.from_bytes(b"vmxlabKVMcpu"[i : i + 4], "little") for i in (0, 4, 8))
        return entries

    path = write_snippet("xor eax, eax\ncpuid\nmov [0x3000], ebx\nmov [0x3004], edx\nmov [0x3008], ecx\n"
                         "mov eax, 1\ncpuid\nmov [0x300C], ecx", "pm32")
    opts = RunOptions(image=path, format="flat", load=0x100000, entry="pm32:0x100000", echo=False)
    m = build_machine(opts)
    entry = load_image(m, opts, resolve_image(path))
    be = KvmBackend(m, cpuid_filter=vmm_cpuid)
    be.apply_entry(entry)
    assert be.run(None, 5).reason == StopReason.HALTED
    vendor = m.memory.read_bytes(0x3000, 12)
    if vendor != b"vmxlabKVMcpu" and be.vcpu.pvm:
        pytest.xfail("this PVM host answers ring-0 CPUID from the host, not from KVM_SET_CPUID2 (kvm.md §0)")
    assert vendor == b"vmxlabKVMcpu"
    assert m.memory.read(0x300C, 4) & (1 << 31)  # the default filter's hypervisor bit (CPUID.1:ECX[31])


def test_trace_records_vm_exits_and_port_accesses(tmp_path: Path) -> None:
    import json

    trace = tmp_path / "t.jsonl"
    r = run_guest("hello", backend="kvm", timeout=10, trace_path=trace)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    exits = [e for e in events if e["kind"] == "vm-exit"]
    ios = [e for e in events if e["kind"] == "io"]
    assert exits and len(exits) == len(ios) == r.backend.vm.counts_by_name()["IO_INSTRUCTION"]
    first = exits[0]
    assert first["reason"] == 30 and first["reason_name"] == "IO_INSTRUCTION"
    assert IoQualification.decode(first["qualification"]).port == ios[0]["port"]
