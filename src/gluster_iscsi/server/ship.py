"""Command shipping: active/non-optimized non-owner paths of a gateway group (docs/HA.md,
decision 1).

In a group whose ``non_owner`` setting is ``non-optimized``, a gateway that does not own a
LU reports its target port group active/non-optimized, and every command of the LU but
those it can answer alone (:data:`LOCAL_OPCODES`) is sent over a gateway-to-gateway channel
to the LU's owner, which runs it through the same device
server and command runner as a local one, with the sender's nexus (initiator port + the
sender's target port, relative port and target port group). Reservations, COMPARE AND WRITE
atomicity, unit attentions, fencing and the single writer all stay the owner's; no media I/O
happens on a non-owner. INQUIRY, REPORT LUNS, RTPG, REQUEST SENSE (allowed in every access
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
  initiator, port, target_port, relative_port, tpg}`` + data-out; **response** ``{t: res, id,
  status, sense, length}`` + data-in, or ``{t: res, id, not_owner: true}``: the sender ends
  the command NOT READY 04/0Ah (initiators retry; by then the ALUA table moved).

The codec and the handshake (:class:`FrameDecoder`, :func:`encode`, :func:`client_proof`,
:func:`server_proof`) are pure; :class:`ShipServer` (the owner's side) and :class:`Shipper`
(the sender's side: the runner's hook, ``LuState.ship``) are the asyncio adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """The runner's ``Host`` for one shipped command on the owner."""

    __slots__ = ("budget", "share", "charged", "future")

    def __init__(self, budget: MemoryBudget, share: BudgetShare,
                 future: asyncio.Future[ScsiResult]) -> None:
        self.budget = budget
        self.share = share
        self.charged = 0
        self.future = future

    def reserve(self, task: ScsiTask, n: int) -> bool:
        if not self.budget.charge(self.share, n):
            return False
        self.charged += n
        return True

    def full_status(self) -> Status:
        return Status.BUSY

    def alone(self) -> bool:
        return False

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        if not self.future.done():
            self.future.set_result(result)


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
        #: commands run for peers (tests, status)
        self.served = 0

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
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        peer = _peer(writer)
        share = BudgetShare()
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        try:
            await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_SECONDS)
            while True:
                await slots.acquire()
                header, data = await read_frame(reader, self.max_data)
                if header["t"] != "cmd" or not isinstance(header.get("id"), int):
                    raise FrameError(f"unexpected {header['t']!r} frame")
                one = asyncio.get_running_loop().create_task(
                    self._one(header, data, writer, share, slots))
                running.add(one)  # (the owner finishes what it started, as any I/O)
                one.add_done_callback(running.discard)
        except (EOFError, asyncio.CancelledError):
            pass
        except (TimeoutError, FrameError, OSError) as exc:
            _drop("protocol", peer, str(exc) or type(exc).__name__)
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()

    async def _one(self, header: dict[str, Any], data: bytes, writer: asyncio.StreamWriter,
                   share: BudgetShare, slots: asyncio.Semaphore) -> None:
        try:
            answer, out = await self._execute(header, data, share)
        except Exception as exc:  # noqa: BLE001 - a malformed request: that command only
            PROBLEMS.report(log, logging.WARNING, "ship request", _peer(writer),
                            "command shipping: bad request from %s: %s", _peer(writer), exc)
            answer, out = {"t": "res", "id": header.get("id"), "not_owner": True}, b""
        finally:
            slots.release()
        if not writer.is_closing():
            writer.write(encode(answer, out))

    async def _execute(self, h: dict[str, Any], data: bytes,
                       share: BudgetShare) -> tuple[dict[str, Any], bytes]:
        from ..group.lease import Role

        rid = h["id"]
        not_owner = {"t": "res", "id": rid, "not_owner": True}
        glu = self.member.luns.get(h["key"])
        lease = glu.lease if glu is not None else None
        if lease is None or lease.role is not Role.OWNER or lease.epoch != h["epoch"]:
            return not_owner, b""
        lun = int(h["lun"])
        device = self.resolve(str(h["target"]), lun)
        lu = device.lu(lun) if device is not None else None
        if lu is None or lu is not glu.lu:
            return not_owner, b""
        nexus = Nexus(str(h["initiator"]), str(h["port"]), str(h["target_port"]),
                      relative_port=int(h["relative_port"]), target_port_group=int(h["tpg"]))
        if h.get("tmf") == "lun_reset":
            register(device, nexus)
            device.lun_reset(lun, nexus)
            return {"t": "res", "id": rid, "status": 0}, b""
        if not self.budget.charge(share, len(data)):
            return {"t": "res", "id": rid, "status": int(Status.BUSY)}, b""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScsiResult] = loop.create_future()
        host = _ShipHost(self.budget, share, future)
        try:
            register(device, nexus)
            write = bool(h.get("write"))
            task = ScsiTask(bytes.fromhex(h["cdb"]), lun, nexus, tag=rid,
                            attr=TaskAttr(int(h.get("attr", 1))),
                            data_out=memoryview(data) if write else None,
                            expected_length=int(h.get("expected", 0)),
                            read=bool(h.get("read")), write=write)
            self.runner.start(task, device.execute(task), lu, host)
            result = await future
        finally:
            self.budget.release(share, len(data) + host.charged)
        self.served += 1
        out = b""
        if result.data is not None:
            out = bytes(result.data)  # type: ignore[arg-type]  # byte-sized buffers
            self.runner.give_back([result.data])
        answer: dict[str, Any] = {"t": "res", "id": rid, "status": int(result.status)}
        if result.sense:
            answer["sense"] = bytes(result.sense).hex()
        if result.transfer_length is not None:
            answer["length"] = result.transfer_length
        return answer, out

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
    """Make a shipped nexus known to the owner's device server without the POWER ON/RESET
    unit attention a login queues (the gateway it came through delivered its own): from now
    on the owner queues unit attentions for it, delivered on its shipped commands."""
    port = nexus.initiator_port
    if port in device._nexuses and nexus.relative_port in device._ports:
        return
    with device._lock:
        if port not in device._nexuses:
            device._nexuses[port] = nexus
            device._departed.pop(port, None)
            for lu in device.luns.values():
                with lu.state_lock:
                    lu._ua.setdefault(port, [])
        if nexus.relative_port not in device._ports:
            device._ports[nexus.relative_port] = nexus.target_port_group
            device._port_names[nexus.relative_port] = nexus.target_port


