"""The gateway group's coordinator (server/group.py): several members in one process on one
tmp-dir group directory (OFD locks conflict between members), a clock the tests move."""

from __future__ import annotations

import asyncio
import errno
import functools
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.group.lease import Role
from gluster_iscsi.group.shared import open_shared
from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiResult, ScsiTask
from gluster_iscsi.scsi.alua import AccessState as S
from gluster_iscsi.scsi.io import Read, Size, Write
from gluster_iscsi.scsi.sense import Asc, SenseKey, parse_sense
from gluster_iscsi.scsi.task import Status
from gluster_iscsi.server.group import GroupMember, lease_name
from gluster_iscsi.server.runner import Runner, lu_on, lu_state


def arun(fn: Any) -> Any:
    """Run an async test on a fresh event loop."""

    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        return asyncio.run(fn(*a, **kw))

    return run


KEY = "0b6cfa4e-1111-2222-3333-444455556666"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hanging:
    """A group directory whose calls block while ``hang`` is set (a volume that stopped
    answering), then go on. Only reads of the LU's records hang: its heartbeat starts with
    one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.go = threading.Event()
        self.go.set()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if name != "read":
            return fn

        def call(*a: Any, **kw: Any) -> Any:
            # (the LU's records: a beat's read of the gateway record must not hang first)
            if not self.go.is_set() and str(a[0]).startswith("luns/"):
                self.entered.set()
                self.go.wait(30)
            return fn(*a, **kw)

        return call


def make_lu() -> Any:
    return lu_on(MemoryStore(1 << 20), serial="s1")


class Group:
    def __init__(self, tmp_path: Path, names: list[str], preferred: str | None = "a",
                 hang: bool = False) -> None:
        self.clock = Clock()
        self.members: dict[str, GroupMember] = {}
        self.lus: dict[str, Any] = {}
        self.dirs: list[Any] = []
        for i, name in enumerate(names, 1):
            shared: Any = open_shared(str(tmp_path / "group"))
            self.dirs.append(shared)
            if hang:
                shared = Hanging(shared)
            m = GroupMember(shared, name, i, beat_seconds=1.0, lease_seconds=5.0,
                            clock=self.clock)
            lu = make_lu()
            m.attach(lu, KEY, preferred)
            self.members[name] = m
            self.lus[name] = lu

    async def start(self) -> None:
        for m in self.members.values():
            await m.start(run=False)

    async def rounds(self, n: int = 1, step: float = 1.0, only: list[str] | None = None) -> None:
        for _ in range(n):
            for name, m in self.members.items():
                if only is None or name in only:
                    await m.beat()
            self.clock.now += step

    def role(self, name: str) -> Role:
        return self.members[name].luns[KEY].lease.role

    def tables(self, names: list[str] | None = None) -> list[Any]:
        # (group, state, ports): RTPG's status code says whether this gateway saw the state
        # change, which depends on when it joined
        return [[(d[0], d[1], d[4]) for d in self.lus[n].alua.descriptors()]
                for n in (names or list(self.members))]

    def close(self) -> None:
        for d in self.dirs:
            d.close()


@arun
async def test_preferred_gateway_owns_others_stand_by_same_alua_everywhere(tmp_path):
    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    assert g.role("a") is Role.OWNER
    assert g.role("b") is Role.STANDBY and g.role("c") is Role.STANDBY
    # the runner's deadline: the owner may issue, the others may not
    assert lu_state(g.lus["a"]).issue_deadline > g.clock.now
    assert lu_state(g.lus["b"]).issue_deadline < g.clock.now
    tables = g.tables()
    assert tables[0] == tables[1] == tables[2]
    states = {d[0]: d[1] for d in tables[0]}
    assert states == {1: S.ACTIVE_OPTIMIZED, 2: S.STANDBY, 3: S.STANDBY}
    status = g.members["b"].status()
    assert status["luns"][KEY]["owner"] == "a" and status["luns"][KEY]["role"] == "standby"
    assert set(status["gateways"]) == {"a", "b", "c"}
    g.close()


@arun
async def test_the_owner_serves_a_standby_refuses_media_with_04_0a_at_the_runner(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    runner = Runner(clock=g.clock)
    runner.perform(Write(0, b"x" * 512), g.lus["a"])
    assert bytes(runner.perform(Read(0, 512), g.lus["a"]))[:1] == b"x"
    with pytest.raises(BackingStoreError) as e:
        runner.perform(Read(0, 512), g.lus["b"])
    assert e.value.errno == errno.ESHUTDOWN  # NOT READY 04/0A through the SCSI layer
    assert runner.perform(Size(), g.lus["b"]) == 1 << 20  # READ CAPACITY is not media access
    g.close()


@arun
async def test_takeover_after_the_holder_dies_bumps_the_epoch(tmp_path):
    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    epoch = g.members["a"].luns[KEY].lease.epoch
    # a is SIGKILLed: its locks go with its descriptors, its heartbeat stops
    g.members["a"].luns[KEY].lock.release()
    dead = g.members.pop("a")
    await g.rounds(1)  # the lock is free: the next beat takes it
    owners = [n for n in ("b", "c") if g.members[n].luns[KEY].lock is not None]
    assert len(owners) == 1
    new = g.members[owners[0]].luns[KEY].lease
    assert new.epoch == epoch + 1
    # a's beat was fresh: a may be alive (its lock can vanish with every brick restarting)
    # and issuing until its own deadline, so the new owner serves only a lease after its read
    assert new.role is Role.FENCED
    assert lu_state(g.lus[owners[0]]).issue_deadline == float("-inf")
    await g.rounds(6)  # a lease without a's heartbeat
    assert new.role is Role.OWNER
    tables = g.tables(["b", "c"])
    assert tables[0] == tables[1]
    states = {d[0]: d[1] for d in tables[0]}
    assert states[1] is S.UNAVAILABLE  # the silent gateway
    assert states[g.members[owners[0]].number] is S.ACTIVE_OPTIMIZED
    # the old owner comes back from a pause: its lock is gone, the record has a new epoch
    g.members["a"] = dead
    await dead.beat()
    assert dead.luns[KEY].lease.role is Role.STANDBY
    assert lu_state(g.lus["a"]).issue_deadline == float("-inf")
    g.close()


@arun
async def test_a_planned_stop_hands_over_at_once(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a = g.members.pop("a")
    await a.stop(release=True)
    await g.rounds(1)
    assert g.role("b") is Role.OWNER  # no lease to wait out
    g.close()


@arun
async def test_fenced_while_the_volume_hangs_then_owner_again(tmp_path):
    g = Group(tmp_path, ["a"], hang=True)
    await g.start()
    await g.rounds(1)
    a = g.members["a"]
    lu = g.lus["a"]
    assert g.role("a") is Role.OWNER
    runner = Runner(clock=g.clock)
    runner.perform(Write(0, b"y" * 512), lu)
    hanging = a.shared
    hanging.go.clear()
    beat = asyncio.get_running_loop().create_task(a.beat())
    await asyncio.to_thread(hanging.entered.wait, 10)
    assert not beat.done()
    g.clock.now += 5.0  # a lease with no heartbeat: the loop is free, the worker is stuck
    a.watch()
    assert g.role("a") is Role.FENCED
    assert lu.alua.state_of(1) is S.UNAVAILABLE
    with pytest.raises(BackingStoreError):
        runner.perform(Write(0, b"z" * 512), lu)
    hanging.go.set()
    await beat  # the heartbeat that hung started before the deadline: it renews nothing
    assert g.role("a") is Role.FENCED
    g.clock.now += 1.0
    await a.beat()
    assert g.role("a") is Role.OWNER and lu.alua.state_of(1) is S.ACTIVE_OPTIMIZED
    runner.perform(Write(0, b"z" * 512), lu)
    g.close()


@arun
async def test_move_drains_announces_transitioning_and_the_target_takes(tmp_path):
    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    lu_a = g.lus["a"]
    lu_state(lu_a).stats.in_flight = 1  # a command still running on a
    await g.members["c"].move(KEY, "b")
    await g.rounds(1)
    assert g.role("a") is Role.MOVING_OUT
    tables = g.tables()
    await g.rounds(1, step=0.0)
    tables = g.tables()
    assert tables[0] == tables[1] == tables[2]
    states = {d[0]: d[1] for d in tables[0]}
    assert states[1] is S.TRANSITIONING and states[2] is S.TRANSITIONING
    assert g.role("a") is Role.MOVING_OUT  # still draining
    assert lu_state(lu_a).issue_deadline > g.clock.now  # the in-flight command may finish
    lu_state(lu_a).stats.in_flight = 0
    await asyncio.sleep(0.05)
    await g.rounds(2)
    assert g.role("b") is Role.OWNER and g.role("a") is Role.STANDBY
    await g.rounds(2)
    assert g.role("b") is Role.OWNER  # a, the preferred gateway, leaves it to b
    tables = g.tables()
    assert tables[0] == tables[1] == tables[2]
    states = {d[0]: d[1] for d in tables[0]}
    assert states == {1: S.STANDBY, 2: S.ACTIVE_OPTIMIZED, 3: S.STANDBY}
    g.close()


@arun
async def test_two_members_never_both_hold_the_lease_lock(tmp_path):
    g = Group(tmp_path, ["a", "b"], preferred=None)
    await g.start()
    await g.rounds(3)
    roles = sorted(g.role(n).value for n in ("a", "b"))
    assert roles == ["owner", "standby"]
    shared = open_shared(str(tmp_path / "group"))
    from gluster_iscsi.group.shared import LockHeld

    with pytest.raises(LockHeld):
        shared.try_lock(lease_name(KEY), 0)
    shared.close()
    g.close()


# ------------------------------------------------------------------ LU-wide state (decision 4)
TARGET = "iqn.2024-01.org.gluster:tgt"


def nexus(who: str, number: int) -> Nexus:
    return Nexus(f"iqn.2024-01.org.test:{who}", f"iqn.2024-01.org.test:{who},i,0x023d0000000{number}",
                 f"{TARGET},t,0x{number:04x}", relative_port=number, target_port_group=number)


def prout(sa: int, key: int = 0, sa_key: int = 0, rtype: int = 0) -> tuple[bytes, bytes]:
    params = struct.pack(">QQ4xBxH", key, sa_key, 0, 0)
    return bytes([0x5F, sa, rtype, 0, 0]) + struct.pack(">IB", len(params), 0), params


def command(runner: Runner, server: DeviceServer, lu: Any, cdb: bytes, who: Nexus,
            data: bytes | None = None) -> ScsiResult:
    if who.initiator_port not in server._nexuses:
        server.nexus_added(who)
    lu.clear_ua(who.initiator_port)
    task = ScsiTask(cdb, 0, who, data_out=memoryview(data) if data is not None else None,
                    expected_length=len(data) if data is not None else 0)
    return runner.run(server.execute(task), lu)


async def while_beating(g: Group, names: list[str], fn: Any, *args: Any) -> Any:
    """Run ``fn`` on a thread while the named members beat (the clock moves 0.1 s a beat)."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    while not fut.done():
        await g.rounds(1, step=0.1, only=names)
        await asyncio.sleep(0.01)
    return await fut


