"""SCSI over the test initiator (tests/integration/pyinitiator.py) for the HA tests: one call
per command with status and decoded sense, so a test can tell GOOD, NOT READY 04/0B
(standby), 04/0A (transitioning) and a dead path apart."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from tests.integration.pyinitiator import IscsiError, Session

INITIATOR = "iqn.2026-12.org.gluster-iscsi:ha-initiator"
BLOCK = 512

GOOD = 0x00
CHECK_CONDITION = 0x02
NOT_READY = 0x2
UNIT_ATTENTION = 0x6


@dataclass
class Answer:
    status: int
    data: bytes = b""
    key: int = 0
    asc: int = 0
    ascq: int = 0
    error: str = ""  # the path failed (connection refused, closed, timed out)

    @property
    def good(self) -> bool:
        return not self.error and self.status == GOOD

    @property
    def standby(self) -> bool:
        """NOT READY, ASYMMETRIC ACCESS STATE: TARGET PORT IN STANDBY STATE."""
        return self.status == CHECK_CONDITION and (self.key, self.asc, self.ascq) == (2, 4, 0x0B)

    @property
    def miscompare(self) -> bool:
        return self.status == CHECK_CONDITION and self.key == 0xE

    @property
    def unit_attention(self) -> bool:
        return self.status == CHECK_CONDITION and self.key == UNIT_ATTENTION

    def __str__(self) -> str:
        if self.error:
            return f"path error: {self.error}"
        if self.status == CHECK_CONDITION:
            return f"CHECK CONDITION {self.key:x}/{self.asc:02x}/{self.ascq:02x}"
        return f"status {self.status:#x}"


def decode(status: int, data: bytes, sense: bytes) -> Answer:
    a = Answer(status, data)
    if status == CHECK_CONDITION and sense:
        if sense[0] & 0x7F in (0x72, 0x73):
            a.key, a.asc, a.ascq = sense[1] & 0x0F, sense[2], sense[3]
        elif len(sense) >= 14:
            a.key, a.asc, a.ascq = sense[2] & 0x0F, sense[12], sense[13]
    return a


def tur_cdb() -> bytes:
    return bytes(6)


def read10_cdb(lba: int, blocks: int = 1) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10_cdb(lba: int, blocks: int = 1) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def caw_cdb(lba: int, blocks: int = 1) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, 0, lba, blocks, 0, 0)


def rtpg_cdb(alloc: int = 4096, extended: bool = True) -> bytes:
    return struct.pack(">BBIIBB", 0xA3, 0x0A | (0x20 if extended else 0), 0, alloc, 0, 0)


def parse_rtpg(data: bytes) -> dict[int, tuple[int, bool, list[int]]]:
    """group id -> (access state, preferred, relative target port ids)."""
    length = struct.unpack(">I", data[:4])[0]
    off = 8 if data[4] & 0x10 else 4
    end = 4 + length
    groups: dict[int, tuple[int, bool, list[int]]] = {}
    while off + 8 <= end:
        state, gid, count = data[off] & 0x0F, struct.unpack(">H", data[off + 2:off + 4])[0], data[off + 7]
        ports = [struct.unpack(">H", data[off + 8 + 4 * i + 2:off + 12 + 4 * i])[0] for i in range(count)]
        groups[gid] = (state, bool(data[off] & 0x80), ports)
        off += 8 + 4 * count
    return groups


class Path:
    """A logged-in session to one gateway's portal (async context manager)."""

    def __init__(self, host: str, port: int, iqn: str, initiator: str = INITIATOR,
                 lun: int = 1) -> None:
        self.session = Session(host, port, iqn, initiator)
        self.lun = lun

    async def __aenter__(self) -> Path:
        await self.session.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.wait_for(self.session.__aexit__(*exc), 10)
        except (TimeoutError, OSError, IscsiError):
            pass

    async def cmd(self, cdb: bytes, *, data_out: bytes = b"", read_len: int = 0,
                  timeout: float = 120) -> Answer:
        try:
            st, data, sense = await asyncio.wait_for(
                self.session.scsi(cdb, data_out=data_out, read_len=read_len, lun=self.lun), timeout)
        except (OSError, IscsiError, asyncio.IncompleteReadError) as e:
            return Answer(-1, error=f"{type(e).__name__}: {e}")
        except TimeoutError:
            return Answer(-1, error=f"no answer in {timeout}s")
        return decode(st, data, sense)

    async def cmd_past_ua(self, cdb: bytes, **kw: object) -> Answer:
        """The command, retried past unit attentions (power on, ALUA state changed, ...)."""
        for _ in range(8):
            a = await self.cmd(cdb, **kw)  # type: ignore[arg-type]
            if not a.unit_attention:
                return a
        return a

    async def tur(self) -> Answer:
        return await self.cmd_past_ua(tur_cdb())

    async def read(self, lba: int, blocks: int = 1) -> Answer:
        return await self.cmd_past_ua(read10_cdb(lba, blocks), read_len=blocks * BLOCK)

    async def write(self, lba: int, data: bytes, timeout: float = 120) -> Answer:
        return await self.cmd_past_ua(write10_cdb(lba, len(data) // BLOCK), data_out=data,
                                      timeout=timeout)

    async def rtpg(self) -> Answer:
        return await self.cmd_past_ua(rtpg_cdb(), read_len=4096)

    async def caw(self, lba: int, verify: bytes, write: bytes) -> Answer:
        """COMPARE AND WRITE of one block: GOOD, or MISCOMPARE (key 0xE) when ``verify``
        is not what the block holds."""
        return await self.cmd_past_ua(caw_cdb(lba), data_out=verify + write)


async def one(host: str, port: int, iqn: str, what: str, *args: object) -> Answer:
    """Log in, run one command (``tur``, ``read``, ``write``, ``rtpg``), log out."""
    try:
        async with Path(host, port, iqn) as p:
            return await getattr(p, what)(*args)
    except (OSError, IscsiError, asyncio.IncompleteReadError) as e:
        return Answer(-1, error=f"{type(e).__name__}: {e}")
