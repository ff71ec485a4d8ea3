"""KVM exits as SDM VM exits, without /dev/kvm: the translator (backends/kvm/exits.py) on
instruction bytes given directly, the kvm_run offsets the hot path unpacks by hand, the MSR
filter ranges, the entry-state registers, and the instruction fallbacks' decoding."""

from __future__ import annotations

import ctypes

import pytest

from vmxlab.backends.kvm import structs as s
from vmxlab.backends.kvm import vcpu as kv
from vmxlab.backends.kvm.entry import descriptor_to_segment, entry_regs, entry_sregs
from vmxlab.backends.kvm.exits import ExitTranslator, describe_instruction
from vmxlab.machine.loaders import pm32_entry, real_entry
from vmxlab.machine.machine import Console, Machine
from vmxlab.vmx.exit_reasons import ExitReason
from vmxlab.vmx.qualifications import EptViolationQualification, InterruptionType, IoQualification

REAL_CS = (0, 0xFFFF, 0, 0xB, 1, 0, 0, 1, 0, 0, 0, 0)  # a kvm_segment tuple: base first


def translator(code: bytes, at: int, *, emulated: bool = False) -> ExitTranslator:
    """Guest memory holding ``code`` at linear ``at`` (0x90 elsewhere)."""

    def read(linear: int, n: int) -> bytes:
        out = bytearray(b"\x90" * n)
        for i in range(n):
            j = linear + i - at
            if 0 <= j < len(code):
                out[i] = code[j]
        return bytes(out)

    return ExitTranslator(read, lambda cpl: emulated)


def real_mode() -> tuple[int, int]:
    return 16, 0


def test_out_imm8_on_the_fast_path_rip_at_the_instruction() -> None:
    tr = translator(bytes([0xE6, 0xE9]), 0x7C00)  # out 0xE9, al
    ex = tr.io(False, 1, 0xE9, 1, 0x7C00, 0x7000, REAL_CS, real_mode)
    assert ex.reason == ExitReason.IO_INSTRUCTION and ex.raw_reason == 30
    assert ex.guest_rip == 0x7C00 and ex.instruction_length == 2 and ex.guest_rsp == 0x7000
    q = ex.decoded
    assert q == IoQualification(size=1, direction_in=False, string=False, rep=False, immediate=True, port=0xE9)
    assert ex.qualification == q.encode() == (0xE9 << 16) | (1 << 6)


def test_out_through_the_emulator_rip_after_the_instruction() -> None:
    # KVM's emulator finishes OUT before exiting: RIP is past it (measured on PVM at CPL 0)
    tr = translator(bytes([0xBA, 0xF8, 0x03, 0xEE]), 0x7C00, emulated=True)  # mov dx, 0x3f8; out dx, al
    ex = tr.io(False, 1, 0x3F8, 1, 0x7C04, 0x7000, REAL_CS, real_mode)
    assert ex.guest_rip == 0x7C03 and ex.instruction_length == 1
    assert not ex.decoded.immediate and ex.decoded.port == 0x3F8


def test_in_through_the_emulator_rip_on_the_instruction() -> None:
    tr = translator(bytes([0x66, 0xED]), 0x7C00, emulated=True)  # in eax, dx (16-bit code)
    ex = tr.io(True, 4, 0xCFC, 1, 0x7C00, 0x7000, REAL_CS, real_mode)
    assert ex.guest_rip == 0x7C00 and ex.instruction_length == 2
    assert ex.decoded.direction_in and ex.decoded.size == 4


def test_rep_outsb_is_string_and_rep() -> None:
    tr = translator(bytes([0xF3, 0x6E]), 0x7C00)
    ex = tr.io(False, 1, 0xE9, 16, 0x7C00, 0x7000, REAL_CS, real_mode)
    assert ex.decoded.string and ex.decoded.rep and ex.instruction_length == 2


def test_io_exits_are_cached_by_site() -> None:
    tr = translator(bytes([0xE6, 0xE9]), 0x7C00)
    a = tr.io(False, 1, 0xE9, 1, 0x7C00, 0x7000, REAL_CS, real_mode)
    b = tr.io(False, 1, 0xE9, 1, 0x7C00, 0x7000, REAL_CS, real_mode)
    assert a is b and tr.decodes == 1
    c = tr.io(False, 1, 0xE9, 1, 0x7C00, 0x6FFE, REAL_CS, real_mode)  # another RSP: another exit value
    assert c is not a and c.guest_rsp == 0x6FFE


def test_mmio_write_is_an_ept_violation_with_the_write_bit() -> None:
    # mov [0xd0000000], eax in 32-bit code; the emulator has completed the store: RIP after it
    code = bytes([0xA3, 0x00, 0x00, 0x00, 0xD0])
    tr = translator(code, 0x100000)
    pm = (0, 0xFFFFFFFF, 0x10, 0xB, 1, 0, 1, 1, 0, 1, 0, 0)
    ex = tr.mmio(0xD0000000, True, 0x100005, 0x7000, pm, lambda: (32, 0))
    assert ex.reason == ExitReason.EPT_VIOLATION and ex.guest_physical_address == 0xD0000000
    assert ex.guest_rip == 0x100000 and ex.instruction_length == 5
    q = EptViolationQualification.decode(ex.qualification)
    assert q.write and not q.read and not q.fetch and not (q.readable or q.writable or q.executable)


