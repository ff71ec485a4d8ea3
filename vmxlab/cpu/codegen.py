"""The hot-block compiler: a block that ran often is turned into one Python function.

Why (reference/emulation.md §3): calling a closure per instruction costs
~50 ns before the instruction does anything; generated source keeps the guest
registers in Python locals, inlines constants and the TLB fast path, and lets a
block that branches to itself loop inside one Python frame -- 3-5x faster.

What stays exact:
* Faults are precise.  Each instruction's code computes into temporaries and
  assigns register locals only after everything that can fault; the
  ``except`` clause maps the traceback's line number back to the instruction
  (no per-instruction bookkeeping at run time), writes the register locals and
  the lazy-flag record valid *before* that instruction back to the CPU, sets
  EIP and the instruction count, and re-raises to the engine.
* Flags stay lazy: the compiler tracks, statically, which instruction last
  wrote the flags and in which locals its operands live.  A Jcc after CMP
  becomes a plain comparison; the record is written to ``cpu.cc_*`` only when
  the block exits (or a fallback handler or a fault needs it).
* Instructions without a template run their ordinary handler (the ``interp``
  engine's closure) with registers and flags synchronised around the call.
* Self-loops run under a budget (the engine's next check point: timer
  deadline or instruction limit), so interrupts are still taken on time.

Templates exist only where the fast path needs them; anything unusual (non-flat
segments for the stack, 16-bit stacks, string instructions, system
instructions) uses the fallback, which is always correct.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iced_x86 import FlowControl, Instruction, Mnemonic, OpKind, Register

from . import flags as fl
from .faults import CpuFault, Vector
from .ops import ENDS_BLOCK
from .ops.operands import GPR, SREG, addr_size, op_size

if TYPE_CHECKING:
    from .blocks import Block
    from .core import CPU

M32 = 0xFFFFFFFF
MASKS = {1: 0xFF, 2: 0xFFFF, 4: M32}
SIGNS = {1: 0x80, 2: 0x8000, 4: 0x80000000}
FAST_SEGS = (0, 2, 3)  # ES, SS, DS are flat when the mode key's flat bit is set


def _carry(op: int, a: int, b: int, res: int) -> int:
    return fl.carry(op, a, b, res)


def _cond(cc: int, op: int, a: int, b: int, res: int) -> bool:
    return fl.CONDITIONS[cc](fl.oszapc(op, a, b, res))


def _limit_fault(target: int) -> None:
    raise CpuFault(Vector.GP, 0, detail=f"branch target {target:#x} beyond CS limit")


GLOBALS = {
    "U8": None,
    "U16": struct.Struct("<H").unpack_from,
    "U32": struct.Struct("<I").unpack_from,
    "P16": struct.Struct("<H").pack_into,
    "P32": struct.Struct("<I").pack_into,
    "_carry": _carry,
    "_cond": _cond,
    "_limit_fault": _limit_fault,
}


class Unsupported(Exception):  # noqa: N818
    pass


@dataclass(frozen=True)
class FlagRec:
    """Where the current lazy-flag record lives.

    ``op`` is an int (statically known cc_op) or a local name; ``a``/``b``/``res``
    are expressions (locals or literals).  For INC/DEC, ``cf`` is the record
    whose carry is preserved.  ``in_cpu`` means the record is in ``cpu.cc_*``.
    """

    op: int | str = 0
    a: str = "0"
    b: str = "0"
    res: str = "0"
    cf: FlagRec | None = None
    in_cpu: bool = False

    @property
    def kind(self) -> int | None:
        return self.op >> 2 if isinstance(self.op, int) else None


CPU_FLAGS = FlagRec(in_cpu=True)


def carry_expr(rec: FlagRec) -> str:
    """A Python expression for CF (0/1) of a record."""
    if rec.in_cpu:
        return "_carry(cpu.cc_op, cpu.cc_a, cpu.cc_b, cpu.cc_res)"
    k = rec.kind
    if k == fl.K_SUB:
        return f"(1 if {rec.a} < {rec.b} else 0)"
    if k == fl.K_ADD:
        return f"(1 if {rec.res} < {rec.a} else 0)"
    if k == fl.K_LOGIC:
        return "0"
    if k in (fl.K_INC, fl.K_DEC):
        return carry_expr(rec.cf) if rec.cf is not None else rec.b
    return f"_carry({rec.op}, {rec.a}, {rec.b}, {rec.res})"


def cond_expr(cc: int, rec: FlagRec) -> str:
    """A Python boolean expression for condition ``cc`` under flag record ``rec``."""
    k = rec.kind
    if rec.in_cpu:
        return f"_cond({cc}, cpu.cc_op, cpu.cc_a, cpu.cc_b, cpu.cc_res)"
    if k is not None and k != fl.K_FLAGS:
        size = (1, 2, 4)[rec.op & 3]
        sign = SIGNS[size]
        a, b, r = rec.a, rec.b, rec.res
        zf = {4: f"{r} == 0", 5: f"{r} != 0", 8: f"{r} & {sign}", 9: f"not {r} & {sign}"}
        if cc in zf:
            return zf[cc]
        if k == fl.K_SUB:
            return {
                2: f"{a} < {b}", 3: f"{a} >= {b}", 6: f"{a} <= {b}", 7: f"{a} > {b}",
                12: f"({a} ^ {sign}) < ({b} ^ {sign})", 13: f"({a} ^ {sign}) >= ({b} ^ {sign})",
                14: f"({a} ^ {sign}) <= ({b} ^ {sign})", 15: f"({a} ^ {sign}) > ({b} ^ {sign})",
            }.get(cc) or f"_cond({cc}, {rec.op}, {a}, {b}, {r})"
        if k == fl.K_LOGIC:
            return {
                0: "False", 1: "True", 2: "False", 3: "True", 6: f"{r} == 0", 7: f"{r} != 0",
                12: f"{r} & {sign} != 0", 13: f"not {r} & {sign}",
                14: f"{r} == 0 or {r} & {sign} != 0", 15: f"{r} != 0 and not {r} & {sign}",
            }.get(cc) or f"_cond({cc}, {rec.op}, {a}, {b}, {r})"
    if k in (fl.K_INC, fl.K_DEC):
        return f"_cond({cc}, {rec.op}, {rec.a}, {carry_expr(rec.cf) if rec.cf else rec.b}, {rec.res})"
    return f"_cond({cc}, {rec.op}, {rec.a}, {rec.b}, {rec.res})"


def store_lines(rec: FlagRec) -> list[str]:
    """Statements writing a record to cpu.cc_* (nothing if it already lives there)."""
    if rec.in_cpu:
        return []
    b = rec.b
    if rec.kind in (fl.K_INC, fl.K_DEC) and rec.cf is not None:
        b = carry_expr(rec.cf)
    return [f"cpu.cc_b = {b}", f"cpu.cc_op = {rec.op}", f"cpu.cc_a = {rec.a}", f"cpu.cc_res = {rec.res}"]


class Compiler:
    """Compiles hot blocks on demand (called by the engine after HOT_THRESHOLD executions)."""

    def __init__(self, cpu: CPU) -> None:
        self.cpu = cpu
        self.compiled = 0
        self.failed = 0

    def compile(self, blk: Block):
        try:
            members = region_members(blk, self.cpu.blocks.blocks)
            if len(members) > 1 or blk.eips[0] in _successors(blk):
                fn = BlockCompiler(blk).build_region(members)
                for m in members:
                    m.regions.append(blk)  # a change to any member's code must drop this function
            else:
                fn = BlockCompiler(blk).build()
        except Unsupported:
            fn = None
        if fn is None:
            self.failed += 1
            blk.hits = -(1 << 30)  # do not try again
        else:
            self.compiled += 1
        blk.fast = fn
        return fn


LOOP_HEAD = FlagRec(op="lo", a="la_", b="lb", res="lr")


class BlockCompiler:
    """Generates the source of one block's function (see the module docstring)."""

    def __init__(self, blk: Block) -> None:
        self.blk = blk
        self.flat = bool(blk.key & 4)
        self.ss32 = bool(blk.key & 2)
        self.code32 = bool(blk.key & 1)
        self.lines: list[tuple[int, str]] = []  # (instruction index, text)
        self.indent = 2
        self.idx = 0
        self.used: set[int] = set()
        self.dirty: set[int] = set()  # register locals newer than cpu.regs
        self.ever_dirty: set[int] = set()
        self.rec = CPU_FLAGS
        self.rec_before: list[FlagRec] = []
        self.consts: dict[str, object] = {}
        self.loop = False
        self.last_sets_eip = False
        self.members: list[Block] = [blk]
        #: global instruction index -> (member, index in member)
        self.gmap: list[tuple[int, int]] = []
        #: instructions run by their ordinary handler: their partial effects are architectural
        self.fallbacks: set[int] = set()
        #: (page local, frame local) of each memory-access site in a region
        self.site_caches: list[tuple[str, str]] = []

    # ---------------------------------------------------------------- emit helpers

    def emit(self, text: str) -> None:
        self.lines.append((self.idx, "    " * self.indent + text))

    def const(self, obj: object) -> str:
        name = f"K{len(self.consts)}"
        self.consts[name] = obj
        return name

    def t(self, name: str) -> str:
        """A temporary local unique to the current instruction."""
        return f"{name}{self.idx}"

    def reg_read(self, reg: int) -> str:
        if reg not in GPR:
            raise Unsupported()
        idx, size, shift = GPR[reg]
        self.used.add(idx)
        if size == 4:
            return f"g{idx}"
        if size == 2:
            return f"(g{idx} & 0xFFFF)"
        return f"((g{idx} >> 8) & 0xFF)" if shift else f"(g{idx} & 0xFF)"

    def reg_write(self, reg: int, value: str) -> None:
        if reg not in GPR:
            raise Unsupported()
        idx, size, shift = GPR[reg]
        self.used.add(idx)
        self.dirty.add(idx)
        self.ever_dirty.add(idx)
        if size == 4:
            self.emit(f"g{idx} = {value}")
        elif size == 2:
            self.emit(f"g{idx} = (g{idx} & 0xFFFF0000) | {value}")
        elif shift:
            self.emit(f"g{idx} = (g{idx} & 0xFFFF00FF) | ({value} << 8)")
        else:
            self.emit(f"g{idx} = (g{idx} & 0xFFFFFF00) | {value}")

    def ea(self, ins: Instruction) -> str:
        mask = 0xFFFF if addr_size(ins) == 2 else M32
        parts = []
        if ins.memory_base != Register.NONE:
            b = GPR[ins.memory_base][0]
            self.used.add(b)
            parts.append(f"g{b}")
        if ins.memory_index != Register.NONE:
            x = GPR[ins.memory_index][0]
            self.used.add(x)
            scale = ins.memory_index_scale
            parts.append(f"g{x}" if scale == 1 else f"g{x} * {scale}")
        disp = ins.memory_displacement & mask
        if disp or not parts:
            parts.append(str(disp))
        if len(parts) == 1 and mask == M32 and parts[0].startswith("g") and "*" not in parts[0]:
            return parts[0]
        return f"(({' + '.join(parts)}) & {mask})"

    def fast_seg(self, ins: Instruction) -> bool:
        return self.flat and SREG[ins.memory_segment] in FAST_SEGS

    def mem_read(self, ins: Instruction, size: int, dst: str, for_write: bool = False) -> str | None:
        """Emit ``dst = load(size)``; with ``for_write`` return the local holding the linear address."""
        if size not in (1, 2, 4):
            raise Unsupported()
        off = self.ea(ins)
        sreg = SREG[ins.memory_segment]
        la = self.t("la")
        if self.fast_seg(ins):
            self.emit(f"{la} = {off}")
            self._read_la(la, size, dst, write_intent=for_write)
            return la
        if for_write:
            self.emit(f"{la} = cpu.linear({sreg}, {off}, {size}, True)")
            self.emit(f"{dst} = cpu.lread({la}, {size})")
            return la
        self.emit(f"{dst} = cpu.rd{size * 8}({sreg}, {off})")
        return None

    def _page(self, la: str, tlb: str) -> str:
        """Emit the TLB lookup for ``la``; return the local holding the frame (None on a miss).

        Inside a region (a loop) each access site keeps the last page it hit in two locals, so the
        common case -- the same page as the previous iteration -- costs a compare instead of a
        dict lookup.  The cache lives only for one call of the block function; no TLB entry can
        disappear while the block runs (flushes end blocks; fallbacks reset the caches)."""
        p = self.t("p")
        if not self.loop:
            self.emit(f"{p} = {tlb}.get({la} >> 12)")
            return p
        pg = self.t("pg")
        self.site_caches.append((pg, p))
        self.emit(f"if {la} >> 12 != {pg}:")
        self.emit(f"    {p} = {tlb}.get({la} >> 12)")
        self.emit(f"    {pg} = -1 if {p} is None else {la} >> 12")
        return p

    def _read_la(self, la: str, size: int, dst: str, write_intent: bool = False) -> None:
        """A load through the TLB.  The load of a read-modify-write probes the write TLB and misses to
        ``lread_rmw``, which translates with write intent (#PF with W = 1, SDM Vol.3A 4.7).  Aligned
        words and dwords use a memoryview of RAM (faster than struct); the rest take the slow path."""
        tlb, slow = ("tlb_w", "cpu.lread_rmw") if write_intent else ("tlb_r", "cpu.lread_slow")
        p = self._page(la, tlb)
        if size == 1:
            self.emit(f"{dst} = ram[{p} | ({la} & 4095)] if {p} is not None else {slow}({la}, 1, user)")
        else:
            self.emit(f"{dst} = ram{size * 8}[({p} | ({la} & 4095)) >> {size >> 1}] if {p} is not None and "
                      f"not {la} & {size - 1} else {slow}({la}, {size}, user)")

    def mem_write(self, ins: Instruction, size: int, value: str, la: str | None = None) -> None:
        if size not in (1, 2, 4):
            raise Unsupported()
        if self.fast_seg(ins):
            if la is None:
                la = self.t("la")
                self.emit(f"{la} = {self.ea(ins)}")
            self._write_la(la, size, value)
        elif la is not None:
            self.emit(f"cpu.lwrite({la}, {size}, {value})")
        else:
            self.emit(f"cpu.wr{size * 8}({SREG[ins.memory_segment]}, {self.ea(ins)}, {value})")

    def _write_la(self, la: str, size: int, value: str) -> None:
        q = self._page(la, "tlb_w")
        if size == 1:
            self.emit(f"if {q} is not None: ram[{q} | ({la} & 4095)] = {value}")
        else:
            self.emit(f"if {q} is not None and not {la} & {size - 1}: "
                      f"ram{size * 8}[({q} | ({la} & 4095)) >> {size >> 1}] = {value}")
        self.emit(f"else: cpu.lwrite_slow({la}, {size}, {value}, user)")

    def read_operand(self, ins: Instruction, i: int, size: int) -> str:
        """Emit code reading operand ``i``; return an expression (a local or literal) for its value."""
        kind = ins.op_kind(i)
        if kind == OpKind.REGISTER:
            return self.reg_read(ins.op_register(i))
        if kind == OpKind.MEMORY:
            dst = self.t(f"m{i}_")
            self.mem_read(ins, size, dst)
            return dst
        if kind in IMMEDIATES:
            return str(ins.immediate(i) & MASKS[size])
        raise Unsupported()

    # ---------------------------------------------------------------- flat 32-bit stack

    def need_stack(self) -> None:
        if not (self.flat and self.ss32):
            raise Unsupported()

    def push(self, value: str, size: int) -> None:
        self.need_stack()
        sp = self.t("sp")
        self.used.add(4)
        self.emit(f"{sp} = (g4 - {size}) & {M32}")
        self._write_la(sp, size, value)
        self.set_r("g4", sp, 4)

    def pop(self, size: int, dst: str) -> None:
        """Load the top of stack into ``dst``; the caller updates ESP after its other checks."""
        self.need_stack()
        self.used.add(4)
        self._read_la("g4", size, dst)

    def set_r(self, local: str, value: str, index: int) -> None:
        self.dirty.add(index)
        self.ever_dirty.add(index)
        self.emit(f"{local} = {value}")

    def branch_to(self, target: str, static: int | None = None) -> None:
        """Set EIP to a branch target, checking the CS limit unless the code segment is flat."""
        if not self.flat:
            self.emit(f"if {target} > cpu.segs[1].hi: _limit_fault({target})")
        self.emit(f"cpu.eip = {target}")
        self.last_sets_eip = True

    # ---------------------------------------------------------------- driving

    def translate(self, ins: Instruction, last: bool) -> bool:
        fn = TEMPLATES.get(ins.mnemonic)
        if fn is None:
            return False
        mark = len(self.lines)
        saved = (set(self.used), set(self.dirty), set(self.ever_dirty), self.rec, self.last_sets_eip)
        try:
            fn(self, ins, last)
            return True
        except Unsupported:
            del self.lines[mark:]
            self.used, self.dirty, self.ever_dirty, self.rec, self.last_sets_eip = saved
            return False

    def fallback(self, i: int, last: bool) -> None:
        """Run the ordinary handler with registers and flags synchronised around it."""
        h = self.const(self.blk.ops[i])
        for r in sorted(self.dirty):
            self.emit(f"regs[{r}] = g{r}")
        self.dirty.clear()
        for line in store_lines(self.rec):
            self.emit(line)
        if last:
            self.emit(f"cpu.eip = {self.blk.end_eip}")
            self.last_sets_eip = True
        self.fallbacks.add(self.idx)
        self.emit(f"{h}(cpu)")
        for pg, _ in self.site_caches:  # the handler may have flushed TLB entries
            self.emit(f"{pg} = -1")
        for r in (range(8) if last else written_gprs(self.blk.instrs[i])):
            self.used.add(r)
            self.emit(f"g{r} = regs[{r}]")
        self.rec = CPU_FLAGS

    def build(self):
        """Compile the block alone (straight-line code)."""
        if not self.generate_straight():
            return None
        return self.assemble_straight()

    def generate_straight(self) -> bool:
        blk = self.blk
        translated = 0
        self.members = [blk]
        for i, ins in enumerate(blk.instrs):
            self.idx = i
            self.gmap.append((0, i))
            self.rec_before.append(self.rec)
            if self.translate(ins, i == blk.n - 1):
                translated += 1
            else:
                self.fallback(i, i == blk.n - 1)
        return translated > 0

    # ---------------------------------------------------------------- regions (loops with branches)

    def build_region(self, members: list[Block]):
        """Compile several blocks of one page into one function that follows the guest's branches
        between them without returning to the engine (registers stay in locals; flags travel in the
        loop-carried locals lo/la_/lb/lr).  Generated twice: a register written in one member is
        newer than cpu.regs when another member's fallback runs."""
        first = BlockCompiler(members[0])
        first.generate_region(members, set())
        again = BlockCompiler(members[0])
        again.generate_region(members, set(first.ever_dirty))
        return again.assemble_region()

    def generate_region(self, members: list[Block], dirty_at_head: set[int]) -> None:
        self.loop = True
        self.members = members
        self.dirty = set(dirty_at_head)
        self.ever_dirty = set(dirty_at_head)
        self.used |= dirty_at_head
        self.indent = 4
        g = 0
        self.member_lines: list[int] = []
        for m, blk in enumerate(members):
            self.blk = blk
            self.member_lines.append(len(self.lines))
            self.rec = LOOP_HEAD
            # control may arrive from any member: every register some member writes may be newer
            # than cpu.regs here
            self.dirty = set(dirty_at_head)
            for i, ins in enumerate(blk.instrs):
                self.idx = g
                self.gmap.append((m, i))
                self.rec_before.append(self.rec)
                if i == blk.n - 1:
                    self.region_tail(ins, i)
                elif not self.translate(ins, False):
                    self.fallback(i, False)
                g += 1
        self.blk = members[0]

    def region_tail(self, ins: Instruction, i: int) -> None:
        """A member's last instruction: compute ``pc``, count, hand the flags on; leave the region when
        the instruction may have changed the mode (anything run by its ordinary handler)."""
        blk = self.blk
        n = blk.n
        fall = blk.end_eip
        kind = ins.op0_kind if ins.op_count else None
        near = kind in (OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32)
        leave = False
        m = ins.mnemonic
        if near and m == Mnemonic.JMP:
            self._pc(str(ins.near_branch_target))
        elif near and ins.condition_code and m != Mnemonic.LOOP and m in LOOPABLE:
            c = self.t("c")
            self.emit(f"{c} = {ins.near_branch_target} if {cond_expr(ins.condition_code - 1, self.rec)} else {fall}")
            self._pc(c)
        elif near and m == Mnemonic.LOOP:
            amask = 0xFFFF if ins.op_code().address_size == 16 else M32
            c = self.t("c")
            self.used.add(1)
            self.emit(f"{c} = (g1 - 1) & {amask}")
            self.set_r("g1", f"(g1 & {M32 & ~amask}) | {c}", 1)
            self.emit(f"pc = {ins.near_branch_target} if {c} != 0 else {fall}")
        elif m in (Mnemonic.CALL, Mnemonic.RET) and self.translate(ins, True):
            self.emit("pc = cpu.eip")
        elif ins.flow_control == FlowControl.NEXT and not getattr(blk.ops[i], "ends_block", False) \
                and ins.mnemonic not in ENDS_BLOCK and self.translate(ins, False):
            self.emit(f"pc = {fall}")
        else:
            self.fallback(i, True)
            self.emit("pc = cpu.eip")
            leave = True
        self.emit(f"n += {n}")
        self.emit(f"lo, la_, lb, lr = {rec_tuple(self.rec)}")
        if leave:
            self.emit("break")

    def _pc(self, target: str) -> None:
        if not self.flat:
            self.emit(f"if {target} > cpu.segs[1].hi: _limit_fault({target})")
        self.emit(f"pc = {target}")

    def _fixer(self, rec: FlagRec):
        return flag_fixer(rec)

    def _prologue(self) -> list[str]:
        out = ["def block(cpu, budget):", "    regs = cpu.regs", "    ram = cpu.ram",
               "    ram16, ram32 = cpu.ram16, cpu.ram32", "    tlb_r = cpu.tlb_r", "    tlb_w = cpu.tlb_w",
               "    user = cpu.cpl == 3"]
        used = sorted(self.used)
        if used:
            out.append("    " + ", ".join(f"g{r}" for r in used) + " = " + ", ".join(f"regs[{r}]" for r in used))
        return out

    def _fault_path(self, out: list[str], count: str) -> None:
        out.append("    except BaseException as e:")
        out.append("        i = LINES.get(e.__traceback__.tb_lineno, 0)")
        # A fallback handler was called with registers and flags already in the CPU, and the
        # progress it made before raising (a REP string's completed iterations) is architectural:
        # only the block's own instructions need their locals written back.
        out.append("        if i not in FALLBACKS:")
        for r in sorted(self.ever_dirty):
            out.append(f"            regs[{r}] = g{r}")
        out.append("            FIXFLAGS[i](cpu, locals())")
        out.append("        cpu.eip = EIPS[i]")
        out.append(f"        cpu.icount += {count}")
        out.append("        raise")

    def _finish(self, out: list[str], lines: dict[int, int]):
        src = "\n".join(out) + "\n"
        g = dict(GLOBALS)
        g.update(self.consts)
        g["LINES"] = lines
        g["EIPS"] = [self.members[m].eips[i] for m, i in self.gmap]
        g["INDEX"] = [i for _, i in self.gmap]
        g["FIXFLAGS"] = [self._fixer(rec) for rec in self.rec_before]
        g["FALLBACKS"] = frozenset(self.fallbacks)
        exec(compile(src, f"<block {self.members[0].pa:#x}>", "exec"), g)  # noqa: S102 - generated from decoded code
        fn = g["block"]
        fn.source = src  # for debugging: print(blk.fast.source)
        return fn

    def assemble_straight(self):
        out = self._prologue()
        out.append("    try:")
        lines: dict[int, int] = {}
        for idx, text in self.lines:
            out.append(text)
            lines[len(out)] = idx
        for r in sorted(self.ever_dirty):
            out.append(f"        regs[{r}] = g{r}")
        for line in store_lines(self.rec):
            out.append("        " + line)
        if not self.last_sets_eip:
            out.append(f"        cpu.eip = {self.blk.end_eip}")
        out.append(f"        return {self.blk.n}")
        self._fault_path(out, "i")
        return self._finish(out, lines)

    def assemble_region(self):
        members = self.members
        out = self._prologue()
        out.append("    n = 0")
        out.append(f"    limit = budget - {max(b.n for b in members)}")
        for pg, p in self.site_caches:
            out.append(f"    {pg} = -1")
            out.append(f"    {p} = None")
        out.append("    lo, la_, lb, lr = cpu.cc_op, cpu.cc_a, cpu.cc_b, cpu.cc_res")
        out.append(f"    pc = {members[0].eips[0]}")
        out.append("    try:")
        out.append("        while True:")
        out.append("            if n > limit and n:")
        out.append("                break")
        lines: dict[int, int] = {}
        starts = set(self.member_lines)
        m = 0
        for k, (idx, text) in enumerate(self.lines):
            if k in starts:
                kw = "if" if m == 0 else "elif"
                out.append(f"            {kw} pc == {members[m].eips[0]}:")
                m += 1
            out.append(text)
            lines[len(out)] = idx
        out.append("            else:")
        out.append("                break")
        out.append("        cpu.eip = pc")
        for r in sorted(self.ever_dirty):
            out.append(f"        regs[{r}] = g{r}")
        out.append("        cpu.cc_op, cpu.cc_a, cpu.cc_b, cpu.cc_res = lo, la_, lb, lr")
        out.append("        return n")
        self._fault_path(out, "n + INDEX[i]")
        return self._finish(out, lines)


