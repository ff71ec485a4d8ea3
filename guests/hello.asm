; hello.asm - the smallest vmxlab guest: print over the debug console (port 0xE9)
; and COM1 in real mode, then stop through the Bochs shutdown port.
;
;   vmxlab run guests/hello.asm
;
; Loaded as a flat binary at 0x7C00 and entered in real mode at 0000:7C00.
        bits 16
        org 0x7C00
%include "vmxlab.inc"

start:
        cld
        xor ax, ax
        mov ds, ax
        mov si, message
.next:  lodsb
        test al, al
        jz .done
        out 0xE9, al            ; debug console
        mov dx, COM1
        out dx, al              ; UART transmit holding register
        jmp .next
.done:
        SHUTDOWN

message: db "Hello from a real-mode guest!", 10, 0
