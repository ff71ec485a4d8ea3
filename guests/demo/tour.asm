; tour.asm - the experiments of `vmxlab demo`, one per build (nasm -D EXPERIMENT=n).
;
; A small protected-mode kernel: its own GDT (ring-0 and ring-3 code/data, a TSS), an IDT
; whose exception handlers report the vector, error code and saved EIP, and an `int 0x80`
; system-call gate callable from ring 3 (DPL 3).  The experiment runs at ring 0 or, after an
; IRET, at ring 3 with IOPL 0.  Results go to the debug console (port 0xE9) as lines
;
;   RESULT <name> key=value ...        what the experiment observed
;   EXC vv err=eeeeeeee eip=eeeeeeee cpl=c   an exception the kernel caught (then shutdown)
;
; The same image runs on bare metal (the software CPU without VMX) and as a VMX guest; the
; demo compares what it prints and counts the VM exits.
;
;   vmxlab run guests/demo/tour.asm -D EXPERIMENT=1 --load 0x100000 --entry pm32:0x100000
        bits 32
        org 0x100000
%include "vmxlab.inc"

%ifndef EXPERIMENT
%define EXPERIMENT 1
%endif
%ifndef SYSCALLS
%define SYSCALLS 1000                       ; how many system calls experiment 7 makes
%endif

%define EXP_SGDT_RING3     1    ; SGDT at ring 3: legal, returns the GDTR
%define EXP_BACKDOOR_RING0 2    ; IN from the VMware backdoor port at ring 0
%define EXP_IN_RING3       3    ; IN at ring 3 with IOPL 0: #GP(0) from the guest's own rings
%define EXP_CLI_RING3      4    ; CLI at ring 3: #GP(0)
%define EXP_CPUID          5    ; CPUID leaf 0x40000000 (hypervisor vendor) and leaf 1 ECX
%define EXP_HLT            6    ; HLT at ring 0 with a PIT interrupt to wake it
%define EXP_SYSCALLS       7    ; 1000 system calls ring 3 -> ring 0 -> ring 3
%define EXP_MMIO           8    ; a load from a guest-physical address with no RAM
%define EXP_WORKLOAD       9    ; a mixed workload for the policy comparison
%define EXP_SIDT_RING3    10    ; SIDT at ring 3

SEL_CODE0   equ 0x08
SEL_DATA0   equ 0x10
SEL_CODE3   equ 0x18 | 3
SEL_DATA3   equ 0x20 | 3
SEL_TSS     equ 0x28
KSTACK      equ 0x90000
USTACK      equ 0x80000
MMIO_ADDR   equ 0xFED00000          ; nothing is there: all ones on a PC bus

start:
        lgdt [gdt_desc]
        jmp SEL_CODE0:.reload
.reload:
        mov ax, SEL_DATA0
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, KSTACK
        call build_idt
        lidt [idt_desc]
        mov dword [tss + 4], KSTACK         ; SS0:ESP0 for traps from ring 3 (SDM Vol.3A 7.2.1)
        mov word [tss + 8], SEL_DATA0
        mov word [tss + 102], 104           ; I/O map base beyond the limit: no bitmap, IOPL rules
        mov ax, SEL_TSS
        ltr ax
        jmp experiment

; ---------------------------------------------------------------- the experiments

experiment:
%if EXPERIMENT == EXP_SGDT_RING3 || EXPERIMENT == EXP_SIDT_RING3
        call to_ring3
%if EXPERIMENT == EXP_SGDT_RING3
        sgdt [user_buf]                     ; not privileged: legal at ring 3 (SDM Vol.2 SGDT)
        mov esi, msg_sgdt
        mov ecx, gdt
%else
        sidt [user_buf]
        mov esi, msg_sidt
        mov ecx, idt
%endif
        mov edx, [user_buf + 2]             ; a = the base the instruction returned
        movzx ebx, word [user_buf]          ; b = the limit
        mov eax, 1                          ; c = the table this kernel loaded
        int 0x80
        jmp user_exit
