"""Command shipping (server/ship.py): the frame codec and the handshake, pure; then two or
three group members in one process on one tmp-dir group directory, each with its own
memory LU (so data can only be where the owner wrote it), real loopback sockets between
them, and a clock the tests move."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.buffers import MemoryBudget
from gluster_iscsi.group.shared import open_shared
from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiResult, ScsiTask
from gluster_iscsi.scsi.alua import AccessState as S
from gluster_iscsi.scsi.sense import parse_sense
from gluster_iscsi.scsi.task import Status
from gluster_iscsi.server import ship
from gluster_iscsi.server.driver import _group_lun_reset
from gluster_iscsi.server.group import GroupMember
from gluster_iscsi.server.iopool import IoPool
from gluster_iscsi.server.runner import Runner, lu_on

KEY = "0b6cfa4e-1111-2222-3333-444455556666"
TARGET = "iqn.2024-01.org.gluster:tgt"
SECRET = bytes(range(32))


def arun(fn: Any) -> Any:
    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        return asyncio.run(fn(*a, **kw))

    return run


# ------------------------------------------------------------------------------------ codec
def test_frames_round_trip_whole_byte_by_byte_and_with_trailing_bytes() -> None:
    one = ship.encode({"t": "cmd", "id": 1, "cdb": "2a00"}, b"\x01" * 512)
    two = ship.encode({"t": "res", "id": 1, "status": 0})
    dec = ship.FrameDecoder(4096)
    assert dec.feed(one + two) == [({"t": "cmd", "id": 1, "cdb": "2a00"}, b"\x01" * 512),
                                   ({"t": "res", "id": 1, "status": 0}, b"")]
    dec.end()
    dec = ship.FrameDecoder(4096)
    got = []
    for i in range(len(one)):
        got += dec.feed(one[i:i + 1])
    assert got == [({"t": "cmd", "id": 1, "cdb": "2a00"}, b"\x01" * 512)]
    assert dec.feed(two[:3]) == []
    with pytest.raises(ship.FrameError, match="ended inside"):
        dec.end()  # a truncated frame


def test_oversize_and_malformed_frames_are_refused_before_their_data() -> None:
    big = ship.encode({"t": "cmd", "id": 1}, b"\0" * 8193)
    with pytest.raises(ship.FrameError, match="data of 8193"):
        ship.FrameDecoder(8192).feed(big[:ship.PREFIX.size])  # the prefix alone says it
    with pytest.raises(ship.FrameError, match="header of"):
        ship.FrameDecoder(8192).feed(struct.pack(">II", ship.MAX_HEADER + 1, 0))
    with pytest.raises(ship.FrameError, match="not JSON"):
        ship.FrameDecoder(8192).feed(struct.pack(">II", 3, 0) + b"{x}")
    with pytest.raises(ship.FrameError, match="type"):
        ship.FrameDecoder(8192).feed(struct.pack(">II", 2, 0) + b"[]")


def test_proofs_need_the_secret_and_bind_both_nonces_and_the_name() -> None:
    ns, nc = b"s" * 32, b"c" * 32
    good = ship.client_proof(SECRET, ns, nc, "b")
    assert ship._proof_ok(good, ship.client_proof(SECRET, ns, nc, "b"))
    assert not ship._proof_ok(good, ship.client_proof(b"x" * 32, ns, nc, "b"))
    assert not ship._proof_ok(good, ship.client_proof(SECRET, nc, ns, "b"))
    assert not ship._proof_ok(good, ship.client_proof(SECRET, ns, nc, "c"))
    assert ship.server_proof(SECRET, nc, ns) != ship.client_proof(SECRET, ns, nc, "")
    assert not ship._proof_ok(good, None)


def test_the_group_secret_is_made_once_and_read_by_everyone(tmp_path: Path) -> None:
    one, two = open_shared(str(tmp_path / "g")), open_shared(str(tmp_path / "g"))
    try:
        first = ship.group_secret(one)
        assert len(first) == 32 and ship.group_secret(two) == first == ship.group_secret(one)
    finally:
        one.close()
        two.close()


# ------------------------------------------------------------------------------ the group
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Host:
    """The runner's transport for one command; ``done`` once it completed."""

    def __init__(self) -> None:
        self.result: ScsiResult | None = None
        self.done = asyncio.Event()

    def reserve(self, task: ScsiTask, n: int) -> bool:
        return True

    def full_status(self) -> Status:
        return Status.TASK_SET_FULL

    def alone(self) -> bool:
        return True

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        self.result = result
        self.done.set()


class Gateway:
    def __init__(self, g: Ships, name: str, number: int, tmp_path: Path, mode: str) -> None:
        self.name = name
        self.number = number
        self.shared = open_shared(str(tmp_path / "group"))
        self.member = GroupMember(self.shared, name, number, clock=g.clock, non_owner=mode)
        self.lu = lu_on(MemoryStore(1 << 20), serial="s1")
        self.member.attach(self.lu, KEY, "a")
        self.device = DeviceServer({0: self.lu}, target_name=TARGET)
        self.runner = Runner(clock=g.clock)
        self.server = ship.ShipServer(self.member, self.runner, self.resolve, SECRET,
                                      MemoryBudget(64 << 20))
        self.shipper = ship.Shipper(self.member, SECRET, self.runner, timeout=10)

    def resolve(self, target: str, lun: int) -> DeviceServer | None:
        return self.device if target == TARGET else None

    def nexus(self, who: str) -> Nexus:
        n = self.number
        return Nexus(f"iqn.2024-01.org.test:{who}", f"iqn.2024-01.org.test:{who},i,0x023d0000000{n}",
                     f"{TARGET},t,0x{n:04x}", relative_port=n, target_port_group=n)

    async def command(self, cdb: bytes, who: str, data: bytes | None = None,
                      read: int = 0) -> ScsiResult:
        """One command from initiator ``who`` through this gateway (its login's unit
        attention already delivered), as the connection driver starts it."""
        nexus = self.nexus(who)
        if nexus.initiator_port not in self.device._nexuses:
            self.device.nexus_added(nexus)
            self.lu.clear_ua(nexus.initiator_port)
        task = ScsiTask(cdb, 0, nexus, data_out=memoryview(data) if data is not None else None,
                        expected_length=len(data) if data is not None else read,
                        read=bool(read), write=data is not None)
        host = Host()
        self.runner.start(task, self.device.execute(task), self.lu, host)
        await asyncio.wait_for(host.done.wait(), 20)
        assert host.result is not None
        return host.result


