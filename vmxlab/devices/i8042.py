"""The i8042 keyboard controller of the PC/AT: data port 0x60, status/command port 0x64.

Why: it is how a PC resets itself (command 0xFE pulses the CPU's RESET line; Linux's ``reboot=k``)
and where A20 used to be switched (output port bit 1); Linux probes it at boot.  The model is a
controller with a keyboard that answers its commands and never has a key pressed; there is no
mouse (boot Linux with ``i8042.noaux``).

Sources: IBM PC/AT Technical Reference, "Keyboard controller" (commands, status and output-port
bits); the PS/2 keyboard command set (IBM PS/2 Hardware Interface Technical Reference, "Keyboard");
cited as "8042" and "PS/2 keyboard".

A reset stops the run with reason "reset" (as QEMU does with -no-reboot).  Interrupts: IRQ 1 is
raised while the output buffer holds a byte and the command byte enables it (bit 0), as on the AT;
IRQ 12 is never used.  Reading the data port with the buffer empty returns the last byte again.
"""

from __future__ import annotations

from collections import deque

from ..machine.machine import Machine, StopReason

DATA_PORT = 0x60
STATUS_PORT = 0x64
IRQ_KBD = 1

# status register (8042 "Status register")
ST_OBF = 0x01  # output buffer full
ST_IBF = 0x02  # input buffer full (never: commands are processed at once)
ST_SYS = 0x04  # system flag (command byte bit 2; set after a good self-test)
ST_CMD = 0x08  # the last write was to port 0x64
ST_UNLOCKED = 0x10  # keyboard not inhibited by the keylock

# command byte (8042 "Command byte")
CB_KBD_INT = 0x01
CB_AUX_INT = 0x02
CB_SYS = 0x04
CB_KBD_DISABLE = 0x10
CB_AUX_DISABLE = 0x20
CB_XLATE = 0x40
CB_DEFAULT = CB_KBD_INT | CB_SYS | CB_AUX_DISABLE | CB_XLATE

# output port (8042 "Output port")
OP_RESET_N = 0x01  # 0 = hold the CPU in reset
OP_A20 = 0x02
OP_DEFAULT = 0xCF  # reset inactive, A20 on, the keyboard clock/data lines idle high

# controller commands written to port 0x64
CMD_READ_CB = 0x20
CMD_WRITE_CB = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_INPUT = 0xC0
CMD_READ_OUTPUT = 0xD0
CMD_WRITE_OUTPUT = 0xD1
CMD_WRITE_KBD_OBUF = 0xD2
CMD_WRITE_AUX_OBUF = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_DISABLE_A20 = 0xDD  # not on the AT; many later controllers (and QEMU) accept them
CMD_ENABLE_A20 = 0xDF
CMD_PULSE_FIRST = 0xF0  # 0xF0-0xFF: pulse output port bits 0-3 that are 0 in the command
SELF_TEST_OK = 0x55
INTERFACE_OK = 0x00
AUX_ABSENT = 0x01  # aux interface test: "clock line stuck low" -- no mouse here

# PS/2 keyboard commands and replies
KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_BAT_OK = 0xAA
KBD_ECHO = 0xEE
KBD_SET_LEDS = 0xED
KBD_SCANCODE_SET = 0xF0
KBD_IDENTIFY = 0xF2
KBD_TYPEMATIC = 0xF3
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5
KBD_DEFAULTS = 0xF6
KBD_RESET = 0xFF
KBD_ID = (0xAB, 0x83)  # MF2 keyboard
KBD_TAKES_ARGUMENT = (KBD_SET_LEDS, KBD_SCANCODE_SET, KBD_TYPEMATIC)


