"""The software CPU: run a program at CPL 3 in 32-bit protected mode with 32-bit paging.

The CPU is put into the state directly (as KVM_SET_SREGS does for the KVM
target), not by running set-up code: flat 32-bit code and data segments with
DPL 3 and RPL 3 selectors, CPL 3, CR0 = PG|WP|NE|ET|MP|PE, a 32-bit TSS for the
stack switch to ring 0 and a 32-bit IDT whose interrupt gates lead to the
``hlt`` stubs of :mod:`vmxlab.diff.layout`.  The page tables map exactly the
pages the KVM target maps, with the same U/S and R/W bits (SDM Vol.3A 4.3).

One machine and one CPU serve every program: each run rewrites the code and
compared pages (the block cache drops blocks of a rewritten code page, as for
self-modifying code) and reloads the registers.
"""

from __future__ import annotations

import struct

from ..cpu.core import CPU
from ..cpu.engine import Engine
from ..cpu.state import (
    AR_DB,
    AR_G,
    AR_P,
    AR_S,
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CS,
    DS,
    ES,
    FS,
    GS,
    SS,
    Segment,
)
from ..machine.machine import Machine, StopReason
from . import layout as L
from .outcome import EXIT_PAGE_ACCESS, Fault, Outcome
from .program import Program

# 32-bit paging entry bits (SDM Vol.3A 4.3, Table 4-5/4-6)

_GDT = {
    L.SEL_KCODE: 0x00CF9B000000FFFF,  # 32-bit code, DPL 0
    L.SEL_KDATA: 0x00CF93000000FFFF,
    L.SEL_UCODE32 & ~3: 0x00CFFB000000FFFF,  # 32-bit code, DPL 3
    L.SEL_UDATA & ~3: 0x00CFF3000000FFFF,  # data, DPL 3
}
AR_UCODE = 0xB | AR_S | 3 << 5 | AR_P | AR_DB | AR_G  # SDM Vol.3C Table 25-2 layout (state.py)
AR_UDATA = 0x3 | AR_S | 3 << 5 | AR_P | AR_DB | AR_G
AR_TSS32_BUSY = 0xB | AR_P


def _gate32(offset: int, selector: int) -> bytes:
    """A 32-bit interrupt gate, DPL 0 (SDM Vol.3A 6.11, Figure 6-2)."""
    return struct.pack("<HHHH", offset & 0xFFFF, selector, 0x8E00, offset >> 16)


