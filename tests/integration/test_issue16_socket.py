"""Issue 16 items 1 and 6 at the socket level, against a real ``serve --demo``: an independent
check of the fixes made in the cores and the driver."""

from __future__ import annotations

import asyncio

import pytest

from ..iscsi import initiator as I
from .fuzzload import legit_round_trip
from .hostile import LimitedDaemon, RawSession, limit_args, settle_rss

pytestmark = pytest.mark.integration

MIB = 1024  # RSS is in KiB


@pytest.fixture
def demo(tmp_path):
    d = LimitedDaemon(tmp_path / "state", extra=["--nop-interval", "0", *limit_args(memory_mib=64)])
    d.start()
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exit code {rc}\n{d.log_text()[-4000:]}"


def test_logout_behind_an_executing_large_read_closes_the_connection_after_its_response(demo):
    """Item 1: the Logout Response comes after the READ's data and status, then the target
    closes the TCP connection (before the fix it stayed open and deaf)."""
    s = RawSession(demo.port)
    try:
        assert s.login().status_class == 0
        read = s.read10(0, 8 << 20)
        logout_itt = 0x4000
        # In one segment: the Logout arrives while the READ executes.
        s.send(read + I.logout(itt=logout_itt, cmdsn=s.cmdsn))
        got_logout = None
        while got_logout is None:
            rsp = s.recv(timeout=20)
            assert rsp is not None, "connection closed before the Logout Response"
            if rsp.opcode == 0x26:
                got_logout = rsp
        assert got_logout.itt == logout_itt and got_logout.b2 == 0  # connection closed OK
        try:
            after = s.recv(timeout=20)
        except TimeoutError:
            pytest.fail("the target sent its Logout Response and kept the connection open")
        assert after is None, f"a PDU (opcode {after.opcode:#x}) after the Logout Response"
    finally:
        s.close()
    assert demo.alive()
    asyncio.run(legit_round_trip(demo.port, 1))


def test_an_idle_logout_closes_the_connection(demo):
    """Item 1's control case (it worked before the fix too)."""
    s = RawSession(demo.port)
    try:
        assert s.login().status_class == 0
        s.send(I.logout(itt=0x4000, cmdsn=s.cmdsn))
        rsp = s.recv(timeout=20)
        assert rsp is not None and rsp.opcode == 0x26 and rsp.b2 == 0
        assert s.recv(timeout=20) is None
    finally:
        s.close()


READS, READ_SIZE = 48, 8 << 20


def test_unread_large_reads_do_not_raise_rss_by_the_volume_requested(demo):
    """Item 6: 48 READs of 8 MiB each on one session whose initiator never reads. Before: RSS
    grew by ~977 MiB. Bounded: the target stops at its memory budget (or queues the commands
    without reading them all in); the growth stays well below the 384 MiB requested. A
    legitimate session meanwhile still does its I/O."""
    asyncio.run(legit_round_trip(demo.port, 1))  # warm: the start value is a daemon in use
    start = demo.rss()
    s = RawSession(demo.port, rcvbuf=4096)
    try:
        assert s.login().status_class == 0
        s.send(b"".join(s.read10(i * (READ_SIZE // 512), READ_SIZE) for i in range(READS)))
        peak, _ = settle_rss(demo)
        asyncio.run(legit_round_trip(demo.port, 2))  # (while the hog is still connected)
        peak = max(peak, demo.rss())
        requested = READS * READ_SIZE // 1024
        # Half the volume: loose with the 64 MiB --memory-budget passed where the option
        # exists, and far below what one session took before (378 MiB here, 977 in the issue).
        limit = requested // 2
        print(f"RSS start {start // MIB} MiB, peak {peak // MIB} MiB")
        assert peak - start < limit, (
            f"RSS grew by {(peak - start) // MIB} MiB for {READS} unread READs of "
            f"{READ_SIZE >> 20} MiB (limit {limit // MIB} MiB; start {start // MIB} MiB)")
    finally:
        s.reset()
    assert demo.alive()