class I8042:
    """Controller + keyboard.  Replies queue in the output buffer, read one by one from port 0x60."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.irq = machine.irq_line(IRQ_KBD)
        self.command_byte = CB_DEFAULT
        self.output_port = OP_DEFAULT
        self.queue: deque[int] = deque()
        self.last = 0
        self.pending_cmd: int | None = None  # controller command waiting for its data byte
        self.kbd_pending: int | None = None  # keyboard command waiting for its argument
        self.last_was_command = False
        self.scancode_set = 2

    def attach(self) -> I8042:
        self.machine.ports.register(DATA_PORT, 1, self)
        self.machine.ports.register(STATUS_PORT, 1, self)
        self.machine.add_device("i8042", self)
        return self

    # -- ports ---------------------------------------------------------------------------------

    def status(self) -> int:
        value = ST_UNLOCKED | (self.command_byte & CB_SYS)
        if self.queue:
            value |= ST_OBF
        if self.last_was_command:
            value |= ST_CMD
        return value

    def io_read(self, port: int, size: int) -> int:
        if port == STATUS_PORT:
            return self.status()
        if self.queue:
            self.last = self.queue.popleft()
            # OBF falls when the byte is read and rises again as the next one is loaded: one
            # IRQ 1 edge per byte for the edge-triggered PIC
            self.irq.set(False)
        self._update_irq()
        return self.last

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == STATUS_PORT:
            self.last_was_command = True
            self.pending_cmd = None
            self._command(value)
        else:
            self.last_was_command = False
            if self.pending_cmd is not None:
                cmd, self.pending_cmd = self.pending_cmd, None
                self._command_data(cmd, value)
            else:
                self._keyboard(value)
        self._update_irq()

    # -- controller ------------------------------------------------------------------------------

    def _command(self, cmd: int) -> None:
        if cmd == CMD_READ_CB:
            self._reply(self.command_byte)
        elif cmd in (CMD_WRITE_CB, CMD_WRITE_OUTPUT, CMD_WRITE_KBD_OBUF, CMD_WRITE_AUX_OBUF, CMD_WRITE_AUX):
            self.pending_cmd = cmd
        elif cmd == CMD_DISABLE_AUX:
            self.command_byte |= CB_AUX_DISABLE
        elif cmd == CMD_ENABLE_AUX:
            self.command_byte &= ~CB_AUX_DISABLE
        elif cmd == CMD_TEST_AUX:
            self._reply(AUX_ABSENT)
        elif cmd == CMD_SELF_TEST:
            self.command_byte |= CB_SYS
            self._reply(SELF_TEST_OK)
        elif cmd == CMD_TEST_KBD:
            self._reply(INTERFACE_OK)
        elif cmd == CMD_DISABLE_KBD:
            self.command_byte |= CB_KBD_DISABLE
        elif cmd == CMD_ENABLE_KBD:
            self.command_byte &= ~CB_KBD_DISABLE
        elif cmd == CMD_READ_INPUT:
            self._reply(0x80)  # bit 7: keyboard not inhibited
        elif cmd == CMD_READ_OUTPUT:
            self._reply(self.output_port)
        elif cmd == CMD_DISABLE_A20:
            self._write_output_port(self.output_port & ~OP_A20)
        elif cmd == CMD_ENABLE_A20:
            self._write_output_port(self.output_port | OP_A20)
        elif cmd >= CMD_PULSE_FIRST and not cmd & OP_RESET_N:
            # 0xFE (and every even pulse command) pulses RESET; 0xFF and the odd ones do nothing
            self._reset(f"i8042 command {cmd:#04x} pulsed the reset line")
        # other commands: ignored, as unknown commands are on many controllers

    def _command_data(self, cmd: int, value: int) -> None:
        if cmd == CMD_WRITE_CB:
            self.command_byte = value
        elif cmd == CMD_WRITE_OUTPUT:
            self._write_output_port(value)
        elif cmd == CMD_WRITE_KBD_OBUF:
            self._reply(value)
        # CMD_WRITE_AUX_OBUF / CMD_WRITE_AUX: there is no mouse; the byte is dropped

    def _write_output_port(self, value: int) -> None:
        self.output_port = value
        self.machine.set_a20(bool(value & OP_A20))
        if not value & OP_RESET_N:
            self._reset("i8042 output port write cleared the reset bit")

    def _reset(self, detail: str) -> None:
        self.machine.request_stop(StopReason.RESET, 0, detail)

    # -- keyboard ---------------------------------------------------------------------------------

    def _keyboard(self, value: int) -> None:
        if self.kbd_pending is not None:
            cmd, self.kbd_pending = self.kbd_pending, None
            if cmd == KBD_SCANCODE_SET and value == 0:
                self._reply(KBD_ACK, self.scancode_set)
                return
            if cmd == KBD_SCANCODE_SET:
                self.scancode_set = value if value in (1, 2, 3) else self.scancode_set
            self._reply(KBD_ACK)
            return
        if value in KBD_TAKES_ARGUMENT:
            self.kbd_pending = value
            self._reply(KBD_ACK)
        elif value == KBD_ECHO:
            self._reply(KBD_ECHO)
        elif value == KBD_IDENTIFY:
            self._reply(KBD_ACK, *KBD_ID)
        elif value == KBD_RESET:
            self.scancode_set = 2
            self._reply(KBD_ACK, KBD_BAT_OK)
        elif value in (KBD_ENABLE, KBD_DISABLE, KBD_DEFAULTS) or 0xF7 <= value <= 0xFD:
            self._reply(KBD_ACK)
        else:
            self._reply(KBD_RESEND)

    # -- output buffer ------------------------------------------------------------------------------

    def _reply(self, *data: int) -> None:
        self.queue.extend(data)

    def _update_irq(self) -> None:
        self.irq.set(bool(self.queue) and bool(self.command_byte & CB_KBD_INT))
