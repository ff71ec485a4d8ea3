"""A small, typed /dev/kvm binding: system (:class:`Kvm`), VM (:class:`KvmVm`) and vCPU (:class:`KvmVcpu`).

Plain ctypes, no third-party dependency; the shape follows rust-vmm's kvm-ioctls
(one object per fd, one method per ioctl).  Documentation/virt/kvm/api.rst is the
reference for every call.

Why a prebound ``libc.ioctl``: it is the cheapest way from Python into the kernel
(~0.15 µs per call; ``fcntl.ioctl`` is slower and turns EINTR into an exception,
kvm.md §4), and ``use_errno=True`` makes errno readable afterwards.

The one pitfall (kvm.md §3): a struct passed to an ioctl must stay referenced
until the ioctl returns.  :func:`_ioctl` takes the struct object itself (never a
bare address computed by the caller) and keeps it in its frame across the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import mmap
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ...errors import UserError
from . import constants as k
from . import structs as s

DEVICE = "/dev/kvm"

_libc = ctypes.CDLL(None, use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc_ioctl.restype = ctypes.c_int


class KvmError(OSError):
    """An ioctl on a KVM fd failed.  The message names the ioctl and the errno, on one line."""

    def __init__(self, request: int, err: int, what: str = "") -> None:
        name = k.IOCTL_NAMES.get(request, f"ioctl {request:#x}")
        detail = f" ({what})" if what else ""
        super().__init__(err, f"{name}{detail}: {os.strerror(err)}")
        self.request = request


class KvmUnavailable(UserError):
    """/dev/kvm cannot be used here; the message says why and what to do (DESIGN.md: one line)."""


def _ioctl(fd: int, request: int, obj: ctypes.Structure | ctypes.Array | None = None, value: int = 0,
           what: str = "") -> int:
    """ioctl(fd, request, &obj) or ioctl(fd, request, value); raises :class:`KvmError` on failure.

    ``obj`` stays bound to this frame until the call returns (the kvm.md §3 pitfall).
    """
    arg = ctypes.addressof(obj) if obj is not None else value
    ret = _libc_ioctl(fd, request, arg)
    if ret < 0:
        raise KvmError(request, ctypes.get_errno(), what)
    return ret


def open_device(path: str = DEVICE) -> int:
    """Open /dev/kvm, turning the usual failures into one-line explanations with the fix."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailable(f"{path}: no such device — KVM is not available on this machine (no kvm "
                             "module, or a VM without nested virtualization); use --backend emu") from None
    except PermissionError:
        raise KvmUnavailable(f"{path}: permission denied — add yourself to the kvm group "
                             "(sudo usermod -aG kvm $USER, then log in again) or use --backend emu") from None
    except OSError as e:
        if e.errno in (errno_mod.ENXIO, errno_mod.ENODEV):
            raise KvmUnavailable(f"{path}: {e.strerror} — the kvm module is loaded but no hardware "
                                 "virtualization backs it; use --backend emu") from None
        raise KvmUnavailable(f"{path}: {e.strerror}") from None


class Kvm:
    """The system fd (/dev/kvm): API version, capabilities, supported CPUID, creating VMs."""

    def __init__(self, path: str = DEVICE) -> None:
        self.fd = open_device(path)
        try:
            version = _ioctl(self.fd, k.KVM_GET_API_VERSION)
        except KvmError as e:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM_GET_API_VERSION failed ({e.strerror})") from None
        if version != k.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM API version {version}, expected {k.KVM_API_VERSION}")
        self.api_version = version
        self._mmap_size: int | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if absent, else 1 or a cap-specific number (e.g. NR_MEMSLOTS)."""
        return _ioctl(self.fd, k.KVM_CHECK_EXTENSION, value=int(cap))

    def require(self, *caps: k.Cap) -> None:
        """Raise :class:`KvmUnavailable` naming the first missing capability."""
        for cap in caps:
            if not self.check_extension(cap):
                raise KvmUnavailable(f"{DEVICE}: the kernel lacks KVM_CAP_{k.Cap(cap).name}; "
                                     "use --backend emu")

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (kvm_run + the PIO/MMIO pages)."""
        if self._mmap_size is None:
            self._mmap_size = _ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def supported_cpuid(self, max_entries: int = 128) -> list[s.KvmCpuidEntry2]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer on E2BIG (api.rst 4.46)."""
        n = max_entries
        while True:
            buf = s.cpuid2_type(n)()
            buf.nent = n
            try:
                _ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, buf)
            except KvmError as e:
                if e.errno == errno_mod.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return [_copy(buf.entries[i]) for i in range(buf.nent)]

    def msr_index_list(self, max_entries: int = 1024) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM_GET/SET_MSRS understand."""
        buf = s.msr_list_type(max_entries)()
        buf.nmsrs = max_entries
        _ioctl(self.fd, k.KVM_GET_MSR_INDEX_LIST, buf)
        return list(buf.indices[: buf.nmsrs])

    def create_vm(self) -> KvmVm:
        return KvmVm(self, _ioctl(self.fd, k.KVM_CREATE_VM, value=0, what="machine type 0"))


