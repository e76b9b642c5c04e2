#!/usr/bin/env python3
"""Where a 4 KiB gfapi call's time goes, in a direct loop on one volume (issue 19).

Each case does the same random 4 KiB reads or writes on one file, layer by layer, so the
differences are what each layer adds:

- ``raw``: the minimal ctypes loop, ``glfs_pread``/``glfs_pwrite`` on a preallocated buffer;
- ``file``: the binding's ``File.pread_into``/``pwrite`` (buffer pinning);
- ``store``: ``GfapiStore.read_into``/``write`` (call counting, range checks, views);
- ``pool``: the store call through the daemon's worker pool (``server/iopool.py``) from an
  asyncio loop, one in flight (QD1) or ``--qd`` in flight with ``--threads`` workers;
- ``async``: ``glfs_pread_async``/``glfs_pwrite_async`` from the loop, completions handed
  back with ``call_soon_threadsafe`` (the alternative to the pool the issue asks about);
- ``engine``: the daemon's asynchronous path (``server/gfaio.py``: the C callback queues the
  completion, the loop takes it through an eventfd), needs the compiled build;
- ``+fdatasync``: a write followed by ``glfs_fdatasync`` (what FUA / WCE=0 costs);
- ``odirect``: the same through a second fd opened O_DIRECT (how group LUNs are opened).

Reported per case: wall microseconds per op (mean and p50, QD1) or ops/s (QD>1), and
process CPU microseconds per op (gfapi's own threads included). The machine is shared:
compare cases of one run, and prefer the CPU column.

    PYTHONPATH=src GLUSTER_ISCSI_PURE=1 python bench/gfapi_calls.py --volume VOL
    ... --cases read.raw,read.store,write.pool --qd 32 --threads 8,16,32 --n 3000

``fio --ioengine=gfapi --volume=VOL --brick=127.0.0.1 --filename=FILE --rw=randread --bs=4k
--size=SIZE --runtime=10 --time_based`` is the backend's own ceiling on the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from gluster_iscsi.backstore.gfapi import _binding as gf
from gluster_iscsi.backstore.gfapi import store as gstore
from gluster_iscsi.backstore.gfapi.store import GfapiStore
from gluster_iscsi.server.iopool import IoPool

BS = 4096
#: How the pool and async cases run their event loop (``--uvloop``: as the daemon does by
#: default when uvloop is installed).
run_loop: Callable[[Any], Any] = asyncio.run
# void (*glfs_io_cbk)(glfs_fd_t *fd, ssize_t ret, struct glfs_stat *pre, struct glfs_stat *post,
#                     void *data)   (Gluster >= 6)
IO_CBK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p)


def _async_protos() -> Any:
    lib = gf.lib()
    for name in ("glfs_pread_async", "glfs_pwrite_async"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64,
                       ctypes.c_int, IO_CBK, ctypes.c_void_p]
    return lib


def offsets(n: int, size: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    blocks = size // BS
    return [rnd.randrange(blocks) * BS for _ in range(n)]


def run_sync(name: str, op: Callable[[int], Any], offs: list[int]) -> dict[str, Any]:
    lat = []
    c0, t0 = time.process_time(), time.perf_counter()
    for off in offs:
        s = time.perf_counter_ns()
        op(off)
        lat.append(time.perf_counter_ns() - s)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(offs)
    return {"case": name, "qd": 1, "ops_s": n / wall, "mean_us": wall / n * 1e6,
            "p50_us": statistics.median(lat) / 1000, "cpu_us": cpu / n * 1e6}


Start = Callable[[int, int, Callable[[Any, BaseException | None], None]], bool]


async def drive(offs: list[int], qd: int, start: Start) -> tuple[list[int], float, float, Any]:
    """Keep ``qd`` calls in flight over ``offs`` until all are done: ``start(slot, offset,
    done)`` starts one (False: refused, which ends the run; it may run inside a completion,
    where raising would leave the run waiting, so an exception ends the run too). Returns the
    latencies (ns), wall and process CPU seconds, and the first error (None)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    it = iter(offs)
    state: dict[str, Any] = {"left": len(offs), "err": None}
    lat: list[int] = []

    def issue(slot: int) -> None:
        off = next(it, None)
        if off is None:
            return
        s = time.perf_counter_ns()

        def done(_v: Any, exc: BaseException | None) -> None:
            lat.append(time.perf_counter_ns() - s)
            if exc is not None and state["err"] is None:
                state["err"] = exc
            state["left"] -= 1
            if fut.done():
                return  # (the run already stopped: a refused call)
            if not state["left"]:
                fut.set_result(None)
            else:
                issue(slot)

        try:
            err: BaseException | None = None if start(slot, off, done) else RuntimeError(
                "the call was refused")
        except Exception as e:
            err = e
        if err is not None and not fut.done():
            state["err"] = err
            fut.set_result(None)

    c0, t0 = time.process_time(), time.perf_counter()
    for slot in range(qd):
        if fut.done():
            break  # (refused: start no more)
        issue(slot)
    await fut
    return lat, time.perf_counter() - t0, time.process_time() - c0, state["err"]


