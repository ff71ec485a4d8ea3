"""The command line: exit statuses per stop reason, --json, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmxlab.cli import main
from vmxlab.guestkit import write_snippet

ROOT = Path(__file__).resolve().parent.parent


def vmxlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmxlab", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_console_output_and_shutdown_port() -> None:
    src = write_snippet("mov al, 'h'\nout 0xE9, al\nmov al, 'i'\nout 0xE9, al\nSHUTDOWN\n", "real")
    p = vmxlab("run", str(src), "--max-instructions", "1000000")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi"
    assert "stopped: shutdown-request" in p.stderr


def test_json_summary() -> None:
    src = write_snippet("mov eax, 0x1234\nEXIT_STATUS 5\n", "pm32")
    p = vmxlab("run", str(src), "--load", "0x100000", "--entry", "pm32:0x100000", "--json")
    assert p.returncode == 11  # (5 << 1) | 1, as QEMU's isa-debug-exit
    d = json.loads(p.stdout)
    assert d["stop_reason"] == "debug-exit"
    assert d["final_state"]["eax"] == 0x1205  # EXIT_STATUS loads AL = 5
    assert d["instructions"] >= 2


@pytest.mark.parametrize("body, status, reason", [
    ("jmp $", 14, "budget"),
    ("cli\nhlt", 10, "halted"),
    ("lidt [bad]\nint3\nbad: dw 0\ndd 0", 12, "triple-fault"),
])
def test_exit_status_per_stop_reason(body: str, status: int, reason: str) -> None:
    src = write_snippet(body, "pm32", epilogue=False)
    p = vmxlab("run", str(src), "--load", "0x100000", "--entry", "pm32:0x100000", "--max-instructions", "500")
    assert p.returncode == status, p.stderr
    assert f"stopped: {reason}" in p.stderr


def test_timeout_status() -> None:
    src = write_snippet("jmp $", "pm32", epilogue=False)
    p = vmxlab("run", str(src), "--load", "0x100000", "--entry", "pm32:0x100000", "--timeout", "0.2")
    assert p.returncode == 124
    assert "stopped: timeout" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "no/such/image.bin"], "no such file"),
    (["run", "guests/hello.asm", "--entry", "bogus"], "expected real:SEG:OFF or pm32:EIP"),
    (["run", "guests/hello.asm", "--load", "zzz"], "is not a number"),
    (["run", "guests/hello.asm", "--load", "0x7fffff0", "--mem", "1"], "does not fit"),
    (["run", "guests/hello.asm", "--mem", "0"], "choose between"),
])
def test_bad_input_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    status = main(args)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_nasm_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.asm"
    bad.write_text("bits 32\n mov eax, [\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nasm failed" in err and err.count("\n") == 1
