"""The gateway group's second safety review (/work/REVIEW-G.md on branch fixg, docs/HA.md):
a standby dates a record from after its read, no lock goes back while a store call of the LU
still holds its I/O lock, a detached LU's lock is given back, a replaced LU's shared state
goes through its own group entry. Members in one process on a tmp-dir group directory, a
clock the tests move."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from gluster_iscsi.group.lease import Role
from gluster_iscsi.server.group import lease_name
from gluster_iscsi.server.runner import lu_state

from .test_group import KEY, Group, arun


class SlowLeaseRead:
    """A member's group directory whose next read of the lease record takes ``seconds`` of
    the test's clock, during which ``during`` runs (another member's beat)."""

    def __init__(self, inner: Any, clock: Any, seconds: float, during: Any) -> None:
        self.inner = inner
        self.clock = clock
        self.seconds = seconds
        self.during = during

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def read(self, name: str) -> Any:
        if name == lease_name(KEY) and self.during is not None:
            during, self.during = self.during, None
            self.clock.now += self.seconds
            during()
        return self.inner.read(name)


@arun
async def test_a_standby_dates_the_record_from_after_its_read_never_before(tmp_path):
    # G1: b's read of the lease record is slow; a beats meanwhile (its deadline counts from
    # then). b must not call the record stale a lease after the *start* of its read: if the
    # lock vanished (every brick restarted), b would take it and serve while a still issues.
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a, b = g.members["a"], g.members["b"]
    loop = asyncio.get_running_loop()

    def a_beats() -> None:
        asyncio.run_coroutine_threadsafe(a.beat(), loop).result(10)

    b.shared = SlowLeaseRead(b.shared, g.clock, 2.0, a_beats)  # type: ignore[assignment]
    await b.beat()
    a_deadline = lu_state(g.lus["a"]).issue_deadline
    assert a_deadline == g.clock.now + 5.0  # a's beat started as b's read was returning
    lock = a.luns[KEY].lock
    assert lock is not None
    # a beats no more (the bricks restart, its calls fail) but is alive until its deadline;
    # its lock vanishes with the last brick's restart, a lease after b's read had started
    for step in range(12):
        g.clock.now += 0.5
        if step == 5:
            lock.release()
        await b.beat()
        b_deadline = lu_state(g.lus["b"]).issue_deadline
        both = g.clock.now < a_deadline and g.clock.now < b_deadline
        assert not both, "two gateways may issue to the LUN at once"
    assert g.role("b") in (Role.OWNER, Role.FENCED)  # it did take over, in time
    g.close()


@arun
async def test_a_move_waits_for_a_store_call_whose_command_timed_out(tmp_path):
    # G2: a command answered by its I/O timeout is no longer in flight, but its store call
    # may still run (and land a write); it holds the LU's I/O lock until it returns.
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    io_lock = lu_state(g.lus["a"]).lock
    io_lock.acquire_shared()  # the call of a command that timed out: still in the store
    assert lu_state(g.lus["a"]).stats.in_flight == 0
    await g.members["b"].move(KEY, "b")
    for _ in range(12):  # past the drain's bound (a lease)
        await asyncio.sleep(0.02)
        await g.rounds(1)
    assert g.members["a"].luns[KEY].lock is not None  # kept while the call may land
    assert g.role("b") is not Role.OWNER
    io_lock.release_shared()  # it returned: the next beats drain and hand over
    for _ in range(4):
        await asyncio.sleep(0.02)
        await g.rounds(1)
    assert g.role("b") is Role.OWNER and g.role("a") is Role.STANDBY
    g.close()


@arun
async def test_a_planned_stop_keeps_the_lock_while_a_timed_out_call_runs(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    lu_state(g.lus["a"]).lock.acquire_shared()
    a = g.members.pop("a")
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
async def test_a_detached_lu_gives_its_lock_back_only_once_its_timed_out_call_returned(tmp_path):
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a = g.members["a"]
    glu = a.luns[KEY]
    lock = glu.lock
    assert lock is not None
    io_lock = lu_state(g.lus["a"]).lock
    io_lock.acquire_shared()
    a.detach(g.lus["a"])
    for _ in range(5):
        await asyncio.sleep(0.02)
    assert lock.held  # not given back while the call runs
    io_lock.release_shared()
    for _ in range(100):
        if not lock.held:
            break
        await asyncio.sleep(0.01)
    assert not lock.held
    g.close()


class DetachDuringTry:
    """A member's group directory whose next try of the lease byte runs ``during`` (on the
    loop, waited for) before it tries: a LU detached while its beat awaits the take."""

    def __init__(self, inner: Any, loop: Any, during: Any) -> None:
        self.inner = inner
        self.loop = loop
        self.during = during

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def try_lock(self, name: str, byte: int) -> Any:
        if byte == 0 and self.during is not None:
            during, self.during = self.during, None
            asyncio.run_coroutine_threadsafe(during(), self.loop).result(10)
        return self.inner.try_lock(name, byte)


@arun
async def test_a_lu_detached_while_its_beat_takes_the_lease_gives_the_lock_back(tmp_path):
    # G4: the take finished for a glu no longer attached: nothing would beat or release it,
    # and every gateway would find the LUN held for good
    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    a = g.members.pop("a")
    await a.stop(release=True)  # owner null: b takes at its next beat
    b = g.members["b"]

    async def detach() -> None:
        b.detach(g.lus["b"])  # reconcile removed the LUN (or rolled back its new LU)

    b.shared = DetachDuringTry(b.shared, asyncio.get_running_loop(), detach)  # type: ignore[assignment]
    await b.beat()
    assert lu_state(g.lus["b"]).issue_deadline == -math.inf
    for _ in range(100):  # c takes it: the lock is free (after a lease: b wrote its take)
        g.clock.now += 1.0
        await g.members["c"].beat()
        if g.role("c") is Role.OWNER:
            break
    assert g.role("c") is Role.OWNER
    g.close()


def _mode(lu: Any, **bits: Any) -> None:
    lu.load_shared_state("mode", {**lu.shared_state("mode"), **bits})


@arun
async def test_a_replaced_lus_shared_state_goes_through_its_own_group_entry(tmp_path):
    # G5: while a replacement is prepared, the old LU still serves under a side key and the
    # new one is attached under the LUN's key (control/api.py _attach_lu); a PR OUT or MODE
    # SELECT on the old LU must load the latest record into *that* LU before it changes it
    from gluster_iscsi.server.group import state_name

    from .test_group import make_lu

    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a, b = g.members["a"], g.members["b"]
    old_lu, lu_b = g.lus["a"], g.lus["b"]
    a.luns[f"{KEY}#replaced"] = a.luns.pop(KEY)  # as _attach_lu does for a replacement
    a.attach(make_lu(), KEY, "a")

    async def update(m: Any, lu: Any, **bits: Any) -> None:
        done = asyncio.ensure_future(asyncio.to_thread(m.shared_update, lu,
                                                       lambda: _mode(lu, **bits)))
        while not done.done():  # (a non-owner waits for the owner, at most a lease)
            g.clock.now += 0.5
            await asyncio.sleep(0.01)
        await done

    await update(b, lu_b, swp=True)  # through b, before a's next beat
    await update(a, old_lu, d_sense=True)  # through the old LU, still serving on a
    mode = g.dirs[0].read(state_name(KEY)).data["mode"]
    assert mode["swp"] is True, "b's change was lost"
    assert mode["d_sense"] is True
    g.close()


class StallFirstStateRead:
    """A member's group directory whose first read of the LU's state record blocks until
    ``go`` (a PR IN's refresh stuck on a slow volume, or one of many queued state calls)."""

    def __init__(self, inner: Any) -> None:
        import threading

        self.inner = inner
        self.go = threading.Event()
        self.entered = threading.Event()
        self.armed = True

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def read(self, name: str) -> Any:
        from gluster_iscsi.server.group import state_name

        if name == state_name(KEY) and self.armed:
            self.armed = False
            self.entered.set()
            self.go.wait(30)
        return self.inner.read(name)


@arun
async def test_the_owners_heartbeat_never_waits_behind_shared_state_calls(tmp_path):
    # G10: PR OUT/IN and MODE SELECT calls (their state lock tries every 10 ms, their
    # waits for the owner polling the lease record, a stuck read) queued on the heartbeat's
    # one worker: enough of them delay the beats until the owner fences its own LUNs
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a = g.members["a"]
    stall = StallFirstStateRead(a.shared)
    a.shared = stall  # type: ignore[assignment]
    refresh = asyncio.ensure_future(asyncio.to_thread(a.shared_refresh, g.lus["a"]))
    try:
        assert await asyncio.to_thread(stall.entered.wait, 10)
        g.clock.now += 1.0
        await asyncio.wait_for(a.beat(), 10)  # the owner's beat goes on meanwhile
        assert lu_state(g.lus["a"]).issue_deadline == g.clock.now + 5.0  # renewed
    finally:
        stall.go.set()
        await refresh
    g.close()


@arun
async def test_a_move_to_a_gateway_that_is_down_is_refused_and_the_owner_keeps_the_lun(tmp_path):
    # G11: the owner would hand the LUN to nobody: every other gateway leaves it to the
    # target until the record goes stale, a lease without an owner
    import pytest

    g = Group(tmp_path, ["a", "b", "c"])
    await g.start()
    await g.rounds(2)
    c = g.members.pop("c")
    await c.stop(release=True)  # its record says stopped
    await g.rounds(1)
    with pytest.raises(ValueError, match="not up"):
        await g.members["b"].move(KEY, "c")
    await g.rounds(3)
    assert g.role("a") is Role.OWNER
    g.close()


@arun
async def test_a_heartbeat_renews_only_on_state_it_loaded_never_on_one_left_to_an_update(
        tmp_path):
    # G7: a beat's load is left to an update of this gateway under way (F4); if that update's
    # own read then fails, the beat had renewed the deadline without a change another
    # gateway wrote before it, and which that gateway counts on (_wait_enforced)
    g = Group(tmp_path, ["a", "b"])
    await g.start()
    await g.rounds(2)
    a, b = g.members["a"], g.members["b"]
    lu_b = g.lus["b"]
    done = asyncio.ensure_future(asyncio.to_thread(b.shared_update, lu_b,
                                                   lambda: _mode(lu_b, swp=True)))
    while not done.done():  # a does not beat: b waits out the lease
        g.clock.now += 0.5
        await asyncio.sleep(0.01)
    await done
    written = b.luns[KEY].applied
    glu = a.luns[KEY]
    assert glu.applied < written
    glu.updating = 1  # an update of a under way ...

    def failed() -> None:
        glu.updating = 0  # ... whose read failed: it loaded nothing

    asyncio.get_running_loop().call_later(0.05, failed)
    start = g.clock.now
    await a.beat()
    renewed = lu_state(g.lus["a"]).issue_deadline >= start + 5.0
    assert not renewed or glu.applied >= written, "renewed without the change"
    assert glu.applied >= written and g.lus["a"].shared_state("mode")["swp"] is True
    g.close()


class HangingWrites:
    """A blocking store whose writes wait until ``go`` (a Gluster client stuck on a brick)."""

    def __init__(self, inner: Any) -> None:
        import threading

        self.inner = inner
        self.blocking = True
        self.go = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def write(self, offset: int, data: Any) -> None:
        self.entered.set()
        self.go.wait(30)
        self.inner.write(offset, data)


@arun
async def test_a_write_its_io_timeout_answered_still_holds_the_lease_until_it_returned(tmp_path):
    # G2 end to end: the runner answers a write ETIMEDOUT while its call still runs in the
    # store; a move must not hand the LUN over before that call returned
    from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiTask
    from gluster_iscsi.scsi.task import Status
    from gluster_iscsi.server.iopool import IoPool
    from gluster_iscsi.server.runner import Runner

    g = Group(tmp_path, ["a", "b"])
    lu = g.lus["a"]
    store = HangingWrites(lu.store)
    lu.store = store
    await g.start()
    await g.rounds(2)
    loop = asyncio.get_running_loop()

    class Engines:
        io_timeout = 0.05
        ring = None
        gfaio = None

        def __init__(self) -> None:
            self.pool = IoPool(loop, 2)

            class Poller:
                missed_at = None

            self.poller = Poller()

        def pool_for(self, s: object) -> Any:
            return self.pool

    engines = Engines()
    runner = Runner(engines, clock=g.clock)  # type: ignore[arg-type]
    nexus = Nexus("iqn.x:i", "iqn.x:i,i,0x1", "iqn.x:t,t,0x1", relative_port=1,
                  target_port_group=1)
    device = DeviceServer({0: lu})
    device.nexus_added(nexus)
    lu.clear_ua(nexus.initiator_port)
    results: list[Any] = []

    class Host:
        def reserve(self, task: Any, n: int) -> bool:
            return True

        def full_status(self) -> Status:
            return Status.BUSY

        def alone(self) -> bool:
            return False

        def complete(self, task: Any, result: Any) -> None:
            results.append(result)

    task = ScsiTask(bytes.fromhex("2a000000000300000100"), 0, nexus,
                    data_out=memoryview(b"\x05" * 512), expected_length=512, write=True)
    runner.start(task, device.execute(task), lu, Host())
    try:
        assert await asyncio.to_thread(store.entered.wait, 10)
        for _ in range(500):
            if results:
                break
            await asyncio.sleep(0.01)
        assert results and results[0].status == Status.CHECK_CONDITION  # ETIMEDOUT
        assert lu_state(lu).stats.in_flight == 0  # the command ended; its call did not
        await g.members["b"].move(KEY, "b")
        for _ in range(12):
            await asyncio.sleep(0.02)
            await g.rounds(1)
        assert g.members["a"].luns[KEY].lock is not None
        assert g.role("b") is not Role.OWNER
    finally:
        store.go.set()
    for _ in range(6):
        await asyncio.sleep(0.05)
        await g.rounds(1)
    assert g.role("b") is Role.OWNER
    engines.pool.shutdown()
    g.close()
