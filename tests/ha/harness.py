"""Gateways in network namespaces over one real replica-3 volume (the HA tests' parts).

::

    net = NetEnv(3).up()                      # tests/ha/netenv.py: namespaces, bridges
    vol = start_volume(name, brick_host=STORAGE_HOST)   # bricks on 192.0.2.17
    gw = Gateway(net, net.namespaces[0], state_dir, vol)
    gw.write_config(lone_config(gw, IQN, {1: vol.url("lun1.img")}))
    gw.start()                                # serve inside the namespace, waits for the portal
    gw.url(1, IQN)                            # iscsi://192.0.2.11:3260/IQN/1 for libiscsi tools
    gw.partition(); gw.heal()                 # storage-only cut (see netenv.py)
    gw.kill()                                 # SIGKILL; gw.stop() is SIGTERM

The daemon is ``python -m gluster_iscsi serve`` from the tree under test (PYTHONPATH), run
with ``nsenter --net`` so it sees only the namespace's network, and reads its config from
``STATE_DIR/config.json`` written before the start: the group runtime's ``"group"`` section
goes there too (:func:`group_config`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.gluster_env import GlusterEnv
from tests.ha.netenv import Namespace, NetEnv

ISCSI_PORT = 3260
IQN = "iqn.2026-12.org.gluster-iscsi:ha"


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60,
                   log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"gateway exited with {proc.returncode} before listening\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Gateway:
    """One ``gluster-iscsi serve`` in namespace ``ns`` with its own state directory."""

    def __init__(self, net: NetEnv, ns: Namespace, state_dir: Path, volume: GlusterEnv,
                 *, name: str | None = None) -> None:
        self.net = net
        self.ns = ns
        self.state_dir = Path(state_dir)
        self.volume = volume
        self.name = name or f"gw{ns.index}"
        self.number = ns.index
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.state_dir / "daemon.log"
        self._logf: Any = None
        #: the group's non_owner mode this gateway was configured with (tests read it to
        #: know what a non-owner's paths answer)
        self.non_owner: str | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.ns.front

    @property
    def portal(self) -> str:
        return f"{self.address}:{ISCSI_PORT}"

    def url(self, lun: int = 1, iqn: str = IQN, initiator: str | None = None) -> str:
        u = f"iscsi://{self.portal}/{iqn}/{lun}"
        return u if initiator is None else f"{u}?initiator-name={initiator}"

    # -- config ----------------------------------------------------------------------------
    def write_config(self, cfg: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "config.json"
        path.write_text(json.dumps(cfg, indent=2))
        path.chmod(0o600)

    # -- process ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *extra: str, timeout: float = 90) -> Gateway:
        assert not self.running, f"{self.name} runs already"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.ns.prefix(), sys.executable, "-m", "gluster_iscsi", "serve",
               "--state-dir", str(self.state_dir), "--listen", self.portal,
               "--nop-interval", "0", "--log-level", "debug", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logf = open(self.log, "ab")
        self._logf.write(f"=== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
        self._logf.flush()
        # nsenter --net execs the program itself (no fork): proc.pid is the daemon's pid
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        wait_listening(self.address, ISCSI_PORT, self.proc, timeout, self.log)
        return self

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None
        return rc

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit status, 0 if not running."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self) -> int:
        """SIGKILL: the process dies at once, its Gluster connections are closed by the kernel."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.kill()
        return self._reap(10)

    def partition(self) -> None:
        self.net.partition(self.ns)

    def heal(self) -> None:
        self.net.heal(self.ns)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``gluster-iscsi --state-dir DIR ARGS`` from the host (the control socket is a path,
        reachable from any network namespace)."""
        proc = subprocess.run(
            [sys.executable, "-m", "gluster_iscsi", "--state-dir", str(self.state_dir), *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(args)} -> {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def lone_config(gw: Gateway, iqn: str, luns: dict[int, str], *,
                block_size: int = 512) -> dict[str, Any]:
    """A daemon config exporting ``luns`` (number -> gluster:// URL) of target ``iqn`` to
    every initiator, listening on the gateway's front address."""
    return {
        "version": 1,
        "portals": [{"host": gw.address, "port": ISCSI_PORT}],
        "targets": [{
            "name": iqn, "tid": 1,
            "luns": [{"lun": n, "backing": url, "bstype": "gluster", "block_size": block_size}
                     for n, url in sorted(luns.items())],
            "acl": [{"network": "ALL"}],
        }],
    }


def group_config(gw: Gateway, iqn: str, luns: dict[int, str], *, non_owner: str,
                 beat_seconds: float = 1.0, lease_seconds: float = 5.0,
                 location: str | None = None) -> dict[str, Any]:
    """:func:`lone_config` plus the group runtime's section (docs/HA.md): this daemon is
    gateway ``gw.name`` number ``gw.number`` of a group whose directory is on the volume;
    ``non_owner`` ("standby" | "non-optimized") is what its paths are for LUNs it does not
    own (non-optimized: it ships their media commands to the owner over the front network,
    listening on its portal's address)."""
    cfg = lone_config(gw, iqn, luns)
    gw.non_owner = non_owner
    cfg["group"] = {
        "location": location or gw.volume.url(".gluster-iscsi"),
        "gateway": gw.name,
        "number": gw.number,
        "beat_seconds": beat_seconds,
        "lease_seconds": lease_seconds,
        "non_owner": non_owner,
    }
    return cfg


def make_file(volume: GlusterEnv, path: str, size: int) -> None:
    """A sparse file of ``size`` bytes on the volume, made through the host's FUSE mount."""
    full = volume.fuse_path(path)
    with open(full, "wb") as f:
        f.truncate(size)


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc
