"""The daemon: portals (listeners), targets, sessions, the store thread pool, lifecycle.

Startup order (see ``cli/serve.py``): restore the saved configuration into the registry,
start the control socket, then open the portals, so no initiator ever sees a half-built
target. Shutdown: close the portals, let running commands finish (bounded), answer or close
every connection, then close the backing stores.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..buffers import POOL, MemoryBudget, default_budget
from ..iscsi.connection import DEFAULT_TARGET_PARAMS
from ..iscsi.portal import TargetEntry
from ..iscsi.session import Session, SessionTable
from ..logs import PROBLEMS
from ..model.targets import Portal, Target, TargetRegistry
from .admission import Admission, Limits, Listener, Spare
from .driver import ConnectionDriver
from .gfaio import GfapiEngine
from .group import GroupMember
from .iopool import IoPool
from .poller import IdlePoller, Pool
from .runner import LAT_BUCKETS, LAT_SHIFT, WRITE_BEHIND_DEFAULT, Runner, lu_state
from .scheduling import GFAPI_BINDING, GfapiThreads
from .uring import Ring

log = logging.getLogger(__name__)

#: Seconds between looks at the read-buffer pool: one whole interval without a borrow and
#: it gives its buffers back (``BufferPool.trim``).
POOL_TRIM_INTERVAL = 5.0
#: At shutdown, how long closing a store waits for a (hung) call still running on it.
SHUTDOWN_CLOSE_TIMEOUT = 1.0
#: Seconds between two measures of the event loop's lag.
LAG_INTERVAL = 1.0


class PortalBinding:
    """A portal's bound, listening sockets that accept nothing yet (see Daemon.bind_portal)."""

    def __init__(self, portal: Portal, sockets: list[socket.socket]) -> None:
        self.portal = portal
        self.sockets = sockets
        #: the Portal new connections are given, once open (advertise edits replace it)
        self.recorded: list[Portal] | None = None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class _Listener:
    """A portal's accept loop (``admission.Listener``) and the binding it took over."""

    def __init__(self, listener: Listener, binding: PortalBinding) -> None:
        self.listener = listener
        self.binding = binding

    @property
    def sockets(self) -> list[socket.socket]:
        return self.listener.sockets

    def close(self) -> None:
        self.listener.close()

    async def wait_closed(self) -> None:
        await self.listener.wait_closed()


