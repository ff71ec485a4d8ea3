"""The 8259A programmable interrupt controller pair of the PC/AT: master at 0x20/0x21, slave at
0xA0/0xA1, cascaded on the master's IR2, plus the PIIX edge/level control registers at 0x4D0/0x4D1.

Why a model of the 8259A and not an abstract "interrupt line": real-mode and early protected-mode
guests (and Linux before it switches to the APIC) program the chip themselves -- ICW1-ICW4, masks,
EOIs -- and a guest that forgets an EOI must see its timer stop, as on hardware.

Source: Intel 8259A Programmable Interrupt Controller datasheet (order no. 231468-003), cited below
as "8259A" with the section name; ELCR: Intel 82371AB PIIX4 datasheet 12.3 (ports 4D0h/4D1h).

Modelling decisions (each is a place where the datasheet leaves room or a PC differs):

* Power-on state: the datasheet leaves it undefined.  vmxlab starts with every line masked
  (IMR = 0xFF) so a guest that never initialises the PIC gets no interrupts; ICW1 clears IMR as the
  datasheet says.
* Edge-triggered inputs latch the rising edge into IRR and keep it until INTA, even if the line falls
  again before (8259A "Edge and level triggered modes" asks that IR stays high until the first INTA;
  every PC emulator latches, and so do devices that pulse their line).  Level-triggered inputs
  (ICW1.LTIM, or the ELCR bit) make IRR follow the line.
* The slave's INT output reaches the master's IR2 as a level, so a second slave request that is
  already pending when the first is acknowledged is not lost.
* The master IR2 of the PC/AT has no device of its own: IRQ 2 raised by a device is delivered on
  IRQ 9 (the AT rewired the XT's IRQ 2 bus line to the slave's IR1).
* 8080/8085 mode (ICW4.uPM = 0) is not modelled: vectors are always delivered in 8086 mode.
* Spurious interrupts: an INTA with no request left gives IR7 of that chip without setting its ISR
  bit (8259A "Interrupt sequence", step 4: "default IR7").
"""

from __future__ import annotations

import threading

from ..machine.machine import Machine

MASTER_PORTS = (0x20, 0x21)
SLAVE_PORTS = (0xA0, 0xA1)
ELCR_PORTS = (0x4D0, 0x4D1)
CASCADE_IR = 2  # the slave's INT is wired to the master's IR2 on the PC/AT
AT_IRQ2_REDIRECT = 9  # ISA bus IRQ 2 arrives at the slave's IR1

# ICW1 (A0 = 0, D4 = 1) -- 8259A "Initialization command words"
ICW1_IC4 = 0x01  # ICW4 needed
ICW1_SNGL = 0x02  # single (no ICW3)
ICW1_LTIM = 0x08  # level-triggered mode
ICW1_SELECT = 0x10
# ICW4
ICW4_UPM = 0x01  # 8086/8088 mode
ICW4_AEOI = 0x02  # automatic end of interrupt
ICW4_MS = 0x04  # buffered mode: master (1) / slave (0)
ICW4_BUF = 0x08  # buffered mode
ICW4_SFNM = 0x10  # special fully nested mode
# OCW3 (A0 = 0, D4 = 0, D3 = 1) -- 8259A "Operation command words"
OCW3_SELECT = 0x08
OCW3_RIS = 0x01  # read ISR (1) or IRR (0) ...
OCW3_RR = 0x02  # ... when RR = 1
OCW3_POLL = 0x04
OCW3_SMM = 0x20  # special mask mode on (1) / off (0) ...
OCW3_ESMM = 0x40  # ... when ESMM = 1
# OCW2: bits 7..5 are R, SL, EOI; bits 2..0 the level L
OCW2_ROTATE_AEOI_CLEAR = 0b000
OCW2_NONSPECIFIC_EOI = 0b001
OCW2_NOP = 0b010
OCW2_SPECIFIC_EOI = 0b011
OCW2_ROTATE_AEOI_SET = 0b100
OCW2_ROTATE_NONSPECIFIC_EOI = 0b101
OCW2_SET_PRIORITY = 0b110
OCW2_ROTATE_SPECIFIC_EOI = 0b111

# PIIX4 12.3: IRQ 0, 1, 2 (master) and 8, 13 (slave) must stay edge-triggered
ELCR_WRITABLE = (0xF8, 0xDE)


