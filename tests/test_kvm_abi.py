"""The /dev/kvm binding: struct layouts and ioctl numbers against the kernel ABI, and a real VM run.

Three layers of checks:

* ctypes-level: sizes, offsets and ioctl numbers equal the values verified on the
  development machines (../shared/reference/kvm.md §3) -- always runs;
* against ``<linux/kvm.h>``: a small C program compiled with gcc prints sizeof/offsetof
  and the ioctl macros -- runs where gcc and the header exist;
* a real-mode guest that does ``out 0xE9`` and ``hlt`` -- runs where /dev/kvm is usable
  (marker ``kvm``).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from vmxlab.backends.kvm import Cap, ExitReason, Kvm, KvmError, KvmUnavailable, kvm_usable
from vmxlab.backends.kvm import api as kvm_api
from vmxlab.backends.kvm import constants as k
from vmxlab.backends.kvm import structs as s

# -- kvm.md §3: the values verified with gcc offsetof on the development machine ---------------------

KVM_MD_IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_GET_MSR_INDEX_LIST": 0xC004AE02,
    "KVM_CHECK_EXTENSION": 0xAE03, "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41, "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48, "KVM_CREATE_IRQCHIP": 0xAE60, "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_SET_GSI_ROUTING": 0x4008AE6A, "KVM_IRQ_LINE_STATUS": 0xC008AE67, "KVM_IRQFD": 0x4020AE76,
    "KVM_CREATE_PIT2": 0x4040AE77, "KVM_IOEVENTFD": 0x4040AE79, "KVM_SET_CLOCK": 0x4030AE7B,
    "KVM_GET_CLOCK": 0x8030AE7C, "KVM_RUN": 0xAE80, "KVM_GET_REGS": 0x8090AE81, "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84, "KVM_TRANSLATE": 0xC018AE85,
    "KVM_INTERRUPT": 0x4004AE86, "KVM_GET_MSRS": 0xC008AE88, "KVM_SET_MSRS": 0x4008AE89,
    "KVM_GET_FPU": 0x81A0AE8C, "KVM_SET_FPU": 0x41A0AE8D, "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F, "KVM_SET_CPUID2": 0x4008AE90, "KVM_GET_CPUID2": 0xC008AE91,
    "KVM_SET_GUEST_DEBUG": 0x4048AE9B, "KVM_GET_VCPU_EVENTS": 0x8040AE9F, "KVM_SET_VCPU_EVENTS": 0x4040AEA0,
    "KVM_ENABLE_CAP": 0x4068AEA3, "KVM_SIGNAL_MSI": 0x4020AEA5, "KVM_X86_SET_MSR_FILTER": 0x4188AEC6,
}
KVM_MD_CAPS = {"IRQCHIP": 0, "USER_MEMORY": 3, "SET_TSS_ADDR": 4, "EXT_CPUID": 7, "NR_MEMSLOTS": 10,
               "IRQFD": 32, "PIT2": 33, "IOEVENTFD": 36, "SET_IDENTITY_MAP_ADDR": 37, "SPLIT_IRQCHIP": 121,
               "X2APIC_API": 129, "IMMEDIATE_EXIT": 136, "X86_USER_SPACE_MSR": 188, "X86_MSR_FILTER": 189}
KVM_MD_EXITS = {"UNKNOWN": 0, "EXCEPTION": 1, "IO": 2, "HYPERCALL": 3, "DEBUG": 4, "HLT": 5, "MMIO": 6,
                "IRQ_WINDOW_OPEN": 7, "SHUTDOWN": 8, "FAIL_ENTRY": 9, "INTR": 10, "SET_TPR": 11,
                "TPR_ACCESS": 12, "NMI": 16, "INTERNAL_ERROR": 17, "SYSTEM_EVENT": 24, "IOAPIC_EOI": 26,
                "HYPERV": 27, "X86_RDMSR": 29, "X86_WRMSR": 30, "DIRTY_RING_FULL": 31, "X86_BUS_LOCK": 33,
                "NOTIFY": 37}
KVM_MD_SIZES = {"kvm_regs": 144, "kvm_sregs": 312, "kvm_segment": 24, "kvm_dtable": 16, "kvm_run": 2352,
                "kvm_userspace_memory_region": 32, "kvm_cpuid2": 8, "kvm_cpuid_entry2": 40, "kvm_msrs": 8,
                "kvm_msr_entry": 16, "kvm_irq_level": 8, "kvm_pit_config": 64, "kvm_msr_filter": 392,
                "kvm_msr_filter_range": 24, "kvm_enable_cap": 104, "kvm_guest_debug": 72, "kvm_fpu": 416,
                "kvm_vcpu_events": 64, "kvm_lapic_state": 1024}
KVM_MD_OFFSETS = {
    ("kvm_regs", "rip"): 128, ("kvm_regs", "rflags"): 136,
    ("kvm_segment", "limit"): 8, ("kvm_segment", "selector"): 12, ("kvm_segment", "type"): 14,
    ("kvm_segment", "present"): 15, ("kvm_segment", "dpl"): 16, ("kvm_segment", "db"): 17,
    ("kvm_segment", "s"): 18, ("kvm_segment", "l"): 19, ("kvm_segment", "g"): 20, ("kvm_segment", "avl"): 21,
    ("kvm_segment", "unusable"): 22, ("kvm_dtable", "limit"): 8,
    ("kvm_sregs", "ds"): 24, ("kvm_sregs", "tr"): 144, ("kvm_sregs", "ldt"): 168, ("kvm_sregs", "gdt"): 192,
    ("kvm_sregs", "idt"): 208, ("kvm_sregs", "cr0"): 224, ("kvm_sregs", "cr3"): 240,
    ("kvm_sregs", "efer"): 264,
    ("kvm_sregs", "apic_base"): 272, ("kvm_sregs", "interrupt_bitmap"): 280,
    ("kvm_run", "immediate_exit"): 1, ("kvm_run", "exit_reason"): 8, ("kvm_run", "if_flag"): 13,
    ("kvm_run", "cr8"): 16, ("kvm_run", "apic_base"): 24, ("kvm_run", "kvm_valid_regs"): 288,
    ("kvm_run", "kvm_dirty_regs"): 296, ("kvm_run", "s"): 304,
}
#: exit-union members: (member, field) -> offset inside kvm_run (kvm.md §3.2 table)
KVM_MD_EXIT_OFFSETS = {
    ("io", "direction"): 32, ("io", "size"): 33, ("io", "port"): 34, ("io", "count"): 36,
    ("io", "data_offset"): 40, ("mmio", "phys_addr"): 32, ("mmio", "data"): 40, ("mmio", "len"): 48,
    ("mmio", "is_write"): 52, ("fail_entry", "hardware_entry_failure_reason"): 32, ("fail_entry", "cpu"): 40,
    ("internal", "suberror"): 32, ("internal", "ndata"): 36, ("internal", "data"): 40,
    ("ex", "exception"): 32, ("ex", "error_code"): 36, ("msr", "error"): 32, ("msr", "reason"): 40,
    ("msr", "index"): 44, ("msr", "data"): 48, ("debug", "exception"): 32, ("debug", "pc"): 40,
    ("debug", "dr6"): 48, ("debug", "dr7"): 56, ("system_event", "type"): 32, ("system_event", "ndata"): 36,
    ("system_event", "data"): 40, ("emulation_failure", "flags"): 40, ("emulation_failure", "insn_size"): 48,
    ("emulation_failure", "insn_bytes"): 49,
}


def _offset(struct_name: str, field: str) -> int:
    return getattr(s.ABI_STRUCTS[struct_name], field).offset


def test_struct_sizes_match_kvm_md() -> None:
    for name, size in KVM_MD_SIZES.items():
        assert ctypes.sizeof(s.ABI_STRUCTS[name]) == size, name


def test_field_offsets_match_kvm_md() -> None:
    for (struct_name, field), off in KVM_MD_OFFSETS.items():
        assert _offset(struct_name, field) == off, f"{struct_name}.{field}"
    exit_base = s.KvmRun.exit.offset
    assert exit_base == 32
    for (member, field), off in KVM_MD_EXIT_OFFSETS.items():
        member_type = dict(s.KvmRunExit._fields_)[member]
        assert exit_base + getattr(member_type, field).offset == off, f"kvm_run.{member}.{field}"
        assert getattr(s.KvmRun, member).offset == exit_base  # reachable as run.io, run.mmio, ...


def test_variable_length_structs() -> None:
    assert ctypes.sizeof(s.cpuid2_type(3)) == 8 + 3 * 40
    assert ctypes.sizeof(s.msrs_type(5)) == 8 + 5 * 16
    assert s.cpuid2_type(3) is s.cpuid2_type(3)  # cached: one type per length


def test_ioctl_numbers_match_kvm_md() -> None:
    for name, value in KVM_MD_IOCTLS.items():
        assert getattr(k, name) == value, f"{name} = {getattr(k, name):#x}, kvm.md says {value:#x}"
    assert set(KVM_MD_IOCTLS) <= set(k.IOCTLS)


def test_caps_and_exit_reasons_match_kvm_md() -> None:
    for name, value in KVM_MD_CAPS.items():
        assert Cap[name] == value, name
    for name, value in KVM_MD_EXITS.items():
        assert ExitReason[name] == value, name
    assert (k.KVM_EXIT_IO_IN, k.KVM_EXIT_IO_OUT) == (0, 1)
    msr_reasons = (k.KVM_MSR_EXIT_REASON_INVAL, k.KVM_MSR_EXIT_REASON_UNKNOWN, k.KVM_MSR_EXIT_REASON_FILTER)
    assert msr_reasons == (1, 2, 4)
    assert (k.KVM_GUESTDBG_ENABLE, k.KVM_GUESTDBG_SINGLESTEP) == (1, 2)
    assert (k.KVM_GUESTDBG_USE_SW_BP, k.KVM_GUESTDBG_USE_HW_BP) == (0x10000, 0x20000)
    assert s.KVM_MSR_FILTER_MAX_RANGES == 16 and k.KVM_PIT_SPEAKER_DUMMY == 1


# -- against the installed kernel header ------------------------------------------------------------

HEADER = Path("/usr/include/linux/kvm.h")
#: (C member designator, ctypes struct name, ctypes field path) for offsetof checks
C_OFFSETS = [(f"{st}, {f}", st, f) for (st, f) in KVM_MD_OFFSETS] + [
    (f"kvm_run, {'debug.arch' if m == 'debug' else m}.{f}", "kvm_run", f"{m}.{f}")
    for (m, f) in KVM_MD_EXIT_OFFSETS] + [
    ("kvm_vcpu_events, exception_payload", "kvm_vcpu_events", "exception_payload"),
    ("kvm_vcpu_events, sipi_vector", "kvm_vcpu_events", "sipi_vector"),
    ("kvm_fpu, mxcsr", "kvm_fpu", "mxcsr"), ("kvm_fpu, xmm", "kvm_fpu", "xmm"),
    ("kvm_enable_cap, args", "kvm_enable_cap", "args"),
    ("kvm_guest_debug, arch", "kvm_guest_debug", "debugreg"),
    ("kvm_msr_filter, ranges", "kvm_msr_filter", "ranges"),
    ("kvm_msr_filter_range, bitmap", "kvm_msr_filter_range", "bitmap"),
    ("kvm_userspace_memory_region, userspace_addr", "kvm_userspace_memory_region", "userspace_addr"),
    ("kvm_cpuid_entry2, edx", "kvm_cpuid_entry2", "edx"), ("kvm_msr_entry, data", "kvm_msr_entry", "data"),
    ("kvm_translation, valid", "kvm_translation", "valid"),
    ("kvm_sync_regs, sregs", "kvm_sync_regs", "sregs"), ("kvm_sync_regs, events", "kvm_sync_regs", "events"),
    ("kvm_run, s.regs", "kvm_run", "s"),
]


def _ctypes_offset(struct_name: str, path: str) -> int:
    t = s.ABI_STRUCTS[struct_name]
    off = 0
    for part in path.split("."):
        fields = dict(t._fields_)
        if part not in fields and hasattr(t, "_anonymous_"):
            anon = t._anonymous_[0]
            off += getattr(t, anon).offset
            t = fields[anon]
            fields = dict(t._fields_)
        off += getattr(t, part).offset
        t = fields[part]
    return off


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """sizeof/offsetof/ioctl values printed by a C program compiled against <linux/kvm.h>."""
    gcc = shutil.which("gcc")
    if gcc is None or not HEADER.exists():
        pytest.skip(f"ABI check against the kernel header did not run: {'gcc' if gcc is None else HEADER} "
                    "is missing (install gcc and linux-libc-dev)")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/kvm.h>', 'int main(void) {']
    for name in s.ABI_STRUCTS:
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
    for designator, st, path in C_OFFSETS:
        sname, member = designator.split(", ")
        lines.append(f'printf("offsetof {st}.{path} %zu\\n", offsetof(struct {sname}, {member}));')
    for name in k.IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long)({name}));')
    for cap in Cap:
        lines.append(f'printf("cap {cap.name} %d\\n", KVM_CAP_{cap.name});')
    for reason in ExitReason:
        lines.append(f'printf("exit {reason.name} %d\\n", KVM_EXIT_{reason.name});')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("kvmabi")
    (d / "abi.c").write_text("\n".join(lines))
    r = subprocess.run([gcc, "-o", str(d / "abi"), str(d / "abi.c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(d / "abi")], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    return values


def test_struct_sizes_match_header(header_values: dict[str, int]) -> None:
    for name in s.ABI_STRUCTS:  # every struct the binding defines, not only those kvm.md lists
        assert ctypes.sizeof(s.ABI_STRUCTS[name]) == header_values[f"sizeof {name}"], name


def test_field_offsets_match_header(header_values: dict[str, int]) -> None:
    for _designator, st, path in C_OFFSETS:
        assert _ctypes_offset(st, path) == header_values[f"offsetof {st}.{path}"], f"{st}.{path}"


def test_ioctl_caps_exits_match_header(header_values: dict[str, int]) -> None:
    for name, value in k.IOCTLS.items():
        assert value == header_values[f"ioctl {name}"], name
    for cap in Cap:
        assert cap.value == header_values[f"cap {cap.name}"], cap.name
    for reason in ExitReason:
        assert reason.value == header_values[f"exit {reason.name}"], reason.name


# -- errors ----------------------------------------------------------------------------------------------


def test_missing_device_is_one_line_user_error(tmp_path: Path) -> None:
    with pytest.raises(KvmUnavailable) as e:
        Kvm(str(tmp_path / "kvm"))
    msg = str(e.value)
    assert "\n" not in msg and "no such device" in msg and "--backend emu" in msg
    ok, why = kvm_usable(str(tmp_path / "kvm"))
    assert not ok and "no such device" in why


def test_permission_denied_names_the_kvm_group(monkeypatch: pytest.MonkeyPatch) -> None:
    def eacces(path: str, flags: int) -> int:  # what open(2) does for a user outside the kvm group
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(kvm_api.os, "open", eacces)
    with pytest.raises(KvmUnavailable) as e:
        Kvm()
    assert str(e.value).startswith("/dev/kvm: permission denied — add yourself to the kvm group")
    assert "\n" not in str(e.value)


def test_ioctl_error_names_the_ioctl() -> None:
    err = KvmError(k.KVM_SET_SREGS, 22, "bad CR0")
    assert str(err) == "[Errno 22] KVM_SET_SREGS (bad CR0): Invalid argument"
    assert err.errno == 22


# -- a real VM ---------------------------------------------------------------------------------------------

_USABLE, _WHY = kvm_usable()
needs_kvm = pytest.mark.skipif(not _USABLE, reason=f"KVM tests did not run: {_WHY}")


@pytest.mark.kvm
@needs_kvm
def test_real_mode_guest_out_and_hlt() -> None:
    """mov al,'K'; out 0xE9,al; mov dx,0xE9; mov ax,0x4241; out dx,ax; hlt -- at 0000:1000 in real mode."""
    code = bytes([0xB0, 0x4B, 0xE6, 0xE9, 0xBA, 0xE9, 0x00, 0xB8, 0x41, 0x42, 0xEF, 0xF4])
    with Kvm() as kvm:
        assert kvm.api_version == 12
        assert kvm.check_extension(Cap.USER_MEMORY)
        assert kvm.vcpu_mmap_size >= ctypes.sizeof(s.KvmRun)
        with kvm.create_vm() as vm:
            vm.set_tss_addr()
            ram = vm.add_memory(0, 0x10000)
            ram.write(0x1000, code)
            vcpu = vm.create_vcpu(0)
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags = 0x1000, 0x2
            vcpu.set_regs(regs)

            run = vcpu.run()
            assert run.exit_reason == ExitReason.IO
            io = run.io
            assert (io.direction, io.size, io.port, io.count) == (k.KVM_EXIT_IO_OUT, 1, 0xE9, 1)
            assert bytes(vcpu.io_data()) == b"K"

            run = vcpu.run()
            assert run.exit_reason == ExitReason.IO
            assert (run.io.size, run.io.port) == (2, 0xE9)
            assert bytes(vcpu.io_data()) == b"AB"

            run = vcpu.run()
            assert run.exit_reason == ExitReason.HLT
            regs = vcpu.get_regs()
            assert regs.rip == 0x1000 + len(code)
            assert regs.rax & 0xFFFF == 0x4241 and regs.rdx & 0xFFFF == 0xE9


@pytest.mark.kvm
@needs_kvm
def test_vcpu_state_round_trips() -> None:
    """Registers, MSRs, CPUID, FPU, events and guest debug go in and come back out."""
    with Kvm() as kvm:
        cpuid = kvm.supported_cpuid()
        assert any(e.function == 0 for e in cpuid)
        with kvm.create_vm() as vm:
            vm.add_memory(0, 0x10000)
            vcpu = vm.create_vcpu(0)
            regs = vcpu.get_regs()
            regs.rbx, regs.r15, regs.rip = 0x1122334455667788, 0xF00D, 0x1234
            vcpu.set_regs(regs)
            back = vcpu.get_regs()
            assert (back.rbx, back.r15, back.rip) == (0x1122334455667788, 0xF00D, 0x1234)
            vcpu.set_cpuid2(cpuid)
            leaf0 = next(e for e in vcpu.get_cpuid2() if e.function == 0)
            want = next(e for e in cpuid if e.function == 0)
            assert (leaf0.eax, leaf0.ebx, leaf0.ecx, leaf0.edx) == (want.eax, want.ebx, want.ecx, want.edx)
            vcpu.set_msrs({0x174: 0x10})  # IA32_SYSENTER_CS
            assert vcpu.get_msrs([0x174]) == {0x174: 0x10}
            fpu = vcpu.get_fpu()
            fpu.fcw = 0x37F
            vcpu.set_fpu(fpu)
            assert vcpu.get_fpu().fcw == 0x37F
            events = vcpu.get_vcpu_events()
            vcpu.set_vcpu_events(events)
            vcpu.set_guest_debug(k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP)
            vcpu.set_guest_debug(0)
            sregs = vcpu.get_sregs()
            sregs.cr0 = 0x80000000  # PG without PE: KVM refuses it (kvm.md §3.2)
            with pytest.raises(KvmError, match="KVM_SET_SREGS"):
                vcpu.set_sregs(sregs)


@pytest.mark.kvm
@needs_kvm
def test_irqchip_pit_and_msr_filter_exits() -> None:
    """In-kernel irqchip and PIT, IRQ lines, and a user-space RDMSR exit through an MSR filter.

    Real-mode guest: ``mov ecx, 0x174; rdmsr; out 0xE9, al`` (0x66-prefixed for 32-bit ECX) with a
    filter that denies reads of IA32_SYSENTER_CS, so KVM exits with KVM_EXIT_X86_RDMSR, reason FILTER
    (api.rst 4.97).  (No HLT: with the in-kernel irqchip KVM keeps a halted vCPU in the kernel.)
    """
    code = bytes([0x66, 0xB9, 0x74, 0x01, 0x00, 0x00, 0x0F, 0x32, 0xE6, 0xE9])
    with Kvm() as kvm, kvm.create_vm() as vm:
        assert kvm.check_extension(Cap.X86_MSR_FILTER) and kvm.check_extension(Cap.X86_USER_SPACE_MSR)
        vm.set_tss_addr()
        vm.create_irqchip()
        vm.create_pit2()
        vm.irq_line(4, True)
        vm.irq_line(4, False)
        vm.enable_cap(Cap.X86_USER_SPACE_MSR, k.KVM_MSR_EXIT_REASON_FILTER)
        vm.set_msr_filter([(k.KVM_MSR_FILTER_READ, 0x174, b"\x00")])  # bit 0 = 0x174: deny
        ram = vm.add_memory(0, 0x10000)
        ram.write(0x1000, code)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = 0x1000, 0x2
        vcpu.set_regs(regs)
        run = vcpu.run()
        assert run.exit_reason == ExitReason.X86_RDMSR
        assert (run.msr.index, run.msr.reason) == (0x174, k.KVM_MSR_EXIT_REASON_FILTER)
        run.msr.data = 0x1122334455667788
        run.msr.error = 0
        run = vcpu.run()
        assert run.exit_reason == ExitReason.IO and bytes(vcpu.io_data()) == b"\x88"
        regs = vcpu.get_regs()
        assert (regs.rax & 0xFFFFFFFF, regs.rdx & 0xFFFFFFFF) == (0x55667788, 0x11223344)