class Daemon:
    def __init__(
        self,
        state_dir: Path | str,
        *,
        params: dict[str, str] | None = None,
        io_threads: int | None = None,
        login_timeout: float = 30.0,
        nop_interval: float = 10.0,
        nop_timeout: float = 30.0,
        queue_depth: int = 128,
        drain_timeout: float = 30.0,
        io_timeout: float = 60.0,
        poll_usecs: float = 100.0,
        poll_store_usecs: float = 400.0,
        io_uring: bool = True,
        gfapi_async: bool = True,
        max_connections: int | None = None,
        max_prelogin: int | None = None,
        max_prelogin_per_host: int | None = None,
        max_connections_per_host: int | None = None,
        memory_budget: int | None = None,
        session_share: int | None = None,
        write_behind: int = WRITE_BEHIND_DEFAULT,
        gfapi_sched: str = "batch",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.registry = TargetRegistry()
        self.session_table = SessionTable()
        self.params: dict[str, str] = dict(DEFAULT_TARGET_PARAMS)
        if params:
            self.params.update(params)
        self.login_timeout = login_timeout
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self.queue_depth = queue_depth
        self.drain_timeout = drain_timeout
        self.connections: set[ConnectionDriver] = set()
        self._listeners: dict[Portal, _Listener] = {}
        #: Connection caps (``admission.py``); None: sized from the descriptor limit.
        self.limits = Limits.from_nofile(max_connections=max_connections, max_prelogin=max_prelogin,
                                         max_prelogin_per_host=max_prelogin_per_host,
                                         max_connections_per_host=max_connections_per_host)
        self.admission: Admission[ConnectionDriver] = Admission(self.limits, _activity, _evict)
        self._connecting: set[asyncio.Task[Any]] = set()
        self._spare: Spare | None = None
        self._log_timer: asyncio.TimerHandle | None = None
        # Blocking store calls (ctypes, os.preadv) release the GIL: a few threads per core
        # keep a queue depth of 32 busy without thrashing two cores.
        #: Worker threads per backing store for its blocking calls (SCSI data path). Each store
        #: has its own, so a store that hangs cannot starve the LUNs of other stores.
        self.io_threads = io_threads or max(8, 4 * (os.cpu_count() or 2))
        #: Seconds a store call may take before its command fails (above Gluster's 42 s
        #: network.ping-timeout, so a brick failover completes first). 0: no limit.
        self.io_timeout = io_timeout
        self._pools: dict[int, tuple[object, IoPool]] = {}
        #: The control path: opening stores, provisioning, anything else that blocks.
        self.store_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-ctl")
        #: Microseconds the loop spins for the next request after it answered one (0: never);
        #: see ``poller.py``.
        self.poll_usecs = poll_usecs
        #: Microseconds that spin goes on for a store call the request it received started
        #: (a QD1 gfapi read that missed the cache), so the CPU is awake when it completes (0:
        #: never); see ``poller.py``.
        self.poll_store_usecs = poll_store_usecs
        self._poller: IdlePoller | None = None
        #: Lone reads and writes of FUSE file stores through io_uring instead of the worker
        #: pools (``uring.py``), where the kernel allows it.
        self.io_uring = io_uring
        self._ring: Ring | None = None
        self._ring_tried = False
        #: Reads and writes of gfapi stores as libgfapi's asynchronous calls completed through
        #: an eventfd, instead of the worker pools (``gfaio.py``), where the build allows it.
        self.gfapi_async = gfapi_async
        self._gfaio: GfapiEngine | None = None
        self._gfaio_tried = False
        self._runner: Runner | None = None
        #: The write-behind window of each lone LUN on a blocking store (gfapi), bytes; 0: off
        #: (``serve --write-behind``, ``runner.Runner._write_behind``).
        self.write_behind = write_behind
        #: LUs taken out of service with a write-behind failure still owed to an initiator
        #: (``write_behind_drain``), by id: ``writes_lost`` names those still owed
        self._wb_lost: dict[int, Any] = {}
        #: Bytes the daemon may hold for commands' data, all sessions together (see
        #: ``buffers.MemoryBudget``; default: sized to the machine), and the most
        #: one session may hold (default: a quarter of it).
        self.budget = MemoryBudget(memory_budget or default_budget(), session_share)
        #: The read caches' memory target (``server/memory.py``), set by ``serve``; None
        #: where nothing drives it (tests, library use): the ledger keeps its limit.
        self.memory_governor: Any = None
        # The pool keeps at most an eighth of the budget for reuse, and less once idle.
        POOL.max_retained = self.budget.limit // 8
        self._trim_timer: asyncio.TimerHandle | None = None
        #: libgfapi's event threads under SCHED_BATCH (``scheduling.py``, ``serve
        #: --gfapi-sched-policy``), swept when stores were opened and on the trim timer
        self.gfapi_threads = GfapiThreads(gfapi_sched)
        #: Connections closed since the last collection of cyclic garbage (``_trim_pool``).
        self._closed_since_gc = 0
        _fix_malloc_thresholds()
        #: Counters of the metrics and views (``server/metrics.py``): logins accepted per
        #: target, refused per (target, reason); the event loop's lateness (seconds) the last
        #: time and the most since start, measured by a timer every LAG_INTERVAL seconds.
        self.logins: dict[str, int] = {}
        self.login_refusals: dict[tuple[str, str], int] = {}
        self.loop_lag = 0.0
        self.loop_lag_max = 0.0
        self._lag_timer: asyncio.TimerHandle | None = None
        self._lag_due = 0.0
        self.stopped = asyncio.Event()
        #: The portal group tag of every portal: 1, or in a gateway group the gateway's number
        #: (its TPGT, relative target port and target port group: docs/HA.md decision 2).
        self.tpgt = 1
        #: This daemon's part in a gateway group (``server/group.py``), None when alone.
        self.group: GroupMember | None = None
        #: its group directory (``group.shared.SharedDir``), closed at stop
        self.group_shared: Any = None
        #: command shipping (``server/ship.py``) of a group whose non-owners are
        #: active/non-optimized: this gateway's listener and its sender
        self.ship_server: Any = None
        self.shipper: Any = None

    def scheduling_status(self) -> dict[str, Any]:
        return self.gfapi_threads.summary()

    def stores_opened(self) -> None:
        self._sweep_threads()

    def _sweep_threads(self) -> None:
        """libgfapi's event threads started since (by a LUN opened) go under the batch policy;
        a daemon that never loaded libgfapi has none to look for. A failure is logged: it is
        a matter of speed, and must fail neither the change that opened the LUNs nor the
        trim timer."""
        if GFAPI_BINDING not in sys.modules:
            return
        try:
            self.gfapi_threads.sweep()
        except Exception:  # noqa: BLE001
            log.exception("scheduling: the sweep of libgfapi's threads failed")

    @property
    def poller(self) -> IdlePoller:
        if self._poller is None:
            self._poller = IdlePoller(asyncio.get_running_loop(), self.poll_usecs * 1e-6,
                                      self._completion_sources, self.poll_store_usecs * 1e-6,
                                      self._gfapi_sources)
        return self._poller

    def _completion_sources(self) -> list[Pool]:
        sources: list[Pool] = [pool for _, pool in self._pools.values()]
        if self._ring is not None:
            sources.append(self._ring)
        if self._gfaio is not None:
            sources.append(self._gfaio)
        return sources

    def _gfapi_sources(self) -> list[Pool]:
        """What the poller's wait for a QD1 miss watches: the gfapi engine alone."""
        return [] if self._gfaio is None else [self._gfaio]

    @property
    def runner(self) -> Runner:
        """The command runner of every connection (made on first use, in the loop)."""
        if self._runner is None:
            self._runner = Runner(self, write_behind=self.write_behind, budget=self.budget)
        return self._runner

    @property
    def ring(self) -> Ring | None:
        """The loop's io_uring, made on first use; None if disabled or unavailable."""
        if not self._ring_tried:
            self._ring_tried = True
            if self.io_uring:
                self._ring = Ring.create(asyncio.get_running_loop())
        return self._ring

    @property
    def gfaio(self) -> GfapiEngine | None:
        """The loop's asynchronous gfapi calls, made on first use; None if disabled or
        unavailable (a pure-Python build, another loop of the process has them)."""
        if not self._gfaio_tried:
            self._gfaio_tried = True
            if self.gfapi_async:
                self._gfaio = GfapiEngine.create(asyncio.get_running_loop())
        return self._gfaio

    @property
    def gfaio_calls(self) -> int | None:
        """Reads and writes started as asynchronous gfapi calls so far; None: not used."""
        return None if self._gfaio is None else self._gfaio.submitted

    @property
    def ring_calls(self) -> int | None:
        """Reads and writes io_uring has taken so far; None: no ring (off or refused)."""
        return None if self._ring is None else self._ring.submitted

    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the loop's current callback is done (the runner starts
        write-behind writes so, after their acknowledgements were sent)."""
        asyncio.get_running_loop().call_soon(callback)

    def pool_for(self, store: object) -> IoPool:
        entry = self._pools.get(id(store))
        if entry is None or entry[0] is not store:
            # A store may say how many calls in flight it serves best (``io_threads``).
            threads = getattr(store, "io_threads", None) or self.io_threads
            entry = (store, IoPool(asyncio.get_running_loop(), threads,
                                   name=f"io-{len(self._pools)}"))
            self._pools[id(store)] = entry
        return entry[1]

    def _trim_pool(self) -> None:
        """Give idle read buffers back (every ``POOL_TRIM_INTERVAL``), and the freed heap
        to the system: glibc keeps freed blocks of a few MiB in its arenas otherwise.

        A closed connection's objects (driver, connection, session, their tasks and buffers)
        refer to each other, so they wait for Python's oldest-generation collection, which
        runs rarely in a daemon whose objects live long: after connections closed, collect
        them here (a few ms, at most once per interval), then give the heap back."""
        self._sweep_threads()  # (the same timer: threads a LUN opened elsewhere started)
        freed = POOL.trim()
        if self._closed_since_gc:
            self._closed_since_gc = 0
            gc.collect()
            freed = 1
        if freed:
            malloc_trim()
        if self._trim_timer is not None:
            self._trim_timer.cancel()  # (called early, as by a test: still one timer)
        self._trim_timer = asyncio.get_running_loop().call_later(POOL_TRIM_INTERVAL, self._trim_pool)

    # ------------------------------------------------------------------ portals
    def portals(self) -> list[Portal]:
        return list(self._listeners)

    def bind_portal(self, portal: Portal) -> PortalBinding:
        """Bind and listen on ``portal``'s address without accepting yet (the prepare half of
        :meth:`add_portal`; may block on a name lookup, so callers run it off the loop).

        Raises OSError (address in use, not local); nothing stays open then. Until
        :meth:`open_portal` takes it, connections wait in the kernel's backlog; ``close()``
        gives the address back.
        """
        family = socket.AF_INET6 if ":" in portal.host else socket.AF_INET
        infos = socket.getaddrinfo(
            portal.host, portal.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        try:
            for fam, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(fam, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted ones inherit it
                if portal.port == 0 and len(sockets) > 1:  # one ephemeral port for every address
                    addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
                sock.bind(addr)
                sock.listen(256)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        if portal.port == 0:  # ephemeral port (tests): record the real one
            portal = Portal(portal.host, sockets[0].getsockname()[1], portal.advertise)
        return PortalBinding(portal, sockets)

    async def open_portal(self, binding: object) -> Portal:
        """Start accepting on a bound portal (the commit half of :meth:`add_portal`).

        ``binding`` is what :meth:`bind_portal` returned (the control layer holds it as an
        opaque ``control.interface.Binding``); anything else is a TypeError.
        """
        if not isinstance(binding, PortalBinding):
            raise TypeError(f"not a portal binding of this daemon: {binding!r}")
        portal = binding.portal
        if portal in self._listeners:
            binding.close()
            return portal
        loop = asyncio.get_running_loop()
        # Connections carry the portal as recorded here, so remove_portal and
        # set_portal_advertise find them by host and port.
        recorded = [portal]
        binding.recorded = recorded
        if self._spare is None:
            self._spare = Spare()
        if self._log_timer is None:
            self._log_timer = loop.call_later(PROBLEMS.interval, self._flush_logs)
        if self._trim_timer is None:
            self._trim_timer = loop.call_later(POOL_TRIM_INTERVAL, self._trim_pool)
        if self._lag_timer is None:
            self._lag_due = loop.time() + LAG_INTERVAL
            self._lag_timer = loop.call_at(self._lag_due, self._measure_lag)
        try:
            listener = Listener(loop, binding.sockets,
                                lambda c, a: self._accepted(c, a, recorded[0]), self._spare)
        except BaseException:
            binding.close()
            raise
        self._listeners[portal] = _Listener(listener, binding)
        self.registry.portals = self.portals()
        log.info("listening on %s:%d", portal.host, portal.port)
        return portal

    async def add_portal(self, portal: Portal) -> None:
        if portal in self._listeners:
            return
        await self.open_portal(self.bind_portal(portal))

    def set_portal_advertise(self, portal: Portal) -> None:
        """Change what SendTargets advertises for a listening portal, without reopening it."""
        key = self._listener_key(portal)
        if key is None:
            return
        listener = self._listeners.pop(key)
        new = Portal(key.host, key.port, portal.advertise)
        listener.binding.portal = new
        if listener.binding.recorded is not None:
            listener.binding.recorded[0] = new
        self._listeners[new] = listener
        for d in self.connections:
            if d.portal == key:
                d.portal = new
        self.registry.portals = self.portals()

    def connections_on(self, portal: Portal) -> int:
        """How many connections (logged in or not) came in through this portal."""
        key = self._listener_key(portal)
        return 0 if key is None else sum(1 for d in self.connections if d.portal == key)

    def _listener_key(self, portal: Portal) -> Portal | None:
        return next(
            (p for p in self._listeners if (p.host, p.port) == (portal.host, portal.port)), None
        )

    def _accepted(self, sock: socket.socket, address: Any, portal: Portal) -> None:
        """A new TCP connection: admitted within the caps (``admission.py``) or closed at once."""
        host = str(address[0]) if isinstance(address, tuple) and address else "?"
        if not self.admission.admit(host):
            sock.close()
            PROBLEMS.report(log, logging.WARNING, "connection refused", host,
                            "refused a connection from %s: %d connections (%d from that address), "
                            "all logged in", host, self.admission.total,
                            self.admission.connections_from(host),
                            fields={"address": host, "reason": "connection limit"})
            return
        sock.setblocking(False)
        driver = ConnectionDriver(self, portal)
        self.admission.add(driver, host)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: driver, sock))
        self._connecting.add(task)

        def made(t: asyncio.Task[Any]) -> None:
            self._connecting.discard(t)
            if t.cancelled() or t.exception() is not None:
                self.admission.gone(driver)
                sock.close()
                if not t.cancelled():
                    PROBLEMS.report(log, logging.WARNING, "connection setup failed", host,
                                    "connection from %s not set up: %s", host, str(t.exception()))

        task.add_done_callback(made)

    def connection_closed(self, driver: ConnectionDriver, exc: Exception | None = None) -> None:
        self.connections.discard(driver)
        self.admission.gone(driver)
        self._closed_since_gc += 1
        self._count_refusal(driver)
        _log_closed(driver, exc)

    def _count_refusal(self, driver: ConnectionDriver) -> None:
        """A connection that ends without a session: a refused or timed-out login counts
        under its target (if it named one) and its reason; one that just went away does not."""
        conn = driver.conn
        if conn is None or conn.session is not None or conn.login is None:
            return
        login = conn.login
        if login.refusal is not None:
            reason = login.refusal.name.lower()
        elif driver.close_reason == "login timeout":
            reason = "login_timeout"
        elif driver.close_reason:  # closed by the target (to make room, portal removed, ...)
            reason = "closed"
        else:
            return
        key = (login.target.name if login.target is not None else "", reason)
        self.login_refusals[key] = self.login_refusals.get(key, 0) + 1

    def _measure_lag(self) -> None:
        """How late this timer ran: the event loop's lag (a blocked loop delays every answer)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        lag = max(0.0, now - self._lag_due)
        self.loop_lag = lag
        if lag > self.loop_lag_max:
            self.loop_lag_max = lag
        self._lag_due = now + LAG_INTERVAL
        self._lag_timer = loop.call_at(self._lag_due, self._measure_lag)

    def _flush_logs(self) -> None:
        # The summaries of rate-limited problems (logs.py), also once the flood has stopped.
        PROBLEMS.flush()
        self._log_timer = asyncio.get_running_loop().call_later(PROBLEMS.interval, self._flush_logs)

    async def remove_portal(self, portal: Portal) -> None:
        key = self._listener_key(portal)
        if key is None:
            return
        server = self._listeners.pop(key)
        server.close()
        self.registry.portals = self.portals()
        for d in list(self.connections):
            if d.portal == key:
                d.close("portal removed")
        await server.wait_closed()
        log.info("portal %s:%d closed", key.host, key.port)

    # ------------------------------------------------------------------ targets
    def add_target(self, target: Target) -> None:
        self.registry.targets[target.name] = target

    async def remove_target(self, name: str) -> None:
        target = self.registry.lookup(name)
        if target is None:
            return
        for d in self.drivers_of(target):
            d.close("target removed")
        del self.registry.targets[target.name]

    def drivers_of(self, target: TargetEntry) -> list[ConnectionDriver]:
        return [
            d for d in self.connections
            if d.conn is not None and d.conn.session is not None and d.conn.session.target is target
        ]

    # ------------------------------------------------------------------ sessions
    def login_progress(self, driver: ConnectionDriver) -> None:
        self.admission.progressed(driver)

    def session_started(self, session: Session, driver: ConnectionDriver) -> None:
        self.admission.logged_in(driver)
        session.extra["drivers"] = [driver]
        session.extra["login_time"] = time.time()
        target = session.target
        name = target.name if target is not None else ""
        self.logins[name] = self.logins.get(name, 0) + 1
        if target is not None and target.device is not None and session.nexus is not None:
            target.device.nexus_added(session.nexus)

    def session_ended(self, session: Session) -> None:
        self.session_table.remove(session)
        target = session.target
        if target is not None and target.device is not None and session.nexus is not None:
            target.device.nexus_lost(session.nexus)
            if self.shipper is not None:  # the owners this gateway shipped to end it too
                self.shipper.nexus_gone(session.nexus)

    def drop_session(self, session: Session, reason: str) -> None:
        for d in session.extra.get("drivers", ()):
            d.close(reason)
        self.session_ended(session)

    def sessions(self) -> list[dict[str, Any]]:
        out = []
        for s in self.session_table:
            drivers = s.extra.get("drivers", [])
            conns = [d.conn.describe() for d in drivers if d.conn is not None]
            out.append({
                "tsih": s.tsih,
                "isid": s.isid.hex(),
                "initiator_name": s.initiator_name,
                "initiator_address": conns[0]["initiator_address"] if conns else None,
                "target": s.target.name if s.target else None,
                "session_type": s.session_type,
                "portal": f"{drivers[0].portal.host}:{drivers[0].portal.port}" if drivers else None,
                "params": s.params.as_dict() if hasattr(s.params, "as_dict") else {},
                "commands_in_flight": sum(c["commands_in_flight"] for c in conns),
                "connections": conns,
                "login_time": s.extra.get("login_time"),
                # the counts of its connections now open (a connection that ended took its own)
                "commands": sum(d.commands for d in drivers),
                "errors": sum(d.errors for d in drivers),
                "bytes_in": sum(d.bytes_in for d in drivers),
                "bytes_out": sum(d.bytes_out for d in drivers),
            })
        return out

    def lun_stats(self) -> list[dict[str, Any]]:
        """Every LUN's counters (``runner.LuStats``), as ``lun stats`` and the metrics show them."""
        from .metrics import SENSE_KEYS

        out = []
        for name, target in sorted(self.registry.targets.items()):
            device = target.device
            for lun, lu in sorted(getattr(device, "luns", {}).items()):
                st = lu_state(lu).stats
                cumulative, buckets = 0, []
                for i, n in enumerate(st.latency):
                    cumulative += n
                    le = 2 ** (LAT_SHIFT + i) / 1e9 if i < LAT_BUCKETS - 1 else None  # None: +Inf
                    buckets.append([le, cumulative])
                out.append({
                    "target": name, "lun": lun,
                    "reads": st.reads, "writes": st.writes, "others": st.others,
                    "read_bytes": st.read_bytes, "write_bytes": st.write_bytes,
                    "errors": {SENSE_KEYS[k]: n for k, n in enumerate(st.errors) if n},
                    "busy": st.busy, "unit_attentions": st.errors[6],
                    "io_timeouts": st.timeouts, "in_flight": st.in_flight,
                    "write_behind_pending_bytes": lu_state(lu).wb_bytes,
                    "write_behind_writes": st.wb_writes,
                    "write_behind_deferred_errors": st.wb_errors,
                    "latency": {"buckets": buckets, "sum_seconds": st.latency_ns / 1e9,
                                "count": cumulative},
                })
        return out

    async def write_behind_drain(self, lu: Any) -> None:
        """Before ``lu``'s store closes: no more write-behind on it, and its pending
        write-behind writes finished (each ends by the I/O timeout at the latest; a deferred
        error is logged there, nobody is left to report it to)."""
        if self._runner is None:
            return
        idle = self._runner.write_behind_idle(lu)
        if idle is not None:
            # (each write ends by its I/O timeout; without one, as long as commands may drain)
            timeout = self.io_timeout + 1 if self.io_timeout else self.drain_timeout
            try:
                await asyncio.wait_for(idle, timeout)
            except TimeoutError:
                log.warning("write-behind writes still pending after %gs; closing the store "
                            "anyway", timeout)
        rs = getattr(lu, "runner_state", None)
        lost = rs.wb_error if rs is not None else None
        if rs is not None and lost is not None:  # (kept: a LU a failed config change puts
            # back still reports it)
            self._wb_lost[id(lu)] = lu
            name = getattr(lu.store, "name", None) or "store"
            PROBLEMS.report(log, logging.ERROR, "write-behind error unreported", name,
                            "%s: taken out of service with a write acknowledged early that "
                            "failed, never reported to an initiator (no SYNCHRONIZE CACHE or "
                            "FUA write of %s came after it): %s", name,
                            ", ".join(sorted(rs.wb_owed)), lost, burst=1)

    def writes_lost(self) -> list[str]:
        """The stores of the LUs taken out of service with a write acknowledged early that
        failed and was never reported to its initiator (a LU a failed config change put back
        and whose initiator was told since is not one): data may be lost (``serve``'s exit
        status says so)."""
        return sorted({getattr(lu.store, "name", None) or "store"
                       for lu in self._wb_lost.values() if lu.runner_state.wb_owed})

    def write_behind_resume(self, lu: Any) -> None:
        """``lu`` serves on after :meth:`write_behind_drain` (a config change that would have
        closed it was undone): write-behind on it again."""
        if self._runner is not None:
            self._runner.write_behind_resume(lu)

    def write_behind_status(self, lu: Any) -> dict[str, Any]:
        """``lun list``'s view of a LUN's write-behind (``Runner.write_behind_status``)."""
        return self.runner.write_behind_status(lu)

    async def close_session(self, tsih: int) -> bool:
        session = self.session_table.by_tsih.get(tsih)
        if session is None:
            return False
        self.drop_session(session, "closed by the administrator")
        return True

    # ------------------------------------------------------------------ the gateway group
    def join_group(self, member: GroupMember) -> None:
        """Serve as gateway ``member.number`` of a group: every portal's TPGT is that number
        (before any portal opens), and a PREEMPT AND ABORT made through another gateway aborts
        the victims' tasks here."""
        self.group = member
        self.tpgt = member.number
        member.abort = self.abort_lu_tasks
        member.abort_all = functools.partial(self.abort_lu_tasks, initiator_ports=None)
        member.session_counts = self.sessions_per_lu

    def sessions_per_lu(self, lus: list[Any]) -> list[int]:
        """How many normal sessions of this daemon reach each of ``lus`` (through a target
        whose device has it): what a group member publishes for ``group show``."""
        per_target: dict[int, int] = {}
        for s in self.session_table:
            if s.session_type == "Normal" and s.target is not None:
                per_target[id(s.target)] = per_target.get(id(s.target), 0) + 1
        out = []
        targets = list(self.registry.targets.values())
        for lu in lus:
            n = 0
            for target in targets:
                luns = getattr(target.device, "luns", None) or {}
                if any(candidate is lu for candidate in luns.values()):
                    n += per_target.get(id(target), 0)
            out.append(n)
        return out

    def abort_lu_tasks(self, lu: Any, initiator_ports: list[str] | None) -> None:
        """Abort the tasks these initiator ports have on ``lu`` (SPC-4 5.13.11.2.4 PREEMPT AND
        ABORT, decided on another gateway); None: every task of ``lu`` (a LOGICAL UNIT RESET
        received by another gateway)."""
        victims = set(initiator_ports) if initiator_ports is not None else None
        for target in list(self.registry.targets.values()):
            device = target.device
            luns = getattr(device, "luns", None) or {}
            for n, candidate in list(luns.items()):
                if candidate is not lu:
                    continue
                for d in self.drivers_of(target):
                    conn = d.conn
                    s = conn.session if conn is not None else None
                    if conn is not None and s is not None and s.nexus is not None \
                            and (victims is None or s.nexus.initiator_port in victims):
                        conn.abort_tasks(functools.partial(_on_lun, n))
        if self.ship_server is not None:  # and what the other gateways shipped here for it
            self.ship_server.abort_tasks(lu, victims)

    async def start_shipping(self, shared: Any, host: str, port: int = 0) -> str | None:
        """Command shipping (docs/HA.md decision 1) when the group's non-owners are
        active/non-optimized: read (or make) the group secret, listen on ``host:port``
        (port 0: ephemeral), publish the address with the gateway record and hook the group
        LUs. Returns the address published, None in standby mode."""
        from . import ship

        member = self.group
        if member is None or member.non_owner != "non-optimized":
            return None
        loop = asyncio.get_running_loop()
        secret = await loop.run_in_executor(self.store_executor, ship.group_secret, shared)

        def resolve(target: str, lun: int) -> Any:
            entry = self.registry.lookup(target)
            return entry.device if entry is not None else None

        server = ship.ShipServer(member, self.runner, resolve, secret, self.budget)
        address = await server.start(host, port)
        if host in ("", "0.0.0.0", "::"):  # a wildcard is no address for the peers
            import socket

            address = f"{socket.gethostname()}:{address.rpartition(':')[2]}"
        self.ship_server = server
        member.ship_address = address
        self.shipper = ship.Shipper(member, secret, self.runner,
                                    timeout=self.io_timeout + member.lease_seconds)
        self.shipper.install()
        log.info("gateway group: command shipping on %s (non-owner paths active/non-optimized)",
                 address)
        return address

    def group_status(self) -> dict[str, Any] | None:
        """The gateway group as this daemon sees it (``GroupMember.status``), None when alone."""
        return self.group.status() if self.group is not None else None

    async def group_move(self, lun_key: str, gateway: str) -> None:
        """Ask the owner of the group LUN ``lun_key`` to hand it to ``gateway``."""
        if self.group is None:
            raise ValueError("this daemon is not in a gateway group")
        await self.group.move(lun_key, gateway)

    # ------------------------------------------------------------------ lifecycle
    async def stop(self) -> None:
        """Close portals, let commands in flight finish (bounded), close connections, stores."""
        if self.memory_governor is not None:  # (its thread may be mid-shrink: off the loop)
            await asyncio.to_thread(self.memory_governor.stop)
        for portal in list(self._listeners):
            server = self._listeners.pop(portal)
            server.close()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None
        drivers = list(self.connections)
        if drivers:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(d.drain() for d in drivers)), timeout=self.drain_timeout
                )
            except TimeoutError:
                log.warning("commands still running after %.0fs; closing anyway", self.drain_timeout)
        if self.shipper is not None:
            self.shipper.close()
        if self.ship_server is not None:
            await self.ship_server.stop()
        if self.group is not None:
            # A planned stop: the LUs this gateway owns are released now, so a peer takes
            # them at its next beat instead of after a lease.
            try:
                await self.group.stop(release=True)
            except Exception:  # noqa: BLE001 - the rest of the shutdown must go on
                log.exception("leaving the gateway group")
            shared, self.group_shared = self.group_shared, None
            if shared is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(self.store_executor,
                                                                     shared.close)
                except Exception:  # noqa: BLE001
                    log.exception("closing the group directory")
        for d in drivers:
            d.close("daemon shutting down")
        if drivers:
            await asyncio.wait([asyncio.ensure_future(d.closed.wait()) for d in drivers], timeout=5)
        # Acknowledged writes reach the stores: every LU's at once (on a hung volume each
        # waits up to the I/O timeout; one after the other, that many times over).
        lus = [target.device.lu(n) for target in list(self.registry.targets.values())
               if target.device is not None for n in list(getattr(target.device, "luns", {}))]
        await asyncio.gather(*(self.write_behind_drain(lu) for lu in lus if lu is not None))
        if self._gfaio is not None:  # (their stores' close would wait for them, on this loop)
            await self._gfaio.settle(SHUTDOWN_CLOSE_TIMEOUT)
        for target in list(self.registry.targets.values()):
            device = target.device
            if device is None:
                continue
            for lun in list(getattr(device, "luns", {})):
                lu = device.lu(lun)
                if lu is not None:
                    try:
                        # Commands were drained above; a call still running is hung: do not
                        # hold the exit for it (the process ends, a leaked handle with it).
                        lu.store.close(timeout=SHUTDOWN_CLOSE_TIMEOUT)
                    except Exception:  # closing must go on for the other stores
                        log.exception("closing the store of %s LUN %d", target.name, lun)
        for _, pool in self._pools.values():
            pool.shutdown()
        if self._ring is not None:
            self._ring.close()
        if self._gfaio is not None:
            self._gfaio.close()
        self.store_executor.shutdown(wait=True, cancel_futures=False)
        if self._poller is not None:
            self._poller.close()
        if self._spare is not None:
            self._spare.close()
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        PROBLEMS.flush(everything=True)
        self.stopped.set()


