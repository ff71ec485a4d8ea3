"""End-to-end runs of the bundled guests and of small guests that program the PC devices:
COM1 output, the real -> protected -> real mode switch, PIT timer interrupts through the PIC into a
real-mode IVT, and interrupt-driven COM1 input."""

from __future__ import annotations

from vmxlab.devices.pit8254 import ticks_at
from vmxlab.guestkit import run_guest, run_snippet, write_snippet
from vmxlab.machine.machine import StopReason
from vmxlab.runner import RunOptions, build_machine, load_image, make_backend, resolve_image


def channels(r) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in r.machine.console.by_channel.items()}


def test_hello(engine: str) -> None:
    r = run_guest("hello", engine=engine)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert channels(r) == {"com1": b"Hello from a real-mode guest over COM1!\n",
                           "e9": b"Hello from a real-mode guest over port 0xE9!\n"}
    uart = r.machine.devices["com1"]
    assert (uart.lcr, uart.dll, uart.dlm, uart.fifo_enabled) == (0x03, 1, 0, True)


def test_pm_switch(engine: str) -> None:
    r = run_guest("pm_switch", engine=engine)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, (r.stop, r.console)
    out = channels(r)
    assert out["com1"].decode().splitlines() == [
        "1. real mode: CR0.PE = 0, segment bases are selector * 16",
        "2. protected mode: 32-bit code at CS = 0x08, flat data at 0x10, wrote 2 MiB",
        "3. real mode again: CR0.PE cleared, far jump to 0000",
    ]
    assert out["e9"] == b"(0xE9) real mode\n(0xE9) protected mode\n(0xE9) real mode again\n"
    st = r.backend.cpu.state_dict()
    assert st["cr0"] & 1 == 0
    assert st["cs"]["selector"] == 0 and st["cs"]["base"] == 0
    assert r.machine.memory.read(0x200000, 4) == 0x600DF00D  # the store made in protected mode


# A real-mode guest: IVT entry for vector 0x20, PIC remapped to 0x20/0x28 with only IRQ 0 unmasked,
# PIT counter 0 in mode 2 at 1193 counts (1.000 ms); it waits for TICKS timer interrupts.
TIMER_GUEST = """
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov word [0x20 * 4], timer_isr
        mov word [0x20 * 4 + 2], 0
        mov al, 0x11            ; ICW1: edge, cascade, ICW4 needed
        out 0x20, al
        out 0xA0, al
        mov al, 0x20            ; ICW2: vector bases
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 0x04            ; ICW3: slave on IR2 / slave id 2
        out 0x21, al
        mov al, 0x02
        out 0xA1, al
        mov al, 0x01            ; ICW4: 8086 mode
        out 0x21, al
        out 0xA1, al
        mov al, 0xFE            ; OCW1: only IRQ 0
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al
        mov al, 0x34            ; PIT: counter 0, LSB+MSB, mode 2
        out 0x43, al
        mov al, 1193 & 0xFF
        out 0x40, al
        mov al, 1193 >> 8
        out 0x40, al
        sti
spin:
%ifdef USE_HLT
        hlt
%endif
        cmp word [ticks], TICKS
        jb spin
        cli
        mov ax, [ticks]
        mov bl, 10
        div bl
        add ax, 0x3030
        out 0xE9, al            ; tens
        mov al, ah
        out 0xE9, al            ; units
        SHUTDOWN

timer_isr:
        push ax
        inc word [ticks]
%ifndef NO_EOI
        mov al, 0x20            ; OCW2: non-specific EOI
        out 0x20, al
%endif
        pop ax
        iret

ticks   equ 0x600
"""
TICKS_ADDR = 0x600


def run_timer(engine: str, **defines: int) -> object:
    return run_snippet(TIMER_GUEST, "real", engine=engine, max_instructions=2_000_000, epilogue=False,
                       defines={"TICKS": 10, **defines})


