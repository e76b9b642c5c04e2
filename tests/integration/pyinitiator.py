"""A small asyncio iSCSI initiator for tests that need many sessions at once.

It speaks just enough RFC 7143 (login, READ(10)/WRITE(10) with immediate data and R2T,
logout) to drive load; PDUs are built by the independent test encoder in tests/iscsi.
"""

from __future__ import annotations

import asyncio
import os
import struct

from gluster_iscsi.iscsi.pdu import PduReader

from ..iscsi import initiator as I


class IscsiError(Exception):
    pass


class UnitAttention(IscsiError):
    """CHECK CONDITION with sense key UNIT ATTENTION: the command may simply be retried."""


def _check(rsp: I.Rsp, what: str) -> None:
    if rsp.b3 == 0:
        return
    sense = bytes(rsp.data)[2:]
    key = (sense[2] & 0x0F) if sense[:1] in (b"\x70", b"\x71") else (sense[1] & 0x0F if sense else 0)
    if rsp.b3 == 0x02 and key == 0x06:
        raise UnitAttention(what)
    raise IscsiError(f"{what}: status {rsp.b3:#x} sense {sense.hex()}")


class Session:
    def __init__(self, host: str, port: int, target: str, initiator: str) -> None:
        self.host, self.port, self.target, self.initiator = host, port, target, initiator
        self.cmdsn = 1
        self.itt = 0
        self.reader = PduReader(1 << 24)
        self.first_burst = 65536
        self.max_recv = 262144

    async def __aenter__(self) -> Session:
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        isid = b"\x80" + os.urandom(5)
        self.w.write(I.login([
            ("InitiatorName", self.initiator), ("TargetName", self.target), ("SessionType", "Normal"),
            ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144"),
            ("ImmediateData", "Yes"), ("InitialR2T", "Yes"), ("FirstBurstLength", "65536"),
            ("MaxBurstLength", "262144"),
        ], isid=isid))
        rsp = await self._next()
        if rsp.opcode != 0x23 or rsp.status_class != 0:
            raise IscsiError(f"login failed {rsp.status_class}/{rsp.status_detail}")
        keys = rsp.pairs()
        self.target_mrdsl = int(keys.get("MaxRecvDataSegmentLength", 8192))
        self.first_burst = min(int(keys.get("FirstBurstLength", 65536)), self.target_mrdsl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            self.w.write(I.logout(itt=self._itt(), cmdsn=self.cmdsn))
            await asyncio.wait_for(self._next(), 10)
        finally:
            self.w.close()

    def _itt(self) -> int:
        self.itt += 1
        return self.itt

    async def _next(self) -> I.Rsp:
        while True:
            p = self.reader.next_pdu()
            if p is not None:
                return I.Rsp(p)
            data = await self.r.read(1 << 20)
            if not data:
                raise IscsiError("connection closed by the target")
            self.reader.feed(data)

    async def write10(self, lba: int, data: bytes, block: int = 512) -> None:
        for _ in range(3):
            try:
                return await self._write10(lba, data, block)
            except UnitAttention:
                continue
        raise IscsiError("WRITE(10): unit attention did not clear")

    async def read10(self, lba: int, nbytes: int, block: int = 512) -> bytes:
        for _ in range(3):
            try:
                return await self._read10(lba, nbytes, block)
            except UnitAttention:
                continue
        raise IscsiError("READ(10): unit attention did not clear")

    async def _write10(self, lba: int, data: bytes, block: int = 512) -> None:
        itt = self._itt()
        cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, len(data) // block, 0)
        imm = data[: self.first_burst]
        self.w.write(I.scsi_cmd(cdb, itt=itt, cmdsn=self.cmdsn, edtl=len(data), write=True, data=imm,
                                lun=1))
        self.cmdsn += 1
        while True:
            rsp = await self._next()
            if rsp.opcode == 0x31:  # R2T: send what it asks for
                off, length = rsp.buffer_offset, rsp.residual
                sn = 0
                for start in range(off, off + length, self.target_mrdsl):
                    chunk = data[start : min(start + self.target_mrdsl, off + length)]
                    self.w.write(I.data_out(chunk, itt=itt, ttt=rsp.ttt, datasn=sn, offset=start,
                                            final=start + len(chunk) >= off + length, lun=1))
                    sn += 1
            elif rsp.opcode == 0x21:
                _check(rsp, "WRITE(10)")
                return
            else:
                raise IscsiError(f"unexpected opcode {rsp.opcode:#x}")

    async def _read10(self, lba: int, nbytes: int, block: int = 512) -> bytes:
        itt = self._itt()
        cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, nbytes // block, 0)
        self.w.write(I.scsi_cmd(cdb, itt=itt, cmdsn=self.cmdsn, edtl=nbytes, read=True, lun=1))
        self.cmdsn += 1
        buf = bytearray(nbytes)
        while True:
            rsp = await self._next()
            if rsp.opcode == 0x25:
                off = rsp.buffer_offset
                buf[off : off + len(rsp.data)] = rsp.data
                if rsp.flags & 0x01:
                    if rsp.b3 != 0:
                        raise IscsiError(f"READ(10) status {rsp.b3:#x}")
                    return bytes(buf)
            elif rsp.opcode == 0x21:
                _check(rsp, "READ(10)")
                return bytes(buf)
            else:
                raise IscsiError(f"unexpected opcode {rsp.opcode:#x}")

    async def tmf(self, function: int, lun: int = 1) -> int:
        """A task management function (immediate): the target's response code (0: done)."""
        self.w.write(I.tmf(function, itt=self._itt(), cmdsn=self.cmdsn, lun=lun))
        while True:
            rsp = await self._next()
            if rsp.opcode == 0x22:
                return rsp.b2

    async def scsi(self, cdb: bytes, *, data_out: bytes = b"", read_len: int = 0,
                   lun: int = 1) -> tuple[int, bytes, bytes]:
        """Any command: (status, data-in, sense). Data-out goes as immediate data, then R2Ts."""
        itt = self._itt()
        cdb = bytes(cdb).ljust(16, b"\x00")
        write, read = bool(data_out), bool(read_len)
        edtl = len(data_out) if write else read_len
        self.w.write(I.scsi_cmd(cdb, itt=itt, cmdsn=self.cmdsn, edtl=edtl, write=write, read=read,
                                data=data_out[: self.first_burst], lun=lun))
        self.cmdsn += 1
        buf = bytearray(read_len)
        got = 0
        while True:
            rsp = await self._next()
            if rsp.opcode == 0x31:
                off, length = rsp.buffer_offset, rsp.residual
                sn = 0
                for start in range(off, off + length, self.target_mrdsl):
                    chunk = data_out[start : min(start + self.target_mrdsl, off + length)]
                    self.w.write(I.data_out(chunk, itt=itt, ttt=rsp.ttt, datasn=sn, offset=start,
                                            final=start + len(chunk) >= off + length, lun=lun))
                    sn += 1
            elif rsp.opcode == 0x25:
                off = rsp.buffer_offset
                buf[off : off + len(rsp.data)] = rsp.data
                got = max(got, off + len(rsp.data))
                if rsp.flags & 0x01:
                    return rsp.b3, bytes(buf[:got]), b""
            elif rsp.opcode == 0x21:
                sense = bytes(rsp.data)[2:] if rsp.b3 else b""
                return rsp.b3, bytes(buf[:got]), sense
            else:
                raise IscsiError(f"unexpected opcode {rsp.opcode:#x}")