def test_mmio_read_rip_on_the_load() -> None:
    code = bytes([0xA1, 0x00, 0x00, 0x00, 0xD0])  # mov eax, [0xd0000000]
    tr = translator(code, 0x100000)
    pm = (0, 0xFFFFFFFF, 0x10, 0xB, 1, 0, 1, 1, 0, 1, 0, 0)
    ex = tr.mmio(0xD0000000, False, 0x100000, 0x7000, pm, lambda: (32, 0))
    assert ex.guest_rip == 0x100000 and EptViolationQualification.decode(ex.qualification).read


def test_hlt_msr_triple_fault_debug() -> None:
    tr = translator(b"", 0)
    h = tr.hlt(0x7C0A, 0x7000)
    assert (h.reason, h.guest_rip, h.instruction_length) == (ExitReason.HLT, 0x7C09, 1)
    assert tr.msr(False, 0x100, 0).reason == ExitReason.RDMSR
    assert tr.msr(True, 0x100, 0).reason == ExitReason.WRMSR and tr.msr(True, 0x100, 0).instruction_length == 2
    assert tr.triple_fault(0x10, 0).reason == ExitReason.TRIPLE_FAULT
    d = tr.debug(1, 0x7C00, 0xFFFF4FF0, 0x7000)
    assert d.reason == ExitReason.EXCEPTION_OR_NMI and d.interruption.vector == 1
    assert d.interruption.type == InterruptionType.HARDWARE_EXCEPTION and d.qualification == 0x4000  # BS
    bp = tr.debug(3, 0x7C00, 0, 0x7000)
    assert bp.interruption.type == InterruptionType.SOFTWARE_EXCEPTION and bp.qualification == 0


def test_describe_instruction_names_the_instruction() -> None:
    assert describe_instruction(bytes([0x66, 0x44, 0x0F, 0x6E, 0xF9]), 64, 0) == "movd xmm15,ecx (66 44 0f 6e f9)"
    assert describe_instruction(bytes([0x0F, 0x0B]), 64, 0) == "ud2 (0f 0b)"
    assert describe_instruction(bytes([0x0F]), 64, 0).startswith("undecodable bytes 0f")


def test_kvm_run_offsets_used_by_the_hot_path() -> None:
    # the hand-written struct formats in vcpu.py must agree with the ctypes layout (kvm.md §3.2)
    assert s.KvmRun.exit_reason.offset == 8
    assert s.KvmRun.exit.offset == 32
    assert s.KvmRun.s.offset == s.KVM_SYNC_REGS_OFFSET == 304
    assert kv._RUN_IO.size == ctypes.sizeof(s.ExitIo)
    assert 304 + s.KvmRegs.rip.offset == kv._REG_RIP and 304 + s.KvmRegs.rsp.offset == kv._REG_RSP
    assert 304 + ctypes.sizeof(s.KvmRegs) + s.KvmSregs.cs.offset == kv._OFF_CS
    assert kv._SEG.size == ctypes.sizeof(s.KvmSegment)
    assert ctypes.sizeof(s.KvmSyncRegs) == 144 + 312 + 64
    assert s.ExitMsr.index.offset + 32 == 44 and s.ExitMsr.data.offset + 32 == 48  # kvm.md §3.2


def test_msr_filter_ranges_deny_exactly_the_msrs() -> None:
    ranges = kv.msr_filter_ranges([0x10, 0xC0000082])
    assert [(base, bitmap) for _, base, bitmap in ranges] == [(0x10, b"\xfe"), (0xC0000082, b"\xfe")]


def test_segment_access_rights_in_vmx_format() -> None:
    seg = s.KvmSegment()
    descriptor_to_segment(seg, 0x10, 0x00CF9B000000FFFF)
    assert (seg.base, seg.limit, seg.type, seg.s, seg.dpl, seg.db, seg.g) == (0, 0xFFFFFFFF, 0xB, 1, 0, 1, 1)
    assert kv.segment_ar(seg) == 0xC09B  # SDM Vol.3C Table 25-2


@pytest.mark.parametrize("mode", ["real", "pm32"])
def test_entry_states_match_the_software_cpu(mode: str) -> None:
    """The KVM registers of an entry state equal the software CPU's after EmuBackend.apply_entry."""
    from vmxlab.backends.emu import EmuBackend

    entry = real_entry(0x7C0, 0x10, None) if mode == "real" else pm32_entry(0x100000, 0x8000)
    entry.regs = {"eax": 0x1234, "ebx": 0x5678}
    m = Machine.create(2, Console(echo=False))
    emu = EmuBackend(m)
    emu.apply_entry(entry)
    st = emu.cpu.state_dict()
    sr, r = s.KvmSregs(), s.KvmRegs()
    entry_sregs(sr, entry, m)
    entry_regs(r, entry)
    assert (r.rax, r.rbx, r.rip, r.rsp, r.rflags) == (st["eax"], st["ebx"], st["eip"], st["esp"], st["eflags"])
    assert sr.cr0 == st["cr0"] and (sr.gdt.base, sr.gdt.limit) == st["gdtr"] and (sr.idt.base, sr.idt.limit) == \
        st["idtr"]
    for name in ("cs", "ds", "ss", "es"):
        seg = getattr(sr, name)
        assert (seg.selector, seg.base, seg.limit) == (st[name]["selector"], st[name]["base"], st[name]["limit"])
        assert kv.segment_ar(seg) == st[name]["ar"]  # docs/entry-state.md: 0x93 in real mode, CS included
