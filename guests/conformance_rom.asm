; conformance_rom.asm - a 64 KiB BIOS-style ROM that starts at the reset vector and walks the CPU
; from reset through real mode into protected mode (rings, gates, paging) and back, writing a POST
; code to port 0x190 before each step, as test386.asm does (reference/emulation.md 5.1).
;
;   vmxlab run guests/conformance_rom.asm --format rom
;   (the assembled image also runs as a BIOS: qemu-system-i386 -bios IMAGE -debugcon stdio)
;
; A failing step executes HLT with interrupts off, so the run stops ("halted") and the summary's
; "last POST code" names the step.  POST 0xFF means every step passed; the ROM then prints
; "conformance ROM: all steps passed" on port 0xE9 and stops through the shutdown port 0x8900.
;
; Steps (SDM sections in the code):
;   01 reset state: CR0 = 60000010H (CD NW ET), EDX = the processor signature
;   02 real-mode segments (base = selector * 16), the stack, near and far CALL/RET
;   03 real-mode INT n through the IVT; IRET restores FLAGS
;   04 the A20 gate: with port 0x92 bit 1 clear, FFFF:0010 aliases 0000:0000
;   05 LGDT, LIDT and CR0.PE: a far jump loads a 32-bit CS
;   06 a segment limit: #GP(0) through the IDT, error code and saved EIP checked
;   07 a not-present segment: #NP(selector)
;   08 ring 3 through IRET, back through a DPL-3 gate with a stack switch from the TSS
;   09 a privileged instruction at CPL 3: #GP(0), the saved CS is the ring-3 selector
;   0A paging: identity map with one page missing, #PF with CR2 and the error code
;   0B back to real mode: PG and PE off, a real-mode far jump, the IVT works again
;   FF done

%define POST_PORT 0x190
ROM_LOW         equ 0xF0000             ; where the ROM also appears below 1 MiB (segment F000)
PM_BASE         equ ROM_LOW + 0x8000    ; linear address of the 32-bit code
STACK_REAL      equ 0x7000
STACK0_TOP      equ 0x9000
STACK3_TOP      equ 0xA000
PAGE_DIR        equ 0x10000
PAGE_TABLE      equ 0x11000
; RAM the ROM uses (the ROM itself may be read-only, as on a PC before shadowing)
expect_eip      equ 0x8000              ; the EIP a fault must report
resume          equ 0x8004              ; where the fault handler continues
got_vector      equ 0x8008
got_error       equ 0x800C
got_cs          equ 0x8010
IDT             equ 0x8100              ; gates 0 .. 0x30
TSS             equ 0x8400

%macro POST 1                           ; (clobbers AL and DX)
        mov al, %1
        mov dx, POST_PORT
        out dx, al
%endmacro

; ------------------------------------------------------------------ 16-bit code (segment F000)

        bits 16
        section real start=0 vstart=0

start:
        cli
        ; 01 -- SDM Vol.3A 10.1.1 Table 10-1: CR0 = 60000010H after power-up; EDX = signature
        POST 0x01
        mov ebx, edx
        mov eax, cr0
        cmp eax, 0x60000010
        jne fail
        test ebx, ebx
        jz fail
        ; 02 -- real-mode addressing (SDM Vol.3A 21.1.1): base = selector * 16
        POST 0x02
        xor ax, ax
        mov ss, ax
        mov sp, STACK_REAL
        mov ds, ax
        mov word [0x1230], 0xBEEF
        mov ax, 0x0120
        mov es, ax
        cmp word [es:0x0030], 0xBEEF    ; 0120:0030 is linear 0x1230
        jne fail
        call near_proc
        cmp cx, 0x1234
        jne fail
        call 0xF000:far_proc
        cmp cx, 0x5678
        jne fail
        ; 03 -- real-mode INT n through the IVT (SDM Vol.2 INT n REAL-ADDRESS-MODE)
        POST 0x03
        mov word [0x40 * 4], int40
        mov word [0x40 * 4 + 2], 0xF000
        xor dx, dx
        stc
        int 0x40
        jnc fail                        ; IRET restored CF from the pushed FLAGS
        cmp dx, 0x40
        jne fail
        ; 04 -- the A20 gate (port 0x92 bit 1): off, FFFF:0010 wraps to linear 0
        POST 0x04
        in al, 0x92
        and al, ~2
        out 0x92, al
        mov ax, 0xFFFF
        mov es, ax
        mov word [0], 0x1111
        mov word [es:0x10], 0x2222
        cmp word [0], 0x2222
        jne fail
        in al, 0x92
        or al, 2
        out 0x92, al
        mov word [es:0x10], 0x3333      ; now linear 0x100000, not 0
        cmp word [0], 0x2222
        jne fail
        ; 05 -- protected mode (SDM Vol.3A 9.9.1): LGDT, LIDT, CR0.PE, far jump
        POST 0x05
        o32 lgdt [cs:gdtr]
        o32 lidt [cs:idtr]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp dword 0x08:pm_entry

