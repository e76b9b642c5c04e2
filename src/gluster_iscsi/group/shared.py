"""The group directory: records, byte locks and GFIDs, on a path or through libgfapi.

:func:`open_shared` gives a :class:`SharedDir` for a location, either

* a directory path: on a Gluster FUSE mount in production, or any local or shared file
  system (tests, a lone machine): :class:`PathSharedDir`;
* ``gluster://host[,host...][:port]/VOLUME[/dir]`` (through our libgfapi binding, one client
  per volume and process, shared with the gfapi stores): :class:`GfapiSharedDir`. Without a
  directory, :data:`DEFAULT_DIR` at the volume's root.

It creates the directory and its subdirectories (:data:`SUBDIRS`) if they are missing.

Records (:meth:`SharedDir.read`/:meth:`SharedDir.write`) are two-slot files (``records.py``),
written in place (never renamed: one inode, so no name cache anywhere serves an old file),
opened O_DIRECT for both reads and writes with aligned buffers (Gluster's write-behind,
read-ahead and io-cache let O_DIRECT fds through when ``performance.strict-o-direct`` is on;
fsync after every write covers volumes where it is off), and fsynced: when ``write`` returns,
another client that reads the record sees it (measured: docs/HA.md, "Measured"). Writers of
one record must be serialised by their caller (a lock, and a read under it), or pass the
``seq`` they mean: a writer whose remembered seq is behind writes a record that readers do
not pick (the other slot has a higher seq) until its next write.

Locks (:meth:`SharedDir.try_lock`, :meth:`SharedDir.lock`) are exclusive advisory locks on one
byte of a file, each with an fd of its own kept open for the Lock's life:

* path: Linux open file description locks (``F_OFD_SETLK``): owned by the fd, not the
  process, so two Locks conflict even in one process, and closing another fd of the same
  file (a record read) does not drop them, as it drops classic ``fcntl`` locks. Through
  FUSE the kernel passes them to glusterfs with the fd as the lock owner;
* gfapi: ``glfs_posix_lock`` on a glfd with a lock owner of its own (``glfs_fd_set_lkowner``,
  16 random bytes), so Locks conflict even in one process and one Gluster client. Every
  other glfd this module opens gets its own owner too: glfs_close's flush drops the locks of
  its owner on the file, and libgfapi keeps a thread's last owner for later calls.

A lock dies with its holder: when the process exits or is killed, the kernel closes its fds
(path) or its connections to the bricks close (gfapi), and the bricks drop its locks at once.
Not before: a stopped (SIGSTOP) or hung holder keeps its locks. And a lock can die without
its holder knowing: a Gluster brick that restarts comes back without its locks, so a holder
that keeps a lock must :meth:`Lock.refresh` it (every beat).

A SharedDir may be called from several threads at once (every call opens its own fds).

GFIDs (:meth:`SharedDir.gfid`) name a file whatever address or mount path reaches it: the
``glusterfs.gfid.string`` xattr on FUSE, the gfapi handle (``glfs_h_lookupat`` +
``glfs_h_extract_handle``) through gfapi. On a file system that is not Gluster a stable
stand-in ``"<st_dev>:<st_ino>"`` is returned (:func:`is_stand_in` tells).

Every call blocks (the server runs them on a worker thread). Errors are :class:`OSError`
subclasses naming the location: :class:`SharedDirError`, :class:`TimeoutError` from
:meth:`SharedDir.lock`. Nothing waits forever on our side, but a call on a Gluster volume
whose bricks stop answering blocks until the client gives up on them: up to the volume's
``network.ping-timeout`` (42 s unless set; the gluster-block group leaves it) through gfapi,
and the same through FUSE (plus the kernel's own FUSE request handling). Callers that must
not wait that long bound the call from outside (the server's coordinator does).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import stat
import struct
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

from ..backstore.gfapi import _binding as gf
from ..backstore.gfapi import store as gfstore
from ..backstore.gfapi.address import GlusterAddress, parse_gluster_url
from . import records

#: The group directory's name at the volume's root when a gluster:// location names none.
DEFAULT_DIR = ".gluster-iscsi"
#: Subdirectories created with the directory (a write or lock also creates its file's folder).
SUBDIRS = ("gateways", "luns", "identities")

_STAND_IN_RE = re.compile(r"^\d+:\d+$")
_GFID_XATTR = "glusterfs.gfid.string"
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("hh4xqqi4x")  # struct flock, x86_64/aarch64 Linux


class Record(NamedTuple):
    """A record as read: its sequence number and its JSON object."""

    seq: int
    data: dict[str, Any]


class LockHeld(Exception):
    """:meth:`SharedDir.try_lock` lost: someone else (another process, or another Lock of this
    process) holds the byte."""

    def __init__(self, location: str, name: str, byte: int) -> None:
        super().__init__(f"byte {byte} of {name} in group directory {location} is locked"
                         " by someone else")
        self.location = location
        self.name = name
        self.byte = byte


class SharedDirError(OSError):
    """A call on the group directory failed; ``errno`` says why, the message where."""


def is_stand_in(gfid: str) -> bool:
    """True if ``gfid`` is the ``"dev:ino"`` stand-in of a file outside Gluster."""
    return _STAND_IN_RE.match(gfid) is not None


def _check_name(name: str) -> str:
    """A record/lock name: relative, ``/``-separated, no empty, ``.`` or ``..`` part."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"invalid name in the group directory: {name!r}")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid name in the group directory: {name!r} (relative, no '..')")
    return name


