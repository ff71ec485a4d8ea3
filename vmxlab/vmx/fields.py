"""VMCS fields by their SDM encodings (SDM Vol.3C Appendix B, "Field Encoding in VMCS").

A field encoding is a 32-bit value whose bits say what the field is (SDM Vol.3C
25.11.2, "VMREAD, VMWRITE, and Encodings of VMCS Fields", Table 25-21 "Structure
of VMCS Component Encoding"; older editions: 24.11.2 / Table 24-17)::

    bit 0       access type: 0 = full, 1 = high (the upper 32 bits of a 64-bit field)
    bits 9:1    index
    bits 11:10  type: 0 control, 1 VM-exit information (read-only), 2 guest state, 3 host state
    bit 12      reserved (0)
    bits 14:13  width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural-width
    bits 31:15  reserved (0)

Width and type are therefore *derived* from the encoding, never listed twice.
The software CPU implements IA-32 without Intel 64, so natural-width fields
hold 32 bits (SDM Vol.3C 25.11.2: natural-width fields are 64 bits only on
processors that support Intel 64).

``VmcsField`` holds the full-access encoding of every field the model
supports; the high-access alias of a 64-bit field is ``encoding | 1`` (see
:func:`high`).  ``VmcsField.GUEST_RIP`` is the name a C hypervisor would
write as ``GUEST_RIP`` (Linux, SimpleVisor); names follow the SDM's field
names ("Guest RIP", "Pin-based VM-execution controls", ...).
"""

from __future__ import annotations

import enum

# Encoding bit layout (SDM Vol.3C 25.11.2, Table 25-21)
ACCESS_HIGH = 1 << 0
INDEX_SHIFT = 1
INDEX_MASK = 0x1FF
TYPE_SHIFT = 10
TYPE_MASK = 0x3
WIDTH_SHIFT = 13
WIDTH_MASK = 0x3
ENCODING_RESERVED = (
    ~((WIDTH_MASK << WIDTH_SHIFT) | (TYPE_MASK << TYPE_SHIFT) | (INDEX_MASK << INDEX_SHIFT) | ACCESS_HIGH)
    & 0xFFFFFFFF
)  # bit 12 and bits 31:15

#: natural width on a processor without Intel 64 (SDM Vol.3C 25.11.2)
NATURAL_WIDTH_BITS = 32


class FieldWidth(enum.IntEnum):
    """Encoding bits 14:13 (SDM Vol.3C Table 25-21)."""

    BITS16 = 0
    BITS64 = 1
    BITS32 = 2
    NATURAL = 3


class FieldType(enum.IntEnum):
    """Encoding bits 11:10 (SDM Vol.3C Table 25-21)."""

    CONTROL = 0
    EXIT_INFORMATION = 1  # "VM-exit information": read-only for VMWRITE
    GUEST_STATE = 2
    HOST_STATE = 3


WIDTH_BITS = {
    FieldWidth.BITS16: 16,
    FieldWidth.BITS64: 64,
    FieldWidth.BITS32: 32,
    FieldWidth.NATURAL: NATURAL_WIDTH_BITS,
}