near_proc:
        mov cx, 0x1234
        ret
far_proc:
        mov cx, 0x5678
        retf
int40:  mov dx, 0x40
        iret

fail:   cli                             ; the last POST code names the failed step
        hlt
        jmp fail

real_again:                             ; 0B, continued: real mode again, CS = F000
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, STACK_REAL
        lidt [cs:ivt]
        mov word [0x41 * 4], int41
        mov word [0x41 * 4 + 2], 0xF000
        xor dx, dx
        int 0x41
        cmp dx, 0x41
        jne fail
        POST 0xFF
        mov si, msg_pass
.p:     mov al, [cs:si]
        test al, al
        jz .sd
        out 0xE9, al
        inc si
        jmp .p
.sd:    mov dx, 0x8900
        mov si, msg_shutdown
.s:     mov al, [cs:si]
        test al, al
        jz fail
        out dx, al
        inc si
        jmp .s
int41:  mov dx, 0x41
        iret

gdtr:   dw gdt_end - gdt - 1
        dd gdt
idtr:   dw 0x31 * 8 - 1
        dd IDT
ivt:    dw 0x3FF
        dd 0
msg_pass: db "conformance ROM: all steps passed", 10, 0
msg_shutdown: db "Shutdown", 0

; ------------------------------------------------------------------ 32-bit code (linear F8000H)

        bits 32
        section pm32 start=0x8000 vstart=PM_BASE
%define A(x) ((x) - $$ + PM_BASE)

pm_entry:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, STACK0_TOP
        mov edi, IDT                    ; the IDT and the TSS live in RAM: clear them
        xor eax, eax