def _tss32_descriptor(base: int, limit: int) -> int:
    """A busy 32-bit TSS descriptor (SDM Vol.3A 7.2.2, Figure 7-3)."""
    return (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x8B << 40 | ((limit >> 16) & 0xF) << 48 | \
        ((base >> 24) & 0xFF) << 56


class _ExitDevice:
    """The MMIO page behind layout.EXIT_PAGE: the store that ends a program stops the machine."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def mmio_read(self, addr: int, size: int) -> int:
        self.machine.request_stop(StopReason.ERROR, 0, EXIT_PAGE_ACCESS)
        return (1 << (8 * size)) - 1

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        if addr == L.EXIT_GPA and size == 4:
            self.machine.request_stop(StopReason.DEBUG_EXIT, 0, "end of program")
        else:
            self.machine.request_stop(StopReason.ERROR, 0, EXIT_PAGE_ACCESS)


class EmuTarget:
    """The software CPU set up as :mod:`vmxlab.diff.layout` describes."""

    name = "emu"
    bitness = 32

    def __init__(self, engine: str = "interp", max_instructions: int = 100_000) -> None:
        self.machine = Machine.create(mem_mib=L.RAM_SIZE >> 20)
        self.machine.console.echo = False
        self.machine.memory.add_mmio(L.EXIT_GPA, L.PAGE, _ExitDevice(self.machine), "diff-exit")
        self.cpu = CPU(self.machine)
        self.engine = Engine(self.cpu, fast=(engine == "fast"))
        self.max_instructions = max_instructions
        self._build_tables()
        self.runs = 0

    def close(self) -> None:
        pass

    def _build_tables(self) -> None:
        w = self.machine.memory.write_bytes
        gdt = bytearray(8 * 8)
        for sel, desc in _GDT.items():
            struct.pack_into("<Q", gdt, sel, desc)
        struct.pack_into("<Q", gdt, L.SEL_TSS, _tss32_descriptor(L.TSS, 0x67))
        w(L.GDT, bytes(gdt))
        tss = bytearray(0x68)
        struct.pack_into("<IH", tss, 4, L.STACK0_TOP, L.SEL_KDATA)  # ESP0, SS0
        struct.pack_into("<H", tss, 0x66, 0x68)  # I/O map base beyond the limit: no bitmap
        w(L.TSS, bytes(tss))
        w(L.IDT, b"".join(_gate32(L.HANDLERS + L.HANDLER_STRIDE * v, L.SEL_KCODE) for v in range(32)))
        for v in range(32):
            w(L.HANDLERS + L.HANDLER_STRIDE * v, L.HANDLER_STUB)
        pd, pt = L.PAGE_TABLES, L.PAGE_TABLES + L.PAGE
        w(pd, struct.pack("<I", pt | L.PTE_TABLE).ljust(L.PAGE, b"\0"))
        w(pt, struct.pack("<1024I", *L.page_table_entries(1024)))
        self.cr3 = pd

    def enter_user_mode(self, regs: tuple[int, ...], eflags: int, eip: int) -> None:
        """Put the CPU at CPL 3 with the given registers, as KVM_SET_SREGS/KVM_SET_REGS would."""
        cpu = self.cpu
        cpu.regs[:] = list(regs)
        cpu.set_eflags(eflags)
        cpu.cr0 = CR0_PG | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE
        cpu.cr3 = self.cr3
        cpu.cr4 = 0
        cpu.efer = 0
        cpu.gdtr_base, cpu.gdtr_limit = L.GDT, 8 * 8 - 1
        cpu.idtr_base, cpu.idtr_limit = L.IDT, 32 * 8 - 1
        cpu.segs[CS].load(L.SEL_UCODE32, 0, 0xFFFFFFFF, AR_UCODE)
        for s in (SS, DS, ES, FS, GS):
            cpu.segs[s].load(L.SEL_UDATA, 0, 0xFFFFFFFF, AR_UDATA)
        cpu.tr = Segment(L.SEL_TSS, L.TSS, 0x67, AR_TSS32_BUSY)
        cpu.cpl = 3
        cpu.eip = eip
        cpu.halted = False
        cpu.update_mode()
        cpu.tlb_flush(all_entries=True)

    def run(self, program: Program) -> Outcome:
        enc = program.encode(32)
        st = program.state
        mem = self.machine.memory
        mem.write_bytes(L.CODE, enc.code.ljust(L.PAGE, b"\xcc"))
        for page, data in st.pages().items():
            mem.write_bytes(page, data)
        self.enter_user_mode(st.regs, st.eflags(), L.CODE)
        stop = self.engine.run(max_instructions=self.max_instructions)
        self.runs += 1
        cpu = self.cpu
        ram = mem.ram
        pages = {p: bytes(ram[p : p + L.PAGE]) for p in L.COMPARED}
        regs = tuple(cpu.regs)
        if stop.reason == StopReason.DEBUG_EXIT:
            return Outcome(regs, cpu.get_eflags(), pages)
        if stop.reason == StopReason.HALTED and cpu.cpl == 0:
            vector = L.handler_vector(cpu.eip)
            if vector is None:
                return Outcome(regs, cpu.get_eflags(), pages, error=f"HLT at {cpu.eip:#x}")
            frame = struct.unpack_from("<6I", ram, cpu.regs[4])
            ec = None
            if vector in L.ERROR_CODE_VECTORS:
                ec, frame = frame[0], frame[1:]
            eip, _cs, eflags, esp = frame[:4]
            cr2 = cpu.cr2 if vector == 14 else None
            index = enc.offsets.index(eip - L.CODE) if eip - L.CODE in enc.offsets else -1
            return Outcome(regs[:4] + (esp,) + regs[5:], eflags, pages, fault=Fault(vector, ec, index, cr2))
        if stop.reason == StopReason.ERROR and stop.detail == EXIT_PAGE_ACCESS:
            return Outcome(regs, cpu.get_eflags(), pages, error=EXIT_PAGE_ACCESS)
        detail = f"{stop.reason.value}{': ' + stop.detail if stop.detail else ''}"
        return Outcome(regs, cpu.get_eflags(), pages, error=f"software CPU stopped: {detail}")
