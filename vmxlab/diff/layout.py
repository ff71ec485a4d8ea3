"""The address map both targets of the differential harness share.

Both the software CPU (32-bit protected mode, 32-bit paging) and the KVM vCPU
(long mode, 4-level paging; see :mod:`vmxlab.diff.kvm_target` for why) run a
sequence at CPL 3 with the same linear addresses, the same page permissions and
the same page contents, so every load, store and page fault lands on the same
linear address on both.  Linear = physical for every present page except
:data:`EXIT_PAGE`.

Ring 0 exists only to catch exceptions: each of the 32 IDT vectors points at a
stub ``hlt; jmp $-1`` at ``HANDLERS + 16 * vector``; the run stops there and the
harness reads the exception frame from the ring-0 stack (SDM Vol.3A 6.12.1,
Figure 6-4; 64-bit: Vol.3A 6.14.2).
"""

from __future__ import annotations

PAGE = 0x1000

GDT = 0x001000
IDT = 0x002000
TSS = 0x003000
STACK0_TOP = 0x008000  # ring-0 stack: 0x4000..0x7FFF (TSS.ESP0 / RSP0)
HANDLERS = 0x009000  # 32 exception stubs, 16 bytes apart
HANDLER_STRIDE = 16
HANDLER_STUB = bytes([0xF4, 0xEB, 0xFD])  # hlt; jmp short back to the hlt
PAGE_TABLES = 0x010000  # each target builds its own paging structures from here

DATA = 0x101000  # user, read/write: memory operands and string buffers; compared
STACK = 0x102000  # user, read/write: ESP starts in the middle; compared
STACK_ESP = STACK + 0x800
RO_PAGE = 0x103000  # user, read-only: a store faults #PF(P|W|U)
NP_PAGE = 0x104000  # not present: any access faults #PF(W|U)
EXIT_PAGE = 0x105000  # user, read/write, mapped to EXIT_GPA: the store that ends a sequence
CODE = 0x1F0000  # user, read-only: the program.  Its bytes differ per target (32- vs 64-bit code), so
#                 it sits far from the pages programs address, where loads cannot reach it by accident
EXIT_GPA = 0x3F000000  # outside RAM: an MMIO exit on KVM, an MMIO device on the software CPU
SUPERVISOR_PAGE = HANDLERS  # present, supervisor-only: a user access faults #PF(P|U)

RAM_SIZE = 0x200000  # 2 MiB on both targets

#: linear page -> (physical page, user, writable) for every present page; all else is not present
USER_PAGES: dict[int, tuple[int, bool]] = {
    CODE: (CODE, False),
    DATA: (DATA, True),
    STACK: (STACK, True),
    RO_PAGE: (RO_PAGE, False),
    EXIT_PAGE: (EXIT_GPA, True),
}
SUPERVISOR_LIMIT = 0x100000  # [0, 1 MiB) is mapped present, supervisor, writable on both targets

#: page-table entry bits, the same in 32-bit and 4-level paging (SDM Vol.3A 4.3 Table 4-6, 4.5 Table 4-19)
PTE_P, PTE_RW, PTE_US = 1, 2, 4
PTE_TABLE = PTE_P | PTE_RW | PTE_US  # a non-leaf entry allows everything: the leaf decides


def page_table_entries(count: int) -> list[int]:
    """The one last-level page table both targets map the first 2 MiB with (``count`` = 1024 32-bit or
    512 64-bit entries): one source, so the two CPUs see the same permissions on every page."""
    entries = [0] * count
    for page in range(0, SUPERVISOR_LIMIT, PAGE):
        entries[page >> 12] = page | PTE_P | PTE_RW
    for la, (pa, writable) in USER_PAGES.items():
        entries[la >> 12] = pa | PTE_P | PTE_US | (PTE_RW if writable else 0)
    return entries

#: compared pages (the sequence may write them)
COMPARED = (DATA, STACK)

# Selectors.  The 32-bit target: flat code/data at DPL 0 and 3, a 32-bit TSS.
SEL_KCODE = 0x08
SEL_KDATA = 0x10
SEL_UCODE32 = 0x1B
SEL_UDATA = 0x23
SEL_UCODE64 = 0x2B
SEL_TSS = 0x30

#: vectors that push an error code (SDM Vol.3A 6.3.1, Table 6-1)
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


def handler_vector(eip_after_hlt: int) -> int | None:
    """The vector whose stub halted, from the address after its ``hlt``; None if not a stub."""
    off = eip_after_hlt - 1 - HANDLERS
    if 0 <= off < 32 * HANDLER_STRIDE and off % HANDLER_STRIDE == 0:
        return off // HANDLER_STRIDE
    return None
