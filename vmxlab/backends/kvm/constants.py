"""KVM ioctl numbers, capabilities and exit reasons (``<linux/kvm.h>``, Documentation/virt/kvm/api.rst).

The ioctl numbers are *computed* with the kernel's ``_IO``/``_IOR``/``_IOW``/``_IOWR``
macros (``include/uapi/asm-generic/ioctl.h``) from the ctypes struct sizes, as the
header does, rather than copied: a wrong struct size then shows up as a wrong
ioctl number too.  tests/test_kvm_abi.py checks every value against the numbers
verified on the development machines (../shared/reference/kvm.md §3) and, where
gcc and the header exist, against the header itself.  (Published Python snippets
get some of these wrong, e.g. KVM_EXIT_X86_RDMSR, kvm.md §1.)
"""

from __future__ import annotations

import enum
from ctypes import sizeof

from . import structs as s

# include/uapi/asm-generic/ioctl.h (x86 uses the generic layout)
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << _IOC_DIRSHIFT | KVMIO << _IOC_TYPESHIFT | nr << _IOC_NRSHIFT | size << _IOC_SIZESHIFT


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# -- system ioctls (on the /dev/kvm fd) --------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, sizeof(s.KvmMsrList))
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, sizeof(s.KvmCpuid2))

# -- VM ioctls -----------------------------------------------------------------------------------
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, sizeof(s.KvmUserspaceMemoryRegion))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)  # __u64
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, sizeof(s.KvmIrqLevel))
KVM_IRQ_LINE_STATUS = _iowr(0x67, sizeof(s.KvmIrqLevel))
KVM_SET_GSI_ROUTING = _iow(0x6A, sizeof(s.KvmIrqRouting))
KVM_IRQFD = _iow(0x76, sizeof(s.KvmIrqfd))
KVM_CREATE_PIT2 = _iow(0x77, sizeof(s.KvmPitConfig))
KVM_IOEVENTFD = _iow(0x79, sizeof(s.KvmIoeventfd))
KVM_SET_CLOCK = _iow(0x7B, sizeof(s.KvmClockData))
KVM_GET_CLOCK = _ior(0x7C, sizeof(s.KvmClockData))
KVM_ENABLE_CAP = _iow(0xA3, sizeof(s.KvmEnableCap))  # also a vCPU ioctl
KVM_SIGNAL_MSI = _iow(0xA5, sizeof(s.KvmMsi))
KVM_X86_SET_MSR_FILTER = _iow(0xC6, sizeof(s.KvmMsrFilter))

# -- vCPU ioctls ---------------------------------------------------------------------------------
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, sizeof(s.KvmRegs))
KVM_SET_REGS = _iow(0x82, sizeof(s.KvmRegs))
KVM_GET_SREGS = _ior(0x83, sizeof(s.KvmSregs))
KVM_SET_SREGS = _iow(0x84, sizeof(s.KvmSregs))
KVM_TRANSLATE = _iowr(0x85, sizeof(s.KvmTranslation))
KVM_INTERRUPT = _iow(0x86, sizeof(s.KvmInterrupt))
KVM_GET_MSRS = _iowr(0x88, sizeof(s.KvmMsrs))
KVM_SET_MSRS = _iow(0x89, sizeof(s.KvmMsrs))
KVM_GET_FPU = _ior(0x8C, sizeof(s.KvmFpu))
KVM_SET_FPU = _iow(0x8D, sizeof(s.KvmFpu))
KVM_GET_LAPIC = _ior(0x8E, sizeof(s.KvmLapicState))
KVM_SET_LAPIC = _iow(0x8F, sizeof(s.KvmLapicState))
KVM_SET_CPUID2 = _iow(0x90, sizeof(s.KvmCpuid2))
KVM_GET_CPUID2 = _iowr(0x91, sizeof(s.KvmCpuid2))
KVM_SET_GUEST_DEBUG = _iow(0x9B, sizeof(s.KvmGuestDebug))
KVM_GET_MP_STATE = _ior(0x98, 4)  # struct kvm_mp_state { __u32 mp_state; }
KVM_GET_VCPU_EVENTS = _ior(0x9F, sizeof(s.KvmVcpuEvents))
KVM_GET_XSAVE = _ior(0xA4, sizeof(s.KvmXsave))
KVM_SET_XSAVE = _iow(0xA5, sizeof(s.KvmXsave))
KVM_SET_VCPU_EVENTS = _iow(0xA0, sizeof(s.KvmVcpuEvents))

KVM_API_VERSION = 12  # the only stable API version (api.rst 4.1)

#: every ioctl above by name (tests compare them with the header and with kvm.md §3)
IOCTLS: dict[str, int] = {k: v for k, v in globals().items() if k.startswith(("KVM_", "KVM_X86_"))
                          and k not in ("KVM_API_VERSION",) and isinstance(v, int)}
IOCTL_NAMES: dict[int, str] = {v: k for k, v in IOCTLS.items()}


class Cap(enum.IntEnum):
    """KVM_CHECK_EXTENSION capability numbers (``KVM_CAP_*``)."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    IRQ_ROUTING = 25
    SET_GUEST_DEBUG = 23
    IRQFD = 32
    PIT2 = 33
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    VCPU_EVENTS = 41
    INTERNAL_ERROR_DATA = 40
    READONLY_MEM = 81
    SYNC_REGS = 74
    MAX_VCPUS = 66
    SPLIT_IRQCHIP = 121
    X2APIC_API = 129
    IMMEDIATE_EXIT = 136
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189


class ExitReason(enum.IntEnum):
    """``kvm_run.exit_reason`` (``KVM_EXIT_*``)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    X86_BUS_LOCK = 33
    NOTIFY = 37


# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# kvm_run.msr.reason (and KVM_ENABLE_CAP args[0] for KVM_CAP_X86_USER_SPACE_MSR)
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

# kvm_msr_filter.flags and kvm_msr_filter_range.flags
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1

# kvm_guest_debug.control
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000

# kvm_pit_config.flags
KVM_PIT_SPEAKER_DUMMY = 1

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# kvm_run.kvm_valid_regs / kvm_dirty_regs with KVM_CAP_SYNC_REGS (api.rst 6.x "kvm_run.s.regs"):
# which parts of struct kvm_sync_regs KVM copies out on every exit / reads back on the next KVM_RUN
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

# struct kvm_mp_state (api.rst 4.38 KVM_GET_MP_STATE)
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

# kvm_vcpu_events.flags (which optional fields are valid on SET)
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008
KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020