.clr:   mov [edi], eax
        add edi, 4
        cmp edi, TSS + 0x68
        jb .clr
        ; IDT gates (#GP, #NP, #PF, and int 0x30 for ring 3), SDM Vol.3A 6.11
        mov edx, 0x8E00                 ; present, DPL 0, 32-bit interrupt gate
        mov eax, on_gp
        mov ecx, 13
        call set_gate
        mov eax, on_np
        mov ecx, 11
        call set_gate
        mov eax, on_pf
        mov ecx, 14
        call set_gate
        mov edx, 0xEE00                 ; DPL 3: ring 3 may use it
        mov eax, from_ring3
        mov ecx, 0x30
        call set_gate
        ; 06 -- a limit violation (SDM Vol.3A 5.3): DS limit FFFH, a dword at FFEH is #GP(0)
        POST 0x06
        mov dword [expect_eip], .t06
        mov dword [resume], .back06
        mov ax, 0x28
        mov ds, ax
.t06:   mov eax, [0xFFE]
        jmp fail32
.back06:
        cmp dword [got_vector], 13
        jne fail32
        cmp dword [got_error], 0
        jne fail32
        ; 07 -- a not-present data segment: #NP(selector) (SDM Vol.2 MOV)
        POST 0x07
        mov dword [expect_eip], .t07
        mov dword [resume], .back07
        mov ax, 0x30
.t07:   mov es, ax
        jmp fail32
.back07:
        cmp dword [got_vector], 11
        jne fail32
        cmp dword [got_error], 0x30
        jne fail32
        ; 08 -- ring 3 and back (SDM Vol.3A 6.12.1: the stack switch through the TSS)
        POST 0x08
        mov dword [TSS + 4], STACK0_TOP
        mov dword [TSS + 8], 0x10
        mov ax, 0x38
        ltr ax
        push dword 0x23                 ; SS (ring-3 data)
        push dword STACK3_TOP
        push dword 0x2
        push dword 0x1B                 ; CS (ring-3 code)
        push dword ring3
        iretd
ring3:  int 0x30                        ; -> from_ring3 at CPL 0, on STACK0
back_from_ring3:
        ; 09 -- a privileged instruction at CPL 3 is #GP(0) (SDM Vol.3A 5.9)
        POST 0x09
        mov dword [resume], .back09
        mov dword [expect_eip], .t09
        push dword 0x23
        push dword STACK3_TOP
        push dword 0x2
        push dword 0x1B
        push dword .t09
        iretd
.t09:   hlt
        jmp fail32
.back09:
        cmp dword [got_vector], 13
        jne fail32
        cmp dword [got_cs], 0x1B
        jne fail32
        ; 0A -- paging (SDM Vol.3A 4.3): identity map 0-4 MiB but page 0x300000, #PF with CR2
        POST 0x0A
        mov edi, PAGE_TABLE
        mov eax, 3
.pt:    mov [edi], eax
        add eax, 0x1000
        add edi, 4
        cmp edi, PAGE_TABLE + 4096
        jb .pt
        mov dword [PAGE_TABLE + 0x300 * 4], 0
        mov edi, PAGE_DIR
        xor eax, eax
.pd:    mov [edi], eax
        add edi, 4
        cmp edi, PAGE_DIR + 4096
        jb .pd
        mov dword [PAGE_DIR], PAGE_TABLE | 3
        mov eax, PAGE_DIR
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword [expect_eip], .t0a
        mov dword [resume], .back0a
.t0a:   mov [0x300010], eax
        jmp fail32
.back0a:
        cmp dword [got_vector], 14
        jne fail32
        cmp dword [got_error], 2        ; not present, write, supervisor (SDM Vol.3A 4.7)
        jne fail32
        mov eax, cr2
        cmp eax, 0x300010
        jne fail32
        ; 0B -- back to real mode (SDM Vol.3A 9.9.2): paging off, 16-bit segments, PE off
        POST 0x0B
        mov eax, cr0
        and eax, 0x7FFFFFFF
        mov cr0, eax
        mov ax, 0x48                    ; 16-bit data, limit FFFFH
        mov ds, ax
        mov es, ax
        mov ss, ax
        jmp 0x40:(A(.pm16) - ROM_LOW)   ; 16-bit code segment with base F0000H
        bits 16
.pm16:  mov eax, cr0
        and eax, ~1
        mov cr0, eax
        jmp 0xF000:real_again
        bits 32

fail32: cli
        hlt
        jmp fail32

; exception handlers: record vector, error code, CS; check the saved EIP is the faulting
; instruction (faults, SDM Vol.3A 6.5); continue in ring 0 at [resume]
on_gp:  push dword 13
        jmp fault
on_np:  push dword 11
        jmp fault
on_pf:  push dword 14
fault:  push eax                        ; [esp+4] vector, +8 error code, +12 EIP, +16 CS
        mov ax, 0x10
        mov ds, ax
        mov eax, [esp + 4]
        mov [got_vector], eax
        mov eax, [esp + 8]
        mov [got_error], eax
        mov eax, [esp + 16]
        mov [got_cs], eax
        mov eax, [esp + 12]
        cmp eax, [expect_eip]
        jne fail32
        mov eax, [resume]
        mov [esp + 12], eax
        mov dword [esp + 16], 0x08
        pop eax
        add esp, 8
        iretd

from_ring3:                             ; int 0x30 from ring 3: check the frame, stay in ring 0
        cmp dword [esp + 4], 0x1B       ; saved CS
        jne fail32
        cmp dword [esp + 16], 0x23      ; saved SS: the stack switched
        jne fail32
        cmp esp, STACK0_TOP - 20
        jne fail32
        mov esp, STACK0_TOP
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        jmp back_from_ring3

set_gate:                               ; gate ECX -> handler EAX, attributes EDX, selector 0x08
        mov [IDT + ecx * 8], ax
        mov word [IDT + ecx * 8 + 2], 0x08
        mov [IDT + ecx * 8 + 4], dx
        shr eax, 16
        mov [IDT + ecx * 8 + 6], ax
        ret

        align 8
gdt:    dq 0
        dq 0x00CF9B000000FFFF           ; 0x08 ring-0 code, flat, 32-bit
        dq 0x00CF93000000FFFF           ; 0x10 ring-0 data, flat
        dq 0x00CFFB000000FFFF           ; 0x18 ring-3 code
        dq 0x00CFF3000000FFFF           ; 0x20 ring-3 data
        dq 0x0040930000000FFF           ; 0x28 data, base 0, byte-granular limit FFFH
        dq 0x00CF13000000FFFF           ; 0x30 data, not present
        dq 0x0000890000000067 | (TSS << 16)   ; 0x38 32-bit TSS at 8400H
        dq 0x00009B0F0000FFFF           ; 0x40 16-bit code, base F0000H, limit FFFFH
        dq 0x000093000000FFFF           ; 0x48 16-bit data, base 0, limit FFFFH
gdt_end:

; ------------------------------------------------------------------ reset vector

        bits 16
        section reset start=0xFFF0 vstart=0xFFF0
        jmp 0xF000:start                ; SDM Vol.3A 10.1.4: the first instruction is at FFFFFFF0H
        times 16 - ($ - $$) db 0
