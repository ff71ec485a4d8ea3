"""Placeholder: filled in by the integer-instruction-set work (see issue 2)."""