%endif

%if EXPERIMENT == EXP_BACKDOOR_RING0
        mov eax, 0x564D5868                 ; 'VMXh'
        xor ebx, ebx
        mov ecx, 10                         ; "get version"
        mov dx, 0x5658                      ; 'VX'
        in eax, dx                          ; legal at ring 0 -- but the port is the VMM's
        mov edx, ebx                        ; a = EBX ('VMXh' if a VMM answered)
        mov ebx, eax                        ; b = EAX (the version, or all ones)
        xor ecx, ecx
        mov esi, msg_backdoor
        call kprint
        jmp kernel_exit
%endif

%if EXPERIMENT == EXP_IN_RING3
        call to_ring3
        in al, 0x71                         ; CPL 3 > IOPL 0, no I/O bitmap: #GP(0)
        mov esi, msg_nofault
        mov eax, 1
        int 0x80
        jmp user_exit
%endif

%if EXPERIMENT == EXP_CLI_RING3
        call to_ring3
        cli                                 ; CPL 3 > IOPL 0: #GP(0)
        mov esi, msg_nofault
        mov eax, 1
        int 0x80
        jmp user_exit
%endif

%if EXPERIMENT == EXP_CPUID
        mov eax, 0x40000000                 ; hypervisor vendor leaf (KVM, Hyper-V convention)
        cpuid
        mov [vendor], ebx
        mov [vendor + 4], ecx
        mov [vendor + 8], edx
        mov eax, 1
        cpuid
        mov edx, ecx                        ; a = CPUID.1:ECX (bit 31: hypervisor present)
        mov ebx, [vendor]                   ; b, c = the first 8 vendor characters
        mov ecx, [vendor + 4]
        mov esi, msg_cpuid
        call kprint
        jmp kernel_exit
%endif

%if EXPERIMENT == EXP_HLT
        call pit_start                      ; IRQ 0 through the 8259 at vector 0x20
        mov dword [ticks], 0
        mov dword [halts], 0
        sti
.again: inc dword [halts]
        hlt                                 ; wait for the timer
        cmp dword [ticks], 3
        jb .again
        cli
        mov edx, [ticks]
        mov ebx, [halts]
        xor ecx, ecx
        mov esi, msg_hlt
        call kprint
        jmp kernel_exit
%endif

%if EXPERIMENT == EXP_SYSCALLS
        call to_ring3
        mov edi, SYSCALLS
        test edi, edi
        jz .done
.loop:  mov eax, 0                          ; syscall 0: count (the kernel does no I/O)
        int 0x80
        dec edi
        jnz .loop
.done:
        mov edx, [syscalls]
        xor ebx, ebx
        xor ecx, ecx
        mov esi, msg_syscalls
        mov eax, 1
        int 0x80
        jmp user_exit
%endif

%if EXPERIMENT == EXP_MMIO
        mov edx, [MMIO_ADDR]                ; no RAM, no device: reads as all ones
        xor ebx, ebx
        xor ecx, ecx
        mov esi, msg_mmio
        call kprint
        jmp kernel_exit
%endif

%if EXPERIMENT == EXP_WORKLOAD
        ; the same work under every policy: syscalls from ring 3 and kernel work that touches
        ; CPUID, a port, RDTSC, CR3 and SGDT -- each policy decides which of them exit
        call to_ring3
        mov edi, 50
.work:  mov eax, 0
        int 0x80                            ; ring 3 -> 0 -> 3: never exits
        mov eax, 2
        int 0x80                            ; kernel work
        dec edi
        jnz .work
        mov edx, [syscalls]
        xor ebx, ebx
        xor ecx, ecx
        mov esi, msg_workload
        mov eax, 1
        int 0x80
        jmp user_exit
%endif

; ---------------------------------------------------------------- rings

