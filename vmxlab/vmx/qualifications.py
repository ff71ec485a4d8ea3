"""Exit qualifications and information fields as typed values (SimpleVisor style).

Each format of SDM Vol.3C 28.2.1 ("Basic VM-Exit Information", Tables 28-1 to
28-7; older editions 27.2.1) and of the VM-exit instruction-information field
(28.2.5, Tables 28-8 to 28-14) is a frozen dataclass with ``decode(raw)`` and
``encode()``: handlers read ``q.control_register`` and ``q.access_type``
instead of shifting and masking, and the CPU side builds the raw value from
the same definition, so the two can never disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .exit_reasons import ExitReason


def _bits(raw: int, hi: int, lo: int) -> int:
    return (raw >> lo) & ((1 << (hi - lo + 1)) - 1)


# --------------------------------------------------------------------- control-register access (28)


class CrAccessType(enum.IntEnum):
    """Exit-qualification bits 5:4 for control-register accesses (SDM Vol.3C Table 28-3)."""

    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


@dataclass(frozen=True)
class ControlRegisterAccess:
    """Exit reason 28 (SDM Vol.3C Table 28-3, "Exit Qualification for Control-Register Accesses").

    ``general_purpose_register`` uses the register encoding 0 EAX .. 7 EDI.
    For LMSW, ``lmsw_operand_memory`` says the operand was in memory (the
    guest-linear address field then holds its address) and ``lmsw_source_data``
    is the 16-bit source.
    """

    control_register: int
    access_type: CrAccessType
    general_purpose_register: int = 0
    lmsw_operand_memory: bool = False
    lmsw_source_data: int = 0

    @classmethod
    def decode(cls, raw: int) -> ControlRegisterAccess:
        return cls(
            control_register=_bits(raw, 3, 0),
            access_type=CrAccessType(_bits(raw, 5, 4)),
            general_purpose_register=_bits(raw, 11, 8),
            lmsw_operand_memory=bool(_bits(raw, 6, 6)),
            lmsw_source_data=_bits(raw, 31, 16),
        )

    def encode(self) -> int:
        return (
            self.control_register & 0xF
            | (int(self.access_type) & 3) << 4
            | int(self.lmsw_operand_memory) << 6
            | (self.general_purpose_register & 0xF) << 8
            | (self.lmsw_source_data & 0xFFFF) << 16
        )


# --------------------------------------------------------------------- MOV DR (29)


@dataclass(frozen=True)
class MovDrQualification:
    """Exit reason 29 (SDM Vol.3C Table 28-4): DR number, direction (bit 4: 1 = MOV from DR), GPR."""

    debug_register: int
    from_dr: bool
    general_purpose_register: int

    @classmethod
    def decode(cls, raw: int) -> MovDrQualification:
        return cls(_bits(raw, 2, 0), bool(_bits(raw, 4, 4)), _bits(raw, 11, 8))

    def encode(self) -> int:
        return self.debug_register & 7 | int(self.from_dr) << 4 | (self.general_purpose_register & 0xF) << 8


# --------------------------------------------------------------------- I/O instruction (30)

#: size of access -> exit-qualification bits 2:0 (SDM Vol.3C Table 28-5: 0 = 1 byte, 1 = 2 bytes, 3 = 4 bytes)
IO_SIZE_CODE = {1: 0, 2: 1, 4: 3}
IO_SIZE_FROM_CODE = {v: k for k, v in IO_SIZE_CODE.items()}


@dataclass(frozen=True)
class IoQualification:
    """Exit reason 30 (SDM Vol.3C Table 28-5, "Exit Qualification for I/O Instructions")."""

    size: int  # bytes: 1, 2 or 4
    direction_in: bool  # bit 3: 1 = IN
    string: bool  # bit 4: INS/OUTS
    rep: bool  # bit 5: REP prefixed
    immediate: bool  # bit 6: 1 = port number in an immediate, 0 = in DX
    port: int  # bits 31:16

    @classmethod
    def decode(cls, raw: int) -> IoQualification:
        return cls(
            IO_SIZE_FROM_CODE.get(_bits(raw, 2, 0), 0),
            bool(_bits(raw, 3, 3)),
            bool(_bits(raw, 4, 4)),
            bool(_bits(raw, 5, 5)),
            bool(_bits(raw, 6, 6)),
            _bits(raw, 31, 16),
        )

    def encode(self) -> int:
        return (
            IO_SIZE_CODE[self.size]
            | int(self.direction_in) << 3
            | int(self.string) << 4
            | int(self.rep) << 5
            | int(self.immediate) << 6
            | (self.port & 0xFFFF) << 16
        )


# --------------------------------------------------------------------- EPT violation (48)


@dataclass(frozen=True)
class EptViolationQualification:
    """Exit reason 48 (SDM Vol.3C Table 28-7, "Exit Qualification for EPT Violations").

    Bits 0-2: the access (data read, data write, instruction fetch).  Bits 3-5:
    the AND of the R/W/X bits of the EPT entries used (0 when an entry was not
    present).  Bit 7: the guest-linear address field is valid (every access
    except the PDPTE loads of MOV to CR3/CR0/CR4).  Bit 8 (if bit 7): 1 = the
    access was to the translated linear address, 0 = to a guest paging-structure
    entry.  Bit 12: NMI unblocking due to IRET.  This model does not report the
    "advanced" bits 9-11 (IA32_VMX_EPT_VPID_CAP bit 22 = 0).
    """

    read: bool
    write: bool
    fetch: bool
    readable: bool
    writable: bool
    executable: bool
    linear_address_valid: bool
    translated_access: bool
    nmi_unblocking: bool = False

    @classmethod
    def decode(cls, raw: int) -> EptViolationQualification:
        b = [bool(raw >> i & 1) for i in range(13)]
        return cls(b[0], b[1], b[2], b[3], b[4], b[5], b[7], b[8], b[12])

    def encode(self) -> int:
        return (
            int(self.read)
            | int(self.write) << 1
            | int(self.fetch) << 2
            | int(self.readable) << 3
            | int(self.writable) << 4
            | int(self.executable) << 5
            | int(self.linear_address_valid) << 7
            | int(self.translated_access and self.linear_address_valid) << 8
            | int(self.nmi_unblocking) << 12
        )


# --------------------------------------------------------------------- task switch (9)


class TaskSwitchSource(enum.IntEnum):
    """Exit-qualification bits 31:30 for task switches (SDM Vol.3C Table 28-2)."""

    CALL = 0
    IRET = 1
    JMP = 2
    TASK_GATE_IN_IDT = 3


@dataclass(frozen=True)
class TaskSwitchQualification:
    """Exit reason 9 (SDM Vol.3C Table 28-2): selector of the TSS switched to, and the source."""

    selector: int
    source: TaskSwitchSource

    @classmethod
    def decode(cls, raw: int) -> TaskSwitchQualification:
        return cls(_bits(raw, 15, 0), TaskSwitchSource(_bits(raw, 31, 30)))

    def encode(self) -> int:
        return self.selector & 0xFFFF | int(self.source) << 30


# --------------------------------------------------------------------- interruption information


class InterruptionType(enum.IntEnum):
    """Bits 10:8 of the interruption-information fields (SDM Vol.3C 25.8.3 Table 25-17, 25.9.2).

    The values equal :class:`vmxlab.cpu.interrupts.EventKind` (the CPU uses the VMX numbering)."""

    EXTERNAL_INTERRUPT = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    OTHER_EVENT = 7


#: interruption types reserved in the VM-entry interruption-information field on this model
#: (1 is always reserved; 7 "other event" needs the monitor trap flag, SDM Vol.3C 27.2.1.3)
INTERRUPTION_TYPE_RESERVED = 1

#: types whose delivery needs the VM-entry instruction length (INT n, INT1, INT3/INTO)
SOFTWARE_TYPES = frozenset(
    {
        InterruptionType.SOFTWARE_INTERRUPT,
        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
        InterruptionType.SOFTWARE_EXCEPTION,
    }
)

INTERRUPTION_VALID = 1 << 31
INTERRUPTION_ERROR_CODE_VALID = 1 << 11
INTERRUPTION_NMI_UNBLOCKING = 1 << 12
INTERRUPTION_RESERVED = 0x7FFFF000  # bits 30:12 of the VM-entry field (SDM Vol.3C 27.2.1.3)


@dataclass(frozen=True)
class InterruptionInfo:
    """VM-entry / VM-exit interruption information and IDT-vectoring information (SDM Vol.3C
    Table 25-17 "Format of the VM-Entry Interruption-Information Field", Table 25-19, 25-20).

    ``type`` is an int (not only :class:`InterruptionType`) so that a reserved
    type read from a VMCS still decodes and the entry checks can name it.
    """

    vector: int
    type: int
    error_code_valid: bool = False
    valid: bool = True
    nmi_unblocking: bool = False

    @classmethod
    def decode(cls, raw: int) -> InterruptionInfo:
        t: int = _bits(raw, 10, 8)
        if t in InterruptionType._value2member_map_:
            t = InterruptionType(t)
        return cls(
            _bits(raw, 7, 0),
            t,
            bool(raw & INTERRUPTION_ERROR_CODE_VALID),
            bool(raw & INTERRUPTION_VALID),
            bool(raw & INTERRUPTION_NMI_UNBLOCKING),
        )

    def encode(self) -> int:
        return (
            self.vector & 0xFF
            | (int(self.type) & 7) << 8
            | int(self.error_code_valid) << 11
            | int(self.nmi_unblocking) << 12
            | int(self.valid) << 31
        )

    def __str__(self) -> str:
        t = self.type.name if isinstance(self.type, InterruptionType) else f"type {self.type}"
        ec = ", error code" if self.error_code_valid else ""
        return f"vector {self.vector} ({t}{ec})" if self.valid else "invalid"


# --------------------------------------------------------------------- instruction information

#: address-size encoding of instruction-information bits 9:7 (SDM Vol.3C Tables 28-8..28-14)
ADDRESS_SIZE_CODE = {2: 0, 4: 1, 8: 2}
ADDRESS_SIZE_FROM_CODE = {v: k for k, v in ADDRESS_SIZE_CODE.items()}


class DescriptorTableIdentity(enum.IntEnum):
    """Instruction-information bits 29:28 for exit reason 46 (SDM Vol.3C Table 28-10)."""

    SGDT = 0
    SIDT = 1
    LGDT = 2
    LIDT = 3


class LdtrTrIdentity(enum.IntEnum):
    """Instruction-information bits 29:28 for exit reason 47 (SDM Vol.3C Table 28-11)."""

    SLDT = 0
    STR = 1
    LLDT = 2
    LTR = 3


@dataclass(frozen=True)
class InstructionInfo:
    """The VM-exit instruction-information field (0x440E) for memory/register operands.

    One layout serves the formats that share it (SDM Vol.3C 28.2.5): Table 28-10
    (LGDT/LIDT/SGDT/SIDT, reason 46), Table 28-11 (LLDT/LTR/SLDT/STR, 47),
    Table 28-13 (VMCLEAR/VMPTRLD/VMPTRST/VMXON), Table 28-14 (VMREAD/VMWRITE)
    and Table 28-9 (INVEPT/INVVPID): scale [1:0], reg1 [6:3], address size
    [9:7], register operand [10], operand size [11] (reason 46 only),
    segment [17:15], index [21:18] + invalid [22], base [26:23] + invalid
    [27], and bits [31:28] = reg2 (VMREAD/VMWRITE/INVEPT/INVVPID) or the
    instruction identity [29:28] (46/47).  Fields a format leaves undefined
    are 0.
    """

    scale: int = 0  # log2 of the index scale
    reg1: int = 0
    address_size: int = 4  # bytes
    register_operand: bool = False
    operand_size_32: bool = False
    segment: int = 0
    index: int = 0
    index_invalid: bool = True
    base: int = 0
    base_invalid: bool = True
    reg2: int = 0  # bits 31:28; for 46/47 the identity in bits 29:28

    @classmethod
    def decode(cls, raw: int) -> InstructionInfo:
        return cls(
            _bits(raw, 1, 0),
            _bits(raw, 6, 3),
            ADDRESS_SIZE_FROM_CODE.get(_bits(raw, 9, 7), 0),
            bool(_bits(raw, 10, 10)),
            bool(_bits(raw, 11, 11)),
            _bits(raw, 17, 15),
            _bits(raw, 21, 18),
            bool(_bits(raw, 22, 22)),
            _bits(raw, 26, 23),
            bool(_bits(raw, 27, 27)),
            _bits(raw, 31, 28),
        )

    def encode(self) -> int:
        return (
            self.scale & 3
            | (self.reg1 & 0xF) << 3
            | ADDRESS_SIZE_CODE[self.address_size] << 7
            | int(self.register_operand) << 10
            | int(self.operand_size_32) << 11
            | (self.segment & 7) << 15
            | (self.index & 0xF) << 18
            | int(self.index_invalid) << 22
            | (self.base & 0xF) << 23
            | int(self.base_invalid) << 27
            | (self.reg2 & 0xF) << 28
        )

    @property
    def identity(self) -> int:
        """Bits 29:28 of reasons 46/47: which of the four instructions (see the Identity enums)."""
        return self.reg2 & 3


@dataclass(frozen=True)
class IoInstructionInfo:
    """Instruction information for INS/OUTS (SDM Vol.3C Table 28-8): address size [9:7] and, for
    OUTS, the segment register [17:15].  Reported because IA32_VMX_BASIC bit 54 = 1."""

    address_size: int
    segment: int

    @classmethod
    def decode(cls, raw: int) -> IoInstructionInfo:
        return cls(ADDRESS_SIZE_FROM_CODE.get(_bits(raw, 9, 7), 0), _bits(raw, 17, 15))

    def encode(self) -> int:
        return ADDRESS_SIZE_CODE[self.address_size] << 7 | (self.segment & 7) << 15


# --------------------------------------------------------------------- VM-entry failure (33/34)


class EntryFailureQualification(enum.IntEnum):
    """Exit qualification of VM-entry failure exits 33 (SDM Vol.3C 27.8, "VM-Entry Failures During
    or After Loading Guest State"; reason 34 instead reports the index of the failing MSR entry)."""

    DEFAULT = 0
    PDPTE_LOADING = 2
    NMI_INJECTION_WITH_BLOCKING_BY_STI = 3
    INVALID_VMCS_LINK_POINTER = 4


# --------------------------------------------------------------------- decode by exit reason

QUALIFICATION_FORMATS: dict[int, type] = {
    ExitReason.TASK_SWITCH: TaskSwitchQualification,
    ExitReason.CONTROL_REGISTER_ACCESS: ControlRegisterAccess,
    ExitReason.MOV_DR: MovDrQualification,
    ExitReason.IO_INSTRUCTION: IoQualification,
    ExitReason.EPT_VIOLATION: EptViolationQualification,
}


def decode_qualification(reason: int, raw: int) -> object | None:
    """The typed qualification of an exit reason, or None where the qualification is a plain number
    (linear address for INVLPG and #PF, displacement for 46/47 and VMX instructions) or unused."""
    fmt = QUALIFICATION_FORMATS.get(reason)
    return fmt.decode(raw) if fmt is not None else None