def _on_lun(lun: int, task: Any) -> bool:
    return bool(task.lun == lun)


def _activity(driver: ConnectionDriver) -> float | None:
    # For a connection still logging in, its core's clock is when it last received bytes
    # (or was made): its login deadline is the only timer it has, and that closes it.
    conn = driver.conn
    return conn.now if conn is not None and driver.transport is not None else None


def _evict(driver: ConnectionDriver, why: str) -> None:
    conn = driver.conn
    host = conn.peer_address if conn is not None else "?"
    PROBLEMS.report(log, logging.WARNING, "connection closed to make room", host,
                    "closed a connection from %s that had not logged in: %s", host, why,
                    fields={"address": host, "reason": why})
    driver.close(why)


_libc_trim: Any = None


#: glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h), and the value we fix it at: its
#: default, 128 KiB.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def _fix_malloc_thresholds() -> None:
    """Fix glibc's mmap threshold at its default instead of letting it float.

    glibc raises the threshold to the size of each mmapped block freed (up to 32 MiB), and
    its trim threshold to twice that: after the first 8 or 32 MiB command buffer was freed,
    every later one came from the worker threads' arenas, whose free tops under 64 MiB are
    never given back, so RSS stayed near its peak after a load ended (a fuzz run here:
    36 MiB at the start, 250 MiB at the peak, 190 MiB a minute after; with the threshold
    fixed: 87 MiB at the peak and 38 MiB after). Large buffers are pooled
    (``gluster_iscsi.buffers``), so the hot path does not pay for mmap."""
    mallopt = _glibc("mallopt")
    if mallopt:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def malloc_trim() -> None:
    """glibc's malloc_trim(0), where there is one (a no-op elsewhere)."""
    global _libc_trim
    if _libc_trim is None:
        _libc_trim = _glibc("malloc_trim")
    if _libc_trim:
        _libc_trim(0)


