"""The two VMX transitions as state copies between the VMCS and the CPU.

* :func:`load_guest_state` -- VM entry, SDM Vol.3C 27.3.2 "Loading Guest State"
  (after the checks of :mod:`vmxlab.vmx.entry_checks` passed), and 27.4
  "Loading MSRs" (:func:`load_msr_list`).
* :func:`save_guest_state` -- VM exit, SDM Vol.3C 28.3 "Saving Guest State";
  28.4 "Saving MSRs".
* :func:`load_host_state` -- VM exit, SDM Vol.3C 28.5 "Loading Host State";
  28.6 "Loading MSRs".

The CPU's segment registers already keep their hidden parts in the VMX
access-rights format (cpu/state.py), so segments copy without conversion.
Interruptibility maps onto the CPU's STI/MOV-SS shadow (``shadow_until``,
``inhibit_pending``) and NMI blocking (``nmi_blocked``); the HLT activity
state onto ``cpu.halted``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cpu.cpuid import MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP
from ..cpu.faults import CpuFault
from ..cpu.flags import IF, RESERVED1
from ..cpu.ops.system import CR0_DEFINED, read_msr, write_msr
from ..cpu.paging import PDPTE_RESERVED, load_pdptes
from ..cpu.state import (
    AR_CODE,
    AR_DB,
    AR_G,
    AR_P,
    AR_READABLE,
    AR_S,
    AR_UNUSABLE,
    AR_WRITABLE,
    CR0_CD,
    CR0_ET,
    CR0_NW,
    CR0_PG,
    CR4_PAE,
    ESP,
)
from .controls import SECONDARY_PROC_BASED_CTLS, VM_ENTRY_CTLS, VM_EXIT_CTLS, bits
from .fields import (
    GUEST_ACCESS_RIGHTS,
    GUEST_BASE,
    GUEST_LIMIT,
    GUEST_PDPTE,
    GUEST_SELECTOR,
    HOST_SELECTOR,
    VmcsField,
)
from .guest_state import ActivityState, Interruptibility

if TYPE_CHECKING:
    from ..cpu.core import CPU
    from .vmcs import Vmcs

ENTRY = bits(VM_ENTRY_CTLS)
EXIT = bits(VM_EXIT_CTLS)
SECONDARY = bits(SECONDARY_PROC_BASED_CTLS)

F = VmcsField
LDTR, TR = 6, 7
#: access-rights bits VM exit stores: type S DPL P AVL L D/B G unusable (reserved 11:8, 31:17 as 0)
AR_SAVED = 0x1F0FF
#: DR7 bits software can set; bit 10 reads as 1 (SDM Vol.3A 18.2.4)
DR7_WRITABLE = 0xFFFF2BFF
DR7_FIXED1 = 0x400
DR7_AFTER_VM_EXIT = 0x400  # SDM Vol.3C 28.5.1: "DR7 is set to 400H"
#: CR0 bits VM exit does not load from the host CR0 field (SDM Vol.3C 28.5.1): ET, NW, CD
CR0_KEPT_ON_VM_EXIT = CR0_ET | CR0_NW | CR0_CD
RFLAGS_AFTER_VM_EXIT = RESERVED1  # SDM Vol.3C 28.5.3: RFLAGS cleared except bit 1
HOST_FLAT_LIMIT = 0xFFFFFFFF
HOST_TR_LIMIT = 0x67
HOST_CODE_AR = AR_P | AR_S | AR_CODE | AR_READABLE | 1 | AR_DB | AR_G  # type 11, DPL 0, 32-bit, 4 GiB
HOST_DATA_AR = AR_P | AR_S | AR_WRITABLE | 1 | AR_DB | AR_G  # type 3
HOST_TR_AR = AR_P | 0xB  # busy 32-bit TSS
HOST_GDTR_IDTR_LIMIT = 0xFFFF

# VMX-abort indicators (SDM Vol.3C 28.7, "VMX Aborts")
ABORT_SAVING_GUEST_MSRS = 1
ABORT_HOST_PDPTES = 2
ABORT_LOADING_HOST_MSRS = 4

# MSR areas (SDM Vol.3C 25.7.2, Table 25-15 "Format of an MSR Entry")
MSR_ENTRY_SIZE = 16
X2APIC_MSR_RANGE_HIGH = 0x8  # bits 31:8 of an x2APIC MSR index
IA32_SMM_MONITOR_CTL = 0x9B
IA32_SMBASE = 0x9E


# ======================================================================== VM entry


def load_guest_state(cpu: CPU, vmcs: Vmcs, secondary: int, injecting: bool) -> None:
    """Load the guest-state area into the CPU (SDM Vol.3C 27.3.2), checks already passed."""
    v = vmcs
    entry = v[F.VM_ENTRY_CONTROLS]
    # 27.3.2.1 control registers, debug registers, MSRs
    cpu.cr0 = (v[F.GUEST_CR0] & CR0_DEFINED) | CR0_ET  # ET is hardwired on this processor
    cpu.cr3 = v[F.GUEST_CR3]
    cpu.cr4 = v[F.GUEST_CR4]
    if entry & ENTRY.LOAD_DEBUG_CONTROLS:
        cpu.dr[7] = (v[F.GUEST_DR7] & DR7_WRITABLE) | DR7_FIXED1
    cpu.msr[MSR_SYSENTER_CS] = v[F.GUEST_IA32_SYSENTER_CS]
    cpu.msr[MSR_SYSENTER_ESP] = v[F.GUEST_IA32_SYSENTER_ESP]
    cpu.msr[MSR_SYSENTER_EIP] = v[F.GUEST_IA32_SYSENTER_EIP]
    if entry & ENTRY.LOAD_IA32_EFER:
        cpu.efer = v[F.GUEST_IA32_EFER]
    # 27.3.2.2 segment and descriptor-table registers
    for i in range(6):
        cpu.segs[i].load(v[GUEST_SELECTOR[i]], v[GUEST_BASE[i]], v[GUEST_LIMIT[i]], v[GUEST_ACCESS_RIGHTS[i]])
    cpu.ldtr.load(
        v[GUEST_SELECTOR[LDTR]], v[GUEST_BASE[LDTR]], v[GUEST_LIMIT[LDTR]], v[GUEST_ACCESS_RIGHTS[LDTR]]
    )
    cpu.tr.load(v[GUEST_SELECTOR[TR]], v[GUEST_BASE[TR]], v[GUEST_LIMIT[TR]], v[GUEST_ACCESS_RIGHTS[TR]])
    cpu.gdtr_base, cpu.gdtr_limit = v[F.GUEST_GDTR_BASE], v[F.GUEST_GDTR_LIMIT]
    cpu.idtr_base, cpu.idtr_limit = v[F.GUEST_IDTR_BASE], v[F.GUEST_IDTR_LIMIT]
    # the CPL is SS.DPL (SDM Vol.3C 27.3.2.2)
    cpu.cpl = (v[F.GUEST_SS_ACCESS_RIGHTS] >> 5) & 3
    # 27.3.2.3 RIP, RSP, RFLAGS
    cpu.regs[ESP] = v[F.GUEST_RSP]
    cpu.eip = v[F.GUEST_RIP]
    cpu.set_eflags(v[F.GUEST_RFLAGS])
    cpu.update_mode()
    cpu.tlb_flush(all_entries=True)
    # 27.3.2.4 PDPTEs: PAE paging without IA-32e mode: from the VMCS with EPT, else from guest CR3
    if cpu.cr0 & CR0_PG and cpu.cr4 & CR4_PAE:
        if secondary & SECONDARY.ENABLE_EPT:
            cpu.pdptes = [v[f] for f in GUEST_PDPTE]
        else:
            load_pdptes(cpu)  # checked already (guest_pdptes), cannot fault
    # 27.3.2.5 non-register state.  An injected event ignores blocking by STI/MOV SS and wakes from HLT
    state = v[F.GUEST_INTERRUPTIBILITY_STATE]
    cpu.inhibit_pending = False
    cpu.shadow_until = -1
    if not injecting and state & (Interruptibility.BLOCKING_BY_STI | Interruptibility.BLOCKING_BY_MOV_SS):
        cpu.shadow_until = cpu.icount  # events stay blocked until the first guest instruction retired
    cpu.nmi_blocked = bool(state & Interruptibility.BLOCKING_BY_NMI)
    cpu.halted = v[F.GUEST_ACTIVITY_STATE] == ActivityState.HLT and not injecting
    cpu.delivering = None
    cpu.event_pending = True


def load_msr_list(cpu: CPU, memory, address: int, count: int) -> int:
    """Load MSRs from an MSR-load area (SDM Vol.3C 27.4, 28.6): 0 on success, else the 1-based number
    of the entry that failed (the exit qualification of reason 34)."""
    for n in range(1, count + 1):
        lo = memory.read(address, 8)
        data = memory.read(address + 8, 8)
        address += MSR_ENTRY_SIZE
        index, reserved = lo & 0xFFFFFFFF, lo >> 32
        if reserved or index >> 8 == X2APIC_MSR_RANGE_HIGH or index in (IA32_SMM_MONITOR_CTL, IA32_SMBASE):
            return n
        try:
            write_msr(cpu, index, data)
        except CpuFault:
            return n
    return 0


def store_msr_list(cpu: CPU, memory, address: int, count: int) -> int:
    """Store MSRs into an MSR-store area (SDM Vol.3C 28.4): 0, or the failing entry's number."""
    for n in range(1, count + 1):
        lo = memory.read(address, 8)
        index, reserved = lo & 0xFFFFFFFF, lo >> 32
        if reserved or index >> 8 == X2APIC_MSR_RANGE_HIGH:
            return n
        try:
            value = read_msr(cpu, index)
        except CpuFault:
            return n
        memory.write(address + 8, 8, value)
        address += MSR_ENTRY_SIZE
    return 0


