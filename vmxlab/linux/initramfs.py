"""An initramfs in Python: a "newc" cpio archive (no ``cpio`` tool needed).

Format: Documentation/driver-api/early-userspace/buffer-format.rst ("initramfs buffer format")
-- each entry is a 110-byte ASCII header (magic "070701", then thirteen 8-digit hex fields:
ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
namesize, check), the NUL-terminated name padded to a multiple of 4, the data padded to a
multiple of 4; the archive ends with an entry named "TRAILER!!!".  The kernel accepts it
uncompressed, which saves the guest a decompression (kvm.md §5).

The default /init (:data:`DEFAULT_INIT`) mounts /proc, /sys and /dev, prints a marker line
(:data:`READY_MARKER`) and starts a busybox shell on the console; ``poweroff -f`` and
``reboot -f`` end the VM (the kernel halts the CPU, or resets through the i8042).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"

#: printed by /init once user space runs (tests and ``boot-linux`` watch for it)
READY_MARKER = "vmxlab-initramfs: /init is running"

DEFAULT_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "{READY_MARKER}"
echo "kernel $(uname -r), $(cat /proc/cmdline | wc -c)-byte command line, uptime $(cut -d' ' -f1 /proc/uptime) s"
if [ -n "$VMXLAB_RUN" ]; then
    sh -c "$VMXLAB_RUN"
    echo "vmxlab-initramfs: command exited with status $?"
    poweroff -f
fi
exec setsid cttyhack sh
"""

#: busybox applets with links in /bin (the rest come from ``busybox --install -s`` at boot)
BUSYBOX_LINKS = ("sh", "mount", "echo", "cat", "ls", "poweroff", "reboot", "uname")


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, e: Entry) -> bytes:
    name = e.name.encode() + b"\0"
    fields = (ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1],
              len(name), 0)
    return NEWC_MAGIC + b"".join(f"{f:08X}".encode() for f in fields) + name


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: list[Entry]) -> bytes:
    """The cpio bytes; entries appear in the given order (parents before children)."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        hdr = _header(ino if e.name != TRAILER else 0, e)
        out += hdr + _pad4(len(hdr)) + e.data + _pad4(len(e.data))
    return bytes(out)


def busybox_initramfs(busybox: bytes, init_script: str = DEFAULT_INIT, extra: dict[str, bytes] | None = None
                      ) -> bytes:
    """/bin/busybox, /init, the mount points, /dev/console (5:1) and /dev/null (1:3)."""
    if busybox[:4] != b"\x7fELF":
        raise UserError("the busybox given is not an ELF executable (use the static busybox from busybox-static)")
    d = stat.S_IFDIR | 0o755
    entries = [Entry("bin", d), Entry("dev", d), Entry("proc", d), Entry("sys", d), Entry("tmp", d | 0o1777),
               Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
               Entry("bin/busybox", stat.S_IFREG | 0o755, busybox)]
    entries += [Entry(f"bin/{name}", stat.S_IFLNK | 0o777, b"busybox") for name in BUSYBOX_LINKS]
    entries.append(Entry("init", stat.S_IFREG | 0o755, init_script.encode()))
    for name, data in (extra or {}).items():
        entries.append(Entry(name.lstrip("/"), stat.S_IFREG | 0o644, data))
    return newc_archive(entries)


def parse_newc(data: bytes) -> list[Entry]:
    """Read a newc archive back (tests; also a check that an archive is well formed)."""
    out = []
    off = 0
    while True:
        if data[off : off + 6] != NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at {off}")
        f = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name_start = off + 110
        name = data[name_start : name_start + namesize - 1].decode()
        off = name_start + namesize
        off += -off % 4
        body = data[off : off + filesize]
        off += filesize
        off += -off % 4
        if name == TRAILER:
            return out
        out.append(Entry(name, mode, body, rdev))


def write_initramfs(busybox_path: Path, output: Path, init_path: Path | None = None) -> int:
    try:
        busybox = busybox_path.read_bytes()
    except OSError as e:
        raise UserError(f"{busybox_path}: cannot read ({e.strerror})") from None
    init = DEFAULT_INIT if init_path is None else init_path.read_text()
    data = busybox_initramfs(busybox, init)
    output.write_bytes(data)
    return len(data)
