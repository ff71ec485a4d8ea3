"""EPT: the walk, violations with exact qualifications, misconfigurations, large pages, accessed/dirty
flags, remapping (SDM Vol.3C 29.3; qualification Table 28-7)."""

from __future__ import annotations

import pytest
from test_vmx_exits import EAX

from vmxlab.vmx.ept import (
    EPT_ACCESSED,
    EPT_DIRTY,
    EPT_EXECUTE,
    EPT_READ,
    EPT_RWX,
    EPT_WRITE,
    EptTranslator,
    make_eptp,
)
from vmxlab.vmx.exit_reasons import ExitReason as R
from vmxlab.vmx.fields import VmcsField as F
from vmxlab.vmx.qualifications import EptViolationQualification, InterruptionInfo, InterruptionType
from vmxlab.vmx.setup import build_guest_vm

RD, WR, FETCH, R_OK, W_OK, X_OK, GLA_VALID, FINAL = 1, 2, 4, 8, 16, 32, 128, 256


def ept_guest(body: str, mode: str = "flat32", **kw):
    from vmxlab.assemble import assemble
    from vmxlab.guestkit import write_snippet

    code = assemble(write_snippet(body, "pm32")).read_bytes()
    vm = build_guest_vm(code, mode=mode, stack=0x80000, ept_page_size=4096, **kw)
    return vm.vcpu, vm.ept


def test_read_of_an_unmapped_guest_physical_address() -> None:
    v, ept = ept_guest("mov eax, [0x5000]")
    ept.unmap(0x5000)
    e = v.vmlaunch()
    assert e.reason == R.EPT_VIOLATION
    assert e.qualification == RD | GLA_VALID | FINAL == 0x181
    assert e.decoded == EptViolationQualification(True, False, False, False, False, False, True, True)
    assert e.guest_physical_address == 0x5000 and e.guest_linear_address == 0x5000 and e.guest_rip == 0x100000


def test_beyond_the_map_is_a_violation() -> None:
    v, ept = ept_guest("mov eax, [0x1234568]")  # above the 16 MiB the helper maps
    e = v.vmlaunch()
    assert e.reason == R.EPT_VIOLATION and e.qualification == 0x181 and e.guest_physical_address == 0x1234568


def test_write_to_a_read_only_page() -> None:
    v, ept = ept_guest("mov dword [0x5004], 1")
    ept.protect(0x5000, EPT_READ | EPT_EXECUTE)
    e = v.vmlaunch()
    assert e.qualification == WR | R_OK | X_OK | GLA_VALID | FINAL == 0x1AA
    assert e.guest_physical_address == 0x5004


def test_fetch_from_a_non_executable_page() -> None:
    v, ept = ept_guest("jmp 0x5000")
    v.memory.write(0x5000, 1, 0x90)
    ept.protect(0x5000, EPT_READ | EPT_WRITE)
    e = v.vmlaunch()
    assert e.qualification == FETCH | R_OK | W_OK | GLA_VALID | FINAL == 0x19C
    assert e.guest_rip == 0x5000 and e.guest_physical_address == 0x5000


def test_execute_only_page() -> None:
    v, ept = ept_guest("jmp 0x5000")
    v.memory.write_bytes(0x5000, bytes([0xA1, 0x00, 0x50, 0x00, 0x00]))  # mov eax, [0x5000]
    ept.protect(0x5000, EPT_EXECUTE)
    e = v.vmlaunch()
    assert e.qualification == RD | X_OK | GLA_VALID | FINAL and e.guest_rip == 0x5000


def test_guest_paging_structure_access() -> None:
    """Bit 8 = 0: the access was to a guest paging-structure entry (the page directory)."""
    v, ept = ept_guest("mov eax, [0x5000]", mode="paged32")
    ept.unmap(0x4000)  # GuestTables.page_directory
    v.cpu.tlb_flush(all_entries=True)
    e = v.vmlaunch()
    assert e.qualification == RD | GLA_VALID and e.guest_physical_address == 0x4000


