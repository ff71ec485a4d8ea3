"""The KVM ABI structures as ctypes types (``<linux/kvm.h>``, ``<asm/kvm.h>``, x86-64).

Field names and order are the kernel's, so a reader can check each struct against
the header (Documentation/virt/kvm/api.rst describes what each field means).  The
sizes and offsets are checked in tests/test_kvm_abi.py by compiling a small C
program against the installed ``<linux/kvm.h>``; the expected sizes are also
listed in the docstrings (verified values from ../shared/reference/kvm.md §3.1).

Flexible array members (``kvm_cpuid2.entries[]``, ``kvm_msrs.entries[]``) are
not ctypes fields: :func:`cpuid2_type` and :func:`msrs_type` build a struct type
with a fixed number of entries, the way C callers allocate ``sizeof(header) +
n * sizeof(entry)``.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    Structure,
    Union,
    c_char,
    c_int32,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
    sizeof,
)

u8, u16, u32, u64 = c_uint8, c_uint16, c_uint32, c_uint64


class KvmRegs(Structure):
    """``struct kvm_regs`` (144 bytes): the general-purpose registers, RIP and RFLAGS."""

    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class KvmSegment(Structure):
    """``struct kvm_segment`` (24 bytes): a segment register with its hidden part unpacked.

    ``type`` is the 4-bit descriptor type, ``s`` the code/data bit, ``db``/``l``/``g``
    the flags nibble (SDM Vol.3A 3.4.5).
    """

    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
        ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8), ("unusable", u8),
        ("padding", u8),
    ]


class KvmDtable(Structure):
    """``struct kvm_dtable`` (16 bytes): GDTR / IDTR."""

    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class KvmSregs(Structure):
    """``struct kvm_sregs`` (312 bytes): segment, descriptor-table and control registers."""

    _fields_ = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64), ("efer", u64),
        ("apic_base", u64), ("interrupt_bitmap", u64 * 4),
    ]


class KvmFpu(Structure):
    """``struct kvm_fpu`` (416 bytes): x87 and SSE state in FXSAVE order."""

    _fields_ = [
        ("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
        ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32), ("pad2", u32),
    ]


# -- kvm_run and its exit union -------------------------------------------------------------------


class ExitIo(Structure):
    """KVM_EXIT_IO: the data sits in the vCPU mmap at ``data_offset`` (``count`` items of ``size``)."""

    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class ExitMmio(Structure):
    """KVM_EXIT_MMIO: for reads, fill ``data`` before the next KVM_RUN."""

    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class ExitFailEntry(Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class ExitException(Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class ExitHypercall(Structure):
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("longmode", u32), ("pad", u32)]


class ExitDebug(Structure):
    """KVM_EXIT_DEBUG: ``struct kvm_debug_exit_arch`` (x86)."""

    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class ExitInternal(Structure):
    """KVM_EXIT_INTERNAL_ERROR.  For suberror KVM_INTERNAL_ERROR_EMULATION the same bytes are
    ``struct emulation_failure``: data[0] = flags, then u8 insn_size and 15 instruction bytes."""

    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class ExitEmulationFailure(Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("flags", u64), ("insn_size", u8),
                ("insn_bytes", u8 * 15)]


class ExitSystemEvent(Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class ExitMsr(Structure):
    """KVM_EXIT_X86_RDMSR / WRMSR: set ``error`` = 1 to inject #GP; fill ``data`` for RDMSR."""

    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class ExitUnknown(Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class KvmRunExit(Union):
    """The 256-byte exit union of ``struct kvm_run`` (only the x86 members)."""

    _fields_ = [
        ("hw", ExitUnknown), ("fail_entry", ExitFailEntry), ("ex", ExitException), ("io", ExitIo),
        ("debug", ExitDebug), ("mmio", ExitMmio), ("hypercall", ExitHypercall),
        ("internal", ExitInternal), ("emulation_failure", ExitEmulationFailure),
        ("system_event", ExitSystemEvent), ("msr", ExitMsr), ("padding", c_char * 256),
    ]


class KvmRun(Structure):
    """``struct kvm_run`` (2352 bytes; the vCPU mmap is larger: KVM_GET_VCPU_MMAP_SIZE).

    The exit union is anonymous in C; here it is ``exit`` and its members are also
    reachable directly (``run.io.port``) through ``_anonymous_``.
    """

    _anonymous_ = ("exit",)
    _fields_ = [
        ("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
        ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8), ("flags", u16),
        ("cr8", u64), ("apic_base", u64),
        ("exit", KvmRunExit),
        ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s", c_char * 2048),
    ]


# -- VM and vCPU set-up ---------------------------------------------------------------------------


class KvmUserspaceMemoryRegion(Structure):
    """``struct kvm_userspace_memory_region`` (32 bytes)."""

    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


class KvmCpuidEntry2(Structure):
    """``struct kvm_cpuid_entry2`` (40 bytes)."""

    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class KvmCpuid2(Structure):
    """The 8-byte header of ``struct kvm_cpuid2``; entries follow (see :func:`cpuid2_type`)."""

    _fields_ = [("nent", u32), ("padding", u32)]


class KvmMsrEntry(Structure):
    """``struct kvm_msr_entry`` (16 bytes)."""

    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class KvmMsrs(Structure):
    """The 8-byte header of ``struct kvm_msrs``; entries follow (see :func:`msrs_type`)."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


class KvmMsrList(Structure):
    """The 4-byte header of ``struct kvm_msr_list`` (KVM_GET_MSR_INDEX_LIST)."""

    _fields_ = [("nmsrs", u32)]


class _IrqOrStatus(Union):
    _fields_ = [("irq", u32), ("status", c_int32)]


class KvmIrqLevel(Structure):
    """``struct kvm_irq_level`` (8 bytes); ``irq`` on input, ``status`` for KVM_IRQ_LINE_STATUS."""

    _anonymous_ = ("u",)
    _fields_ = [("u", _IrqOrStatus), ("level", u32)]


class KvmPitConfig(Structure):
    """``struct kvm_pit_config`` (64 bytes) for KVM_CREATE_PIT2."""

    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class KvmMsrFilterRange(Structure):
    """``struct kvm_msr_filter_range`` (24 bytes): ``bitmap`` points at nmsrs bits; 1 = allow."""

    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", c_void_p)]


KVM_MSR_FILTER_MAX_RANGES = 16


class KvmMsrFilter(Structure):
    """``struct kvm_msr_filter`` (392 bytes) for KVM_X86_SET_MSR_FILTER."""

    _fields_ = [("flags", u32), ("ranges", KvmMsrFilterRange * KVM_MSR_FILTER_MAX_RANGES)]


class KvmEnableCap(Structure):
    """``struct kvm_enable_cap`` (104 bytes)."""

    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class KvmGuestDebug(Structure):
    """``struct kvm_guest_debug`` (72 bytes); ``debugreg`` is ``struct kvm_guest_debug_arch``
    (DR0-DR3, then DR6 at [6] and DR7 at [7])."""

    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class _EvException(Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _EvInterrupt(Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _EvNmi(Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _EvSmi(Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _EvTripleFault(Structure):
    _fields_ = [("pending", u8)]


class KvmVcpuEvents(Structure):
    """``struct kvm_vcpu_events`` (64 bytes): pending/injected exception, interrupt, NMI, SMI."""

    _fields_ = [
        ("exception", _EvException), ("interrupt", _EvInterrupt), ("nmi", _EvNmi),
        ("sipi_vector", u32), ("flags", u32), ("smi", _EvSmi), ("triple_fault", _EvTripleFault),
        ("reserved", u8 * 26), ("exception_has_payload", u8), ("exception_payload", u64),
    ]


class KvmSyncRegs(Structure):
    """``struct kvm_sync_regs`` (x86): ``kvm_run.s.regs`` at offset 304 of the vCPU mapping.

    With KVM_CAP_SYNC_REGS, KVM copies the parts named in ``kvm_run.kvm_valid_regs``
    here on every exit and loads the parts named in ``kvm_dirty_regs`` on the next
    KVM_RUN (api.rst, "kvm_run.s").  Why it matters here: on the PVM hosts a
    KVM_GET_REGS or KVM_SET_REGS ioctl costs ~10 µs, as much as a whole exit, while
    the synced copy costs nothing measurable.
    """

    _fields_ = [("regs", KvmRegs), ("sregs", KvmSregs), ("events", KvmVcpuEvents)]


#: offset of ``kvm_run.s`` in the vCPU mapping (kvm.md §3.2)
KVM_SYNC_REGS_OFFSET = 304


class KvmXsave(Structure):
    """``struct kvm_xsave`` (4096 bytes): the vCPU's XSAVE image (SDM Vol.1 13.4 "XSAVE Area": the
    legacy FXSAVE region -- FCW @0, FSW @2, MXCSR @24, XMM0-15 @160 -- then the XSAVE header with
    XSTATE_BV @512).  Why it is needed besides ``kvm_fpu``: on the hosts here KVM_GET_FPU reads
    MXCSR as 0 and KVM_SET_FPU ignores it, while the XSAVE image carries it (measured)."""

    _fields_ = [("region", u8 * 4096)]


class KvmLapicState(Structure):
    """``struct kvm_lapic_state`` (1024 bytes): the local APIC register page (SDM Vol.3A 11.4.1)."""

    _fields_ = [("regs", c_char * 1024)]


class KvmTranslation(Structure):
    """``struct kvm_translation`` (24 bytes) for KVM_TRANSLATE."""

    _fields_ = [("linear_address", u64), ("physical_address", u64), ("valid", u8), ("writeable", u8),
                ("usermode", u8), ("pad", u8 * 5)]


class KvmInterrupt(Structure):
    """``struct kvm_interrupt`` (4 bytes) for KVM_INTERRUPT (no in-kernel irqchip)."""

    _fields_ = [("irq", u32)]


class KvmIrqfd(Structure):
    """``struct kvm_irqfd`` (32 bytes)."""

    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class KvmIoeventfd(Structure):
    """``struct kvm_ioeventfd`` (64 bytes)."""

    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", c_int32), ("flags", u32),
                ("pad", u8 * 36)]


class KvmClockData(Structure):
    """``struct kvm_clock_data`` (48 bytes)."""

    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64), ("host_tsc", u64),
                ("pad", u32 * 4)]


class KvmMsi(Structure):
    """``struct kvm_msi`` (32 bytes) for KVM_SIGNAL_MSI."""

    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32),
                ("pad", u8 * 12)]


class KvmIrqRouting(Structure):
    """The 8-byte header of ``struct kvm_irq_routing`` (entries follow)."""

    _fields_ = [("nr", u32), ("flags", u32)]


# -- variable-length structs ----------------------------------------------------------------------

_cpuid_types: dict[int, type[Structure]] = {}
_msrs_types: dict[int, type[Structure]] = {}


def cpuid2_type(n: int) -> type[Structure]:
    """``struct kvm_cpuid2`` with room for ``n`` entries."""
    t = _cpuid_types.get(n)
    if t is None:
        t = type(f"KvmCpuid2_{n}", (Structure,), {
            "_fields_": [("nent", u32), ("padding", u32), ("entries", KvmCpuidEntry2 * n)]})
        _cpuid_types[n] = t
    return t


def msrs_type(n: int) -> type[Structure]:
    """``struct kvm_msrs`` with room for ``n`` entries."""
    t = _msrs_types.get(n)
    if t is None:
        t = type(f"KvmMsrs_{n}", (Structure,), {
            "_fields_": [("nmsrs", u32), ("pad", u32), ("entries", KvmMsrEntry * n)]})
        _msrs_types[n] = t
    return t


def msr_list_type(n: int) -> type[Structure]:
    """``struct kvm_msr_list`` with room for ``n`` indices."""
    return type(f"KvmMsrList_{n}", (Structure,), {"_fields_": [("nmsrs", u32), ("indices", u32 * n)]})


#: name in <linux/kvm.h> -> ctypes type, for the ABI test and for documentation
ABI_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "kvm_regs": KvmRegs,
    "kvm_sregs": KvmSregs,
    "kvm_segment": KvmSegment,
    "kvm_dtable": KvmDtable,
    "kvm_fpu": KvmFpu,
    "kvm_run": KvmRun,
    "kvm_userspace_memory_region": KvmUserspaceMemoryRegion,
    "kvm_cpuid2": KvmCpuid2,
    "kvm_cpuid_entry2": KvmCpuidEntry2,
    "kvm_msrs": KvmMsrs,
    "kvm_msr_entry": KvmMsrEntry,
    "kvm_msr_list": KvmMsrList,
    "kvm_irq_level": KvmIrqLevel,
    "kvm_pit_config": KvmPitConfig,
    "kvm_msr_filter": KvmMsrFilter,
    "kvm_msr_filter_range": KvmMsrFilterRange,
    "kvm_enable_cap": KvmEnableCap,
    "kvm_guest_debug": KvmGuestDebug,
    "kvm_vcpu_events": KvmVcpuEvents,
    "kvm_lapic_state": KvmLapicState,
    "kvm_sync_regs": KvmSyncRegs,
    "kvm_xsave": KvmXsave,
    "kvm_translation": KvmTranslation,
    "kvm_interrupt": KvmInterrupt,
    "kvm_irqfd": KvmIrqfd,
    "kvm_ioeventfd": KvmIoeventfd,
    "kvm_clock_data": KvmClockData,
    "kvm_msi": KvmMsi,
    "kvm_irq_routing": KvmIrqRouting,
}

__all__ = [name for name in dir() if name.startswith(("Kvm", "Exit"))] + [
    "ABI_STRUCTS", "KVM_MSR_FILTER_MAX_RANGES", "KVM_SYNC_REGS_OFFSET", "cpuid2_type", "msrs_type",
    "msr_list_type", "sizeof"]
