"""VMX control bits by name (SDM Vol.3C 25.6 "VM-Execution Control Fields", 25.7 "VM-Exit Control
Fields", 25.8 "VM-Entry Control Fields"; older editions: 24.6-24.8).

One IntFlag per 32-bit control field, named as the manual names the bits, so a
hypervisor reads ``PRIMARY_PROC_BASED_CTLS.HLT_EXITING`` rather than ``1 << 7``.
Every architecturally defined bit is listed, implemented or not; which ones
this model lets software set is decided by the capability MSRs in
:mod:`vmxlab.vmx.capabilities` ("allowed-1" bits), and VM entry enforces it
(SDM Vol.3C 27.2.1.1).
"""

from __future__ import annotations

import enum
import types


class PIN_BASED_CTLS(enum.IntFlag):  # noqa: N801 - the manual's name
    """Pin-based VM-execution controls, field 0x4000 (SDM Vol.3C 25.6.1, Table 25-5)."""

    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    ACTIVATE_VMX_PREEMPTION_TIMER = 1 << 6
    PROCESS_POSTED_INTERRUPTS = 1 << 7


class PRIMARY_PROC_BASED_CTLS(enum.IntFlag):  # noqa: N801
    """Primary processor-based VM-execution controls, field 0x4002 (SDM Vol.3C 25.6.2, Table 25-6)."""

    INTERRUPT_WINDOW_EXITING = 1 << 2
    USE_TSC_OFFSETTING = 1 << 3
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    MWAIT_EXITING = 1 << 10
    RDPMC_EXITING = 1 << 11
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    ACTIVATE_TERTIARY_CONTROLS = 1 << 17
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    USE_TPR_SHADOW = 1 << 21
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    MONITOR_EXITING = 1 << 29
    PAUSE_EXITING = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SECONDARY_PROC_BASED_CTLS(enum.IntFlag):  # noqa: N801
    """Secondary processor-based VM-execution controls, field 0x401E (SDM Vol.3C 25.6.2, Table 25-7)."""

    VIRTUALIZE_APIC_ACCESSES = 1 << 0
    ENABLE_EPT = 1 << 1
    DESCRIPTOR_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    VIRTUALIZE_X2APIC_MODE = 1 << 4
    ENABLE_VPID = 1 << 5
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7
    APIC_REGISTER_VIRTUALIZATION = 1 << 8
    VIRTUAL_INTERRUPT_DELIVERY = 1 << 9
    PAUSE_LOOP_EXITING = 1 << 10
    RDRAND_EXITING = 1 << 11
    ENABLE_INVPCID = 1 << 12
    ENABLE_VM_FUNCTIONS = 1 << 13
    VMCS_SHADOWING = 1 << 14
    ENABLE_ENCLS_EXITING = 1 << 15
    RDSEED_EXITING = 1 << 16
    ENABLE_PML = 1 << 17
    EPT_VIOLATION_VE = 1 << 18
    CONCEAL_VMX_FROM_PT = 1 << 19
    ENABLE_XSAVES_XRSTORS = 1 << 20
    MODE_BASED_EXECUTE_CONTROL_FOR_EPT = 1 << 22
    USE_TSC_SCALING = 1 << 25


class VM_EXIT_CTLS(enum.IntFlag):  # noqa: N801
    """VM-exit controls, field 0x400C (SDM Vol.3C 25.7.1, Table 25-13)."""

    SAVE_DEBUG_CONTROLS = 1 << 2
    HOST_ADDRESS_SPACE_SIZE = 1 << 9
    LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12
    ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15
    SAVE_IA32_PAT = 1 << 18
    LOAD_IA32_PAT = 1 << 19
    SAVE_IA32_EFER = 1 << 20
    LOAD_IA32_EFER = 1 << 21
    SAVE_VMX_PREEMPTION_TIMER_VALUE = 1 << 22


class VM_ENTRY_CTLS(enum.IntFlag):  # noqa: N801
    """VM-entry controls, field 0x4012 (SDM Vol.3C 25.8.1, Table 25-15)."""

    LOAD_DEBUG_CONTROLS = 1 << 2
    IA32E_MODE_GUEST = 1 << 9
    ENTRY_TO_SMM = 1 << 10
    DEACTIVATE_DUAL_MONITOR_TREATMENT = 1 << 11
    LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13
    LOAD_IA32_PAT = 1 << 14
    LOAD_IA32_EFER = 1 << 15


#: the control fields in the order VM entry checks them, with the IntFlag naming their bits
CONTROL_FLAGS = {
    "pin-based": PIN_BASED_CTLS,
    "primary processor-based": PRIMARY_PROC_BASED_CTLS,
    "secondary processor-based": SECONDARY_PROC_BASED_CTLS,
    "VM-exit": VM_EXIT_CTLS,
    "VM-entry": VM_ENTRY_CTLS,
}


def bit_names(flag_type: type[enum.IntFlag], value: int) -> list[str]:
    """Names of the bits set in ``value``; unnamed bits as ``bit N`` (for error messages)."""
    names = []
    for bit in range(32):
        if value >> bit & 1:
            try:
                names.append(flag_type(1 << bit).name or f"bit {bit}")
            except ValueError:
                names.append(f"bit {bit}")
    return names


def bits(flag: type[enum.IntFlag]) -> types.SimpleNamespace:
    """The members of a control IntFlag as plain ints under the same names, for the VM entry/exit hot
    path: ``int & IntFlag`` runs enum's Python-level ``__and__`` and builds a new flag object (about a
    microsecond each, ~20 per VM-exit round trip; docs/speed.md), ``int & int`` does not."""
    return types.SimpleNamespace(**{name: int(m) for name, m in flag.__members__.items()})
