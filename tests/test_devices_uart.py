"""The 16550A UART through its ports: registers, interrupt identification, FIFO, loopback, IRQ 4,
host input, and the probe Linux's 8250 driver runs (kvm.md 2.5)."""

from __future__ import annotations

import threading

import pytest

from vmxlab.devices.board import attach_standard_devices
from vmxlab.devices.uart16550 import Uart16550
from vmxlab.machine.machine import Console, Machine, StopReason

COM1 = 0x3F8
RBR = THR = DLL = COM1
IER = DLM = COM1 + 1
IIR = FCR = COM1 + 2
LCR, MCR, LSR, MSR, SCR = COM1 + 3, COM1 + 4, COM1 + 5, COM1 + 6, COM1 + 7


class Board:
    def __init__(self) -> None:
        self.machine = Machine.create(32, Console(echo=False))
        attach_standard_devices(self.machine)
        self.irq_log: list[tuple[int, bool]] = []
        self.machine.irq_router = lambda irq, level: self.irq_log.append((irq, level))
        self.uart: Uart16550 = self.machine.devices["com1"]

    def inb(self, port: int) -> int:
        return self.machine.ports.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.machine.ports.write(port, 1, value)

    @property
    def irq4(self) -> bool:
        return self.uart.irq.level


@pytest.fixture
def b() -> Board:
    return Board()


def test_reset_values(b: Board) -> None:
    # kvm.md 2.5 / PC16550D Table III: LSR = THRE|TEMT, IIR = no interrupt, IER = 0
    assert b.inb(LSR) == 0x60
    assert b.inb(IIR) == 0x01
    assert b.inb(IER) == 0x00
    assert b.inb(MSR) & 0xF0 == 0xB0  # DCD, DSR, CTS of a connected host
    assert b.inb(LCR) == 0
    assert not b.irq4


def test_transmit_goes_to_console_channel_com1(b: Board) -> None:
    for ch in b"hi\n":
        assert b.inb(LSR) & 0x20  # THRE before each byte
        b.outb(THR, ch)
    assert bytes(b.machine.console.by_channel["com1"]) == b"hi\n"
    assert b.inb(LSR) == 0x60  # transmission is instantaneous


def test_dlab_selects_divisor_latch(b: Board) -> None:
    b.outb(LCR, 0x83)
    b.outb(DLL, 0x01)
    b.outb(DLM, 0x02)
    assert (b.inb(DLL), b.inb(DLM)) == (0x01, 0x02)
    assert "com1" not in b.machine.console.by_channel  # the DLL write was not transmitted
    b.outb(LCR, 0x03)
    assert b.inb(IER) == 0  # DLM did not land in IER
    assert b.inb(LCR) == 0x03
    b.outb(LCR, 0x83)
    assert b.inb(DLL) == 0x01  # the latch keeps its value


def test_ier_keeps_low_four_bits_and_scratch_register(b: Board) -> None:
    b.outb(IER, 0xFF)
    assert b.inb(IER) == 0x0F
    b.outb(IER, 0)
    assert b.inb(IER) == 0
    b.outb(SCR, 0xA5)
    assert b.inb(SCR) == 0xA5


def test_fcr_fifo_enable_shows_in_iir(b: Board) -> None:
    b.outb(FCR, 0x01)
    assert b.inb(IIR) == 0xC1
    b.outb(FCR, 0x00)
    assert b.inb(IIR) == 0x01


