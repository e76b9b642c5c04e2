"""Helpers for the hostile-peer tests of issue 16: a daemon under a descriptor limit, the
`serve` options that exist, raw-socket sessions, RSS polling. Loopback only."""

from __future__ import annotations

import functools
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from gluster_iscsi.iscsi.pdu import PduReader

from ..iscsi import initiator as I
from ..iscsi.fuzzer import TARGET, login_pairs
from .daemon import Daemon, wait_port
from .fuzzload import rss_kib

HOST = "127.0.0.1"


@functools.cache
def serve_options() -> str:
    """`serve --help` of the tree under test: which limits exist there."""
    return subprocess.run([sys.executable, "-m", "gluster_iscsi", "serve", "--help"],
                          capture_output=True, text=True, timeout=60).stdout


def limit_args(*, max_connections: int | None = None, max_prelogin: int | None = None,
               max_prelogin_per_host: int | None = None, memory_mib: int | None = None) -> list[str]:
    """`serve` arguments for the limits asked for, those the daemon has (issue 16 adds them:
    on a tree without one, the test asserts the behaviour with the daemon's defaults)."""
    helptext = serve_options()
    out: list[str] = []
    for opt, val in (("--max-connections", max_connections), ("--max-prelogin", max_prelogin),
                     ("--max-prelogin-per-host", max_prelogin_per_host)):
        if val is not None and f"{opt} " in helptext:
            out += [opt, str(val)]
    if memory_mib is not None and "--memory-budget" in helptext:
        line = helptext[helptext.index("--memory-budget"):].split("\n", 1)[0].upper()
        if "MIB" in line:
            out += ["--memory-budget", str(memory_mib)]
        elif "BYTES" in line:
            out += ["--memory-budget", str(memory_mib << 20)]
        else:
            out += ["--memory-budget", f"{memory_mib}M"]
    return out


class LimitedDaemon(Daemon):
    """``serve --demo`` with RLIMIT_NOFILE lowered (so descriptor exhaustion is cheap)."""

    def __init__(self, state_dir: Path, *, nofile: int | None = None,
                 extra: list[str] | None = None) -> None:
        super().__init__(state_dir, extra=extra)
        self.nofile = nofile

    def start(self) -> LimitedDaemon:
        import subprocess as sp

        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "gluster_iscsi", "serve", "--state-dir", str(self.state_dir)]
        for p in self.ports:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        cmd += ["--demo", *self.extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logf = open(self.log, "ab")
        self.proc = sp.Popen(cmd, stdout=self._logf, stderr=sp.STDOUT, env=env, preexec_fn=limit)
        for p in self.ports:
            wait_port(p, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_kib(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RawSession:
    """A blocking socket speaking just what a test needs, every wait bounded."""

    def __init__(self, port: int, *, rcvbuf: int | None = None, timeout: float = 20.0,
                 initiator: str = "iqn.2026-11.org.example:hostile", source: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window offered stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        if source is not None:  # another loopback address (127.0.0.2 ...)
            self.sock.bind((source, 0))
        self.sock.connect((HOST, port))
        self.reader = PduReader(1 << 24)
        self.initiator = initiator
        self.cmdsn = 1
        self.itt = 0
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def login(self, pairs: list[tuple[str, str]] | None = None) -> I.Rsp:
        isid = b"\x80" + os.urandom(5)
        self.send(I.login(pairs or login_pairs(self.initiator, TARGET), isid=isid))
        rsp = self.recv()
        assert rsp is not None and rsp.opcode == 0x23, "no Login Response"
        return rsp

    def recv(self, timeout: float | None = None) -> I.Rsp | None:
        """The next PDU, or None at EOF. Raises TimeoutError when nothing comes."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            p = self.reader.next_pdu()
            if p is not None:
                return I.Rsp(p)
            if self.eof:
                return None
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError as exc:
                raise TimeoutError("nothing from the target") from exc
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.reader.feed(data)

    def read10(self, lba: int, nbytes: int, *, lun: int = 1) -> bytes:
        itt = self.next_itt()
        cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, nbytes // 512, 0)
        p = I.scsi_cmd(cdb, itt=itt, cmdsn=self.cmdsn, edtl=nbytes, read=True, lun=lun)
        self.cmdsn += 1
        return p

    def reset(self) -> None:
        """Close with a RST (what a crashed peer does)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def settle_rss(d: LimitedDaemon, *, at_most: float = 30.0, quiet: float = 2.0) -> tuple[int, int]:
    """Sample RSS until it has not grown for ``quiet`` seconds (or ``at_most``): (peak, last)."""
    peak = last = d.rss()
    stable_since = time.monotonic()
    deadline = time.monotonic() + at_most
    while time.monotonic() < deadline:
        time.sleep(0.2)
        last = d.rss()
        if last > peak:
            peak = last
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
    return peak, last


def wait_rss_below(d: LimitedDaemon, limit_kib: int, at_most: float = 60.0) -> int:
    """Poll RSS until it is at most ``limit_kib`` or ``at_most`` seconds passed; the last."""
    deadline = time.monotonic() + at_most
    rss = d.rss()
    while rss > limit_kib and time.monotonic() < deadline:
        time.sleep(0.5)
        rss = d.rss()
    return rss
