"""The command runner: one table from request to store call, the I/O timeout with abandon,
and background jobs paced by a clock the test holds (no thread, no sleeping)."""

from __future__ import annotations

import ast
import errno
import gc
import pathlib
from typing import Any

import pytest

import gluster_iscsi
from gluster_iscsi.backstore.base import BackingStore, BackingStoreError, Capabilities, Extent
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.buffers import BufferPool
from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiResult, ScsiTask, Status, io
from gluster_iscsi.scsi.background import BackgroundJob, JobCancelled
from gluster_iscsi.scsi.sense import from_store_error, parse_sense
from gluster_iscsi.server.iopool import IoTimeout
from gluster_iscsi.server.runner import STORE_CALLS, IoLock, JobRun, Runner, lu_on

N1 = Nexus("iqn.x:i", "iqn.x:i,i,0x1", "iqn.x:t,t,0x1")
SRC = pathlib.Path(gluster_iscsi.__file__).parent


class Recorder(BackingStore):
    """Says which store method each call reached, with what."""

    blocking = False
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    @property
    def size(self) -> int:
        self.calls.append(("size",))
        return 1 << 20

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(discard=True, write_zeroes=True, extents=True)

    def read_into(self, offset: int, buf: Any) -> None:
        self.calls.append(("read_into", offset, len(buf)))

    def read(self, offset: int, length: int) -> bytes:
        self.calls.append(("read", offset, length))
        return bytes(length)

    def write(self, offset: int, data: Any) -> None:
        self.calls.append(("write", offset, bytes(data)))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def discard(self, offset: int, length: int) -> None:
        self.calls.append(("discard", offset, length))

    def write_zeroes(self, offset: int, length: int) -> None:
        self.calls.append(("write_zeroes", offset, length))

    def extents(self, offset: int, length: int) -> list[Extent]:
        self.calls.append(("extents", offset, length))
        return [Extent(offset, length, True)]

    def resize(self, size: int) -> None:  # pragma: no cover - not a request
        raise NotImplementedError

    def close(self, timeout: float | None = None) -> None:
        pass


def test_every_request_type_is_a_plain_record_with_a_store_call() -> None:
    assert set(STORE_CALLS) == set(io.REQUEST_TYPES)
    for t in io.REQUEST_TYPES:
        assert issubclass(t, io.Request)
        assert not hasattr(t, "run"), t  # fields only: the runner does the work


@pytest.mark.parametrize(("req", "expect", "value"), [
    (io.Read(512, 4096), [("read_into", 512, 4096)], None),
    (io.Write(0, b"ab"), [("write", 0, b"ab")], None),
    (io.Write(0, b"ab", True), [("write", 0, b"ab"), ("flush",)], None),
    (io.Flush(), [("flush",)], None),
    (io.Size(), [("size",)], 1 << 20),
    (io.Unmap(0, 8), [("discard", 0, 8)], None),
    (io.WriteZeroes(8, 16), [("write_zeroes", 8, 16)], None),
    (io.Extents(0, 4), [("extents", 0, 4)], [Extent(0, 4, True)]),
    (io.CompareAndWrite(0, bytes(2), b"xy"), [("read", 0, 2), ("write", 0, b"xy")], None),
    (io.CompareAndWrite(0, b"\0\1", b"xy"), [("read", 0, 2)], 1),  # miscompare at byte 1
    (io.OrWrite(0, b"\x01"), [("read", 0, 1), ("write", 0, b"\x01")], None),
])
def test_each_request_reaches_its_store_method(req: Any, expect: list[Any], value: Any) -> None:
    store = Recorder()
    lu = lu_on(store, serial="rec")
    store.calls.clear()  # lu_on measured the store: that is the opener's call, not a request's
    out = Runner().perform(req, lu)
    assert store.calls == expect
    if type(req) is io.Read:
        assert isinstance(out, memoryview) and len(out) == 4096
    else:
        assert out == value