# ======================================================================== VM exit


def save_guest_state(cpu: CPU, vmcs: Vmcs, ept: bool, timer_value: int | None) -> None:
    """Save the CPU's state into the guest-state area (SDM Vol.3C 28.3)."""
    v = vmcs
    exit_ctls = v[F.VM_EXIT_CONTROLS]
    # 28.3.1 control registers, debug registers, MSRs
    v[F.GUEST_CR0] = cpu.cr0
    v[F.GUEST_CR3] = cpu.cr3
    v[F.GUEST_CR4] = cpu.cr4
    if exit_ctls & EXIT.SAVE_DEBUG_CONTROLS:
        v[F.GUEST_DR7] = cpu.dr[7]
    v[F.GUEST_IA32_SYSENTER_CS] = cpu.msr.get(MSR_SYSENTER_CS, 0)
    v[F.GUEST_IA32_SYSENTER_ESP] = cpu.msr.get(MSR_SYSENTER_ESP, 0)
    v[F.GUEST_IA32_SYSENTER_EIP] = cpu.msr.get(MSR_SYSENTER_EIP, 0)
    if exit_ctls & EXIT.SAVE_IA32_EFER:
        v[F.GUEST_IA32_EFER] = cpu.efer
    # 28.3.2 segment and descriptor-table registers (unusable = bit 16 of the access rights)
    for i in range(6):
        s = cpu.segs[i]
        v[GUEST_SELECTOR[i]], v[GUEST_BASE[i]], v[GUEST_LIMIT[i]] = s.selector, s.base, s.limit
        v[GUEST_ACCESS_RIGHTS[i]] = s.ar & AR_SAVED
    # SS.DPL is always the CPL (SDM Vol.3C 28.3.2)
    ss_ar = v[F.GUEST_SS_ACCESS_RIGHTS]
    v[F.GUEST_SS_ACCESS_RIGHTS] = (ss_ar & ~0x60) | cpu.cpl << 5
    for i, s in ((LDTR, cpu.ldtr), (TR, cpu.tr)):
        v[GUEST_SELECTOR[i]], v[GUEST_BASE[i]], v[GUEST_LIMIT[i]] = s.selector, s.base, s.limit
        v[GUEST_ACCESS_RIGHTS[i]] = s.ar & AR_SAVED
    v[F.GUEST_GDTR_BASE], v[F.GUEST_GDTR_LIMIT] = cpu.gdtr_base, cpu.gdtr_limit
    v[F.GUEST_IDTR_BASE], v[F.GUEST_IDTR_LIMIT] = cpu.idtr_base, cpu.idtr_limit
    # 28.3.3 RIP, RSP, RFLAGS
    v[F.GUEST_RIP] = cpu.eip
    v[F.GUEST_RSP] = cpu.regs[ESP]
    v[F.GUEST_RFLAGS] = cpu.get_eflags()
    # PDPTEs of a PAE guest with EPT (SDM Vol.3C 28.3.4)
    if ept and cpu.cr0 & CR0_PG and cpu.cr4 & CR4_PAE:
        for f, e in zip(GUEST_PDPTE, cpu.pdptes):
            v[f] = e
    # 28.3.4 non-register state
    v[F.GUEST_ACTIVITY_STATE] = ActivityState.HLT if cpu.halted else ActivityState.ACTIVE
    state = 0
    if cpu.inhibit_pending or cpu.icount <= cpu.shadow_until:
        # the CPU does not record which instruction opened the shadow: STI leaves IF = 1, so a shadow
        # with IF = 0 must be MOV SS / POP SS (one with IF = 1 is reported as STI blocking)
        state |= (
            Interruptibility.BLOCKING_BY_STI if cpu.eflags_sys & IF else Interruptibility.BLOCKING_BY_MOV_SS
        )
    if cpu.nmi_blocked:
        state |= Interruptibility.BLOCKING_BY_NMI
    v[F.GUEST_INTERRUPTIBILITY_STATE] = state
    v[F.GUEST_PENDING_DEBUG_EXCEPTIONS] = 0
    if timer_value is not None and exit_ctls & EXIT.SAVE_VMX_PREEMPTION_TIMER_VALUE:
        v[F.VMX_PREEMPTION_TIMER_VALUE] = timer_value


