"""Can this process use /dev/kvm?  One cached probe, with the reason as a one-line message.

Used by ``--backend auto``, by the tests (skip with a visible reason) and by the CLI
to explain why the ``kvm`` backend is not available.
"""

from __future__ import annotations

import functools
import os

from .api import DEVICE, Kvm, KvmError, KvmUnavailable
from .constants import Cap

#: what the vmxlab kvm backend relies on (kvm.md §0 lists them as present on the PVM hosts)
REQUIRED_CAPS = (Cap.USER_MEMORY, Cap.SET_TSS_ADDR, Cap.EXT_CPUID, Cap.IMMEDIATE_EXIT)


@functools.cache
def kvm_usable(path: str = DEVICE) -> tuple[bool, str]:
    """(True, description) if a VM with one vCPU can be created, else (False, why-and-what-to-do)."""
    try:
        with Kvm(path) as kvm:
            for cap in REQUIRED_CAPS:
                if not kvm.check_extension(cap):
                    return False, f"{path}: the kernel lacks KVM_CAP_{cap.name}"
            vm = kvm.create_vm()
            try:
                vm.create_vcpu(0)
            finally:
                vm.close()
            return True, f"{path}: KVM API {kvm.api_version}{', PVM' if is_pvm() else ''}"
    except KvmUnavailable as e:
        return False, str(e)
    except KvmError as e:
        return False, f"{path}: {e.strerror} — KVM is present but cannot create a VM here"


def is_pvm() -> bool:
    """True on hosts whose /dev/kvm is the ``kvm_pvm`` module (kvm.md §0): ring-0 guest code
    runs in KVM's instruction emulator, ring-3 code natively."""
    return os.path.isdir("/sys/module/kvm_pvm")
