"""The software CPU against the real CPU: the same programs at CPL 3, compared register by register.

Programs run natively on the host CPU through /dev/kvm (vmxlab/diff/kvm_target.py explains why
as 64-bit code with 32-bit operand and address size on the PVM hosts) and on vmxlab's software
CPU in 32-bit protected mode; registers, EFLAGS, two data pages and faults (vector, error code,
faulting instruction, CR2) must agree.

* ``test_random_programs``: hypothesis-generated programs over every integer instruction form the
  software CPU implements (gen.catalogue reads ``vmxlab.cpu.ops.FACTORIES``).
  ``VMXLAB_DIFF_EXAMPLES`` (default 10,000) programs, stopped early if ``VMXLAB_DIFF_BUDGET``
  seconds (default 150) run out.
* ``test_edge_cases``: the hand-written boundaries of vmxlab/diff/cases.py, one test per group.

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
BUDGET_S = float(os.environ.get("VMXLAB_DIFF_BUDGET", "150"))
STRICT = os.environ.get("VMXLAB_DIFF_STRICT") == "1"

pytestmark = pytest.mark.kvm


class Stats:
    """What the comparison did, for the terminal summary."""

    def __init__(self) -> None:
        self.reason_not_run: str | None = None
        self.random = 0
        self.random_seconds = 0.0
        self.over_budget = 0
        self.cases = 0
        self.known: collections.Counter[str] = collections.Counter()
        self.known_example: dict[str, str] = {}
        self.unrunnable: set[str] = set()

    def lines(self) -> list[str]:
        if self.reason_not_run:
            return [f"differential test against the real CPU did NOT run: {self.reason_not_run}"]
        rate = self.random / self.random_seconds if self.random_seconds else 0.0
        where = f"/dev/kvm{', PVM' if is_pvm() else ''}, 64-bit ring 3"
        out = [f"differential test against the real CPU ({where}) RAN: {self.random} random programs "
               f"({rate:.0f}/s), {self.cases} hand-written cases"]
        if self.over_budget:
            out.append(f"  time budget of {BUDGET_S:.0f} s reached: {self.over_budget} examples not compared")
        owners = {kn.key: kn.owner for kn in KNOWN}
        for key, n in self.known.most_common():
            out.append(f"  known divergence {key} ({owners[key]}): {n} programs; e.g.")
            out.extend("    " + line for line in self.known_example[key].splitlines())
        if self.unrunnable:
            out.append("  not comparable on this host (invalid or different in 64-bit mode): "
                       + " ".join(sorted(self.unrunnable)))
        return out


STATS = Stats()


class _Summary:
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:  # noqa: ANN001 - pytest's type
        for line in STATS.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def targets(request: pytest.FixtureRequest) -> Iterator[tuple]:
    """The KVM target and the software CPU target, shared by every test of the module."""
    if not request.config.pluginmanager.has_plugin("vmxlab-diff-summary"):
        request.config.pluginmanager.register(_Summary(), "vmxlab-diff-summary")
    usable, why = kvm_usable()
    if not usable:
        STATS.reason_not_run = why
        pytest.skip(f"differential test against the real CPU did not run: {why}")
    from vmxlab.diff.emu_target import EmuTarget
    from vmxlab.diff.kvm_target import KvmTarget

    hw, sw = KvmTarget(), EmuTarget()
    yield hw, sw
    hw.close()


def _check(targets: tuple, program: Program) -> None:
    """Run ``program`` on both targets; fail with a full report on any unknown difference."""
    hw_target, sw_target = targets
    hw = hw_target.run(program)
    sw = sw_target.run(program)
    diffs = compare(program, hw, sw)
    if diffs and not STRICT:
        known = classify(program, hw, sw, diffs)
        if known is not None:
            STATS.known[known.key] += 1
            STATS.known_example.setdefault(known.key, report(program, hw, sw, diffs))
            return
    assert not diffs, "software CPU differs from the hardware:\n" + report(program, hw, sw, diffs)


TEMPLATES = gen.kvm_templates()
_DEADLINE: list[float] = []


@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_programs(targets: tuple, data: st.DataObject) -> None:
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
    _check(targets, program)
    STATS.random += 1
    STATS.random_seconds += time.perf_counter() - t0


_KVM_CODES = {t.code for t in TEMPLATES}
_IMPLEMENTED = {t.code for t in gen.catalogue()}


@pytest.mark.parametrize("group", list(cases.GROUPS))
def test_edge_cases(targets: tuple, group: str) -> None:
    """Every case of ``group``; failures are collected so one run shows all of them."""
    failures = []
    ran = 0
    for program in cases.GROUPS[group]():
        codes = {insn.code for insn in program.insns}
        if not codes <= _IMPLEMENTED:
            continue  # the software CPU does not implement it yet: nothing to compare
        if not codes <= _KVM_CODES:
            STATS.unrunnable.update(insn.code.split("_")[0] for insn in program.insns)
            continue
        ran += 1
        try:
            _check(targets, program)
        except AssertionError as e:
            failures.append(str(e))
    STATS.cases += ran
    if ran == 0:
        pytest.skip(f"{group}: no case can run on this host (the instructions are invalid in 64-bit mode, "
                    "and 32-bit ring-3 code runs in KVM's emulator on PVM; see vmxlab/diff/kvm_target.py)")
    assert not failures, f"{len(failures)} of {ran} {group} cases differ:\n" + "\n".join(failures[:20])


def test_harness_detects_a_wrong_flag(targets: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: a software CPU whose ADD gets CF wrong is caught on the first case."""
    from vmxlab.cpu import flags as fl

    real = fl.oszapc

    def broken(cc_op: int, a: int, b: int, res: int) -> int:
        return real(cc_op, a, b, res) ^ (fl.CF if cc_op >> 2 == fl.K_ADD else 0)

    monkeypatch.setattr(fl, "oszapc", broken)
    program = cases.prog("add with carry out", "add eax, ebx", {"eax": 0xFFFFFFFF, "ebx": 1})
    hw_target, sw_target = targets
    hw, sw = hw_target.run(program), sw_target.run(program)
    diffs = compare(program, hw, sw)
    assert [d.what for d in diffs] == ["eflags"] and "CF" in diffs[0].got
    assert hw.eflags & fl.CF  # the hardware's carry, as the SDM defines ADD
