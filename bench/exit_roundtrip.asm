; exit_roundtrip.asm - an OUT in a tight loop: under `--vmx` every OUT is a VM exit (reason 30) that
; the Python VMM completes before resuming the guest.  The issue-7 target is <= 5 us per round trip
; (guest OUT -> VM exit -> handler -> VMRESUME -> next guest instruction).
        bits 32
        org 0x100000
%ifndef ITER
%define ITER 2000
%endif
        mov ecx, ITER
        mov al, 0x42
loop_:  out 0x80, al                ; POST-code port: a device that only records the byte
        dec ecx
        jnz loop_
        mov al, 0
        out 0xF4, al
        hlt
