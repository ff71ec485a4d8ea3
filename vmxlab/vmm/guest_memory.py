"""Guest memory as the guest sees it, for exit handlers that must read or write its operands.

A VM exit leaves the CPU in host state, but a handler for SGDT must store the
guest's answer at the *guest-linear* address the instruction named: through
the guest's segment base, the guest's page tables (GUEST_CR3/CR0/CR4 in the
VMCS) and EPT -- what KVM's ``kvm_read_guest_virt`` does.  The walk reuses the
software CPU's page walker (cpu/paging.py) on a view of the guest's paging
registers, so the VMM and the CPU can never disagree about a translation.

A fault in that walk is the guest's fault: the handler injects it (#PF with
CR2) instead of completing the instruction (SDM Vol.3C 28.2.1: the exit
happened before the instruction touched memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cpu import paging
from ..cpu.core import PF_U, PF_W
from ..cpu.faults import CpuFault
from ..cpu.state import CR0_PE, CR0_PG
from ..vmx.ept import EptTranslator
from ..vmx.fields import GUEST_PDPTE, VmcsField

if TYPE_CHECKING:
    from ..vmx.api import VmxCpu

F = VmcsField


class _PagingView:
    """The attributes cpu/paging.py reads, taken from the guest-state area instead of the CPU."""

    def __init__(self, vcpu: VmxCpu) -> None:
        cpu = vcpu.cpu
        read = vcpu.vmread
        self.cr0 = read(F.GUEST_CR0)
        self.cr3 = read(F.GUEST_CR3)
        self.cr4 = read(F.GUEST_CR4)
        self.efer = cpu.efer
        self.memory = cpu.memory
        self.pdptes = [read(f) for f in GUEST_PDPTE]
        secondary = read(F.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
        ept_on = secondary & 2 and read(F.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS) & (1 << 31)
        self.ept = EptTranslator(cpu.memory, read(F.EPT_POINTER), vcpu.caps) if ept_on else None
        self.tlb_global: set[int] = set()  # the walker records global pages here; the VMM ignores them


class GuestMemory:
    """Read and write the guest's linear address space from a VM-exit handler."""

    def __init__(self, vcpu: VmxCpu) -> None:
        self.vcpu = vcpu

    def translate(self, la: int, write: bool = False, user: bool = False) -> int:
        """Guest-linear to host-physical; raises CpuFault (#PF) for the guest to receive."""
        view = _PagingView(self.vcpu)
        la &= 0xFFFFFFFF
        if view.cr0 & CR0_PG and view.cr0 & CR0_PE:
            acc = (PF_W if write else 0) | (PF_U if user else 0)
            return paging.walk(view, la, acc)  # type: ignore[arg-type]
        if view.ept is not None:
            return view.ept.translate(la, PF_W if write else 0, la)
        return la

    def read(self, la: int, size: int) -> int:
        data = self.read_bytes(la, size)
        return int.from_bytes(data, "little")

    def write(self, la: int, size: int, value: int) -> None:
        self.write_bytes(la, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def read_bytes(self, la: int, n: int) -> bytes:
        out = bytearray()
        while n:
            chunk = min(n, 0x1000 - (la & 0xFFF))
            out += self.vcpu.memory.read_bytes(self.translate(la), chunk)
            la = (la + chunk) & 0xFFFFFFFF
            n -= chunk
        return bytes(out)

    def write_bytes(self, la: int, data: bytes) -> None:
        # translate every page first: a fault on the second page must not leave half a store
        pieces = []
        pos = 0
        while pos < len(data):
            chunk = min(len(data) - pos, 0x1000 - (la & 0xFFF))
            pieces.append((self.translate(la, write=True), data[pos : pos + chunk]))
            la = (la + chunk) & 0xFFFFFFFF
            pos += chunk
        for pa, piece in pieces:
            self.vcpu.memory.write_bytes(pa, piece)


__all__ = ["GuestMemory", "CpuFault"]
