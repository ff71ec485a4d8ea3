"""Translated basic blocks and their cache (DESIGN.md speed rules 1, 2 and 7).

A :class:`Block` is a run of decoded instructions starting at one physical
address, each turned into a handler closure once.  Blocks are keyed by
``physical address << 3 | cpu.mode_key`` so they survive CR3 switches and are
never reused across 16/32-bit code or stack sizes.

Self-modifying code: every physical page a block was decoded from is in
``memory.code_pages``; stores into those pages never hit the fast write path
(see core.py), and :meth:`BlockCache.invalidate_range` drops exactly the blocks
whose bytes overlap the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import CPU

Handler = Callable[["CPU"], None]


class Block:
    """One translated block.

    ``eips[i]`` is the EIP of instruction i (a fault there is reported with it);
    ``end_eip`` is the fall-through EIP.  ``instrs`` keeps the decoded iced
    instructions for disassembly in traces and for the hot-block compiler.
    """

    __slots__ = ("pa", "key", "ops", "eips", "n", "end_eip", "instrs", "ranges", "hits", "fast",
                 "valid", "page2_la", "page2_pa", "nbytes", "regions")

    def __init__(self, pa: int, key: int) -> None:
        self.pa = pa
        self.key = key
        self.ops: list[Handler] = []
        self.eips: list[int] = []
        self.instrs: list = []
        self.n = 0
        self.end_eip = 0
        self.nbytes = 0
        #: physical byte ranges [start, end) the block was decoded from (two when it crosses a page)
        self.ranges: list[tuple[int, int]] = []
        self.hits = 0
        #: compiled fast version (codegen.py), or None
        self.fast = None
        self.valid = True
        #: for a block whose last instruction crosses into the next page: that page's linear/physical
        self.page2_la: int | None = None
        self.page2_pa: int | None = None
        #: head blocks whose compiled region function includes this block's code
        self.regions: list[Block] = []

    def overlaps(self, pa: int, size: int) -> bool:
        end = pa + size
        return any(s < end and pa < e for s, e in self.ranges)

    def __repr__(self) -> str:
        return f"Block(pa={self.pa:#x}, n={self.n}, end_eip={self.end_eip:#x})"


#: default bound on cached blocks (``vmxlab run --block-cache N``).  A cached block -- decoded
#: instructions, closures and, once hot, its compiled function -- takes ~7 KB (measured with tracemalloc
#: on bench/kernel_mix.asm, where most blocks are hot), so the default caps the cache near 110 MiB; the
#: bundled guests use a few hundred blocks
DEFAULT_MAX_BLOCKS = 16384


class BlockCache:
    """Blocks by key, plus the reverse map from physical page to blocks for invalidation.

    Bounded: when ``max_blocks`` are cached the whole cache is dropped and refilled on demand (what
    QEMU does when its translation buffer is full) -- simpler than LRU and, for a working set that
    fits, never triggered.  ``flushes`` counts how often it happened.
    """

    def __init__(self, cpu: CPU, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        self.cpu = cpu
        self.memory = cpu.memory
        self.max_blocks = max_blocks
        self.blocks: dict[int, Block] = {}
        self.by_page: dict[int, list[Block]] = {}
        #: per code page, a byte map of which bytes some block was decoded from (1 = code), so a
        #: store next to code -- data in the same page -- is dismissed with one slice test
        self.code_bytes: dict[int, bytearray] = {}
        self.memory.on_code_write = self._on_code_write
        self.translations = 0
        self.invalidations = 0
        self.flushes = 0

    def get(self, key: int) -> Block | None:
        return self.blocks.get(key)

    def add(self, blk: Block) -> None:
        if len(self.blocks) >= self.max_blocks:
            self.clear()
            self.flushes += 1
        self.blocks[blk.key] = blk
        new_page = False
        for start, end in blk.ranges:
            page = start >> 12
            mask = self.code_bytes.get(page)
            if mask is None:
                mask = self.code_bytes[page] = bytearray(4096)
            lo, hi = start & 0xFFF, (end - 1 & 0xFFF) + 1
            mask[lo:hi] = b"\x01" * (hi - lo)
            for page in range(start >> 12, ((end - 1) >> 12) + 1):
                self.by_page.setdefault(page, []).append(blk)
                if page not in self.memory.code_pages:
                    self.memory.code_pages.add(page)
                    new_page = True
        if new_page:
            self.cpu.tlb_drop_writes()
        self.translations += 1

    def _on_code_write(self, addr: int, size: int) -> None:
        """A store touched a page holding code (a device, a loader, the CPU's slow path): drop exactly
        the blocks whose bytes it overwrote -- data next to code in the same page stays cheap."""
        self.invalidate_range(addr, size)

    def invalidate_range(self, pa: int, size: int) -> None:
        for page in range(pa >> 12, ((pa + size - 1) >> 12) + 1):
            blocks = self.by_page.get(page)
            if not blocks:
                continue
            mask = self.code_bytes.get(page)
            if mask is not None:
                lo = max(pa, page << 12) & 0xFFF
                hi = min(pa + size, (page + 1) << 12) - (page << 12)
                if not any(mask[lo:hi]):
                    continue  # data beside code: no block was decoded from these bytes
            hit = [b for b in blocks if b.overlaps(pa, size)]
            for b in hit:
                self._drop(b)

    def invalidate_page(self, page: int) -> None:
        for b in list(self.by_page.get(page, ())):
            self._drop(b)

    def _drop(self, blk: Block) -> None:
        if not blk.valid:
            return
        blk.valid = False
        for head in blk.regions:  # compiled regions that inlined this block's code are stale too
            head.fast = None
            head.hits = 0
        self.invalidations += 1
        if self.blocks.get(blk.key) is blk:
            del self.blocks[blk.key]
        for start, end in blk.ranges:
            for page in range(start >> 12, ((end - 1) >> 12) + 1):
                lst = self.by_page.get(page)
                if lst is not None:
                    if blk in lst:
                        lst.remove(blk)
                    if not lst:
                        del self.by_page[page]
                        self.code_bytes.pop(page, None)
                        self.memory.code_pages.discard(page)

    def clear(self) -> None:
        for blk in self.blocks.values():
            blk.valid = False
        self.blocks.clear()
        self.by_page.clear()
        self.code_bytes.clear()
        self.memory.code_pages.clear()