def load_host_state(cpu: CPU, vmcs: Vmcs) -> int:
    """Load the host-state area into the CPU (SDM Vol.3C 28.5).  Returns a VMX-abort indicator, or 0.

    Python is VMX root operation, so nothing executes this state; it is
    loaded anyway so the CPU's state after a VM exit is what the SDM says, and
    so a nested hypervisor's host state is right."""
    v = vmcs
    exit_ctls = v[F.VM_EXIT_CONTROLS]
    # 28.5.1 control registers, debug registers, MSRs
    cpu.cr0 = (v[F.HOST_CR0] & ~CR0_KEPT_ON_VM_EXIT & CR0_DEFINED) | (cpu.cr0 & CR0_KEPT_ON_VM_EXIT) | CR0_ET
    cpu.cr3 = v[F.HOST_CR3]
    cpu.cr4 = v[F.HOST_CR4]
    cpu.dr[7] = DR7_AFTER_VM_EXIT
    cpu.msr[MSR_SYSENTER_CS] = v[F.HOST_IA32_SYSENTER_CS]
    cpu.msr[MSR_SYSENTER_ESP] = v[F.HOST_IA32_SYSENTER_ESP]
    cpu.msr[MSR_SYSENTER_EIP] = v[F.HOST_IA32_SYSENTER_EIP]
    if exit_ctls & EXIT.LOAD_IA32_EFER:
        cpu.efer = v[F.HOST_IA32_EFER]
    # 28.5.2 segment and descriptor-table registers
    for i, f in enumerate(HOST_SELECTOR):
        sel = v[f]
        if i == 1:
            cpu.segs[i].load(sel, 0, HOST_FLAT_LIMIT, HOST_CODE_AR)
        elif sel == 0:
            cpu.segs[i].load(0, 0, 0, AR_UNUSABLE)
        else:
            base = v[F.HOST_FS_BASE] if i == 4 else v[F.HOST_GS_BASE] if i == 5 else 0
            cpu.segs[i].load(sel, base, HOST_FLAT_LIMIT, HOST_DATA_AR)
    cpu.tr.load(v[F.HOST_TR_SELECTOR], v[F.HOST_TR_BASE], HOST_TR_LIMIT, HOST_TR_AR)
    cpu.ldtr.load(0, 0, 0, AR_UNUSABLE)  # "LDTR is established as unusable"
    cpu.gdtr_base, cpu.gdtr_limit = v[F.HOST_GDTR_BASE], HOST_GDTR_IDTR_LIMIT
    cpu.idtr_base, cpu.idtr_limit = v[F.HOST_IDTR_BASE], HOST_GDTR_IDTR_LIMIT
    cpu.cpl = 0
    # 28.5.3 RIP, RSP, RFLAGS
    cpu.eip = v[F.HOST_RIP]
    cpu.regs[ESP] = v[F.HOST_RSP]
    cpu.set_eflags(RFLAGS_AFTER_VM_EXIT)
    cpu.halted = False
    cpu.inhibit_pending = False
    cpu.shadow_until = -1
    cpu.delivering = None
    cpu.update_mode()
    cpu.tlb_flush(all_entries=True)
    # 28.5.4: PAE paging in the host: check and load its PDPTEs (failure is a VMX abort)
    if cpu.cr0 & CR0_PG and cpu.cr4 & CR4_PAE:
        base = cpu.cr3 & 0xFFFFFFE0
        entries = [cpu.memory.read(base + 8 * i, 8) for i in range(4)]
        if any(e & 1 and e & PDPTE_RESERVED for e in entries):
            return ABORT_HOST_PDPTES
        cpu.pdptes = entries
    return 0
