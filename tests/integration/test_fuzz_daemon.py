"""Fuzzing a real ``serve --demo`` over loopback, logged in and not (issue 16).

A short run with fixed seeds (the long one is ``bench/fuzz``): fuzzing clients send mutated
PDUs while a legitimate initiator writes and reads back every second. Afterwards: the daemon
is alive, a fresh legitimate session still round-trips data, and the log grew by a bounded
amount (one line per problem per peer per interval, not one per bad PDU).
"""

from __future__ import annotations

import asyncio

import pytest

from .daemon import Daemon
from .fuzzload import Stats, fuzz_client, legit_round_trip, prober, rss_kib

pytestmark = pytest.mark.integration

LOGGED_IN_CLIENTS = 4
UNAUTHENTICATED_CLIENTS = 2
PDUS_PER_CLIENT = 10000
#: What the log may grow by during the run. Today one WARNING (~150 bytes) per bad PDU:
#: thousands of lines. Rate-limited per problem and peer, a few dozen.
LOG_BUDGET = 128 << 10


async def _campaign(port: int) -> tuple[Stats, Stats]:
    load, probe = Stats(), Stats()
    stop = asyncio.Event()
    probing = asyncio.create_task(prober(port, probe, stop))
    clients = [fuzz_client(port, 100 + i, PDUS_PER_CLIENT, logged_in=True, stats=load)
               for i in range(LOGGED_IN_CLIENTS)]
    clients += [fuzz_client(port, 200 + i, PDUS_PER_CLIENT, logged_in=False, stats=load)
                for i in range(UNAUTHENTICATED_CLIENTS)]
    try:
        await asyncio.wait_for(asyncio.gather(*clients), 300)
    finally:
        stop.set()
        await probing
    return load, probe


def test_fuzzed_daemon_stays_up_serves_a_legitimate_session_and_keeps_its_log_small(tmp_path):
    d = Daemon(tmp_path / "state", extra=["--log-level", "warning", "--nop-interval", "0"])
    d.start()
    try:
        assert d.proc is not None
        log_start = d.log.stat().st_size
        rss_start = rss_kib(d.proc.pid)
        load, probe = asyncio.run(_campaign(d.port))
        assert d.proc.poll() is None, f"the daemon died:\n{d.log_text()[-4000:]}"
        asyncio.run(legit_round_trip(d.port, 99999))
        grown = d.log.stat().st_size - log_start
        rss_end = rss_kib(d.proc.pid)
        print(f"sent {load.sent} PDUs on {load.connections} connections, {load.stalls} stalls, "
              f"{probe.probes} probes; log +{grown} bytes; RSS {rss_start} -> {rss_end} KiB")
        assert load.sent == (LOGGED_IN_CLIENTS + UNAUTHENTICATED_CLIENTS) * PDUS_PER_CLIENT
        assert not probe.probe_errors, "\n".join(probe.probe_errors[:10])
        assert grown <= LOG_BUDGET, (
            f"the log grew by {grown} bytes for {load.sent} fuzzed PDUs (budget {LOG_BUDGET}); "
            f"its last lines:\n{d.log_text()[-2000:]}")
    finally:
        rc = d.stop()
    assert rc == 0, f"daemon exit code {rc}\n{d.log_text()[-4000:]}"
