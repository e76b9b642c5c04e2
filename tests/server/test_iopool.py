"""The I/O pool: results come back on the loop, workers start on demand and leave when idle."""

from __future__ import annotations

import asyncio
import threading
import time

from gluster_iscsi.server.iopool import IoPool


def test_calls_run_on_workers_and_complete_on_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        pool = IoPool(loop, 4, idle=0.2)
        main_thread = threading.get_ident()
        results: list = []
        done = asyncio.Event()

        def cb(value, exc):
            assert threading.get_ident() == main_thread
            results.append((value, exc))
            if len(results) == 50:
                done.set()

        for i in range(49):
            pool.submit(lambda x: (time.sleep(0.001), x * 2)[1], i, cb)
        pool.submit(lambda _: 1 / 0, 0, cb)
        await asyncio.wait_for(done.wait(), 10)
        assert sorted(v for v, e in results if e is None) == [i * 2 for i in range(49)]
        assert sum(isinstance(e, ZeroDivisionError) for _, e in results) == 1
        assert 1 <= pool.threads <= 4
        await asyncio.sleep(0.6)
        assert pool.threads == 0  # idle workers left
        # and come back for new work
        fut = loop.create_future()
        pool.submit(lambda x: x + 1, 41, lambda v, e: fut.set_result(v))
        assert await asyncio.wait_for(fut, 5) == 42
        pool.shutdown()

    asyncio.run(main())


def test_a_burst_gets_parallel_workers():
    async def main():
        pool = IoPool(asyncio.get_running_loop(), 8, idle=5)
        barrier = threading.Barrier(8, timeout=5)
        done = asyncio.Event()
        n = [0]

        def cb(v, e):
            assert e is None
            n[0] += 1
            if n[0] == 8:
                done.set()

        for _ in range(8):  # all eight must run at once to pass the barrier
            pool.submit(lambda _: barrier.wait(), None, cb)
        await asyncio.wait_for(done.wait(), 10)
        pool.shutdown()

    asyncio.run(main())


def test_a_call_past_its_timeout_gets_io_timeout_once_and_its_late_result_is_dropped():
    from gluster_iscsi.server.iopool import IoTimeout

    async def main():
        loop = asyncio.get_running_loop()
        pool = IoPool(loop, 4, idle=5)
        release = threading.Event()
        calls: list = []
        t0 = loop.time()

        def cb(value, exc):
            calls.append((value, type(exc), loop.time() - t0))

        pool.submit(lambda _: release.wait(5) and "late", None, cb, 0.2)  # hangs
        pool.submit(lambda x: x, "quick", cb, 0.2)  # answers at once
        await asyncio.sleep(0.1)
        assert calls == [("quick", type(None), calls[0][2])]
        await asyncio.sleep(0.3)
        assert len(calls) == 2 and calls[1][:2] == (None, IoTimeout)
        assert 0.18 <= calls[1][2] < 0.35
        release.set()  # the hung call returns now: its result must not reach cb again
        await asyncio.sleep(0.2)
        assert len(calls) == 2
        pool.shutdown()

    asyncio.run(main())


def test_timeouts_of_different_lengths_each_expire_on_time():
    from gluster_iscsi.server.iopool import IoTimeout

    async def main():
        loop = asyncio.get_running_loop()
        pool = IoPool(loop, 4, idle=5)
        release = threading.Event()
        when: dict = {}
        t0 = loop.time()

        def cb_for(name):
            def cb(value, exc):
                assert isinstance(exc, IoTimeout)
                when[name] = loop.time() - t0
            return cb

        pool.submit(lambda _: release.wait(5), None, cb_for("long"), 0.6)
        pool.submit(lambda _: release.wait(5), None, cb_for("short"), 0.15)  # later, yet due first
        await asyncio.sleep(0.35)
        assert set(when) == {"short"} and when["short"] < 0.3
        await asyncio.sleep(0.45)
        assert set(when) == {"short", "long"} and 0.55 <= when["long"] < 0.75
        release.set()
        pool.shutdown()

    asyncio.run(main())


def test_a_store_may_ask_for_its_own_number_of_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``io_threads`` on a store (GfapiStore's hint, issue 19) sizes that store's pool; a
    store without one gets the daemon's; each store keeps its own pool."""
    import asyncio

    from gluster_iscsi.server.daemon import Daemon

    class Wide:
        io_threads = 3

    class Plain:
        pass

    async def main() -> tuple[int, int, int, bool]:
        d = Daemon(tmp_path, io_threads=5)
        wide, plain = Wide(), Plain()
        a, b = d.pool_for(wide), d.pool_for(plain)
        return a.max_threads, b.max_threads, d.pool_for(wide).max_threads, a is d.pool_for(wide)

    assert asyncio.run(main()) == (3, 5, 3, True)


def test_a_call_that_timed_out_queued_never_runs_and_one_under_way_says_when_it_returned():
    """A timed-out call still queued is never issued (a write would land over newer data);
    the callback of one under way may ask to hear when it returned (``when_returned``)."""
    from gluster_iscsi.server.iopool import IoTimeout

    async def main():
        loop = asyncio.get_running_loop()
        pool = IoPool(loop, 1, idle=5)
        release, entered = threading.Event(), threading.Event()
        ran: list = []
        asked: dict = {}
        returned: list = []

        def hang(name):
            ran.append(name)
            entered.set()
            release.wait(30)

        def callback(name):
            def cb(value, exc):
                assert isinstance(exc, IoTimeout)
                asked[name] = pool.when_returned(lambda: returned.append(name))
            return cb

        pool.submit(hang, "under way", callback("under way"), 3600)
        assert await loop.run_in_executor(None, entered.wait, 30)
        pool.submit(ran.append, "queued", callback("queued"), 3600)
        pool._expire(loop.time() + 7200)  # the timeout passes for both
        assert asked == {"under way": True, "queued": False}
        assert not pool.when_returned(lambda: returned.append("outside"))
        release.set()
        done = loop.create_future()
        pool.submit(ran.append, "after", lambda v, e: done.set_result(e))
        assert await asyncio.wait_for(done, 10) is None
        while not returned:
            await asyncio.sleep(0.005)
        assert returned == ["under way"]
        assert ran == ["under way", "after"]  # never "queued"
        pool.shutdown()

    asyncio.run(main())
