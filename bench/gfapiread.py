#!/usr/bin/env python3
"""4 KiB against 64 KiB random reads at the gfapi store, interleaved op by op in one process
(so both see the same load): what a read-cache miss costs when it fills a unit or a chunk.

  PYTHONPATH=src bench/gfapiread.py gluster://127.0.0.1/VOL/file --size 256MiB --ops 2000
"""

from __future__ import annotations

import argparse
import json
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--size", type=int, default=256 << 20)
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args()
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    store = GfapiStore(args.url, create_size=args.size, log_file="/dev/null")
    rnd = random.Random(2)
    sizes = (4096, 65536)
    bufs = {n: memoryview(bytearray(n)) for n in sizes}
    lat: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(args.ops):
        for n in sizes:
            off = rnd.randrange(args.size // 65536) * 65536 + (rnd.randrange(16) * 4096 if n == 4096 else 0)
            t = time.perf_counter()
            store.read_into(off, bufs[n])
            lat[n].append(time.perf_counter() - t)
    out = {}
    for n in sizes:
        v = sorted(lat[n])
        out[n] = {"p50_us": round(v[len(v) // 2] * 1e6, 1), "mean_us": round(sum(v) / len(v) * 1e6, 1)}
    print(json.dumps(out))
    store.close()


if __name__ == "__main__":
    main()
