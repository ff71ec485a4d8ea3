"""The Python VMM (vmm/): guests behave the same in VMX non-root operation as on bare metal under
every exit policy, while the VMM sees the exits the policy asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmxlab.assemble import guest_path
from vmxlab.cli import main
from vmxlab.errors import UserError
from vmxlab.guestkit import write_snippet
from vmxlab.machine.machine import StopReason
from vmxlab.runner import RunOptions, run_image
from vmxlab.vmm.policies import PRESETS, policy_from_options


def run(image: Path, vmx: bool, policy: str = "default", **kw):
    return run_image(RunOptions(image=image, echo=False, vmx=vmx, policy=policy,
                                max_instructions=kw.pop("max_instructions", 50_000_000), **kw))


def exits(r) -> dict[int, int]:
    return {row["reason"]: row["count"] for row in r.backend.vm.exit_counts()}


@pytest.mark.parametrize("guest", ["hello", "pm_switch"])
@pytest.mark.parametrize("policy", list(PRESETS))
def test_guest_output_identical_under_every_policy(guest: str, policy: str) -> None:
    bare = run(guest_path(guest), vmx=False)
    virt = run(guest_path(guest), vmx=True, policy=policy)
    assert virt.console == bare.console
    assert virt.stop.reason == bare.stop.reason == StopReason.SHUTDOWN_REQUEST
    assert exits(virt)[30] > 0  # I/O always exits: the VMM owns the devices


def untimed(console: bytes) -> bytes:
    """The console without where timer interrupts landed: exits change timing, not behaviour
    (Popek & Goldberg's equivalence allows differences in timing)."""
    import re

    return re.sub(rb"interrupted ring 3 at [0-9a-f:]+", b"interrupted ring 3 at ...", console)


def test_teaching_kernel_runs_as_a_guest() -> None:
    """The protection-ring teaching kernel (timer, syscalls, 15 violations) gives the same console
    output in VMX non-root operation; its ring-3 violations never reach the VMM."""
    opts = dict(format="multiboot")
    bare = run(guest_path("kernel/teaching"), vmx=False, **opts)
    virt = run(guest_path("kernel/teaching"), vmx=True, **opts)
    assert untimed(virt.console) == untimed(bare.console) and b"#GP" in bare.console
    counts = exits(virt)
    assert 0 not in counts  # no exception exits: the exception bitmap is 0 under "default"
    assert counts.get(12, 0) >= 1 or counts.get(1, 0) >= 1  # the timer reached the VMM


def test_paranoid_reflects_every_exception_into_the_guest() -> None:
    virt = run(guest_path("kernel/teaching"), vmx=True, policy="paranoid", format="multiboot")
    bare = run(guest_path("kernel/teaching"), vmx=False, format="multiboot")
    assert untimed(virt.console) == untimed(bare.console)
    assert exits(virt).get(0, 0) >= 15  # each violation exited (exception bitmap all ones) and was reflected


def test_string_io_is_replayed_exactly() -> None:
    src = write_snippet("""
        mov esi, text
        mov ecx, 5
        mov dx, 0xE9
        cld
        rep outsb
        jmp __end
    text: db "hello"
    """, "pm32")
    r = run(src, vmx=True, load=0x100000, entry="pm32:0x100000", format="flat")
    assert r.console == b"hello"
    assert r.backend.vcpu.get_regs()["ecx"] == 0


def test_exit_override_turns_one_control_on() -> None:
    src = write_snippet("rdtsc\nrdtsc\n", "pm32")
    plain = run(src, vmx=True, load=0x100000, entry="pm32:0x100000", format="flat")
    assert 16 not in exits(plain)
    r = run_image(RunOptions(image=src, echo=False, vmx=True, exits=["rdtsc=on"], load=0x100000,
                             entry="pm32:0x100000", format="flat", max_instructions=10000))
    assert exits(r)[16] == 2


@pytest.mark.parametrize("bad, message", [("nosuch=on", "unknown exit"), ("hlt=maybe", "NAME=on")])
def test_bad_exit_override(bad: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        policy_from_options("default", [bad])


def test_virtual_msrs_and_cr_shadows() -> None:
    """Under paranoid every MSR and CR0/CR4 write exits: the guest still reads back what it wrote,
    sees IA32_FEATURE_CONTROL locked with VMX off, and an unknown MSR gives it #GP."""
    src = write_snippet("""
        mov ecx, 0x3A               ; IA32_FEATURE_CONTROL
        rdmsr
        mov [0x8000], eax
        mov eax, cr0
        or eax, 0x00040000          ; CR0.AM
        mov cr0, eax
        mov eax, cr0
        mov [0x8004], eax
        mov ecx, 0x174              ; IA32_SYSENTER_CS
        mov eax, 0x1234
        xor edx, edx
        wrmsr
        rdmsr
        mov [0x8008], eax
    """, "pm32")
    r = run(src, vmx=True, policy="paranoid", load=0x100000, entry="pm32:0x100000", format="flat")
    mem = r.machine.memory
    assert mem.read(0x8000, 4) == 1  # locked, VMX disabled
    assert mem.read(0x8004, 4) & 0x00040001 == 0x00040001  # AM set, PE still set; NE hidden by the shadow
    assert not mem.read(0x8004, 4) & 0x20
    assert mem.read(0x8008, 4) == 0x1234
    assert exits(r)[31] == 2 and exits(r)[32] == 1
    assert exits(r)[28] == 1  # the CR0 write; reads of CR0 never exit: they see the read shadow (SDM 26.3)


def test_run_vmx_json_reports_exits(capsys) -> None:
    status = main(["run", str(guest_path("hello")), "--vmx", "--json"])
    out = capsys.readouterr().out
    assert status == 0
    assert '"name": "IO_INSTRUCTION"' in out and '"policy": "default' in out
