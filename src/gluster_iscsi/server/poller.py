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

It is an I/O-layer concern only: the iSCSI and SCSI cores never see it.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable, Iterable
from typing import Protocol


class Pool(Protocol):
    """What the poller asks of a store worker pool (``iopool.IoPool``)."""

    def in_flight(self) -> bool: ...

    def has_done(self) -> bool: ...


class IdlePoller:
    """One per event loop. ``watch``/``unwatch`` connection sockets; ``kick`` after a send."""

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float,
                 pools: Callable[[], Iterable[Pool]] = tuple) -> None:
        self.loop = loop
        #: Seconds to spin before letting the loop sleep; 0 disables polling.
        self.budget = budget
        #: The store worker pools: a completed call also ends a spin.
        self._pools = pools
        self._ep = select.epoll() if budget > 0 else None
        self._fds: dict[int, object] = {}  # fd -> the connection that registered it
        self._armed = False
        #: The current spin length, adapted between 0 and ``budget``.
        self.current = budget
        #: When the last spin ran out without work (None: it found work, or none ran out since).
        self.missed_at: float | None = None
        #: Spins run, and of those, how many found work before the budget ran out.
        self.spins = 0
        self.hits = 0

    def watch(self, fd: int, owner: object) -> None:
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

    def unwatch(self, fd: int, owner: object) -> None:
        if self._ep is None or self._fds.get(fd) is not owner:
            return  # not ours, or the number already belongs to a newer connection
        del self._fds[fd]
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):  # already closed: the kernel dropped it with the file
            pass

    def kick(self) -> None:
        """Something was sent: spin once the loop has run the callbacks now ready."""
        if self._ep is not None and not self._armed:
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
        ep = self._ep
        if ep is None:
            return
        clock = time.perf_counter
        start = clock()
        if self.current > 0:
            self.spins += 1
            pools = [p for p in self._pools() if p.in_flight()]
            end = start + self.current
            poll = ep.poll
            while True:
                # epoll_wait(0) releases the GIL: a store worker can deliver its result meanwhile.
                if poll(0):
                    self.hits += 1
                    return
                # (the yield, see above: QD1 cold gfapi reads, unpinned on 2 CPUs, made
                # 0.90-0.99x of --poll-usecs 0 when only a store call out yielded, 1.00-1.04x)
                os.sched_yield()
                for p in pools:
                    if p.has_done():
                        self.hits += 1
                        return
                if clock() >= end:
                    break
        self.missed_at = start

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
            self._ep = None
            self._fds.clear()
