"""Assembling NASM guest sources (guests are .asm files built at test/run time, DESIGN.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .errors import UserError

CACHE = Path(os.environ.get("VMXLAB_CACHE", Path.home() / ".cache" / "vmxlab"))
GUESTS = Path(__file__).resolve().parent.parent / "guests"


def nasm_path() -> str:
    path = shutil.which("nasm")
    if path is None:
        raise UserError("nasm is not installed: run `apt-get install -y nasm` (or the README's set-up command)")
    return path


def assemble(source: Path | str, defines: dict[str, str | int] | None = None, fmt: str = "bin") -> Path:
    """Assemble ``source`` with nasm into the cache (keyed by content and defines); return the output path."""
    source = Path(source)
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    include_dirs = [source.parent, GUESTS / "include"]
    defines = defines or {}
    key = hashlib.sha256()
    key.update(source.read_bytes())
    for inc in sorted((GUESTS / "include").glob("*.inc")) + sorted(source.parent.glob("*.inc")):
        key.update(inc.read_bytes())
    key.update(repr(sorted(defines.items())).encode())
    key.update(fmt.encode())
    out = CACHE / "asm" / f"{source.stem}-{key.hexdigest()[:16]}.{fmt}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nasm_path(), "-f", fmt, "-o", str(out) + ".tmp"]
    for d in include_dirs:
        cmd.append(f"-I{d}/")
    for k, v in defines.items():
        cmd.append(f"-D{k}={v}")
    cmd.append(str(source))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
        raise UserError(f"nasm failed on {source}: {first}")
    os.replace(str(out) + ".tmp", out)
    return out


def guest_path(name: str) -> Path:
    """The path of a bundled guest source by name (``hello`` -> guests/hello.asm)."""
    p = GUESTS / (name if name.endswith(".asm") else name + ".asm")
    if not p.exists():
        raise UserError(f"no bundled guest named {name!r} in {GUESTS}")
    return p
