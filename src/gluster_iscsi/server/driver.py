"""The asyncio adapter for one iSCSI connection.

It moves bytes between the socket and the pure :class:`~gluster_iscsi.iscsi.connection.Connection`,
hands commands to the daemon's command runner (``runner.py``: it runs their I/O and calls
:meth:`ConnectionDriver.complete`), coordinates task management across sessions, and keeps
the NOP-In/login timer armed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Protocol

from ..iscsi import events as ev
from ..iscsi.connection import Connection
from ..iscsi.pdu import TmfFunction, TmfResponse
from ..logs import PROBLEMS
from ..scsi.sense import Asc, build_sense
from ..scsi.task import ScsiResult, ScsiTask, Status

if TYPE_CHECKING:
    from ..buffers import MemoryBudget
    from ..iscsi.portal import TargetEntry
    from ..iscsi.session import Session, SessionTable
    from ..model.targets import Portal, TargetRegistry
    from .poller import IdlePoller
    from .runner import Runner

log = logging.getLogger(__name__)

_COALESCE = 64 << 10  # join queued PDUs up to this many bytes into one write
_LOWAT_MIN = 64 << 10  # below this much still to come, wake for every byte as usual
_LOWAT_MAX = 256 << 10
#: Unsent bytes beyond which a connection is no longer read (its peer does not read its
#: responses): the transport's high-water mark, so ``pause_writing`` pauses reading. Reading
#: resumes once the transport is down to a quarter of it (asyncio's default low-water mark).
_UNSENT_CAP = 64 << 10


class DriverHost(Protocol):
    """What a connection driver needs of the daemon that accepted it (``daemon.Daemon``):
    the targets and sessions, the settings new connections take, the executors, and the
    calls that keep the daemon's view of connections and sessions current."""

    registry: TargetRegistry
    session_table: SessionTable
    params: dict[str, str]
    login_timeout: float
    #: the target portal group tag of every portal (1; in a gateway group, the gateway's
    #: number: its TPGT, relative target port and target port group, docs/HA.md decision 2)
    tpgt: int
    nop_interval: float
    nop_timeout: float
    queue_depth: int
    budget: MemoryBudget
    connections: set[ConnectionDriver]

    @property
    def poller(self) -> IdlePoller: ...

    @property
    def runner(self) -> Runner: ...

    def drivers_of(self, target: TargetEntry) -> list[ConnectionDriver]: ...

    def connection_closed(self, driver: ConnectionDriver, exc: Exception | None = None) -> None: ...

    def session_started(self, session: Session, driver: ConnectionDriver) -> None: ...

    def login_progress(self, driver: ConnectionDriver) -> None: ...

    def session_ended(self, session: Session) -> None: ...

    def drop_session(self, session: Session, reason: str) -> None: ...


