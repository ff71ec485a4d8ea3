; teaching.asm - a tiny protected-mode kernel that shows how x86 rings protect a kernel.
;
;   vmxlab run guests/kernel/teaching.asm                 (Multiboot: also boots with qemu -kernel)
;
; What it does (docs/teaching-kernel.md explains each step with its SDM section):
;   ring 0: GDT with ring-0 and ring-3 segments and a TSS, an IDT (exception handlers, the timer,
;           and a system-call gate "int 0x80" that ring 3 may use: DPL 3), page tables that map
;           the kernel supervisor-only and the user task's pages user-accessible, the 8259A PIC
;           and the 8254 PIT at 1 kHz; then IRET to ring 3.
;   ring 3: a task that prints through system calls, waits for timer ticks it can only *read*
;           (a read-only page the kernel shares with it), then tries, one by one, things only the
;           kernel may do.  Each attempt is caught by the CPU, reported by the kernel with the
;           vector and error code, and the task resumes after it.
;   end:    the task exits through a system call; the kernel prints a summary and powers off
;           (Bochs/QEMU shutdown port 0x8900).
;
; Output: the narrative on COM1 (the serial console); one machine-readable line per caught
; violation on port 0xE9 ("violation <what> vector=<v> error=<e> eip=<eip> cr2=<cr2>").
;
; Memory: the image at 1 MiB; page directory, page tables, stacks and the shared page at
; 0x110000-0x117000 (zeroed by the loader: the a.out kludge's bss).  Linear 0-4 MiB is the kernel,
; identity-mapped and supervisor-only; the task lives at 0x800000 (code, read-only), 0x801000
; (data), 0x802000 (the kernel's tick counter, read-only for the task), 0x803000 (stack).

        bits 32
        org 0x100000

MB_MAGIC        equ 0x1BADB002
MB_FLAGS        equ 0x00010000          ; bit 16: the header gives the load addresses (a.out kludge)

KCODE           equ 0x08
KDATA           equ 0x10
UCODE           equ 0x18 | 3
UDATA           equ 0x20 | 3
TSS_SEL         equ 0x28

PAGE_DIR        equ 0x110000
PT_KERNEL       equ 0x111000            ; linear 0-4 MiB
PT_USER         equ 0x112000            ; linear 8-12 MiB
USER_STACK_PG   equ 0x113000
KSTACK_TOP      equ 0x116000
SHARED_PG       equ 0x116000
BSS_END         equ 0x117000

USER_BASE       equ 0x800000
USER_TICKS      equ 0x802000            ; where the task sees the kernel's tick counter
USER_STACK_TOP  equ 0x804000

COM1            equ 0x3F8
PIT_HZ          equ 1193182
TIMER_HZ        equ 1000

SYS_WRITE       equ 1                   ; ebx = text, ecx = length
SYS_PROBE       equ 2                   ; ebx = what the next violation is, ecx = where to resume, edx = its id
SYS_MISSED      equ 3                   ; the armed violation did not fault
SYS_EXIT        equ 4

P               equ 1
RW              equ 2
US              equ 4

; ------------------------------------------------------------------ Multiboot header (MB 3.1)

mb_header:
        dd MB_MAGIC
        dd MB_FLAGS
        dd -(MB_MAGIC + MB_FLAGS)
        dd mb_header                    ; header_addr
        dd mb_header                    ; load_addr: the file from the start
        dd section.user.start + (user_end - user_begin)   ; load_end_addr
        dd BSS_END                      ; bss_end_addr: page tables, stacks, shared page are zeroed
        dd kernel_entry                 ; entry_addr

; ------------------------------------------------------------------ ring 0: boot

kernel_entry:
        cli
        lgdt [gdtr]                     ; SDM Vol.3A 3.5.1: our own GDT (the loader's is unknown)
        jmp KCODE:.cs
.cs:    mov ax, KDATA
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, KSTACK_TOP
        call com1_init
        mov esi, msg_banner
        call puts

        ; TSS: the stack the CPU switches to when ring 3 is interrupted (SDM Vol.3A 7.2.1, 6.12.1)
        mov dword [tss + 4], KSTACK_TOP
        mov dword [tss + 8], KDATA
        mov word [tss + 0x66], 0x68     ; I/O bitmap base at the limit: no bitmap, every port denied at CPL 3
        mov eax, tss
        mov [gdt + TSS_SEL + 2], ax
        shr eax, 16
        mov [gdt + TSS_SEL + 4], al
        mov [gdt + TSS_SEL + 7], ah
        mov ax, TSS_SEL
        ltr ax
        mov esi, msg_gdt
        call puts

        ; IDT: 32 exception gates and the timer (interrupt gates, DPL 0: ring 3 cannot "int" them),
        ; the system call (interrupt gate, DPL 3: the one door into ring 0)  -- SDM Vol.3A 6.10-6.12
        xor ecx, ecx
.idt:   mov eax, [exc_stubs + ecx * 4]
        mov edx, 0x8E00                 ; present, DPL 0, 32-bit interrupt gate
        call set_gate
        inc ecx
        cmp ecx, 32
        jb .idt
        mov ecx, 0x20
        mov eax, timer_isr
        call set_gate
        mov ecx, 0x80
        mov eax, syscall_isr
        mov edx, 0xEE00                 ; present, DPL 3
        call set_gate
        lidt [idtr]
        mov esi, msg_idt
        call puts

        ; paging (SDM Vol.3A 4.3): 0-4 MiB identity, supervisor-only; the task's pages user-accessible
        mov edi, PT_KERNEL
        mov eax, P | RW
.kpt:   mov [edi], eax
        add eax, 0x1000
        add edi, 4
        cmp edi, PT_KERNEL + 4096
        jb .kpt
        mov dword [PAGE_DIR + 0 * 4], PT_KERNEL | P | RW
        mov dword [PAGE_DIR + 2 * 4], PT_USER | P | RW | US
        mov dword [PT_USER + 0 * 4], section.user.start + P + US       ; code: read-only
        mov dword [PT_USER + 1 * 4], section.user.start + 0x1000 + P + RW + US   ; data
        mov dword [PT_USER + 2 * 4], SHARED_PG | P | US                ; ticks: read-only for ring 3
        mov dword [PT_USER + 3 * 4], USER_STACK_PG | P | RW | US       ; stack
        mov eax, PAGE_DIR
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80010000              ; PG, and WP: the kernel respects read-only pages too
        mov cr0, eax
        mov esi, msg_paging
        call puts

        ; 8259A PICs to vectors 0x20/0x28, only IRQ 0 unmasked; 8254 counter 0 in mode 2 at 1 kHz
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
        mov al, 0x34
        out 0x43, al
        mov al, (PIT_HZ / TIMER_HZ) & 0xFF
        out 0x40, al
        mov al, (PIT_HZ / TIMER_HZ) >> 8
        out 0x40, al
        mov esi, msg_timer
        call puts

        ; enter ring 3: IRET to a less privileged CS pops SS:ESP too (SDM Vol.3A 6.14, Vol.2 IRET)
        mov esi, msg_enter
        call puts
        mov ax, UDATA
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        push dword UDATA                ; SS
        push dword USER_STACK_TOP       ; ESP
        push dword 0x202                ; EFLAGS: IF = 1, IOPL = 0
        push dword UCODE                ; CS
        push dword USER_BASE            ; EIP
        iretd

; set_gate: IDT entry ECX -> handler EAX, attributes EDX (type/DPL/P in bits 15:8), selector KCODE
set_gate:
        mov [idt + ecx * 8], ax
        mov word [idt + ecx * 8 + 2], KCODE
        mov [idt + ecx * 8 + 4], dx
        shr eax, 16
        mov [idt + ecx * 8 + 6], ax
        ret

; ------------------------------------------------------------------ ring 0: interrupts

; every exception stub pushes a dummy error code if the CPU does not, then the vector
%assign v 0
%rep 32
exc_%[v]:
  %if !(v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21)
        push dword 0
  %endif
        push dword v
        jmp exception
  %assign v v + 1
%endrep

; Every handler saves the interrupted registers and DS/ES (the task's DS must survive: an IRET
; to ring 3 nulls data segment registers whose DPL is below 3, SDM Vol.2 IRET), then loads the
; kernel's.  FRAME is where the CPU's part starts: [esp + FRAME] vector, +4 error code, +8 EIP,
; +12 CS, +16 EFLAGS, +20 ESP, +24 SS (from ring 3).  Saved EAX is at [esp + 36], EBX at +24.
FRAME   equ 40
%macro ENTER_KERNEL 0
        pushad
        push ds
        push es
        mov ax, KDATA
        mov ds, ax
        mov es, ax
%endmacro
%macro LEAVE_KERNEL 0
        pop es
        pop ds
        popad
%endmacro

exception:
        ENTER_KERNEL
        test dword [esp + FRAME + 12], 3
        jz panic                        ; a fault in the kernel itself
        cmp dword [probe_name], 0
        je panic                        ; a fault in ring 3 nobody expected
        inc dword [caught]
        mov esi, msg_trap
        call puts
        mov esi, [probe_name]
        call puts_padded
        mov esi, msg_arrow
        call puts
        mov eax, [esp + FRAME]
        mov esi, [mnemonics + eax * 4]
        call puts
        mov esi, msg_vector
        call puts
        mov eax, [esp + FRAME]
        call putdec
        mov esi, msg_error
        call puts
        mov eax, [esp + FRAME + 4]
        call hex16
        cmp dword [esp + FRAME], 14
        jne .nocr2
        mov esi, msg_cr2
        call puts
        mov eax, cr2
        call hex32
.nocr2: mov esi, msg_at
        call puts
        mov eax, [esp + FRAME + 12]
        call hex16
        mov al, ':'
        call putc
        mov eax, [esp + FRAME + 8]
        call hex32
        mov al, 10
        call putc
        call e9_report
        ; resume the task where the probe said, after the instruction that faulted
        mov eax, [probe_resume]
        mov [esp + FRAME + 8], eax
        mov dword [probe_name], 0
        LEAVE_KERNEL
        add esp, 8                      ; vector and error code
        iretd

; e9_report: "violation <name> vector=<v> error=<e> eip=<eip> cr2=<cr2>" on port 0xE9
e9_report:
        mov byte [to_e9], 1
        mov esi, msg_e9_violation
        call puts
        mov esi, [probe_id]
        call puts
        mov esi, msg_e9_vector
        call puts
        mov eax, [esp + 4 + FRAME]
        call putdec
        mov esi, msg_e9_error
        call puts
        mov eax, [esp + 4 + FRAME + 4]
        call hex16
        mov esi, msg_e9_eip
        call puts
        mov eax, [esp + 4 + FRAME + 8]
        call hex32
        cmp dword [esp + 4 + FRAME], 14
        jne .nl
        mov esi, msg_e9_cr2
        call puts
        mov eax, cr2
        call hex32
.nl:    mov al, 10
        call putc
        mov byte [to_e9], 0
        ret

panic:
        mov esi, msg_panic
        call puts
        mov eax, [esp + FRAME]
        mov esi, [mnemonics + eax * 4]
        call puts
        mov esi, msg_error
        call puts
        mov eax, [esp + FRAME + 4]
        call hex16
        mov esi, msg_at
        call puts
        mov eax, [esp + FRAME + 12]
        call hex16
        mov al, ':'
        call putc
        mov eax, [esp + FRAME + 8]
        call hex32
        mov al, 10
        call putc
        mov al, 1
        jmp power_off

; the timer: IRQ 0 through the 8259A.  The first ticks say whom they interrupted.
timer_isr:
        ENTER_KERNEL
        mov eax, [ticks]
        inc eax
        mov [ticks], eax
        mov [SHARED_PG], eax            ; what ring 3 sees, read-only, at 0x802000
        cmp eax, 3
        ja .eoi
        mov esi, msg_tick
        call puts
        call putdec
        mov esi, msg_tick_ring
        call puts
        mov eax, [esp + FRAME + 4]      ; (no vector or error code here) the interrupted CS: RPL = ring
        and eax, 3
        call putdec
        mov esi, msg_at + 1
        call puts
        mov eax, [esp + FRAME + 4]
        call hex16
        mov al, ':'
        call putc
        mov eax, [esp + FRAME]
        call hex32
        mov al, 10
        call putc
.eoi:   mov al, 0x20                    ; non-specific EOI (8259A OCW2)
        out 0x20, al
        LEAVE_KERNEL
        iretd

; the system call: int 0x80 from ring 3 (interrupt gate, DPL 3).  EAX = number.
syscall_isr:
        ENTER_KERNEL
        mov eax, [esp + 36]             ; the caller's EAX (ENTER_KERNEL used AX)
        inc dword [syscalls]
        cmp eax, SYS_WRITE
        je .write
        cmp eax, SYS_PROBE
        je .probe
        cmp eax, SYS_MISSED
        je .missed
        cmp eax, SYS_EXIT
        je .exit
        mov dword [esp + 36], -1        ; unknown: EAX = -1
        jmp .ret
.write: ; a kernel must not trust a user pointer: the text must lie in the task's pages
        cmp ebx, USER_BASE
        jb .efault
        lea edx, [ebx + ecx]
        cmp edx, USER_STACK_TOP
        ja .efault
.w:     test ecx, ecx
        jz .wdone
        cmp byte [col0], 0              ; each line the task writes starts with "[ring 3] "
        je .c
        mov esi, msg_user
        call puts
.c:     mov al, [ebx]                   ; ring 0 reads the user page (U/S = 1 pages are readable here)
        call putc
        inc ebx
        dec ecx
        jmp .w
.wdone: mov dword [esp + 36], 0
        jmp .ret
.efault:
        mov dword [esp + 36], -14
        jmp .ret
.probe: mov [probe_name], ebx
        mov [probe_resume], ecx
        mov [probe_id], edx
        jmp .ret
.missed:
        inc dword [missed]
        mov esi, msg_missed
        call puts
        mov esi, [probe_name]
        call puts
        mov al, 10
        call putc
        mov dword [probe_name], 0
        jmp .ret
.exit:  cli
        mov esi, msg_exit1
        call puts
        mov eax, [caught]
        call putdec
        mov esi, msg_exit2
        call puts
        mov eax, [syscalls]
        call putdec
        mov esi, msg_exit3
        call puts
        mov eax, [ticks]
        call putdec
        mov esi, msg_exit4
        call puts
        xor al, al
        cmp dword [missed], 0
        je power_off
        mov al, 2
        jmp power_off
.ret:   LEAVE_KERNEL
        iretd

; power_off: AL = exit status; the Bochs/QEMU shutdown port "Shutdown" (status 0), else
; isa-debug-exit at 0xF4 with AL
power_off:
        mov ah, al
        mov ecx, 100000                 ; let COM1 send its last bytes (LSR.TEMT), as a PC must
        mov dx, COM1 + 5
.drain: in al, dx
        test al, 0x40
        jnz .sent
        loop .drain
.sent:  mov al, ah
        test al, al
        jnz .fail
        mov dx, 0x8900
        mov esi, msg_shutdown
.s:     lodsb
        test al, al
        jz .h
        out dx, al
        jmp .s
.fail:  out 0xF4, al
.h:     cli
        hlt
        jmp .h

; ------------------------------------------------------------------ ring 0: console

com1_init:                              ; 115200 8N1, FIFOs on (PC16550D)
        mov dx, COM1 + 1
        xor al, al
        out dx, al
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al
        mov dx, COM1
        mov al, 1
        out dx, al
        mov dx, COM1 + 1
        xor al, al
        out dx, al
        mov dx, COM1 + 3
        mov al, 3
        out dx, al
        mov dx, COM1 + 2
        mov al, 0xC7
        out dx, al
        ret

putc:                                   ; AL -> COM1 (or port 0xE9 while to_e9 is set)
        push edx
        push eax
        cmp byte [to_e9], 0
        jne .e9
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20                   ; LSR.THRE
        jz .wait
        pop eax
        mov dx, COM1
        out dx, al
        cmp al, 10
        sete byte [col0]
        pop edx
        ret
.e9:    pop eax
        out 0xE9, al
        pop edx
        ret

puts:   push esi                        ; ESI -> NUL-terminated string
        push eax
.l:     lodsb
        test al, al
        jz .d
        call putc
        jmp .l
.d:     pop eax
        pop esi
        ret

puts_padded:                            ; ESI, padded with spaces to 24 columns
        push ecx
        mov ecx, esi
        call puts
.len:   cmp byte [ecx], 0
        je .pad
        inc ecx
        jmp .len
.pad:   sub ecx, esi
.sp:    cmp ecx, 24
        jae .done
        mov al, ' '
        call putc
        inc ecx
        jmp .sp
.done:  pop ecx
        ret

hex32:  push ecx                        ; EAX as 8 hex digits
        mov ecx, 8
        jmp hexn
hex16:  push ecx                        ; AX as 4 hex digits
        shl eax, 16
        mov ecx, 4
hexn:   rol eax, 4
        push eax
        and al, 0x0F
        add al, '0'
        cmp al, '9'
        jbe .d
        add al, 'a' - '0' - 10
.d:     call putc
        pop eax
        loop hexn
        pop ecx
        ret

putdec: pushad                          ; EAX in decimal
        mov ecx, 10
        xor ebx, ebx
.div:   xor edx, edx
        div ecx
        push edx
        inc ebx
        test eax, eax
        jnz .div
.out:   pop eax
        add al, '0'
        call putc
        dec ebx
        jnz .out
        popad
        ret

; ------------------------------------------------------------------ ring 0: data

        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF           ; 0x08 kernel code: base 0, 4 GiB, DPL 0, execute/read
        dq 0x00CF92000000FFFF           ; 0x10 kernel data: DPL 0, read/write
        dq 0x00CFFA000000FFFF           ; 0x18 user code:   DPL 3
        dq 0x00CFF2000000FFFF           ; 0x20 user data:   DPL 3
        dq 0x0000890000000067           ; 0x28 32-bit TSS, available (base patched at boot)
gdt_end:
gdtr:   dw gdt_end - gdt - 1
        dd gdt
        align 8
idt:    times 256 dq 0
idtr:   dw 256 * 8 - 1
        dd idt
        align 4
tss:    times 0x68 db 0

exc_stubs:
%assign v 0
%rep 32
        dd exc_%[v]
  %assign v v + 1
%endrep

mnemonics:
        dd m_de, m_db, m_nmi, m_bp, m_of, m_br, m_ud, m_nm, m_df, m_09, m_ts, m_np, m_ss, m_gp, m_pf
        dd m_15, m_mf, m_ac, m_mc, m_xm, m_ve, m_cp
        times 10 dd m_15
m_de:   db "#DE", 0
m_db:   db "#DB", 0
m_nmi:  db "NMI", 0
m_bp:   db "#BP", 0
m_of:   db "#OF", 0
m_br:   db "#BR", 0
m_ud:   db "#UD", 0
m_nm:   db "#NM", 0
m_df:   db "#DF", 0
m_09:   db "#09", 0
m_ts:   db "#TS", 0
m_np:   db "#NP", 0
m_ss:   db "#SS", 0
m_gp:   db "#GP", 0
m_pf:   db "#PF", 0
m_15:   db "#??", 0
m_mf:   db "#MF", 0
m_ac:   db "#AC", 0
m_mc:   db "#MC", 0
m_xm:   db "#XM", 0
m_ve:   db "#VE", 0
m_cp:   db "#CP", 0

ticks:        dd 0
syscalls:     dd 0
caught:       dd 0
missed:       dd 0
probe_name:   dd 0
probe_resume: dd 0
probe_id:     dd 0
to_e9:        db 0
col0:         db 1                      ; the console is at the start of a line

msg_banner: db 10, "vmxlab teaching kernel -- x86 protection rings at work", 10
            db "[kernel] ring 0, 32-bit protected mode, interrupts off", 10, 0
msg_gdt:    db "[kernel] GDT: kernel code 0x08, kernel data 0x10, user code 0x1b, user data 0x23, TSS 0x28 (SS0:ESP0 = kernel stack)", 10, 0
msg_idt:    db "[kernel] IDT: exceptions and the timer are DPL-0 gates; int 0x80 (system call) is the only DPL-3 gate", 10, 0
msg_paging: db "[kernel] paging on (CR0.WP = 1): kernel pages supervisor-only, the task's pages at 0x00800000 user", 10, 0
msg_timer:  db "[kernel] 8259A PIC at vectors 0x20-0x2f, 8254 PIT at 1 kHz on IRQ 0", 10, 0
msg_enter:  db "[kernel] IRET to ring 3: CS 0x1b, SS 0x23, EIP 0x00800000, IF = 1, IOPL = 0", 10, 0
msg_user:   db "[ring 3] ", 0
msg_tick:   db "[timer]  tick ", 0
msg_tick_ring: db ": interrupted ring ", 0
msg_trap:   db "[trap]   ", 0
msg_arrow:  db " -> ", 0
msg_vector: db "  vector ", 0
msg_error:  db "  error ", 0
msg_cr2:    db "  cr2 ", 0
msg_at:     db "  at ", 0
msg_missed: db "[kernel] NOT CAUGHT: ", 0
msg_panic:  db "[kernel] PANIC: unexpected ", 0
msg_exit1:  db "[kernel] the task exited: ", 0
msg_exit2:  db " violations caught, ", 0
msg_exit3:  db " system calls, ", 0
msg_exit4:  db " timer ticks -- powering off", 10, 0
msg_e9_violation: db "violation ", 0
msg_e9_vector: db " vector=", 0
msg_e9_error: db " error=", 0
msg_e9_eip: db " eip=", 0
msg_e9_cr2: db " cr2=", 0
msg_shutdown: db "Shutdown", 0

; ------------------------------------------------------------------ ring 3: the task

        section user vstart=USER_BASE align=4096 follows=.text
user_begin:

; PROBE id, "what", {instruction}: tell the kernel what comes, then do it.  If the CPU lets it pass,
; the task reports that (SYS_MISSED); if it faults, the kernel resumes the task at the end.
%macro PROBE 3
        mov eax, SYS_PROBE
        mov ebx, %%what
        mov ecx, %%resume
        mov edx, %%id
        int 0x80
        %3
        mov eax, SYS_MISSED
        int 0x80
        jmp %%resume
%%what: db %2, 0
%%id:   db %1, 0
%%resume:
%endmacro

%macro WRITE 1
        mov eax, SYS_WRITE
        mov ebx, %%text
        mov ecx, %%end - %%text
        int 0x80
        jmp %%end
%%text: db %1
%%end:
%endmacro

user_main:
        WRITE {"hello from ring 3 (CPL 3): this text went through int 0x80", 10}
        ; busy work until the timer has preempted us three times (the kernel updates the counter
        ; in a page we can read but not write)
        xor esi, esi
.spin:  inc esi
        cmp dword [USER_TICKS], 3
        jb .spin
        WRITE {"three timer ticks have passed; now trying what only ring 0 may do:", 10}

        PROBE "cli", "cli", {cli}                               ; SDM Vol.2 CLI: CPL > IOPL
        PROBE "sti", "sti", {sti}
        PROBE "in", "in al, 0x60", {in al, 0x60}                ; Vol.1 19.5: IOPL, no I/O bitmap
        PROBE "out", "out 0x20, al (PIC EOI)", {out 0x20, al}
        PROBE "hlt", "hlt", {hlt}                               ; Vol.3A 5.9 privileged
        PROBE "kernel-write", "write to a kernel page", {mov dword [0x100000], 0}   ; Vol.3A 4.6 U/S = 0
        PROBE "readonly-write", "write to the tick page", {mov dword [USER_TICKS], 0} ; R/W = 0
        mov si, KDATA                   ; (PROBE itself uses EAX-EDX)
        PROBE "load-dpl0-ds", "mov ds, 0x10 (DPL-0 data)", {mov ds, si}   ; Vol.2 MOV: CPL > DPL
        PROBE "lgdt", "lgdt", {lgdt [user_scratch]}             ; Vol.3A 5.9
        PROBE "mov-cr3", "mov cr3, eax", {mov cr3, eax}
        PROBE "read-cr0", "mov eax, cr0", {mov eax, cr0}
        PROBE "wrmsr", "wrmsr", {wrmsr}
        PROBE "int-dpl0-gate", "int 0x20 (a DPL-0 gate)", {int 0x20}      ; Vol.3A 6.12.1.1
        PROBE "call-ring0", "far call to ring-0 code", {call KCODE:0x100000}  ; Vol.2 CALL: DPL != CPL
        PROBE "kernel-jump", "jump into the kernel", {jmp 0x100040}     ; fetch from a supervisor page

        WRITE {"sgdt works in ring 3 (sensitive, not privileged): the GDT is at "}
        sgdt [user_scratch]
        mov eax, [user_scratch + 2]
        call user_hex32
        WRITE {10, "done; goodbye from ring 3", 10}
        mov eax, SYS_EXIT
        int 0x80
        jmp $

user_hex32:                             ; print EAX in hex through the system call
        mov edi, user_scratch + 8
        mov ecx, 8
.d:     rol eax, 4
        mov edx, eax
        and edx, 0x0F
        mov dl, [hex_digits + edx]
        mov [edi], dl
        inc edi
        loop .d
        mov eax, SYS_WRITE
        mov ebx, user_scratch + 8
        mov ecx, 8
        int 0x80
        ret
hex_digits: db "0123456789abcdef"

        align 4096
user_data:                              ; the task's data page (0x801000)
user_scratch: times 32 db 0
        times 4096 - 32 db 0
user_end:
