"""The gateway group's safety review (docs/HA.md): no lock goes back while a store call of
the LU may still run, a take from a live owner waits out its lease, a new owner loads the
state again after its take, state loads and updates are serialised and roll back, a state
lock that arrives late is released. Members in one process on a tmp-dir group directory,
a clock the tests move."""

from __future__ import annotations

import asyncio
import errno
import math
import threading
from typing import Any

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.group.lease import Role
from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiResult
from gluster_iscsi.scsi.sense import Asc, SenseKey, parse_sense
from gluster_iscsi.scsi.task import Status
from gluster_iscsi.server.group import lease_name, state_name
from gluster_iscsi.server.runner import Runner, lu_state

from .test_group import KEY, TARGET, Group, arun, command, nexus, prout, while_beating


def spy_release(g: Group, name: str, seen: list[float]) -> None:
    """Record the LU's issue deadline at the moment its lease lock is given back."""
    glu = g.members[name].luns[KEY]
    lock = glu.lock
    assert lock is not None
    real = lock.release

    def release() -> None:
        seen.append(lu_state(glu.lu).issue_deadline)
        real()

    lock.release = release  # type: ignore[method-assign]


@arun
async def test_a_move_gives_the_lock_back_only_after_the_deadline_is_minus_infinity(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    seen: list[float] = []
    spy_release(g, "a", seen)
    await g.members["b"].move(KEY, "b")
    for _ in range(4):
        await g.rounds(1)
        await asyncio.sleep(0.02)
    assert g.role("b") is Role.OWNER
    assert seen == [-math.inf]
    g.close()


@arun
async def test_a_move_whose_drain_times_out_keeps_the_lock_while_commands_run(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    stats = lu_state(g.lus["a"]).stats
    stats.in_flight = 1  # a store call that does not come back
    await g.members["b"].move(KEY, "b")
    await g.rounds(1)
    assert g.role("a") is Role.MOVING_OUT
    for _ in range(12):  # past the drain's bound (a lease)
        await asyncio.sleep(0.02)
        await g.rounds(1)
    assert g.members["a"].luns[KEY].lock is not None
    assert g.role("b") is not Role.OWNER
    stats.in_flight = 0  # it came back: the next beat drains and hands over
    for _ in range(4):
        await asyncio.sleep(0.02)
        await g.rounds(1)
    assert g.role("b") is Role.OWNER and g.role("a") is Role.STANDBY
    g.close()


@arun
async def test_a_planned_stop_with_commands_in_flight_keeps_the_lock(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    lu_state(g.lus["a"]).stats.in_flight = 1
    a = g.members.pop("a")
    g.clock.now += 0.0
    stop = asyncio.ensure_future(a.stop(release=True))
    while not stop.done():
        await asyncio.sleep(0.01)
        g.clock.now += 1.0  # the drain's bound passes
    await stop
    assert lu_state(g.lus["a"]).issue_deadline == -math.inf
    assert a.luns[KEY].lock is not None  # kept: the process exit drops it
    await g.rounds(1)
    assert g.role("b") is not Role.OWNER
    g.close()


@arun
async def test_a_planned_stop_releases_with_the_deadline_already_minus_infinity(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    seen: list[float] = []
    spy_release(g, "a", seen)
    a = g.members.pop("a")
    await a.stop(release=True)
    assert seen == [-math.inf]
    await g.rounds(1)
    assert g.role("b") is Role.OWNER
    g.close()




@arun
async def test_a_take_from_a_live_owner_issues_nothing_for_a_lease_after_its_read(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a = g.members["a"].luns[KEY]
    assert a.lock is not None
    a.lock.release()  # every brick restarted: a's lock is gone, a itself beats on
    await g.rounds(1, only=["b"])
    read_at = g.clock.now - 1.0  # the round's beat ran before its clock step
    b = g.members["b"].luns[KEY]
    assert b.lock is not None
    assert not b.lease.may_issue(g.clock.now)
    assert lu_state(g.lus["b"]).issue_deadline == -math.inf  # 04/0A at the runner
    while g.clock.now < read_at + 5.0:
        await g.rounds(1, only=["b"])
        if g.clock.now < read_at + 5.0:
            assert lu_state(g.lus["b"]).issue_deadline == -math.inf
    await g.rounds(1, only=["b"])
    assert g.role("b") is Role.OWNER
    assert lu_state(g.lus["b"]).issue_deadline > g.clock.now
    g.close()


@arun
async def test_a_take_from_a_stale_or_released_record_serves_at_once(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a = g.members.pop("a")
    await a.stop(release=True)  # owner null in the record
    await g.rounds(1)
    assert g.role("b") is Role.OWNER
    g.close()


class WriteHook:
    """A member's group directory that runs ``before`` once, just before the first write
    of ``name``."""

    def __init__(self, inner: Any, name: str, before: Any) -> None:
        self.inner = inner
        self.name = name
        self.before = before

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def write(self, name: str, data: Any, **kw: Any) -> Any:
        if name == self.name and self.before is not None:
            before, self.before = self.before, None
            before()
        return self.inner.write(name, data, **kw)


def swp_on(lu: Any) -> None:
    lu.load_shared_state("mode", {**lu.shared_state("mode"), "swp": True})


@arun
async def test_a_new_owner_loads_the_state_again_after_its_take_record(tmp_path):
    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    a = g.members.pop("a")
    await a.stop(release=True)  # owner null: b takes at its next beat
    b, c = g.members["b"], g.members["c"]
    lu_c = g.lus["c"]

    def change() -> None:
        # c (a non-owner) writes a change after b loaded the state, before b's take record:
        # the record still says no owner, so c counts on whoever takes it to load it
        c.shared_update(lu_c, lambda: swp_on(lu_c))

    b.shared = WriteHook(b.shared, lease_name(KEY), change)  # type: ignore[assignment]
    await b.beat()
    assert b.luns[KEY].lease.role is Role.OWNER
    assert b.luns[KEY].applied == c.luns[KEY].applied
    assert g.lus["b"].shared_state("mode")["swp"] is True  # enforced before it serves
    g.close()


class GatedLock:
    """An LU's state lock that holds thread ``slow`` at its door until ``gate`` opens (a
    beat's load that read an older record and waits for the lock)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.slow: threading.Thread | None = None
        self.waiting = threading.Event()
        self.gate = threading.Event()

    def __enter__(self) -> Any:
        if threading.current_thread() is self.slow:
            self.waiting.set()
            self.gate.wait(10)
        return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.inner.__exit__(*exc)

    def acquire(self, *a: Any, **kw: Any) -> Any:
        return self.inner.acquire(*a, **kw)

    def release(self) -> None:
        self.inner.release()


def d_sense_on(lu: Any) -> None:
    lu.load_shared_state("mode", {**lu.shared_state("mode"), "d_sense": True})


@arun
async def test_a_load_of_an_older_record_never_overwrites_a_newer_change_in_memory(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a, b = g.members["a"], g.members["b"]
    lu_a, lu_b = g.lus["a"], g.lus["b"]
    await asyncio.to_thread(a.shared_update, lu_a, lambda: d_sense_on(lu_a))  # version 1
    older = g.dirs[0].read(state_name(KEY)).data
    glu = b.luns[KEY]
    assert glu.applied == 0  # b has not beaten since
    gated = GatedLock(lu_b.state_lock)
    lu_b.state_lock = gated
    # a beat of b read version 1 and is about to load it ...
    slow = threading.Thread(target=b._load, args=(glu, older))
    gated.slow = slow
    slow.start()
    assert gated.waiting.wait(10)

    def change() -> None:  # ... when b's own change (version 2) is about to be written
        gated.gate.set()
        slow.join(10)

    b.shared = WriteHook(b.shared, state_name(KEY), change)  # type: ignore[assignment]
    update = asyncio.ensure_future(asyncio.to_thread(b.shared_update, lu_b,
                                                     lambda: swp_on(lu_b)))
    while not update.done():  # the owner beats: b waits until it applied the change
        await g.rounds(1, step=0.1, only=["a"])
        await asyncio.sleep(0.01)
    await update
    assert not slow.is_alive()
    assert glu.applied == 2
    mode = lu_b.shared_state("mode")
    assert mode["swp"] is True and mode["d_sense"] is True
    g.close()


@arun
async def test_a_change_whose_record_cannot_be_written_is_rolled_back_in_memory(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    b = g.members["b"]
    lu_b = g.lus["b"]

    def fail() -> None:
        raise OSError(errno.EIO, "the volume is gone")

    b.shared = WriteHook(b.shared, state_name(KEY), fail)  # type: ignore[assignment]
    with pytest.raises(BackingStoreError) as e:
        await asyncio.to_thread(b.shared_update, lu_b, lambda: swp_on(lu_b))
    assert e.value.errno == errno.ESHUTDOWN
    assert lu_b.shared_state("mode")["swp"] is False  # not in force: not in memory either
    assert b.luns[KEY].applied == 0
    g.close()


class SlowLock:
    """A member's group directory whose first try of the state byte answers only once
    ``go`` is set (a volume that stalls), and moves the clock past the update's bound."""

    def __init__(self, inner: Any, clock: Any) -> None:
        self.inner = inner
        self.clock = clock
        self.go = threading.Event()
        self.got: list[Any] = []

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def try_lock(self, name: str, byte: int) -> Any:
        if byte == 1 and not self.got:
            self.clock.now += 10.0
            self.go.wait(10)
            lock = self.inner.try_lock(name, byte)
            self.got.append(lock)
            return lock
        return self.inner.try_lock(name, byte)


@arun
async def test_a_state_lock_that_arrives_after_the_update_gave_up_is_released(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    b = g.members["b"]
    lu_b = g.lus["b"]
    slow = SlowLock(b.shared, g.clock)
    b.shared = slow  # type: ignore[assignment]
    with pytest.raises(BackingStoreError) as e:
        await asyncio.to_thread(b.shared_update, lu_b, lambda: swp_on(lu_b))
    assert e.value.errno == errno.ESHUTDOWN
    slow.go.set()  # the try gets the byte after all
    for _ in range(200):
        if slow.got and not slow.got[0].held:
            break
        await asyncio.sleep(0.01)
    assert slow.got and not slow.got[0].held  # given back: a's updates still run
    lock = g.dirs[0].try_lock(lease_name(KEY), 1)
    lock.release()
    g.close()


# F6: a change whose state record is not written is not heard of either ------------------------
def _all_or_nothing_setup(g: Group) -> tuple[Any, Any, dict[str, Nexus]]:
    """Servers and runners of a (the owner) and b, and three nexuses: one and two through a,
    three through b; every unit attention cleared."""
    servers = {n: DeviceServer({0: g.lus[n]}, target_name=TARGET) for n in ("a", "b")}
    runners = {n: Runner(clock=g.clock) for n in ("a", "b")}
    who = {"one": nexus("one", 1), "two": nexus("two", 1), "three": nexus("three", 2)}
    for n in who.values():
        servers["a" if n.relative_port == 1 else "b"].nexus_added(n)
    return servers, runners, who


def _pending(lu: Any) -> dict[str, list[Any]]:
    with lu.state_lock:
        return {port: list(q) for port, q in lu._ua.items() if q}


def _clear(g: Group) -> None:
    for lu in g.lus.values():
        for port in list(lu._ua):
            lu.clear_ua(port)


def _failing_state_write(member: Any) -> None:
    def fail() -> None:
        raise OSError(errno.EIO, "the volume is gone")

    member.shared = WriteHook(member.shared, state_name(KEY), fail)


@pytest.mark.parametrize("written", [False, True])
@arun
async def test_a_preempt_whose_record_is_not_written_queues_no_unit_attention(tmp_path, written):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    servers, runners, who = _all_or_nothing_setup(g)
    lu_a, lu_b = g.lus["a"], g.lus["b"]

    def on(gw: str, cdb_params: tuple[bytes, bytes], n: Nexus) -> ScsiResult:
        cdb, params = cdb_params
        return command(runners[gw], servers[gw], g.lus[gw], cdb, n, params)

    assert on("a", prout(0, sa_key=0x1111), who["one"]).status == Status.GOOD
    assert on("a", prout(0, sa_key=0x2222), who["two"]).status == Status.GOOD
    assert on("a", prout(1, key=0x2222, rtype=1), who["two"]).status == Status.GOOD
    res = await while_beating(g, ["a"], on, "b", prout(0, sa_key=0x3333), who["three"])
    assert res.status == Status.GOOD
    await g.rounds(1)
    _clear(g)
    pr_before = lu_a.shared_state("pr")
    if not written:
        _failing_state_write(g.members["a"])
    # PREEMPT by one of two's registration and reservation, as exclusive access: two's
    # registration goes (REGISTRATIONS PREEMPTED), three's reservation type changed
    # (RESERVATIONS RELEASED, on b through the record's event)
    res = on("a", prout(4, key=0x1111, sa_key=0x2222, rtype=3), who["one"])
    await g.rounds(1)  # b loads whatever was written
    if written:
        assert res.status == Status.GOOD
        assert lu_a.shared_state("pr") != pr_before
        assert _pending(lu_a) == {who["two"].initiator_port: [Asc.REGISTRATIONS_PREEMPTED]}
        assert _pending(lu_b) == {who["three"].initiator_port: [Asc.RESERVATIONS_RELEASED]}
    else:
        assert res.status == Status.CHECK_CONDITION
        assert parse_sense(res.sense) == (SenseKey.NOT_READY,
                                          Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)
        assert lu_a.shared_state("pr") == pr_before  # nothing changed ...
        assert _pending(lu_a) == {} and _pending(lu_b) == {}  # ... and nobody hears of it
    g.close()


def _wce_toggled(lu: Any) -> tuple[bytes, bytes]:
    """MODE SELECT(6) of the caching page with WCE flipped."""
    page = bytearray(lu.mode_pages[0x08].current)
    page[0] &= 0x3F
    page[2] ^= 0x04
    params = bytes(4) + bytes(page)
    return bytes([0x15, 0x10, 0, 0, len(params), 0]), params


@pytest.mark.parametrize("written", [False, True])
@arun
async def test_a_mode_select_whose_record_is_not_written_queues_no_unit_attention(tmp_path,
                                                                                  written):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    servers, runners, who = _all_or_nothing_setup(g)
    lu_a, lu_b = g.lus["a"], g.lus["b"]
    await g.rounds(1)
    _clear(g)
    wce = lu_a.write_cache
    if not written:
        _failing_state_write(g.members["a"])
    cdb, params = _wce_toggled(lu_a)
    res = command(runners["a"], servers["a"], lu_a, cdb, who["one"], params)
    await g.rounds(1)
    if written:
        assert res.status == Status.GOOD
        assert lu_a.write_cache is not wce and lu_b.write_cache is not wce
        assert _pending(lu_a) == {who["two"].initiator_port: [Asc.MODE_PARAMETERS_CHANGED]}
        assert _pending(lu_b) == {who["three"].initiator_port: [Asc.MODE_PARAMETERS_CHANGED]}
    else:
        assert res.status == Status.CHECK_CONDITION
        assert parse_sense(res.sense) == (SenseKey.NOT_READY,
                                          Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)
        assert lu_a.write_cache is wce and lu_b.write_cache is wce
        assert _pending(lu_a) == {} and _pending(lu_b) == {}
    g.close()