@arun
async def test_pr_through_a_standby_is_enforced_by_the_owner_before_good(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    servers = {n: DeviceServer({0: g.lus[n]}, target_name=TARGET) for n in ("a", "b")}
    runners = {n: Runner(clock=g.clock) for n in ("a", "b")}
    one_b = nexus("one", 2)  # initiator one through gateway b (number 2)
    two_a = nexus("two", 1)  # initiator two through gateway a, the owner
    # two is logged in on a before the change: it must hear of the reservation
    write = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert command(runners["a"], servers["a"], g.lus["a"], write, two_a, b"\0" * 512).status == 0
    cdb, params = prout(0, sa_key=0xAAAA)  # REGISTER through the standby
    res = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"], cdb,
                              one_b, params)
    assert res.status == Status.GOOD
    version = g.members["b"].luns[KEY].applied
    assert g.members["a"].luns[KEY].applied >= version  # the owner had it before GOOD
    cdb, params = prout(1, key=0xAAAA, rtype=1)  # RESERVE, write exclusive
    res = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"], cdb,
                              one_b, params)
    assert res.status == Status.GOOD
    assert g.lus["a"].pr.type is not None  # in the owner's memory: no round trip per command
    res = command(runners["a"], servers["a"], g.lus["a"], write, two_a, b"\0" * 512)
    assert res.status == Status.RESERVATION_CONFLICT
    # the standby's own PR IN sees it too (SharedRefresh reads the record)
    read_res = bytes([0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0])  # READ RESERVATION
    out = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"],
                              read_res, one_b)
    assert out.status == Status.GOOD and bytes(out.data)[8:16] != bytes(8)
    g.close()