def _row(name: str, qd: int, n: int, lat: list[int], wall: float, cpu: float) -> dict[str, Any]:
    return {"case": name, "qd": qd, "ops_s": n / wall, "mean_us": statistics.mean(lat) / 1000,
            "p50_us": statistics.median(lat) / 1000, "cpu_us": cpu / n * 1e6}


def run_pool(name: str, fn: Callable[[int], Any], offs: list[int], qd: int,
             threads: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        pool = IoPool(asyncio.get_running_loop(), threads, name="bench")

        def start(_slot: int, off: int, done: Callable[[Any, BaseException | None], None]) -> bool:
            pool.submit(fn, off, done)
            return True

        try:
            lat, wall, cpu, err = await drive(offs, qd, start)
        finally:
            pool.shutdown()
        if err is not None:
            raise err
        return dict(_row(name, qd, len(offs), lat, wall, cpu), threads=threads)

    return run_loop(main())


def run_async(name: str, write: bool, fd: int, offs: list[int], qd: int) -> dict[str, Any]:
    """glfs_p{read,write}_async from the loop; each completion (on a gfapi thread) goes back
    to the loop by call_soon_threadsafe, as a store using them would do."""
    lib = _async_protos()
    call = lib.glfs_pwrite_async if write else lib.glfs_pread_async
    bufs = [ctypes.create_string_buffer(b"\xa5" * BS, BS) for _ in range(qd)]

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        it = iter(offs)
        state: dict[str, Any] = {"left": len(offs), "err": 0}
        starts: dict[int, int] = {}
        lat: list[int] = []

        def finish(slot: int, ret: int) -> None:
            lat.append(time.perf_counter_ns() - starts[slot])
            if ret != BS and not state["err"]:
                state["err"] = ret
            state["left"] -= 1
            if not state["left"]:
                fut.set_result(None)
            else:
                issue(slot)

        def cbk(_fd: Any, ret: int, _pre: Any, _post: Any, data: Any) -> None:
            loop.call_soon_threadsafe(finish, data or 0, ret)

        c_cbk = IO_CBK(cbk)

        def issue(slot: int) -> None:
            off = next(it, None)
            if off is None:
                return
            starts[slot] = time.perf_counter_ns()
            if call(fd, bufs[slot], BS, off, 0, c_cbk, slot) < 0:
                raise gf._raise("async submit", "bench")

        c0, t0 = time.process_time(), time.perf_counter()
        for slot in range(qd):
            issue(slot)
        await fut
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if state["err"]:
            raise RuntimeError(f"async call returned {state['err']}")
        n = len(offs)
        return {"case": name, "qd": qd, "ops_s": n / wall, "mean_us": statistics.mean(lat) / 1000,
                "p50_us": statistics.median(lat) / 1000, "cpu_us": cpu / n * 1e6}

    return run_loop(main())


def run_engine(name: str, write: bool, store: GfapiStore, offs: list[int], qd: int) -> dict[str, Any]:
    """The daemon's own asynchronous path (``server/gfaio.py``): libgfapi's asynchronous
    call made on the loop, its completion queued by the C callback (``_aio.c``) and taken
    through an eventfd, as a command's miss takes it."""
    from gluster_iscsi.server.gfaio import GfapiEngine

    async def main() -> dict[str, Any]:
        engine = GfapiEngine.create(asyncio.get_running_loop())
        if engine is None:
            raise RuntimeError("no asynchronous gfapi engine here (a pure build?)")
        bufs = [memoryview(bytearray(b"\xa5" * BS)) for _ in range(qd)]

        def start(slot: int, off: int, done: Callable[[Any, BaseException | None], None]) -> bool:
            return (engine.write(store, bufs[slot], off, done) if write
                    else engine.read(store, bufs[slot], off, done))

        try:
            lat, wall, cpu, err = await drive(offs, qd, start)
            if err is not None:
                # let calls still in flight come back before the engine stops reaping
                await engine.settle(5.0)
                raise err
        finally:
            engine.close()
        return _row(name, qd, len(offs), lat, wall, cpu)

    return run_loop(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volume", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--path", default="gfapi-calls.img")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--n", type=int, default=2000, help="ops per case")
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--threads", default="8,32")
    ap.add_argument("--cases", default="all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--xlator-option", action="append", default=[], metavar="XL:KEY=VALUE",
                    help="a translator option of this process's client on top of the store's "
                    "defaults, e.g. '*-io-threads:pass-through=true' (repeatable)")
    ap.add_argument("--uvloop", action="store_true",
                    help="pool and async cases on uvloop's loop (the daemon's default)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows (medians) to FILE")
    ap.add_argument("--reps", type=int, default=1,
                    help="run every case this many times, order reversed every other time; "
                    "the median of each column is shown")
    args = ap.parse_args(argv)
    size = args.size_mib << 20
    global run_loop
    if args.uvloop:
        import uvloop

        run_loop = uvloop.run
    opts = []
    for opt in args.xlator_option:
        xl, _, kv = opt.partition(":")
        key, _, value = kv.partition("=")
        opts.append((xl, key, value))
    gstore.set_client_xlator_options(opts)
    url = f"gluster://{args.host}/{args.volume}/{args.path}"
    store = GfapiStore(url, create_size=size)
    if store.created:  # written end to end: reads hit real data, not holes
        chunk = b"\x5a" * (1 << 20)
        for off in range(0, size, len(chunk)):
            store.write(off, chunk)
        store.flush()
    direct = GfapiStore(url, o_direct=True)
    lib = gf.lib()
    fd = store._fh.handle
    raw = ctypes.create_string_buffer(BS)
    rbuf = memoryview(bytearray(BS))
    wdata = b"\xa5" * BS
    wview = memoryview(bytearray(wdata))
    # (shared across a case's calls: the bench checks costs, not data)
    dbuf = memoryview(bytearray(BS * 2))  # O_DIRECT wants no particular alignment on gfapi
    fh = store._fh

    def raw_read(off: int) -> None:
        if lib.glfs_pread(fd, raw, BS, off, 0, None) != BS:
            raise gf._raise("pread", "bench")

    def raw_write(off: int) -> None:
        if lib.glfs_pwrite(fd, raw, BS, off, 0, None, None) != BS:
            raise gf._raise("pwrite", "bench")

    def store_read(off: int) -> None:
        store.read_into(off, rbuf)

    def store_write(off: int) -> None:
        store.write(off, wview)

    def store_write_fua(off: int) -> None:
        store.write(off, wview)
        store.flush()

    def direct_write(off: int) -> None:
        direct.write(off, wview)

    def direct_write_fua(off: int) -> None:
        direct.write(off, wview)
        direct.flush()

    def direct_read(off: int) -> None:
        direct.read_into(off, dbuf[:BS])

    sync: dict[str, Callable[[int], Any]] = {
        "read.raw": raw_read,
        "read.file": lambda off: fh.pread_into(rbuf, off),
        "read.store": store_read,
        "read.odirect": direct_read,
        "write.raw": raw_write,
        "write.file": lambda off: fh.pwrite(wview, off),
        "write.store": store_write,
        "write.store+fdatasync": store_write_fua,
        "write.odirect": direct_write,
        "write.odirect+fdatasync": direct_write_fua,
    }
    threads = [int(t) for t in args.threads.split(",")]
    wanted = None if args.cases == "all" else set(args.cases.split(","))
    plan: list[tuple[str, Callable[[int], dict[str, Any]]]] = []
    for name, op in sync.items():
        if wanted is None or name in wanted:
            plan.append((name, lambda s, name=name, op=op: run_sync(name, op, offsets(args.n, size, s))))
    for kind, fn in (("read", store_read), ("write", store_write)):
        if wanted is None or f"{kind}.pool" in wanted:
            for qd, t in [(1, 1)] + [(args.qd, t) for t in threads]:
                plan.append((f"{kind}.pool/{qd}/{t}", lambda s, kind=kind, fn=fn, qd=qd, t=t:
                             run_pool(f"{kind}.pool", fn, offsets(args.n, size, s), qd, t)))
        if wanted is None or f"{kind}.engine" in wanted:
            for qd in sorted({1, args.qd}):
                plan.append((f"{kind}.engine/{qd}", lambda s, kind=kind, qd=qd: run_engine(
                    f"{kind}.engine", kind == "write", store, offsets(args.n, size, s), qd)))
        if wanted is None or f"{kind}.async" in wanted:
            for qd in sorted({1, args.qd}):
                plan.append((f"{kind}.async/{qd}", lambda s, kind=kind, qd=qd: run_async(
                    f"{kind}.async", kind == "write", fd, offsets(args.n, size, s), qd)))
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in plan}
    seed = args.seed
    for rep in range(args.reps):
        for key, case in (plan if rep % 2 == 0 else plan[::-1]):
            seed += 1
            runs[key].append(case(seed))
    results = []
    for key, _ in plan:
        rs = runs[key]
        row = dict(rs[0])
        for col in ("ops_s", "mean_us", "p50_us", "cpu_us"):
            row[col] = statistics.median(r[col] for r in rs)
        results.append(row)
    print(f"# {url} {gstore.CLIENT_XLATOR_OPTIONS} uvloop={args.uvloop}, {args.n} ops a case x {args.reps}, 4 KiB random, medians; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'case':26} {'qd':>3} {'thr':>4} {'ops/s':>8} {'mean us':>8} {'p50 us':>8} "
          f"{'cpu us/op':>9}")
    for r in results:
        print(f"{r['case']:26} {r['qd']:>3} {r.get('threads', '-')!s:>4} {r['ops_s']:>8.0f} "
              f"{r['mean_us']:>8.1f} {r['p50_us']:>8.1f} {r['cpu_us']:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"url": url, "reps": args.reps, "n": args.n, "rows": results}, f, indent=1)
    direct.close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
