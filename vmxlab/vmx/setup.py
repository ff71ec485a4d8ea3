"""Helpers that fill a *valid* VMCS for common guests, so a VMM starts from something that works.

What every VMM does before its first VMLAUNCH, in SDM order: allocate the
VMXON region and a VMCS with the revision identifier (SDM Vol.3C 25.2, 24.11.5
"VMXON Region"), VMXON, VMCLEAR, VMPTRLD; adjust every control field with the
capability MSRs (Appendix A.3); write the host-state area (25.5) and the
guest-state area (25.4) so that the checks of chapter 27 pass.

Three guest shapes (``Guest*`` functions write only guest-state fields and the
controls they need):

* :func:`real_mode_guest` -- CR0.PE = 0 with "unrestricted guest" and an
  identity EPT (:func:`identity_ept`);
* :func:`flat32_guest` -- 32-bit protected mode, flat segments, paging off (also
  needs "unrestricted guest": without it CR0.PG is fixed to 1);
* :func:`paged32_guest` -- 32-bit protected mode with 4-MiB identity pages.

The protected-mode guests get a GDT with ring-0 and ring-3 flat segments and
a 32-bit TSS whose ESP0 makes ring transitions work, written into guest memory
at :class:`GuestTables` addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..cpu.state import (
    AR_REAL_CODE,
    AR_REAL_DATA,
    AR_UNUSABLE,
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PSE,
    CR4_VMXE,
)
from .controls import PRIMARY_PROC_BASED_CTLS, SECONDARY_PROC_BASED_CTLS
from .ept import EPT_RWX, EptBuilder
from .fields import GUEST_ACCESS_RIGHTS, GUEST_BASE, GUEST_LIMIT, GUEST_SELECTOR, VmcsField
from .guest_state import VMCS_LINK_POINTER_NONE, ActivityState

F = VmcsField
PAGE = 0x1000

# Flat descriptors (SDM Vol.3A 3.4.5): base 0, limit 4 GiB, 32-bit, present, accessed
CODE0_DESCRIPTOR = 0x00CF9B000000FFFF
DATA0_DESCRIPTOR = 0x00CF93000000FFFF
CODE3_DESCRIPTOR = 0x00CFFB000000FFFF
DATA3_DESCRIPTOR = 0x00CFF3000000FFFF
# Selectors of the guest GDT written by write_guest_tables
CODE0, DATA0, CODE3, DATA3, TSS = 0x08, 0x10, 0x1B, 0x23, 0x28
GDT_ENTRIES = 6
# Access rights in the VMX format (type S DPL P ... D/B G), SDM Vol.3C Table 25-2
AR_FLAT_CODE0 = 0xC09B
AR_FLAT_DATA0 = 0xC093
AR_FLAT_CODE3 = 0xC0FB
AR_FLAT_DATA3 = 0xC0F3
AR_TSS32_BUSY = 0x008B
AR_LDT = 0x0082
TSS32_LIMIT = 0x67
TSS_ESP0, TSS_SS0, TSS_IOMAP_BASE = 4, 8, 0x66
IDT_LIMIT_PM = 256 * 8 - 1
IVT_LIMIT = 0x3FF
PDE_4M = 0x87  # present, writable, user, page size (SDM Vol.3A 4.3, Table 4-4)
FLAT_LIMIT = 0xFFFFFFFF
REAL_LIMIT = 0xFFFF

# host state: never executed (Python is the host), but it must pass the checks of SDM Vol.3C 27.2.2-27.2.3
HOST_CS, HOST_DS, HOST_TR = 0x08, 0x10, 0x18


class PageAllocator:
    """Hands out zeroed 4-KiB pages of physical memory from [start, end) for VMX structures."""

    def __init__(self, memory, start: int, end: int) -> None:
        if start & 0xFFF or end & 0xFFF or start >= end:
            raise ValueError("the allocator range must be whole pages")
        self.memory = memory
        self.next = start
        self.end = end

    def page(self) -> int:
        return self.pages(1)

    def pages(self, n: int) -> int:
        addr = self.next
        if addr + n * PAGE > self.end:
            raise MemoryError(f"no room for {n} more VMX pages below {self.end:#x}")
        self.next += n * PAGE
        self.memory.write_bytes(addr, bytes(n * PAGE))
        return addr


@dataclass
class VmxRegions:
    vmxon: int
    vmcs: int


def enter_vmx_operation(vcpu, alloc: PageAllocator) -> VmxRegions:
    """Allocate and stamp the VMXON region and a VMCS, then VMXON, VMCLEAR, VMPTRLD (each checked)."""
    regions = VmxRegions(alloc.page(), alloc.page())
    for addr in (regions.vmxon, regions.vmcs):
        vcpu.memory.write(addr, 4, vcpu.caps.revision_id)
    if not vcpu.state.in_vmx_operation:
        vcpu.vmxon(regions.vmxon).check()
    vcpu.vmclear(regions.vmcs).check()
    vcpu.vmptrld(regions.vmcs).check()
    vcpu.vmwrite(F.VMCS_LINK_POINTER, VMCS_LINK_POINTER_NONE).check()
    return regions


def write_controls(
    vcpu,
    *,
    pin: int = 0,
    primary: int = 0,
    secondary: int = 0,
    exit: int = 0,
    entry: int = 0,
    exception_bitmap: int = 0,
) -> None:
    """Write the five control fields, adjusted to the capability MSRs (default-1 bits set)."""
    caps = vcpu.caps
    if secondary:
        primary |= PRIMARY_PROC_BASED_CTLS.ACTIVATE_SECONDARY_CONTROLS
    vcpu.write(
        {
            F.PIN_BASED_VM_EXECUTION_CONTROLS: caps.true_pin.adjust(pin),
            F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: caps.true_primary.adjust(primary),
            F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: caps.secondary.adjust(secondary),
            F.VM_EXIT_CONTROLS: caps.true_exit.adjust(exit),
            F.VM_ENTRY_CONTROLS: caps.true_entry.adjust(entry),
            F.EXCEPTION_BITMAP: exception_bitmap,
        }
    )


def set_controls(vcpu, field: VmcsField, set_bits: int = 0, clear_bits: int = 0) -> None:
    """Read-modify-write a control field (e.g. turn HLT exiting on between two VM entries)."""
    value = (vcpu.vmread(field) | set_bits) & ~clear_bits
    if field == F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS and value:
        set_controls(
            vcpu,
            F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
            PRIMARY_PROC_BASED_CTLS.ACTIVATE_SECONDARY_CONTROLS,
        )
    vcpu.vmwrite(field, value).check()


def write_host_state(vcpu, alloc: PageAllocator) -> None:
    """A flat 32-bit host with paging on (CR0.PG is fixed to 1 for the host)."""
    gdt, idt, tss, pd = alloc.page(), alloc.page(), alloc.page(), alloc.page()
    caps = vcpu.caps
    vcpu.write(
        {
            F.HOST_CR0: caps.cr0_fixed0 | CR0_ET,
            F.HOST_CR3: pd,
            F.HOST_CR4: caps.cr4_fixed0,
            F.HOST_CS_SELECTOR: HOST_CS,
            F.HOST_SS_SELECTOR: HOST_DS,
            F.HOST_DS_SELECTOR: HOST_DS,
            F.HOST_ES_SELECTOR: HOST_DS,
            F.HOST_FS_SELECTOR: HOST_DS,
            F.HOST_GS_SELECTOR: HOST_DS,
            F.HOST_TR_SELECTOR: HOST_TR,
            F.HOST_TR_BASE: tss,
            F.HOST_GDTR_BASE: gdt,
            F.HOST_IDTR_BASE: idt,
            F.HOST_RSP: 0,
            F.HOST_RIP: 0,
        }
    )


def identity_ept(
    vcpu,
    alloc: PageAllocator,
    size: int,
    *,
    page_size: int | None = None,
    accessed_dirty: bool = False,
    perms: int = EPT_RWX,
) -> EptBuilder:
    """EPT mapping guest-physical [0, size) to the same host-physical addresses; enables EPT."""
    ept = EptBuilder(vcpu.memory, alloc)
    ept.map(0, 0, size, perms, page_size=page_size)
    vcpu.vmwrite(F.EPT_POINTER, ept.eptp(accessed_dirty=accessed_dirty)).check()
    set_controls(
        vcpu, F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, SECONDARY_PROC_BASED_CTLS.ENABLE_EPT
    )
    return ept


def _segment(vcpu, i: int, selector: int, base: int, limit: int, ar: int) -> None:
    vcpu.write(
        {GUEST_SELECTOR[i]: selector, GUEST_BASE[i]: base, GUEST_LIMIT[i]: limit, GUEST_ACCESS_RIGHTS[i]: ar}
    )


def _common_guest_state(
    vcpu, rip: int, rsp: int, cr0: int, cr3: int, cr4: int, cr0_seen: int | None = None
) -> None:
    """Guest registers plus the CR masks every VMM sets: the VMM owns CR0.NE and CR4.VMXE (fixed to 1 in
    VMX operation, SDM Vol.3C 24.8), and the read shadows show the guest the values it expects
    (``cr0_seen``; VMXE = 0), so guest writes that keep them do not #GP or exit (SDM Vol.3C 26.3)."""
    vcpu.write(
        {
            F.CR0_GUEST_HOST_MASK: CR0_NE,
            F.CR0_READ_SHADOW: cr0 if cr0_seen is None else cr0_seen,
            F.CR4_GUEST_HOST_MASK: CR4_VMXE,
            F.CR4_READ_SHADOW: cr4 & ~CR4_VMXE,
            F.GUEST_CR0: cr0,
            F.GUEST_CR3: cr3,
            F.GUEST_CR4: cr4,
            F.GUEST_DR7: 0x400,
            F.GUEST_RIP: rip,
            F.GUEST_RSP: rsp,
            F.GUEST_RFLAGS: 0x2,
            F.GUEST_ACTIVITY_STATE: ActivityState.ACTIVE,
            F.GUEST_INTERRUPTIBILITY_STATE: 0,
            F.GUEST_PENDING_DEBUG_EXCEPTIONS: 0,
            F.VMCS_LINK_POINTER: VMCS_LINK_POINTER_NONE,
            F.VM_ENTRY_INTERRUPTION_INFORMATION: 0,
        }
    )
    _segment(vcpu, 6, 0, 0, 0, AR_UNUSABLE)  # no LDT


