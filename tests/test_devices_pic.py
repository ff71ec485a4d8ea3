"""The 8259A pair through its ports and the CPU's INTR/INTA interface (Intel 8259A datasheet)."""

from __future__ import annotations

import pytest

from vmxlab.devices.board import attach_standard_devices
from vmxlab.devices.pic8259 import DualPic
from vmxlab.machine.machine import Console, Machine


class Board:
    def __init__(self) -> None:
        self.machine = Machine.create(32, Console(echo=False))
        attach_standard_devices(self.machine)
        self.pic: DualPic = self.machine.devices["pic"]
        self.notified = 0
        self.machine.on_intr = self._notified

    def _notified(self) -> None:
        self.notified += 1

    def outb(self, port: int, value: int) -> None:
        self.machine.ports.write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.machine.ports.read(port, 1)

    def init_pc(self, icw4: int = 0x01) -> None:
        """What a PC BIOS or Linux does: vectors 0x20/0x28, slave on IR2, 8086 mode."""
        self.outb(0x20, 0x11)
        self.outb(0x21, 0x20)
        self.outb(0x21, 0x04)
        self.outb(0x21, icw4)
        self.outb(0xA0, 0x11)
        self.outb(0xA1, 0x28)
        self.outb(0xA1, 0x02)
        self.outb(0xA1, icw4)

    def pulse(self, irq: int) -> None:
        self.machine.route_irq(irq, True)
        self.machine.route_irq(irq, False)


@pytest.fixture
def b() -> Board:
    board = Board()
    board.init_pc()
    return board


def test_is_the_machines_interrupt_controller() -> None:
    board = Board()
    assert board.machine.intc is board.pic


def test_masked_until_initialised() -> None:
    board = Board()
    board.pulse(0)
    assert not board.pic.intr
    assert board.inb(0x21) == 0xFF


def test_icw_sequence_clears_mask_and_sets_vector_base(b: Board) -> None:
    assert b.inb(0x21) == 0x00 and b.inb(0xA1) == 0x00  # ICW1 clears IMR
    b.outb(0x21, 0xFE)  # OCW1
    assert b.inb(0x21) == 0xFE
    b.pulse(0)
    assert b.pic.intr
    assert b.pic.acknowledge() == 0x20


def test_ack_moves_irr_to_isr_and_eoi_clears_it(b: Board) -> None:
    b.pulse(3)
    assert b.inb(0x20) == 0x08  # IRR (the default read after ICW1)
    assert b.pic.intr and b.notified
    assert b.pic.acknowledge() == 0x23
    assert not b.pic.intr
    b.outb(0x20, 0x0B)  # OCW3: read ISR
    assert b.inb(0x20) == 0x08
    b.outb(0x20, 0x20)  # non-specific EOI
    assert b.inb(0x20) == 0x00
    b.outb(0x20, 0x0A)  # OCW3: read IRR
    assert b.inb(0x20) == 0x00


def test_fully_nested_priority(b: Board) -> None:
    b.pulse(5)
    b.pulse(3)
    assert b.pic.acknowledge() == 0x23  # lower IR number first
    assert not b.pic.intr  # IR5 waits while IR3 is in service
    b.pulse(1)
    assert b.pic.intr  # a higher priority request nests
    assert b.pic.acknowledge() == 0x21
    b.outb(0x20, 0x20)  # EOI for IR1 (highest in service)
    assert not b.pic.intr
    b.outb(0x20, 0x20)  # EOI for IR3
    assert b.pic.intr
    assert b.pic.acknowledge() == 0x25


def test_mask_holds_a_request_until_unmasked(b: Board) -> None:
    b.outb(0x21, 0x10)
    b.pulse(4)
    assert not b.pic.intr
    b.outb(0x21, 0x00)
    assert b.pic.intr
    assert b.pic.acknowledge() == 0x24


def test_slave_interrupt_cascades_through_ir2(b: Board) -> None:
    b.pulse(10)
    assert b.pic.intr
    assert b.pic.acknowledge() == 0x2A
    b.outb(0x20, 0x0B)
    b.outb(0xA0, 0x0B)
    assert b.inb(0x20) == 0x04 and b.inb(0xA0) == 0x04
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert b.inb(0x20) == 0 and b.inb(0xA0) == 0


def test_second_slave_request_is_not_lost(b: Board) -> None:
    b.pulse(12)
    b.pulse(9)
    assert b.pic.acknowledge() == 0x29
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert b.pic.intr
    assert b.pic.acknowledge() == 0x2C


