"""Instructions KVM's emulator cannot run, executed in Python so the guest can go on.

Why this exists.  On the PVM hosts here every ring-0 instruction runs in KVM's x86
emulator (arch/x86/kvm/emulate.c), and an instruction it has no entry for ends the run
with KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION, and the instruction
bytes (api.rst 5 "KVM_EXIT_INTERNAL_ERROR"; kvm.md §0 and §2.6 list what a Linux boot hits:
int3, clac/stac, fwait, ldmxcsr/stmxcsr, SSE moves, xrstor, lock cmpxchg16b).  The vCPU is
stopped *before* the instruction (RIP on it, nothing done), so vmxlab can do the
instruction's work itself -- registers through ``kvm_run.s.regs``, XMM/MXCSR through
KVM_GET_FPU/KVM_SET_FPU, memory through the guest's page tables (KVM_TRANSLATE) -- advance
RIP, and resume.  On a host with VMX or SVM none of this is reached.

Each handler is small and cites the SDM Vol.2 page it implements.  Scope: ring-0 use by a
kernel, single vCPU (so LOCK needs no atomicity beyond doing the work between two entries),
no x87/SIMD exception checks (CR0.TS/EM, alignment #GP of MOVDQA/MOVAPS, MXCSR reserved
bits are checked as the SDM says where noted).  Anything else returns False and the run
stops with the instruction named.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import iced_x86 as iced

from . import constants as k
from .exits import decode_one

if TYPE_CHECKING:
    from .vcpu import KvmGuestVcpu

R = iced.Register
M = iced.Mnemonic
OK = iced.OpKind

RFLAGS_AC = 1 << 18  # SDM Vol.1 3.4.3.3
RFLAGS_ZF = 1 << 6
MXCSR_RESERVED = 0xFFFF0000  # bits 31:16 (SDM Vol.1 10.2.3, with MXCSR_MASK 0xFFFF)
# the legacy region of the XSAVE area (SDM Vol.1 Table 10-2 "FXSAVE ... Memory Region Layout") and
# the XSAVE header (SDM Vol.1 13.4.2)
FSW_OFFSET = 2
MXCSR_OFFSET = 24
XMM0_OFFSET = 160
XSTATE_BV = 512

_GPR64 = {R.RAX: "rax", R.RCX: "rcx", R.RDX: "rdx", R.RBX: "rbx", R.RSP: "rsp", R.RBP: "rbp", R.RSI: "rsi",
          R.RDI: "rdi", R.R8: "r8", R.R9: "r9", R.R10: "r10", R.R11: "r11", R.R12: "r12", R.R13: "r13",
          R.R14: "r14", R.R15: "r15"}
_HIGH8 = {R.AH, R.CH, R.DH, R.BH}
_SEG_NAMES = {R.ES: "es", R.CS: "cs", R.SS: "ss", R.DS: "ds", R.FS: "fs", R.GS: "gs"}
_XMM0 = R.XMM0


class _Fault(Exception):
    """The instruction would fault (page not present, ...): leave it to KVM -- stop the run."""


class InstructionFallback:
    """Run one instruction KVM could not emulate (see the module docstring)."""

    def __init__(self, vcpu: KvmGuestVcpu) -> None:
        self.vcpu = vcpu
        #: how many of each mnemonic were run here (reported in the run summary)
        self.counts: Counter[str] = Counter()
        self._fpu: memoryview | None = None
        self._xsave = None

    # ------------------------------------------------------------------ entry

    def emulate(self, code: bytes) -> bool:
        v = self.vcpu
        regs = v.sync.regs
        ins = decode_one(code, v.bitness(), regs.rip)
        if ins is None:
            return False
        handler = HANDLERS.get(ins.mnemonic)
        if handler is None:
            return False
        self._fpu = None
        try:
            done = handler(self, ins)
        except _Fault:
            done = False
        if not done and self._fpu is not None:
            self._fpu.release()
            self._fpu = None
        if not done:
            return False
        if self._fpu is not None:
            self._fpu.release()
            v.cpu.set_xsave(self._xsave)
            self._fpu = None
        self.counts[iced_mnemonic_name(ins)] += 1
        return True

    # ------------------------------------------------------------------ state access

    def next_rip(self, ins: iced.Instruction) -> None:
        self.vcpu.sync.regs.rip = ins.next_ip
        self.vcpu.kvm_run.kvm_dirty_regs |= k.KVM_SYNC_X86_REGS

    def set_rflags(self, value: int) -> None:
        self.vcpu.sync.regs.rflags = value | 2
        self.vcpu.kvm_run.kvm_dirty_regs |= k.KVM_SYNC_X86_REGS

    def gpr(self, reg: int) -> int:
        info = iced.RegisterInfo(reg)
        full = getattr(self.vcpu.sync.regs, _GPR64[info.full_register])
        if reg in _HIGH8:
            return (full >> 8) & 0xFF
        return full & ((1 << (8 * info.size)) - 1)

    def set_gpr(self, reg: int, value: int) -> None:
        """Write a GPR with the SDM's rules: 32-bit writes zero the upper half (Vol.1 3.4.1.1),
        8/16-bit writes keep the rest."""
        info = iced.RegisterInfo(reg)
        name = _GPR64[info.full_register]
        r = self.vcpu.sync.regs
        size = info.size
        if size == 8:
            new = value & 0xFFFFFFFFFFFFFFFF
        elif size == 4:
            new = value & 0xFFFFFFFF
        elif reg in _HIGH8:
            new = (getattr(r, name) & ~0xFF00) | (value & 0xFF) << 8
        else:
            mask = (1 << (8 * size)) - 1
            new = (getattr(r, name) & ~mask) | (value & mask)
        setattr(r, name, new)
        self.vcpu.kvm_run.kvm_dirty_regs |= k.KVM_SYNC_X86_REGS

    def fpu(self) -> memoryview:
        """The vCPU's XSAVE image (KVM_GET_XSAVE; see structs.KvmXsave for why not KVM_GET_FPU),
        fetched once per emulated instruction and written back after it."""
        if self._fpu is None:
            self._xsave = self.vcpu.cpu.get_xsave()
            self._fpu = memoryview(self._xsave).cast("B")
        return self._fpu

    def fpu_word(self, offset: int, size: int) -> int:
        return int.from_bytes(self.fpu()[offset : offset + size], "little")

    def set_fpu_word(self, offset: int, size: int, value: int) -> None:
        f = self.fpu()
        f[offset : offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        # XSTATE_BV bits 0 (x87) and 1 (SSE): the legacy region is in use, not the init state
        f[XSTATE_BV] |= 3

    def xmm(self, reg: int) -> int:
        return self.fpu_word(XMM0_OFFSET + 16 * (reg - _XMM0), 16)

    def set_xmm(self, reg: int, value: int) -> None:
        self.set_fpu_word(XMM0_OFFSET + 16 * (reg - _XMM0), 16, value)

    def linear_address(self, ins: iced.Instruction) -> int:
        """The memory operand's linear address (SDM Vol.1 3.7.5: base + index * scale + disp,
        truncated to the address size, plus the segment base; in 64-bit mode only FS and GS have
        a base, Vol.3A 3.4.4)."""
        v = self.vcpu
        bitness = v.bitness()
        if ins.is_ip_rel_memory_operand:
            ea = ins.ip_rel_memory_address
        else:
            ea = ins.memory_displacement
            if ins.memory_base != R.NONE:
                ea += self.gpr(ins.memory_base)
            if ins.memory_index != R.NONE:
                ea += self.gpr(ins.memory_index) * ins.memory_index_scale
        # the address size is the width of the base/index registers (a 0x67 prefix changes both)
        if ins.memory_base not in (R.NONE, R.RIP, R.EIP):
            addr_bits = 8 * iced.RegisterInfo(ins.memory_base).size
        elif ins.memory_index != R.NONE:
            addr_bits = 8 * iced.RegisterInfo(ins.memory_index).size
        else:
            addr_bits = bitness
        ea &= (1 << addr_bits) - 1
        seg = ins.memory_segment
        if bitness == 64 and seg not in (R.FS, R.GS):
            return ea
        return (getattr(v.sync.sregs, _SEG_NAMES[seg]).base + ea) & ((1 << 64) - 1 if bitness == 64 else 0xFFFFFFFF)

    def load(self, ins: iced.Instruction, size: int) -> int:
        try:
            return int.from_bytes(self.vcpu.read_linear(self.linear_address(ins), size), "little")
        except ValueError as e:
            raise _Fault(str(e)) from None

    def store(self, ins: iced.Instruction, size: int, value: int) -> None:
        try:
            self.vcpu.write_linear(self.linear_address(ins), (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        except ValueError as e:
            raise _Fault(str(e)) from None

    def operand(self, ins: iced.Instruction, i: int, size: int) -> int:
        kind = ins.op_kind(i)
        if kind == OK.REGISTER:
            reg = ins.op_register(i)
            if R.XMM0 <= reg <= R.XMM15:
                return self.xmm(reg) & ((1 << (8 * size)) - 1)
            return self.gpr(reg)
        if kind == OK.MEMORY:
            return self.load(ins, size)
        raise _Fault(f"operand kind {kind}")


_MNEMONIC_NAMES = {value: name.lower() for name, value in vars(iced.Mnemonic).items() if name.isupper()}


def iced_mnemonic_name(ins: iced.Instruction) -> str:
    """"cmpxchg16b" (without prefixes such as LOCK, which ``str(ins)`` would put first)."""
    return _MNEMONIC_NAMES.get(ins.mnemonic, str(ins).split(" ", 1)[0])


# ---------------------------------------------------------------------- handlers

Handler = Callable[[InstructionFallback, iced.Instruction], bool]


def int3(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """INT3 (SDM Vol.2A "INT n/INTO/INT3/INT1"): #BP is a trap, the saved RIP is the next
    instruction -- so advance RIP, then inject vector 3 with KVM_SET_VCPU_EVENTS (api.rst 4.31)."""
    fb.next_rip(ins)
    ev = fb.vcpu.cpu.get_vcpu_events()
    ev.exception.injected = 1
    ev.exception.nr = 3
    ev.exception.has_error_code = 0
    ev.exception.error_code = 0
    ev.flags = 0
    fb.vcpu.cpu.set_vcpu_events(ev)
    return True


def clac_stac(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """CLAC / STAC (SDM Vol.2A "CLAC", Vol.2B "STAC"): clear / set RFLAGS.AC (CPL 0 only)."""
    flags = fb.vcpu.sync.regs.rflags
    flags = flags | RFLAGS_AC if ins.mnemonic == M.STAC else flags & ~RFLAGS_AC
    fb.set_rflags(flags)
    fb.next_rip(ins)
    return True


def fwait(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """WAIT/FWAIT (SDM Vol.2B "WAIT/FWAIT"): check for pending unmasked x87 exceptions.  A kernel
    runs it with none pending (FNINIT state or after FNCLEX), so it is a no-op here."""
    fsw = fb.fpu_word(FSW_OFFSET, 2)
    if fsw & 0x80:  # ES: an unmasked exception is pending -> #MF, which only the CPU can deliver
        return False
    fb.next_rip(ins)
    return True


def ldmxcsr(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """LDMXCSR m32 (SDM Vol.2A "LDMXCSR"): #GP(0) for reserved bits, which is left to KVM."""
    value = fb.load(ins, 4)
    if value & MXCSR_RESERVED:
        return False
    fb.set_fpu_word(MXCSR_OFFSET, 4, value)
    fb.next_rip(ins)
    return True