def region_members(head: Block, blocks: dict[int, Block], max_members: int = 16, min_hits: int = 4) -> list[Block]:
    """The blocks a hot block's code can branch to and that are worth compiling with it: near jumps and
    fall-throughs within the head's page (so EIP and physical address keep their offset), already
    translated for the same mode and run a few times."""
    page_eip = head.eips[0] & ~0xFFF
    members = [head]
    seen = {head.eips[0]}
    i = 0
    while i < len(members) and len(members) < max_members:
        blk = members[i]
        i += 1
        for target in _successors(blk):
            if target in seen or target & ~0xFFF != page_eip:
                continue
            seen.add(target)
            pa = head.pa + (target - head.eips[0])
            cand = blocks.get(pa << 3 | (head.key & 7))  # Block.key = pa << 3 | mode key
            if cand is None or not cand.valid or cand.eips[0] != target or cand.page2_la is not None \
                    or cand.hits < min_hits:
                continue
            members.append(cand)
    return members


def _successors(blk: Block) -> list[int]:
    ins = blk.instrs[-1]
    near = ins.op_count and ins.op0_kind in (OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32)
    m = ins.mnemonic
    if near and m == Mnemonic.JMP:
        return [ins.near_branch_target]
    if near and (m in LOOPABLE or m == Mnemonic.LOOP):
        return [ins.near_branch_target, blk.end_eip]
    if near and m == Mnemonic.CALL:
        return [ins.near_branch_target]
    if ins.flow_control == FlowControl.NEXT:
        return [blk.end_eip]
    return []




