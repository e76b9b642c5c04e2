"""server/gfaio.py and backstore/gfapi/_aio.c: asynchronous gfapi calls completed on the loop.

libgfapi is replaced by two C-callable functions made with ctypes that have libgfapi's
signatures (``glfs_pread_async``/``glfs_pwrite_async``, GlusterFS >= 6): each call is recorded,
and the test completes it whenever and in whatever order it likes, by calling the C callback it
was given, as gfapi's event thread does (also from another thread). Everything between, the C
queue, the eventfd and the engine, is the real code. Against a real volume:
tests/integration/test_gluster.py.

The pure-Python tier of the suite has no built extensions: there the C module is compiled
from its source for these tests (gcc and the Python headers are what scripts/install sets up).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import importlib.util
import os
import random
import subprocess
import sysconfig
import threading
from collections.abc import Callable
from ctypes import c_int, c_int64, c_size_t, c_ssize_t, c_void_p
from pathlib import Path
from typing import Any

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.cache import CachedStore, CacheLedger
from gluster_iscsi.scsi import ScsiResult, ScsiTask, Status
from gluster_iscsi.server import gfaio
from gluster_iscsi.server.iopool import IoTimeout

from .test_write_behind import BS, GatedStore, Rig, data_of, good

SRC = Path(gfaio.__file__).resolve().parent.parent / "backstore" / "gfapi" / "_aio.c"

PREAD = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, c_int64, c_int, c_void_p, c_void_p,
                         use_errno=True)
PWRITE = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_int, c_int64, c_int, c_void_p, c_void_p,
                          use_errno=True)
CBK = ctypes.CFUNCTYPE(None, c_void_p, c_ssize_t, c_void_p, c_void_p, c_void_p, use_errno=True)

GLFD = 0x5EED


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, int]:
    """The process's C queue: the package's own module, or one built here from the source."""
    q = gfaio._setup_queue()
    if q is not None:
        return q
    out = tmp_path_factory.mktemp("aio") / ("_aio" + sysconfig.get_config_var("EXT_SUFFIX"))
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{include}", str(SRC), "-o", str(out),
                    "-lpthread"], check=True, capture_output=True, text=True)
    spec = importlib.util.spec_from_file_location("_aio", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    mod.setup(efd, gfaio.CAPACITY)
    return mod, efd


class FakeGfapi:
    """libgfapi's two asynchronous calls over a bytearray. A write's bytes are copied when it
    is started (as glfs_pwrite_async copies them into an iobuf) and land when completed."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.pending: list[dict[str, Any]] = []
        self.refuse = 0  # errno: the next calls fail at once, as gfapi does before winding
        self.started = 0
        self._pread = PREAD(self._on_pread)
        self._pwrite = PWRITE(self._on_pwrite)
        self.functions = {"glfs_pread_async": ctypes.cast(self._pread, c_void_p).value,
                          "glfs_pwrite_async": ctypes.cast(self._pwrite, c_void_p).value}

    def _on_pread(self, glfd: int, buf: int, count: int, offset: int, flags: int, cbk: int,
                  data: int) -> int:
        return self._record("read", glfd, buf, count, offset, cbk, data, None)

    def _on_pwrite(self, glfd: int, buf: int, count: int, offset: int, flags: int, cbk: int,
                   data: int) -> int:
        return self._record("write", glfd, buf, count, offset, cbk, data,
                            ctypes.string_at(buf, count))

    def _record(self, op: str, glfd: int, buf: int, count: int, offset: int, cbk: int,
                data: int, copy: bytes | None) -> int:
        if self.refuse:
            ctypes.set_errno(self.refuse)
            return -1
        assert glfd == GLFD
        self.started += 1
        self.pending.append({"op": op, "buf": buf, "count": count, "offset": offset,
                             "cbk": cbk, "data": data, "copy": copy})
        return 0

    def complete(self, i: int = 0, *, ret: int | None = None, err: int = 0) -> dict[str, Any]:
        """Complete pending call ``i``: ``ret`` bytes (default: all of it, up to the end of
        the data), or ``ret=-1`` with ``err``."""
        call = self.pending.pop(i)
        n = call["count"]
        offset = call["offset"]
        if ret is None:
            ret = max(0, min(n, len(self.data) - offset))
        if ret > 0:
            if call["op"] == "read":
                ctypes.memmove(call["buf"], bytes(self.data[offset:offset + ret]), ret)
            else:
                self.data[offset:offset + ret] = call["copy"][:ret]
        ctypes.set_errno(err)
        CBK(call["cbk"])(GLFD, ret, None, None, call["data"])
        return call


