"""A LUN's identity, shared by every gateway: recorded once per file, keyed by its GFID.

HA.md decision 5: the UUID, NAA, serial and block size of a LUN live in the group directory
as record ``luns/<gfid>.id``, written once when the first gateway exports the file; every
gateway (whatever address or mount path it uses for the file) reads them from there, so one
file cannot have two WWIDs. An index ``identities/<uuid>`` (one small record per UUID,
naming the GFID it belongs to) makes sure two files never get one UUID.

Both records are changed under a lock on byte 0 of the record's own file (the ``.id`` first,
then the index entry: always in that order, so two gateways cannot deadlock).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import asdict, dataclass
from typing import Any

from .shared import LockHeld, SharedDir

#: Seconds :func:`record_identity` waits for the locks before TimeoutError.
LOCK_TIMEOUT = 10.0
#: The folder of the UUID index entries.
INDEX_DIR = "identities"


@dataclass(frozen=True)
class LunIdentity:
    """What makes a LUN the same SCSI device on every gateway.

    ``uuid``: canonical UUID string (the VPD 0x83 designators derive from it); ``naa_hex``: the
    NAA designator as hex; ``serial``: the unit serial number (VPD 0x80); ``block_size``: the
    logical block size; ``path``: the file's volume-relative path when it was recorded (for
    people: the GFID is the key); ``created_at``: Unix time of recording."""

    uuid: str
    naa_hex: str
    serial: str
    block_size: int
    path: str
    created_at: float

    def __post_init__(self) -> None:
        try:
            canonical = str(uuidlib.UUID(str(self.uuid)))
        except ValueError:
            raise ValueError(f"LUN identity: {self.uuid!r} is not a UUID") from None
        object.__setattr__(self, "uuid", canonical)
        if not isinstance(self.naa_hex, str) or not self.naa_hex or any(
            c not in "0123456789abcdefABCDEF" for c in self.naa_hex
        ):
            raise ValueError(f"LUN identity: naa_hex {self.naa_hex!r} is not hex digits")
        if not isinstance(self.serial, str) or not self.serial:
            raise ValueError(f"LUN identity: serial {self.serial!r} must be a non-empty string")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or \
                self.block_size <= 0:
            raise ValueError(f"LUN identity: block_size {self.block_size!r} is not a size")
        if not isinstance(self.path, str):
            raise ValueError(f"LUN identity: path {self.path!r} must be a string")
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, int | float):
            raise ValueError(f"LUN identity: created_at {self.created_at!r} is not a time")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LunIdentity:
        """From a record's data; ValueError naming what is wrong or missing."""
        try:
            return cls(uuid=data["uuid"], naa_hex=data["naa_hex"], serial=data["serial"],
                       block_size=data["block_size"], path=data["path"],
                       created_at=data["created_at"])
        except KeyError as e:
            raise ValueError(f"LUN identity record lacks {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"LUN identity record is malformed: {e}") from None

    @classmethod
    def new(cls, uuid: str, naa_hex: str, serial: str, block_size: int,
            path: str) -> LunIdentity:
        """An identity to propose, stamped with the current time."""
        return cls(uuid, naa_hex, serial, block_size, path, time.time())


def _id_name(gfid: str) -> str:
    if not gfid or "/" in gfid or gfid.startswith("."):
        raise ValueError(f"invalid GFID {gfid!r}")
    return f"luns/{gfid}.id"


def read_identity(shared: SharedDir, gfid: str) -> LunIdentity | None:
    """The identity recorded for the file ``gfid``, or None if none is."""
    rec = shared.read(_id_name(gfid))
    return LunIdentity.from_dict(rec.data) if rec is not None else None


def record_identity(shared: SharedDir, gfid: str, proposed: LunIdentity, *,
                    timeout: float = LOCK_TIMEOUT) -> LunIdentity:
    """The identity of file ``gfid``: the recorded one if there is one (the caller must use
    it, not ``proposed``), else ``proposed``, recorded now.

    Raises ValueError("UUID ... already names another file (gfid ...)") if ``proposed.uuid``
    is recorded for another file, TimeoutError if a lock stays held for ``timeout`` seconds,
    SharedDirError on I/O errors."""
    name = _id_name(gfid)
    with shared.lock(name, 0, timeout):
        rec = shared.read(name)
        if rec is not None:
            return LunIdentity.from_dict(rec.data)
        index = f"{INDEX_DIR}/{proposed.uuid}"
        with shared.lock(index, 0, timeout):
            entry = shared.read(index)
            other = entry.data.get("gfid") if entry is not None else None
            if other not in (None, gfid) and not _stale(shared, other, proposed.uuid):
                raise ValueError(
                    f"UUID {proposed.uuid} already names another file (gfid {other})"
                )
            if other != gfid:
                shared.write(index, {"gfid": gfid, "path": proposed.path})
        shared.write(name, proposed.to_dict())
    return proposed


def _stale(shared: SharedDir, gfid: str, uid: str) -> bool:
    """True if the index entry ``uid -> gfid`` is a leftover: file ``gfid`` has no identity
    or another UUID (a gateway died between writing the entry and the ``.id``, then the file
    got another identity). Tried without waiting (taking ``gfid``'s lock here, while holding
    the index entry's, must not wait: that is the opposite order); a held lock means a
    gateway is recording it right now: not stale."""
    try:
        lock = shared.try_lock(_id_name(gfid), 0)
    except LockHeld:
        return False
    with lock:
        other = read_identity(shared, gfid)
    return other is None or other.uuid != uid


def forget_identity(shared: SharedDir, gfid: str, *, timeout: float = LOCK_TIMEOUT) -> None:
    """Remove the identity of file ``gfid`` and free its UUID (the file leaves the group for
    good). Nothing if none is recorded."""
    name = _id_name(gfid)
    with shared.lock(name, 0, timeout):
        rec = shared.read(name)
        if rec is None:
            return
        index = f"{INDEX_DIR}/{rec.data.get('uuid')}"
        with shared.lock(index, 0, timeout):
            entry = shared.read(index)
            if entry is not None and entry.data.get("gfid") == gfid:
                shared.write(index, {"gfid": None, "path": None})
        shared.remove(name)