def real_mode_guest(vcpu, cs: int, ip: int, ss: int = 0, sp: int = 0x7000) -> None:
    """Real-address mode at CS:IP (needs EPT: "unrestricted guest" is turned on here)."""
    set_controls(
        vcpu, F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, SECONDARY_PROC_BASED_CTLS.UNRESTRICTED_GUEST
    )
    _common_guest_state(vcpu, ip, sp, CR0_ET | CR0_NE, 0, CR4_VMXE, cr0_seen=CR0_ET)
    for i in (0, 3, 4, 5):
        _segment(vcpu, i, 0, 0, REAL_LIMIT, AR_REAL_DATA)
    _segment(vcpu, 1, cs, cs << 4, REAL_LIMIT, AR_REAL_CODE)
    _segment(vcpu, 2, ss, ss << 4, REAL_LIMIT, AR_REAL_DATA)
    # TR must be a usable busy TSS even in real mode (SDM Vol.3C 27.3.1.2)
    _segment(vcpu, 7, 0, 0, REAL_LIMIT, AR_TSS32_BUSY)
    vcpu.write(
        {
            F.GUEST_GDTR_BASE: 0,
            F.GUEST_GDTR_LIMIT: REAL_LIMIT,
            F.GUEST_IDTR_BASE: 0,
            F.GUEST_IDTR_LIMIT: IVT_LIMIT,
        }
    )


