"""``vmxlab classify``: Popek-Goldberg classes decided by experiment; Theorem 1 on IA-32 and under VMX."""

from __future__ import annotations

import json

import pytest

from vmxlab.cli import main
from vmxlab.explain.classify import classify
from vmxlab.vmm.policies import DEFAULT


@pytest.fixture(scope="module")
def result():
    return classify(policy=DEFAULT)


def test_classes_come_from_the_experiments(result) -> None:
    v = result.verdicts
    # privileged: traps at CPL 3, not at CPL 0 (SDM Vol.2 LGDT, MOV CR, HLT, IN with IOPL 0)
    for name in ("lgdt", "lidt", "mov-cr0", "mov-cr3", "hlt", "in", "cli", "rdmsr", "invlpg"):
        assert v[name].privileged, name
    # POPF: never traps; at CPL 0 it changes IF and IOPL, at CPL 3 (IOPL 0) it silently does not
    assert not v["popf"].privileged and v["popf"].control_sensitive and v["popf"].mode_sensitive
    assert "IF 0 -> 1" in v["popf"].witnesses["control"]
    # SGDT: legal everywhere, its result moves with the tables (location-sensitive)
    assert not v["sgdt"].privileged and v["sgdt"].location_sensitive
    assert "01 00 vs" in v["sgdt"].witnesses["location"]
    assert v["lar"].mode_sensitive and "ZF 1 vs 0" in v["lar"].witnesses["mode"]
    for name in ("add", "mov-store", "cpuid", "rdtsc"):
        assert not v[name].sensitive, name
    assert v["cli"].iopl_sensitive and "IOPL 3" in v["cli"].iopl_sensitive


def test_theorem1_fails_on_ia32_and_holds_under_vmx(result) -> None:
    assert not result.theorem1_legacy
    assert set(result.sensitive_unprivileged) == {
        "sgdt", "sidt", "sldt", "str", "smsw", "pushf", "popf", "iret", "lar", "lsl", "verr", "verw",
        "mov-from-cs", "push-cs"}
    assert result.theorem1_vmx
    rows = {(r.name, r.cpl): r for rows in result.vmx.values() for r in rows}
    assert rows[("in", 0)].outcome == "exits" and rows[("in", 3)].outcome == "guest fault"
    assert rows[("sgdt", 3)].outcome == "native" and rows[("sgdt", 3)].equivalent


def test_robin_irvine_comparison_explains_every_difference(result) -> None:
    by = {r["instruction"]: r for r in result.comparison}
    assert by["SGDT"]["agree"] == "yes" and by["POPF"]["agree"] == "yes"
    assert by["POP (segment register)"]["agree"] == "no" and "innocuous" in by["POP (segment register)"]["why"]
    assert by["IRET"]["robin_irvine"] == "not listed"
    assert all(r["why"] for r in result.comparison)


def test_cli_json(capsys) -> None:
    assert main(["classify", "popf", "sgdt", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["theorem1_legacy_ia32"]["holds"] is False
    assert data["instructions"]["popf"]["sensitive"] is True
    assert data["vmx"]["theorem1_holds"] is True
    assert main(["classify", "bogus"]) == 2
