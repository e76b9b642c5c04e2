"""A backing store on a GlusterFS file through libgfapi (no FUSE in the data path).

One Gluster client (``glfs_t``: a connected graph with its own threads and sockets) is shared
by every store on the same (volume, volfile servers), counted by reference in a module-level
registry. When the last store closes, the client stays connected for reuse (see
:data:`IDLE_LINGER_SECONDS`: finishing clients in a running process proved unsafe with
GlusterFS 10.3); glfs_fini, when it happens, runs in the background (~10 s here), and
glfs_new/init/fini are serialised process-wide. Calls block and release the GIL, so the
server runs them on worker threads.

Durability: by default writes go through the volume's write-behind, which acknowledges
them before the bricks have them (with 2 of 3 bricks killed a write still succeeded and
only the next fdatasync failed with ENOTCONN). Treat the store as having a volatile write
cache: SYNCHRONIZE CACHE and FUA must call :meth:`flush`, and its error must reach the
initiator. ``o_direct=True`` (honoured because the gluster-block profile sets
strict-o-direct) makes each write synchronous on the bricks, failing at once, at a cost:
64 KiB writes at QD1 ran at ~29 MiB/s against ~152 MiB/s through write-behind. With it,
offsets and lengths must be multiples of 512 (the bricks open with O_DIRECT).

Capabilities are what libgfapi really does on this volume: discard (``glfs_discard``, reads
back zeroes), write-zeroes (``glfs_zerofill``), and extents only if ``glfs_lseek`` answers
SEEK_DATA (probed at open, read-only; the shard translator of the gluster-block profile
answers ENOTSUP, so sharded volumes report no extents rather than a made-up map).

``close()`` waits for calls still running on worker threads before ``glfs_close`` (which
frees the glfs_fd a late call would still use), as ``FileStore`` does; calls that start
after it fail with EBADF, and a call still running after :data:`CLOSE_TIMEOUT` gets the
glfs_fd (and the client reference) leaked, with an ERROR line.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from .._util import byte_view, check_range, merge_extents
from ..base import BackingStore, BackingStoreError, Buffer, Capabilities, Extent
from . import _binding as gf
from .address import GlusterAddress, VolfileServer, parse_gluster_url

_NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)
# Large requests are split so one call never exceeds what a brick RPC is happy with.
_MAX_IO = 32 << 20
#: The largest write a buffered store (not ``o_direct``) hands glfs_pwrite(v) in one call,
#: longer ones going in pieces of this size, each its own brick WRITE; 0: whole writes (up
#: to ``_MAX_IO``). ``serve --gfapi-write-piece`` sets it; the default is 256 KiB (a FUSE
#: mount sends 128 KiB, the kernel's max_write). Why it matters after the write: the bricks write
#: into their page cache, and Linux (ext4, kernel 6.18 here) caches a file in folios as
#: large as the writes that filled it. A later 4 KiB write into a 1 MiB folio walks all 256
#: of its block buffers (``ext4_block_write_begin``: 17-21% of the bricks' CPU against 3-4%),
#: so 4 KiB random writes over a LUN filled with 1 MiB writes cost the bricks ~10-20% more
#: CPU than over one filled through FUSE, whoever writes them. Pieces cost sequential writes
#: instead: 1 MiB writes at QD16 with 128 KiB pieces make 8 brick WRITEs each, ~2x the
#: bricks' CPU per MiB and 0.55-0.8x the rate (docs/notes/write-fops.md); the event loop's
#: asynchronous calls (server/gfaio.py) send a write's pieces together, one round trip for
#: all (:attr:`GfapiStore.write_piece`), the workers one by one. An O_DIRECT store
#: bypasses the bricks' page cache (strict-o-direct) and always keeps whole writes.
#: Measured against tgt on the FUSE file (bench/run, pinned, one run each; BENCHMARKS.md
#: "Stop 25"): 4K random writes QD32 0.80 whole, 1.06 with 256 KiB, 1.10 with 128 KiB; QD1
#: 0.72 / 0.80 / 0.92; 1 MiB sequential writes 1.57 / 1.46 / 1.20 (still ahead). 128 KiB
#: was the default until stop 33, when every other write row had moved well ahead of tgt but
#: 256 KiB sequential writes stood at 0.96-0.98x (each in two pieces, twice the bricks'
#: WRITEs); the same run with 256 KiB pieces (BENCHMARKS.md "Stop 33", pinned): 256 KiB
#: sequential writes 1.30x (0.96x), 1 MiB 1.40x (1.01x), 4K random writes QD32 after them
#: 1.57x (1.55x) with the bricks at 81.9 s/GiB (80.3), QD1 0.98x (0.97x).
DEFAULT_WRITE_PIECE = 256 << 10
BUFFERED_WRITE_PIECE = DEFAULT_WRITE_PIECE


def set_buffered_write_piece(size: int) -> None:
    """:data:`BUFFERED_WRITE_PIECE` for the writes from now on (0: whole writes). ValueError
    unless 0 or a multiple of 4 KiB from 4 KiB to 32 MiB."""
    if size and (size % 4096 or not 4096 <= size <= _MAX_IO):
        raise ValueError(f"{size} is not 0 or a multiple of 4KiB from 4KiB to 32MiB")
    global BUFFERED_WRITE_PIECE
    BUFFERED_WRITE_PIECE = size


#: How long close() waits for calls still running on the store before leaking its glfs_fd.
CLOSE_TIMEOUT = 30.0

log = logging.getLogger(__name__)

ClientKey = tuple[str, tuple[VolfileServer, ...]]


#: Seconds an unused client stays connected before glfs_fini; None (the default): for the
#: life of the process, reused by the next open of the same volume. In GlusterFS 10.3 a
#: glfs_new after another client's glfs_fini in the same process segfaulted (twice in one
#: test session) and once hung on libglusterfs's mem-pool lock, while runs that never
#: finished a client were stable; a daemon serves a handful of volumes, so one idle client
#: per volume is the cheaper risk. :func:`release_idle` finishes idle clients on demand.
IDLE_LINGER_SECONDS: float | None = None

#: Translator options every new client gets before glfs_init, ``(xlator glob, key, value)``,
#: on top of the volume's own (they change this process's graph only, not the volume).
#:
#: The default, where this process may run on two CPUs or more: one client-side io-thread
#: (``*-io-threads:thread-count=1``) where the volume's profile has them (gluster-block:
#: ``performance.client-io-threads on``, 32 threads). They are there for FUSE, whose one
#: reader thread would otherwise wind every fop down the graph itself. Here the event loop is
#: the only caller of the asynchronous calls, and with 32 threads each of its calls woke a
#: sleeping one: a third of the loop's time went to ``glfs_pread_async``, most of it in
#: ``pthread_cond_signal`` and the preemption that follows (``perf``, cold 4 KiB reads at
#: QD32). One thread is usually awake with work queued, so most calls only append to its
#: queue, and its wind (write-behind, shard, AFR, the RPC) still overlaps the loop's work on
#: another CPU. Measured on 2 CPUs, unpinned (issue 19, BENCHMARKS.md "Stop 28"): cold 4 KiB
#: reads at QD32 1.20-1.23x with 17% less daemon CPU a read, 0.85-0.94x of fio's gfapi engine
#: on the same file (0.69-0.76x before); 2 threads 0.80-0.89x of one; QD1 reads unchanged; writes
#: 0.93-1.20x. On one CPU there is nothing to overlap, and QD1 4 KiB writes cost 1.21x the
#: CPU (gfapi's event threads used twice theirs a write), so a daemon confined to one CPU
#: keeps the volume's count. The translators below io-threads wind and return: an io-thread
#: never waits for a reply, so one cannot hold up another fop.
#: ``serve --gfapi-xlator-option '*-io-threads:thread-count=32'`` gives the volume's count
#: back; a volume without client io-threads ignores the option.
#:
#: Tried, and options rather than defaults: a larger write-behind window
#: (``*-write-behind:cache-size=4MB``; the volume's ``performance.write-behind-window-size``
#: defaults to 1MB) keeps more writes in flight, which cost the bricks ~9% less CPU each: 4 KiB
#: random writes at QD32 1.13-1.16x, but cold 4 KiB random reads at QD32 0.96-0.98x (2MB:
#: writes 1.09x, reads 0.93x), so it is an option for write-heavy LUNs (BENCHMARKS.md "Stop
#: 24: gfapi write CPU"). Durability would not change: FUA and SYNCHRONIZE CACHE call
#: glfs_fsync/fdatasync, which flush the window. io-threads pass-through
#: (``*-io-threads:pass-through=true``: no io-threads at all, the loop winds down to the
#: RPC itself) measured 4 KiB reads 1.14x at QD32 with 9% less daemon CPU, but 4 KiB writes
#: 0.83x at QD32 (issue 19).
#: Options a volume's translators do not know are ignored by gfapi; a value one refuses
#: fails glfs_init with EINVAL.


DEFAULT_CLIENT_XLATOR_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("*-io-threads", "thread-count", "1"),
)


def default_client_xlator_options() -> tuple[tuple[str, str, str], ...]:
    """The defaults above for the CPUs this process may run on now: none on one CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return DEFAULT_CLIENT_XLATOR_OPTIONS if cpus > 1 else ()


