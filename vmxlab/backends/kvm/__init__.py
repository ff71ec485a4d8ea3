"""The /dev/kvm binding (ctypes, no third-party dependency) and, on top of it, the ``kvm`` backend.

* :mod:`.constants` -- ioctl numbers, capabilities, exit reasons (``<linux/kvm.h>``)
* :mod:`.structs`   -- the ABI structs as ctypes types
* :mod:`.api`       -- :class:`Kvm`, :class:`KvmVm`, :class:`KvmVcpu`
* :mod:`.availability` -- :func:`kvm_usable`

Facts about the hosts here (PVM, measured exit costs): ../shared/reference/kvm.md.
"""

from __future__ import annotations

from .api import Kvm, KvmError, KvmUnavailable, KvmVcpu, KvmVm, MemorySlot, segment
from .availability import is_pvm, kvm_usable
from .constants import Cap, ExitReason

__all__ = ["Cap", "ExitReason", "Kvm", "KvmError", "KvmUnavailable", "KvmVcpu", "KvmVm", "MemorySlot",
           "is_pvm", "kvm_usable", "segment"]
