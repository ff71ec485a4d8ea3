"""Loader entry states (machine/loaders.py, docs/entry-state.md) as KVM register state.

The software CPU applies an :class:`~vmxlab.machine.loaders.EntryState` by loading
its segment registers; on KVM the same state is written with KVM_SET_SREGS and
KVM_SET_REGS (api.rst 4.12-4.14), hidden parts spelt out as ``kvm_segment``
values.  The values match ``EmuBackend.apply_entry`` field for field, so both
backends start a guest in the same architectural state (``vmxlab compare``
checks the final state of the two runs).

* ``real``: CS = seg (base seg << 4), limit 0xFFFF, access rights 0x93 for every segment, CS
  included (docs/entry-state.md: CS after reset per SDM Vol.3A Table 10-1 "present, R/W,
  accessed"; KVM's emulator gives every real-mode segment load type 3 too), CR0 = ET.
* ``pm32``: vmxlab's boot GDT at 0x500 (loaders.BOOT_GDT), CS = 0x10 and data = 0x18,
  flat 4 GiB, CR0 = PE | ET, paging off.
* ``reset``: the state after RESET (SDM Vol.3A 10.1.1, Table 10-1): CS selector 0xF000,
  base 0xFFFF0000, EIP 0xFFF0; KVM creates a vCPU in exactly this state.
* ``long64`` (Linux, :mod:`vmxlab.linux.boot`): 64-bit mode with the given page tables,
  GDT and registers (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...cpu.state import CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from ...machine.loaders import BOOT_GDT, EntryState, install_boot_gdt
from ...machine.machine import Machine
from . import structs as s

# descriptor types (SDM Vol.3A 3.4.5.1, Table 3-1) with the accessed bit set
TYPE_CODE_RX_ACCESSED = 0xB
TYPE_DATA_RW_ACCESSED = 0x3
TYPE_TSS32_BUSY = 0xB  # system segment (S = 0), SDM Vol.3A 3.5 Table 3-2
TYPE_LDT = 0x2

#: RFLAGS bit 1 is reserved and always 1 (SDM Vol.1 3.4.3)
RFLAGS_FIXED = 0x2

GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def set_segment(seg: s.KvmSegment, selector: int, base: int, limit: int, type_: int, *, s_: int = 1,
                dpl: int = 0, db: int = 0, g: int = 0, l_: int = 0, present: int = 1) -> None:
    """Fill a ``kvm_segment`` in place (KVM takes the limit in bytes and G separately)."""
    seg.selector = selector
    seg.base = base
    seg.limit = limit
    seg.type = type_
    seg.s = s_
    seg.dpl = dpl
    seg.db = db
    seg.g = g
    seg.l = l_
    seg.present = present
    seg.avl = 0
    seg.unusable = 0 if present else 1


def descriptor_to_segment(seg: s.KvmSegment, selector: int, descriptor: int) -> None:
    """Load a segment's hidden part from an 8-byte GDT descriptor (SDM Vol.3A 3.4.5, Figure 3-8)."""
    base = (descriptor >> 16) & 0xFFFFFF | ((descriptor >> 56) & 0xFF) << 24
    limit = descriptor & 0xFFFF | ((descriptor >> 48) & 0xF) << 16
    access = (descriptor >> 40) & 0xFF
    flags = (descriptor >> 52) & 0xF
    g = flags >> 3 & 1
    if g:
        limit = limit << 12 | 0xFFF
    set_segment(seg, selector, base, limit, access & 0xF, s_=access >> 4 & 1, dpl=access >> 5 & 3,
                db=flags >> 2 & 1, g=g, l_=flags >> 1 & 1, present=access >> 7 & 1)


def _system_segments(sr: s.KvmSregs) -> None:
    """TR and LDTR as after RESET (SDM Vol.3A Table 10-1): a busy 32-bit TSS type for TR, because a
    VM entry requires it (SDM Vol.3C 27.3.1.2), and an LDT descriptor type for LDTR."""
    set_segment(sr.tr, 0, 0, 0xFFFF, TYPE_TSS32_BUSY, s_=0)
    set_segment(sr.ldt, 0, 0, 0xFFFF, TYPE_LDT, s_=0)


