"""The newc cpio writer behind ``vmxlab mkinitramfs`` (buffer-format.rst) -- round trip, layout
rules (4-byte padding, the trailer), device nodes and the busybox /init."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vmxlab.errors import UserError
from vmxlab.linux.initramfs import (
    DEFAULT_INIT,
    READY_MARKER,
    Entry,
    busybox_initramfs,
    newc_archive,
    parse_newc,
)

FAKE_BUSYBOX = b"\x7fELF" + bytes(1001)  # an odd size: exercises the data padding


def test_header_layout() -> None:
    data = newc_archive([Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    assert data[:6] == b"070701"
    fields = [int(data[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[1] == stat.S_IFREG | 0o755 and fields[6] == 10 and fields[11] == len("init") + 1
    # header (110) + "init\0" (5) padded to 116, then the data padded to 4
    assert data[110:115] == b"init\0" and data[116:126] == b"#!/bin/sh\n"
    assert b"TRAILER!!!\0" in data and len(data) % 4 == 0


def test_round_trip_with_device_nodes_and_links() -> None:
    entries = parse_newc(busybox_initramfs(FAKE_BUSYBOX))
    by_name = {e.name: e for e in entries}
    assert by_name["bin/busybox"].data == FAKE_BUSYBOX
    assert stat.S_ISCHR(by_name["dev/console"].mode) and by_name["dev/console"].rdev == (5, 1)
    assert by_name["dev/null"].rdev == (1, 3)
    assert stat.S_ISLNK(by_name["bin/sh"].mode) and by_name["bin/sh"].data == b"busybox"
    assert stat.S_ISDIR(by_name["proc"].mode) and by_name["init"].mode & 0o111
    names = [e.name for e in entries]
    assert names.index("bin") < names.index("bin/busybox")  # parents first


def test_default_init_mounts_and_marks_readiness() -> None:
    init = parse_newc(busybox_initramfs(FAKE_BUSYBOX, extra={"/etc/motd": b"hi"}))
    script = {e.name: e for e in init}["init"].data.decode()
    assert script == DEFAULT_INIT and script.startswith("#!/bin/busybox sh")
    assert "mount -t proc" in script and READY_MARKER in script and "poweroff -f" in script
    assert {e.name: e for e in init}["etc/motd"].data == b"hi"


def test_not_an_elf_is_refused() -> None:
    with pytest.raises(UserError, match="not an ELF"):
        busybox_initramfs(b"#!/bin/sh\n")


def test_mkinitramfs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmxlab.cli import main

    bb = tmp_path / "busybox"
    bb.write_bytes(FAKE_BUSYBOX)
    out = tmp_path / "initramfs.cpio"
    assert main(["mkinitramfs", "--busybox", str(bb), "-o", str(out)]) == 0
    assert parse_newc(out.read_bytes())[0].name == "bin"
    assert "newc cpio" in capsys.readouterr().out
    assert main(["mkinitramfs", "--busybox", str(tmp_path / "missing"), "-o", str(out)]) == 2
