"""Adaptive polling: spin briefly for the next request before the event loop sleeps.

At queue depth 1 a command's round trip is dominated not by its own work but by the wake-up
that precedes it: the loop blocks in ``epoll_wait``, the CPU goes idle, and the initiator's next
PDU has to wake both up again (scheduler, IPI, and on a virtual machine the vCPU's halt). After
the loop answered something, the initiator's next request usually arrives within tens of
microseconds; polling for it that long keeps the wake-up off the critical path. It is the same
trade as the kernel's NAPI busy-poll and cpuidle haltpoll, or SPDK's pollers, but bounded: the
spin starts only after the loop sent a response, stops at the first readable connection or
completed store call, and gives up after at most ``budget`` seconds. An idle daemon never spins;
a busy one finds work at once, so the spin costs one ``epoll_wait(0)``. Each turn of the spin
yields the CPU (``sched_yield``): a thread ready to run on it (a store's worker, libgfapi's,
the bricks' or the initiator's on a shared machine) goes first, so the spin only uses a CPU
nobody else wants.

The spin length adapts like the kernel's haltpoll governor: when a spin ran out and the next
work came soon after (within ``budget``), it grows; when the work came later than ``budget``
(a slow store, an initiator thinking), it shrinks, down to not spinning at all, so a loop
waiting on Gluster round trips of a millisecond does not burn the CPU those need.

When what the spin finds readable is the one connection that just sent, and nothing else
is readable or under way (no store call out, no other connection sent since the last spin:
the QD1 request-response case), the spin receives and handles the request itself
(``watch(fd, owner, read_now)``), which saves the loop's own ``epoll_wait`` and dispatch;
hot 4 KiB reads at QD1 gain a few per cent. Everything else is left to the loop, whose
callbacks may hold what must happen first: a Logout's response is followed by its
connection's close, and the end of that session (its SPC-2 reservation released) must come
before another session's next command runs.

Waiting for the store (``store_budget``, ``serve --poll-store-usecs``)
-------------------------------------------------------------------
When the request received that way started a store call (a QD1 read that missed the cache),
the loop would sleep until the call completes: the CPU halts, and the completion (libgfapi's
event thread taking the bricks' reply, then the loop's eventfd) must wake it again. On a
virtual machine that wake is a VM exit on the critical path of every miss: on the 2-vCPU
test VM (guest halt-polling off) a kept-busy CPU made fio's own gfapi QD1 reads 179-222 ->
123-151 us at p50. So the spin goes on, with the same yield on every turn (the thread that
completes the call runs first when it shares the CPU), until the call completes, a
connection is readable, or ``store_budget`` runs out. A call it sees done, with no connection
readable, it completes there (the engine's ``take_done``), not in the loop's next turn: that
turn (an ``epoll_wait``, the dispatch to the engine's eventfd) was 7-10 us of a cold read
(BENCHMARKS.md "Stop 40"). Cold 4 KiB reads at QD1 through a
``gluster://`` LUN on that VM, against the same daemon without the wait: 1.06-1.26x the
reads/s pinned and 1.20-1.46x unpinned (p50 335-342 -> 269-272 us pinned at best), for 60-90
us more of the loop's CPU a read, CPU that was halted otherwise (BENCHMARKS.md "Stop 37"). Only that case: with other calls out, or several connections active, the
loop has work of its own and sleeps as before; queue depth 32 never gets here.

The daemon waits so for its gfapi calls only (``store_pools``): that is where it was measured
to pay. A FUSE file's call completes through io_uring's kernel workers and the FUSE client's
threads, which the bench pins to the daemon's CPU: there an A/B (``bench/run --backends fuse
--target-a ours``, pinned, 4 rounds) gave 0.91-0.98x at the median, within a noise of
0.88-1.15x, and no gain.

It adapts in windows of :data:`STORE_WINDOW` waits: when the call completed within the budget
in fewer than half of them (bricks farther away than the budget, a slow volume), it stops
waiting, and then tries one wait in :data:`STORE_PROBE_EVERY` to find out whether the store
got faster: a far volume costs one budget of spin in 64 misses, not one a miss.

It is an I/O-layer concern only: the iSCSI and SCSI cores never see it.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable, Iterable
from typing import Final, Protocol

#: ``IdlePoller._kicked`` when no connection sent since the last spin, or several did
_NONE: Final = -1
_MANY: Final = -2

#: Waits for a store call (``store_budget``) judged together: fewer than half completed within
#: the budget, and the poller stops waiting for store calls.
STORE_WINDOW: Final = 16
#: While it does not wait: one miss in this many still waits (a probe), so a store that got
#: faster is waited for again after one window of probes.
STORE_PROBE_EVERY: Final = 64


class Pool(Protocol):
    """What the poller asks of a store worker pool (``iopool.IoPool``). One it waits for
    (``store_pools``) may also have ``take_done()``: complete what is done, on the caller's
    stack (the gfapi engine's; ``IdlePoller._await_store``)."""

    def in_flight(self) -> bool: ...

    def has_done(self) -> bool: ...


class IdlePoller:
    """One per event loop. ``watch``/``unwatch`` connection sockets; ``kick`` after a send."""

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float,
                 pools: Callable[[], Iterable[Pool]] = tuple, store_budget: float = 0.0,
                 store_pools: Callable[[], Iterable[Pool]] | None = None) -> None:
        self.loop = loop
        #: Seconds to spin before letting the loop sleep; 0 disables polling.
        self.budget = budget
        #: Seconds the spin goes on for a store call the request it received started (the QD1
        #: miss: see the module's docstring); 0: never. Nothing without ``budget``.
        self.store_budget = store_budget if budget > 0 else 0.0
        #: Whose calls it waits for (default: every completion source). The daemon passes
        #: its gfapi engine alone: see the module's docstring.
        self._store_pools = store_pools if store_pools is not None else pools
        #: Whether it currently waits for store calls (adapted per :data:`STORE_WINDOW`).
        self.store_on = self.store_budget > 0
        #: Waits for a store call run, and of those, how many ended in work (a completion or a
        #: readable connection) before the budget ran out.
        self.store_spins = 0
        self.store_caught = 0
        self._window_spins = 0
        self._window_caught = 0
        self._since_probe = 0
        #: The store worker pools: a completed call also ends a spin.
        self._pools = pools
        self._ep = select.epoll() if budget > 0 else None
        self._fds: dict[int, object] = {}  # fd -> the connection that registered it
        #: fd -> what receives from it at once when the spin sees it readable (``watch``)
        self._readers: dict[int, Callable[[], None]] = {}
        #: the connection that sent since the last spin, the only one it receives from
        #: (``_NONE``: none did; ``_MANY``: more than one did)
        self._kicked = _NONE
        self._armed = False
        #: The current spin length, adapted between 0 and ``budget``.
        self.current = budget
        #: When the last spin ran out without work (None: it found work, or none ran out since).
        self.missed_at: float | None = None
        #: Spins run, and of those, how many found work before the budget ran out.
        self.spins = 0
        self.hits = 0

    def watch(self, fd: int, owner: object,
              read_now: Callable[[], None] | None = None) -> None:
        """Watch ``fd`` for the spin. ``read_now``: called when the spin sees it readable, to
        receive and handle its bytes at once; the loop would do so only after its own
        ``epoll_wait`` and a dispatch (a system call and a loop turn on every QD1
        request)."""
        ep = self._ep
        if ep is None or fd < 0:
            return
        try:
            ep.register(fd, select.EPOLLIN)
        except FileExistsError:  # the number of a closed socket, not yet unwatched, reused
            ep.modify(fd, select.EPOLLIN)
        except OSError:
            return
        self._fds[fd] = owner
        if read_now is not None:
            self._readers[fd] = read_now
        else:
            self._readers.pop(fd, None)

    def unwatch(self, fd: int, owner: object) -> None:
        if self._ep is None or self._fds.get(fd) is not owner:
            return  # not ours, or the number already belongs to a newer connection
        del self._fds[fd]
        self._readers.pop(fd, None)
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):  # already closed: the kernel dropped it with the file
            pass

    def kick(self, fd: int = -1) -> None:
        """Something was sent (on connection ``fd``): spin once the loop has run the
        callbacks now ready."""
        if self._ep is not None:
            if fd >= 0:
                kicked = self._kicked
                self._kicked = fd if kicked == _NONE or kicked == fd else _MANY
            if not self._armed:
                self._armed = True
                self.loop.call_soon(self._spin)

    def woke(self) -> None:
        """Work arrived after a spin ran out: adapt the spin length to the gap."""
        missed = self.missed_at
        if missed is None:
            return
        self.missed_at = None
        budget = self.budget
        if time.perf_counter() - missed <= budget:
            self.current = min(budget, max(self.current * 2, budget / 8))
        else:
            self.current = self.current / 2 if self.current > budget / 16 else 0.0

    def _spin(self) -> None:
        self._armed = False
        kicked, self._kicked = self._kicked, _NONE
        ep = self._ep
        if ep is None:
            return
        start = time.perf_counter()
        if self.current > 0:
            self.spins += 1
            pools = [p for p in self._pools() if p.in_flight()]
            poll = ep.poll
            events = self._until_work(poll, pools, start + self.current)
            if events is not None:
                self.hits += 1
                if events and not pools and len(events) == 1 and events[0][0] == kicked:
                    # Only a loop that waits for nothing but its next request receives
                    # here: with store calls out, the loop's own turn also reaps their
                    # completions first (4K writes at QD1 and QD32 ran 0-7% slower when
                    # the spin received them too, hot reads 1-5% faster either way).
                    # And only one connection, the one that sent since the last spin
                    # (the QD1 request-response case): anything else keeps the loop's
                    # order.
                    # What a send leads to may still be waiting among the loop's
                    # callbacks, queued after this spin: a Logout's response is followed
                    # by the connection's close, whose end of the session releases its
                    # SPC-2 reservation, and another session's next command must not
                    # run before it (libiscsi's Sanitize.Reset met RESERVATION CONFLICT
                    # when the spin received from every connection).
                    read_now = self._readers.get(events[0][0])
                    if read_now is not None:
                        read_now()
                        if self.store_budget > 0:
                            self._await_store(poll)
                return
        self.missed_at = start

    def _until_work(self, poll: Callable[[float], list[tuple[int, int]]], pools: list[Pool],
                    end: float) -> list[tuple[int, int]] | None:
        """The spin's turns: until a watched connection is readable (its events), a call of
        ``pools`` completed (an empty list), or ``end`` passed (None)."""
        clock = time.perf_counter
        while True:
            # epoll_wait(0) releases the GIL: a store worker can deliver its result meanwhile.
            events = poll(0)
            if events:
                return events
            # (the yield, see above: QD1 cold gfapi reads, unpinned on 2 CPUs, made
            # 0.90-0.99x of --poll-usecs 0 when only a store call out yielded, 1.00-1.04x)
            os.sched_yield()
            for p in pools:
                if p.has_done():
                    return []
            if clock() >= end:
                return None

    def _await_store(self, poll: Callable[[float], list[tuple[int, int]]]) -> None:
        """The request just received may have started a store call: spin until it completes
        (or a connection is readable, or ``store_budget`` runs out), so the CPU is awake when
        the completion comes. Adapts per :data:`STORE_WINDOW`."""
        pools = [p for p in self._store_pools() if p.in_flight()]
        if not pools:
            return  # answered at once (a cache hit, an error): nothing to wait for
        if not self.store_on:
            self._since_probe += 1
            if self._since_probe < STORE_PROBE_EVERY:
                return
            self._since_probe = 0
        self.store_spins += 1
        events = self._until_work(poll, pools, time.perf_counter() + self.store_budget)
        if events is not None:
            self.store_caught += 1
            self._window_caught += 1
        self._window_spins += 1
        if self._window_spins >= STORE_WINDOW:
            self.store_on = self._window_caught * 2 >= self._window_spins
            self._window_spins = self._window_caught = 0
            self._since_probe = 0
        if events == []:
            # The call completed and no connection is readable: complete it here rather than
            # in the loop's next turn (its epoll_wait, the dispatch to the engine's eventfd
            # reader: 7-10 us of a cold QD1 read, BENCHMARKS.md "Stop 40"). Only the calls
            # this request started are out (none were before it), so nothing else can
            # complete first; what the request queued on the loop meanwhile (a write-behind
            # start, a flush) has no call out to wait for. Last, after the bookkeeping: what
            # a completion raises goes to the loop's handler as from the eventfd's reader.
            for p in pools:
                take = getattr(p, "take_done", None)
                if take is not None and p.has_done():
                    take()

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
            self._ep = None
            self._fds.clear()
            self._readers.clear()