def test_a_request_naming_another_lu_runs_on_that_lus_store() -> None:
    a, b = Recorder(), Recorder()
    lu_a, lu_b = lu_on(a, serial="a"), lu_on(b, serial="b")
    a.calls.clear()
    b.calls.clear()
    Runner().perform(io.Write(0, b"z", lu=lu_b), lu_a)
    assert a.calls == [] and b.calls == [("write", 0, b"z")]


def test_the_lock_table_gives_each_lu_its_own_lock_and_the_runner_uses_the_one_given() -> None:
    runner = Runner()
    lu1, lu2 = lu_on(MemoryStore(1 << 20), serial="1"), lu_on(MemoryStore(1 << 20), serial="2")
    assert runner.locks.lock(lu1) is runner.locks.lock(lu1)
    assert runner.locks.lock(lu1) is not runner.locks.lock(lu2)
    asked = []

    class Shared:  # what a gateway group's lock table would be
        def lock(self, lu: Any) -> IoLock:
            asked.append(lu)
            return IoLock()

    Runner(locks=Shared()).perform(io.CompareAndWrite(0, bytes(1), b"x"), lu1)
    assert asked == [lu1]


# -- the I/O timeout -----------------------------------------------------------------------------


class TimingOutPool:
    """Every call times out (as IoPool does once the I/O timeout passed)."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def in_flight(self) -> bool:
        return False

    def submit(self, fn: Any, arg: Any, callback: Any, timeout: float = 0.0) -> None:
        self.submitted.append((arg, timeout))
        callback(None, IoTimeout())

    def when_returned(self, then: Any) -> bool:
        return False  # timed out while queued: never issued


class Engines:
    io_timeout = 7.0
    ring = None
    gfaio = None

    def __init__(self) -> None:
        self.pool = TimingOutPool()

        class Poller:
            missed_at = None

        self.poller = Poller()

    def pool_for(self, store: object) -> Any:
        return self.pool


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


def test_a_timed_out_write_fails_not_ready_and_its_buffer_is_never_lent_again() -> None:
    store = MemoryStore(1 << 20)
    store.blocking = True  # type: ignore[misc]  # as a gfapi or FUSE store: on the workers
    lu = lu_on(store, serial="slow")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    buffers = BufferPool()
    data = buffers.borrow(128 << 10)  # the command's data-out, a pooled buffer
    engines = Engines()
    runner = Runner(engines, buffers=buffers)  # type: ignore[arg-type]
    host = Host()
    task = ScsiTask(bytes.fromhex("2a000000000000010000"), 0, N1, data_out=data,
                    expected_length=len(data), write=True)
    runner.start(task, device.execute(task), lu, host)
    [result] = host.results
    assert result.status == Status.CHECK_CONDITION
    expected = from_store_error(BackingStoreError(errno.ETIMEDOUT, "t"), write=True)
    assert parse_sense(result.sense or b"") == (expected.key, expected.asc)
    assert engines.pool.submitted[0][1] == 7.0  # bounded by the I/O timeout
    # The late pwrite may still read it: given back, it is dropped, not handed out again.
    backing = data.obj
    buffers.give_back(data)
    again = buffers.borrow(128 << 10)
    assert again.obj is not backing


def test_a_read_the_budget_has_no_room_for_ends_with_the_hosts_full_status() -> None:
    lu = lu_on(MemoryStore(1 << 20), serial="full")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)

    class Full(Host):
        def reserve(self, task: ScsiTask, n: int) -> bool:
            return False

    host = Full()
    task = ScsiTask(bytes.fromhex("28000000000000080000"), 0, N1, read=True, expected_length=4096)
    Runner(Engines()).start(task, device.execute(task), lu, host)  # type: ignore[arg-type]
    assert [r.status for r in host.results] == [Status.TASK_SET_FULL]


class InlinePool:
    """Runs every call at once, on the caller's thread (a worker that is never late)."""

    def in_flight(self) -> bool:
        return False

    def submit(self, fn: Any, arg: Any, callback: Any, timeout: float = 0.0) -> None:
        try:
            value = fn(arg)
        except Exception as e:  # noqa: BLE001 - handed on as the call's outcome
            callback(None, e)
            return
        callback(value, None)


