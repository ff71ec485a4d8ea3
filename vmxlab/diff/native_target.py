"""The real CPU in 32-bit mode without KVM: programs run at CPL 3 in *this* machine's own user space,
in compatibility mode, inside a forked worker process.

Why.  On the PVM hosts only 64-bit ring-3 code runs natively under KVM (kvm_target.py);
32-bit ring-3 code there runs in KVM's instruction emulator.  So the forms that are invalid or
different in 64-bit mode -- BCD (DAA DAS AAA AAS AAM AAD), PUSH/POP with 32-bit width, the one-byte
INC/DEC, SALC, the 0x82 aliases, BOUND -- cannot be checked against the hardware through KVM here.
A 64-bit Linux process can run 32-bit code itself: the kernel's GDT has a flat 32-bit user code
segment (``__USER32_CS`` = 0x23, present whenever CONFIG_IA32_EMULATION is on), and a far
return to it switches the CPU to compatibility mode, which executes exactly the 32-bit
protected-mode instruction set at CPL 3 (SDM Vol.1 3.1, "compatibility mode").  The stub below
does that, runs the program, and far-jumps back to 64-bit code (selector 0x33).

Faults become signals (SIGSEGV, SIGFPE, SIGILL, SIGBUS, SIGTRAP).  A handler written in machine
code, on an alternate signal stack so the program's memory is not touched, copies the
registers, ``trapno``, ``err`` and ``cr2`` from the ``ucontext`` (the kernel fills them from the
hardware exception, arch/x86/kernel/traps.c) and resumes in the 64-bit stub.

The program's pages are mapped at the layout.py addresses with the same permissions (CODE r-x,
DATA and STACK rw, RO_PAGE r, NP_PAGE unmapped).  Two differences from the other targets, which
compare.py allows for: the kernel-owned region below 1 MiB is *not present* here rather than
supervisor-only (bit 0 of the #PF error code), and there is no exit page (layout.EXIT_PAGE faults).

Why a worker process: a program stores to computed addresses; in a separate process a harness
bug or a runaway program cannot corrupt the test runner, and a hung program is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import pickle
import select
import signal
import struct
import subprocess
import tempfile
from dataclasses import dataclass

from ..assemble import nasm_path
from . import layout as L
from .outcome import Fault, Outcome
from .program import Imm, Insn, Program

USER32_CS = 0x23  # Linux x86-64 GDT (arch/x86/include/asm/segment.h): __USER32_CS
USER_DS = 0x2B  # __USER_DS
USER_CS = 0x33  # __USER_CS

# The worker's own pages, far from every address the layout uses (programs compute addresses, and
# boundary values like 0x7FFFFFFF or 0xFFFFFFFF must not land here); compare.py ignores faults here.
STUB = 0x5EEE0000  # the trampolines and the signal handler (r-x); below 2 GiB: 64-bit disp32 is signed
CTX = STUB + 0x1000  # the context block (rw); the page after it is the trampolines' stack
TMPSTACK = CTX + 2 * L.PAGE

# ucontext_t on x86-64 (glibc sys/ucontext.h): uc_mcontext.gregs[] at byte 40; gregs indices
_GREGS = 40
_REG = {"r8": 0, "rdi": 8, "rsi": 9, "rbp": 10, "rbx": 11, "rdx": 12, "rax": 13, "rcx": 14, "rsp": 15,
        "rip": 16, "efl": 17, "csgsfs": 18, "err": 19, "trapno": 20, "cr2": 22}

# The context block (CTX): offsets shared by the assembly and Python
C_REGS = 0  # eax ecx edx ebx esp ebp esi edi, 8 x u32
C_EFL = 32
C_EIP = 36
C_SAVE_RSP = 40  # u64
C_FAULT = 48  # u32: 0 ended, 1 faulted
C_TRAPNO = 52
C_ERR = 56
C_CR2 = 64  # u64
C_RIP = 72  # u64
C_SIGNO = 80
C_DS = 84  # u16
C_ES = 86  # u16
C_CS = 88  # u32: CS at the fault

_ASM = f"""
bits 64
default abs
org {STUB:#x}
%define CTX {CTX:#x}
%define TMPSTACK {TMPSTACK:#x}

; int run32(void): System V ABI, called through ctypes.  Saves the callee-saved registers and
; RSP, then enters the program in compatibility mode with the registers of the context block.
run32:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [CTX + {C_SAVE_RSP}], rsp
    mov ax, ds
    mov [CTX + {C_DS}], ax
    mov ax, es
    mov [CTX + {C_ES}], ax
    push {USER32_CS}                ; far return pops RIP, then CS (SDM Vol.2 RET, 64-bit far return)
    push entry32
    o64 retf

bits 32
entry32:
    mov ax, {USER_DS}
    mov ds, ax
    mov es, ax
    mov esp, TMPSTACK
    push dword [CTX + {C_EFL}]
    popfd
    mov eax, [CTX + {C_REGS}]
    mov ecx, [CTX + {C_REGS} + 4]
    mov edx, [CTX + {C_REGS} + 8]
    mov ebx, [CTX + {C_REGS} + 12]
    mov ebp, [CTX + {C_REGS} + 20]
    mov esi, [CTX + {C_REGS} + 24]
    mov edi, [CTX + {C_REGS} + 28]
    mov esp, [CTX + {C_REGS} + 16]
    jmp [CTX + {C_EIP}]

bits 64
; A program ends with "jmp {USER_CS:#x}:exit64": save the 32-bit registers and flags.
exit64:
    mov [CTX + {C_REGS}], eax
    mov [CTX + {C_REGS} + 4], ecx
    mov [CTX + {C_REGS} + 8], edx
    mov [CTX + {C_REGS} + 12], ebx
    mov [CTX + {C_REGS} + 16], esp
    mov [CTX + {C_REGS} + 20], ebp
    mov [CTX + {C_REGS} + 24], esi
    mov [CTX + {C_REGS} + 28], edi
    mov rsp, TMPSTACK
    pushfq
    pop rax
    mov [CTX + {C_EFL}], eax
    mov dword [CTX + {C_FAULT}], 0
back:
    cld                             ; the System V ABI wants DF = 0 on return; the program may have set it
    mov ax, [CTX + {C_DS}]
    mov ds, ax
    mov ax, [CTX + {C_ES}]
    mov es, ax
    mov rsp, [CTX + {C_SAVE_RSP}]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    mov eax, [CTX + {C_FAULT}]
    ret

; void handler(int sig, siginfo_t *si, ucontext_t *uc): SA_SIGINFO | SA_ONSTACK.
; Copies the state at the fault from uc_mcontext, then makes sigreturn resume at `back`.
handler:
    lea rax, [rdx + {_GREGS}]
    mov ecx, [rax + 8 * {_REG['rax']}]
    mov [CTX + {C_REGS}], ecx
    mov ecx, [rax + 8 * {_REG['rcx']}]
    mov [CTX + {C_REGS} + 4], ecx
    mov ecx, [rax + 8 * {_REG['rdx']}]
    mov [CTX + {C_REGS} + 8], ecx
    mov ecx, [rax + 8 * {_REG['rbx']}]
    mov [CTX + {C_REGS} + 12], ecx
    mov ecx, [rax + 8 * {_REG['rsp']}]
    mov [CTX + {C_REGS} + 16], ecx
    mov ecx, [rax + 8 * {_REG['rbp']}]
    mov [CTX + {C_REGS} + 20], ecx
    mov ecx, [rax + 8 * {_REG['rsi']}]
    mov [CTX + {C_REGS} + 24], ecx
    mov ecx, [rax + 8 * {_REG['rdi']}]
    mov [CTX + {C_REGS} + 28], ecx
    mov ecx, [rax + 8 * {_REG['efl']}]
    mov [CTX + {C_EFL}], ecx
    mov rcx, [rax + 8 * {_REG['rip']}]
    mov [CTX + {C_RIP}], rcx
    mov rcx, [rax + 8 * {_REG['err']}]
    mov [CTX + {C_ERR}], ecx
    mov rcx, [rax + 8 * {_REG['trapno']}]
    mov [CTX + {C_TRAPNO}], ecx
    mov rcx, [rax + 8 * {_REG['cr2']}]
    mov [CTX + {C_CR2}], rcx
    movzx ecx, word [rax + 8 * {_REG['csgsfs']}]
    mov [CTX + {C_CS}], ecx
    mov [CTX + {C_SIGNO}], edi
    mov dword [CTX + {C_FAULT}], 1
    mov rcx, back
    mov [rax + 8 * {_REG['rip']}], rcx
    mov word [rax + 8 * {_REG['csgsfs']}], {USER_CS}
    ret
"""

_SYNC_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP)
SA_SIGINFO = 0x4
SA_ONSTACK = 0x08000000
SA_NODEFER = 0x40000000
MAP_FIXED_NOREPLACE = 0x100000


class _Sigaction(ctypes.Structure):
    """glibc ``struct sigaction`` on x86-64 (bits/sigaction.h)."""

    _fields_ = [("sa_sigaction", ctypes.c_void_p), ("sa_mask", ctypes.c_uint64 * 16),
                ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _assemble_stub() -> tuple[bytes, dict[str, int]]:
    """Assemble the stub; return its bytes and the addresses of its labels (from the nasm map)."""
    with tempfile.TemporaryDirectory() as d:
        src, out, lst = (os.path.join(d, n) for n in ("stub.asm", "stub.bin", "stub.map"))
        with open(src, "w") as f:
            f.write(_ASM + f"\n[map symbols {lst}]\n")
        subprocess.run([nasm_path(), "-f", "bin", "-o", out, src], check=True, capture_output=True)
        with open(out, "rb") as f:
            code = f.read()
        labels = {}
        with open(lst) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] in ("run32", "exit64", "handler", "back", "entry32"):
                    labels[parts[2]] = int(parts[1], 16)
    return code, labels


@dataclass(frozen=True)
class _Request:
    code: bytes
    regs: tuple[int, ...]
    eflags: int
    pages: dict[int, bytes]


class _Worker:
    """The child side: maps the layout, installs the handlers, runs requests until EOF."""

    def __init__(self, stub: bytes, labels: dict[str, int]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.libc = libc
        mmap_fn = libc.mmap
        mmap_fn.restype = ctypes.c_void_p
        mmap_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                            ctypes.c_long]
        self.mprotect = libc.mprotect
        self.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        prot_rw = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
        for addr, size in ((L.DATA, 3 * L.PAGE), (L.CODE, L.PAGE), (STUB, 4 * L.PAGE)):
            got = mmap_fn(addr, size, prot_rw, flags, -1, 0)
            if got != addr:
                raise OSError(ctypes.get_errno(), f"cannot map {addr:#x}: {os.strerror(ctypes.get_errno())}")
        ctypes.memmove(STUB, stub, len(stub))
        self._protect(STUB, L.PAGE, mmap.PROT_READ | mmap.PROT_EXEC)
        self._protect(L.RO_PAGE, L.PAGE, mmap.PROT_READ)
        self.run32 = ctypes.CFUNCTYPE(ctypes.c_int)(labels["run32"])
        self.exit64 = labels["exit64"]
        # alternate signal stack: the kernel's signal frame must not land on the program's stack
        self.altstack = ctypes.create_string_buffer(256 * 1024)
        ss = _StackT(ctypes.addressof(self.altstack), 0, len(self.altstack))
        if libc.sigaltstack(ctypes.byref(ss), None) != 0:
            raise OSError(ctypes.get_errno(), "sigaltstack")
        flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER
        act = _Sigaction(labels["handler"], (ctypes.c_uint64 * 16)(), flags, None)
        for sig in _SYNC_SIGNALS:
            if libc.sigaction(int(sig), ctypes.byref(act), None) != 0:
                raise OSError(ctypes.get_errno(), f"sigaction({sig})")
        # no asynchronous signal may arrive while ESP is the program's: block them all
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()) - set(_SYNC_SIGNALS))

    def _protect(self, addr: int, size: int, prot: int) -> None:
        if self.mprotect(addr, size, prot) != 0:
            raise OSError(ctypes.get_errno(), f"mprotect({addr:#x})")

    def run(self, req: _Request) -> dict:
        self._protect(L.CODE, L.PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        ctypes.memmove(L.CODE, req.code.ljust(L.PAGE, b"\xcc"), L.PAGE)
        self._protect(L.CODE, L.PAGE, mmap.PROT_READ | mmap.PROT_EXEC)
        self._protect(L.RO_PAGE, L.PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        ctypes.memset(L.RO_PAGE, 0, L.PAGE)
        self._protect(L.RO_PAGE, L.PAGE, mmap.PROT_READ)
        for page, data in req.pages.items():
            ctypes.memmove(page, data, L.PAGE)
        struct.pack_into("<8III", (ctypes.c_char * 40).from_address(CTX + C_REGS), 0, *req.regs, req.eflags,
                         L.CODE)
        faulted = self.run32()
        ctx = ctypes.string_at(CTX, 96)
        regs = struct.unpack_from("<8I", ctx, C_REGS)
        efl = struct.unpack_from("<I", ctx, C_EFL)[0]
        pages = {p: ctypes.string_at(p, L.PAGE) for p in L.COMPARED}
        out = {"regs": regs, "eflags": efl, "pages": pages, "faulted": faulted}
        if faulted:
            trapno, err = struct.unpack_from("<II", ctx, C_TRAPNO)
            cr2, rip = struct.unpack_from("<QQ", ctx, C_CR2)
            signo, _ds_es, cs = struct.unpack_from("<IIi", ctx, C_SIGNO)
            out.update(trapno=trapno, err=err, cr2=cr2, rip=rip, signo=signo, cs=cs)
        return out


def _serve(conn_r: int, conn_w: int, stub: bytes, labels: dict[str, int]) -> None:
    """Child main loop: length-prefixed pickles in, length-prefixed pickles out."""
    try:
        worker = _Worker(stub, labels)
        _send(conn_w, {"ready": True})
    except OSError as e:
        _send(conn_w, {"ready": False, "why": str(e)})
        return
    while True:
        req = _recv(conn_r)
        if req is None:
            return
        _send(conn_w, worker.run(req))


def _send(fd: int, obj: object) -> None:
    """A length-prefixed pickle (the worker and the harness are the same program: pickle is safe here)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = memoryview(struct.pack("<I", len(data)) + data)
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        b = os.read(fd, n)
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _recv(fd: int) -> object | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack("<I", head)[0])
    return None if body is None else pickle.loads(body)


class NativeUnavailable(Exception):
    """Compatibility-mode execution is not possible here; the message says why."""


class Native32Target:
    """Runs programs as 32-bit code at CPL 3 in a worker process (see the module docstring)."""

    name = "native32"
    bitness = 32
    #: the region below 1 MiB is not present here (supervisor-only on the other targets)
    supervisor_absent = True
    #: pages of the worker itself: an access there is not comparable
    private = ((STUB, STUB + 4 * L.PAGE),)
    timeout_s = 5.0

    def __init__(self) -> None:
        if os.uname().machine != "x86_64":
            raise NativeUnavailable(f"needs an x86-64 host, this is {os.uname().machine}")
        self._stub, self._labels = _assemble_stub()
        #: a program ends with a far jump back to 64-bit code (Linux's __USER_CS) at exit64
        self.end: tuple[Insn, ...] = (Insn("JMP_PTR1632", (Imm(USER_CS), Imm(self._labels["exit64"]))),)
        self.pid = 0
        self._spawn()
        self.runs = 0

    def _spawn(self) -> None:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into the caller's code
            try:
                os.close(w1)
                os.close(r2)
                _serve(r1, w2, self._stub, self._labels)
            finally:
                os._exit(0)
        os.close(r1)
        os.close(w2)
        self.pid, self.w, self.r = pid, w1, r2
        hello = self._receive()
        if not isinstance(hello, dict) or not hello.get("ready"):
            self.close()
            why = hello.get("why") if isinstance(hello, dict) else "the worker died"
            raise NativeUnavailable(f"32-bit user code cannot run here: {why}")

    def _receive(self) -> object | None:
        ready, _, _ = select.select([self.r], [], [], self.timeout_s)
        if not ready:
            return None
        return _recv(self.r)

    def close(self) -> None:
        if self.pid:
            with contextlib.suppress(OSError):
                os.close(self.w)
                os.close(self.r)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def run(self, program: Program) -> Outcome:
        enc = program.encode(32, end=self.end)
        st = program.state
        _send(self.w, _Request(enc.code, st.regs, st.eflags(), st.pages()))
        res = self._receive()
        self.runs += 1
        if not isinstance(res, dict):
            self.close()
            self._spawn()
            return Outcome(st.regs, 0, {}, error="the native worker hung or died")
        regs, eflags, pages = tuple(res["regs"]), res["eflags"], res["pages"]
        if not res["faulted"]:
            return Outcome(regs, eflags, pages)
        vector = res["trapno"]
        if res["cs"] != USER32_CS:
            return Outcome(regs, eflags, pages, error=f"fault outside the program (CS {res['cs']:#x}, "
                                                         f"vector {vector}, rip {res['rip']:#x})")
        off = res["rip"] - L.CODE
        index = enc.offsets.index(off) if off in enc.offsets else -1
        ec = res["err"] if vector in L.ERROR_CODE_VECTORS else None
        cr2 = res["cr2"] & 0xFFFFFFFF if vector == 14 else None
        return Outcome(regs, eflags, pages, fault=Fault(vector, ec, index, cr2))