def linux_autoconfig(inb, outb) -> str:
    """The steps of Linux's 8250 autoconfig() that decide the port type (8250_port.c), in order."""
    scratch = inb(IER)
    outb(IER, 0)
    scratch2 = inb(IER) & 0x0F
    outb(IER, 0x0F)
    scratch3 = inb(IER) & 0x0F
    outb(IER, scratch)
    if scratch2 != 0 or scratch3 != 0x0F:
        return "none"
    save_mcr = inb(MCR)
    outb(MCR, 0x10 | 0x0A)  # loopback | RTS | OUT2
    status1 = inb(MSR) & 0xF0
    outb(MCR, save_mcr)
    if status1 != 0x90:  # CTS | DCD
        return "none (loopback test)"
    outb(LCR, 0xBF)  # EFR access on 16650s: a 16550A shows no EFR (IIR reads back)
    outb(FCR, 0)
    outb(LCR, 0)
    outb(FCR, 0x01)  # UART_FCR_ENABLE_FIFO
    kind = inb(IIR) >> 6
    if kind != 3:
        return {0: "16450", 1: "unknown", 2: "16550"}[kind]
    # autoconfig_16550a: 16750 check (64-byte FIFO bit shows in IIR bit 5 with DLAB set)
    outb(LCR, 0x80)
    outb(FCR, 0x01 | 0x20)
    status1 = inb(IIR) >> 5
    outb(FCR, 0x01)
    outb(LCR, 0)
    if status1 == 7:
        return "16750"
    # Xscale check: IER bit 6 (UUE) must not stick
    outb(IER, 0x40)
    if inb(IER) & 0x40:
        return "xscale"
    outb(IER, 0)
    return "16550A"


def test_linux_probe_sees_16550a(b: Board) -> None:
    assert linux_autoconfig(b.inb, b.outb) == "16550A"
    # the startup THRE test (serial8250_do_startup): IER = THRI gives THRI in IIR, IER = 0 gives none
    b.outb(IER, 0x02)
    lsr = b.inb(LSR)
    iir = b.inb(IIR)
    b.outb(IER, 0)
    assert lsr & 0x40 and iir & 0x0F == 0x02
    assert b.inb(IIR) & 0x0F == 0x01


def test_loopback_tx_to_rx_and_msr_from_mcr(b: Board) -> None:
    b.outb(MCR, 0x10)  # loopback, all outputs off
    assert b.inb(MSR) & 0xF0 == 0x00
    b.outb(MCR, 0x10 | 0x01)  # DTR -> DSR
    assert b.inb(MSR) == 0x20 | 0x02  # DSR and DDSR
    assert b.inb(MSR) == 0x20  # delta bits cleared by the read
    b.outb(MCR, 0x10 | 0x02 | 0x04 | 0x08)  # RTS -> CTS, OUT1 -> RI, OUT2 -> DCD; DTR off
    assert b.inb(MSR) == 0x10 | 0x40 | 0x80 | 0x01 | 0x02 | 0x08  # DCTS, DDSR, DDCD; no TERI yet
    b.outb(MCR, 0x10 | 0x02 | 0x08)  # RI falls: trailing edge sets TERI
    assert b.inb(MSR) & 0x0F == 0x04
    b.outb(THR, 0x41)
    assert b.inb(LSR) & 0x01  # data ready
    assert b.inb(RBR) == 0x41
    assert not b.inb(LSR) & 0x01
    assert "com1" not in b.machine.console.by_channel  # nothing left the chip
    b.outb(MCR, 0)
    assert b.inb(MSR) & 0xF0 == 0xB0


def test_fifo_holds_16_bytes_then_overruns(b: Board) -> None:
    b.outb(FCR, 0x07)
    b.outb(MCR, 0x10)
    for i in range(17):
        b.outb(THR, 0x30 + i)
    lsr = b.inb(LSR)
    assert lsr & 0x03 == 0x03  # DR and OE
    assert not b.inb(LSR) & 0x02  # OE cleared by reading LSR
    got = [b.inb(RBR) for _ in range(16)]
    assert got == [0x30 + i for i in range(16)]  # the 17th character was lost
    assert not b.inb(LSR) & 0x01


def test_without_fifo_a_new_character_overwrites_rbr(b: Board) -> None:
    b.outb(MCR, 0x10)
    b.outb(THR, 1)
    b.outb(THR, 2)
    assert b.inb(LSR) & 0x03 == 0x03
    assert b.inb(RBR) == 2
    assert not b.inb(LSR) & 0x01