class Lock:
    """An exclusive lock on one byte of a file of the group directory, held until
    :meth:`release` (also on leaving a ``with`` block), or until its SharedDir is closed, or
    the process ends: dropping the object does not release it. ``held`` is False once
    released.

    ``held`` says only that this object has not released it (nor seen it lost in
    :meth:`refresh`). On Gluster a lock can be lost without its holder hearing of it: a brick
    that restarts comes back without the locks it held (GlusterFS 10.3 does not re-take them
    on reconnect), so once every brick of the replica set has restarted, nobody holds the
    lock any more while its holder's writes still succeed (measured: docs/HA.md, "Measured").
    A holder that keeps a lock for long (the lease) must :meth:`refresh` it often (every
    beat): that re-takes it on the bricks that came back, or tells it was lost."""

    def __init__(self, location: str, name: str, byte: int,
                 release: Callable[[], None], relock: Callable[[], None]) -> None:
        self.location = location
        self.name = name
        self.byte = byte
        self.held = True
        self._release: Callable[[], None] | None = release
        self._relock = relock
        self._on_release: Callable[[Lock], None] | None = None
        self._mutex = threading.Lock()

    def refresh(self) -> None:
        """Take the lock again on its own fd: a no-op where it is held, and it re-takes it on
        Gluster bricks that lost it by restarting. Raises :class:`LockHeld` if someone else
        holds the byte now (the lock was lost; this Lock is released: ``held`` False),
        SharedDirError (EBADF if already released) on other errors."""
        with self._mutex:
            if self._release is None:
                raise SharedDirError(errno.EBADF, f"lock on byte {self.byte} of {self.name}"
                                     f" in group directory {self.location} was released")
        try:
            self._relock()
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                try:
                    self.release()
                except OSError:
                    pass
                raise LockHeld(self.location, self.name, self.byte) from None
            code = e.errno or errno.EIO
            raise SharedDirError(code, f"cannot refresh the lock on byte {self.byte} of"
                                 f" {self.name} in group directory {self.location}:"
                                 f" {os.strerror(code)}") from e

    def release(self) -> None:
        """Unlock and close the lock's fd; idempotent. Raises SharedDirError if the unlock
        failed (the fd is closed anyway, which drops the lock where the bricks hear of it)."""
        with self._mutex:
            fn, self._release = self._release, None
            self.held = False
        if fn is not None:
            try:
                fn()
            finally:
                if self._on_release is not None:
                    self._on_release(self)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<Lock {self.name}@{self.byte} in {self.location} {state}>"