CLIENT_XLATOR_OPTIONS: list[tuple[str, str, str]] = list(default_client_xlator_options())


def client_xlator_option_texts() -> list[str]:
    """The options new clients get, as ``serve --gfapi-xlator-option`` spells them."""
    return [f"{x}:{k}={v}" for x, k, v in CLIENT_XLATOR_OPTIONS]


def set_client_xlator_options(options: list[tuple[str, str, str]]) -> None:
    """The defaults with ``options`` on top (one for the same xlator and key replaces the
    default's), for the clients made from now on (``serve --gfapi-xlator-option``)."""
    given = {(x, k) for x, k, _ in options}
    CLIENT_XLATOR_OPTIONS[:] = [o for o in default_client_xlator_options()
                                if (o[0], o[1]) not in given] + list(options)


@dataclass(eq=False)
class _Client:
    key: ClientKey
    volume: gf.Volume | None = None
    refs: int = 0
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    idle_generation: int = 0
    # Upcalls (see GfapiStore.watch_invalidations): probed once per client.
    coherence_probed: bool = False
    coherence_ttl: float | None = None
    watchers: dict[bytes, list[Callable[[], None]]] = field(default_factory=dict)
    watch_lock: threading.Lock = field(default_factory=threading.Lock)
    # Per watched GFID: a watcher's callback for a part of the file (offset, length).
    ranges: dict[bytes, dict[Callable[[], None], Callable[[int, int], None]]] = field(
        default_factory=dict)
    shard_size: int | None = None  # features.shard-block-size, if sharded (probed with upcalls)
    # Upcalls of an inode forgotten, or without a stat, for a GFID nobody watches, to be
    # looked up (see _on_upcall).
    unresolved: deque[bytes] = field(default_factory=deque)
    resolver: threading.Thread | None = None
    #: Such upcalls found to name no inode (the bricks said ENOENT/ESTALE), or no file watched.
    ignored_upcalls: int = 0