; to_ring3: IRET to ring 3 (IOPL 0), continuing at the caller's return address (in EBP)
to_ring3:
        pop ebp                             ; where to continue, at ring 3
        push dword SEL_DATA3                ; SS
        push dword USTACK                   ; ESP
        push dword 0x002                    ; EFLAGS: IF = 0, IOPL = 0
        push dword SEL_CODE3                ; CS
        push dword ring3_entry              ; EIP
        iretd                               ; SDM Vol.2 IRET: return to an outer privilege level
ring3_entry:                                ; IRET nulled DS/ES (DPL 0 < CPL 3): load ring-3 data
        mov ax, SEL_DATA3
        mov ds, ax
        mov es, ax
        jmp ebp

user_exit:
        mov eax, 3
        int 0x80                            ; syscall 3: shut down

kernel_exit:
        SHUTDOWN

; ---------------------------------------------------------------- system calls (int 0x80, DPL 3)
; EAX = 0: count a call; 1: print ESI with a=EDX b=EBX c=ECX; 2: kernel work; 3: shut down
syscall:
        push ds                             ; the caller's data segments (ring 3's, or ours)
        push es
        push eax
        mov ax, SEL_DATA0                   ; a trap gate does not load DS/ES: the kernel does
        mov ds, ax
        mov es, ax
        pop eax
        call syscall_body
        pop es
        pop ds
        iretd
syscall_body:
        cmp eax, 0
        je .count
        cmp eax, 1
        je .print
        cmp eax, 2
        je .work
        jmp kernel_exit
.print: jmp kprint
.count: inc dword [syscalls]
        ret
.work:  pushad
        inc dword [syscalls]
        mov eax, 1
        cpuid
        in al, 0x61
        rdtsc
        mov eax, cr3
        mov cr3, eax
        sgdt [kbuf]
        popad
        ret

; ---------------------------------------------------------------- exceptions

; Each vector's stub pushes a dummy error code if the CPU did not, then its vector number.
%macro EXC_NOERR 1
exc_%1: push dword -1
        push dword %1
        jmp exc_common
%endmacro
%macro EXC_ERR 1
exc_%1: push dword %1
        jmp exc_common
%endmacro
EXC_NOERR 0
EXC_NOERR 1
EXC_NOERR 2
EXC_NOERR 3
EXC_NOERR 4
EXC_NOERR 5
EXC_NOERR 6
EXC_NOERR 7
EXC_ERR 8
EXC_NOERR 9
EXC_ERR 10
EXC_ERR 11
EXC_ERR 12
EXC_ERR 13
EXC_ERR 14
EXC_NOERR 15
EXC_NOERR 16
EXC_ERR 17

exc_common:                                 ; [esp] vector, +4 error, +8 EIP, +12 CS
        mov ax, SEL_DATA0
        mov ds, ax
        mov es, ax
        mov esi, msg_exc
        call puts
        mov eax, [esp]
        call hex8
        mov esi, msg_err
        call puts
        mov eax, [esp + 4]
        call hex32
        mov esi, msg_eip
        call puts
        mov eax, [esp + 8]
        call hex32
        mov esi, msg_cpl
        call puts
        mov eax, [esp + 12]
        and eax, 3
        add al, '0'
        out 0xE9, al
        mov al, 10
        out 0xE9, al
        jmp kernel_exit

timer_isr:
        push eax
        inc dword [ss:ticks]                ; SS is the kernel's here; DS may be anything
        mov al, 0x20                        ; non-specific EOI (8259A OCW2)
        out 0x20, al
        pop eax
        iretd

build_idt:                                  ; 18 exception gates, the timer, the syscall gate
        xor ecx, ecx
.exc:   mov eax, [exc_table + ecx * 4]
        mov edx, 0x8E00                     ; interrupt gate, DPL 0
        call set_gate
        inc ecx
        cmp ecx, 18
        jb .exc
        mov ecx, 0x20
        mov eax, timer_isr
        mov edx, 0x8E00
        call set_gate
        mov ecx, 0x80
        mov eax, syscall
        mov edx, 0xEE00                     ; interrupt gate, DPL 3: callable from ring 3
        call set_gate
        ret

