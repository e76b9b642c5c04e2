"""Command shipping: active/non-optimized non-owner paths of a gateway group (docs/HA.md,
decision 1).

In a group whose ``non_owner`` setting is ``non-optimized``, a gateway that does not own a
LU reports its target port group active/non-optimized, and every command of the LU but
those it can answer alone (:data:`LOCAL_OPCODES`) is sent over a gateway-to-gateway channel
to the LU's owner, which runs it through the same device
server and command runner as a local one, with the sender's nexus (initiator port + the
sender's target port, relative port and target port group). Reservations, COMPARE AND WRITE
atomicity, task aborts, fencing and the single writer all stay the owner's; no media I/O
happens on a non-owner (unit attentions: below). INQUIRY, REPORT LUNS, RTPG, REQUEST SENSE (allowed in every access
state) and PR IN/OUT (through the shared state record) run where they arrived, as before.

The channel (one TCP connection per pair of gateways, opened lazily, kept):

- **Frame**: ``>II`` (header length, data length) + a JSON header + raw data. Headers above
  :data:`MAX_HEADER` and data above the LU limit (``max_data``) are refused before they are
  read; anything malformed drops the connection (one rate-limited line, ``logs.PROBLEMS``).
- **Authentication**, both ways, before anything else: the server sends a nonce; the client
  answers with its nonce and HMAC-SHA256(secret, "client" | server nonce | client nonce |
  name); the server answers HMAC-SHA256(secret, "server" | client nonce | server nonce). The
  secret is 32 random bytes in the group directory's ``secret`` record (created once, under
  its lock): whoever can read the group directory is already trusted with the LUNs.
- **Request** ``{t: cmd, id, key, epoch, target, lun, cdb, attr, expected, read, write,
  initiator, port, target_port, relative_port, tpg, v}`` + data-out; **response** ``{t: res,
  id, status, sense, length}`` + data-in, or ``{t: res, id, not_owner: true}``: the sender ends
  the command NOT READY 04/0Ah (initiators retry; by then the ALUA table moved), or ``{t: res,
  id, stale: version}``: the owner applied a later version of the LU's state record than the
  sender's ``v``, and ran nothing; the sender loads the record and starts the command again.
- **Unit attentions**: a nexus has one queue, on the gateway its session is on. The sender
  delivers what it holds before it ships; ``stale`` makes sure that it holds, before the
  owner runs a command of the nexus, every condition a change the owner applied owes it
  (a LUN RESET, a reservation preempted, mode pages changed). The owner keeps none for a
  shipped nexus (:func:`register`), else each would be reported twice, the second late.

The codec and the handshake (:class:`FrameDecoder`, :func:`encode`, :func:`client_proof`,
:func:`server_proof`) are pure; :class:`ShipServer` (the owner's side) and :class:`Shipper`
(the sender's side: the runner's hook, ``LuState.ship``) are the asyncio adapter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import secrets
import struct
import time
from collections.abc import Callable
from typing import Any

from ..buffers import BudgetShare, MemoryBudget
from ..logs import PROBLEMS
from ..scsi.alua import UNAVAILABLE, AccessState
from ..scsi.lu import MAX_TRANSFER_BYTES
from ..scsi.opcodes import TABLE
from ..scsi.sense import build_sense
from ..scsi.task import Nexus, ScsiResult, ScsiTask, Status, TaskAttr

log = logging.getLogger(__name__)

PREFIX = struct.Struct(">II")
#: The largest JSON header either end accepts.
MAX_HEADER = 16 << 10
#: Commands one connection carries at once (the sender waits beyond; the owner stops
#: reading the connection, so TCP pushes back).
MAX_IN_FLIGHT = 64
#: Bytes of answers an owner lets wait unsent on one connection before it reads no more of
#: that peer's requests (answers leave the memory budget when written: a peer that does not
#: read them must not make the owner hold more and more).
MAX_UNSENT_ANSWERS = 4 << 20
#: Connections the listener keeps at once from one source address, and in all (before and
#: after authentication): beyond, a new one is closed at once, so that unauthenticated
#: connections cannot use up the owner's descriptors (its record writes need them).
MAX_CONNS_PER_SOURCE = 4
MAX_CONNS = 32
#: The group directory record holding the channel's secret.
SECRET_RECORD = "secret"
#: Seconds a handshake may take.
HANDSHAKE_SECONDS = 5.0
#: NOT READY, ASYMMETRIC ACCESS STATE TRANSITION: the answer when the owner cannot be reached
#: or is no longer the owner (initiators retry; multipath on another path).
NOT_OWNER_SENSE = (0x02, 0x040A)


#: Commands a non-owner runs itself besides those every access state allows (INQUIRY,
#: REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE: ``alua.ANY_STATE``): PERSISTENT
#: RESERVE IN/OUT, whose state every gateway shares through the state record (HA.md
#: decision 4). Everything else goes to the owner, the standby-allowed commands too (MODE
#: SENSE, LOG SENSE, TEST UNIT READY, ...): an SPC-2 RESERVE lives in the owner's memory only,
#: and only the owner can say whether it conflicts.
LOCAL_OPCODES = frozenset({0x5E, 0x5F})


#: Times a command is sent again after a ``stale`` answer (each after a load of the LU's
#: state record) before it ends NOT READY 04/0Ah: only a state changing faster than a
#: record is read gets there.
MAX_STALE = 3
#: How often a connection looks for aborted tasks among the shipped ones in flight.
ABORT_SWEEP_SECONDS = 0.1


class Aborted(Exception):
    """A shipped task the transport aborted: answered here, not waited for."""


class FrameError(Exception):
    """A frame that breaks the protocol (too large, truncated, not JSON): drop the link."""


def encode(header: dict[str, Any], data: bytes | memoryview = b"") -> bytes:
    """One frame: prefix, JSON header, data."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(head), len(data)) + head + bytes(data)