class ConnectionDriver(asyncio.BufferedProtocol):
    def __init__(self, daemon: DriverHost, portal: Portal) -> None:
        self.daemon = daemon
        self.portal = portal
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Commands executing, with the futures of whoever waits for them (TMFs, shutdown):
        # the list is made only when someone waits, not for every command.
        self._running: dict[ScsiTask, list[asyncio.Future[None]] | None] = {}
        self._closing = False
        self._paused = False
        self._in_receive = False
        self._flush_scheduled = False
        self._lent: list[Any] = []  # read buffers queued for sending, to return to the pool
        self._poller = daemon.poller
        self._runner = daemon.runner
        self._fd = -1
        self._sock: socket.socket | None = None
        self._lowat = 1  # the socket's SO_RCVLOWAT
        self._want_lowat = 1  # what it should be when the loop next waits for bytes
        self.closed = asyncio.Event()
        #: why the connection was closed, from the first CloseConnection ("" : the peer left)
        self.close_reason = ""
        #: the error a receive of the idle poller's met (``read_now``): the kernel reports a
        #: reset once, so it is the connection's end, told as such
        self._read_error: OSError | None = None
        #: this connection's commands, those that did not end GOOD, and bytes of data in
        #: (written by the initiator) and out (read), counted where a command ends
        self.commands = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername") or ("?", 0)
        sock = transport.get_extra_info("sockname") or ("?", 0)
        d = self.daemon
        self.conn = Connection(
            d.registry,
            d.session_table,
            peer_address=str(peer[0]),
            local_address=f"{sock[0]}:{sock[1]}",
            portal_tpgt=d.tpgt,
            target_params=d.params,
            now=self.loop.time(),
            login_timeout=d.login_timeout,
            nop_interval=d.nop_interval,
            nop_timeout=d.nop_timeout,
            queue_depth=d.queue_depth,
            budget=d.budget,
        )
        d.connections.add(self)
        transport.set_write_buffer_limits(high=_UNSENT_CAP)  # type: ignore[attr-defined]
        raw = transport.get_extra_info("socket")
        if raw is not None:
            self._fd = raw.fileno()
            self._poller.watch(self._fd, self, self.read_now)
            # Socket options are set on a socket object of our own, over a duplicate of the
            # descriptor: uvloop's stand-in makes a new socket object (getsockname and all)
            # for every setsockopt, profiled at a fifth of the event loop's time for 1 MiB
            # writes when SO_RCVLOWAT was still set twice per Data-Out PDU.
            try:
                self._sock = socket.socket(fileno=os.dup(self._fd))
            except OSError:
                self._sock = None
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        # Received bytes land where the iSCSI core says: its staging area for headers, a
        # large write payload's own buffer (a command's data-out buffer for Data-Out).
        conn = self.conn
        assert conn is not None
        return conn.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        if conn is None:
            return
        self._in_receive = True
        if self._poller.missed_at is not None:
            self._poller.woke()
        try:
            self._handle(conn.buffer_updated(nbytes, self.loop.time()))
        except Exception:  # a bug must cost this connection only, never the daemon
            PROBLEMS.report(log, logging.ERROR, "internal error", conn.peer_address,
                            "internal error on connection from %s", conn.peer_address, exc_info=True)
            self._handle(conn.close("internal error"))
        finally:
            self._in_receive = False
        # While a large payload streams in, be woken only when a good part of it is there
        # (SO_RCVLOWAT), not for every 64 KiB segment loopback or the NIC hands over.
        want = conn.reader.awaiting()
        self._want_lowat = min(want, _LOWAT_MAX) if want > _LOWAT_MIN else 1
        if not conn.reader.large_stream:
            self._set_lowat()
            self._flush()  # the initiator may be waiting for these to send more
        elif not self._flush_scheduled:
            # Large writes: each receive takes one header or one payload, and the loop goes
            # on reading while there is more; the answers of the burst go out in one send,
            # and the low-water mark is set once, before the loop waits again (a callback
            # made now runs before the loop next sleeps), not twice for every PDU.
            self._flush_scheduled = True
            self.loop.call_soon(self._deferred_flush)

    def read_now(self) -> None:
        """The idle poller saw this connection readable (``poller.py``): receive and handle
        its bytes now, from the spin, not after the event loop's own ``epoll_wait`` and
        dispatch. Nothing there yet, or the end of the stream: left to the transport's own
        read, which sees it too. An error (a reset) is reported once, to this receive: the
        connection ends with it, as the transport would have ended it."""
        sock = self._sock
        if sock is None or self.conn is None or self._paused or self._closing:
            return
        try:
            n = sock.recv_into(self.get_buffer(-1), 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._read_error = exc
            transport = self.transport
            if transport is not None:
                transport.abort()  # -> connection_lost, which reports exc
            return
        if n > 0:
            self.buffer_updated(n)

    def _set_lowat(self) -> None:
        lowat = self._want_lowat
        if lowat != self._lowat and self._sock is not None:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self._lowat = lowat
            except OSError:
                self._close_sock()  # not supported here: leave it

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if exc is None and self._read_error is not None:
            exc = self._read_error  # (read_now's receive met it: the transport never saw it)
        if self._timer is not None:
            self._timer.cancel()
        self.daemon.connection_closed(self, exc)
        self._poller.unwatch(self._fd, self)
        self._close_sock()
        if conn is not None:
            if not conn.closed:
                conn.close("connection lost")
            conn.abort_tasks(lambda t: True)
            conn.sent(0)  # the transport dropped what it held: those charges end here
            self._lent = []
            session = conn.session
            if session is not None and self in session.extra.get("drivers", ()):
                self.daemon.session_ended(session)
        self.closed.set()

    def _close_sock(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # our duplicate only: the transport closes its own descriptor

    def pause_writing(self) -> None:
        # The initiator is not reading: stop reading its requests until it catches up.
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.conn is not None:
            self.conn.sent(self.transport.get_write_buffer_size())
        if self.transport is not None and self._paused:
            self._paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ plumbing
    def _flush(self) -> None:
        conn, transport = self.conn, self.transport
        if conn is None or transport is None:
            return
        bufs = conn.data_to_send()
        if bufs and not transport.is_closing():
            if len(bufs) == 1:
                transport.write(bufs[0])  # type: ignore[arg-type]  # bytes or memoryview
            elif sum(map(len, bufs)) <= _COALESCE:  # type: ignore[arg-type]  # all byte-sized
                # One send for many small PDUs: a copy of a few KiB is far cheaper than the
                # extra system calls the transport would make for each buffer.
                transport.write(b"".join(bufs))
            else:
                transport.writelines(bufs)  # type: ignore[arg-type]
            self._poller.kick(self._fd)
        lent = self._lent
        if lent or conn.unsent:
            queued = transport.get_write_buffer_size()
            if conn.unsent > queued:
                conn.sent(queued)  # read data that left no longer counts against the budget
            if lent:
                self._lent = []
                # Only when the transport kept none of our bytes may their buffers be reused.
                if queued == 0:
                    self._runner.give_back(lent)
        if self._closing and not transport.is_closing():
            transport.close()
        self._arm_timer()

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        self._set_lowat()
        self._flush()

    def _arm_timer(self) -> None:
        """Keep one timer armed for the connection's next deadline.

        Activity only moves deadlines later, and a timer that fires early is harmless
        (``handle_timer`` checks the clock), so the timer is re-created only when the
        deadline moved earlier: not on every flush of the hot path.
        """
        conn = self.conn
        if conn is None:
            return
        when = conn.next_deadline()
        timer = self._timer
        if timer is not None:
            if when is not None and when >= timer.when():
                return
            timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        conn = self.conn
        if conn is None:
            return
        when = conn.next_deadline()
        if when is not None and when > self.loop.time():
            self._arm_timer()  # fired early: the deadline moved on since it was armed
            return
        self._handle(conn.handle_timer(self.loop.time()))
        self._flush()

    def close(self, reason: str) -> None:
        if self.conn is not None:
            self._handle(self.conn.close(reason))
        self._closing = True
        self._flush()

    def _handle(self, events: list[Any]) -> None:
        for e in events:
            if isinstance(e, ev.ExecuteTask):
                self._start(e.task)
            elif isinstance(e, ev.TaskManagement):
                self.loop.create_task(self._tmf(e))
            elif isinstance(e, ev.LoginComplete):
                self.daemon.session_started(e.session, self)
            elif isinstance(e, ev.LoginProgress):
                self.daemon.login_progress(self)
            elif isinstance(e, ev.ReinstateSession):
                self.daemon.drop_session(e.old, "session reinstated by a new login")
            elif isinstance(e, ev.CloseConnection):
                self._closing = True
                if not self.close_reason:
                    self.close_reason = e.reason

    # ------------------------------------------------------------------ SCSI execution
    def _start(self, task: ScsiTask) -> None:
        session = self.conn.session if self.conn else None
        device = session.target.device if session and session.target else None
        if device is None:
            self.complete(task, ScsiResult(Status.CHECK_CONDITION, None, build_sense(0x05, 0x2500)))
            return
        self._running[task] = None
        self._runner.start(task, device.execute(task), device.lu(task.lun), self)

    # -- what the command runner asks of the transport (server.runner.Host) --------------------
    def reserve(self, task: ScsiTask, n: int) -> bool:
        conn = self.conn
        return conn is not None and conn.reserve(task, n)

    def full_status(self) -> Status:
        conn = self.conn
        return conn.full_status() if conn is not None else Status.BUSY

    def alone(self) -> bool:
        conn = self.conn
        return conn is not None and len(conn.tasks) <= 1

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        if result.extra:
            self._side_effects(task, result)
        running = self._running
        waiters = running.get(task)  # (get and del: compiled, native; pop is a method call)
        if waiters is not None or task in running:
            del running[task]
        self.commands += 1
        if result.status != 0:
            self.errors += 1
        out = task.data_out
        if out is not None:
            self.bytes_in += len(out)
        conn = self.conn
        if conn is not None:
            conn.complete_task(task, result)
            if conn.closed and not self._closing:  # the last command behind a Logout ended
                self._handle(conn.take_events())
            data = result.data
            if type(data) is memoryview:
                self.bytes_out += len(data)
                self._lent.append(data)
            if not self._in_receive and not self._flush_scheduled:
                # Completions arrive in batches: answer them all with one send.
                self._flush_scheduled = True
                self.loop.call_soon(self._deferred_flush)
        if waiters:
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _side_effects(self, task: ScsiTask, result: ScsiResult) -> None:
        """Effects a command has beyond its own nexus (SPC-4 5.13.11.2.4 PREEMPT AND ABORT:
        the preempted initiators' tasks on this LUN are aborted)."""
        ports = result.extra.get("abort_initiators") if result.extra else None
        session = self.conn.session if self.conn else None
        if not ports or session is None or session.target is None:
            return
        victims = set(ports)
        for d in self.daemon.drivers_of(session.target):
            s = d.conn.session if d.conn else None
            if d.conn is not None and s is not None and s.nexus is not None and s.nexus.initiator_port in victims:
                d.conn.abort_tasks(lambda t: t.lun == task.lun and t.scsi is not task)
        _abort_shipped(self.daemon, session.target.device, task.lun, victims)

    def _waiter(self, task: ScsiTask) -> asyncio.Future[None] | None:
        if task not in self._running:
            return None
        waiters = self._running[task]
        if waiters is None:
            waiters = self._running[task] = []
        fut: asyncio.Future[None] = self.loop.create_future()
        waiters.append(fut)
        return fut

    async def wait_tasks(self, tasks: list[ScsiTask]) -> None:
        futs = [f for f in map(self._waiter, tasks) if f is not None]
        if futs:
            await asyncio.gather(*futs)

    async def drain(self) -> None:
        """Wait for every running command to finish (shutdown)."""
        await self.wait_tasks(list(self._running))

    # ------------------------------------------------------------------ task management
    async def _tmf(self, e: ev.TaskManagement) -> None:
        conn = self.conn
        assert conn is not None
        session = conn.session
        target = session.target if session else None
        device = target.device if target else None
        response = TmfResponse.COMPLETE
        waits: list[tuple[ConnectionDriver, list[ScsiTask]]] = []
        # the LUs reset here (a gateway group's are told to the group) and the reset's ASC
        group_reset: list[Any] = []
        # tasks other gateways shipped here, aborted by a reset (ship.ShipServer)
        shipped: list[Any] = []
        reset_asc = Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED
        f = e.function
        try:
            if device is None or session is None or target is None or session.nexus is None:
                response = TmfResponse.REJECTED
            elif f == TmfFunction.ABORT_TASK:
                found, running = conn.abort_tasks(lambda t: t.itt == e.referenced_itt)
                waits.append((self, running))
                if not found:
                    response = TmfResponse.TASK_DOES_NOT_EXIST
            elif f in (TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET):
                if device.lu(e.lun) is None:
                    response = TmfResponse.LUN_DOES_NOT_EXIST
                else:
                    scope = [self] if f == TmfFunction.ABORT_TASK_SET else self.daemon.drivers_of(target)
                    for d in scope:
                        if d.conn is not None:
                            waits.append((d, d.conn.abort_tasks(lambda t: t.lun == e.lun)[1]))
                    if f == TmfFunction.CLEAR_TASK_SET:
                        device.clear_task_set(e.lun, session.nexus)
            elif f == TmfFunction.CLEAR_ACA:
                response = TmfResponse.NOT_SUPPORTED
            elif f == TmfFunction.LUN_RESET:
                if device.lu(e.lun) is None:
                    response = TmfResponse.LUN_DOES_NOT_EXIST
                else:
                    for d in self.daemon.drivers_of(target):
                        if d.conn is not None:
                            waits.append((d, d.conn.abort_tasks(lambda t: t.lun == e.lun)[1]))
                    device.lun_reset(e.lun, session.nexus)
                    group_reset = [device.lu(e.lun)]
                    shipped += _abort_shipped(self.daemon, device, e.lun, None)
            elif f in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
                others = self.daemon.drivers_of(target)
                for d in others:
                    if d.conn is not None:
                        waits.append((d, d.conn.abort_tasks(lambda t: True)[1]))
                device.target_reset(session.nexus, cold=f == TmfFunction.TARGET_COLD_RESET)
                for n in list(getattr(device, "luns", None) or {}):
                    shipped += _abort_shipped(self.daemon, device, n, None)
                group_reset = list((getattr(device, "luns", None) or {}).values())
                if f == TmfFunction.TARGET_COLD_RESET:
                    reset_asc = Asc.POWER_ON_OCCURRED
            else:
                response = TmfResponse.NOT_SUPPORTED
            for d, tasks in waits:
                await d.wait_tasks(tasks)
            if shipped:  # what other gateways shipped here: their calls under way returned
                await self.daemon.ship_server.wait_tasks(shipped)  # type: ignore[attr-defined]
            for lu in group_reset:
                if not await _group_lun_reset(lu, reset_asc):
                    response = TmfResponse.REJECTED  # the initiator escalates
        except Exception:
            log.exception("task management function %d failed", f)
            response = TmfResponse.REJECTED
        if conn.closed:
            return
        conn.complete_tmf(e.itt, response)
        self._flush()
        if f == TmfFunction.TARGET_COLD_RESET and response == TmfResponse.COMPLETE and target:
            for d in self.daemon.drivers_of(target):
                d.close("target cold reset")


def _abort_shipped(daemon: Any, device: Any, lun: int, ports: set[str] | None) -> list[Any]:
    """Abort what other gateways of a group shipped here for ``device``'s LU ``lun`` from
    ``ports`` (None: every port): a PREEMPT AND ABORT or a reset made through this gateway
    (``ship.ShipServer.abort_tasks``; nothing without command shipping). Returns them."""
    server = getattr(daemon, "ship_server", None)
    lu = device.lu(lun) if device is not None else None
    if server is not None and lu is not None:
        aborted: list[Any] = server.abort_tasks(lu, ports)
        return aborted
    return []


async def _group_lun_reset(lu: Any, asc: Asc = Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED) -> bool:
    """A LOGICAL UNIT RESET (or a target reset's, ``asc``) of a gateway group's LU: its
    LU-wide effects reach every gateway through the group's state record
    (``GroupMember.lun_reset``, docs/HA.md decision 4). True for a lone LU or once the group
    took it; False (logged) when it did not."""
    rs = lu.runner_state
    member = rs.group if rs is not None else None
    if member is None:
        return True
    try:
        await member.lun_reset(lu, asc)
    except Exception as exc:  # noqa: BLE001 - the TMF answers, the initiator escalates
        log.warning("LOGICAL UNIT RESET: the gateway group did not take it: %s", exc)
        return False
    return True
