"""Speaking to systemd: readiness notification (sd_notify) and the journald check.

The protocol is a datagram per message to the socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract address written with a leading ``@``): newline-separated ``KEY=VALUE`` lines
(sd_notify(3)). It is a few lines, so no dependency: ``systemd-python`` would need libsystemd
and a compiler, and ``sdnotify`` adds nothing these lines do not do.

Nothing here raises: without ``$NOTIFY_SOCKET`` (not started by systemd, or not as
``Type=notify``) every call does nothing, and a send that fails is logged once at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (no-ops without it)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]  # abstract namespace
        elif addr.startswith("/"):
            self.address = addr
        self._sock: socket.socket | None = None
        #: Seconds between watchdog pings (half of $WATCHDOG_USEC), or None: no watchdog.
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one message made of ``lines``; True if it went out."""
        if self.address is None:
            return False
        msg = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status: str = "stopping: finishing commands in flight") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def journald_stderr(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True if ``fd`` (stderr) is the stream systemd connected to journald.

    systemd sets ``$JOURNAL_STREAM`` to ``DEVICE:INODE`` of that stream; it is inherited by
    children whose stderr goes elsewhere, so the descriptor itself is compared
    (systemd.exec(5), "$JOURNAL_STREAM").
    """
    env = os.environ if env is None else env
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))
