; alu_mem_ring3.asm - the same ALU-and-memory loop at ring 3 with 32-bit paging on.
; The issue-7 speed target (>= 25 M instr/s).  Ring 0 builds a GDT (ring-0/ring-3 code and
; data, a TSS), identity-maps the first 8 MiB with 4 KiB user pages, turns paging on, and IRETs
; to ring 3 with IOPL 3 so the loop can end with `out 0xF4` (isa-debug-exit).
        bits 32
        org 0x100000
%ifndef ITER
%define ITER 2000000
%endif
PD      equ 0x300000
PT      equ 0x301000            ; two page tables: 8 MiB
start:
        lgdt [gdt_desc]
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, 0x90000
        ; TSS: SS0:ESP0 for interrupts from ring 3
        mov dword [tss + 4], 0x90000
        mov word [tss + 8], 0x10
        mov ax, 0x28
        ltr ax
        ; page directory: two user/writable tables
        mov edi, PD
        mov eax, PT | 7
        mov [edi], eax
        add eax, 0x1000
        mov [edi + 4], eax
        ; page tables: identity map 8 MiB, user/writable/present
        mov edi, PT
        mov eax, 7
        mov ecx, 2048
.fill:  mov [edi], eax
        add eax, 0x1000
        add edi, 4
        dec ecx
        jnz .fill
        mov eax, PD
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        ; iret to ring 3: SS, ESP, EFLAGS (IOPL 3), CS, EIP
        push dword 0x23
        push dword 0x80000
        push dword 0x3002
        push dword 0x1B
        push dword user
        iretd
user:
        mov ax, 0x23
        mov ds, ax
        mov es, ax
        mov ecx, ITER
        mov esi, data_in
        mov edi, data_out
        mov ebx, 7
.loop:  mov eax, [esi]
        add eax, ebx
        mov [edi], eax
        add edx, 3
        dec ecx
        jnz .loop
        mov al, 0
        out 0xF4, al
        jmp $

        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF   ; 0x08 ring-0 code
        dq 0x00CF92000000FFFF   ; 0x10 ring-0 data
        dq 0x00CFFA000000FFFF   ; 0x18 ring-3 code
        dq 0x00CFF2000000FFFF   ; 0x20 ring-3 data
tss_desc:
        dw 103                  ; 0x28 32-bit TSS, limit 103
        dw tss - $$ + 0x0000    ; base 15:0 (patched below by the assembler expression)
        db 0x10                 ; base 23:16 (image at 0x100000: tss is within the first 64 KiB)
        db 0x89
        db 0
        db 0
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt
        align 16
tss:    times 104 db 0
        align 4096
data_in:  dd 0x12345678
        align 4096
data_out: dd 0