#: How to learn whether a volume sends upcalls: ``probe(address) -> timeout seconds or None``
#: (None: ``features.cache-invalidation`` is off or cannot be read). Replaceable for tests.
def probe_cache_invalidation(addr: GlusterAddress) -> float | None:
    """Ask glusterd (the ``gluster`` CLI: the local glusterd, as on a Gluster server node, else
    the first volfile server's) whether the volume has ``features.cache-invalidation on``; if
    so its ``features.cache-invalidation-timeout`` (the bricks notify only clients that
    touched the file within it). libgfapi has no call that tells: registering for upcalls
    succeeds on a volume that never sends any. None whenever it cannot be told."""
    if not _volume_flag(addr, "features.cache-invalidation"):
        return None
    try:
        return float(_volume_option(addr, "features.cache-invalidation-timeout") or 60)
    except ValueError:
        return 60.0


#: Upcalls without a stat waiting to be looked up, per client, at most; past it, every
#: watcher is dropped at once (as before the lookup existed) and the backlog forgotten.
_UNRESOLVED_MAX = 256


def _volume_option(addr: GlusterAddress, key: str) -> str | None:
    """A volume option as glusterd tells it (the local one, else the first volfile server's),
    or None whenever it cannot be told."""
    host = addr.servers[0].host if addr.servers else None
    wheres: list[list[str]] = [[]]
    if host and host not in ("localhost", "127.0.0.1", "::1"):
        wheres.append([f"--remote-host={host}"])  # (glusterd may refuse remote `volume get`)
    for where in wheres:
        try:
            out = subprocess.run(
                ["gluster", "--mode=script", *where, "volume", "get", addr.volume, key],
                capture_output=True, text=True, timeout=15, check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode != 0:
            continue
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == key:
                return fields[1]
    return None


def _volume_flag(addr: GlusterAddress, key: str) -> bool:
    """Whether a boolean volume option is on (False when it cannot be told)."""
    return (_volume_option(addr, key) or "").lower() in ("on", "enable", "true", "yes")


def probe_shard_size(addr: GlusterAddress) -> int | None:
    """The volume's shard size in bytes if ``features.shard`` is on (Gluster's ``64MB`` is
    64 MiB), else None (also when it cannot be told)."""
    if not _volume_flag(addr, "features.shard"):
        return None
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", (_volume_option(addr, "features.shard-block-size")
                                            or "").upper())
    if not m:
        return None
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2) or " "))


#: ``UP_FORGET`` of the upcall flags: the bricks forgot the inode, and with it that this
#: client reads it (no upcall will say when another client changes it).
UP_FORGET = 0x100
_SHARD_PATH = re.compile(r"/\.shard/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                         r"[0-9a-f]{12})\.(\d+)")


def _on_upcall(client: _Client, gfid: bytes, mode: int, flags: int = 0) -> None:
    """An inode invalidation from the bricks (on a gfapi thread). A GFID we watch: its
    watchers. Another regular file: every watcher of this client, since it may be a shard
    (``/.shard/GFID.N``) of a watched file. Directories: nobody.

    An upcall that says the bricks forgot an inode (``UP_FORGET``, no stat), or any upcall
    without a stat, for a GFID nobody watches is looked up first, on a thread of the client's
    own (a gfapi call may not run on the thread that delivers upcalls). The bricks forget the
    inodes of shards a sequential fill has just created now and then (concurrent writes that
    create one shard: seen once in two to six 1 GiB fills at QD16): dropping every cache of the
    client for each made a LUN's cache lose what the fill had just put in. The lookup tells
    (:func:`_resolve_loop`): a GFID the bricks do not know, or a file that is not a shard of a
    watched file, drops nothing; a shard of a watched file drops that shard's range of its
    caches (the bricks no longer tell this client when another changes it; the next read
    there goes to them and registers it again); a failed lookup drops every watcher."""
    with client.watch_lock:
        hit = client.watchers.get(gfid)
        if hit is not None:
            todo = list(hit)
        elif mode == 0 or flags & UP_FORGET:
            if not client.watchers:
                return
            if len(client.unresolved) < _UNRESOLVED_MAX:
                client.unresolved.append(gfid)
                if client.resolver is None:
                    client.resolver = threading.Thread(target=_resolve_loop, args=(client,),
                                                       name="gfapi-upcall-lookup", daemon=True)
                    client.resolver.start()
                return
            client.unresolved.clear()
            todo = [cb for cbs in client.watchers.values() for cb in cbs]
        elif stat.S_ISREG(mode):
            todo = [cb for cbs in client.watchers.values() for cb in cbs]
        else:
            return
    for cb in todo:
        cb()


