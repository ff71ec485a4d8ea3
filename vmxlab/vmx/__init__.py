"""Intel VMX for the software CPU, with Python as VMX root operation (see docs/vmx.md).

Modules, each named after what it models:

* :mod:`.fields` -- VMCS field encodings (``VmcsField``); :mod:`.controls` -- control bits;
  :mod:`.exit_reasons` -- ``ExitReason``; :mod:`.qualifications` -- typed exit qualifications and
  information fields; :mod:`.guest_state` -- activity and interruptibility state.
* :mod:`.capabilities` -- the IA32_VMX_* capability MSRs of the model.
* :mod:`.vmcs` -- the VMCS and the VMX instructions' semantics (VMsucceed/VMfail...).
* :mod:`.entry_checks` -- the VM-entry checks, each explained; :mod:`.transitions` -- loading and
  saving state at VM entry and VM exit.
* :mod:`.nonroot` -- ``cpu.vmx`` in non-root operation: exit decisions, event injection, VM exit.
* :mod:`.ept` -- the EPT walk (``cpu.ept``) and an EPT builder; :mod:`.insn` -- decoding the
  exiting instruction for the information fields.
* :mod:`.api` -- ``VmxCpu``: VMXON, VMCLEAR, VMPTRLD, VMREAD/VMWRITE, VMLAUNCH/VMRESUME for a VMM
  in Python; :mod:`.setup` -- helpers that fill a valid VMCS for common guests.
"""

from .api import EntryFailure, GuestStopped, RootState, VmExit, VmxCpu
from .controls import (
    PIN_BASED_CTLS,
    PRIMARY_PROC_BASED_CTLS,
    SECONDARY_PROC_BASED_CTLS,
    VM_ENTRY_CTLS,
    VM_EXIT_CTLS,
)
from .exit_reasons import ExitReason
from .fields import VmcsField
from .qualifications import InterruptionInfo, InterruptionType
from .vmcs import VmInstructionError, VmxInstructionFailed, VmxResult, VmxStatus

__all__ = [
    "VmxCpu", "VmExit", "EntryFailure", "GuestStopped", "RootState", "VmcsField", "ExitReason",
    "PIN_BASED_CTLS", "PRIMARY_PROC_BASED_CTLS", "SECONDARY_PROC_BASED_CTLS", "VM_EXIT_CTLS", "VM_ENTRY_CTLS",
    "InterruptionInfo", "InterruptionType", "VmInstructionError", "VmxInstructionFailed", "VmxResult",
    "VmxStatus",
]
