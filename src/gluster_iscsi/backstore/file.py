"""A store on a regular file or a block device, with positional I/O only (thread-safe).

Reads go straight into the caller's buffer (``os.preadv``); writes use ``os.pwrite``. Thin
provisioning maps onto the file system: discard punches a hole, write-zeroes uses
FALLOC_FL_ZERO_RANGE (or punch + re-allocate, or plain writes), extents come from
SEEK_DATA/SEEK_HOLE. Block devices use BLKGETSIZE64, BLKDISCARD and BLKZEROOUT instead.

Capabilities start from what the file system is known to support and are corrected the
first time a call says otherwise (EOPNOTSUPP), so what the SCSI layer advertises stays true:
a store that promised discard-zeroes falls back to writing zeroes rather than breaking it.
The first punch/zero-range that claims success is checked by reading a sample back: on the
GlusterFS FUSE mount here, FALLOC_FL_ZERO_RANGE answered 0 and left the data in place.
SEEK_DATA is probed at open (sharded Gluster through FUSE answers ENOTSUP).

Every call counts itself in and out (under the lock io_uring lending takes, ~100 ns), so
``close()`` can wait for the calls still running on worker threads before it closes the
descriptor: closed under them, its number could be reused by another open or accept, and a
late pwrite would land in another file or socket. A call that starts after ``close()`` fails
with EBADF. A call that does not come back within :data:`CLOSE_TIMEOUT` (a hung FUSE mount)
gets the descriptor leaked rather than closed, with an ERROR line.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import replace

from . import _linux
from ._util import byte_view, check_range, merge_extents
from .base import BackingStore, BackingStoreError, Buffer, Capabilities, Extent, T

_NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY)
# Caps each bounce buffer used for unaligned O_DIRECT I/O.
_BOUNCE_MAX = 1 << 20
#: How long close() waits for calls still running on the store before leaking the fd.
CLOSE_TIMEOUT = 30.0

log = logging.getLogger(__name__)


class FileStore(BackingStore):
    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        create_size: int | None = None,
        o_direct: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.name = self.path
        self.read_only = read_only
        self.o_direct = o_direct
        self._fd = -1
        self._lock = threading.Lock()  # guards capability updates, calls in flight and close
        self._calls = 0  # calls running now (under _lock)
        self._idle = threading.Condition(self._lock)  # close() waits on it for _calls == 0
        self.created = False  # True if this open created the file (create_size)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if o_direct:
            flags |= os.O_DIRECT
        try:
            if create_size is not None and not read_only:
                try:
                    fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    fd = os.open(self.path, flags)
                else:
                    self.created = True
                    try:
                        os.ftruncate(fd, create_size)
                    except OSError:
                        os.close(fd)
                        os.unlink(self.path)
                        raise
            else:
                fd = os.open(self.path, flags)
        except OSError as e:
            raise self._error(e, "open") from e
        self._fd = fd
        st = os.fstat(fd)
        self.is_block = stat.S_ISBLK(st.st_mode)
        if not self.is_block and not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._fd = -1
            raise BackingStoreError(errno.EINVAL, "not a regular file or block device", self.path)
        self._align = 512
        self.fs_type: str | None = None
        if self.is_block:
            try:
                raw = fcntl.ioctl(fd, _linux.BLKSSZGET, b"\0" * 4)
                self._align = struct.unpack("=i", raw)[0] or 512
            except OSError:
                pass
            discard = _linux.blk_discard_max(st.st_rdev) > 0
            # Whether a discarded block reads back as zeroes is device-specific: don't promise.
            self.capabilities = Capabilities(
                discard=discard,
                discard_zeroes=False,
                write_zeroes=True,
                extents=False,
                flush=True,
                resize=False,
            )
            self._punch: bool | None = None
            self._zero_range: bool | None = None
        else:
            self.fs_type = _linux.fs_type(fd)
            punch_known = self.fs_type is not None
            self.capabilities = Capabilities(
                discard=punch_known,
                discard_zeroes=punch_known,
                write_zeroes=True,
                extents=self._probe_seek(fd),
                flush=True,
                resize=True,
            )
            # None: not tried yet; the first call decides (and is verified by reading back).
            self._punch = None if punch_known else False
            # tmpfs has no ZERO_RANGE. Through FUSE it cannot be trusted: GlusterFS's FUSE
            # bridge was seen to answer success without zeroing anything.
            self._zero_range = False if self.fs_type in ("tmpfs", "fuse") else None
            if self.fs_type == "tmpfs" and not o_direct:
                # Memory: a call never waits for a device, and a 4 KiB pread costs a few
                # microseconds, far less than handing it to a worker thread and back.
                self.blocking = False
            # FUSE has no non-blocking reads or writes, so io_uring hands every request on a
            # FUSE file to its kernel workers and io_uring_enter never waits for the volume.
            # Local file systems and block devices are tried inline first, and may wait there
            # (readahead, metadata): they are not lent. O_DIRECT would need aligned buffers.
            self.lends_fd = self.fs_type == "fuse" and not o_direct

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _probe_seek(fd: int) -> bool:
        """Whether SEEK_DATA works here (read-only probe): sharded Gluster via FUSE says
        ENOTSUP, and then the store reports no extents instead of failing GET LBA STATUS."""
        try:
            os.lseek(fd, 0, os.SEEK_DATA)
        except OSError as e:
            return e.errno == errno.ENXIO  # ENXIO: no data at all, but seeking works
        return True

    def _sample(self, offset: int, length: int) -> bytes | None:
        """The first and last 4 KiB (inside the file) of a range; None if none is inside."""
        try:
            end = min(offset + length, self.size)
            if end <= offset:
                return None
            n = min(end - offset, 4096)
            return bytes(self.read(offset, n) + self.read(end - n, n))
        except BackingStoreError:
            return None

    @staticmethod
    def _verdict(before: bytes | None, after: bytes | None) -> bool | None:
        """Did an operation that claimed success really zero the range? None: cannot tell
        (nothing inside the file, or it read zeroes already), so decide on a later call."""
        if after is None:
            return None
        if after.count(0) != len(after):
            return False
        if before is None or before.count(0) == len(before):
            return None
        return True

    def _error(self, e: OSError, what: str) -> BackingStoreError:
        err = e.errno or errno.EIO
        return BackingStoreError(err, f"{what}: {e.strerror or os.strerror(err)}", self.path)

    def _fd_or_raise(self) -> int:
        fd = self._fd
        if fd < 0:
            raise BackingStoreError(errno.EBADF, "store is closed", self.path)
        return fd

    def _writable(self) -> int:
        if self.read_only:
            raise BackingStoreError(errno.EROFS, "store is read-only", self.path)
        return self._fd_or_raise()

    # acquire()/release() rather than ``with``: this runs twice per read and write, and the
    # context-manager protocol cost compiled code ~1k instructions a command (corepath).
    def _enter(self) -> None:
        """Count a call in; after close() it fails (EBADF) instead."""
        lock = self._lock
        lock.acquire()
        open_ = self._fd >= 0
        if open_:
            self._calls += 1
        lock.release()
        if not open_:
            raise BackingStoreError(errno.EBADF, "store is closed", self.path)

    def _leave(self) -> None:
        lock = self._lock
        lock.acquire()
        calls = self._calls - 1
        self._calls = calls
        if calls == 0 and self._fd < 0:
            self._idle.notify_all()  # close() is waiting
        lock.release()

    def _aligned(self, offset: int, mv: memoryview) -> bool:
        a = self._align
        if offset % a or len(mv) % a:
            return False
        if mv.readonly:
            return False
        addr = ctypes.addressof((ctypes.c_char * len(mv)).from_buffer(mv)) if len(mv) else 0
        return addr % a == 0

    def _downgrade(self, **changes: bool) -> None:
        with self._lock:
            self.capabilities = replace(self.capabilities, **changes)

    # -- the contract -------------------------------------------------------------------------
    # Each call counts itself in and out (see the module docstring); the work is in the
    # underscored twin.

    def read_into(self, offset: int, buf: memoryview) -> None:
        if not self.blocking:  # inline: on the event loop, which also closes it (see close)
            self._read_into(offset, buf)
            return
        self._enter()
        try:
            self._read_into(offset, buf)
        finally:
            self._leave()

    def write(self, offset: int, data: Buffer) -> None:
        if not self.blocking:  # inline: on the event loop, which also closes it (see close)
            self._write(offset, data)
            return
        self._enter()
        try:
            self._write(offset, data)
        finally:
            self._leave()

    def writev(self, offset: int, buffers: list[Buffer]) -> None:
        self._enter()
        try:
            self._writev(offset, buffers)
        finally:
            self._leave()

    def flush(self) -> None:
        self._enter()
        try:
            self._flush()
        finally:
            self._leave()

    def discard(self, offset: int, length: int) -> None:
        self._enter()
        try:
            self._discard(offset, length)
        finally:
            self._leave()

    def write_zeroes(self, offset: int, length: int) -> None:
        self._enter()
        try:
            self._write_zeroes(offset, length)
        finally:
            self._leave()

    def allocate(self, offset: int, length: int) -> None:
        self._enter()
        try:
            self._allocate(offset, length)
        finally:
            self._leave()

    def extents(self, offset: int, length: int) -> list[Extent]:
        self._enter()
        try:
            return self._extents(offset, length)
        finally:
            self._leave()

    def resize(self, new_size: int, *, force: bool = False) -> None:
        """Set the size; shrinking (which destroys data) needs ``force=True``."""
        self._enter()
        try:
            self._resize(new_size, force)
        finally:
            self._leave()

    @property
    def size(self) -> int:
        self._enter()
        try:
            return self._size()
        finally:
            self._leave()

    def _size(self) -> int:
        fd = self._fd_or_raise()
        try:
            if self.is_block:
                return _linux.blk_size(fd)
            return os.fstat(fd).st_size
        except OSError as e:
            raise self._error(e, "size") from e

    def _read_into(self, offset: int, buf: memoryview) -> None:
        fd = self._fd_or_raise()
        dst = byte_view(buf)
        check_range(offset, len(dst), self.path)
        if self.o_direct and not self._aligned(offset, dst):
            self._bounce_read(fd, offset, dst)
            return
        total = len(dst)
        done = 0
        try:
            while done < total:
                n = os.preadv(fd, [dst[done:] if done else dst], offset + done)
                if n == 0:
                    raise BackingStoreError(
                        errno.EIO,
                        f"short read: {done} of {total} bytes at offset {offset} (end of file)",
                        self.path,
                    )
                done += n
        except BackingStoreError:
            raise
        except OSError as e:
            raise self._error(e, f"read {total} bytes at offset {offset}") from e

    def _write(self, offset: int, data: Buffer) -> None:
        fd = self._writable()
        src = byte_view(data)
        check_range(offset, len(src), self.path)
        if self.o_direct and not self._aligned(offset, src):
            self._bounce_write(fd, offset, src)
            return
        total = len(src)
        done = 0
        try:
            while done < total:
                n = os.pwrite(fd, src[done:], offset + done)
                if n == 0:
                    raise BackingStoreError(
                        errno.EIO,
                        f"short write: {done} of {total} bytes at offset {offset}",
                        self.path,
                    )
                done += n
        except BackingStoreError:
            raise
        except OSError as e:
            raise self._error(e, f"write {total} bytes at offset {offset}") from e

    def _writev(self, offset: int, buffers: list[Buffer]) -> None:
        """Write several buffers back to back at ``offset`` in one pwritev where possible."""
        views = [byte_view(b) for b in buffers]
        if self.o_direct:
            for v in views:
                self.write(offset, v)
                offset += len(v)
            return
        fd = self._writable()
        total = sum(len(v) for v in views)
        done = 0
        try:
            while done < total:
                # Skip the buffers (and part of one) already written.
                skip = done
                rest = []
                for v in views:
                    if skip >= len(v):
                        skip -= len(v)
                        continue
                    rest.append(v[skip:])
                    skip = 0
                n = os.pwritev(fd, rest, offset + done)
                if n == 0:
                    raise BackingStoreError(
                        errno.EIO,
                        f"short write: {done} of {total} bytes at offset {offset}",
                        self.path,
                    )
                done += n
        except BackingStoreError:
            raise
        except OSError as e:
            raise self._error(e, f"write {total} bytes at offset {offset}") from e

    def _flush(self) -> None:
        fd = self._fd_or_raise()
        try:
            os.fdatasync(fd)
        except OSError as e:
            if self.read_only and e.errno == errno.EBADF:
                return
            raise self._error(e, "fdatasync") from e

    def _discard(self, offset: int, length: int) -> None:
        fd = self._writable()
        check_range(offset, length, self.path)
        if length == 0:
            return
        if self.is_block:
            if not self.capabilities.discard:
                raise BackingStoreError(errno.EOPNOTSUPP, "device has no discard", self.path)
            try:
                _linux.blk_range_ioctl(fd, _linux.BLKDISCARD, offset, length)
            except OSError as e:
                raise self._error(e, f"BLKDISCARD {length} bytes at offset {offset}") from e
            return
        if self._punch is False:
            if not self.capabilities.discard:
                raise BackingStoreError(errno.EOPNOTSUPP, "discard not supported", self.path)
            # Discard was advertised (zeroing) before punching turned out unsupported.
            BackingStore.write_zeroes(self, offset, length)
            return
        before = None if self._punch else self._sample(offset, length)
        try:
            _linux.fallocate(
                fd, _linux.FALLOC_FL_PUNCH_HOLE | _linux.FALLOC_FL_KEEP_SIZE, offset, length
            )
        except OSError as e:
            if e.errno not in _NOT_SUPPORTED:
                raise self._error(e, f"punch hole {length} bytes at offset {offset}") from e
            ok: bool | None = False
        else:
            ok = True if self._punch else self._verdict(before, self._sample(offset, length))
        if ok is None:  # nothing to check (read zeroes already): trust it, verify next time
            return
        if ok:
            self._punch = True
            return
        self._punch = False
        BackingStore.write_zeroes(self, offset, length)
        self._downgrade(discard=False, discard_zeroes=False)

    def _write_zeroes(self, offset: int, length: int) -> None:
        fd = self._writable()
        check_range(offset, length, self.path)
        if length == 0:
            return
        if self.is_block:
            try:
                _linux.blk_range_ioctl(fd, _linux.BLKZEROOUT, offset, length)
                return
            except OSError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise self._error(e, f"BLKZEROOUT {length} bytes at offset {offset}") from e
            BackingStore.write_zeroes(self, offset, length)
            return
        if self._zero_range is not False:
            before = None if self._zero_range else self._sample(offset, length)
            try:
                _linux.fallocate(
                    fd, _linux.FALLOC_FL_ZERO_RANGE | _linux.FALLOC_FL_KEEP_SIZE, offset, length
                )
            except OSError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise self._error(e, f"zero range {length} bytes at offset {offset}") from e
                self._zero_range = False
            else:
                zeroed = (
                    True
                    if self._zero_range
                    else self._verdict(before, self._sample(offset, length))
                )
                if zeroed:
                    self._zero_range = True
                    return
                if zeroed is False:
                    self._zero_range = False  # claimed success without zeroing: never again
                # Unverifiable (the range read zeroes already): make sure by punching.
        if self._punch is not False:
            before = None if self._punch else self._sample(offset, length)
            try:
                _linux.fallocate(
                    fd, _linux.FALLOC_FL_PUNCH_HOLE | _linux.FALLOC_FL_KEEP_SIZE, offset, length
                )
            except OSError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise self._error(e, f"punch hole {length} bytes at offset {offset}") from e
                punched: bool | None = False
            else:
                punched = (
                    True if self._punch else self._verdict(before, self._sample(offset, length))
                )
            if punched is False:
                self._punch = False
                self._downgrade(discard=False, discard_zeroes=False)
            else:
                if punched:
                    self._punch = True
                # Zeroed blocks should stay allocated (WRITE SAME without UNMAP): re-allocate.
                try:
                    _linux.fallocate(fd, _linux.FALLOC_FL_KEEP_SIZE, offset, length)
                except OSError as e:
                    if e.errno not in _NOT_SUPPORTED:
                        raise self._error(e, f"allocate {length} bytes at offset {offset}") from e
                return
        BackingStore.write_zeroes(self, offset, length)

    def _allocate(self, offset: int, length: int) -> None:
        """Reserve blocks for a range (fallocate mode 0): later writes cannot hit ENOSPC."""
        fd = self._writable()
        check_range(offset, length, self.path)
        if length == 0 or self.is_block:
            return
        try:
            _linux.fallocate(fd, 0, offset, length)
        except OSError as e:
            raise self._error(e, f"fallocate {length} bytes at offset {offset}") from e

    def _extents(self, offset: int, length: int) -> list[Extent]:
        fd = self._fd_or_raise()
        check_range(offset, length, self.path)
        end = offset + length
        if self.is_block or not self.capabilities.extents:
            return [Extent(offset, length, True)]
        size = self.size
        limit = min(end, size)
        out: list[Extent] = []
        pos = offset
        try:
            while pos < limit:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:  # ENXIO: no data at or after pos
                        raise
                    data = limit
                data = min(data, limit)
                if data > pos:
                    out.append(Extent(pos, data - pos, False))
                if data >= limit:
                    break
                hole = min(os.lseek(fd, data, os.SEEK_HOLE), limit)
                out.append(Extent(data, hole - data, True))
                pos = hole
        except OSError as e:
            raise self._error(e, f"SEEK_DATA/SEEK_HOLE at offset {pos}") from e
        start_tail = max(offset, limit)
        if end > start_tail:
            out.append(Extent(start_tail, end - start_tail, False))  # beyond end of file
        return merge_extents(out)

    def _resize(self, new_size: int, force: bool) -> None:
        fd = self._writable()
        if new_size < 0:
            raise BackingStoreError(errno.EINVAL, f"negative size {new_size}", self.path)
        if self.is_block:
            if new_size == self.size:
                return
            raise BackingStoreError(errno.EOPNOTSUPP, "cannot resize a block device", self.path)
        current = self.size
        if new_size < current and not force:
            raise BackingStoreError(
                errno.EINVAL,
                f"refusing to shrink from {current} to {new_size} without force",
                self.path,
            )
        try:
            os.ftruncate(fd, new_size)
        except OSError as e:
            raise self._error(e, f"ftruncate to {new_size}") from e

    def with_fd(self, use: Callable[[int], T]) -> T | None:
        # Under the lock close() takes: the descriptor cannot be closed, and its number taken
        # by another open, between here and the kernel's taking its own reference in ``use``.
        if not self.lends_fd:
            return None
        with self._lock:
            fd = self._fd
            return use(fd) if fd >= 0 else None

    def close(self, timeout: float | None = None) -> None:
        """Close after the calls still running finish (blocking: call it off the event loop);
        calls that start now fail with EBADF. One still running after ``timeout`` seconds
        (default :data:`CLOSE_TIMEOUT`) may still use the descriptor: it is leaked.

        An inline store (not :attr:`blocking`: tmpfs) does not count its reads and writes:
        the server calls it only on its event loop, and closes it there too
        (``control.reconcile.close_lu_off_loop``, ``Daemon.stop``), so none is running."""
        limit = CLOSE_TIMEOUT if timeout is None else timeout
        with self._lock:
            fd, self._fd = self._fd, -1
            idle = fd < 0 or self._idle.wait_for(self._no_calls, limit)
            running = self._calls
        if fd < 0:
            return
        if not idle:
            log.error(
                "%s: %d call(s) still running %gs after close; descriptor %d left open"
                " (leaked) rather than closed under them",
                self.path, running, limit, fd,
            )  # fmt: skip
            return
        os.close(fd)

    def _no_calls(self) -> bool:
        return self._calls == 0

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"FileStore({self.path!r}, read_only={self.read_only})"

    # -- O_DIRECT with buffers or offsets the device will not take -----------------------

    def _bounce_span(self, offset: int, length: int) -> tuple[int, int]:
        a = self._align
        start = offset - offset % a
        stop = -(-(offset + length) // a) * a
        return start, stop

    def _bounce_read(self, fd: int, offset: int, dst: memoryview) -> None:
        pos = 0
        while pos < len(dst):
            n = min(len(dst) - pos, _BOUNCE_MAX)
            start, stop = self._bounce_span(offset + pos, n)
            with mmap.mmap(-1, stop - start) as bounce:
                view = memoryview(bounce)
                try:
                    got = os.preadv(fd, [view], start)
                except OSError as e:
                    view.release()
                    raise self._error(e, f"read {n} bytes at offset {offset + pos}") from e
                skip = offset + pos - start
                if got < skip + n:
                    view.release()
                    raise BackingStoreError(
                        errno.EIO, f"short read at offset {offset + pos} (end of file)", self.path
                    )
                dst[pos : pos + n] = view[skip : skip + n]
                view.release()
            pos += n

    def _bounce_write(self, fd: int, offset: int, src: memoryview) -> None:
        pos = 0
        while pos < len(src):
            n = min(len(src) - pos, _BOUNCE_MAX)
            start, stop = self._bounce_span(offset + pos, n)
            with mmap.mmap(-1, stop - start) as bounce:
                view = memoryview(bounce)
                try:
                    skip = offset + pos - start
                    if skip or (offset + pos + n) != stop:
                        # Read-modify-write of the partial blocks at either edge.
                        os.preadv(fd, [view], start)
                    view[skip : skip + n] = src[pos : pos + n]
                    written = os.pwrite(fd, view, start)
                except OSError as e:
                    raise self._error(e, f"write {n} bytes at offset {offset + pos}") from e
                finally:
                    view.release()
                if written != stop - start:
                    raise BackingStoreError(
                        errno.EIO, f"short write at offset {offset + pos}", self.path
                    )
            pos += n