class VmcsField(enum.IntEnum):
    """Every VMCS field the model supports, by full-access encoding (SDM Vol.3C Appendix B)."""

    # ---- B.1.1 16-bit control fields
    VIRTUAL_PROCESSOR_ID = 0x0000
    # ---- B.1.2 16-bit guest-state fields
    GUEST_ES_SELECTOR = 0x0800
    GUEST_CS_SELECTOR = 0x0802
    GUEST_SS_SELECTOR = 0x0804
    GUEST_DS_SELECTOR = 0x0806
    GUEST_FS_SELECTOR = 0x0808
    GUEST_GS_SELECTOR = 0x080A
    GUEST_LDTR_SELECTOR = 0x080C
    GUEST_TR_SELECTOR = 0x080E
    # ---- B.1.3 16-bit host-state fields
    HOST_ES_SELECTOR = 0x0C00
    HOST_CS_SELECTOR = 0x0C02
    HOST_SS_SELECTOR = 0x0C04
    HOST_DS_SELECTOR = 0x0C06
    HOST_FS_SELECTOR = 0x0C08
    HOST_GS_SELECTOR = 0x0C0A
    HOST_TR_SELECTOR = 0x0C0C
    # ---- B.2.1 64-bit control fields
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAPS = 0x2004
    VM_EXIT_MSR_STORE_ADDRESS = 0x2006
    VM_EXIT_MSR_LOAD_ADDRESS = 0x2008
    VM_ENTRY_MSR_LOAD_ADDRESS = 0x200A
    TSC_OFFSET = 0x2010
    VIRTUAL_APIC_ADDRESS = 0x2012
    APIC_ACCESS_ADDRESS = 0x2014
    EPT_POINTER = 0x201A
    VMREAD_BITMAP_ADDRESS = 0x2026
    VMWRITE_BITMAP_ADDRESS = 0x2028
    # ---- B.2.2 64-bit read-only data field
    GUEST_PHYSICAL_ADDRESS = 0x2400
    # ---- B.2.3 64-bit guest-state fields
    VMCS_LINK_POINTER = 0x2800
    GUEST_IA32_DEBUGCTL = 0x2802
    GUEST_IA32_PAT = 0x2804
    GUEST_IA32_EFER = 0x2806
    GUEST_PDPTE0 = 0x280A
    GUEST_PDPTE1 = 0x280C
    GUEST_PDPTE2 = 0x280E
    GUEST_PDPTE3 = 0x2810
    # ---- B.2.4 64-bit host-state fields
    HOST_IA32_PAT = 0x2C00
    HOST_IA32_EFER = 0x2C02
    # ---- B.3.1 32-bit control fields
    PIN_BASED_VM_EXECUTION_CONTROLS = 0x4000
    PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS = 0x4002
    EXCEPTION_BITMAP = 0x4004
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008
    CR3_TARGET_COUNT = 0x400A
    VM_EXIT_CONTROLS = 0x400C
    VM_EXIT_MSR_STORE_COUNT = 0x400E
    VM_EXIT_MSR_LOAD_COUNT = 0x4010
    VM_ENTRY_CONTROLS = 0x4012
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014
    VM_ENTRY_INTERRUPTION_INFORMATION = 0x4016
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    VM_ENTRY_INSTRUCTION_LENGTH = 0x401A
    TPR_THRESHOLD = 0x401C
    SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS = 0x401E
    PLE_GAP = 0x4020
    PLE_WINDOW = 0x4022
    # ---- B.3.2 32-bit read-only data fields
    VM_INSTRUCTION_ERROR = 0x4400
    EXIT_REASON = 0x4402
    VM_EXIT_INTERRUPTION_INFORMATION = 0x4404
    VM_EXIT_INTERRUPTION_ERROR_CODE = 0x4406
    IDT_VECTORING_INFORMATION = 0x4408
    IDT_VECTORING_ERROR_CODE = 0x440A
    VM_EXIT_INSTRUCTION_LENGTH = 0x440C
    VM_EXIT_INSTRUCTION_INFORMATION = 0x440E
    # ---- B.3.3 32-bit guest-state fields
    GUEST_ES_LIMIT = 0x4800
    GUEST_CS_LIMIT = 0x4802
    GUEST_SS_LIMIT = 0x4804
    GUEST_DS_LIMIT = 0x4806
    GUEST_FS_LIMIT = 0x4808
    GUEST_GS_LIMIT = 0x480A
    GUEST_LDTR_LIMIT = 0x480C
    GUEST_TR_LIMIT = 0x480E
    GUEST_GDTR_LIMIT = 0x4810
    GUEST_IDTR_LIMIT = 0x4812
    GUEST_ES_ACCESS_RIGHTS = 0x4814
    GUEST_CS_ACCESS_RIGHTS = 0x4816
    GUEST_SS_ACCESS_RIGHTS = 0x4818
    GUEST_DS_ACCESS_RIGHTS = 0x481A
    GUEST_FS_ACCESS_RIGHTS = 0x481C
    GUEST_GS_ACCESS_RIGHTS = 0x481E
    GUEST_LDTR_ACCESS_RIGHTS = 0x4820
    GUEST_TR_ACCESS_RIGHTS = 0x4822
    GUEST_INTERRUPTIBILITY_STATE = 0x4824
    GUEST_ACTIVITY_STATE = 0x4826
    GUEST_IA32_SYSENTER_CS = 0x482A
    VMX_PREEMPTION_TIMER_VALUE = 0x482E
    # ---- B.3.4 32-bit host-state field
    HOST_IA32_SYSENTER_CS = 0x4C00
    # ---- B.4.1 natural-width control fields
    CR0_GUEST_HOST_MASK = 0x6000
    CR4_GUEST_HOST_MASK = 0x6002
    CR0_READ_SHADOW = 0x6004
    CR4_READ_SHADOW = 0x6006
    CR3_TARGET_VALUE0 = 0x6008
    CR3_TARGET_VALUE1 = 0x600A
    CR3_TARGET_VALUE2 = 0x600C
    CR3_TARGET_VALUE3 = 0x600E
    # ---- B.4.2 natural-width read-only data fields
    EXIT_QUALIFICATION = 0x6400
    IO_RCX = 0x6402
    IO_RSI = 0x6404
    IO_RDI = 0x6406
    IO_RIP = 0x6408
    GUEST_LINEAR_ADDRESS = 0x640A
    # ---- B.4.3 natural-width guest-state fields
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_ES_BASE = 0x6806
    GUEST_CS_BASE = 0x6808
    GUEST_SS_BASE = 0x680A
    GUEST_DS_BASE = 0x680C
    GUEST_FS_BASE = 0x680E
    GUEST_GS_BASE = 0x6810
    GUEST_LDTR_BASE = 0x6812
    GUEST_TR_BASE = 0x6814
    GUEST_GDTR_BASE = 0x6816
    GUEST_IDTR_BASE = 0x6818
    GUEST_DR7 = 0x681A
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    GUEST_PENDING_DEBUG_EXCEPTIONS = 0x6822
    GUEST_IA32_SYSENTER_ESP = 0x6824
    GUEST_IA32_SYSENTER_EIP = 0x6826
    # ---- B.4.4 natural-width host-state fields
    HOST_CR0 = 0x6C00
    HOST_CR3 = 0x6C02
    HOST_CR4 = 0x6C04
    HOST_FS_BASE = 0x6C06
    HOST_GS_BASE = 0x6C08
    HOST_TR_BASE = 0x6C0A
    HOST_GDTR_BASE = 0x6C0C
    HOST_IDTR_BASE = 0x6C0E
    HOST_IA32_SYSENTER_ESP = 0x6C10
    HOST_IA32_SYSENTER_EIP = 0x6C12
    HOST_RSP = 0x6C14
    HOST_RIP = 0x6C16

    # -------------------------------------------------------------- derived properties

    @property
    def width(self) -> FieldWidth:
        return field_width(self)

    @property
    def type(self) -> FieldType:
        return field_type(self)

    @property
    def bits(self) -> int:
        return WIDTH_BITS[field_width(self)]

    @property
    def read_only(self) -> bool:
        """VM-exit information fields: VMWRITE fails with error 13 (SDM Vol.3C 25.11.2)."""
        return field_type(self) == FieldType.EXIT_INFORMATION


