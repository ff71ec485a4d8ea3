; lab.asm - the experiment image of `vmxlab explain` and `vmxlab classify` (vmxlab/explain/lab.py).
;
; One image holds every experiment of the instruction table (vmxlab/explain/instructions.py): the
; table's NASM snippets are generated into the file named by EXPERIMENTS and included below, each
; as
;
;   exp_N:      <the snippet: the instruction under test, maybe with a push or two around it>
;   exp_N_end:  jmp exp_N_end            ; parking: the experiment is over when EIP gets here
;
; and an index of (start, end) addresses at `index` so Python finds them without a map file.
;
; There is no kernel code: Python sets the starting state of each experiment directly (CPL, IOPL,
; IF, where the GDT/IDT/TSS/page directory are -- bare, or in the VMCS guest-state area), points
; EIP at exp_N and runs exactly as many instructions as the snippet has.  Every IDT gate leads to
; `handler`, a ring-0 `jmp $`: a trap is seen in the event trace (vmxlab/trace/events.py) and the
; experiment ends there.  The layout constants (CODE_BASE, OUT, IN_GDT, IN_IDT) come from lab.py
; as -D defines, so Python and the image cannot disagree.
        bits 32
        org CODE_BASE

handler:
        jmp handler                         ; every exception and interrupt gate points here

        align 16
%include EXPERIMENTS