@dataclass
class GuestTables:
    """Guest-physical addresses of the system tables the protected-mode helpers write."""

    gdt: int = 0x1000
    idt: int = 0x2000
    tss: int = 0x3000
    page_directory: int = 0x4000
    ring0_stack_top: int = 0x9000


def write_guest_tables(memory, tables: GuestTables) -> None:
    """GDT (null, ring-0 code/data, ring-3 code/data, busy 32-bit TSS), an empty IDT, and the TSS."""
    tss = tables.tss
    tss_desc = TSS32_LIMIT | (tss & 0xFFFFFF) << 16 | 0x8B << 40 | (tss >> 24) << 56
    gdt = [0, CODE0_DESCRIPTOR, DATA0_DESCRIPTOR, CODE3_DESCRIPTOR, DATA3_DESCRIPTOR, tss_desc]
    memory.write_bytes(tables.gdt, b"".join(struct.pack("<Q", d) for d in gdt))
    memory.write_bytes(tables.idt, bytes(256 * 8))
    image = bytearray(TSS32_LIMIT + 1)
    struct.pack_into("<I", image, TSS_ESP0, tables.ring0_stack_top)
    struct.pack_into("<H", image, TSS_SS0, DATA0)
    struct.pack_into("<H", image, TSS_IOMAP_BASE, TSS32_LIMIT + 1)  # no I/O permission bitmap
    memory.write_bytes(tss, bytes(image))


def _protected_segments(vcpu, tables: GuestTables, cpl: int) -> None:
    code, data = (CODE0, DATA0) if cpl == 0 else (CODE3, DATA3)
    code_ar, data_ar = (AR_FLAT_CODE0, AR_FLAT_DATA0) if cpl == 0 else (AR_FLAT_CODE3, AR_FLAT_DATA3)
    for i in (0, 2, 3, 4, 5):
        _segment(vcpu, i, data, 0, FLAT_LIMIT, data_ar)
    _segment(vcpu, 1, code, 0, FLAT_LIMIT, code_ar)
    _segment(vcpu, 7, TSS, tables.tss, TSS32_LIMIT, AR_TSS32_BUSY)
    vcpu.write(
        {
            F.GUEST_GDTR_BASE: tables.gdt,
            F.GUEST_GDTR_LIMIT: GDT_ENTRIES * 8 - 1,
            F.GUEST_IDTR_BASE: tables.idt,
            F.GUEST_IDTR_LIMIT: IDT_LIMIT_PM,
        }
    )