def test_a_read_hit_that_raises_goes_to_the_workers_instead_of_failing_the_command() -> None:
    """R6: ``store.read_hit`` runs on the loop before the workers; when it raises (a cache
    bug), the read is done by the workers, not ended as an internal error."""
    store = MemoryStore(1 << 20)
    store.write(0, b"\x5a" * 4096)
    store.blocking = True  # type: ignore[misc]  # as a gfapi store: on the workers

    def read_hit(offset: int, buf: Any) -> bool:
        raise MemoryError("the cache could not copy")

    store.read_hit = read_hit  # type: ignore[attr-defined]
    lu = lu_on(store, serial="hit")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    engines = Engines()
    engines.pool = InlinePool()  # type: ignore[assignment]
    host = Host()
    task = ScsiTask(bytes.fromhex("28000000000000080000"), 0, N1, read=True, expected_length=4096)
    Runner(engines).start(task, device.execute(task), lu, host)  # type: ignore[arg-type]
    [result] = host.results
    assert result.status == Status.GOOD, result.sense
    assert bytes(result.data or b"")[:4096] == b"\x5a" * 4096


def test_a_command_on_the_workers_leaves_no_reference_cycle_behind() -> None:
    """A command that goes to its store's workers (gfapi, FUSE files: the ``_submit`` path
    every gfapi read miss and write takes) is freed when it ends, by reference counts. A
    cycle (the completion closure once named itself) left each command's task, generators and
    request to the garbage collector: ~7 objects a command, and on cold gfapi reads a tenth of
    the event loop's time went to collecting them."""
    store = MemoryStore(1 << 20)
    store.blocking = True  # type: ignore[misc]  # as a gfapi or FUSE store: on the workers
    lu = lu_on(store, serial="cycles")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    engines = Engines()
    engines.pool = InlinePool()  # type: ignore[assignment]
    runner = Runner(engines)  # type: ignore[arg-type]
    host = Host()

    def run(n: int) -> None:
        for i in range(n):
            if i % 2:
                task = ScsiTask(bytes.fromhex("28000000000000080000"), 0, N1, read=True,
                                expected_length=4096)
            else:
                data = bytes([i % 251]) * 4096
                task = ScsiTask(bytes.fromhex("2a000000000000080000"), 0, N1, data_out=data,
                                expected_length=4096, write=True)
            runner.start(task, device.execute(task), lu, host)

    run(8)  # (first-use state: the LU's runner state, lookups cached once)
    gc.collect()
    gc.disable()
    try:
        run(200)
        found = gc.collect()  # what only the collector could free: cycles
    finally:
        gc.enable()
    assert [r.status for r in host.results] == [Status.GOOD] * 208
    assert found == 0


def test_read_hit_is_looked_up_once_per_lu_and_again_when_its_store_changes() -> None:
    """R15: the runner finds a store's ``read_hit`` (the gfapi read cache) once per LU, not
    with a getattr per read; a LU given another store has it looked up on that store."""

    class Hits(MemoryStore):
        lookups = 0

        @property
        def read_hit(self) -> Any:
            self.lookups += 1

            def hit(offset: int, buf: Any) -> bool:
                self.read_into(offset, buf)
                return True

            return hit

    def read(lu: Any, host: Host, engines: Engines) -> None:
        task = ScsiTask(bytes.fromhex("28000000000000080000"), 0, N1, read=True,
                        expected_length=4096)
        Runner(engines).start(task, device.execute(task), lu, host)  # type: ignore[arg-type]

    first, second = Hits(1 << 20), Hits(1 << 20)
    for s, fill in ((first, b"\x11"), (second, b"\x22")):
        s.write(0, fill * 4096)
        s.blocking = True  # type: ignore[misc]  # as a gfapi store: a hit, or the workers
    lu = lu_on(first, serial="once")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    engines = Engines()
    engines.pool = None  # type: ignore[assignment]  # a miss would fail: every read is a hit
    host = Host()
    for _ in range(3):
        read(lu, host, engines)
    assert first.lookups == 1
    lu.store = second
    read(lu, host, engines)
    assert second.lookups == 1 and first.lookups == 1
    assert [r.status for r in host.results] == [Status.GOOD] * 4
    assert [bytes(r.data or b"")[:1] for r in host.results] == [b"\x11"] * 3 + [b"\x22"]


