"""The per-LUN lease of a gateway group, as pure decisions (docs/HA.md, decision 3).

One :class:`Lease` per LUN per gateway. It does no I/O and reads no clock: the coordinator
(``server/group.py``) asks it what to do next (:meth:`Lease.next`), does that against the
group directory on its worker thread, and reports what came back, with the time.

The lease is a Gluster POSIX lock on byte 0 of the LUN's lease file plus the lease record
(:class:`LeaseRecord`: owner, epoch, beat, seen, move_to) that only the lock holder writes:

- **OWNER**: holds the lock; every ``beat_seconds`` it reads the record (still its epoch?)
  and writes it back with ``beat + 1`` (:meth:`Lease.owner_read`). Its *issue deadline* is
  the start of its last successful heartbeat + ``lease_seconds``; the command runner issues
  no store call past it.
- **FENCED**: an owner past its issue deadline (:meth:`Lease.tick`): nothing may be issued.
  A later heartbeat that finds its epoch still in the record makes it OWNER again; one that
  finds another epoch means the LUN was taken: it releases and becomes STANDBY.
- **MOVING_OUT**: a planned move (:meth:`Lease.move_out`): the owner keeps beating with
  ``move_to`` set (every gateway then reports the LUN transitioning), waits for its in-flight
  commands to end (:meth:`Lease.drained`), then releases the lock for the target.
- **STANDBY**: reads the record every beat (:meth:`Lease.observed`) and tries the lock
  (non-blocking) every beat, except while a planned move hands the LUN to another gateway,
  or, before anyone ever owned the LUN, while the LUN's preferred gateway may still come;
  either holds only until the record has not changed for ``lease_seconds``.
- **TAKING**: got the lock; re-reads the record under it and writes the next epoch
  (:meth:`Lease.take`), then OWNER (:meth:`Lease.took`) or, on any failure, releases.

Why two owners of one epoch cannot happen: only the lock holder writes the record, a new
owner derives its epoch from the record it read while holding the lock, and the lock has
one holder at a time. Why an old owner has stopped issuing before a new one starts: the
new one needs the lock, which the bricks free only once the old owner's connection is gone
(killed: at once; partitioned: after the brick's timeout, longer than ``lease_seconds``),
and the old owner's deadline is at most ``lease_seconds`` after it last reached the volume.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any


class Role(enum.Enum):
    OWNER = "owner"
    FENCED = "fenced"
    STANDBY = "standby"
    MOVING_OUT = "moving-out"
    TAKING = "taking"


class Do(enum.Enum):
    """What the coordinator should do next for this LUN."""

    NOTHING = "nothing"
    BEAT = "beat"          # owner: read the record, then write owner_read()'s record
    READ = "read"          # standby: read the record, report it to observed()
    TRY_LOCK = "try_lock"  # standby: non-blocking try of byte 0, report to lock_result()
    RELEASE = "release"    # give byte 0 back, report released()


#: Roles in which this gateway holds (or believes it holds) the lock.
HOLDING = (Role.OWNER, Role.FENCED, Role.MOVING_OUT, Role.TAKING)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The lease record of one LUN (written only by the holder of its byte-0 lock)."""

    owner: str | None = None
    epoch: int = 0
    beat: int = 0
    #: the state record version the owner has applied
    seen: int = 0
    #: a planned move under way: the gateway the owner hands the LUN to
    move_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "epoch": self.epoch, "beat": self.beat,
                "seen": self.seen, "move_to": self.move_to}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LeaseRecord | None:
        """A record as read; None for nothing (or nothing usable) there."""
        if not isinstance(data, dict):
            return None

        def num(key: str) -> int:
            v = data.get(key, 0)
            return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

        def name(key: str) -> str | None:
            v = data.get(key)
            return v if isinstance(v, str) and v else None

        return cls(name("owner"), num("epoch"), num("beat"), num("seen"), name("move_to"))


