"""The external-emulator runner of ``vmxlab bench --external`` (vmxlab/bench_external.py).

No timing is asserted (DESIGN.md: timings live in bench/).  These tests check that the option ROM is
built right, that the emulators' output is parsed right (from canned output, always), and -- when
Bochs or QEMU is installed -- that a real run of a bench guest reaches its isa-debug-exit with the
same status and console output as vmxlab.
"""

from __future__ import annotations

import pytest

from vmxlab.bench_external import (
    BENCH_DIR,
    COMPARISONS,
    GUEST_OUTPUT_MARKER,
    LOAD_ADDR,
    OUT_F4_AL,
    Bochs,
    Qemu,
    build_image,
    format_report,
    run_vmxlab,
)

ALU = BENCH_DIR / "alu_mem_pm32.asm"
KMIX = BENCH_DIR / "kernel_mix.asm"


def test_option_rom_is_well_formed_and_carries_the_guest() -> None:
    from vmxlab.assemble import assemble

    image = build_image(ALU, 1000)
    rom = image.rom.read_bytes()
    guest = assemble(ALU, {"ITER": 1000}).read_bytes()
    assert rom[:2] == b"\x55\xaa"
    assert len(rom) % 512 == 0 and rom[2] * 512 == len(rom)
    assert sum(rom) & 0xFF == 0  # the BIOS skips an option ROM whose bytes do not add up to 0
    assert guest in rom
    # every stop address is an `out 0xF4, al` of the guest as loaded at 0x100000
    assert image.exit_addresses
    for a in image.exit_addresses:
        assert guest[a - LOAD_ADDR:a - LOAD_ADDR + 2] == OUT_F4_AL


def test_kernel_mix_has_both_exits_as_breakpoints() -> None:
    """kernel_mix stops through EXIT_STATUS 0 (done) or 2 (a bad page fault): Bochs must stop at either."""
    assert len(build_image(KMIX, 20_000).exit_addresses) == 2


def test_vmxlab_counts_six_instructions_per_loop_iteration() -> None:
    """The per-ITER count that turns the emulators' times into M instructions/s."""
    a, b = run_vmxlab(ALU, 1000), run_vmxlab(ALU, 2000)
    assert (b.instructions - a.instructions) == 6 * 1000
    assert a.status == 0


BOCHS_STDOUT = (
    b"Next at t=0\n(0) [0x0000fffffff0] f000:fff0 (unk. ctxt): jmpf 0xf000:e05b          ; ea5be000f0\n"
    b"<bochs:1> lb 0x100022\n<bochs:2> c\n" + GUEST_OUTPUT_MARKER + b"checksums 1 2\n"
    b"(0) Breakpoint 1, 0x0000000000100022 in ?? ()\nNext at t=48007503\n"
    b"(0) [0x000000100022] 0010:0000000000100022 (unk. ctxt): out 0xf4, al              ; e6f4\n"
    b"<bochs:3> r\nCPU0:\nrax: 00000000_12345602\nrbx: 00000000_00000007\n<bochs:4> q\n"
)


def test_bochs_output_parsing() -> None:
    run = Bochs.parse(BOCHS_STDOUT, b"", 0, 1.5)
    assert run.ok and run.status == 2 and run.ticks == 48007503
    assert run.output == b"checksums 1 2\n"


def test_bochs_without_breakpoint_is_a_failure_with_the_reason() -> None:
    err = b"Bochs is exiting with the following message:\n[CPU0  ] exception(): 3rd (13) exception with no resolution\n"
    run = Bochs.parse(b"Next at t=0\n<bochs:1> c\n", err, 1, 0.5)
    assert not run.ok and "3rd (13) exception" in run.detail
    assert not Bochs.parse(BOCHS_STDOUT, b"", None, 900.0).ok  # timeout


def test_qemu_exit_status_parsing() -> None:
    e9 = b"bios noise" + GUEST_OUTPUT_MARKER + b"hello"
    run = Qemu.parse(e9, b"", (2 << 1) | 1, 0.2)  # isa-debug-exit: (value << 1) | 1
    assert run.ok and run.status == 2 and run.output == b"hello"
    assert not Qemu.parse(e9, b"", 0, 0.2).ok  # 0: reset / triple fault with -no-reboot
    assert not Qemu.parse(b"", b"", 1, 0.2).ok  # the loader never ran


