"""A small typed ctypes binding of libgfapi.so.0 (GlusterFS >= 6 symbol versions).

ctypes binds each symbol's default version (``@@GFAPI_6.0`` where there is one), so the
prototypes here are the Gluster >= 6 ones: ``glfs_pread``/``glfs_pwrite``/``glfs_fdatasync``/
``glfs_ftruncate`` take trailing ``struct glfs_stat *`` pre/post-op arguments (we pass NULL);
``glfs_preadv``/``glfs_pwritev`` kept their old form.

The library is loaded on first use (:func:`lib`), so importing this module works without
GlusterFS installed. Every failing call raises :class:`GfapiError`, a
:class:`BackingStoreError` carrying the errno that libgfapi set and the path involved.

ctypes releases the GIL around each foreign call, so blocking calls may run on worker
threads while the event loop keeps going. Buffers are pinned (never copied): writable ones
with ``from_buffer``, read-only ones through the buffer protocol.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno as _errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from ctypes import (
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int64,
    c_long,
    c_short,
    c_size_t,
    c_ssize_t,
    c_uint,
    c_uint32,
    c_uint64,
    c_void_p,
)
from dataclasses import dataclass
from typing import Any

from ..base import BackingStoreError, Buffer

SEEK_DATA = 3
SEEK_HOLE = 4
GLFS_LK_ADVISORY = 0
GLFS_LK_MANDATORY = 1

# glfs_set_logging levels (gf_loglevel_t)
LOG_NONE, LOG_EMERG, LOG_ALERT, LOG_CRITICAL, LOG_ERROR = 0, 1, 2, 3, 4
LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG, LOG_TRACE = 5, 6, 7, 8, 9


class GfapiError(BackingStoreError):
    """A libgfapi call failed; ``errno`` as set by the library, ``path`` the object."""


class GfapiUnavailable(GfapiError):
    """libgfapi.so.0 could not be loaded."""


# -- C structures (x86_64 Linux ABI) ---------------------------------------------------------


class Timespec(Structure):
    _fields_ = [("tv_sec", c_long), ("tv_nsec", c_long)]


class Stat(Structure):
    """``struct stat`` for x86_64 glibc (144 bytes)."""

    _fields_ = [
        ("st_dev", c_uint64),
        ("st_ino", c_uint64),
        ("st_nlink", c_uint64),
        ("st_mode", c_uint32),
        ("st_uid", c_uint32),
        ("st_gid", c_uint32),
        ("_pad0", c_int),
        ("st_rdev", c_uint64),
        ("st_size", c_int64),
        ("st_blksize", c_int64),
        ("st_blocks", c_int64),
        ("st_atim", Timespec),
        ("st_mtim", Timespec),
        ("st_ctim", Timespec),
        ("_unused", c_long * 3),
    ]


assert ctypes.sizeof(Stat) == 144


class Flock(Structure):
    """``struct flock`` for x86_64 (32 bytes)."""

    _fields_ = [
        ("l_type", c_short),
        ("l_whence", c_short),
        ("l_start", c_int64),
        ("l_len", c_int64),
        ("l_pid", c_int),
    ]


class Dirent(Structure):
    """``struct dirent`` for x86_64 glibc (what glfs_readdir returns)."""

    _fields_ = [
        ("d_ino", c_uint64),
        ("d_off", c_int64),
        ("d_reclen", ctypes.c_uint16),
        ("d_type", ctypes.c_uint8),
        ("d_name", ctypes.c_char * 256),
    ]


class Iovec(Structure):
    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]


class _PyBuffer(Structure):
    """CPython's ``Py_buffer``, to pin read-only buffers without copying them."""

    _fields_ = [
        ("buf", c_void_p),
        ("obj", ctypes.py_object),
        ("len", c_ssize_t),
        ("itemsize", c_ssize_t),
        ("readonly", c_int),
        ("ndim", c_int),
        ("format", c_char_p),
        ("shape", POINTER(c_ssize_t)),
        ("strides", POINTER(c_ssize_t)),
        ("suboffsets", POINTER(c_ssize_t)),
        ("internal", c_void_p),
    ]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, POINTER(_PyBuffer), c_int]
_PyObject_GetBuffer.restype = c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [POINTER(_PyBuffer)]
_PyBuffer_Release.restype = None
_PyBUF_SIMPLE = 0
_PyBUF_WRITABLE = 1