def check_prefix(prefix: bytes, max_data: int) -> tuple[int, int]:
    """(header length, data length) of a frame's prefix, refused past the limits."""
    hlen, dlen = PREFIX.unpack(prefix)
    if not 2 <= hlen <= MAX_HEADER:
        raise FrameError(f"header of {hlen} bytes (1..{MAX_HEADER})")
    if dlen > max_data:
        raise FrameError(f"data of {dlen} bytes (at most {max_data})")
    return hlen, dlen


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise FrameError("header is not an object with a type")
    return header


class FrameDecoder:
    """Bytes in, frames out (sans-I/O): :meth:`feed` returns the complete frames so far and
    raises :class:`FrameError` on the first bad one; :meth:`end` raises if the stream ended
    inside a frame."""

    def __init__(self, max_data: int) -> None:
        self.max_data = max_data
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[dict[str, Any], bytes]] = []
        while len(buf) >= PREFIX.size:
            hlen, dlen = check_prefix(bytes(buf[:PREFIX.size]), self.max_data)
            end = PREFIX.size + hlen + dlen
            if len(buf) < end:
                break
            header = decode_header(bytes(buf[PREFIX.size:PREFIX.size + hlen]))
            out.append((header, bytes(buf[PREFIX.size + hlen:end])))
            del buf[:end]
        return out

    def end(self) -> None:
        if self._buf:
            raise FrameError(f"stream ended inside a frame ({len(self._buf)} bytes)")


async def read_frame(reader: asyncio.StreamReader, max_data: int) -> tuple[dict[str, Any], bytes]:
    """The next frame of ``reader`` (the same checks as :class:`FrameDecoder`); FrameError
    for a bad or truncated one."""
    try:
        prefix = await reader.readexactly(PREFIX.size)
        hlen, dlen = check_prefix(prefix, max_data)
        header = decode_header(await reader.readexactly(hlen))
        data = await reader.readexactly(dlen) if dlen else b""
    except asyncio.IncompleteReadError as exc:
        if not exc.partial and exc.expected == PREFIX.size:
            raise EOFError from None
        raise FrameError("truncated frame") from None
    return header, data


# ----------------------------------------------------------------------------- authentication
def client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes, name: str) -> str:
    return hmac.new(secret, b"client" + server_nonce + client_nonce + name.encode(),
                    hashlib.sha256).hexdigest()


def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> str:
    return hmac.new(secret, b"server" + client_nonce + server_nonce, hashlib.sha256).hexdigest()


def _nonce(header: dict[str, Any], key: str) -> bytes:
    value = header.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise FrameError(f"bad {key}")
    return raw


def _proof_ok(expected: str, got: Any) -> bool:
    return isinstance(got, str) and hmac.compare_digest(expected, got)


def group_secret(shared: Any, wait: float = 10.0) -> bytes:
    """The group's channel secret (blocking): read the ``secret`` record; the first gateway
    to need it creates it under the record's lock (byte 0)."""
    end = time.monotonic() + wait
    while True:
        got = shared.read(SECRET_RECORD)
        key = got.data.get("key") if got is not None and isinstance(got.data, dict) else None
        if isinstance(key, str) and len(key) == 64:
            return bytes.fromhex(key)
        try:
            lock = shared.try_lock(SECRET_RECORD, 0)
        except Exception as exc:
            if type(exc).__name__ != "LockHeld" or time.monotonic() > end:
                raise
            time.sleep(0.05)
            continue
        try:
            got = shared.read(SECRET_RECORD)
            key = got.data.get("key") if got is not None and isinstance(got.data, dict) else None
            if not (isinstance(key, str) and len(key) == 64):
                shared.write(SECRET_RECORD, {"key": secrets.token_hex(32)})
        finally:
            lock.release()


def _drop(kind: str, peer: str, why: str) -> None:
    PROBLEMS.report(log, logging.WARNING, "ship " + kind, peer,
                    "command shipping: dropped the connection from %s: %s", peer, why)


