; pm_switch.asm - from real mode to 32-bit protected mode and back (Intel SDM Vol.3A 10.9.1
; "Switching to Protected Mode" and 10.9.2 "Switching Back to Real-Address Mode").
;
;   vmxlab run guests/pm_switch.asm
;
; Loaded as a flat binary at 0x7C00, entered in real mode at 0000:7C00.  It prints each stage
; over COM1 and over port 0xE9 (a shorter line), then shuts down:
;   1. real mode: set up the UART, print.
;   2. LGDT its own GDT, set CR0.PE, far jump to a 32-bit code segment: print, and prove the
;      32-bit flat segments by a store and load at 2 MiB (beyond any real-mode address).
;   3. far jump to a 16-bit code segment, load 64 KiB data segments, clear CR0.PE, far jump to
;      a real-mode segment: print again.
        bits 16
        org 0x7C00
%include "vmxlab.inc"

CODE32 equ gdt.code32 - gdt
DATA32 equ gdt.data32 - gdt
CODE16 equ gdt.code16 - gdt
DATA16 equ gdt.data16 - gdt
PROBE  equ 0x200000             ; a physical address above 1 MiB + 64 KiB

start:
        cli                     ; no IDT for protected mode: keep interrupts off throughout
        cld
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        call com1_init
        mov si, msg_real
        call puts16
        mov si, e9_real
        call e9_puts16

        ; --- SDM 10.9.1: load a GDT, set PE, far jump to flush the prefetched 16-bit state
        lgdt [gdt_desc]
        mov eax, cr0
        or eax, 1               ; CR0.PE
        mov cr0, eax
        jmp CODE32:pm32

        bits 32
pm32:
        mov ax, DATA32
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, 0x7000
        mov dword [PROBE], 0x600DF00D   ; only reachable with a 32-bit segment limit
        cmp dword [PROBE], 0x600DF00D
        jne .bad
        mov esi, msg_pm
        call puts32
        mov esi, e9_pm
        call e9_puts32
        ; --- SDM 10.9.2 step 3: continue in a 16-bit code segment with a 64 KiB limit
        jmp CODE16:pm16
.bad:
        mov esi, msg_bad
        call puts32
        EXIT_STATUS 1

        bits 16
pm16:
        ; step 4: 64 KiB, byte-granular, writable data segments in every segment register
        mov ax, DATA16
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        ; step 5: the real-mode interrupt vector table
        lidt [ivt_desc]
        ; step 6: clear PE; step 7: far jump to real-mode code
        mov eax, cr0
        and eax, ~1
        mov cr0, eax
        jmp 0:real_again
real_again:
        ; step 8: real-mode segment values
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov sp, 0x7000
        mov si, msg_back
        call puts16
        mov si, e9_back
        call e9_puts16
        SHUTDOWN

; ---------------------------------------------------------------- COM1 (16550A)
com1_init:                      ; 115200 baud 8N1, FIFOs on, DTR/RTS/OUT2
        mov dx, COM1 + 1
        xor al, al
        out dx, al              ; IER = 0
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al              ; LCR.DLAB = 1
        mov dx, COM1
        mov al, 1
        out dx, al              ; DLL = 1
        inc dx
        xor al, al
        out dx, al              ; DLM = 0
        mov dx, COM1 + 3
        mov al, 0x03
        out dx, al              ; LCR = 8N1
        dec dx
        mov al, 0xC7
        out dx, al              ; FCR: FIFOs on and cleared
        mov dx, COM1 + 4
        mov al, 0x0B
        out dx, al              ; MCR
        ret

; puts16: DS:SI -> COM1, waiting for LSR.THRE before each byte
puts16:
        lodsb
        test al, al
        jz .ret
        mov ah, al
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20
        jz .wait
        mov dx, COM1
        mov al, ah
        out dx, al
        jmp puts16
.ret:   ret

; e9_puts16: DS:SI -> the debug console
e9_puts16:
        lodsb
        test al, al
        jz .ret
        out 0xE9, al
        jmp e9_puts16
.ret:   ret

        bits 32
; e9_puts32: DS:ESI -> the debug console
e9_puts32:
        lodsb
        test al, al
        jz .ret
        out 0xE9, al
        jmp e9_puts32
.ret:   ret

; puts32: DS:ESI -> COM1 (the same loop with 32-bit addressing)
puts32:
        lodsb
        test al, al
        jz .ret
        mov ah, al
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20
        jz .wait
        mov dx, COM1
        mov al, ah
        out dx, al
        jmp puts32
.ret:   ret

        bits 16
msg_real: db "1. real mode: CR0.PE = 0, segment bases are selector * 16", 10, 0
msg_pm:   db "2. protected mode: 32-bit code at CS = 0x08, flat data at 0x10, wrote 2 MiB", 10, 0
msg_back: db "3. real mode again: CR0.PE cleared, far jump to 0000", 10, 0
msg_bad:  db "the store above 1 MiB did not read back", 10, 0
e9_real:  db "(0xE9) real mode", 10, 0
e9_pm:    db "(0xE9) protected mode", 10, 0
e9_back:  db "(0xE9) real mode again", 10, 0

        align 8
gdt:    dq 0
.code32: dq 0x00CF9A000000FFFF  ; base 0, limit 4 GiB, 32-bit, execute/read
.data32: dq 0x00CF92000000FFFF  ; base 0, limit 4 GiB, read/write
.code16: dq 0x00009A000000FFFF  ; base 0, limit 64 KiB, 16-bit, execute/read
.data16: dq 0x000092000000FFFF  ; base 0, limit 64 KiB, read/write
gdt_end:
gdt_desc: dw gdt_end - gdt - 1
          dd gdt
ivt_desc: dw 0x3FF
          dd 0
