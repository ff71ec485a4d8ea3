"""Shared helpers for the instruction-set tests (tests/test_isa_*.py).

``run`` assembles a snippet, runs it to its final HLT and returns a :class:`Result` with the
registers, the status flags and the guest memory.  ``CATCH`` (pm32) and ``CATCH16`` (real mode)
are prologues that route every exception vector 0-31 to a stub which records the vector and the
saved EIP at ``FAULT_AT`` and stops, leaving the registers as the faulting instruction left them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmxlab.cpu import flags as fl
from vmxlab.guestkit import run_snippet
from vmxlab.machine.machine import StopReason

CF, PF, AF, ZF, SF, OF, DF = fl.CF, fl.PF, fl.AF, fl.ZF, fl.SF, fl.OF, fl.DF
STATUS = fl.STATUS
NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
FAULT_AT = 0x8000  # vector (dword), saved EIP (dword), error code (dword), saved CS (real mode)
NO_FAULT = 0xFFFFFFFF

# vectors that push an error code (SDM Vol.3A Table 6-1)
_ERRCODE = "v == 8 || (v >= 10 && v <= 14) || v == 17"

CATCH = f"""
        mov dword [{FAULT_AT}], {NO_FAULT}
        jmp __catch_install
__catch_stubs:
%assign v 0
%rep 32
__vec_%[v]:
        mov dword [{FAULT_AT}], v
%if {_ERRCODE}
        pop dword [{FAULT_AT + 8}]
%endif
        pop dword [{FAULT_AT + 4}]
        jmp __end
%assign v v+1
%endrep
__catch_table:
%assign v 0
%rep 32
        dd __vec_%[v]
%assign v v+1
%endrep
__idtr: dw 32 * 8 - 1
        dd 0x6000
__catch_install:
        mov edi, 0x6000
        mov esi, __catch_table
        mov ecx, 32
__catch_gate:
        mov eax, [esi]
        mov [edi], ax
        mov word [edi + 2], 0x10
        mov word [edi + 4], 0x8E00
        shr eax, 16
        mov [edi + 6], ax
        add esi, 4
        add edi, 8
        dec ecx
        jnz __catch_gate
        lidt [__idtr]
"""

CATCH16 = f"""
        mov dword [{FAULT_AT}], {NO_FAULT}
        jmp __catch_install
%assign v 0
%rep 32
__vec_%[v]:
        mov dword [ss:{FAULT_AT}], v
        pop word [ss:{FAULT_AT + 4}]
        pop word [ss:{FAULT_AT + 12}]
        jmp __end
%assign v v+1
%endrep
__catch_table:
%assign v 0
%rep 32
        dw __vec_%[v]
%assign v v+1
%endrep
__catch_install:
        xor di, di
        mov si, __catch_table
        mov cx, 32
__catch_gate:
        mov ax, [si]
        mov [di], ax
        mov word [di + 2], 0
        add si, 2
        add di, 4
        dec cx
        jnz __catch_gate
"""


@dataclass
class Result:
    regs: dict[str, int]
    eflags: int
    ram: bytearray
    eip: int
    instructions: int
    console: bytes

    @property
    def flags(self) -> int:
        """The six status flags."""
        return self.eflags & STATUS

    def __getattr__(self, name: str) -> int:
        if name in NAMES:
            return self.regs[name]
        raise AttributeError(name)

    def dword(self, addr: int) -> int:
        return struct.unpack_from("<I", self.ram, addr)[0]

    def word(self, addr: int) -> int:
        return struct.unpack_from("<H", self.ram, addr)[0]

    def byte(self, addr: int) -> int:
        return self.ram[addr]

    def mem(self, addr: int, n: int) -> bytes:
        return bytes(self.ram[addr:addr + n])

    @property
    def fault(self) -> tuple[int, int] | None:
        """(vector, saved EIP) recorded by a CATCH/CATCH16 stub, or None if nothing faulted."""
        v = self.dword(FAULT_AT)
        return None if v == NO_FAULT else (v, self.dword(FAULT_AT + 4))


def run(body: str, engine: str, mode: str = "pm32", *, stop: StopReason = StopReason.HALTED,
        **kw: object) -> Result:
    """Run ``body`` (to the epilogue's HLT) and return its final state."""
    r = run_snippet(body, mode, engine=engine, **kw)
    assert r.stop.reason == stop, r.stop
    cpu = r.backend.cpu
    return Result(dict(zip(NAMES, cpu.regs)), cpu.get_eflags(), cpu.ram, cpu.eip, r.instructions, r.console)



BATCH_AT = 0xA000  # per case: EFLAGS, EAX, EDX, EBX (16 bytes)


def batch(cases: list[tuple[str, int]], engine: str, mode: str = "pm32") -> list[tuple[int, int, int, int]]:
    """Run many small cases in one guest: each is (asm, initial status flags); returns per case
    (EAX, status flags, EDX, EBX) as they stood right after the case's asm."""
    parts = []
    for k, (asm, flags) in enumerate(cases):
        at = BATCH_AT + 16 * k
        parts.append(f"""
        push dword {flags & STATUS | 2}
        popfd
{asm}
        pushfd
        pop dword [{at}]
        mov [{at + 4}], eax
        mov [{at + 8}], edx
        mov [{at + 12}], ebx
""")
    r = run("\n".join(parts), engine, mode)
    out = []
    for k in range(len(cases)):
        at = BATCH_AT + 16 * k
        out.append((r.dword(at + 4), r.dword(at) & STATUS, r.dword(at + 8), r.dword(at + 12)))
    return out
