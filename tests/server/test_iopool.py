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
