"""Put a Linux kernel, an initrd and a command line into guest memory for the 64-bit boot protocol.

Source: Documentation/arch/x86/boot.rst (boot.rst), "64-bit BOOT PROTOCOL":

    "the kernel is loaded and ... the boot loader ... jumps to the 64-bit entry point ... At entry,
    the CPU must be in 64-bit mode with paging enabled.  The range with setup_header.init_size
    from start address of loaded kernel and zero page and command line buffer get ident mapping;
    a GDT must be loaded with the descriptors for selectors __BOOT_CS(0x10) and __BOOT_DS(0x18);
    both descriptors must be 4G flat segment; __BOOT_CS must have execute/read permission, and
    __BOOT_DS must have read/write permission; CS must be __BOOT_CS and DS, ES, SS must be
    __BOOT_DS; interrupt must be disabled; %rsi must hold the base address of the struct
    boot_params."

Guest-physical layout (Firecracker's, kvm.md §2.3, with the GDT of boot.rst):

=============  ==================================================================
0x500          GDT: null, null, 0x10 64-bit code, 0x18 data (boot.rst selectors)
0x7000         zero page (struct boot_params)
0x8FF0         initial stack (not required by the protocol; the kernel sets its own)
0x9000         PML4, PDPT, 4 page directories: identity map of 4 GiB in 2 MiB pages
0x20000        kernel command line (<= cmdline_size + 1 bytes)
0x100000       bzImage protected-mode kernel (``entry="bzimage"``), entry at +0x200
0x1000000      or: the vmlinux PT_LOAD segments at their p_paddr (``entry="vmlinux"``)
top of RAM     initrd, page-aligned, below initrd_addr_max
=============  ==================================================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import UserError
from ..machine.machine import Machine
from .bootparams import build_zero_page, e820_map
from .bzimage import BZIMAGE_64BIT_ENTRY_OFFSET, XLF_KERNEL_64, SetupHeader, extract_vmlinux, parse_setup_header
from .pagetables import identity_map

GDT_ADDR = 0x500
ZERO_PAGE_ADDR = 0x7000
STACK_TOP = 0x8FF0
PAGE_TABLES_ADDR = 0x9000
CMDLINE_ADDR = 0x20000
BZIMAGE_LOAD_ADDR = 0x100000

BOOT_CS = 0x10  # __BOOT_CS
BOOT_DS = 0x18  # __BOOT_DS
#: descriptors (SDM Vol.3A 3.4.5): 64-bit code (L = 1, D = 0), execute/read, accessed; data read/write
BOOT_GDT = [0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF]

#: kernel parameters vmxlab always passes (Documentation/admin-guide/kernel-parameters.txt):
#: the serial console on the 16550 at 0x3F8, reset through the i8042 (reboot=k: port 0x64 <- 0xFE),
#: no ACPI and no PCI (the machine has neither), one CPU, a panic reboots at once (and so ends the
#: VM), and no port-0x80 write after each PIC/PIT access (io_delay=none: each would be a VM exit).
BASE_CMDLINE = ("console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 acpi=off pci=off nosmp "
                "io_delay=none")

#: for hosts where ring-0 code runs in KVM's instruction emulator (PVM, kvm.md §0 and §2.6): keep
#: the kernel away from instructions the emulator lacks and from work that is slow there --
#: noxsave (XSAVE/XRSTOR, and with it AVX), nofsgsbase, nopku; clearcpuid= numbers are
#: X86_FEATURE_* bits (word * 32 + bit, arch/x86/include/asm/cpufeatures.h): 129 PCLMULQDQ,
#: 137 SSSE3 (blake2s_compress_ssse3, the `movq %rcx,%xmm15` that stopped kvm.md §2.6), 141 CX16,
#: 147/148 SSE4.1/4.2, 151 POPCNT, 153 AES, 158 RDRAND, 295 SMEP, 306 RDSEED, 308 SMAP, 514 UMIP,
#: 534 RDPID; init_on_alloc=0 (Debian zeroes every allocated page by default), cryptomgr.notests
#: (no crypto self-tests), mitigations=off, no watchdogs, no audit, no KASLR (a vmlinux is not
#: relocated anyway), rodata=off (skips the W+X page-table walk, 77 s in the emulator here), and two
#: initcalls that only prepare tracing and took 68 s and 45 s here (measured with initcall_debug).
EMULATOR_FRIENDLY_CMDLINE = ("noxsave nofsgsbase nopku clearcpuid=129,137,141,147,148,151,153,158,295,306,308,"
                             "514,534 init_on_alloc=0 cryptomgr.notests mitigations=off nowatchdog nosoftlockup "
                             "audit=0 nokaslr tsc=reliable 8250.nr_uarts=1 rodata=off "
                             "initcall_blacklist=trace_eval_init,init_kprobe_trace")

PAGE = 4096


@dataclass
class LinuxBoot:
    """Where everything went, and the 64-bit entry state (the input of ``apply_long_mode``)."""

    header: SetupHeader
    entry_kind: str  # "vmlinux" or "bzimage"
    rip: int
    kernel_start: int
    kernel_end: int
    zero_page: bytes
    cmdline: str
    initrd_addr: int
    initrd_size: int
    cr3: int

    def long_mode_state(self):
        from ..backends.kvm.entry import LongModeState

        return LongModeState(rip=self.rip, cr3=self.cr3, gdt_base=GDT_ADDR, gdt=BOOT_GDT, cs=BOOT_CS, ds=BOOT_DS,
                             regs={"rsi": ZERO_PAGE_ADDR, "rsp": STACK_TOP, "rbp": STACK_TOP})


def load_linux(machine: Machine, image: bytes, *, initrd: bytes | None = None, cmdline: str = "",
               entry: str = "vmlinux") -> LinuxBoot:
    """Load ``image`` (a bzImage) and ``initrd`` into ``machine`` and build the zero page."""
    mem = machine.memory
    header = parse_setup_header(image)
    if not header.xloadflags & XLF_KERNEL_64:
        raise UserError("this bzImage has no 64-bit entry point (xloadflags bit 0, XLF_KERNEL_64)")
    if entry == "vmlinux":
        vm = extract_vmlinux(image, header)
        start, end, rip = vm.start, vm.end, vm.entry
        _check_fits(mem.size, end, "the vmlinux")
        for seg in vm.segments:
            mem.write_bytes(seg.paddr, seg.data)
            if seg.memsz > len(seg.data):
                mem.write_bytes(seg.paddr + len(seg.data), bytes(seg.memsz - len(seg.data)))
    elif entry == "bzimage":
        pm = image[header.setup_size :]
        start = BZIMAGE_LOAD_ADDR
        # the decompressor needs init_size bytes from its load address (boot.rst "init_size")
        end = start + max(len(pm), header.init_size)
        _check_fits(mem.size, end, "the bzImage and its init_size")
        mem.write_bytes(start, pm)
        rip = start + BZIMAGE_64BIT_ENTRY_OFFSET
    else:
        raise UserError(f"--entry {entry}: expected vmlinux or bzimage")

    # command line: NUL-terminated, at most cmdline_size bytes (boot.rst "cmdline_size")
    raw = cmdline.encode()
    if len(raw) > header.cmdline_size:
        raise UserError(f"the kernel command line has {len(raw)} bytes; this kernel takes at most "
                        f"{header.cmdline_size}")
    mem.write_bytes(CMDLINE_ADDR, raw + b"\0")

    initrd_addr = initrd_size = 0
    if initrd:
        initrd_size = len(initrd)
        limit = min(mem.size, header.initrd_addr_max + 1)
        initrd_addr = (limit - initrd_size) & ~(PAGE - 1)
        if initrd_addr < end:
            raise UserError(f"the initrd ({initrd_size >> 10} KiB) does not fit above the kernel in "
                            f"{mem.size >> 20} MiB of RAM; use a larger --mem")
        mem.write_bytes(initrd_addr, initrd)

    zp = build_zero_page(image, header, cmdline_addr=CMDLINE_ADDR, initrd_addr=initrd_addr,
                         initrd_size=initrd_size, e820=e820_map(mem.size))
    mem.write_bytes(ZERO_PAGE_ADDR, zp)
    mem.write_bytes(GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT))
    cr3, pages = identity_map(PAGE_TABLES_ADDR, 4)
    for addr, page in pages.items():
        mem.write_bytes(addr, page)
    return LinuxBoot(header, entry, rip, start, end, zp, cmdline, initrd_addr, initrd_size, cr3)


def _check_fits(ram: int, end: int, what: str) -> None:
    if end > ram:
        raise UserError(f"{what} needs RAM up to {end >> 20} MiB; this VM has {ram >> 20} MiB (use --mem)")


#: MSRs a 64-bit boot loader sets (Firecracker arch/x86_64/msr.rs create_boot_msr_entries, kvmtool
#: kvm_cpu__setup_msrs; kvm.md §2.2 step 8): SYSENTER/SYSCALL MSRs cleared, TSC = 0,
#: IA32_MISC_ENABLE.FAST_STRING (SDM Vol.4 Table 2-2), MTRRdefType = enabled, write-back default.
BOOT_MSRS = {
    0x174: 0, 0x175: 0, 0x176: 0,  # IA32_SYSENTER_CS/ESP/EIP
    0xC0000081: 0, 0xC0000082: 0, 0xC0000083: 0, 0xC0000084: 0,  # STAR, LSTAR, CSTAR, SFMASK
    0xC0000102: 0,  # IA32_KERNEL_GS_BASE
    0x10: 0,  # IA32_TIME_STAMP_COUNTER
    0x1A0: 1,  # IA32_MISC_ENABLE: fast strings
    0x2FF: (1 << 11) | 6,  # IA32_MTRR_DEF_TYPE: E = 1, type WB
}