def rec_tuple(rec: FlagRec) -> str:
    if rec.in_cpu:
        return "cpu.cc_op, cpu.cc_a, cpu.cc_b, cpu.cc_res"
    b = carry_expr(rec.cf) if rec.kind in (fl.K_INC, fl.K_DEC) and rec.cf is not None else rec.b
    return f"{rec.op}, {rec.a}, {b}, {rec.res}"


def flag_fixer(rec: FlagRec):
    """For the fault path: a function storing the record valid before an instruction into cpu.cc_*,
    reading the block's locals from the dict ``L``."""
    if rec.in_cpu:
        return _no_fix
    src = f"def fix(cpu, L):\n    cpu.cc_op, cpu.cc_a, cpu.cc_b, cpu.cc_res = {_in_dict(rec_tuple(rec))}\n"
    g = {"_carry": _carry}
    exec(src, g)  # noqa: S102
    return g["fix"]


def _in_dict(expr: str) -> str:
    import re

    keep = {"cpu", "if", "else", "_carry", "cc_op", "cc_a", "cc_b", "cc_res"}
    return re.sub(r"\b([A-Za-z_][A-Za-z_0-9]*)\b",
                  lambda m: m.group(1) if m.group(1) in keep or m.group(1).isdigit() else f"L['{m.group(1)}']",
                  expr)


