"""The gateway group at run time (issue 20's gaps): LUN RESET and capacity through the state
record, a hung owner, a duplicate gateway, PR OUT that outlives its wait for the owner.
Members in one process on a tmp-dir group directory, a clock the tests move."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gluster_iscsi.group.lease import Role
from gluster_iscsi.scsi import DeviceServer
from gluster_iscsi.scsi.alua import AccessState as S
from gluster_iscsi.scsi.sense import Asc
from gluster_iscsi.server.driver import _group_lun_reset

from .test_group import KEY, TARGET, Group, arun, nexus


async def beating(g: Group, names: list[str], coro: Any) -> Any:
    """Await ``coro`` while the named members beat (the clock moves 0.1 s a beat)."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        await g.rounds(1, step=0.1, only=names)
        await asyncio.sleep(0.01)
    return await task


@arun
async def test_lun_reset_through_a_standby_resets_the_lu_on_every_gateway(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    assert g.role("a") is Role.OWNER
    aborted: list[Any] = []
    g.members["a"].abort_all = aborted.append
    servers = {n: DeviceServer({0: g.lus[n]}, target_name=TARGET) for n in ("a", "b")}
    two_a, one_b = nexus("two", 1), nexus("one", 2)
    servers["a"].nexus_added(two_a)
    servers["b"].nexus_added(one_b)
    lu_a = g.lus["a"]
    lu_a.clear_ua(two_a.initiator_port)
    lu_a.reserved_by = two_a.initiator_port  # an SPC-2 RESERVE through the owner
    # the TMF reaches b: b's LU is reset there (driver: DeviceServer.lun_reset), then the group
    servers["b"].lun_reset(0, one_b)
    assert await beating(g, ["a"], _group_lun_reset(g.lus["b"]))
    await asyncio.sleep(0.05)  # the abort is handed to the loop
    assert lu_a.reserved_by is None
    assert lu_a.pop_ua(two_a.initiator_port) is Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED
    assert aborted == [lu_a]  # the owner aborts the LU's tasks
    g.close()


@arun
async def test_a_grow_on_a_standby_reaches_every_gateway_with_capacity_data_has_changed(
        tmp_path):
    from gluster_iscsi.backstore.file import FileStore
    from gluster_iscsi.control.reconcile import _tell_group_capacity
    from gluster_iscsi.scsi import ScsiTask
    from gluster_iscsi.server.runner import Runner, lu_on

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    g = Group(tmp_path, ["a", "b"])
    stores = {}
    for n in ("a", "b"):  # both gateways export one file
        g.members[n].detach(g.lus[n])
        stores[n] = FileStore(disk)
        g.lus[n] = lu_on(stores[n], serial="s1")
        g.members[n].attach(g.lus[n], KEY, "a")
    await g.start()
    await g.rounds(2)
    assert g.role("a") is Role.OWNER
    two_a = nexus("two", 1)
    server_a = DeviceServer({0: g.lus["a"]}, target_name=TARGET)
    server_a.nexus_added(two_a)
    g.lus["a"].clear_ua(two_a.initiator_port)
    # lun resize on b (reconcile's commit): the file grows there, b's LU is told, then the group
    stores["b"].resize(4 << 20)
    g.lus["b"].capacity_changed(4 << 20)
    await beating(g, ["a"], _tell_group_capacity(g.lus["b"], 4 << 20))
    lu_a = g.lus["a"]
    assert lu_a.block_count == (4 << 20) // 512
    assert lu_a.pop_ua(two_a.initiator_port) is Asc.CAPACITY_DATA_HAS_CHANGED
    # READ CAPACITY (16) through the owner gives the new size
    cdb = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
    res = Runner(clock=g.clock).run(server_a.execute(ScsiTask(cdb, 0, two_a,
                                                              expected_length=32)), lu_a)
    assert res.status == 0 and int.from_bytes(bytes(res.data)[:8], "big") == (4 << 20) // 512 - 1
    for s in stores.values():
        s.close()
    g.close()


@arun
async def test_pr_out_the_hung_owner_never_acknowledges_is_good_once_it_is_fenced(tmp_path):
    # Before: 04/0A although the registration was written, so the initiator's retry of the
    # REGISTER met its own registration: RESERVATION CONFLICT.
    from gluster_iscsi.scsi.task import Status
    from gluster_iscsi.server.runner import Runner

    from .test_group import command, prout

    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    server = DeviceServer({0: g.lus["b"]}, target_name=TARGET)
    a = g.members["a"].luns[KEY].lease

    async def tick() -> None:  # time passes, a never beats (hung)
        while True:
            await asyncio.sleep(0.01)
            g.clock.now += 0.5

    ticker = asyncio.ensure_future(tick())
    cdb, params = prout(0, sa_key=0xAAAA)  # REGISTER through the standby
    try:
        res = await asyncio.to_thread(command, Runner(clock=g.clock), server, g.lus["b"], cdb,
                                      nexus("one", 2), params)
        assert not a.may_issue(g.clock.now)  # GOOD only once the owner cannot issue
    finally:
        ticker.cancel()
    assert res.status == Status.GOOD
    # the owner runs again: its first heartbeat loads the registration before it renews
    await g.rounds(1, only=["a"])
    assert g.role("a") is Role.OWNER and a.may_issue(g.clock.now)
    assert g.lus["a"].pr.to_dict() == g.lus["b"].pr.to_dict()
    assert g.members["a"].luns[KEY].applied == g.members["b"].luns[KEY].applied
    g.close()


@arun
async def test_a_hung_owner_keeping_its_lock_is_reported_unavailable_and_said_once(
        tmp_path, caplog):
    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    assert g.role("a") is Role.OWNER
    caplog.set_level(logging.WARNING, logger="gluster_iscsi.server.group")
    await g.rounds(8, only=["b", "c"])  # a is SIGSTOPped: it holds the lock, never beats
    assert g.role("b") is Role.STANDBY and g.role("c") is Role.STANDBY  # nobody can take it
    for n in ("b", "c"):
        states = {d[0]: d[1] for d in g.tables([n])[0]}
        assert states[1] is S.UNAVAILABLE  # RTPG says so on every path
    said = [r.getMessage() for r in caplog.records if "still holds the lock" in r.getMessage()]
    assert len(said) == 2  # once per LUN per standby, not once per beat
    assert "owner a has not renewed for" in said[0] and "WatchdogSec" in said[0]
    st = g.members["b"].status()["luns"][KEY]
    assert st["owner_hung"] is True and st["owner_silent_for"] >= 5.0
    # a runs again: it renews, the standbys say so and stop reporting it
    await g.rounds(2)
    assert g.role("a") is Role.OWNER
    assert "owner_hung" not in g.members["b"].status()["luns"][KEY]
    g.close()


class Notifier:
    def __init__(self) -> None:
        self.watchdog_interval = 1.0
        self.pings = 0

    def watchdog(self) -> bool:
        self.pings += 1
        return True

    def status(self, line: str) -> None:
        pass


class Daemon:
    def __init__(self, group: Any) -> None:
        self.group = group
        self.registry = type("R", (), {"targets": {}})()
        self.session_table: list[Any] = []

    def portals(self) -> list[Any]:
        return []


@arun
async def test_the_watchdog_is_fed_only_while_the_owners_beats_succeed(tmp_path):
    from gluster_iscsi.cli.serve import _Ticker

    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    loop = asyncio.get_running_loop()
    pings = {}
    for n in ("a", "b"):
        notifier = Notifier()
        ticker = _Ticker(loop, notifier, Daemon(g.members[n]))
        ticker.cancel()
        pings[n] = notifier
    assert pings["a"].pings == 1 and pings["b"].pings == 1
    g.clock.now += 6.0  # a's beat is stuck (its worker hangs in a call): no beat for a lease
    for n in ("a", "b"):
        _Ticker(loop, pings[n], Daemon(g.members[n])).cancel()
    assert pings["a"].pings == 1  # the owner holds the lock: systemd must be able to kill it
    assert pings["b"].pings == 2  # a standby that holds nothing blocks nobody
    g.close()


@arun
async def test_a_second_daemon_as_the_same_gateway_notices_and_stands_down(tmp_path, caplog):
    from gluster_iscsi.group.shared import open_shared
    from gluster_iscsi.server.group import GroupMember
    from gluster_iscsi.server.runner import lu_state

    from .test_group import Clock, make_lu

    clock = Clock()
    dirs = [open_shared(str(tmp_path / "group")) for _ in range(3)]

    def member(i: int, name: str, number: int, started: float) -> tuple[GroupMember, Any]:
        m = GroupMember(dirs[i], name, number, beat_seconds=1.0, lease_seconds=5.0,
                        clock=clock, started=started)
        lu = make_lu()
        m.attach(lu, KEY, None)
        return m, lu

    first, lu1 = member(0, "a", 1, started=100.0)  # the daemon that ran first
    second, lu2 = member(1, "a", 1, started=200.0)  # started later under the same name
    b, _ = member(2, "b", 2, started=150.0)
    # the later one got the LUN before the first came up
    await second.start(run=False)
    await b.start(run=False)
    for _ in range(2):
        await second.beat()
        await b.beat()
        clock.now += 1.0
    assert second.luns[KEY].lease.role is Role.OWNER
    caplog.set_level(logging.ERROR, logger="gluster_iscsi.server.group")
    await first.start(run=False)
    for _ in range(3):
        for m in (first, second, b):
            await m.beat()
        clock.now += 1.0
    assert second.yielded and not first.yielded
    assert second.luns[KEY].lease.role is Role.STANDBY  # stands down: released what it held
    assert lu_state(lu2).issue_deadline == float("-inf")
    for _ in range(3):
        for m in (first, second, b):
            await m.beat()
        clock.now += 1.0
    owners = [m for m in (first, b) if m.luns[KEY].lease.role is Role.OWNER]
    assert len(owners) == 1 and second.luns[KEY].lease.role is Role.STANDBY  # never again
    assert second.status()["duplicate"]["yielded"] is True
    assert first.status()["duplicate"]["yielded"] is False
    said = [r.getMessage() for r in caplog.records if "another daemon" in r.getMessage()]
    assert len(said) == 2  # each says it once
    # the gateway record stays the first daemon's
    assert dirs[2].read("gateways/a").data["instance"] == first.instance
    for m in (first, second, b):
        await m.stop(release=False)
    for d in dirs:
        d.close()


@arun
async def test_each_gateway_publishes_its_sessions_per_lun_for_group_show(tmp_path):
    g = Group(tmp_path, ["a", "b", "c"])
    g.members["a"].session_counts = lambda lus: [2 for _ in lus]
    g.members["c"].session_counts = lambda lus: [1 for _ in lus]
    await g.start()
    await g.rounds(2)
    assert g.members["b"].status()["luns"][KEY]["sessions"] == {"a": 2, "c": 1}
    assert g.members["a"].status()["luns"][KEY]["sessions"] == {"b": 0, "c": 1}
    g.close()


@arun
async def test_two_gateways_with_one_number_the_later_stands_down(tmp_path):
    from gluster_iscsi.group.shared import open_shared
    from gluster_iscsi.server.group import GroupMember

    from .test_group import Clock, make_lu

    clock = Clock()
    dirs = [open_shared(str(tmp_path / "group")) for _ in range(2)]
    first = GroupMember(dirs[0], "a", 1, clock=clock, started=100.0)
    later = GroupMember(dirs[1], "c", 1, clock=clock, started=200.0)  # a's number, by mistake
    for m in (first, later):
        m.attach(make_lu(), KEY, None)
    await first.start(run=False)
    await later.start(run=False)
    for _ in range(3):
        for m in (first, later):
            await m.beat()
        clock.now += 1.0
    assert later.yielded and not first.yielded
    assert later.status()["duplicate"]["gateway"] == "a"
    assert first.status()["duplicate"]["gateway"] == "c"
    assert first.luns[KEY].lease.role is Role.OWNER
    assert later.luns[KEY].lease.role is Role.STANDBY
    for m in (first, later):
        await m.stop(release=False)
    for d in dirs:
        d.close()


@arun
async def test_a_gateway_that_comes_later_replays_no_past_reset_or_grow(tmp_path):
    from gluster_iscsi.group.shared import open_shared
    from gluster_iscsi.server.group import GroupMember

    from .test_group import make_lu

    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    await beating(g, ["a"], g.members["b"].lun_reset(g.lus["b"], 0x2903))
    await beating(g, ["a"], g.members["b"].capacity_changed(g.lus["b"], 1 << 19))  # stale
    shared = open_shared(str(tmp_path / "group"))
    late = GroupMember(shared, "c", 3, clock=g.clock)
    aborted: list[Any] = []
    late.abort_all = aborted.append
    lu = make_lu()
    late.attach(lu, KEY, "a")
    DeviceServer({0: lu}, target_name=TARGET).nexus_added(nexus("one", 3))
    lu.clear_ua(nexus("one", 3).initiator_port)
    await late.start(run=False)
    await late.beat()
    await asyncio.sleep(0.05)
    assert late.luns[KEY].applied == g.members["b"].luns[KEY].applied  # the state is loaded
    port = nexus("one", 3).initiator_port
    pending = [lu.pop_ua(port) for _ in range(4)]
    assert aborted == [] and Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED not in pending
    assert Asc.CAPACITY_DATA_HAS_CHANGED not in pending
    assert lu.block_count == (1 << 20) // 512  # its own measure, not an old event's
    assert g.lus["a"].block_count == (1 << 20) // 512  # an event never shrinks a LU
    await late.stop(release=False)
    shared.close()
    g.close()
