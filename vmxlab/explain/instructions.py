"""The one table behind ``vmxlab explain`` and ``vmxlab classify``: instruction -> NASM snippet, the VMX
control that makes it exit, what to show, and where the manual says so.

Nothing here says which Popek-Goldberg class an instruction is in: the classifier
(:mod:`vmxlab.explain.classify`) decides that by running the snippets.  What the table
does say, because it is a fact about the manual and the paper rather than about
behaviour, is the VM-exit control (SDM Vol.3C 26.1.2-26.1.3, exit reasons from
Appendix C) and whether Robin & Irvine (USENIX Security 2000) list the instruction
(reference/theory.md 2a), so the classifier can compare its result with their list.

Snippet conventions (see guests/explain/lab.asm): ``OUT`` is a 16-byte buffer the
instruction may store to, ``IN_GDT``/``IN_IDT`` hold pseudo-descriptors of a second,
valid copy of the tables (so LGDT/LIDT change the register without breaking the
machine); local labels (``.after``) are scoped to the experiment.  ``regs`` are the
registers before the snippet (selectors are those of vmxlab.explain.lab: 0x08/0x10
ring-0 code/data, 0x1B/0x23 ring-3 code/data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vmx.exit_reasons import ExitReason as R

# the selectors of the experiment GDT (vmxlab/explain/lab.py)
CODE0, DATA0, CODE3, DATA3, LDT_SEL = 0x08, 0x10, 0x1B, 0x23, 0x38
MSR_SYSENTER_CS = 0x174


@dataclass(frozen=True)
class Insn:
    """One modelled instruction.

    ``control``: the exit-policy name (vmxlab/vmm/policies.py EXITS) that makes it exit, None if
    no control does; ``always_exits``: it exits unconditionally (SDM Vol.3C 26.1.2);
    ``shows``: which results the explanation prints (``out6`` = the 6-byte pseudo-descriptor at
    OUT, ``stack`` = the dword at [ESP], register names, ``zf``, ``if``, ``iopl``);
    ``variants``: operand presets, each a separate starting state (Popek-Goldberg's definitions
    quantify over all states, operands included; INT n tries gate 0x80, DPL 3, and 0x81, DPL 0);
    ``timing``: results are time stamps, which equivalence ignores (Popek & Goldberg allow timing differences).
    """

    name: str
    asm: str
    what: str
    sdm: str
    control: str | None = None
    exit_reason: int | None = None
    always_exits: bool = False
    shows: tuple[str, ...] = ()
    regs: dict[str, int] = field(default_factory=dict)
    #: each variant: register presets, and "_asm" for a different snippet (e.g. another INT vector)
    variants: tuple[dict[str, int | str], ...] = ({},)
    timing: bool = False
    robin_irvine: str | None = None  # "A" sensitive register instruction, "B" protection-system reference
    exit_sdm: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.asm.splitlines()[-1].strip() if "\n" in self.asm else self.asm


_DT = "SDM Vol.3C 26.1.3 (descriptor-table exiting), exit reason 46/47 (Vol.3C Appendix C)"

TABLE: list[Insn] = [
    # ---------------------------------------------------------------- system-table registers
    Insn("sgdt", "sgdt [OUT]", "stores GDTR (limit, base) to memory", "SDM Vol.2 SGDT",
         "descriptor-table", R.ACCESS_TO_GDTR_OR_IDTR, shows=("out6",), robin_irvine="A", exit_sdm=_DT),
    Insn("sidt", "sidt [OUT]", "stores IDTR (limit, base) to memory", "SDM Vol.2 SIDT",
         "descriptor-table", R.ACCESS_TO_GDTR_OR_IDTR, shows=("out6",), robin_irvine="A", exit_sdm=_DT),
    Insn("sldt", "sldt ax", "stores the LDTR selector", "SDM Vol.2 SLDT",
         "descriptor-table", R.ACCESS_TO_LDTR_OR_TR, shows=("ax",), regs={"eax": 0xFFFF}, robin_irvine="A",
         exit_sdm=_DT),
    Insn("str", "str ax", "stores the TR selector", "SDM Vol.2 STR",
         "descriptor-table", R.ACCESS_TO_LDTR_OR_TR, shows=("ax",), regs={"eax": 0xFFFF}, robin_irvine="B",
         exit_sdm=_DT),
    Insn("lgdt", "lgdt [IN_GDT]", "loads GDTR from memory", "SDM Vol.2 LGDT",
         "descriptor-table", R.ACCESS_TO_GDTR_OR_IDTR, shows=("gdtr",), exit_sdm=_DT),
    Insn("lidt", "lidt [IN_IDT]", "loads IDTR from memory", "SDM Vol.2 LIDT",
         "descriptor-table", R.ACCESS_TO_GDTR_OR_IDTR, shows=("idtr",), exit_sdm=_DT),
    Insn("lldt", "lldt ax", "loads LDTR from a GDT descriptor", "SDM Vol.2 LLDT",
         "descriptor-table", R.ACCESS_TO_LDTR_OR_TR, shows=("ldtr",), regs={"eax": LDT_SEL}, exit_sdm=_DT),
    # ---------------------------------------------------------------- control registers
    Insn("smsw", "smsw ax", "stores CR0[15:0] (the machine status word)", "SDM Vol.2 SMSW",
         None, None, shows=("ax",), regs={"eax": 0}, robin_irvine="A",
         exit_sdm="SDM Vol.3C 26.3: SMSW never exits; bits the VMM owns (CR0 guest/host mask) read from the "
                  "CR0 read shadow"),
    Insn("mov-cr0", "mov cr0, eax", "writes CR0 (here: sets TS)", "SDM Vol.2 MOV (control registers)",
         "cr", R.CONTROL_REGISTER_ACCESS, shows=("cr0",), regs={"eax": 0x80000019}, aliases=("mov cr0",),
         exit_sdm="SDM Vol.3C 26.1.3: MOV to CR0 exits if it changes a bit set in the CR0 guest/host mask "
                  "(policy 'cr' = every bit), exit reason 28"),
    Insn("mov-cr3", "mov cr3, eax", "loads CR3 (the page-directory base)", "SDM Vol.2 MOV (control registers)",
         "cr3-load", R.CONTROL_REGISTER_ACCESS, shows=("cr3",), regs={"eax": 0x23000}, aliases=("mov cr3",),
         exit_sdm="SDM Vol.3C 26.1.3: CR3-load exiting, exit reason 28"),
    Insn("mov-from-cr3", "mov eax, cr3", "reads CR3", "SDM Vol.2 MOV (control registers)",
         "cr3-store", R.CONTROL_REGISTER_ACCESS, shows=("eax",), regs={"eax": 0},
         exit_sdm="SDM Vol.3C 26.1.3: CR3-store exiting, exit reason 28"),
    # ---------------------------------------------------------------- flags
    Insn("pushf", "pushfd", "pushes EFLAGS (IF, IOPL included)", "SDM Vol.2 PUSHF",
         None, None, shows=("stack",), robin_irvine="A",
         exit_sdm="no VM-execution control makes PUSHF exit; in non-root operation it reads the guest's RFLAGS"),
    Insn("popf", "push dword 0x3202\npopfd", "pops EFLAGS: asks for IF = 1 and IOPL = 3", "SDM Vol.2 POPF",
         None, None, shows=("if", "iopl"), robin_irvine="A",
         exit_sdm="no VM-execution control makes POPF exit; in non-root operation it writes the guest's RFLAGS"),
    Insn("cli", "cli", "clears IF", "SDM Vol.2 CLI", None, None, shows=("if",),
         exit_sdm="no VM-execution control makes CLI exit; it clears the guest's RFLAGS.IF"),
    Insn("sti", "sti", "sets IF", "SDM Vol.2 STI", None, None, shows=("if",),
         exit_sdm="no VM-execution control makes STI exit; it sets the guest's RFLAGS.IF"),
    Insn("iret", "push dword 0x3202\npush cs\npush dword .after\niretd\n.after:",
         "returns from an interrupt to the same ring, popping EFLAGS with IF = 1, IOPL = 3", "SDM Vol.2 IRET",
         None, None, shows=("if", "iopl"),
         exit_sdm="IRET does not exit (it may unblock NMIs: SDM Vol.3C 26.3)"),
    # ---------------------------------------------------------------- I/O, interrupts, halt
    Insn("in", "in al, 0x61", "reads I/O port 0x61 (PC system control port)", "SDM Vol.2 IN; Vol.1 19.5.1",
         "io", R.IO_INSTRUCTION, shows=("al",), regs={"eax": 0},
         exit_sdm="SDM Vol.3C 26.1.3: unconditional I/O exiting or the I/O bitmaps, exit reason 30"),
    Insn("out", "out 0x80, al", "writes I/O port 0x80 (POST code)", "SDM Vol.2 OUT; Vol.1 19.5.1",
         "io", R.IO_INSTRUCTION, shows=(), regs={"eax": 0x42},
         exit_sdm="SDM Vol.3C 26.1.3: unconditional I/O exiting or the I/O bitmaps, exit reason 30"),
    Insn("hlt", "hlt", "halts the processor until an interrupt", "SDM Vol.2 HLT",
         "hlt", R.HLT, shows=("halted",), exit_sdm="SDM Vol.3C 26.1.3: HLT exiting, exit reason 12"),
    Insn("int", "int 0x80", "software interrupt through IDT gate 0x80 (DPL 3, the system-call gate)",
         "SDM Vol.2 INT n; Vol.3A 6.12.1.1", None, None, shows=(), robin_irvine="B",
         variants=({}, {"_asm": "int 0x81"}), aliases=("int n",),
         exit_sdm="INT n does not exit (the exception bitmap covers exceptions, not software interrupts: "
                  "SDM Vol.3C 26.2)"),
    # ---------------------------------------------------------------- processor information and time
    Insn("cpuid", "cpuid", "processor identification (leaf 1)", "SDM Vol.2 CPUID",
         None, R.CPUID, always_exits=True, shows=("ecx",), regs={"eax": 1, "ecx": 0},
         exit_sdm="SDM Vol.3C 26.1.2: CPUID exits unconditionally, exit reason 10"),
    Insn("rdtsc", "rdtsc", "reads the time-stamp counter", "SDM Vol.2 RDTSC; Vol.3B 18.17",
         "rdtsc", R.RDTSC, shows=("edx:eax",), timing=True,
         exit_sdm="SDM Vol.3C 26.1.3: RDTSC exiting, exit reason 16 (else the TSC plus the TSC offset)"),
    Insn("rdmsr", "rdmsr", "reads MSR 0x174 (IA32_SYSENTER_CS)", "SDM Vol.2 RDMSR",
         "msr", R.RDMSR, shows=("eax",), regs={"ecx": MSR_SYSENTER_CS, "eax": 0, "edx": 0},
         exit_sdm="SDM Vol.3C 26.1.3: the MSR bitmaps (or no bitmaps: every RDMSR), exit reason 31"),
    Insn("wrmsr", "wrmsr", "writes MSR 0x174 (IA32_SYSENTER_CS) = 0x8", "SDM Vol.2 WRMSR",
         "msr", R.WRMSR, shows=("msr",), regs={"ecx": MSR_SYSENTER_CS, "eax": 0x8, "edx": 0},
         exit_sdm="SDM Vol.3C 26.1.3: the MSR bitmaps (or no bitmaps: every WRMSR), exit reason 32"),
    Insn("invlpg", "mov eax, [OUT]\ninvlpg [OUT]", "drops the TLB entry of OUT's page (after a load filled it)",
         "SDM Vol.2 INVLPG", "invlpg", R.INVLPG, shows=("tlb",),
         exit_sdm="SDM Vol.3C 26.1.3: INVLPG exiting, exit reason 14"),
    # ---------------------------------------------------------------- protection-system references
    Insn("lar", "lar eax, ebx", "loads the access rights of descriptor EBX (ZF = 1 if visible at this CPL)",
         "SDM Vol.2 LAR", None, None, shows=("eax", "zf"), regs={"eax": 0},
         variants=({"ebx": CODE0}, {"ebx": CODE3}), robin_irvine="B",
         exit_sdm="no VM-execution control makes LAR exit"),
    Insn("lsl", "lsl eax, ebx", "loads the segment limit of descriptor EBX (ZF = 1 if visible at this CPL)",
         "SDM Vol.2 LSL", None, None, shows=("eax", "zf"), regs={"eax": 0},
         variants=({"ebx": DATA0}, {"ebx": DATA3}), robin_irvine="B",
         exit_sdm="no VM-execution control makes LSL exit"),
    Insn("verr", "verr bx", "is segment BX readable at this CPL? (ZF)", "SDM Vol.2 VERR, VERW",
         None, None, shows=("zf",), variants=({"ebx": DATA0}, {"ebx": DATA3}), robin_irvine="B",
         exit_sdm="no VM-execution control makes VERR exit"),
    Insn("verw", "verw bx", "is segment BX writable at this CPL? (ZF)", "SDM Vol.2 VERR, VERW",
         None, None, shows=("zf",), variants=({"ebx": DATA0}, {"ebx": DATA3}), robin_irvine="B",
         exit_sdm="no VM-execution control makes VERW exit"),
    Insn("mov-from-cs", "mov ax, cs", "reads the CS selector (its RPL is the CPL)", "SDM Vol.2 MOV",
         None, None, shows=("ax",), regs={"eax": 0}, robin_irvine="B", aliases=("mov ax, cs",),
         exit_sdm="moves from segment registers never exit"),
    Insn("push-cs", "push cs", "pushes the CS selector", "SDM Vol.2 PUSH", None, None, shows=("stack",),
         robin_irvine="B", exit_sdm="PUSH never exits"),
    Insn("mov-ds", "mov ds, bx", "loads DS with selector BX (privilege checks: SDM Vol.3A 5.6)", "SDM Vol.2 MOV",
         None, None, shows=("ds",), variants=({"ebx": DATA0}, {"ebx": DATA3}), robin_irvine="B",
         aliases=("mov ds",), exit_sdm="segment loads never exit"),
    Insn("pop-ds", "push ebx\npop ds", "pops a selector into DS", "SDM Vol.2 POP", None, None, shows=("ds",),
         variants=({"ebx": DATA0}, {"ebx": DATA3}), robin_irvine="B", exit_sdm="POP never exits"),
    # ---------------------------------------------------------------- innocuous controls
    Insn("add", "add eax, ebx", "adds two registers", "SDM Vol.2 ADD", None, None, shows=("eax",),
         regs={"eax": 40, "ebx": 2}, exit_sdm="ordinary instructions never exit"),
    Insn("mov-store", "mov [OUT], eax", "stores a register to memory", "SDM Vol.2 MOV", None, None,
         shows=("out4",), regs={"eax": 0x12345678}, exit_sdm="ordinary instructions never exit"),
]

BY_NAME: dict[str, Insn] = {}
for _i in TABLE:
    BY_NAME[_i.name] = _i
    for _a in _i.aliases:
        BY_NAME[_a] = _i

#: Robin & Irvine's 17 sensitive, unprivileged instructions (reference/theory.md 2a), as this table names them;
#: entries the table does not model are listed with None
ROBIN_IRVINE: dict[str, str | None] = {
    "SGDT": "sgdt", "SIDT": "sidt", "SLDT": "sldt", "SMSW": "smsw", "PUSHF": "pushf", "POPF": "popf",
    "LAR": "lar", "LSL": "lsl", "VERR": "verr", "VERW": "verw", "POP (segment register)": "pop-ds",
    "PUSH (segment register)": "push-cs", "CALL/JMP (far), INT n, RET (far)": "int", "STR": "str",
    "MOV (segment registers)": "mov-from-cs",
}


def lookup(name: str) -> Insn:
    """The table entry for ``name`` (case-insensitive; "mov cr0" and "mov-cr0" both work)."""
    from ..errors import UserError

    key = " ".join(name.lower().split())
    insn = BY_NAME.get(key) or BY_NAME.get(key.replace(" ", "-"))
    if insn is None:
        raise UserError(f"explain {name}: not in the table; choose from {', '.join(i.name for i in TABLE)}")
    return insn


__all__ = ["Insn", "TABLE", "BY_NAME", "ROBIN_IRVINE", "lookup"]
