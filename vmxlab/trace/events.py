"""The event stream: what happened, when (instruction count), where (EIP), at which ring and VMX mode.

Every layer reports through one :class:`Tracer` hung on ``cpu.trace`` (None =
tracing off: each report site costs one attribute test, see bench).  Events are
plain dicts so they serialise to JSON Lines unchanged:

``{"kind": "vm-exit", "icount": 1234, "eip": 4096, "cpl": 0, "vmx": "non-root", ...}``

Kinds:
* ``ring``       CPL changed (``from``, ``to``)
* ``exception``  an exception or interrupt is delivered (``vector``, ``name``, ``error_code``, ``event``
                 = external/nmi/hardware-exception/software-interrupt/..., ``from_cpl``, ``to_cpl`` = the
                 CPL of the handler, or None when the delivery itself faulted)
* ``fault``      an instruction raised a fault (``vector``, ``error_code``, ``detail``) -- before delivery
* ``page-fault`` #PF details (``cr2``, ``error_code`` decoded)
* ``vm-entry``   VMLAUNCH/VMRESUME entered the guest (``launch``)
* ``vm-exit``    a VM exit (``reason``, ``reason_name``, ``qualification``, ``fields`` decoded, ``guest``)
* ``vm-entry-failure`` the entry failed (``error`` or ``reason``, ``check``, ``field``, ``value``, ``sdm``)
* ``io``         port I/O (``port``, ``size``, ``dir``, ``value``, ``claimed``)
* ``mmio``       a physical access outside RAM (``addr``, ``size``, ``dir``, ``value``, ``device`` = the MMIO
                 region's name, None for unbacked addresses, which read as all ones)
* ``task-switch`` a hardware task switch (``from_tr``, ``to_tr``, ``source`` = call/jmp/iret/gate)
* ``stop``       the run ended (``reason``, ``detail``)

The VMX mode of an event is ``none`` (no VMX operation: bare metal), ``non-root``
(the guest runs) or ``root`` (the Python VMM: between a VM exit and the next VM
entry, e.g. the port access of an emulated IN).  Sites that know better pass
``vmx=`` explicitly (vmx/api.py does for entries and exits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..cpu.faults import MNEMONICS

if TYPE_CHECKING:
    from ..cpu.core import CPU

KINDS = ("ring", "exception", "fault", "page-fault", "vm-entry", "vm-exit", "vm-entry-failure", "io", "mmio",
         "task-switch", "stop", "note")

EVENT_KIND_NAMES = {0: "external", 2: "nmi", 3: "hardware-exception", 4: "software-interrupt",
                    5: "privileged-software-exception", 6: "software-exception"}

Sink = Callable[[dict], None]


def pf_error_code_fields(code: int) -> dict[str, Any]:
    """#PF error code split into the SDM's named bits (SDM Vol.3A 4.7, Figure 4-12)."""
    return {
        "present": bool(code & 1), "write": bool(code & 2), "user": bool(code & 4),
        "reserved_bit": bool(code & 8), "instruction_fetch": bool(code & 16),
    }


def selector_error_code_fields(code: int) -> dict[str, Any]:
    """A selector error code (SDM Vol.3A 6.13, Figure 6-6): EXT, IDT, TI, index."""
    return {"ext": bool(code & 1), "idt": bool(code & 2), "ti": bool(code & 4), "index": code >> 3}