class Lease:
    """One LUN's lease as seen by gateway ``me`` (see the module's docstring)."""

    def __init__(self, me: str, *, preferred: str | None = None, beat_seconds: float = 1.0,
                 lease_seconds: float = 5.0) -> None:
        if not 0 < beat_seconds < lease_seconds:
            raise ValueError(f"beat_seconds ({beat_seconds}) must be above 0 and below "
                             f"lease_seconds ({lease_seconds})")
        self.me = me
        self.preferred = preferred
        self.beat_seconds = beat_seconds
        self.lease_seconds = lease_seconds
        self.role = Role.STANDBY
        #: the epoch this gateway owns (meaningful while it holds the lock)
        self.epoch = 0
        #: the last record read or written
        self.record: LeaseRecord | None = None
        #: no store call may be issued at or after this time (monotonic seconds)
        self.issue_deadline = -math.inf
        #: the start of the last successful heartbeat (or take), None before any
        self.last_good_start: float | None = None
        #: a planned move out: the gateway the LUN goes to
        self.move_to: str | None = None
        self._drained = False
        self._next_at = -math.inf
        self._started = -math.inf  # when the step next() last asked for began
        # standby: the heartbeat last seen in the record, and since when it has not changed
        self._seen_key: tuple[Any, ...] | None = None
        self._seen_since = 0.0
        # after a move out: leave the LUN to its target until then
        self._yield_to: str | None = None
        self._yield_until = -math.inf
        #: after a take from a live-looking owner: nothing may be issued before this time
        #: (that owner may still issue until its own deadline, see :meth:`take`)
        self.wait_until = -math.inf

    # -- what now ---------------------------------------------------------------------------

    def may_issue(self, now: float) -> bool:
        """Whether a store call of this LUN may be issued at ``now``."""
        return (self.role in (Role.OWNER, Role.MOVING_OUT) and self.wait_until <= now
                and now < self.issue_deadline)

    def tick(self, now: float) -> bool:
        """Fence an owner whose deadline has passed; True when the role changed."""
        if self.role in (Role.OWNER, Role.MOVING_OUT) and (now >= self.issue_deadline
                                                            or now < self.wait_until):
            self.role = Role.FENCED
            return True
        return False

    def next(self, now: float) -> Do:
        """What to do at ``now`` (the coordinator calls this every tick; one step at a time)."""
        self.tick(now)
        if self.role is Role.MOVING_OUT and self._drained:
            return Do.RELEASE
        if self.role is Role.TAKING or now < self._next_at:
            return Do.NOTHING
        self._started = now
        if self.role in (Role.OWNER, Role.FENCED, Role.MOVING_OUT):
            return Do.BEAT
        return Do.READ

    @property
    def releasing(self) -> bool:
        """A move out drained: the lock goes back next, nothing may be issued any more."""
        return self.role is Role.MOVING_OUT and self._drained

    def due(self, now: float) -> float:
        """Seconds until :meth:`next` may have something to do (for the coordinator's sleep)."""
        return max(0.0, self._next_at - now)

    # -- owner: heartbeats --------------------------------------------------------------------

    def owner_read(self, record: LeaseRecord | None, seen: int, *,
                   holding: bool = True) -> LeaseRecord | None:
        """The record read at the start of a heartbeat: the record to write now (the beat
        goes on), or None when the LUN was taken by another epoch, or the lock is no longer
        held (the bricks dropped this client: a reconnect does not bring locks back), so
        whoever takes it next finds the lock free (release, :meth:`lost`)."""
        if (not holding or record is None or record.owner != self.me
                or record.epoch != self.epoch):
            self.lost()
            return None
        new = LeaseRecord(self.me, self.epoch, record.beat + 1, seen,
                          self.move_to if self.role is Role.MOVING_OUT else None)
        return new

    def beat_ok(self, start: float, written: LeaseRecord, now: float) -> None:
        """The heartbeat that started at ``start`` wrote ``written``."""
        if self.role not in (Role.OWNER, Role.FENCED, Role.MOVING_OUT):
            return
        self.record = written
        self.last_good_start = start
        self.issue_deadline = start + self.lease_seconds
        if self.role is Role.FENCED and now >= self.wait_until:
            self.role = Role.MOVING_OUT if self.move_to is not None else Role.OWNER
        self.tick(now)  # a heartbeat that took longer than the lease renews nothing
        self._next_at = start + self.beat_seconds

    def beat_failed(self, now: float) -> None:
        """A heartbeat's read or write failed: try again at the next beat; the deadline stands."""
        self._next_at = self._started + self.beat_seconds
        self.tick(now)

    def lost(self) -> None:
        """The record carries another epoch: this gateway no longer owns the LUN. It stops
        issuing at once and must release its (stale) lock: :meth:`next` is STANDBY from now,
        the coordinator releases."""
        self.role = Role.STANDBY
        self.issue_deadline = -math.inf
        self.move_to = None
        self._drained = False
        self._next_at = -math.inf

    # -- owner: planned moves ----------------------------------------------------------------

    def move_out(self, to: str) -> bool:
        """Start handing the LUN to gateway ``to``; False if this gateway does not own it."""
        if self.role not in (Role.OWNER, Role.FENCED, Role.MOVING_OUT) or to == self.me:
            return False
        self.move_to = to
        self._drained = False
        if self.role is Role.OWNER:
            self.role = Role.MOVING_OUT
        self._next_at = -math.inf  # announce it with the next tick
        return True

    def drained(self) -> None:
        """The LUN's in-flight commands ended, and the record naming the target is written:
        :meth:`next` says RELEASE."""
        if self.role is Role.MOVING_OUT and self.record is not None and self.record.move_to:
            self._drained = True

    def released(self, now: float) -> None:
        """The lock was given back (a move, a stop, or after :meth:`lost`)."""
        if self.move_to is not None:
            self._yield_to = self.move_to
            self._yield_until = now + self.lease_seconds
        self.role = Role.STANDBY
        self.issue_deadline = -math.inf
        self.move_to = None
        self._drained = False
        self._next_at = now + self.beat_seconds

    # -- standby: watching and taking ---------------------------------------------------------

    def observed(self, record: LeaseRecord | None, now: float) -> Do:
        """A standby read the record: TRY_LOCK or NOTHING. ``now``: when the read returned
        (a record dated from before its read could make a live owner look stale)."""
        if self.role is not Role.STANDBY:
            return Do.NOTHING
        self.record = record
        self._next_at = self._started + self.beat_seconds
        key = None if record is None else (record.owner, record.epoch, record.beat, record.move_to)
        if key != self._seen_key:
            self._seen_key = key
            self._seen_since = now
        return Do.TRY_LOCK if self._should_try(record, now) else Do.NOTHING

    def _should_try(self, record: LeaseRecord | None, now: float) -> bool:
        me = self.me
        if now < self._yield_until and self._yield_to not in (None, me):
            # we handed it over: leave it to the target unless that target never takes it
            return False
        stale = now - self._seen_since >= self.lease_seconds
        if stale:
            return True
        if record is None:  # never owned: the preferred gateway (or anyone, if none) first
            return self.preferred in (None, me)
        if record.move_to is not None:
            return record.move_to == me
        # Owned, or released on a planned stop: try every beat. The lock is the fence (a live
        # owner holds it; the bricks free it the moment a killed owner's connection goes), so
        # a try costs one call and a SIGKILL costs about one beat, not a lease.
        return True

    def lock_result(self, got: bool, now: float) -> Do:
        """The try of byte 0: READ (the record again, under the lock) or NOTHING."""
        if self.role is not Role.STANDBY:
            return Do.NOTHING
        if not got:
            return Do.NOTHING
        self.role = Role.TAKING
        return Do.READ

    def take(self, record: LeaseRecord | None, seen: int,
             now: float | None = None) -> LeaseRecord:
        """The record read while holding the lock (the read ended at ``now``): the record
        that makes this gateway the owner (the next epoch). Write it, then :meth:`took` (or
        :meth:`take_failed`).

        A record that names another owner whose heartbeat was fresh (it changed within
        ``lease_seconds`` as this gateway saw it, or since its last read) means that owner
        may be alive and issuing until its own deadline, at most ``lease_seconds`` after
        this read: its lock can vanish without it dying (every brick restarted). Nothing is
        issued before ``now + lease_seconds`` then (FENCED until a beat past it). A record
        with no owner (a planned stop or move handed it over) or a stale heartbeat is taken
        at once. ``now`` None (no clock known): taken at once."""
        assert self.role is Role.TAKING
        self.wait_until = -math.inf
        if (now is not None and record is not None and record.owner is not None
                and record.owner != self.me):
            key = (record.owner, record.epoch, record.beat, record.move_to)
            if key != self._seen_key or self.heard_within(now):
                self.wait_until = now + self.lease_seconds
        epoch = (record.epoch if record is not None else 0) + 1
        beat = record.beat + 1 if record is not None else 1
        self.epoch = epoch
        return LeaseRecord(self.me, epoch, beat, seen, None)

    def took(self, start: float, written: LeaseRecord, now: float) -> None:
        """The record written by :meth:`take` is on the volume (the write started at ``start``)."""
        assert self.role is Role.TAKING
        self.role = Role.OWNER
        self.record = written
        self.last_good_start = start
        self.issue_deadline = start + self.lease_seconds
        self._yield_to = None
        self._next_at = start + self.beat_seconds
        self.tick(now)

    def take_failed(self, now: float) -> Do:
        """Reading or writing under the lock failed: give the lock back."""
        self.role = Role.STANDBY
        self.issue_deadline = -math.inf
        self._next_at = now + self.beat_seconds
        return Do.RELEASE

    # -- views --------------------------------------------------------------------------------

    def with_seen(self, seen: int) -> LeaseRecord | None:
        """The last written record with another ``seen`` (for status views)."""
        return None if self.record is None else replace(self.record, seen=seen)

    def heard_within(self, now: float) -> bool:
        """A standby: the heartbeat in the record moved less than ``lease_seconds`` ago."""
        return self._seen_key is not None and now - self._seen_since < self.lease_seconds

    def silent_for(self, now: float) -> float:
        """A standby: seconds since the record last changed (0 before the first read)."""
        return now - self._seen_since if self._seen_key is not None else 0.0

    def owner_name(self) -> str | None:
        """Who owns the LUN as far as this gateway knows."""
        if self.role in (Role.OWNER, Role.MOVING_OUT, Role.FENCED):
            return self.me
        return self.record.owner if self.record is not None else None