def _no_fix(cpu: CPU, L: dict) -> None:
    return None


# ---------------------------------------------------------------------- templates

IMMEDIATES = frozenset({OpKind.IMMEDIATE8, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32, OpKind.IMMEDIATE8TO16,
                        OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE8_2ND})
TEMPLATES: dict[int, object] = {}


def template(*names: str):
    def deco(fn):
        for n in names:
            TEMPLATES[getattr(Mnemonic, n)] = fn
        return fn

    return deco


def _gpr_or_mem(ins: Instruction, i: int) -> bool:
    k = ins.op_kind(i)
    return k == OpKind.MEMORY or (k == OpKind.REGISTER and ins.op_register(i) in GPR)


@template("NOP")
def t_nop(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    return None


@template("MOV")
def t_mov(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    if not (_gpr_or_mem(ins, 0) and (_gpr_or_mem(ins, 1) or ins.op1_kind in IMMEDIATES)):
        raise Unsupported()
    size = op_size(ins, 0)
    value = bc.read_operand(ins, 1, size)
    if ins.op0_kind == OpKind.REGISTER:
        bc.reg_write(ins.op_register(0), value)
    else:
        bc.mem_write(ins, size, value)


@template("MOVZX", "MOVSX")
def t_movx(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    dsize, ssize = op_size(ins, 0), op_size(ins, 1)
    v = bc.read_operand(ins, 1, ssize)
    if ins.mnemonic == Mnemonic.MOVSX:
        sign = SIGNS[ssize]
        ext = MASKS[dsize] & ~MASKS[ssize]
        x = bc.t("x")
        bc.emit(f"{x} = {v}")
        v = f"({x} | {ext} if {x} & {sign} else {x})"
    bc.reg_write(ins.op_register(0), v)


@template("LEA")
def t_lea(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    if ins.op1_kind != OpKind.MEMORY:
        raise Unsupported()
    bc.reg_write(ins.op_register(0), f"({bc.ea(ins)} & {MASKS[op_size(ins, 0)]})")


_ALU = {
    Mnemonic.ADD: ("+", fl.K_ADD, True), Mnemonic.SUB: ("-", fl.K_SUB, True), Mnemonic.CMP: ("-", fl.K_SUB, False),
    Mnemonic.AND: ("&", fl.K_LOGIC, True), Mnemonic.OR: ("|", fl.K_LOGIC, True),
    Mnemonic.XOR: ("^", fl.K_LOGIC, True), Mnemonic.TEST: ("&", fl.K_LOGIC, False),
}


@template("ADD", "SUB", "CMP", "AND", "OR", "XOR", "TEST")
def t_alu(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    """dest OP src with a lazy flag record.  The record's locals (a, b, r) are assigned only after
    everything that can fault, so a fault -- or a self-modifying store -- never leaves a record
    describing a half-executed instruction (the fault path writes the previous record back)."""
    sym, kind, writes = _ALU[ins.mnemonic]
    if not _gpr_or_mem(ins, 0):
        raise Unsupported()
    size = op_size(ins, 0)
    mask = MASKS[size]
    a, b, r = bc.t("a"), bc.t("b"), bc.t("r")
    la = None
    if ins.op0_kind == OpKind.MEMORY:
        av = bc.t("ma")
        la = bc.mem_read(ins, size, av, for_write=writes)
    else:
        av = bc.reg_read(ins.op_register(0))
    bv = bc.read_operand(ins, 1, size)
    res = f"{av} {sym} {bv}" if kind == fl.K_LOGIC else f"({av} {sym} {bv}) & {mask}"
    if writes and ins.op0_kind == OpKind.MEMORY:
        rv = bc.t("mr")
        bc.emit(f"{rv} = {res}")
        bc.mem_write(ins, size, rv, la)
        bc.emit(f"{a}, {b}, {r} = {av}, {bv}, {rv}")
    else:
        bc.emit(f"{a} = {av}")
        bc.emit(f"{b} = {bv}")
        bc.emit(f"{r} = {a} {sym} {b}" if kind == fl.K_LOGIC else f"{r} = ({a} {sym} {b}) & {mask}")
        if writes:
            bc.reg_write(ins.op_register(0), r)
    bc.rec = FlagRec(op=fl.op(kind, size), a=a, b=b, res=r)


def _unary_rmw(bc: BlockCompiler, ins: Instruction, expr: str) -> tuple[str, str]:
    """Load the operand, compute ``expr`` (with {a} for the old value), store it; return (a, r) locals,
    assigned after the store so a fault leaves no half-done record."""
    size = op_size(ins, 0)
    a, r = bc.t("a"), bc.t("r")
    if ins.op0_kind == OpKind.MEMORY:
        av, rv = bc.t("ma"), bc.t("mr")
        la = bc.mem_read(ins, size, av, for_write=True)
        bc.emit(f"{rv} = {expr.format(a=av)} & {MASKS[size]}")
        bc.mem_write(ins, size, rv, la)
        bc.emit(f"{a}, {r} = {av}, {rv}")
    else:
        bc.emit(f"{a} = {bc.reg_read(ins.op_register(0))}")
        bc.emit(f"{r} = {expr.format(a=a)} & {MASKS[size]}")
        bc.reg_write(ins.op_register(0), r)
    return a, r


@template("INC", "DEC")
def t_incdec(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    inc = ins.mnemonic == Mnemonic.INC
    a, r = _unary_rmw(bc, ins, "({a} + 1)" if inc else "({a} - 1)")
    prev = bc.rec
    cf_src = prev.cf if prev.kind in (fl.K_INC, fl.K_DEC) and prev.cf is not None else prev
    bc.rec = FlagRec(op=fl.op(fl.K_INC if inc else fl.K_DEC, op_size(ins, 0)), a=a, b="0", res=r, cf=cf_src)


@template("NEG", "NOT")
def t_negnot(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    neg = ins.mnemonic == Mnemonic.NEG
    a, r = _unary_rmw(bc, ins, "-{a}" if neg else "~{a}")
    if neg:
        bc.rec = FlagRec(op=fl.op(fl.K_SUB, op_size(ins, 0)), a="0", b=a, res=r)


@template("XCHG")
def t_xchg(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    if ins.op0_kind != OpKind.REGISTER or ins.op1_kind != OpKind.REGISTER:
        raise Unsupported()
    x, y = bc.t("x"), bc.t("y")
    bc.emit(f"{x} = {bc.reg_read(ins.op_register(0))}")
    bc.emit(f"{y} = {bc.reg_read(ins.op_register(1))}")
    bc.reg_write(ins.op_register(0), y)
    bc.reg_write(ins.op_register(1), x)


def _opsize(ins: Instruction, bc: BlockCompiler) -> int:
    bits = ins.op_code().operand_size
    return bits // 8 if bits else (4 if bc.code32 else 2)


@template("PUSH")
def t_push(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    size = _opsize(ins, bc)
    if size != 4 or not (_gpr_or_mem(ins, 0) or ins.op0_kind in IMMEDIATES):
        raise Unsupported()
    v = bc.t("v")
    bc.emit(f"{v} = {bc.read_operand(ins, 0, 4)}")
    bc.push(v, 4)


@template("POP")
def t_pop(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    size = _opsize(ins, bc)
    if size != 4 or ins.op0_kind != OpKind.REGISTER or ins.op_register(0) not in GPR:
        raise Unsupported()
    v = bc.t("v")
    bc.pop(4, v)
    bc.set_r("g4", f"(g4 + 4) & {M32}", 4)
    bc.reg_write(ins.op_register(0), v)


@template("JMP")
def t_jmp(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    if ins.op0_kind not in (OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32):
        raise Unsupported()
    bc.branch_to(str(ins.near_branch_target))


@template("JO", "JNO", "JB", "JAE", "JE", "JNE", "JBE", "JA", "JS", "JNS", "JP", "JNP", "JL", "JGE", "JLE", "JG")
def t_jcc(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    target = ins.near_branch_target
    c = bc.t("c")
    bc.emit(f"{c} = {target} if {cond_expr(ins.condition_code - 1, bc.rec)} else {bc.blk.end_eip}")
    bc.branch_to(c)


@template("CALL")
def t_call(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    if ins.op0_kind not in (OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32) or _opsize(ins, bc) != 4:
        raise Unsupported()
    target = ins.near_branch_target
    if not bc.flat:
        bc.emit(f"if {target} > cpu.segs[1].hi: _limit_fault({target})")
    bc.push(str(ins.next_ip & M32), 4)
    bc.emit(f"cpu.eip = {target}")
    bc.last_sets_eip = True


@template("RET")
def t_ret(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    if _opsize(ins, bc) != 4:
        raise Unsupported()
    extra = ins.immediate16 if ins.op_count else 0
    v = bc.t("v")
    bc.pop(4, v)
    if not bc.flat:
        bc.emit(f"if {v} > cpu.segs[1].hi: _limit_fault({v})")
    bc.set_r("g4", f"(g4 + {4 + extra}) & {M32}", 4)
    bc.emit(f"cpu.eip = {v}")
    bc.last_sets_eip = True


_INFO = None
_WRITES = None


def written_gprs(ins: Instruction) -> list[int]:
    """The general-purpose registers an instruction in the middle of a block may write (iced's
    register-usage info, implicit operands included), so a fallback call reloads only those.  A
    block's last instruction may transfer control anywhere (a task switch loads every register):
    its fallback reloads all of them."""
    global _INFO, _WRITES
    if _INFO is None:
        from iced_x86 import InstructionInfoFactory, OpAccess

        _INFO = InstructionInfoFactory()
        _WRITES = {OpAccess.WRITE, OpAccess.COND_WRITE, OpAccess.READ_WRITE, OpAccess.READ_COND_WRITE}
    regs = {GPR[u.register][0] for u in _INFO.info(ins).used_registers() if u.access in _WRITES and u.register in GPR}
    return sorted(regs)


@template("SHL", "SAL", "SHR", "SAR", "ROL", "ROR")
def t_shift_imm(bc: BlockCompiler, ins: Instruction, last: bool) -> None:
    """Shift/rotate of a register by a non-zero immediate: the interp engine's own operation function
    (ops/shift.py, where the undefined-flag choices live) called inline, without the register
    synchronisation a fallback needs.  Rotates read the old flags, so the record is stored first."""
    from .ops.shift import _OPS

    if ins.op0_kind != OpKind.REGISTER or ins.op1_kind not in (OpKind.IMMEDIATE8,) and ins.op_count == 2:
        raise Unsupported()
    if ins.op_count != 2 or ins.op1_kind != OpKind.IMMEDIATE8:
        raise Unsupported()
    n = ins.immediate8 & 0x1F
    if n == 0:
        raise Unsupported()
    size = op_size(ins, 0)
    fn = bc.const(_OPS[ins.mnemonic](size, True))
    if ins.mnemonic in (Mnemonic.ROL, Mnemonic.ROR):
        for line in store_lines(bc.rec):
            bc.emit(line)
        bc.rec = CPU_FLAGS
    r, f = bc.t("r"), bc.t("f")
    bc.emit(f"{r}, {f} = {fn}({bc.reg_read(ins.op_register(0))}, {n}, cpu)")
    bc.reg_write(ins.op_register(0), r)
    bc.rec = FlagRec(op=fl.K_FLAGS << 2, a="0", b="0", res=f)


LOOPABLE = {Mnemonic.JMP, Mnemonic.LOOP} | {
    getattr(Mnemonic, n) for n in ("JO", "JNO", "JB", "JAE", "JE", "JNE", "JBE", "JA", "JS", "JNS", "JP",
                                   "JNP", "JL", "JGE", "JLE", "JG")}