def _peer(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


# ----------------------------------------------------------------------------- the owner's side
class _ShipHost:
    """The runner's ``Host`` for one shipped command on the owner: its completion answers
    the peer (no task per command)."""

    __slots__ = ("conn", "rid", "charged")

    def __init__(self, conn: _Served, rid: int, charged: int) -> None:
        self.conn = conn
        self.rid = rid
        self.charged = charged

    def reserve(self, task: ScsiTask, n: int) -> bool:
        conn = self.conn
        if not conn.server.budget.charge(conn.share, n):
            return False
        self.charged += n
        return True

    def full_status(self) -> Status:
        return Status.BUSY

    def alone(self) -> bool:
        return False

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        conn = self.conn
        server = conn.server
        server.budget.release(conn.share, self.charged)
        server.served += 1
        conn.tasks.pop(self.rid, None)
        if server.waiters:  # a reset through this gateway waits for it (abort_tasks)
            waiter = server.waiters.pop(task, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if task.aborted:  # the sender's abort frame came first: whatever it did, it ends so
            result = ScsiResult(Status.TASK_ABORTED, result.data)
        out = b""
        data = result.data
        if data is not None:
            out = bytes(data)  # type: ignore[arg-type]  # byte-sized buffers
            server.runner.give_back([data])
        answer: dict[str, Any] = {"t": "res", "id": self.rid, "status": int(result.status)}
        if result.sense:
            answer["sense"] = bytes(result.sense).hex()
        if result.transfer_length is not None:
            answer["length"] = result.transfer_length
        conn.answer(answer, out)


class _Served:
    """One authenticated connection from a peer, on the owner."""

    def __init__(self, server: ShipServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.share = BudgetShare()
        self.in_flight = 0
        #: request id -> its task, until answered (an ``abort`` frame marks it aborted)
        self.tasks: dict[int, ScsiTask] = {}
        self.room = asyncio.Event()
        self.room.set()

    def answer(self, header: dict[str, Any], data: bytes) -> None:
        self.in_flight -= 1
        if self.in_flight < MAX_IN_FLIGHT:
            self.room.set()
        if not self.writer.is_closing():
            self.writer.write(encode(header, data))


class ShipServer:
    """The listener of this gateway's ship address: runs the commands its peers ship to it,
    when it owns their LU at the epoch they name."""

    def __init__(self, member: Any, runner: Any, resolve: Callable[[str, int], Any],
                 secret: bytes, budget: MemoryBudget, *, max_data: int = MAX_TRANSFER_BYTES) -> None:
        self.member = member
        self.runner = runner
        #: (target name, LUN) -> that target's DeviceServer, or None
        self.resolve = resolve
        self.secret = secret
        self.budget = budget
        self.max_data = max_data
        self.server: asyncio.AbstractServer | None = None
        self.address: str | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.max_conns = MAX_CONNS
        self.max_conns_per_source = MAX_CONNS_PER_SOURCE
        #: source address -> connections open from it
        self._sources: dict[str, int] = {}
        #: gateway name -> the task serving its authenticated connection (a newer one from
        #: the same gateway replaces it, see _serve)
        self._by_gateway: dict[str, asyncio.Task[Any]] = {}
        #: commands run for peers (tests, status)
        self.served = 0
        #: the authenticated connections open now (their tasks: :meth:`abort_tasks`)
        self.connections: set[_Served] = set()
        #: aborted shipped tasks someone waits for (:meth:`wait_tasks`) -> their futures
        self.waiters: dict[ScsiTask, asyncio.Future[None]] = {}

    async def start(self, host: str, port: int = 0) -> str:
        self.server = await asyncio.start_server(self._serve, host, port)
        sock = self.server.sockets[0].getsockname()
        self.address = f"[{sock[0]}]:{sock[1]}" if ":" in sock[0] else f"{sock[0]}:{sock[1]}"
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        addr = writer.get_extra_info("peername")
        source = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        sources = self._sources
        if sum(sources.values()) >= self.max_conns \
                or sources.get(source, 0) >= self.max_conns_per_source:
            PROBLEMS.report(log, logging.WARNING, "ship limit", source,
                            "command shipping: refused a connection from %s: too many open "
                            "(%d from one address, %d in all)", peer,
                            self.max_conns_per_source, self.max_conns)
            writer.close()
            return
        sources[source] = sources.get(source, 0) + 1
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        conn = _Served(self, writer)
        name: str | None = None
        try:
            name = await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_SECONDS)
            self.connections.add(conn)
            # A gateway keeps one connection to this owner: a new one replaces the last (its
            # host rebooted or lost the network, and nothing tells this side, which only
            # answers: left open, such leftovers would fill the per-source limit for good).
            old = self._by_gateway.get(name)
            if old is not None and old is not task:
                old.cancel()
            if task is not None:
                self._by_gateway[name] = task
            while True:
                if conn.in_flight >= MAX_IN_FLIGHT:  # stop reading: TCP pushes back
                    conn.room.clear()
                    await conn.room.wait()
                if writer.transport.get_write_buffer_size() > MAX_UNSENT_ANSWERS:
                    await writer.drain()  # the peer reads its answers first
                header, data, charged = await self._read_request(reader, conn)
                if charged < 0:  # the budget said no: drained, answered BUSY
                    if header["t"] != "cmd" or not isinstance(header.get("id"), int):
                        raise FrameError(f"unexpected {header['t']!r} frame with data")
                    conn.in_flight += 1
                    conn.answer({"t": "res", "id": header["id"], "status": int(Status.BUSY)},
                                b"")
                    continue
                if charged and header["t"] != "cmd":
                    self.budget.release(conn.share, charged)
                    raise FrameError(f"unexpected {header['t']!r} frame with data")
                if header["t"] == "gone" and isinstance(header.get("id"), int):
                    self._gone(conn, header)
                    conn.in_flight += 1  # (answer() counts it back)
                    conn.answer({"t": "res", "id": header["id"], "status": 0}, b"")
                    continue
                if header["t"] == "abort":  # the sender's task was aborted: issue nothing more
                    aborted = conn.tasks.get(header.get("id"))  # type: ignore[arg-type]
                    if aborted is not None:
                        aborted.aborted = True
                    continue
                if header["t"] != "cmd" or not isinstance(header.get("id"), int):
                    self.budget.release(conn.share, charged)
                    raise FrameError(f"unexpected {header['t']!r} frame")
                conn.in_flight += 1
                try:
                    self._start(conn, header, data, charged)
                except Exception as exc:  # noqa: BLE001 - a malformed request: that one only
                    PROBLEMS.report(log, logging.WARNING, "ship request", peer,
                                    "command shipping: bad request from %s: %s", peer, exc)
                    conn.answer({"t": "res", "id": header["id"], "not_owner": True}, b"")
        except (EOFError, asyncio.CancelledError):
            pass
        except (FrameError, TimeoutError, OSError) as exc:
            _drop("protocol", peer, str(exc) or type(exc).__name__)
        finally:
            self.connections.discard(conn)
            if task is not None:
                self._conns.discard(task)
                if name is not None and self._by_gateway.get(name) is task:
                    del self._by_gateway[name]
            left = sources.get(source, 1) - 1
            if left > 0:
                sources[source] = left
            else:
                sources.pop(source, None)
            writer.close()  # (the owner finishes what it started, as any I/O in flight)

    async def _read_request(self, reader: asyncio.StreamReader,
                            conn: _Served) -> tuple[dict[str, Any], bytes, int]:
        """The next frame, its data charged to the memory budget from the prefix, before it
        is read, and bounded by the named LU's max transfer: (header, data, bytes charged),
        or charged -1 when the budget said no (the data was drained, not kept)."""
        try:
            prefix = await reader.readexactly(PREFIX.size)
            hlen, dlen = check_prefix(prefix, self.max_data)
            header = decode_header(await reader.readexactly(hlen))
            if not dlen:
                return header, b"", 0
            glu = self.member.luns.get(header.get("key")) if header["t"] == "cmd" else None
            limit = getattr(glu.lu, "max_transfer_bytes", None) if glu is not None else None
            if isinstance(limit, int) and dlen > limit:
                raise FrameError(f"data of {dlen} bytes (at most {limit} for its LU)")
            if not self.budget.charge(conn.share, dlen):
                left = dlen
                while left:  # drain it in small pieces: nothing held
                    left -= len(await reader.readexactly(min(left, 64 << 10)))
                return header, b"", -1
            try:
                data = await reader.readexactly(dlen)
            except BaseException:
                self.budget.release(conn.share, dlen)
                raise
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and exc.expected == PREFIX.size:
                raise EOFError from None
            raise FrameError("truncated frame") from None
        return header, data, dlen

    def _start(self, conn: _Served, h: dict[str, Any], data: bytes, charged: int) -> None:
        """Check and start one shipped command (its data already charged: ``charged``
        bytes); its host answers when it ends."""
        try:
            self._start_charged(conn, h, data, charged)
        except Exception:  # (raised before its host took the charge)
            self.budget.release(conn.share, charged)
            raise

    def _start_charged(self, conn: _Served, h: dict[str, Any], data: bytes,
                       charged: int) -> None:
        from ..group.lease import Role

        rid = h["id"]
        glu = self.member.luns.get(h["key"])
        lease = glu.lease if glu is not None else None
        lun = int(h["lun"])
        device = self.resolve(str(h["target"]), lun) if lease is not None else None
        lu = device.lu(lun) if device is not None else None
        if lease is None or lease.role is not Role.OWNER or lease.epoch != h["epoch"] \
                or device is None or lu is None or lu is not glu.lu:  # type: ignore[union-attr]
            self.budget.release(conn.share, charged)
            conn.answer({"t": "res", "id": rid, "not_owner": True}, b"")
            return
        seen = h.get("v")
        if type(seen) is int and seen < glu.applied:  # type: ignore[union-attr]
            # the sender has not loaded a change of the LU's state this owner applied (a
            # reset, a reservation, ...): it loads it, queues the unit attentions it owes
            # its nexus, and sends the command again (or answers it with one)
            self.budget.release(conn.share, charged)
            conn.answer({"t": "res", "id": rid, "stale": glu.applied}, b"")  # type: ignore[union-attr]
            return
        nexus = Nexus(str(h["initiator"]), str(h["port"]), str(h["target_port"]),
                      relative_port=int(h["relative_port"]), target_port_group=int(h["tpg"]))
        register(device, nexus)
        write = bool(h.get("write"))
        task = ScsiTask(bytes.fromhex(h["cdb"]), lun, nexus, tag=rid,
                        attr=TaskAttr(int(h.get("attr", 1))),
                        data_out=memoryview(data) if write else None,
                        expected_length=int(h.get("expected", 0)),
                        read=bool(h.get("read")), write=write)
        host = _ShipHost(conn, rid, charged)
        conn.tasks[rid] = task
        self.runner.start(task, device.execute(task), lu, host)  # (errors: the host answers)

    def _gone(self, conn: _Served, h: dict[str, Any]) -> None:
        """A session of a peer's ended: the owner ends the nexus it knew by that peer's
        port (its SPC-2 reservation goes, SAM-5 6.3.4), as for a session of its own, and its
        commands that peer shipped are aborted (no store call of theirs is issued from now
        on; one under way ends first). A nexus of the same initiator port through another
        port (the owner's own session) stays."""
        port, relative = str(h.get("port")), h.get("relative_port")
        for task in conn.tasks.values():
            nexus = task.nexus
            if nexus.initiator_port == port and nexus.relative_port == relative:
                task.aborted = True
        device = self.resolve(str(h.get("target")), 0)
        if device is None:
            return
        live = device._nexuses.get(port)
        if live is not None and live.relative_port == int(h.get("relative_port", -1)):
            device.nexus_lost(live)

    def abort_tasks(self, lu: Any, initiator_ports: set[str] | None) -> list[ScsiTask]:
        """Abort the commands peers shipped here for ``lu`` from these initiator ports (None:
        all of them): a PREEMPT AND ABORT or a LUN RESET (``Daemon.abort_lu_tasks``). No
        store call of theirs is issued from now on; their answers say TASK ABORTED. Returns
        them (:meth:`wait_tasks`)."""
        aborted: list[ScsiTask] = []
        for conn in self.connections:
            for task in conn.tasks.values():
                nexus = task.nexus
                if initiator_ports is not None and nexus.initiator_port not in initiator_ports:
                    continue
                device = self.resolve(nexus.target_port.partition(",t,")[0], task.lun)
                if device is not None and device.lu(task.lun) is lu:
                    task.aborted = True
                    aborted.append(task)
        return aborted

    async def wait_tasks(self, tasks: list[ScsiTask]) -> None:
        """Wait until these shipped tasks ended (their store calls under way returned)."""
        running = {t for conn in self.connections for t in conn.tasks.values()}
        loop = asyncio.get_running_loop()
        futs = []
        for task in tasks:
            if task in running:
                fut = self.waiters.get(task)
                if fut is None:
                    fut = self.waiters[task] = loop.create_future()
                futs.append(fut)
        if futs:
            await asyncio.gather(*futs)

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> str:
        nonce = secrets.token_bytes(32)
        writer.write(encode({"t": "hello", "nonce": nonce.hex()}))
        header, _ = await read_frame(reader, 0)
        if header["t"] != "auth" or not isinstance(header.get("gateway"), str):
            raise FrameError("no authentication")
        theirs = _nonce(header, "nonce")
        name = header["gateway"]
        if not _proof_ok(client_proof(self.secret, nonce, theirs, name), header.get("mac")):
            raise FrameError(f"bad HMAC (gateway {name!r})")
        writer.write(encode({"t": "ok", "mac": server_proof(self.secret, theirs, nonce)}))
        await writer.drain()
        return name


def register(device: Any, nexus: Nexus) -> None:
    """Make a shipped nexus known to the owner's device server (its SPC-2 reservation, its
    target port in RTPG) without a unit attention queue: those of a nexus are kept by the
    gateway its session is on, which delivers them before it ships anything (``maybe_ship``),
    and which is never behind the owner's state when it ships (``stale``). One queue per
    nexus: a second one here delivered each LU-wide condition twice, the second late."""
    port = nexus.initiator_port
    if port in device._nexuses and nexus.relative_port in device._ports:
        return
    with device._lock:
        if port not in device._nexuses:
            device._nexuses[port] = nexus
            device._shipped.add(port)
            device._departed.pop(port, None)
        if nexus.relative_port not in device._ports:
            device._ports[nexus.relative_port] = nexus.target_port_group
            device._port_names[nexus.relative_port] = nexus.target_port


# ----------------------------------------------------------------------------- the sender's side
#: What a shipped command's sender is told: (response header, data-in) or the error.
Done = Callable[[dict[str, Any] | None, bytes, BaseException | None], None]


class _Client:
    """One kept, authenticated connection to a peer's ship address. Commands are written as
    they come (no task per command); beyond :data:`MAX_IN_FLIGHT`, or while connecting, they
    wait in a backlog."""

    def __init__(self, shipper: Shipper, address: str) -> None:
        self.shipper = shipper
        self.address = address
        self.writer: asyncio.StreamWriter | None = None
        #: request id -> [done, timer, task, loop time sent]
        self.pending: dict[int, list[Any]] = {}
        #: request ids whose ``abort`` frame went out
        self.aborting: set[int] = set()
        self.backlog: collections.deque[tuple[dict[str, Any], Any, Done, float, Any]] = \
            collections.deque()
        self._connecting: asyncio.Task[None] | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._ids = 0

    def send(self, header: dict[str, Any], data: Any, done: Done, timeout: float,
             task: Any = None) -> None:
        """Ship one request; ``done`` is called once with the answer or the error. ``task``
        (a ScsiTask): once the transport aborts it, an ``abort`` frame asks the owner not to
        issue it, and ``done`` waits for the owner's answer all the same, past ``timeout``
        while the connection stands (docs/HA.md decision 1: an aborted write must not land
        after the abort was answered). Never sent (still in the backlog): ``done`` at once
        with :class:`Aborted`."""
        writer = self.writer
        if writer is None or writer.is_closing() or len(self.pending) >= MAX_IN_FLIGHT \
                or self.backlog:
            self.backlog.append((header, data, done, time.monotonic() + timeout, task))
            if (writer is None or writer.is_closing()) and self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        self._write(writer, header, data, done, timeout, task)

    def _write(self, writer: asyncio.StreamWriter, header: dict[str, Any], data: Any,
               done: Done, timeout: float, task: Any) -> None:
        self._ids += 1
        rid = header["id"] = self._ids
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, self._expire, rid)
        self.pending[rid] = [done, timer, task, loop.time()]
        writer.write(encode(header, data))
        if self._sweep is None:
            self._sweep = loop.call_later(ABORT_SWEEP_SECONDS, self._aborted)

    def _aborted(self) -> None:
        """Tell the owner of the aborted tasks among those in flight (ABORT TASK, LUN RESET,
        ...): it issues nothing more for them. Their answer still comes from the owner."""
        self._sweep = None
        pending = self.pending
        for rid, e in pending.items():
            if e[2] is not None and e[2].aborted and rid not in self.aborting:
                self._abort(rid)
        if pending:
            self._sweep = asyncio.get_running_loop().call_later(ABORT_SWEEP_SECONDS,
                                                                self._aborted)

    def _abort(self, rid: int) -> None:
        self.aborting.add(rid)
        writer = self.writer
        if writer is not None and not writer.is_closing():
            writer.write(encode({"t": "abort", "id": rid}))

    def _lease_left(self, sent: float) -> float:
        """Seconds until a command sent at ``sent`` can no longer be issued by an owner that
        lost contact (it fenced itself after ``lease_seconds``)."""
        lease = float(getattr(self.shipper.member, "lease_seconds", 0.0))
        return sent + lease - asyncio.get_running_loop().time()

    def _expire(self, rid: int) -> None:
        entry = self.pending.get(rid)
        if entry is None:
            return
        if rid not in self.aborting:
            self._abort(rid)  # the owner must not issue it late
        task = entry[2]
        writer = self.writer
        if task is not None and task.aborted and writer is not None and not writer.is_closing():
            # aborted, and the owner can still say when it is done: its answer ends it (the
            # owner answers once the store call it had issued returned), or the loss of the
            # connection does (below, in _read)
            return
        left = self._lease_left(entry[3])
        if left > 0:  # the owner may still issue it: not answered before the lease ran out
            entry[1] = asyncio.get_running_loop().call_later(left, self._expire, rid)
            return
        del self.pending[rid]
        self.aborting.discard(rid)
        entry[0](None, b"", TimeoutError("no answer from the owner"))
        if self.backlog:  # room made: what waits behind goes out (or ends, if it expired)
            self._flush()

    def _flush(self) -> None:
        writer = self.writer
        backlog = self.backlog
        now = time.monotonic()
        while backlog and writer is not None and not writer.is_closing() \
                and len(self.pending) < MAX_IN_FLIGHT:
            header, data, done, end, task = backlog.popleft()
            if task is not None and task.aborted:  # never sent: nothing to wait for
                done(None, b"", Aborted())
                continue
            if end <= now:
                done(None, b"", TimeoutError("no answer from the owner"))
                continue
            self._write(writer, header, data, done, end - now, task)

    async def _connect(self) -> None:
        try:
            host, _, port = self.address.rpartition(":")
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), HANDSHAKE_SECONDS)
            try:
                await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_SECONDS)
            except BaseException:
                writer.close()
                raise
        except (OSError, TimeoutError, FrameError, EOFError, ValueError) as exc:
            backlog, self.backlog = self.backlog, collections.deque()
            for _, _, done, _, _ in backlog:
                done(None, b"", ConnectionError(f"cannot reach {self.address}: {exc}"))
            return
        finally:
            self._connecting = None
        self.writer = writer
        asyncio.get_running_loop().create_task(self._read(reader, writer))
        self._flush()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        secret = self.shipper.secret
        name = self.shipper.member.gateway
        header, _ = await read_frame(reader, 0)
        if header["t"] != "hello":
            raise FrameError("no hello")
        theirs = _nonce(header, "nonce")
        ours = secrets.token_bytes(32)
        writer.write(encode({"t": "auth", "gateway": name, "nonce": ours.hex(),
                             "mac": client_proof(secret, theirs, ours, name)}))
        header, _ = await read_frame(reader, 0)
        if header["t"] != "ok" or not _proof_ok(server_proof(secret, ours, theirs),
                                                 header.get("mac")):
            raise FrameError("the peer did not prove the group secret")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header, data = await read_frame(reader, self.shipper.max_data)
                entry = self.pending.pop(header.get("id"), None)  # type: ignore[arg-type]
                if header["t"] != "res":
                    raise FrameError(f"unexpected {header['t']!r} frame")
                self.aborting.discard(header.get("id"))  # type: ignore[arg-type]
                if entry is not None:  # (else: expired)
                    entry[1].cancel()
                    entry[0](header, data, None)
                if self.backlog:
                    self._flush()
        except (EOFError, asyncio.CancelledError):
            pass
        except (FrameError, OSError) as exc:
            _drop("peer", self.address, str(exc))
        finally:
            writer.close()
            if self.writer is writer:
                self.writer = None
            pending, self.pending = self.pending, {}
            self.aborting.clear()
            loop = asyncio.get_running_loop()
            for done, timer, _, sent in pending.values():
                timer.cancel()
                # the owner may still issue it until its lease runs out: answer no earlier
                left = self._lease_left(sent)
                lost = ConnectionError("ship connection lost")
                if left > 0:
                    loop.call_later(left, done, None, b"", lost)
                else:
                    done(None, b"", lost)
            if self._connecting is None:
                # never sent, so the owner cannot issue them: they end now (04/0Ah); left
                # here they would wait for a send to this address, which may never come
                # (an owner that restarts listens on another port)
                backlog, self.backlog = self.backlog, collections.deque()
                for _, _, done, _, _ in backlog:
                    done(None, b"", ConnectionError("ship connection lost"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Shipper:
    """The sender's side: the runner's per-LU hook (``LuState.ship``) and the connections to
    the owners. Installed on a member whose ``non_owner`` is ``non-optimized``."""

    def __init__(self, member: Any, secret: bytes, runner: Any, *,
                 max_data: int = MAX_TRANSFER_BYTES, timeout: float = 30.0) -> None:
        self.member = member
        self.secret = secret
        #: the command runner, to start again a command the owner found ``stale``
        self.runner = runner
        #: group LU key -> the load of its state record under way for ``stale`` answers
        self._refreshing: dict[str, asyncio.Future[None]] = {}
        self.max_data = max_data
        #: seconds a shipped command may take before it ends NOT READY 04/0Ah
        self.timeout = timeout
        self.clients: dict[str, _Client] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        #: commands shipped (tests, status)
        self.shipped = 0

    def install(self) -> None:
        """Hook every group LU of the member (and, through it, those attached later)."""
        from .runner import lu_state

        self.member.shipper = self
        for glu in list(self.member.luns.values()):
            lu_state(glu.lu).ship = self

    def close(self) -> None:
        from .runner import lu_state

        if self.member.shipper is self:
            self.member.shipper = None
        for glu in list(self.member.luns.values()):
            lu_state(glu.lu).ship = None
        for c in self.clients.values():
            c.close()

    def maybe_ship(self, task: ScsiTask, run: Any, lu: Any, host: Any, tries: int = 0) -> bool:
        """The runner's hook (``Runner.start``): True if the command went to the owner (its
        generator is not started), False to run it here as usual. ``tries``: the times the
        owner answered it ``stale`` already."""
        nexus = task.nexus
        if lu.alua.state_of(nexus.target_port_group) is not AccessState.ACTIVE_NON_OPTIMIZED:
            return False  # the owner (optimized), or a state whose refusal is local
        cdb = task.cdb
        if not cdb:
            return False
        entry = TABLE.get(cdb[0])
        if entry is not None and entry.actions:
            entry = entry.actions.get(cdb[1] & 0x1F)
        if entry is None or entry.alua & UNAVAILABLE or cdb[0] in LOCAL_OPCODES:
            return False  # runs here: what every state allows, PR, what the preamble refuses
        if lu._ua.get(nexus.initiator_port):
            return False  # this gateway's unit attention first (the preamble's order)
        owner = self._owner(lu)
        if owner is None:
            return False  # nobody to ship to: here, where the lease refuses it 04/0Ah
        glu, rec, address = owner
        if task.read and task.expected_length and not tries \
                and not host.reserve(task, task.expected_length):  # (once: kept if sent again)
            run.close()
            host.complete(task, ScsiResult(host.full_status()))
            return True
        header = _header(glu.key, rec.epoch, task.lun, nexus)
        # ``v``: the LU state version this gateway applied; an owner that applied a later
        # one answers ``stale`` instead of running the command (the unit attentions the
        # change owes this gateway's nexuses come first)
        header.update(cdb=bytes(cdb).hex(), attr=int(task.attr), expected=task.expected_length,
                      read=task.read, write=task.write, v=glu.applied)
        # (``run``, unstarted, is kept for a ``stale`` answer: it runs again from the start)
        self._client(address).send(header, task.data_out if task.data_out is not None else b"",
                                   functools.partial(self._done, task, run, lu, host, address,
                                                     tries),
                                   self.timeout, task)
        self.shipped += 1
        return True

    def nexus_gone(self, nexus: Nexus) -> None:
        """A session through this gateway ended: tell the owners it shipped to, so that what
        the owner keeps for that nexus (an SPC-2 reservation, unit attentions) ends with it."""
        header = _header("", 0, 0, nexus)
        header["t"] = "gone"
        live = set(self.member.ship_addresses.values())
        for address, client in list(self.clients.items()):
            if address not in live:
                # no gateway listens there any more (it restarted on another port, or
                # stopped): what it kept for the nexus went with it. Forgotten once idle,
                # instead of a connection tried there at every session's end, for ever.
                if not client.pending and not client.backlog and client._connecting is None:
                    client.close()
                    del self.clients[address]
                continue
            client.send(dict(header), b"", _ignore, self.timeout)

    def _owner(self, lu: Any) -> tuple[Any, Any, str] | None:
        """(group LU, lease record, ship address) of ``lu``'s owner when it is another
        gateway, not moving, with an address; else None."""
        member = self.member
        glu = member.handle(lu)
        rec = glu.lease.record if glu is not None else None
        if rec is None or rec.owner is None or rec.owner == member.gateway or rec.move_to:
            return None
        address = member.ship_addresses.get(rec.owner)
        return (glu, rec, address) if address is not None else None

    def _client(self, address: str) -> _Client:
        client = self.clients.get(address)
        if client is None:
            client = self.clients[address] = _Client(self, address)
        return client

    def _done(self, task: ScsiTask, run: Any, lu: Any, host: Any, address: str, tries: int,
              answer: dict[str, Any] | None, out: bytes, exc: BaseException | None) -> None:
        result: ScsiResult | None = None
        stale = answer.get("stale") if exc is None and answer is not None else None
        if stale is not None and not task.aborted and tries < MAX_STALE:
            again = asyncio.get_running_loop().create_task(
                self._again(task, run, lu, host, tries + 1))
            self._inflight.add(again)  # (a task the loop holds only weakly)
            again.add_done_callback(self._inflight.discard)
            return
        run.close()
        if exc is None and answer is not None and stale is None \
                and not answer.get("not_owner"):
            try:
                sense = answer.get("sense")
                result = ScsiResult(Status(int(answer["status"])), out if out else None,
                                    bytes.fromhex(sense) if isinstance(sense, str) else None,
                                    answer.get("length"))
            except (ValueError, KeyError, TypeError) as e:
                exc = e
        if exc is not None and type(exc) is not Aborted:
            PROBLEMS.report(log, logging.WARNING, "ship send", address,
                            "command shipping to %s failed: %s", address,
                            str(exc) or type(exc).__name__)
        if result is None:
            result = _not_owner(lu)
        if task.aborted:
            result = ScsiResult(Status.TASK_ABORTED)
        host.complete(task, result)

    async def _again(self, task: ScsiTask, run: Any, lu: Any, host: Any, tries: int) -> None:
        """The owner answered ``stale``: load the LU's state record (one load for every
        command waiting on it), which queues the unit attentions the change owes this
        gateway's nexuses, then start the command again: the first of them ends it here;
        else it is shipped again. The record unreadable: NOT READY 04/0Ah (the initiator
        retries), as for an owner out of reach."""
        glu = self.member.handle(lu)
        key = glu.key if glu is not None else ""
        loading = self._refreshing.get(key)
        try:
            if loading is None:
                loop = asyncio.get_running_loop()
                loading = loop.run_in_executor(None, self.member.shared_refresh, lu)
                self._refreshing[key] = loading
                try:
                    await loading
                finally:
                    if self._refreshing.get(key) is loading:
                        del self._refreshing[key]
            else:
                await asyncio.shield(loading)
        except Exception as exc:  # noqa: BLE001 - this command's answer: 04/0Ah
            run.close()
            PROBLEMS.report(log, logging.WARNING, "ship refresh", key,
                            "command shipping: could not load the state of LUN %s: %s", key,
                            str(exc) or type(exc).__name__)
            host.complete(task, ScsiResult(Status.TASK_ABORTED) if task.aborted else _not_owner(lu))
            return
        if task.aborted:
            run.close()
            host.complete(task, ScsiResult(Status.TASK_ABORTED))
            return
        if not self.maybe_ship(task, run, lu, host, tries):
            self.runner.start_here(task, run, lu, host)


def _ignore(answer: dict[str, Any] | None, out: bytes, exc: BaseException | None) -> None:
    """A notice's answer: nothing to do (an owner that is gone took the nexus with it)."""


def _header(key: str, epoch: int, lun: int, nexus: Nexus) -> dict[str, Any]:
    return {"t": "cmd", "key": key, "epoch": epoch, "target": nexus.target_port.partition(",t,")[0],
            "lun": lun, "initiator": nexus.initiator_name, "port": nexus.initiator_port,
            "target_port": nexus.target_port, "relative_port": nexus.relative_port,
            "tpg": nexus.target_port_group}


def _not_owner(lu: Any) -> ScsiResult:
    key, asc = NOT_OWNER_SENSE
    return ScsiResult(Status.CHECK_CONDITION, None,
                      build_sense(key, asc, descriptor=bool(getattr(lu, "descriptor_sense", False))))