class Ships:
    def __init__(self, tmp_path: Path, names: list[str], mode: str = "non-optimized") -> None:
        self.clock = Clock()
        self.gw = {name: Gateway(self, name, i, tmp_path, mode) for i, name in enumerate(names, 1)}

    async def start(self) -> None:
        for gw in self.gw.values():
            if gw.member.non_owner == "non-optimized":  # as the daemon does
                gw.member.ship_address = await gw.server.start("127.0.0.1")
                gw.shipper.install()
            await gw.member.start(run=False)
        await self.rounds(2)

    async def rounds(self, n: int = 1) -> None:
        for _ in range(n):
            for gw in self.gw.values():
                await gw.member.beat()
            self.clock.now += 1.0

    async def close(self) -> None:
        for gw in self.gw.values():
            gw.shipper.close()
            await gw.server.stop()
            gw.shared.close()


def write10(lba: int, blocks: int = 1) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") + b"\0"


def read10(lba: int, blocks: int = 1) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") + b"\0"


def caw(lba: int) -> bytes:
    return bytes([0x89, 0]) + lba.to_bytes(8, "big") + bytes(3) + bytes([1, 0, 0])


def prout(sa: int, key: int = 0, sa_key: int = 0, rtype: int = 0) -> tuple[bytes, bytes]:
    params = struct.pack(">QQ4xBxH", key, sa_key, 0, 0)
    return bytes([0x5F, sa, rtype, 0, 0]) + struct.pack(">IB", len(params), 0), params


