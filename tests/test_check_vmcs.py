"""The VM-entry failure explainer: ``vmxlab check-vmcs`` and the Python API's EntryFailure."""

from __future__ import annotations

import json
from pathlib import Path

from vmxlab.cli import main
from vmxlab.explain.entry import check_vmcs, explain_entry, parse_field
from vmxlab.vmx.api import EntryFailure
from vmxlab.vmx.fields import VmcsField
from vmxlab.vmx.setup import build_guest_vm


def test_base_vmcs_is_valid_and_every_failure_is_named() -> None:
    assert check_vmcs({}) == []
    failures = check_vmcs({VmcsField.GUEST_RFLAGS: 0x0, VmcsField.HOST_CS_SELECTOR: 0})
    checks = {f.check for f in failures}
    assert {"guest_rflags_reserved", "host_cs_tr_not_null"} <= checks
    assert all(f.sdm_section.startswith("27.") and f.fix for f in failures)


def test_fields_by_name_or_encoding() -> None:
    assert parse_field("guest_rip") == VmcsField.GUEST_RIP
    assert parse_field("0x681e") == VmcsField.GUEST_RIP


def test_cli_explains_each_check(tmp_path: Path, capsys) -> None:
    f = tmp_path / "vmcs.json"
    f.write_text(json.dumps({"HOST_CS_SELECTOR": 0, "0x681e": "0x100000", "GUEST_RFLAGS": "0"}))
    assert main(["check-vmcs", str(f)]) == 1
    out = capsys.readouterr().out
    assert "host_cs_tr_not_null" in out and "HOST_CS_SELECTOR = 0x0" in out and "SDM:     Vol.3C 27.2.3" in out
    assert "fix:" in out and "VMfailValid(8" in out
    ok = tmp_path / "ok.json"
    ok.write_text('{"GUEST_RIP": "0x100000"}')
    assert main(["check-vmcs", str(ok)]) == 0
    capsys.readouterr()
    assert main(["check-vmcs", str(f), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {d["check"] for d in data} >= {"host_cs_tr_not_null", "guest_rflags_reserved"}


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    for text, expect in (("{", "not valid JSON"), ('{"GUEST_FOO": 1}', "unknown VMCS field"),
                         ('{"GUEST_RIP": "x"}', "is not a number"), ("[1]", "expected a JSON object"),
                         ('{"GUEST_CS_SELECTOR": "0x10000"}', "does not fit")):
        p = tmp_path / "v.json"
        p.write_text(text)
        assert main(["check-vmcs", str(p)]) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and "\n" not in err


def test_python_api_entry_failure_is_explained() -> None:
    vm = build_guest_vm(b"\xf4", mode="flat32")
    vm.vcpu.vmwrite(VmcsField.GUEST_RFLAGS, 0).check()  # bit 1 of RFLAGS must be 1 (SDM Vol.3C 27.3.1.4)
    result = vm.vcpu.vmlaunch()
    assert isinstance(result, EntryFailure) and result.check is not None
    text = explain_entry(result)
    assert "GUEST_RFLAGS = 0x0" in text and "27.3.1.4" in text and "fix:" in text


def test_run_vmx_stop_detail_names_the_check() -> None:
    """The CLI path (`vmxlab run --vmx`) reports EntryFailure through str(), which carries the check too."""
    vm = build_guest_vm(b"\xf4", mode="flat32")
    vm.vcpu.vmwrite(VmcsField.HOST_CS_SELECTOR, 0).check()
    result = vm.vcpu.vmlaunch()
    assert "HOST_CS_SELECTOR" in str(result) and "SDM Vol.3C 27.2.3" in str(result) and "fix" in str(result)
