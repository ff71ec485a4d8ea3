"""Build and run small NASM guests from Python: used by tests, the differential harness and `explain`.

``run_snippet`` wraps a piece of assembly in a standard prologue for the chosen
mode, assembles it with nasm (cached), runs it on the software CPU and returns
the :class:`~vmxlab.runner.RunResult` (console, stop reason, final CPU state).

Modes:
* ``real``  -- ``bits 16``, loaded at 0x7C00, entered at 0000:7C00, SS:SP = 0000:7000.
* ``pm32``  -- ``bits 32``, loaded at 0x100000, flat 32-bit protected mode (CS 0x10, data 0x18),
  ESP = 0x7000, paging off.

The snippet ends by falling into ``hlt`` with interrupts off (stop reason
"halted"); it may also use the macros of guests/include/vmxlab.inc.
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

from .runner import RunOptions, RunResult, run_image

PROLOGUE = {
    "real": "bits 16\norg 0x7C00\n%include \"vmxlab.inc\"\nstart:\n",
    "pm32": "bits 32\norg 0x100000\n%include \"vmxlab.inc\"\nstart:\n",
}
EPILOGUE = "\n__end:\n        cli\n        hlt\n        jmp __end\n"
LOAD = {"real": 0x7C00, "pm32": 0x100000}
ENTRY = {"real": "real:0:0x7c00", "pm32": "pm32:0x100000"}

_TMP = Path(tempfile.gettempdir()) / "vmxlab-snippets"


def snippet_source(body: str, mode: str = "pm32", epilogue: bool = True) -> str:
    return PROLOGUE[mode] + textwrap.dedent(body) + (EPILOGUE if epilogue else "")


def write_snippet(body: str, mode: str = "pm32", epilogue: bool = True) -> Path:
    """Write a snippet's full source to a content-named .asm file (so nasm output caches well)."""
    import hashlib

    src = snippet_source(body, mode, epilogue)
    _TMP.mkdir(parents=True, exist_ok=True)
    path = _TMP / f"snip-{hashlib.sha256(src.encode()).hexdigest()[:16]}.asm"
    if not path.exists():
        path.write_text(src)
    return path


def run_snippet(body: str, mode: str = "pm32", *, max_instructions: int = 1_000_000, engine: str = "fast",
                epilogue: bool = True, mem_mib: int = 32, **kw) -> RunResult:
    """Assemble and run ``body`` in ``mode``; returns the run result (console captured, not echoed)."""
    path = write_snippet(body, mode, epilogue)
    opts = RunOptions(image=path, format="flat", load=LOAD[mode], entry=ENTRY[mode], mem_mib=mem_mib,
                      max_instructions=max_instructions, engine=engine, echo=False, **kw)
    return run_image(opts)


def run_guest(name: str, *, max_instructions: int | None = 50_000_000, engine: str = "fast",
              **kw) -> RunResult:
    """Run a bundled guest (guests/NAME.asm) with its default load address and entry."""
    from .assemble import guest_path

    opts = RunOptions(image=guest_path(name), max_instructions=max_instructions, engine=engine, echo=False,
                      **kw)
    return run_image(opts)