class Pic8259:
    """One 8259A chip.  Port access and INTA are routed here by :class:`DualPic`."""

    def __init__(self, name: str, elcr_mask: int) -> None:
        self.name = name
        self.elcr_mask = elcr_mask
        self.elcr = 0
        self.lines = 0  # current level of each IR input
        self.power_on()

    def power_on(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0xFF  # see the module docstring: masked until initialised
        self.vector_base = 0
        self.priority_add = 0  # the IR with the highest priority (rotation, 8259A "Rotation")
        self.init_step = 0  # 0: ready; 2, 3, 4: expecting ICW2, ICW3, ICW4
        self.icw1 = 0
        self.icw3 = 0
        self.icw4 = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.rotate_on_aeoi = False

    # -- configuration views --------------------------------------------------------

    @property
    def single(self) -> bool:
        return bool(self.icw1 & ICW1_SNGL)

    @property
    def auto_eoi(self) -> bool:
        return bool(self.icw4 & ICW4_AEOI)

    @property
    def sfnm(self) -> bool:
        return bool(self.icw4 & ICW4_SFNM)

    def level_mask(self) -> int:
        """IRs that are level-triggered: all with ICW1.LTIM, else those selected in the ELCR."""
        return 0xFF if self.icw1 & ICW1_LTIM else self.elcr

    # -- inputs -----------------------------------------------------------------------

    def set_line(self, ir: int, level: bool) -> None:
        bit = 1 << ir
        if level:
            if not self.lines & bit or self.level_mask() & bit:
                self.irr |= bit  # rising edge (or level high)
            self.lines |= bit
        else:
            self.lines &= ~bit
            if self.level_mask() & bit:
                self.irr &= ~bit  # a level request goes away with the line

    # -- priority resolution (8259A "Priority resolver", "Fully nested mode") ----------

    def _priority(self, mask: int) -> int:
        """Rank (0 = highest) of the highest-priority bit set in ``mask``; 8 if none."""
        if not mask & 0xFF:
            return 8
        rank = 0
        while not mask & (1 << ((rank + self.priority_add) & 7)):
            rank += 1
        return rank

    def pending_ir(self, is_master: bool) -> int:
        """The IR this chip would signal on INT now, or -1."""
        rank = self._priority(self.irr & ~self.imr)
        if rank == 8:
            return -1
        in_service = self.isr
        if self.special_mask:  # 8259A "Special mask mode": masked levels do not block others
            in_service &= ~self.imr
        if is_master and self.sfnm:  # "Special fully nested mode": the slave may nest on IR2
            in_service &= ~(1 << CASCADE_IR)
        if rank < self._priority(in_service):
            return (rank + self.priority_add) & 7
        return -1

    def intack(self, ir: int) -> None:
        """The INTA sequence for ``ir`` (8259A "Interrupt sequence"): IRR -> ISR, or AEOI."""
        bit = 1 << ir
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.priority_add = (ir + 1) & 7
        else:
            self.isr |= bit
        if not self.level_mask() & bit:
            self.irr &= ~bit

    # -- port interface -------------------------------------------------------------------

    def write(self, a0: int, value: int) -> None:
        if a0 == 0:
            if value & ICW1_SELECT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
            return
        if self.init_step == 2:  # ICW2: T7-T3 of the vector (8086 mode)
            self.vector_base = value & 0xF8
            if not self.single:
                self.init_step = 3
            else:
                self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif self.init_step == 3:  # ICW3: slave mask (master) or slave id (slave)
            self.icw3 = value
            self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif self.init_step == 4:  # ICW4
            self.icw4 = value & 0x1F
            self.init_step = 0
        else:  # OCW1: the interrupt mask
            self.imr = value

    def _icw1(self, value: int) -> None:
        # 8259A "Initialization command words": the effects of ICW1 a-f
        self.icw1 = value
        self.irr &= self.lines & self.level_mask()  # edge sense reset: a new rising edge is needed
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.rotate_on_aeoi = False
        self.icw3 = 0
        self.icw4 = 0  # IC4 = 0 means every ICW4 function is zero
        self.init_step = 2

    def _ocw2(self, value: int) -> None:
        cmd = value >> 5
        level = value & 7
        if cmd in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            rank = self._priority(self.isr)
            if rank < 8:
                ir = (rank + self.priority_add) & 7
                self.isr &= ~(1 << ir)
                if cmd == OCW2_ROTATE_NONSPECIFIC_EOI:
                    self.priority_add = (ir + 1) & 7
        elif cmd in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self.isr &= ~(1 << level)
            if cmd == OCW2_ROTATE_SPECIFIC_EOI:
                self.priority_add = (level + 1) & 7
        elif cmd == OCW2_SET_PRIORITY:  # L becomes the lowest priority
            self.priority_add = (level + 1) & 7
        elif cmd == OCW2_ROTATE_AEOI_SET:
            self.rotate_on_aeoi = True
        elif cmd == OCW2_ROTATE_AEOI_CLEAR:
            self.rotate_on_aeoi = False
        # OCW2_NOP: nothing

    def _ocw3(self, value: int) -> None:
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)


