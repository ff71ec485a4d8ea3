"""The standard board: which device sits at which port (the PC/ISA layout vmxlab models).

Both backends call :func:`attach_standard_devices` on the same :class:`Machine`,
so a guest sees the same hardware on ``emu`` and ``kvm``.

=================  ==========  =====  ===============================================
ports              device      IRQ    module
=================  ==========  =====  ===============================================
0x20-0x21, 0xA0-   8259A pair  --     pic8259.py (``machine.intc``)
0xA1, 0x4D0-0x4D1
0x40-0x43          8254 PIT    0      pit8254.py
0x60, 0x64         i8042       1      i8042.py
0x61               port B      --     sysctrl.py (timer 2 gate / output)
0x70-0x71          CMOS RTC    --     cmos.py
0x80, 0x190        POST codes  --     post.py
0x92               port A      --     sysctrl.py (A20, fast reset)
0xE9               debug con.  --     debugcon.py
0xF4               debug exit  --     debugexit.py
0x3F8-0x3FF        16550A      4      uart16550.py (COM1)
0x8900             shutdown    --     debugexit.py
=================  ==========  =====  ===============================================

Every other port reads as all ones and ignores writes (iobus.py).  The PIC is attached first so
that the other devices' IRQ lines reach it.
"""

from __future__ import annotations

from ..machine.machine import Machine
from .cmos import Cmos
from .debugcon import PORT as E9_PORT
from .debugcon import DebugConsole
from .debugexit import DEBUG_EXIT_PORT, SHUTDOWN_PORT, DebugExit, ShutdownPort
from .i8042 import I8042
from .pic8259 import DualPic
from .pit8254 import Pit8254
from .post import PORTS as POST_PORTS
from .post import PostPort
from .sysctrl import PORT as SYSCTRL_PORT
from .sysctrl import PORT_B as SYSCTRL_B_PORT
from .sysctrl import SystemControlA, SystemControlB
from .uart16550 import Uart16550


def attach_standard_devices(machine: Machine) -> Machine:
    ports = machine.ports
    DualPic(machine).attach()
    pit = Pit8254(machine).attach()
    ports.register(SYSCTRL_B_PORT, 1, machine.add_device("sysctrl-b", SystemControlB(machine, pit)))
    Uart16550(machine).attach()
    Cmos(machine).attach()
    I8042(machine).attach()
    ports.register(E9_PORT, 1, machine.add_device("debugcon", DebugConsole(machine.console)))
    ports.register(DEBUG_EXIT_PORT, 1, machine.add_device("debug-exit", DebugExit(machine)), wide=True)
    ports.register(SHUTDOWN_PORT, 1, machine.add_device("shutdown", ShutdownPort(machine)))
    ports.register(SYSCTRL_PORT, 1, machine.add_device("sysctrl-a", SystemControlA(machine)))
    post = machine.add_device("post", PostPort(machine))
    for p in POST_PORTS:
        ports.register(p, 1, post)
    return machine
