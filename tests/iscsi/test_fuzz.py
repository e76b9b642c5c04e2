"""Fuzzing the sans-I/O connection: mutated PDUs in, only protocol answers out.

Seeded (reproducible) structure-aware mutations from :mod:`.fuzzer`, plus a hypothesis test
that shrinks a failing PDU sequence. Invariants checked after every PDU fed:

- nothing but the protocol's own events comes out, and no exception escapes;
- every byte sent parses as whole target PDUs, none longer than the initiator's
  MaxRecvDataSegmentLength (8192 during login);
- state stays bounded: commands held, CmdSN-gap queue, bytes buffered by the reader;
- a rejected non-immediate PDU that carried CmdSN == ExpCmdSN consumes it (RFC 7143 6.3);
- a successful Logout Response is followed by the connection closing;
- at the end of each case a live connection still answers a ping and a numbered NOP-Out.
"""

from __future__ import annotations

import random
import struct
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gluster_iscsi.iscsi import events as ev
from gluster_iscsi.iscsi.connection import Connection
from gluster_iscsi.iscsi.pdu import _STAGE
from gluster_iscsi.iscsi.session import SessionTable
from gluster_iscsi.model.targets import AccessRule, Target, TargetRegistry
from gluster_iscsi.scsi.task import ScsiResult, Status

from . import initiator as I
from .fuzzer import TARGET, PduFuzzer, login_pairs

QUEUE_DEPTH = 16
ALLOWED_EVENTS = (ev.ExecuteTask, ev.TaskManagement, ev.LoginProgress, ev.LoginComplete,
                  ev.ReinstateSession, ev.CloseConnection)
TARGET_OPCODES = {0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3F}
NUMBERED = {0x00, 0x01, 0x02, 0x04, 0x06}  # initiator PDUs that carry a CmdSN
PING_ITT = 0x7FFFFF00
#: Cases per CI run (fixed seeds 0..N-1: a failure names its seed, rerun it alone).
LOGGED_IN_CASES = 3000
BEFORE_LOGIN_CASES = 20000


class Failure(AssertionError):
    pass


