"""Identity-mapping page tables for the 64-bit entry (4-level paging, 2 MiB pages).

boot.rst "64-bit BOOT PROTOCOL": "the range with setup_header.init_size from start address of
loaded kernel and zero page and command line buffer get ident mapping".  vmxlab maps the first
4 GiB one-to-one, which covers the kernel, the zero page, the command line and the initrd.

Format: SDM Vol.3A 4.5 "4-Level Paging and 5-Level Paging": a PML4 entry points at a page-
directory-pointer table (Table 4-15), a PDPTE at a page directory (Table 4-17), and a PDE with
PS = 1 maps a 2 MiB page (Table 4-18).  Bits used: P (0), R/W (1), PS (7).
"""

from __future__ import annotations

import struct

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_PS = 1 << 7
PAGE_2M = 1 << 21
GiB = 1 << 30


def identity_map(base: int, gib: int = 4) -> tuple[int, dict[int, bytes]]:
    """Tables at ``base`` (PML4), ``base + 0x1000`` (PDPT), then one page directory per GiB.

    Returns CR3 and the pages to write, by guest-physical address.
    """
    if gib < 1 or gib > 512:
        raise ValueError("1 to 512 GiB")
    pml4_addr, pdpt_addr = base, base + 0x1000
    pages: dict[int, bytes] = {}
    pml4 = bytearray(4096)
    struct.pack_into("<Q", pml4, 0, pdpt_addr | PTE_P | PTE_RW)
    pages[pml4_addr] = bytes(pml4)
    pdpt = bytearray(4096)
    for g in range(gib):
        pd_addr = base + 0x2000 + g * 0x1000
        struct.pack_into("<Q", pdpt, 8 * g, pd_addr | PTE_P | PTE_RW)
        pd = bytearray(4096)
        for i in range(512):
            struct.pack_into("<Q", pd, 8 * i, (g * GiB + i * PAGE_2M) | PTE_P | PTE_RW | PTE_PS)
        pages[pd_addr] = bytes(pd)
    pages[pdpt_addr] = bytes(pdpt)
    return pml4_addr, pages


def walk(read_u64, cr3: int, linear: int) -> int | None:
    """Translate ``linear`` through the tables (for tests): 4 KiB, 2 MiB or 1 GiB leaves."""
    pml4e = read_u64((cr3 & ~0xFFF) + 8 * ((linear >> 39) & 0x1FF))
    if not pml4e & PTE_P:
        return None
    pdpte = read_u64((pml4e & 0x000FFFFFFFFFF000) + 8 * ((linear >> 30) & 0x1FF))
    if not pdpte & PTE_P:
        return None
    if pdpte & PTE_PS:
        return (pdpte & 0x000FFFFFC0000000) | (linear & (GiB - 1))
    pde = read_u64((pdpte & 0x000FFFFFFFFFF000) + 8 * ((linear >> 21) & 0x1FF))
    if not pde & PTE_P:
        return None
    if pde & PTE_PS:
        return (pde & 0x000FFFFFFFE00000) | (linear & (PAGE_2M - 1))
    pte = read_u64((pde & 0x000FFFFFFFFFF000) + 8 * ((linear >> 12) & 0x1FF))
    if not pte & PTE_P:
        return None
    return (pte & 0x000FFFFFFFFFF000) | (linear & 0xFFF)
