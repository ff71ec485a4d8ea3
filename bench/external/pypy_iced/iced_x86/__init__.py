"""A stand-in for the iced_x86 package under PyPy, for measuring vmxlab there (scripts/pypy-bench.sh).

Why: iced-x86 ships CPython wheels only, and building it for PyPy needs crates.io (docs/bench.md,
"PyPy").  This module offers the part of iced's API that vmxlab's CPU uses -- the enum constants,
``Decoder(bitness, data, ip).decode()``, ``Instruction`` getters, ``op_kind/op_register/immediate(i)``,
``op_code()`` and ``InstructionInfoFactory().info(ins).used_registers()`` -- and gets every answer from
a CPython child process running the real iced-x86 (../iced_server.py).  It is a measuring aid, not a
decoder: nothing here is used by vmxlab under CPython.

The child is the interpreter named by $VMXLAB_ICED_PYTHON (default: python3).  Decoding costs a pipe
round trip per batch of instructions; vmxlab decodes once per translated block, so that cost lands in
translation warm-up, which the bench's t(N) - t(n) difference removes.
"""

import atexit
import os
import pickle
import struct
import subprocess
import sys
import types

if os.environ.get("VMXLAB_ICED_CHILD"):
    # the child must import the real iced-x86; if it finds this stand-in instead, spawning another child
    # would recurse without end (it did once: thousands of processes), so stop here
    raise ImportError("iced_x86 stand-in imported inside its own decoder process: the real iced-x86 is missing")

_HEADER = struct.Struct("<I")
_SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "iced_server.py")
# without PYTHONPATH: it points at this stand-in, and the child must import the real iced_x86
_proc = subprocess.Popen([os.environ.get("VMXLAB_ICED_PYTHON", "python3"), "-I", _SERVER],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "VMXLAB_ICED_CHILD": "1"})
atexit.register(_proc.kill)


def _call(*req):
    data = pickle.dumps(req, protocol=4)
    _proc.stdin.write(_HEADER.pack(len(data)) + data)
    _proc.stdin.flush()
    head = _proc.stdout.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise RuntimeError("iced_x86 stand-in: the CPython decoder process died")
    return pickle.loads(_proc.stdout.read(_HEADER.unpack(head)[0]))


_ENUMS = _call("enums")
for _name, _consts in _ENUMS.items():
    _mod = types.ModuleType("iced_x86." + _name)
    _mod.__dict__.update(_consts)
    sys.modules["iced_x86." + _name] = _mod
    globals()[_name] = _mod

_OPCODES = {}


class OpCodeInfo:
    def __init__(self, values):
        self.__dict__.update(values)


class UsedRegister:
    __slots__ = ("register", "access")

    def __init__(self, register, access):
        self.register = register
        self.access = access


class Instruction:
    """An instruction decoded by the CPython child: its getters' values as attributes."""

    def __init__(self, rec):
        self._ops = rec.pop("_ops")
        self._used = rec.pop("_used_regs")
        self._text = rec.pop("_text")
        rec.pop("_last_error", None)
        self.__dict__.update(rec)

    def op_kind(self, i):
        return self._ops[i][0]

    def op_register(self, i):
        return self._ops[i][1]

    def immediate(self, i):
        v = self._ops[i][2]
        if v is None:
            raise ValueError(f"operand {i} is not an immediate")
        return v

    def op_code(self):
        return _OPCODES[self.code]

    def __str__(self):
        return self._text

    __repr__ = __str__


class _Info:
    def __init__(self, used):
        self._used = used

    def used_registers(self):
        return [UsedRegister(r, a) for r, a in self._used]


class InstructionInfoFactory:
    def info(self, ins):
        return _Info(ins._used)


class Decoder:
    """``Decoder(bitness, data, ip=...)``: ``decode()`` returns the next Instruction; ``last_error`` is the
    error of the last one decoded (DecoderError), as iced's."""

    def __init__(self, bitness, data, ip=0, options=0):
        self.bitness = bitness
        self._data = bytes(data)
        self.ip = ip
        self._pos = 0
        self._batch = []
        self.last_error = 0

    @property
    def can_decode(self):
        return self._pos < len(self._data) or bool(self._batch)

    def decode(self):
        if not self._batch:
            self._batch = _call("decode", self.bitness, self._data[self._pos:], self.ip + self._pos)
            self._batch.reverse()
            for rec in self._batch:  # the child sends a Code's OpCodeInfo once, maybe in a record never used
                op = rec.pop("_opcode", None)
                if op is not None:
                    _OPCODES[rec["code"]] = OpCodeInfo(op)
        rec = self._batch.pop()
        self.last_error = rec["_last_error"]
        ins = Instruction(rec)
        self._pos += ins.len if ins.len else len(self._data) - self._pos
        return ins

    def __iter__(self):
        while self.can_decode:
            yield self.decode()
