"""``vmxlab mkinitramfs --busybox BUSYBOX -o FILE``: an initramfs with a static busybox and an /init.

Writes an uncompressed "newc" cpio (vmxlab/linux/initramfs.py; no ``cpio`` tool needed) holding
/bin/busybox, a few applet links, /dev/console, /dev/null and an /init script that mounts /proc,
/sys and /dev and starts a shell on the console (or runs the command given to ``boot-linux
--run`` and powers off).  The static busybox comes from Debian's busybox-static package
(scripts/fetch-linux.sh).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mkinitramfs", help="build an initramfs (newc cpio) from a static busybox",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busybox", type=Path, required=True, help="a statically linked busybox binary")
    p.add_argument("-o", "--output", type=Path, required=True, help="the cpio file to write")
    p.add_argument("--init", type=Path, help="your own /init script instead of vmxlab's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..linux.initramfs import write_initramfs

    n = write_initramfs(args.busybox, args.output, args.init)
    print(f"vmxlab: wrote {args.output} ({n} bytes, newc cpio, uncompressed)")
    return 0
