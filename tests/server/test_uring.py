"""server/uring.py on real files: the promises of a store's read_into/write, kept through io_uring.

A FIFO stands in for a hung volume: a read from it waits until something is written, the way a
read of a FUSE file waits for servers that are gone.
"""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.file import FileStore
from gluster_iscsi.server.iopool import IoTimeout
from gluster_iscsi.server.uring import Ring


def lend(fd: int):
    """A store's ``with_fd`` for a plain descriptor."""
    return lambda use: use(fd)


def make_ring() -> Ring:
    ring = Ring.create(asyncio.get_running_loop(), entries=8)
    if ring is None:
        if os.environ.get("CI"):
            pytest.fail("io_uring is unavailable on a machine of the kind CI runs on")
        pytest.skip("io_uring is unavailable on this machine (the server then uses worker threads)")
    return ring


class Calls:
    """Callbacks that record what they were given, and let a test wait for them."""

    def __init__(self) -> None:
        self.results: list[tuple[object, BaseException | None]] = []
        self.finished = 0
        self._event = asyncio.Event()

    def callback(self, value: object, exc: BaseException | None) -> None:
        self.results.append((value, exc))
        self._event.set()

    def finish(self) -> None:
        self.finished += 1

    async def wait(self, n: int = 1, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.results) < n:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(until(), timeout)


def with_ring(main, *fds: int) -> None:
    """Run ``main(ring, calls)`` on a fresh loop; close the ring and ``fds`` after."""
    async def run() -> None:
        ring = make_ring()
        try:
            await main(ring, Calls())
        finally:
            ring.close()

    try:
        asyncio.run(run())
    finally:
        for fd in fds:
            os.close(fd)


def test_writes_and_reads_land_at_their_offsets(tmp_path):
    path = tmp_path / "lun.img"
    original = os.urandom(1 << 20)
    path.write_bytes(original)
    fd = os.open(path, os.O_RDWR)

    async def main(ring: Ring, calls: Calls) -> None:
        payload = bytearray(os.urandom(64 << 10))
        assert ring.write(lend(fd), memoryview(payload), 300 << 10, calls.callback, finish=calls.finish)
        await calls.wait()
        assert calls.results == [(None, None)] and calls.finished == 1
        buf = memoryview(bytearray(128 << 10))
        assert ring.read(lend(fd), buf, 280 << 10, calls.callback)
        await calls.wait(2)
        value, exc = calls.results[1]
        assert exc is None and value is buf
        expected = original[280 << 10:300 << 10] + payload + original[364 << 10:408 << 10]
        assert bytes(buf) == expected
        assert os.pread(fd, len(payload), 300 << 10) == payload
        assert not ring.in_flight() and ring.submitted == 2

    with_ring(main, fd)


def test_a_read_past_the_end_of_the_file_continues_then_fails_with_eio(tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(b"x" * 8192)
    fd = os.open(path, os.O_RDONLY)

    async def main(ring: Ring, calls: Calls) -> None:
        assert ring.read(lend(fd), memoryview(bytearray(16384)), 0, calls.callback, name="short.img")
        await calls.wait()
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, BackingStoreError)
        assert exc.errno == errno.EIO and "8192 of 16384" in str(exc) and "end of file" in str(exc)
        assert exc.path == "short.img"

    with_ring(main, fd)


def test_an_error_from_the_kernel_carries_its_errno(tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDONLY)

    async def main(ring: Ring, calls: Calls) -> None:
        assert ring.write(lend(fd), memoryview(bytearray(4096)), 0, calls.callback, finish=calls.finish)
        await calls.wait()
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, BackingStoreError) and exc.errno == errno.EBADF
        assert calls.finished == 1

    with_ring(main, fd)


def test_read_only_memory_and_empty_transfers_are_refused_for_the_other_path(tmp_path):
    path = tmp_path / "f.img"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR)

    async def main(ring: Ring, calls: Calls) -> None:
        assert not ring.write(lend(fd), memoryview(bytes(4096)), 0, calls.callback)
        assert not ring.read(lend(fd), memoryview(bytearray(0)), 0, calls.callback)
        assert ring.submitted == 0 and not ring.in_flight()
        ring.close()
        assert not ring.read(lend(fd), memoryview(bytearray(512)), 0, calls.callback)  # closed
        assert calls.results == []

    with_ring(main, fd)


def fifo(tmp_path):
    path = tmp_path / "hung"
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY)
    return r, w