@contextmanager
def pinned(data: Buffer, *, writable: bool = False) -> Iterator[tuple[int, int]]:
    """Yield ``(address, nbytes)`` of a C-contiguous buffer, held still for the duration."""
    view = _PyBuffer()
    flags = _PyBUF_WRITABLE if writable else _PyBUF_SIMPLE
    _PyObject_GetBuffer(data, ctypes.byref(view), flags)  # raises BufferError/TypeError
    try:
        yield (view.buf or 0), view.len
    finally:
        _PyBuffer_Release(ctypes.byref(view))


_c_char = ctypes.c_char


def _hold(buf: Buffer) -> tuple[Any, int] | None:
    """The cheap pin of the common data-path buffer (a bytearray, or a writable C-contiguous
    memoryview): ``(holder, nbytes)``, where ``holder`` is a ctypes ``c_char`` array over
    the buffer's bytes that keeps the buffer exported (so not resized or released) until
    it is dropped; ctypes passes it to a ``c_void_p`` argument as its address. None for
    anything else (read-only or empty buffers, other types): use :func:`pinned`.
    ~0.4 us against ~2 us for :func:`pinned` (a generator and two C-API calls)."""
    if isinstance(buf, memoryview):
        n = buf.nbytes
    elif isinstance(buf, bytearray):  # (and subclasses: buffers.PooledBuffer)
        n = len(buf)
    else:
        return None
    if not n:
        return None
    try:
        return (_c_char * n).from_buffer(buf), n  # (writable, C-contiguous, or it raises)
    except (TypeError, ValueError, BufferError):
        return None


# -- library loading ----------------------------------------------------------------------------

_glfs_p = c_void_p
_glfd_p = c_void_p

# name: (restype, argtypes)
_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "glfs_new": (_glfs_p, [c_char_p]),
    "glfs_set_volfile_server": (c_int, [_glfs_p, c_char_p, c_char_p, c_int]),
    "glfs_set_logging": (c_int, [_glfs_p, c_char_p, c_int]),
    "glfs_set_xlator_option": (c_int, [_glfs_p, c_char_p, c_char_p, c_char_p]),
    "glfs_init": (c_int, [_glfs_p]),
    "glfs_fini": (c_int, [_glfs_p]),
    "glfs_open": (_glfd_p, [_glfs_p, c_char_p, c_int]),
    "glfs_creat": (_glfd_p, [_glfs_p, c_char_p, c_int, c_uint]),
    "glfs_close": (c_int, [_glfd_p]),
    # Gluster >= 6: trailing struct glfs_stat * arguments.
    "glfs_pread": (c_ssize_t, [_glfd_p, c_void_p, c_size_t, c_int64, c_int, c_void_p]),
    "glfs_pwrite": (
        c_ssize_t,
        [_glfd_p, c_void_p, c_size_t, c_int64, c_int, c_void_p, c_void_p],
    ),
    "glfs_preadv": (c_ssize_t, [_glfd_p, POINTER(Iovec), c_int, c_int64, c_int]),
    "glfs_pwritev": (c_ssize_t, [_glfd_p, POINTER(Iovec), c_int, c_int64, c_int]),
    "glfs_fdatasync": (c_int, [_glfd_p, c_void_p, c_void_p]),
    "glfs_fsync": (c_int, [_glfd_p, c_void_p, c_void_p]),
    "glfs_ftruncate": (c_int, [_glfd_p, c_int64, c_void_p, c_void_p]),
    "glfs_fstat": (c_int, [_glfd_p, POINTER(Stat)]),
    "glfs_stat": (c_int, [_glfs_p, c_char_p, POINTER(Stat)]),
    "glfs_discard": (c_int, [_glfd_p, c_int64, c_size_t]),
    "glfs_zerofill": (c_int, [_glfd_p, c_int64, c_int64]),
    "glfs_fallocate": (c_int, [_glfd_p, c_int, c_int64, c_size_t]),
    "glfs_lseek": (c_int64, [_glfd_p, c_int64, c_int]),
    "glfs_copy_file_range": (
        c_ssize_t,
        [
            _glfd_p,
            POINTER(c_int64),
            _glfd_p,
            POINTER(c_int64),
            c_size_t,
            c_uint,
            c_void_p,
            c_void_p,
            c_void_p,
        ],
    ),
    "glfs_posix_lock": (c_int, [_glfd_p, c_int, POINTER(Flock)]),
    "glfs_file_lock": (c_int, [_glfd_p, c_int, POINTER(Flock), c_int]),
    "glfs_unlink": (c_int, [_glfs_p, c_char_p]),
    # Handles (for a file's GFID) and upcalls (cache invalidation, GlusterFS >= 3.13).
    "glfs_h_lookupat": (c_void_p, [_glfs_p, c_void_p, c_char_p, POINTER(Stat), c_int]),
    "glfs_h_extract_handle": (c_int, [c_void_p, c_void_p, c_int]),
    "glfs_h_close": (c_int, [c_void_p]),
    "glfs_h_create_from_handle": (c_void_p, [_glfs_p, c_char_p, c_int, POINTER(Stat)]),
    "glfs_h_getxattrs": (c_int, [_glfs_p, c_void_p, c_char_p, c_void_p, c_size_t]),
    "glfs_upcall_register": (c_int, [_glfs_p, c_uint32, c_void_p, c_void_p]),
    "glfs_upcall_unregister": (c_int, [_glfs_p, c_uint32]),
    "glfs_upcall_get_reason": (c_int, [c_void_p]),
    "glfs_upcall_get_event": (c_void_p, [c_void_p]),
    "glfs_upcall_inode_get_object": (c_void_p, [c_void_p]),
    "glfs_upcall_inode_get_stat": (POINTER(Stat), [c_void_p]),
    "glfs_upcall_inode_get_flags": (c_int, [c_void_p]),
    "glfs_free": (None, [c_void_p]),
    "glfs_mkdir": (c_int, [_glfs_p, c_char_p, c_uint]),
    # The group directory (group/shared.py): a lock owner per fd, directory listings.
    "glfs_fd_set_lkowner": (c_int, [_glfd_p, c_void_p, c_int]),
    "glfs_opendir": (_glfd_p, [_glfs_p, c_char_p]),
    "glfs_readdir": (c_void_p, [_glfd_p]),
    "glfs_closedir": (c_int, [_glfd_p]),
}

