"""Hot-block compiler (placeholder until the code generator lands): never compiles."""

from __future__ import annotations


class Compiler:
    def __init__(self, cpu) -> None:
        self.cpu = cpu

    def compile(self, blk):
        blk.hits = -(1 << 30)
        return None
