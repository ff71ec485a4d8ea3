"""``--backend kvm`` and ``--backend auto``: build the KVM backend, or explain in one line why not.

``auto`` picks ``kvm`` when /dev/kvm can create a VM here (availability.kvm_usable, probed once
per process) and falls back to ``emu`` otherwise, saying so on stderr when the run echoes its
output; ``kvm`` insists and turns every reason KVM cannot be used into a :class:`UserError`
(missing device, permissions, missing capability), never a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..machine.machine import Machine
    from ..runner import RunOptions


def kvm_available() -> tuple[bool, str]:
    """(usable, one-line reason) for /dev/kvm on this host."""
    from .kvm.availability import kvm_usable

    return kvm_usable()


def select_backend(machine: Machine, opts: RunOptions):
    from .kvm.api import KvmError, KvmUnavailable

    if opts.backend == "auto":
        ok, why = kvm_available()
        if not ok:
            if opts.echo:
                print(f"vmxlab: --backend auto: using emu ({why})", file=sys.stderr)
            from .emu import EmuBackend

            return EmuBackend(machine, engine=opts.engine)
    elif opts.backend != "kvm":
        raise UserError(f"--backend {opts.backend}: expected emu, kvm or auto")
    ok, why = kvm_available()
    if not ok:
        raise UserError(f"--backend kvm: {why}")
    from .kvm.backend import KvmBackend

    try:
        return KvmBackend(machine)
    except KvmUnavailable as e:
        raise UserError(f"--backend kvm: {e}") from None
    except KvmError as e:
        raise UserError(f"--backend kvm: {e}") from None
