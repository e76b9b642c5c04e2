#!/usr/bin/env python3
"""CPU per command of our own code path, without sockets: the real connection driver, iSCSI core,
SCSI layer and a tmpfs file store, fed pre-built request bytes as a loopback socket would hand
them over, with a transport that only counts what is sent.

It is the harness for finding where the time goes (``--profile``), not a comparison with tgt:
the kernel's TCP work is not in it, so only compare its numbers with each other, on one machine.
``--dir`` on a file system other than tmpfs sends the I/O through the store's worker threads;
their CPU counts too (process time). ``--cache BYTES`` puts the gfapi read cache
(backstore/cache.py) in front, blocking as a gfapi store is, and reads the LUN through it
first: reads are then cache hits answered on the loop (the runner's ``read_hit``).

    .venv/bin/python bench/corepath.py                       # read and write, QD 32 and 1
    .venv/bin/python bench/corepath.py --workload read --qd 32 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import struct
import sys
import tempfile
import time

from gluster_iscsi.backstore.file import FileStore
from gluster_iscsi.model.targets import AccessRule, Portal, Target
from gluster_iscsi.scsi.device import DeviceServer
from gluster_iscsi.server.daemon import Daemon
from gluster_iscsi.server.driver import ConnectionDriver
from gluster_iscsi.server.runner import lu_on

TNAME = "iqn.2026-12.org.gluster-iscsi:corepath"
BLOCKS = 8  # 4 KiB commands on a 512-byte-block LUN
LUN_BYTES = 64 << 20


def _bhs(b0: int, b1: int, dsl: int, lun: bytes, itt: int, w20: int, w24: int, w28: int,
         tail: bytes) -> bytes:
    return (bytes([b0, b1, 0, 0, 0]) + dsl.to_bytes(3, "big") + lun
            + struct.pack(">IIII", itt, w20, w24, w28) + tail)


def _text(pairs: list[tuple[str, str]]) -> bytes:
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)
    return data + bytes(-len(data) % 4), len(data)  # type: ignore[return-value]


def login_pdu() -> bytes:
    pairs = [("InitiatorName", "iqn.2026-12.org.example:corepath"), ("TargetName", TNAME),
             ("SessionType", "Normal"), ("HeaderDigest", "None"), ("DataDigest", "None"),
             ("MaxRecvDataSegmentLength", "262144"), ("ImmediateData", "Yes"),
             ("InitialR2T", "No"), ("MaxBurstLength", "1048576"), ("FirstBurstLength", "262144")]
    data, n = _text(pairs)  # type: ignore[misc]
    isid = bytes([0x80, 0, 0, 0, 0, 1])
    return _bhs(0x43, 0x87, n, isid + bytes(2), 1, 0, 1, 0, bytes(16)) + data


def scsi_cmd(itt: int, cmdsn: int, lba: int, write: bool) -> bytes:
    length = BLOCKS * 512
    cdb = bytes([0x2A if write else 0x28, 0]) + lba.to_bytes(4, "big") + bytes([0]) \
        + BLOCKS.to_bytes(2, "big") + bytes(7)
    flags = 0x80 | (0x20 if write else 0x40) | 1  # F, W or R, SIMPLE
    lun = bytes([0, 1]) + bytes(6)
    hdr = _bhs(0x01, flags, length if write else 0, lun, itt, length, cmdsn, 0, cdb)
    return hdr + (bytes(length) if write else b"")


class CountingTransport:
    """What the driver needs of an asyncio transport; counts the bytes it is given."""

    def __init__(self) -> None:
        self.sent = 0
        self.writes = 0
        self.until = 0  # wake ``waiter`` once this many bytes were sent
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: object) -> None:
        self.writelines([data])

    def writelines(self, bufs: list[object]) -> None:
        for b in bufs:
            self.sent += len(b)  # type: ignore[arg-type]
        self.writes += 1
        w = self.waiter
        if w is not None and self.sent >= self.until and not w.done():
            w.set_result(None)

    async def sent_by(self, n: int) -> None:
        """Return once ``n`` bytes in all were sent (completions from store workers come later)."""
        if self.sent < n:
            self.until = n
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 3260)}.get(name, default)


def feed(drv: ConnectionDriver, data: bytes) -> None:
    """Hand ``data`` to the driver as the event loop does: into its buffer, as much as fits."""
    mv = memoryview(data)
    while len(mv):
        buf = drv.get_buffer(-1)
        n = min(len(buf), len(mv))
        buf[:n] = mv[:n]
        drv.buffer_updated(n)
        mv = mv[n:]


async def run(workload: str, qd: int, commands: int, profile: bool, directory: str,
              cache: int = 0) -> float:
    state = tempfile.mkdtemp(prefix="corepath-", dir=directory)
    path = os.path.join(state, "lun.img")
    store = FileStore(path, create_size=LUN_BYTES)
    os.posix_fallocate(store._fd, 0, LUN_BYTES)
    if cache:
        from gluster_iscsi.backstore.cache import CachedStore, CacheLedger

        store = CachedStore(store, cache, ledger_=CacheLedger(1 << 34))  # type: ignore[assignment]
        store.blocking = True  # as a gfapi store: hits on the loop, misses on the workers
        warm = memoryview(bytearray(1 << 20))
        for off in range(0, LUN_BYTES, len(warm)):
            store.read_into(off, warm)
    lu = lu_on(store, serial="corepath1", naa=bytes.fromhex("6001405000000099"))
    d = Daemon(state, poll_usecs=0)
    d.add_target(Target(TNAME, 1, acl=[AccessRule(network="ALL")],
                        device=DeviceServer({1: lu}, target_name=TNAME)))
    drv = ConnectionDriver(d, Portal("127.0.0.1", 3260))
    tr = CountingTransport()
    drv.connection_made(tr)  # type: ignore[arg-type]
    feed(drv, login_pdu())
    await asyncio.sleep(0)
    assert drv.conn is not None and drv.conn.full_feature, "login failed"
    write = workload == "write"
    nblocks = LUN_BYTES // 512
    # Batches of qd commands, as a loopback receive would hand a burst over.
    batches = []
    cmdsn = 1
    itt = 0x100
    for _ in range(commands // qd):
        parts = []
        for i in range(qd):
            lba = (cmdsn * 104729 * BLOCKS) % (nblocks - BLOCKS)
            parts.append(scsi_cmd(itt + i, cmdsn, lba, write))
            cmdsn += 1
        batches.append(b"".join(parts))
    # The first command collects the LUN's power-on UNIT ATTENTION: warm up with one batch.
    feed(drv, batches.pop(0))
    await asyncio.sleep(0.5)
    before = tr.sent
    per_batch = qd * (48 + (0 if write else BLOCKS * 512))
    prof = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    for i, batch in enumerate(batches):
        feed(drv, batch)
        await tr.sent_by(before + (i + 1) * per_batch)  # the deferred flush or store workers
    if prof:
        prof.disable()
    elapsed = time.process_time() - t0
    n = len(batches) * qd
    expect = n * (48 + (0 if write else BLOCKS * 512))
    assert tr.sent - before == expect, f"sent {tr.sent - before} bytes, expected {expect}"
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    drv.connection_lost(None)
    store.close()
    os.unlink(path)
    os.rmdir(state)
    return elapsed / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["read", "write", "all"], default="all")
    ap.add_argument("--qd", type=int, default=0, help="commands per receive (default: 32 and 1)")
    ap.add_argument("--commands", type=int, default=64000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is printed")
    ap.add_argument("--profile", action="store_true", help="cProfile one run, top functions by own time")
    ap.add_argument("--dir", default="/dev/shm", help="where the LUN file lives (tmpfs: inline I/O)")
    ap.add_argument("--cache", type=int, default=0,
                    help="bytes of gfapi read cache in front of the file (reads: hits)")
    args = ap.parse_args()
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = asyncio.new_event_loop
    workloads = ["read", "write"] if args.workload == "all" else [args.workload]
    qds = [args.qd] if args.qd else [32, 1]
    for w in workloads:
        for qd in qds:
            runs = []
            for _ in range(1 if args.profile else args.repeat):
                loop = loop_factory()
                try:
                    runs.append(loop.run_until_complete(
                        run(w, qd, args.commands, args.profile, args.dir, args.cache)))
                finally:
                    loop.close()
            print(f"{w:5s} 4k qd{qd:<3d} {min(runs):6.2f} us CPU per command "
                  f"(best of {len(runs)}: {', '.join(f'{r:.2f}' for r in runs)})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