#: glfs_upcall_register's event bit and glfs_upcall_get_reason's value for an inode
#: invalidation (glfs.h: GLFS_EVENT_INODE_INVALIDATE, GLFS_UPCALL_INODE_INVALIDATE).
GLFS_EVENT_INODE_INVALIDATE = 0x1
GLFS_UPCALL_INODE_INVALIDATE = 1
#: Bytes of a GFID (GFAPI_HANDLE_LENGTH).
GFID_LENGTH = 16
#: ``void (*glfs_upcall_cbk)(struct glfs_upcall *up_arg, void *data)``: called on one of
#: gfapi's threads; the callee owns ``up_arg`` and frees it with glfs_free.
UPCALL_CBK = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
# glfs_new, glfs_init and glfs_fini of different clients must not overlap: a test process
# hung for good with two glfs_fini and one glfs_new all waiting in libglusterfs's mem-pool
# lock (GlusterFS 10.3). Serialising them costs only open/close latency, never I/O.
_lifecycle = threading.Lock()


def lib() -> ctypes.CDLL:
    """libgfapi with prototypes set; loaded once, on first use."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            names = ["libgfapi.so.0"]
            found = ctypes.util.find_library("gfapi")
            if found and found not in names:
                names.append(found)
            last: OSError | None = None
            for name in names:
                try:
                    handle = ctypes.CDLL(name, use_errno=True)
                    break
                except OSError as e:
                    last = e
            else:
                raise GfapiUnavailable(
                    _errno.ENOSYS,
                    "libgfapi.so.0 not found: install GlusterFS's client library "
                    f"(Debian: apt-get install libgfapi0 / glusterfs-client) [{last}]",
                )
            for fname, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(handle, fname)
                fn.restype = restype
                fn.argtypes = argtypes
            _lib = handle
    return _lib


#: The asynchronous calls whose addresses :func:`async_functions` gives (Gluster >= 6 forms:
#: the callback gets pre/post stat arguments; ``_aio.c`` declares them).
ASYNC_FUNCTIONS = ("glfs_pread_async", "glfs_pwrite_async", "glfs_fsync_async",
                   "glfs_fdatasync_async")
_async_addresses: dict[str, int] | None = None


def async_functions() -> dict[str, int]:
    """Addresses of libgfapi's asynchronous read, write and sync calls (their default symbol
    versions, as ctypes binds them), for ``_aio.c`` to call with its C callback."""
    global _async_addresses
    if _async_addresses is None:
        handle = lib()
        found: dict[str, int] = {}
        for name in ASYNC_FUNCTIONS:
            address = ctypes.cast(getattr(handle, name), c_void_p).value
            if not address:
                raise GfapiUnavailable(_errno.ENOSYS, f"{name} not found in libgfapi")
            found[name] = address
        _async_addresses = found
    return _async_addresses


def available() -> bool:
    try:
        lib()
    except GfapiUnavailable:
        return False
    return True


def _raise(what: str, path: str | None) -> GfapiError:
    err = ctypes.get_errno() or _errno.EIO
    return GfapiError(err, f"{what}: {os.strerror(err)}", path)


def _enc(path: str) -> bytes:
    return os.fsencode(path)


# -- typed wrappers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatResult:
    size: int
    mode: int
    blocks: int
    blksize: int
    mtime_ns: int
    ino: int

    @classmethod
    def from_c(cls, st: Stat) -> StatResult:
        return cls(
            size=st.st_size,
            mode=st.st_mode,
            blocks=st.st_blocks,
            blksize=st.st_blksize,
            mtime_ns=st.st_mtim.tv_sec * 1_000_000_000 + st.st_mtim.tv_nsec,
            ino=st.st_ino,
        )


class Volume:
    """One Gluster client (``glfs_t``): a graph connected to one volume."""

    def __init__(self, volume: str) -> None:
        self.volume = volume
        with _lifecycle:
            self._fs: int | None = lib().glfs_new(volume.encode())
        if not self._fs:
            raise _raise("glfs_new", volume)
        self._initialised = False
        self._upcall_cbk: Any = None

    @property
    def handle(self) -> int:
        if not self._fs:
            raise GfapiError(_errno.EBADF, "Gluster client is finished", self.volume)
        return self._fs

    def set_volfile_server(self, host: str, port: int = 24007, transport: str = "tcp") -> None:
        """Add a volfile server; call once per server (they are tried in order)."""
        if lib().glfs_set_volfile_server(self.handle, transport.encode(), host.encode(), port):
            raise _raise(f"glfs_set_volfile_server {transport}:{host}:{port}", self.volume)

    def set_logging(self, log_file: str | None, level: int = LOG_WARNING) -> None:
        """``log_file`` None: libgfapi's default file; ``"/dev/null"`` silences it."""
        arg = _enc(log_file) if log_file is not None else None
        if lib().glfs_set_logging(self.handle, arg, level):
            raise _raise(f"glfs_set_logging {log_file}", self.volume)

    def set_xlator_option(self, xlator: str, key: str, value: str) -> None:
        """An option for the translators whose names match ``xlator`` (a glob, e.g.
        ``*-io-threads``) in this client's graph only; call before :meth:`init`."""
        if lib().glfs_set_xlator_option(self.handle, xlator.encode(), key.encode(),
                                        value.encode()):
            raise _raise(f"glfs_set_xlator_option {xlator} {key}={value}", self.volume)

    def init(self) -> None:
        """Fetch the volfile and connect (blocks, seconds if servers are down)."""
        with _lifecycle:
            failed = lib().glfs_init(self.handle) != 0
            if failed:
                err = _raise("glfs_init", self.volume)  # read errno before anything else
        if failed:
            raise err
        self._initialised = True

    def fini(self) -> None:
        self.unregister_upcalls()
        fs, self._fs = self._fs, None
        if fs:
            with _lifecycle:
                lib().glfs_fini(fs)

    def open(self, path: str, flags: int = os.O_RDWR) -> File:
        fd = lib().glfs_open(self.handle, _enc(path), flags)
        if not fd:
            raise _raise("glfs_open", path)
        return File(self, fd, path)

    def creat(self, path: str, flags: int = os.O_RDWR, mode: int = 0o600) -> File:
        fd = lib().glfs_creat(self.handle, _enc(path), flags, mode)
        if not fd:
            raise _raise("glfs_creat", path)
        return File(self, fd, path)

    def stat(self, path: str) -> StatResult:
        st = Stat()
        if lib().glfs_stat(self.handle, _enc(path), ctypes.byref(st)):
            raise _raise("glfs_stat", path)
        return StatResult.from_c(st)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except GfapiError as e:
            if e.errno == _errno.ENOENT:
                return False
            raise
        return True

    def unlink(self, path: str) -> None:
        if lib().glfs_unlink(self.handle, _enc(path)):
            raise _raise("glfs_unlink", path)

    def mkdir(self, path: str, mode: int = 0o755, *, exist_ok: bool = False) -> None:
        if lib().glfs_mkdir(self.handle, _enc(path), mode):
            err = ctypes.get_errno()
            if exist_ok and err == _errno.EEXIST:
                return
            raise _raise("glfs_mkdir", path)

    def gfid(self, path: str) -> bytes:
        """The GFID (16 bytes) of the object at ``path``, as upcalls name it."""
        st = Stat()
        obj = lib().glfs_h_lookupat(self.handle, None, _enc(path), ctypes.byref(st), 1)
        if not obj:
            raise _raise("glfs_h_lookupat", path)
        try:
            return _extract_gfid(obj, path)
        finally:
            lib().glfs_h_close(obj)

    def gfid_path(self, gfid: bytes) -> str | None:
        """The path of the inode with this GFID (a lookup by GFID at the bricks, then their
        ``glusterfs.gfidtopath``, made from ``storage.gfid2path``: a shard is
        ``/.shard/BASE-GFID.N``). None when the bricks say there is no such inode (ENOENT,
        ESTALE); other failures raise GfapiError."""
        st = Stat()
        obj = lib().glfs_h_create_from_handle(self.handle, gfid, len(gfid), ctypes.byref(st))
        if not obj:
            if ctypes.get_errno() in (_errno.ENOENT, _errno.ESTALE):
                return None
            raise _raise("glfs_h_create_from_handle", gfid.hex())
        try:
            buf = ctypes.create_string_buffer(4096)
            n = lib().glfs_h_getxattrs(self.handle, obj, b"glusterfs.gfidtopath", buf, 4096)
            if n < 0:
                if ctypes.get_errno() in (_errno.ENOENT, _errno.ESTALE):
                    return None
                raise _raise("glfs_h_getxattrs glusterfs.gfidtopath", gfid.hex())
            return buf.raw[:n].rstrip(b"\0").decode("utf-8", "replace")
        finally:
            lib().glfs_h_close(obj)

    def register_upcalls(self, on_invalidate: Callable[[bytes, int, int], None]) -> bool:
        """Have ``on_invalidate(gfid, st_mode, flags)`` called (on a gfapi thread) for every
        inode invalidation the bricks send this client (``features.cache-invalidation`` must
        be on for them to send any; registering succeeds either way). ``st_mode`` is 0 when
        the upcall carries no usable stat; ``flags`` says what changed (``UP_*``). Once per
        client; False if gfapi refused it."""
        if self._upcall_cbk is not None:
            return True

        def dispatch(up: int | None, _data: int | None) -> None:
            if not up:
                return
            try:
                if lib().glfs_upcall_get_reason(up) != GLFS_UPCALL_INODE_INVALIDATE:
                    return
                event = lib().glfs_upcall_get_event(up)
                obj = lib().glfs_upcall_inode_get_object(event) if event else None
                if not obj:
                    return
                st = lib().glfs_upcall_inode_get_stat(event)
                mode = st.contents.st_mode if st else 0
                flags = lib().glfs_upcall_inode_get_flags(event)
                on_invalidate(_extract_gfid(obj, self.volume), mode, flags)
            except Exception:  # noqa: BLE001 - nothing may escape into gfapi's thread
                pass
            finally:
                lib().glfs_free(up)

        cbk = UPCALL_CBK(dispatch)
        ret = lib().glfs_upcall_register(
            self.handle, GLFS_EVENT_INODE_INVALIDATE, ctypes.cast(cbk, c_void_p), None
        )
        if ret < 0 or not ret & GLFS_EVENT_INODE_INVALIDATE:
            return False
        self._upcall_cbk = cbk  # kept alive for as long as gfapi may call it
        # A callback into an interpreter that is finalizing can crash the process: stop them
        # at exit (clients are normally never finished, see store.IDLE_LINGER_SECONDS).
        atexit.register(self.unregister_upcalls)
        return True

    def unregister_upcalls(self) -> None:
        if self._upcall_cbk is not None and self._fs:
            lib().glfs_upcall_unregister(self._fs, GLFS_EVENT_INODE_INVALIDATE)

    def listdir(self, path: str) -> list[str]:
        """The names in the directory at ``path`` (without "." and "..")."""
        dfd = lib().glfs_opendir(self.handle, _enc(path))
        if not dfd:
            raise _raise("glfs_opendir", path)
        names: list[str] = []
        try:
            while True:
                ctypes.set_errno(0)
                ent = lib().glfs_readdir(dfd)
                if not ent:
                    if ctypes.get_errno():
                        raise _raise("glfs_readdir", path)
                    return names
                name = os.fsdecode(ctypes.cast(ent, POINTER(Dirent)).contents.d_name)
                if name not in (".", ".."):
                    names.append(name)
        finally:
            lib().glfs_closedir(dfd)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        parts = [p for p in path.split("/") if p]
        cur = ""
        for p in parts:
            cur += "/" + p
            self.mkdir(cur, mode, exist_ok=True)


