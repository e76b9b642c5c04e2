"""A small Gluster client to run inside a gateway namespace (``python -m tests.ha.probe``).

Commands (one line of output each, flushed, so a test can follow them through a pipe):

``write URL_OR_PATH OFFSET TEXT``
    Write TEXT at OFFSET (O_DIRECT-free, then fsync) and print ``OK``.
``hold URL_OR_PATH [direct]``
    Take an exclusive POSIX lock on byte 0 (F_SETLK, non-blocking; fails if taken), print
    ``LOCKED``, then read commands from stdin: ``write OFFSET TEXT`` (pwrite + fsync, prints
    ``WROTE`` or ``ERROR errno``), ``quit``. With ``direct`` the file is opened O_DIRECT
    (as group LUNs are) and each write is one aligned 4 KiB block, TEXT padded with '.'.
``take URL_OR_PATH TIMEOUT``
    Try the same lock every 0.1 s; print ``TAKEN SECONDS`` (time since the start) or
    ``TIMEOUT``.

URL_OR_PATH is ``gluster://HOST/VOLUME/path`` (through libgfapi, glfs_posix_lock) or a path on
a FUSE mount (fcntl.lockf through the kernel, i.e. the mount's glusterfs client).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import sys
import time
from typing import Any

DATA = b""


class Handle:
    def __init__(self, where: str, direct: bool = False) -> None:
        self.where = where
        self.direct = direct
        flags = os.O_RDWR | (os.O_DIRECT if direct else 0)
        self.vol: Any = None
        if where.startswith("gluster://"):
            from gluster_iscsi.backstore.gfapi import _binding as g

            self.g = g
            host, volume, path = where[len("gluster://"):].split("/", 2)
            self.vol = g.Volume(volume)
            self.vol.set_volfile_server(host)
            self.vol.set_logging(f"/tmp/giha-probe-{os.getpid()}.log", g.LOG_WARNING)
            self.vol.init()
            self.f = self.vol.open("/" + path, flags)
            self.fd = -1
        else:
            self.fd = os.open(where, flags)

    def try_lock(self) -> bool:
        if self.vol is not None:
            lk = self.g.Flock(l_type=fcntl.F_WRLCK, l_whence=os.SEEK_SET, l_start=0, l_len=1)
            try:
                self.f.posix_lock(fcntl.F_SETLK, lk)
            except self.g.GfapiError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def write(self, offset: int, data: bytes) -> None:
        if self.direct:
            buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
            buf[:] = data[:4096].ljust(4096, b".")
            data = buf  # type: ignore[assignment]
        if self.vol is not None:
            self.f.pwrite(data, offset)
            self.f.fsync()
        else:
            os.pwrite(self.fd, data, offset)
            os.fsync(self.fd)


def say(*words: object) -> None:
    print(*words, flush=True)


def main(argv: list[str]) -> int:
    cmd, where = argv[0], argv[1]
    if cmd == "write":
        Handle(where).write(int(argv[2]), argv[3].encode())
        say("OK")
        return 0
    if cmd == "hold":
        h = Handle(where, direct=argv[2:3] == ["direct"])
        if not h.try_lock():
            say("BUSY")
            return 1
        say("LOCKED")
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "quit":
                break
            if parts[0] == "write":
                try:
                    h.write(int(parts[1]), parts[2].encode())
                    say("WROTE")
                except OSError as e:
                    say("ERROR", e.errno)
        return 0
    if cmd == "take":
        start = time.monotonic()
        h = Handle(where)
        deadline = start + float(argv[2])
        while time.monotonic() < deadline:
            if h.try_lock():
                say("TAKEN", f"{time.monotonic() - start:.1f}")
                # keep it for a moment so the caller can read the file state
                sys.stdin.readline()
                return 0
            time.sleep(0.1)
        say("TIMEOUT")
        return 1
    say("usage")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