class FakeStore:
    """What the engine asks of a gfapi store: count asynchronous calls in and out."""

    name = "gluster://h/v/lun.img"
    read_only = False
    async_io = True

    def __init__(self) -> None:
        self.busy = 0
        self.errors: list[BackingStoreError] = []
        self.closed = False
        self.write_piece = 0  # (GfapiStore: --gfapi-write-piece) 0: no cut

    def begin_async(self, write: bool, length: int) -> int:
        if self.closed:
            raise BackingStoreError(errno.EBADF, "store is closed", self.name)
        self.busy += 1
        return GLFD

    def end_async(self, error: BackingStoreError | None) -> None:
        assert self.busy > 0
        self.busy -= 1
        if error is not None:
            self.errors.append(error)


class Calls:
    def __init__(self) -> None:
        self.results: list[tuple[Any, BaseException | None]] = []
        self.order: list[str] = []

    def callback(self, value: Any, exc: BaseException | None) -> None:
        self.results.append((value, exc))
        self.order.append("callback")

    def finish(self, ok: bool) -> None:
        self.order.append(f"finish {ok}")


async def settle(cond: Any = None, timeout: float = 5.0) -> None:
    """Let the loop take completions (its eventfd reader) until ``cond()`` or a few turns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await asyncio.sleep(0.002)
        if cond is None or cond():
            if cond is None:
                await asyncio.sleep(0.01)
            return
        assert loop.time() < deadline, "no completion arrived"


def run(main: Any, queue: tuple[Any, int], gf: FakeGfapi) -> None:
    aio, efd = queue

    async def body() -> None:
        engine = gfaio.GfapiEngine(asyncio.get_running_loop(), aio, efd, gf.functions)
        try:
            await main(engine)
        finally:
            engine.close()

    asyncio.run(body())


def test_a_read_completes_on_the_loop_with_its_bytes(queue):
    gf = FakeGfapi(1 << 20)
    gf.data[8192:12288] = os.urandom(4096)
    store, calls = FakeStore(), Calls()
    buf = memoryview(bytearray(4096))

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.read(store, buf, 8192, calls.callback, finish=calls.finish)
        assert store.busy == 1 and engine.in_flight()
        assert calls.results == []  # not before gfapi answers
        gf.complete()
        await settle(lambda: calls.results)
        assert calls.results == [(buf, None)]
        assert calls.order == ["finish True", "callback"]  # (the cache inserts before GOOD)
        assert bytes(buf) == bytes(gf.data[8192:12288])
        assert store.busy == 0 and not engine.in_flight()
        assert engine.submitted == 1

    run(main, queue, gf)


def test_a_write_lands_and_its_result_is_none(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    data = os.urandom(4096)

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.write(store, memoryview(data), 4096, calls.callback)
        gf.complete()
        await settle(lambda: calls.results)
        assert calls.results == [(None, None)]
        assert bytes(gf.data[4096:8192]) == data

    run(main, queue, gf)


def test_completions_from_another_thread_in_any_order_each_reach_their_caller(queue):
    gf = FakeGfapi(1 << 20)
    gf.data[:] = os.urandom(1 << 20)
    store = FakeStore()
    got: dict[int, tuple[Any, BaseException | None]] = {}
    bufs = [memoryview(bytearray(4096)) for _ in range(64)]

    async def main(engine: gfaio.GfapiEngine) -> None:
        for i, b in enumerate(bufs):
            assert engine.read(store, b, i * 8192, lambda v, e, i=i: got.__setitem__(i, (v, e)))
        order = list(range(64))
        random.Random(7).shuffle(order)

        def gfapi_thread() -> None:  # as gfapi's event threads would
            while gf.pending:
                gf.complete(random.randrange(len(gf.pending)))

        t = threading.Thread(target=gfapi_thread)
        t.start()
        await settle(lambda: len(got) == 64)
        t.join()
        for i, b in enumerate(bufs):
            assert got[i] == (b, None)
            assert bytes(b) == bytes(gf.data[i * 8192:i * 8192 + 4096])
        assert store.busy == 0

    run(main, queue, gf)


def test_a_short_read_is_continued_and_end_of_file_is_eio(queue):
    gf = FakeGfapi(12288)
    gf.data[:] = os.urandom(12288)
    store, calls = FakeStore(), Calls()
    buf = memoryview(bytearray(8192))
    past = memoryview(bytearray(8192))

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.read(store, buf, 0, calls.callback)
        gf.complete(ret=1000)  # a short answer: the engine asks for the rest
        await settle(lambda: gf.pending)
        assert gf.pending[0]["offset"] == 1000 and gf.pending[0]["count"] == 7192
        gf.complete()
        await settle(lambda: calls.results)
        assert calls.results == [(buf, None)] and bytes(buf) == bytes(gf.data[:8192])
        assert engine.read(store, past, 8192, calls.callback)  # 4 KiB there, then the end
        gf.complete()
        await settle(lambda: gf.pending)
        gf.complete()  # 0 bytes: end of file
        await settle(lambda: len(calls.results) == 2)
        value, exc = calls.results[1]
        assert value is None and isinstance(exc, BackingStoreError) and exc.errno == errno.EIO
        assert "end of file" in str(exc)
        assert store.busy == 0 and store.errors == [exc]  # counted as the store's failure

    run(main, queue, gf)


def test_an_error_carries_gfapis_errno_and_counts_as_a_failed_store_call(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.write(store, memoryview(b"x" * 4096), 0, calls.callback,
                            finish=calls.finish)
        gf.complete(ret=-1, err=errno.ENOTCONN)
        await settle(lambda: calls.results)
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, BackingStoreError)
        assert exc.errno == errno.ENOTCONN and exc.path == store.name
        assert calls.order == ["finish False", "callback"]
        assert store.errors == [exc] and store.busy == 0

    run(main, queue, gf)


def test_a_refused_start_leaves_nothing_behind_and_the_workers_do_it(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()

    async def main(engine: gfaio.GfapiEngine) -> None:
        gf.refuse = errno.EBADFD  # gfapi said no before winding (no callback will come)
        assert not engine.read(store, memoryview(bytearray(4096)), 0, calls.callback,
                               finish=calls.finish)
        assert store.busy == 0 and not engine.in_flight() and engine.refused == 1
        gf.refuse = 0
        store.closed = True  # the store refuses (closed): its own call says so on a worker
        assert not engine.read(store, memoryview(bytearray(4096)), 0, calls.callback)
        store.closed = False
        # what the engine never takes: read-only buffers to read into, empty or oversize
        assert not engine.read(store, memoryview(bytes(4096)), 0, calls.callback)
        assert not engine.read(store, memoryview(bytearray(0)), 0, calls.callback)
        big = memoryview(bytearray(gfaio.MAX_CALL + 512))
        assert not engine.write(store, big, 0, calls.callback)
        store.write_piece = 8192  # more pieces than the queue has room for: the workers
        engine.capacity = 3
        assert not engine.write(store, memoryview(bytes(32768)), 0, calls.callback)
        engine.capacity = gfaio.CAPACITY
        assert store.busy == 0
        await settle()
        assert calls.results == [] and calls.order == [] and gf.started == 0

    run(main, queue, gf)


def test_a_full_queue_refuses_more_calls(queue, monkeypatch):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()

    async def main(engine: gfaio.GfapiEngine) -> None:
        engine.capacity = 3
        bufs = [memoryview(bytearray(512)) for _ in range(4)]
        assert all(engine.read(store, b, 0, calls.callback) for b in bufs[:3])
        assert not engine.read(store, bufs[3], 0, calls.callback)
        while gf.pending:
            gf.complete()
        await settle(lambda: len(calls.results) == 3)
        assert engine.read(store, bufs[3], 0, calls.callback)  # room again
        gf.complete()
        await settle(lambda: len(calls.results) == 4)

    run(main, queue, gf)


def test_a_write_longer_than_a_piece_is_one_call_a_piece_all_in_flight_at_once(queue):
    # --gfapi-write-piece: the bricks get piece-sized writes (docs/notes/write-fops.md); on
    # the workers the pieces went one after another, one round trip each
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    store.write_piece = 8192
    data = os.urandom(8192 * 3 + 4096)

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.write(store, memoryview(data), 65536, calls.callback, finish=calls.finish)
        assert [(c["offset"], c["count"]) for c in gf.pending] == [
            (65536, 8192), (65536 + 8192, 8192), (65536 + 16384, 8192), (65536 + 24576, 4096)]
        assert store.busy == 1 and engine.submitted == 1  # one call of the store's
        gf.complete(3)
        gf.complete(0)
        gf.complete(1, ret=4096)  # short: its rest goes on
        await settle(lambda: len(gf.pending) == 2)
        assert calls.order == []  # not done before every piece is
        assert [(c["offset"], c["count"]) for c in gf.pending] == [
            (65536 + 8192, 8192), (65536 + 16384 + 4096, 4096)]
        gf.complete(1)
        gf.complete(0)
        await settle(lambda: calls.results)
        assert calls.results == [(None, None)] and calls.order == ["finish True", "callback"]
        assert bytes(gf.data[65536:65536 + len(data)]) == data
        assert store.busy == 0 and engine._calls == {} and not engine.in_flight()

    run(main, queue, gf)


def test_a_failed_piece_fails_the_write_once_every_piece_is_back(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    store.write_piece = 4096

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.write(store, memoryview(bytes(4 * 4096)), 0, calls.callback,
                            finish=calls.finish)
        gf.complete(1, ret=-1, err=errno.ENOTCONN)
        gf.complete(1, ret=-1, err=errno.EIO)  # (a second failure: the first is the one told)
        await settle()
        assert calls.order == [] and store.busy == 1  # two pieces still with gfapi
        gf.complete(0)
        gf.complete(0)
        await settle(lambda: calls.results)
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, BackingStoreError)
        assert exc.errno == errno.ENOTCONN
        assert calls.order == ["finish False", "callback"]
        assert store.errors == [exc] and store.busy == 0 and engine._calls == {}

    run(main, queue, gf)


def test_a_piece_gfapi_refuses_after_others_started_fails_the_write_when_they_are_back(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    store.write_piece = 4096
    refuse_from = 2

    def pwrite(*args: Any) -> int:  # gfapi refuses the third piece (no callback will come)
        if gf.started >= refuse_from:
            ctypes.set_errno(errno.ENOMEM)
            return -1
        return FakeGfapi._on_pwrite(gf, *args)

    gf._pwrite = PWRITE(pwrite)
    gf.functions["glfs_pwrite_async"] = ctypes.cast(gf._pwrite, c_void_p).value

    async def main(engine: gfaio.GfapiEngine) -> None:
        # the first piece refused: nothing under way, the workers do it
        gf.started = refuse_from
        assert not engine.write(store, memoryview(bytes(4 * 4096)), 0, calls.callback)
        assert store.busy == 0 and engine._calls == {}
        gf.started = 0
        assert engine.write(store, memoryview(bytes(4 * 4096)), 0, calls.callback,
                            finish=calls.finish)
        assert len(gf.pending) == 2 and store.busy == 1
        gf.complete()
        gf.complete()
        await settle(lambda: calls.results)
        value, exc = calls.results[0]
        assert isinstance(exc, BackingStoreError) and exc.errno == errno.ENOMEM
        assert calls.order == ["finish False", "callback"] and store.busy == 0

    run(main, queue, gf)


def test_a_write_in_pieces_past_its_timeout_holds_its_buffer_until_every_piece_is_back(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    store.write_piece = 4096
    late: list[str] = []

    def callback(value: Any, exc: BaseException | None) -> None:
        calls.callback(value, exc)
        assert engine_box[0].when_returned(lambda: late.append("returned"))

    engine_box: list[gfaio.GfapiEngine] = []

    async def main(engine: gfaio.GfapiEngine) -> None:
        engine_box.append(engine)
        assert engine.write(store, memoryview(bytes(3 * 4096)), 0, callback, timeout=0.05,
                            finish=calls.finish)
        gf.complete(0)
        await settle(lambda: calls.results, timeout=2)
        assert isinstance(calls.results[0][1], IoTimeout)
        assert len(calls.results) == 1  # told once, not once a piece
        assert store.busy == 1 and len(engine._calls) == 2 and late == []
        gf.complete(0)
        await settle()
        assert late == [] and store.busy == 1  # one piece still with gfapi
        gf.complete(0)
        await settle(lambda: late)
        assert late == ["returned"] and store.busy == 0 and engine._calls == {}
        assert calls.order == ["callback", "finish True"]

    run(main, queue, gf)


def test_a_call_past_its_timeout_answers_iotimeout_and_holds_its_buffer_until_gfapi_is_done(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    buf = memoryview(bytearray(4096))

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.read(store, buf, 0, calls.callback, timeout=0.05, finish=calls.finish)
        await settle(lambda: calls.results, timeout=2)
        value, exc = calls.results[0]
        assert value is None and isinstance(exc, IoTimeout)
        assert not engine.in_flight()  # (it no longer keeps the poller or others waiting)
        assert store.busy == 1  # the store may not close its fd under gfapi
        assert len(engine._calls) == 1  # the buffer is still referenced
        gf.complete()  # late
        await settle(lambda: store.busy == 0)
        assert calls.results == [(None, exc)]  # nothing more for the caller
        assert calls.order == ["callback", "finish True"]  # the lock is released only now
        assert engine._calls == {}
        assert await engine.settle(0.1)

    run(main, queue, gf)


def test_settle_waits_for_calls_that_timed_out(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.read(store, memoryview(bytearray(512)), 0, calls.callback, timeout=0.01)
        await settle(lambda: calls.results, timeout=2)
        assert not await engine.settle(0.05)  # still with gfapi
        asyncio.get_running_loop().call_later(0.05, gf.complete)
        assert await engine.settle(2.0)
        assert store.busy == 0

    run(main, queue, gf)


def test_a_closed_engine_ignores_late_completions_and_a_second_engine_is_refused(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()
    aio, efd = queue

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = gfaio.GfapiEngine(loop, aio, efd, gf.functions)
        gfaio._active = first
        try:
            assert gfaio.GfapiEngine.create(loop) is None  # one per process
        finally:
            assert first.read(store, memoryview(bytearray(512)), 0, calls.callback)
            first.close()
        assert gfaio._active is None
        second = gfaio.GfapiEngine(loop, aio, efd, gf.functions)
        try:
            # the second engine's call is started before the first engine's late completion
            # arrives: that completion must not be taken for it (tokens are per process)
            assert second.read(store, memoryview(bytearray(512)), 0, calls.callback)
            gf.complete(0)  # the first engine's call: the second takes it off the queue
            await settle()
            assert calls.results == []
            gf.complete(0)
            await settle(lambda: calls.results)
            assert len(calls.results) == 1
        finally:
            second.close()

    asyncio.run(main())


def test_the_poller_sees_a_completion_waiting(queue):
    gf = FakeGfapi(1 << 20)
    store, calls = FakeStore(), Calls()

    async def main(engine: gfaio.GfapiEngine) -> None:
        assert engine.read(store, memoryview(bytearray(512)), 0, calls.callback)
        assert not engine.has_done()
        gf.complete()
        assert engine.has_done()  # before the loop has taken it: ends a poller's spin
        await settle(lambda: calls.results)
        assert not engine.has_done()

    run(main, queue, gf)


# -- through the read cache: a miss filled and a write seen, as the synchronous path ----------


class CacheInner(FakeStore):
    """A FakeStore that is also a byte store over the fake's bytes (for CachedStore)."""

    blocking = True

    def __init__(self, gf: FakeGfapi) -> None:
        super().__init__()
        self.gf = gf

    @property
    def size(self) -> int:
        return len(self.gf.data)

    def read_into(self, offset: int, buf: memoryview) -> None:
        buf[:] = self.gf.data[offset:offset + len(buf)]

    def write(self, offset: int, data: Any) -> None:
        self.gf.data[offset:offset + len(data)] = data

    def flush(self) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_a_cache_miss_read_asynchronously_is_inserted_and_a_write_updates_the_cache(queue):
    gf = FakeGfapi(1 << 20)
    gf.data[:] = os.urandom(1 << 20)
    inner = CacheInner(gf)
    cache = CachedStore(inner, 1 << 20, ledger_=CacheLedger(1 << 30))  # type: ignore[arg-type]
    calls = Calls()

    async def main(engine: gfaio.GfapiEngine) -> None:
        dst = memoryview(bytearray(1000))  # unaligned: the fill reads whole units
        assert not cache.read_hit(5000, dst)
        fill = cache.begin_fill(5000, dst)
        assert fill is not None and fill.lo == 4096 and fill.hi == 8192
        assert engine.read(inner, fill.view, fill.lo, calls.callback, result=dst,
                           finish=lambda ok: cache.end_fill(fill, ok))
        gf.complete()
        await settle(lambda: calls.results)
        assert calls.results == [(dst, None)] and bytes(dst) == bytes(gf.data[5000:6000])
        again = memoryview(bytearray(1000))
        assert cache.read_hit(5000, again) and bytes(again) == bytes(dst)  # inserted
        new = os.urandom(4096)
        begun, when = cache.begin_write()
        view = memoryview(new)
        assert engine.write(inner, view, 4096, calls.callback,
                            finish=lambda ok: cache.end_write(4096, view, begun, when, ok))
        gf.complete()
        await settle(lambda: len(calls.results) == 2)
        assert cache.read_hit(5000, again) and bytes(again) == new[904:1904]  # not stale
        # a failed write empties the cache, as a failed synchronous one does
        begun, when = cache.begin_write()
        assert engine.write(inner, view, 0, calls.callback,
                            finish=lambda ok: cache.end_write(0, view, begun, when, ok))
        gf.complete(ret=-1, err=errno.EIO)
        await settle(lambda: len(calls.results) == 3)
        assert not cache.read_hit(5000, again) and cache.bytes == 0

    try:
        run(main, queue, gf)
    finally:
        cache.close()


