"""Basic exit reasons (SDM Vol.3C Appendix C, "VMX Basic Exit Reasons", Table C-1) and the
exit-reason field layout (SDM Vol.3C 25.9.1, "Basic VM-Exit Information", Table 25-17).

The exit-reason field (0x4402) holds the basic reason in bits 15:0 plus flags:
bit 27 enclave mode, bit 28 pending MTF VM exit, bit 29 VM exit from VMX root
operation (SMM), bit 31 VM-entry failure.
"""

from __future__ import annotations

import enum

BASIC_REASON_MASK = 0xFFFF
ENCLAVE_MODE = 1 << 27
PENDING_MTF_VM_EXIT = 1 << 28
VM_EXIT_FROM_VMX_ROOT_OPERATION = 1 << 29
VM_ENTRY_FAILURE = 1 << 31


class ExitReason(enum.IntEnum):
    """SDM Vol.3C Appendix C, Table C-1 (0-69; names in the manual's words)."""

    EXCEPTION_OR_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    START_UP_IPI = 4
    IO_SMI = 5
    OTHER_SMI = 6
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CONTROL_REGISTER_ACCESS = 28
    MOV_DR = 29
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    VM_ENTRY_FAILURE_INVALID_GUEST_STATE = 33
    VM_ENTRY_FAILURE_MSR_LOADING = 34
    MWAIT = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR = 39
    PAUSE = 40
    VM_ENTRY_FAILURE_MACHINE_CHECK_EVENT = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    VIRTUALIZED_EOI = 45
    ACCESS_TO_GDTR_OR_IDTR = 46
    ACCESS_TO_LDTR_OR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIGURATION = 49
    INVEPT = 50
    RDTSCP = 51
    VMX_PREEMPTION_TIMER_EXPIRED = 52
    INVVPID = 53
    WBINVD_OR_WBNOINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PAGE_MODIFICATION_LOG_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    PCONFIG = 65
    SPP_RELATED_EVENT = 66
    UMWAIT = 67
    TPAUSE = 68
    LOADIWKEY = 69

    @property
    def title(self) -> str:
        """The reason as the manual writes it, e.g. "I/O instruction" (for reports)."""
        return TITLES.get(self, self.name.replace("_", " ").capitalize())


TITLES = {
    ExitReason.EXCEPTION_OR_NMI: "Exception or non-maskable interrupt (NMI)",
    ExitReason.IO_INSTRUCTION: "I/O instruction",
    ExitReason.CONTROL_REGISTER_ACCESS: "Control-register accesses",
    ExitReason.MOV_DR: "MOV DR",
    ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE: "VM-entry failure due to invalid guest state",
    ExitReason.VM_ENTRY_FAILURE_MSR_LOADING: "VM-entry failure due to MSR loading",
    ExitReason.ACCESS_TO_GDTR_OR_IDTR: "Access to GDTR or IDTR (LGDT, LIDT, SGDT, SIDT)",
    ExitReason.ACCESS_TO_LDTR_OR_TR: "Access to LDTR or TR (LLDT, LTR, SLDT, STR)",
    ExitReason.EPT_VIOLATION: "EPT violation",
    ExitReason.EPT_MISCONFIGURATION: "EPT misconfiguration",
    ExitReason.VMX_PREEMPTION_TIMER_EXPIRED: "VMX-preemption timer expired",
    ExitReason.WBINVD_OR_WBNOINVD: "WBINVD or WBNOINVD",
}


def describe(raw: int) -> str:
    """``"30 IO_INSTRUCTION"``, with ``(VM-entry failure)`` when bit 31 is set."""
    basic = raw & BASIC_REASON_MASK
    try:
        name = ExitReason(basic).name
    except ValueError:
        name = "unknown"
    suffix = " (VM-entry failure)" if raw & VM_ENTRY_FAILURE else ""
    return f"{basic} {name}{suffix}"