class SharedDir(ABC):
    """The group directory (abstract): see the module's docstring.

    ``location`` is the location as given to :func:`open_shared`; ``on_gluster`` is True when
    :meth:`gfid` returns real Gluster GFIDs (not stand-ins) for files of the directory's
    file system."""

    location: str
    on_gluster: bool

    def __init__(self, location: str) -> None:
        self.location = location
        self._seqs: dict[str, int] = {}
        self._mutex = threading.Lock()
        self._locks: set[Lock] = set()  # held ones: close() releases them
        self._closed = False

    # -- records ------------------------------------------------------------------------

    def read(self, name: str) -> Record | None:
        """The latest valid record ``name`` (a fresh O_DIRECT read), or None if the file is
        missing or holds no valid slot. Remembers its seq for :meth:`write`."""
        self._check_open()
        raw = self._read_file(_check_name(name))
        if raw is None:
            return None
        got = records.pick(raw[: records.SLOT_SIZE], raw[records.SLOT_SIZE :])
        if got is None:
            return None
        with self._mutex:
            self._seqs[name] = got[0]
        return Record(*got)

    def write(self, name: str, data: dict[str, Any], *, seq: int | None = None) -> int:
        """Write ``data`` as record ``name`` with number ``seq`` into slot ``seq % 2``
        (O_DIRECT, aligned, in place, then fsync); returns the seq written.

        ``seq`` None: one more than the last seq this object read or wrote for ``name``,
        reading the record first if it knows none (1 for a new record). Creates the file
        (``2 * SLOT_SIZE`` bytes) if missing. Raises ValueError (before any I/O) if ``data``
        does not fit in a slot, SharedDirError if the write or the fsync failed."""
        self._check_open()
        _check_name(name)
        if seq is None:
            with self._mutex:
                known = self._seqs.get(name)
            if known is None:
                rec = self.read(name)
                known = rec.seq if rec is not None else 0
            seq = known + 1
        slot = records.encode(seq, data)
        self._write_slot(name, records.slot_offset(seq), slot)
        with self._mutex:
            self._seqs[name] = seq
        return seq

    # -- locks ----------------------------------------------------------------------------

    def try_lock(self, name: str, byte: int) -> Lock:
        """Lock byte ``byte`` of file ``name`` (created empty if missing) exclusively, without
        waiting; raises :class:`LockHeld` if anyone else holds it, this process included."""
        self._check_open()
        if not isinstance(byte, int) or byte < 0:
            raise ValueError(f"lock byte must be a non-negative integer, got {byte!r}")
        lock = self._try_lock(_check_name(name), byte)
        with self._mutex:
            self._locks.add(lock)
        lock._on_release = self._forget_lock
        return lock

    def _forget_lock(self, lock: Lock) -> None:
        with self._mutex:
            self._locks.discard(lock)

    def lock(self, name: str, byte: int, timeout: float) -> Lock:
        """:meth:`try_lock`, retried (every 10 ms at first, then every 100 ms) until it
        succeeds or ``timeout`` seconds have passed: then TimeoutError."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            try:
                return self.try_lock(name, byte)
            except LockHeld:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"byte {byte} of {name} in group directory {self.location} is still"
                        f" locked by someone else after {timeout:g}s",
                    ) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.1)

    # -- names, removal, GFIDs ----------------------------------------------------------------

    def names(self, prefix: str) -> list[str]:
        """The names of the files whose name starts with ``prefix``, sorted, each usable with
        :meth:`read`: ``names("gateways/")`` -> ``["gateways/a", "gateways/b"]``; the part of
        ``prefix`` after its last ``/`` filters the entries of that directory. A missing
        directory has no names."""
        self._check_open()
        folder, _, start = prefix.rpartition("/")
        if folder:
            _check_name(folder)
        entries = self._list(folder)
        base = f"{folder}/" if folder else ""
        return sorted(base + e for e in entries if e.startswith(start))

    def remove(self, name: str) -> None:
        """Delete file ``name``; nothing if it is missing. A Lock held on it stays on the
        removed file: remove only what nobody locks any more."""
        self._check_open()
        self._remove(_check_name(name))
        with self._mutex:
            self._seqs.pop(name, None)

    @abstractmethod
    def gfid(self, path: str) -> str:
        """The Gluster GFID (canonical UUID string) of the file at ``path``: volume-relative
        (gfapi) or a file system path (path backend). Outside Gluster: the stand-in
        ``"dev:ino"`` (:func:`is_stand_in`)."""

    def close(self) -> None:
        """Release every Lock still held from this object, and the Gluster client reference
        (gfapi); further calls raise SharedDirError (EBADF). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._mutex:
            held = list(self._locks)
        for lock in held:
            try:
                lock.release()
            except OSError:
                pass
        self._close()

    def __enter__(self) -> SharedDir:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"

    # -- for the implementations ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SharedDirError(errno.EBADF, f"group directory {self.location} is closed")

    def _error(self, err: OSError, what: str, name: str) -> SharedDirError:
        code = err.errno or errno.EIO
        return SharedDirError(
            code, f"{what} {name} in group directory {self.location}: {os.strerror(code)}"
        )

    @abstractmethod
    def _read_file(self, name: str) -> mmap.mmap | None:
        """Both slots (FILE_SIZE bytes, zero past the file's end); None if missing."""

    @abstractmethod
    def _write_slot(self, name: str, offset: int, slot: bytes) -> None: ...

    @abstractmethod
    def _try_lock(self, name: str, byte: int) -> Lock: ...

    @abstractmethod
    def _list(self, folder: str) -> list[str]: ...

    @abstractmethod
    def _remove(self, name: str) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...


