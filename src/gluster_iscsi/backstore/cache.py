"""A bounded, block-aligned, write-through read cache in front of a byte store (gfapi LUNs).

Reads through libgfapi go to the bricks every time, while a target on a FUSE file reads from
the kernel's page cache. :class:`CachedStore` wraps a store and keeps recently read bytes in
fixed chunks (:data:`DEFAULT_CHUNK`, 64 KiB) in LRU order. It sees bytes only, never CDBs:
every way the SCSI layer changes data ends in :meth:`write`, :meth:`writev`,
:meth:`discard`, :meth:`write_zeroes` or :meth:`resize` of the store (WRITE/WRITE SAME/
SANITIZE OVERWRITE/COMPARE AND WRITE/ORWRITE/XCOPY targets are writes, UNMAP and SANITIZE
BLOCK ERASE discards, WRITE SAME with zeroes write_zeroes, growing a LUN resize), and each of
those passes through here.

Written through, never stale after GOOD
---------------------------------------
A write (and discard, write_zeroes) goes to the store first, then, before the call returns
(so before the SCSI layer can answer GOOD), the chunks it touched are dropped, in a
``finally``: a failed or partial write drops them too. A read that hits the cache while a
write is in flight may see the old bytes: the write is not acknowledged yet, so either
answer is correct. A write that succeeded then puts the chunks back with its own bytes
(copied before it returns): the whole chunks it covered, and the cached chunks it covered in
part, patched. So the cache keeps what is written as the kernel's page cache does (a LUN
written end to end is read from memory, as tgt reads a FUSE file; a 4K write does not cost
a cached 64K chunk). Not when
another change of those chunks was numbered after the write began: two overlapping writes in
flight may land on the bricks in either order, so neither is trusted then.

The race that matters is a *fill*: a read misses, reads the bricks without the lock (other
reads and writes go on meanwhile), then inserts what it read. If a write completed between
the fill's brick read and its insert, the fill holds bytes older than an acknowledged write
and must not be inserted. So every invalidation takes a new number from a counter
(``_gen``) and is remembered, with its chunk range, in a short ring of recent
invalidations. A fill notes the counter before it reads the bricks (``start``); under the
lock, before inserting, it skips every chunk that an invalidation numbered after ``start``
covered. If the ring has forgotten invalidations newer than ``start`` (``_floor``) the fill
inserts nothing. Clearing everything (upcall, resize, a loss of sole-writer status) raises
``_floor`` to the new number, so every fill in flight is discarded. A fill that started
after a write's drop read the bricks after the write had completed there, so its bytes are
at least as new as that write. One lock (per store) guards the map, the counter and the
ring; the store calls themselves run outside it.

When it is used
---------------
Only while this gateway is the only writer of the LUN it knows of (:attr:`sole_writer`,
True for today's lone gateway). Code that puts the LUN in a gateway group where another
gateway may write must call :meth:`set_sole_writer(False) <set_sole_writer>` before the
other gateway can write (and never set it back across a loss of ownership without a
clear): the cache is emptied, fills in flight are discarded, and reads go straight to the
store.

Writers the gateway does not know of (another Gluster client writing the file) are seen
only through Gluster's upcalls: a store that can watch its file for invalidations
(``watch_invalidations``, the gfapi store on a volume with ``features.cache-invalidation``)
gets a callback that empties the whole cache for the file, and cached chunks then also
expire after ``ttl`` seconds (the bricks send invalidations only to clients that touched
the file within ``features.cache-invalidation-timeout``; a chunk read from the bricks less
than that long ago is covered). Without upcalls :attr:`coherence` is ``"single-writer"``:
status says the cache is correct only while nothing else writes the file.

Readahead
---------
A stream of sequential reads issued one at a time (each starting where the previous ended,
the third in a row) that misses fetches :data:`DEFAULT_READAHEAD` more bytes in the same
call, so the next reads hit. Only while no other miss of the store is in flight: several
reads in flight already fetch ahead by themselves, and a wider fetch would read bytes twice.
What is fetched ahead is inserted like any fill (same generation check).

Memory
------
Each cache has its own cap (``capacity``) and all caches together a daemon-wide
:class:`CacheLedger`, whose limit is a quarter of the daemon's memory budget by default.
The cache also yields to commands: it takes no more than what the budget has left over the
memory commands hold now, evicting its own LRU chunks to make room, so it never takes
memory that commands need (it only reads ``budget.used``, it never charges the budget).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ..buffers import MemoryBudget, default_budget  # the one coupling to the command budget
from ._util import byte_view, check_range
from .base import BackingStore, Buffer, Capabilities, Extent

#: Bytes per cached chunk; reads that miss fetch whole chunks (clipped at the end of the LUN).
DEFAULT_CHUNK = 64 << 10
#: How far a miss of a sequential stream (the third read in a row that starts where the last
#: ended, with no other miss in flight) reads beyond the request.
DEFAULT_READAHEAD = 4 * DEFAULT_CHUNK
#: A LUN's cache cap when neither its options nor ``serve --gfapi-cache`` say.
DEFAULT_LUN_CAPACITY = 256 << 20
#: Invalidations remembered for fills in flight (older ones: a fill that started before
#: them inserts nothing).
_RING = 64


class CacheLedger:
    """The bytes all read caches of the daemon hold together, bounded by :attr:`limit` and by
    what the command memory budget (if any) leaves over. Thread-safe (fills run on workers)."""

    def __init__(self, limit: int, budget: MemoryBudget | None = None) -> None:
        self.limit = limit
        self.budget = budget
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            used = self.used + n
            if used > self.limit:
                return False
            budget = self.budget
            if budget is not None and budget.used + used > budget.limit:
                return False  # commands hold (nearly) all of the budget: they come first
            self.used = used
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


_ledger: CacheLedger | None = None
_default_capacity = DEFAULT_LUN_CAPACITY
_config_lock = threading.Lock()


def configure(budget: MemoryBudget | None, lun_default: int | None) -> CacheLedger:
    """Set the daemon-wide ledger from the command memory budget (a quarter of it) and the
    default per-LUN cap (``serve --gfapi-cache``; 0 disables caches of LUNs that set none)."""
    global _ledger, _default_capacity
    limit = (budget.limit if budget is not None else default_budget()) // 4
    with _config_lock:
        if _ledger is None:
            _ledger = CacheLedger(limit, budget)
        else:  # caches already open keep their ledger object
            _ledger.limit, _ledger.budget = limit, budget
        if lun_default is not None:
            _default_capacity = lun_default
        return _ledger


def ledger() -> CacheLedger:
    with _config_lock:
        if _ledger is not None:
            return _ledger
    return configure(None, None)


def default_capacity() -> int:
    return _default_capacity


#: The caches open now (made by :class:`CachedStore`, left at its close), for :func:`summary`.
_open_caches: weakref.WeakSet[CachedStore] = weakref.WeakSet()

#: What :func:`summary` says of a daemon whose caches get no upcalls.
SINGLE_WRITER_ONLY = "off (single-writer only)"


def summary(caches_: list[CachedStore] | None = None) -> dict[str, Any]:
    """The daemon's read caches in one dict, for ``status``: how many LUNs have one on, the
    hit ratio (hits over reads that went through an enabled cache; None before any), the bytes
    held against the caps, and whether upcalls keep them coherent with other Gluster clients:
    ``"on"`` (every cache), :data:`SINGLE_WRITER_ONLY` (none: correct only while this gateway
    is the file's only writer), ``"mixed"`` (per LUN in ``lun list --json``), None when no
    LUN has a cache. ``caches_``: these instead of every cache open now (tests)."""
    caches = [c for c in (list(_open_caches) if caches_ is None else caches_) if c.capacity > 0]
    on = [c for c in caches if c.enabled]
    hits = sum(c.hits for c in caches)
    misses = sum(c.misses for c in caches)
    upcall = sum(1 for c in caches if c.coherence == "upcall")
    led = ledger()
    return {
        "luns": len(caches),
        "enabled": len(on),
        "hits": hits,
        "misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "bytes_cached": sum(c.bytes for c in caches),
        "capacity": sum(c.capacity for c in caches),
        "limit_all_luns": led.limit,
        "lun_default": default_capacity(),
        "readahead_bytes": sum(c.readahead_bytes for c in caches),
        "invalidations": sum(c.invalidations for c in caches),
        "upcalls": (None if not caches else "on" if upcall == len(caches) else
                    SINGLE_WRITER_ONLY if not upcall else "mixed"),
    }


def parse_capacity(value: Any) -> int:
    """A LUN's ``cache`` option: a size (``64MiB``, bytes), ``0``/``off`` to disable."""
    from .size import parse_size

    if isinstance(value, bool):
        return default_capacity() if value else 0
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("off", "no", "false", "none"):
            return 0
        if text in ("on", "yes", "true"):
            return default_capacity()
        n = parse_size(text)
    if n < 0:
        raise ValueError(f"negative cache size {value!r}")
    return n


def summary_line(s: dict[str, Any]) -> str:
    """:func:`summary` as the one line ``status`` prints."""
    if not s["luns"]:
        return "read cache: no gfapi LUN has one"
    ratio = "-" if s["hit_ratio"] is None else f"{100 * s['hit_ratio']:.1f}%"
    return (f"read cache: {s['enabled']} of {s['luns']} LUNs on, hit ratio {ratio}, "
            f"{s['bytes_cached'] / (1 << 20):.1f} MiB cached (at most "
            f"{min(s['capacity'], s['limit_all_luns']) >> 20} MiB), upcalls {s['upcalls']}")


class CachedStore(BackingStore):
    """``inner`` with a read cache of up to ``capacity`` bytes in front (see the module)."""

    def __init__(
        self,
        inner: BackingStore,
        capacity: int,
        *,
        chunk: int = DEFAULT_CHUNK,
        readahead: int = DEFAULT_READAHEAD,
        ledger_: CacheLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if chunk <= 0 or chunk & (chunk - 1):
            raise ValueError(f"cache chunk {chunk} is not a power of two")
        self.inner = inner
        self.blocking = inner.blocking
        self.name = inner.name
        self.read_only = inner.read_only
        # No descriptor is lent: I/O on it (io_uring) would bypass the cache's invalidation.
        self.lends_fd = False
        self.chunk = chunk
        self._shift = chunk.bit_length() - 1
        self.capacity = max(0, capacity)
        self._ledger = ledger_ if ledger_ is not None else ledger()
        self._clock = clock
        self._lock = threading.Lock()
        # chunk index -> (bytes, time filled); OrderedDict order is LRU (oldest first). A
        # chunk a write patched is a bytearray, changed in place under the lock.
        self._chunks: OrderedDict[int, tuple[bytes | bytearray, float]] = OrderedDict()
        self.bytes = 0  # held now
        self._gen = 0
        self._floor = 0  # fills that started before this number insert nothing
        self._recent: deque[tuple[int, int, int]] = deque()  # (gen, first, last chunk)
        self._size: int | None = None
        #: False once another gateway may write the LUN (see the module): the cache is off.
        self.sole_writer = True
        #: Seconds a chunk stays valid (None: until invalidated); set with upcalls on.
        self.ttl: float | None = None
        self.hits = 0
        self.misses = 0
        #: Bytes fetched ahead of a sequential stream on a miss (0: no readahead).
        self.readahead = readahead
        self.readahead_bytes = 0
        self._next = -1
        self._streak = 0
        self._filling = 0
        self.invalidations = 0  # whole-cache drops from outside (upcalls)
        #: "upcall": other Gluster clients' writes invalidate it; "single-writer": they do not.
        self.coherence = "single-writer"
        watch = getattr(inner, "watch_invalidations", None)
        if watch is not None and self.capacity:
            ttl = watch(self.invalidate_all)
            if ttl is not None:
                self.coherence = "upcall"
                self.ttl = ttl
        _open_caches.add(self)

    # -- the cache ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.sole_writer

    def set_sole_writer(self, sole: bool) -> None:
        """Gateway-group hook: False as soon as another gateway may write this LUN (the
        cache empties and stays off), True again only once this gateway owns it afresh."""
        self.sole_writer = sole
        self.clear()  # either way: nothing cached before a change of ownership is trusted

    def invalidate_all(self) -> None:
        """Another writer changed the file (an upcall): forget every chunk and the size."""
        self.invalidations += 1
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._gen += 1
            self._floor = self._gen
            self._recent.clear()
            self._drop_all_locked()
            self._size = None

    def _drop_all_locked(self) -> None:
        freed = self.bytes
        self._chunks.clear()
        self.bytes = 0
        if freed:
            self._ledger.give(freed)

    def _invalidate(self, offset: int, length: int, start: int = -1,
                    data: memoryview | None = None) -> None:
        """Drop the chunks of [offset, offset+length) and remember it for fills in flight.

        With ``data`` (the bytes a write that began at generation ``start`` has just put
        there, successfully), the chunks are then cached with those bytes, as the page cache
        keeps what is written: the whole chunks it covers, and the cached chunks it covers in
        part, patched. Only if no other change of those chunks was numbered after ``start``,
        since two overlapping writes in flight may land in either order."""
        if length <= 0:
            return
        shift = self._shift
        first = offset >> shift
        last = (offset + length - 1) >> shift
        chunk = self.chunk
        keep_first = (offset + chunk - 1) >> shift  # the whole chunks the write covers
        keep_last = ((offset + length) >> shift) - 1
        pieces: list[bytes] = []
        if data is not None and keep_first <= keep_last:
            base = (keep_first << shift) - offset
            pieces = [bytes(data[base + k * chunk : base + (k + 1) * chunk])
                      for k in range(keep_last - keep_first + 1)]
        with self._lock:
            self._gen += 1
            gen = self._gen
            recent = self._recent
            recent.append((gen, first, last))
            if len(recent) > _RING:
                self._floor = recent.popleft()[0]
            chunks = self._chunks
            freed = 0
            edges: list[int] = []  # cached chunks the write covers in part: patched below
            if last - first < len(chunks):
                for i in range(first, last + 1):
                    if data is not None and (i < keep_first or i > keep_last) and i in chunks:
                        edges.append(i)
                        continue
                    entry = chunks.pop(i, None)
                    if entry is not None:
                        freed += len(entry[0])
            else:
                for i in [i for i in chunks if first <= i <= last]:
                    freed += len(chunks.pop(i)[0])
            if freed:
                self.bytes -= freed
                self._ledger.give(freed)
            if data is None or (not pieces and not edges):
                return
            if start < self._floor or not self.enabled or self._raced_locked(start, gen, first, last):
                # another change of these chunks raced this write (two overlapping writes in
                # flight may land in either order), or the cache was cleared meanwhile
                self._drop_locked(edges)
                return
            now = self._clock()
            for n, i in enumerate(edges):
                old, filled = chunks[i]
                lo_b = max(offset, i << shift)
                hi_b = min(offset + length, (i << shift) + len(old))
                if hi_b - lo_b != min(offset + length, (i + 1) << shift) - lo_b:
                    self._drop_locked(edges[n:])  # runs past the cached (last, short) chunk
                    break
                # In place: readers copy out of chunks only under this lock.
                buf = old if type(old) is bytearray else bytearray(old)
                buf[lo_b - (i << shift) : hi_b - (i << shift)] = data[lo_b - offset : hi_b - offset]
                # (the time it was filled stays: the bytes not written are that old)
                chunks[i] = (buf, filled)
                chunks.move_to_end(i)
            size = self._size
            if pieces and (size is None or (keep_last + 1) << shift <= size):
                for k, piece in enumerate(pieces):
                    if not self._make_room_locked(len(piece)):
                        return
                    chunks[keep_first + k] = (piece, now)
                    self.bytes += len(piece)

    def _raced_locked(self, start: int, gen: int, first: int, last: int) -> bool:
        """Whether a change numbered between ``start`` and ``gen`` touched chunks
        ``first..last`` (the ring is in number order: only its newest entries are read)."""
        for g, lo, hi in reversed(self._recent):
            if g <= start:
                return False
            if g < gen and lo <= last and hi >= first:
                return True
        return False

    def _drop_locked(self, indexes: list[int]) -> None:
        freed = 0
        for i in indexes:
            entry = self._chunks.pop(i, None)
            if entry is not None:
                freed += len(entry[0])
        if freed:
            self.bytes -= freed
            self._ledger.give(freed)

    def _known_size(self) -> int:
        size = self._size
        if size is None:
            size = self._size = self.inner.size
        return size

    def cache_status(self) -> dict[str, Any]:
        """What ``lun list --json``/``status`` show of the cache."""
        return {
            "enabled": self.enabled,
            "coherence": self.coherence if self.enabled else "off",
            "single_writer_only": self.coherence != "upcall",
            "capacity": self.capacity,
            "bytes": self.bytes,
            "chunk": self.chunk,
            "hits": self.hits,
            "misses": self.misses,
            "invalidations": self.invalidations,
            "readahead_bytes": self.readahead_bytes,
        }

    # -- reads ----------------------------------------------------------------------------------

    def read_into(self, offset: int, buf: memoryview) -> None:
        if not self.enabled:
            self.inner.read_into(offset, buf)
            return
        dst = byte_view(buf)
        length = len(dst)
        check_range(offset, length, self.name)
        if length == 0:
            return
        shift = self._shift
        first = offset >> shift
        last = (offset + length - 1) >> shift
        # Sequential-stream detection for readahead (racy counters: a hint, never data).
        streak = self._streak + 1 if offset == self._next else 0
        self._streak = streak
        self._next = offset + length
        if self._copy_hits(offset, dst, first, last):
            self.hits += 1
            return
        self.misses += 1
        with self._lock:
            start = self._gen
            alone = not self._filling  # no other miss of this store in flight
            self._filling += 1
        try:
            chunk = self.chunk
            lo = first << shift
            size = self._known_size()
            hi = min((last + 1) << shift, max(size, offset + length))
            if alone and streak >= 2 and self.readahead and hi < size:
                # A sequential stream read one call at a time: fetch the next window with
                # this call (fewer round trips); never with several reads in flight, which
                # fetch ahead by themselves and would only read the same bytes twice.
                ahead = min(hi + self.readahead, size)
                self.readahead_bytes += ahead - hi
                hi = ahead
            if lo == offset and hi == offset + length:
                self.inner.read_into(offset, dst)  # aligned already: straight into the caller's
                data: memoryview = dst
            else:
                scratch = bytearray(hi - lo)
                self.inner.read_into(lo, memoryview(scratch))
                data = memoryview(scratch)
                dst[:] = data[offset - lo : offset - lo + length]
        finally:
            with self._lock:
                self._filling -= 1
        if hi > size:  # read past the size we knew: the file grew elsewhere; learn it later
            return
        self._insert(start, first, data, hi - lo, chunk)

    def read_hit(self, offset: int, buf: memoryview) -> bool:
        """:meth:`read_into` if every chunk is cached and fresh, else False with nothing done:
        it never calls the store, so the command runner calls it on the event loop first and
        sends only misses to the store's workers (a hit then costs no thread hand-off)."""
        if not self.enabled:
            return False
        dst = byte_view(buf)
        length = len(dst)
        if length == 0 or offset < 0:
            return False
        shift = self._shift
        if not self._copy_hits(offset, dst, offset >> shift, (offset + length - 1) >> shift):
            return False
        self.hits += 1
        # (the sequential-stream hint of read_into, for the misses that follow)
        self._streak = self._streak + 1 if offset == self._next else 0
        self._next = offset + length
        return True

    def _copy_hits(self, offset: int, dst: memoryview, first: int, last: int) -> bool:
        """Copy [offset, +len(dst)) from cached chunks if every one is there and fresh."""
        shift = self._shift
        ttl = self.ttl
        now = self._clock() if ttl is not None else 0.0
        end = offset + len(dst)
        with self._lock:
            chunks = self._chunks
            entries = []
            for i in range(first, last + 1):
                entry = chunks.get(i)
                if entry is None or (ttl is not None and now - entry[1] > ttl):
                    return False
                entries.append(entry[0])
            pos = 0
            for i, data in zip(range(first, last + 1), entries, strict=True):
                base = i << shift
                a = max(offset, base) - base
                b = min(end - base, len(data))
                if b < min(end - base, self.chunk):
                    return False  # a short last chunk (the end then) that does not cover it
                dst[pos : pos + b - a] = data[a:b]
                pos += b - a
                chunks.move_to_end(i)
            return pos == len(dst)

    def _insert(self, start: int, first: int, data: memoryview, total: int, chunk: int) -> None:
        n_chunks = (total + chunk - 1) // chunk
        pieces = [bytes(data[k * chunk : min(total, (k + 1) * chunk)]) for k in range(n_chunks)]
        now = self._clock()
        with self._lock:
            if start < self._floor or not self.enabled:
                return
            stale: set[int] = set()
            for gen, lo, hi in self._recent:
                if gen > start:
                    stale.update(range(max(lo, first), min(hi, first + n_chunks - 1) + 1))
            chunks = self._chunks
            for k, piece in enumerate(pieces):
                i = first + k
                if i in stale:
                    continue
                old = chunks.pop(i, None)
                if old is not None:
                    self.bytes -= len(old[0])
                    self._ledger.give(len(old[0]))
                if not self._make_room_locked(len(piece)):
                    return
                chunks[i] = (piece, now)
                self.bytes += len(piece)

    def _make_room_locked(self, n: int) -> bool:
        """Evict own LRU chunks until ``n`` more bytes fit the cap and the ledger; take them."""
        if n > self.capacity:
            return False
        chunks = self._chunks
        while self.bytes + n > self.capacity and chunks:
            _, (old, _t) = chunks.popitem(last=False)
            self.bytes -= len(old)
            self._ledger.give(len(old))
        while not self._ledger.take(n):
            if not chunks:
                return False
            _, (old, _t) = chunks.popitem(last=False)
            self.bytes -= len(old)
            self._ledger.give(len(old))
        return True

    # -- writes: the store first, then the drop, before returning --------------------------------

    def write(self, offset: int, data: Buffer) -> None:
        view = byte_view(data)
        start = self._gen
        done = False
        try:
            self.inner.write(offset, data)
            done = True
        finally:
            self._invalidate(offset, len(view), start, view if done and self.enabled else None)

    def writev(self, offset: int, buffers: list[Buffer]) -> None:
        views = [byte_view(b) for b in buffers]
        total = sum(len(v) for v in views)
        start = self._gen
        done = False
        try:
            writev = getattr(self.inner, "writev", None)
            if writev is not None:
                writev(offset, buffers)
            else:
                self.inner.write(offset, b"".join(views))
            done = True
        finally:
            keep = None
            if done and self.enabled:
                keep = views[0] if len(views) == 1 else memoryview(b"".join(views))
            self._invalidate(offset, total, start, keep)

    def discard(self, offset: int, length: int) -> None:
        try:
            self.inner.discard(offset, length)
        finally:
            self._invalidate(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        try:
            self.inner.write_zeroes(offset, length)
        finally:
            self._invalidate(offset, length)

    def resize(self, new_size: int, **kw: Any) -> None:
        try:
            self.inner.resize(new_size, **kw)
        finally:
            self.clear()

    def allocate(self, offset: int, length: int) -> None:
        self.inner.allocate(offset, length)  # type: ignore[attr-defined]

    # -- the rest is the store's ----------------------------------------------------------------

    @property
    def size(self) -> int:
        size = self.inner.size
        self._size = size
        return size

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self.inner.capabilities

    def flush(self) -> None:
        self.inner.flush()

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.inner.extents(offset, length)

    def close(self, timeout: float | None = None) -> None:
        _open_caches.discard(self)
        unwatch = getattr(self.inner, "unwatch_invalidations", None)
        if unwatch is not None:
            unwatch(self.invalidate_all)
        with self._lock:
            self._gen += 1
            self._floor = self._gen
            self._drop_all_locked()
        if timeout is None:
            self.inner.close()
        else:
            self.inner.close(timeout)

    def __getattr__(self, name: str) -> Any:
        # Store-specific attributes (address, path, created, o_direct, ...) are the inner's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r}, capacity={self.capacity})"
