"""iSCSI text key=value codec and value encodings (RFC 7143 6.1).

Pure functions: bytes in, pairs out, and back.  Every malformed input raises
:class:`~gluster_iscsi.iscsi.errors.ProtocolError` and nothing else, so a caller
can map it to a Reject (or a Login initiator error).  Per-key limits (the 255-byte
simple-value limit, 223-byte iSCSI names) live in :mod:`.params`; here only the
limits every value obeys are enforced.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from .errors import ProtocolError

#: RFC 7143 6.1: a key-name MUST NOT exceed 63 characters.
MAX_KEY_LENGTH = 63
#: RFC 7143 6.1: the maximum length of an individual value is 8192 bytes.
MAX_VALUE_LENGTH = 8192
#: RFC 7143 6.1: unless otherwise specified a simple-value is at most 255 bytes.
MAX_SIMPLE_VALUE_LENGTH = 255
#: RFC 7143 6.1: a large-binary-value or large-numerical-value is at most 1024 bytes
#: (not its encoded representation); CHAP (12.1.3) uses the same bound.
MAX_LARGE_BINARY_LENGTH = 1024
#: RFC 7143 6.1: a numerical-value is an unsigned integer less than 2**64.
MAX_NUMERICAL_VALUE = 2**64 - 1

# RFC 7143 6.1: letters, digits, '.', '-', '+', '@', '_'; starts with a capital
# letter.  "X#" opens an IANA-registered extension key (RFC 7143 13.5.4 / 6.1).
_KEY_RE = re.compile(r"(?:X#)?[A-Z][A-Za-z0-9.\-+@_]*\Z|X#[A-Za-z0-9.\-+@_]+\Z")
_DECIMAL_RE = re.compile(r"[0-9]+\Z")
_HEX_RE = re.compile(r"0[xX][0-9a-fA-F]+\Z")
_B64_RE = re.compile(r"0[bB][A-Za-z0-9+/]+={0,2}\Z")


def is_valid_key(key: str) -> bool:
    return len(key.encode()) <= MAX_KEY_LENGTH and _KEY_RE.match(key) is not None


def decode_text(data: bytes | memoryview) -> list[tuple[str, str]]:
    """Split a text/login data segment into ``(key, value)`` pairs, in order.

    Each pair is ``key=value`` terminated by NUL; trailing NULs (padding) and a
    missing NUL after the last pair are tolerated.  Duplicate keys are returned
    as they come: detecting them is the negotiator's job (RFC 7143 6.2).
    """
    raw = bytes(data).rstrip(b"\0")
    if not raw:
        return []
    pairs: list[tuple[str, str]] = []
    for item in raw.split(b"\0"):
        key_bytes, sep, value_bytes = item.partition(b"=")
        if not sep:
            raise ProtocolError(f"text item without '=': {item[:64]!r}")
        if not key_bytes:
            raise ProtocolError("text item with an empty key")
        if len(key_bytes) > MAX_KEY_LENGTH:
            raise ProtocolError(f"text key longer than {MAX_KEY_LENGTH} bytes")
        if len(value_bytes) > MAX_VALUE_LENGTH:
            raise ProtocolError(f"value longer than {MAX_VALUE_LENGTH} bytes")
        try:
            key = key_bytes.decode("ascii")
            value = value_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"text item is not valid UTF-8: {item[:64]!r}") from exc
        if not _KEY_RE.match(key):
            raise ProtocolError(f"invalid text key {key!r}")
        pairs.append((key, value))
    return pairs


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``key=value\\0`` for each pair (no padding: the PDU codec pads).

    Raises ``ValueError`` for a pair we must never send (our own bug, not the peer's).
    """
    out = bytearray()
    for key, value in pairs:
        if not is_valid_key(key):
            raise ValueError(f"invalid text key {key!r}")
        encoded = value.encode("utf-8")
        if b"\0" in encoded or len(encoded) > MAX_VALUE_LENGTH:
            raise ValueError(f"invalid value for {key}")
        out += key.encode("ascii") + b"=" + encoded + b"\0"
    return bytes(out)


def decode_number(value: str, maximum: int = MAX_NUMERICAL_VALUE) -> int:
    """A numerical-value: decimal-constant or hex-constant (never base64), RFC 7143 6.1."""
    if _DECIMAL_RE.match(value):
        number = int(value, 10)
    elif _HEX_RE.match(value):
        number = int(value[2:], 16)
    else:
        raise ProtocolError(f"not a numerical value: {value[:32]!r}")
    if number > maximum:
        raise ProtocolError(f"numerical value out of range: {value[:32]!r}")
    return number


def decode_binary(value: str, max_length: int = MAX_LARGE_BINARY_LENGTH) -> bytes:
    """A binary-value in hex (``0x``) or base64 (``0b``) encoding (RFC 7143 6.1).

    An odd number of hex digits is read as if a leading 0 were present.
    ``max_length`` bounds the decoded length, checked before decoding.
    """
    if _HEX_RE.match(value):
        digits = value[2:]
        if (len(digits) + 1) // 2 > max_length:
            raise ProtocolError(f"binary value longer than {max_length} bytes")
        if len(digits) % 2:
            digits = "0" + digits
        return bytes.fromhex(digits)
    if _B64_RE.match(value):
        digits = value[2:]
        if len(digits) * 3 // 4 > max_length + 2:
            raise ProtocolError(f"binary value longer than {max_length} bytes")
        try:
            decoded = base64.b64decode(digits, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("malformed base64 value") from exc
        if len(decoded) > max_length:
            raise ProtocolError(f"binary value longer than {max_length} bytes")
        return decoded
    raise ProtocolError(f"not a hex or base64 binary value: {value[:32]!r}")


def encode_hex(data: bytes) -> str:
    """``0x`` + lower-case hex digits (RFC 7143 6.1 hex-constant)."""
    if not data:
        raise ValueError("a hex-constant needs at least one digit")
    return "0x" + data.hex()


def encode_base64(data: bytes) -> str:
    """``0b`` + base64 (RFC 7143 6.1 base64-constant)."""
    if not data:
        raise ValueError("a base64-constant needs at least one digit")
    return "0b" + base64.b64encode(data).decode("ascii")


def split_list(value: str) -> list[str]:
    """A list-of-values: comma-separated simple-values (RFC 7143 6.1)."""
    return value.split(",")
