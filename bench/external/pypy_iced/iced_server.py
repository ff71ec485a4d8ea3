"""The CPython half of the iced-x86 stand-in for PyPy (see iced_x86/__init__.py next to this file).

Why it exists: iced-x86 is a Rust extension with CPython wheels only; building it for PyPy needs
crates.io, which the development machines cannot reach.  To measure vmxlab under PyPy anyway, PyPy
runs vmxlab and this CPython process decodes for it.  vmxlab decodes once per translated block, so the
round trips are part of translation warm-up, which the bench's t(N) - t(n) method subtracts.

Protocol (stdin/stdout, one pickle protocol-4 frame each way, 4-byte little-endian length first):
  request  ("enums",)                     -> {module name: {constant: int}}
  request  ("decode", bitness, data, ip)  -> [instruction record, ...] up to the end of ``data`` or
                                             MAX_BATCH instructions, the last one possibly INVALID
A record is a dict of every Instruction getter that does not raise, plus "_ops" (op_kind,
op_register, immediate per operand), "_used_regs" (register, access) pairs, "_last_error", "_text" (str)
and, the first time a Code value is sent, "_opcode" (every OpCodeInfo getter).
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import types

# never the stand-in next to this file (started with -I and without PYTHONPATH, but be sure)
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
import iced_x86  # noqa: E402 - after the sys.path guard

MAX_BATCH = 64
HEADER = struct.Struct("<I")


def _getters(cls: type) -> list[str]:
    return [n for n in dir(cls) if not n.startswith("_") and type(getattr(cls, n)).__name__ == "getset_descriptor"]


INSN_GETTERS = _getters(iced_x86.Instruction)
OPCODE_GETTERS = _getters(iced_x86.OpCodeInfo)
INFO = iced_x86.InstructionInfoFactory()


def enums() -> dict:
    out = {}
    for name in dir(iced_x86):
        mod = getattr(iced_x86, name)
        if isinstance(mod, types.ModuleType) and name[0].isupper():
            out[name] = {k: v for k, v in vars(mod).items() if isinstance(v, int) and not k.startswith("_")}
    return out


def _values(obj: object, names: list[str]) -> dict:
    rec = {}
    for n in names:
        try:
            v = getattr(obj, n)
        except Exception:  # noqa: BLE001 - a getter that does not apply to this instruction
            continue
        if isinstance(v, (int, bool, str, type(None))):
            rec[n] = v
    return rec


def decode(bitness: int, data: bytes, ip: int, sent_codes: set[int]) -> list[dict]:
    decoder = iced_x86.Decoder(bitness, data, ip=ip)
    out = []
    while len(out) < MAX_BATCH:
        ins = decoder.decode()
        rec = _values(ins, INSN_GETTERS)
        ops = []
        for i in range(ins.op_count):
            try:
                imm = ins.immediate(i)
            except Exception:  # noqa: BLE001 - not an immediate operand
                imm = None
            ops.append((ins.op_kind(i), ins.op_register(i), imm))
        rec["_ops"] = ops
        rec["_used_regs"] = [(u.register, u.access) for u in INFO.info(ins).used_registers()]
        rec["_last_error"] = decoder.last_error
        rec["_text"] = str(ins)
        if ins.code not in sent_codes:
            sent_codes.add(ins.code)
            rec["_opcode"] = _values(ins.op_code(), OPCODE_GETTERS)
        out.append(rec)
        if ins.code == iced_x86.Code.INVALID or not decoder.can_decode:
            break
    return out


def main() -> None:
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    sent: set[int] = set()
    while True:
        head = rd.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        req = pickle.loads(rd.read(HEADER.unpack(head)[0]))
        if req[0] == "enums":
            reply = enums()
        else:
            reply = decode(req[1], req[2], req[3], sent)
        data = pickle.dumps(reply, protocol=4)
        wr.write(HEADER.pack(len(data)) + data)
        wr.flush()


if __name__ == "__main__":
    main()
