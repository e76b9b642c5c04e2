"""The asyncio layer with real sockets on loopback: keepalives, flow of a command, shutdown."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from gluster_iscsi.backstore.file import FileStore
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.buffers import POOL
from gluster_iscsi.iscsi.pdu import PduReader
from gluster_iscsi.model.targets import AccessRule, Portal, Target
from gluster_iscsi.scsi.device import DeviceServer
from gluster_iscsi.server.daemon import Daemon
from gluster_iscsi.server.runner import lu_on

from ..iscsi import initiator as I

TNAME = "iqn.2026-11.org.gluster-iscsi:server-test"


async def start(tmp_path, **kw) -> tuple[Daemon, int]:
    d = Daemon(tmp_path, **kw)
    lu = lu_on(MemoryStore(8 << 20), serial="srv0001", naa=bytes.fromhex("6001405000000001"))
    d.add_target(Target(TNAME, 1, acl=[AccessRule(network="ALL")], device=DeviceServer({1: lu}, target_name=TNAME)))
    await d.add_portal(Portal("127.0.0.1", 0))
    return d, d.portals()[0].port


async def login(port: int):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(I.login([("InitiatorName", "iqn.2026-11.org.example:t"), ("TargetName", TNAME)]))
    reader = PduReader(1 << 20)
    rsp = await next_pdu(r, reader)
    assert rsp.opcode == 0x23 and rsp.status_class == 0
    return r, w, reader


async def next_pdu(r, reader, timeout=5.0):
    while True:
        p = reader.next_pdu()
        if p is not None:
            return I.Rsp(p)
        data = await asyncio.wait_for(r.read(65536), timeout)
        if not data:
            return None
        reader.feed(data)


def test_idle_connection_is_pinged_and_closed_when_silent(tmp_path):
    async def main():
        d, port = await start(tmp_path, nop_interval=0.2, nop_timeout=0.3)
        try:
            r, w, reader = await login(port)
            ping = await next_pdu(r, reader, timeout=3)
            assert ping.opcode == 0x20 and ping.itt == 0xFFFFFFFF and ping.ttt != 0xFFFFFFFF
            # we do not answer: the target gives up on us and closes the connection
            assert await next_pdu(r, reader, timeout=3) is None
            w.close()
        finally:
            await d.stop()

    asyncio.run(main())


def test_answered_pings_keep_the_connection(tmp_path):
    async def main():
        d, port = await start(tmp_path, nop_interval=0.2, nop_timeout=0.3)
        try:
            r, w, reader = await login(port)
            for _ in range(4):
                ping = await next_pdu(r, reader, timeout=3)
                assert ping.opcode == 0x20
                w.write(I.nop_out(itt=0xFFFFFFFF, cmdsn=1, ttt=ping.ttt))
            cdb = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
            w.write(I.scsi_cmd(cdb, itt=7, cmdsn=1, edtl=512, read=True, lun=1))
            while True:
                rsp = await next_pdu(r, reader)
                if rsp.opcode != 0x20:
                    break
                w.write(I.nop_out(itt=0xFFFFFFFF, cmdsn=1, ttt=rsp.ttt))
            assert rsp.opcode in (0x21, 0x25) and rsp.itt == 7  # answered (GOOD or the power-on UA)
            w.close()
        finally:
            await d.stop()

    asyncio.run(main())


def test_stop_closes_connections_and_portals(tmp_path):
    async def main():
        d, port = await start(tmp_path)
        r, w, reader = await login(port)
        await d.stop()
        assert await next_pdu(r, reader, timeout=5) is None
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass
        else:
            raise AssertionError("portal still open after stop")
        w.close()

    asyncio.run(main())


class HangingStore(MemoryStore):
    """A store whose reads and writes block until released, like a Gluster volume that lost
    quorum; it remembers the buffers its writes were given."""

    blocking = True

    def __init__(self, size: int, *, reads: bool = True) -> None:
        super().__init__(size)
        self.release = __import__("threading").Event()
        self.buffers: list[object] = []
        self.reads = reads  # False: only writes hang

    def read_into(self, offset, buf):
        if self.reads:
            self.release.wait(30)
        super().read_into(offset, buf)

    def write(self, offset, data):
        self.buffers.append(memoryview(data).obj)
        self.release.wait(30)
        super().write(offset, data)


async def command(r, w, reader, itt: int, cmdsn: int, lun: int):
    """READ(10) one block; retries once on the power-on unit attention. Returns (status, sense)."""
    for attempt in range(2):
        cdb = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
        w.write(I.scsi_cmd(cdb, itt=itt + attempt, cmdsn=cmdsn + attempt, edtl=512, read=True, lun=lun))
        while True:
            rsp = await next_pdu(r, reader, timeout=10)
            if rsp.opcode == 0x25 and rsp.flags & 1:
                return 0, b""
            if rsp.opcode == 0x21:
                sense = bytes(rsp.data)[2:]
                if rsp.b3 == 2 and sense[2] & 0x0F == 6 and attempt == 0:
                    break  # unit attention: once more
                return rsp.b3, sense
    raise AssertionError("unit attention did not clear")


def test_a_hung_store_fails_its_commands_within_the_io_timeout_and_spares_other_luns(tmp_path):
    async def main():
        d, port = await start(tmp_path, io_timeout=0.5)
        hung = HangingStore(8 << 20)
        d.registry.lookup(TNAME).device.add_lun(2, lu_on(hung, serial="hung0001"))
        try:
            r, w, reader = await login(port)
            t0 = asyncio.get_running_loop().time()
            status, sense = await command(r, w, reader, 10, 1, lun=2)
            elapsed = asyncio.get_running_loop().time() - t0
            assert status == 0x02 and sense[2] & 0x0F == 0x02  # CHECK CONDITION, NOT READY
            assert 0.4 < elapsed < 5
            # LUN 1 (another store) still answers while LUN 2's call is stuck
            assert (await command(r, w, reader, 20, 3, lun=1))[0] == 0
            hung.release.set()
            # the volume is back: the same session reads LUN 2 again
            assert (await command(r, w, reader, 30, 5, lun=2))[0] == 0
            w.close()
        finally:
            hung.release.set()
            await d.stop()

    asyncio.run(main())


def test_removing_a_portal_closes_its_connections_only(tmp_path):
    async def main():
        d, port = await start(tmp_path)
        await d.add_portal(Portal("127.0.0.1", 0))
        other = next(p.port for p in d.portals() if p.port != port)
        try:
            r1, w1, reader1 = await login(port)
            r2, w2, reader2 = await login(other)
            await d.remove_portal(Portal("127.0.0.1", port))
            assert await next_pdu(r1, reader1, timeout=5) is None  # closed
            w2.write(I.nop_out(itt=5, cmdsn=1))
            rsp = await next_pdu(r2, reader2)
            assert rsp is not None and rsp.opcode == 0x20 and rsp.itt == 5
            assert [p.port for p in d.portals()] == [other]
            w1.close()
            w2.close()
        finally:
            await d.stop()

    asyncio.run(main())


def test_a_large_payload_that_trickles_in_completes_and_small_pdus_flow_again(tmp_path):
    # While a large data segment streams in, the driver asks to be woken only once much of
    # it is there (SO_RCVLOWAT): bytes that come slowly must still complete the command, and
    # afterwards a small PDU must be answered at once again.
    async def main():
        d, port = await start(tmp_path)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(I.login([("InitiatorName", "iqn.2026-11.org.example:t"), ("TargetName", TNAME),
                             ("MaxRecvDataSegmentLength", "262144"), ("ImmediateData", "Yes"),
                             ("InitialR2T", "No"), ("FirstBurstLength", "262144"),
                             ("MaxBurstLength", "262144")]))
            reader = PduReader(1 << 20)
            rsp = await next_pdu(r, reader)
            assert rsp.opcode == 0x23 and rsp.status_class == 0
            payload = bytes(range(256)) * 1024  # 256 KiB, all of it immediate data
            n = len(payload) // 512
            for attempt in range(2):  # the first write collects the power-on unit attention
                cdb = struct.pack(">BBIBHB", 0x2A, 0, 64, 0, n, 0)
                pdu = I.scsi_cmd(cdb, itt=20 + attempt, cmdsn=1 + attempt, edtl=len(payload),
                                 write=True, data=payload, lun=1)
                for i in range(0, len(pdu), 40000):  # 40 KB every 50 ms
                    w.write(pdu[i : i + 40000])
                    await w.drain()
                    await asyncio.sleep(0.05)
                rsp = await next_pdu(r, reader, timeout=5)
                assert rsp.opcode == 0x21 and rsp.itt == 20 + attempt
                if rsp.b3 == 0:
                    break
            assert rsp.b3 == 0, "WRITE did not complete GOOD"
            w.write(I.nop_out(itt=30, cmdsn=3, data=b"ping"))
            pong = await next_pdu(r, reader, timeout=1)
            assert pong.opcode == 0x20 and pong.itt == 30 and bytes(pong.data) == b"ping"
            lu = d.registry.targets[TNAME].device.lu(1)
            assert lu.store.read(64 * 512, len(payload)) == payload
            w.close()
        finally:
            await d.stop()

    asyncio.run(main())


async def read_back(r, w, reader, itt: int, cmdsn: int, lba: int, blocks: int, lun: int) -> bytes:
    cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
    w.write(I.scsi_cmd(cdb, itt=itt, cmdsn=cmdsn, edtl=blocks * 512, read=True, lun=lun))
    data = b""
    while True:
        rsp = await next_pdu(r, reader, timeout=10)
        assert rsp.opcode == 0x25, rsp.opcode  # Data-In, the last one with status
        data += bytes(rsp.data)
        if rsp.flags & 1:
            assert rsp.b3 == 0
            return data


@pytest.mark.parametrize("io_uring", [True, False], ids=["io_uring", "worker-threads"])
def test_a_file_lun_writes_and_reads_back_through_the_ring_or_the_workers(tmp_path, io_uring):
    """A file store that lends its descriptor (one on a FUSE mount; an ext4 file made to lend
    here, the ring cannot tell them apart) goes to io_uring, or, turned off, to the worker
    pool: the bytes written are in the file at their offset and read back the same."""
    async def main():
        d, port = await start(tmp_path, io_uring=io_uring)
        store = FileStore(tmp_path / "lun2.img", create_size=8 << 20)
        if not store.blocking:
            pytest.skip("the test directory is on tmpfs: file stores there run inline")
        store.lends_fd = True  # as on a FUSE mount
        d.registry.lookup(TNAME).device.add_lun(2, lu_on(store, serial="file0001"))
        try:
            r, w, reader = await login(port)
            assert (await command(r, w, reader, 10, 1, lun=2))[0] == 0  # and the unit attention
            payload = os.urandom(4096)
            cdb = struct.pack(">BBIBHB", 0x2A, 0, 16, 0, 8, 0)
            w.write(I.scsi_cmd(cdb, itt=20, cmdsn=3, edtl=4096, write=True, data=payload, lun=2))
            rsp = await next_pdu(r, reader, timeout=10)
            assert rsp.opcode == 0x21 and rsp.b3 == 0
            assert os.pread(store._fd, 4096, 16 * 512) == payload
            assert await read_back(r, w, reader, 21, 4, 16, 8, lun=2) == payload
            assert await read_back(r, w, reader, 22, 5, 12, 16, lun=2) == bytes(2048) + payload + bytes(2048)
            if io_uring:
                assert d.ring is not None and d.ring.submitted == 4 and not d.ring.in_flight()
            else:
                assert d.ring is None
            w.close()
        finally:
            await d.stop()

    asyncio.run(main())


def test_a_timed_out_write_keeps_its_buffer_from_the_next_command(tmp_path):
    """The worker still holds the buffer of a write that timed out, and writes it when the
    volume comes back: another command must not be given that buffer meanwhile."""
    async def main():
        d, port = await start(tmp_path, io_timeout=0.5)
        hung = HangingStore(8 << 20, reads=False)
        d.registry.lookup(TNAME).device.add_lun(2, lu_on(hung, serial="hung0002"))
        try:
            r, w, reader = await login(port)
            assert (await command(r, w, reader, 10, 1, lun=2))[0] == 0  # and the unit attention
            payload = os.urandom(64 << 10)  # the smallest size the pool keeps
            cdb = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 128, 0)
            pdu = I.scsi_cmd(cdb, itt=20, cmdsn=3, edtl=len(payload), write=True, data=payload,
                             lun=2)
            # The header first: a payload still to come is received into a pooled buffer.
            w.write(pdu[:48])
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(pdu[48:])
            rsp = await next_pdu(r, reader, timeout=10)
            assert rsp.opcode == 0x21 and rsp.b3 == 0x02  # CHECK CONDITION: the I/O timeout
            assert len(hung.buffers) == 1
            held = hung.buffers[0]
            assert type(held).__name__ == "PooledBuffer"
            taken = [POOL.borrow(len(payload)) for _ in range(8)]
            assert all(v.obj is not held for v in taken)
            for v in taken:
                POOL.give_back(v)
            hung.release.set()
            w.close()
        finally:
            hung.release.set()
            await d.stop()

    asyncio.run(main())


def test_a_command_that_waits_off_the_loop_completes_at_queue_depth_one(tmp_path):
    """SANITIZE without IMMED waits for its job (WaitJob, a wait, not a store call): alone on
    its connection it must still go to a worker pool, never the ring or the loop, not fail."""
    async def main():
        d, port = await start(tmp_path)
        store = FileStore(tmp_path / "lun2.img", create_size=1 << 20)
        d.registry.lookup(TNAME).device.add_lun(2, lu_on(store, serial="file0002"))
        try:
            r, w, reader = await login(port)
            assert (await command(r, w, reader, 10, 1, lun=2))[0] == 0  # and the unit attention
            params = bytes([0x01, 0, 0, 4]) + b"\xaa" * 4  # OVERWRITE once with 0xAAAAAAAA
            cdb = struct.pack(">BBxxxxxHB", 0x48, 0x01, len(params), 0)
            w.write(I.scsi_cmd(cdb, itt=20, cmdsn=3, edtl=len(params), write=True, data=params,
                               lun=2))
            rsp = await next_pdu(r, reader, timeout=30)
            assert rsp.opcode == 0x21, rsp.opcode
            assert rsp.b3 == 0, bytes(rsp.data).hex()  # GOOD, not HARDWARE ERROR
            assert os.pread(store._fd, 8, 4096) == b"\xaa" * 8
            w.close()
        finally:
            await d.stop()

    asyncio.run(main())
