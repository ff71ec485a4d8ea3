"""Instruction semantics, table-driven: one factory per mnemonic family.

A factory receives the decoded iced ``Instruction`` and a :class:`Ctx` (the
mode it was decoded in) and returns a handler ``h(cpu)`` that executes it.
Factories do all decoding work; handlers only compute.

Rules every handler follows (they are what make faults precise and VMX exits
correctly ordered, SDM Vol.3A 6.5 and Vol.3C 26.1.1):

1. Check and raise every fault (#UD, #GP, #SS, #PF, ...) *before* writing any
   register, flag or segment.  Memory stores come before register updates, so
   a faulting store leaves the registers untouched.
2. Privilege checks (CPL, IOPL, I/O bitmap) come before the VM-exit check,
   which comes before the instruction's effect.
3. A handler that transfers control sets ``cpu.eip``; otherwise the engine has
   already set ``cpu.eip`` to the fall-through address of the block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iced_x86 import Instruction, Mnemonic

if TYPE_CHECKING:
    from ..core import CPU

Handler = Callable[["CPU"], None]


@dataclass(frozen=True)
class Ctx:
    """The mode a block was decoded in (everything in the block-cache key)."""

    code32: bool  # CS.D: default operand/address size 32
    stack32: bool  # SS.B: ESP (not SP) is the stack pointer

    def ip_mask(self) -> int:
        return 0xFFFFFFFF if self.code32 else 0xFFFF


Factory = Callable[[Instruction, Ctx], Handler]

FACTORIES: dict[int, Factory] = {}
#: mnemonics after which a block must end even though they do not branch
#: (they change the mode key, IF, the interrupt shadow, or stop the CPU)
ENDS_BLOCK: set[int] = set()


def handles(*mnemonics: str, ends_block: bool = False) -> Callable[[Factory], Factory]:
    """Register a factory for the iced mnemonics named (e.g. ``"ADD"``)."""

    def deco(factory: Factory) -> Factory:
        for name in mnemonics:
            m = getattr(Mnemonic, name)
            if m in FACTORIES:
                raise ValueError(f"two factories for {name}")
            FACTORIES[m] = factory
            if ends_block:
                ENDS_BLOCK.add(m)
        return factory

    return deco


def ends_block(handler: Handler) -> Handler:
    """Mark a handler whose instruction must end its block (it changes the mode key, the
    interrupt state or the translation of code) although its mnemonic usually does not."""
    handler.ends_block = True  # type: ignore[attr-defined]
    return handler


def load_all() -> None:
    """Import every semantics module so their factories register."""
    from . import (  # noqa: F401
        alu,
        bcd,
        bits,
        control,
        datamove,
        flagops,
        io,
        misc,
        protection,
        shift,
        string,
        system,
        vmxinsn,
    )
