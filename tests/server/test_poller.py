"""The idle poller: it stops spinning on the first sign of work, and its spin adapts to the gaps."""

from __future__ import annotations

import asyncio
import socket
import time

from gluster_iscsi.server.poller import IdlePoller


class FakePool:
    def __init__(self) -> None:
        self.threads = 1
        self.done = False

    def in_flight(self) -> bool:
        return True

    def has_done(self) -> bool:
        return self.done


def run(coro):
    return asyncio.run(coro)


def test_a_readable_connection_ends_the_spin_at_once():
    async def main():
        a, b = socket.socketpair()
        p = IdlePoller(asyncio.get_running_loop(), 10.0)  # a 10 s budget: only work can end it
        p.watch(a.fileno(), "conn")
        b.send(b"x")
        p.kick()
        await asyncio.sleep(0)
        assert (p.spins, p.hits, p.missed_at) == (1, 1, None)
        p.close()
        a.close(), b.close()

    run(main())


def test_the_spin_hands_a_readable_connection_to_its_reader_at_once():
    """What the spin sees readable is received there (``watch(..., read_now)``), not after the
    loop's own epoll_wait, when it is the one connection readable and one that sent since
    the last spin (``kick(fd)``); anything else is left to the loop, in its order."""

    async def main():
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        e, f = socket.socketpair()
        got: list[tuple[str, bytes]] = []
        p = IdlePoller(asyncio.get_running_loop(), 10.0)
        p.watch(a.fileno(), "conn-a", lambda: got.append(("a", a.recv(16))))
        p.watch(c.fileno(), "conn-c", lambda: got.append(("c", c.recv(16))))
        p.watch(e.fileno(), "conn-e")  # no reader
        b.send(b"request")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.spins, p.hits) == (1, 1)
        assert got == [("a", b"request")]  # c was not readable: not called
        # readable, but another connection sent: a's answer may have queued what must run
        # before c's next command (a Logout's response, then its session's end)
        d.send(b"after a")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert got == [("a", b"request")] and p.hits == 2
        assert c.recv(16) == b"after a"
        f.send(b"other")
        p.kick(e.fileno())
        await asyncio.sleep(0)
        assert got == [("a", b"request")] and p.hits == 3
        assert e.recv(16) == b"other"  # no reader: left where it was, for the loop
        # two readable at once, both having sent: neither is received here (which came
        # first, and whether one is an end the other's commands must follow, is the loop's)
        b.send(b"one")
        d.send(b"two")
        p.kick(a.fileno())
        p.kick(c.fileno())
        await asyncio.sleep(0)
        assert got == [("a", b"request")] and p.hits == 4
        assert a.recv(16) == b"one" and c.recv(16) == b"two"
        # one readable, but two sent: the other's send may have queued what must come first
        b.send(b"three")
        p.kick(c.fileno())
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert got == [("a", b"request")] and p.hits == 5
        assert a.recv(16) == b"three"
        p.unwatch(a.fileno(), "conn-a")
        b.send(b"late")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert got == [("a", b"request")]  # unwatched: its reader is gone too
        p.close()
        for s_ in (a, b, c, d, e, f):
            s_.close()

    run(main())


def test_a_completed_store_call_ends_the_spin():
    async def main():
        pool = FakePool()
        pool.done = True
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool])
        p.kick()
        await asyncio.sleep(0)
        assert (p.spins, p.hits) == (1, 1)
        p.close()

    run(main())


def test_a_spin_without_work_runs_out_and_is_recorded():
    async def main():
        a, b = socket.socketpair()
        p = IdlePoller(asyncio.get_running_loop(), 0.002)
        p.watch(a.fileno(), "conn")
        p.kick()
        p.kick()  # one spin per loop pass, however many connections sent
        await asyncio.sleep(0)
        assert (p.spins, p.hits) == (1, 0)
        assert p.missed_at is not None
        p.close()
        a.close(), b.close()

    run(main())


def test_the_spin_yields_the_cpu_on_every_turn_with_no_store_call_out(monkeypatch):
    """A spin with nothing in flight still lets any thread ready on its CPU go first: on a
    shared machine the bricks, libgfapi's threads and the initiator need that CPU."""
    import os

    yields = []
    real = os.sched_yield
    monkeypatch.setattr(os, "sched_yield", lambda: (yields.append(1), real())[1])

    async def main():
        a, b = socket.socketpair()
        p = IdlePoller(asyncio.get_running_loop(), 0.002)  # no pools: nothing in flight
        p.watch(a.fileno(), "conn")
        p.kick()
        await asyncio.sleep(0)
        assert (p.spins, p.hits) == (1, 0)
        p.close()
        a.close(), b.close()

    run(main())
    assert len(yields) >= 1


def test_the_spin_shrinks_to_nothing_when_work_comes_late_and_grows_back():
    async def main():
        p = IdlePoller(asyncio.get_running_loop(), 100e-6)
        assert p.current == 100e-6
        for _ in range(10):  # a slow store: every next request came a second later
            p.missed_at = time.perf_counter() - 1.0
            p.woke()
        assert p.current == 0.0
        p.kick()
        await asyncio.sleep(0)
        assert p.spins == 0 and p.missed_at is not None  # no spin, but the gap is still watched
        for _ in range(4):  # requests come right after: the spin grows back to the budget
            p.missed_at = time.perf_counter()
            p.woke()
        assert p.current == 100e-6
        assert p.missed_at is None
        p.close()

    run(main())


def test_unwatch_by_another_owner_keeps_the_registration():
    async def main():
        a, b = socket.socketpair()
        p = IdlePoller(asyncio.get_running_loop(), 10.0)
        p.watch(a.fileno(), "new")
        p.unwatch(a.fileno(), "old")  # a closed connection whose number was reused
        b.send(b"x")
        p.kick()
        await asyncio.sleep(0)
        assert p.hits == 1
        p.unwatch(a.fileno(), "new")
        p.watch(a.fileno(), "newer")
        p.watch(a.fileno(), "newest")  # registered twice: modified, not an error
        p.close()
        a.close(), b.close()

    run(main())


def test_a_zero_budget_never_spins():
    async def main():
        p = IdlePoller(asyncio.get_running_loop(), 0.0)
        p.watch(0, "conn")
        p.kick()
        await asyncio.sleep(0)
        assert p.spins == 0
        p.close()

    run(main())
