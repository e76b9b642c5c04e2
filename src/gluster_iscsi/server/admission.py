"""Who may connect: connection caps, the accept loop, and descriptor exhaustion.

Every TCP connection costs the daemon two descriptors (the transport's socket and the driver's
duplicate for socket options) before the peer has said anything, so without caps a peer that
never logs in can take every descriptor and lock out legitimate logins and the control socket.

Caps (:class:`Limits`, defaults sized from ``RLIMIT_NOFILE``, keeping a reserve for the stores,
the control socket and the like):

- ``max_connections``: connections in total, logged in or not;
- ``max_connections_per_host``: the same from one source address, logged in or not, so that
  one address can never hold the whole daemon (logged-in sessions are never closed to make
  room, so without it one host that logs in ``max_connections`` discovery sessions and answers
  their NOP pings locks every other host out for as long as it likes);
- ``max_prelogin``: connections that have not completed a login yet;
- ``max_prelogin_per_host``: the same from one source address.

When a new connection would exceed a cap, room is made by closing a connection that has not
logged in, in the scope that is full (that address for the per-host caps, anyone for the
others); the new one is refused (closed at once) only when there is none to close (every
connection in the scope is logged in). Which one: first those that never made *login
progress* (never sent a complete, valid Login Request: bare TCP connects, garbage), taken from
the address with the most connections logging in, its least recently active first; a
connection in the middle of a login (the driver says when one made progress:
:meth:`Admission.progressed`) only when there is no such one, the least recently active
first. Why not simply refuse the newest: an attacker who holds the pre-login slots with idle
sockets, reopening each one the login timeout closes, would then keep every legitimate login
out for as long as he likes. Why not only the least recently active: a real initiator waiting
between login steps (a WAN round trip, a CHAP secret being computed) is idle too, and a burst
of bare connects would close it mid-login. Logged-in sessions are never closed to make room.

The accept loop is the daemon's own (:class:`Listener`), not ``loop.create_server``'s, so an
``accept`` that fails for want of descriptors (EMFILE, ENFILE) is logged once per burst with a
count, sheds the waiting connection through a spare descriptor (closed, accept-and-close,
reopened), and pauses accepting briefly instead of spinning on a listener that stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..logs import PROBLEMS

log = logging.getLogger(__name__)

#: Descriptors per connection (the transport's socket, the driver's duplicate).
FDS_PER_CONNECTION = 2
#: Seconds accepting pauses after it ran out of descriptors.
ACCEPT_BACKOFF = 0.1
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 64  # connections taken per wake-up, so the loop serves the others too


#: The least default per-address cap on connections (see :func:`per_host_default`).
PER_HOST_FLOOR = 64


def per_host_default(max_connections: int) -> int:
    """The default cap on one address's connections: a quarter of ``max_connections``, at
    least :data:`PER_HOST_FLOOR` (a hypervisor or container host logs in one session per
    volume, dozens of them, and a few discovery sessions besides), but always below
    ``max_connections`` (one address can never hold them all: another host can always
    connect); 1 when the daemon takes only one connection."""
    if max_connections <= 1:
        return 1
    return min(max_connections - 1, max(PER_HOST_FLOOR, max_connections // 4))


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_prelogin: int
    max_prelogin_per_host: int
    #: 0: :func:`per_host_default` of ``max_connections``.
    max_connections_per_host: int = 0

    def __post_init__(self) -> None:
        if self.max_connections_per_host <= 0:
            object.__setattr__(self, "max_connections_per_host", per_host_default(self.max_connections))

    @classmethod
    def from_nofile(cls, nofile: int | None = None, *, max_connections: int | None = None,
                    max_prelogin: int | None = None,
                    max_prelogin_per_host: int | None = None,
                    max_connections_per_host: int | None = None) -> Limits:
        """Defaults from the descriptor limit (the soft ``RLIMIT_NOFILE``): an eighth of it
        (at least 64, or half of a tiny limit) kept for everything but connections, the rest two per connection; half
        of the connections may be logging in, a quarter of those from one address but at
        least 256 (a host that logs in all its sessions at once after a reboot must not close
        its own logins in progress); one address's connections: :func:`per_host_default`.
        Given values win; each is at least 1."""
        if nofile is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if nofile == resource.RLIM_INFINITY or nofile <= 0:
                nofile = 1 << 20
        reserve = max(min(64, nofile // 2), nofile // 8)
        total = max(1, max_connections or max(1, (nofile - reserve) // FDS_PER_CONNECTION))
        pre = max_prelogin or max(1, min(total, max(4, total // 2)))
        per_host = max_prelogin_per_host or min(pre, max(256, pre // 4))
        conns_per_host = max_connections_per_host or per_host_default(total)
        return cls(total, max(1, pre), max(1, per_host), max(1, conns_per_host))


T = TypeVar("T")


class Admission(Generic[T]):
    """The bookkeeping of the caps: connections admitted per address, and which have not
    logged in yet (and of those, which made login progress).

    ``activity(c)`` is when ``c`` last received bytes (None while it is not set up yet: not
    closed to make room); ``evict(c, why)`` closes ``c``.
    """

    def __init__(self, limits: Limits, activity: Callable[[T], float | None],
                 evict: Callable[[T, str], None]) -> None:
        self.limits = limits
        self.activity = activity
        self.evict = evict
        self._all: dict[T, str] = {}  # every connection admitted, and its source address
        self._per_host: dict[str, int] = {}  # connections per source address
        # per source address, the connections not logged in (oldest first), and whether each
        # made login progress
        self._prelogin: dict[str, dict[T, bool]] = {}
        self._host: dict[T, str] = {}  # the address of each connection not logged in
        self._n_prelogin = 0

    @property
    def total(self) -> int:
        return len(self._all)

    @property
    def prelogin(self) -> int:
        return self._n_prelogin

    def prelogin_from(self, host: str) -> int:
        return len(self._prelogin.get(host, ()))

    def connections_from(self, host: str) -> int:
        return self._per_host.get(host, 0)

    def admit(self, host: str) -> bool:
        """Make room for a new connection from ``host``; False if it is to be refused."""
        lim = self.limits
        if (self.connections_from(host) >= lim.max_connections_per_host
                and not self._make_room(host, "connection limit for its address")):
            return False
        if self.total >= lim.max_connections and not self._make_room(None, "connection limit"):
            return False
        if self._n_prelogin >= lim.max_prelogin:
            self._make_room(None, "pre-login connection limit")
        if self.prelogin_from(host) >= lim.max_prelogin_per_host:
            self._make_room(host, "pre-login connection limit for its address")
        return True

    def add(self, c: T, host: str) -> None:
        self._all[c] = host
        self._per_host[host] = self._per_host.get(host, 0) + 1
        self._prelogin.setdefault(host, {})[c] = False
        self._host[c] = host
        self._n_prelogin += 1

    def progressed(self, c: T) -> None:
        """``c`` sent a complete, valid Login Request (its login answered, not refused): from
        now on it is closed to make room only when no connection without progress is left."""
        host = self._host.get(c)
        if host is not None:
            self._prelogin[host][c] = True

    def logged_in(self, c: T) -> None:
        self._forget_prelogin(c)

    def gone(self, c: T) -> None:
        host = self._all.pop(c, None)
        if host is not None:
            n = self._per_host[host] - 1
            if n:
                self._per_host[host] = n
            else:
                del self._per_host[host]
        self._forget_prelogin(c)

    def _forget_prelogin(self, c: T) -> None:
        host = self._host.pop(c, None)
        if host is None:
            return
        conns = self._prelogin[host]
        del conns[c]
        self._n_prelogin -= 1
        if not conns:
            del self._prelogin[host]

    def _make_room(self, host: str | None, why: str) -> bool:
        """Close one connection not logged in (of ``host``, or anyone's), see the module's
        note for which; False if there is none."""
        if host is not None:
            scope = {host: self._prelogin.get(host, {})}
        else:
            scope = self._prelogin
        victim: Any = None  # the pick among connections without login progress
        rank = (0, 0.0)  # (-connections logging in from its address, activity): least wins
        fallback: Any = None  # the least recently active one with progress
        best = 0.0
        for conns in scope.values():
            crowd = -len(conns)
            for c, progressed in conns.items():  # oldest first: ties go to the oldest
                t = self.activity(c)
                if t is None:
                    continue
                if not progressed:
                    if victim is None or (crowd, t) < rank:
                        victim, rank = c, (crowd, t)
                elif fallback is None or t < best:
                    fallback, best = c, t
        if victim is None:
            victim = fallback
        if victim is None:
            return False
        self.gone(victim)
        self.evict(victim, why)
        return True


class Listener:
    """A portal's listening sockets and their accept loop; ``on_accept(sock, address)`` takes
    each connection. Has what the daemon used of ``asyncio.Server``: ``sockets``, ``close``,
    ``wait_closed``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                 on_accept: Callable[[socket.socket, Any], None], spare: Spare) -> None:
        self.loop = loop
        self.sockets = socks
        self._on_accept = on_accept
        self._spare = spare
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        name = socks[0].getsockname()
        self._name = f"{name[0]}:{name[1]}"
        self._watch()

    def _watch(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _OUT_OF_RESOURCES:
                    self._exhausted(lsock, e)
                    return
                # ECONNABORTED and the like: that connection is gone, the next may be fine
                PROBLEMS.report(log, logging.WARNING, "accept failed", self._name,
                                "accept on %s failed: %s", self._name, os.strerror(e.errno or 0))
                continue
            try:
                self._on_accept(conn, addr)
            except Exception:  # a bug must cost this connection only, never the listener
                conn.close()
                PROBLEMS.report(log, logging.ERROR, "internal error accepting", self._name,
                                "internal error accepting on %s", self._name, exc_info=True)

    def _exhausted(self, lsock: socket.socket, e: OSError) -> None:
        PROBLEMS.report(log, logging.WARNING, "out of descriptors", self._name,
                        "cannot accept on %s: %s; refusing connections until descriptors are free",
                        self._name, os.strerror(e.errno or 0))
        self._spare.shed(lsock)
        # Pause: a listener that stays readable would otherwise spin the loop.
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
        self._resume = self.loop.call_later(ACCEPT_BACKOFF, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if not self._closed:
            self._watch()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        for sock in self.sockets:
            if self._resume is None:
                self.loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        return


class Spare:
    """One descriptor held back so that, out of descriptors, a waiting connection can still be
    accepted and closed at once (the peer gets a prompt close, not a hang in the backlog)."""

    def __init__(self) -> None:
        self.fd = -1
        self._take()

    def _take(self) -> None:
        try:
            self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1

    def shed(self, listener: socket.socket) -> None:
        if self.fd < 0:
            self._take()
            return
        os.close(self.fd)
        self.fd = -1
        try:
            conn, _ = listener.accept()
            conn.close()
        except OSError:
            pass
        self._take()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
