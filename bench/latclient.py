#!/usr/bin/env python3
"""latclient: a minimal, standalone iSCSI initiator for latency measurements.

It measures targets from the outside: pure Python 3.11 stdlib, no import of the
gluster_iscsi package, one session, one connection, no digests, no CHAP.

Modes (all print one JSON object on stdout):

  latclient.py probe URL
      log in, report the target's answers to our operational keys (the negotiated
      values), the LUN's block size and capacity (READ CAPACITY 16) and the
      caching mode page (WCE/RCD bits, MODE SENSE 6 page 0x08).

  latclient.py bench URL --op read|write --size 4096 --seconds 5 [--random] [--fua]
      QD1 loop of READ(10)/WRITE(10); reports ops/s, MB/s and latency percentiles
      (microseconds) measured around each command, send to final status.

  latclient.py hold URL --sessions 64 --seconds 20
      log in N sessions and keep them idle (answering NOP-Ins) for S seconds, then
      log out. Used to measure a daemon's idle CPU and RSS.

URL: iscsi://HOST[:PORT]/TARGET-IQN/LUN
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
from urllib.parse import urlparse

# What we propose. These are libiscsi's own proposals, so the target's answers are
# the values negotiated with iscsi-perf / qemu too (the target decides the result
# for InitialR2T (OR), ImmediateData (AND), MaxBurstLength/FirstBurstLength (min),
# and declares its own MaxRecvDataSegmentLength).
PROPOSED = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "16776192",
    "FirstBurstLength": "262144",
    "MaxConnections": "1",
    "MaxOutstandingR2T": "1",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
}
INITIATOR = "iqn.2026-11.org.gluster-iscsi:bench-latclient"

OP_NOP_OUT, OP_SCSI_CMD, OP_LOGIN_REQ, OP_TEXT_REQ, OP_DATA_OUT, OP_LOGOUT_REQ = (
    0x00, 0x01, 0x03, 0x04, 0x05, 0x06)
OP_NOP_IN, OP_SCSI_RSP, OP_LOGIN_RSP, OP_DATA_IN, OP_LOGOUT_RSP, OP_R2T, OP_ASYNC, OP_REJECT = (
    0x20, 0x21, 0x23, 0x25, 0x26, 0x31, 0x32, 0x3F)
NO_TAG = 0xFFFFFFFF


class IscsiError(Exception):
    pass


class CheckCondition(IscsiError):
    def __init__(self, status: int, sense: bytes):
        key = sense[2] & 0x0F if len(sense) > 2 else -1
        asc = (sense[12], sense[13]) if len(sense) > 13 else None
        super().__init__(f"SCSI status 0x{status:02x} sense key {key} asc/ascq {asc}")
        self.status, self.sense = status, sense


def parse_url(url: str) -> tuple[str, int, str, int]:
    u = urlparse(url)
    if u.scheme != "iscsi":
        raise ValueError(f"not an iscsi:// URL: {url}")
    parts = u.path.strip("/").split("/")
    if len(parts) != 2:
        raise ValueError(f"expected iscsi://host[:port]/iqn/lun, got {url}")
    return u.hostname or "127.0.0.1", u.port or 3260, parts[0], int(parts[1])


def encode_lun(lun: int) -> bytes:
    if lun < 256:
        return bytes([0, lun, 0, 0, 0, 0, 0, 0])
    return bytes([0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0, 0, 0])


def kv_encode(d: dict[str, str]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in d.items())


def kv_decode(b: bytes) -> dict[str, str]:
    out = {}
    for item in b.split(b"\0"):
        if item:
            k, _, v = item.decode(errors="replace").partition("=")
            out[k] = v
    return out


class Pdu:
    __slots__ = ("bhs", "data")

    def __init__(self, bhs: bytes, data: bytes):
        self.bhs, self.data = bhs, data

    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    @property
    def flags(self) -> int:
        return self.bhs[1]

    def u32(self, off: int) -> int:
        return struct.unpack_from(">I", self.bhs, off)[0]


class Session:
    """One iSCSI session over one TCP connection, strictly one command at a time."""

    def __init__(self, host: str, port: int, target: str, lun: int, timeout: float = 10.0,
                 isid_low: int | None = None):
        self.host, self.port, self.target, self.lun = host, port, target, lun
        self.lun_bytes = encode_lun(lun)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rbuf = bytearray()
        self.itt = 0
        self.cmdsn = 1
        self.exp_statsn = 0
        self.isid = bytes([0x80, 0x00, 0x00]) + struct.pack(
            ">H", isid_low if isid_low is not None else os.getpid() & 0xFFFF) + b"\x01"
        self.tsih = 0
        self.negotiated: dict[str, str] = {}
        self.t_mrdsl = 8192          # target's MaxRecvDataSegmentLength (limits our Data-Out)
        self.first_burst = 65536
        self.max_burst = 262144
        self.immediate = True
        self.initial_r2t = True

    # ---- wire -------------------------------------------------------------------------
    def _send(self, bhs: bytes | bytearray, data: bytes | memoryview = b"") -> None:
        n = len(data)
        bhs = bytearray(bhs)
        bhs[5:8] = n.to_bytes(3, "big")
        pad = (-n) & 3
        if n:
            self.sock.sendall(bytes(bhs) + bytes(data) + b"\0" * pad)
        else:
            self.sock.sendall(bhs)

    def _recv_exact(self, n: int) -> bytes:
        while len(self.rbuf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.rbuf)))
            if not chunk:
                raise IscsiError("connection closed by target")
            self.rbuf += chunk
        out = bytes(self.rbuf[:n])
        del self.rbuf[:n]
        return out

    def recv_pdu(self) -> Pdu:
        bhs = self._recv_exact(48)
        ahs = bhs[4] * 4
        dlen = int.from_bytes(bhs[5:8], "big")
        rest = self._recv_exact(ahs + dlen + ((-dlen) & 3)) if (ahs or dlen) else b""
        return Pdu(bhs, rest[ahs:ahs + dlen])

    def _next_itt(self) -> int:
        self.itt = (self.itt + 1) & 0x7FFFFFFF
        return self.itt

    def _track(self, p: Pdu, has_statsn: bool = True) -> None:
        if has_statsn:
            self.exp_statsn = (p.u32(24) + 1) & 0xFFFFFFFF

    def _answer_nop(self, p: Pdu) -> None:
        ttt = p.u32(20)
        if ttt != NO_TAG:  # target ping: echo it back (immediate NOP-Out, ITT reserved)
            bhs = bytearray(48)
            bhs[0] = 0x40 | OP_NOP_OUT
            bhs[1] = 0x80
            bhs[8:16] = p.bhs[8:16]
            struct.pack_into(">IIII", bhs, 16, NO_TAG, ttt, self.cmdsn, self.exp_statsn)
            self._send(bhs, p.data)

    # ---- login / logout ---------------------------------------------------------------
    def _login_pdu(self, csg: int, nsg: int, transit: bool, keys: dict[str, str]) -> Pdu:
        bhs = bytearray(48)
        bhs[0] = 0x40 | OP_LOGIN_REQ
        bhs[1] = (0x80 if transit else 0) | (csg << 2) | nsg
        bhs[8:14] = self.isid
        struct.pack_into(">H", bhs, 14, self.tsih)
        struct.pack_into(">I", bhs, 16, self._next_itt())
        struct.pack_into(">HH", bhs, 20, 0, 0)
        struct.pack_into(">II", bhs, 24, self.cmdsn, self.exp_statsn)
        self._send(bhs, kv_encode(keys))
        while True:
            p = self.recv_pdu()
            if p.opcode == OP_LOGIN_RSP:
                break
            if p.opcode == OP_REJECT:
                raise IscsiError("login rejected (Reject PDU)")
        if p.bhs[36] != 0:
            raise IscsiError(f"login failed: status class {p.bhs[36]} detail {p.bhs[37]}")
        self.exp_statsn = (p.u32(24) + 1) & 0xFFFFFFFF
        self.tsih = struct.unpack_from(">H", p.bhs, 14)[0]
        return p

    def login(self, proposed: dict[str, str] | None = None) -> dict[str, str]:
        proposed = dict(PROPOSED if proposed is None else proposed)
        # Security stage: no authentication, ask to go to operational negotiation.
        p = self._login_pdu(0, 1, True, {
            "InitiatorName": INITIATOR, "TargetName": self.target,
            "SessionType": "Normal", "AuthMethod": "None"})
        answers = kv_decode(p.data)
        stage = (p.flags & 0x03) if (p.flags & 0x80) else 0
        guard = 0
        while stage == 0:  # target wants more security-stage exchanges
            p = self._login_pdu(0, 1, True, {})
            answers.update(kv_decode(p.data))
            stage = (p.flags & 0x03) if (p.flags & 0x80) else 0
            guard += 1
            if guard > 4:
                raise IscsiError("target never left the security stage")
        if stage == 1:
            p = self._login_pdu(1, 3, True, proposed)
            answers.update(kv_decode(p.data))
            guard = 0
            while not ((p.flags & 0x80) and (p.flags & 0x03) == 3):
                # Target answered but did not transit: answer any keys it declared back and retry.
                p = self._login_pdu(1, 3, True, {})
                answers.update(kv_decode(p.data))
                guard += 1
                if guard > 4:
                    raise IscsiError("target never reached full feature phase")
        self.negotiated = answers
        self.t_mrdsl = int(answers.get("MaxRecvDataSegmentLength", "8192"))
        self.first_burst = int(answers.get("FirstBurstLength", "65536"))
        self.max_burst = int(answers.get("MaxBurstLength", "262144"))
        self.immediate = answers.get("ImmediateData", "Yes") == "Yes"
        self.initial_r2t = answers.get("InitialR2T", "Yes") == "Yes"
        return answers

    def logout(self) -> None:
        bhs = bytearray(48)
        bhs[0] = 0x40 | OP_LOGOUT_REQ
        bhs[1] = 0x80  # reason 0: close the session
        struct.pack_into(">I", bhs, 16, self._next_itt())
        struct.pack_into(">II", bhs, 24, self.cmdsn, self.exp_statsn)
        try:
            self._send(bhs)
            while True:
                p = self.recv_pdu()
                if p.opcode == OP_LOGOUT_RSP:
                    break
                if p.opcode == OP_NOP_IN:
                    self._answer_nop(p)
        except (OSError, IscsiError):
            pass
        finally:
            self.sock.close()

    # ---- SCSI -------------------------------------------------------------------------
    def command(self, cdb: bytes, read_len: int = 0, write_data: bytes | memoryview = b"",
                into: bytearray | None = None) -> bytes:
        """Run one SCSI command to completion; return Data-In bytes (for reads)."""
        itt = self._next_itt()
        wlen = len(write_data)
        edtl = read_len or wlen
        bhs = bytearray(48)
        bhs[0] = OP_SCSI_CMD
        bhs[1] = 0x80 | (0x40 if read_len else 0) | (0x20 if wlen else 0) | 0x01
        bhs[8:16] = self.lun_bytes
        struct.pack_into(">IIII", bhs, 16, itt, edtl, self.cmdsn, self.exp_statsn)
        bhs[32:32 + len(cdb)] = cdb
        self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        sent = 0
        mv = memoryview(write_data)
        if wlen and self.immediate:
            sent = min(wlen, self.first_burst, self.t_mrdsl)
            self._send(bhs, mv[:sent])
        else:
            self._send(bhs)
        if wlen and not self.initial_r2t and sent < min(wlen, self.first_burst):
            # unsolicited Data-Out up to FirstBurstLength
            self._data_out(itt, NO_TAG, mv, sent, min(wlen, self.first_burst) - sent)
        buf = into if into is not None else bytearray(read_len)
        got = 0
        while True:
            p = self.recv_pdu()
            op = p.opcode
            if op == OP_DATA_IN:
                off = p.u32(40)
                n = len(p.data)
                buf[off:off + n] = p.data
                got += n
                if p.flags & 0x01:  # S bit: status piggy-backed
                    self._track(p)
                    status = p.bhs[3]
                    if status != 0:
                        raise CheckCondition(status, b"")
                    return bytes(buf) if into is None else b""
            elif op == OP_R2T:
                ttt, off, length = p.u32(20), p.u32(40), p.u32(44)
                self._data_out(itt, ttt, mv, off, length)
            elif op == OP_SCSI_RSP:
                self._track(p)
                if p.bhs[2] != 0:
                    raise IscsiError(f"SCSI response code {p.bhs[2]}")
                status = p.bhs[3]
                if status != 0:
                    sense = b""
                    if len(p.data) >= 2:
                        sl = struct.unpack_from(">H", p.data, 0)[0]
                        sense = p.data[2:2 + sl]
                    raise CheckCondition(status, sense)
                return bytes(buf[:got]) if into is None else b""
            elif op == OP_NOP_IN:
                self._answer_nop(p)
            elif op == OP_ASYNC:
                self._track(p)
            elif op == OP_REJECT:
                raise IscsiError(f"command rejected, reason 0x{p.bhs[2]:02x}")
            else:
                raise IscsiError(f"unexpected PDU opcode 0x{op:02x}")

    def _data_out(self, itt: int, ttt: int, mv: memoryview, off: int, length: int) -> None:
        end = off + length
        datasn = 0
        while off < end:
            n = min(self.t_mrdsl, end - off)
            bhs = bytearray(48)
            bhs[0] = OP_DATA_OUT
            bhs[1] = 0x80 if off + n >= end else 0
            bhs[8:16] = self.lun_bytes
            struct.pack_into(">II", bhs, 16, itt, ttt)
            struct.pack_into(">I", bhs, 28, self.exp_statsn)
            struct.pack_into(">II", bhs, 36, datasn, off)
            self._send(bhs, mv[off:off + n])
            off += n
            datasn += 1

    def test_unit_ready(self, tries: int = 5) -> None:
        for _ in range(tries):  # swallow the power-on unit attention
            try:
                self.command(bytes(6))
                return
            except CheckCondition:
                continue

    def read_capacity(self) -> tuple[int, int]:
        cdb = bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
        d = self.command(cdb, read_len=32)
        last_lba, bs = struct.unpack_from(">QI", d, 0)
        return bs, last_lba + 1

    def caching_page(self) -> dict[str, object]:
        cdb = bytes([0x1A, 0x08, 0x08, 0, 255, 0])  # MODE SENSE(6), DBD, page 8
        try:
            d = self.command(cdb, read_len=255)
        except CheckCondition as e:
            return {"error": str(e)}
        if len(d) < 4:
            return {"error": "short mode sense"}
        bdl = d[3]
        pg = d[4 + bdl:]
        if len(pg) < 3 or (pg[0] & 0x3F) != 0x08:
            return {"error": "no caching page"}
        return {"WCE": bool(pg[2] & 0x04), "RCD": bool(pg[2] & 0x01)}

    def read10(self, lba: int, blocks: int, nbytes: int, into: bytearray) -> None:
        cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
        self.command(cdb, read_len=nbytes, into=into)

    def write10(self, lba: int, blocks: int, data: bytes, fua: bool = False) -> None:
        cdb = struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, blocks, 0)
        self.command(cdb, write_data=data)


def open_session(url: str, isid_low: int | None = None) -> Session:
    host, port, iqn, lun = parse_url(url)
    s = Session(host, port, iqn, lun, isid_low=isid_low)
    s.login()
    return s


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def cmd_probe(args: argparse.Namespace) -> dict:
    s = open_session(args.url)
    try:
        s.test_unit_ready()
        bs, nblocks = s.read_capacity()
        cache = s.caching_page()
    finally:
        s.logout()
    keys = ["MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength",
            "ImmediateData", "InitialR2T", "MaxOutstandingR2T", "HeaderDigest", "DataDigest",
            "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel"]
    return {"negotiated": {k: s.negotiated.get(k) for k in keys},
            "target_answers": s.negotiated, "block_size": bs, "blocks": nblocks,
            "capacity_bytes": bs * nblocks, "caching": cache}


def cmd_bench(args: argparse.Namespace) -> dict:
    s = open_session(args.url)
    try:
        s.test_unit_ready()
        bs, nblocks = s.read_capacity()
        if args.size % bs:
            raise SystemExit(f"--size {args.size} is not a multiple of the block size {bs}")
        blocks = args.size // bs
        span = min(nblocks, args.span // bs if args.span else nblocks) // blocks
        rng = random.Random(args.seed)
        buf = bytearray(args.size)
        payload = bytes(rng.getrandbits(8) for _ in range(min(args.size, 4096))) * (
            args.size // min(args.size, 4096))
        lat: list[int] = []
        slot = 0
        pc = time.perf_counter_ns
        deadline = pc() + int(args.seconds * 1e9)
        max_ops = args.count or (1 << 62)
        t_start = pc()
        while len(lat) < max_ops:
            if args.random:
                lba = rng.randrange(span) * blocks
            else:
                lba = slot * blocks
                slot = (slot + 1) % span
            t0 = pc()
            if args.op == "read":
                s.read10(lba, blocks, args.size, buf)
            else:
                s.write10(lba, blocks, payload, fua=args.fua)
            t1 = pc()
            lat.append(t1 - t0)
            if t1 >= deadline:
                break
        elapsed = (pc() - t_start) / 1e9
    finally:
        s.logout()
    lat.sort()
    us = [x / 1000 for x in lat]
    n = len(us)
    return {"op": args.op, "size": args.size, "qd": 1, "random": args.random, "fua": args.fua,
            "ops": n, "seconds": elapsed, "ops_per_s": n / elapsed,
            "mb_per_s": n * args.size / elapsed / 1e6, "bytes": n * args.size,
            "lat_us": {"min": us[0], "p50": percentile(us, 0.5), "p90": percentile(us, 0.9),
                       "p99": percentile(us, 0.99), "p999": percentile(us, 0.999),
                       "max": us[-1], "mean": sum(us) / n}}


def cmd_hold(args: argparse.Namespace) -> dict:
    sessions = []
    t0 = time.monotonic()
    for i in range(args.sessions):
        sessions.append(open_session(args.url, isid_low=(os.getpid() + i) & 0xFFFF))
    login_s = time.monotonic() - t0
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(str(len(sessions)))
    sel = selectors.DefaultSelector()
    for s in sessions:
        s.sock.setblocking(False)
        sel.register(s.sock, selectors.EVENT_READ, s)
    lost = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
            s = key.data
            try:
                chunk = s.sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(s.sock)
                lost += 1
                continue
            s.rbuf += chunk
            s.sock.setblocking(True)
            try:
                while len(s.rbuf) >= 48:
                    dlen = int.from_bytes(s.rbuf[5:8], "big")
                    need = 48 + s.rbuf[4] * 4 + dlen + ((-dlen) & 3)
                    if len(s.rbuf) < need:
                        break
                    p = s.recv_pdu()
                    if p.opcode == OP_NOP_IN:
                        s._answer_nop(p)
            finally:
                s.sock.setblocking(False)
    for s in sessions:
        s.sock.setblocking(True)
        s.logout()
    return {"sessions": len(sessions), "login_seconds": login_s, "lost": lost}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("probe")
    p.add_argument("url")
    b = sub.add_parser("bench")
    b.add_argument("url")
    b.add_argument("--op", choices=["read", "write"], default="read")
    b.add_argument("--size", type=int, default=4096)
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("--count", type=int, default=0, help="stop after this many ops (0: time only)")
    b.add_argument("--random", action="store_true")
    b.add_argument("--fua", action="store_true", help="set FUA on writes")
    b.add_argument("--span", type=int, default=0, help="bytes of the LUN to use (0: all)")
    b.add_argument("--seed", type=int, default=1)
    h = sub.add_parser("hold")
    h.add_argument("url")
    h.add_argument("--sessions", type=int, default=64)
    h.add_argument("--seconds", type=float, default=20.0)
    h.add_argument("--ready-file", default="", help="write the session count here once all are logged in")
    args = ap.parse_args(argv)
    try:
        out = {"probe": cmd_probe, "bench": cmd_bench, "hold": cmd_hold}[args.mode](args)
    except (OSError, IscsiError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