def field_width(encoding: int) -> FieldWidth:
    return FieldWidth((encoding >> WIDTH_SHIFT) & WIDTH_MASK)


def field_type(encoding: int) -> FieldType:
    return FieldType((encoding >> TYPE_SHIFT) & TYPE_MASK)


def field_index(encoding: int) -> int:
    return (encoding >> INDEX_SHIFT) & INDEX_MASK


def is_high_access(encoding: int) -> bool:
    return bool(encoding & ACCESS_HIGH)


def high(field: VmcsField) -> int:
    """The high-access encoding of a 64-bit field: its upper 32 bits (SDM Vol.3C 25.11.2)."""
    if field_width(field) != FieldWidth.BITS64:
        raise ValueError(f"{field.name} is not a 64-bit field: it has no high-access encoding")
    return int(field) | ACCESS_HIGH


def width_mask(encoding: int) -> int:
    """All-ones over the width of the field an encoding names (the high half of a 64-bit field: 32)."""
    if is_high_access(encoding):
        return 0xFFFFFFFF
    return (1 << WIDTH_BITS[field_width(encoding)]) - 1


def name_of(encoding: int) -> str:
    """A readable name for an encoding: ``GUEST_RIP``, ``TSC_OFFSET_HIGH``, or the hex value."""
    base = encoding & ~ACCESS_HIGH
    try:
        name = VmcsField(base).name
    except ValueError:
        return f"{encoding:#06x}"
    if is_high_access(encoding):
        return name + "_HIGH" if field_width(base) == FieldWidth.BITS64 else f"{encoding:#06x}"
    return name


