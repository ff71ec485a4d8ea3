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


class _ReadOnlyEpt:
    """EPT translation for the VMM's own accesses: addresses only, every access treated as a read."""

    def __init__(self, ept: EptTranslator) -> None:
        self.ept = ept

    def translate(self, gpa: int, acc: int, la: int | None, final: bool = True) -> int:
        return self.ept.translate(gpa, 0, la, final)

    def translate_walk(self, gpa: int, la: int | None, write: bool = False) -> int:
        return self.ept.translate_walk(gpa, la, False)


class GuestMemory:
    """Read and write the guest's linear address space from a VM-exit handler."""

    def __init__(self, vcpu: VmxCpu) -> None:
        self.vcpu = vcpu
        #: called as on_write(host_physical, size) after the VMM wrote guest memory
        self.on_write = None

    def translate(self, la: int, write: bool = False, user: bool = False) -> int:
        """Guest-linear to host-physical; raises CpuFault (#PF) for the guest to receive.

        The guest's page tables are checked with the access's rights; EPT only translates: its
        permissions are the VMM's own tools (write-protected shadowed tables), not limits on the VMM
        writing for the guest -- :attr:`on_write` lets the VMM see such writes."""
        view = _PagingView(self.vcpu)
        la &= 0xFFFFFFFF
        ept, view.ept = view.ept, None
        if view.cr0 & CR0_PG and view.cr0 & CR0_PE:
            view.ept = _ReadOnlyEpt(ept) if ept is not None else None
            acc = (PF_W if write else 0) | (PF_U if user else 0)
            gpa = paging.translate_only(view, la, acc)[0]  # type: ignore[arg-type]
            return view.ept.translate(gpa, 0, la) if view.ept is not None else gpa
        return ept.translate(la, 0, la) if ept is not None else la

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
            if self.on_write is not None:
                self.on_write(pa, len(piece))


__all__ = ["GuestMemory", "CpuFault"]
