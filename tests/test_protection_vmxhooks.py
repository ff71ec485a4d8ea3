"""The CPU's VMX hook points for the protection instructions (vmxlab/cpu/vmxhooks.py): "ldtr_tr" for
SLDT/STR/LLDT/LTR and "task_switch" for hardware task switches -- called after the #UD and privilege
checks and before the instruction's effect (SDM Vol.3C 26.1.1, 26.4.2)."""

from __future__ import annotations

import pytest

from vmxlab.cpu.faults import VmExitSignal
from vmxlab.guestkit import write_snippet
from vmxlab.runner import RunOptions, build_machine, load_image, make_backend


class RecordingHooks:
    """A stand-in for VMX non-root operation that records intercepts and exits on one of them."""

    def __init__(self, exit_on: str | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.exit_on = exit_on
        self.exits: list[VmExitSignal] = []

    def __getattr__(self, name: str):  # any other hook: no exit, no change
        return lambda *a, **k: None

    def intercept(self, cpu, name: str, **info: int) -> None:
        self.calls.append((name, info))
        if name == self.exit_on:
            raise VmExitSignal(99, 0, **info)

    def read_cr(self, cpu, n, value, gpr):
        return value

    def write_cr(self, cpu, n, value, gpr):
        return value

    def check_exception_exit(self, cpu, vector, error_code, kind, **kw) -> None:
        return None

    def external_interrupt_exits(self, cpu) -> bool:
        return False

    def pending_event(self, cpu) -> bool:
        return False

    def halt_can_wake(self, cpu) -> bool:
        return False

    def triple_fault(self, cpu) -> None:
        return None

    def vm_exit(self, cpu, signal: VmExitSignal):
        from vmxlab.machine.machine import StopReason, StopRequest

        self.exits.append(signal)
        return StopRequest(StopReason.VM_EXIT, detail=str(signal.reason))


def run_with_hooks(body: str, hooks: RecordingHooks, engine: str = "interp"):
    """Run a pm32 snippet with ``hooks`` as the CPU's VMX non-root interface; return (stop, cpu)."""
    from vmxlab.assemble import assemble

    path = write_snippet(body, "pm32")
    opts = RunOptions(image=path, format="flat", load=0x100000, entry="pm32:0x100000", echo=False,
                      max_instructions=10_000, engine=engine)
    machine = build_machine(opts)
    entry = load_image(machine, opts, assemble(path).read_bytes())
    backend = make_backend(machine, opts)
    backend.apply_entry(entry)
    backend.cpu.vmx = hooks
    return backend.run(opts.max_instructions), backend.cpu


TABLES_AT = """
        ; GDT at 0x2000: null, code 0x08, data 0x10, LDT 0x18 (base 0x3000),
        ; TSS 0x20 (base 0x3100), TSS 0x28 (base 0x3200)
        mov dword [0x2000], 0
        mov dword [0x2004], 0
        mov dword [0x2008], 0x0000FFFF
        mov dword [0x200C], 0x00CF9A00
        mov dword [0x2010], 0x0000FFFF
        mov dword [0x2014], 0x00CF9200
        mov dword [0x2018], 0x3000000F
        mov dword [0x201C], 0x00008200
        mov dword [0x2020], 0x31000067
        mov dword [0x2024], 0x00008900
        mov dword [0x2028], 0x32000067
        mov dword [0x202C], 0x00008900
        mov word [0x2100], 0x2F
        mov dword [0x2102], 0x2000
        lgdt [0x2100]
        jmp 0x08:.cs
    .cs:
        mov ax, 0x10
        mov ds, ax
        mov ss, ax
"""


@pytest.mark.parametrize("insn, identity", [("sldt ax", 0), ("str ax", 1), ("lldt ax", 2), ("ltr ax", 3)])
def test_ldtr_tr_intercept_identity(insn: str, identity: int) -> None:
    hooks = RecordingHooks()
    _, cpu = run_with_hooks(TABLES_AT + f"""
        mov ax, {0x18 if insn.startswith('lldt') else 0x20}
        {insn}
    """, hooks)
    assert ("ldtr_tr", {"instruction": identity}) in hooks.calls


def test_ldtr_tr_exit_comes_before_the_effect_and_after_privilege() -> None:
    """An exiting LTR leaves TR and the busy bit alone; LTR at CPL 3 would #GP before any exit."""
    hooks = RecordingHooks(exit_on="ldtr_tr")
    stop, cpu = run_with_hooks(TABLES_AT + """
        mov ax, 0x20
        ltr ax
    """, hooks)
    assert stop.reason.value == "vm-exit"
    assert cpu.tr.selector == 0
    assert cpu.memory.read(0x2025, 1) == 0x89  # still available: LTR did not run


def test_task_switch_always_reaches_the_hook() -> None:
    """SDM Vol.3C 26.4.2: a task switch in VMX non-root operation is a VM exit (reason 9) after the checks
    on the new TSS descriptor; the hook gets the TSS selector and the source (2 = JMP)."""
    hooks = RecordingHooks(exit_on="task_switch")
    stop, cpu = run_with_hooks(TABLES_AT + """
        mov ax, 0x20
        ltr ax
        jmp 0x28:0
    """, hooks)
    assert ("task_switch", {"selector": 0x28, "source": 2}) in hooks.calls
    assert stop.reason.value == "vm-exit"
    assert cpu.tr.selector == 0x20  # the switch did not happen


def test_task_switch_faults_before_the_hook() -> None:
    """A busy target TSS is #GP(selector) before any exit (SDM Vol.3C 26.4.2, check 3)."""
    hooks = RecordingHooks(exit_on="task_switch")
    stop, cpu = run_with_hooks(TABLES_AT + """
        mov ax, 0x20
        ltr ax
        jmp 0x20:0
    """, hooks)
    assert not any(name == "task_switch" for name, _ in hooks.calls)