# ----------------------------------------------------------------------------- the sender's side
class _Client:
    """One kept, authenticated connection to a peer's ship address."""

    def __init__(self, shipper: Shipper, address: str) -> None:
        self.shipper = shipper
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._connecting = asyncio.Lock()
        self._ids = 0

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self.writer is not None and not self.writer.is_closing():
                return self.writer
            host, _, port = self.address.rpartition(":")
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), HANDSHAKE_SECONDS)
            try:
                await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_SECONDS)
            except BaseException:
                writer.close()
                raise
            self.reader, self.writer = reader, writer
            asyncio.get_running_loop().create_task(self._read(reader, writer))
            return writer

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
                fut = self.pending.pop(header.get("id"), None)  # type: ignore[arg-type]
                if header["t"] != "res" or fut is None:
                    raise FrameError(f"unexpected {header['t']!r} frame")
                if not fut.done():
                    fut.set_result((header, data))
        except (EOFError, asyncio.CancelledError):
            pass
        except (FrameError, OSError) as exc:
            _drop("peer", self.address, str(exc))
        finally:
            writer.close()
            if self.writer is writer:
                self.writer = None
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("ship connection lost"))
            self.pending.clear()

    async def request(self, header: dict[str, Any],
                      data: bytes | memoryview) -> tuple[dict[str, Any], bytes]:
        async with self.slots:
            writer = await self._connect()
            self._ids += 1
            rid = header["id"] = self._ids
            fut: asyncio.Future[tuple[dict[str, Any], bytes]] = \
                asyncio.get_running_loop().create_future()
            self.pending[rid] = fut
            writer.write(encode(header, data))
            try:
                return await fut
            finally:
                self.pending.pop(rid, None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Shipper:
    """The sender's side: the runner's per-LU hook (``LuState.ship``) and the connections to
    the owners. Installed on a member whose ``non_owner`` is ``non-optimized``."""

    def __init__(self, member: Any, secret: bytes, *, max_data: int = MAX_TRANSFER_BYTES,
                 timeout: float = 30.0) -> None:
        self.member = member
        self.secret = secret
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

    def maybe_ship(self, task: ScsiTask, run: Any, lu: Any, host: Any) -> bool:
        """The runner's hook (``Runner.start``): True if the command went to the owner (its
        generator closed unstarted), False to run it here as usual."""
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
        if task.read and task.expected_length and not host.reserve(task, task.expected_length):
            run.close()
            host.complete(task, ScsiResult(host.full_status()))
            return True
        run.close()
        header = _header(glu.key, rec.epoch, task.lun, nexus)
        header.update(cdb=bytes(cdb).hex(), attr=int(task.attr), expected=task.expected_length,
                      read=task.read, write=task.write)
        client = self._client(address)
        t = asyncio.get_running_loop().create_task(self._ship(client, header, task, lu, host))
        self._inflight.add(t)
        t.add_done_callback(self._inflight.discard)
        self.shipped += 1
        return True

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

    async def lun_reset(self, lu: Any, lun: int, nexus: Nexus) -> None:
        """A LOGICAL UNIT RESET through this non-owner: the owner resets the LU too (its
        SPC-2 reservation, its unit attentions for every nexus it knows). Best effort,
        bounded: the reset here is done already."""
        if lu.alua.state_of(nexus.target_port_group) is not AccessState.ACTIVE_NON_OPTIMIZED:
            return
        owner = self._owner(lu)
        if owner is None:
            return
        glu, rec, address = owner
        header = _header(glu.key, rec.epoch, lun, nexus)
        header["tmf"] = "lun_reset"
        try:
            await asyncio.wait_for(self._client(address).request(header, b""), self.timeout)
        except (OSError, TimeoutError, FrameError) as exc:
            PROBLEMS.report(log, logging.WARNING, "ship send", address,
                            "command shipping: LUN reset to %s failed: %s", address,
                            str(exc) or type(exc).__name__)

    async def _ship(self, client: _Client, header: dict[str, Any], task: ScsiTask, lu: Any,
                    host: Any) -> None:
        data = task.data_out if task.data_out is not None else b""
        try:
            answer, out = await asyncio.wait_for(client.request(header, data), self.timeout)
            if answer.get("not_owner"):
                result = _not_owner(lu)
            else:
                sense = answer.get("sense")
                result = ScsiResult(Status(int(answer["status"])), out if out else None,
                                    bytes.fromhex(sense) if isinstance(sense, str) else None,
                                    answer.get("length"))
        except (TimeoutError, OSError, FrameError, ValueError, KeyError) as exc:
            PROBLEMS.report(log, logging.WARNING, "ship send", client.address,
                            "command shipping to %s failed: %s", client.address,
                            str(exc) or type(exc).__name__)
            result = _not_owner(lu)
        if task.aborted:
            result = ScsiResult(Status.TASK_ABORTED)
        host.complete(task, result)


def _header(key: str, epoch: int, lun: int, nexus: Nexus) -> dict[str, Any]:
    return {"t": "cmd", "key": key, "epoch": epoch, "target": nexus.target_port.partition(",t,")[0],
            "lun": lun, "initiator": nexus.initiator_name, "port": nexus.initiator_port,
            "target_port": nexus.target_port, "relative_port": nexus.relative_port,
            "tpg": nexus.target_port_group}


def _not_owner(lu: Any) -> ScsiResult:
    key, asc = NOT_OWNER_SENSE
    return ScsiResult(Status.CHECK_CONDITION, None,
                      build_sense(key, asc, descriptor=bool(getattr(lu, "descriptor_sense", False))))