def test_paging_structure_accesses_are_writes_with_accessed_dirty_flags() -> None:
    v, ept = ept_guest("mov eax, [0x5000]", mode="paged32", accessed_dirty=True)
    ept.protect(0x4000, EPT_READ)
    e = v.vmlaunch()
    assert e.qualification == WR | R_OK | GLA_VALID and e.guest_physical_address == 0x4000


def test_accessed_and_dirty_flags() -> None:
    v, ept = ept_guest("mov eax, [0x5000]\nmov dword [0x6000], 1\nvmcall", accessed_dirty=True)
    before = ept.get_entry(0x5000), ept.get_entry(0x6000), ept.get_entry(0x7000)
    assert not any(e & (EPT_ACCESSED | EPT_DIRTY) for e in before)
    assert v.vmlaunch().reason == R.VMCALL
    assert ept.get_entry(0x5000) & (EPT_ACCESSED | EPT_DIRTY) == EPT_ACCESSED
    assert ept.get_entry(0x6000) & (EPT_ACCESSED | EPT_DIRTY) == EPT_ACCESSED | EPT_DIRTY
    assert not ept.get_entry(0x7000) & EPT_ACCESSED
    assert ept.get_entry(0x5000, level=2) & EPT_ACCESSED and ept.get_entry(0x5000, level=4) & EPT_ACCESSED


def test_without_ad_flags_nothing_is_written() -> None:
    v, ept = ept_guest("mov dword [0x6000], 1\nvmcall")
    assert v.vmlaunch().reason == R.VMCALL
    assert not ept.get_entry(0x6000) & (EPT_ACCESSED | EPT_DIRTY)


@pytest.mark.parametrize(
    "bad",
    [EPT_WRITE, EPT_WRITE | EPT_EXECUTE, EPT_RWX | 2 << 3, EPT_RWX | 7 << 3, EPT_RWX | 6 << 3 | 1 << 40],
)
def test_misconfigured_leaf(bad: int) -> None:
    v, ept = ept_guest("mov eax, [0x5000]")
    ept.set_entry(0x5000, 1, 0x5000 | bad)
    e = v.vmlaunch()
    assert e.reason == R.EPT_MISCONFIGURATION and e.guest_physical_address == 0x5000 and e.qualification == 0
    assert e.guest_rip == 0x100000


def test_misconfigured_upper_levels() -> None:
    v, ept = ept_guest("mov eax, [0x5000]")
    pde_addr = ept.entry_address(0x5000, 2)
    v.memory.write(pde_addr, 8, v.memory.read(pde_addr, 8) | 1 << 3)  # reserved bit 3 in a non-leaf PDE
    assert v.vmlaunch().reason == R.EPT_MISCONFIGURATION
    v, ept = ept_guest("mov eax, [0x5000]")
    ept.set_entry(0, 2, 0x3000 | EPT_RWX | 6 << 3 | 1 << 7)  # a 2-MiB page whose address has bits 20:12 set
    assert v.vmlaunch().reason == R.EPT_MISCONFIGURATION


def test_large_pages_and_remapping() -> None:
    v, ept = ept_guest("mov eax, [0x400010]\nvmcall\nmov eax, [0x400010]\nvmcall")
    v.memory.write(0x400010, 4, 0x11111111)
    v.memory.write(0x800010, 4, 0x22222222)
    e = v.vmlaunch()
    assert e.reason == R.VMCALL and v.regs[EAX] == 0x11111111
    ept.map(0x400000, 0x800000, 0x200000, page_size=0x200000)  # a 2-MiB page to elsewhere
    assert v.invept(2).ok
    v.skip_instruction(e)
    e = v.vmresume()
    assert e.reason == R.VMCALL and v.regs[EAX] == 0x22222222


def test_one_gib_page() -> None:
    from vmxlab.vmx.setup import PageAllocator

    mem = build_guest_vm(b"\x90").vcpu.memory
    alloc = PageAllocator(mem, 0x1F00000, 0x2000000)
    from vmxlab.vmx.ept import EptBuilder

    b = EptBuilder(mem, alloc)
    b.map(0x40000000, 0, 1 << 30)
    t = EptTranslator(mem, b.eptp())
    assert t.translate(0x40001234, 0, None) == 0x1234
    assert b.get_entry(0x40000000, level=3) & 1 << 7