@arun
async def test_a_non_owner_reports_non_optimized_and_its_write_lands_on_the_owner(tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        assert a.member.luns[KEY].lease.role.value == "owner"
        for gw in (a, b):  # the same table on both gateways
            assert gw.lu.alua.state_of(1) is S.ACTIVE_OPTIMIZED
            assert gw.lu.alua.state_of(2) is S.ACTIVE_NON_OPTIMIZED
        res = await b.command(write10(5), "y", b"\xab" * 512)
        # GOOD at once: a nexus first seen by shipping gets no POWER ON unit attention there
        assert res.status == Status.GOOD, parse_sense(res.sense or b"")
        assert b.shipper.shipped == 1 and a.server.served == 1
        assert b.lu.store.read(5 * 512, 512) == bytes(512)  # nothing written on b
        assert a.lu.store.read(5 * 512, 512) == b"\xab" * 512
        back = await a.command(read10(5), "x", read=512)
        assert back.status == Status.GOOD and bytes(back.data) == b"\xab" * 512
        shipped = await b.command(read10(5), "y", read=512)  # a read shipped back
        assert shipped.status == Status.GOOD and bytes(shipped.data) == b"\xab" * 512
        # the owner knows the shipped nexus by b's port: relative port 2, group 2
        assert a.device.target_ports()[2] == 2
        # INQUIRY is b's own: not shipped
        inq = await b.command(bytes([0x12, 0, 0, 0, 96, 0]), "y", read=96)
        assert inq.status == Status.GOOD and b.shipper.shipped == 2
    finally:
        await g.close()


@arun
async def test_a_reservation_made_through_the_owner_is_enforced_on_a_write_shipped_through_b(
        tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        loop = asyncio.get_running_loop()

        def pr(cdb: bytes, params: bytes) -> ScsiResult:  # PR OUT on a worker (volume I/O)
            nexus = a.nexus("x")
            if nexus.initiator_port not in a.device._nexuses:
                a.device.nexus_added(nexus)
                a.lu.clear_ua(nexus.initiator_port)
            task = ScsiTask(cdb, 0, nexus, data_out=memoryview(params),
                            expected_length=len(params), write=True)
            return a.runner.run(a.device.execute(task), a.lu)

        assert (await loop.run_in_executor(None, pr, *prout(0, sa_key=0xAA))).status == 0
        assert (await loop.run_in_executor(None, pr, *prout(1, key=0xAA, rtype=1))).status == 0
        # write exclusive, held by x through a: y through b conflicts, on the owner
        res = await b.command(write10(1), "y", b"\x01" * 512)
        assert res.status == Status.RESERVATION_CONFLICT
        # so does x through b: another I_T nexus (the owner saw b's relative port)
        res = await b.command(write10(1), "x", b"\x01" * 512)
        assert res.status == Status.RESERVATION_CONFLICT
        assert (await a.command(write10(1), "x", b"\x02" * 512)).status == Status.GOOD
        read = await b.command(read10(1), "y", read=512)  # reads are not excluded
        assert read.status == Status.GOOD and bytes(read.data) == b"\x02" * 512
        # 3 commands; the first was sent twice: b had not loaded the PR OUTs' state version
        # the owner applied, so the owner answered it ``stale``
        assert b.shipper.shipped == 4
    finally:
        await g.close()


@arun
async def test_compare_and_write_from_three_gateways_exactly_one_wins_each_round(tmp_path):
    g = Ships(tmp_path, ["a", "b", "c"])
    await g.start()
    gws = list(g.gw.values())
    try:
        current = bytes(512)
        for rnd in range(12):
            order = gws[rnd % 3:] + gws[:rnd % 3]
            news = {gw.name: bytes([rnd * 3 + i + 1]) * 512 for i, gw in enumerate(order)}
            results = await asyncio.gather(*(
                gw.command(caw(7), "i" + gw.name, current + news[gw.name]) for gw in order))
            won = [gw.name for gw, r in zip(order, results, strict=True) if r.status == 0]
            assert len(won) == 1, [(r.status, parse_sense(r.sense or b"")) for r in results]
            for r in results:
                if r.status != 0:
                    assert parse_sense(r.sense or b"") == (0x0E, 0x1D00)  # MISCOMPARE
            current = news[won[0]]
            assert g.gw["a"].lu.store.read(7 * 512, 512) == current
        assert g.gw["b"].shipper.shipped == 12 and g.gw["c"].shipper.shipped == 12
    finally:
        await g.close()


@arun
async def test_a_command_shipped_to_a_gateway_that_no_longer_owns_ends_not_ready_04_0a(tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        lease = b.member.luns[KEY].lease
        lease.record = dataclasses.replace(lease.record, epoch=lease.record.epoch + 7)
        res = await b.command(write10(2), "y", b"\x05" * 512)
        assert res.status == Status.CHECK_CONDITION
        assert parse_sense(res.sense or b"") == (0x02, 0x040A)
        assert a.server.served == 0 and a.lu.store.read(2 * 512, 512) == bytes(512)
    finally:
        await g.close()


@arun
async def test_a_lun_reset_through_a_non_owner_resets_the_owner_lu(tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        assert (await a.command(bytes(6), "x")).status == Status.GOOD  # x known on a
        # an SPC-2 RESERVE(6) by x through a: the owner's memory alone
        assert (await a.command(bytes([0x16, 0, 0, 0, 0, 0]), "x")).status == Status.GOOD
        res = await b.command(bytes(6), "y")  # TEST UNIT READY, shipped: conflicts on a
        assert res.status == Status.RESERVATION_CONFLICT
        # what the driver does: b's own LU reset, then the group's event (state record),
        # applied by the owner at its beat; the TMF answers once the owner said so
        b.device.lun_reset(0, b.nexus("y"))
        reset = asyncio.ensure_future(_group_lun_reset(b.lu))
        while not reset.done():
            await a.member.beat()
            g.clock.now += 0.1
            await asyncio.sleep(0.01)
        assert reset.result() is True
        await asyncio.sleep(0.05)  # the abort of the owner's tasks is handed to the loop
        res = await a.command(bytes(6), "x")
        assert parse_sense(res.sense or b"") == (0x06, 0x2903)  # BUS DEVICE RESET FUNCTION
        res = await b.command(bytes(6), "y")  # b's own reset UA for y, then no conflict
        assert parse_sense(res.sense or b"") == (0x06, 0x2903)
        assert (await b.command(bytes(6), "y")).status == Status.GOOD  # (none on the owner)
    finally:
        await g.close()


@arun
async def test_a_reset_reaches_each_nexus_of_every_gateway_once_and_never_late(tmp_path):
    # A nexus's unit attentions are queued on the gateway its session is on; the owner
    # answers ``stale`` to a command from a gateway that has not loaded the reset yet. Until
    # 2026-12-07 the owner also queued them for shipped nexuses, and the non-owner queued
    # them again at its next beat: each reported twice, the second a beat late
    # (iscsi-test-cu MultipathIO.CompareAndWrite got 29h/03h after MultipathIO.Reset).
    g = Ships(tmp_path, ["a", "b", "c"])
    await g.start()
    a, b, c = g.gw["a"], g.gw["b"], g.gw["c"]
    who = {a: "x", b: "y", c: "z"}
    aborted: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    try:
        for gw in (a, b, c):
            assert (await gw.command(bytes(6), who[gw])).status == Status.GOOD  # known
            gw.member.abort_all = functools.partial(
                lambda name, lu: aborted.__setitem__(name, aborted[name] + 1), gw.name)
        shipped = c.shipper.shipped
        b.device.lun_reset(0, b.nexus("y"))
        reset = asyncio.ensure_future(_group_lun_reset(b.lu))
        while not reset.done():
            await a.member.beat()
            g.clock.now += 0.1
            await asyncio.sleep(0.01)
        assert reset.result() is True
        await asyncio.sleep(0.05)
        key = KEY
        assert c.member.luns[key].applied < a.member.luns[key].applied  # c has not loaded it
        for gw in (b, c, a):  # once each, at once: c's first command is answered stale
            res = await gw.command(bytes(6), who[gw])
            assert parse_sense(res.sense or b"") == (0x06, 0x2903), gw.name
            assert (await gw.command(bytes(6), who[gw])).status == Status.GOOD, gw.name
        assert c.member.luns[key].applied == a.member.luns[key].applied
        assert c.shipper.shipped == shipped + 2  # the stale one, then the GOOD one
        await g.rounds(3)  # every gateway loads the record again: nothing new to anyone
        for gw in (a, b, c):
            res = await gw.command(bytes(6), who[gw])
            assert res.status == Status.GOOD, (gw.name, parse_sense(res.sense or b""))
        # tasks are aborted by the owner alone: a non-owner that loads the reset later has
        # only commands sent after it in flight (ended without an answer, they would hang)
        assert aborted == {"a": 1, "b": 0, "c": 0}
    finally:
        await g.close()


@arun
async def test_a_stale_answer_the_sender_cannot_load_the_state_for_ends_not_ready_04_0a(
        tmp_path):
    # b is behind a's state (a registration made through a) and its group directory handle
    # is unusable: the command ends 04/0Ah (the initiator retries), nothing is written, and
    # a's own session goes on
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        assert (await b.command(bytes(6), "y")).status == Status.GOOD
        loop = asyncio.get_running_loop()
        nexus = a.nexus("x")
        a.device.nexus_added(nexus)
        a.lu.clear_ua(nexus.initiator_port)
        cdb, params = prout(0, sa_key=0xAA)
        task = ScsiTask(cdb, 0, nexus, data_out=memoryview(params), expected_length=len(params),
                        write=True)
        done = await loop.run_in_executor(None, a.runner.run, a.device.execute(task), a.lu)
        assert done.status == Status.GOOD
        assert b.member.luns[KEY].applied < a.member.luns[KEY].applied
        b.shared.close()  # every read of b's group directory now fails (EBADF)
        res = await b.command(write10(6), "y", b"\x06" * 512)
        assert parse_sense(res.sense or b"") == (0x02, 0x040A)
        assert a.lu.store.read(6 * 512, 512) == bytes(512)
        assert (await a.command(write10(6), "x", b"\x07" * 512)).status == Status.GOOD
        assert a.lu.store.read(6 * 512, 512) == b"\x07" * 512
    finally:
        await g.close()


@arun
async def test_a_sender_always_behind_the_owner_gets_not_ready_once_sent_again_three_times(
        tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        assert (await b.command(bytes(6), "y")).status == Status.GOOD
        shipped = b.shipper.shipped
        a.member.luns[KEY].applied += 1000  # a version no load of b's ever reaches
        res = await b.command(write10(3), "y", b"\x03" * 512)
        assert parse_sense(res.sense or b"") == (0x02, 0x040A)  # retried by the initiator
        assert b.shipper.shipped == shipped + 1 + ship.MAX_STALE
        assert a.lu.store.read(3 * 512, 512) == bytes(512)  # never run
        a.member.luns[KEY].applied -= 1000
        assert (await b.command(write10(3), "y", b"\x03" * 512)).status == Status.GOOD
        assert a.lu.store.read(3 * 512, 512) == b"\x03" * 512
    finally:
        await g.close()


@arun
async def test_a_unit_attention_pending_on_the_non_owner_is_delivered_there_first(tmp_path):
    from gluster_iscsi.scsi.sense import Asc

    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    b = g.gw["b"]
    try:
        assert (await b.command(write10(1), "y", b"\x01" * 512)).status == Status.GOOD
        shipped = b.shipper.shipped
        b.lu.queue_ua(b.nexus("y").initiator_port, Asc.MODE_PARAMETERS_CHANGED)
        res = await b.command(write10(1), "y", b"\x01" * 512)
        assert parse_sense(res.sense or b"") == (0x06, 0x2A01)
        assert b.shipper.shipped == shipped  # not shipped: the preamble's order (UA first)
        assert (await b.command(write10(1), "y", b"\x01" * 512)).status == Status.GOOD
        assert b.shipper.shipped == shipped + 1
    finally:
        await g.close()


@arun
async def test_a_standby_gateway_among_shipping_ones_is_standby_in_every_table(tmp_path):
    g = Ships(tmp_path, ["a", "b", "c"])
    g.gw["c"].member.non_owner = "standby"  # (a hand-written config may say so for one)
    await g.start()
    try:
        for gw in g.gw.values():
            assert [gw.lu.alua.state_of(n) for n in (1, 2, 3)] == \
                [S.ACTIVE_OPTIMIZED, S.ACTIVE_NON_OPTIMIZED, S.STANDBY], gw.name
    finally:
        await g.close()


class Stuck:
    """An owner's runner whose commands end only when the test says (a store that hangs)."""

    def __init__(self) -> None:
        self.started: list[ScsiTask] = []
        self.hosts: list[Any] = []

    def start(self, task: ScsiTask, run: Any, lu: Any, host: Any) -> None:
        run.close()
        self.started.append(task)
        self.hosts.append(host)


async def _stuck_write(g: Ships) -> tuple[Stuck, ScsiTask, Host]:
    """A WRITE shipped from b to a, whose owner never ends it by itself."""
    a, b = g.gw["a"], g.gw["b"]
    a.server.runner = stuck = Stuck()
    nexus = b.nexus("y")
    b.device.nexus_added(nexus)
    b.lu.clear_ua(nexus.initiator_port)
    task = ScsiTask(write10(4), 0, nexus, data_out=memoryview(b"\x04" * 512),
                    expected_length=512, write=True)
    host = Host()
    b.runner.start(task, b.device.execute(task), b.lu, host)
    for _ in range(500):
        if stuck.started:
            break
        await asyncio.sleep(0.01)
    assert stuck.started and not host.done.is_set()  # at the owner, not ended
    return stuck, task, host


@arun
async def test_an_aborted_shipped_task_is_answered_only_after_the_owner_answered_it(tmp_path):
    # F7: answering TASK ABORTED while the owner may still write lets the old write land on
    # top of the initiator's retry. The sender tells the owner, and waits for its answer.
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    g.gw["b"].shipper.timeout = 3600
    try:
        stuck, task, host = await _stuck_write(g)
        task.aborted = True  # what the transport does for ABORT TASK
        owner_task = stuck.started[0]
        for _ in range(500):
            if owner_task.aborted:  # the abort frame reached the owner
                break
            await asyncio.sleep(0.01)
        assert owner_task.aborted
        await asyncio.sleep(0.3)
        assert not host.done.is_set()  # the owner has not answered: neither does b
        stuck.hosts[0].complete(owner_task, ScsiResult(Status.GOOD))
        await asyncio.wait_for(host.done.wait(), 20)
        assert host.result is not None and host.result.status == Status.TASK_ABORTED
    finally:
        await g.close()


@arun
async def test_a_timed_out_shipped_command_is_answered_only_after_the_lease(tmp_path):
    # F7: on a timeout the owner may still issue the write until its lease runs out
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    b = g.gw["b"]
    b.shipper.timeout = 0.05
    b.member.lease_seconds = 3.0
    try:
        stuck, _, host = await _stuck_write(g)
        owner_task = stuck.started[0]
        for _ in range(500):
            if owner_task.aborted:  # the timeout asks the owner not to issue it
                break
            await asyncio.sleep(0.01)
        assert owner_task.aborted
        assert not host.done.is_set()
        await asyncio.wait_for(host.done.wait(), 30)
        assert host.result is not None and parse_sense(host.result.sense or b"") == (0x02, 0x040A)
    finally:
        await g.close()


@arun
async def test_an_aborted_command_still_in_the_backlog_is_never_sent(tmp_path):
    # F7 (b): a backlog entry aborted before it went out ends aborted, unsent
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    a.server.runner = stuck = Stuck()
    try:
        client = b.shipper._client(a.server.address)  # type: ignore[arg-type]
        nexus = b.nexus("y")
        task = ScsiTask(write10(4), 0, nexus, data_out=memoryview(b"\x04" * 512),
                        expected_length=512, write=True)
        got: list[Any] = []
        header = ship._header(KEY, 1, 0, nexus)
        header.update(cdb=write10(4).hex(), attr=1, expected=512, read=False, write=True)
        client.send(header, b"\x04" * 512, lambda h, d, e: got.append(e), 60, task)
        task.aborted = True  # aborted while connecting
        for _ in range(500):
            if got:
                break
            await asyncio.sleep(0.01)
        assert len(got) == 1 and type(got[0]) is ship.Aborted
        await asyncio.sleep(0.2)
        assert not stuck.started
    finally:
        await g.close()


@arun
async def test_a_shipped_write_aborted_before_its_store_call_is_not_issued(tmp_path):
    # F7 (c): the owner ends a shipped task aborted when the abort frame came first
    g, reader, writer = await _authenticated(tmp_path)
    a = g.gw["a"]
    real = a.server.runner

    class Late:
        """Issues a command's store calls only once its abort frame arrived."""

        def start(self, task: ScsiTask, run: Any, lu: Any, host: Any) -> None:
            async def later() -> None:
                for _ in range(500):
                    if task.aborted:
                        break
                    await asyncio.sleep(0.01)
                real.start(task, run, lu, host)
            asyncio.get_running_loop().create_task(later())

    a.server.runner = Late()
    try:
        writer.write(_owner_frame(a) + ship.encode({"t": "abort", "id": 1}))
        answer, _ = await asyncio.wait_for(ship.read_frame(reader, 1 << 20), 20)
        assert answer["id"] == 1 and answer["status"] == int(Status.TASK_ABORTED)
        assert a.lu.store.read(3 * 512, 512) == bytes(512)
    finally:
        writer.close()
        await g.close()


@arun
async def test_standby_mode_keeps_standby_and_ships_nothing(tmp_path):
    g = Ships(tmp_path, ["a", "b"], mode="standby")
    await g.start()
    b = g.gw["b"]
    try:
        assert b.lu.alua.state_of(2) is S.STANDBY
        res = await b.command(write10(2), "y", b"\x05" * 512)
        assert parse_sense(res.sense or b"") == (0x02, 0x040B)
        assert b.shipper.shipped == 0
    finally:
        await g.close()


# ------------------------------------------------------------------ unauthenticated peers
async def _raw_peer(tmp_path: Path) -> tuple[Ships, asyncio.StreamReader, asyncio.StreamWriter]:
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    host, _, port = g.gw["a"].server.address.rpartition(":")  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    hello, _ = await ship.read_frame(reader, 0)
    assert hello["t"] == "hello"
    return g, reader, writer


async def _dropped(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionError:
        return True


def _owner_frame(a: Gateway) -> bytes:
    """A WRITE(10) of LBA 3 for a's LU at its current epoch, through a peer's port 2."""
    glu = a.member.luns[KEY]
    return ship.encode({"t": "cmd", "id": 1, "key": KEY, "epoch": glu.lease.epoch,
                        "target": TARGET, "lun": 0, "cdb": write10(3).hex(), "expected": 512,
                        "write": True, "initiator": "iqn.x", "port": "iqn.x,i,0x1",
                        "target_port": f"{TARGET},t,0x0002", "relative_port": 2, "tpg": 2},
                       b"\x07" * 512)


def _command_frame() -> bytes:
    return ship.encode({"t": "cmd", "id": 1, "key": KEY, "epoch": 1, "target": TARGET, "lun": 0,
                        "cdb": write10(3).hex(), "expected": 512, "write": True,
                        "initiator": "iqn.x", "port": "iqn.x,i,0x1", "target_port": "t",
                        "relative_port": 2, "tpg": 2}, b"\x07" * 512)


@arun
async def test_a_peer_with_a_bad_hmac_is_dropped_and_nothing_runs(tmp_path):
    g, reader, writer = await _raw_peer(tmp_path)
    try:
        writer.write(ship.encode({"t": "auth", "gateway": "b", "nonce": "00" * 32,
                                  "mac": "00" * 32}) + _command_frame())
        assert await _dropped(reader)
        assert g.gw["a"].server.served == 0
        assert g.gw["a"].lu.store.read(3 * 512, 512) == bytes(512)
    finally:
        writer.close()
        await g.close()


@arun
async def test_a_command_before_authentication_is_dropped(tmp_path):
    g, reader, writer = await _raw_peer(tmp_path)
    try:
        writer.write(_command_frame())
        assert await _dropped(reader)
        assert g.gw["a"].server.served == 0
    finally:
        writer.close()
        await g.close()


@arun
async def test_the_listener_caps_connections_per_source_and_in_all(tmp_path):
    # F10: unlimited unauthenticated connections would use up the owner's descriptors
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    server = g.gw["a"].server
    server.max_conns_per_source, server.max_conns = 2, 3
    host, _, port = server.address.rpartition(":")  # type: ignore[union-attr]
    opened: list[asyncio.StreamWriter] = []

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
        opened.append(writer)
        return reader, writer

    async def greeted(reader: asyncio.StreamReader) -> bool:
        try:
            hello, _ = await asyncio.wait_for(ship.read_frame(reader, 0), 10)
        except (EOFError, ship.FrameError, ConnectionError):
            return False
        return hello["t"] == "hello"

    try:
        r1, _ = await connect("127.0.0.1")
        r2, _ = await connect("127.0.0.1")
        assert await greeted(r1) and await greeted(r2)
        r3, _ = await connect("127.0.0.1")  # a third from the same address: closed at once
        assert not await greeted(r3) and await _dropped(r3)
        r4, _ = await connect("127.0.0.2")  # another address: room in all for one more
        assert await greeted(r4)
        r5, _ = await connect("127.0.0.3")
        assert not await greeted(r5)  # 3 in all
        opened[0].close()  # one goes: room again
        assert await _dropped(r1)
        for _ in range(200):
            if sum(server._sources.values()) < 3:
                break
            await asyncio.sleep(0.01)
        r6, _ = await connect("127.0.0.3")
        assert await greeted(r6)
    finally:
        for w in opened:
            w.close()
        await g.close()


async def _authenticated(tmp_path: Path) -> tuple[Ships, asyncio.StreamReader,
                                                   asyncio.StreamWriter]:
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    host, _, port = g.gw["a"].server.address.rpartition(":")  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    client = ship._Client(g.gw["b"].shipper, "unused")
    await client._handshake(reader, writer)
    return g, reader, writer


@arun
async def test_an_oversize_frame_after_authentication_is_dropped_unread(tmp_path):
    g, reader, writer = await _authenticated(tmp_path)
    try:
        writer.write(struct.pack(">II", 20, g.gw["a"].server.max_data + 1))
        assert await _dropped(reader)
        assert g.gw["a"].server.served == 0
    finally:
        writer.close()
        await g.close()


class SpyBudget:
    """A memory budget that refuses everything and records what it was asked for (not a
    subclass: MemoryBudget is compiled in the real build, and interpreted classes cannot
    inherit from compiled ones)."""

    def __init__(self) -> None:
        self.inner = MemoryBudget(64 << 20)
        self.asked: list[int] = []

    def charge(self, owner: Any, n: int) -> bool:
        self.asked.append(n)
        return False

    def release(self, owner: Any, n: int) -> None:
        self.inner.release(owner, n)


@arun
async def test_shipped_data_is_charged_from_the_prefix_before_it_is_read(tmp_path):
    # F11: the data is charged before it is read; refused: drained and answered BUSY
    g, reader, writer = await _authenticated(tmp_path)
    a = g.gw["a"]
    a.server.budget = spy = SpyBudget()
    try:
        frame = _owner_frame(a)
        writer.write(frame[:-512])  # prefix and header, no data yet
        for _ in range(500):
            if spy.asked:
                break
            await asyncio.sleep(0.01)
        assert spy.asked == [512]  # charged with its data still unread
        writer.write(frame[-512:])
        answer, _ = await asyncio.wait_for(ship.read_frame(reader, 1 << 20), 20)
        assert answer["id"] == 1 and answer["status"] == int(Status.BUSY)
        assert a.server.served == 0 and a.lu.store.read(3 * 512, 512) == bytes(512)
        writer.write(ship.encode({"t": "gone", "id": 2, "target": TARGET, "port": "p"}))
        answer, _ = await asyncio.wait_for(ship.read_frame(reader, 1 << 20), 20)
        assert answer["id"] == 2  # the connection goes on
    finally:
        writer.close()
        await g.close()


@arun
async def test_frame_data_above_the_lus_max_transfer_is_dropped_unread(tmp_path):
    # F11: the bound is the target LU's max transfer, not only the global maximum
    g, reader, writer = await _authenticated(tmp_path)
    a = g.gw["a"]
    a.lu.max_transfer_bytes = 4096
    try:
        head = ship.encode({"t": "cmd", "id": 1, "key": KEY, "epoch": 1})[8:]
        writer.write(struct.pack(">II", len(head), 8192) + head)  # the data never follows
        assert await _dropped(reader)
        assert a.server.served == 0
    finally:
        writer.close()
        await g.close()


@arun
async def test_a_truncated_frame_is_dropped_and_not_run(tmp_path):
    g, reader, writer = await _authenticated(tmp_path)
    try:
        frame = _command_frame()
        writer.write(frame[:-100])
        writer.write_eof()
        assert await _dropped(reader)
        await asyncio.sleep(0.05)
        assert g.gw["a"].server.served == 0
        assert g.gw["a"].lu.store.read(3 * 512, 512) == bytes(512)
    finally:
        writer.close()
        await g.close()


# ------------------------------------------------------------------------------ the setting
def test_the_non_owner_setting_is_checked_where_beat_and_lease_are() -> None:
    from gluster_iscsi.control.config import ConfigError, validate_group
    from gluster_iscsi.group import definition

    base = {"location": "/mnt/v/.gluster-iscsi", "gateway": "a", "number": 1}
    assert "non_owner" not in validate_group(base)  # the group's default applies
    got = validate_group({**base, "non_owner": "standby", "ship_listen": "127.0.0.1:0"})
    assert got["non_owner"] == "standby" and got["ship_listen"] == "127.0.0.1:0"
    with pytest.raises(ConfigError, match="non_owner"):
        validate_group({**base, "non_owner": "active"})
    defn = definition.GroupDefinition(name="g", settings={**definition.DEFAULT_SETTINGS})
    assert defn.non_owner == definition.DEFAULT_NON_OWNER == "non-optimized"
    defn.settings["non_owner"] = "sometimes"
    with pytest.raises(ValueError, match="non_owner"):
        definition.check(defn)
    with pytest.raises(ValueError, match="non_owner"):
        GroupMember(object(), "a", 1, non_owner="sometimes")  # type: ignore[arg-type]


def test_group_create_writes_non_owner_and_join_carries_it_to_the_gateway(tmp_path) -> None:
    from gluster_iscsi.control import group as groupmod

    loc = str(tmp_path / "g")
    defn = groupmod.create_group(loc, "g", {"non_owner": "standby", "lease_seconds": 4},
                                 check=lambda *_: None)
    assert defn["settings"]["non_owner"] == "standby"
    assert defn["settings"]["lease_seconds"] == 4.0
    with pytest.raises(groupmod.GroupError, match="non_owner"):
        groupmod.create_group(str(tmp_path / "h"), "h", {"non_owner": "x"},
                              check=lambda *_: None)
    local = {"version": 1, "portals": [{"host": "127.0.0.1", "port": 3260}], "targets": []}
    cfg, _ = groupmod.join_group(local, loc, "gw1", None, ["127.0.0.1:3260"])
    assert cfg["group"]["non_owner"] == "standby"


@arun
async def test_a_session_ending_on_the_non_owner_ends_its_nexus_on_the_owner_too(tmp_path):
    # libiscsi Reserve6.Logout with both URLs on non-owners: a RESERVE(6) shipped through b
    # lives on the owner; the session's logout on b must release it there (SAM-5 6.3.4)
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    try:
        reserve6 = bytes([0x16, 0, 0, 0, 0, 0])
        assert (await b.command(reserve6, "y")).status == Status.GOOD
        assert b.shipper.shipped == 1 and a.lu.reserved_by == b.nexus("y").initiator_port
        assert (await a.command(write10(1), "x", b"\x01" * 512)).status == \
            Status.RESERVATION_CONFLICT
        # the same initiator port seen by a through another port is not b's nexus: kept
        a.device.nexus_added(a.nexus("z"))
        b.device.nexus_lost(b.nexus("y"))
        b.shipper.nexus_gone(b.nexus("y"))  # as Daemon.session_ended does
        for _ in range(100):
            if a.lu.reserved_by is None:
                break
            await asyncio.sleep(0.02)
        assert a.lu.reserved_by is None
        assert b.nexus("y").initiator_port not in a.device._nexuses
        assert a.nexus("z").initiator_port in a.device._nexuses
        assert (await a.command(write10(1), "x", b"\x01" * 512)).status == Status.GOOD
    finally:
        await g.close()


# F7: an aborted shipped command issues no store call that had not started ---------------------
class GatedStore(MemoryStore):
    """A blocking store (its calls go to the owner's workers) that records the writes that
    reach it; a write waits in the store while ``gate`` is shut."""

    blocking = True

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.writes: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def write(self, offset: int, data: Any) -> None:
        self.writes.append(offset)
        self.entered.set()
        self.gate.wait(20)
        super().write(offset, data)


class PoolEngines:
    """The owner's engines: one worker thread, the I/O timeout given (0: none), no
    io_uring."""

    ring = None
    gfaio = None

    def __init__(self, pool: IoPool, io_timeout: float = 0.0) -> None:
        self.pool = pool
        self.io_timeout = io_timeout

        class Poller:
            missed_at = None

            def woke(self) -> None: ...

        self.poller = Poller()

    def pool_for(self, store: object) -> Any:
        return self.pool


class SpyRunner:
    """The owner's runner, recording the shipped tasks it starts (a wrapper: Runner is
    compiled in the real build)."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.tasks: list[ScsiTask] = []

    def start(self, task: ScsiTask, run: Any, lu: Any, host: Any) -> None:
        self.tasks.append(task)
        self.inner.start(task, run, lu, host)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _until(cond: Any, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _owner_on_workers(g: Ships, io_timeout: float = 0.0) -> tuple[GatedStore, IoPool,
                                                                       SpyRunner]:
    a = g.gw["a"]
    store = GatedStore(1 << 20)
    a.lu.store = store
    pool = IoPool(asyncio.get_running_loop(), 1, idle=5)
    spy = SpyRunner(Runner(PoolEngines(pool, io_timeout), clock=g.clock))  # type: ignore[arg-type]
    a.server.runner = spy
    return store, pool, spy


async def _queued_shipped_write(g: Ships, io_timeout: float = 0.0) -> tuple[
        GatedStore, IoPool, SpyRunner, threading.Event, ScsiTask, Host]:
    """A WRITE of LBA 4 shipped from b to a, whose store call waits in a's worker queue
    behind another call (the one worker is blocked on the returned event)."""
    store, pool, spy = await _owner_on_workers(g, io_timeout)
    b = g.gw["b"]
    blocked = threading.Event()
    pool.submit(lambda _: blocked.wait(20), None, lambda r, e: None)
    await _until(lambda: pool._busy == 1, "the worker is busy")
    nexus = b.nexus("y")
    b.device.nexus_added(nexus)
    b.lu.clear_ua(nexus.initiator_port)
    task = ScsiTask(write10(4), 0, nexus, data_out=memoryview(b"\x04" * 512),
                    expected_length=512, write=True)
    host = Host()
    b.runner.start(task, b.device.execute(task), b.lu, host)
    await _until(lambda: spy.tasks and pool._queued == 1, "the shipped write is queued")
    return store, pool, spy, blocked, task, host


@arun
async def test_an_aborted_shipped_write_still_queued_on_a_worker_never_reaches_the_store(
        tmp_path):
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    g.gw["b"].shipper.timeout = 3600
    blocked = threading.Event()
    pool: IoPool | None = None
    try:
        store, pool, spy, blocked, task, host = await _queued_shipped_write(g)
        task.aborted = True  # ABORT TASK on b
        await _until(lambda: spy.tasks[0].aborted, "the abort frame reached the owner")
        blocked.set()  # the worker is free: it takes the aborted write from the queue
        await asyncio.wait_for(host.done.wait(), 20)
        assert host.result is not None and host.result.status == Status.TASK_ABORTED
        assert store.writes == []  # never issued
        assert g.gw["a"].lu.store.read(4 * 512, 512) == bytes(512)
    finally:
        blocked.set()
        if pool is not None:
            pool.shutdown()
        await g.close()


@arun
async def test_a_session_gone_on_the_sender_aborts_its_queued_shipped_write(tmp_path):
    # the session ends on b: b tells the owner its nexus is gone, before any abort frame
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    b = g.gw["b"]
    b.shipper.timeout = 3600
    blocked = threading.Event()
    pool: IoPool | None = None
    try:
        store, pool, spy, blocked, task, host = await _queued_shipped_write(g)
        b.shipper.nexus_gone(b.nexus("y"))  # as Daemon.session_ended does
        await _until(lambda: spy.tasks[0].aborted, "the owner aborted the nexus's task")
        blocked.set()
        await asyncio.wait_for(host.done.wait(), 20)
        assert store.writes == []
        assert g.gw["a"].lu.store.read(4 * 512, 512) == bytes(512)
    finally:
        blocked.set()
        if pool is not None:
            pool.shutdown()
        await g.close()


@arun
async def test_a_reset_or_preempt_and_abort_on_the_owner_aborts_the_queued_shipped_writes(
        tmp_path):
    # a PREEMPT AND ABORT or LUN RESET that reaches the owner (Daemon.abort_lu_tasks, the
    # owner's own TMF) aborts what the other gateways shipped for the LU too
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    b.shipper.timeout = 3600
    blocked = threading.Event()
    pool: IoPool | None = None
    try:
        store, pool, spy, blocked, task, host = await _queued_shipped_write(g)
        a.server.abort_tasks(a.lu, {a.nexus("other").initiator_port})  # not its port
        assert not spy.tasks[0].aborted
        a.server.abort_tasks(a.lu, {b.nexus("y").initiator_port})
        assert spy.tasks[0].aborted
        blocked.set()
        await asyncio.wait_for(host.done.wait(), 20)
        assert host.result is not None and host.result.status == Status.TASK_ABORTED
        assert store.writes == []
    finally:
        blocked.set()
        if pool is not None:
            pool.shutdown()
        await g.close()


@pytest.mark.parametrize("late", ["none", "owner io timeout", "sender timeout"])
@arun
async def test_an_aborted_shipped_write_already_in_the_store_is_answered_once_it_returned(
        tmp_path, late):
    # neither the owner's I/O timeout nor the sender's shipping timeout answers the abort
    # while the write it cannot pull back is still in the store
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    b = g.gw["b"]
    b.shipper.timeout = 3600  # the timeouts run out when the test says (below)
    pool: IoPool | None = None
    store: GatedStore | None = None
    try:
        store, pool, spy = await _owner_on_workers(g, 3600.0)
        store.gate.clear()  # the write stays in the store until the test opens it
        nexus = b.nexus("y")
        b.device.nexus_added(nexus)
        b.lu.clear_ua(nexus.initiator_port)
        task = ScsiTask(write10(4), 0, nexus, data_out=memoryview(b"\x04" * 512),
                        expected_length=512, write=True)
        host = Host()
        b.runner.start(task, b.device.execute(task), b.lu, host)
        await asyncio.to_thread(store.entered.wait, 20)  # issued: it cannot be pulled back
        task.aborted = True
        await _until(lambda: spy.tasks[0].aborted, "the abort frame reached the owner")
        loop = asyncio.get_running_loop()
        if late == "owner io timeout":
            pool._expire(loop.time() + 7200)  # the write's I/O timeout passes
        elif late == "sender timeout":
            b.member.lease_seconds = 0.0  # (an owner out of contact would have fenced)
            client = next(iter(b.shipper.clients.values()))
            for rid in list(client.pending):
                client._expire(rid)  # the shipping timeout passes
        await asyncio.sleep(0.3)
        assert not host.done.is_set()  # neither the owner nor b answers while it runs
        store.gate.set()
        await asyncio.wait_for(host.done.wait(), 20)
        assert host.result is not None and host.result.status == Status.TASK_ABORTED
        assert store.writes == [4 * 512]
    finally:
        if store is not None:
            store.gate.set()
        if pool is not None:
            pool.shutdown()
        await g.close()


@arun
async def test_a_shipped_write_whose_io_timeout_passed_in_the_queue_is_never_issued(tmp_path):
    # its command was answered (the I/O timeout): a group LU's call issued after that could
    # land on top of the initiator's retry
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    g.gw["b"].shipper.timeout = 3600
    blocked = threading.Event()
    pool: IoPool | None = None
    try:
        store, pool, spy, blocked, task, host = await _queued_shipped_write(g, io_timeout=0.1)
        await asyncio.wait_for(host.done.wait(), 20)  # answered at the owner's I/O timeout
        assert host.result is not None and host.result.status == Status.CHECK_CONDITION
        blocked.set()
        await _until(lambda: pool is not None and not pool.in_flight(), "the queue is empty")
        assert store.writes == []
        assert g.gw["a"].lu.store.read(4 * 512, 512) == bytes(512)
    finally:
        blocked.set()
        if pool is not None:
            pool.shutdown()
        await g.close()


@arun
async def test_a_reset_on_the_owner_waits_for_a_shipped_write_already_in_the_store(tmp_path):
    # a LUN RESET through the owner (its TMF: ShipServer.abort_tasks, then wait_tasks)
    # answers only once the shipped write it could not pull back returned
    g = Ships(tmp_path, ["a", "b"])
    await g.start()
    a, b = g.gw["a"], g.gw["b"]
    b.shipper.timeout = 3600
    pool: IoPool | None = None
    store: GatedStore | None = None
    try:
        store, pool, spy = await _owner_on_workers(g)
        store.gate.clear()
        nexus = b.nexus("y")
        b.device.nexus_added(nexus)
        b.lu.clear_ua(nexus.initiator_port)
        task = ScsiTask(write10(4), 0, nexus, data_out=memoryview(b"\x04" * 512),
                        expected_length=512, write=True)
        host = Host()
        b.runner.start(task, b.device.execute(task), b.lu, host)
        await asyncio.to_thread(store.entered.wait, 20)
        aborted = a.server.abort_tasks(a.lu, None)
        assert aborted == spy.tasks and spy.tasks[0].aborted
        reset = asyncio.ensure_future(a.server.wait_tasks(aborted))
        await asyncio.sleep(0.3)
        assert not reset.done() and not host.done.is_set()
        store.gate.set()
        await asyncio.wait_for(reset, 20)
        await asyncio.wait_for(host.done.wait(), 20)
        assert host.result is not None and host.result.status == Status.TASK_ABORTED
        assert a.server.waiters == {}
        await asyncio.wait_for(a.server.wait_tasks(aborted), 20)  # ended: nothing to wait for
    finally:
        if store is not None:
            store.gate.set()
        if pool is not None:
            pool.shutdown()
        await g.close()