class Tracer:
    """Collects events from the CPU, the VMX layer, the VMM and the buses and hands them to sinks."""

    def __init__(self, sinks: Iterable[Sink] = (), kinds: Iterable[str] | None = None) -> None:
        self.sinks = list(sinks)
        self.kinds = set(kinds) if kinds is not None else set(KINDS)
        unknown = self.kinds - set(KINDS)
        if unknown:
            from ..errors import UserError

            raise UserError(f"unknown trace kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
        self.cpu: CPU | None = None
        self.count = 0
        self.by_kind: dict[str, int] = {}
        self._last_cpl = 0
        #: True once a VM entry was seen: outside non-root operation the CPU is then in VMX root
        self.in_vmx_operation = False
        #: an exception event held back until its delivery finished, so that it can say ``to_cpl``
        self._pending: dict[str, Any] | None = None

    def attach(self, cpu: CPU) -> None:
        self.cpu = cpu
        cpu.trace = self
        self._last_cpl = cpu.cpl
        ports = cpu.machine.ports
        if "io" in self.kinds:
            ports.on_access = self._io
            # under the VMM the machine's bus sits behind the VMM's (vmm/vm.py VmmPorts): hook the bus
            # the devices are on, so accesses the VMM makes for the guest are seen too
            inner = getattr(ports, "inner", None)
            if inner is not None:
                inner.on_access = self._io
        if "mmio" in self.kinds:
            cpu.memory.on_mmio = self._mmio

    def detach(self) -> None:
        """Undo :meth:`attach` (after flushing): the CPU, the buses and memory report nothing any more."""
        self.flush()
        cpu = self.cpu
        if cpu is None:
            return
        if cpu.trace is self:
            cpu.trace = None
        ports = cpu.machine.ports
        for bus in (ports, getattr(ports, "inner", None)):
            if bus is not None and getattr(bus, "on_access", None) == self._io:
                bus.on_access = None
        if getattr(cpu.memory, "on_mmio", None) == self._mmio:
            cpu.memory.on_mmio = None

    # ------------------------------------------------------------------ core

    def vmx_mode(self) -> str:
        """none / non-root / root: the second axis next to the CPL (see the module docstring)."""
        cpu = self.cpu
        if cpu is not None and cpu.vmx is not None:
            return "non-root"
        return "root" if self.in_vmx_operation else "none"

    def emit(self, kind: str, **fields: Any) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if kind == "vm-entry":
            self.in_vmx_operation = True
        if kind not in self.kinds:
            return
        ev = self._event(kind, fields)
        self._flush_pending(ev)
        self._dispatch(ev)

    def _event(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        cpu = self.cpu
        ev: dict[str, Any] = {"kind": kind}
        if cpu is not None:
            ev["icount"] = cpu.icount
            ev["eip"] = cpu.eip
            ev["cs"] = cpu.segs[1].selector
            mode = ev["vmx"] = fields.pop("vmx", None) or self.vmx_mode()
            # the Python VMM is the ring-0 software of VMX root operation; the CPU object still holds
            # the guest's registers then, so its CPL is the guest's (kept as guest_cpl)
            ev["cpl"] = 0 if mode == "root" else cpu.cpl
            if mode == "root":
                ev["guest_cpl"] = cpu.cpl
        ev.update(fields)
        return ev

    def _dispatch(self, ev: dict[str, Any]) -> None:
        self.count += 1
        for sink in self.sinks:
            sink(ev)

    def _flush_pending(self, following: dict[str, Any] | None) -> None:
        """Send the held-back exception event, completing ``to_cpl``: the CPL the next ring event
        reports, else the current CPL if the delivery finished (``cpu.delivering`` cleared), else
        None (the delivery faulted: a nested fault, a VM exit, or a triple fault followed)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        cpu = self.cpu
        if following is not None and following["kind"] == "ring":
            pending["to_cpl"] = following["to"]
        elif cpu is not None and cpu.delivering is None:
            pending["to_cpl"] = cpu.cpl
        else:
            pending["to_cpl"] = None
        self._dispatch(pending)

    def flush(self) -> None:
        """Send anything held back (call before reading a sink's events mid-run)."""
        self._flush_pending(None)

    def close(self) -> None:
        self.flush()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()

    # ------------------------------------------------------------------ report sites

    def check_ring(self, cpu: CPU) -> None:
        """Called by CPU.update_mode: emit a ring event when the CPL changed."""
        if cpu.cpl != self._last_cpl:
            old, self._last_cpl = self._last_cpl, cpu.cpl
            self.emit("ring", **{"from": old, "to": cpu.cpl})

    def event_delivery(self, cpu: CPU, vector: int, error_code: int | None, kind: int, return_eip: int) -> None:
        fields: dict[str, Any] = {
            "vector": vector,
            "name": MNEMONICS.get(vector, f"INT {vector:#x}" if kind == 4 else f"IRQ vector {vector}"),
            "event": EVENT_KIND_NAMES.get(int(kind), str(kind)), "error_code": error_code,
            "return_eip": return_eip, "from_cpl": cpu.cpl,
        }
        if kind == 4:
            fields["name"] = f"INT {vector:#x}"
        if error_code is not None:
            fields["error_fields"] = (pf_error_code_fields(error_code) if vector == 14
                                      else selector_error_code_fields(error_code))
        self.by_kind["exception"] = self.by_kind.get("exception", 0) + 1
        if "exception" not in self.kinds:
            return
        ev = self._event("exception", fields)
        self._flush_pending(ev)
        self._pending = ev  # sent with to_cpl once the delivery finished (see _flush_pending)

    def task_switch(self, cpu: CPU, old_selector: int, new_selector: int, source: str) -> None:
        """Called by cpu/tasks.py after a hardware task switch (SDM Vol.3A 7.3)."""
        self.emit("task-switch", from_tr=old_selector, to_tr=new_selector, source=source)

    def fault(self, cpu: CPU, f: Any) -> None:
        self.emit("fault", vector=f.vector, name=MNEMONICS.get(f.vector, str(f.vector)), error_code=f.error_code,
                  detail=f.detail)
        if f.vector == 14 and f.cr2 is not None:
            self.emit("page-fault", cr2=f.cr2, error_code=f.error_code,
                      error_fields=pf_error_code_fields(f.error_code or 0))

    def _io(self, port: int, size: int, is_write: bool, value: int) -> None:
        claimed = self.cpu.machine.ports.device_at(port) is not None if self.cpu else True
        self.emit("io", port=port, size=size, dir="out" if is_write else "in", value=value, claimed=claimed)

    def _mmio(self, addr: int, size: int, is_write: bool, value: int, device: str | None) -> None:
        self.emit("mmio", addr=addr, size=size, dir="write" if is_write else "read", value=value, device=device)


class ListSink:
    """Keeps events in memory (tests, the HTML report, explain)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, ev: dict) -> None:
        self.events.append(ev)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]
