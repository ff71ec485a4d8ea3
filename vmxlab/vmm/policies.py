"""Exit policies: which instructions and events the VMM makes exit ("as few as possible, but enough").

A policy is the set of VM-execution controls a VMM writes before VMLAUNCH.
Three presets, each a superset of the one before:

* ``minimal`` -- what correctness and isolation need and nothing more: EPT (the
  guest reaches only its own memory), I/O exiting (the guest never touches a
  device the VMM does not emulate), and CPUID, which exits unconditionally
  (SDM Vol.3C 26.1.2).  Everything else the guest does runs without the VMM.
* ``default`` -- what a practical VMM adds: HLT exiting (the VMM waits for the
  guest's next interrupt), external-interrupt exiting (the VMM owns interrupt
  delivery and injects), MSR bitmaps that send MSRs with host-visible effects
  to the VMM's virtual copies.
* ``paranoid`` -- every optional exit on: all exceptions, RDTSC, RDPMC,
  INVLPG, MOV DR, CR3 load/store, CR0/CR4 writes of any bit, every MSR,
  descriptor-table exiting, WBINVD, PAUSE, MONITOR/MWAIT.

Per-control overrides (``--exit NAME=on|off``) change one control of a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UserError
from ..vmx.controls import PIN_BASED_CTLS as PIN
from ..vmx.controls import PRIMARY_PROC_BASED_CTLS as PRI
from ..vmx.controls import SECONDARY_PROC_BASED_CTLS as SEC


@dataclass(frozen=True)
class Exit:
    """One switchable exit: which control field and bit turn it on, and what it is for."""

    name: str
    field: str  # "pin", "primary", "secondary", or a VMM-level setting ("exceptions", "msr", "cr")
    bit: int
    what: str


EXITS: dict[str, Exit] = {e.name: e for e in [
    Exit("external-interrupt", "pin", PIN.EXTERNAL_INTERRUPT_EXITING,
         "device interrupts exit; the VMM acknowledges the PIC and injects (SDM 25.6.1)"),
    Exit("preemption-timer", "pin", PIN.ACTIVATE_VMX_PREEMPTION_TIMER,
         "the VMX-preemption timer gives the VMM a time slice (exit 52)"),
    Exit("hlt", "primary", PRI.HLT_EXITING, "HLT exits (12): the VMM waits for the next interrupt"),
    Exit("invlpg", "primary", PRI.INVLPG_EXITING, "INVLPG exits (14)"),
    Exit("mwait", "primary", PRI.MWAIT_EXITING, "MWAIT exits (36)"),
    Exit("rdpmc", "primary", PRI.RDPMC_EXITING, "RDPMC exits (15)"),
    Exit("rdtsc", "primary", PRI.RDTSC_EXITING, "RDTSC exits (16): the VMM supplies the time"),
    Exit("cr3-load", "primary", PRI.CR3_LOAD_EXITING, "MOV to CR3 exits (28)"),
    Exit("cr3-store", "primary", PRI.CR3_STORE_EXITING, "MOV from CR3 exits (28)"),
    Exit("mov-dr", "primary", PRI.MOV_DR_EXITING, "MOV DR exits (29)"),
    Exit("io", "primary", PRI.UNCONDITIONAL_IO_EXITING, "every IN/OUT/INS/OUTS exits (30)"),
    Exit("monitor", "primary", PRI.MONITOR_EXITING, "MONITOR exits (39)"),
    Exit("pause", "primary", PRI.PAUSE_EXITING, "PAUSE exits (40)"),
    Exit("descriptor-table", "secondary", SEC.DESCRIPTOR_TABLE_EXITING,
         "LGDT/LIDT/SGDT/SIDT (46) and LLDT/LTR/SLDT/STR (47) exit: the VMM keeps virtual copies"),
    Exit("wbinvd", "secondary", SEC.WBINVD_EXITING, "WBINVD exits (54)"),
    Exit("exceptions", "exceptions", 0xFFFFFFFF, "every guest exception exits (0); the VMM reflects it"),
    Exit("msr", "msr", 1, "every RDMSR/WRMSR exits (31/32) instead of only those in the MSR bitmaps"),
    Exit("cr", "cr", 1, "any CR0/CR4 bit the guest writes exits (28), not only those the VMM owns"),
]}


@dataclass(frozen=True)
class Policy:
    name: str
    pin: int = 0
    primary: int = 0
    secondary: int = 0
    exception_bitmap: int = 0
    msr_all: bool = False  # True: no MSR bitmaps (every RDMSR/WRMSR exits)
    msr_bitmaps: bool = True  # False with msr_all False: no MSR exits at all (bitmaps all zero)
    cr_all: bool = False  # True: CR0/CR4 guest/host masks cover every bit
    shadow_tables: bool = False  # run the guest on VMM-owned copies of its GDT/IDT
    #: a software VMM's view (what binary translation gave): the VMM intercepts the guest kernel's
    #: LGDT/LIDT, but SGDT/SIDT run natively -- emulated by turning descriptor-table exiting off
    #: once both tables were loaded
    intercept_loads_only: bool = False
    description: str = ""
    overrides: tuple[str, ...] = field(default=())

    def enabled(self, name: str) -> bool:
        e = EXITS[name]
        if e.field == "exceptions":
            return self.exception_bitmap == 0xFFFFFFFF
        if e.field == "msr":
            return self.msr_all
        if e.field == "cr":
            return self.cr_all
        return bool(getattr(self, e.field) & e.bit)

    def with_exit(self, name: str, on: bool) -> Policy:
        if name not in EXITS:
            raise UserError(f"--exit {name}: unknown exit; choose from {', '.join(EXITS)}")
        e = EXITS[name]
        note = f"{name}={'on' if on else 'off'}"
        if e.field == "exceptions":
            return replace(self, exception_bitmap=0xFFFFFFFF if on else 0, overrides=(*self.overrides, note))
        if e.field == "msr":
            return replace(self, msr_all=on, overrides=(*self.overrides, note))
        if e.field == "cr":
            return replace(self, cr_all=on, overrides=(*self.overrides, note))
        value = getattr(self, e.field)
        value = value | e.bit if on else value & ~e.bit
        return replace(self, **{e.field: value}, overrides=(*self.overrides, note))

    def summary(self) -> str:
        on = [n for n in EXITS if self.enabled(n)]
        extra = f" (overrides: {', '.join(self.overrides)})" if self.overrides else ""
        return f"{self.name}: {', '.join(on) or 'no optional exits'}{extra}"


MINIMAL = Policy(
    "minimal", primary=PRI.UNCONDITIONAL_IO_EXITING, msr_bitmaps=True,
    description="isolation only: EPT, I/O exiting, CPUID (always)")
DEFAULT = Policy(
    "default", pin=PIN.EXTERNAL_INTERRUPT_EXITING,
    primary=PRI.UNCONDITIONAL_IO_EXITING | PRI.HLT_EXITING,
    description="minimal + HLT, external interrupts, MSRs with host-visible effects")
PARANOID = Policy(
    "paranoid", pin=PIN.EXTERNAL_INTERRUPT_EXITING,
    primary=(PRI.UNCONDITIONAL_IO_EXITING | PRI.HLT_EXITING | PRI.INVLPG_EXITING | PRI.MWAIT_EXITING
             | PRI.RDPMC_EXITING | PRI.RDTSC_EXITING | PRI.CR3_LOAD_EXITING | PRI.CR3_STORE_EXITING
             | PRI.MOV_DR_EXITING | PRI.MONITOR_EXITING | PRI.PAUSE_EXITING),
    secondary=SEC.DESCRIPTOR_TABLE_EXITING | SEC.WBINVD_EXITING,
    exception_bitmap=0xFFFFFFFF, msr_all=True, cr_all=True, shadow_tables=True,
    description="every optional exit on")

PRESETS = {p.name: p for p in (MINIMAL, DEFAULT, PARANOID)}


def policy_from_options(name: str, overrides: list[str]) -> Policy:
    """``--policy NAME`` plus ``--exit CONTROL=on|off`` items."""
    if name not in PRESETS:
        raise UserError(f"--policy {name}: choose from {', '.join(PRESETS)}")
    policy = PRESETS[name]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or value not in ("on", "off"):
            raise UserError(f"--exit {item}: expected NAME=on or NAME=off, e.g. --exit hlt=off")
        policy = policy.with_exit(key, value == "on")
    if policy.secondary & SEC.DESCRIPTOR_TABLE_EXITING:
        policy = replace(policy, shadow_tables=True)
    return policy