def supported(encoding: int) -> bool:
    """Does the encoding name a field of this model (full access, or high access of a 64-bit one)?

    An unsupported encoding makes VMREAD/VMWRITE fail with VM-instruction error
    12 (SDM Vol.3C 31.4 VMREAD/VMWRITE, "VMfailValid(VMREAD/VMWRITE from/to
    unsupported VMCS component)").
    """
    if encoding < 0 or encoding & ENCODING_RESERVED:
        return False
    base = encoding & ~ACCESS_HIGH
    if base not in _ALL:
        return False
    return not is_high_access(encoding) or field_width(base) == FieldWidth.BITS64


_ALL = frozenset(int(f) for f in VmcsField)

#: the highest index of any supported field: IA32_VMX_VMCS_ENUM bits 9:1 (SDM Vol.3C A.9)
HIGHEST_INDEX = max(field_index(f) for f in VmcsField)

# Segment-register field groups in Sreg order ES CS SS DS FS GS, then LDTR and TR (SDM Vol.3C 25.4.1)
SEGMENT_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")
GUEST_SELECTOR = tuple(VmcsField[f"GUEST_{n}_SELECTOR"] for n in SEGMENT_NAMES)
GUEST_BASE = tuple(VmcsField[f"GUEST_{n}_BASE"] for n in SEGMENT_NAMES)
GUEST_LIMIT = tuple(VmcsField[f"GUEST_{n}_LIMIT"] for n in SEGMENT_NAMES)
GUEST_ACCESS_RIGHTS = tuple(VmcsField[f"GUEST_{n}_ACCESS_RIGHTS"] for n in SEGMENT_NAMES)
HOST_SELECTOR = (
    VmcsField.HOST_ES_SELECTOR,
    VmcsField.HOST_CS_SELECTOR,
    VmcsField.HOST_SS_SELECTOR,
    VmcsField.HOST_DS_SELECTOR,
    VmcsField.HOST_FS_SELECTOR,
    VmcsField.HOST_GS_SELECTOR,
)
GUEST_PDPTE = (VmcsField.GUEST_PDPTE0, VmcsField.GUEST_PDPTE1, VmcsField.GUEST_PDPTE2, VmcsField.GUEST_PDPTE3)
CR3_TARGET_VALUE = (
    VmcsField.CR3_TARGET_VALUE0,
    VmcsField.CR3_TARGET_VALUE1,
    VmcsField.CR3_TARGET_VALUE2,
    VmcsField.CR3_TARGET_VALUE3,
)