def test_pit_interrupts_through_pic_into_real_mode_ivt(engine: str) -> None:
    r = run_timer(engine)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert r.console == b"10"
    # ten 1193-count periods of virtual time have passed (the clock counts instructions)
    assert ticks_at(r.machine.clock.now_ns()) >= 10 * 1193
    assert r.machine.devices["pic"].state()["isr"] == 0  # every interrupt was EOId


def test_hlt_wakes_on_timer_interrupt(engine: str) -> None:
    r = run_timer(engine, USE_HLT=1)
    assert r.stop.reason == StopReason.SHUTDOWN_REQUEST, r.stop
    assert r.console == b"10"
    # halted time is skipped, not executed: a few hundred instructions instead of the ~10^6 that
    # 10 ms of busy waiting retire at the virtual clock's 10 ns per instruction
    assert r.instructions < 1000
    assert r.backend.cpu.idle_ticks > 0


def test_timer_runs_are_reproducible() -> None:
    a, b = run_timer("fast"), run_timer("fast")
    assert a.instructions == b.instructions
    assert a.backend.cpu.state_dict() == b.backend.cpu.state_dict()


def test_missing_eoi_blocks_further_timer_interrupts(engine: str) -> None:
    r = run_timer(engine, NO_EOI=1)
    assert r.stop.reason == StopReason.BUDGET
    assert r.machine.memory.read(TICKS_ADDR, 2) == 1  # the first tick only
    pic = r.machine.devices["pic"].state()
    assert pic["isr"] & 1  # IRQ 0 still in service
    assert pic["irr"] & 1  # the next tick waits in IRR


# A real-mode guest that echoes COM1 input from its IRQ 4 handler to COM1 and port 0xE9 until it
# receives a newline; it waits in HLT.
ECHO_GUEST = """
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov word [0x24 * 4], uart_isr
        mov word [0x24 * 4 + 2], 0
        mov al, 0x11
        out 0x20, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x04
        out 0x21, al
        mov al, 0x01
        out 0x21, al
        mov al, 0xEF            ; only IRQ 4
        out 0x21, al
        mov dx, COM1 + 2
        mov al, 0x01            ; FIFOs on, trigger level 1
        out dx, al
        mov dx, COM1 + 4
        mov al, 0x0B            ; DTR, RTS, OUT2 (the PC's IRQ enable)
        out dx, al
        mov dx, COM1 + 1
        mov al, 0x01            ; IER: received data available
        out dx, al
        sti
spin:   hlt
        cmp byte [done], 1
        jne spin
        SHUTDOWN

uart_isr:
        push ax
        push dx
        mov dx, COM1 + 2
        in al, dx               ; IIR
.more:  mov dx, COM1 + 5
        in al, dx               ; LSR
        test al, 0x01
        jz .eoi
        mov dx, COM1
        in al, dx               ; RBR
        out 0xE9, al
        out dx, al              ; echo to THR
        cmp al, 10
        jne .more
        mov byte [done], 1
        jmp .more
.eoi:   mov al, 0x20
        out 0x20, al
        pop dx
        pop ax
        iret

done    equ 0x602
"""


def test_com1_input_interrupts_wake_hlt(engine: str) -> None:
    path = write_snippet(ECHO_GUEST, "real", epilogue=False)
    opts = RunOptions(image=path, format="flat", load=0x7C00, entry="real:0:0x7c00", echo=False,
                      engine=engine)
    machine = build_machine(opts)
    backend = make_backend(machine, opts)
    backend.apply_entry(load_image(machine, opts, resolve_image(path)))
    stop = backend.run(200_000)
    assert stop.reason == StopReason.HALTED  # waiting in HLT; nothing can interrupt yet
    machine.devices["com1"].feed(b"ping\n")
    stop = backend.run(200_000)
    assert stop.reason == StopReason.SHUTDOWN_REQUEST, stop
    assert bytes(machine.console.by_channel["e9"]) == b"ping\n"
    assert bytes(machine.console.by_channel["com1"]) == b"ping\n"
