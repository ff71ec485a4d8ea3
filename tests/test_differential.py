"""The software CPU against the real CPU: the same programs at CPL 3, compared register by register.

Programs run on vmxlab's software CPU in 32-bit protected mode and on the host CPU, natively at
CPL 3, through two targets:

* ``kvm``: through /dev/kvm, as 64-bit code with 32-bit operand and address size -- on the PVM
  hosts only 64-bit ring-3 code runs natively (vmxlab/diff/kvm_target.py);
* ``native32``: as real 32-bit code in compatibility mode in a worker process, for the forms that
  do not exist in 64-bit mode (BCD, 32-bit PUSH/POP, ...; vmxlab/diff/native_target.py).

Registers, EFLAGS, two data pages and faults (vector, error code, faulting instruction, CR2) must
agree.

* ``test_random_programs``: hypothesis-generated programs over every integer instruction form the
  software CPU implements that the KVM target can run (gen.catalogue reads
  ``vmxlab.cpu.ops.FACTORIES``).  ``VMXLAB_DIFF_EXAMPLES`` (default 10,000) programs, stopped
  early if ``VMXLAB_DIFF_BUDGET`` seconds (default 150) run out.
* ``test_random_programs_native32``: the same over *all* implemented forms on the native32 target
  (``VMXLAB_DIFF_NATIVE_EXAMPLES``, default 3,000).
* ``test_edge_cases``: the hand-written boundaries of vmxlab/diff/cases.py, one test per group, on
  the KVM target where the instructions exist in 64-bit mode and on the native32 target.

Divergences already reported to the owner of the code concerned (vmxlab/diff/known.py) are
counted, not failed on, unless ``VMXLAB_DIFF_STRICT=1``.  The terminal summary says whether the
comparison ran, how much it compared and which known divergences it met.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from vmxlab.backends.kvm import is_pvm, kvm_usable
from vmxlab.diff import cases, gen
from vmxlab.diff.compare import compare, report
from vmxlab.diff.known import KNOWN, classify
from vmxlab.diff.program import Program

EXAMPLES = int(os.environ.get("VMXLAB_DIFF_EXAMPLES", "10000"))
NATIVE_EXAMPLES = int(os.environ.get("VMXLAB_DIFF_NATIVE_EXAMPLES", "3000"))
BUDGET_S = float(os.environ.get("VMXLAB_DIFF_BUDGET", "120"))
STRICT = os.environ.get("VMXLAB_DIFF_STRICT") == "1"


class Stats:
    """What the comparison did, for the terminal summary."""

    def __init__(self) -> None:
        self.reason_not_run: str | None = None
        self.random = 0
        self.random_seconds = 0.0
        self.native_not_run: str | None = None
        self.native_random = 0
        self.native_cases = 0
        self.over_budget = 0
        self.cases = 0
        self.known: collections.Counter[str] = collections.Counter()
        self.known_example: dict[str, str] = {}
        self.unrunnable: set[str] = set()

    def lines(self) -> list[str]:
        if self.reason_not_run:
            out = [f"differential test against the real CPU through /dev/kvm did NOT run: {self.reason_not_run}"]
        else:
            rate = self.random / self.random_seconds if self.random_seconds else 0.0
            where = f"/dev/kvm{', PVM' if is_pvm() else ''}, 64-bit ring 3"
            out = [f"differential test against the real CPU ({where}) RAN: {self.random} random programs "
                   f"({rate:.0f}/s), {self.cases} hand-written cases"]
        if self.native_not_run:
            out.append(f"  native32 (32-bit code in compatibility mode) did NOT run: {self.native_not_run}")
        else:
            out.append(f"  native32 (32-bit code in compatibility mode): {self.native_random} random programs, "
                       f"{self.native_cases} hand-written cases")
        from vmxlab.diff.compare import MODEL_VENDOR, UNDEFINED_MASKS, host_vendor

        if UNDEFINED_MASKS:
            out.append(f"  flags the SDM calls undefined are NOT compared: host {host_vendor()} is not the "
                       f"modelled {MODEL_VENDOR} (vmxlab/diff/compare.py SDM_UNDEFINED)")
        else:
            out.append(f"  flags the SDM calls undefined are compared too (host and model: {MODEL_VENDOR})")
        if self.over_budget:
            out.append(f"  time budget of {BUDGET_S:.0f} s reached: {self.over_budget} examples not compared")
        owners = {kn.key: kn.owner for kn in KNOWN}
        for key, n in self.known.most_common():
            out.append(f"  known divergence {key} ({owners[key]}): {n} programs; e.g.")
            out.extend("    " + line for line in self.known_example[key].splitlines())
        if self.unrunnable:
            out.append("  not compared on this host (invalid or different in 64-bit mode, and no native32): "
                       + " ".join(sorted(self.unrunnable)))
        return out


STATS = Stats()


class _Summary:
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:  # noqa: ANN001 - pytest's type
        for line in STATS.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def emu(request: pytest.FixtureRequest) -> object:
    """The software CPU target, shared by every test of the module (also registers the summary)."""
    if not request.config.pluginmanager.has_plugin("vmxlab-diff-summary"):
        request.config.pluginmanager.register(_Summary(), "vmxlab-diff-summary")
    from vmxlab.diff.emu_target import EmuTarget

    return EmuTarget()


@pytest.fixture(scope="module")
def kvm(emu: object) -> Iterator[object | None]:
    """The KVM target, or None where /dev/kvm is unusable (the reason goes to the summary)."""
    usable, why = kvm_usable()
    if not usable:
        STATS.reason_not_run = why
        yield None
        return
    from vmxlab.diff.kvm_target import KvmTarget

    target = KvmTarget()
    yield target
    target.close()


@pytest.fixture(scope="module")
def native(emu: object) -> Iterator[object | None]:
    """The native32 target, or None where 32-bit user code cannot run (the reason goes to the summary)."""
    from vmxlab.diff.native_target import Native32Target, NativeUnavailable

    try:
        target = Native32Target()
    except (NativeUnavailable, OSError) as e:
        STATS.native_not_run = str(e)
        yield None
        return
    yield target
    target.close()


def _check(hw_target: object, sw_target: object, program: Program) -> None:
    """Run ``program`` on both targets; fail with a full report on any unknown difference."""
    hw = hw_target.run(program)  # type: ignore[attr-defined]
    sw = sw_target.run(program)  # type: ignore[attr-defined]
    diffs = compare(program, hw, sw, supervisor_absent=getattr(hw_target, "supervisor_absent", False),
                    private=getattr(hw_target, "private", ()))
    if diffs and not STRICT:
        known = classify(program, hw, sw, diffs)
        if known is not None:
            STATS.known[known.key] += 1
            STATS.known_example.setdefault(known.key, report(program, hw, sw, diffs))
            return
    where = getattr(hw_target, "name", "hardware")
    assert not diffs, f"software CPU differs from the hardware ({where} target):\n" + report(program, hw, sw, diffs)


TEMPLATES = gen.kvm_templates()
_DEADLINE: list[float] = []


@pytest.mark.kvm
@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_programs(kvm: object | None, emu: object, data: st.DataObject) -> None:
    if kvm is None:
        pytest.skip(f"differential test against the real CPU through /dev/kvm did not run: {STATS.reason_not_run}")
    if not _DEADLINE:
        _DEADLINE.append(time.monotonic() + BUDGET_S)
    if time.monotonic() > _DEADLINE[0]:
        STATS.over_budget += 1
        return
    t0 = time.perf_counter()
    program = gen.program(gen.HypothesisChooser(data), TEMPLATES)
    try:
        program.encode(32)
        program.encode(64)
    except ValueError:
        reject()  # a loop target out of rel8 range: iced would expand the branch
    _check(kvm, emu, program)
    STATS.random += 1
    STATS.random_seconds += time.perf_counter() - t0


ALL_TEMPLATES = gen.catalogue()


@settings(max_examples=NATIVE_EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_programs_native32(native: object | None, emu: object, data: st.DataObject) -> None:
    if native is None:
        pytest.skip(f"native32 target unavailable: {STATS.native_not_run}")
    if not _DEADLINE:
        _DEADLINE.append(time.monotonic() + BUDGET_S)
    if time.monotonic() > _DEADLINE[0]:
        STATS.over_budget += 1
        return
    program = gen.program(gen.HypothesisChooser(data), ALL_TEMPLATES)
    try:
        program.encode(32)
    except ValueError:
        reject()
    _check(native, emu, program)
    STATS.native_random += 1


_KVM_CODES = {t.code for t in TEMPLATES}
_IMPLEMENTED = {t.code for t in ALL_TEMPLATES}


@pytest.mark.parametrize("group", list(cases.GROUPS))
def test_edge_cases(kvm: object | None, native: object | None, emu: object, group: str) -> None:
    """Every case of ``group`` on each hardware target that can run it; failures are collected so one
    run shows all of them."""
    hw_kvm, sw = kvm, emu
    failures = []
    ran = 0
    for program in cases.GROUPS[group]():
        codes = {insn.code for insn in program.insns}
        if not codes <= _IMPLEMENTED:
            continue  # the software CPU does not implement it yet: nothing to compare
        hws = [t for t in (hw_kvm if codes <= _KVM_CODES else None, native) if t is not None]
        if not hws:
            STATS.unrunnable.update(insn.code.split("_")[0] for insn in program.insns)
            continue
        ran += 1
        for hw in hws:
            try:
                _check(hw, sw, program)
            except AssertionError as e:
                failures.append(str(e))
        STATS.cases += hw_kvm is not None and hw_kvm in hws
        STATS.native_cases += native is not None and native in hws
    if ran == 0:
        pytest.skip(f"{group}: no hardware target can run these cases here (KVM: "
                    f"{STATS.reason_not_run or 'the instructions are invalid in 64-bit mode'}; native32: "
                    f"{STATS.native_not_run or 'ok'})")
    assert not failures, f"{len(failures)} {group} comparisons differ:\n" + "\n".join(failures[:20])


def test_harness_detects_a_wrong_flag(kvm: object | None, native: object | None, emu: object,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: a software CPU whose ADD gets CF wrong is caught on the first case."""
    from vmxlab.cpu import flags as fl

    real = fl.oszapc

    def broken(cc_op: int, a: int, b: int, res: int) -> int:
        return real(cc_op, a, b, res) ^ (fl.CF if cc_op >> 2 == fl.K_ADD else 0)

    monkeypatch.setattr(fl, "oszapc", broken)
    program = cases.prog("add with carry out", "add eax, ebx", {"eax": 0xFFFFFFFF, "ebx": 1})
    hw_target = kvm or native
    if hw_target is None:
        pytest.skip("no hardware target on this host")
    hw, sw = hw_target.run(program), emu.run(program)  # type: ignore[attr-defined]
    diffs = compare(program, hw, sw)
    assert [d.what for d in diffs] == ["eflags"] and "CF" in diffs[0].got
    assert hw.eflags & fl.CF  # the hardware's carry, as the SDM defines ADD
