"""``vmxlab boot-linux --kernel BZIMAGE``: boot a stock Linux kernel on /dev/kvm with a serial console.

The kernel is loaded through the x86 64-bit boot protocol (vmxlab/linux/boot.py): by default the
vmlinux is taken out of the bzImage and loaded at its physical address, the zero page, e820 map
and command line are built by vmxlab, and the vCPU starts in 64-bit mode at ``startup_64``.  The
console is COM1 (the 16550A model, IRQ 4 through KVM_IRQ_LINE); when stdin is a terminal it is
attached in raw mode -- type at the guest, Ctrl-A x quits (as QEMU's -serial stdio).  A reboot
(i8042 reset) or a poweroff (the CPU halts with interrupts off) ends the VM.

Kernel and busybox: ``scripts/fetch-linux.sh`` (apt-get download + dpkg-deb -x, nothing installed),
then ``vmxlab mkinitramfs --busybox .../bin/busybox -o initramfs.cpio``.

On the PVM hosts here ring-0 code runs in KVM's instruction emulator (kvm.md §0): the boot is slow
and vmxlab adds kernel parameters that avoid instructions the emulator lacks (boot.py
EMULATOR_FRIENDLY_CMDLINE); the rest are emulated by vmxlab (backends/kvm/insn_fallback.py).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..machine.machine import StopReason


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boot-linux", help="boot a Linux bzImage on /dev/kvm (serial console)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", type=Path, required=True, help="a bzImage (e.g. /boot/vmlinuz-*)")
    p.add_argument("--initrd", type=Path, help="an initramfs (e.g. from vmxlab mkinitramfs)")
    p.add_argument("--cmdline", default="", help="extra kernel parameters (appended to vmxlab's)")
    p.add_argument("--mem", type=int, default=256, metavar="MiB", help="guest RAM in MiB (default 256)")
    p.add_argument("--entry", choices=["vmlinux", "bzimage"], default="vmlinux",
                   help="vmlinux: load the ELF inside the bzImage (default; no in-guest decompression); "
                        "bzimage: the bzImage's own 64-bit entry at 0x100000 + 0x200")
    p.add_argument("--run", metavar="CMD", help="run CMD in the guest's shell, then power off (needs vmxlab's "
                   "default /init; passed as VMXLAB_RUN on the kernel command line)")
    p.add_argument("--send", metavar="TEXT", help="type TEXT at the first shell prompt (\\n for Enter), e.g. "
                   "'uname -a; poweroff -f\\n' -- for scripts and tests; the terminal is not attached then")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--no-pvm-workarounds", action="store_true",
                   help="do not add the kernel parameters for emulated ring 0 (added by default on PVM hosts)")
    p.add_argument("--quiet", action="store_true", help="do not echo the console; print the summary only")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def build_cmdline(user: str, pvm: bool, run_cmd: str | None) -> str:
    from ..linux.boot import BASE_CMDLINE, EMULATOR_FRIENDLY_CMDLINE

    parts = [BASE_CMDLINE]
    if pvm:
        parts.append(EMULATOR_FRIENDLY_CMDLINE)
    if user:
        parts.append(user)
    if run_cmd:
        if '"' in run_cmd:
            raise UserError("--run: the command may not contain double quotes (it travels on the kernel "
                            "command line)")
        parts.append(f'VMXLAB_RUN="{run_cmd}"')
    return " ".join(parts)


def boot(args: argparse.Namespace, echo: bool = True):
    """Set up and run; returns (stop, seconds, console, backend pieces) for the summary and tests."""
    from ..backends.kvm.availability import is_pvm
    from ..backends.kvm.vcpu import KvmGuestVcpu
    from ..backends.select import kvm_available
    from ..devices.board import attach_standard_devices
    from ..linux.boot import BOOT_MSRS, load_linux
    from ..linux.milestones import MilestoneConsole
    from ..machine.machine import Machine
    from ..vmm.vm import VirtualMachine

    ok, why = kvm_available()
    if not ok:
        raise UserError(f"boot-linux needs /dev/kvm: {why}")
    if not 64 <= args.mem <= 3072:
        raise UserError(f"--mem {args.mem}: choose between 64 and 3072 MiB")
    try:
        image = args.kernel.read_bytes()
        initrd = args.initrd.read_bytes() if args.initrd else None
    except OSError as e:
        raise UserError(f"{e.filename}: cannot read ({e.strerror})") from None
    pvm = is_pvm() and not args.no_pvm_workarounds
    cmdline = build_cmdline(args.cmdline, pvm, args.run)
    t0 = time.monotonic()
    console = MilestoneConsole(echo=echo, t0=t0)
    machine = Machine.create(args.mem, console, wall_clock=True)
    attach_standard_devices(machine)
    lb = load_linux(machine, image, initrd=initrd, cmdline=cmdline, entry=args.entry)
    vcpu = KvmGuestVcpu(machine, irqchip="kernel", syscall_fixup=True)
    try:
        vcpu.set_lint_for_pic()
        for index, value in BOOT_MSRS.items():  # one by one: a host may refuse some (PVM: TSC writes)
            with contextlib.suppress(OSError):
                vcpu.set_msrs({index: value})
        vcpu.apply_long_mode(lb.long_mode_state())
        vmm = VirtualMachine(machine, vcpu, None)  # the same VMM and handlers as every other run
        uart = machine.devices["com1"]
        send = getattr(args, "send", None)
        if send:
            text = codecs.decode(send, "unicode_escape").encode("latin-1")

            def type_at_prompt(m) -> None:
                if m.name == "shell-prompt":
                    uart.feed(text)  # flow-controlled into the FIFO; IRQ 4 through KVM_IRQ_LINE

            console.on_milestone = type_at_prompt
        attached = echo and not args.run and not send and uart.attach_terminal()
        machine.input_attached = attached
        try:
            stop = vmm.run(None, args.timeout)
        finally:
            if attached:
                uart.detach_terminal()
        seconds = time.monotonic() - t0
        return stop, seconds, console, vmm, vcpu, lb
    finally:
        vcpu.close()


def run(args: argparse.Namespace) -> int:
    echo = not (args.quiet or args.json)
    stop, seconds, console, vmm, vcpu, lb = boot(args, echo=echo)
    last = console.last()
    summary = {
        "stop_reason": stop.reason.value, "stop_detail": stop.detail, "seconds": round(seconds, 1),
        "last_milestone": last.name if last else None,
        "milestones": [{"name": m.name, "seconds": round(m.seconds, 1)} for m in console.reached],
        "vm_exits": vmm.counts_by_name(), "kvm_exits": dict(vcpu.stats.kvm_exits),
        "emulated_by_vmxlab": dict(vcpu.fallback.counts) if vcpu.fallback else {},
        "syscalls_completed_by_vmxlab": vcpu.syscalls.fixups if vcpu.syscalls is not None else 0,
        "entry": lb.entry_kind, "cmdline": lb.cmdline,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        sys.stdout.flush()
        print(file=sys.stderr)
        print(f"vmxlab: Linux {what_happened(stop.reason)} after {seconds:.1f} s "
              f"({stop.reason.value}{': ' + stop.detail if stop.detail else ''})", file=sys.stderr)
        print("vmxlab: milestones (host seconds since start):", file=sys.stderr)
        print(console.table(), file=sys.stderr)
        exits = ", ".join(f"{n} {c}" for n, c in sorted(vmm.counts_by_name().items(), key=lambda kv: -kv[1]))
        print(f"vmxlab: VM exits: {exits}", file=sys.stderr)
        if vcpu.syscalls is not None and vcpu.syscalls.fixups:
            print(f"vmxlab: SYSCALLs from user mode completed by vmxlab (PVM host): {vcpu.syscalls.fixups} "
                  f"({vcpu.syscalls.deferrals} waited for an interrupt being delivered)", file=sys.stderr)
        if vcpu.fallback and vcpu.fallback.counts:
            print("vmxlab: instructions KVM could not emulate, run by vmxlab: "
                  + ", ".join(f"{n} {c}" for n, c in vcpu.fallback.counts.most_common()), file=sys.stderr)
    ok = stop.reason in (StopReason.SHUTDOWN_REQUEST, StopReason.HALTED, StopReason.RESET)
    return 0 if ok else 1


def what_happened(reason: StopReason) -> str:
    return {StopReason.HALTED: "powered off (CPU halted with interrupts off)",
            StopReason.RESET: "rebooted (i8042 reset)",
            StopReason.SHUTDOWN_REQUEST: "stopped (Ctrl-A x)",
            StopReason.TIMEOUT: "timed out",
            StopReason.TRIPLE_FAULT: "triple-faulted"}.get(reason, "stopped")