def test_mmio_beyond_ram_is_reported_not_accessed() -> None:
    v, ept = ept_guest("mov dword [0xFEC00000], 5")
    e = v.vmlaunch()
    assert e.reason == R.EPT_VIOLATION and e.qualification == 0x182 and e.guest_physical_address == 0xFEC00000


def test_violation_during_event_delivery_records_idt_vectoring() -> None:
    """The stack page is read-only in EPT: pushing the INT 0x21 frame violates; the exit carries the
    INT in the IDT-vectoring information and its length (SDM Vol.3C 28.2.4)."""
    v, ept = ept_guest("""
        mov eax, handler
        mov [0x2000 + 0x21*8], ax
        mov word [0x2000 + 0x21*8 + 2], 0x08
        mov word [0x2000 + 0x21*8 + 4], 0x8E00
        shr eax, 16
        mov [0x2000 + 0x21*8 + 6], ax
        mov esp, 0x70000
        int 0x21
    handler:
        vmcall
    """)
    ept.protect(0x6F000, EPT_READ)
    e = v.vmlaunch()
    assert e.reason == R.EPT_VIOLATION and e.qualification == WR | R_OK | GLA_VALID | FINAL
    assert e.guest_linear_address == 0x6FFFC
    assert e.idt_vectoring == InterruptionInfo(0x21, InterruptionType.SOFTWARE_INTERRUPT)
    assert e.instruction_length == 2


def test_eptp_helpers() -> None:
    assert make_eptp(0x5000) == 0x501E
    assert make_eptp(0x5000, accessed_dirty=True) == 0x505E


def _pae_tables(v, pdpt: int, pd: int) -> None:
    """PAE paging: a PDPT whose entry 0 points at a PD of 2-MiB identity pages for the first 16 MiB."""
    for i in range(8):
        v.memory.write(pd + 8 * i, 8, (i << 21) | 0x83)
    v.memory.write(pdpt, 8, pd | 1)


def test_pae_guest_pdptes_come_from_the_vmcs_with_ept() -> None:
    """With EPT, VM entry loads the PDPTEs from the guest-state area, not from CR3 (SDM Vol.3C 27.3.2.4);
    VM exit saves them (28.3.4); MOV to CR3 in the guest loads them from memory through EPT."""
    v, ept = ept_guest(
        "mov eax, [0x5010]\nvmcall\nmov ebx, 0x8000\nmov cr3, ebx\nmov eax, [0x5010]\nvmcall", mode="paged32"
    )
    _pae_tables(v, 0x8000, 0x9000)  # the right tables
    v.memory.write(0x7000, 8, 0xA000 | 1)  # CR3's table points at an empty page directory
    v.memory.write(0x5010, 4, 0xCAFE)
    v.write({F.GUEST_CR4: 0x2020, F.GUEST_CR3: 0x7000, F.GUEST_PDPTE0: 0x9000 | 1, F.CR4_READ_SHADOW: 0x20})
    e = v.vmlaunch()
    assert e.reason == R.VMCALL and v.regs[EAX] == 0xCAFE
    assert v.vmread(F.GUEST_PDPTE0) == 0x9001 and v.vmread(F.GUEST_PDPTE1) == 0
    v.skip_instruction(e)
    e = v.vmresume()
    assert e.reason == R.VMCALL and v.regs[EAX] == 0xCAFE and v.vmread(F.GUEST_PDPTE0) == 0x9001


def test_pae_guest_pdptes_come_from_cr3_without_ept() -> None:
    v = build_guest_vm(bytes([0xA1, 0x10, 0x50, 0, 0, 0x0F, 0x01, 0xC1]), mode="paged32", use_ept=False).vcpu
    _pae_tables(v, 0x8000, 0x9000)
    v.memory.write(0x5010, 4, 0xBEEF)
    v.write({F.GUEST_CR4: 0x2020, F.GUEST_CR3: 0x8000, F.GUEST_PDPTE0: 0xDEAD000})
    e = v.vmlaunch()
    assert e.reason == R.VMCALL and v.regs[EAX] == 0xBEEF
