"""Placeholder: segment/protection system instructions (LTR STR LLDT SLDT LAR LSL VERR VERW ARPL,
SYSENTER/SYSEXIT), filled in by the protection work (issue 3)."""
