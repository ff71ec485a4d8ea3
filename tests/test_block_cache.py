"""The block cache is bounded (issue 7): a full cache is dropped and refilled, which must not change
what the guest does -- same output, same instruction count, same stop -- only how often it is
translated.  kernel_mix runs ring 0 and ring 3 code in two address spaces with interrupts, so a flush
lands at many different points of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmxlab.cli import main
from vmxlab.machine.machine import StopReason
from vmxlab.runner import RunOptions, run_image

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(block_cache: int | None, vmx: bool = False):
    opts = RunOptions(BENCH / "kernel_mix.asm", format="flat", load=0x100000, entry="pm32:0x100000",
                      echo=False, defines={"ITER": 3000}, max_instructions=10**8, block_cache=block_cache,
                      vmx=vmx)
    return run_image(opts)


@pytest.mark.parametrize("vmx", [False, True], ids=["bare", "vmx"])
def test_a_tiny_block_cache_flushes_and_changes_nothing_the_guest_sees(vmx: bool) -> None:
    full, tiny = _run(None, vmx), _run(6, vmx)
    assert full.stop.reason == tiny.stop.reason == StopReason.DEBUG_EXIT
    assert tiny.console.startswith(b"checksums ")
    assert tiny.console == full.console
    assert tiny.instructions == full.instructions
    assert full.backend.cpu.blocks.flushes == 0
    blocks = tiny.backend.cpu.blocks
    assert blocks.flushes > 10
    assert len(blocks.blocks) <= 6
    assert blocks.translations > full.backend.cpu.blocks.translations


def test_block_cache_option_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(BENCH / "kernel_mix.asm"), "--load", "0x100000", "--entry", "pm32:0x100000",
               "--block-cache", "0"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "--block-cache 0: must be at least 1" in err
    assert "Traceback" not in err
