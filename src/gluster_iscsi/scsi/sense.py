"""Sense data: sense keys, additional sense codes, fixed and descriptor formats (SPC-4 4.5).

Handlers raise :class:`CheckCondition`; the device server turns it into CHECK CONDITION with
sense data in the format the control mode page's D_SENSE bit selects. Backing-store errors are
mapped to sense in :func:`from_store_error`, the one place that knows what an errno means to
an initiator.
"""

from __future__ import annotations

import enum
import errno as _errno
from dataclasses import dataclass


class SenseKey(enum.IntEnum):
    """Sense keys (SPC-4 4.5.6, table 27)."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE


class Asc(enum.IntEnum):
    """Additional sense code and qualifier as ``ASC << 8 | ASCQ`` (SPC-4 4.5.6, table 28)."""

    NO_ADDITIONAL_SENSE = 0x0000
    LU_NOT_READY_CAUSE_NOT_REPORTABLE = 0x0400
    LU_NOT_READY_BECOMING_READY = 0x0401
    LU_NOT_READY_INITIALIZING_COMMAND_REQUIRED = 0x0402
    LU_NOT_READY_MANUAL_INTERVENTION_REQUIRED = 0x0403
    LU_NOT_READY_SANITIZE_IN_PROGRESS = 0x041B
    LU_NOT_ACCESSIBLE_TRANSITIONING = 0x040A  # ... ASYMMETRIC ACCESS STATE TRANSITION
    LU_NOT_ACCESSIBLE_TARGET_PORT_STANDBY = 0x040B  # ... TARGET PORT IN STANDBY STATE
    LU_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE = 0x040C  # ... TARGET PORT IN UNAVAILABLE STATE
    LU_NOT_READY_OFFLINE = 0x0412
    LU_COMMUNICATION_FAILURE = 0x0800
    UNREACHABLE_COPY_TARGET = 0x0804
    LU_COMMUNICATION_TIMEOUT = 0x0801
    WRITE_ERROR = 0x0C00
    ID_CRC_OR_ECC_ERROR = 0x1000
    UNRECOVERED_READ_ERROR = 0x1100
    MISCOMPARE_DURING_VERIFY = 0x1D00
    PARAMETER_LIST_LENGTH_ERROR = 0x1A00
    INVALID_COMMAND_OPERATION_CODE = 0x2000
    ACCESS_DENIED_INVALID_LU_IDENTIFIER = 0x2009
    LBA_OUT_OF_RANGE = 0x2100
    INVALID_FIELD_IN_CDB = 0x2400
    LOGICAL_UNIT_NOT_SUPPORTED = 0x2500
    INVALID_FIELD_IN_PARAMETER_LIST = 0x2600
    PARAMETER_NOT_SUPPORTED = 0x2601
    PARAMETER_VALUE_INVALID = 0x2602
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = 0x2604
    TOO_MANY_TARGET_DESCRIPTORS = 0x2606
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = 0x2607
    TOO_MANY_SEGMENT_DESCRIPTORS = 0x2608
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = 0x2609
    WRITE_PROTECTED = 0x2700
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = 0x2707
    NOT_READY_TO_READY_CHANGE = 0x2800
    POWER_ON_RESET_OR_BUS_DEVICE_RESET = 0x2900
    POWER_ON_OCCURRED = 0x2901
    SCSI_BUS_RESET_OCCURRED = 0x2902
    BUS_DEVICE_RESET_FUNCTION_OCCURRED = 0x2903
    I_T_NEXUS_LOSS_OCCURRED = 0x2907
    PARAMETERS_CHANGED = 0x2A00
    MODE_PARAMETERS_CHANGED = 0x2A01
    RESERVATIONS_PREEMPTED = 0x2A03
    RESERVATIONS_RELEASED = 0x2A04
    REGISTRATIONS_PREEMPTED = 0x2A05
    ASYMMETRIC_ACCESS_STATE_CHANGED = 0x2A06
    CAPACITY_DATA_HAS_CHANGED = 0x2A09
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = 0x2F00
    SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900
    MEDIUM_NOT_PRESENT = 0x3A00
    INTERNAL_TARGET_FAILURE = 0x4400
    INVALID_MESSAGE_ERROR = 0x4900
    REPORTED_LUNS_DATA_HAS_CHANGED = 0x3F0E
    INQUIRY_DATA_HAS_CHANGED = 0x3F03
    INVALID_FIELD_IN_INFORMATION_UNIT = 0x0E03
    MEDIUM_REMOVAL_PREVENTED = 0x5302
    INSUFFICIENT_REGISTRATION_RESOURCES = 0x5504
    COPY_TARGET_DEVICE_NOT_REACHABLE = 0x0D02
    THIRD_PARTY_DEVICE_FAILURE = 0x0D01

    @property
    def asc(self) -> int:
        return self.value >> 8

    @property
    def ascq(self) -> int:
        return self.value & 0xFF


FIXED = 0x70
DESCRIPTOR = 0x72


@dataclass(frozen=True, slots=True)
class FieldPointer:
    """The sense-key specific field pointer (SPC-4 4.5.2.4.2): which byte/bit was wrong."""

    byte: int
    bit: int | None = None
    in_cdb: bool = True

    def encode(self) -> bytes:
        b0 = 0x80 | (0x40 if self.in_cdb else 0)
        if self.bit is not None:
            b0 |= 0x08 | (self.bit & 7)
        return bytes([b0]) + (self.byte & 0xFFFF).to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Progress:
    """The sense-key specific progress indication (SPC-4 4.5.2.4.4): ``fraction``/65536 done."""

    fraction: int

    def encode(self) -> bytes:
        return bytes([0x80]) + (self.fraction & 0xFFFF).to_bytes(2, "big")


def fixed_sense(
    key: int,
    asc: int,
    *,
    information: int | None = None,
    field: FieldPointer | Progress | None = None,
    command_specific: int = 0,
) -> bytes:
    """Fixed format sense data (70h), 18 bytes (SPC-4 4.5.3)."""
    out = bytearray(18)
    out[0] = FIXED | (0x80 if information is not None and information <= 0xFFFFFFFF else 0)
    out[2] = key & 0x0F
    if information is not None:
        out[3:7] = (information & 0xFFFFFFFF).to_bytes(4, "big")
    out[7] = 10
    out[8:12] = command_specific.to_bytes(4, "big")
    out[12] = asc >> 8
    out[13] = asc & 0xFF
    if field is not None:
        out[15:18] = field.encode()
    return bytes(out)


def descriptor_sense(
    key: int,
    asc: int,
    *,
    information: int | None = None,
    field: FieldPointer | Progress | None = None,
    command_specific: int | None = None,
) -> bytes:
    """Descriptor format sense data (72h) with information/sense-key specific descriptors."""
    descs = bytearray()
    if information is not None:
        descs += bytes([0x00, 0x0A, 0x80, 0]) + information.to_bytes(8, "big")
    if command_specific is not None:
        descs += bytes([0x01, 0x0A, 0, 0]) + command_specific.to_bytes(8, "big")
    if field is not None:
        descs += bytes([0x02, 0x06, 0, 0]) + field.encode() + b"\x00"
    head = bytes([DESCRIPTOR, key & 0x0F, asc >> 8, asc & 0xFF, 0, 0, 0, len(descs)])
    return head + bytes(descs)


def build_sense(
    key: int,
    asc: int,
    *,
    descriptor: bool = False,
    information: int | None = None,
    field: FieldPointer | Progress | None = None,
) -> bytes:
    if descriptor:
        return descriptor_sense(key, asc, information=information, field=field)
    return fixed_sense(key, asc, information=information, field=field)


def parse_sense(sense: bytes) -> tuple[int, int]:
    """(sense key, ASC<<8|ASCQ) of fixed or descriptor sense data; for tests and logs."""
    if not sense:
        return 0, 0
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2] << 8 | sense[3]
    return sense[2] & 0x0F, sense[12] << 8 | sense[13]


class CheckCondition(Exception):  # noqa: N818 - named after the SCSI status it produces
    """Raised by a handler to end its command with CHECK CONDITION and this sense."""

    def __init__(
        self,
        key: SenseKey,
        asc: Asc,
        *,
        information: int | None = None,
        field: FieldPointer | Progress | None = None,
    ) -> None:
        super().__init__(f"{key.name} {asc.name}")
        self.key = key
        self.asc = asc
        self.information = information
        self.field = field

    def sense(self, descriptor: bool = False) -> bytes:
        return build_sense(
            self.key,
            self.asc,
            descriptor=descriptor,
            information=self.information,
            field=self.field,
        )


def invalid_cdb(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at ``byte`` (and ``bit``)."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, field=FieldPointer(byte, bit)
    )


def invalid_param(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing into the data-out."""
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        field=FieldPointer(byte, bit, in_cdb=False),
    )