def _copy(obj: ctypes.Structure) -> ctypes.Structure:
    """A detached copy of a struct (elements of a ctypes array share its buffer)."""
    return type(obj).from_buffer_copy(obj)


@dataclass
class MemorySlot:
    """Guest-physical memory registered with KVM_SET_USER_MEMORY_REGION.

    ``mem`` is the host mapping (an anonymous ``mmap``): writable from Python with
    slice assignment and ``struct.pack_into``, and seen by the guest at ``gpa``.
    """

    slot: int
    gpa: int
    size: int
    mem: mmap.mmap
    flags: int = 0

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - self.gpa
        if off < 0 or off + len(data) > self.size:
            raise ValueError(f"{gpa:#x}+{len(data)} outside slot {self.slot} "
                             f"[{self.gpa:#x}, +{self.size:#x})")
        self.mem[off : off + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        off = gpa - self.gpa
        if off < 0 or off + n > self.size:
            raise ValueError(f"{gpa:#x}+{n} outside slot {self.slot} [{self.gpa:#x}, +{self.size:#x})")
        return self.mem[off : off + n]


class KvmVm:
    """A VM fd: memory slots, in-kernel irqchip and PIT, IRQ lines, MSR filter, vCPUs."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self.slots: dict[int, MemorySlot] = {}
        self.vcpus: list[KvmVcpu] = []
        # keep the host buffers of MSR filter bitmaps alive while a filter is installed
        self._msr_bitmaps: list[ctypes.Array] = []
        # ctypes exports pinning each slot's mmap (closed before the mmap on close())
        self._pins: dict[int, ctypes.c_char] = {}
        # slots whose mmap belongs to the caller (map_memory): never closed here
        self._borrowed: set[int] = set()

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._pins.clear()
        for n, slot in self.slots.items():
            if n in self._borrowed:
                continue
            with contextlib.suppress(BufferError):  # a caller still holds a view; it goes with the process
                slot.mem.close()
        self.slots.clear()

    def __enter__(self) -> KvmVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- memory ------------------------------------------------------------------------------

    def add_memory(self, gpa: int, size: int, slot: int | None = None, *,
                   readonly: bool = False) -> MemorySlot:
        """Map ``size`` bytes of fresh anonymous memory at guest-physical ``gpa`` (api.rst 4.35).

        Both must be page-aligned (KVM checks that too, with EINVAL).
        """
        if gpa % mmap.PAGESIZE or size % mmap.PAGESIZE or size <= 0:
            raise ValueError(f"memory slot {gpa:#x}+{size:#x}: address and size must be page-aligned")
        if slot is None:
            slot = max(self.slots, default=-1) + 1
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        mem = mmap.mmap(-1, size, flags=flags)
        pin = ctypes.c_char.from_buffer(mem)  # an export: the mapping cannot move or close under KVM
        region = s.KvmUserspaceMemoryRegion(slot=slot, flags=k.KVM_MEM_READONLY if readonly else 0,
                                            guest_phys_addr=gpa, memory_size=size,
                                            userspace_addr=ctypes.addressof(pin))
        _ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, region, what=f"slot {slot} at {gpa:#x}")
        ms = MemorySlot(slot, gpa, size, mem, region.flags)
        self.slots[slot] = ms
        self._pins[slot] = pin
        return ms

    def map_memory(self, gpa: int, buffer: mmap.mmap, slot: int | None = None, *,
                   readonly: bool = False) -> MemorySlot:
        """Register an existing mapping (e.g. the Machine's RAM, :func:`guest_ram`) at ``gpa``
        (api.rst 4.35).  Unlike :meth:`add_memory` the caller owns ``buffer``: it is pinned
        while the slot exists and not closed by :meth:`close`.

        ``readonly`` (KVM_MEM_READONLY, KVM_CAP_READONLY_MEM): guest reads come from the
        buffer, guest writes exit as KVM_EXIT_MMIO -- how a ROM behaves on a PC bus.
        """
        size = len(buffer)
        if gpa % mmap.PAGESIZE or size % mmap.PAGESIZE or size <= 0:
            raise ValueError(f"memory slot {gpa:#x}+{size:#x}: address and size must be page-aligned")
        if slot is None:
            slot = max(self.slots, default=-1) + 1
        pin = ctypes.c_char.from_buffer(buffer)
        region = s.KvmUserspaceMemoryRegion(slot=slot, flags=k.KVM_MEM_READONLY if readonly else 0,
                                            guest_phys_addr=gpa, memory_size=size,
                                            userspace_addr=ctypes.addressof(pin))
        _ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, region, what=f"slot {slot} at {gpa:#x}")
        ms = MemorySlot(slot, gpa, size, buffer, region.flags)
        self.slots[slot] = ms
        self._pins[slot] = pin
        self._borrowed.add(slot)
        return ms

    def remove_memory(self, slot: int) -> None:
        """Delete a slot (memory_size = 0, api.rst 4.35)."""
        ms = self.slots.pop(slot)
        region = s.KvmUserspaceMemoryRegion(slot=slot, flags=0, guest_phys_addr=ms.gpa, memory_size=0,
                                            userspace_addr=0)
        _ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, region, what=f"delete slot {slot}")
        del self._pins[slot]
        if slot in self._borrowed:
            self._borrowed.discard(slot)
            return
        with contextlib.suppress(BufferError):
            ms.mem.close()

    def slot_for(self, gpa: int, n: int = 1) -> MemorySlot:
        for ms in self.slots.values():
            if ms.gpa <= gpa and gpa + n <= ms.gpa + ms.size:
                return ms
        raise ValueError(f"guest-physical {gpa:#x}+{n} is not in any memory slot")

    def write(self, gpa: int, data: bytes) -> None:
        self.slot_for(gpa, len(data)).write(gpa, data)

    def read(self, gpa: int, n: int) -> bytes:
        return self.slot_for(gpa, n).read(gpa, n)

    # -- platform ----------------------------------------------------------------------------

    def set_tss_addr(self, addr: int = 0xFFFBD000) -> None:
        """KVM_SET_TSS_ADDR: 3 pages KVM may use for real-mode emulation on Intel (api.rst 4.40)."""
        _ioctl(self.fd, k.KVM_SET_TSS_ADDR, value=addr)

    def set_identity_map_addr(self, addr: int = 0xFFFBC000) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR; must precede vCPU creation (api.rst 4.61)."""
        v = ctypes.c_uint64(addr)
        _ioctl(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, v)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: PIC, IOAPIC and local APICs in the kernel (api.rst 4.24)."""
        _ioctl(self.fd, k.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = k.KVM_PIT_SPEAKER_DUMMY) -> None:
        """KVM_CREATE_PIT2 (api.rst 4.64); needs the irqchip first."""
        cfg = s.KvmPitConfig(flags=flags)
        _ioctl(self.fd, k.KVM_CREATE_PIT2, cfg)

    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive a GSI of the in-kernel irqchip (api.rst 4.25).  Safe from any thread."""
        lvl = s.KvmIrqLevel(level=1 if level else 0)
        lvl.irq = irq
        _ioctl(self.fd, k.KVM_IRQ_LINE, lvl)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM fd (api.rst 4.37)."""
        ec = _enable_cap_struct(cap, args, flags)
        _ioctl(self.fd, k.KVM_ENABLE_CAP, ec, what=f"cap {cap}")

    def set_msr_filter(self, ranges: Sequence[tuple[int, int, bytes]], *, default_allow: bool = True) -> None:
        """KVM_X86_SET_MSR_FILTER (api.rst 4.97): ``ranges`` = (flags READ|WRITE, base MSR, bitmap).

        The bitmap has one bit per MSR from ``base``; a 0 bit denies the access, which
        (with KVM_CAP_X86_USER_SPACE_MSR and reason FILTER enabled) exits to userspace.
        The kernel copies the bitmaps during the ioctl; they are kept here anyway.
        An empty ``ranges`` with ``default_allow`` removes the filter.
        """
        if len(ranges) > s.KVM_MSR_FILTER_MAX_RANGES:
            raise ValueError(f"at most {s.KVM_MSR_FILTER_MAX_RANGES} MSR filter ranges")
        default = k.KVM_MSR_FILTER_DEFAULT_ALLOW if default_allow else k.KVM_MSR_FILTER_DEFAULT_DENY
        f = s.KvmMsrFilter(flags=default)
        bitmaps = []
        for i, (rflags, base, bitmap) in enumerate(ranges):
            buf = (ctypes.c_uint8 * len(bitmap)).from_buffer_copy(bitmap)
            bitmaps.append(buf)
            r = f.ranges[i]
            r.flags = rflags
            r.base = base
            r.nmsrs = len(bitmap) * 8
            r.bitmap = ctypes.addressof(buf)
        _ioctl(self.fd, k.KVM_X86_SET_MSR_FILTER, f)
        self._msr_bitmaps = bitmaps

    def create_vcpu(self, vcpu_id: int = 0) -> KvmVcpu:
        fd = _ioctl(self.fd, k.KVM_CREATE_VCPU, value=vcpu_id, what=f"vcpu {vcpu_id}")
        v = KvmVcpu(self, fd, vcpu_id)
        self.vcpus.append(v)
        return v


def _enable_cap_struct(cap: int, args: Iterable[int], flags: int) -> s.KvmEnableCap:
    ec = s.KvmEnableCap(cap=int(cap), flags=flags)
    for i, a in enumerate(args):
        ec.args[i] = a
    return ec


class KvmVcpu:
    """A vCPU fd and its ``kvm_run`` mapping."""

    def __init__(self, vm: KvmVm, fd: int, vcpu_id: int) -> None:
        self.vm = vm
        self.fd = fd
        self.id = vcpu_id
        size = vm.kvm.vcpu_mmap_size
        self.run_map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        #: the typed view of ``struct kvm_run`` at the start of the mapping (valid after each run())
        self.kvm_run = s.KvmRun.from_buffer(self.run_map)
        # preallocated buffers for the hot path: no allocation per exit
        self._regs = s.KvmRegs()
        self._sregs = s.KvmSregs()
        self._sync: s.KvmSyncRegs | None = None

    @property
    def sync_regs(self) -> s.KvmSyncRegs:
        """The typed view of ``kvm_run.s.regs`` (KVM_CAP_SYNC_REGS; see :meth:`enable_sync_regs`)."""
        if self._sync is None:
            self._sync = s.KvmSyncRegs.from_buffer(self.run_map, s.KVM_SYNC_REGS_OFFSET)
        return self._sync

    def enable_sync_regs(self, parts: int = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS) -> s.KvmSyncRegs:
        """Ask KVM to copy ``parts`` into ``kvm_run.s.regs`` on every exit (api.rst "kvm_valid_regs").

        Write a field of the returned view and OR its part into ``kvm_run.kvm_dirty_regs``
        to have KVM load it on the next KVM_RUN, instead of a KVM_SET_REGS ioctl.
        """
        self.kvm_run.kvm_valid_regs = parts
        return self.sync_regs

    def close(self) -> None:
        if self.fd >= 0:
            self._sync = None
            del self.kvm_run
            with contextlib.suppress(BufferError):
                self.run_map.close()
            os.close(self.fd)
            self.fd = -1

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> s.KvmRun:
        """KVM_RUN until the next exit to userspace; returns the ``kvm_run`` view (api.rst 4.10).

        EINTR (a signal arrived) comes back as exit reason INTR, as the kernel reports
        it when ``immediate_exit`` is set; other errors raise :class:`KvmError`.
        """
        ret = _libc_ioctl(self.fd, k.KVM_RUN, 0)
        if ret < 0:
            err = ctypes.get_errno()
            if err in (errno_mod.EINTR, errno_mod.EAGAIN):
                self.kvm_run.exit_reason = k.ExitReason.INTR
                return self.kvm_run
            raise KvmError(k.KVM_RUN, err)
        return self.kvm_run

    def io_data(self) -> memoryview:
        """The bytes of the current KVM_EXIT_IO (``count * size`` bytes at ``data_offset``)."""
        io = self.kvm_run.io
        return memoryview(self.run_map)[io.data_offset : io.data_offset + io.size * io.count]

    # -- registers ---------------------------------------------------------------------------

    def get_regs(self) -> s.KvmRegs:
        """KVM_GET_REGS into a fresh struct."""
        r = s.KvmRegs()
        _ioctl(self.fd, k.KVM_GET_REGS, r)
        return r

    def set_regs(self, regs: s.KvmRegs) -> None:
        _ioctl(self.fd, k.KVM_SET_REGS, regs)

    def get_sregs(self) -> s.KvmSregs:
        sr = s.KvmSregs()
        _ioctl(self.fd, k.KVM_GET_SREGS, sr)
        return sr

    def set_sregs(self, sregs: s.KvmSregs) -> None:
        _ioctl(self.fd, k.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> s.KvmFpu:
        f = s.KvmFpu()
        _ioctl(self.fd, k.KVM_GET_FPU, f)
        return f

    def set_fpu(self, fpu: s.KvmFpu) -> None:
        _ioctl(self.fd, k.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS; MSRs KVM cannot read are left out of the result (the ioctl returns how
        many entries it filled, in order, api.rst 4.18)."""
        buf = s.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, idx in enumerate(indices):
            buf.entries[i].index = idx
        n = _ioctl(self.fd, k.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> int:
        """KVM_SET_MSRS; raises :class:`KvmError` naming the first MSR KVM refused."""
        items = list(values.items())
        buf = s.msrs_type(len(items))()
        buf.nmsrs = len(items)
        for i, (idx, val) in enumerate(items):
            buf.entries[i].index = idx
            buf.entries[i].data = val
        n = _ioctl(self.fd, k.KVM_SET_MSRS, buf)
        if n != len(items):
            raise KvmError(k.KVM_SET_MSRS, errno_mod.EINVAL, f"MSR {items[n][0]:#x} refused")
        return n

    def set_cpuid2(self, entries: Sequence[s.KvmCpuidEntry2]) -> None:
        """KVM_SET_CPUID2 (api.rst 4.47)."""
        buf = s.cpuid2_type(len(entries))()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        _ioctl(self.fd, k.KVM_SET_CPUID2, buf)

    def get_cpuid2(self, max_entries: int = 128) -> list[s.KvmCpuidEntry2]:
        buf = s.cpuid2_type(max_entries)()
        buf.nent = max_entries
        _ioctl(self.fd, k.KVM_GET_CPUID2, buf)
        return [_copy(buf.entries[i]) for i in range(buf.nent)]

    def get_xsave(self) -> s.KvmXsave:
        """KVM_GET_XSAVE (api.rst 4.42): x87, SSE (with MXCSR) and extended state, XSAVE layout."""
        x = s.KvmXsave()
        _ioctl(self.fd, k.KVM_GET_XSAVE, x)
        return x

    def set_xsave(self, xsave: s.KvmXsave) -> None:
        _ioctl(self.fd, k.KVM_SET_XSAVE, xsave)

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE (api.rst 4.38): RUNNABLE, HALTED, ... (needs the in-kernel irqchip)."""
        st = ctypes.c_uint32()
        _ioctl(self.fd, k.KVM_GET_MP_STATE, st)
        return st.value

    def get_vcpu_events(self) -> s.KvmVcpuEvents:
        ev = s.KvmVcpuEvents()
        _ioctl(self.fd, k.KVM_GET_VCPU_EVENTS, ev)
        return ev

    def set_vcpu_events(self, events: s.KvmVcpuEvents) -> None:
        _ioctl(self.fd, k.KVM_SET_VCPU_EVENTS, events)

    def set_guest_debug(self, control: int, debugreg: Sequence[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst 4.59): single-step, software and hardware breakpoints."""
        dbg = s.KvmGuestDebug(control=control)
        for i, v in enumerate(debugreg):
            dbg.debugreg[i] = v
        _ioctl(self.fd, k.KVM_SET_GUEST_DEBUG, dbg)

    def get_lapic(self) -> s.KvmLapicState:
        st = s.KvmLapicState()
        _ioctl(self.fd, k.KVM_GET_LAPIC, st)
        return st

    def set_lapic(self, state: s.KvmLapicState) -> None:
        _ioctl(self.fd, k.KVM_SET_LAPIC, state)

    def translate(self, linear: int) -> s.KvmTranslation:
        """KVM_TRANSLATE: the guest's own page walk for a linear address."""
        t = s.KvmTranslation(linear_address=linear)
        _ioctl(self.fd, k.KVM_TRANSLATE, t)
        return t

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue an external interrupt (only without an in-kernel irqchip)."""
        irq = s.KvmInterrupt(irq=vector)
        _ioctl(self.fd, k.KVM_INTERRUPT, irq)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        ec = _enable_cap_struct(cap, args, flags)
        _ioctl(self.fd, k.KVM_ENABLE_CAP, ec, what=f"vcpu cap {cap}")


def segment(selector: int, base: int, limit: int, type_: int, *, dpl: int = 0, db: int = 1, s_: int = 1,
            g: int = 1, l_: int = 0, present: int = 1) -> s.KvmSegment:
    """A ``kvm_segment`` with the hidden part spelt out (SDM Vol.3A 3.4.5).  ``limit`` is in bytes
    (KVM takes the byte-granular limit and the G bit separately)."""
    return s.KvmSegment(base=base, limit=limit, selector=selector, type=type_, present=present, dpl=dpl,
                        db=db, s=s_, l=l_, g=g, avl=0, unusable=0 if present else 1)
