"""One logical unit: its identity, geometry, mode pages, unit attentions and reservations.

All of a LU's mutable SCSI state lives here; handlers in :mod:`.spc`/:mod:`.sbc` read and
change it. Nothing here does I/O or touches the store: whoever opens the store measures it
and says what it can do (``size``, ``capabilities``, ``read_only``: ``server.runner.lu_on``);
``store`` is only carried for the command runner, which runs the LU's requests against it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .alua import Alua
from .background import BackgroundJob, JobBody
from .reservations import PrState
from .sense import Asc

#: Default largest single data transfer (VPD B0h MAXIMUM TRANSFER LENGTH); per LU it is
#: ``LogicalUnit.max_transfer_bytes``. 32 MiB: what the iSCSI layer buffers for one command
#: (``iscsi.connection.MAX_WRITE_BUFFER``; a per-session budget bounds the total), and what
#: libiscsi's WriteSame16.Unmap writes in one WRITE(16).
MAX_TRANSFER_BYTES = 32 << 20

#: Default pace of a background SANITIZE overwrite, bytes/s (see :mod:`.background`).
SANITIZE_RATE = 128 << 20

#: IEEE company id used to build NAA identifiers when the configuration gives none.
DEFAULT_OUI = 0x001A4A


def naa_from_serial(serial: str, oui: int = DEFAULT_OUI) -> bytes:
    """A stable 8-byte NAA IEEE Registered (type 5) identifier derived from ``serial``.

    NAA 5: 4-bit NAA, 24-bit OUI, 36-bit vendor specific identifier (here: a hash of the
    serial, so the same configured serial/UUID always yields the same id).
    """
    vsi = int.from_bytes(hashlib.sha256(serial.encode()).digest()[:5], "big") >> 4
    value = (0x5 << 60) | ((oui & 0xFFFFFF) << 36) | (vsi & 0xFFFFFFFFF)
    return value.to_bytes(8, "big")


@dataclass(slots=True)
class ModePage:
    """A mode page: current/default values and the mask of bits MODE SELECT may change."""

    code: int
    current: bytearray
    default: bytes
    changeable: bytes

    @classmethod
    def make(cls, code: int, body: bytes, changeable: bytes) -> ModePage:
        head = bytes([code, len(body)])
        return cls(code, bytearray(head + body), head + body, bytes([0, 0]) + changeable)


# Bit positions in mode pages that the server itself reads. (Final: compiled, constants,
# not module look-ups on every write's write_cache and write_protected.)
CACHING_PAGE: Final = 0x08
CONTROL_PAGE: Final = 0x0A
IEC_PAGE: Final = 0x1C
WCE: Final = 0x04  # caching page byte 2
D_SENSE: Final = 0x04  # control page byte 2
SWP: Final = 0x08  # control page byte 4


class Capabilities(Protocol):
    """What the medium can really do, as the SCSI layer reads it (VPD B0h/B2h, READ
    CAPACITY(16), the caching page): plain data given by whoever opens the store (the
    stores' own ``Capabilities`` record has these fields)."""

    @property
    def discard(self) -> bool: ...  # deallocate a range
    @property
    def discard_zeroes(self) -> bool: ...  # a deallocated range reads back as zeroes (LBPRZ)
    @property
    def write_zeroes(self) -> bool: ...  # an efficient zero fill
    @property
    def extents(self) -> bool: ...  # can tell mapped from deallocated ranges
    @property
    def flush(self) -> bool: ...  # flushing makes written data durable


class LogicalUnit:
    """A direct-access block device; its I/O goes to ``store`` through the command runner."""

    def __init__(
        self,
        store: Any,
        *,
        size: int,
        capabilities: Capabilities,
        lun_id: int = 0,
        block_size: int = 512,
        physical_block_size: int | None = None,
        serial: str,
        naa: bytes | None = None,
        vendor: str = "GLUSTER",
        product: str = "iSCSI Disk",
        revision: str = "0001",
        read_only: bool = False,
        sanitize: bool = True,
        max_transfer_bytes: int | None = None,
        sanitize_rate: float | None = SANITIZE_RATE,
        on_persist: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> None:
        if block_size < 512 or block_size & (block_size - 1):
            raise ValueError(f"block size must be a power of two >= 512, not {block_size}")
        pbs = physical_block_size or block_size
        if pbs < block_size or pbs & (pbs - 1) or pbs // block_size > 1 << 15:
            raise ValueError(f"physical block size {pbs} for {block_size}-byte blocks")
        #: The backing store, opaque here: only the command runner calls it.
        self.store = store
        #: What the medium can do (see :class:`Capabilities`).
        self.capabilities = capabilities
        #: Opaque to the SCSI layer: where the command runner keeps its state for this LU
        #: (its I/O lock, ``server.runner.LockTable``). Nothing in ``scsi/`` reads it.
        self.runner_state: Any = None
        self.lun_id = lun_id
        self.block_size = block_size
        #: The unit the store really allocates and writes (READ CAPACITY(16) LBPPBE): a
        #: 512-byte-block LU on a 4 KiB file system may say so; GET LBA STATUS and the
        #: unmap granularity then work in physical blocks.
        self.physical_block_size = pbs
        self.lbppbe = (pbs // block_size).bit_length() - 1
        self.serial = serial
        self.naa = naa if naa is not None else naa_from_serial(serial)
        if len(self.naa) != 8 or self.naa[0] >> 4 not in (5, 6):
            raise ValueError("naa must be an 8-byte NAA IEEE Registered identifier (type 5/6)")
        self.vendor = vendor
        self.product = product
        self.revision = revision
        self.read_only = read_only
        #: Called with the PR state dict (or None when APTPL is off) whenever it must persist.
        self.on_persist = on_persist
        #: Guards this object's state (unit attentions, reservations) across threads.
        self.state_lock = threading.RLock()
        #: Target port groups and their access states (unrestricted: a lone gateway).
        self.alua = Alua(self)
        self.started = True
        #: Largest READ/WRITE a command may move (VPD B0h); larger ones are INVALID FIELD IN
        #: CDB. Data-out is buffered whole, so this bounds memory per command.
        if max_transfer_bytes is None:
            max_transfer_bytes = MAX_TRANSFER_BYTES
        self.max_transfer_bytes = max(block_size, max_transfer_bytes // block_size * block_size)
        #: SANITIZE is offered unless the daemon turns it off.
        self.sanitize_allowed = sanitize
        #: Bytes/s a background overwrite may write (None: unpaced).
        self.sanitize_rate = sanitize_rate
        #: The running background operation (SANITIZE), if any.
        self.background: BackgroundJob | None = None
        #: Tasks waiting for it (SANITIZE IMMED=0): aborted by resets and nexus loss.
        self.job_waiters: set[Any] = set()
        self.prevent_removal: set[str] = set()
        #: SPC-2 RESERVE(6/10) holder: the initiator port name.
        self.reserved_by: str | None = None
        self.pr = PrState()
        #: EXTENDED COPY outcomes by (initiator port, list identifier), for RECEIVE COPY STATUS.
        self.copy_results: dict[tuple[str, int], Any] = {}
        self._ua: dict[str, list[Asc]] = {}
        #: Set to a list by a gateway group while it applies a :class:`~.io.SharedUpdate`:
        #: the unit attentions the change queues (for this gateway's nexuses) are recorded
        #: there too, as plain events the other gateways replay on theirs
        #: (:meth:`replay_ua_events`). None, a lone gateway's case: nothing is recorded.
        self.ua_events: list[dict[str, Any]] | None = None
        #: Set to a list by a gateway group while it applies a :class:`~.io.SharedUpdate`:
        #: the unit attentions the change queues are held there (initiator port, condition)
        #: instead of queued, and queued by :meth:`release_ua` once the change's state record
        #: is written; dropped if it is not (no initiator hears of a change that did not
        #: happen: docs/HA.md decision 4). None: queued at once.
        self.ua_held: list[tuple[str, Asc]] | None = None
        self._blocks = size // block_size
        flush = capabilities.flush
        self.mode_pages: dict[int, ModePage] = {
            # Caching (SBC-3 6.4.5): WCE tells the initiator to send SYNCHRONIZE CACHE.
            CACHING_PAGE: ModePage.make(
                CACHING_PAGE,
                bytes([WCE if flush else 0]) + bytes(17),
                bytes([WCE]) + bytes(17),
            ),
            # Control (SPC-4 7.5.8): QAM 1 (unrestricted reordering); D_SENSE, SWP changeable.
            CONTROL_PAGE: ModePage.make(
                CONTROL_PAGE,
                bytes([0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00]),
                bytes([D_SENSE, 0, SWP, 0, 0, 0, 0, 0, 0, 0]),
            ),
            # Informational exceptions control (SPC-4 7.5.11): none to report (DEXCPT).
            IEC_PAGE: ModePage.make(IEC_PAGE, bytes([0x08]) + bytes(9), bytes(10)),
        }

    # -- geometry -------------------------------------------------------------------------

    @property
    def block_count(self) -> int:
        """Blocks on the medium, as last measured.

        Cached: ``store.size`` may be a network round trip (gfapi fstat) and handlers run
        on the event loop. READ CAPACITY re-measures through a :class:`~.io.Size` request
        and the control plane calls :meth:`capacity_changed` after a grow.
        """
        return self._blocks

    def capacity_changed(self, size: int) -> None:
        """The store was resized to ``size`` bytes (measured by the caller): tell every
        nexus (CAPACITY DATA HAS CHANGED)."""
        blocks = size // self.block_size
        with self.state_lock:
            self._blocks = blocks
            self.queue_ua_all(Asc.CAPACITY_DATA_HAS_CHANGED)

    def observed_size(self, size: int, initiator_port: str) -> None:
        """READ CAPACITY measured ``size``: on a change, the other nexuses get the UA."""
        blocks = size // self.block_size
        with self.state_lock:
            if blocks != self._blocks:
                self._blocks = blocks
                self.queue_ua_all(Asc.CAPACITY_DATA_HAS_CHANGED, except_port=initiator_port)

    # -- mode pages -----------------------------------------------------------------------

    @property
    def write_cache(self) -> bool:
        return bool(self.mode_pages[CACHING_PAGE].current[2] & WCE)

    @property
    def descriptor_sense(self) -> bool:
        return bool(self.mode_pages[CONTROL_PAGE].current[2] & D_SENSE)

    @property
    def write_protected(self) -> bool:
        """Read-only by configuration, or software write protect (SWP) set by MODE SELECT."""
        return self.read_only or bool(self.mode_pages[CONTROL_PAGE].current[4] & SWP)

    # -- unit attentions (SAM-5 5.14) -------------------------------------------------------

    def nexus_added(self, initiator_port: str,
                    asc: Asc = Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET) -> None:
        with self.state_lock:
            if initiator_port not in self._ua:
                self._ua[initiator_port] = [asc]

    def queue_ua(self, initiator_port: str, asc: Asc) -> None:
        with self.state_lock:
            held = self.ua_held
            if held is not None:  # a group's change not yet written (see ua_held)
                held.append((initiator_port, asc))
            else:
                queue = self._ua.setdefault(initiator_port, [])
                if asc not in queue:
                    queue.append(asc)

    def release_ua(self, held: list[tuple[str, Asc]]) -> None:
        """Queue the unit attentions a change held back (:attr:`ua_held`) now that it is in
        force; a nexus lost meanwhile gets none (its queue went with it)."""
        with self.state_lock:
            for port, asc in held:
                if port in self._ua:
                    self.queue_ua(port, asc)

    def queue_ua_all(self, asc: Asc, *, except_port: str | None = None) -> None:
        with self.state_lock:
            for port in list(self._ua):
                if port != except_port:
                    self.queue_ua(port, asc)

    def queue_ua_initiator(self, initiator: str, asc: Asc) -> None:
        """A unit attention for every nexus of ``initiator``: an initiator port name
        ("iqn...,i,0x...") or an initiator name (all its ports), as a PR registration names
        it. Recorded in :attr:`ua_events` while a group collects them."""
        who = initiator.lower()
        with self.state_lock:
            for port in list(self._ua):
                low = port.lower()
                if low == who or low.startswith(who + ",i,"):
                    self.queue_ua(port, asc)
            if self.ua_events is not None:
                self.ua_events.append({"asc": int(asc), "initiator": initiator})

    def queue_ua_others(self, asc: Asc, issuer: str) -> None:
        """A unit attention for every nexus but the issuer's (MODE PARAMETERS CHANGED);
        recorded in :attr:`ua_events` for the other gateways, where every nexus is
        another I_T nexus than the issuer's, the same initiator port's included."""
        with self.state_lock:
            self.queue_ua_all(asc, except_port=issuer)
            if self.ua_events is not None:
                self.ua_events.append({"asc": int(asc), "initiator": None})

    def replay_ua_events(self, events: list[dict[str, Any]]) -> None:
        """Queue on this gateway's nexuses the unit attentions another gateway's change
        recorded (:attr:`ua_events`). Not recorded again."""
        with self.state_lock:
            recording, self.ua_events = self.ua_events, None
            try:
                for event in events:
                    asc = Asc(event["asc"])
                    initiator = event.get("initiator")
                    if initiator is None:
                        self.queue_ua_all(asc)
                    else:
                        self.queue_ua_initiator(initiator, asc)
            finally:
                self.ua_events = recording

    def discard_ua(self, initiator_port: str, asc: Asc) -> None:
        """Drop one pending condition of this nexus (e.g. REPORT LUNS clears 3Fh/0Eh)."""
        with self.state_lock:
            queue = self._ua.get(initiator_port)
            if queue and asc in queue:
                queue.remove(asc)

    def clear_ua(self, initiator_port: str) -> None:
        with self.state_lock:
            self._ua[initiator_port] = []

    def pop_ua(self, initiator_port: str) -> Asc | None:
        """Take the oldest pending unit attention of this nexus (a reset outranks the rest)."""
        with self.state_lock:
            queue = self._ua.get(initiator_port)
            if not queue:
                return None
            resets = [a for a in queue if a.asc == 0x29]
            asc = resets[0] if resets else queue[0]
            if asc.asc == 0x29:
                # A reset supersedes every older condition of this nexus (SAM-5 5.14).
                queue[:] = [a for a in queue if a.asc != 0x29]
            else:
                queue.remove(asc)
            return asc

    # -- background operations (SBC-3 4.11) ---------------------------------------------------

    @property
    def sanitizing(self) -> bool:
        job = self.background
        return job is not None and job.running

    def start_background(
        self, name: str, body: JobBody, *, total: int, rate: float | None
    ) -> BackgroundJob:
        """Register a background job (the runner starts it when :class:`~.io.StartJob` is
        yielded)."""
        with self.state_lock:
            if self.sanitizing:
                raise RuntimeError("a background operation is already running")
            job = BackgroundJob(name, body, total=total, rate=rate, on_end=self._job_ended)
            self.background = job
            return job

    def _job_ended(self, job: BackgroundJob) -> None:
        with self.state_lock:
            if self.background is job:
                self.background = None

    def stop_background(self, timeout: float = 30.0) -> None:
        """Cancel the background job (the LU is closing: LUN removed, daemon stopping)."""
        job = self.background
        if job is not None:
            job.cancel(timeout)

    def _abort_waiters(self, initiator_port: str | None = None) -> None:
        for task in list(self.job_waiters):
            if initiator_port is None or task.nexus.initiator_port == initiator_port:
                task.aborted = True

    # -- resets ---------------------------------------------------------------------------

    def reset(self, asc: Asc, issuer: str | None = None) -> None:
        """LOGICAL UNIT RESET / target reset: drop SPC-2 reservations, keep persistent ones.

        The unit attention goes to every nexus, the issuer included (SAM-5 6.3). A background
        SANITIZE goes on (SBC-3 4.11); the commands waiting for it end.
        """
        with self.state_lock:
            self._abort_waiters()
            self.reserved_by = None
            self.prevent_removal.clear()
            self.started = True
            for port in list(self._ua):
                self.queue_ua(port, asc)

    def nexus_lost(self, initiator_port: str) -> None:
        """SAM-5 6.3.4: drop its SPC-2 reservation and its unit attention queue (the device
        server tells a returning port of the loss); persistent reservations stay."""
        with self.state_lock:
            self._abort_waiters(initiator_port)
            if self.reserved_by == initiator_port:
                self.reserved_by = None
            self.prevent_removal.discard(initiator_port)
            self._ua.pop(initiator_port, None)

    # -- persistent reservations ----------------------------------------------------------

    def persist_pr(self) -> None:
        """Hand the PR state to the daemon when APTPL asks for it to survive power loss."""
        if self.on_persist is not None:
            self.on_persist(self.pr.to_dict() if self.pr.aptpl else None)

    def load_pr_state(self, state: dict[str, Any]) -> None:
        """Restore persistent reservations saved through :attr:`on_persist` (APTPL)."""
        with self.state_lock:
            self.pr = PrState.from_dict(state)

    # -- state shared by a gateway group (docs/HA.md decision 4) ----------------------------

    def shared_state(self, kind: str) -> dict[str, Any]:
        """The LU-wide state of ``kind`` a gateway group keeps on the volume, as plain data:
        "pr" (persistent reservations) or "mode" (the changeable bits of the caching and
        control mode pages)."""
        with self.state_lock:
            if kind == "pr":
                return self.pr.to_dict()
            if kind == "mode":
                caching = self.mode_pages[CACHING_PAGE].current
                control = self.mode_pages[CONTROL_PAGE].current
                return {
                    "wce": bool(caching[2] & WCE),
                    "d_sense": bool(control[2] & D_SENSE),
                    "swp": bool(control[4] & SWP),
                }
        raise ValueError(f"no shared state {kind!r}")

    def load_shared_state(self, kind: str, state: dict[str, Any]) -> None:
        """Replace the LU-wide state of ``kind`` with ``state`` (from :meth:`shared_state`,
        maybe another gateway's). Only the state: no unit attention is queued here."""
        with self.state_lock:
            if kind == "pr":
                self.pr = PrState.from_dict(state)
                return
            if kind == "mode":
                caching = self.mode_pages[CACHING_PAGE].current
                control = self.mode_pages[CONTROL_PAGE].current
                caching[2] = _with_bit(caching[2], WCE, bool(state["wce"]))
                control[2] = _with_bit(control[2], D_SENSE, bool(state["d_sense"]))
                control[4] = _with_bit(control[4], SWP, bool(state["swp"]))
                return
        raise ValueError(f"no shared state {kind!r}")


def _with_bit(byte: int, bit: int, on: bool) -> int:
    return byte | bit if on else byte & ~bit & 0xFF
