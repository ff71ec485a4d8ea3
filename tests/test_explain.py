"""``vmxlab explain``: experiments at CPL 0/3, bare and in VMX non-root with the exit control off and on."""

from __future__ import annotations

import json

import pytest

from vmxlab.cli import main
from vmxlab.explain.explain import explain, render
from vmxlab.explain.instructions import TABLE

REQUIRED = ["sgdt", "sidt", "sldt", "str", "smsw", "pushf", "popf", "cli", "sti", "in", "out", "hlt", "cpuid",
            "rdtsc", "rdmsr", "mov cr0", "mov cr3", "lgdt", "lidt", "int", "iret", "invlpg"]


@pytest.mark.parametrize("name", REQUIRED)
def test_every_required_instruction_runs(name: str) -> None:
    e = explain(name)
    assert len(e.rows) in (4, 6)
    assert all(r.happened and r.why for r in e.rows)
    assert "SDM" in render(e)


def test_sgdt_exits_only_with_descriptor_table_exiting() -> None:
    rows = explain("sgdt").rows
    by = {(r.where, r.cpl): r for r in rows}
    assert by[("no VMX", 3)].trap is None and "base 0x10000" in by[("no VMX", 3)].happened
    assert not by[("VMX non-root, descriptor-table off", 3)].exits
    assert by[("VMX non-root, descriptor-table on", 3)].exits == ["46 ACCESS_TO_GDTR_OR_IDTR"]


def test_in_faults_in_the_guest_before_any_exit() -> None:
    by = {(r.where, r.cpl): r for r in explain("in").rows}
    assert by[("VMX non-root, io on", 0)].exits == ["30 IO_INSTRUCTION"]
    r3 = by[("VMX non-root, io on", 3)]
    assert r3.trap == "#GP(0x0)" and not r3.exits and "26.1.1" in r3.why


def test_cpuid_always_exits_and_hlt_needs_its_control() -> None:
    assert all(r.exits == ["10 CPUID"] for r in explain("cpuid").rows if r.where.startswith("VMX"))
    by = {(r.where, r.cpl): r for r in explain("hlt").rows}
    assert by[("VMX non-root, hlt on", 0)].exits == ["12 HLT"] and not by[("VMX non-root, hlt off", 0)].exits


def test_cli(capsys) -> None:
    assert main(["explain", "popf", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["popek_goldberg"]["sensitive"] and not data["popek_goldberg"]["privileged"]
    assert main(["explain", "mov", "cr3"]) == 0
    assert "CR3-load exiting" in capsys.readouterr().out
    assert main(["explain", "frobnicate"]) == 2
    assert "not in the table" in capsys.readouterr().err
    assert main(["explain", "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(TABLE)
