"""The reset-vector conformance ROM (guests/conformance_rom.asm): reset state, real mode, A20,
protected mode, rings, gates, paging and back to real mode, reported as POST codes on port 0x190."""

from __future__ import annotations

from vmxlab.assemble import guest_path
from vmxlab.machine.machine import StopReason
from vmxlab.runner import RunOptions, run_image

STEPS = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0xFF]


def run_rom(engine: str, mem_mib: int = 32):
    opts = RunOptions(image=guest_path("conformance_rom"), format="rom", max_instructions=2_000_000,
                      engine=engine, echo=False, mem_mib=mem_mib)
    return run_image(opts)


def test_rom_passes_every_step(engine: str) -> None:
    r = run_rom(engine)
    assert r.machine.post_codes == STEPS, f"stopped after POST {r.machine.post_codes[-1:]}: {r.stop}"
    assert r.console == b"conformance ROM: all steps passed\n"
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST
    assert "last POST code 0xff" in r.summary()


def test_rom_starts_at_the_reset_vector() -> None:
    """SDM Vol.3A 10.1.4: the first instruction is fetched at FFFFFFF0H (CS base FFFF0000H, EIP FFF0H)."""
    from vmxlab.backends.emu import EmuBackend
    from vmxlab.machine.rom import load_rom
    from vmxlab.runner import build_machine

    opts = RunOptions(image=guest_path("conformance_rom"), format="rom", echo=False)
    machine = build_machine(opts)
    from vmxlab.assemble import assemble

    entry = load_rom(machine, assemble(guest_path("conformance_rom")).read_bytes())
    backend = EmuBackend(machine)
    backend.apply_entry(entry)
    cpu = backend.cpu
    assert (cpu.segs[1].selector, cpu.segs[1].base, cpu.eip) == (0xF000, 0xFFFF0000, 0xFFF0)
    assert machine.memory.read(0xFFFFFFF0, 1) == 0xEA  # jmp far ptr16:16
    stop = backend.run(1)
    assert cpu.segs[1].base == 0xF0000  # the far jump reloaded CS the real-mode way
    assert stop.reason == StopReason.BUDGET
