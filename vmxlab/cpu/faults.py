"""Exceptions and other events that interrupt the instruction stream.

Inside the execution engine a guest fault is raised as a Python exception
(:class:`CpuFault`) from wherever it is detected (a segment check three calls
deep, a page walk) and caught by the run loop, which delivers it to the guest
through the IVT/IDT -- or turns it into a VM exit.  Nothing here ever escapes
the run loop: callers of :meth:`CPU.run` get values (DESIGN.md, conventions).

Instruction handlers keep faults precise by doing every check that can fault
before they write any register or flag (SDM Vol.3A 6.5: a fault is reported
with the state before the faulting instruction).
"""

from __future__ import annotations

import enum


class Vector(enum.IntEnum):
    """Exception vectors (SDM Vol.3A 6.3.1, Table 6-1)."""

    DE = 0  # divide error
    DB = 1  # debug
    NMI = 2
    BP = 3  # breakpoint (INT3)
    OF = 4  # overflow (INTO)
    BR = 5  # BOUND range exceeded
    UD = 6  # invalid opcode
    NM = 7  # device not available
    DF = 8  # double fault
    TS = 10  # invalid TSS
    NP = 11  # segment not present
    SS = 12  # stack-segment fault
    GP = 13  # general protection
    PF = 14  # page fault
    MF = 16  # x87 FPU error
    AC = 17  # alignment check
    MC = 18  # machine check
    XM = 19  # SIMD floating point
    VE = 20  # virtualization exception


#: exceptions that push an error code (SDM Vol.3A 6.3.1, Table 6-1, "Error Code" column)
HAS_ERROR_CODE = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC})

#: contributory exceptions for the double-fault rules (SDM Vol.3A 6.15, Table 6-4 and 6-5)
CONTRIBUTORY = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})

MNEMONICS = {v: "#" + v.name for v in Vector}


class CpuFault(Exception):  # noqa: N818 - an architectural event, not an error
    """A fault or trap detected while executing an instruction.

    ``error_code`` is None for exceptions without one.  ``is_trap`` marks events
    whose saved EIP is the *next* instruction (INT n, INT3, INTO, debug traps);
    faults save the faulting instruction's EIP.
    """

    def __init__(self, vector: int, error_code: int | None = None, *, cr2: int | None = None,
                 detail: str = "") -> None:
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.detail = detail

    def __str__(self) -> str:
        name = MNEMONICS.get(self.vector, f"vector {self.vector}")
        ec = "" if self.error_code is None else f"({self.error_code:#x})"
        return f"{name}{ec}{' ' + self.detail if self.detail else ''}"


def gp(error_code: int = 0, detail: str = "") -> CpuFault:
    return CpuFault(Vector.GP, error_code, detail=detail)


def ud(detail: str = "") -> CpuFault:
    return CpuFault(Vector.UD, None, detail=detail)


class TripleFault(Exception):  # noqa: N818
    """A fault while delivering #DF (SDM Vol.3A 6.15, interrupt 8): the processor shuts down."""


class CodeModified(Exception):  # noqa: N818
    """A store is about to change bytes of the block being executed.

    Raised before the store, like a fault, so the instruction restarts cleanly;
    the run loop then executes it on its own and retranslates what follows
    (SDM Vol.3A 11.6, self-modifying code).
    """


class VmExitSignal(Exception):  # noqa: N818
    """An instruction or event in VMX non-root operation causes a VM exit (SDM Vol.3C 26).

    Raised by the exit predicates after the higher-priority faults and before
    the instruction has any effect; the run loop performs the exit.
    """

    def __init__(self, reason: int, qualification: int = 0, **info: int) -> None:
        super().__init__(reason, qualification)
        self.reason = reason
        self.qualification = qualification
        self.info = info
