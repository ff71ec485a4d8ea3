; kernel_mix.asm - the issue-7 "kernel-mix" benchmark: two ring-3 tasks in separate address
; spaces, preempted by the PIT (task switch = new CR3 + new ESP0), making system calls through
; an `int 0x80` gate and taking demand-paging page faults that the kernel services.
;
;   vmxlab run bench/kernel_mix.asm --load 0x100000 --entry pm32:0x100000 -D ITER=20000
;
; Each task runs ITER iterations of: ALU and memory work on its own user pages (at the same
; linear address 0x400000 in both tasks, different physical frames), a system call every
; 16 iterations, and a first touch of a fresh page every 64 iterations (#PF -> the kernel maps
; a zeroed frame).  When both tasks are done the kernel prints the checksums and exits through
; isa-debug-exit (status 1).
        bits 32
        org 0x100000
%include "vmxlab.inc"
%ifndef ITER
%define ITER 20000
%endif

SEL_CODE0 equ 0x08
SEL_DATA0 equ 0x10
SEL_CODE3 equ 0x18 | 3
SEL_DATA3 equ 0x20 | 3
SEL_TSS   equ 0x28
PD_A      equ 0x300000          ; task A page directory, B's follows
PT_A      equ 0x302000          ; task A page table for 4-8 MiB, B's follows
FRAMES    equ 0x800000          ; the kernel hands out user frames from here
USER      equ 0x400000          ; user code is copied here; data pages follow
UDATA     equ USER + 0x10000
KSTACK_A  equ 0x90000
KSTACK_B  equ 0x88000

start:
        lgdt [gdt_desc]
        jmp SEL_CODE0:.cs
.cs:    mov ax, SEL_DATA0
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, 0x7000
        ; IDT: #PF, timer (0x20), syscall (0x80, DPL 3)
        mov eax, pf_isr
        mov ecx, 14
        mov edx, 0x8E00
        call set_gate
        mov eax, timer_isr
        mov ecx, 0x20
        call set_gate
        mov eax, syscall_isr
        mov ecx, 0x80
        mov edx, 0xEE00
        call set_gate
        lidt [idt_desc]
        mov dword [tss + 4], KSTACK_A
        mov word [tss + 8], SEL_DATA0
        mov word [tss + 102], 104
        mov ax, SEL_TSS
        ltr ax
        ; two address spaces: kernel 0-4 MiB identity (supervisor, 4 MiB page) in both; the user
        ; table for 4-8 MiB maps the user code page (shared) and nothing else yet
        mov eax, cr4
        or eax, 0x10                    ; CR4.PSE for the kernel's 4 MiB page
        mov cr4, eax
        mov ebx, PD_A
        call make_space
        mov ebx, PD_A + 0x1000
        call make_space
        ; user code: copied to 0x400000 (a frame mapped in both tables, user read/execute)
        mov esi, user_code
        mov edi, FRAMES
        mov ecx, user_code_end - user_code
        rep movsb
        mov dword [PT_A], FRAMES | 5            ; user, present, read-only
        mov dword [PT_A + 0x1000], FRAMES | 5
        mov dword [next_frame], FRAMES + 0x1000
        ; task B's kernel stack: an IRET frame to ring 3 plus the registers the switch pops
        mov esp, KSTACK_B
        push dword SEL_DATA3
        push dword UDATA + 0x8000               ; user stack (demand-paged)
        push dword 0x202                        ; IF = 1
        push dword SEL_CODE3
        push dword USER
        pushad
        mov [task_esp + 4], esp
        ; start task A: paging on with A's directory, timer on, IRET to ring 3
        mov eax, PD_A
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        call pit_start
        mov esp, KSTACK_A
        push dword SEL_DATA3
        push dword UDATA + 0x8000
        push dword 0x202
        push dword SEL_CODE3
        push dword USER
        iretd

make_space:                                     ; EBX = page directory
        mov dword [ebx], 0x000083               ; 0-4 MiB: present, writable, 4 MiB page, supervisor
        mov dword [ebx + 8], FRAMES | 0x83      ; 8-12 MiB: the frame pool, kernel only
        lea eax, [ebx + 0x2000]                 ; its 4-8 MiB page table (PT_A / PT_A+0x1000)
        or eax, 7
        mov [ebx + 4], eax
        ret

; ---------------------------------------------------------------- interrupts and exceptions

timer_isr:                                      ; preemption: switch to the other task
        pushad
        mov al, 0x20                            ; EOI (8259A OCW2)
        out 0x20, al
        mov eax, [current]
        mov [task_esp + eax * 4], esp
        xor eax, 1
        mov [current], eax
        mov esp, [task_esp + eax * 4]
        mov ebx, [kstack_top + eax * 4]
        mov [tss + 4], ebx                      ; ESP0 for the next entry from ring 3
        mov ebx, eax
        shl ebx, 12
        add ebx, PD_A
        mov cr3, ebx                            ; the other address space
        inc dword [switches]
        popad
        iretd

