"""Divergences between the software CPU and the hardware that are understood and reported to the
owner of the code concerned, but not fixed yet.

Each entry recognises one divergence from the two outcomes, so the differential
test can count it and print it in its summary instead of failing on it, while
any *other* difference still fails the test.  ``VMXLAB_DIFF_STRICT=1`` turns
known divergences into failures too.  Remove an entry when the fix lands: the
test then proves the fix on hardware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .compare import Difference
from .outcome import Outcome
from .program import Program


@dataclass(frozen=True)
class Known:
    key: str
    owner: str  # the module that has to change
    description: str
    matches: Callable[[Program, Outcome, Outcome, list[Difference]], bool]


#: none at the moment: the divergences found so far (read-modify-write loads with write intent,
#: CMPS operand order, 4-GiB segment wrap) were fixed in the CPU and are now checked on hardware
KNOWN: tuple[Known, ...] = ()


def classify(program: Program, hw: Outcome, sw: Outcome, diffs: list[Difference]) -> Known | None:
    """The known divergence these differences are, or None for a new one."""
    for k in KNOWN:
        if k.matches(program, hw, sw, diffs):
            return k
    return None