def test_interrupt_identification_priority(b: Board) -> None:
    b.outb(FCR, 0x01)  # FIFO, trigger level 1
    b.outb(MCR, 0x10 | 0x01)  # loopback; DTR -> DSR gives a modem status change
    b.outb(IER, 0x0F)
    for i in range(17):  # fill the FIFO and overrun it
        b.outb(THR, i)
    assert b.inb(IIR) == 0xC6  # receiver line status first
    b.inb(LSR)  # clears OE
    assert b.inb(IIR) == 0xC4  # then received data
    for _ in range(16):
        b.inb(RBR)
    assert b.inb(IIR) == 0xC2  # then THR empty; reading IIR clears it
    assert b.inb(IIR) == 0xC0  # then modem status
    b.inb(MSR)
    assert b.inb(IIR) == 0xC1  # nothing


def test_thre_interrupt_cleared_by_iir_read_and_rearmed_by_thr_write(b: Board) -> None:
    b.outb(IER, 0x02)
    assert b.inb(IIR) == 0x02
    assert b.inb(IIR) == 0x01
    b.outb(THR, ord("x"))
    assert b.inb(IIR) == 0x02
    b.outb(IER, 0x00)
    assert b.inb(IIR) == 0x01


def test_character_timeout_below_trigger_level(b: Board) -> None:
    b.outb(FCR, 0x41)  # FIFO on, trigger level 4
    b.outb(IER, 0x01)
    b.uart.feed(b"ab")
    assert b.inb(IIR) == 0xCC  # fewer than 4 bytes: character timeout
    b.uart.feed(b"cd")
    assert b.inb(IIR) == 0xC4


def test_irq4_follows_pending_interrupt_and_out2(b: Board) -> None:
    b.outb(IER, 0x01)
    b.uart.feed(b"k")
    assert not b.irq4  # OUT2 = 0: the PC's interrupt buffer is off
    b.outb(MCR, 0x08)
    assert b.irq4 and b.irq_log[-1] == (4, True)
    assert b.inb(RBR) == ord("k")
    assert not b.irq4 and b.irq_log[-1] == (4, False)  # lowered when the condition clears
    b.outb(IER, 0x02)
    assert b.irq4  # THRE
    b.inb(IIR)
    assert not b.irq4
    b.outb(MCR, 0x08 | 0x10)
    b.outb(THR, 1)
    assert not b.irq4  # loopback disconnects the interrupt (OUT2 forced inactive)


def test_feed_is_flow_controlled_and_ordered(b: Board) -> None:
    b.outb(FCR, 0x01)
    data = bytes(range(40))
    b.uart.feed(data)
    got = []
    while b.inb(LSR) & 0x01:
        got.append(b.inb(RBR))
    assert bytes(got) == data
    assert not b.inb(LSR) & 0x02  # no overrun: host input waits for room


def test_feed_from_another_thread(b: Board) -> None:
    b.outb(FCR, 0x01)
    data = bytes(i & 0xFF for i in range(3000))

    def feeder() -> None:
        for i in range(0, len(data), 7):
            b.uart.feed(data[i:i + 7])

    t = threading.Thread(target=feeder)
    t.start()
    got = bytearray()
    while len(got) < len(data):
        if b.inb(LSR) & 0x01:
            got.append(b.inb(RBR))
    t.join()
    assert bytes(got) == data


def test_terminal_escapes(b: Board) -> None:
    b.uart.terminal_input(b"a\x01\x01b")
    assert [b.inb(RBR), b.inb(RBR), b.inb(RBR)] == [ord("a"), 1, ord("b")]
    assert b.machine.stop is None
    b.uart.terminal_input(b"\x01x")
    assert b.machine.stop is not None and b.machine.stop.reason == StopReason.SHUTDOWN_REQUEST


def test_attach_terminal_declines_without_a_tty(b: Board) -> None:
    assert b.uart.attach_terminal() is False  # pytest's stdin is not a terminal
    b.uart.detach_terminal()
