"""A bounded, block-aligned, write-through read cache in front of a byte store (gfapi LUNs).

Reads through libgfapi go to the bricks every time, while a target on a FUSE file reads from
the kernel's page cache. :class:`CachedStore` wraps a store and keeps recently read bytes in
fixed chunks (:data:`DEFAULT_CHUNK`, 64 KiB) in LRU order, each with a bitmask of which of
its units (:data:`DEFAULT_UNIT`, 4 KiB) hold the store's bytes: a random read that misses
reads only the units it needs (a 64 KiB read at the bricks took 15-70% longer than 4 KiB),
and one object per 64 KiB keeps a big cache cheap. It sees bytes only, never CDBs:
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
answer is correct. A write that succeeded then keeps its own bytes (copied before it
returns): the whole chunks it covered are cached, the cached chunks it covered in part are
patched in place (the units it covered whole become valid); a chunk not cached that it
covers in part stays out (a 64 KiB chunk for each 4K write cost more than the write's own
path). A discard or write_zeroes clears the bits of the units it touched. So the cache
keeps what is written as the kernel's page cache does (a LUN
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
gets a callback that empties the whole cache for the file. The bricks send invalidations
only to clients that touched the inode (with sharding: the shard) within
``features.cache-invalidation-timeout`` (``ttl`` is half of it). So the cache keeps, per
4 MiB region of the file (inside one shard: shard sizes are multiples of 4 MiB), when it
last reached the bricks there: a hit needs a touch within ttl/2 (else the read goes to the
bricks, which renews the region), and a region not touched for longer than the ttl loses
its chunks at the next touch. A keeper thread renews the regions a cache holds (one unit
read at each end, a quarter ttl after the last touch: :meth:`CachedStore.keep_alive`), so
bytes read only from memory (a hot set, an idle LUN) stay trusted; they used to expire ttl
after their fill, busy or not. Without upcalls :attr:`coherence` is ``"single-writer"``:
status says the cache is correct only while nothing else writes the file.

A failed store call empties the cache
-------------------------------------
Any call of the store that fails (a read, write, flush, discard, the keeper's renewal) clears
the whole cache, as an upcall does, and discards every fill in flight: a failure is how a
loss of the bricks shows here (ENOTCONN, EIO, EROFS; libgfapi reconnects by itself and tells
nobody), and across that loss nothing held is trusted. The bricks forget this client on a
disconnect (a restarted brick knows no client at all), so another client's writes meanwhile
send no upcall here; a write the client's write-behind acknowledged may fail at the bricks
later (only the next flush says so) while the cache kept its bytes; and a fill that read
before the loss may land after it. (A loss that no call of this store saw is bounded by the
keeper: it reads each held region at the bricks every quarter ttl, and a failed renewal
clears.) Errors are the slow path: the clear costs nothing on the per-command path.

Readahead
---------
A read that starts where the previous one ended (a sequential stream) and misses fills
whole chunks; the third in a row, issued one at a time, fetches
:data:`DEFAULT_READAHEAD` more bytes in the same
call, so the next reads hit. Only while no other miss of the store is in flight: several
reads in flight already fetch ahead by themselves, and a wider fetch would read bytes twice.
What is fetched ahead is inserted like any fill (same generation check).

Admission
---------
Every miss used to be inserted. On a working set larger than the cache (4K random reads over
a 1 GiB LUN, 256 MiB of cache) that never pays back: the cache holds a random part of the LUN
whatever goes in, so the hit ratio stays the same, while each insert copies, moves the LRU and
evicts a chunk (through the daemon the cache on cost 6% at QD1 and 22% at QD32 against
``--gfapi-cache 0``). So each cache judges itself every :data:`ADMIT_WINDOW` (1024) reads
through it (hits and misses): it *thrashes* if it is full (at its cap, or it evicted a chunk or
the ledger refused one in the window) and its hits in the window were fewer than half the
misses that took a new chunk (evictions, refusals) or would have (``skipped``). Fewer than one
hit for two evictions: uniform random 4K reads over twice the cache already are (the LRU
churns chunks that hold few valid units); a hot set that fits, or reads that come back soon
to what was read, are not. (Sampling cannot lower the hits of uniform reads, but would those
of reads that come back soon: the threshold leaves them alone.) While it thrashes, a random miss whose chunk is not cached is
inserted only if a cheap generator (an LCG on an int: no call, no object) picks it, one in
:data:`ADMIT_SAMPLE` (8); the others read exactly their bytes straight into the caller's
buffer (no scratch buffer, aligned or not) and are inserted nowhere: no copy, no LRU move, no
eviction, counted as ``skipped``. Such a read that fails still empties the cache, and with
upcalls it notes its touch at the bricks as a fill does (not after a clear). A decision only
ever skips an insert, so the guarantees above (generations, the ring, the floor,
``sole_writer``, upcalls, the clear on a failure) are untouched.

The counters are plain per-cache integers read at a miss: a hit does no work for the rule (a
window that ends in hits alone is judged at the next miss, or when status asks:
:meth:`CachedStore.sampling`). The rule turns itself off: a new hot set that fits gets in, since
a chunk once admitted takes every later miss into it (that evicts nothing), so a hot set of
dense 4K reads is mostly hits by the third pass, and even one unit per chunk (each waits for
its own sample: (7/8)**k of them are out after k passes) within 32 passes; once hits are a
third of a window, every miss goes in again. A clear (upcall, failure, resize, ownership)
ends it too. Under the rule chunks stay longer and collect units, so the hit ratio of uniform
reads goes up rather than down (4K reads at random through 4 MiB over 16 MiB: 2.2% -> 5%,
over 8 MiB: 6% -> 18%). What it saves (``bench/cacheloop.py cold --store memory``, compiled,
4K reads over 8x the cache): 5.0-5.4 -> 2.9-3.1 us of CPU per read (1.6 without a cache);
under callgrind the cache's own instructions per read went from 20.0k to 7.8k.

Not sampled, and why:
- a miss into a cached chunk: it evicts nothing, and it is what lets a hot set in and the hit
  ratio rise (one dictionary lookup to tell);
- sequential streams (the second read in a row onwards): what readahead fetches pays back
  only if it is inserted, and a stream's fill inserts whole chunks per brick read. A one-pass
  scan of a big LUN therefore still pushes a hot set out as before (scan resistance would need
  a second LRU list or hits that do not promote: not done);
- writes: a write still keeps the whole uncached chunks it covers. Those are bytes most
  likely read back soon (write then read, file system metadata), only aligned writes of 64 KiB
  and more make chunks (the copy is small against the write's own path), and writes are not
  reads of the window (their evictions do count as churn).

Both numbers can be set per cache (``admit_window``, ``admit_sample``; a sample of 1 admits
every miss: the cache as before).

Memory
------
Each cache has its own cap (``capacity``: by default :data:`AUTO`, the LUN's size) and all
caches together a daemon-wide :class:`CacheLedger`, whose limit is the memory target
(``cachetarget.py``; ``server/memory.py`` moves it every second from the machine's memory and
the cgroup's limit, and calls :func:`shrink_to` when it falls below what is held). A fill that
would pass it evicts its own cache's LRU chunks; a cache refused room gets some of the largest
one's at the next :func:`rebalance`. The caches also yield to commands: while commands hold
more than :data:`COMMANDS_FIRST` of the memory budget, no cache takes a new chunk (nor evicts
one to make room: it keeps what it holds), so a cache never competes with commands for memory
(it only reads ``budget.used``, it never charges the budget). A chunk counts whole (64 KiB)
however few of its units are valid: the memory is taken. A new chunk reuses the buffer of the
chunk it evicts (no allocation, no fresh pages).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

from ..buffers import default_budget  # (and the budget's two fields: the one coupling)
from ._util import byte_view, check_range
from .base import BackingStore, Buffer, Capabilities, Extent

#: Bytes per cached chunk (clipped at the end of the LUN); sequential misses fill whole chunks.
DEFAULT_CHUNK = 64 << 10
#: How far a miss of a sequential stream (the third read in a row that starts where the last
#: ended, with no other miss in flight) reads beyond the request.
DEFAULT_READAHEAD = 4 * DEFAULT_CHUNK
#: What a random miss reads at least, aligned (the units a chunk's validity is kept in).
DEFAULT_UNIT = 4 << 10
#: Bricks forget a client per inode (per shard with sharding, 4 MiB at the least): the cache
#: keeps when it last reached the bricks per region of this size (see ``CachedStore.ttl``).
_REGION_SHIFT = 22
#: A LUN's cache cap given as ``auto``: the LUN's own size (all of it may be cached; the
#: daemon-wide memory target decides how much all caches hold together).
AUTO = -1
#: A LUN's cache cap when neither its options nor ``serve --gfapi-cache`` say.
DEFAULT_LUN_CAPACITY = AUTO
#: Chunks a shrink evicts under one hold of a cache's lock (``shrink_by``).
_SHRINK_BATCH = 256
#: What :func:`rebalance` evicts for a cache at most, per new refusal it saw: this many chunks.
_REBALANCE_PER_REFUSAL = 4
#: While commands hold more than this share of their memory budget (peers press the daemon),
#: no cache takes a new chunk: commands come first.
COMMANDS_FIRST = 0.75
#: Invalidations remembered for fills in flight (older ones: a fill that started before
#: them inserts nothing).
_RING = 64
#: Reads through a cache (hits and misses) per window of its admission rule ("Admission").
ADMIT_WINDOW = 1024
#: While a cache thrashes, one random miss in this many (a power of two) that would take a
#: new chunk is inserted.
ADMIT_SAMPLE = 8


class _Budget(Protocol):
    """What the ledger reads of the command memory budget (``buffers.MemoryBudget``; a
    Protocol, not the class: compiled code checks concrete classes, and tests pass fakes)."""

    limit: int
    used: int


class CacheLedger:
    """The bytes all read caches of the daemon hold together, bounded by :attr:`limit` (the
    memory target: ``cachetarget.py``, moved once a second by ``server/memory.py``) and
    yielding to commands: no new chunk while commands hold more than :data:`COMMANDS_FIRST`
    of their memory budget (if any). Thread-safe (fills run on workers)."""

    def __init__(self, limit: int, budget: _Budget | None = None) -> None:
        self.limit = limit
        self.budget = budget
        self.used = 0
        #: Chunks refused because commands held their share of the budget.
        self.yielded = 0
        self._lock = threading.Lock()

    def yielding(self) -> bool:
        """Whether commands hold more than :data:`COMMANDS_FIRST` of their budget: no cache
        takes a new chunk then (and none evicts to make room: evicting would not help)."""
        budget = self.budget
        return budget is not None and budget.used > budget.limit * COMMANDS_FIRST

    def take(self, n: int) -> bool:
        """Take ``n`` bytes within the limit (False: over it, or commands come first)."""
        with self._lock:
            used = self.used + n
            if used > self.limit or self.yielding():
                return False
            self.used = used
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


_ledger: CacheLedger | None = None
_default_capacity = DEFAULT_LUN_CAPACITY
_config_lock = threading.Lock()


def configure(budget: _Budget | None, lun_default: int | None,
              total: int | None = None) -> CacheLedger:
    """Set the daemon-wide ledger: its limit ``total`` (``serve --gfapi-cache-total``; None: a
    quarter of the command memory budget until the memory target's first reading moves it),
    the budget it yields to, and the default per-LUN cap (``serve --gfapi-cache``; :data:`AUTO`:
    the LUN's size; 0 disables caches of LUNs that set none)."""
    global _ledger, _default_capacity
    limit = total if total is not None else (
        (budget.limit if budget is not None else default_budget()) // 4)
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


def caches() -> list[CachedStore]:
    """The caches open now."""
    with _config_lock:
        return list(_open_caches)


def held() -> int:
    """The bytes every cache open now holds (the ledger's count)."""
    return ledger().used


def shrink_to(target: int, caches_: list[CachedStore] | None = None) -> int:
    """Evict LRU chunks until all caches together hold at most ``target`` bytes, the largest
    caches first (water-filling from the top: every cache above some level comes down to it,
    the others keep all). One cache's lock at a time, outside every other lock. Returns the
    bytes freed (the caller gives the heap back: ``malloc_trim``)."""
    everyone = [c for c in (caches() if caches_ is None else caches_) if c.bytes]
    excess = sum(c.bytes for c in everyone) - target
    if excess <= 0:
        return 0
    sizes = sorted((c.bytes for c in everyone), reverse=True)
    # the level: the largest L with sum(max(0, b - L)) >= excess
    above, level = 0, 0
    for k, b in enumerate(sizes):
        nxt = sizes[k + 1] if k + 1 < len(sizes) else 0
        if above + (k + 1) * (b - nxt) >= excess:
            level = b - (excess - above + k) // (k + 1)
            break
        above += (k + 1) * (b - nxt)
    freed = 0
    for c in everyone:
        if c.bytes > level:
            freed += c.shrink_by(c.bytes - level)
    return freed


def rebalance(caches_: list[CachedStore] | None = None) -> int:
    """Give caches that were refused room by the memory target since the last call a chance:
    for each, evict from the largest other cache, while that one holds more than this one, up
    to 1/16 of it, half the gap between the two, and :data:`_REBALANCE_PER_REFUSAL` chunks
    per fill refused (so one refused miss does not cost the busy LUN a sixteenth of its cache:
    room follows demand). Not inside a fill: a fill holds its own cache's lock, and taking
    another's there could deadlock two fills. Returns the bytes freed."""
    everyone = caches() if caches_ is None else caches_
    freed = 0
    for c in everyone:
        squeezed = c.squeezed
        if squeezed == c._squeezed_seen:
            continue
        refusals = squeezed - c._squeezed_seen
        c._squeezed_seen = squeezed
        others = [o for o in everyone if o is not c]
        if not others:
            continue
        big = max(others, key=lambda o: o.bytes)
        gap = big.bytes - c.bytes
        if gap > 2 * big.chunk:
            freed += big.shrink_by(min(big.bytes // 16, gap // 2,
                                       refusals * _REBALANCE_PER_REFUSAL * c.chunk))
    return freed


#: The caches open now (made by :class:`CachedStore`, left at its close), for :func:`summary`.
#: A plain set, not a WeakSet: this module is compiled (mypyc), and weak references to a
#: compiled CachedStore crashed the interpreter (a WeakSet.add segfaulted in the test
#: suite). A store is always closed.
_open_caches: set[CachedStore] = set()

#: What :func:`summary` says of a daemon whose caches get no upcalls.
SINGLE_WRITER_ONLY = "off (single-writer only)"


def summary(caches_: list[CachedStore] | None = None) -> dict[str, Any]:
    """The daemon's read caches in one dict, for ``status``: how many LUNs have one on, the
    hit ratio (hits over reads that went through an enabled cache; None before any), the bytes
    held against the caps, and whether upcalls keep them coherent with other Gluster clients:
    ``"on"`` (every cache), :data:`SINGLE_WRITER_ONLY` (none: correct only while this gateway
    is the file's only writer), ``"mixed"`` (per LUN in ``lun list --json``), None when no
    LUN has a cache; ``skipped``: misses not inserted, ``thrashing``: how many enabled caches
    sample their misses now (see the module's "Admission"). ``caches_``: these instead of
    every cache open now (tests)."""
    with _config_lock:
        everyone = list(_open_caches)
    caches = [c for c in (everyone if caches_ is None else caches_) if c.capacity > 0]
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
        "lun_default": "auto" if default_capacity() == AUTO else default_capacity(),
        "readahead_bytes": sum(c.readahead_bytes for c in caches),
        "invalidations": sum(c.invalidations for c in caches),
        "skipped": sum(c.skipped for c in caches),
        "thrashing": sum(1 for c in on if c.sampling()),
        "upcalls": (None if not caches else "on" if upcall == len(caches) else
                    SINGLE_WRITER_ONLY if not upcall else "mixed"),
        "luns_with_upcalls": upcall,
    }


def parse_capacity(value: Any) -> int:
    """A LUN's ``cache`` option: a size (``64MiB``, bytes), ``0``/``off`` to disable,
    ``auto`` (:data:`AUTO`): the LUN's size, within the daemon-wide target."""
    from .size import parse_size

    if isinstance(value, bool):
        return default_capacity() if value else 0
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("off", "no", "false", "none"):
            return 0
        if text == "auto":
            return AUTO
        if text in ("on", "yes", "true"):
            return default_capacity()
        n = parse_size(text)
    if n < 0:
        raise ValueError(f"negative cache size {value!r}")
    return n


def summary_line(s: dict[str, Any]) -> str:
    """:func:`summary` as the one line ``status`` prints (it says when a cache is correct only
    while this gateway is the file's only writer: no upcalls)."""
    if not s["luns"]:
        return "read cache: no gfapi LUN has one"
    ratio = "-" if s["hit_ratio"] is None else f"{100 * s['hit_ratio']:.1f}%"
    thrashing = s.get("thrashing")
    sampled = f", admission sampled on {thrashing} (thrashing)" if thrashing else ""
    return (f"read cache: {s['enabled']} of {s['luns']} LUNs on, hit ratio {ratio}, "
            f"{s['bytes_cached'] / (1 << 20):.1f} MiB cached (at most "
            f"{min(s['capacity'], s['limit_all_luns']) >> 20} MiB){sampled}, "
            f"{_upcalls_words(s)}")


def _upcalls_words(s: dict[str, Any]) -> str:
    if s["upcalls"] == "on":
        return "coherent with other Gluster clients (upcalls)"
    if s["upcalls"] == "mixed":
        return (f"upcalls on {s.get('luns_with_upcalls', '?')} of {s['luns']} LUNs (the others "
                "single-writer only: lun list --json says which)")
    return ("upcalls off: single-writer only (correct while nothing else writes the files; "
            "features.cache-invalidation on the volume turns them on)")


_keeper: threading.Thread | None = None


def _start_keeper_locked() -> None:
    """Start the keeper thread once (under ``_config_lock``)."""
    global _keeper
    if _keeper is None:
        _keeper = threading.Thread(target=_keep_loop, name="cache-keeper", daemon=True)
        _keeper.start()


def _keep_loop() -> None:
    """The keeper: every eighth of the shortest ttl (at least 0.25 s, at most 30 s), each
    cache with upcalls renews the regions it holds (:meth:`CachedStore.keep_alive`)."""
    while True:
        with _config_lock:
            caches = [c for c in _open_caches if c.kept]
        pause = 30.0
        for c in caches:
            ttl = c.ttl
            if ttl is not None:
                pause = min(pause, ttl / 8)
            _keep_one(c)
        time.sleep(max(0.25, pause))


def _keep_one(cache: CachedStore) -> None:
    try:
        cache.keep_alive()
    except Exception:  # a store closing under it: the next pass no longer sees it
        pass


class _Chunk:
    """A cached chunk: its bytes (``chunk`` long, shorter at the end of the LUN) and which of
    its units (bit ``u``: bytes ``[u * unit, (u + 1) * unit)``) hold the store's bytes.
    ``view`` is a view of ``data`` that hits copy from and writes and fills copy into: a
    slice of it copies no bytes, where a slice of the bytearray copies them, and assigning
    a memoryview to a slice of the bytearray copies them twice (CPython first makes a
    bytearray of them). ``data`` never changes length."""

    __slots__ = ("data", "valid", "view")

    def __init__(self, data: bytearray, valid: int) -> None:
        self.data = data
        self.valid = valid
        self.view = memoryview(data)


class Fill:
    """A miss in flight (:meth:`CachedStore.begin_fill`): the caller's ``dst`` (``length``
    bytes at ``offset``) is read as ``view`` at ``lo`` (``view`` is ``dst`` itself when
    aligned, else a scratch buffer covering ``[lo, hi)``); ``start``, ``size`` and ``when``
    are what the insert checks against."""

    __slots__ = ("start", "offset", "lo", "hi", "size", "when", "dst", "view", "admit")

    def __init__(self, start: int, offset: int, lo: int, hi: int, size: int, when: float,
                 dst: memoryview, view: memoryview, admit: bool = True) -> None:
        self.start = start
        self.offset = offset
        self.lo = lo
        self.hi = hi
        self.size = size
        self.when = when
        self.dst = dst
        self.view = view
        #: False: not admitted (a thrashing cache): ``view`` is ``dst`` at ``offset``, and
        #: nothing is inserted when it ends (:meth:`CachedStore.end_fill`).
        self.admit = admit


def _units(a: int, b: int, ushift: int) -> int:
    """The bits of the units that overlap [a, b) (offsets inside a chunk, a < b)."""
    u0 = a >> ushift
    u1 = (b - 1) >> ushift
    return ((1 << (u1 - u0 + 1)) - 1) << u0


def _whole_units(a: int, b: int, n: int, ushift: int) -> int:
    """The bits of the units that [a, b) covers whole in a chunk of ``n`` bytes (the last
    unit of a short chunk ends at ``n``)."""
    u0 = (a + (1 << ushift) - 1) >> ushift
    u1 = (n + (1 << ushift) - 1) >> ushift if b >= n else b >> ushift
    if u1 <= u0:
        return 0
    return ((1 << (u1 - u0)) - 1) << u0


class CachedStore(BackingStore):
    """``inner`` with a read cache of up to ``capacity`` bytes in front (see the module).
    Store-specific attributes that callers read off a LU's store (``store_errors``,
    ``io_threads``, ``created``, ``path``, ...) are the inner's, each forwarded by its own
    property (the end of the class): this class is compiled (mypyc), and a compiled class
    has no ``__getattr__``. A property raises AttributeError where the inner has no such
    attribute, so ``getattr(store, name, default)`` answers as it would for the inner."""

    def __init__(
        self,
        inner: BackingStore,
        capacity: int,
        *,
        chunk: int = DEFAULT_CHUNK,
        unit: int = DEFAULT_UNIT,
        readahead: int = DEFAULT_READAHEAD,
        ledger_: CacheLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
        admit_window: int = ADMIT_WINDOW,
        admit_sample: int = ADMIT_SAMPLE,
    ) -> None:
        if admit_window <= 0 or admit_sample <= 0 or admit_sample & (admit_sample - 1):
            raise ValueError(f"cache admission window {admit_window} or sample {admit_sample}"
                             " is not positive (the sample a power of two)")
        if chunk <= 0 or chunk & (chunk - 1) or chunk > 1 << _REGION_SHIFT:
            raise ValueError(f"cache chunk {chunk} is not a power of two up to 4 MiB")
        if unit <= 0 or unit & (unit - 1):
            raise ValueError(f"cache unit {unit} is not a power of two")
        unit = min(unit, chunk)
        self.inner = inner
        self.blocking = inner.blocking
        self.name = inner.name
        self.read_only = inner.read_only
        # No descriptor is lent: I/O on it (io_uring) would bypass the cache's invalidation.
        self.lends_fd = False
        self.chunk = chunk
        self._shift = chunk.bit_length() - 1
        self.unit = unit
        self._ushift = unit.bit_length() - 1
        #: Whether the cap follows the LUN's size (``cache=auto``, the default).
        self.auto = capacity == AUTO
        self.capacity = max(0, inner.size if self.auto else capacity)
        self._ledger = ledger_ if ledger_ is not None else ledger()
        self._clock = clock
        self._lock = threading.Lock()
        # chunk index -> _Chunk; OrderedDict order is LRU (oldest first). A chunk's bytes
        # change in place under the lock (readers copy out of them only under it).
        self._chunks: OrderedDict[int, _Chunk] = OrderedDict()
        self.bytes = 0  # held now
        self._gen = 0
        self._floor = 0  # fills that started before this number insert nothing
        self._recent: deque[tuple[int, int, int]] = deque()  # (gen, first, last chunk)
        self._size: int | None = None
        #: False once another gateway may write the LUN (see the module): the cache is off.
        self.sole_writer = True
        #: With upcalls: how long after this store last touched a region of the file at the
        #: bricks its cached bytes there stay trusted (None: until invalidated).
        self.ttl: float | None = None
        # region (offset >> _REGION_SHIFT) -> when this store last touched it at the bricks
        self._contact: dict[int, float] = {}
        self.hits = 0
        self.misses = 0
        #: Bytes fetched ahead of a sequential stream on a miss (0: no readahead).
        self.readahead = readahead
        self.readahead_bytes = 0
        self._next = -1
        self._streak = 0
        self._filling = 0
        # The admission rule (see the module): counters of the current window, read and
        # written without the lock (a hint, never data, as the stream counters above).
        #: Chunks evicted to make room (fills and writes).
        self.evictions = 0
        #: Misses not inserted because the cache thrashes (read straight into the caller's).
        self.skipped = 0
        #: Whether the last window judged the cache thrashing (misses are sampled meanwhile).
        self.thrashing = False
        self._refused = 0  # new chunks the ledger refused with nothing of ours left to evict
        #: New chunks the ledger refused (the memory target is reached), whether or not this
        #: cache then evicted its own to make room: :func:`rebalance` reads it.
        self.squeezed = 0
        self._squeezed_seen = 0
        #: Bytes evicted because the memory target shrank or another cache needed room.
        self.shrunk = 0
        self._window = admit_window
        self._sample_mask = admit_sample - 1
        self._rand = 0x1D872B41  # the sampling's LCG state
        self._w_lookups = 0  # hits + misses when the window began
        self._w_hits = 0
        self._w_full = 0  # evictions + refusals then
        self._w_churn = 0  # evictions + refusals + skipped then
        self.invalidations = 0  # drops from outside (upcalls): all of it, or a shard's range
        #: "upcall": other Gluster clients' writes invalidate it; "single-writer": they do not.
        self.coherence = "single-writer"
        watch = getattr(inner, "watch_invalidations", None)
        if watch is not None and self.capacity:
            ttl = watch(self.invalidate_all, self.invalidate_range)
            if ttl is not None:
                self.coherence = "upcall"
                self.ttl = float(ttl)
        #: Whether the keeper thread renews this cache's regions (real time only: a store
        #: on a test clock is renewed by calling :meth:`keep_alive`).
        self.kept = self.ttl is not None and clock is time.monotonic
        self.renewals = 0  # regions the keeper touched at the bricks
        self.expired = 0  # regions dropped: not touched at the bricks for longer than the ttl
        #: Whole-cache drops because a store call failed (the bricks may have been away).
        self.error_drops = 0
        with _config_lock:
            _open_caches.add(self)
            if self.kept:
                _start_keeper_locked()

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

    def invalidate_range(self, offset: int, length: int) -> None:
        """Part of the file may have changed without an upcall to say so (the bricks forgot a
        shard's inode, and with it that this client reads it): forget that range, as a
        discard does (fills in flight over it insert nothing there)."""
        self.invalidations += 1
        self._invalidate(offset, length)

    def store_failed(self) -> None:
        """A call of the store failed: the bricks may have been lost meanwhile (and with them
        the upcalls, or a write the client acknowledged early): forget everything, and every
        fill in flight inserts nothing."""
        self.error_drops += 1
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._gen += 1
            self._floor = self._gen
            self._recent.clear()
            self._drop_all_locked()
            self._size = None
            # an empty cache does not thrash: misses go in again, judged afresh
            self.thrashing = False
            self._new_window(self.hits + self.misses)

    # -- admission (see the module) ---------------------------------------------------------------

    def _admits(self, offset: int, streak: int) -> bool:
        """Whether a miss at ``offset`` (``streak``: of a sequential stream) is inserted: yes,
        unless the cache thrashes, the miss would take a new chunk and is not the one in
        ``ADMIT_SAMPLE`` the sampling picks (then it counts as ``skipped``). Called for each
        miss only: a window is judged at the first miss past its end, so hits cost nothing."""
        self._judge_if_due()
        if not self.thrashing or streak or (offset >> self._shift) in self._chunks:
            return True  # (its chunk is cached: its units go in without evicting anything)
        x = (self._rand * 1103515245 + 12345) & 0x7FFFFFFF  # (an LCG: no call, no object)
        self._rand = x
        if not (x >> 16) & self._sample_mask:
            return True
        self.skipped += 1
        return False

    def _judge_if_due(self) -> None:
        """End the window if it is over: the cache thrashes if it is full (at its cap, or it
        evicted or was refused in the window: the ledger's limit) and its hits were fewer than
        half the misses that took, or would have taken, a new chunk."""
        lookups = self.hits + self.misses
        if lookups - self._w_lookups < self._window:
            return
        full = self.evictions + self._refused
        churn = full + self.skipped
        self.thrashing = ((self.bytes + self.chunk > self.capacity or full > self._w_full)
                          and 2 * (self.hits - self._w_hits) < churn - self._w_churn)
        self._new_window(lookups)

    def sampling(self) -> bool:
        """Whether misses are sampled now (for status): :attr:`thrashing`, with a window that
        ended in hits alone judged here (the miss that would judge it has not come)."""
        self._judge_if_due()
        return self.thrashing and self.enabled

    def _new_window(self, lookups: int) -> None:
        self._w_lookups = lookups
        self._w_hits = self.hits
        self._w_full = full = self.evictions + self._refused
        self._w_churn = full + self.skipped

    def _drop_all_locked(self) -> None:
        freed = self.bytes
        self._chunks.clear()
        self.bytes = 0
        if freed:
            self._ledger.give(freed)

    def shrink_by(self, n: int) -> int:
        """Evict LRU chunks until ``n`` bytes are freed (or none is left): the memory target
        shrank (:func:`shrink_to`) or another cache needs room (:func:`rebalance`). Evicting
        is not an invalidation: fills in flight still insert. In batches of
        :data:`_SHRINK_BATCH` chunks, the lock and the interpreter let go between them (this
        code may be compiled, which never yields the GIL by itself): a shrink of GiBs does not
        hold up this LUN's reads or the event loop for its whole length. Returns the bytes
        freed."""
        freed = 0
        chunks = self._chunks
        while freed < n:
            batch = 0
            with self._lock:
                k = 0
                while freed + batch < n and chunks and k < _SHRINK_BATCH:
                    batch += len(chunks.popitem(last=False)[1].data)
                    k += 1
                if batch:
                    self.bytes -= batch
                    self.shrunk += batch
                    self._ledger.give(batch)
                done = not chunks
            freed += batch
            if done or not batch:
                break
            time.sleep(0)  # (lets the event loop and this LUN's readers in)
        return freed

    def _free_locked(self, i: int) -> None:
        entry = self._chunks.pop(i, None)
        if entry is not None:
            n = len(entry.data)
            self.bytes -= n
            self._ledger.give(n)

    def _touch_locked(self, lo: int, hi: int, when: float) -> None:
        """This store reached the bricks for [lo, hi) at ``when`` (with upcalls on). A region
        it had not touched for longer than the ttl may have missed invalidations: its chunks
        go. (The bricks forget a client that has not touched an inode, a shard with sharding,
        for the volume's cache-invalidation-timeout, twice the ttl.)"""
        ttl = self.ttl
        if ttl is None or hi <= lo:
            return
        contact = self._contact
        per = _REGION_SHIFT - self._shift
        for r in range(lo >> _REGION_SHIFT, ((hi - 1) >> _REGION_SHIFT) + 1):
            prev = contact.get(r)
            if prev is None or when - prev > ttl:
                if prev is not None:
                    self.expired += 1
                    for i in range(r << per, (r + 1) << per):
                        self._free_locked(i)
                contact[r] = when
            elif when > prev:
                contact[r] = when

    def _fresh_locked(self, offset: int, end: int, now: float, ttl: float) -> bool:
        """Whether every region of [offset, end) was touched at the bricks within half the
        ttl: past that a read goes to the bricks (a miss), which renews the region, so a
        region in use stays cached however long and one left alone expires."""
        contact = self._contact
        limit = ttl / 2
        for r in range(offset >> _REGION_SHIFT, ((end - 1) >> _REGION_SHIFT) + 1):
            t = contact.get(r)
            if t is None or now - t > limit:
                return False
        return True

    def _forget_locked(self, offset: int, end: int) -> None:
        """The units of [offset, end) no longer hold the store's bytes (a change that is not
        kept): their bits go, and chunks left with none."""
        shift = self._shift
        ushift = self._ushift
        first = offset >> shift
        last = (end - 1) >> shift
        chunks = self._chunks
        if last - first < len(chunks):
            indexes = [i for i in range(first, last + 1) if i in chunks]
        else:
            indexes = [i for i in chunks if first <= i <= last]
        for i in indexes:
            entry = chunks[i]
            base = i << shift
            a = max(offset, base) - base
            b = min(end - base, len(entry.data))
            if b > a:
                entry.valid &= ~_units(a, b, ushift)
            if b <= a or not entry.valid:
                self._free_locked(i)

    def _invalidate(self, offset: int, length: int, start: int = -1,
                    views: list[memoryview] | None = None, size: int = -1,
                    when: float = 0.0) -> None:
        """A change of [offset, offset+length) returns: remember it for fills in flight, and
        either forget the units it touched or, with ``views`` (the bytes a write that began
        at generation ``start`` has just put there, successfully), keep those bytes, as the
        page cache keeps what is written: the cached chunks it touches are patched in place
        and the units it covers whole are cached. Only if no other change of those chunks
        was numbered after ``start``, since two overlapping writes in flight may land in
        either order."""
        if length <= 0:
            return
        with self._lock:
            self._invalidate_locked(offset, length, start, views, size, when)

    def _invalidate_locked(self, offset: int, length: int, start: int,
                           views: list[memoryview] | None, size: int, when: float) -> None:
        shift = self._shift
        first = offset >> shift
        last = (offset + length - 1) >> shift
        self._gen += 1
        gen = self._gen
        recent = self._recent
        recent.append((gen, first, last))
        if len(recent) > _RING:
            self._floor = recent.popleft()[0]
        if views is not None and not self._keeps_any_locked(offset, length, first, last):
            return  # (a write into chunks not cached that covers none whole: nothing to do)
        if (views is None or start < self._floor or not self.enabled
                or self._raced_locked(start, gen, first, last)):
            # not kept: failed, or a discard, or raced by another change of these chunks
            # (two overlapping writes in flight may land in either order), or cleared
            self._forget_locked(offset, offset + length)
            return
        self._touch_locked(offset, offset + length, when)
        pos = offset
        for v in views:
            n = len(v)
            if n:
                self._patch_locked(pos, v, size)
            pos += n

    def _keeps_any_locked(self, offset: int, length: int, first: int, last: int) -> bool:
        """Whether a write of [offset, +length) touches a cached chunk or covers one whole."""
        shift = self._shift
        if (offset + self.chunk - 1) >> shift < (offset + length) >> shift:
            return True
        chunks = self._chunks
        if last - first < 8:
            for i in range(first, last + 1):
                if i in chunks:
                    return True
            return False
        return True

    def _patch_locked(self, offset: int, data: memoryview, size: int) -> None:
        """Put a successful write's bytes ``data`` at ``offset`` into the cache: cached chunks
        patched in place (the units it covers whole become valid, the others keep their
        state), and the chunks not cached that it covers whole made."""
        shift = self._shift
        ushift = self._ushift
        chunk = self.chunk
        end = offset + len(data)
        chunks = self._chunks
        for i in range(offset >> shift, ((end - 1) >> shift) + 1):
            base = i << shift
            a = max(offset, base)
            b = min(end, base + chunk)
            entry = chunks.get(i)
            if entry is not None:
                buf = entry.data
                n = len(buf)
                if b - base > n:  # runs past a short (last) chunk: the size changed
                    self._free_locked(i)
                else:
                    entry.view[a - base : b - base] = data[a - offset : b - offset]
                    entry.valid |= _whole_units(a - base, b - base, n, ushift)
                    chunks.move_to_end(i)
            else:
                # Only a chunk it writes whole is made (one copy of its bytes): a new chunk for
                # a 4K write would cost a 64K allocation (and an eviction) for each, ~2.5x
                # the cache's CPU per write, for bytes that random writes rarely read back.
                n = min(chunk, size - base)
                if a == base and b - base == n and n > 0:
                    made = self._make_room_locked(n)
                    if made is not None:
                        made_entry = _Chunk(made, _whole_units(0, n, n, ushift))
                        made_entry.view[:] = data[a - offset : b - offset]
                        chunks[i] = made_entry
                        self.bytes += n

    def _raced_locked(self, start: int, gen: int, first: int, last: int) -> bool:
        """Whether a change numbered between ``start`` and ``gen`` touched chunks
        ``first..last`` (the ring is in number order: only its newest entries are read)."""
        for g, lo, hi in reversed(self._recent):
            if g <= start:
                return False
            if g < gen and lo <= last and hi >= first:
                return True
        return False

    def _known_size(self) -> int:
        size = self._size
        if size is None:
            size = self._size = self.inner.size
        return size

    def keep_alive(self) -> int:
        """With upcalls: touch at the bricks each region that holds cached chunks and was
        last touched more than a quarter of the ttl ago (one unit read at its start and one
        at its end: with sharding a region lies in at most two shards), so the bricks go on
        sending this client the region's invalidations and its cached bytes stay trusted
        however long they are only read from memory (a hot set, an idle LUN). Regions not
        touched for longer than the ttl are dropped instead. Returns the regions renewed.
        The keeper thread calls it (:func:`_keep_loop`); it never holds the lock while it
        reads."""
        ttl = self.ttl
        if ttl is None or not self.enabled:
            return 0
        with self._lock:
            due = self._due_regions_locked(self._clock(), ttl)
        if not due:
            return 0
        size = self._size_or_unknown()
        renewed = 0
        for r in due:
            lo = r << _REGION_SHIFT
            hi = min(lo + (1 << _REGION_SHIFT), size)
            if hi <= lo:
                continue
            if not self._renew(r, lo, hi):
                break  # the cache is empty now (store_failed): nothing left to renew
            renewed += 1
        self.renewals += renewed
        return renewed

    def _renew(self, r: int, lo: int, hi: int) -> bool:
        n = min(self.unit, hi - lo)
        when = self._clock()
        try:
            self.inner.read_into(lo, memoryview(bytearray(n)))
            if hi - n > lo:
                self.inner.read_into(hi - n, memoryview(bytearray(n)))
        except Exception:  # the bricks are away (or the store closed): nothing held is trusted
            self.store_failed()
            return False
        with self._lock:
            self._touch_locked(lo, lo + 1, when)
        return True

    def _due_regions_locked(self, now: float, ttl: float) -> list[int]:
        per = _REGION_SHIFT - self._shift
        held = {i >> per for i in self._chunks}
        contact = self._contact
        due: list[int] = []
        for r in sorted(held):
            t = contact.get(r)
            if t is None:
                continue
            if now - t > ttl:  # the bricks may have forgotten this client there
                del contact[r]
                self.expired += 1
                for i in range(r << per, (r + 1) << per):
                    self._free_locked(i)
            elif now - t > ttl / 4:
                due.append(r)
        return due

    def _size_or_unknown(self) -> int:
        """The size, or -1 if the store cannot tell now (then a write caches no new chunk)."""
        size = self._size
        if size is None:
            try:
                size = self._known_size()
            except Exception:
                return -1
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
            "unit": self.unit,
            "hits": self.hits,
            "misses": self.misses,
            "invalidations": self.invalidations,
            "readahead_bytes": self.readahead_bytes,
            "expired": self.expired,
            "renewals": self.renewals,
            "error_drops": self.error_drops,
            "evictions": self.evictions,
            "skipped": self.skipped,
            "thrashing": self.sampling(),
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
        # Sequential-stream detection (racy counters: a hint, never data).
        streak = self._streak + 1 if offset == self._next else 0
        self._streak = streak
        self._next = offset + length
        if self._copy_hits(offset, dst):
            self.hits += 1
            return
        if not self._admits(offset, streak):
            self.misses += 1
            start = self._gen
            when = self._clock() if self.ttl is not None else 0.0
            done = False
            try:
                self.inner.read_into(offset, dst)  # straight into the caller's, not inserted
                done = True
            finally:
                self._end_skipped(done, start, offset, offset + length, when)
            return
        fill = self._plan_fill(offset, dst, streak)
        ok = False
        try:
            self.inner.read_into(fill.lo, fill.view)
            ok = True
        finally:
            self.end_fill(fill, ok)

    def begin_fill(self, offset: int, buf: memoryview) -> Fill | None:
        """A miss read by the caller itself (``server/gfaio.py``: an asynchronous call, not a
        worker): what to read from the inner store, ``fill.view`` at ``fill.lo``; then
        :meth:`end_fill` once that read ended, however it ended (also late, after the
        command gave up on it). None: the cache is off, read ``buf`` at ``offset`` as it is.
        The caller found no hit (``read_hit``) just before, on the same thread."""
        if not self.enabled:
            return None
        dst = byte_view(buf)
        length = len(dst)
        check_range(offset, length, self.name)
        streak = self._streak + 1 if offset == self._next else 0
        self._streak = streak
        self._next = offset + length
        if not self._admits(offset, streak):
            self.misses += 1
            when = self._clock() if self.ttl is not None else 0.0
            return Fill(self._gen, offset, offset, offset + length, -1, when, dst, dst, False)
        return self._plan_fill(offset, dst, streak)

    def _plan_fill(self, offset: int, dst: memoryview, streak: int) -> Fill:
        """Count a miss and decide what it reads: the units it needs, or for a sequential
        stream whole chunks and maybe the next window (see the module)."""
        end = offset + len(dst)
        self.misses += 1
        with self._lock:
            start = self._gen
            alone = not self._filling  # no other miss of this store in flight
            self._filling += 1
        when = self._clock() if self.ttl is not None else 0.0
        try:
            size = self._known_size()
        except BaseException:
            with self._lock:
                self._filling -= 1
            self.store_failed()
            raise
        if streak:
            # A sequential stream: whole chunks, and, read one call at a time, the next
            # window with this call (fewer round trips); never with several reads in
            # flight, which fetch ahead by themselves and would read the same bytes twice.
            lo = offset >> self._shift << self._shift
            hi = min(((end - 1) >> self._shift) + 1 << self._shift, max(size, end))
            if alone and streak >= 2 and self.readahead and hi < size:
                ahead = min(hi + self.readahead, size)
                self.readahead_bytes += ahead - hi
                hi = ahead
        else:
            # A random read: only the units it needs (a 64 KiB read at the bricks took
            # 15-70% longer than a 4 KiB one, BENCHMARKS.md, issue 19).
            lo = offset >> self._ushift << self._ushift
            hi = min(((end - 1) >> self._ushift) + 1 << self._ushift, max(size, end))
        if lo == offset and hi == end:
            view = dst  # aligned already: straight into the caller's
        else:
            view = memoryview(bytearray(hi - lo))
        return Fill(start, offset, lo, hi, size, when, dst, view)

    def cancel_fill(self, fill: Fill) -> None:
        """A fill from :meth:`begin_fill` that was never started (the caller read elsewhere)."""
        if not fill.admit:
            return
        with self._lock:
            self._filling -= 1

    def end_fill(self, fill: Fill, ok: bool) -> None:
        """The inner read of ``fill`` ended: on success the caller's bytes are copied out
        (unless the read was aligned and went there already) and the fill is inserted (if
        no change raced it); on failure the cache is emptied, as any failed store call does."""
        if not fill.admit:
            self._end_skipped(ok, fill.start, fill.lo, fill.hi, fill.when)
            return
        if not ok:
            self.store_failed()
        with self._lock:
            self._filling -= 1
        if not ok:
            return
        data = fill.view
        dst = fill.dst
        if data is not dst:
            lo = fill.lo
            dst[:] = data[fill.offset - lo : fill.offset - lo + len(dst)]
        if fill.hi > fill.size:  # read past the size we knew: the file grew elsewhere
            return
        with self._lock:
            self._insert_locked(fill.start, fill.lo, data, fill.size, fill.when)

    def _end_skipped(self, ok: bool, start: int, lo: int, hi: int, when: float) -> None:
        """A miss not admitted read [lo, hi) straight into the caller's: nothing is inserted.
        A failure empties the cache (as every failed call does); with upcalls, the region's
        touch at the bricks is noted as an insert would (not after a clear: see there)."""
        if not ok:
            self.store_failed()
            return
        if self.ttl is None:
            return
        with self._lock:
            if start >= self._floor and self.enabled:
                self._touch_locked(lo, hi, when)

    def read_hit(self, offset: int, buf: memoryview) -> bool:
        """:meth:`read_into` if every unit is cached and fresh, else False with nothing done:
        it never calls the store, so the command runner calls it on the event loop first and
        sends only misses to the store's workers (a hit then costs no thread hand-off)."""
        if not self.enabled:
            return False
        dst = byte_view(buf)
        length = len(dst)
        if length == 0 or offset < 0:
            return False
        if not self._copy_hits(offset, dst):
            return False
        self.hits += 1
        # (the sequential-stream hint of read_into, for the misses that follow)
        self._streak = self._streak + 1 if offset == self._next else 0
        self._next = offset + length
        return True

    def _copy_hits(self, offset: int, dst: memoryview) -> bool:
        """Copy [offset, +len(dst)) from cached units if every one is there and fresh."""
        ttl = self.ttl
        now = self._clock() if ttl is not None else 0.0
        lock = self._lock
        lock.acquire()
        try:
            return self._copy_hits_locked(offset, dst, ttl, now)
        finally:
            lock.release()

    def _copy_hits_locked(self, offset: int, dst: memoryview, ttl: float | None,
                          now: float) -> bool:
        length = len(dst)
        end = offset + length
        if ttl is not None:
            r = offset >> _REGION_SHIFT
            if r == (end - 1) >> _REGION_SHIFT:  # one region (nearly every read)
                t = self._contact.get(r)
                if t is None or now - t > ttl / 2:
                    return False
            elif not self._fresh_locked(offset, end, now, ttl):
                return False
        shift = self._shift
        ushift = self._ushift
        first = offset >> shift
        last = (end - 1) >> shift
        chunks = self._chunks
        if first == last:  # inside one chunk (nearly every read): one lookup
            entry = chunks.get(first)
            if entry is None:
                return False
            a = offset - (first << shift)
            b = a + length
            if b > len(entry.data):
                return False  # a short last chunk (the end then) that does not cover it
            need = _units(a, b, ushift)
            if entry.valid & need != need:
                return False
            dst[:] = entry.view[a:b]
            chunks.move_to_end(first)
            return True
        for i in range(first, last + 1):
            entry = chunks.get(i)
            if entry is None:
                return False
            base = i << shift
            a = max(offset, base) - base
            b = min(end, base + self.chunk) - base
            if b > len(entry.data):
                return False  # a short last chunk (the end then) that does not cover it
            need = _units(a, b, ushift)
            if entry.valid & need != need:
                return False
        pos = 0
        for i in range(first, last + 1):
            entry = chunks[i]
            base = i << shift
            a = max(offset, base) - base
            b = min(end, base + self.chunk) - base
            dst[pos : pos + b - a] = entry.view[a:b]
            pos += b - a
            chunks.move_to_end(i)
        return True

    def _insert_locked(self, start: int, lo: int, data: memoryview, size: int,
                       when: float) -> None:
        """A fill that began at generation ``start`` read ``data`` at ``lo``: cache it, but
        not in the chunks a change numbered after ``start`` touched (the bricks may have
        answered before it), and nothing if the ring forgot such changes."""
        if start < self._floor or not self.enabled:
            return
        hi = lo + len(data)
        shift = self._shift
        first = lo >> shift
        last = (hi - 1) >> shift
        stale: list[tuple[int, int]] = []
        for gen, a, b in reversed(self._recent):
            if gen <= start:
                break
            if a <= last and b >= first:
                stale.append((a, b))
        self._touch_locked(lo, hi, when)
        ushift = self._ushift
        chunk = self.chunk
        chunks = self._chunks
        for i in range(first, last + 1):
            if stale and any(a <= i <= b for a, b in stale):
                continue
            base = i << shift
            a = max(lo, base)
            b = min(hi, base + chunk)
            entry = chunks.get(i)
            if entry is None:
                n = min(chunk, size - base)
                mask = _whole_units(a - base, b - base, n, ushift) if b - base <= n else 0
                new = self._make_room_locked(n) if mask else None
                if new is not None:
                    new_entry = _Chunk(new, mask)
                    new_entry.view[a - base : b - base] = data[a - lo : b - lo]
                    chunks[i] = new_entry
                    self.bytes += n
            elif b - base > len(entry.data):
                self._free_locked(i)  # a short (last) chunk: the size changed
            else:
                n = len(entry.data)
                mask = _whole_units(a - base, b - base, n, ushift)
                # Only the units not cached yet: the cached ones are as new (no change of this
                # chunk since ``start``), and a write may have patched part of a unit.
                if mask & ~entry.valid:
                    entry.view[a - base : b - base] = data[a - lo : b - lo]
                    entry.valid |= mask
                chunks.move_to_end(i)

    def _make_room_locked(self, n: int) -> bytearray | None:
        """Evict own LRU chunks until ``n`` more bytes fit the cap and the ledger; take them
        and return a buffer of ``n`` bytes for the new chunk (an evicted chunk's, when one
        is that long: no allocation, no fresh pages to fault in), or None if they do not fit.
        (Its bytes are old: only the units the caller marks valid count.)"""
        if n > self.capacity or n <= 0:
            return None
        chunks = self._chunks
        spare: bytearray | None = None
        while self.bytes + n > self.capacity and chunks:
            old = chunks.popitem(last=False)[1].data
            self.bytes -= len(old)
            self._ledger.give(len(old))
            self.evictions += 1
            if len(old) == n:
                spare = old
        squeezed = False
        while not self._ledger.take(n):
            if self._ledger.yielding():  # commands come first: keep what is held, take nothing
                self._ledger.yielded += 1
                return None
            if not squeezed:
                squeezed = True
                self.squeezed += 1
            if not chunks:
                self._refused += 1
                return None
            old = chunks.popitem(last=False)[1].data
            self.bytes -= len(old)
            self._ledger.give(len(old))
            self.evictions += 1
            if len(old) == n:
                spare = old
        return spare if spare is not None else bytearray(n)

    # -- writes: the store first, then the drop, before returning --------------------------------

    def write(self, offset: int, data: Buffer) -> None:
        view = byte_view(data)
        start, when = self.begin_write()
        done = False
        try:
            self.inner.write(offset, data)
            done = True
        finally:
            self.end_write(offset, view, start, when, done)

    def begin_write(self) -> tuple[int, float]:
        """A write the caller starts on the inner store itself (``server/gfaio.py``): what
        :meth:`end_write` needs, taken before the write begins."""
        return self._gen, (self._clock() if self.ttl is not None else 0.0)

    def end_write(self, offset: int, view: memoryview, start: int, when: float,
                  ok: bool) -> None:
        """A write of ``view`` at ``offset`` on the inner store ended (before its command can
        answer GOOD): drop or patch what it touched, and empty the cache if it failed."""
        keep = ok and self.enabled
        # (flat unsigned bytes: what the chunks' views take in a slice assignment)
        self._invalidate(offset, len(view), start, [byte_view(view)] if keep else None,
                         self._size_or_unknown() if keep else -1, when)
        if not ok:
            self.store_failed()

    def writev(self, offset: int, buffers: list[Buffer]) -> None:
        views = [byte_view(b) for b in buffers]
        total = sum(len(v) for v in views)
        start = self._gen
        when = self._clock() if self.ttl is not None else 0.0
        done = False
        try:
            writev = getattr(self.inner, "writev", None)
            if writev is not None:
                writev(offset, buffers)
            else:
                self.inner.write(offset, b"".join(views))
            done = True
        finally:
            keep = done and self.enabled
            self._invalidate(offset, total, start, views if keep else None,
                             self._size_or_unknown() if keep else -1, when)
            if not done:
                self.store_failed()

    def discard(self, offset: int, length: int) -> None:
        try:
            self.inner.discard(offset, length)
        except BaseException:
            self.store_failed()
            raise
        finally:
            self._invalidate(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        try:
            self.inner.write_zeroes(offset, length)
        except BaseException:
            self.store_failed()
            raise
        finally:
            self._invalidate(offset, length)

    def resize(self, new_size: int, **kw: Any) -> None:
        try:
            self.inner.resize(new_size, **kw)
        finally:
            self.clear()
            if self.auto and self.capacity:
                try:
                    self.capacity = max(1, self.inner.size)
                except OSError:
                    pass  # (the resize's own error, if any, is the one to raise)


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
        try:
            self.inner.flush()
        except BaseException:
            # (a write acknowledged by the client's write-behind, its bytes kept here, may
            # be what failed: the bricks may hold older bytes than the cache)
            self.store_failed()
            raise

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.inner.extents(offset, length)

    def close(self, timeout: float | None = None) -> None:
        with _config_lock:
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

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r}, capacity={self.capacity})"

    # -- the inner store's own attributes, one property each --------------------------------
    # Who reads each off a LU's store (tests/backstore/test_cache.py checks the list,
    # FORWARDED): each raises AttributeError where the inner has none, as the inner would.

    @property
    def store_errors(self) -> Callable[[], dict[str, int]]:
        """The gfapi store's failed calls by errno (server/metrics.py, /metrics)."""
        return self.inner.store_errors  # type: ignore[attr-defined,no-any-return]

    @property
    def io_threads(self) -> int | None:
        """Worker threads the store wants (server/daemon.py ``pool_for``)."""
        return self.inner.io_threads  # type: ignore[attr-defined,no-any-return]

    @property
    def created(self) -> bool:
        """Whether opening the store created its file (backstore/provision.py)."""
        return self.inner.created  # type: ignore[attr-defined,no-any-return]

    @property
    def path(self) -> str:
        """The file's path on its volume (backstore/provision.py ``remove_backing``)."""
        return self.inner.path  # type: ignore[attr-defined,no-any-return]

    @property
    def _vol(self) -> Any:
        """The gfapi store's volume (backstore/provision.py ``remove_backing``)."""
        return self.inner._vol  # type: ignore[attr-defined]

    @property
    def allocate(self) -> Callable[[int, int], None]:
        """Preallocation (backstore/provision.py; it changes no bytes: nothing to drop)."""
        return self.inner.allocate  # type: ignore[attr-defined,no-any-return]

    @property
    def o_direct(self) -> bool:
        """Whether the bricks open the file O_DIRECT (a group LU's; the gfapi tests)."""
        return self.inner.o_direct  # type: ignore[attr-defined,no-any-return]

    @property
    def address(self) -> Any:
        """The gfapi store's parsed gluster:// address."""
        return self.inner.address  # type: ignore[attr-defined]

    @property
    def write_behind(self) -> bool:
        """Whether the runner may acknowledge this store's plain writes early (WCE=1, a lone
        LU: ``server.runner.Runner._write_behind``): the gfapi store's answer. The cache's
        own write path patches cached chunks in that background write, and the runner holds
        every read overlapping it until it finished."""
        return self.inner.write_behind  # type: ignore[attr-defined,no-any-return]

    @property
    def write_piece(self) -> int:
        """The most one libgfapi write call of the gfapi store may carry (``server/gfaio.py``
        cuts longer writes at it; the engine is handed the gfapi store itself)."""
        return self.inner.write_piece  # type: ignore[attr-defined,no-any-return]

    @property
    def _client(self) -> Any:
        """The shared gfapi client of the volume (tests: two stores share one)."""
        return self.inner._client  # type: ignore[attr-defined]


#: What :class:`CachedStore` forwards to its inner store (the tests check each, and that no
#: other attribute is forwarded by accident).
FORWARDED = ("store_errors", "io_threads", "created", "path", "_vol", "allocate",
             "o_direct", "address", "_client", "write_behind", "write_piece")
