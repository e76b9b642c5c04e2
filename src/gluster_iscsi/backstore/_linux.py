"""Linux calls the os module lacks: fallocate(2) modes, fstatfs f_type, block-device ioctls."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import struct

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# <linux/fs.h> ioctls on block devices.
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKDISCARD = 0x1277  # _IO(0x12, 119), arg: uint64_t[2] = {start, length}
BLKZEROOUT = 0x127F  # _IO(0x12, 127), arg: uint64_t[2] = {start, length}
BLKSSZGET = 0x1268  # logical sector size, int

# statfs f_type magics of file systems known to punch holes for real.
FS_MAGIC = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x01021994: "tmpfs",
    0x9123683E: "btrfs",
    0xF2F52010: "f2fs",
    0x65735546: "fuse",
    0x6969: "nfs",
    0x2FC12FC1: "zfs",
}


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    libc.fallocate.restype = ctypes.c_int
    libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fstatfs.restype = ctypes.c_int
    return libc


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError with the errno (EOPNOTSUPP when the fs lacks the mode)."""
    while True:
        if _libc().fallocate(fd, mode, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err != 4:  # EINTR
            raise OSError(err, os.strerror(err))


def fs_type(fd: int) -> str | None:
    """The file system of ``fd`` by statfs magic, or None if unknown."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if _libc().fstatfs(fd, buf) != 0:
        return None
    (magic,) = struct.unpack_from("=q", buf.raw, 0)
    return FS_MAGIC.get(magic & 0xFFFFFFFF)


def blk_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
    return struct.unpack("=Q", buf)[0]


def blk_range_ioctl(fd: int, request: int, offset: int, length: int) -> None:
    fcntl.ioctl(fd, request, struct.pack("=QQ", offset, length))


def blk_discard_max(rdev: int) -> int:
    """discard_max_bytes of a block device from sysfs (0: no discard)."""
    base = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    # A partition has no queue/ of its own; its parent disk's applies.
    for path in (f"{base}/queue/discard_max_bytes", f"{base}/../queue/discard_max_bytes"):
        try:
            with open(path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
    return 0