def illegal(asc: Asc) -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, asc)


def lba_out_of_range(lba: int | None = None) -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE, information=lba)


def invalid_opcode() -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE, field=FieldPointer(0)
    )


#: errno -> (sense key, ASC for reads, ASC for writes). Transport-ish errors of a network
#: filesystem are NOT READY so initiators retry instead of failing the I/O up the stack.
_ERRNO_SENSE: dict[int, tuple[SenseKey, Asc, Asc]] = {
    _errno.EIO: (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR, Asc.WRITE_ERROR),
    _errno.ENOSPC: (
        SenseKey.DATA_PROTECT,
        Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    ),
    _errno.EDQUOT: (
        SenseKey.DATA_PROTECT,
        Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    ),
    _errno.EROFS: (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, Asc.WRITE_PROTECTED),
    _errno.EACCES: (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, Asc.WRITE_PROTECTED),
    _errno.EPERM: (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, Asc.WRITE_PROTECTED),
    _errno.EOPNOTSUPP: (
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_CDB,
        Asc.INVALID_FIELD_IN_CDB,
    ),
    _errno.EINVAL: (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, Asc.INVALID_FIELD_IN_CDB),
    _errno.ENOTCONN: (
        SenseKey.NOT_READY,
        Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
        Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
    ),
    _errno.ESHUTDOWN: (
        SenseKey.NOT_READY,
        Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
        Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
    ),
    _errno.EHOSTDOWN: (
        SenseKey.NOT_READY,
        Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
        Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
    ),
    _errno.ETIMEDOUT: (
        SenseKey.NOT_READY,
        Asc.LU_NOT_READY_BECOMING_READY,
        Asc.LU_NOT_READY_BECOMING_READY,
    ),
    _errno.EAGAIN: (
        SenseKey.NOT_READY,
        Asc.LU_NOT_READY_BECOMING_READY,
        Asc.LU_NOT_READY_BECOMING_READY,
    ),
    _errno.ENOMEM: (
        SenseKey.HARDWARE_ERROR,
        Asc.INTERNAL_TARGET_FAILURE,
        Asc.INTERNAL_TARGET_FAILURE,
    ),
}
if hasattr(_errno, "ENOTSUP"):
    _ERRNO_SENSE.setdefault(_errno.ENOTSUP, _ERRNO_SENSE[_errno.EOPNOTSUPP])


def from_store_error(exc: BaseException, *, write: bool = False) -> CheckCondition:
    """Map a :class:`BackingStoreError` (or any OSError) to the sense an initiator acts on.

    Unknown errnos become MEDIUM ERROR, which initiators report rather than retry forever;
    non-OSError exceptions (bugs) become HARDWARE ERROR / INTERNAL TARGET FAILURE.
    """
    if not isinstance(exc, OSError):
        return CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE)
    key, read_asc, write_asc = _ERRNO_SENSE.get(
        exc.errno or 0, (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR, Asc.WRITE_ERROR)
    )
    return CheckCondition(key, write_asc if write else read_asc)