def _aligned(data: bytes | None = None, size: int = records.FILE_SIZE) -> mmap.mmap:
    """A page-aligned buffer (anonymous mmap, zero-filled), for O_DIRECT."""
    buf = mmap.mmap(-1, size)
    if data is not None:
        buf[: len(data)] = data
    return buf


# -------------------------------------------------------------------------------- path


def _mount_fstype(path: str) -> str | None:
    """The type of the file system ``path`` is on (/proc/self/mountinfo, longest match)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ")
        if real == mnt or real.startswith(mnt.rstrip("/") + "/"):
            if best is None or len(mnt) > best[0]:
                best = (len(mnt), right.split()[0])
    return best[1] if best else None


class PathSharedDir(SharedDir):
    """The group directory at a file system path (a Gluster FUSE mount, or any file system:
    then GFIDs are stand-ins). O_DIRECT where the file system has it (not tmpfs: there the
    page cache is the only copy, fsync is what counts)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.root = os.path.abspath(location)
        try:
            for sub in ("", *SUBDIRS):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        except OSError as e:
            raise self._error(e, "cannot create", self.root) from e
        self.on_gluster = (_mount_fstype(self.root) or "").startswith("fuse.glusterfs")
        self._direct = os.O_DIRECT

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _open(self, name: str, flags: int, what: str, *, direct: bool = True) -> int:
        path = self._path(name)
        made = False
        try:
            while True:
                extra = self._direct if direct else 0
                try:
                    return os.open(path, flags | extra | os.O_CLOEXEC, 0o644)
                except OSError as e:
                    if e.errno == errno.EINVAL and extra and not self.on_gluster:
                        # this file system has no O_DIRECT (tmpfs); on Gluster, without it a
                        # reader could be served stale pages: fail instead
                        self._direct = 0
                    elif e.errno == errno.ENOENT and flags & os.O_CREAT and not made:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        made = True
                    else:
                        raise
        except OSError as e:
            raise self._error(e, what, name) from e

    def _read_file(self, name: str) -> mmap.mmap | None:
        try:
            fd = self._open(name, os.O_RDONLY, "cannot open")
        except SharedDirError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        buf = _aligned()
        try:
            os.preadv(fd, [buf], 0)
        except OSError as e:
            raise self._error(e, "cannot read", name) from e
        finally:
            os.close(fd)
        return buf

    def _write_slot(self, name: str, offset: int, slot: bytes) -> None:
        fd = self._open(name, os.O_RDWR | os.O_CREAT, "cannot open")
        try:
            if os.fstat(fd).st_size < records.FILE_SIZE:
                os.ftruncate(fd, records.FILE_SIZE)
            buf = _aligned(slot, records.SLOT_SIZE)
            n = os.pwrite(fd, buf, offset)
            if n != len(slot):
                raise OSError(errno.EIO, f"short write ({n} of {len(slot)} bytes)")
            os.fsync(fd)
        except OSError as e:
            raise self._error(e, "cannot write", name) from e
        finally:
            os.close(fd)

    def _try_lock(self, name: str, byte: int) -> Lock:
        fd = self._open(name, os.O_RDWR | os.O_CREAT, "cannot open", direct=False)
        try:
            fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeld(self.location, name, byte) from None
            raise self._error(e, f"cannot lock byte {byte} of", name) from e

        def release() -> None:
            try:
                fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))
            except OSError as e:
                raise self._error(e, f"cannot unlock byte {byte} of", name) from e
            finally:
                os.close(fd)

        def relock() -> None:
            fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))

        return Lock(self.location, name, byte, release, relock)

    def _list(self, folder: str) -> list[str]:
        try:
            return [e.name for e in os.scandir(self._path(folder) if folder else self.root)
                    if not e.is_dir()]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error(e, "cannot list", folder or "/") from e

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(e, "cannot remove", name) from e

    def _close(self) -> None:
        pass  # every fd is the call's own, or its Lock's

    def gfid(self, path: str) -> str:
        """``glusterfs.gfid.string`` of ``path`` on a Gluster FUSE mount; elsewhere the
        stand-in ``"dev:ino"``."""
        self._check_open()
        try:
            return str(uuid.UUID(os.getxattr(path, _GFID_XATTR).decode("ascii").strip("\0")))
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise self._error(e, "cannot read the GFID of", path) from e
            if (_mount_fstype(path) or "").startswith("fuse.glusterfs"):
                raise self._error(e, "cannot read the GFID of", path) from e
        except ValueError as e:
            raise SharedDirError(errno.EIO, f"GFID of {path} is not a UUID: {e}") from e
        try:
            st = os.stat(path)
        except OSError as e:
            raise self._error(e, "cannot stat", path) from e
        return f"{st.st_dev}:{st.st_ino}"


