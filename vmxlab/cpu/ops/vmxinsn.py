"""The VMX instructions as a guest executes them (SDM Vol.3C chapter 31, "VMX Instruction Reference").

The software CPU never runs code in VMX root operation -- Python is the root --
so for the CPU every VMX instruction is either #UD (outside VMX operation:
``cpu.vmx`` is None) or, in VMX non-root operation, a VM exit with its own
reason (18-27, 50, 53; SDM Vol.3C 26.1.2 "Instructions That Cause VM Exits
Unconditionally").  Before the exit come the #UD conditions of each
instruction's pseudocode: real-address and virtual-8086 mode for all but
VMCALL, CR4.VMXE = 0 for VMXON.  The exit carries the instruction's reason;
the VMX layer decodes the operands for the instruction-information field.
A guest hypervisor's VMX instructions are then emulated by the Python VMM with
:mod:`vmxlab.vmx.vmcs` (nested VMX).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Instruction

from .. import flags as fl
from ..faults import CpuFault, Vector
from ..state import CR0_PE, CR4_VMXE
from . import Ctx, Handler, handles

if TYPE_CHECKING:
    from ..core import CPU

# Basic exit reasons of the VMX instructions (SDM Vol.3C Appendix C)
EXIT_REASON = {
    "VMCALL": 18,
    "VMCLEAR": 19,
    "VMLAUNCH": 20,
    "VMPTRLD": 21,
    "VMPTRST": 22,
    "VMREAD": 23,
    "VMRESUME": 24,
    "VMWRITE": 25,
    "VMXOFF": 26,
    "VMXON": 27,
    "INVEPT": 50,
    "INVVPID": 53,
}


def _vmx_instruction(name: str) -> Handler:
    reason = EXIT_REASON[name]

    def h(c: CPU) -> None:
        if c.vmx is None:
            raise CpuFault(Vector.UD, None, detail=f"{name} outside VMX operation")
        if name != "VMCALL":  # VMCALL exits from any mode (SDM Vol.3C 31.3 VMCALL)
            if not c.cr0 & CR0_PE or c.eflags_sys & fl.VM:
                raise CpuFault(Vector.UD, None, detail=f"{name} in real-address or virtual-8086 mode")
            if name == "VMXON" and not c.cr4 & CR4_VMXE:
                raise CpuFault(Vector.UD, None, detail="VMXON with CR4.VMXE = 0")
        c.vmx.intercept(c, "vmx", instruction=reason)
        # every VMX instruction exits in non-root operation on this model (no VMCS shadowing)
        raise CpuFault(Vector.UD, None, detail=f"{name} did not exit")

    return h


@handles(*EXIT_REASON, ends_block=True)
def vmx_instruction(ins: Instruction, ctx: Ctx) -> Handler:
    from iced_x86 import Mnemonic

    names = {getattr(Mnemonic, n): n for n in EXIT_REASON}
    return _vmx_instruction(names[ins.mnemonic])