def _resolve_loop(client: _Client) -> None:
    """The client's lookups of upcalls :func:`_on_upcall` could not place: one at a time, in
    order; the thread ends when none is left (the next such upcall starts another)."""
    while True:
        with client.watch_lock:
            if not client.unresolved:
                client.resolver = None
                return
            gfid = client.unresolved.popleft()
            vol = client.volume if client.watchers else None  # (none left: nothing to drop)
        if vol is None:
            continue  # (no lookup on a client with no cache: it may be finishing)
        for call in _placed(client, vol, gfid):
            call()


def _placed(client: _Client, vol: gf.Volume | None, gfid: bytes) -> list[Callable[[], None]]:
    """What an upcall of ``gfid`` (an inode forgotten, or no stat) drops, once looked up."""
    path: str | None = ""
    if vol is not None:
        try:
            path = vol.gfid_path(gfid)
        except Exception:  # noqa: BLE001 - cannot tell: every watcher, as before the lookup
            path = ""
    with client.watch_lock:
        if path is None:  # the bricks know no such inode: it named nothing
            client.ignored_upcalls += 1
            return []
        m = _SHARD_PATH.search(path) if path else None
        if path and m is None:
            hit = client.watchers.get(gfid)  # (watched since it was queued)
            if hit is None:
                client.ignored_upcalls += 1  # a file, not a shard, of no watched file
                return []
            return list(hit)
        if m is None:
            return [cb for cbs in client.watchers.values() for cb in cbs]
        base = uuid.UUID(m.group(1)).bytes
        cbs = client.watchers.get(base)
        if not cbs:
            client.ignored_upcalls += 1  # a shard of a file nobody here watches
            return []
        size = client.shard_size
        ranges = client.ranges.get(base, {})
        out: list[Callable[[], None]] = []
        for cb in cbs:
            on_range = ranges.get(cb)
            if on_range is not None and size:
                out.append(partial(on_range, int(m.group(2)) * size, size))
            else:
                out.append(cb)
        return out


def _split(views: list[memoryview], piece: int) -> list[list[memoryview]]:
    """``views`` (back to back) cut into runs of at most ``piece`` bytes, without copying."""
    parts: list[list[memoryview]] = []
    cur: list[memoryview] = []
    room = piece
    for v in views:
        while len(v):
            take = v[:room]
            cur.append(take)
            v = v[len(take):]
            room -= len(take)
            if room == 0:
                parts.append(cur)
                cur, room = [], piece
    if cur:
        parts.append(cur)
    return parts


_registry: dict[ClientKey, _Client] = {}
_registry_lock = threading.Lock()


def _acquire(addr: GlusterAddress, log_file: str | None, log_level: int | None) -> _Client:
    key: ClientKey = (addr.volume, addr.servers)
    with _registry_lock:
        client = _registry.get(key)
        creator = client is None
        if client is None:
            client = _Client(key)
            _registry[key] = client
        client.refs += 1
    if creator:
        # Connect outside the registry lock: glfs_init can take seconds when servers are down.
        try:
            vol = gf.Volume(addr.volume)
            try:
                for s in addr.servers:
                    vol.set_volfile_server(s.host, s.port, s.transport)
                for xlator, option, value in CLIENT_XLATOR_OPTIONS:
                    vol.set_xlator_option(xlator, option, value)
                if log_file is not None or log_level is not None:
                    level = gf.LOG_WARNING if log_level is None else log_level
                    vol.set_logging(log_file, level)
                try:
                    vol.init()
                except gf.GfapiError as e:
                    raise _init_error(addr, e) from e
            except BaseException:
                vol.fini()
                raise
            client.volume = vol
        except BaseException as e:
            client.error = e
            with _registry_lock:
                if _registry.get(key) is client:
                    del _registry[key]
            raise
        finally:
            client.ready.set()
    else:
        client.ready.wait()
        if client.error is not None:
            with _registry_lock:
                client.refs -= 1
            err = client.error
            if isinstance(err, BackingStoreError):
                raise BackingStoreError(err.errno or errno.EIO, str(err.strerror), err.path)
            raise err
    return client