def test_a_fill_that_was_never_started_is_cancelled(queue):
    gf = FakeGfapi(1 << 16)
    inner = CacheInner(gf)
    cache = CachedStore(inner, 1 << 20, ledger_=CacheLedger(1 << 30))  # type: ignore[arg-type]
    try:
        fill = cache.begin_fill(0, memoryview(bytearray(4096)))
        assert fill is not None and cache._filling == 1
        cache.cancel_fill(fill)
        assert cache._filling == 0 and cache.bytes == 0
    finally:
        cache.close()


# -- the runner's model test, with reads and writes as asynchronous calls ----------------------


class AsyncGatedStore(GatedStore):
    """test_write_behind's gated store that also takes asynchronous calls (its bytes are the
    fake gfapi's: ``FakeGfapi.data`` is this store's memory)."""

    async_io = True

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.busy = 0

    def begin_async(self, write: bool, length: int) -> int:
        self.busy += 1
        return GLFD

    def end_async(self, error: BackingStoreError | None) -> None:
        self.busy -= 1


@pytest.mark.parametrize("window", [0, 8 << 10], ids=["no-write-behind", "write-behind"])
@pytest.mark.parametrize("cached", [False, True], ids=["plain", "read-cache"])
@pytest.mark.parametrize("seed", range(6))
def test_reads_see_every_acknowledged_write_with_asynchronous_calls(queue, seed: int,
                                                                    cached: bool,
                                                                    window: int) -> None:
    """test_write_behind's model (writes with and without FUA, reads, UNMAP, WRITE SAME,
    SYNCHRONIZE CACHE), with a gfapi-like store whose reads and writes (also write-behind's
    background writes) are asynchronous calls completed in random order among the workers'
    calls: every read returns the bytes of the writes acknowledged before it, and after a
    flush and at the end the store holds exactly them."""
    rng = random.Random(seed)
    size = 32 << 10
    blocks = size // BS
    aio, efd = queue

    async def main() -> None:
        inner = AsyncGatedStore(size)
        gf = FakeGfapi(0)
        gf.data = inner._view  # type: ignore[assignment]
        rig = Rig(size, cached=cached, window=window, writes=6, inner=inner)
        engine = gfaio.GfapiEngine(asyncio.get_running_loop(), aio, efd, gf.functions)
        rig.engines.gfaio = engine  # type: ignore[attr-defined]
        # as the daemon's: write-behind writes start on the loop's next turn, after their GOOD
        loop = asyncio.get_running_loop()

        def defer(callback: Callable[[], None]) -> None:
            loop.call_soon(callback)

        rig.engines.defer = defer  # type: ignore[method-assign]

        async def turn() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        async def result(task: ScsiTask) -> ScsiResult:
            while task not in rig.host.results:
                await turn()
                if task in rig.host.results:
                    break
                choices = len(rig.pool.queue) + len(gf.pending)
                assert choices, "the command waits for nothing that can finish"
                i = rng.randrange(choices)
                if i < len(rig.pool.queue):
                    rig.pool.run(i)
                else:
                    gf.complete(i - len(rig.pool.queue))
            return rig.host.results.pop(task)

        ref = bytearray(size)
        try:
            for step in range(300):
                op = rng.random()
                lba = rng.randrange(blocks)
                n = rng.randint(1, min(16, blocks - lba))
                off, length = lba * BS, n * BS
                if op < 0.45:
                    data = rng.randbytes(length)
                    good(await result(rig.write(lba, data, fua=rng.random() < 0.1)))
                    ref[off:off + length] = data
                elif op < 0.75:
                    got = data_of(await result(rig.read(lba, n)), length)
                    assert got == bytes(ref[off:off + length]), f"step {step}: read {lba}+{n}"
                elif op < 0.8:
                    good(await result(rig.unmap(lba, n)))
                    ref[off:off + length] = bytes(length)
                elif op < 0.85:
                    block = bytes(BS) if rng.random() < 0.5 else rng.randbytes(BS)
                    good(await result(rig.write_same(lba, n, block)))
                    ref[off:off + length] = block * n
                elif op < 0.9:
                    good(await result(rig.sync()))
                    assert bytes(inner._view) == bytes(ref), f"step {step}: flushed"
                for _ in range(rng.randrange(3)):  # calls finish at random moments
                    choices = len(rig.pool.queue) + len(gf.pending)
                    if choices:
                        i = rng.randrange(choices)
                        if i < len(rig.pool.queue):
                            rig.pool.run(i)
                        else:
                            gf.complete(i - len(rig.pool.queue))
                        await turn()
            await turn()  # (write-behind writes start on the loop's next turn)
            while rig.pool.queue or gf.pending:
                if gf.pending:
                    gf.complete(rng.randrange(len(gf.pending)))
                else:
                    rig.pool.run(rng.randrange(len(rig.pool.queue)))
                await turn()
            await turn()
            assert bytes(inner._view) == bytes(ref)
            assert engine.submitted > 20  # the asynchronous path did reads and writes
            assert inner.busy == 0 and engine._calls == {}
            st = rig.state
            assert (st.wb_count, st.wb_bytes, st.wb_ranges, st.wb_parked) == (0, 0, [], [])
            if window:
                assert st.stats.wb_writes > 20
        finally:
            engine.close()

    asyncio.run(main())


