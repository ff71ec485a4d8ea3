; hello.asm - the smallest vmxlab guest: greet over COM1 (a 16550A, as a PC's serial
; console) and over the debug console (port 0xE9), then stop through the Bochs shutdown port.
;
;   vmxlab run guests/hello.asm
;
; Loaded as a flat binary at 0x7C00 and entered in real mode at 0000:7C00.
; The UART is programmed as a BIOS or Linux would: 115200 baud 8N1 (divisor 1, LCR 0x03),
; FIFOs on, and every byte waits for LSR.THRE (the transmit holding register empty) before
; it is written to THR -- on real hardware a byte written while THRE = 0 is lost
; (PC16550D datasheet, 8.6 Line Status Register).
        bits 16
        org 0x7C00
%include "vmxlab.inc"

start:
        cld
        xor ax, ax
        mov ds, ax
        call com1_init
        mov si, com1_message
        call com1_puts
        mov si, e9_message
.e9:    lodsb
        test al, al
        jz .done
        out 0xE9, al            ; debug console: no status to wait for
        jmp .e9
.done:
        SHUTDOWN

; com1_init: 115200 baud, 8 data bits, no parity, 1 stop bit, FIFOs enabled and cleared
com1_init:
        mov dx, COM1 + 1        ; IER: no interrupts
        xor al, al
        out dx, al
        mov dx, COM1 + 3        ; LCR: DLAB = 1 to reach the divisor latch
        mov al, 0x80
        out dx, al
        mov dx, COM1 + 0        ; DLL = 1 (115200 baud)
        mov al, 1
        out dx, al
        mov dx, COM1 + 1        ; DLM = 0
        xor al, al
        out dx, al
        mov dx, COM1 + 3        ; LCR: 8N1, DLAB = 0
        mov al, 0x03
        out dx, al
        mov dx, COM1 + 2        ; FCR: enable and clear the FIFOs, RX trigger 14
        mov al, 0xC7
        out dx, al
        mov dx, COM1 + 4        ; MCR: DTR, RTS, OUT2
        mov al, 0x0B
        out dx, al
        ret

; com1_puts: print the NUL-terminated string at DS:SI
com1_puts:
        lodsb
        test al, al
        jz .ret
        mov ah, al
        mov dx, COM1 + 5        ; LSR
.wait:  in al, dx
        test al, 0x20           ; THRE
        jz .wait
        mov dx, COM1            ; THR
        mov al, ah
        out dx, al
        jmp com1_puts
.ret:   ret

com1_message: db "Hello from a real-mode guest over COM1!", 10, 0
e9_message:   db "Hello from a real-mode guest over port 0xE9!", 10, 0
