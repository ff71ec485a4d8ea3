"""The VM-entry failure explainer: which check failed, the field and its value, the SDM section, the fix.

VM entry reports one failure (the first check in the SDM's order: controls -> VMfailValid(7), host
state -> VMfailValid(8), guest state -> exit 33; SDM Vol.3C 27.1-27.3) and hardware says no more than
the error number -- the recurring "VMLAUNCH failed with error 7, which field is wrong?" question of
hypervisor issue trackers (reference/theory.md 0.4).  vmxlab's checks
(:mod:`vmxlab.vmx.entry_checks`) each return a :class:`CheckFailure` that names the rule, so this
module only renders them, for one failure (:func:`explain_failure`, used after a failed
VMLAUNCH/VMRESUME: ``EntryFailure.check``) or for every check a VMCS fails (:func:`check_vmcs`,
behind ``vmxlab check-vmcs FILE.json``).

``check-vmcs`` starts from a *valid* VMCS -- the one :func:`vmxlab.vmx.setup.build_guest_vm` builds
for ``--base`` (flat32 by default: 32-bit protected mode, paging off, EPT and "unrestricted guest",
controls adjusted to the capability MSRs, a flat 32-bit host) -- and overwrites the fields the JSON
file gives, so the file needs only the fields under study; ``--template`` prints that base VMCS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..vmx.entry_checks import CheckFailure, all_failures
from ..vmx.fields import VmcsField, name_of, supported, width_mask

BASES = ("flat32", "real", "paged32")


def explain_failure(failure: CheckFailure) -> str:
    """Several lines: the outcome, the rule, the field and value, the SDM section, the fix."""
    lines = [
        f"VM entry failed: {failure.outcome}",
        f"  check:   {failure.check or '(unnamed)'}",
        f"  field:   {failure.field} = {failure.value:#x}",
        f"  problem: {failure.message}",
        f"  SDM:     Vol.3C {failure.sdm_section}",
        f"  fix:     {failure.fix}",
    ]
    if failure.qualification:
        lines.insert(2, f"  exit qualification: {failure.qualification}")
    return "\n".join(lines)


def explain_entry(result: Any) -> str:
    """For an :class:`~vmxlab.vmx.api.EntryFailure` (or anything with ``.check``): the explanation, or
    its one-line summary when no check is attached (VMfailInvalid, MSR loading)."""
    check = getattr(result, "check", None)
    return explain_failure(check) if check is not None else f"VM entry failed: {result}"


def base_vmcs(base: str = "flat32"):
    """A VMX CPU whose current VMCS passes every VM-entry check (the starting point of check-vmcs)."""
    from ..vmx.setup import build_guest_vm

    if base not in BASES:
        raise UserError(f"--base {base}: choose from {', '.join(BASES)}")
    return build_guest_vm(b"\xf4", mode=base, mem_mib=32, engine="interp").vcpu


def parse_field(key: str) -> VmcsField:
    """A field by SDM name (``GUEST_RIP``, case-insensitive) or encoding (``0x681e`` or decimal)."""
    k = key.strip()
    try:
        enc = int(k, 0)
    except ValueError:
        try:
            return VmcsField[k.upper()]
        except KeyError:
            near = [f.name for f in VmcsField if k.upper() in f.name][:4]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise UserError(f"unknown VMCS field {key!r}{hint}: use the SDM name (GUEST_RIP) or the encoding "
                            "(0x681e)") from None
    if not supported(enc) or enc & 1:
        raise UserError(f"VMCS field encoding {key!r} is not a field of this model (SDM Vol.3C Appendix B)")
    return VmcsField(enc)


def parse_value(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{key}: value {value!r} is not a number (use 123 or \"0x7b\")")
    if isinstance(value, str):
        try:
            value = int(value.replace("_", ""), 0)
        except ValueError:
            raise UserError(f"{key}: value {value!r} is not a number (use 123 or \"0x7b\")") from None
    if value < 0:
        raise UserError(f"{key}: value {value} is negative")
    return value


def load_json(path: Path) -> dict[VmcsField, int]:
    """The file's fields; bad JSON, unknown fields and bad values are one-line user errors."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of field name or encoding -> value")
    out: dict[VmcsField, int] = {}
    for key, value in data.items():
        f = parse_field(key)
        v = parse_value(key, value)
        if v & ~width_mask(f):
            raise UserError(f"{key}: value {v:#x} does not fit the {f.bits}-bit field {f.name}")
        out[f] = v
    return out


def check_vmcs(fields: dict[VmcsField, int], base: str = "flat32") -> list[CheckFailure]:
    """Every VM-entry check the base VMCS with ``fields`` written over it fails (SDM order)."""
    vcpu = base_vmcs(base)
    vmcs = vcpu.vmcs
    for f, v in fields.items():
        vmcs[f] = v
    return all_failures(vcpu.check_context())


def template(base: str = "flat32") -> dict[str, str]:
    """The base VMCS as JSON-ready {name: hex value} (the control, host-state and guest-state fields)."""
    vcpu = base_vmcs(base)
    return {name_of(enc): f"{val:#x}" for enc, val in sorted(vcpu.vmcs.values.items())
            if not VmcsField(enc).read_only}


__all__ = ["explain_failure", "explain_entry", "check_vmcs", "load_json", "template", "parse_field"]
