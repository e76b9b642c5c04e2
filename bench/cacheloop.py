#!/usr/bin/env python3
"""Direct-loop timing of the gfapi read cache (backstore/cache.py), no iSCSI, no daemon.

Each mode prints one JSON line: wall and CPU (process_time, all threads) per op, hits and
misses, and what the store was asked to read. Run it once per source tree (PYTHONPATH) and
alternate the trees in one shell loop, so both see the same load (A B A B).

  cold   4K random reads over a file larger than the cache (QD1): misses
  hot    a hot set written through the cache, then 4K random reads inside it: hits
  hit    as hot, through ``read_hit`` (what the command runner calls on the event loop)
  write  4K writes (random, aligned) with the cache against the bare store (--cache 0)

``--store memory`` measures the cache's own CPU (the store is a bytearray); ``--store
gluster://HOST/VOL/file`` goes through the gfapi store (the file is made and written first).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time


def open_inner(spec: str, size: int):
    if spec == "memory":
        from gluster_iscsi.backstore.memory import MemoryStore

        return MemoryStore(size)
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    return GfapiStore(spec, create_size=size, log_file="/dev/null")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["cold", "hot", "hit", "write"])
    ap.add_argument("--store", default="memory")
    ap.add_argument("--size", type=int, default=256 << 20)
    ap.add_argument("--cache", type=int, default=32 << 20, help="cache bytes (0: no cache)")
    ap.add_argument("--hot", type=int, default=16 << 20)
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--bs", type=int, default=4096, help="bytes per op")
    ap.add_argument("--label", default="")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--idle", type=float, default=0.0,
                    help="hot: sleep this many seconds after writing the hot set")
    ap.add_argument("--age", type=float, default=0.0,
                    help="hot: read the hot set at random this many seconds before measuring")
    ap.add_argument("--ttl", type=float, default=None,
                    help="as with upcalls: trust regions this long (each hit checks it)")
    args = ap.parse_args()
    from gluster_iscsi.backstore.cache import CachedStore, CacheLedger

    inner = open_inner(args.store, args.size)
    if not args.no_prefill and args.store != "memory":
        block = bytes(range(256)) * 4096
        for off in range(0, args.size, len(block)):
            inner.write(off, block)
    store = CachedStore(inner, args.cache, ledger_=CacheLedger(1 << 34)) if args.cache else inner
    if args.ttl is not None and args.cache:
        store.ttl = args.ttl  # (the hot set's writes below touch its regions)
    rnd = random.Random(1)
    bs = args.bs
    buf = memoryview(bytearray(bs))
    data = bytes(range(256)) * (bs // 256)
    if args.mode in ("hot", "hit"):
        # the hot set written through the cache, as the benchmark's prefill does
        for off in range(0, args.hot, 1 << 20):
            store.write(off, bytes(range(256)) * 4096)
    span = (args.hot if args.mode in ("hot", "hit") else args.size) // bs
    offsets = [rnd.randrange(span) * bs for _ in range(args.ops)]
    time.sleep(args.idle)  # the LUN idle (nothing read or written) before measuring
    deadline = time.monotonic() + args.age
    while time.monotonic() < deadline:  # the hot set in use for a while (past the ttl)
        store.read_into(rnd.randrange(span) * bs, buf)
        time.sleep(0.001)
    if args.age and args.cache:
        store.hits = store.misses = 0
    lat: list[float] = []
    c0, t0 = time.process_time(), time.perf_counter()
    if args.mode == "write":
        for off in offsets:
            store.write(off, data)
    elif args.mode == "hit":
        pc = time.perf_counter
        read_hit = store.read_hit
        for off in offsets:
            a = pc()
            if not read_hit(off, buf):
                raise SystemExit(f"a miss at {off}: not a hot set")
            lat.append(pc() - a)
    else:
        pc = time.perf_counter
        for off in offsets:
            a = pc()
            store.read_into(off, buf)
            lat.append(pc() - a)
    c1, t1 = time.process_time(), time.perf_counter()
    out = {
        "label": args.label, "mode": args.mode, "store": args.store.split("/")[0],
        "cache": args.cache, "ops": args.ops,
        "wall_us": round((t1 - t0) / args.ops * 1e6, 2),
        "cpu_us": round((c1 - c0) / args.ops * 1e6, 2),
        "hits": getattr(store, "hits", None), "misses": getattr(store, "misses", None),
        "p50_us": round(sorted(lat)[len(lat) // 2] * 1e6, 1) if lat else None,
    }
    print(json.dumps(out))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