def _extract_gfid(obj: int, path: str) -> bytes:
    buf = ctypes.create_string_buffer(GFID_LENGTH)
    n = lib().glfs_h_extract_handle(obj, buf, GFID_LENGTH)
    if n < 0:
        raise _raise("glfs_h_extract_handle", path)
    return buf.raw[:n]


class File:
    """An open Gluster file (``glfs_fd_t``). Positional calls only, so it is thread-safe."""

    def __init__(self, volume: Volume, fd: int, path: str) -> None:
        self.volume = volume
        self._fd: int | None = fd
        self.path = path

    @property
    def handle(self) -> int:
        fd = self._fd
        if not fd:
            raise GfapiError(_errno.EBADF, "file is closed", self.path)
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd and lib().glfs_close(fd):
            raise _raise("glfs_close", self.path)

    def pread_into(self, buf: Buffer, offset: int) -> int:
        """One glfs_pread into ``buf`` (a writable buffer); returns the byte count (0 at EOF)."""
        held = _hold(buf)
        if held is not None:
            holder, n = held
            got = lib().glfs_pread(self.handle, holder, n, offset, 0, None)
            del holder, held  # (the buffer may be resized again)
        else:
            with pinned(buf, writable=True) as (addr, n):
                got = lib().glfs_pread(self.handle, addr, n, offset, 0, None)
        if got < 0:
            raise _raise(f"glfs_pread {n} bytes at offset {offset}", self.path)
        return got

    def pwrite(self, data: Buffer, offset: int) -> int:
        """One glfs_pwrite of ``data`` (any buffer, not copied); returns bytes written."""
        if isinstance(data, bytes):
            n = len(data)
            got = lib().glfs_pwrite(self.handle, data, n, offset, 0, None, None)
        elif (held := _hold(data)) is not None:
            holder, n = held
            got = lib().glfs_pwrite(self.handle, holder, n, offset, 0, None, None)
            del holder, held
        else:
            with pinned(data) as (addr, n):
                got = lib().glfs_pwrite(self.handle, addr, n, offset, 0, None, None)
        if got < 0:
            raise _raise(f"glfs_pwrite {n} bytes at offset {offset}", self.path)
        return got

    def _iovecs(self, stack: list[Any], held: list[Any], buffers: Sequence[Buffer],
                writable: bool) -> Any:
        """An iovec array over ``buffers``, each pinned: cheaply (:func:`_hold`, kept in
        ``held``) where it can, else by :func:`pinned` (entered, kept in ``stack``)."""
        iov = (Iovec * len(buffers))()
        for i, b in enumerate(buffers):
            h = _hold(b)
            if h is not None:
                held.append(h[0])
                addr, n = ctypes.addressof(h[0]), h[1]
            else:
                cm = pinned(b, writable=writable)
                addr, n = cm.__enter__()
                stack.append(cm)
            iov[i].iov_base = addr
            iov[i].iov_len = n
        return iov

    def preadv_into(self, buffers: Sequence[Buffer], offset: int) -> int:
        stack: list[Any] = []
        held: list[Any] = []
        try:
            iov = self._iovecs(stack, held, buffers, True)
            got = lib().glfs_preadv(self.handle, iov, len(buffers), offset, 0)
        finally:
            for cm in reversed(stack):
                cm.__exit__(None, None, None)
            del held[:]
        if got < 0:
            raise _raise(f"glfs_preadv at offset {offset}", self.path)
        return got

    def pwritev(self, buffers: Sequence[Buffer], offset: int) -> int:
        stack: list[Any] = []
        held: list[Any] = []
        try:
            iov = self._iovecs(stack, held, buffers, False)
            got = lib().glfs_pwritev(self.handle, iov, len(buffers), offset, 0)
        finally:
            for cm in reversed(stack):
                cm.__exit__(None, None, None)
            del held[:]
        if got < 0:
            raise _raise(f"glfs_pwritev at offset {offset}", self.path)
        return got

    def fdatasync(self) -> None:
        if lib().glfs_fdatasync(self.handle, None, None):
            raise _raise("glfs_fdatasync", self.path)

    def fsync(self) -> None:
        if lib().glfs_fsync(self.handle, None, None):
            raise _raise("glfs_fsync", self.path)

    def ftruncate(self, length: int) -> None:
        if lib().glfs_ftruncate(self.handle, length, None, None):
            raise _raise(f"glfs_ftruncate {length}", self.path)

    def fstat(self) -> StatResult:
        st = Stat()
        if lib().glfs_fstat(self.handle, ctypes.byref(st)):
            raise _raise("glfs_fstat", self.path)
        return StatResult.from_c(st)

    def discard(self, offset: int, length: int) -> None:
        if lib().glfs_discard(self.handle, offset, length):
            raise _raise(f"glfs_discard {length} bytes at offset {offset}", self.path)

    def zerofill(self, offset: int, length: int) -> None:
        if lib().glfs_zerofill(self.handle, offset, length):
            raise _raise(f"glfs_zerofill {length} bytes at offset {offset}", self.path)

    def fallocate(self, offset: int, length: int, *, keep_size: bool = False) -> None:
        if lib().glfs_fallocate(self.handle, 1 if keep_size else 0, offset, length):
            raise _raise(f"glfs_fallocate {length} bytes at offset {offset}", self.path)

    def lseek(self, offset: int, whence: int) -> int:
        pos = lib().glfs_lseek(self.handle, offset, whence)
        if pos < 0:
            raise _raise(f"glfs_lseek {offset} whence={whence}", self.path)
        return pos

    def copy_file_range(self, offset_in: int, dst: File, offset_out: int, length: int) -> int:
        """Server-side copy from this file to ``dst``; returns bytes copied (0 at EOF).

        fdatasync the source first: write-behind does not order the copy after writes it
        still caches (seen on GlusterFS 10.3: the copy saw an empty file and returned 0).
        Do NOT use it on replicated volumes: GlusterFS 10.3 applied the copy on one brick of
        a replica-3 set only and reported the full count; the other replicas kept zeroes,
        so reads returned the copy or zeroes depending on the brick chosen."""
        off_in = c_int64(offset_in)
        off_out = c_int64(offset_out)
        got = lib().glfs_copy_file_range(
            self.handle,
            ctypes.byref(off_in),
            dst.handle,
            ctypes.byref(off_out),
            length,
            0,
            None,
            None,
            None,
        )
        if got < 0:
            raise _raise(f"glfs_copy_file_range {length} bytes", self.path)
        return got

    def set_lkowner(self, owner: bytes) -> None:
        """The lock owner of every call on this fd (locks, and the flush of glfs_close, which
        drops the locks of its owner on the file). libgfapi keeps it per thread after each
        call that sets it, so give every fd of a locked file its own owner."""
        if lib().glfs_fd_set_lkowner(self.handle, owner, len(owner)):
            raise _raise("glfs_fd_set_lkowner", self.path)

    def posix_lock(self, cmd: int, lock: Flock) -> Flock:
        """fcntl-style lock: ``cmd`` is fcntl.F_SETLK/F_SETLKW/F_GETLK."""
        if lib().glfs_posix_lock(self.handle, cmd, ctypes.byref(lock)):
            raise _raise(f"glfs_posix_lock cmd={cmd}", self.path)
        return lock

    def file_lock(self, cmd: int, lock: Flock, mode: int = GLFS_LK_ADVISORY) -> Flock:
        if lib().glfs_file_lock(self.handle, cmd, ctypes.byref(lock), mode):
            raise _raise(f"glfs_file_lock cmd={cmd}", self.path)
        return lock