def _glibc(name: str) -> Any:
    """A function of the C library by name, or False where there is none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return False


#: Why a connection ends when nothing went wrong: the administrator's or the daemon's doing,
#: an initiator's own new login, or an initiator closing TCP cleanly without a Logout
#: (libiscsi's tools do): logged at INFO. Anything else a logged-in connection ends with (a
#: reset, a NOP-In or login timeout, a digest error) is a WARNING.
_CLEAN_CLOSE = "connection closed by the initiator without logout"
_ORDINARY_CLOSE = frozenset({
    "logout", "closed by the administrator", "daemon shutting down", "portal removed",
    "target removed", "session reinstated by a new login", "target cold reset", _CLEAN_CLOSE,
})


def _log_closed(driver: ConnectionDriver, exc: Exception | None) -> None:
    """One line for the end of a connection: logout, or a drop with its reason; with the
    initiator, its address, the target and the session's TSIH (escaped, rate-limited)."""
    conn = driver.conn
    if conn is None:
        return
    reason = driver.close_reason or (f"connection lost: {exc}" if exc is not None
                                     else _CLEAN_CLOSE)
    session = conn.session
    if session is None:  # never logged in: a refused login was logged when refused
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection from %s closed before login: %s", conn.peer_address, reason)
        return
    target = session.target.name if session.target is not None else None
    fields = {"initiator": session.initiator_name, "address": conn.peer_address, "target": target,
              "tsih": session.tsih, "reason": reason, "session_type": session.session_type}
    where = f" to {target}" if target else ""
    if reason == "logout":
        PROBLEMS.report(log, logging.INFO, "iSCSI logout", conn.peer_address,
                        "iSCSI logout: %s at %s tsih=%d %s session%s", session.initiator_name,
                        conn.peer_address, session.tsih, session.session_type, where,
                        burst=20, fields=fields)
        return
    level = logging.INFO if reason in _ORDINARY_CLOSE else logging.WARNING
    PROBLEMS.report(log, level, "iSCSI connection dropped", conn.peer_address,
                    "iSCSI connection dropped: %s at %s tsih=%d %s session%s: %s",
                    session.initiator_name, conn.peer_address, session.tsih, session.session_type,
                    where, reason, burst=20, fields=fields)