pf_isr:                                         ; demand paging: map a fresh zeroed frame
        pushad
        mov eax, cr2
        cmp eax, USER + 0x1000
        jb .bad
        cmp eax, 0x800000
        jae .bad
        shr eax, 12
        and eax, 0x3FF
        mov ebx, [current]
        shl ebx, 12
        add ebx, PT_A
        mov ecx, [next_frame]
        add dword [next_frame], 0x1000
        mov edi, ecx
        push eax
        push ecx
        xor eax, eax
        mov ecx, 1024
        rep stosd                               ; zero the frame (paging is on: kernel identity map)
        pop ecx
        pop eax
        or ecx, 7
        mov [ebx + eax * 4], ecx
        inc dword [faults]
        popad
        add esp, 4                              ; the error code
        iretd
.bad:   mov al, 'F'
        out 0xE9, al
        EXIT_STATUS 2

syscall_isr:                                    ; EAX = 0: count; 1: task done (EBX = checksum)
        cmp eax, 1
        je .done
        inc dword [syscalls]
        iretd
.done:  mov eax, [current]
        mov [checksum + eax * 4], ebx
        inc dword [finished]
        cmp dword [finished], 2
        je all_done
        sti
.idle:  hlt                                     ; wait for the timer to run the other task
        jmp .idle

all_done:
        cli
        mov esi, msg
        call puts
        mov eax, [checksum]
        call hex32
        mov al, ' '
        out 0xE9, al
        mov eax, [checksum + 4]
        call hex32
        mov al, 10
        out 0xE9, al
        EXIT_STATUS 0

set_gate:                                       ; ECX vector, EAX handler, DX type word
        mov [idt + ecx * 8], ax
        mov word [idt + ecx * 8 + 2], SEL_CODE0
        mov [idt + ecx * 8 + 4], dx
        shr eax, 16
        mov [idt + ecx * 8 + 6], ax
        ret

pit_start:                                      ; 8259A at 0x20, only IRQ 0; PIT 1 kHz, mode 2
        mov al, 0x11
        out 0x20, al
        mov al, 0x20
        out 0x21, al
        mov al, 4
        out 0x21, al
        mov al, 1
        out 0x21, al
        mov al, 0xFE
        out 0x21, al
        mov al, 0x34
        out 0x43, al
        mov al, 0xA9                            ; 1193 = 1 kHz
        out 0x40, al
        mov al, 0x04
        out 0x40, al
        ret

puts:   lodsb
        test al, al
        jz .d
        out 0xE9, al
        jmp puts
.d:     ret
hex32:  mov ecx, 8
.l:     rol eax, 4
        push eax
        and al, 0xF
        add al, '0'
        cmp al, '9'
        jbe .o
        add al, 7
.o:     out 0xE9, al
        pop eax
        loop .l
        ret

; ---------------------------------------------------------------- the user program (copied to 0x400000)
user_code:
        mov ax, SEL_DATA3
        mov ds, ax
        mov es, ax
        mov ebp, ITER
        mov esi, UDATA                          ; data pages are demand-faulted in
        xor ebx, ebx                            ; checksum
        xor edi, edi
.loop:  mov eax, [esi + edi * 4]
        add eax, ebp
        xor ebx, eax
        rol ebx, 1
        mov [esi + edi * 4], eax
        inc edi
        and edi, 1023                           ; stay within one page ...
        test ebp, 15
        jnz .nosys
        xor eax, eax
        int 0x80                                ; ... a system call every 16 iterations
.nosys: test ebp, 63
        jnz .next
        add esi, 0x1000                         ; a fresh page every 64 iterations: #PF
        cmp esi, UDATA + 0x100000
        jb .next
        mov esi, UDATA
.next:  dec ebp
        jnz .loop
        mov eax, 1
        int 0x80                                ; done: report the checksum
        jmp $
user_code_end:

msg:        db "checksums ", 0
            align 4
current:    dd 0
task_esp:   dd 0, 0
kstack_top: dd KSTACK_A, KSTACK_B
next_frame: dd 0
switches:   dd 0
faults:     dd 0
syscalls:   dd 0
finished:   dd 0
checksum:   dd 0, 0

            align 8
gdt:        dq 0
            dq 0x00CF9A000000FFFF
            dq 0x00CF92000000FFFF
            dq 0x00CFFA000000FFFF
            dq 0x00CFF2000000FFFF
            dw 103
            dw (tss - $$) & 0xFFFF
            db 0x10 + ((tss - $$) >> 16)
            db 0x89, 0, 0
gdt_end:
gdt_desc:   dw gdt_end - gdt - 1
            dd gdt
idt_desc:   dw 256 * 8 - 1
            dd idt
            align 16
tss:        times 104 db 0
            align 8
idt:        times 256 * 8 db 0
