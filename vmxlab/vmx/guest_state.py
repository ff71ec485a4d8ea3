"""Guest non-register state (SDM Vol.3C 25.4.2, "Guest Non-Register State"): activity state,
interruptibility state, pending debug exceptions, VMCS link pointer."""

from __future__ import annotations

import enum


class ActivityState(enum.IntEnum):
    """Field 0x4826 (SDM Vol.3C 25.4.2, Table 25-3 "Format of Activity State")."""

    ACTIVE = 0
    HLT = 1
    SHUTDOWN = 2
    WAIT_FOR_SIPI = 3


class Interruptibility(enum.IntFlag):
    """Field 0x4824 (SDM Vol.3C 25.4.2, Table 25-4 "Format of Interruptibility State")."""

    BLOCKING_BY_STI = 1 << 0
    BLOCKING_BY_MOV_SS = 1 << 1
    BLOCKING_BY_SMI = 1 << 2
    BLOCKING_BY_NMI = 1 << 3
    ENCLAVE_INTERRUPTION = 1 << 4


#: bits 31:5 are reserved; bit 4 needs SGX, which this model lacks (SDM Vol.3C 27.3.1.5)
INTERRUPTIBILITY_RESERVED = 0xFFFFFFF0

# Pending debug exceptions, field 0x6822 (SDM Vol.3C 25.4.2, Table 25-5)
PENDING_DEBUG_B0_B3 = 0xF
PENDING_DEBUG_ENABLED_BREAKPOINT = 1 << 12
PENDING_DEBUG_BS = 1 << 14
PENDING_DEBUG_RTM = 1 << 16
#: bits 11:4, 13, 15 and 31:17 are reserved (RTM is not supported: bit 16 reserved too)
PENDING_DEBUG_RESERVED = 0xFFFFAFF0

#: the VMCS link pointer value meaning "no shadow VMCS" (SDM Vol.3C 25.4.2)
VMCS_LINK_POINTER_NONE = 0xFFFFFFFFFFFFFFFF
