"""KVM's userspace exits as SDM VM exits (:class:`~vmxlab.vmx.api.VmExit`).

The VMM dispatches on the SDM's basic exit reasons on both backends (DESIGN.md "The one
loop"), so each KVM exit becomes the VM exit a VMX hypervisor would have seen for the
same guest instruction:

=====================  =====================================  ==========================================
KVM exit (api.rst 5)   VM exit (SDM Vol.3C Appendix C)        qualification (SDM Vol.3C 28.2.1)
=====================  =====================================  ==========================================
KVM_EXIT_IO            30 I/O instruction                     Table 28-5: size, direction, string, REP,
                                                              immediate operand, port
KVM_EXIT_MMIO          48 EPT violation                       Table 28-7: read or write; the EPT entry
                                                              was not present (bits 3-5 = 0)
KVM_EXIT_HLT           12 HLT                                 none
KVM_EXIT_X86_RDMSR     31 RDMSR                               none (the MSR index is in ECX)
KVM_EXIT_X86_WRMSR     32 WRMSR                               none
KVM_EXIT_SHUTDOWN      2 triple fault                         none
KVM_EXIT_DEBUG         0 exception (#DB / #BP)                #DB: DR6 bits B0-B3, BD, BS (Table 28-1)
KVM_EXIT_IRQ_WINDOW_   7 interrupt window                     none
OPEN
=====================  =====================================  ==========================================

Where the guest's RIP points.  A VMX exit reports the RIP *of* the exiting instruction.
KVM's RIP at the exit depends on who ran the instruction: the hardware fast path (a
non-string IN/OUT with VMX/SVM) leaves RIP on the instruction and KVM skips it when
userspace resumes; KVM's instruction emulator -- used for every MMIO access, for string
I/O, and on PVM hosts for *all* ring-0 code (kvm.md §0) -- finishes OUT and MMIO stores
before exiting (RIP already past the instruction) but re-executes IN and MMIO loads after
userspace supplied the data (RIP on the instruction).  Measured on this host: OUT at CPL 0
exits with RIP after the instruction, IN with RIP on it.  So the translator decodes the
instruction bytes (iced-x86) at RIP, or just before it, to find the exiting instruction,
its length and, for I/O, the string/REP/immediate bits KVM does not report.

Cost.  A decode per exit would double the cost of an exit in Python.  A VmExit is a frozen
value, and a guest exits from the same few instructions again and again (a polling loop, a
console driver), so translated exits are cached by everything they are computed from
(KVM's exit fields, RIP, RSP, CS base): the steady state of a port-I/O loop is a struct
unpack and one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable

import iced_x86 as iced

from ...vmx.api import VmExit
from ...vmx.exit_reasons import ExitReason
from ...vmx.qualifications import (
    EptViolationQualification,
    InterruptionInfo,
    InterruptionType,
    IoQualification,
)

#: the longest x86 instruction (SDM Vol.2 2.3.11)
MAX_INSN = 15
_CACHE_LIMIT = 8192

_M = iced.Mnemonic
_IO_MNEMONICS = {
    _M.IN: (True, False), _M.OUT: (False, False),
    _M.INSB: (True, True), _M.INSW: (True, True), _M.INSD: (True, True),
    _M.OUTSB: (False, True), _M.OUTSW: (False, True), _M.OUTSD: (False, True),
}
_IMM8_KINDS = (iced.OpKind.IMMEDIATE8,)

#: DR6 bits reported in the qualification of a #DB exit: B0-B3, BD, BS (SDM Vol.3C Table 28-1)
DR6_QUALIFICATION_MASK = 0x600F


def decode_one(code: bytes, bitness: int, ip: int) -> iced.Instruction | None:
    """One instruction from ``code`` at ``ip``, or None if the bytes are not a valid instruction."""
    if not code:
        return None
    ins = iced.Decoder(bitness, code, ip=ip).decode()
    return None if ins.is_invalid else ins


def describe_instruction(code: bytes, bitness: int, ip: int) -> str:
    """``"movd xmm15,ecx (66 44 0f 6e f9)"`` for messages; the raw bytes when they do not decode."""
    ins = decode_one(code, bitness, ip)
    if ins is None:
        return f"undecodable bytes {code[:MAX_INSN].hex(' ')}"
    return f"{ins} ({code[: ins.len].hex(' ')})"


def _io_match(direction_in: bool, size: int, port: int) -> Callable[[iced.Instruction], bool]:
    """Does a decoded instruction perform the I/O access KVM reported?"""

    def match(ins: iced.Instruction) -> bool:
        kind = _IO_MNEMONICS.get(ins.mnemonic)
        if kind is None or kind[0] != direction_in:
            return False
        if not kind[1]:  # IN/OUT: the register operand gives the size, the other the port
            reg, port_op = (0, 1) if direction_in else (1, 0)
            if iced.RegisterInfo(ins.op_register(reg)).size != size:
                return False
            return not (ins.op_kind(port_op) in _IMM8_KINDS and ins.immediate8 != port)
        return iced.MemorySizeInfo(ins.memory_size).size == size

    return match


def _memory_match(ins: iced.Instruction) -> bool:
    return any(ins.op_kind(i) == iced.OpKind.MEMORY for i in range(ins.op_count))


class ExitTranslator:
    """Builds (and caches) :class:`VmExit` values from KVM exit fields.

    ``read_code(linear, n)`` returns guest bytes at a linear address (it translates
    through the guest's page tables when paging is on); ``emulated_pio(cpl)`` says
    whether a CPL's port I/O goes through KVM's emulator (True at CPL 0 on PVM).
    """

    def __init__(self, read_code: Callable[[int, int], bytes], emulated_pio: Callable[[int], bool]) -> None:
        self.read_code = read_code
        self.emulated_pio = emulated_pio
        self.cache: dict[tuple, VmExit] = {}
        self.decodes = 0

    # ------------------------------------------------------------------ helpers

    def _remember(self, key: tuple, ex: VmExit) -> VmExit:
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = ex
        return ex

    def locate(self, rip: int, cs_base: int, bitness: int, match: Callable[[iced.Instruction], bool],
               after_first: bool) -> tuple[int, iced.Instruction] | None:
        """The exiting instruction: at RIP, or the one ending at RIP (``after_first``: try that first)."""
        self.decodes += 1
        mask = (1 << bitness) - 1 if bitness < 64 else (1 << 64) - 1
        start = (rip - MAX_INSN) & mask
        try:
            window = self.read_code((cs_base + start) & 0xFFFFFFFFFFFFFFFF, 2 * MAX_INSN)
        except (ValueError, OSError):
            return None

        def at() -> tuple[int, iced.Instruction] | None:
            ins = decode_one(window[MAX_INSN:], bitness, rip)
            return (rip, ins) if ins is not None and match(ins) else None

        def before() -> tuple[int, iced.Instruction] | None:
            for k in range(1, MAX_INSN + 1):
                ins = decode_one(window[MAX_INSN - k : MAX_INSN], bitness, (rip - k) & mask)
                if ins is not None and ins.len == k and match(ins):
                    return (rip - k) & mask, ins
            return None

        for find in (before, at) if after_first else (at, before):
            found = find()
            if found is not None:
                return found
        return None

    @staticmethod
    def _make(reason: ExitReason, qualification: int, decoded: object | None, rip: int, rsp: int, length: int,
              gpa: int = 0, interruption: InterruptionInfo | None = None) -> VmExit:
        return VmExit(reason, int(reason), qualification, decoded, rip, rsp, length, 0, 0, gpa, interruption,
                      None, None, None)

    # ------------------------------------------------------------------ by exit

    def io(self, direction_in: bool, size: int, port: int, count: int, rip: int, rsp: int, cs: tuple,
           mode: Callable[[], tuple[int, int]], key: tuple | None = None) -> VmExit:
        """``cs`` is the raw ``kvm_segment`` tuple of CS (base first); ``mode()`` gives (bitness,
        CPL) and is called only when the exit is not in the cache.  ``key``: the caller's cache
        key (the vCPU uses the raw kvm_run fields the exit was computed from)."""
        if key is None:
            key = (2, direction_in, size, port, count > 1, rip, rsp, cs)
        ex = self.cache.get(key)
        if ex is not None:
            return ex
        cs_base = cs[0]
        bitness, cpl = mode()
        string = count > 1
        rep = string
        immediate = False
        length = 0
        after = (not direction_in) and self.emulated_pio(cpl)
        found = self.locate(rip, cs_base, bitness, _io_match(direction_in, size, port), after)
        insn_rip = rip
        if found is not None:
            insn_rip, ins = found
            length = ins.len
            string = _IO_MNEMONICS[ins.mnemonic][1]
            rep = string and (ins.has_rep_prefix or ins.has_repe_prefix)
            immediate = not string and any(ins.op_kind(i) in _IMM8_KINDS for i in range(ins.op_count))
        q = IoQualification(size, direction_in, string, rep, immediate, port)
        return self._remember(key, self._make(ExitReason.IO_INSTRUCTION, q.encode(), q, insn_rip, rsp, length))

    def mmio(self, gpa: int, is_write: bool, rip: int, rsp: int, cs: tuple,
             mode: Callable[[], tuple[int, int]]) -> VmExit:
        key = (6, gpa, is_write, rip, rsp, cs)
        ex = self.cache.get(key)
        if ex is not None:
            return ex
        cs_base = cs[0]
        bitness, _cpl = mode()
        # the emulator finishes a store before exiting and replays a load afterwards (module doc)
        found = self.locate(rip, cs_base, bitness, _memory_match, is_write)
        insn_rip, length = (found[0], found[1].len) if found is not None else (rip, 0)
        q = EptViolationQualification(read=not is_write, write=is_write, fetch=False, readable=False,
                                      writable=False, executable=False, linear_address_valid=False,
                                      translated_access=False)
        return self._remember(key, self._make(ExitReason.EPT_VIOLATION, q.encode(), q, insn_rip, rsp, length,
                                              gpa=gpa))

    def hlt(self, rip: int, rsp: int) -> VmExit:
        """KVM_EXIT_HLT comes after KVM skipped the one-byte HLT (kvm_emulate_halt)."""
        key = (5, rip, rsp)
        ex = self.cache.get(key)
        if ex is None:
            ex = self._remember(key, self._make(ExitReason.HLT, 0, None, rip - 1, rsp, 1))
        return ex

    def msr(self, write: bool, rip: int, rsp: int) -> VmExit:
        """RDMSR/WRMSR (0F 32 / 0F 30): KVM completes them when userspace resumes, RIP is on them."""
        reason = ExitReason.WRMSR if write else ExitReason.RDMSR
        return self._make(reason, 0, None, rip, rsp, 2)

    def triple_fault(self, rip: int, rsp: int) -> VmExit:
        return self._make(ExitReason.TRIPLE_FAULT, 0, None, rip, rsp, 0)

    def interrupt_window(self, rip: int, rsp: int) -> VmExit:
        return self._make(ExitReason.INTERRUPT_WINDOW, 0, None, rip, rsp, 0)

    def debug(self, exception: int, pc: int, dr6: int, rsp: int) -> VmExit:
        """KVM_EXIT_DEBUG (single step, hardware or software breakpoint) as an exception exit."""
        if exception == 3:
            info = InterruptionInfo(3, InterruptionType.SOFTWARE_EXCEPTION)
            q = 0
        else:
            info = InterruptionInfo(exception & 0xFF, InterruptionType.HARDWARE_EXCEPTION)
            q = dr6 & DR6_QUALIFICATION_MASK
        return self._make(ExitReason.EXCEPTION_OR_NMI, q, None, pc, rsp, 0, interruption=info)
