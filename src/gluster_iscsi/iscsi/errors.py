"""Protocol errors of the iSCSI layer, each carrying the wire code to send back.

A :class:`LoginError` becomes a Login Response with its status class/detail
(RFC 7143 11.13.5); a :class:`ProtocolError` becomes a Reject PDU with its
reason code (RFC 7143 11.17.1).  Messages never contain secrets.
"""

from __future__ import annotations

from enum import IntEnum


class LoginStatus(IntEnum):
    """Login Response Status-Class << 8 | Status-Detail (RFC 7143 11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        return self.value >> 8

    @property
    def status_detail(self) -> int:
        return self.value & 0xFF


class RejectReason(IntEnum):
    """Reject PDU reason codes (RFC 7143 11.17.1)."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    DEPRECATED_NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class IscsiError(Exception):
    """Base of every protocol error this package raises."""


class LoginError(IscsiError):
    """Fail the login with this status (RFC 7143 11.13.5)."""

    def __init__(self, status: LoginStatus, message: str) -> None:
        super().__init__(message)
        self.status = LoginStatus(status)

    @property
    def status_class(self) -> int:
        return self.status.status_class

    @property
    def status_detail(self) -> int:
        return self.status.status_detail

    def __repr__(self) -> str:
        return f"LoginError({self.status.name}, {str(self)!r})"


class ProtocolError(IscsiError):
    """Answer with a Reject PDU carrying ``reason`` (RFC 7143 11.17.1)."""

    def __init__(self, message: str, reason: int = RejectReason.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = int(reason)

    def __repr__(self) -> str:
        return f"ProtocolError({str(self)!r}, reason=0x{self.reason:02x})"
