; kvm_exit_loop.asm - the port-I/O exit benchmark guest (a 512-byte boot sector).
;
; Real mode at 0000:7C00 (as a BIOS starts a boot sector): ITER times "out dx, al" to port
; PORT, then a write to QEMU's isa-debug-exit at 0xF4.  Every OUT is a VM exit to the VMM in
; user space, so (run time) / ITER is the cost of one exit round trip: KVM_RUN, the exit,
; the VMM's handling, and the re-entry.  The same bytes run under vmxlab's kvm backend, the
; minimal C VMM (kvm_exit_vmm.c) and qemu-system-x86_64 -accel kvm (booted by SeaBIOS from a
; raw disk image: hence the 0xAA55 signature).
;
;   nasm -f bin -DITER=100000 -DPORT=0xE9 -o exitloop.img bench/kvm_exit_loop.asm
        bits 16
        org 0x7C00
%ifndef ITER
%define ITER 100000
%endif
%ifndef PORT
%define PORT 0xE9
%endif
start:
        cli
        mov ecx, ITER
        mov dx, PORT
        mov al, '.'
        test ecx, ecx
        jz .done
.loop:  out dx, al
        dec ecx
        jnz .loop
.done:  xor al, al
        out 0xF4, al            ; isa-debug-exit: the VMM stops
.halt:  hlt
        jmp .halt
        times 510 - ($ - $$) db 0
        dw 0xAA55