def entry_sregs(sr: s.KvmSregs, entry: EntryState, machine: Machine) -> None:
    """Write the segment/control part of ``entry`` into ``sr`` (real or pm32)."""
    if entry.mode == "real":
        set_segment(sr.cs, entry.cs, entry.cs << 4, 0xFFFF, TYPE_DATA_RW_ACCESSED)
        for name in ("ds", "es", "fs", "gs", "ss"):
            sel = entry.ss if name == "ss" else entry.ds
            set_segment(getattr(sr, name), sel, sel << 4, 0xFFFF, TYPE_DATA_RW_ACCESSED)
        sr.cr0 = CR0_ET
    elif entry.mode == "pm32":
        install_boot_gdt(machine)
        descriptor_to_segment(sr.cs, entry.cs, BOOT_GDT[entry.cs >> 3])
        for name in ("ds", "es", "fs", "gs", "ss"):
            descriptor_to_segment(getattr(sr, name), entry.ds, BOOT_GDT[entry.ds >> 3])
        sr.cr0 = CR0_ET | CR0_PE
    else:
        raise ValueError(f"entry mode {entry.mode!r}: expected real or pm32 here")
    _system_segments(sr)
    sr.gdt.base, sr.gdt.limit = entry.gdt_base, entry.gdt_limit
    sr.idt.base, sr.idt.limit = entry.idt_base, entry.idt_limit
    sr.cr2 = sr.cr3 = sr.cr4 = 0
    sr.efer = 0


def entry_regs(r: s.KvmRegs, entry: EntryState) -> None:
    """General-purpose registers, EIP and EFLAGS of ``entry`` (unnamed registers are 0)."""
    for name in GPR64:
        setattr(r, name, 0)
    for name, value in entry.regs.items():
        setattr(r, "r" + name[1:], value & 0xFFFFFFFF)
    r.rsp = entry.esp & (0xFFFF if entry.mode == "real" else 0xFFFFFFFF)
    r.rip = entry.eip
    r.rflags = entry.eflags | RFLAGS_FIXED


@dataclass
class LongModeState:
    """A 64-bit entry: what a 64-bit boot loader hands over (boot.rst "64-bit Boot Protocol").

    ``gdt`` is the list of 8-byte descriptors already written at ``gdt_base`` by the
    caller; ``cs``/``ds`` are selectors into it; ``cr3`` points at identity-mapping
    page tables the caller built.
    """

    rip: int
    cr3: int
    gdt_base: int
    gdt: list[int]
    cs: int
    ds: int
    regs: Mapping[str, int] = field(default_factory=dict)
    rflags: int = RFLAGS_FIXED
    idt_base: int = 0
    idt_limit: int = 0
    cr4_extra: int = 0
    efer_extra: int = 0


def long_mode_sregs(sr: s.KvmSregs, st: LongModeState) -> None:
    """CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CS.L = 1 (SDM Vol.3A 10.8.5 "Initializing IA-32e Mode")."""
    descriptor_to_segment(sr.cs, st.cs, st.gdt[st.cs >> 3])
    for name in ("ds", "es", "fs", "gs", "ss"):
        descriptor_to_segment(getattr(sr, name), st.ds, st.gdt[st.ds >> 3])
    _system_segments(sr)
    sr.gdt.base, sr.gdt.limit = st.gdt_base, len(st.gdt) * 8 - 1
    sr.idt.base, sr.idt.limit = st.idt_base, st.idt_limit
    sr.cr0 = CR0_PE | CR0_ET | CR0_PG
    sr.cr3 = st.cr3
    sr.cr4 = CR4_PAE | st.cr4_extra
    sr.efer = EFER_LME | EFER_LMA | st.efer_extra


def long_mode_regs(r: s.KvmRegs, st: LongModeState) -> None:
    for name in GPR64:
        setattr(r, name, st.regs.get(name, 0))
    r.rip = st.rip
    r.rflags = st.rflags | RFLAGS_FIXED