# -- background jobs, on the test's clock --------------------------------------------------------


def job_of(lu: Any, chunks: int, rate: float | None, ended: list[Any]) -> BackgroundJob:
    def body() -> Any:
        for i in range(chunks):
            yield io.Write(i * 512, bytes([i + 1]) * 512)
            job.advance(512)
        yield io.Flush()

    job = BackgroundJob("test", body(), total=chunks * 512, rate=rate, on_end=ended.append)
    return job


def test_a_background_job_is_paced_by_the_clock_it_is_given() -> None:
    store = MemoryStore(1 << 20)
    lu = lu_on(store, serial="bg")
    ended: list[Any] = []
    job = job_of(lu, 3, rate=1024, ended=ended)  # 512 bytes each half second
    run = JobRun(Runner(), job, lu)
    assert run.step(100.0) == 0.0  # the first write at once
    assert bytes(store.read(0, 1)) == b"\x01"
    assert run.step(100.0) == pytest.approx(0.5)  # ahead of its pace: wait half a second
    assert bytes(store.read(512, 1)) == b"\x00"
    assert run.step(100.2) == pytest.approx(0.3)
    assert run.step(100.5) == 0.0  # due: the second write
    assert bytes(store.read(512, 1)) == b"\x02"
    assert job.progress == 2 * 0x10000 // 3
    assert run.step(101.0) == 0.0  # the third write
    assert run.step(101.0) == pytest.approx(0.5)  # the flush waits for the pace too
    assert job.running
    assert run.step(101.5) is None  # the flush, and the body returned
    assert not job.running and job.error is None and ended == [job]
    assert run.finished.is_set()
    assert run.step(102.0) is None
    assert bytes(store.read(0, 1536)) == b"\x01" * 512 + b"\x02" * 512 + b"\x03" * 512


def test_a_cancelled_job_ends_at_the_next_step_with_job_cancelled() -> None:
    lu = lu_on(MemoryStore(1 << 20), serial="bg2")
    ended: list[Any] = []
    job = job_of(lu, 100, rate=1024, ended=ended)
    run = JobRun(Runner(), job, lu)
    assert run.step(0.0) == 0.0
    assert run.step(0.0) > 0  # paced
    job.cancel(timeout=0)  # the LU is closing (no thread here: does not wait)
    assert run.step(0.0) is None  # JobCancelled thrown into the body at once, pace or not
    assert isinstance(job.error, JobCancelled) and ended == [job]


def test_a_failed_store_call_ends_the_job_with_its_error() -> None:
    store = MemoryStore(1 << 20)
    lu = lu_on(store, serial="bg3")
    store.read_only = True  # type: ignore[misc]  # writes now fail EROFS
    job = job_of(lu, 2, rate=None, ended=[])
    run = JobRun(Runner(), job, lu)
    while run.step(0.0) is not None:
        pass
    assert isinstance(job.error, OSError)


# -- the structure -------------------------------------------------------------------------------


def _imports(path: pathlib.Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def test_scsi_holds_no_store_thread_or_clock_and_imports_only_the_neutral_buffers() -> None:
    for path in sorted((SRC / "scsi").glob("*.py")):
        for name in _imports(path):
            assert not name.startswith(("..backstore", "..server", "..iscsi", "..control",
                                        "..cli", "..model")), (path.name, name)
            assert name not in ("time", "asyncio", "concurrent.futures"), (path.name, name)
            # threading: only the state mutex of a device server and of a LU (task.py says so)
            if name == "threading":
                assert path.name in ("device.py", "lu.py"), path.name
        assert ".run(" not in path.read_text(), path.name


def test_iscsi_does_not_import_backstore() -> None:
    for path in sorted((SRC / "iscsi").glob("*.py")):
        assert not any(n.startswith("..backstore") for n in _imports(path)), path.name