def test_report_shows_a_missing_emulator_as_a_skip_line() -> None:
    vm = {"ok": True, "iter": 2000, "small_iter": 1000, "instructions": 6000, "seconds": 0.001, "mips": 6.0,
          "per_iteration": 6.0, "status": 0, "small_output": ""}
    report = {"repeat": 1, "emulators": {"Bochs": {"missing": "bochs-bin not found"}, "QEMU TCG": {"version": "QEMU"}},
              "rows": [{"name": "alu-mem-pm32", "vmxlab": vm, "Bochs": {"ok": False, "skipped": "bochs-bin not found"},
                        "QEMU TCG": {"ok": True, "iter": 3000, "small_iter": 1000, "instructions": 12000,
                                     "seconds": 0.0001, "mips": 120.0, "status": 0, "small_output": ""}}]}
    text = format_report(report)
    assert "Bochs     skipped: bochs-bin not found" in text
    assert "0.050x (1/20)" in text  # vmxlab's speed as a ratio of QEMU's


def test_comparisons_cover_the_bench_guests() -> None:
    for c in COMPARISONS:
        assert (BENCH_DIR / c.source).exists()
        assert c.small_iter < c.vmxlab_iter < c.bochs_iter <= c.qemu_iter


def _live(emulator_cls):
    why = emulator_cls().missing()
    return pytest.param(emulator_cls, marks=pytest.mark.skipif(why is not None, reason=f"{emulator_cls.label}: {why}"))


INSTALLED = [_live(Bochs), _live(Qemu)]


@pytest.mark.parametrize("emulator_cls", INSTALLED)
def test_emulator_runs_kernel_mix_like_vmxlab(emulator_cls) -> None:
    """The loader recreates vmxlab's entry state well enough that the kernel mix (paging, two address spaces,
    PIT preemption, system calls, demand paging) prints the same checksums and exits with the same status."""
    ours = run_vmxlab(KMIX, 20_000)
    run = emulator_cls().run(build_image(KMIX, 20_000), timeout=120)
    assert run.ok, run.detail
    assert run.status == ours.status == 0
    assert run.output == ours.output and run.output.startswith(b"checksums ")


@pytest.mark.parametrize("emulator_cls", INSTALLED)
def test_emulator_runs_the_ring3_loop(emulator_cls) -> None:
    run = emulator_cls().run(build_image(BENCH_DIR / "alu_mem_ring3.asm", 1000), timeout=120)
    assert run.ok, run.detail
    assert run.status == 0


def test_pypy_iced_stand_in_answers_like_iced() -> None:
    """bench/external/pypy_iced (the iced_x86 stand-in scripts/pypy-bench.sh uses under PyPy) must give the
    answers vmxlab reads from the real iced-x86.  Checked here under CPython, in a child whose iced_x86 is
    the stand-in (its own child runs the real one)."""
    import json
    import os
    import subprocess
    import sys

    code = bytes.fromhex("8b06" "03c3" "8907" "83c203" "49" "75f4" "66ff7510" "e6f4")  # the pm32 loop, push, out
    script = (
        "import json, sys, iced_x86\n"
        f"d = iced_x86.Decoder(32, bytes.fromhex({code.hex()!r}), ip=0x100000)\n"
        "out = []\n"
        "while d.can_decode:\n"
        "    i = d.decode()\n"
        "    out.append([i.code, i.mnemonic, i.len, i.op_count, [i.op_kind(k) for k in range(i.op_count)],\n"
        "                [i.op_register(k) for k in range(i.op_count)], i.memory_base, i.memory_displacement,\n"
        "                i.near_branch_target if i.flow_control == iced_x86.FlowControl.CONDITIONAL_BRANCH else 0,\n"
        "                i.op_code().operand_size, str(i), sorted(u.register for u in\n"
        "                iced_x86.InstructionInfoFactory().info(i).used_registers())])\n"
        "print(json.dumps([iced_x86.__file__, out]))\n"
    )
    shim = BENCH_DIR / "external" / "pypy_iced"
    env = dict(os.environ, PYTHONPATH=str(shim), VMXLAB_ICED_PYTHON=sys.executable)
    stand_in = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert stand_in.returncode == 0, stand_in.stderr
    real = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    shim_file, shim_out = json.loads(stand_in.stdout)
    real_file, real_out = json.loads(real.stdout)
    assert str(shim) in shim_file and str(shim) not in real_file  # really the stand-in, really iced
    assert shim_out == real_out and len(real_out) == 8
