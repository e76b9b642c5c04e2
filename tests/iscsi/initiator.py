"""A minimal initiator-side PDU builder/parser for feeding a Connection bytes in tests.

Deliberately written from RFC 7143's field layouts rather than by reusing the target codec's
encoders, so the tests check the codec against an independent reading of the standard.
"""

from __future__ import annotations

import struct

from gluster_iscsi.iscsi.pdu import PduReader

ISID = bytes.fromhex("400001370000")


def _bhs(b0: int, b1: int, b2: int = 0, b3: int = 0, data: bytes = b"", lun: bytes = bytes(8),
         itt: int = 0, words: tuple[int, ...] = (0, 0, 0, 0, 0, 0, 0)) -> bytes:
    hdr = struct.pack(">BBBBI8sI7I", b0, b1, b2, b3, len(data), lun, itt, *words)
    return hdr + data + bytes(-len(data) % 4)


def text(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def login(pairs, *, csg=1, nsg=3, transit=True, cont=False, itt=1, cmdsn=1, expstatsn=0,
          isid=ISID, tsih=0, cid=0, vmax=0, vmin=0) -> bytes:
    flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
    data = text(pairs) if isinstance(pairs, list) else pairs
    lun = isid + tsih.to_bytes(2, "big")
    return _bhs(0x43, flags, vmax, vmin, data, lun, itt, (cid << 16, cmdsn, expstatsn, 0, 0, 0, 0))


def scsi_cmd(cdb: bytes, *, itt: int, cmdsn: int, edtl: int = 0, read=False, write=False,
             final=True, data: bytes = b"", lun: int = 0, immediate=False, attr=1) -> bytes:
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | attr
    cdb16 = cdb.ljust(16, b"\0")
    w = struct.unpack(">4I", cdb16)
    lunb = bytes((0, lun)) + bytes(6)
    return _bhs(0x01 | (0x40 if immediate else 0), flags, 0, 0, data, lunb, itt,
                (edtl, cmdsn, 0, *w))


def data_out(data: bytes, *, itt: int, ttt: int = 0xFFFFFFFF, datasn: int = 0, offset: int = 0,
             final=True, lun: int = 0) -> bytes:
    lunb = bytes((0, lun)) + bytes(6)
    return _bhs(0x05, 0x80 if final else 0, 0, 0, data, lunb, itt, (ttt, 0, 0, 0, datasn, offset, 0))


def nop_out(*, itt: int, cmdsn: int, ttt: int = 0xFFFFFFFF, data: bytes = b"", immediate=True) -> bytes:
    return _bhs(0x00 | (0x40 if immediate else 0), 0x80, 0, 0, data, bytes(8), itt, (ttt, cmdsn, 0, 0, 0, 0, 0))


def text_req(pairs, *, itt: int, cmdsn: int, ttt: int = 0xFFFFFFFF, cont=False, immediate=True) -> bytes:
    data = text(pairs) if isinstance(pairs, list) else pairs
    return _bhs(0x04 | (0x40 if immediate else 0), 0x40 if cont else 0x80, 0, 0, data, bytes(8), itt,
                (ttt, cmdsn, 0, 0, 0, 0, 0))


def tmf(function: int, *, itt: int, cmdsn: int, lun: int = 0, rtt: int = 0xFFFFFFFF, refcmdsn: int = 0) -> bytes:
    return _bhs(0x42, 0x80 | function, 0, 0, b"", bytes((0, lun)) + bytes(6), itt,
                (rtt, cmdsn, 0, refcmdsn, 0, 0, 0))


def logout(*, itt: int, cmdsn: int, reason: int = 0, cid: int = 0) -> bytes:
    return _bhs(0x46, 0x80 | reason, 0, 0, b"", bytes(8), itt, (cid << 16, cmdsn, 0, 0, 0, 0, 0))


class Rsp:
    """A parsed target PDU, fields by RFC name."""

    def __init__(self, pdu) -> None:
        b = pdu.bhs
        self.raw = pdu
        self.opcode = b[0] & 0x3F
        self.flags = b[1]
        self.b2, self.b3 = b[2], b[3]
        self.data = pdu.data
        self.itt = pdu.itt
        self.words = struct.unpack(">7I", b[20:48])
        self.lun = b[8:16]

    @property
    def ttt(self):
        return self.words[0]

    @property
    def statsn(self):
        return self.words[1]

    @property
    def expcmdsn(self):
        return self.words[2]

    @property
    def maxcmdsn(self):
        return self.words[3]

    @property
    def status_class(self):
        return self.b2 if self.opcode != 0x23 else self.words[4] >> 24

    @property
    def status_detail(self):
        return (self.words[4] >> 16) & 0xFF

    @property
    def datasn(self):
        return self.words[4]

    @property
    def buffer_offset(self):
        return self.words[5]

    @property
    def residual(self):
        return self.words[6]

    @property
    def tsih(self):
        return int.from_bytes(self.lun[6:8], "big")

    def pairs(self) -> dict[str, str]:
        out = {}
        for item in bytes(self.data).split(b"\0"):
            if item:
                k, _, v = item.decode().partition("=")
                out[k] = v
        return out


def parse(buffers, *, header_digest=False, data_digest=False) -> list[Rsp]:
    reader = PduReader(1 << 24)
    reader.header_digest = header_digest
    reader.data_digest = data_digest
    reader.feed(b"".join(bytes(b) for b in buffers))
    out = []
    while (p := reader.next_pdu()) is not None:
        out.append(Rsp(p))
    assert reader.buffered == 0
    return out