@arun
async def test_unit_attentions_of_a_change_reach_nexuses_on_other_gateways(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    servers = {n: DeviceServer({0: g.lus[n]}, target_name=TARGET) for n in ("a", "b")}
    runners = {n: Runner(clock=g.clock) for n in ("a", "b")}
    one_a, two_b = nexus("one", 1), nexus("two", 2)
    cdb, params = prout(0, sa_key=0x1111)
    assert command(runners["a"], servers["a"], g.lus["a"], cdb, one_a, params).status == 0
    cdb, params = prout(0, sa_key=0x2222)
    res = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"], cdb,
                              two_b, params)
    assert res.status == 0
    cdb, params = prout(1, key=0x2222, rtype=1)
    res = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"], cdb,
                              two_b, params)
    assert res.status == 0
    # PREEMPT through a: two (on b) loses its registration: REGISTRATIONS PREEMPTED there
    g.lus["b"].clear_ua(two_b.initiator_port)
    cdb, params = prout(4, key=0x1111, sa_key=0x2222, rtype=1)
    assert command(runners["a"], servers["a"], g.lus["a"], cdb, one_a, params).status == 0
    await g.rounds(1, only=["b"])
    assert g.lus["b"].pop_ua(two_b.initiator_port) is Asc.REGISTRATIONS_PREEMPTED
    g.close()