def _init_error(addr: GlusterAddress, err: gf.GfapiError) -> BackingStoreError:
    """What a failed glfs_init means. libgfapi sets ENOENT both when no volfile server
    answers and when the volume does not exist ("[Errno 2] ... novol" said neither), so try
    the servers: if none accepts a connection, say they cannot be reached."""
    hosts = ",".join(str(s) for s in addr.servers)
    tcp = [s for s in addr.servers if s.transport == "tcp"]
    problems = [_unreachable(s) for s in tcp]
    if tcp and len(tcp) == len(addr.servers) and all(problems):
        first = problems[0]
        assert first is not None
        return BackingStoreError(
            first[0],
            f"cannot reach the volume server{'s' if len(tcp) > 1 else ''} {hosts} of volume"
            f" {addr.volume} ({first[1]}): is glusterd running there?",
            addr.url,
        )
    if err.errno == errno.EINVAL and CLIENT_XLATOR_OPTIONS:
        # (an option value a translator rejects fails glfs_init with EINVAL; unknown keys
        # are ignored)
        given = ", ".join(client_xlator_option_texts())
        return BackingStoreError(
            errno.EINVAL,
            f"the Gluster client of volume {addr.volume} refused its translator options"
            f" ({given}; serve --gfapi-xlator-option) or the volume's (glfs_init:"
            f" {os.strerror(errno.EINVAL)})",
            addr.url,
        )
    return BackingStoreError(
        err.errno or errno.EIO,
        f"volume {addr.volume} is not available from {hosts} (glfs_init:"
        f" {os.strerror(err.errno or errno.EIO)}): does it exist and is it started?",
        addr.url,
    )


def _unreachable(server: VolfileServer, timeout: float = 3.0) -> tuple[int, str] | None:
    """(errno, reason) if nothing accepts a TCP connection at the server, else None."""
    try:
        with socket.create_connection((server.host, server.port), timeout=timeout):
            return None
    except TimeoutError:
        return errno.ETIMEDOUT, f"no answer from {server} within {timeout:g}s"
    except OSError as e:
        gai = isinstance(e, socket.gaierror)  # a name that does not resolve: EAI_* codes
        code = e.errno if e.errno and e.errno > 0 and not gai else errno.EHOSTUNREACH
        return code, f"{server}: {e.strerror or os.strerror(code)}"


_finishing: set[threading.Thread] = set()


def _fini(vol: gf.Volume) -> None:
    try:
        vol.fini()
    finally:
        with _registry_lock:
            _finishing.discard(threading.current_thread())


def _release(client: _Client) -> None:
    with _registry_lock:
        client.refs -= 1
        if client.refs > 0:
            return
        client.idle_generation += 1
        generation = client.idle_generation
    if IDLE_LINGER_SECONDS is None:
        return  # kept for reuse; see IDLE_LINGER_SECONDS
    if IDLE_LINGER_SECONDS <= 0:
        _retire(client, generation)
        return
    timer = threading.Timer(IDLE_LINGER_SECONDS, _retire, (client, generation))
    timer.daemon = True
    timer.start()


def _retire(client: _Client, generation: int) -> None:
    """Finish a client still unused since it went idle (``generation`` tells)."""
    with _registry_lock:
        if client.refs > 0 or client.idle_generation != generation:
            return  # reused meanwhile
        if _registry.get(client.key) is client:
            del _registry[client.key]
        vol, client.volume = client.volume, None
    if vol is not None:
        finish_later(vol)


def release_idle() -> int:
    """Finish every unused client now (daemon shutdown, tests); returns how many."""
    with _registry_lock:
        idle = [(c, c.idle_generation) for c in _registry.values() if c.refs == 0]
    for client, generation in idle:
        _retire(client, generation)
    return len(idle)


def finish_later(vol: gf.Volume) -> None:
    """glfs_fini on a background thread: it was seen to take ~10 s (GlusterFS 10.3), and
    closing a LUN must not stall the server. A new open gets a fresh client meanwhile.
    At interpreter exit :func:`shutdown` waits for these (a process exiting while
    glfs_fini runs was seen to segfault)."""
    t = threading.Thread(target=_fini, args=(vol,), name=f"glfs_fini:{vol.volume}", daemon=True)
    with _registry_lock:
        _finishing.add(t)
    t.start()


