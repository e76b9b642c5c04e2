"""The gateway group's coordinator on one gateway (docs/HA.md, decisions 1-4).

One :class:`GroupMember` per daemon in a group. Its asyncio task beats every
``beat_seconds``: it publishes ``gateways/<name>`` (number, version, beat), reads every other
gateway's record, and for every attached LU asks the LU's :class:`~..group.lease.Lease` what
to do (heartbeat as owner, watch and take over as standby, hand over on a move), polls the
LU's state record and pushes the group's ALUA table into the LU (``lu.alua.set_groups``: the
owner's target port group active/optimized, live non-owners standby, fenced or silent
gateways unavailable, both ends of a move transitioning).

Every call to the group directory (the ``SharedDir``: blocking) runs on one worker thread of
its own, never on the event loop (and those of LU-wide state changes on a second one, so
that they never delay a heartbeat). A call that hangs (a volume that stops answering) stalls
the beats, not the sessions, and not the fencing: the issue deadline lives in the LU's
runner state (``LuState.issue_deadline``) and the command runner compares it with its clock
before every store call, and a timer on the loop (:meth:`GroupMember._watch`) reports the
fenced LU unavailable once the deadline passed, whatever the worker is doing.

LU-wide SCSI state (decision 4) goes through :meth:`GroupMember.shared_update` and
:meth:`GroupMember.shared_refresh`, which the command runner calls on a worker thread for
``scsi.io.SharedUpdate``/``SharedRefresh`` of a group LU: take byte 1 of the lease file,
load the latest state record, apply the change in memory (the same ``scsi/`` code a lone
gateway runs), write the record with version + 1 and the unit attentions the change made
for nexuses on other gateways, release; a non-owner then waits until the owner's lease
record says it has applied that version.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from .. import __version__
from ..backstore.base import BackingStoreError
from ..group.lease import Do, Lease, LeaseRecord, Role
from ..logs import PROBLEMS
from .runner import lu_state

log = logging.getLogger(__name__)

#: How many versions of LU-wide events (unit attentions for other gateways' nexuses, PREEMPT
#: AND ABORT victims) the state record keeps, for a gateway that missed some versions.
EVENT_HISTORY = 32
#: In a gateway record's name: a duplicate daemon's own record (``gateways/<name>~<id>``)
DUPLICATE_MARK = "~"
#: Kinds of LU-wide state the state record carries (``lu.shared_state(kind)``).
STATE_KINDS = ("pr", "mode")
#: The group's ``non_owner`` setting: what a live non-owner gateway's target port group is.
NON_OWNER_MODES = ("standby", "non-optimized")


class Locked(Protocol):
    held: bool

    def release(self) -> None: ...
    def refresh(self) -> None: ...


class Shared(Protocol):
    """What the member needs of the group directory (``group.shared.SharedDir``)."""

    def read(self, name: str) -> Any: ...
    def write(self, name: str, data: dict[str, Any], *, seq: int | None = None) -> int: ...
    def try_lock(self, name: str, byte: int) -> Locked: ...
    def names(self, prefix: str) -> list[str]: ...


def _lock_held_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "LockHeld"


def _release_late(fut: Any) -> None:
    """A lock try that timed out got the lock after all: give it back."""
    if fut.cancelled() or fut.exception() is not None:
        return
    try:
        fut.result().release()
    except Exception as exc:  # noqa: BLE001 - the bricks drop it with the fd anyway
        log.warning("group: a state lock got too late: release: %s", exc)


def lease_name(key: str) -> str:
    return f"luns/{key}.lease"


def state_name(key: str) -> str:
    return f"luns/{key}.state"


def move_name(key: str) -> str:
    return f"luns/{key}.move"


def gateway_name(name: str) -> str:
    return f"gateways/{name}"


class GatewaySeen:
    """Another gateway as this one last read it, and since when its beat has not moved."""

    __slots__ = ("number", "beat", "since", "stopped", "version", "sessions")

    def __init__(self, number: int, beat: int, since: float, stopped: bool, version: str) -> None:
        self.number = number
        self.beat = beat
        self.since = since
        self.stopped = stopped
        self.version = version
        #: its sessions per LUN key, as its record last said
        self.sessions: dict[str, int] = {}


class GroupLu:
    """One attached LU: its lease, its lock on byte 0 while held, and the state version applied."""

    def __init__(self, lu: Any, key: str, lease: Lease) -> None:
        self.lu = lu
        self.key = key
        self.lease = lease
        self.lock: Locked | None = None
        #: the state record version loaded into the LU
        self.applied = 0
        self.drain: asyncio.Task[None] | None = None
        #: the move request record's seq already acted on
        self.move_seq = 0
        #: a standby: the owner named in the record has not renewed for a lease while its
        #: lock is still held (a hung owner: said once, see GroupMember._owner_hung)
        self.owner_hung = False
        #: the state record was read at least once (a first load replays no reset or
        #: capacity event: the LU was just opened and measured, its nexuses are new)
        self.state_seen = False
        #: shared_update calls of this gateway under way (under the LU's state_lock): a load
        #: from a beat or a refresh meanwhile is left to the update (see GroupMember._load)
        self.updating = 0
        #: detached (:meth:`GroupMember.detach`): a beat under way for it gives back a lock
        #: it got meanwhile and writes no record any more
        self.detached = False
        #: a load found a newer record but left it to an update of this gateway under way
        #: (see GroupMember._poll_state_current)
        self.load_skipped = False


class GroupMember:
    """This gateway's part in a gateway group (see the module's docstring)."""

    def __init__(self, shared: Shared, gateway: str, number: int, *, beat_seconds: float = 1.0,
                 lease_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 abort: Callable[[Any, list[str]], None] | None = None,
                 non_owner: str = "standby",
                 instance: str | None = None, started: float | None = None) -> None:
        if not 1 <= number <= 255:
            raise ValueError(f"gateway number {number} is not 1..255")
        if not 0 < beat_seconds < lease_seconds:
            raise ValueError(f"beat_seconds ({beat_seconds}) must be above 0 and below "
                             f"lease_seconds ({lease_seconds})")
        self.shared = shared
        self.gateway = gateway
        self.number = number
        self.beat_seconds = beat_seconds
        self.lease_seconds = lease_seconds
        self.clock = clock
        #: called on the loop with (lu, initiator ports) whose tasks a PREEMPT AND ABORT made
        #: through another gateway aborts here
        self.abort = abort
        #: called on the loop with (lu) whose tasks a LOGICAL UNIT RESET made through another
        #: gateway aborts here (every task of the LU, every nexus: SAM-5 6.3.3)
        self.abort_all: Callable[[Any], None] | None = None
        self.luns: dict[str, GroupLu] = {}
        self.gateways: dict[str, GatewaySeen] = {}
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"group-{gateway}")
        # LU-wide state calls (PR OUT/IN, MODE SELECT, LUN RESET: shared_update and
        # shared_refresh, from the runner's workers) on a worker of their own: their state
        # lock tries, their waits for the owner and a stuck read must never queue the
        # heartbeats, which would let this gateway's own LUNs fence themselves
        self._state_io = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"group-{gateway}-state")
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat = 0
        self._published_at = -math.inf  # start of the last successful gateway record write
        self._stopping = False
        self._wake: asyncio.Event | None = None  # made in start()
        self._mutex = threading.Lock()  # luns/gateways seen from worker threads
        self._ship_init(non_owner)
        #: this daemon among the gateway's incarnations: a random id and its start time
        #: (wall clock), published in the gateway record (see _check_duplicate)
        self.instance = instance or uuid.uuid4().hex
        self.started = started if started is not None else time.time()
        #: another running daemon with this gateway's name or number, as its record says
        #: ({gateway, number, host, pid, instance, started}); None: none seen
        self.duplicate: dict[str, Any] | None = None
        #: this daemon is the later of two duplicates: it owns nothing and publishes nothing
        self.yielded = False
        self._dup_beats: dict[str, Any] = {}  # duplicates' records: the beat last read
        #: this gateway's sessions per attached LU (the daemon's count), published in its
        #: gateway record for ``group show``; None: not counted
        self.session_counts: Callable[[list[Any]], list[int]] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, run: bool = True) -> None:
        """Publish this gateway and start beating (before the portals open). ``run=False``:
        no task and no timer (tests step it with :meth:`beat` and :meth:`watch`)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await self._publish()
        await self._read_gateways()
        if run:
            await self._beat_once()  # a LU free for the taking is served from the first login
            self._task = self._loop.create_task(self._run(), name=f"group-{self.gateway}")
            self._watch()

    async def stop(self, release: bool = True) -> None:
        """Stop beating. With ``release`` (a planned stop): every owned LU is announced
        transitioning, drained, written as released and its lock given back, so a peer
        takes it at its next beat instead of after a lease."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if release:
            # Each call bounded: a volume that hangs must not hold the daemon's exit (the
            # bricks drop this client's locks when the process ends anyway).
            bound = self.lease_seconds
            for glu in list(self.luns.values()):
                if glu.lock is None:
                    continue
                self._push(glu, own_state="transitioning")
                await self._drain(glu, bound)
                self._set_deadline(glu, -math.inf)
                if self._busy(glu):
                    # a store call may still run: keep the lock (the bricks drop it with
                    # this process), so no peer issues while it can still land
                    log.warning("group: LUN %s: commands still in flight, lock kept",
                                glu.key)
                    continue
                rec = glu.lease.record
                try:
                    if rec is not None and glu.lease.role in (Role.OWNER, Role.MOVING_OUT,
                                                              Role.FENCED):
                        gone = LeaseRecord(None, glu.lease.epoch, rec.beat + 1, glu.applied, None)
                        await asyncio.wait_for(self._call(self.shared.write, lease_name(glu.key),
                                                          gone.to_dict()), bound)
                    lock, glu.lock = glu.lock, None
                    if lock is not None:
                        await asyncio.wait_for(self._call(lock.release), bound)
                except Exception as exc:  # noqa: BLE001 - the rest must be released too
                    log.warning("group: LUN %s: not released cleanly: %s", glu.key, exc)
            # (a duplicate that stood down says it stopped in its own record, never the
            # gateway's: that one is the other daemon's)
            own = self._duplicate_name() if self.yielded else gateway_name(self.gateway)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call(self.shared.write, own,
                                                  self._gateway_record(stopped=True)), bound)
        else:
            for glu in self.luns.values():
                self._set_deadline(glu, -math.inf)
        self._io.shutdown(wait=False)
        self._state_io.shutdown(wait=False)

    # -- LUs ------------------------------------------------------------------------------------

    def attach(self, lu: Any, key: str, preferred: str | None = None) -> None:
        """Make ``lu`` a group LU keyed ``key`` (its file's GFID): no store call is issued
        until this gateway owns it; until the first beat tells, it reports transitioning."""
        lease = Lease(self.gateway, preferred=preferred, beat_seconds=self.beat_seconds,
                      lease_seconds=self.lease_seconds)
        glu = GroupLu(lu, key, lease)
        state = lu_state(lu)
        state.issue_deadline = -math.inf
        state.group = self
        state.group_key = key
        self.luns[key] = glu
        if self.shipper is not None:
            state.ship = self.shipper
        self._push(glu, own_state="transitioning", announce=False)
        if self._wake is not None:
            self._wake.set()

    def detach(self, lu: Any) -> None:
        """Forget ``lu`` (removed): its lock is given back on the worker."""
        for key, glu in list(self.luns.items()):
            if glu.lu is lu:
                del self.luns[key]
                glu.detached = True
                self._set_deadline(glu, -math.inf)
                state = lu_state(lu)
                state.group = None
                state.ship = None
                if glu.lock is not None and self._loop is not None and not self._stopping:
                    lock, glu.lock = glu.lock, None
                    if self._busy(glu):
                        # its commands still in flight may still issue: release after them
                        self._loop.create_task(self._release_when_idle(glu, lock))
                    else:
                        self._io.submit(lock.release)

    async def _release_when_idle(self, glu: GroupLu, lock: Locked) -> None:
        while self._busy(glu):
            await asyncio.sleep(0.005)
        await self._call(lock.release)

    def _busy(self, glu: GroupLu) -> bool:
        """Commands of the LU still in flight (a store call may still be issued or run), or
        a store call still running whose command already ended: one that timed out
        (IoTimeout answers the command, the call goes on in the store). Every call that
        touches the data holds the LU's I/O lock while it runs (the io_uring path until the
        kernel is done), so a held lock means a write may still land."""
        state = lu_state(glu.lu)
        return bool(state.stats.in_flight > 0 or state.lock.held())

    def handle(self, lu: Any) -> GroupLu | None:
        """``lu``'s own group entry. By its key, unless that is another LU's: a LU being
        replaced keeps serving under a side key while the new one is attached under the
        key (control/api.py), and its shared state must be loaded into and changed in it,
        not in the new one."""
        key = getattr(lu_state(lu), "group_key", None)
        if key is None:
            return None
        glu = self.luns.get(key)
        if glu is not None and glu.lu is lu:
            return glu
        for other in list(self.luns.values()):
            if other.lu is lu:
                return other
        return None

    # -- the view -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        luns = {}
        for key, glu in self.luns.items():
            lease = glu.lease
            rec = lease.record
            luns[key] = {
                "owner": lease.owner_name(),
                "epoch": lease.epoch if lease.role is not Role.STANDBY else (rec.epoch if rec else 0),
                "role": lease.role.value,
                "state_version": glu.applied,
                "move_to": rec.move_to if rec else None,
                "issue_deadline_in": (round(lease.issue_deadline - now, 3)
                                      if math.isfinite(lease.issue_deadline) else None),
                **self._lun_problems(glu, now),
                "sessions": {name: g.sessions.get(key, 0) for name, g in self.gateways.items()
                             if name != self.gateway and not g.stopped},
            }
        gateways = {self.gateway: {"number": self.number, "beat": self._beat, "age": 0.0,
                                   "live": self._self_live(now), "version": __version__}}
        for name, g in self.gateways.items():
            if name != self.gateway:
                gateways[name] = {"number": g.number, "beat": g.beat,
                                  "age": round(now - g.since, 3), "live": self._live(g, now),
                                  "version": g.version}
        out = {"gateway": self.gateway, "number": self.number,
               "beat_seconds": self.beat_seconds, "lease_seconds": self.lease_seconds,
               "luns": luns, "gateways": gateways}
        if self.duplicate is not None:
            out["duplicate"] = {**self.duplicate, "yielded": self.yielded}
        return out

    # -- moves ----------------------------------------------------------------------------------

    async def move(self, key: str, to_gateway: str) -> None:
        """Ask the owner of LUN ``key`` to hand it to ``to_gateway`` (a request record the
        owner reads at its next beat; the move itself is asynchronous)."""
        if key not in self.luns:
            raise KeyError(f"no group LUN {key}")
        if to_gateway != self.gateway and to_gateway not in self.gateways:
            raise ValueError(f"no gateway {to_gateway!r} in the group")
        seen = self.gateways.get(to_gateway) if to_gateway != self.gateway else None
        if seen is not None and not self._live(seen, self.clock()):
            # handed to a gateway that is down, the LUN would have no owner for a lease
            # (the others leave it to the target until its record goes stale)
            raise ValueError(f"gateway {to_gateway!r} is not up (stopped, or no beat for "
                             f"{self.lease_seconds:g}s): it cannot take the LUN")
        glu = self.luns[key]
        if to_gateway == self.gateway and glu.lease.role is Role.OWNER:
            return
        await self._call(self.shared.write, move_name(key),
                         {"to": to_gateway, "by": self.gateway})
        if glu.lease.role is Role.OWNER:
            self._start_move(glu, to_gateway)

    def _start_move(self, glu: GroupLu, to: str) -> None:
        if glu.lease.move_out(to):
            log.info("group: LUN %s moves to %s", glu.key, to)
            self._push(glu)
            if self._wake is not None:
                self._wake.set()

    # -- the beat -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = self._loop or asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kw))

    def call_sync(self, timeout: float, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A directory call of the LU-wide state path from a thread that is not the loop, on
        the state worker (not the heartbeat's), bounded by ``timeout`` (TimeoutError past
        it: the call may still run)."""
        return self._state_io.submit(functools.partial(fn, *args, **kw)).result(
            max(timeout, 0.0))

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            start = self.clock()
            try:
                await self._beat_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad beat must not end the group
                log.exception("group: beat failed")
            wait = start + self.beat_seconds - self.clock()
            self._wake.clear()
            if wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def beat(self) -> None:
        """One beat: publish, read the gateways, step every LU, push the ALUA tables."""
        await self._beat_once()

    def watch(self) -> None:
        """The fencing check the timer runs (for tests that step the member)."""
        self._fence(self.clock())

    async def _beat_once(self) -> None:
        await self._publish()
        await self._read_gateways()
        if self.yielded:
            await self._stand_down()
        for glu in list(self.luns.values()):
            if glu.key in self.luns:
                await self._step(glu)
        for glu in list(self.luns.values()):
            self._push(glu)

    def _gateway_record(self, *, stopped: bool = False) -> dict[str, Any]:
        record: dict[str, Any] = {
            "number": self.number, "version": __version__, "beat": self._beat,
            "stopped": stopped, "instance": self.instance, "started": self.started,
            "host": socket.gethostname(), "pid": os.getpid(), "sessions": self._sessions_here()}
        if self.ship_address is not None:
            record["ship"] = self.ship_address
        return record

    async def _publish(self) -> None:
        if not await self._check_own_record():
            return  # a duplicate that yielded: the gateway's record is the other daemon's
        start = self.clock()
        self._beat += 1
        try:
            await self._call(self.shared.write, gateway_name(self.gateway), self._gateway_record())
            self._published_at = start
        except Exception as exc:  # noqa: BLE001
            log.warning("group: cannot publish gateway %s: %s", self.gateway, exc)

    async def _read_gateways(self) -> None:
        try:
            names = await self._call(self.shared.names, "gateways/")
        except Exception as exc:  # noqa: BLE001
            log.warning("group: cannot list gateways: %s", exc)
            return
        now = self.clock()
        for full in names:
            name = full.rsplit("/", 1)[-1]
            if DUPLICATE_MARK in name:  # a duplicate's record (see _stand_down), not a gateway
                await self._read_duplicate_record(name)
                continue
            if name == self.gateway:
                continue
            try:
                rec = await self._call(self.shared.read, gateway_name(name))
            except Exception:  # noqa: BLE001
                continue
            data = rec.data if rec is not None else None
            if not isinstance(data, dict) or not isinstance(data.get("number"), int):
                continue
            if data["number"] == self.number and not data.get("stopped"):
                old = self.gateways.get(name)
                if old is not None and old.beat != data.get("beat", 0):  # alive, not a leftover
                    self._duplicate_seen(name, data)
                PROBLEMS.report(log, logging.ERROR, "group number", name,
                                "group: gateway %s also claims number %d: give each gateway "
                                "its own number (the ALUA tables are wrong until then)",
                                name, self.number)
            self._seen_ship(name, data)
            beat = data.get("beat", 0)
            old = self.gateways.get(name)
            if old is None or old.beat != beat or old.number != data["number"]:
                self.gateways[name] = GatewaySeen(data["number"], beat, now,
                                                  bool(data.get("stopped")),
                                                  str(data.get("version", "")))
            else:
                old.stopped = bool(data.get("stopped"))
            seen = self.gateways[name]
            counts = data.get("sessions")
            seen.sessions = ({k: v for k, v in counts.items() if isinstance(v, int)}
                             if isinstance(counts, dict) else {})

    def _live(self, g: GatewaySeen, now: float) -> bool:
        return not g.stopped and now - g.since < self.lease_seconds

    def _self_live(self, now: float) -> bool:
        return now - self._published_at < self.lease_seconds

    async def _step(self, glu: GroupLu) -> None:
        if glu.detached:
            return  # (detached after this beat listed it)
        await self._step_lease(glu)
        if glu.detached:
            await self._let_go(glu)

    async def _let_go(self, glu: GroupLu) -> None:
        """A LU detached while its step awaited a call (a take under way got the lock, or
        it owned the LU): give the lock back, after its store calls, as detach does; else
        nothing beats or releases it again and every gateway finds the LUN held for good."""
        self._set_deadline(glu, -math.inf)
        lock, glu.lock = glu.lock, None
        if lock is None:
            return
        log.warning("group: LUN %s: detached during its beat, lock given back", glu.key)
        if self._busy(glu) and self._loop is not None:
            self._loop.create_task(self._release_when_idle(glu, lock))
            return
        try:
            await self._call(lock.release)
        except Exception as exc:  # noqa: BLE001 - the bricks drop it with the fd anyway
            log.warning("group: LUN %s: release: %s", glu.key, exc)

    async def _step_lease(self, glu: GroupLu) -> None:
        lease = glu.lease
        now = self.clock()
        if self.yielded and glu.lock is not None:
            self._set_deadline(glu, -math.inf)
            return  # standing down (see _stand_down): it is not an owner any more
        do = lease.next(now)
        self._sync_deadline(glu)
        if do is Do.BEAT:
            await self._owner_beat(glu, now)
        elif do is Do.RELEASE:
            # no store call of this LU past this point, before the lock goes back
            self._set_deadline(glu, -math.inf)
            if self._busy(glu):
                return  # a command slipped in: wait for it (the next tick asks again)
            await self._write_released(glu)
            await self._release(glu)
            lease.released(self.clock())
        elif do is Do.READ:
            await self._standby_read(glu, now)
        self._sync_deadline(glu)

    async def _owner_beat(self, glu: GroupLu, start: float) -> None:
        lease = glu.lease
        try:
            # Re-take the lock first: a Gluster brick that restarted lost it (docs/HA.md,
            # "Measured"); a byte someone else holds now means the LUN was lost.
            holding = glu.lock is not None and glu.lock.held
            if glu.lock is not None and holding:
                try:
                    await self._call(glu.lock.refresh)
                except Exception as exc:
                    if not _lock_held_error(exc):
                        raise
                    holding = False
            got = await self._call(self.shared.read, lease_name(glu.key))
            rec = LeaseRecord.from_dict(got.data if got is not None else None)
            await self._poll_state_current(glu)
            new = lease.owner_read(rec, glu.applied, holding=holding)
            if new is None:
                log.warning("group: LUN %s: lost (record %s), standing by", glu.key, rec)
                self._set_deadline(glu, -math.inf)
                await self._release(glu)
                lease.released(self.clock())
                return
            if glu.detached:
                return  # its lock went back with detach: only a holder writes the record
            await self._call(self.shared.write, lease_name(glu.key), new.to_dict())
            lease.beat_ok(start, new, self.clock())
            if lease.role is Role.MOVING_OUT and glu.drain is None:
                glu.drain = asyncio.get_running_loop().create_task(self._drain_for_move(glu))
            elif lease.role is Role.OWNER:
                await self._check_move_request(glu)
        except Exception as exc:  # noqa: BLE001 - the deadline stands; try again next beat
            log.warning("group: LUN %s: heartbeat failed: %s", glu.key, exc)
            lease.beat_failed(self.clock())

    async def _check_move_request(self, glu: GroupLu) -> None:
        got = await self._call(self.shared.read, move_name(glu.key))
        if got is None or got.seq <= glu.move_seq:
            return
        glu.move_seq = got.seq
        to = got.data.get("to") if isinstance(got.data, dict) else None
        if isinstance(to, str) and to != self.gateway:
            self._start_move(glu, to)

    async def _drain_for_move(self, glu: GroupLu) -> None:
        try:
            await self._drain(glu, self.lease_seconds)
        finally:
            glu.drain = None
        if self._busy(glu):
            # a drain that timed out: a store call may still run, so the lock stays (the
            # owner stays MOVING_OUT, or FENCED past its deadline); the next beat drains again
            log.warning("group: LUN %s: commands still in flight after %gs, move waits",
                        glu.key, self.lease_seconds)
            return
        glu.lease.drained()
        self._sync_deadline(glu)
        if self._wake is not None:
            self._wake.set()

    async def _drain(self, glu: GroupLu, timeout: float) -> None:
        """Wait (bounded) for the LU's commands in flight to end."""
        end = self.clock() + timeout
        while self._busy(glu) and self.clock() < end:
            await asyncio.sleep(0.005)

    async def _standby_read(self, glu: GroupLu, now: float) -> None:
        lease = glu.lease
        try:
            got = await self._call(self.shared.read, lease_name(glu.key))
        except Exception as exc:  # noqa: BLE001
            log.warning("group: LUN %s: cannot read its lease: %s", glu.key, exc)
            lease.beat_failed(self.clock())
            return
        # The record is dated from when the read returned, not from the beat's start: the
        # read may have waited (the group worker, a slow volume) while the owner wrote it,
        # and the owner's deadline counts from its beat's start, which came before that
        # write, so before this moment; dated earlier, a live owner could be judged stale.
        now = self.clock()
        rec = LeaseRecord.from_dict(got.data if got is not None else None)
        with contextlib.suppress(Exception):
            await self._poll_state(glu)
        do = lease.observed(rec, now)
        if self.yielded:
            return  # a duplicate gateway takes no lease
        if glu.owner_hung and lease.heard_within(now):
            glu.owner_hung = False
            log.warning("group: LUN %s: owner %s renews again", glu.key,
                        rec.owner if rec is not None else None)
        if do is not Do.TRY_LOCK:
            return
        try:
            lock = await self._call(self.shared.try_lock, lease_name(glu.key), 0)
        except Exception as exc:  # noqa: BLE001
            if not _lock_held_error(exc):
                log.warning("group: LUN %s: lock try failed: %s", glu.key, exc)
            else:
                self._owner_hung(glu, rec, now)
            lease.lock_result(False, self.clock())
            return
        glu.lock = lock
        if lease.lock_result(True, self.clock()) is not Do.READ:
            await self._release(glu)
            return
        try:
            got = await self._call(self.shared.read, lease_name(glu.key))
            under = LeaseRecord.from_dict(got.data if got is not None else None)
            await self._poll_state(glu)  # serve with the latest LU-wide state
            new = lease.take(under, glu.applied, self.clock())
            start = self.clock()
            await self._call(self.shared.write, lease_name(glu.key), new.to_dict())
            # Load the state again before serving: a non-owner that wrote a change after the
            # load above saw no owner in the record and counts on this load (_wait_enforced).
            await self._poll_state_current(glu)
            lease.took(start, new, self.clock())
            log.info("group: LUN %s: owner, epoch %d", glu.key, new.epoch)
            mv = await self._call(self.shared.read, move_name(glu.key))
            if mv is not None:
                glu.move_seq = mv.seq  # a request that brought it here is done
        except Exception as exc:  # noqa: BLE001
            log.warning("group: LUN %s: take-over failed: %s", glu.key, exc)
            lease.take_failed(self.clock())
            await self._release(glu)

    async def _write_released(self, glu: GroupLu) -> None:
        """Say in the record that no owner issues any more (owner null): the gateway that
        takes it next may serve at once (:meth:`Lease.take`). A failure only makes it wait."""
        rec = glu.lease.record
        if rec is None:
            return
        # a move keeps naming its target: the other gateways leave the LUN to it
        # (Lease._should_try), and anyone takes it once the record has gone stale
        gone = LeaseRecord(None, glu.lease.epoch, rec.beat + 1, glu.applied, rec.move_to)
        try:
            await self._call(self.shared.write, lease_name(glu.key), gone.to_dict())
        except Exception as exc:  # noqa: BLE001 - released all the same
            log.warning("group: LUN %s: could not write it released: %s", glu.key, exc)

    async def _release(self, glu: GroupLu) -> None:
        lock, glu.lock = glu.lock, None
        if lock is not None:
            try:
                await self._call(lock.release)
            except Exception as exc:  # noqa: BLE001 - the bricks drop it with the fd anyway
                log.warning("group: LUN %s: release: %s", glu.key, exc)

    # -- deadlines and ALUA ---------------------------------------------------------------------

    def _set_deadline(self, glu: GroupLu, deadline: float) -> None:
        lu_state(glu.lu).issue_deadline = deadline

    def _sync_deadline(self, glu: GroupLu) -> None:
        lease = glu.lease
        if self.yielded and glu.lock is not None or lease.releasing or glu.detached:
            self._set_deadline(glu, -math.inf)
        elif lease.role in (Role.OWNER, Role.MOVING_OUT):
            self._set_deadline(glu, lease.issue_deadline)
        else:
            self._set_deadline(glu, -math.inf)

    def _watch(self) -> None:
        """The loop's timer: fence LUs whose deadline passed, even while a call hangs."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        self._fence(self.clock())
        self._timer = loop.call_later(min(0.25, self.beat_seconds / 4), self._watch)

    def _fence(self, now: float) -> None:
        for glu in list(self.luns.values()):
            if glu.lease.tick(now):
                log.warning("group: LUN %s: no heartbeat for %gs: fenced (no I/O until the "
                            "volume answers)", glu.key, self.lease_seconds)
                self._sync_deadline(glu)
                self._push(glu)

    def table(self, glu: GroupLu, now: float | None = None) -> dict[int, tuple[Any, list[int]]]:
        """The ALUA table of one LU from the records as this gateway last read them:
        target port group (= gateway number) -> (access state, [relative port])."""
        from ..scsi.alua import AccessState as S

        if now is None:
            now = self.clock()
        lease = glu.lease
        rec = lease.record
        owner = lease.owner_name()
        move_to = rec.move_to if rec is not None else None
        fresh = lease.role is not Role.STANDBY or lease.heard_within(now)
        out: dict[int, tuple[Any, list[int]]] = {}
        numbers = {self.gateway: self.number}
        for name, g in self.gateways.items():
            numbers.setdefault(name, g.number)
        for name, number in numbers.items():
            if name == self.gateway:
                role = lease.role
                if role is Role.OWNER:
                    state = S.ACTIVE_OPTIMIZED
                elif role in (Role.MOVING_OUT, Role.TAKING):
                    state = S.TRANSITIONING
                elif role is Role.FENCED or not self._self_live(now):
                    state = S.UNAVAILABLE
                elif move_to == name and fresh:
                    state = S.TRANSITIONING
                else:
                    state = self._non_owner_state(glu, now, fresh, name)
            else:
                g = self.gateways[name]
                live = self._live(g, now)
                if name == owner and lease.role is Role.STANDBY:
                    state = (S.TRANSITIONING if move_to else S.ACTIVE_OPTIMIZED) \
                        if (fresh and live) else S.UNAVAILABLE
                elif not live:
                    state = S.UNAVAILABLE
                elif name == move_to and (fresh or lease.role is not Role.STANDBY):
                    state = S.TRANSITIONING
                else:
                    state = self._non_owner_state(glu, now, fresh, name)
            out[number] = (state, [number])
        return out

    # -- active/non-optimized non-owners (command shipping, server/ship.py) --------------------

    def _ship_init(self, non_owner: str) -> None:
        if non_owner not in NON_OWNER_MODES:
            raise ValueError(f"non_owner {non_owner!r} is not one of {', '.join(NON_OWNER_MODES)}")
        #: what a live non-owner's target port group is: "standby" (media access refused
        #: 04/0Bh) or "non-optimized" (media commands shipped to the owner)
        self.non_owner = non_owner
        #: the command shipper (``ship.Shipper``) hooked into this member's LUs, or None
        self.shipper: Any = None
        #: this gateway's ship address ("host:port"), published in its gateway record
        self.ship_address: str | None = None
        #: the other gateways' ship addresses, from their records
        self.ship_addresses: dict[str, str] = {}

    def _seen_ship(self, name: str, data: dict[str, Any]) -> None:
        address = data.get("ship")
        if isinstance(address, str) and not data.get("stopped"):
            self.ship_addresses[name] = address
        else:
            self.ship_addresses.pop(name, None)

    def _non_owner_state(self, glu: GroupLu, now: float, fresh: bool, name: str) -> Any:
        """Live non-owner ``name``'s access state: active/non-optimized when it ships (it
        publishes a ship address; this gateway: its mode) and the LU has an owner that
        takes shipped commands (this gateway, or one heard from lately with an address);
        else standby. Every gateway computes the same from the same records."""
        from ..scsi.alua import AccessState as S

        if name == self.gateway:
            ships = self.non_owner == "non-optimized" and self.ship_address is not None
        else:
            ships = name in self.ship_addresses
        if not ships:
            return S.STANDBY
        lease = glu.lease
        if lease.role is Role.OWNER:
            return S.ACTIVE_NON_OPTIMIZED if self.ship_address is not None else S.STANDBY
        owner = lease.owner_name()
        seen = self.gateways.get(owner) if owner is not None else None
        if lease.role is Role.STANDBY and fresh and seen is not None and self._live(seen, now) \
                and owner in self.ship_addresses:
            return S.ACTIVE_NON_OPTIMIZED
        return S.STANDBY

    def _push(self, glu: GroupLu, own_state: str | None = None, announce: bool = True) -> None:
        alua = getattr(glu.lu, "alua", None)
        if alua is None:
            return
        table = self.table(glu)
        if own_state == "transitioning":
            from ..scsi.alua import AccessState

            table[self.number] = (AccessState.TRANSITIONING, [self.number])
        try:
            alua.set_groups(table, announce=announce)
        except ValueError as exc:  # two gateways with one number: say so, keep the old table
            log.error("group: LUN %s: %s", glu.key, exc)

    # -- LU-wide state (decision 4) -------------------------------------------------------------

    async def _poll_state(self, glu: GroupLu) -> None:
        got = await self._call(self.shared.read, state_name(glu.key))
        self._load(glu, got.data if got is not None else None)

    async def _poll_state_current(self, glu: GroupLu) -> None:
        """:meth:`_poll_state` for a heartbeat or a take, which then serve on what they
        loaded (decision 4: no owner issues past a lease without a change written before
        its beat). A newer record left to an update of this gateway under way is not
        loaded yet (that update's own read may still fail): wait for the update to end
        (bounded), read again; still not loaded, the beat fails (the deadline stands)."""
        glu.load_skipped = False
        await self._poll_state(glu)
        if not glu.load_skipped:
            return
        for _ in range(200):  # an update holds it for a read and a write (ms), at most ~1 s
            if not glu.updating:
                break
            await asyncio.sleep(0.005)
        glu.load_skipped = False
        await self._poll_state(glu)
        if glu.load_skipped:
            raise BackingStoreError(errno.EBUSY, "state record: an update is still under way")

    def _load(self, glu: GroupLu, data: Any, own: bool = False) -> bool:
        """Load a state record newer than what the LU has (any thread). True if loaded.
        The version is compared under the LU's state lock, and no load but the update's own
        (``own``) runs while a :meth:`shared_update` of this gateway is under way: a record
        read before that update's write must not overwrite its change in memory."""
        first, glu.state_seen = not glu.state_seen, True
        if not isinstance(data, dict):
            return False
        version = data.get("version", 0)
        if not isinstance(version, int):
            return False
        lu = glu.lu
        aborts: list[str] = []
        with lu.state_lock:
            if glu.updating and not own and version > glu.applied:
                glu.load_skipped = True
                return False
            if version <= glu.applied:
                return False
            for kind in STATE_KINDS:
                if kind in data and hasattr(lu, "load_shared_state"):
                    lu.load_shared_state(kind, data[kind])
            fresh = [ev for ev in data.get("events", ())
                     if isinstance(ev, dict) and isinstance(ev.get("version"), int)
                     and ev["version"] > glu.applied and ev.get("by") != self.gateway]
            uas = [{"asc": ev["asc"], "initiator": ev.get("initiator")}
                   for ev in fresh if isinstance(ev.get("asc"), int)]
            if uas and hasattr(lu, "replay_ua_events"):
                try:
                    lu.replay_ua_events(uas)
                except (ValueError, KeyError) as exc:  # a gateway of another version
                    log.warning("group: LUN %s: unknown event: %s", glu.key, exc)
            for ev in fresh:
                aborts += [p for p in ev.get("abort") or () if isinstance(p, str)]
            reset = self._replay_lu_events(glu, fresh) if not first else False
            glu.applied = version
        # Tasks are aborted where they are issued: by the owner (its own and those shipped
        # to it), which applies the change before the command that made it is answered. A
        # non-owner issues no media I/O, and applies the change whenever it next loads the
        # record: what it has in flight then came later (a shipped command is answered by
        # the owner, and one that left before the change is ``stale`` there, ship.py), so
        # aborting it here would end, without an answer, commands sent after the reset.
        if glu.lease.role in (Role.STANDBY, Role.TAKING):
            aborts, reset = [], False
        if aborts and self.abort is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.abort, lu, aborts)
        if reset and self.abort_all is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.abort_all, lu)
        return True

    def shared_refresh(self, lu: Any) -> None:
        """Load the LU's latest state record (PR IN, MODE SENSE on a group LU): on a worker
        thread. The volume unreachable: NOT READY 04/0A (ESHUTDOWN), never stale data."""
        glu = self.handle(lu)
        if glu is None:
            return
        try:
            got = self.call_sync(self.lease_seconds, self.shared.read, state_name(glu.key))
        except (FutureTimeout, OSError) as exc:
            raise BackingStoreError(errno.ESHUTDOWN, f"group state unreachable: {exc}") from exc
        self._load(glu, got.data if got is not None else None)

    def shared_update(self, lu: Any, apply: Callable[[], Any],
                      extra_events: list[dict[str, Any]] | None = None) -> Any:
        """Change LU-wide state through the group (decision 4), on a worker thread: returns
        what ``apply`` returned once the owner enforces it; raises what ``apply`` raised
        (nothing written), or ESHUTDOWN (NOT READY 04/0A) when the record could not be
        written within ``lease_seconds`` (nothing changed, unless a write that timed out
        lands later; the unit attentions the change queued are held back until the record
        is written, so none is queued for a change that is not: F6). Once written, the change is in force: GOOD when the owner says it
        applied it, or at the latest ``lease_seconds`` after the write (:meth:`_wait_enforced`),
        never 04/0A: a retried REGISTER would meet its own registration."""
        glu = self.handle(lu)
        if glu is None:
            with lu.state_lock:
                return apply()
        end = self.clock() + self.lease_seconds
        lock = self._lock_state(glu, end)
        with lu.state_lock:
            glu.updating += 1
        try:
            got = self._bounded(end, self.shared.read, state_name(glu.key))
            data = got.data if got is not None and isinstance(got.data, dict) else {}
            self._load(glu, data, own=True)
            with lu.state_lock:
                version = max(int(data.get("version", 0) or 0), glu.applied)
                # what to go back to if the record cannot be written
                before = {kind: lu.shared_state(kind) for kind in STATE_KINDS
                          if hasattr(lu, "shared_state")}
                # the unit attentions the change queues here, recorded for the other
                # gateways' nexuses (LogicalUnit.ua_events; replayed there on load), and
                # held back from this gateway's until the record is written (ua_held)
                lu.ua_events = []
                held: list[Any] = []
                holds = hasattr(lu, "release_ua")
                if holds:
                    lu.ua_held = held
                try:
                    value = apply()
                finally:
                    recorded, lu.ua_events = lu.ua_events, None
                    if holds:
                        lu.ua_held = None
                new_state = {kind: lu.shared_state(kind) for kind in STATE_KINDS
                             if hasattr(lu, "shared_state")}
            version += 1
            events = [e for e in data.get("events", ())
                      if isinstance(e, dict) and e.get("version", 0) > version - EVENT_HISTORY]
            events += self._events(recorded or [], version, value)
            events += [{"version": version, "by": self.gateway, **e} for e in extra_events or ()]
            record = {"version": version, "by": self.gateway, "events": events, **new_state}
            try:
                self._bounded(end, self.shared.write, state_name(glu.key), record)
            except BaseException:
                # not written (or not known to be): the change is not in force, so not in
                # memory either (a write that lands later is loaded by a later beat), and
                # no nexus hears of it: its unit attentions were held back, and are dropped
                with lu.state_lock:
                    for kind, state in before.items():
                        lu.load_shared_state(kind, state)
                if "pr" in before and hasattr(lu, "persist_pr"):
                    try:  # an APTPL copy apply() saved goes back too
                        lu.persist_pr()
                    except Exception as exc:  # noqa: BLE001 - the command's answer stands
                        log.warning("group: LUN %s: reservations not saved back: %s",
                                    glu.key, exc)
                raise
            written = self.clock()
            with lu.state_lock:
                glu.applied = max(glu.applied, version)
                if holds:  # in force: this gateway's nexuses hear of it now
                    lu.release_ua(held)
        finally:
            with lu.state_lock:
                glu.updating -= 1
            with contextlib.suppress(Exception):
                self.call_sync(self.lease_seconds, lock.release)
        if glu.lease.role in (Role.OWNER, Role.MOVING_OUT):
            return value
        self._wait_enforced(glu, version, written)
        return value

    def _bounded(self, end: float, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self.call_sync(end - self.clock(), fn, *args)
        except FutureTimeout as exc:
            raise BackingStoreError(errno.ESHUTDOWN, "group directory did not answer") from exc
        except BackingStoreError:
            raise
        except OSError as exc:
            raise BackingStoreError(errno.ESHUTDOWN, f"group directory: {exc}") from exc

    def _lock_state(self, glu: GroupLu, end: float) -> Locked:
        while True:
            fut = self._state_io.submit(self.shared.try_lock, lease_name(glu.key), 1)
            try:
                lock: Locked = fut.result(max(end - self.clock(), 0.0))
                return lock
            except FutureTimeout as exc:
                # the try may still get the byte: whoever waits for it is gone, so a lock
                # that arrives late is given back at once (else no update runs again)
                if not fut.cancel():
                    fut.add_done_callback(_release_late)
                raise BackingStoreError(errno.ESHUTDOWN, "group directory did not answer") from exc
            except Exception as exc:
                if not _lock_held_error(exc):
                    if isinstance(exc, OSError) and not isinstance(exc, BackingStoreError):
                        raise BackingStoreError(errno.ESHUTDOWN,
                                                f"group directory: {exc}") from exc
                    raise
            if self.clock() >= end:
                raise BackingStoreError(errno.ESHUTDOWN, "state lock busy")
            time.sleep(0.01)

    def _events(self, recorded: list[dict[str, Any]], version: int,
                value: Any) -> list[dict[str, Any]]:
        """The change's events for the other gateways: the unit attentions it queued
        ({asc, initiator: a port, a name, or None for every nexus}) and the initiator ports
        whose tasks a PREEMPT AND ABORT aborts ({abort: [...]})."""
        events = [{"version": version, "by": self.gateway, **e} for e in recorded]
        extra = getattr(value, "extra", None)
        if isinstance(extra, dict) and extra.get("abort_initiators"):
            events.append({"version": version, "by": self.gateway,
                           "abort": list(extra["abort_initiators"])})
        return events

    # -- LU-wide events beyond PR and mode pages: LUN RESET, capacity --------------------------

    async def lun_reset(self, lu: Any, asc: int) -> None:
        """A LOGICAL UNIT RESET this gateway just did to ``lu`` (``DeviceServer.lun_reset``:
        its SPC-2 reservation dropped, the unit attention ``asc`` queued to its nexuses, its
        tasks aborted) goes to the group as an event of the state record: every other
        gateway does the same when it loads that version (:meth:`_replay_lu_events`), the
        owner aborting the LU's tasks. Returns once the owner applied it (as a PR OUT does);
        raises ``BackingStoreError`` (ESHUTDOWN) when the group did not take it."""
        await self._publish_event(lu, {"reset": int(asc)})

    async def capacity_changed(self, lu: Any, size: int) -> None:
        """This gateway grew ``lu``'s file to ``size`` bytes (and told its own LU): every
        other gateway's LU learns the size and queues CAPACITY DATA HAS CHANGED to its
        nexuses when it loads the event."""
        await self._publish_event(lu, {"capacity": int(size)})

    async def _publish_event(self, lu: Any, event: dict[str, Any]) -> None:
        if self.handle(lu) is None:
            return
        await asyncio.to_thread(self.shared_update, lu, lambda: None, [event])

    def _replay_lu_events(self, glu: GroupLu, fresh: list[dict[str, Any]]) -> bool:
        """Apply another gateway's reset and capacity events to this gateway's LU (under its
        state lock, from :meth:`_load`). True if a reset was among them (its tasks to abort)."""
        from ..scsi.sense import Asc

        lu = glu.lu
        reset = False
        for ev in fresh:
            asc = ev.get("reset")
            if isinstance(asc, int) and hasattr(lu, "reset"):
                try:
                    lu.reset(Asc(asc))
                except ValueError as exc:  # a gateway of another version
                    log.warning("group: LUN %s: unknown reset event: %s", glu.key, exc)
                    continue
                reset = True
            size = ev.get("capacity")
            if isinstance(size, int) and size > 0 and hasattr(lu, "capacity_changed"):
                if size // lu.block_size > lu.block_count:  # grows only: an older event
                    lu.capacity_changed(size)               # never shrinks a newer size
        return reset

    def _wait_enforced(self, glu: GroupLu, version: int, written: float) -> None:
        """A non-owner's change, written at ``written``: wait until the owner's lease record
        says it applied ``version``, or until ``written + lease_seconds``, whichever comes
        first. Past that, no owner can issue a command without it: an owner's issue
        deadline is the start of a heartbeat + ``lease_seconds``, a heartbeat loads the
        state record before it renews anything, and a heartbeat that read the record before
        this write started before ``written``; a new owner loads the record before it
        serves. So the change is enforced either way and PR OUT answers GOOD: answering
        NOT READY for a change that is already in force would make the initiator's retry of
        a REGISTER meet its own registration (RESERVATION CONFLICT)."""
        until = written + self.lease_seconds
        while True:
            try:
                got = self._bounded(until, self.shared.read, lease_name(glu.key))
            except BackingStoreError:
                got = False  # the volume does not answer: the deadline still holds
            if got is not False:
                rec = LeaseRecord.from_dict(got.data if got is not None else None)
                if rec is None or rec.owner is None or rec.seen >= version:
                    return  # applied, or no owner (whoever takes it loads it first)
            if self.clock() >= until:
                log.warning("group: LUN %s: the owner has not said it applied state version "
                            "%d within %gs; in force anyway (no owner issues without it)",
                            glu.key, version, self.lease_seconds)
                return
            # (the owner says it applied a version with its heartbeat: a tenth of a beat
            # between reads is plenty, and keeps many waiting changes off the volume)
            time.sleep(max(0.02, self.beat_seconds / 10))

    # -- a hung owner -------------------------------------------------------------------------

    def _owner_hung(self, glu: GroupLu, rec: LeaseRecord | None, now: float) -> None:
        """A standby found the lock held although the record has not changed for a lease:
        its holder neither renews nor lets go (SIGSTOPped, a thread stuck in the kernel: the
        bricks keep a frozen client's lock, docs/HA.md "Measured"). The ALUA table already
        reports its group unavailable (the record is not fresh); said once per LUN here, and
        in the status (``owner_hung``), since only a kill frees the LUN."""
        if glu.owner_hung or rec is None or rec.owner is None or glu.lease.heard_within(now):
            return
        glu.owner_hung = True
        log.error("group: LUN %s: owner %s has not renewed for %.0f s but still holds the "
                  "lock: hung? a watchdog (systemd WatchdogSec, see `gluster-iscsi systemd "
                  "install`) or an admin must kill it", glu.key, rec.owner,
                  glu.lease.silent_for(now))

    def _lun_problems(self, glu: GroupLu, now: float) -> dict[str, Any]:
        """What the status adds for a LUN in trouble (empty when there is none)."""
        out: dict[str, Any] = {}
        if glu.owner_hung and glu.lease.role is Role.STANDBY:
            out["owner_hung"] = True
            out["owner_silent_for"] = round(glu.lease.silent_for(now), 1)
        return out

    def beating(self, now: float | None = None) -> bool:
        """Whether this gateway's group work is alive, for the systemd watchdog: its beats
        succeed (the gateway record was written within ``lease_seconds``), or it holds no
        LUN (a standby that cannot beat blocks nobody). A beat stuck in a call to the
        volume, or a loop that no longer runs the beat, stops the pings while this gateway
        holds locks: systemd then kills it and the bricks free its LUNs."""
        if now is None:
            now = self.clock()
        if self._self_live(now):
            return True
        return not any(glu.lock is not None for glu in self.luns.values())

    # -- two daemons as one gateway -----------------------------------------------------------

    async def _check_own_record(self) -> bool:
        """Before each write of the gateway record: read it; another instance's writes there
        since this daemon's last one mean a second daemon runs under this gateway's name
        (the first write is not checked: a restart finds its previous incarnation's
        record). False once this daemon yielded: it writes the record no more."""
        if self._beat > 0:
            try:
                got = await self._call(self.shared.read, gateway_name(self.gateway))
            except Exception:  # noqa: BLE001 - the write that follows says what is wrong
                got = None
            data = got.data if got is not None else None
            if (isinstance(data, dict) and isinstance(data.get("instance"), str)
                    and data["instance"] != self.instance and not data.get("stopped")):
                self._duplicate_seen(self.gateway, data)
        if self.yielded:
            # Publish under a name of its own, so the daemon that stays hears of this one.
            with contextlib.suppress(Exception):
                self._beat += 1
                await self._call(self.shared.write, self._duplicate_name(),
                                 {**self._gateway_record(), "duplicate_of": self.gateway})
        return not self.yielded

    def _duplicate_name(self) -> str:
        return gateway_name(f"{self.gateway}{DUPLICATE_MARK}{self.instance[:12]}")

    async def _read_duplicate_record(self, name: str) -> None:
        """A yielded duplicate's record: if it is this gateway's name or number and another
        instance, and its beat moves, this daemon hears of it."""
        try:
            got = await self._call(self.shared.read, gateway_name(name))
        except Exception:  # noqa: BLE001
            return
        data = got.data if got is not None else None
        if not isinstance(data, dict) or data.get("instance") == self.instance \
                or data.get("stopped"):
            return
        if data.get("duplicate_of") != self.gateway and data.get("number") != self.number:
            return
        beat = data.get("beat")
        last = self._dup_beats.get(name)
        self._dup_beats[name] = beat
        if last is not None and last != beat:
            self._duplicate_seen(str(data.get("duplicate_of")), data)

    def _duplicate_seen(self, name: str, data: dict[str, Any]) -> None:
        """Another running daemon is gateway ``name`` (this one's name or number). The later
        started of the two (by their records' start times; ties by instance id) yields: it
        stops acting as owner (:meth:`_stand_down`) and takes no lease; the other goes on.
        Both say so, once, in the log and in :meth:`status` (never silent divergence)."""
        other_started = data.get("started")
        other_instance = str(data.get("instance") or "")
        if not isinstance(other_started, (int, float)):
            other_started = -math.inf  # a gateway of an older version: it was there first
        later = (self.started, self.instance) > (other_started, other_instance)
        info = {"gateway": name, "number": data.get("number"), "host": data.get("host"),
                "pid": data.get("pid"), "instance": other_instance or None,
                "started": data.get("started")}
        first = self.duplicate is None or self.duplicate.get("instance") != info["instance"]
        self.duplicate = info
        if later and not self.yielded:
            self.yielded = True
            log.error("group: another daemon runs as gateway %s (number %s, host %s, pid %s) "
                      "since before this one: this daemon stands down (owns no LUN, takes no "
                      "lease) until it is stopped; give each gateway its own name and number",
                      name, info["number"], info["host"], info["pid"])
        elif first and not later:
            log.error("group: another daemon also runs as gateway %s (number %s, host %s, pid "
                      "%s), started after this one: it stands down; stop it", name,
                      info["number"], info["host"], info["pid"])

    async def _stand_down(self) -> None:
        """A yielded duplicate gives back what it holds: each LUN whose lock this daemon
        holds is announced transitioning, drained (bounded), written released and its lock
        released, so the gateway that stays (or a peer) takes it; nothing it does not hold
        is written."""
        for glu in list(self.luns.values()):
            if glu.lock is None:
                continue
            self._push(glu, own_state="transitioning")
            self._set_deadline(glu, -math.inf)
            await self._drain(glu, self.lease_seconds)
            if self._busy(glu):
                # a store call may still run: keep the lock, try again at the next beat
                log.warning("group: LUN %s: commands still in flight, stand-down waits",
                            glu.key)
                continue
            rec = glu.lease.record
            try:
                if rec is not None and glu.lease.role in (Role.OWNER, Role.MOVING_OUT,
                                                          Role.FENCED):
                    gone = LeaseRecord(None, glu.lease.epoch, rec.beat + 1, glu.applied, None)
                    await self._call(self.shared.write, lease_name(glu.key), gone.to_dict())
            except Exception as exc:  # noqa: BLE001 - released all the same
                log.warning("group: LUN %s: not released cleanly: %s", glu.key, exc)
            await self._release(glu)
            glu.lease.released(self.clock())
            log.warning("group: LUN %s released (a duplicate gateway stands down)", glu.key)

    # -- sessions per gateway -----------------------------------------------------------------

    def _sessions_here(self) -> dict[str, int]:
        """This gateway's sessions per attached LU key (what its record publishes)."""
        count = self.session_counts
        if count is None:
            return {}
        items = list(self.luns.items())
        try:
            numbers = count([glu.lu for _, glu in items])
        except Exception:  # noqa: BLE001 - a count is extra, never a failed beat
            return {}
        return {key: n for (key, _), n in zip(items, numbers, strict=False)}