@arun
async def test_preempt_and_abort_through_a_standby_aborts_the_victims_tasks_on_the_owner(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    aborted: list[tuple[Any, list[str]]] = []
    g.members["a"].abort = lambda lu, ports: aborted.append((lu, ports))
    servers = {n: DeviceServer({0: g.lus[n]}, target_name=TARGET) for n in ("a", "b")}
    runners = {n: Runner(clock=g.clock) for n in ("a", "b")}
    one_b, two_a = nexus("one", 2), nexus("two", 1)
    for cdb, params in (prout(0, sa_key=0x2222), prout(1, key=0x2222, rtype=1)):
        assert command(runners["a"], servers["a"], g.lus["a"], cdb, two_a, params).status == 0
    cdb, params = prout(0, sa_key=0x1111)
    res = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"], cdb,
                              one_b, params)
    assert res.status == 0
    cdb, params = prout(5, key=0x1111, sa_key=0x2222, rtype=1)  # PREEMPT AND ABORT
    res = await while_beating(g, ["a"], command, runners["b"], servers["b"], g.lus["b"], cdb,
                              one_b, params)
    assert res.status == 0
    await asyncio.sleep(0.05)  # the abort is handed to the loop
    assert aborted == [(g.lus["a"], [two_a.initiator_port])]
    assert g.lus["a"].pop_ua(two_a.initiator_port) is Asc.REGISTRATIONS_PREEMPTED
    g.close()


class Forgetful:
    """The owner's lock as a Gluster brick restart leaves it: gone on the bricks while its
    holder still thinks it holds it; ``refresh`` re-takes the byte (or finds it taken)."""

    def __init__(self, shared: Any, name: str, inner: Any) -> None:
        self.shared, self.name, self.inner = shared, name, inner
        self.held = True

    def forget(self) -> None:
        self.inner.release()  # the bricks dropped it; the holder was not told

    def refresh(self) -> None:
        if not self.inner.held:
            self.inner = self.shared.try_lock(self.name, 0)  # LockHeld if taken meanwhile

    def release(self) -> None:
        self.held = False
        self.inner.release()


