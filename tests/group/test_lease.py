"""The per-LUN lease decisions (group/lease.py), with a model of the lock and the record."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gluster_iscsi.group.lease import Do, Lease, LeaseRecord, Role

BEAT, LEASE = 1.0, 5.0


def owner_of(lease: Lease, now: float, seen: int = 0) -> LeaseRecord:
    """Drive a standby lease through a take at ``now`` (the lock was got)."""
    assert lease.observed(None, now) in (Do.TRY_LOCK, Do.NOTHING)
    assert lease.lock_result(True, now) is Do.READ
    rec = lease.take(None, seen)
    lease.took(now, rec, now)
    return rec


def test_preferred_gateway_tries_at_once_others_wait_a_lease():
    a = Lease("a", preferred="a")
    b = Lease("b", preferred="a")
    assert a.next(0.0) is Do.READ and a.observed(None, 0.0) is Do.TRY_LOCK
    assert b.next(0.0) is Do.READ and b.observed(None, 0.0) is Do.NOTHING
    # nothing ever written: after lease_seconds of that, anyone tries
    assert b.observed(None, LEASE - 0.01) is Do.NOTHING
    assert b.observed(None, LEASE) is Do.TRY_LOCK


def test_take_bumps_the_epoch_read_under_the_lock_and_sets_the_deadline():
    a = Lease("a", preferred="a")
    a.observed(None, 0.0)
    assert a.lock_result(True, 0.0) is Do.READ
    assert a.role is Role.TAKING
    rec = a.take(LeaseRecord("b", epoch=7, beat=40), seen=3)
    assert (rec.owner, rec.epoch, rec.beat, rec.seen) == ("a", 8, 41, 3)
    assert not a.may_issue(0.5)  # not before the record is written
    a.took(0.5, rec, 0.6)
    assert a.role is Role.OWNER and a.issue_deadline == 0.5 + LEASE
    assert a.may_issue(0.6) and not a.may_issue(0.5 + LEASE)


def test_owner_beats_every_beat_and_fences_itself_at_the_deadline():
    a = Lease("a", preferred="a")
    rec = owner_of(a, 0.0)
    assert a.next(0.5) is Do.NOTHING
    assert a.next(1.0) is Do.BEAT
    new = a.owner_read(rec, seen=0)
    assert new is not None and new.beat == rec.beat + 1 and new.epoch == rec.epoch
    a.beat_ok(1.0, new, 1.2)
    assert a.issue_deadline == 1.0 + LEASE
    # the volume stops answering: beats fail, the deadline stands, then it fences
    for t in (2.0, 3.0, 4.0, 5.0):
        assert a.next(t) is Do.BEAT
        a.beat_failed(t + 0.1)
        assert a.may_issue(t + 0.1)
    assert a.next(6.0) is Do.BEAT
    assert a.role is Role.FENCED and not a.may_issue(6.0)
    # a heartbeat gets through and the record still has our epoch: owner again
    back = a.owner_read(new, seen=0)
    assert back is not None
    a.beat_ok(6.5, back, 6.6)
    assert a.role is Role.OWNER and a.may_issue(6.7)


def test_a_heartbeat_slower_than_the_lease_renews_nothing():
    a = Lease("a", preferred="a")
    rec = owner_of(a, 0.0)
    new = a.owner_read(rec, 0)
    assert new is not None
    a.beat_ok(1.0, new, 1.0 + LEASE + 0.1)  # started at 1.0, answered after its own lease
    assert a.role is Role.FENCED and not a.may_issue(1.0 + LEASE + 0.1)


def test_owner_that_finds_another_epoch_lost_the_lun():
    a = Lease("a", preferred="a")
    rec = owner_of(a, 0.0)
    taken = LeaseRecord("b", rec.epoch + 1, rec.beat + 1)
    assert a.owner_read(taken, 0) is None
    assert a.role is Role.STANDBY and not a.may_issue(0.1)
    a.released(0.2)
    assert a.role is Role.STANDBY


def test_standby_tries_the_lock_every_beat_the_lock_decides():
    b = Lease("b", preferred="a")
    assert b.observed(LeaseRecord("a", 3, 10), 0.0) is Do.TRY_LOCK
    assert b.lock_result(False, 0.0) is Do.NOTHING  # a holds it
    assert b.role is Role.STANDBY
    assert b.observed(LeaseRecord("a", 3, 11), 1.0) is Do.TRY_LOCK
    assert b.lock_result(True, 1.0) is Do.READ  # the bricks freed a killed owner's lock
    assert b.role is Role.TAKING


def test_a_move_to_another_gateway_is_left_alone_until_it_goes_stale():
    c = Lease("c", preferred="c")
    moving = LeaseRecord("a", 3, 10, move_to="b")
    assert c.observed(moving, 0.0) is Do.NOTHING
    assert c.observed(moving, LEASE - 0.1) is Do.NOTHING
    assert c.observed(moving, LEASE) is Do.TRY_LOCK  # b never took it


def test_preferred_standby_tries_every_beat_and_a_released_lun_is_taken_at_once():
    a = Lease("a", preferred="a")
    assert a.observed(LeaseRecord("b", 2, 5), 0.0) is Do.TRY_LOCK
    c = Lease("c", preferred="a")
    assert c.observed(LeaseRecord(None, 2, 6), 0.0) is Do.TRY_LOCK
    # the record names this gateway as owner (it restarted): reclaim
    assert c.observed(LeaseRecord("c", 2, 7), 1.0) is Do.TRY_LOCK


def test_planned_move_announces_drains_releases_and_the_target_takes():
    a = Lease("a", preferred="a")
    b = Lease("b", preferred="a")
    rec = owner_of(a, 0.0)
    assert not a.move_out("a")
    assert a.move_out("b") and a.role is Role.MOVING_OUT
    a.drained()  # nothing announced yet: no release before the record names the target
    assert a.next(0.1) is Do.BEAT
    new = a.owner_read(rec, 0)
    assert new is not None and new.move_to == "b"
    a.beat_ok(0.1, new, 0.1)
    assert a.may_issue(0.2)  # in-flight commands still run while it drains
    # b and c see the move; only b tries
    assert b.observed(new, 0.2) is Do.TRY_LOCK
    assert Lease("c", preferred="c").observed(new, 0.2) is Do.NOTHING
    a.drained()
    assert a.next(0.3) is Do.RELEASE
    a.released(0.3)
    assert a.role is Role.STANDBY and not a.may_issue(0.3)
    # a, the preferred gateway, leaves the LUN to b for a lease
    assert a.observed(new, 1.3) is Do.NOTHING
    assert b.lock_result(True, 0.4) is Do.READ
    took = b.take(new, 0)
    assert took.epoch == new.epoch + 1 and took.move_to is None
    b.took(0.4, took, 0.4)
    assert b.role is Role.OWNER


def test_take_failure_releases():
    b = Lease("b")
    b.observed(None, 0.0)
    b.lock_result(True, 0.0)
    assert b.take_failed(0.1) is Do.RELEASE
    assert b.role is Role.STANDBY and not b.may_issue(0.1)


def test_beat_must_be_shorter_than_lease():
    with pytest.raises(ValueError, match="below lease_seconds"):
        Lease("a", beat_seconds=5, lease_seconds=5)


def test_record_from_dict_is_tolerant():
    assert LeaseRecord.from_dict(None) is None
    assert LeaseRecord.from_dict({"owner": "", "epoch": -1, "beat": True, "seen": "x"}) == LeaseRecord()
    rec = LeaseRecord("a", 2, 3, 4, "b")
    assert LeaseRecord.from_dict(rec.to_dict()) == rec


# ------------------------------------------------------------------- the model: lock + record
class World:
    """A lock with one holder, the record, and the bricks' view of gateways' connections.

    A killed gateway's lock is freed at once; a partitioned one's only ``brick_timeout``
    after the partition (what docs/HA.md requires: longer than ``lease_seconds``)."""

    def __init__(self, names: list[str], rng: random.Random, brick_timeout: float) -> None:
        self.leases = {n: Lease(n, preferred=names[0], beat_seconds=BEAT, lease_seconds=LEASE)
                       for n in names}
        self.rng = rng
        self.now = 0.0
        self.holder: str | None = None
        self.record: LeaseRecord | None = None
        self.brick_timeout = brick_timeout
        self.dead: set[str] = set()
        self.cut: dict[str, float] = {}  # partitioned since
        self.owned_epochs: dict[int, str] = {}

    def reachable(self, n: str) -> bool:
        return n not in self.cut

    def bricks(self) -> None:
        if self.holder in self.cut and self.now >= self.cut[self.holder] + self.brick_timeout:
            self.holder = None  # the bricks dropped the silent client and its lock
        if self.holder in self.dead:
            self.holder = None

    def step(self, n: str) -> None:
        lease = self.leases[n]
        now = self.now
        ok = self.reachable(n)
        do = lease.next(now)
        if do is Do.BEAT:
            start = now
            if not ok:
                lease.beat_failed(now)
                return
            new = lease.owner_read(self.record, seen=0, holding=self.holder == n)
            if new is None:
                self.release(n)
                return
            if self.rng.random() < 0.1:  # the write fails
                lease.beat_failed(now)
                return
            assert self.holder == n, "an owner writes without the lock"
            self.record = new
            lease.beat_ok(start, new, now + self.rng.choice((0.0, 0.2, LEASE + 1)))
        elif do is Do.RELEASE:
            self.release(n)
        elif do is Do.READ:
            if not ok:
                return
            if lease.observed(self.record, now) is Do.TRY_LOCK:
                got = self.holder is None
                if got:
                    self.holder = n
                if lease.lock_result(got, now) is Do.READ:
                    if self.rng.random() < 0.1 or not self.reachable(n):
                        lease.take_failed(now)
                        self.release(n)
                        return
                    rec = lease.take(self.record, 0)
                    start = now
                    self.record = rec
                    lease.took(start, rec, now)
                    assert self.owned_epochs.setdefault(rec.epoch, n) == n, "two owners of one epoch"
        if lease.role is Role.OWNER and self.rng.random() < 0.05:
            others = [m for m in self.leases if m != n]
            lease.move_out(self.rng.choice(others))
        if lease.role is Role.MOVING_OUT and self.rng.random() < 0.5:
            lease.drained()

    def release(self, n: str) -> None:
        if self.holder == n and self.reachable(n):
            self.holder = None
        self.leases[n].released(self.now)

    def check(self) -> None:
        issuing = [n for n, lease in self.leases.items()
                   if n not in self.dead and lease.may_issue(self.now)]
        assert len(issuing) <= 1, f"two gateways issue at {self.now}: {issuing}"
        for n in issuing:
            lease = self.leases[n]
            assert lease.last_good_start is not None
            assert lease.issue_deadline <= lease.last_good_start + LEASE
            assert self.holder == n or n in self.cut, "issuing without the lock"


def run_world(seed: int, steps: int, names: int = 3) -> World:
    rng = random.Random(seed)
    w = World([f"g{i}" for i in range(names)], rng, brick_timeout=LEASE + rng.choice((0.5, 3, 15)))
    for _ in range(steps):
        w.now += rng.choice((0.0, 0.1, 0.5, 1.0, 2.5))
        w.bricks()
        r = rng.random()
        live = [n for n in w.leases if n not in w.dead]
        if r < 0.02 and live:
            victim = rng.choice(live)
            w.dead.add(victim)  # SIGKILL: its lock goes with its connection
        elif r < 0.04 and live:
            w.cut.setdefault(rng.choice(live), w.now)
        elif r < 0.06 and w.cut:
            del w.cut[rng.choice(sorted(w.cut))]  # its next beat finds out what it lost
        elif r < 0.07 and w.dead:
            back = rng.choice(sorted(w.dead))
            w.dead.discard(back)
            w.leases[back] = Lease(back, preferred="g0", beat_seconds=BEAT, lease_seconds=LEASE)
        elif live:
            w.step(rng.choice(live))
        w.check()
    return w


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=2, max_value=4))
def test_never_two_issuers_nor_two_owners_of_one_epoch(seed: int, names: int):
    run_world(seed, 400, names)  # World.check asserts after every step


def test_the_model_does_fail_over_and_move():
    """The interleavings are not vacuous: the LUN changes hands many times."""
    epochs = 0
    for seed in range(20):
        epochs += len(run_world(seed, 600).owned_epochs)
    assert epochs > 60


def test_healed_owner_that_lost_its_lock_meets_the_new_epoch():
    a = Lease("a", preferred="a")
    rec = owner_of(a, 0.0)
    # partitioned for longer than the lease: fenced by its own clock
    assert a.next(LEASE + 0.1) is Do.BEAT and a.role is Role.FENCED
    assert not a.may_issue(LEASE + 0.1)
    # b took over meanwhile (after the bricks dropped a); a's heartbeat sees it
    assert a.owner_read(LeaseRecord("b", rec.epoch + 1, rec.beat + 1), 0) is None
    assert a.role is Role.STANDBY and a.issue_deadline == -math.inf


def test_a_take_waits_a_lease_only_after_a_fresh_record_of_another_owner():
    live = LeaseRecord("b", epoch=3, beat=9)
    # fresh: b's beat changed under this gateway's eyes a moment ago
    a = Lease("a")
    a.next(0.0)
    a.observed(live, 0.0)
    a.lock_result(True, 1.0)
    rec = a.take(live, 0, 1.0)
    a.took(1.0, rec, 1.1)
    assert a.role is Role.FENCED and not a.may_issue(1.1)
    a.next(2.0)
    new = a.owner_read(rec, 0)
    assert new is not None
    a.beat_ok(5.9, new, 5.95)
    assert a.role is Role.FENCED  # before 1.0 + LEASE
    a.next(6.0)
    a.beat_ok(6.0, new, 6.05)
    assert a.role is Role.OWNER and a.may_issue(6.05)
    # stale: the same record unchanged for a lease
    c = Lease("c")
    c.next(0.0)
    c.observed(live, 0.0)
    c.next(LEASE)
    assert c.observed(live, LEASE) is Do.TRY_LOCK
    c.lock_result(True, LEASE)
    rec = c.take(live, 0, LEASE)
    c.took(LEASE, rec, LEASE)
    assert c.role is Role.OWNER and c.may_issue(LEASE)
    # released (owner null): at once
    d = Lease("d")
    d.next(0.0)
    gone = LeaseRecord(None, epoch=3, beat=10)
    d.observed(gone, 0.0)
    d.lock_result(True, 0.0)
    rec = d.take(gone, 0, 0.0)
    d.took(0.0, rec, 0.0)
    assert d.role is Role.OWNER and d.may_issue(0.0)
