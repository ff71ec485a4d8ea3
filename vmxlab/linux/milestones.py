"""How far a Linux boot got, and when: console lines matched against known milestones.

The kernel's own log is the only progress report a boot gives, so the console is watched for
the lines below (their texts come from the kernel source named in each entry) and the host
time of the first occurrence of each is recorded.  Used by ``vmxlab boot-linux`` (the summary),
by the opt-in boot test, and for the figures in docs/kvm.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..machine.machine import Console
from .initramfs import READY_MARKER

#: (name, text) in boot order
MILESTONES: list[tuple[str, str]] = [
    ("linux-version", "Linux version"),  # init/version.c linux_banner
    ("command-line", "Command line:"),  # arch/x86/kernel/setup.c
    ("memory", "Memory: "),  # mm/page_alloc.c mem_init_print_info
    ("calibrate", "Calibrating delay loop"),  # init/calibrate.c
    ("fpu", "x86/fpu:"),  # arch/x86/kernel/fpu/init.c
    ("devtmpfs", "devtmpfs: initialized"),  # drivers/base/devtmpfs.c
    ("serial", "ttyS0 at I/O 0x3f8"),  # drivers/tty/serial/8250/8250_core.c
    ("unpack-rootfs", "Trying to unpack rootfs image as initramfs"),  # init/initramfs.c
    ("free-init", "Freeing unused kernel image"),  # init/main.c free_initmem
    ("run-init", "Run /init as init process"),  # init/main.c run_init_process
    ("initramfs-ready", READY_MARKER),  # vmxlab's /init (initramfs.py)
    ("shell-prompt", "/ # "),  # busybox ash's prompt for root in /
    ("power-down", "reboot: Power down"),  # kernel/reboot.c
    ("restart", "reboot: Restarting system"),
    ("panic", "Kernel panic"),  # kernel/panic.c
]


@dataclass
class Milestone:
    name: str
    text: str
    seconds: float


class MilestoneConsole(Console):
    """A Console that timestamps the milestones as their text goes by."""

    def __init__(self, echo: bool = True, t0: float | None = None) -> None:
        super().__init__(echo=echo)
        self.t0 = time.monotonic() if t0 is None else t0
        self.reached: list[Milestone] = []
        self._tail = b""
        self._seen: set[str] = set()
        #: called with each milestone as it is reached (e.g. to type at the shell prompt)
        self.on_milestone: Callable[[Milestone], None] | None = None

    def write(self, data: bytes, channel: str = "console") -> None:
        super().write(data, channel)
        window = self._tail + data
        for name, text in MILESTONES:
            if name not in self._seen and text.encode() in window:
                self._seen.add(name)
                m = Milestone(name, text, time.monotonic() - self.t0)
                self.reached.append(m)
                if self.on_milestone is not None:
                    self.on_milestone(m)
        self._tail = window[-96:]

    def last(self) -> Milestone | None:
        return self.reached[-1] if self.reached else None

    def table(self) -> str:
        return "\n".join(f"  {m.seconds:8.1f} s  {m.name:<16} {m.text!r}" for m in self.reached)
