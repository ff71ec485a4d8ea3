"""The modelled CPU's identity: CPUID leaves and the model-specific registers it implements.

The feature bits say exactly what the software CPU implements (SDM Vol.2 CPUID,
Table 3-10/3-11): no FPU, MMX or SSE; PSE, PAE with NX, PGE, TSC, MSR,
CMPXCHG8B, CMOV, SYSENTER.  VMX is reported (CPUID.1:ECX[5]) only to a guest
running under vmxlab's VMM, whose CPUID table is the VMM's choice -- the CPU
itself never executes x86 code in VMX root operation.
"""

from __future__ import annotations

# CPUID.1:EDX feature bits (SDM Vol.2 Table 3-11)
EDX_FPU = 1 << 0
EDX_DE = 1 << 2
EDX_PSE = 1 << 3
EDX_TSC = 1 << 4
EDX_MSR = 1 << 5
EDX_PAE = 1 << 6
EDX_CX8 = 1 << 8
EDX_SEP = 1 << 11
EDX_PGE = 1 << 13
EDX_CMOV = 1 << 15
# CPUID.1:ECX (SDM Vol.2 Table 3-10)
ECX_VMX = 1 << 5
ECX_HYPERVISOR = 1 << 31
# CPUID.80000001H:EDX
EXT_EDX_NX = 1 << 20

FAMILY_MODEL_STEPPING = 0x00000633  # family 6, model 3, stepping 3 (a P6-class part)
FEATURES_EDX = EDX_DE | EDX_PSE | EDX_TSC | EDX_MSR | EDX_PAE | EDX_CX8 | EDX_SEP | EDX_PGE | EDX_CMOV


def _regs(text: str) -> tuple[int, ...]:
    raw = text.encode("ascii")
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4))


_VENDOR = _regs("GenuineIntel")  # EBX, EDX, ECX order below
_BRAND = _regs("vmxlab software CPU (Python)".ljust(48, "\0"))


def default_table() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """(leaf, subleaf) -> (EAX, EBX, ECX, EDX).  Subleaf 0 for leaves without subleaves."""
    return {
        (0, 0): (1, _VENDOR[0], _VENDOR[2], _VENDOR[1]),
        (1, 0): (FAMILY_MODEL_STEPPING, 0, 0, FEATURES_EDX),
        (0x80000000, 0): (0x80000008, 0, 0, 0),
        (0x80000001, 0): (0, 0, 0, EXT_EDX_NX),
        (0x80000002, 0): _BRAND[0:4],
        (0x80000003, 0): _BRAND[4:8],
        (0x80000004, 0): _BRAND[8:12],
        (0x80000008, 0): (36 | 32 << 8, 0, 0, 0),  # MAXPHYADDR 36, linear-address width 32
    }


def lookup(table: dict, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """CPUID semantics for leaves beyond the maximum: the highest basic leaf's data (SDM Vol.2 CPUID)."""
    if (leaf, subleaf) in table:
        return table[(leaf, subleaf)]
    if (leaf, 0) in table:
        return table[(leaf, 0)]
    max_basic = table[(0, 0)][0]
    return table.get((max_basic, 0), (0, 0, 0, 0))


# Model-specific registers (SDM Vol.4)
MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_FEATURE_CONTROL = 0x3A
MSR_SYSENTER_CS = 0x174
MSR_SYSENTER_ESP = 0x175
MSR_SYSENTER_EIP = 0x176
MSR_MISC_ENABLE = 0x1A0
MSR_EFER = 0xC0000080

MSR_NAMES = {
    MSR_TSC: "IA32_TIME_STAMP_COUNTER", MSR_APIC_BASE: "IA32_APIC_BASE", MSR_FEATURE_CONTROL: "IA32_FEATURE_CONTROL",
    MSR_SYSENTER_CS: "IA32_SYSENTER_CS", MSR_SYSENTER_ESP: "IA32_SYSENTER_ESP",
    MSR_SYSENTER_EIP: "IA32_SYSENTER_EIP", MSR_MISC_ENABLE: "IA32_MISC_ENABLE", MSR_EFER: "IA32_EFER",
}

#: reset values (SDM Vol.3A 10.1.1 Table 10-1; APIC base: default 0xFEE00000, BSP bit 8, enabled bit 11)
MSR_RESET = {
    MSR_APIC_BASE: 0xFEE00900,
    MSR_FEATURE_CONTROL: 0,
    MSR_SYSENTER_CS: 0,
    MSR_SYSENTER_ESP: 0,
    MSR_SYSENTER_EIP: 0,
    MSR_MISC_ENABLE: 1,  # fast strings
    MSR_EFER: 0,
}

#: bits software may set; a write with any other bit set is #GP(0) (SDM Vol.4 per MSR)
MSR_WRITABLE = {
    MSR_APIC_BASE: 0xFFFFF900,  # base, global enable, BSP (read-only in hardware; kept writable-as-is)
    MSR_FEATURE_CONTROL: 0x7,  # lock, VMX in SMX, VMX outside SMX
    MSR_SYSENTER_CS: 0xFFFFFFFF,
    MSR_SYSENTER_ESP: 0xFFFFFFFF,
    MSR_SYSENTER_EIP: 0xFFFFFFFF,
    MSR_MISC_ENABLE: 0x1,
    MSR_EFER: 1 << 11,  # NXE only: no long mode, no SYSCALL on this model
}
