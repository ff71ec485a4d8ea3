"""Getting a vCPU out of KVM_RUN: now (another thread raised an interrupt or asked to stop) or at a
given time (a timer of a device model is due, or the run's timeout).

KVM_RUN returns to userspace only on an exit the kernel cannot handle, or when a signal is
pending for the vCPU thread: then it returns -EINTR with ``exit_reason = KVM_EXIT_INTR``
(api.rst 4.10 "KVM_RUN" and 5 "immediate_exit").  A signal that arrives while the thread is
still in Python, just before it calls KVM_RUN, would be missed; ``kvm_run.immediate_exit = 1``
closes that window -- KVM_RUN then returns -EINTR at once (api.rst: "this field is polled once
when KVM_RUN starts; if non-zero, KVM_RUN exits immediately, returning -EINTR").  The sequence
(set immediate_exit, then signal the thread) is the one QEMU's ``kvm_cpu_kick`` uses.

Why ``pthread_kill`` from a helper thread rather than ``setitimer``: a process-directed
SIGALRM may be delivered to any thread (e.g. the terminal reader), and then KVM_RUN in the
vCPU thread would not be interrupted.  The signal handler itself does nothing; it only has
to exist so the signal interrupts the ioctl instead of killing the process.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from . import structs as s

KICK_SIGNAL = signal.SIGUSR1


def _ignore(signum: int, frame: object) -> None:
    """The handler of :data:`KICK_SIGNAL`: nothing to do, the EINTR is the message."""


def install_handler() -> bool:
    """Install the no-op handler (only possible from the main thread).  True if one is in place."""
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _ignore)
    return True


class Kicker:
    """Interrupt one vCPU's KVM_RUN on request (:meth:`kick`) or at a host time (:meth:`arm`)."""

    def __init__(self, kvm_run: s.KvmRun) -> None:
        self.kvm_run = kvm_run
        self.enabled = install_handler()
        #: the thread that calls KVM_RUN (set by the vCPU before each run)
        self.vcpu_thread = threading.get_ident()
        self._cond = threading.Condition()
        self._when: float | None = None
        self._timer: threading.Thread | None = None
        self._closed = False

    def kick(self) -> None:
        """Make the current or next KVM_RUN return with KVM_EXIT_INTR (any thread)."""
        if not self.enabled:
            return
        self.kvm_run.immediate_exit = 1
        if threading.get_ident() != self.vcpu_thread:
            with contextlib.suppress(OSError):  # the thread is gone: nothing to interrupt
                signal.pthread_kill(self.vcpu_thread, KICK_SIGNAL)

    def rearm(self) -> None:
        """Called by the vCPU thread after KVM_RUN returned: the kick has been seen."""
        self.kvm_run.immediate_exit = 0

    def arm(self, when: float | None) -> None:
        """Kick at ``time.monotonic() == when`` (None: no timed kick)."""
        if when == self._when or not self.enabled:
            return
        with self._cond:
            self._when = when
            if when is not None and self._timer is None:
                self._timer = threading.Thread(target=self._run_timer, name="vmxlab-kvm-kicker", daemon=True)
                self._timer.start()
            self._cond.notify()

    def _run_timer(self) -> None:
        with self._cond:
            while not self._closed:
                when = self._when
                if when is None:
                    self._cond.wait()
                    continue
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self._when = None
                self.kick()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=1.0)
            self._timer = None