def test_a_call_that_hangs_times_out_and_its_late_completion_is_dropped(tmp_path):
    r, w = fifo(tmp_path)

    async def main(ring: Ring, calls: Calls) -> None:
        buf = memoryview(bytearray(4))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert ring.read(lend(r), buf, 0, calls.callback, timeout=0.2, finish=calls.finish)
        await calls.wait()
        assert loop.time() - t0 >= 0.19
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, IoTimeout) and "0.2 s" in str(exc)
        # Nobody waits for it any more (the ring is free for other LUNs), but the kernel still
        # has the buffer: finish() has not run.
        assert not ring.in_flight() and calls.finished == 0
        os.write(w, b"late")
        for _ in range(200):
            if calls.finished:
                break
            await asyncio.sleep(0.01)
        assert calls.finished == 1
        assert len(calls.results) == 1  # answered once, with the timeout
        assert bytes(buf) == b"late"

    with_ring(main, r, w)


def test_a_timed_out_call_tells_whoever_asked_once_the_kernel_is_done_with_it(tmp_path):
    """A caller that hears IoTimeout may ask to hear when the call returned (the runner holds
    a timed-out write's blocks until then): once, after the late completion; a call of the
    kernel's is always under way. Asked outside a timeout's callback, there is nothing."""
    r, w = fifo(tmp_path)

    async def main(ring: Ring, calls: Calls) -> None:
        returned: list[str] = []
        asked: list[bool] = []

        def callback(value: object, exc: BaseException | None) -> None:
            asked.append(ring.when_returned(lambda: returned.append("late")))
            calls.callback(value, exc)

        assert not ring.when_returned(lambda: returned.append("never"))
        buf = memoryview(bytearray(4))
        assert ring.read(lend(r), buf, 0, callback, timeout=0.2, finish=calls.finish)
        await calls.wait()
        assert isinstance(calls.results[0][1], IoTimeout) and asked == [True]
        assert returned == []
        os.write(w, b"late")
        for _ in range(500):
            if returned:
                break
            await asyncio.sleep(0.01)
        assert returned == ["late"] and calls.finished == 1 and len(calls.results) == 1

    with_ring(main, r, w)


def test_calls_beyond_capacity_are_refused_and_the_others_complete(tmp_path):
    r, w = fifo(tmp_path)

    async def main(ring: Ring, calls: Calls) -> None:
        bufs = [memoryview(bytearray(1)) for _ in range(ring.capacity + 1)]
        taken = [ring.read(lend(r), b, 0, calls.callback) for b in bufs]
        assert taken == [True] * ring.capacity + [False]
        assert ring.refused == 1 and ring.in_flight() and not ring.has_done()
        os.write(w, bytes(range(ring.capacity)))
        await calls.wait(ring.capacity)
        assert all(exc is None for _, exc in calls.results)
        assert sorted(b[0] for b in bufs[:-1]) == list(range(ring.capacity))
        assert not ring.in_flight()

    with_ring(main, r, w)


def test_a_file_store_lends_its_descriptor_only_on_fuse_only_while_open(tmp_path):
    path = tmp_path / "s.img"
    store = FileStore(path, create_size=1 << 20)
    seen: list[int] = []
    # A local file system: io_uring would try it inline and might wait there, so not lent.
    if store.fs_type != "fuse":
        assert not store.lends_fd and store.with_fd(lambda fd: seen.append(fd)) is None
    store.lends_fd = True  # as on a FUSE mount
    assert store.with_fd(lambda fd: seen.append(fd) or "started") == "started"
    assert seen and seen[0] >= 0
    store.close()
    assert store.with_fd(lambda fd: seen.append(fd)) is None and len(seen) == 1
    try:
        direct = FileStore(path, o_direct=True)
    except BackingStoreError as e:
        if e.errno != errno.EINVAL:
            raise
        return  # this file system has no O_DIRECT: nothing more to check
    assert direct.with_fd(lambda fd: seen.append(fd)) is None and len(seen) == 1
    direct.close()


def test_the_rest_of_a_short_transfer_is_submitted_only_while_the_store_still_lends(tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(b"x" * 8192)
    fd = os.open(path, os.O_RDONLY)
    lent: list[int] = []

    def closing_store(use):  # lends once, then is closed (LUN deleted) before the rest
        lent.append(fd)
        return use(fd) if len(lent) == 1 else None

    async def main(ring: Ring, calls: Calls) -> None:
        assert ring.read(closing_store, memoryview(bytearray(16384)), 0, calls.callback)
        await calls.wait()
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, BackingStoreError) and exc.errno == errno.EBADF
        assert len(lent) == 2 and not ring.in_flight()

    with_ring(main, fd)


def test_a_store_that_lends_nothing_is_refused_without_a_submission(tmp_path):
    buf = memoryview(bytearray(512))

    async def main(ring: Ring, calls: Calls) -> None:
        assert not ring.read(lambda use: None, buf, 0, calls.callback)
        assert ring.submitted == 0 and ring.refused == 1 and calls.results == []

    with_ring(main)
