"""Resource exhaustion against a real ``serve --demo`` (issue 16): while each attack holds,
a legitimate initiator logs in and writes and reads back correctly, and the daemon's
memory, descriptors and log stay bounded.

The attackers connect from 127.0.0.2 (a per-address limit can tell them from the
legitimate initiator at 127.0.0.1); everything stays on loopback. Where the daemon has an
option for a limit (``--max-connections``, ``--max-prelogin``, ``--memory-budget``), a small
one is passed; on a tree without it the assertions are the same: bounded, and the
legitimate session works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time

import pytest

from ..iscsi import initiator as I
from ..iscsi.fuzzer import TARGET, login_pairs
from .fuzzload import legit_round_trip, open_fds
from .hostile import LimitedDaemon, RawSession, limit_args, settle_rss

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.2"
MIB = 1024  # RSS is in KiB
NOFILE = 256  # the daemon's descriptor limit in the descriptor tests


def attacker_socket(port: int, *, rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.bind((ATTACKER, 0))
    s.connect(("127.0.0.1", port))
    return s


def AttackerSession(port: int, *, rcvbuf: int | None = None) -> RawSession:  # noqa: N802
    return RawSession(port, rcvbuf=rcvbuf, source=ATTACKER,
                      initiator="iqn.2026-11.org.example:attacker")


def start(tmp_path, *, nofile: int | None = None, **limits) -> LimitedDaemon:
    d = LimitedDaemon(tmp_path / "state", nofile=nofile,
                      extra=["--nop-interval", "0", *limit_args(**limits)])
    d.start()
    return d


def stop(d: LimitedDaemon) -> None:
    rc = d.stop()
    assert rc == 0, f"daemon exit code {rc}\n{d.log_text()[-4000:]}"


def legit(d: LimitedDaemon, seed: int) -> None:
    try:
        asyncio.run(legit_round_trip(d.port, seed))
    except Exception as exc:  # noqa: BLE001 - said plainly, with the daemon's last words
        pytest.fail(f"the legitimate session failed during the attack: {type(exc).__name__}: "
                    f"{exc}\n--- daemon log tail ---\n{d.log_text()[-3000:]}")


def close_all(socks) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()


# ------------------------------------------------------------------ (i) idle connections
def test_idle_connections_that_never_log_in_do_not_lock_out_a_legitimate_login(tmp_path):
    """(i), issue item 5: 600 idle connections against a daemon with 256 descriptors (two per
    connection before the fix: ~120 locked everyone out). A legitimate login still works, the
    daemon keeps within its descriptors, and accept failures are not logged one by one."""
    d = start(tmp_path, nofile=NOFILE, max_connections=80, max_prelogin=40,
              max_prelogin_per_host=20)
    socks: list[socket.socket] = []
    try:
        legit(d, 1)
        log_start = d.log.stat().st_size
        refused = 0
        for _ in range(600):
            try:
                socks.append(attacker_socket(d.port, timeout=2.0))
            except OSError:
                refused += 1
        time.sleep(1.0)  # (let the daemon take in what it will)
        legit(d, 2)
        legit(d, 3)
        assert d.alive()
        fds = open_fds(d.pid)
        grown = d.log.stat().st_size - log_start
        tracebacks = d.log_text().count("Traceback")
        print(f"{len(socks)} connected, {refused} refused; daemon fds {fds}; log +{grown} bytes, "
              f"{tracebacks} tracebacks")
        assert tracebacks <= 1, f"{tracebacks} tracebacks in the log:\n{d.log_text()[-3000:]}"
        assert grown <= 32 << 10, f"the log grew by {grown} bytes:\n{d.log_text()[-3000:]}"
    finally:
        close_all(socks)
        stop(d)


# ------------------------------------------------------------------ (ii) unread READs
def test_many_sessions_with_unread_reads_keep_memory_bounded(tmp_path):
    """(ii), issue item 6 across sessions: 8 sessions each send 32 READs of 1 MiB and never
    read. RSS grows by well under the 256 MiB requested; a legitimate session works."""
    d = start(tmp_path, memory_mib=64)
    hogs: list[RawSession] = []
    try:
        legit(d, 1)
        start_rss = d.rss()
        for _ in range(8):
            h = AttackerSession(d.port, rcvbuf=4096)
            assert h.login().status_class == 0
            h.send(b"".join(h.read10(i * 2048, 1 << 20) for i in range(32)))
            hogs.append(h)
        peak, _ = settle_rss(d)
        legit(d, 2)
        peak = max(peak, d.rss())
        requested = 8 * 32 * MIB
        print(f"RSS start {start_rss // MIB} MiB, peak {peak // MIB} MiB")
        assert peak - start_rss < requested // 2, (
            f"RSS grew by {(peak - start_rss) // MIB} MiB for {requested // MIB} MiB of unread "
            f"READs")
    finally:
        for h in hogs:
            h.reset()
        stop(d)


# ------------------------------------------------------------------ (iii) R2Ts held
def test_sessions_holding_r2ts_keep_memory_bounded(tmp_path):
    """(iii), issue item 7: 3 sessions each start 32 WRITEs of 8 MiB and never send the
    Data-Out the R2Ts ask for (768 MiB announced; before the fix 720 MiB were allocated). RSS
    stays well below it; a legitimate session still writes and reads."""
    d = start(tmp_path, memory_mib=64)
    hogs: list[RawSession] = []
    try:
        legit(d, 1)
        start_rss = d.rss()
        size = 8 << 20
        for _ in range(3):
            h = AttackerSession(d.port)
            assert h.login().status_class == 0
            cmds = []
            for i in range(32):
                cdb = struct.pack(">BBIBHB", 0x2A, 0, i * (size // 512), 0, size // 512, 0)
                cmds.append(I.scsi_cmd(cdb, itt=h.next_itt(), cmdsn=h.cmdsn, edtl=size, write=True,
                                       data=b"\x5a" * 65536, lun=1))
                h.cmdsn += 1
            h.send(b"".join(cmds))
            hogs.append(h)
        peak, _ = settle_rss(d)
        legit(d, 2)
        peak = max(peak, d.rss())
        print(f"RSS start {start_rss // MIB} MiB, peak {peak // MIB} MiB")
        assert peak - start_rss < 192 * MIB, (
            f"RSS grew by {(peak - start_rss) // MIB} MiB for 3 sessions holding R2Ts of 768 MiB")
    finally:
        for h in hogs:
            h.reset()
        stop(d)


# ------------------------------------------------------------------ (iv) log floods
def _flood_logged_in(port: int, n: int, errors: list[str]) -> None:
    try:
        h = AttackerSession(port)
        assert h.login().status_class == 0
        bad = []
        for i in range(n):  # SNACK at ErrorRecoveryLevel 0, and an opcode that does not exist
            itt = 0x100 + i
            if i % 2:
                bad.append(I._bhs(0x10, 0x80, 0, 0, b"", bytes(8), itt, (0xFFFFFFFF, 0, 0, 0, 0, 0, 0)))
            else:
                bad.append(I._bhs(0x1C, 0x80, 0, 0, b"", bytes(8), itt, (0xFFFFFFFF, 0, 0, 0, 0, 0, 0)))
        reader = threading.Thread(target=_drain, args=(h.sock,), daemon=True)
        reader.start()
        for k in range(0, n, 500):
            h.send(b"".join(bad[k : k + 500]))
        h.send(I.logout(itt=0x7000_0000, cmdsn=h.cmdsn))
        reader.join(30)
        h.close()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(1 << 16):
            pass


def _flood_unauthenticated(port: int, n: int, errors: list[str]) -> None:
    try:
        for i in range(n):
            s = attacker_socket(port)
            try:  # a NOP-Out before any login: refused, the connection closed
                s.sendall(I.nop_out(itt=i, cmdsn=1))
                _drain(s)
            finally:
                s.close()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("who", ["logged_in", "unauthenticated"])
def test_a_flood_of_bad_pdus_grows_the_log_by_a_bounded_amount(tmp_path, who):
    """(iv), issue item 9: 20,000 bad PDUs from a logged-in peer, or 1,000 connections that
    send a NOP-Out before logging in. Before: a WARNING per PDU (MB/s). Now: one line per
    problem per peer per interval with a count. A legitimate session works meanwhile."""
    d = start(tmp_path, max_prelogin=40, max_prelogin_per_host=20)
    try:
        legit(d, 1)
        log_start = d.log.stat().st_size
        errors: list[str] = []
        if who == "logged_in":
            t = threading.Thread(target=_flood_logged_in, args=(d.port, 20000, errors))
        else:
            t = threading.Thread(target=_flood_unauthenticated, args=(d.port, 1000, errors))
        t.start()
        try:
            legit(d, 2)
        finally:
            t.join(120)
        assert not t.is_alive(), "the flood did not finish in 2 minutes"
        assert not errors, errors
        legit(d, 3)
        grown = d.log.stat().st_size - log_start
        print(f"log +{grown} bytes")
        assert grown <= 64 << 10, (f"the log grew by {grown} bytes; its tail:\n"
                                   f"{d.log_text()[-1500:]}")
    finally:
        stop(d)


# ------------------------------------------------------------------ (v) unknown keys
def test_a_login_with_thousands_of_unknown_keys_is_answered_within_the_pdu_size(tmp_path):
    """(v), issue item 4: 2,000 unknown keys sent over continued Login Requests. Every Login
    Response fits the initiator's 8192-byte MaxRecvDataSegmentLength (the rest follows with
    the C bit); the login ends with a clear status; a legitimate session works meanwhile."""
    d = start(tmp_path)
    try:
        legit(d, 1)
        h = AttackerSession(d.port)
        text = I.text(login_pairs(h.initiator, TARGET)
                      + [(f"X-org.example.k{i:05d}", "v") for i in range(2000)])
        chunks = [text[i : i + 8192] for i in range(0, len(text), 8192)]
        isid = b"\x80\x11\x22\x33\x44\x55"
        sizes: list[int] = []
        final = None
        try:
            for k, chunk in enumerate(chunks):
                last = k == len(chunks) - 1
                h.send(I.login(chunk, cont=not last, transit=last, isid=isid))
                rsp = h.recv(timeout=20)
                assert rsp is not None and rsp.opcode == 0x23, "no Login Response"
                sizes.append(len(rsp.data))
                if rsp.status_class != 0:
                    final = rsp
                    break
            else:
                while rsp.flags & 0x40:  # C: ask for the rest with empty requests
                    h.send(I.login(b"", transit=False, isid=isid))
                    rsp = h.recv(timeout=20)
                    assert rsp is not None and rsp.opcode == 0x23
                    sizes.append(len(rsp.data))
                final = rsp
            legit(d, 2)
        finally:
            h.close()
        print(f"login response sizes {sizes}, final status "
              f"{final.status_class}/{final.status_detail}")
        assert max(sizes) <= 8192, (
            f"a Login Response of {max(sizes)} bytes; the initiator's MaxRecvDataSegmentLength "
            f"is 8192 during login")
        assert final.status_class in (0, 2), "the login ends with success or an initiator error"
        assert d.alive()
    finally:
        stop(d)


# ------------------------------------------------------------------ (vi) login churn
#: Two of the daemon's idle-trim intervals (server.daemon.POOL_TRIM_INTERVAL), and a second:
#: closed connections are collected and the heap given back at those ticks.
IDLE_TRIM = 11.0

def test_many_logins_and_logouts_leave_no_per_session_state_behind(tmp_path):
    """(vi), issue item 8: 3,000 login/logout cycles, each a new I_T nexus. The sessions view
    is empty afterwards and the daemon's RSS does not grow with the number of past sessions
    (before: 512 bytes per nexus kept in the device server and LU tables)."""
    d = start(tmp_path)
    try:
        legit(d, 1)

        async def churn(n: int, base: int) -> None:
            for i in range(n):
                r, w = await asyncio.open_connection("127.0.0.1", d.port)
                try:
                    isid = b"\x80" + (base + i).to_bytes(5, "big")
                    w.write(I.login(login_pairs(f"iqn.2026-11.org.example:churn{base + i}", TARGET),
                                    isid=isid)
                            + I.logout(itt=2, cmdsn=1))
                    while await asyncio.wait_for(r.read(65536), 20):
                        pass
                finally:
                    w.close()

        async def churners(n: int, base: int) -> None:
            await asyncio.gather(*(churn(n // 4, base + k * n) for k in range(4)))

        # Warm up: the allocator, and any bounded table of past ports (a device server may
        # remember the last 1024 departed, to report I_T NEXUS LOSS when one comes back).
        asyncio.run(churners(1600, 1_000_000))
        time.sleep(IDLE_TRIM)
        before = d.rss()
        asyncio.run(churners(3000, 2_000_000))
        time.sleep(IDLE_TRIM)  # both sampled once the daemon has tidied up after closes
        after = d.rss()
        legit(d, 2)
        sessions = json.loads(d.cli("session", "list", "--json").stdout)
        print(f"RSS {before} -> {after} KiB over 3000 sessions; sessions listed {len(sessions)}")
        assert sessions == [], sessions
        # Before the fix: ~1 KiB per past session here (the issue: 512 bytes in the device
        # server and LU tables, plus what they drag along). With the state released, what is
        # left is the allocator's drift, ~200 bytes per session. The line: 512 bytes.
        assert after - before < 3000 * 512 // 1024, (
            f"RSS grew by {after - before} KiB over 3000 past sessions: state kept per nexus")
    finally:
        stop(d)