def stmxcsr(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """STMXCSR m32 (SDM Vol.2B "STMXCSR")."""
    fb.store(ins, 4, fb.fpu_word(MXCSR_OFFSET, 4))
    fb.next_rip(ins)
    return True


#: data movement between XMM registers, GPRs and memory: mnemonic -> bytes moved
_SSE_MOVES = {M.MOVD: 4, M.MOVQ: 8, M.MOVDQA: 16, M.MOVDQU: 16, M.MOVAPS: 16, M.MOVUPS: 16, M.MOVAPD: 16,
              M.MOVUPD: 16, M.MOVNTDQ: 16, M.MOVNTPS: 16, M.MOVNTPD: 16, M.MOVSS: 4, M.MOVSD: 8,
              M.MOVNTI: 4}


def sse_move(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """MOVD/MOVQ (SDM Vol.2B "MOVD/MOVQ"), MOVDQA/MOVDQU, MOVAPS/MOVUPS/MOVAPD/MOVUPD, MOVNT*,
    MOVSS/MOVSD (scalar, "MOVSS"/"MOVSD").  Destination rules:

    * XMM <- GPR or memory with MOVD/MOVQ, and MOVSS/MOVSD from memory: zero-extended to 128 bits;
    * MOVQ xmm, xmm (F3 0F 7E): the low 64 bits, upper half zeroed;
    * MOVSS/MOVSD xmm, xmm: only the low element is replaced;
    * a GPR destination of MOVD (32 bits) zeroes the upper half of the 64-bit register.
    """
    if ins.op_count != 2 or ins.encoding != iced.EncodingKind.LEGACY:
        return False
    if ins.mnemonic == M.MOVSD and ins.op0_kind not in (OK.REGISTER, OK.MEMORY):
        return False  # the string instruction MOVSD, which KVM emulates
    size = _SSE_MOVES[ins.mnemonic]
    if ins.mnemonic in (M.MOVD, M.MOVQ):
        # the GPR or memory side says the width: MOVQ with REX.W moves 64 bits
        for i in range(2):
            if ins.op_kind(i) == OK.REGISTER and not R.XMM0 <= ins.op_register(i) <= R.XMM15:
                size = iced.RegisterInfo(ins.op_register(i)).size
                if R.MM0 <= ins.op_register(i) <= R.MM7:
                    return False  # MMX registers live in the x87 stack: not handled
    value = fb.operand(ins, 1, size)
    kind = ins.op0_kind
    if kind == OK.REGISTER:
        dst = ins.op0_register
        if R.XMM0 <= dst <= R.XMM15:
            src_is_xmm = ins.op1_kind == OK.REGISTER and R.XMM0 <= ins.op1_register <= R.XMM15
            if ins.mnemonic in (M.MOVSS, M.MOVSD) and src_is_xmm:
                mask = (1 << (8 * size)) - 1
                value = (fb.xmm(dst) & ~mask) | value
            fb.set_xmm(dst, value)
        else:
            fb.set_gpr(dst, value)
    elif kind == OK.MEMORY:
        fb.store(ins, size, value)
    else:
        return False
    fb.next_rip(ins)
    return True


_BITWISE: dict[int, Callable[[int, int], int]] = {
    M.PXOR: lambda a, b: a ^ b, M.XORPS: lambda a, b: a ^ b, M.XORPD: lambda a, b: a ^ b,
    M.POR: lambda a, b: a | b, M.ORPS: lambda a, b: a | b, M.ORPD: lambda a, b: a | b,
    M.PAND: lambda a, b: a & b, M.ANDPS: lambda a, b: a & b, M.ANDPD: lambda a, b: a & b,
    M.PANDN: lambda a, b: ~a & b, M.ANDNPS: lambda a, b: ~a & b, M.ANDNPD: lambda a, b: ~a & b,
}


def sse_bitwise(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """PXOR/POR/PAND/PANDN and the PS/PD forms on XMM registers (SDM Vol.2B "PXOR", ...): 128-bit
    bitwise operations, e.g. the ``pxor %xmm0,%xmm0`` zeroing idiom."""
    if ins.op_count != 2 or ins.encoding != iced.EncodingKind.LEGACY or ins.op0_kind != OK.REGISTER:
        return False
    dst = ins.op0_register
    if not R.XMM0 <= dst <= R.XMM15:
        return False  # the MMX forms
    fb.set_xmm(dst, _BITWISE[ins.mnemonic](fb.xmm(dst), fb.operand(ins, 1, 16)))
    fb.next_rip(ins)
    return True


def cmpxchg16b(fb: InstructionFallback, ins: iced.Instruction) -> bool:
    """[LOCK] CMPXCHG16B m128 (SDM Vol.2A "CMPXCHG8B/CMPXCHG16B"): compare RDX:RAX with m128; if
    equal, ZF = 1 and RCX:RBX is stored, else ZF = 0 and m128 is loaded into RDX:RAX.  One vCPU:
    nothing can intervene between the load and the store, so LOCK needs no more."""
    r = fb.vcpu.sync.regs
    old = fb.load(ins, 16)
    if old == (r.rdx << 64 | r.rax):
        fb.store(ins, 16, r.rcx << 64 | r.rbx)
        fb.set_rflags(r.rflags | RFLAGS_ZF)
    else:
        r.rax, r.rdx = old & 0xFFFFFFFFFFFFFFFF, old >> 64
        fb.set_rflags(r.rflags & ~RFLAGS_ZF)
    fb.next_rip(ins)
    return True


HANDLERS: dict[int, Handler] = {
    M.INT3: int3,
    M.CLAC: clac_stac,
    M.STAC: clac_stac,
    M.WAIT: fwait,
    M.LDMXCSR: ldmxcsr,
    M.STMXCSR: stmxcsr,
    M.CMPXCHG16B: cmpxchg16b,
    **{m: sse_move for m in _SSE_MOVES},
    **{m: sse_bitwise for m in _BITWISE},
}
