"""What running a :class:`~vmxlab.diff.program.Program` on one target produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from .program import GPR32

#: the error both targets report when a program itself touches layout.EXIT_PAGE (any access but the
#: final 4-byte store to its first byte)
EXIT_PAGE_ACCESS = "access to the exit page"

VECTOR_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF", 10: "#TS",
                11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}


@dataclass(frozen=True)
class Fault:
    """An exception raised by the program, as the CPU reported it in the exception frame."""

    vector: int
    error_code: int | None
    index: int  # which instruction of the program (from the saved EIP)
    cr2: int | None = None  # #PF only

    def __str__(self) -> str:
        ec = "" if self.error_code is None else f"({self.error_code:#x})"
        cr2 = f" cr2={self.cr2:#x}" if self.cr2 is not None else ""
        name = VECTOR_NAMES.get(self.vector, f"vector {self.vector}")
        return f"{name}{ec} at instruction {self.index}{cr2}"


@dataclass
class Outcome:
    """Registers (low 32 bits; ESP is the user ESP), EFLAGS, the compared pages, and how it ended.

    ``error`` is set when the target could not run the program at all (e.g. a KVM
    internal error, or a stop the harness does not expect); such outcomes are
    reported, never compared.
    """

    regs: tuple[int, ...]
    eflags: int
    pages: dict[int, bytes] = field(default_factory=dict)
    fault: Fault | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"error: {self.error}"
        regs = " ".join(f"{n}={v:#010x}" for n, v in zip(GPR32, self.regs))
        end = f"fault {self.fault}" if self.fault else "ran to the end"
        return f"{end}; {regs} eflags={self.eflags:#x}"