class DualPic:
    """The master/slave pair as one device: the :class:`~vmxlab.machine.machine.InterruptController`
    the CPU reads INTR from and sends INTA to."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.master = Pic8259("master", ELCR_WRITABLE[0])
        self.slave = Pic8259("slave", ELCR_WRITABLE[1])
        #: the INTR output to the CPU
        self.intr = False
        # Device IRQs may arrive from host threads (UART input); all state changes hold this lock.
        self._lock = threading.RLock()

    def attach(self) -> DualPic:
        ports = self.machine.ports
        ports.register(MASTER_PORTS[0], 2, self)
        ports.register(SLAVE_PORTS[0], 2, self)
        ports.register(ELCR_PORTS[0], 2, self)
        self.machine.intc = self
        self.machine.add_device("pic", self)
        return self

    # -- InterruptController protocol ---------------------------------------------------

    def set_irq(self, irq: int, level: bool) -> None:
        """A device's IRQ line changed: 0-7 go to the master, 8-15 to the slave."""
        if irq == CASCADE_IR:
            irq = AT_IRQ2_REDIRECT
        with self._lock:
            if irq < 8:
                self.master.set_line(irq, level)
            else:
                self.slave.set_line(irq - 8, level)
            self._update()

    def acknowledge(self) -> int:
        """INTA: the vector of the highest-priority request; IR7's vector if none is left."""
        with self._lock:
            master, slave = self.master, self.slave
            ir = master.pending_ir(True)
            if ir < 0:
                vector = master.vector_base + 7  # spurious: ISR7 stays clear
            elif ir == CASCADE_IR and self._cascaded():
                master.intack(CASCADE_IR)
                sir = slave.pending_ir(False)
                if sir < 0:
                    vector = slave.vector_base + 7  # spurious on the slave
                else:
                    slave.intack(sir)
                    vector = slave.vector_base + sir
            else:
                master.intack(ir)
                vector = master.vector_base + ir
            self._update()
            return vector

    # -- ports ----------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            if port in ELCR_PORTS:
                return (self.master if port == ELCR_PORTS[0] else self.slave).elcr
            chip = self.master if port in MASTER_PORTS else self.slave
            if chip.poll:  # 8259A "The poll command": this read acts as INTA
                chip.poll = False
                value = self._poll(chip)
            elif port & 1:
                value = chip.imr
            else:
                value = chip.isr if chip.read_isr else chip.irr
            return value

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if port in ELCR_PORTS:
                chip = self.master if port == ELCR_PORTS[0] else self.slave
                chip.elcr = value & chip.elcr_mask
                chip.irr = (chip.irr & ~chip.elcr) | (chip.lines & chip.elcr)
            else:
                chip = self.master if port in MASTER_PORTS else self.slave
                chip.write(port & 1, value)
            self._update()

    def _poll(self, chip: Pic8259) -> int:
        """Poll word: bit 7 = a request is pending, bits 2-0 = its level; acknowledges it."""
        ir = chip.pending_ir(chip is self.master)
        if ir < 0:
            return 0
        chip.intack(ir)
        self._update()
        return 0x80 | ir

    # -- INTR ---------------------------------------------------------------------------------------

    def _cascaded(self) -> bool:
        m = self.master
        return not m.single and bool(m.icw3 & (1 << CASCADE_IR))

    def _update(self) -> None:
        """Recompute the slave's INT (to master IR2, as a level) and the master's INT (INTR)."""
        master = self.master
        bit = 1 << CASCADE_IR
        if self.slave.pending_ir(False) >= 0:
            master.lines |= bit
            master.irr |= bit
        else:
            master.lines &= ~bit
            master.irr &= ~bit
        intr = master.pending_ir(True) >= 0
        changed = intr != self.intr
        self.intr = intr
        if changed or intr:
            self.machine.notify_intr()

    # -- inspection (trace, tests) ------------------------------------------------------------------

    def state(self) -> dict[str, int]:
        m, s = self.master, self.slave
        return {"irr": m.irr | s.irr << 8, "isr": m.isr | s.isr << 8, "imr": m.imr | s.imr << 8,
                "master_base": m.vector_base, "slave_base": s.vector_base}
