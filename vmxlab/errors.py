"""Errors that reach the user as one line and an exit status, never as a traceback (DESIGN.md)."""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: an image, an option, a VMCS value.  The message names the problem
    and, where there is one, the fix."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.status = status
