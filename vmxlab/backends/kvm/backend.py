"""The ``kvm`` backend as the runner sees it: ``apply_entry``, ``run`` -> StopRequest, a summary.

Same images, same Machine, same device models as ``emu`` (backends/emu.py); the guest runs
on the host CPU through /dev/kvm (:class:`~.vcpu.KvmGuestVcpu`) and its exits go to the same
VMM as on ``emu`` (:class:`vmxlab.vmm.vm.VirtualMachine`: one handler table for both).
"""

from __future__ import annotations

from ...machine.loaders import EntryState
from ...machine.machine import Machine, StopRequest
from ...vmm.vm import VirtualMachine
from .vcpu import CpuidFilter, KvmGuestVcpu


class KvmBackend:
    name = "kvm"
    #: KVM does not count guest instructions: summaries say "n/a" instead of a made-up number
    counts_instructions = False

    def __init__(self, machine: Machine, *, irqchip: str = "user", cpuid_filter: CpuidFilter | None = None,
                 msr_exits: dict[int, int] | None = None) -> None:
        self.machine = machine
        self.vcpu = KvmGuestVcpu(machine, irqchip=irqchip, cpuid_filter=cpuid_filter,
                                 msr_exits=(msr_exits or {}).keys())
        self.vm = VirtualMachine(machine, self.vcpu, None, msrs=msr_exits)
        self.vmm = self.vm  # older name, kept for callers

    def attach_tracer(self, tracer) -> None:
        """``--trace``/``--show``: every VM exit (with its SDM reason and qualification) and every port
        access become trace events (there is no software CPU to report rings or instructions)."""
        self.vm.tracer = tracer
        ports = self.machine.ports
        if "io" in tracer.kinds:
            def io(port: int, size: int, is_write: bool, value: int) -> None:
                tracer.emit("io", port=port, size=size, dir="out" if is_write else "in", value=value,
                            claimed=ports.device_at(port) is not None)

            ports.on_access = io

    def apply_entry(self, entry: EntryState) -> None:
        self.vcpu.apply_entry(entry)

    def run(self, max_instructions: int | None = None, timeout: float | None = None) -> StopRequest:
        return self.vm.run(max_instructions, timeout)

    def state_dict(self) -> dict:
        return self.vcpu.state_dict()

    def summary(self) -> str:
        """"instructions: n/a, 1234 VM exits (IO_INSTRUCTION 1200, HLT 34), ..." for the run summary."""
        counts = self.vm.counts_by_name()
        total = sum(counts.values())
        parts = ", ".join(f"{n} {c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1]))
        s = f"instructions: n/a (KVM counts none), {total} VM exits" + (f" ({parts})" if parts else "")
        fb = self.vcpu.fallback
        if fb is not None and fb.counts:
            s += ", emulated by vmxlab: " + ", ".join(f"{n} {c}" for n, c in fb.counts.most_common())
        if self.vcpu.stats.injected_interrupts:
            s += f", {self.vcpu.stats.injected_interrupts} interrupts injected"
        return s

    def exit_summary(self) -> dict:
        return {"vm_exits": self.vm.counts_by_name(), "kvm_exits": dict(self.vcpu.stats.kvm_exits),
                "io_exits": self.vcpu.io_exits, "kicks": self.vcpu.stats.kicks,
                "injected_interrupts": self.vcpu.stats.injected_interrupts,
                "emulated_instructions": dict(self.vcpu.fallback.counts) if self.vcpu.fallback else {}}

    def close(self) -> None:
        self.vcpu.close()
