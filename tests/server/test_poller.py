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


class StorePool:
    """A store whose call the received request starts (``start``); a thread may end it."""

    def __init__(self) -> None:
        self.flight = False
        self.done = False

    def start(self) -> None:
        self.flight = True
        self.done = False

    def in_flight(self) -> bool:
        return self.flight

    def has_done(self) -> bool:
        return self.done


def _qd1(p: IdlePoller, pool: StorePool, a: socket.socket, miss: bool = True):
    """Watch ``a`` with a reader that receives one request and, for a miss, starts a call."""

    def read_now() -> None:
        a.recv(64)
        if miss:
            pool.start()

    p.watch(a.fileno(), "conn", read_now)


def test_the_spin_waits_for_the_store_call_its_request_started():
    """A QD1 miss: the request the spin received started a store call; the spin goes on
    until the call completes (not until the budget runs out), so the CPU is awake then."""

    async def main():
        import threading

        a, b = socket.socketpair()
        pool = StorePool()
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool], store_budget=10.0)
        _qd1(p, pool, a)
        b.send(b"request")
        threading.Timer(0.05, lambda: setattr(pool, "done", True)).start()
        t0 = time.perf_counter()
        p.kick(a.fileno())
        await asyncio.sleep(0)
        waited = time.perf_counter() - t0
        assert (p.store_spins, p.store_caught) == (1, 1)
        assert 0.04 < waited < 5.0  # ended by the completion, not by the 10 s budget
        p.close()
        a.close(), b.close()

    run(main())


def test_the_store_wait_runs_out_and_a_readable_connection_ends_it():
    async def main():
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        pool = StorePool()
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool], store_budget=0.02)
        _qd1(p, pool, a)
        p.watch(c.fileno(), "other")
        b.send(b"request")
        t0 = time.perf_counter()
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert time.perf_counter() - t0 >= 0.02
        assert (p.store_spins, p.store_caught) == (1, 0)  # the call never completed
        pool.flight = False
        b.send(b"request")
        d.send(b"another connection's")  # readable meanwhile: the loop has work, the wait ends
        p.store_budget = 10.0
        orig = pool.start

        def start_then_other() -> None:
            orig()
            d.send(b"x")

        pool.start = start_then_other  # type: ignore[method-assign]
        c.recv(64)
        t0 = time.perf_counter()
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert time.perf_counter() - t0 < 5.0
        assert (p.store_spins, p.store_caught) == (2, 1)
        p.close()
        for s in (a, b, c, d):
            s.close()

    run(main())


def test_no_store_wait_for_a_hit_for_calls_out_before_or_without_budget():
    async def main():
        a, b = socket.socketpair()
        pool = StorePool()
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool], store_budget=10.0)
        _qd1(p, pool, a, miss=False)  # answered at once: nothing in flight after it
        b.send(b"hit")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.hits, p.store_spins) == (1, 0)
        pool.flight = True  # a call was out before: the spin leaves the request to the loop
        pool.done = True
        b.send(b"request")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert p.store_spins == 0
        assert a.recv(64) == b"request"
        p.close()
        q = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool])  # no store budget
        pool.flight = False
        _qd1(q, pool, a)
        b.send(b"request")
        q.kick(a.fileno())
        await asyncio.sleep(0)
        assert (q.hits, q.store_spins, pool.flight) == (1, 0, True)
        q.close()
        assert IdlePoller(asyncio.get_running_loop(), 0.0, store_budget=1.0).store_budget == 0.0
        a.close(), b.close()

    run(main())