def test_irq2_is_redirected_to_irq9(b: Board) -> None:
    b.pulse(2)
    assert b.pic.acknowledge() == 0x29


def test_spurious_interrupt_is_ir7_without_isr(b: Board) -> None:
    assert b.pic.acknowledge() == 0x27
    b.outb(0x20, 0x0B)
    assert b.inb(0x20) == 0x00


def test_level_request_withdrawn_before_inta_gives_spurious_irq7(b: Board) -> None:
    b.outb(0x4D0, 0x08)  # ELCR: IRQ 3 level-triggered
    assert b.inb(0x4D0) == 0x08
    b.machine.route_irq(3, True)
    assert b.pic.intr
    b.machine.route_irq(3, False)
    assert not b.pic.intr
    assert b.pic.acknowledge() == 0x27


def test_level_triggered_line_requests_again_after_eoi(b: Board) -> None:
    b.outb(0x4D1, 0x04)  # ELCR: IRQ 10 level-triggered
    b.machine.route_irq(10, True)
    assert b.pic.acknowledge() == 0x2A
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert b.pic.intr  # still high: requested again
    assert b.pic.acknowledge() == 0x2A
    b.machine.route_irq(10, False)
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert not b.pic.intr


def test_edge_triggered_line_held_high_requests_once(b: Board) -> None:
    b.machine.route_irq(4, True)
    assert b.pic.acknowledge() == 0x24
    b.outb(0x20, 0x20)
    assert not b.pic.intr  # no new rising edge
    b.machine.route_irq(4, False)
    b.machine.route_irq(4, True)
    assert b.pic.intr


def test_elcr_cannot_make_timer_level(b: Board) -> None:
    b.outb(0x4D0, 0xFF)
    assert b.inb(0x4D0) == 0xF8  # IRQ 0, 1, 2 stay edge-triggered (PIIX4 12.3)


def test_specific_eoi(b: Board) -> None:
    b.pulse(6)
    b.pic.acknowledge()
    b.outb(0x20, 0x60 | 5)  # specific EOI for IR5: not in service, no effect
    b.outb(0x20, 0x0B)
    assert b.inb(0x20) == 0x40
    b.outb(0x20, 0x60 | 6)
    assert b.inb(0x20) == 0x00


def test_set_priority_rotates(b: Board) -> None:
    b.outb(0x20, 0xC0 | 4)  # OCW2 set priority: IR4 lowest, so IR5 highest
    b.pulse(3)
    b.pulse(6)
    assert b.pic.acknowledge() == 0x26


def test_rotate_on_nonspecific_eoi(b: Board) -> None:
    b.pulse(1)
    b.pulse(3)
    assert b.pic.acknowledge() == 0x21
    b.outb(0x20, 0xA0)  # rotate on non-specific EOI: IR1 becomes lowest
    b.pulse(1)
    assert b.pic.acknowledge() == 0x23  # IR3 now ranks above IR1


def test_auto_eoi_leaves_isr_clear() -> None:
    board = Board()
    board.init_pc(icw4=0x03)
    board.pulse(5)
    assert board.pic.acknowledge() == 0x25
    board.outb(0x20, 0x0B)
    assert board.inb(0x20) == 0x00
    board.pulse(6)
    assert board.pic.intr  # nothing in service blocks it


def test_poll_command_acknowledges(b: Board) -> None:
    b.pulse(5)
    b.outb(0x20, 0x0C)  # OCW3 poll
    assert b.inb(0x20) == 0x85
    assert not b.pic.intr
    b.outb(0x20, 0x0C)
    assert b.inb(0x20) == 0x00


def test_special_mask_mode_lets_lower_priorities_through(b: Board) -> None:
    b.pulse(3)
    b.pic.acknowledge()
    b.pulse(5)
    assert not b.pic.intr
    b.outb(0x21, 0x08)  # mask IR3 ...
    b.outb(0x20, 0x68)  # ... and enter special mask mode (ESMM | SMM)
    assert b.pic.intr
    assert b.pic.acknowledge() == 0x25
    b.outb(0x20, 0x48)  # leave special mask mode


def test_icw1_needs_a_new_edge(b: Board) -> None:
    b.machine.route_irq(4, True)
    b.init_pc()
    assert not b.pic.intr  # edge sense reset: the line is high but has not risen since
