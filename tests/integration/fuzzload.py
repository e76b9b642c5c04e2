"""Hostile load against a real daemon over loopback: fuzzing clients, a legitimate prober,
the daemon's RSS. Shared by tests/integration/test_fuzz_daemon.py (a short run with fixed
seeds) and bench/fuzz (the long run). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from gluster_iscsi.iscsi.pdu import PduReader

from ..iscsi import initiator as I
from ..iscsi.fuzzer import INITIATOR, TARGET, PduFuzzer, login_pairs, spare
from .pyinitiator import Session

HOST = "127.0.0.1"
#: The legitimate prober writes and reads here, above the LBAs the fuzzer writes (< 2^20 + 64).
PROBE_LBA = 1_500_000  # (the demo LUN has 2^21 blocks of 512 bytes)
IO_TIMEOUT = 30.0
NUMBERED = {0x00, 0x01, 0x02, 0x04, 0x06}  # initiator PDUs that take a CmdSN  # a legitimate command not answered in this long counts as a hang


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS, KiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Stats:
    sent: int = 0
    connections: int = 0
    logins_refused: int = 0
    stalls: int = 0  # our send did not drain within the timeout: reconnected
    probes: int = 0
    probe_max: float = 0.0  # the slowest legitimate round trip, seconds
    probe_errors: list[str] = field(default_factory=list)

    def add(self, other: Stats) -> None:
        self.sent += other.sent
        self.connections += other.connections
        self.logins_refused += other.logins_refused
        self.stalls += other.stalls


async def _drain_reads(r: asyncio.StreamReader) -> None:
    """Read and drop what the target sends (so flow control never stops it)."""
    with contextlib.suppress(Exception):
        while await r.read(1 << 20):
            pass


async def _login(r: asyncio.StreamReader, w: asyncio.StreamWriter, rng: random.Random) -> bool:
    isid = bytes((0x80,)) + rng.randbytes(5)
    w.write(I.login(login_pairs(INITIATOR), isid=isid))
    await asyncio.wait_for(w.drain(), IO_TIMEOUT)
    reader = PduReader(1 << 20)
    while True:
        p = reader.next_pdu()
        if p is not None:
            rsp = I.Rsp(p)
            return rsp.opcode == 0x23 and rsp.status_class == 0
        data = await asyncio.wait_for(r.read(65536), IO_TIMEOUT)
        if not data:
            return False
        reader.feed(data)


async def fuzz_client(port: int, seed: int, pdus: int, *, logged_in: bool, stats: Stats,
                      per_connection: int = 300, stop: asyncio.Event | None = None) -> None:
    """Send ``pdus`` fuzzed PDUs, reconnecting (and logging in again, if ``logged_in``)
    whenever the target closes or after ``per_connection`` PDUs."""
    fuzz = PduFuzzer(seed, target_resets=False, spare_others=True)
    rng = fuzz.rng
    left = pdus
    while left > 0 and not (stop and stop.is_set()):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), IO_TIMEOUT)
        except (TimeoutError, OSError):
            stats.stalls += 1
            await asyncio.sleep(0.05)
            continue
        stats.connections += 1
        drainer = None
        try:
            if logged_in:
                if not await _login(r, w, rng):
                    stats.logins_refused += 1
                    continue
            drainer = asyncio.create_task(_drain_reads(r))
            cmdsn = 1
            n = min(left, rng.randrange(1, per_connection + 1))
            batch: list[bytes] = []
            for _ in range(n):
                if drainer.done():
                    break
                if logged_in:
                    if rng.random() < 0.03:  # now and then a CmdSN out of step
                        cmdsn += rng.choice((-1, 40, 1 << 31))
                    p = fuzz.stream(cmdsn & 0xFFFFFFFF)
                    if len(p) >= 48 and not p[0] & 0x40 and p[0] & 0x3F in NUMBERED:
                        cmdsn += 1  # as an initiator counts: numbered non-immediate PDUs
                    batch.append(p)
                else:
                    x = rng.random()
                    p = fuzz.login() if x < 0.5 else fuzz.junk() if x < 0.6 else fuzz.stream(1)
                    batch.append(spare(fuzz.mutate(p)) if rng.random() < 0.6 else p)
                left -= 1
                stats.sent += 1
                if len(batch) >= 16:
                    w.write(b"".join(batch))
                    batch.clear()
                    await asyncio.wait_for(w.drain(), 10)
            if batch and not drainer.done():
                w.write(b"".join(batch))
                await asyncio.wait_for(w.drain(), 10)
            if not drainer.done():  # let the target take in all we sent, then part
                w.write_eof()
                await asyncio.wait_for(asyncio.shield(drainer), 10)
        except TimeoutError:
            stats.stalls += 1
        except (OSError, ConnectionError):
            pass
        finally:
            w.transport.abort()
            if drainer is not None:
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await drainer


async def _scsi(s: Session, cdb: bytes, *, data_out: bytes = b"",
                read_len: int = 0) -> tuple[int, bytes, bytes]:
    """One command, (status, data-in, sense); answers the target's NOP-In pings meanwhile."""
    itt = s._itt()
    cdb = cdb.ljust(16, b"\x00")
    edtl = len(data_out) if data_out else read_len
    s.w.write(I.scsi_cmd(cdb, itt=itt, cmdsn=s.cmdsn, edtl=edtl, write=bool(data_out),
                         read=bool(read_len), data=data_out[: s.first_burst], lun=1))
    s.cmdsn += 1
    buf = bytearray(read_len)
    while True:
        rsp = await s._next()
        if rsp.opcode == 0x20:  # NOP-In: a ping wants its NOP-Out
            if rsp.ttt != 0xFFFFFFFF:
                s.w.write(I.nop_out(itt=0xFFFFFFFF, ttt=rsp.ttt, cmdsn=s.cmdsn))
        elif rsp.opcode == 0x31:  # R2T
            off, length = rsp.buffer_offset, rsp.residual
            for sn, start in enumerate(range(off, off + length, s.target_mrdsl)):
                chunk = data_out[start : min(start + s.target_mrdsl, off + length)]
                s.w.write(I.data_out(chunk, itt=itt, ttt=rsp.ttt, datasn=sn, offset=start,
                                     final=start + len(chunk) >= off + length, lun=1))
        elif rsp.opcode == 0x25 and rsp.itt == itt:
            buf[rsp.buffer_offset : rsp.buffer_offset + len(rsp.data)] = rsp.data
            if rsp.flags & 0x01:
                return rsp.b3, bytes(buf), b""
        elif rsp.opcode == 0x21 and rsp.itt == itt:
            return rsp.b3, bytes(buf), bytes(rsp.data)[2:] if rsp.b3 else b""
        elif rsp.opcode == 0x32:  # an async message: nothing to do for it here
            continue
        else:
            raise AssertionError(f"unexpected PDU opcode {rsp.opcode:#x} itt {rsp.itt:#x}")


