"""String instructions (SDM Vol.2: MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS; REP/REPE/REPNE).

Addressing (SDM Vol.1 7.3.9): the source is seg:(E)SI, where seg is DS unless
a segment override names another; the destination is always ES:(E)DI.  The
address size (16: SI/DI/CX, 32: ESI/EDI/ECX) comes from the decoded operand
kinds; 16-bit offsets wrap at 64 KiB.  EFLAGS.DF selects increment or
decrement.

Repeated forms (SDM Vol.2 REP/REPE/REPZ/REPNE/REPNZ) check the count before
each iteration (a count of 0 does nothing), and update (E)CX, (E)SI and (E)DI
after every completed element, so a fault in element k is reported with the
state of k completed iterations and the EIP of the instruction itself.  They
are interruptible (SDM Vol.2 REP: "a repeating string operation can be
suspended by an exception or interrupt"): after ``CHUNK`` elements, or when
the run loop has an event pending, the handler points EIP back at the
instruction and returns, and the next execution continues where it stopped.
Every repeated form therefore ends its block.

Speed: runs of MOVS/STOS elements that lie in one RAM page on each side, with
TLB entries that prove no fault, no MMIO and no translated code is involved,
are done as one slice operation on the RAM bytearray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iced_x86 import Code, Instruction, Mnemonic, OpKind

from .. import flags as fl
from ..state import EAX, ECX, EDI, EDX, ES, ESI
from . import Ctx, Handler, ends_block, handles
from .io import check_io_permission, io_access
from .operands import mem_segment

if TYPE_CHECKING:
    from ..core import CPU

M32 = 0xFFFFFFFF
MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
PAGE_SIZE = 0x1000
PAGE_MASK = PAGE_SIZE - 1
#: elements a repeated instruction executes before it gives the run loop a chance to stop it
CHUNK = 4096
#: a slice operation is worth its set-up only from this many elements on
MIN_BULK = 2

ADDR16_KINDS = frozenset({OpKind.MEMORY_SEG_SI, OpKind.MEMORY_SEG_DI, OpKind.MEMORY_ESDI})
ADDR32_KINDS = frozenset({OpKind.MEMORY_SEG_ESI, OpKind.MEMORY_SEG_EDI, OpKind.MEMORY_ESEDI})

#: the string-instruction codes (MOVSD and CMPSD are also SSE2 mnemonics, which this model lacks)
_STRING_CODES = {
    Code.MOVSB_M8_M8: ("movs", 1), Code.MOVSW_M16_M16: ("movs", 2), Code.MOVSD_M32_M32: ("movs", 4),
    Code.CMPSB_M8_M8: ("cmps", 1), Code.CMPSW_M16_M16: ("cmps", 2), Code.CMPSD_M32_M32: ("cmps", 4),
    Code.SCASB_AL_M8: ("scas", 1), Code.SCASW_AX_M16: ("scas", 2), Code.SCASD_EAX_M32: ("scas", 4),
    Code.LODSB_AL_M8: ("lods", 1), Code.LODSW_AX_M16: ("lods", 2), Code.LODSD_EAX_M32: ("lods", 4),
    Code.STOSB_M8_AL: ("stos", 1), Code.STOSW_M16_AX: ("stos", 2), Code.STOSD_M32_EAX: ("stos", 4),
    Code.INSB_M8_DX: ("ins", 1), Code.INSW_M16_DX: ("ins", 2), Code.INSD_M32_DX: ("ins", 4),
    Code.OUTSB_DX_M8: ("outs", 1), Code.OUTSW_DX_M16: ("outs", 2), Code.OUTSD_DX_M32: ("outs", 4),
}

#: one element: (cpu, regs, step) -> True if a REPE/REPNE condition ends the repetition
Element = Callable[["CPU", list[int], int], bool]
#: a run of elements done at once: (cpu, regs, step, count) -> elements done (0: none possible)
Bulk = Callable[["CPU", list[int], int, int], int]


def address_mask(ins: Instruction) -> int:
    """0xFFFF for 16-bit addressing (SI, DI, CX), 0xFFFFFFFF for 32-bit (ESI, EDI, ECX)."""
    for i in range(ins.op_count):
        kind = ins.op_kind(i)
        if kind in ADDR16_KINDS:
            return 0xFFFF
        if kind in ADDR32_KINDS:
            return M32
    raise NotImplementedError(f"no string operand in {ins}")


# ---------------------------------------------------------------------- elements


def _advance(amask: int, *regs: int) -> Callable[[list[int], int], None]:
    """Add ``step`` to the index registers named, wrapping within the address size."""
    keep = M32 & ~amask
    if regs == (ESI,):
        return lambda r, step: r.__setitem__(ESI, (r[ESI] & keep) | ((r[ESI] + step) & amask))
    if regs == (EDI,):
        return lambda r, step: r.__setitem__(EDI, (r[EDI] & keep) | ((r[EDI] + step) & amask))

    def both(r: list[int], step: int) -> None:
        r[ESI] = (r[ESI] & keep) | ((r[ESI] + step) & amask)
        r[EDI] = (r[EDI] & keep) | ((r[EDI] + step) & amask)

    return both


def _movs(size: int, amask: int, sreg: int) -> Element:
    """MOVS: ES:[(E)DI] := seg:[(E)SI] (SDM Vol.2 MOVS/MOVSB/MOVSW/MOVSD)."""
    adv = _advance(amask, ESI, EDI)

    def elem(c: CPU, r: list[int], step: int) -> bool:
        c.wr(ES, r[EDI] & amask, size, c.rd(sreg, r[ESI] & amask, size))
        adv(r, step)
        return False

    return elem


def _stos(size: int, amask: int) -> Element:
    """STOS: ES:[(E)DI] := AL/AX/EAX (SDM Vol.2 STOS/STOSB/STOSW/STOSD)."""
    adv = _advance(amask, EDI)
    mask = MASK[size]

    def elem(c: CPU, r: list[int], step: int) -> bool:
        c.wr(ES, r[EDI] & amask, size, r[EAX] & mask)
        adv(r, step)
        return False

    return elem


def _lods(size: int, amask: int, sreg: int) -> Element:
    """LODS: AL/AX/EAX := seg:[(E)SI] (SDM Vol.2 LODS/LODSB/LODSW/LODSD)."""
    adv = _advance(amask, ESI)
    keep = M32 & ~MASK[size]

    def elem(c: CPU, r: list[int], step: int) -> bool:
        v = c.rd(sreg, r[ESI] & amask, size)
        r[EAX] = (r[EAX] & keep) | v
        adv(r, step)
        return False

    return elem


def _compare_end(repe: bool, repne: bool) -> Callable[[int, int], bool]:
    """The REPE/REPNE termination test on the two compared values (SDM Vol.2 REP, Table 4-14)."""
    if repe:
        return lambda a, b: a != b  # REPE: stop when ZF = 0
    if repne:
        return lambda a, b: a == b  # REPNE: stop when ZF = 1
    return lambda a, b: False


def _cmps(size: int, amask: int, sreg: int, repe: bool, repne: bool) -> Element:
    """CMPS: flags of seg:[(E)SI] - ES:[(E)DI], as CMP (SDM Vol.2 CMPS/CMPSB/CMPSW/CMPSD)."""
    adv = _advance(amask, ESI, EDI)
    mask = MASK[size]
    cc = fl.op(fl.K_SUB, size)
    done = _compare_end(repe, repne)

    def elem(c: CPU, r: list[int], step: int) -> bool:
        # the destination ES:[EDI] is read first: when both operands fault, the host CPU reports
        # the ES:[EDI] fault (found by the differential test; QEMU's gen_cmps loads it first too)
        b = c.rd(ES, r[EDI] & amask, size)
        a = c.rd(sreg, r[ESI] & amask, size)
        adv(r, step)
        c.cc_op = cc
        c.cc_a = a
        c.cc_b = b
        c.cc_res = (a - b) & mask
        return done(a, b)

    return elem


def _scas(size: int, amask: int, repe: bool, repne: bool) -> Element:
    """SCAS: flags of AL/AX/EAX - ES:[(E)DI], as CMP (SDM Vol.2 SCAS/SCASB/SCASW/SCASD)."""
    adv = _advance(amask, EDI)
    mask = MASK[size]
    cc = fl.op(fl.K_SUB, size)
    done = _compare_end(repe, repne)

    def elem(c: CPU, r: list[int], step: int) -> bool:
        b = c.rd(ES, r[EDI] & amask, size)
        a = r[EAX] & mask
        adv(r, step)
        c.cc_op = cc
        c.cc_a = a
        c.cc_b = b
        c.cc_res = (a - b) & mask
        return done(a, b)

    return elem


def _ins(size: int, amask: int, rep: bool) -> Element:
    """INS: ES:[(E)DI] := port DX (SDM Vol.2 INS/INSB/INSW/INSD).

    Order: the I/O permission check (#GP), then a write check of the destination (segment and
    page), then the port read through ``io_access`` (which repeats the permission check, then
    takes a VM exit if the VMM wants one, then reads the bus), then the store -- so a fault on the
    destination never consumes data from the device.
    """
    from .datamove import probe_write

    adv = _advance(amask, EDI)
    rep_info = int(rep)

    def elem(c: CPU, r: list[int], step: int) -> bool:
        port = r[EDX] & 0xFFFF
        di = r[EDI] & amask
        check_io_permission(c, port, size)
        probe_write(c, ES, di, size)
        v = io_access(c, port, size, True, imm=0, string=1, rep=rep_info)
        c.wr(ES, di, size, v & MASK[size])
        adv(r, step)
        return False

    return elem


def _outs(size: int, amask: int, sreg: int, rep: bool) -> Element:
    """OUTS: port DX := seg:[(E)SI] (SDM Vol.2 OUTS/OUTSB/OUTSW/OUTSD): the permission check (#GP),
    the memory read, then ``io_access`` (permission, VM exit, bus)."""
    adv = _advance(amask, ESI)
    rep_info = int(rep)

    def elem(c: CPU, r: list[int], step: int) -> bool:
        port = r[EDX] & 0xFFFF
        check_io_permission(c, port, size)
        v = c.rd(sreg, r[ESI] & amask, size)
        io_access(c, port, size, False, v, imm=0, string=1, rep=rep_info)
        adv(r, step)
        return False

    return elem


# ---------------------------------------------------------------------- bulk runs in RAM


def _span(c: CPU, sreg: int, off: int, size: int, down: bool, amask: int, limit: int,
          write: bool) -> tuple[int, int]:
    """How many of the next ``limit`` elements from ``sreg:off`` can be accessed without any check
    failing, and the RAM offset of the first one: (0, 0) when the first one needs the slow path.

    They must lie in the segment limits, within one linear page that has a TLB entry for the
    access (which proves: allowed, present, RAM, not holding translated code), and must not wrap
    around the address size.
    """
    s = c.segs[sreg]
    if not (s.writable if write else s.readable) or off < s.lo or off + size - 1 > s.hi:
        return 0, 0
    la = (s.base + off) & M32
    po = la & PAGE_MASK
    if po + size > PAGE_SIZE:
        return 0, 0
    p = (c.tlb_w if write else c.tlb_r).get(la >> 12)
    if p is None:
        return 0, 0
    if down:
        n = min(limit, po // size + 1, off // size + 1, (off - s.lo) // size + 1)
    else:
        n = min(limit, (PAGE_SIZE - po) // size, (amask - off + 1) // size, (s.hi - off + 1) // size)
    return n, p | po


def _bulk_movs(size: int, amask: int, sreg: int) -> Bulk:
    """Copy a run of MOVS elements with one slice assignment.

    Overlapping ranges keep the element-by-element result: a slice assignment copies like
    memmove, which equals the element order when the destination trails the source in the
    direction of travel; when it leads by d >= size bytes, every element reads bytes an earlier
    element wrote, so the result repeats the first d source bytes (the "fill by MOVSB" idiom).
    Other overlaps return 0 and run element by element.
    """
    keep = M32 & ~amask

    def bulk(c: CPU, r: list[int], step: int, count: int) -> int:
        down = step < 0
        si = r[ESI] & amask
        di = r[EDI] & amask
        ns, ps = _span(c, sreg, si, size, down, amask, count, False)
        if ns < MIN_BULK:
            return 0
        n, pd = _span(c, ES, di, size, down, amask, ns, True)
        if n < MIN_BULK:
            return 0
        nbytes = n * size
        if down:
            ps -= nbytes - size
            pd -= nbytes - size
        ram = c.ram
        d = pd - ps
        if d == 0 or abs(d) >= nbytes or (d < 0) != down:
            ram[pd:pd + nbytes] = ram[ps:ps + nbytes]
        elif not down and d >= size:
            pattern = bytes(ram[ps:ps + d])
            ram[pd:pd + nbytes] = (pattern * (nbytes // d + 1))[:nbytes]
        else:
            return 0
        delta = n * step
        r[ESI] = (r[ESI] & keep) | ((si + delta) & amask)
        r[EDI] = (r[EDI] & keep) | ((di + delta) & amask)
        return n

    return bulk


def _bulk_stos(size: int, amask: int) -> Bulk:
    """Store a run of STOS elements with one slice assignment."""
    keep = M32 & ~amask
    mask = MASK[size]

    def bulk(c: CPU, r: list[int], step: int, count: int) -> int:
        down = step < 0
        di = r[EDI] & amask
        n, pd = _span(c, ES, di, size, down, amask, count, True)
        if n < MIN_BULK:
            return 0
        nbytes = n * size
        if down:
            pd -= nbytes - size
        c.ram[pd:pd + nbytes] = (r[EAX] & mask).to_bytes(size, "little") * n
        r[EDI] = (r[EDI] & keep) | ((di + n * step) & amask)
        return n

    return bulk


# ---------------------------------------------------------------------- the instruction


def _once(elem: Element, size: int) -> Handler:
    """The unrepeated form: one element."""

    def h(c: CPU) -> None:
        elem(c, c.regs, -size if c.eflags_sys & fl.DF else size)

    return h


def _repeated(elem: Element, bulk: Bulk | None, size: int, amask: int, ilen: int, ip_mask: int) -> Handler:
    """The REP/REPE/REPNE form: count in (E)CX, checked before each element (SDM Vol.2 REP)."""
    keep = M32 & ~amask

    def h(c: CPU) -> None:
        r = c.regs
        count = r[ECX] & amask
        if count == 0:
            return
        step = -size if c.eflags_sys & fl.DF else size
        budget = CHUNK
        while True:
            n = bulk(c, r, step, count) if bulk is not None else 0
            if n:
                count -= n
                budget -= n
                r[ECX] = (r[ECX] & keep) | count
                if count == 0:
                    return
            else:
                stop = elem(c, r, step)
                count -= 1
                budget -= 1
                r[ECX] = (r[ECX] & keep) | count
                if count == 0 or stop:
                    return
            if budget <= 0 or c.event_pending:
                # suspended between iterations: the engine set EIP to the next instruction; point it back
                c.eip = (c.eip - ilen) & ip_mask
                return

    return ends_block(h)


@handles("MOVSB", "MOVSW", "MOVSD", "CMPSB", "CMPSW", "CMPSD", "SCASB", "SCASW", "SCASD", "LODSB", "LODSW",
         "LODSD", "STOSB", "STOSW", "STOSD", "INSB", "INSW", "INSD", "OUTSB", "OUTSW", "OUTSD")
def string_op(ins: Instruction, ctx: Ctx) -> Handler:
    """A string instruction with or without a repeat prefix."""
    if ins.code not in _STRING_CODES:
        raise NotImplementedError(f"{ins} is not a string instruction")  # SSE2 MOVSD/CMPSD: #UD
    kind, size = _STRING_CODES[ins.code]
    amask = address_mask(ins)
    sreg = mem_segment(ins)  # the source segment: DS or the override (ES:DI takes no override)
    repe = ins.has_repe_prefix
    repne = ins.has_repne_prefix
    rep = repe or repne  # F2 and F3 both repeat MOVS/LODS/STOS/INS/OUTS
    bulk: Bulk | None = None
    if kind == "movs":
        elem = _movs(size, amask, sreg)
        bulk = _bulk_movs(size, amask, sreg)
    elif kind == "stos":
        elem = _stos(size, amask)
        bulk = _bulk_stos(size, amask)
    elif kind == "lods":
        elem = _lods(size, amask, sreg)
    elif kind == "cmps":
        elem = _cmps(size, amask, sreg, repe, repne)
    elif kind == "scas":
        elem = _scas(size, amask, repe, repne)
    elif kind == "ins":
        elem = _ins(size, amask, rep)
    else:
        elem = _outs(size, amask, sreg, rep)
    if rep:
        return _repeated(elem, bulk, size, amask, ins.len, ctx.ip_mask())
    h = _once(elem, size)
    return ends_block(h) if kind in ("ins", "outs") else h  # a device access may raise an interrupt


_ = Mnemonic  # mnemonics are named in the decorator
