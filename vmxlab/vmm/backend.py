"""``vmxlab run IMAGE --vmx``: any image as a guest in VMX non-root operation under the Python VMM.

The runner treats this like any backend (apply the loader's entry state, run,
report), and the result's summary adds the exits by reason.
"""

from __future__ import annotations

from ..machine.loaders import EntryState
from ..machine.machine import Machine, StopRequest
from ..trace.events import Tracer
from .emu_vcpu import VMM_AREA, EmuVcpu
from .policies import Policy
from .vm import VirtualMachine

#: MiB the VMM reserves above guest RAM (Machine.create(reserved_mib=...))
RESERVED_MIB = VMM_AREA >> 20


class VmmBackend:
    name = "emu+vmx"

    def __init__(self, machine: Machine, policy: Policy, *, engine: str = "fast") -> None:
        self.machine = machine
        self.vcpu = EmuVcpu(machine, policy, guest_size=machine.memory.guest_size, engine=engine)
        self.vm = VirtualMachine(machine, self.vcpu, policy)
        self.cpu = self.vcpu.cpu

    def apply_entry(self, entry: EntryState) -> None:
        self.vcpu.apply_entry(entry)
        self.vm.start()

    def attach_tracer(self, tracer: Tracer) -> None:
        self.vcpu.attach_tracer(tracer)

    def run(self, max_instructions: int | None = None, timeout: float | None = None) -> StopRequest:
        return self.vm.run(max_instructions, timeout)
