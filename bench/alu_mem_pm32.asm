; alu_mem_pm32.asm - ALU-and-memory loop in 32-bit flat protected mode, paging off, ring 0.
; The issue-2 speed target: >= 5 M guest instructions/s on CPython 3.11.
; Entered with --format flat --load 0x100000 --entry pm32:0x100000; ITER sets the loop count.
        bits 32
        org 0x100000
%ifndef ITER
%define ITER 2000000
%endif
        mov ecx, ITER
        mov esi, data_in
        mov edi, data_out
        mov ebx, 7
loop_:  mov eax, [esi]          ; load
        add eax, ebx            ; ALU
        mov [edi], eax          ; store
        add edx, 3
        dec ecx
        jnz loop_
        mov al, 0
        out 0xF4, al            ; isa-debug-exit: status 1
        hlt
        align 4096
data_in:  dd 0x12345678
        align 4096
data_out: dd 0