def flat32_guest(vcpu, eip: int, esp: int, tables: GuestTables | None = None, cpl: int = 0) -> GuestTables:
    """32-bit flat protected mode with paging off ("unrestricted guest" + EPT, turned on here)."""
    tables = tables or GuestTables()
    write_guest_tables(vcpu.memory, tables)
    set_controls(
        vcpu, F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, SECONDARY_PROC_BASED_CTLS.UNRESTRICTED_GUEST
    )
    _common_guest_state(vcpu, eip, esp, CR0_PE | CR0_NE | CR0_ET, 0, CR4_VMXE)
    _protected_segments(vcpu, tables, cpl)
    return tables


def paged32_guest(
    vcpu, eip: int, esp: int, tables: GuestTables | None = None, identity_mib: int = 16, cpl: int = 0
) -> GuestTables:
    """32-bit protected mode with paging: a page directory of 4-MiB pages mapping [0, identity_mib)."""
    tables = tables or GuestTables()
    write_guest_tables(vcpu.memory, tables)
    pd = bytearray(PAGE)
    for i in range(identity_mib // 4):
        struct.pack_into("<I", pd, 4 * i, (i << 22) | PDE_4M)
    vcpu.memory.write_bytes(tables.page_directory, bytes(pd))
    _common_guest_state(
        vcpu, eip, esp, CR0_PE | CR0_NE | CR0_ET | CR0_PG, tables.page_directory, CR4_VMXE | CR4_PSE
    )
    _protected_segments(vcpu, tables, cpl)
    return tables


# ------------------------------------------------------------------------ one call: a guest ready to launch

#: where :func:`build_guest_vm` puts VMX structures: above the guest's memory, out of its EPT map
VMX_AREA_DEFAULT = 0x1800000


@dataclass
class GuestVm:
    """Everything :func:`build_guest_vm` set up: the VMX CPU and where things are."""

    vcpu: object  # VmxCpu (not imported here: api imports nothing from setup)
    alloc: PageAllocator
    regions: VmxRegions
    ept: EptBuilder | None
    tables: GuestTables | None


def build_guest_vm(
    code: bytes,
    *,
    mode: str = "flat32",
    load: int = 0x100000,
    entry: int | None = None,
    stack: int = 0x80000,
    mem_mib: int = 32,
    guest_mib: int = 16,
    engine: str = "fast",
    use_ept: bool = True,
    ept_page_size: int | None = None,
    accessed_dirty: bool = False,
    cpl: int = 0,
    machine=None,
    caps=None,
) -> GuestVm:
    """A machine, a CPU, VMX operation, a current VMCS with valid controls and host state, and a guest
    of ``mode`` ("real", "flat32", "paged32") whose code is ``code`` at ``load``.

    Guest memory is [0, guest_mib) MiB, identity-mapped by EPT (for "real" and
    "flat32" EPT is required); VMX structures live above it, where the guest
    cannot reach them.  ``vmlaunch()`` on the result's ``vcpu`` runs the guest."""
    from ..cpu.core import CPU
    from ..devices.board import attach_standard_devices
    from ..machine.machine import Console, Machine
    from .api import VmxCpu

    if machine is None:
        machine = Machine.create(mem_mib, Console(echo=False))
        attach_standard_devices(machine)
    machine.memory.write_bytes(load, code)
    cpu = CPU(machine)
    vcpu = VmxCpu(cpu, engine) if caps is None else VmxCpu(cpu, engine, caps)
    alloc = PageAllocator(machine.memory, max(VMX_AREA_DEFAULT, guest_mib << 20), machine.memory.size)
    regions = enter_vmx_operation(vcpu, alloc)
    write_controls(vcpu)
    write_host_state(vcpu, alloc)
    ept = None
    if use_ept or mode in ("real", "flat32"):
        ept = identity_ept(
            vcpu, alloc, guest_mib << 20, page_size=ept_page_size, accessed_dirty=accessed_dirty
        )
    tables = None
    start = load if entry is None else entry
    if mode == "real":
        real_mode_guest(vcpu, 0, start, 0, stack & 0xFFFF)
    elif mode == "flat32":
        tables = flat32_guest(vcpu, start, stack, cpl=cpl)
    elif mode == "paged32":
        tables = paged32_guest(vcpu, start, stack, identity_mib=guest_mib, cpl=cpl)
    else:
        raise ValueError(f"guest mode {mode!r}: expected real, flat32 or paged32")
    return GuestVm(vcpu, alloc, regions, ept, tables)
