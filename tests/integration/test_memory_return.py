"""Issue 16, "RSS back within 10% of its starting value after the load ends": a short fuzz
load against a real ``serve --demo`` (the long one is ``bench/fuzz``), then the daemon must
give its memory back by itself while idle, with no help from the test."""

from __future__ import annotations

import asyncio
import time

import pytest

from .daemon import Daemon
from .fuzzload import Stats, fuzz_client, legit_round_trip, rss_kib

pytestmark = pytest.mark.integration

CLIENTS = 8
PDUS_PER_CLIENT = 5000
#: The daemon trims every 5 s (``server.daemon.POOL_TRIM_INTERVAL``): two intervals and slack.
SETTLE = 30.0


def test_rss_comes_back_within_10_percent_once_a_fuzz_load_ends(tmp_path):
    d = Daemon(tmp_path / "state", extra=["--log-level", "warning"]).start()
    try:
        assert d.proc is not None
        pid = d.proc.pid

        async def load() -> int:
            for i in range(3):  # a daemon in use: its start value includes a few sessions
                await legit_round_trip(d.port, 1_000_000 + i)
            await asyncio.sleep(1)
            start = rss_kib(pid)
            stats = Stats()
            await asyncio.wait_for(asyncio.gather(*(
                fuzz_client(d.port, 7000 + i, PDUS_PER_CLIENT, logged_in=i % 4 != 3, stats=stats)
                for i in range(CLIENTS))), 300)
            return start

        start = asyncio.run(load())
        peak = rss_kib(pid)
        deadline = time.monotonic() + SETTLE
        now = peak
        while time.monotonic() < deadline:
            now = rss_kib(pid)
            if now <= start * 1.10:
                break
            time.sleep(0.5)
        # Before the fix: glibc's floating mmap threshold kept command buffers in thread
        # arenas it never trims, and closed connections waited for a gen-2 collection
        # (start 36 MiB, 190 MiB a minute after the load).
        assert now <= start * 1.10, (
            f"RSS {start} KiB at the start, {peak} KiB after the load, {now} KiB after "
            f"{SETTLE:g} s idle")
        asyncio.run(legit_round_trip(d.port, 2_000_000))  # and it still serves
    finally:
        rc = d.stop()
    assert rc == 0, d.log_text()[-3000:]
