; loader.asm - an option ROM that starts a bench/ guest under Bochs and QEMU exactly as vmxlab does
; with `--format flat --load 0x100000 --entry pm32:0x100000` (docs/entry-state.md), so the three
; emulators run the same guest bytes from the same machine state.
;
;   nasm -f bin -D GUEST='"path/to/guest.bin"' loader.asm -o loader.rom
;
; vmxlab/bench_external.py builds it (and fixes the ROM size byte and checksum, which nasm cannot
; compute), then gives it to Bochs as `optromimage1` and to QEMU as `-option-rom`: one loader for
; both, so neither emulator gets a boot path the other lacks.
;
; Why an option ROM: the BIOS far-calls every option ROM it finds during POST, with the whole image
; already in memory, so the loader needs no disk driver and no BIOS service.  It never returns to
; the BIOS.  Under QEMU, SeaBIOS copies the image to a 2 KiB slot of its own choosing in
; C0000-EFFFF, so the code below is position independent: it finds its linear base from CS.
;
; What it does (everything vmxlab's pm32 entry promises, and no more):
;   * masks both 8259s and sets the NMI-disable bit (vmxlab: no interrupt arrives unasked;
;     the guests that want the timer program the PIC and PIT themselves), A20 on (port 0x92);
;   * writes vmxlab's boot GDT at physical 0x500 (null, null, 0x10 flat code, 0x18 flat data,
;     accessed bits preset: loaders.py BOOT_GDT), enters protected mode;
;   * writes a start marker to the debug console (port 0xE9), so the harness can tell the guest's
;     output from anything a BIOS printed there;
;   * zeroes RAM 1 MiB - 16 MiB (vmxlab's RAM starts zeroed; the bench guests build page tables
;     there and rely on the empty entries), copies the guest to 0x100000;
;   * CR0 = 0x11, CR3 = CR4 = 0, IDTR = 0/0, EFLAGS = 0x2, EAX..EDI = 0, ESP = 0x7000,
;     CS = 0x10, DS = ES = FS = GS = SS = 0x18; jumps to 0x100000.
; The loader's own instructions run before the guest in every run, so `t(ITER=N) - t(ITER=n)`
; removes them along with the BIOS.
        bits 16
        org 0

%ifndef GUEST
%error "define GUEST as the quoted path of the flat guest binary: -D GUEST='\"guest.bin\"'"
%endif

GDT_ADDR  equ 0x500             ; loaders.py BOOT_GDT_ADDR
BOOT_CS   equ 0x10
BOOT_DS   equ 0x18
LOAD_ADDR equ 0x100000
ZERO_END  equ 0x1000000         ; zero RAM up to 16 MiB (the emulators get 32 MiB)
STACK     equ 0x7000

rom_header:
        db 0x55, 0xAA           ; option ROM signature
        db 0                    ; size in 512-byte blocks: patched by bench_external.py
        jmp short init          ; offset 3: the BIOS far-calls here during POST

init:
        cli
        cld
        xor ax, ax
        mov ss, ax
        mov sp, STACK           ; never returning: the BIOS's stack is not needed any more
        mov al, 0xFF
        out 0x21, al            ; mask every line of both 8259As (OCW1)
        out 0xA1, al
        mov al, 0x8F
        out 0x70, al            ; NMI disabled (CMOS index port bit 7)
        in al, 0x92
        and al, 0xFE            ; never pulse the fast reset bit
        or al, 0x02             ; A20 on
        out 0x92, al

        xor ebx, ebx
        mov bx, cs
        shl ebx, 4              ; EBX = linear address of this image (wherever the BIOS put it)

        push cs
        pop ds
        xor ax, ax
        mov es, ax
        mov si, boot_gdt
        mov di, GDT_ADDR
        mov cx, boot_gdt_end - boot_gdt
        rep movsb
        lgdt [gdt_desc]

        mov eax, cr0
        or al, 1                ; PE
        mov cr0, eax
        lea eax, [ebx + pm32]
        push dword BOOT_CS
        push eax
        o32 retf                ; far return = far jump to BOOT_CS:linear(pm32)

        bits 32
pm32:
        mov ax, BOOT_DS
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, STACK
        lea esi, [ebx + marker]
.mark:  lodsb                   ; the start marker on the debug console: output after it is the guest's
        test al, al
        jz .marked
        out 0xE9, al
        jmp .mark
.marked:
        xor eax, eax
        mov edi, LOAD_ADDR
        mov ecx, (ZERO_END - LOAD_ADDR) / 4
        rep stosd
        lea esi, [ebx + guest]
        mov edi, LOAD_ADDR
        mov ecx, guest_end - guest
        rep movsb
        lidt [ebx + idt_desc]
        mov eax, 0x11           ; CR0 = PE | ET: paging, caches-off and FPU bits as vmxlab has them
        mov cr0, eax
        xor eax, eax
        mov cr3, eax
        mov cr4, eax
        push dword 0x2
        popfd                   ; EFLAGS = 0x2: IF, DF, IOPL, TF clear
        xor ebx, ebx
        xor ecx, ecx
        xor edx, edx
        xor esi, esi
        xor edi, edi
        xor ebp, ebp
        jmp BOOT_CS:LOAD_ADDR

        align 8
boot_gdt:
        dq 0
        dq 0
        dq 0x00CF9B000000FFFF   ; 0x10: code, base 0, limit 4 GiB, 32-bit, DPL 0, accessed
        dq 0x00CF93000000FFFF   ; 0x18: data, base 0, limit 4 GiB, 32-bit, writable, accessed
boot_gdt_end:
gdt_desc:
        dw boot_gdt_end - boot_gdt - 1
        dd GDT_ADDR
idt_desc:
        dw 0                    ; IDTR = base 0, limit 0, as vmxlab's pm32 entry
        dd 0
marker: db 2, "vmxlab-bench", 3, 0   ; bench_external.py: GUEST_OUTPUT_MARKER

        align 16
guest:
        incbin GUEST
guest_end:                      ; bench_external.py pads the image to 512 bytes and sets its checksum