class Harness:
    """One Connection, driven like the daemon drives it, with every invariant checked."""

    def __init__(self, seed: int, table: SessionTable | None = None, *, chaos: bool = True) -> None:
        reg = TargetRegistry()
        t = Target(TARGET, 1, acl=[AccessRule(network="ALL")])
        reg.targets[t.name] = t
        self.table = table if table is not None else SessionTable()
        self.conn = Connection(reg, self.table, peer_address="127.0.0.1", queue_depth=QUEUE_DEPTH,
                               nop_interval=5.0, nop_timeout=10.0)
        self.seed = seed
        self.fuzz = PduFuzzer(seed)
        # The harness's own choices (hold a task, fire the timer) from their own generator.
        self.chaos = random.Random(seed ^ 0x5A5A5A5A) if chaos else None
        self.held: list = []  # tasks left executing for a while (Logout, TMF behind them)
        self.now = 0.0
        self.sent: list[bytes] = []  # what this case fed, to print on failure

    def fail(self, why: str) -> None:
        tail = "\n".join(p[:64].hex() + (f"...(+{len(p) - 64})" if len(p) > 64 else "")
                         for p in self.sent[-5:])
        raise Failure(f"{why}\nlast PDUs fed (hex, first 64 bytes):\n{tail}")

    def _events(self, events: list) -> None:
        conn = self.conn
        for e in events:
            if not isinstance(e, ALLOWED_EVENTS):
                self.fail(f"unexpected event {e!r}")
            if isinstance(e, ev.ExecuteTask):
                if self.chaos is not None and self.chaos.random() < 0.1 and len(self.held) < 4:
                    self.held.append(e.task)
                else:
                    self._complete(e.task)
            elif isinstance(e, ev.TaskManagement):
                conn.complete_tmf(e.itt, 0)
            elif isinstance(e, ev.ReinstateSession):
                self.table.remove(e.old)

    def _complete(self, task) -> None:
        data = bytes(min(task.expected_length, 1 << 20)) if task.read else None
        self.conn.complete_task(task, ScsiResult(Status.GOOD, data))

    def release_held(self) -> list[I.Rsp]:
        held, self.held = self.held, []
        for task in held:
            self._complete(task)
        return self._output(self.conn.hd, self.conn.dd, [])

    def feed(self, data: bytes) -> list[I.Rsp]:
        conn = self.conn
        self.sent.append(data)
        hd, dd, was_ffp = conn.hd, conn.dd, conn.full_feature
        s = conn.session
        exp_before = s.exp_cmdsn if s is not None else None
        self.now += 0.01
        try:
            events = conn.receive_data(data, now=self.now)
            if self.chaos is not None and self.chaos.random() < 0.02:
                self.now += 6.0
                events += conn.handle_timer(self.now)
        except Exception as exc:  # noqa: BLE001 - the point: nothing may escape
            self.fail(f"{type(exc).__name__} escaped receive_data: {exc}")
        rsps = self._output(hd, dd, events)
        self._check_cmdsn_consumed(data, was_ffp, exp_before, rsps)
        return rsps

    def _output(self, hd: bool, dd: bool, events: list) -> list[I.Rsp]:
        conn = self.conn
        self._events(events)
        if conn.hd != hd or conn.dd != dd:  # digests switched on inside this feed
            conn.data_to_send()
            return []
        try:
            rsps = I.parse(conn.data_to_send(), header_digest=hd, data_digest=dd)
        except Exception as exc:  # noqa: BLE001
            self.fail(f"target sent bytes that do not parse as PDUs: {exc!r}")
        for r in rsps:
            if r.opcode not in TARGET_OPCODES:
                self.fail(f"target sent opcode {r.opcode:#x}")
            limit = 8192 if r.opcode == 0x23 else conn.max_xmit
            if len(r.data) > limit:
                self.fail(f"opcode {r.opcode:#x} with {len(r.data)} data bytes, beyond the "
                          f"initiator's MaxRecvDataSegmentLength {limit}")
            if r.opcode == 0x26 and r.b2 == 0 and not conn.closed:
                self.fail("a successful Logout Response and the connection stays open")
        self._check_bounds()
        return rsps

    def _check_bounds(self) -> None:
        conn = self.conn
        if conn.closed:  # (what is left unread of a closed connection is dropped with it)
            return
        if len(conn.tasks) > 2 * QUEUE_DEPTH:
            self.fail(f"{len(conn.tasks)} commands held with a queue depth of {QUEUE_DEPTH}")
        if len(conn._pending) > QUEUE_DEPTH:
            self.fail(f"{len(conn._pending)} PDUs wait for a CmdSN gap, window {QUEUE_DEPTH}")
        limit = _STAGE + conn.reader.max_recv_dsl + 48 + 1024 + 8
        if conn.reader.buffered > limit:
            self.fail(f"reader buffers {conn.reader.buffered} bytes (limit {limit})")

    def _check_cmdsn_consumed(self, data: bytes, was_ffp: bool, exp_before: int | None,
                              rsps: list[I.Rsp]) -> None:
        conn = self.conn
        if not was_ffp or exp_before is None or conn.closed or conn.session is None:
            return
        if len(data) < 48 or data[4] or data[0] & 0x40 or data[0] & 0x3F not in NUMBERED:
            return
        dsl = int.from_bytes(data[5:8], "big")
        if len(data) != 48 + dsl + (-dsl % 4):  # one whole PDU only
            return
        itt, cmdsn = struct.unpack_from(">I", data, 16)[0], struct.unpack_from(">I", data, 24)[0]
        if cmdsn != exp_before:
            return
        rejected = any(r.opcode == 0x3F and bytes(r.data)[16:20] == data[16:20] for r in rsps)
        if rejected and conn.session.exp_cmdsn == exp_before:
            reason = next(r.b2 for r in rsps if r.opcode == 0x3F)
            self.fail(f"Reject (reason {reason:#04x}) of opcode {data[0] & 0x3F:#x} itt={itt:#x} "
                      f"did not consume CmdSN {cmdsn}: every later command waits behind it")

    def login(self) -> None:
        rsps = self.feed(I.login(login_pairs()))
        assert rsps and rsps[0].status_class == 0, "the plain login was refused"
        assert self.conn.full_feature

    def still_answers(self) -> None:
        """A live connection answers an immediate ping and a numbered NOP-Out at ExpCmdSN."""
        rsps = self.release_held()
        conn = self.conn
        if conn.closed or conn.logging_out:
            return
        if not conn.full_feature:
            return
        rd = conn.reader
        if rd.buffered or rd._skip or rd.awaiting():  # mid-PDU after a lying length: no check
            return
        rsps = self.feed(I.nop_out(itt=PING_ITT, cmdsn=conn.session.exp_cmdsn, data=b"live"))
        if not any(r.opcode == 0x20 and r.itt == PING_ITT for r in rsps) and not conn.closed:
            self.fail("an immediate NOP-Out ping got no NOP-In")
        if conn.closed:
            return
        exp = conn.session.exp_cmdsn
        rsps = self.feed(I.nop_out(itt=PING_ITT + 1, cmdsn=exp, immediate=False))
        rsps += self.release_held()
        if not conn.closed and not any(r.opcode == 0x20 and r.itt == PING_ITT + 1 for r in rsps):
            self.fail(f"a NOP-Out with CmdSN {exp} = ExpCmdSN got no answer: the window is stuck")