def shutdown(timeout: float | None = None) -> bool:
    """Wait for clients being finished in the background; True if none is left."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _registry_lock:
        pending = list(_finishing)
    for t in pending:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with _registry_lock:
        return not _finishing


atexit.register(shutdown, 30.0)


def client_refcounts() -> dict[ClientKey, int]:
    """The live shared clients and how many stores use each (for tests and diagnostics);
    0 means idle, kept for reuse for :data:`IDLE_LINGER_SECONDS`."""
    with _registry_lock:
        return {k: c.refs for k, c in _registry.items()}


class GfapiStore(BackingStore):
    blocking = True
    #: The server may acknowledge a plain write before this store has it, while the LUN's
    #: write cache is on (``server.runner.Runner._write_behind``): a write otherwise waits
    #: for the bricks, where a file's waits only for the page cache. (Not on the base class:
    #: a read cache over this store forwards it, ``_forward.py``.)
    write_behind = True
    #: Worker threads the daemon gives this store's blocking calls, i.e. calls in flight on
    #: the volume (None: the daemon's ``io_threads``). Workers start on demand.
    io_threads: int | None = None
    #: Reads and writes may also be started without a worker thread, as libgfapi's
    #: asynchronous calls (``server/gfaio.py``), under :meth:`begin_async`/:meth:`end_async`.
    async_io = True

    def __init__(
        self,
        address: GlusterAddress | str,
        *,
        read_only: bool = False,
        create_size: int | None = None,
        log_file: str | None = None,
        log_level: int | None = None,
        o_direct: bool = False,
    ) -> None:
        self.address = parse_gluster_url(address) if isinstance(address, str) else address
        self.name = self.address.url
        self.path = self.address.path
        self.read_only = read_only
        self.o_direct = o_direct
        self.created = False
        self._file: gf.File | None = None
        self._lock = threading.Lock()
        self._calls = 0  # calls running now (under _lock)
        #: Calls that failed, by errno (see :meth:`_failed`): what the metrics show as
        #: ``gluster_iscsi_lun_store_errors_total``.
        self.errors_by_errno: dict[int, int] = {}
        self._idle = threading.Condition(self._lock)  # close() waits on it for _calls == 0
        self._client = _acquire(self.address, log_file, log_level)
        try:
            self._file = self._open(create_size)
            self._discard = True
            self._zerofill = True
            extents = self._probe_seek()
        except BaseException:
            if self._file is not None:
                try:
                    self._file.close()
                except gf.GfapiError:
                    pass
            _release(self._client)
            raise
        self.capabilities = Capabilities(
            discard=True,
            discard_zeroes=True,
            write_zeroes=True,
            extents=extents,
            flush=True,
            resize=True,
        )

    # -- helpers --------------------------------------------------------------------------------

    @property
    def _vol(self) -> gf.Volume:
        vol = self._client.volume
        if vol is None:
            raise BackingStoreError(errno.EBADF, "store is closed", self.name)
        return vol

    def _open(self, create_size: int | None) -> gf.File:
        vol = self._vol
        flags = os.O_RDONLY if self.read_only else os.O_RDWR
        if self.o_direct:
            flags |= os.O_DIRECT
        if create_size is None or self.read_only:
            return vol.open(self.path, flags)
        try:
            return vol.open(self.path, flags)
        except gf.GfapiError as e:
            if e.errno != errno.ENOENT:
                raise
        parent = self.path.rsplit("/", 1)[0]
        if parent:
            vol.makedirs(parent)
        try:
            f = vol.creat(self.path, flags | os.O_EXCL, 0o600)
        except gf.GfapiError as e:
            if e.errno != errno.EEXIST:
                raise
            return vol.open(self.path, flags)  # somebody else created it meanwhile
        self.created = True
        try:
            f.ftruncate(create_size)
        except BaseException:
            f.close()
            vol.unlink(self.path)
            raise
        return f

    def _probe_seek(self) -> bool:
        try:
            self._fh.lseek(0, gf.SEEK_DATA)
        except gf.GfapiError as e:
            if e.errno == errno.ENXIO:  # no data at all: seeking works
                return True
            if e.errno in _NOT_SUPPORTED:
                return False
            raise
        return True

    @property
    def _fh(self) -> gf.File:
        f = self._file
        if f is None:
            raise BackingStoreError(errno.EBADF, "store is closed", self.name)
        return f

    def _writable(self) -> gf.File:
        if self.read_only:
            raise BackingStoreError(errno.EROFS, "store is read-only", self.name)
        return self._fh

    def _enter(self) -> None:
        """Count a call in; after close() it fails (EBADF) instead."""
        with self._lock:
            if self._file is None:
                raise BackingStoreError(errno.EBADF, "store is closed", self.name)
            self._calls += 1

    def _leave(self) -> None:
        with self._lock:
            self._calls -= 1
            if self._file is None and self._calls == 0:
                self._idle.notify_all()  # close() is waiting

    def begin_async(self, write: bool, length: int) -> int:
        """Count in a read or write of ``length`` bytes that the caller starts as an
        asynchronous libgfapi call and return the address of the glfs_fd: it stays open until
        :meth:`end_async` (close() waits for it, as for any call; libgfapi drops the completion
        of a call whose fd was closed). A write longer than :attr:`write_piece` is the
        caller's to cut, as :meth:`write` does (one call per piece; they may be in flight
        together). Raises as the call would (EBADF closed, EROFS a write on a read-only
        store)."""
        with self._lock:
            f = self._file
            if f is None:
                raise BackingStoreError(errno.EBADF, "store is closed", self.name)
            if write and self.read_only:
                raise BackingStoreError(errno.EROFS, "store is read-only", self.name)
            self._calls += 1
            return f.handle

    def end_async(self, error: BackingStoreError | None) -> None:
        """An asynchronous call begun with :meth:`begin_async` completed (``error``: how it
        failed, counted as a failed call is)."""
        if error is not None:
            self._failed(error)
        self._leave()

    def _failed(self, e: BackingStoreError) -> None:
        """Count a failed call by errno, once (a call that falls back to another, e.g.
        discard to write_zeroes to write, fails once). This store has no reconnect path to
        count: libgfapi reconnects to bricks inside the client by itself, and a brick or
        quorum loss shows here as ENOTCONN/EIO/EROFS failures."""
        if getattr(e, "counted", False):
            return
        e.counted = True  # type: ignore[attr-defined]
        code = e.errno or errno.EIO
        with self._lock:
            self.errors_by_errno[code] = self.errors_by_errno.get(code, 0) + 1

    def store_errors(self) -> dict[str, int]:
        """Failed calls by errno name (``ENOTCONN``: the bricks could not be reached)."""
        with self._lock:
            items = list(self.errors_by_errno.items())
        return {errno.errorcode.get(k, str(k)): n for k, n in sorted(items)}

    def _no_calls(self) -> bool:
        return self._calls == 0

    def _downgrade(self, **changes: bool) -> None:
        with self._lock:
            self.capabilities = replace(self.capabilities, **changes)

    # -- upcalls (backstore/cache.py) -----------------------------------------------------------

    def watch_invalidations(self, callback: Callable[[], None],
                            on_range: Callable[[int, int], None] | None = None) -> float | None:
        """Call ``callback()`` (on a gfapi thread) whenever another Gluster client changes
        this file, as far as upcalls tell; ``on_range(offset, length)`` instead, if given,
        when only a part of it needs dropping (a shard the bricks forgot: see
        :func:`_on_upcall`). Returns how long cached bytes may be trusted
        without a new brick read (half the volume's cache-invalidation-timeout), or None if
        the volume sends no upcalls (``features.cache-invalidation`` off, or not known) or
        gfapi refused to register: then the caller is coherent with no other writer."""
        client = self._client
        vol = self._vol
        with client.watch_lock:
            if not client.coherence_probed:
                timeout = probe_cache_invalidation(self.address)
                if timeout is not None and not vol.register_upcalls(partial(_on_upcall, client)):
                    timeout = None
                if timeout is not None:
                    client.shard_size = probe_shard_size(self.address)
                client.coherence_ttl = None if timeout is None else max(timeout / 2, 0.5)
                client.coherence_probed = True
            ttl = client.coherence_ttl
        if ttl is None:
            return None
        try:
            gfid = vol.gfid(self.path)
        except gf.GfapiError:
            return None
        with client.watch_lock:
            client.watchers.setdefault(gfid, []).append(callback)
            if on_range is not None:
                client.ranges.setdefault(gfid, {})[callback] = on_range
        self._gfid = gfid
        return ttl

    def unwatch_invalidations(self, callback: Callable[[], None]) -> None:
        gfid = getattr(self, "_gfid", None)
        if gfid is None:
            return
        client = self._client
        with client.watch_lock:
            cbs = client.watchers.get(gfid, [])
            if callback in cbs:
                cbs.remove(callback)
            ranges = client.ranges.get(gfid)
            if ranges is not None:
                ranges.pop(callback, None)
            if not cbs:
                client.watchers.pop(gfid, None)
                client.ranges.pop(gfid, None)

    # -- the contract ---------------------------------------------------------------------------
    # Each call counts itself in and out (see the module docstring); the work is in the
    # underscored twin (``_discard`` and ``_zerofill`` name what the volume supports).

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._enter()
        try:
            self._read_into_(offset, buf)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def write(self, offset: int, data: Buffer) -> None:
        self._enter()
        try:
            self._write_(offset, data)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def writev(self, offset: int, buffers: list[Buffer]) -> None:
        self._enter()
        try:
            self._writev_(offset, buffers)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def flush(self) -> None:
        self._enter()
        try:
            self._flush_()
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def discard(self, offset: int, length: int) -> None:
        self._enter()
        try:
            self._discard_(offset, length)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def write_zeroes(self, offset: int, length: int) -> None:
        self._enter()
        try:
            self._write_zeroes_(offset, length)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def allocate(self, offset: int, length: int) -> None:
        self._enter()
        try:
            self._allocate_(offset, length)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def extents(self, offset: int, length: int) -> list[Extent]:
        self._enter()
        try:
            return self._extents_(offset, length)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()

    def resize(self, new_size: int, *, force: bool = False) -> None:
        """Set the size; shrinking (which destroys data) needs ``force=True``."""
        self._enter()
        try:
            self._resize_(new_size, force)
        except BackingStoreError as e:
            self._failed(e)
            raise
        finally:
            self._leave()


    @property
    def size(self) -> int:
        self._enter()
        try:
            return self._fh.fstat().size
        finally:
            self._leave()

    def _read_into_(self, offset: int, buf: memoryview) -> None:
        f = self._fh
        dst = byte_view(buf)
        check_range(offset, len(dst), self.name)
        total = len(dst)
        done = 0
        while done < total:
            n = f.pread_into(dst[done : done + min(total - done, _MAX_IO)], offset + done)
            if n == 0:
                raise BackingStoreError(
                    errno.EIO,
                    f"short read: {done} of {total} bytes at offset {offset} (end of file)",
                    self.name,
                )
            done += n

    @property
    def write_piece(self) -> int:
        """The most one libgfapi write call of this store may carry (see
        :data:`BUFFERED_WRITE_PIECE`; an O_DIRECT store, or pieces off: 32 MiB)."""
        return self._piece()

    def _piece(self) -> int:
        """The most one glfs_pwrite(v) call may write (see :data:`BUFFERED_WRITE_PIECE`)."""
        return _MAX_IO if self.o_direct or not BUFFERED_WRITE_PIECE else BUFFERED_WRITE_PIECE

    def _write_(self, offset: int, data: Buffer) -> None:
        f = self._writable()
        piece = self._piece()
        if isinstance(data, bytes) and len(data) <= piece:
            check_range(offset, len(data), self.name)
            n = f.pwrite(data, offset)  # c_char_p path: no pinning needed
            if n == len(data):
                return
            src = memoryview(data)
            done = n
        else:
            src = byte_view(data)
            check_range(offset, len(src), self.name)
            done = 0
        total = len(src)
        while done < total:
            n = f.pwrite(src[done : done + min(total - done, piece)], offset + done)
            if n == 0:
                raise BackingStoreError(
                    errno.EIO, f"short write: {done} of {total} bytes at offset {offset}", self.name
                )
            done += n

    def _writev_(self, offset: int, buffers: list[Buffer]) -> None:
        """Write several buffers back to back at ``offset`` (one glfs_pwritev when it can)."""
        f = self._writable()
        views = [byte_view(b) for b in buffers]
        total = sum(len(v) for v in views)
        piece = self._piece()
        if total > piece:  # in pieces of at most `piece` bytes, each one glfs_pwritev
            done = 0
            for part in _split(views, piece):
                n = f.pwritev(part, offset + done)
                done += n
                if n < sum(len(v) for v in part):
                    break
        else:
            done = f.pwritev(views, offset) if views else 0
        if done < total:  # finish a short vectored write piecewise
            joined = b"".join(views)
            self._write_(offset + done, memoryview(joined)[done:])

    def _flush_(self) -> None:
        self._fh.fdatasync()

    def _discard_(self, offset: int, length: int) -> None:
        f = self._writable()
        check_range(offset, length, self.name)
        if length == 0:
            return
        if self._discard:
            try:
                f.discard(offset, length)
                return
            except gf.GfapiError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise
                self._discard = False
                self._downgrade(discard=False, discard_zeroes=False)
        # Discard was advertised as zeroing: keep that promise for requests in flight.
        self.write_zeroes(offset, length)

    def _write_zeroes_(self, offset: int, length: int) -> None:
        f = self._writable()
        check_range(offset, length, self.name)
        if length == 0:
            return
        if self._zerofill:
            try:
                f.zerofill(offset, length)
                return
            except gf.GfapiError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise
                self._zerofill = False
        BackingStore.write_zeroes(self, offset, length)

    def _extents_(self, offset: int, length: int) -> list[Extent]:
        f = self._fh
        check_range(offset, length, self.name)
        end = offset + length
        if not self.capabilities.extents:
            return [Extent(offset, length, True)]
        limit = min(end, self.size)
        out: list[Extent] = []
        pos = offset
        while pos < limit:
            try:
                data = f.lseek(pos, gf.SEEK_DATA)
            except gf.GfapiError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = limit
            data = min(data, limit)
            if data > pos:
                out.append(Extent(pos, data - pos, False))
            if data >= limit:
                break
            hole = min(f.lseek(data, gf.SEEK_HOLE), limit)
            out.append(Extent(data, hole - data, True))
            pos = hole
        tail = max(offset, limit)
        if end > tail:
            out.append(Extent(tail, end - tail, False))
        return merge_extents(out)

    def _allocate_(self, offset: int, length: int) -> None:
        """Reserve space for a range (glfs_fallocate, mode 0)."""
        f = self._writable()
        check_range(offset, length, self.name)
        if length:
            f.fallocate(offset, length)

    def _resize_(self, new_size: int, force: bool) -> None:
        f = self._writable()
        if new_size < 0:
            raise BackingStoreError(errno.EINVAL, f"negative size {new_size}", self.name)
        current = self.size
        if new_size < current and not force:
            raise BackingStoreError(
                errno.EINVAL,
                f"refusing to shrink from {current} to {new_size} without force",
                self.name,
            )
        f.ftruncate(new_size)

    def close(self, timeout: float | None = None) -> None:
        """Close after the calls still running finish (blocking: call it off the event loop);
        calls that start now fail with EBADF. One still running after ``timeout`` seconds
        (default :data:`CLOSE_TIMEOUT`) may still use the glfs_fd: it is leaked."""
        limit = CLOSE_TIMEOUT if timeout is None else timeout
        with self._lock:
            f, self._file = self._file, None
            idle = f is None or self._idle.wait_for(self._no_calls, limit)
            running = self._calls
        if f is None:
            return
        if not idle:
            log.error(
                "%s: %d call(s) still running %gs after close; its glfs_fd and volume"
                " connection are left open (leaked) rather than freed under them",
                self.name, running, limit,
            )  # fmt: skip
            return
        try:
            f.close()
        finally:
            _release(self._client)

    def __repr__(self) -> str:
        return f"GfapiStore({self.name!r}, read_only={self.read_only})"
