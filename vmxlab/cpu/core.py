"""The software CPU's architectural state and its memory interface.

Instruction semantics live in :mod:`vmxlab.cpu.ops`; the run loop in
:mod:`vmxlab.cpu.engine`; exception delivery in :mod:`vmxlab.cpu.interrupts`;
the page walk in :mod:`vmxlab.cpu.paging`.  This class holds the state and the
paths every instruction uses: segmented loads and stores (limit and type
checks, SDM Vol.3A 5.3-5.5), linear-to-physical translation through a TLB,
and the stack.

TLB design (DESIGN.md speed rule 6).  Six dicts map a linear page number to the
offset of its 4 KiB frame in ``ram``: {read, write, fetch} x {supervisor, user}.
An entry exists only if the access it stands for is allowed *and* needs no
side effect: write entries are made only once the walk has set the dirty bit,
and never for pages that hold translated code, so a store to code always takes
the slow path where self-modifying code is detected.  ``tlb_r``/``tlb_w``/
``tlb_x`` point at the dicts for the current CPL (user when CPL = 3, SDM
Vol.3A 4.6).  MMIO and ROM pages never enter the TLB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..machine.machine import Machine
from . import flags as fl
from .faults import CodeModified, CpuFault, Vector
from .state import (
    AR_DB,
    AR_P,
    AR_REAL_DATA,
    AR_UNUSABLE,
    CR0_ET,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    CS,
    DS,
    ES,
    ESP,
    FS,
    GS,
    SS,
    Segment,
    real_mode_segment,
)

if TYPE_CHECKING:
    from .blocks import Block

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
M32 = 0xFFFFFFFF

# Page-fault error code bits (SDM Vol.3A 4.7) double as the access description
PF_P = 1 << 0  # the fault was a protection violation (page present)
PF_W = 1 << 1  # the access was a write
PF_U = 1 << 2  # the access was in user mode
PF_RSVD = 1 << 3  # reserved bit set in a paging-structure entry
PF_I = 1 << 4  # instruction fetch
ACC_READ = 0
ACC_WRITE = PF_W
ACC_FETCH = PF_I


class CPU:
    """A 32-bit x86 CPU (Pentium-class integer core, protection, paging; VMX in vmx/)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.memory = machine.memory
        self.ram = machine.memory.ram
        # word views of RAM for aligned accesses in compiled blocks (faster than struct, codegen.py)
        self.ram16 = memoryview(self.ram).cast("H")
        self.ram32 = memoryview(self.ram).cast("I")
        self.ram_pages = machine.memory.size >> 12
        machine.clock.icount_fn = lambda: self.icount + self.idle_ticks
        machine.on_a20_change = self._a20_changed
        machine.on_intr = self._wake
        machine.on_stop = self._wake

        self.regs: list[int] = [0] * 8
        self.eip = 0
        # lazy status flags (see flags.py) and the rest of EFLAGS
        self.cc_op = fl.K_FLAGS << 2
        self.cc_a = 0
        self.cc_b = 0
        self.cc_res = 0
        self.eflags_sys = fl.RESERVED1

        self.segs: list[Segment] = [real_mode_segment(0) for _ in range(6)]
        self.ldtr = Segment(0, 0, 0xFFFF, 0x82)  # SDM Vol.3A 10.1.1 Table 10-1: LDTR after reset
        self.tr = Segment(0, 0, 0xFFFF, 0x8B)
        self.gdtr_base = 0
        self.gdtr_limit = 0xFFFF
        self.idtr_base = 0
        self.idtr_limit = 0xFFFF

        self.cr0 = CR0_ET
        self.cr2 = 0
        self.cr3 = 0
        self.cr4 = 0
        self.efer = 0
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
        self.msr: dict[int, int] = {}
        from .cpuid import default_table

        #: CPUID leaves of the modelled CPU; (leaf, subleaf) -> (eax, ebx, ecx, edx)
        self.cpuid_table = default_table()
        self.tsc_base = 0
        self.pdptes = [0, 0, 0, 0]  # PAE PDPTE registers (SDM Vol.3A 4.4.1)

        self.cpl = 0
        self.icount = 0  # instructions retired
        self.idle_ticks = 0  # virtual time spent halted
        self.halted = False
        #: interrupt shadow after STI / MOV SS / POP SS (SDM Vol.3A 6.8.3); holds the icount it covers
        self.shadow_until = -1
        #: set by STI/MOV SS/POP SS (which end their block): the engine turns it into shadow_until
        self.inhibit_pending = False
        #: the last instruction that raised #UD because the model does not implement it (for reports)
        self.last_unmodelled: str | None = None
        #: a fault raised after the commit point of a task switch (tasks.py): it belongs to the new
        #: task, so the engine delivers it before the new task's first instruction (SDM Vol.3A 7.3)
        self.pending_fault: CpuFault | None = None
        self.nmi_pending = False
        self.nmi_blocked = False
        #: something needs the run loop's attention at the next block boundary
        self.event_pending = False
        #: the block whose instructions are being executed (for self-modifying code checks)
        self.cur_block: Block | None = None
        #: VMX state (vmx/ attaches itself here); None outside VMX operation
        self.vmx = None
        #: EPT translator used in VMX non-root operation; None = guest-physical is host-physical
        self.ept = None
        #: (vector, error code, kind, return EIP) of the event interrupts.deliver is delivering, else None
        self.delivering: tuple | None = None
        #: trace sink (trace/); None = tracing off, which costs one attribute test per event site
        self.trace = None
        #: hooks the VMX layer installs to intercept instructions (name -> predicate); see vmx/
        self.exit_hooks: dict[str, Callable] = {}

        self.tlb_sr: dict[int, int] = {}
        self.tlb_sw: dict[int, int] = {}
        self.tlb_sx: dict[int, int] = {}
        self.tlb_ur: dict[int, int] = {}
        self.tlb_uw: dict[int, int] = {}
        self.tlb_ux: dict[int, int] = {}
        self.tlb_global: set[int] = set()
        #: 2 MiB region number -> (first 4 KiB page, page count) of a 2/4 MiB page the walk has
        #: translated: the TLB holds large pages as 4 KiB entries, INVLPG must drop all of them
        self.tlb_large: dict[int, tuple[int, int]] = {}
        self.tlb_r = self.tlb_sr
        self.tlb_w = self.tlb_sw
        self.tlb_x = self.tlb_sx

        # derived mode bits (update_mode keeps them current)
        self.pe = False
        self.pg = False
        self.cs32 = False
        self.ss32 = False
        self.mode_key = 0
        self.a20_mask = M32

        from .blocks import BlockCache  # local import: blocks imports core for typing only

        self.blocks = BlockCache(self)
        self.reset()

    # ------------------------------------------------------------------ reset / modes

    def reset(self) -> None:
        """Power-on state (SDM Vol.3A 10.1.1, Table 10-1): real mode at F000:FFF0, CS base FFFF0000."""
        self.regs[:] = [0] * 8
        self.regs[2] = 0x00000633  # EDX = family/model/stepping of the modelled CPU (cpuid leaf 1 EAX)
        self.eip = 0xFFF0
        self.set_eflags(fl.RESERVED1)
        for seg in self.segs:
            seg.load(0, 0, 0xFFFF, 0x93)
        self.segs[CS].load(0xF000, 0xFFFF0000, 0xFFFF, AR_REAL_DATA)  # Table 10-1: Present, R/W, Accessed
        self.cr0 = CR0_ET | (1 << 30) | (1 << 29)  # CD and NW set after power-up
        self.cr2 = self.cr3 = self.cr4 = 0
        self.efer = 0
        self.cpl = 0
        self.halted = False
        # SDM Vol.3A 10.1.1 Table 10-1: GDTR/IDTR base 0 limit FFFF, LDTR/TR selector 0 limit FFFF,
        # DR0-3 = 0, DR6 = FFFF0FF0, DR7 = 400
        self.gdtr_base, self.gdtr_limit = 0, 0xFFFF
        self.idtr_base, self.idtr_limit = 0, 0xFFFF
        self.ldtr.load(0, 0, 0xFFFF, 0x82)
        self.tr.load(0, 0, 0xFFFF, 0x8B)
        self.dr[:] = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
        self.update_mode()
        self.tlb_flush(all_entries=True)

    def update_mode(self) -> None:
        """Recompute the cached mode bits after CR0, CS, SS, CPL or a data segment changed.

        ``mode_key`` is part of the block-cache key: a block decoded for 16-bit
        code or a 16-bit stack is never reused for 32-bit ones.
        """
        segs = self.segs
        self.pe = bool(self.cr0 & CR0_PE)
        self.pg = bool(self.cr0 & CR0_PG) and self.pe
        self.cs32 = bool(segs[CS].ar & AR_DB)
        self.ss32 = bool(segs[SS].ar & AR_DB)
        flat = segs[CS].flat and segs[SS].flat and segs[DS].flat and segs[ES].flat
        self.mode_key = int(self.cs32) | int(self.ss32) << 1 | int(flat) << 2
        if self.cpl == 3:
            self.tlb_r, self.tlb_w, self.tlb_x = self.tlb_ur, self.tlb_uw, self.tlb_ux
        else:
            self.tlb_r, self.tlb_w, self.tlb_x = self.tlb_sr, self.tlb_sw, self.tlb_sx
        self.a20_mask = M32 if self.machine.a20 else ~(1 << 20) & M32
        if self.trace is not None:
            self.trace.check_ring(self)

    def _wake(self) -> None:
        self.event_pending = True

    def _a20_changed(self, _enabled: bool) -> None:
        self.tlb_flush(all_entries=True)
        self.update_mode()

    def set_cpl(self, cpl: int) -> None:
        if cpl != self.cpl:
            self.cpl = cpl
            self.update_mode()

    # ------------------------------------------------------------------ EFLAGS

    def get_eflags(self) -> int:
        """The architectural EFLAGS value (status bits materialised from the lazy record)."""
        return self.eflags_sys | fl.oszapc(self.cc_op, self.cc_a, self.cc_b, self.cc_res)

    def set_eflags(self, value: int) -> None:
        """Load EFLAGS without privilege filtering (callers apply the POPF/IRET rules first)."""
        self.cc_op = fl.K_FLAGS << 2
        self.cc_res = value & fl.STATUS
        old_if = self.eflags_sys & fl.IF
        self.eflags_sys = (value & fl.WRITABLE & ~fl.STATUS) | fl.RESERVED1
        if not old_if and self.eflags_sys & fl.IF:
            self.event_pending = True

    def set_status_flags(self, status: int) -> None:
        """Replace only CF PF AF ZF SF OF (the materialised form)."""
        self.cc_op = fl.K_FLAGS << 2
        self.cc_res = status & fl.STATUS

    def get_cf(self) -> int:
        return fl.carry(self.cc_op, self.cc_a, self.cc_b, self.cc_res)

    def cond(self, cc: int) -> bool:
        """Evaluate condition code ``cc`` (0..15, the low nibble of Jcc/SETcc/CMOVcc)."""
        return fl.CONDITIONS[cc](fl.oszapc(self.cc_op, self.cc_a, self.cc_b, self.cc_res))

    @property
    def iopl(self) -> int:
        return (self.eflags_sys >> fl.IOPL_SHIFT) & 3

    # ------------------------------------------------------------------ segmented access

    def seg_fault(self, sreg: int, off: int, size: int, write: bool) -> CpuFault:
        """The fault for an access outside the segment or of the wrong type (SDM Vol.3A 5.3, 5.5).

        #SS(0) for the stack segment, #GP(0) otherwise; a null selector is #GP(0) (SDM Vol.3A 5.4.1).
        """
        seg = self.segs[sreg]
        what = "write to" if write else "read from"
        detail = f"{what} {('es', 'cs', 'ss', 'ds', 'fs', 'gs')[sreg]}:{off:#x} size {size} outside {seg!r}"
        vector = Vector.SS if sreg == SS and not seg.unusable else Vector.GP
        return CpuFault(vector, 0, detail=detail)

    def linear(self, sreg: int, off: int, size: int, write: bool = False) -> int:
        """Check an access of ``size`` bytes at ``off`` in ``sreg`` and return its linear address."""
        s = self.segs[sreg]
        if off < s.lo or off + size - 1 > s.hi or not (s.writable if write else s.readable):
            raise self.seg_fault(sreg, off, size, write)
        return (s.base + off) & M32

    def rd8(self, sreg: int, off: int) -> int:
        s = self.segs[sreg]
        if off < s.lo or off > s.hi or not s.readable:
            raise self.seg_fault(sreg, off, 1, False)
        la = (s.base + off) & M32
        p = self.tlb_r.get(la >> 12)
        if p is not None:
            return self.ram[p | (la & 0xFFF)]
        return self.lread_slow(la, 1, self.cpl == 3)

    def rd16(self, sreg: int, off: int) -> int:
        s = self.segs[sreg]
        if off < s.lo or off + 1 > s.hi or not s.readable:
            raise self.seg_fault(sreg, off, 2, False)
        la = (s.base + off) & M32
        p = self.tlb_r.get(la >> 12)
        if p is not None and (la & 0xFFF) != 0xFFF:
            return U16.unpack_from(self.ram, p | (la & 0xFFF))[0]
        return self.lread_slow(la, 2, self.cpl == 3)

    def rd32(self, sreg: int, off: int) -> int:
        s = self.segs[sreg]
        if off < s.lo or off + 3 > s.hi or not s.readable:
            raise self.seg_fault(sreg, off, 4, False)
        la = (s.base + off) & M32
        p = self.tlb_r.get(la >> 12)
        if p is not None and (la & 0xFFF) <= 0xFFC:
            return U32.unpack_from(self.ram, p | (la & 0xFFF))[0]
        return self.lread_slow(la, 4, self.cpl == 3)

    def wr8(self, sreg: int, off: int, value: int) -> None:
        s = self.segs[sreg]
        if off < s.lo or off > s.hi or not s.writable:
            raise self.seg_fault(sreg, off, 1, True)
        la = (s.base + off) & M32
        p = self.tlb_w.get(la >> 12)
        if p is not None:
            self.ram[p | (la & 0xFFF)] = value & 0xFF
        else:
            self.lwrite_slow(la, 1, value & 0xFF, self.cpl == 3)

    def wr16(self, sreg: int, off: int, value: int) -> None:
        s = self.segs[sreg]
        if off < s.lo or off + 1 > s.hi or not s.writable:
            raise self.seg_fault(sreg, off, 2, True)
        la = (s.base + off) & M32
        p = self.tlb_w.get(la >> 12)
        if p is not None and (la & 0xFFF) != 0xFFF:
            U16.pack_into(self.ram, p | (la & 0xFFF), value & 0xFFFF)
        else:
            self.lwrite_slow(la, 2, value & 0xFFFF, self.cpl == 3)

    def wr32(self, sreg: int, off: int, value: int) -> None:
        s = self.segs[sreg]
        if off < s.lo or off + 3 > s.hi or not s.writable:
            raise self.seg_fault(sreg, off, 4, True)
        la = (s.base + off) & M32
        p = self.tlb_w.get(la >> 12)
        if p is not None and (la & 0xFFF) <= 0xFFC:
            U32.pack_into(self.ram, p | (la & 0xFFF), value & M32)
        else:
            self.lwrite_slow(la, 4, value & M32, self.cpl == 3)

    def rd(self, sreg: int, off: int, size: int) -> int:
        if size == 4:
            return self.rd32(sreg, off)
        if size == 2:
            return self.rd16(sreg, off)
        if size == 1:
            return self.rd8(sreg, off)
        return self.rd32(sreg, off) | self.rd32(sreg, (off + 4) & M32) << 32

    def wr(self, sreg: int, off: int, size: int, value: int) -> None:
        if size == 4:
            self.wr32(sreg, off, value)
        elif size == 2:
            self.wr16(sreg, off, value)
        elif size == 1:
            self.wr8(sreg, off, value)
        else:
            la = self.linear(sreg, off, size, write=True)
            self.lwrite(la, size, value)

    # ------------------------------------------------------------------ linear access

    def lread(self, la: int, size: int, user: bool | None = None) -> int:
        """Load from a linear address.  ``user=False`` is an implicit supervisor access (GDT, IDT, TSS)."""
        if user is None:
            tlb = self.tlb_r
            user = self.cpl == 3
        else:
            tlb = self.tlb_ur if user else self.tlb_sr
        la &= M32
        p = tlb.get(la >> 12)
        off = la & 0xFFF
        if p is not None and off + size <= 0x1000:
            if size == 4:
                return U32.unpack_from(self.ram, p | off)[0]
            if size == 1:
                return self.ram[p | off]
            if size == 2:
                return U16.unpack_from(self.ram, p | off)[0]
            return U64.unpack_from(self.ram, p | off)[0]
        return self.lread_slow(la, size, user)

    def lwrite(self, la: int, size: int, value: int, user: bool | None = None) -> None:
        if user is None:
            tlb = self.tlb_w
            user = self.cpl == 3
        else:
            tlb = self.tlb_uw if user else self.tlb_sw
        la &= M32
        p = tlb.get(la >> 12)
        off = la & 0xFFF
        if p is not None and off + size <= 0x1000:
            if size == 4:
                U32.pack_into(self.ram, p | off, value & M32)
            elif size == 1:
                self.ram[p | off] = value & 0xFF
            elif size == 2:
                U16.pack_into(self.ram, p | off, value & 0xFFFF)
            else:
                U64.pack_into(self.ram, p | off, value & 0xFFFFFFFFFFFFFFFF)
            return
        self.lwrite_slow(la, size, value, user)

    def lread_rmw(self, la: int, size: int, user: bool | None = None) -> int:
        """The load of a read-modify-write instruction (ADD [m], r; XCHG; ...): translated with write
        intent, as hardware does, so a read-only or not-present page faults at the load with W = 1 in
        the #PF error code (SDM Vol.3A 4.7; the store that follows cannot fault on paging then)."""
        if user is None:
            tlb = self.tlb_w
            user = self.cpl == 3
        else:
            tlb = self.tlb_uw if user else self.tlb_sw
        la &= M32
        p = tlb.get(la >> 12)
        off = la & 0xFFF
        if p is not None and off + size <= 0x1000:
            if size == 4:
                return U32.unpack_from(self.ram, p | off)[0]
            if size == 1:
                return self.ram[p | off]
            if size == 2:
                return U16.unpack_from(self.ram, p | off)[0]
            return U64.unpack_from(self.ram, p | off)[0]
        return self.lread_slow(la, size, user, ACC_WRITE)

    def lread_slow(self, la: int, size: int, user: bool, intent: int = ACC_READ) -> int:
        """TLB miss, page-crossing or non-RAM load: translate (may #PF), fill the TLB, load.

        ``intent`` ACC_WRITE is :meth:`lread_rmw`'s load: translated as a write; it fills no TLB (the
        write TLB is filled by the store, which also handles code pages)."""
        acc = intent | (PF_U if user else 0)
        if (la & 0xFFF) + size > 0x1000:
            # SDM Vol.3A 4.10: both pages are translated (and may fault) before the access completes
            split = 0x1000 - (la & 0xFFF)
            pa1 = self.translate(la, acc)
            pa2 = self.translate((la + split) & M32, acc)
            lo = self.memory.read_bytes(pa1, split)
            hi = self.memory.read_bytes(pa2, size - split)
            return int.from_bytes(lo + hi, "little")
        pa = self.translate(la, acc)
        if intent == ACC_READ and (pa >> 12) < self.ram_pages:
            (self.tlb_ur if user else self.tlb_sr)[la >> 12] = pa & ~0xFFF
        return self.memory.read(pa, size)

    def lwrite_slow(self, la: int, size: int, value: int, user: bool) -> None:
        """TLB miss, page-crossing, code-page or non-RAM store."""
        acc = ACC_WRITE | (PF_U if user else 0)
        if (la & 0xFFF) + size > 0x1000:
            split = 0x1000 - (la & 0xFFF)
            pa1 = self.translate(la, acc)
            pa2 = self.translate((la + split) & M32, acc)
            data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            self._store_phys(pa1, data[:split])
            self._store_phys(pa2, data[split:])
            return
        pa = self.translate(la, acc)
        ppage = pa >> 12
        if ppage in self.memory.code_pages:
            self._check_code_write(pa, size)
        elif ppage < self.ram_pages:
            (self.tlb_uw if user else self.tlb_sw)[la >> 12] = pa & ~0xFFF
        self.memory.write(pa, size, value)

    def _store_phys(self, pa: int, data: bytes) -> None:
        if (pa >> 12) in self.memory.code_pages:
            self._check_code_write(pa, len(data))
        self.memory.write_bytes(pa, data)

    def _check_code_write(self, pa: int, size: int) -> None:
        """A store into a page holding translated code (SDM Vol.3A 11.6).

        If it hits bytes of the block being executed, stop before the store so
        the instruction can restart outside the stale block; otherwise just drop
        the overlapping blocks (memory.write does that through on_code_write).
        """
        blk = self.cur_block
        if blk is not None and blk.overlaps(pa, size):
            raise CodeModified()
        self.blocks.invalidate_range(pa, size)

    # ------------------------------------------------------------------ translation

    def translate(self, la: int, acc: int) -> int:
        """Linear to (host-)physical address for an access, or raise #PF / an EPT exit."""
        if self.pg:
            from .paging import walk

            return walk(self, la, acc)
        pa = la & self.a20_mask
        if self.ept is not None:
            return self.ept.translate(pa, acc, la)
        return pa

    def fetch_translate(self, la: int) -> int:
        """Physical address of an instruction fetch at linear ``la`` (fills the fetch TLB)."""
        user = self.cpl == 3
        pa = self.translate(la, ACC_FETCH | (PF_U if user else 0))
        (self.tlb_ux if user else self.tlb_sx)[la >> 12] = pa & ~0xFFF
        return pa

    def tlb_flush(self, all_entries: bool = False) -> None:
        """Flush the TLB (SDM Vol.3A 4.10.4): non-global entries, or all of them."""
        tlbs = (self.tlb_sr, self.tlb_sw, self.tlb_sx, self.tlb_ur, self.tlb_uw, self.tlb_ux)
        if all_entries or not self.tlb_global:
            for t in tlbs:
                t.clear()
            self.tlb_global.clear()
            self.tlb_large.clear()
            return
        keep = self.tlb_global
        for t in tlbs:
            for k in [k for k in t if k not in keep]:
                del t[k]
        # tlb_large may now name large pages without entries: INVLPG then drops nothing extra

    def tlb_flush_page(self, la: int) -> None:
        """INVLPG: drop every entry for the page of ``la``, global or not (SDM Vol.3A 4.10.4.1).

        For an address inside a 2/4 MiB page that is the whole large page: the
        processor caches it as one translation, this TLB as many 4 KiB entries.
        """
        page = (la & M32) >> 12
        span = self.tlb_large.get(page >> 9)
        if span is None:
            pages: range | tuple[int] = (page,)
        else:
            pages = range(span[0], span[0] + span[1])
            for region in range(span[0] >> 9, (span[0] + span[1]) >> 9):
                self.tlb_large.pop(region, None)
        for t in (self.tlb_sr, self.tlb_sw, self.tlb_sx, self.tlb_ur, self.tlb_uw, self.tlb_ux):
            for p in pages:
                t.pop(p, None)
        for p in pages:
            self.tlb_global.discard(p)

    def tlb_drop_writes(self) -> None:
        """Forget all write entries (a page just became a code page; its stores must take the slow path)."""
        self.tlb_sw.clear()
        self.tlb_uw.clear()

    # ------------------------------------------------------------------ stack

    def push(self, value: int, size: int) -> None:
        """Push ``size`` bytes (SDM Vol.2 PUSH): the store may fault; ESP changes only after it succeeded."""
        esp = self.regs[ESP]
        if self.ss32:
            new = (esp - size) & M32
            self.wr(SS, new, size, value)
            self.regs[ESP] = new
        else:
            sp = (esp - size) & 0xFFFF
            self.wr(SS, sp, size, value)
            self.regs[ESP] = (esp & 0xFFFF0000) | sp

    def pop(self, size: int) -> int:
        """Pop ``size`` bytes.  The caller commits ESP with :meth:`pop_commit` after its own checks."""
        esp = self.regs[ESP]
        if self.ss32:
            value = self.rd(SS, esp, size)
            self.regs[ESP] = (esp + size) & M32
        else:
            value = self.rd(SS, esp & 0xFFFF, size)
            self.regs[ESP] = (esp & 0xFFFF0000) | ((esp + size) & 0xFFFF)
        return value

    def peek(self, offset: int, size: int) -> int:
        """Read the stack at ESP+offset without popping (for instructions that check before committing)."""
        esp = self.regs[ESP]
        if self.ss32:
            return self.rd(SS, (esp + offset) & M32, size)
        return self.rd(SS, (esp + offset) & 0xFFFF, size)

    def adjust_sp(self, delta: int) -> None:
        esp = self.regs[ESP]
        if self.ss32:
            self.regs[ESP] = (esp + delta) & M32
        else:
            self.regs[ESP] = (esp & 0xFFFF0000) | ((esp + delta) & 0xFFFF)

    # ------------------------------------------------------------------ misc

    def load_real_segment(self, sreg: int, selector: int) -> None:
        """A segment load in real mode: base = selector << 4, the rest of the cache kept
        (SDM Vol.3A 21.1.1)."""
        seg = self.segs[sreg]
        selector &= 0xFFFF
        seg.selector = selector
        seg.base = selector << 4
        if seg.ar & AR_UNUSABLE or not seg.ar & AR_P:
            # a null selector loaded in protected mode left the register unusable; a real-mode
            # load makes it a usable 64 KiB read/write segment again (as Bochs load_seg_reg does)
            seg.limit, seg.ar = 0xFFFF, AR_REAL_DATA
        else:
            # Real mode performs no type checks (SDM Vol.3A 21.1): a loaded segment, CS included,
            # is a present read/write data segment at DPL 0 -- the reset state of CS in Table 10-1
            # ("Present, R/W, Accessed"), so `mov [cs:x], ax` works as on hardware.  Limit, D/B and
            # G stay as they were ("unreal mode").
            seg.ar = (seg.ar & 0xF000) | AR_REAL_DATA
        seg.refresh()

    def seg_base(self, sreg: int) -> int:
        return self.segs[sreg].base

    def state_dict(self) -> dict:
        """A JSON-friendly snapshot of the architectural state (for --json, traces and tests)."""
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        d: dict = {n: v for n, v in zip(names, self.regs)}
        d["eip"] = self.eip
        d["eflags"] = self.get_eflags()
        for i, n in enumerate(("es", "cs", "ss", "ds", "fs", "gs")):
            s = self.segs[i]
            d[n] = {"selector": s.selector, "base": s.base, "limit": s.limit, "ar": s.ar}
        d.update(cr0=self.cr0, cr2=self.cr2, cr3=self.cr3, cr4=self.cr4, efer=self.efer, cpl=self.cpl,
                 gdtr=(self.gdtr_base, self.gdtr_limit), idtr=(self.idtr_base, self.idtr_limit))
        return d


__all__ = ["CPU", "ACC_READ", "ACC_WRITE", "ACC_FETCH", "PF_P", "PF_W", "PF_U", "PF_RSVD", "PF_I",
           "CR4_PAE", "FS", "GS"]