def test_a_timed_out_asynchronous_write_holds_its_blocks_until_gfapi_returned_it(queue):
    """A lone LU's write past the I/O timeout fails its command, but gfapi has it (every
    asynchronous call is under way): until it returns, its blocks are held (a read of them
    fails as a timeout does, and the initiator retries), so it cannot land after, and over,
    what the initiator writes there next."""
    aio, efd = queue

    async def main() -> None:
        inner = AsyncGatedStore(32 << 10)
        gf = FakeGfapi(0)
        gf.data = inner._view  # type: ignore[assignment]
        rig = Rig(32 << 10, window=0, inner=inner)  # (no write-behind: the ordinary write)
        engine = gfaio.GfapiEngine(asyncio.get_running_loop(), aio, efd, gf.functions)
        rig.engines.gfaio = engine  # type: ignore[attr-defined]
        rig.engines.io_timeout = 0.02
        try:
            task = rig.write(8, b"\x01" * BS)
            assert len(gf.pending) == 1
            await settle(lambda: task in rig.host.results, timeout=2)
            r = rig.host.results.pop(task)
            assert r.status != Status.GOOD  # timed out
            assert rig.state.wb_late == [(8 * BS, 9 * BS)]
            held = rig.read(8, 1)
            assert held in rig.host.results and rig.host.results.pop(held).status != Status.GOOD
            gf.complete()  # gfapi returns it, late
            await settle(lambda: not rig.state.wb_late)
            back = rig.read(8, 1)
            await settle(lambda: back in rig.host.results or gf.pending)
            if gf.pending:
                gf.complete()
            await settle(lambda: back in rig.host.results)
            assert data_of(rig.host.results.pop(back), BS) == b"\x01" * BS
        finally:
            engine.close()

    asyncio.run(main())
