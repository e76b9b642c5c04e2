"""One memory budget for the whole daemon, with real sockets (issue 16 items 6 and 7).

Peers that take memory and give nothing back: READs whose responses are never read, WRITEs
whose R2Ts are never answered. What the daemon holds is measured through its own accounting
(the budget, the transports' unsent bytes, the connections' data-out buffers), never RSS.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.buffers import POOL
from gluster_iscsi.iscsi.pdu import PduReader
from gluster_iscsi.model.targets import AccessRule, Portal, Target
from gluster_iscsi.scsi.device import DeviceServer
from gluster_iscsi.server.daemon import Daemon
from gluster_iscsi.server.runner import lu_on

from ..iscsi import initiator as I

TNAME = "iqn.2026-11.org.gluster-iscsi:memory-test"
MiB = 1 << 20
BUDGET, SHARE = 16 * MiB, 8 * MiB
GOOD, BUSY, TASK_SET_FULL = 0x00, 0x08, 0x28


async def start(tmp_path) -> tuple[Daemon, int]:
    d = Daemon(tmp_path, memory_budget=BUDGET, session_share=SHARE, poll_usecs=0, io_uring=False)
    lu = lu_on(MemoryStore(16 * MiB), serial="mem0001", naa=bytes.fromhex("6001405000000002"))
    d.add_target(Target(TNAME, 1, acl=[AccessRule(network="ALL")], device=DeviceServer({1: lu}, target_name=TNAME)))
    await d.add_portal(Portal("127.0.0.1", 0))
    return d, d.portals()[0].port


async def login(port: int, n: int, rcvbuf: int | None = None):
    sock = socket.socket()
    if rcvbuf is not None:  # a peer that reads nothing: keep the kernel from taking much for it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=sock)
    w.write(I.login([("InitiatorName", "iqn.2026-11.org.example:mem"), ("TargetName", TNAME),
                     ("MaxRecvDataSegmentLength", "262144")], isid=bytes([0x80, 0, 0, 0, 0, n])))
    reader = PduReader(1 << 20)
    rsp = await next_pdu(r, reader)
    assert rsp.opcode == 0x23 and rsp.status_class == 0
    return r, w, reader


async def next_pdu(r, reader, timeout=10.0):
    while True:
        p = reader.next_pdu()
        if p is not None:
            return I.Rsp(p)
        data = await asyncio.wait_for(r.read(1 << 20), timeout)
        if not data:
            return None
        reader.feed(data)


async def until(cond, timeout=10.0) -> None:
    """Wait for the daemon to get somewhere (a bound on a hang, never a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "the daemon did not get there"
        await asyncio.sleep(0.01)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


async def status_of(r, reader, itt: int) -> tuple[int, bytes]:
    """Read responses until the SCSI status of ``itt``: (status, its Data-In bytes)."""
    data = bytearray()
    while True:
        p = await next_pdu(r, reader)
        assert p is not None, "connection closed"
        if p.itt != itt:
            continue
        if p.opcode == 0x25:  # Data-In
            data += p.data
            if p.flags & 0x01:
                return p.b3, bytes(data)
        elif p.opcode == 0x21:
            return p.b3, bytes(data)


async def a_session_does_io(port: int, n: int) -> None:
    r, w, reader = await login(port, n)
    w.write(I.scsi_cmd(bytes(6), itt=9, cmdsn=1, lun=1))  # takes the new nexus's unit attention
    await status_of(r, reader, 9)
    w.write(I.scsi_cmd(write10(0, 2048), itt=1, cmdsn=2, edtl=MiB, write=True, lun=1))
    payload = bytes(range(256)) * (MiB // 256)
    seg = 256 << 10  # the target's MaxRecvDataSegmentLength
    while True:  # answer each R2T (MaxBurstLength may be below 1 MiB) until the response
        p = await next_pdu(r, reader)
        if p.opcode != 0x31:
            assert (p.opcode, p.itt, p.b3) == (0x21, 1, GOOD)
            break
        offset, length = p.words[5], p.words[6]
        w.write(b"".join(I.data_out(payload[o : o + seg], itt=1, ttt=p.ttt, datasn=i, offset=o,
                                    final=o + seg >= offset + length, lun=1)
                         for i, o in enumerate(range(offset, offset + length, seg))))
    w.write(I.scsi_cmd(read10(0, 2048), itt=2, cmdsn=3, edtl=MiB, read=True, lun=1))
    assert await status_of(r, reader, 2) == (GOOD, payload)
    w.close()


def held(d: Daemon) -> int:
    """What the daemon holds for its connections: unsent response bytes and data-out buffers."""
    return sum(c.transport.get_write_buffer_size() + c.conn.buffered
               for c in d.connections if c.transport is not None and c.conn is not None)


def test_unread_reads_stay_within_the_budget_and_another_session_still_does_io(tmp_path):
    async def main():
        d, port = await start(tmp_path)
        try:
            r, w, _ = await login(port, 1, rcvbuf=4096)
            # 48 reads of 1 MiB, none of whose responses this peer will read
            w.write(b"".join(I.scsi_cmd(read10(0, 2048), itt=100 + i, cmdsn=1 + i, edtl=MiB,
                                        read=True, lun=1) for i in range(48)))
            hog = next(iter(d.connections))
            await until(lambda: hog.conn.session.exp_cmdsn == 49 or hog._paused)
            await until(lambda: not hog.conn.tasks)
            assert held(d) <= SHARE
            assert d.budget.used <= SHARE and d.budget.peak <= BUDGET
            # the budget is not all taken: another session reads and writes
            await a_session_does_io(port, 2)
            assert held(d) <= BUDGET and d.budget.peak <= BUDGET
            # the hog goes away: every byte it held is released
            w.transport.abort()
            await until(lambda: len(d.connections) == 0)
            assert d.budget.used == 0
            device = d.registry.lookup(TNAME).device
            assert device._nexuses == {} and device.lu(1)._ua == {}  # both sessions ended
            # the daemon's timer: a whole interval without a borrow and the pool is emptied
            d._trim_pool()
            d._trim_pool()
            assert POOL.retained == 0 and not any(POOL._free.values())
        finally:
            await d.stop()

    asyncio.run(main())


def test_writes_holding_r2ts_share_one_budget_busy_then_task_set_full(tmp_path):
    async def main():
        d, port = await start(tmp_path)
        try:
            peers = []
            statuses: dict[int, list[int]] = {}
            for n in (1, 2, 3):
                r, w, reader = await login(port, n)
                peers.append((r, w))
                # 4 MiB writes whose data never comes: each holds its buffer, waiting
                w.write(b"".join(I.scsi_cmd(write10(0, 8192), itt=10 + i, cmdsn=1 + i,
                                            edtl=4 * MiB, write=True, lun=1) for i in range(4)))
                statuses[n] = []
                for _ in range(4):
                    p = await next_pdu(r, reader)
                    if p.opcode == 0x21:
                        statuses[n].append(p.b3)
                    else:
                        assert p.opcode == 0x31  # an R2T: this one holds its buffer
            # two 4 MiB writes fill a session's 8 MiB share; two sessions fill the budget
            assert statuses[1] == [TASK_SET_FULL] * 2 and statuses[2] == [TASK_SET_FULL] * 2
            assert statuses[3] == [BUSY] * 4  # nothing of its own in flight: BUSY, not FULL
            assert held(d) <= BUDGET and d.budget.used == BUDGET
            for _, w in peers:
                w.transport.abort()
            await until(lambda: len(d.connections) == 0)
            assert d.budget.used == 0
        finally:
            await d.stop()

    asyncio.run(main())


def test_serve_takes_a_memory_budget_and_refuses_a_tiny_one(tmp_path):
    from click.testing import CliRunner

    from gluster_iscsi.cli.main import main
    from gluster_iscsi.cli.serve import _memory_budget

    assert _memory_budget(None, None, "1GiB") == 1 << 30  # type: ignore[arg-type]
    assert _memory_budget(None, None, None) is None  # type: ignore[arg-type]
    res = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path), "--memory-budget", "10M"])
    assert res.exit_code == 2 and "below the minimum of 64MiB" in res.output
    res = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path), "--memory-budget", "lots"])
    assert res.exit_code == 2 and "invalid size" in res.output
