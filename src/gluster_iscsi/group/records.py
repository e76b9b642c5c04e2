"""The two-slot record: one JSON document written in place, safe against torn writes (pure).

A record file holds two slots of :data:`SLOT_SIZE` bytes (slot A at offset 0, slot B at
``SLOT_SIZE``). A slot is::

    magic (8 bytes) | seq (u64 BE) | length (u32 BE) | crc32c (u32 BE) | json (length bytes) | zeroes

The CRC32C covers seq, length and the JSON text, so a slot torn by a crash mid-write (part new,
part old bytes), an all-zero slot or foreign bytes decode as ``None``. The writer of record
number ``seq`` writes slot ``seq % 2``: it overwrites the record before the last one, never the
last good one, so a torn write loses at most the write being made. A reader takes the valid slot
with the highest ``seq`` (:func:`pick`).

The JSON is compact, keys sorted, UTF-8; it must fit in ``SLOT_SIZE - HEADER_SIZE`` bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from crc32c import crc32c

#: The first 8 bytes of every valid slot (format version 1).
MAGIC = b"GISCREC1"
#: Bytes per slot; a record file is ``2 * SLOT_SIZE`` bytes. A multiple of 4096, so O_DIRECT
#: writes of one slot are aligned on any device.
SLOT_SIZE = 64 * 1024
#: Bytes per record file (both slots).
FILE_SIZE = 2 * SLOT_SIZE

_HEADER = struct.Struct(">8sQII")
#: magic + seq + length + crc32c.
HEADER_SIZE = _HEADER.size
#: The largest JSON text a slot holds.
MAX_JSON = SLOT_SIZE - HEADER_SIZE
_MAX_SEQ = (1 << 64) - 1


def _crc(seq: int, length: int, body: bytes) -> int:
    return crc32c(body, crc32c(struct.pack(">QI", seq, length)))


def encode(seq: int, data: dict[str, Any]) -> bytes:
    """One slot (exactly :data:`SLOT_SIZE` bytes) holding ``data`` as record number ``seq``.

    Raises ValueError if ``seq`` is out of 0..2**64-1, ``data`` is not a dict or not JSON
    serialisable, or its JSON does not fit in a slot (:data:`MAX_JSON` bytes)."""
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"record seq must be an integer in 0..2**64-1, got {seq!r}")
    if not isinstance(data, dict):
        raise ValueError(f"a record is a JSON object (dict), got {type(data).__name__}")
    try:
        body = json.dumps(data, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"record is not JSON serialisable: {e}") from e
    if len(body) > MAX_JSON:
        raise ValueError(
            f"record too large: {len(body)} bytes of JSON, a slot holds at most {MAX_JSON}"
        )
    header = _HEADER.pack(MAGIC, seq, len(body), _crc(seq, len(body), body))
    return header + body + bytes(SLOT_SIZE - HEADER_SIZE - len(body))


def decode(slot: bytes | bytearray | memoryview) -> tuple[int, dict[str, Any]] | None:
    """``(seq, data)`` of a valid slot; None if it is empty, torn, foreign or fails its CRC.

    ``slot`` may be shorter than :data:`SLOT_SIZE` (a file not yet grown) as long as the
    JSON is all there."""
    view = memoryview(slot)
    if len(view) < HEADER_SIZE:
        return None
    magic, seq, length, crc = _HEADER.unpack_from(view, 0)
    if magic != MAGIC or length > MAX_JSON or HEADER_SIZE + length > len(view):
        return None
    body = bytes(view[HEADER_SIZE : HEADER_SIZE + length])
    if _crc(seq, length, body) != crc:
        return None
    try:
        data = json.loads(body)
    except ValueError:  # UnicodeDecodeError too; only possible with a CRC collision
        return None
    if not isinstance(data, dict):
        return None
    return seq, data


def pick(a: bytes | bytearray | memoryview,
         b: bytes | bytearray | memoryview) -> tuple[int, dict[str, Any]] | None:
    """The valid slot of the two with the highest seq (None if neither is valid)."""
    best = None
    for slot in (a, b):
        got = decode(slot)
        if got is not None and (best is None or got[0] > best[0]):
            best = got
    return best


def slot_offset(seq: int) -> int:
    """Where record number ``seq`` is written: slot ``seq % 2``."""
    return (seq % 2) * SLOT_SIZE