set_gate:                                   ; ECX = vector, EAX = handler, EDX = type/DPL/P word
        mov [idt + ecx * 8], ax
        mov word [idt + ecx * 8 + 2], SEL_CODE0
        mov [idt + ecx * 8 + 4], dx
        shr eax, 16
        mov [idt + ecx * 8 + 6], ax
        ret

pit_start:                                  ; 8259A: vectors 0x20-0x2F, only IRQ 0; 8254 mode 2
        mov al, 0x11
        out 0x20, al
        out 0xA0, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 4
        out 0x21, al
        mov al, 2
        out 0xA1, al
        mov al, 1
        out 0x21, al
        out 0xA1, al
        mov al, 0xFE
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al
        mov al, 0x34                        ; counter 0, LSB then MSB, mode 2
        out 0x43, al
        mov al, 0x9C                        ; 11932: 100 Hz
        out 0x40, al
        mov al, 0x2E
        out 0x40, al
        ret

; ---------------------------------------------------------------- printing (ring 0)

kprint:                                     ; "RESULT <ESI> a=EDX b=EBX c=ECX" and a newline
        push esi
        mov esi, msg_result
        call puts
        pop esi
        call puts
        mov esi, msg_a
        call puts
        mov eax, edx
        call hex32
        mov esi, msg_b
        call puts
        mov eax, ebx
        call hex32
        mov esi, msg_c
        call puts
        mov eax, ecx
        call hex32
        mov al, 10
        out 0xE9, al
        ret

puts:   lodsb
        test al, al
        jz .done
        out 0xE9, al
        jmp puts
.done:  ret

hex32:  push ecx
        mov ecx, 8
        jmp hexn
hex8:   push ecx
        mov ecx, 2
        rol eax, 24
hexn:   rol eax, 4
        push eax
        and al, 0xF
        add al, '0'
        cmp al, '9'
        jbe .d
        add al, 'a' - '0' - 10
.d:     out 0xE9, al
        pop eax
        loop hexn
        pop ecx
        ret

; ---------------------------------------------------------------- data

msg_result:   db "RESULT ", 0
msg_sgdt:     db "sgdt", 0
msg_sidt:     db "sidt", 0
msg_backdoor: db "backdoor", 0
msg_nofault:  db "nofault", 0
msg_cpuid:    db "cpuid", 0
msg_hlt:      db "hlt", 0
msg_syscalls: db "syscalls", 0
msg_mmio:     db "mmio", 0
msg_workload: db "workload", 0
msg_a:        db " a=", 0
msg_b:        db " b=", 0
msg_c:        db " c=", 0
msg_exc:      db "EXC ", 0
msg_err:      db " err=", 0
msg_eip:      db " eip=", 0
msg_cpl:      db " cpl=", 0

        align 4
exc_table:
%assign v 0
%rep 18
        dd exc_ %+ v
%assign v v+1
%endrep
ticks:    dd 0
halts:    dd 0
syscalls: dd 0
vendor:   times 3 dd 0
kbuf:     times 8 db 0

        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF               ; 0x08 ring-0 code, flat 32-bit
        dq 0x00CF92000000FFFF               ; 0x10 ring-0 data
        dq 0x00CFFA000000FFFF               ; 0x18 ring-3 code (DPL 3)
        dq 0x00CFF2000000FFFF               ; 0x20 ring-3 data (DPL 3)
tss_desc:
        dw 103                              ; 0x28 32-bit TSS (SDM Vol.3A 7.2.2)
        dw (tss - $$) & 0xFFFF
        db 0x10 + ((tss - $$) >> 16)        ; base 23:16 (the image is at 0x100000)
        db 0x89
        db 0
        db 0
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt
idt_desc:
        dw 256 * 8 - 1
        dd idt

        align 16
tss:    times 104 db 0
        align 4096
user_buf: times 16 db 0                     ; ring-3 data (on its own page)
        align 4096
idt:    times 256 * 8 db 0