# -------------------------------------------------------------------------------- gfapi


def _parse_location(location: str) -> GlusterAddress:
    """The GlusterAddress of a gluster:// location; no directory: DEFAULT_DIR."""
    url, q, query = location.partition("?")
    url = url.rstrip("/")
    scheme, _, rest = url.partition("://")
    if "/" not in rest.partition("/")[2]:  # gluster://hosts/VOLUME without a directory
        url = f"{url}/{DEFAULT_DIR}"
    return parse_gluster_url(url + q + query)


class GfapiSharedDir(SharedDir):
    """The group directory through libgfapi: ``gluster://host[,host...][:port]/VOLUME/dir``.
    One Gluster client per (volume, servers) and process, shared with the gfapi stores (and
    like theirs never finished while the process runs)."""

    on_gluster = True

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.address = _parse_location(location)
        self.root = self.address.path
        level = self.address.options.get("loglevel")
        try:
            self._client = gfstore._acquire(
                self.address, self.address.options.get("logfile"),
                int(level) if level is not None else None,
            )
        except OSError as e:
            raise SharedDirError(e.errno or errno.EIO,
                                 f"group directory {location}: {e.strerror or e}") from e
        vol = self._client.volume
        assert vol is not None  # set by _acquire
        self._vol: gf.Volume = vol
        try:
            self._vol.makedirs(self.root)
            for sub in SUBDIRS:
                self._vol.mkdir(self._path(sub), exist_ok=True)
        except OSError as e:
            gfstore._release(self._client)
            raise self._error(e, "cannot create", self.root) from e

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def _fd(self, name: str, create: bool, flags: int, what: str) -> gf.File:
        """A glfd with a lock owner of its own (see the module docstring)."""
        path = self._path(name)
        try:
            try:
                f = self._vol.creat(path, flags) if create else self._vol.open(path, flags)
            except OSError as e:
                if not (create and e.errno == errno.ENOENT):
                    raise
                self._vol.makedirs(path.rpartition("/")[0])
                f = self._vol.creat(path, flags)
        except OSError as e:
            raise self._error(e, what, name) from e
        try:
            f.set_lkowner(uuid.uuid4().bytes)
        except OSError as e:
            f.close()
            raise self._error(e, what, name) from e
        return f

    def _read_file(self, name: str) -> mmap.mmap | None:
        try:
            f = self._fd(name, False, os.O_RDONLY | os.O_DIRECT, "cannot open")
        except SharedDirError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        buf = _aligned()
        try:
            f.pread_into(buf, 0)
        except OSError as e:
            raise self._error(e, "cannot read", name) from e
        finally:
            self._close_fd(f, name)
        return buf

    def _write_slot(self, name: str, offset: int, slot: bytes) -> None:
        f = self._fd(name, True, os.O_RDWR | os.O_DIRECT, "cannot open")
        try:
            if f.fstat().size < records.FILE_SIZE:
                f.ftruncate(records.FILE_SIZE)
            buf = _aligned(slot, records.SLOT_SIZE)
            n = f.pwrite(buf, offset)
            if n != len(slot):
                raise OSError(errno.EIO, f"short write ({n} of {len(slot)} bytes)")
            f.fsync()
        except OSError as e:
            raise self._error(e, "cannot write", name) from e
        finally:
            self._close_fd(f, name)

    def _close_fd(self, f: gf.File, name: str) -> None:
        try:
            f.close()
        except OSError:
            pass  # glfs_close failing after a good fsync loses nothing

    def _try_lock(self, name: str, byte: int) -> Lock:
        f = self._fd(name, True, os.O_RDWR, "cannot open")
        try:
            f.posix_lock(fcntl.F_SETLK, gf.Flock(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        except OSError as e:
            self._close_fd(f, name)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeld(self.location, name, byte) from None
            raise self._error(e, f"cannot lock byte {byte} of", name) from e

        def release() -> None:
            try:
                f.posix_lock(fcntl.F_SETLK, gf.Flock(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))
            except OSError as e:
                raise self._error(e, f"cannot unlock byte {byte} of", name) from e
            finally:
                self._close_fd(f, name)

        def relock() -> None:
            f.posix_lock(fcntl.F_SETLK, gf.Flock(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))

        return Lock(self.location, name, byte, release, relock)

    def _list(self, folder: str) -> list[str]:
        path = self._path(folder)
        try:
            names = self._vol.listdir(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return []
            raise self._error(e, "cannot list", folder or "/") from e
        out = []
        for n in names:
            try:
                if not stat.S_ISDIR(self._vol.stat(f"{path}/{n}").mode):
                    out.append(n)
            except OSError as e:
                if e.errno != errno.ENOENT:  # removed meanwhile
                    raise self._error(e, "cannot stat", f"{folder}/{n}") from e
        return out

    def _remove(self, name: str) -> None:
        try:
            self._vol.unlink(self._path(name))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise self._error(e, "cannot remove", name) from e

    def gfid(self, path: str) -> str:
        """The GFID of ``path``: volume-relative (``/luns/disk.img`` or ``luns/disk.img``) or
        a gluster:// URL of this volume."""
        self._check_open()
        if "://" in path:
            addr = _parse_location(path)
            if addr.volume != self.address.volume:
                raise ValueError(f"{path} is not on volume {self.address.volume}"
                                 f" (group directory {self.location})")
            path = addr.path
        path = "/" + path.lstrip("/")
        try:
            raw = self._vol.gfid(path)
        except OSError as e:
            raise self._error(e, "cannot read the GFID of", path) from e
        return str(uuid.UUID(bytes=raw))

    def _close(self) -> None:
        gfstore._release(self._client)


def open_shared(location: str) -> SharedDir:
    """The group directory at ``location``: a directory path, or
    ``gluster://host[,host...][:port]/VOLUME[/dir]`` (gfapi). Creates the directory and its
    subdirectories (:data:`SUBDIRS`) if missing. Raises SharedDirError (an OSError) naming
    the location if it cannot be reached or created, ValueError for a malformed URL."""
    if re.match(r"^gluster(\+[a-z]+)?://", location, re.IGNORECASE):
        return GfapiSharedDir(location)
    return PathSharedDir(location)
