"""The 16550A UART at COM1 (ports 0x3F8-0x3FF, IRQ 4): the serial console of PC guests and of Linux.

Why every register: Linux's 8250 driver identifies the chip by probing (IER scratch test, the
loopback test on MSR, FIFO bits 0xC0 in IIR after FCR, the scratch register; see
drivers/tty/serial/8250/8250_port.c ``autoconfig``) and then relies on the interrupt
identification rules to drive transmit and receive.  A model that only printed THR writes would be
detected as no UART at all.

Source: National Semiconductor PC16550D UART with FIFOs datasheet (June 1995), cited as "PC16550D"
with the section/table name, mainly Table II "Summary of Registers", Table IV "Interrupt Control
Functions", 8.6 "Line Status Register", 8.7 "FIFO Control Register", 8.9 "Modem Control Register".

Modelling decisions:

* Transmission is instantaneous: THR and the transmitter shift register are always empty
  (LSR.THRE and LSR.TEMT stay 1), and after a THR write the THRE interrupt is pending again at once.
  Baud rate (DLL/DLM), word length and parity (LCR) are stored and have no other effect.
* Received characters come from :meth:`Uart16550.feed` (host input, flow-controlled: bytes wait in
  a host-side queue until the FIFO has room, as QEMU's chardev ``can_receive`` does, so pasted text
  is not lost) or from the transmitter in loopback mode, which is a raw line and can overrun.
* The character timeout interrupt (IIR = 0x0C) is reported as soon as the FIFO holds fewer bytes
  than the trigger level, as if the four character times had already passed.
* The IRQ reaches the PIC only while MCR.OUT2 is 1 and loopback is off: on the PC, OUT2 enables the
  UART's interrupt buffer, and in loopback the datasheet forces OUT2 inactive (PC16550D 8.9).
  Linux sets OUT2 when it opens the port.
* FIFO DMA mode (FCR bit 3) and the 16750's 64-byte FIFO are not modelled (Linux then identifies a
  16550A, not a 16750).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import threading
from collections import deque

from ..machine.machine import Machine, StopReason

COM1_BASE = 0x3F8
COM1_IRQ = 4
FIFO_SIZE = 16

# register offsets (PC16550D Table II)
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_ERBFI = 0x01  # received data available
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status
IER_MASK = 0x0F  # bits 4-7 are always 0 on a 16550A

IIR_NO_INT = 0x01
IIR_MODEM_STATUS = 0x00
IIR_THRE = 0x02
IIR_RX_DATA = 0x04
IIR_RX_LINE_STATUS = 0x06
IIR_CHAR_TIMEOUT = 0x0C
IIR_FIFOS_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER_SHIFT = 6
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # PC16550D 8.7, FCR bits 7-6

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F  # bits 5-7 are always 0

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_RX_FIFO_ERROR = 0x80
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
#: the modem inputs of a connected host: carrier, data set ready, clear to send (RI off)
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS

CTRL_A = 0x01  # the escape character of the terminal attachment (as QEMU's -serial stdio)


class Uart16550:
    """A 16550A at ``base`` with its interrupt on ``irq``; console output goes to ``channel``."""

    def __init__(self, machine: Machine, base: int = COM1_BASE, irq: int = COM1_IRQ,
                 channel: str = "com1") -> None:
        self.machine = machine
        self.base = base
        self.channel = channel
        self.irq = machine.irq_line(irq)
        # feed() runs on host threads; every register access and IRQ update holds this lock
        self._lock = threading.RLock()
        self.host_input: deque[int] = deque()
        self._term: _TerminalAttachment | None = None
        self._escape = False  # the previous terminal byte was Ctrl-A
        self.reset()

    def attach(self) -> Uart16550:
        self.machine.ports.register(self.base, 8, self)
        self.machine.add_device(self.channel, self)
        return self

    def reset(self) -> None:
        """Master reset values (PC16550D Table III "UART Reset Configuration")."""
        with self._lock:
            self.rx: deque[int] = deque()
            self.ier = 0
            self.lcr = 0
            self.mcr = 0
            self.dll = 0x0C  # 9600 baud; the reset value is not specified
            self.dlm = 0
            self.scr = 0
            self.lsr_errors = 0
            self.fcr = 0
            self.thr_ipending = False
            self.modem_lines = MSR_CONNECTED
            self.msr_delta = 0
            self._update_irq()

    # -- derived state ------------------------------------------------------------------

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    @property
    def loopback(self) -> bool:
        return bool(self.mcr & MCR_LOOP)

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self.fifo_enabled else 1  # without FIFOs the RBR holds one character

    def _modem_inputs(self) -> int:
        """MSR bits 7-4: in loopback they are MCR's outputs (PC16550D 8.9), else the host's lines."""
        if not self.loopback:
            return MSR_CONNECTED
        m = self.mcr
        return ((MSR_DSR if m & MCR_DTR else 0) | (MSR_CTS if m & MCR_RTS else 0)
                | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))

    def _set_modem_lines(self, new: int) -> None:
        """Record a change of the modem inputs in the MSR delta bits (PC16550D 8.10)."""
        old = self.modem_lines
        changed = old ^ new
        if changed & MSR_CTS:
            self.msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_delta |= MSR_DDSR
        if old & MSR_RI and not new & MSR_RI:  # trailing edge of ring indicator
            self.msr_delta |= MSR_TERI
        if changed & MSR_DCD:
            self.msr_delta |= MSR_DDCD
        self.modem_lines = new

    def lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT | self.lsr_errors
        if self.rx:
            value |= LSR_DR
        return value

    def iir(self) -> int:
        """Interrupt identification by priority (PC16550D Table IV): line status > received data
        (or character timeout) > THR empty > modem status."""
        ier = self.ier
        if ier & IER_ELSI and self.lsr_errors:
            ident = IIR_RX_LINE_STATUS
        elif ier & IER_ERBFI and self.rx:
            trigger = RX_TRIGGER_LEVELS[self.fcr >> FCR_TRIGGER_SHIFT] if self.fifo_enabled else 1
            ident = IIR_RX_DATA if len(self.rx) >= trigger else IIR_CHAR_TIMEOUT
        elif ier & IER_ETBEI and self.thr_ipending:
            ident = IIR_THRE
        elif ier & IER_EDSSI and self.msr_delta:
            ident = IIR_MODEM_STATUS
        else:
            ident = IIR_NO_INT
        return ident | (IIR_FIFOS_ENABLED if self.fifo_enabled else 0)

    def _update_irq(self) -> None:
        pending = not self.iir() & IIR_NO_INT
        self.irq.set(pending and bool(self.mcr & MCR_OUT2) and not self.loopback)

    # -- the serial line ------------------------------------------------------------------

    def receive(self, byte: int) -> None:
        """A character arrives at the receiver.  A full FIFO overruns (PC16550D 8.6, LSR bit 1):
        with FIFOs the new character is lost, without them it overwrites the RBR."""
        with self._lock:
            if len(self.rx) >= self._rx_capacity():
                self.lsr_errors |= LSR_OE
                if not self.fifo_enabled:
                    self.rx[-1] = byte
            else:
                self.rx.append(byte)
            self._update_irq()

    def feed(self, data: bytes) -> None:
        """Host input (any thread): queued, and moved into the FIFO as it has room."""
        with self._lock:
            self.host_input.extend(data)
            self._refill()
            self._update_irq()

    def _refill(self) -> None:
        if self.loopback:  # the receiver is disconnected from the line in loopback
            return
        cap = self._rx_capacity()
        while self.host_input and len(self.rx) < cap:
            self.rx.append(self.host_input.popleft())

    def _transmit(self, byte: int) -> None:
        if self.loopback:
            self.receive(byte)
        else:
            self.machine.console.write(bytes([byte]), self.channel)
        self.thr_ipending = True  # THR (and the shift register) empty again at once

    # -- ports --------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        reg = port - self.base
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if reg == RBR_THR_DLL:
                if dlab:
                    return self.dll
                value = self.rx.popleft() if self.rx else 0
                self._refill()
            elif reg == IER_DLM:
                return self.dlm if dlab else self.ier
            elif reg == IIR_FCR:
                value = self.iir()
                if value & 0x0F == IIR_THRE:  # reading IIR clears a THRE interrupt (Table IV)
                    self.thr_ipending = False
            elif reg == LCR:
                return self.lcr
            elif reg == MCR:
                return self.mcr
            elif reg == LSR:
                value = self.lsr()
                self.lsr_errors = 0  # reading LSR clears OE/PE/FE/BI
            elif reg == MSR:
                value = self.modem_lines | self.msr_delta
                self.msr_delta = 0  # reading MSR clears the delta bits
            else:
                return self.scr
            self._update_irq()
            return value

    def io_write(self, port: int, size: int, value: int) -> None:
        reg = port - self.base
        value &= 0xFF
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if reg == RBR_THR_DLL:
                if dlab:
                    self.dll = value
                    return
                self._transmit(value)
            elif reg == IER_DLM:
                if dlab:
                    self.dlm = value
                    return
                changed = (self.ier ^ value) & IER_MASK
                self.ier = value & IER_MASK
                if changed & IER_ETBEI:
                    # enabling ETBEI with THR empty raises THRE at once (what Linux's TX-enable
                    # test and QEMU expect; the datasheet is silent)
                    self.thr_ipending = bool(self.ier & IER_ETBEI)
            elif reg == IIR_FCR:
                self._write_fcr(value)
            elif reg == LCR:
                self.lcr = value
                return
            elif reg == MCR:
                self.mcr = value & MCR_MASK
                self._set_modem_lines(self._modem_inputs())
                self._refill()
            elif reg == SCR:
                self.scr = value
                return
            else:
                return  # LSR and MSR are read-only here (their write is a factory test)
            self._update_irq()

    def _write_fcr(self, value: int) -> None:
        """PC16550D 8.7: bit 0 enables the FIFOs (changing it clears them); bits 1-2 clear them;
        the other bits are only programmed while bit 0 is 1."""
        if (value ^ self.fcr) & FCR_ENABLE:
            self.rx.clear()
        if not value & FCR_ENABLE:
            self.fcr = 0
            self._refill()
            return
        if value & FCR_CLEAR_RX:
            self.rx.clear()
        self.fcr = value & ~(FCR_CLEAR_RX | FCR_CLEAR_TX)
        self._refill()

    # -- host terminal -----------------------------------------------------------------------------

    def attach_terminal(self) -> bool:
        """If stdin is an interactive terminal: raw mode, and a reader thread feeding the UART.
        Ctrl-A x stops the machine, Ctrl-A Ctrl-A sends Ctrl-A (as QEMU's -serial stdio).
        Returns False (and does nothing) when stdin is not a terminal."""
        if self._term is not None:
            return True
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if not os.isatty(fd):
            return False
        self._term = _TerminalAttachment(self, fd)
        self._term.start()
        return True

    def detach_terminal(self) -> None:
        """Stop the reader thread and restore the terminal mode (also run at interpreter exit)."""
        if self._term is not None:
            self._term.stop()
            self._term = None

    def terminal_input(self, data: bytes) -> None:
        """Bytes typed on the attached terminal: the Ctrl-A escapes, the rest goes to the guest."""
        out = bytearray()
        for b in data:
            if self._escape:
                self._escape = False
                if b in (ord("x"), ord("X")):
                    self.machine.request_stop(StopReason.SHUTDOWN_REQUEST, 0, "Ctrl-A x typed on the console")
                    break
                if b == CTRL_A:
                    out.append(CTRL_A)
                elif b in (ord("h"), ord("H")):
                    os.write(sys.stderr.fileno(), b"\r\nC-a x  quit vmxlab\r\nC-a C-a  send C-a\r\n")
            elif b == CTRL_A:
                self._escape = True
            else:
                out.append(b)
        if out:
            self.feed(bytes(out))


class _TerminalAttachment:
    """Raw mode on a terminal plus the thread that reads it (termios; restored on stop or exit)."""

    def __init__(self, uart: Uart16550, fd: int) -> None:
        import termios

        self.uart = uart
        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmxlab-com1-stdin", daemon=True)

    def start(self) -> None:
        import termios
        import tty

        tty.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[1] |= termios.OPOST | termios.ONLCR  # keep "\n" -> "\r\n" for guests that print bare LF
        termios.tcsetattr(self.fd, termios.TCSADRAIN, attrs)
        atexit.register(self.stop)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.fd, 256)
            except OSError:
                return
            if not data:
                return
            self.uart.terminal_input(data)

    def stop(self) -> None:
        import termios

        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        atexit.unregister(self.stop)
