"""The standard board: which device sits at which port (the PC/ISA layout vmxlab models).

Both backends call :func:`attach_standard_devices` on the same :class:`Machine`,
so a guest sees the same hardware on ``emu`` and ``kvm``.
"""

from __future__ import annotations

from ..machine.machine import Machine
from .debugcon import PORT as E9_PORT
from .debugcon import DebugConsole
from .debugexit import DEBUG_EXIT_PORT, SHUTDOWN_PORT, DebugExit, ShutdownPort
from .post import PORTS as POST_PORTS
from .post import PostPort
from .sysctrl import PORT as SYSCTRL_PORT
from .sysctrl import SystemControlA


def attach_standard_devices(machine: Machine) -> Machine:
    ports = machine.ports
    ports.register(E9_PORT, 1, machine.add_device("debugcon", DebugConsole(machine.console)))
    ports.register(DEBUG_EXIT_PORT, 1, machine.add_device("debug-exit", DebugExit(machine)), wide=True)
    ports.register(SHUTDOWN_PORT, 1, machine.add_device("shutdown", ShutdownPort(machine)))
    ports.register(SYSCTRL_PORT, 1, machine.add_device("sysctrl-a", SystemControlA(machine)))
    post = machine.add_device("post", PostPort(machine))
    for p in POST_PORTS:
        ports.register(p, 1, post)
    return machine