async def _command(s: Session, cdb: bytes, *, data_out: bytes = b"", read_len: int = 0) -> bytes:
    """One command as a patient initiator runs it: retried on UNIT ATTENTION (other peers
    reset the LU) and on BUSY / TASK SET FULL (the target is at its limits), failed otherwise."""
    for _ in range(200):
        status, data, sense = await _scsi(s, cdb, data_out=data_out, read_len=read_len)
        if status == 0:
            return data
        if status == 0x02 and len(sense) > 2 and sense[2] & 0x0F == 0x06:
            continue
        if status in (0x08, 0x28):
            await asyncio.sleep(0.05)
            continue
        raise AssertionError(f"CDB {cdb[:1].hex()}: status {status:#x} sense {sense.hex()}")
    raise AssertionError(f"CDB {cdb[:1].hex()}: still UNIT ATTENTION or BUSY after 200 tries")


async def legit_round_trip(port: int, seed: int, *, initiator: str = "iqn.2026-11.org.example:legit",
                           size: int = 65536) -> None:
    """Log in, write ``size`` bytes, read them back, compare, log out; every step bounded."""
    data = random.Random(seed).randbytes(size)
    lba = PROBE_LBA + (seed % 1024) * (size // 512)
    blocks = size // 512

    step = "connect and log in"

    async def go() -> None:
        nonlocal step
        async with Session(HOST, port, TARGET, initiator) as s:
            step = "WRITE"
            await _command(s, struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0), data_out=data)
            step = "READ"
            back = await _command(s, struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0),
                                  read_len=size)
            if back != data:
                raise AssertionError(f"read back differs from what was written at LBA {lba}")
            step = "log out"

    try:
        await asyncio.wait_for(go(), IO_TIMEOUT)
    except TimeoutError as exc:
        raise TimeoutError(f"no answer within {IO_TIMEOUT:g} s at step: {step}") from exc


async def prober(port: int, stats: Stats, stop: asyncio.Event, interval: float = 1.0) -> None:
    """A legitimate initiator every ``interval`` seconds until ``stop``: each must succeed."""
    n = 0
    while not stop.is_set():
        n += 1
        t = time.monotonic()
        try:
            await legit_round_trip(port, n)
            stats.probes += 1
            stats.probe_max = max(stats.probe_max, time.monotonic() - t)
        except Exception as exc:  # noqa: BLE001 - recorded, the caller asserts on it
            stats.probe_errors.append(f"probe {n} at {time.strftime('%H:%M:%S')}: "
                                      f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