def test_the_store_wait_stops_while_calls_outlast_it_and_comes_back_when_they_do_not():
    """A far volume (calls longer than the budget) costs one budget of spin per
    STORE_PROBE_EVERY misses once a window ran out; probes that complete in time turn it on."""
    from gluster_iscsi.server.poller import STORE_PROBE_EVERY, STORE_WINDOW

    async def main():
        a, b = socket.socketpair()
        pool = StorePool()
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool], store_budget=0.001)

        async def miss() -> None:
            pool.flight = False
            b.send(b"request")
            p.kick(a.fileno())
            await asyncio.sleep(0)

        _qd1(p, pool, a)
        for _ in range(STORE_WINDOW - 1):
            await miss()
        assert p.store_on and p.store_spins == STORE_WINDOW - 1
        await miss()
        assert not p.store_on and (p.store_spins, p.store_caught) == (STORE_WINDOW, 0)
        for _ in range(STORE_PROBE_EVERY - 1):
            await miss()
        assert p.store_spins == STORE_WINDOW  # off: no wait
        await miss()
        assert p.store_spins == STORE_WINDOW + 1  # the probe
        # the store got fast: its calls are done as soon as they start
        orig = pool.start

        def fast() -> None:
            orig()
            pool.done = True

        pool.start = fast  # type: ignore[method-assign]
        for _ in range((STORE_WINDOW - 1) * STORE_PROBE_EVERY):
            await miss()
        assert p.store_on and p.store_caught == STORE_WINDOW - 1
        await miss()
        assert p.store_spins == 2 * STORE_WINDOW + 1  # waits again on every miss
        p.close()
        a.close(), b.close()

    run(main())


def test_the_store_wait_watches_only_the_sources_it_was_given():
    """The daemon waits for its gfapi engine's calls alone (``store_pools``): a FUSE file's
    call out through another source is left to the loop, as before."""

    async def main():
        a, b = socket.socketpair()
        fuse, gfapi = StorePool(), StorePool()
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [fuse, gfapi],
                       store_budget=10.0, store_pools=lambda: [gfapi])
        _qd1(p, fuse, a)  # the request starts a call of the other source
        b.send(b"request")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.hits, p.store_spins, fuse.flight) == (1, 0, True)
        fuse.flight = False
        p.watch(a.fileno(), "conn", lambda: (a.recv(64), gfapi.start(),
                                              setattr(gfapi, "done", True)))
        b.send(b"request")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.store_spins, p.store_caught) == (1, 1)
        p.close()
        a.close(), b.close()

    run(main())


def test_a_call_the_wait_saw_complete_is_completed_on_the_spot():
    """The store wait that sees its call done completes it itself (``take_done``), not in the
    loop's next turn; a wait that a readable connection or the budget ended leaves it alone."""

    class Taking(StorePool):
        def __init__(self) -> None:
            super().__init__()
            self.taken = 0

        def take_done(self) -> None:
            self.taken += 1
            self.flight = self.done = False

    async def main():
        import threading

        a, b = socket.socketpair()
        pool = Taking()
        p = IdlePoller(asyncio.get_running_loop(), 10.0, lambda: [pool], store_budget=10.0)
        _qd1(p, pool, a)
        b.send(b"request")
        threading.Timer(0.02, lambda: setattr(pool, "done", True)).start()
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.store_caught, pool.taken, pool.flight) == (1, 1, False)
        # the budget runs out: nothing to take
        p.store_budget = 0.005
        b.send(b"request")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.store_spins, p.store_caught, pool.taken, pool.flight) == (2, 1, 1, True)
        # another request readable ends the wait: left to the loop
        pool.flight = False
        p.store_budget = 10.0
        p.watch(a.fileno(), "conn", lambda: (a.recv(64), pool.start(), b.send(b"next")))
        b.send(b"request")
        p.kick(a.fileno())
        await asyncio.sleep(0)
        assert (p.store_spins, p.store_caught, pool.taken) == (3, 2, 1)
        p.close()
        a.close(), b.close()

    run(main())


def test_a_completion_that_raises_in_the_wait_leaves_the_poller_counting_and_waiting():
    """What a completion taken in the wait raises reaches the loop's exception handler (as from
    the engine's eventfd reader); the wait was counted, and the next miss is waited for."""

    class Raising(StorePool):
        def take_done(self) -> None:
            self.flight = self.done = False
            raise RuntimeError("a completion callback failed")

    async def main():
        import threading

        loop = asyncio.get_running_loop()
        seen: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["exception"]))
        a, b = socket.socketpair()
        pool = Raising()
        p = IdlePoller(loop, 10.0, lambda: [pool], store_budget=10.0)
        _qd1(p, pool, a)
        for n in (1, 2):
            b.send(b"request")
            threading.Timer(0.02, lambda: setattr(pool, "done", True)).start()
            p.kick(a.fileno())
            await asyncio.sleep(0)
            assert (p.store_spins, p.store_caught, p._window_spins, len(seen)) == (n, n, n, n)
        assert isinstance(seen[0], RuntimeError)
        p.close()
        a.close(), b.close()

    run(main())