@arun
async def test_an_owner_whose_lock_the_bricks_forgot_refreshes_it_or_stands_down(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a = g.members["a"].luns[KEY]
    lock = Forgetful(g.dirs[0], lease_name(KEY), a.lock)
    a.lock = lock
    lock.forget()
    await g.rounds(1, only=["a"])  # refreshed before anyone took it: still the owner
    assert g.role("a") is Role.OWNER and lock.inner.held
    lock.forget()
    await g.rounds(1, only=["b"])  # b takes the byte the bricks forgot
    # (a's beat was fresh: b issues nothing until a lease after its read)
    assert g.members["b"].luns[KEY].lock is not None and g.role("b") is Role.FENCED
    assert lu_state(g.lus["b"]).issue_deadline == float("-inf")
    await g.rounds(1, only=["a"])  # a's refresh finds it taken: a stands down at once
    assert g.role("a") is Role.STANDBY
    assert lu_state(g.lus["a"]).issue_deadline == float("-inf")
    await g.rounds(5, only=["b"])
    assert g.role("b") is Role.OWNER
    g.close()


class Host:
    def __init__(self) -> None:
        self.results: list[ScsiResult] = []

    def reserve(self, task: ScsiTask, n: int) -> bool:
        return True

    def full_status(self) -> Status:
        return Status.TASK_SET_FULL

    def alone(self) -> bool:
        return True

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        self.results.append(result)


@arun
async def test_past_the_deadline_the_runner_issues_nothing_even_before_the_alua_table_says_so(
        tmp_path):
    g = Group(tmp_path, ["a"])
    await g.start()
    await g.rounds(1, step=0.0)
    lu = g.lus["a"]
    server = DeviceServer({0: lu}, target_name=TARGET)
    who = nexus("one", 1)
    server.nexus_added(who)
    runner, host = Runner(clock=g.clock), Host()

    def write(fill: bytes) -> ScsiResult:
        lu.clear_ua(who.initiator_port)
        data = memoryview(bytearray(fill * 512))
        task = ScsiTask(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), 0, who, data_out=data,
                        expected_length=512, write=True)
        runner.start(task, server.execute(task), lu, host)
        return host.results[-1]

    assert write(b"1").status == Status.GOOD
    g.clock.now += 5.0  # the deadline passed; the fencing timer has not run yet
    assert lu.alua.state_of(1) is S.ACTIVE_OPTIMIZED
    res = write(b"2")
    assert res.status == Status.CHECK_CONDITION
    assert parse_sense(res.sense) == (SenseKey.NOT_READY, Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)
    assert bytes(lu.store.read(0, 1)) == b"1"  # nothing was issued
    g.close()


@arun
async def test_mode_select_through_a_standby_write_protects_the_owner(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    server = DeviceServer({0: g.lus["b"]}, target_name=TARGET)
    on_a = nexus("two", 1)
    DeviceServer({0: g.lus["a"]}, target_name=TARGET).nexus_added(on_a)
    g.lus["a"].clear_ua(on_a.initiator_port)
    page = bytes([0x0A, 10, 0, 0x10, 0x08, 0, 0, 0, 0xFF, 0xFF, 0, 0])  # control page, SWP
    params = bytes(4) + page
    cdb = bytes([0x15, 0x10, 0, 0, len(params), 0])
    res = await while_beating(g, ["a"], command, Runner(clock=g.clock), server, g.lus["b"], cdb,
                              nexus("one", 2), params)
    assert res.status == Status.GOOD
    assert g.lus["a"].write_protected  # the owner refuses writes from now on
    # and a nexus through the owner hears of it (SPC-4: MODE PARAMETERS CHANGED)
    assert g.lus["a"].pop_ua(on_a.initiator_port) is Asc.MODE_PARAMETERS_CHANGED
    g.close()
