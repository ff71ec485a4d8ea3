"""The ``emu`` backend: the software CPU running a machine directly (no VMX), or as VMX non-root
operation under the Python VMM (vmm/)."""

from __future__ import annotations

from ..cpu.core import CPU
from ..cpu.engine import Engine
from ..cpu.state import AR_REAL_DATA, CR0_ET, CR0_PE, CS, DS, ES, FS, GS, SS
from ..machine.loaders import BOOT_GDT, EntryState, install_boot_gdt
from ..machine.machine import Machine, StopRequest


class EmuBackend:
    """Owns the CPU and its engine for one machine."""

    name = "emu"

    def __init__(self, machine: Machine, *, engine: str = "fast") -> None:
        self.machine = machine
        self.cpu = CPU(machine)
        self.engine = Engine(self.cpu, fast=(engine == "fast"))

    def apply_entry(self, entry: EntryState) -> None:
        """Set the CPU to a loader's entry state (docs/entry-state.md)."""
        cpu = self.cpu
        if entry.mode == "reset":
            cpu.reset()
            return
        self.machine.set_a20(True)
        cpu.regs[:] = [0] * 8
        for name, value in entry.regs.items():
            cpu.regs[("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi").index(name)] = value
        cpu.set_eflags(entry.eflags)
        cpu.cr0 = CR0_ET
        cpu.cr2 = cpu.cr3 = cpu.cr4 = 0
        cpu.cpl = 0
        cpu.gdtr_base, cpu.gdtr_limit = entry.gdt_base, entry.gdt_limit
        cpu.idtr_base, cpu.idtr_limit = entry.idt_base, entry.idt_limit
        if entry.mode == "real":
            for s in (ES, SS, DS, FS, GS):
                sel = entry.ss if s == SS else entry.ds
                cpu.segs[s].load(sel, sel << 4, 0xFFFF, AR_REAL_DATA)
            cpu.segs[CS].load(entry.cs, entry.cs << 4, 0xFFFF, AR_REAL_DATA)  # as after reset (SDM Table 10-1)
            cpu.regs[4] = entry.esp & 0xFFFF
        else:
            install_boot_gdt(self.machine)
            cpu.cr0 = CR0_ET | CR0_PE
            code = BOOT_GDT[entry.cs >> 3]
            data = BOOT_GDT[entry.ds >> 3]
            from ..cpu.descriptors import Descriptor

            cd = Descriptor.decode(code)
            dd = Descriptor.decode(data)
            cpu.segs[CS].load(entry.cs, cd.base, cd.limit, cd.ar)
            for s in (ES, SS, DS, FS, GS):
                cpu.segs[s].load(entry.ds, dd.base, dd.limit, dd.ar)
            cpu.regs[4] = entry.esp
        cpu.eip = entry.eip
        cpu.halted = False
        cpu.update_mode()
        cpu.tlb_flush(all_entries=True)

    def run(self, max_instructions: int | None = None, timeout: float | None = None) -> StopRequest:
        return self.engine.run(max_instructions, timeout)