class Findings:
    """Every broken invariant of a run, by kind (a case stops at its first), so one run
    reports all that it found instead of the first."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.example: dict[str, str] = {}
        self.fed = 0

    def case(self, h: Harness, body) -> None:  # type: ignore[no-untyped-def]
        try:
            body(h)
            h.still_answers()
        except Failure as f:
            text = str(f)
            kind = text.split("\n", 1)[0]
            kind = kind.split(" itt=")[0].split(" (limit")[0]
            for digit in "0123456789":
                kind = kind.replace(digit, "#")
            self.kinds[kind] += 1
            self.example.setdefault(kind, f"case seed {h.seed}: {text}")
        self.fed += len(h.sent)

    def check(self) -> None:
        assert not self.kinds, "\n\n".join(
            f"[{n}x] {self.example[k]}" for k, n in self.kinds.most_common())


def _after_login(h: Harness, pdus: int) -> None:
    h.login()
    cmdsn = 1
    for _ in range(pdus):
        if h.conn.closed:
            break
        r = h.fuzz.rng.random()
        cmdsn = h.conn.session.exp_cmdsn if r < 0.6 else cmdsn + (1 if r < 0.9 else 40)
        h.feed(h.fuzz.stream(cmdsn & 0xFFFFFFFF))


def _before_login(h: Harness) -> None:
    r = h.fuzz.rng
    first = h.fuzz.login()
    h.feed(h.fuzz.mutate(first) if r.random() < 0.7 else first)
    for _ in range(r.randrange(1, 6)):
        if h.conn.closed:
            break
        choice = r.random()
        p = (h.fuzz.login() if choice < 0.4 else h.fuzz.junk() if choice < 0.5
             else h.fuzz.stream(1))
        h.feed(h.fuzz.mutate(p) if r.random() < 0.5 else p)


def test_mutated_pdus_after_login_keep_every_invariant():
    found = Findings()
    for seed in range(LOGGED_IN_CASES):
        found.case(Harness(seed), lambda h: _after_login(h, 60))
    assert found.fed > 20 * LOGGED_IN_CASES
    found.check()


def test_mutated_logins_and_pdus_before_login_keep_every_invariant():
    found = Findings()
    for seed in range(BEFORE_LOGIN_CASES):
        found.case(Harness(1_000_000 + seed), _before_login)
    assert found.fed > BEFORE_LOGIN_CASES
    found.check()


def test_a_mutated_stream_fed_byte_by_byte_gets_the_answers_it_gets_whole():
    """The same mutated PDU stream fed whole and one byte at a time gives the same answers."""
    for seed in range(3):
        outs = []
        for split in (False, True):
            h = Harness(seed, chaos=False)
            h.login()
            fuzz = PduFuzzer(1000 + seed)
            stream = b"".join(fuzz.stream(h.conn.session.exp_cmdsn + i) for i in range(30))
            got: list[tuple[int, int, int]] = []
            if split:
                for i in range(len(stream)):
                    got += [(r.opcode, r.itt, len(r.data)) for r in h.feed(stream[i : i + 1])]
            else:
                got += [(r.opcode, r.itt, len(r.data)) for r in h.feed(stream)]
            outs.append(got)
        # (sorted: fed whole, the commands complete after every PDU is in, so a Reject may
        # come before Data-In that it follows when fed byte by byte)
        assert sorted(outs[0]) == sorted(outs[1]), f"seed {seed}"


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 3)), min_size=1, max_size=25))
def test_hypothesis_pdu_sequences_keep_every_invariant(steps):
    """Each step is (seed, how): 0 a valid PDU, 1-2 mutated, 3 garbage. Shrinks to a minimal
    sequence when an invariant breaks."""
    h = Harness(0)
    h.login()
    for seed, how in steps:
        if h.conn.closed:
            break
        f = PduFuzzer(seed)
        exp = h.conn.session.exp_cmdsn
        p = f.valid(exp) if how == 0 else f.mutate(f.valid(exp)) if how < 3 else f.junk()
        h.feed(p)
    h.still_answers()
