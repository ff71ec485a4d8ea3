"""Opt-in: boot the Debian kernel to the busybox shell on /dev/kvm, type a command, power off.

Run with ``pytest -m linux tests/test_linux_boot.py`` (or VMXLAB_LINUX=1) after
``scripts/fetch-linux.sh`` (kernel and busybox in ./linux-guest, or VMXLAB_LINUX_DIR).  On the PVM
hosts here the boot takes minutes (every ring-0 instruction runs in KVM's emulator, docs/kvm.md), so
the test is not part of the default run.  Whatever happens, the milestones reached and their times
are printed and written to linux-boot-milestones.json in the pytest temporary directory, so a failed
boot still records how far the kernel got.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from vmxlab.backends.kvm.availability import kvm_usable
from vmxlab.machine.machine import StopReason

ROOT = Path(__file__).resolve().parent.parent
LINUX_DIR = Path(os.environ.get("VMXLAB_LINUX_DIR", ROOT / "linux-guest"))
_OK, _WHY = kvm_usable()

pytestmark = [pytest.mark.linux, pytest.mark.kvm,
              pytest.mark.skipif(not _OK, reason=f"/dev/kvm not usable: {_WHY}")]


@pytest.fixture
def opted_in(request: pytest.FixtureRequest) -> None:
    if "linux" not in (request.config.getoption("markexpr") or "") and not os.environ.get("VMXLAB_LINUX"):
        pytest.skip("opt-in: run with -m linux (or VMXLAB_LINUX=1); the boot takes minutes on PVM hosts")


@pytest.fixture
def guest_files() -> tuple[Path, Path]:
    kernels = sorted((LINUX_DIR / "boot").glob("vmlinuz-*"))
    initrd = LINUX_DIR / "initramfs.cpio"
    if not kernels or not initrd.exists():
        pytest.skip(f"no kernel/initramfs in {LINUX_DIR}: run scripts/fetch-linux.sh {LINUX_DIR}")
    return kernels[-1], initrd


def test_boot_to_the_busybox_shell_and_run_a_command(opted_in: None, guest_files: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    from vmxlab.commands.boot_linux import boot

    kernel, initrd = guest_files
    args = argparse.Namespace(kernel=kernel, initrd=initrd, cmdline="", mem=256, entry="vmlinux", run=None,
                              send="echo vmxlab-$((6*7)); poweroff -f\\n", timeout=1800.0,
                              no_pvm_workarounds=False)
    stop, seconds, console, vmm, vcpu, lb = boot(args, echo=False)
    record = {"stop": stop.reason.value, "detail": stop.detail, "seconds": round(seconds, 1),
              "milestones": [(m.name, round(m.seconds, 1)) for m in console.reached]}
    (tmp_path / "linux-boot-milestones.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    text = console.text()
    last = console.last()
    assert "vmxlab-42" in text, f"the kernel got as far as {last.name if last else 'nothing'}: {record}"
    assert [m.name for m in console.reached][:1] == ["linux-version"]
    assert "shell-prompt" in [m.name for m in console.reached]
    assert stop.reason == StopReason.HALTED, record  # poweroff -f: the CPU halts with interrupts off
