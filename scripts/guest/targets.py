"""Host-side iSCSI targets for the guest tests: our daemon, and Debian's tgt as a reference.

Both expose the same small, clearly named control surface used by the scenarios:

    start() / stop() / restart()           the whole daemon
    stop_portal(n) / start_portal(n)       portal n (1-based) of ``portals``
    set_chap(user, secret)                 initiator -> target CHAP account (one-way)
    set_mutual_chap(user, secret)          target -> initiator account (mutual CHAP)
    guest_env()                            GI_* variables for the in-guest scripts
    host_actions()                         HOSTCMD word -> callback, for the harness

All traffic stays on 127.0.0.1; the guest reaches it as 10.0.2.2 (QEMU user networking).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from guest_harness import GUEST_HOST_ADDR, HostAction, free_port

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def _wait_listening(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class PortalProxy:
    """A TCP forwarder standing in for an extra portal of a target that cannot drop the
    connections of one portal on its own (tgt). stop() closes the listener *and* every
    connection through it, which is what an initiator sees when a gateway's portal dies."""

    def __init__(self, listen_port: int, target_port: int):
        self.listen_port = listen_port
        self.target_port = target_port
        self._lsock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._lsock is not None

    def start(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.listen_port))
        s.listen(16)
        self._lsock = s
        self._thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self._thread.start()

    def _accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(262144)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        if self._lsock is not None:
            try:
                self._lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._lsock.close()
            self._lsock = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class TargetBase:
    kind = "base"
    #: True when SendTargets answers with the address the guest can use (10.0.2.2:port)
    strict_discovery = True
    lun = 1

    def __init__(self, workdir: Path, portals: int = 1):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nportals = portals
        self.ports = [free_port() for _ in range(portals)]
        self.iqn = ""
        self.chap: tuple[str, str] | None = None
        self.mutual: tuple[str, str] | None = None

    # -- what the guest needs ---------------------------------------------------------
    def guest_env(self) -> dict[str, str]:
        return {
            "GI_TARGET_IQN": self.iqn,
            "GI_LUN": str(self.lun),
            "GI_PORTALS": " ".join(f"{GUEST_HOST_ADDR}:{p}" for p in self.ports),
            "GI_STRICT_DISCOVERY": "1" if self.strict_discovery else "0",
            "GI_TARGET_KIND": self.kind,
        }

    def host_actions(self) -> dict[str, HostAction]:
        return {
            "stop-portal": lambda args: self.stop_portal(int(args[0])),
            "start-portal": lambda args: self.start_portal(int(args[0])),
            "restart-target": lambda args: self.restart(),
            "crash-restart-target": lambda args: self.restart(crash=True),
            "ping": lambda args: "pong",
        }

    # -- control surface (implemented by subclasses) ----------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, crash: bool = False) -> str:
        """Stop and start the daemon; ``crash``: SIGKILL instead of a clean shutdown."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return f"restarted in {time.monotonic() - t0:.2f}s"

    def stop_portal(self, n: int) -> str | None:
        raise NotImplementedError

    def start_portal(self, n: int) -> str | None:
        raise NotImplementedError

    def set_chap(self, user: str, secret: str) -> None:
        raise NotImplementedError

    def set_mutual_chap(self, user: str, secret: str) -> None:
        raise NotImplementedError

    def drop_images(self) -> None:
        """After stop(): delete the (sparse, up to 1 GiB) LUN backing files, keep the logs."""
        for d in {self.workdir, *self.extra_dirs()}:
            for img in d.rglob("*.img"):
                img.unlink(missing_ok=True)

    def extra_dirs(self) -> list[Path]:
        return []

    def __enter__(self) -> TargetBase:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TgtTarget(TargetBase):
    """Debian's tgt (``tgtd -f --iscsi portal=127.0.0.1:PORT -C N``) on a sparse file.

    tgt answers SendTargets with its own listener address (127.0.0.1), which the guest
    cannot use, so discovery runs non-strict (the guest then adds a static node record
    for the portal it used). Portal 1 is tgtd itself; portals 2.. are PortalProxy
    forwarders to it, so that stop_portal(n>=2) really cuts that path's connections
    (``tgtadm --op delete --mode portal`` only closes the listener)."""

    kind = "tgt"
    strict_discovery = False

    def __init__(self, workdir: Path, portals: int = 1, size: int = GIB):
        super().__init__(workdir, portals)
        self.iqn = "iqn.2026-11.org.gluster-iscsi.ref:tgt-demo"
        self.backing = self.workdir / "lun1.img"
        with open(self.backing, "wb") as f:
            f.truncate(size)
        self.control_port = self._free_control_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxies = {
            n: PortalProxy(self.ports[n - 1], self.ports[0]) for n in range(2, portals + 1)
        }
        self.log = self.workdir / "tgtd.log"

    @staticmethod
    def _free_control_port() -> int:
        for n in range(200 + os.getpid() % 500, 1000):
            if not Path(f"/var/run/tgtd/socket.{n}").exists():
                return n
        raise RuntimeError("no free tgtd control port")

    def tgtadm(self, *args: str, check: bool = True) -> str:
        cmd = ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    def _configure(self) -> None:
        self.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        self.tgtadm(
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            str(self.backing),
        )
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if self.chap:
            self._apply_chap()
        if self.mutual:
            self._apply_mutual()

    def start(self) -> None:
        if not shutil.which("tgtd"):
            raise RuntimeError("tgtd not installed (apt-get install tgt)")
        Path("/var/run/tgtd").mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 30
        while True:  # after a kill the port may take a moment to be bindable again
            logf = open(self.log, "ab")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [
                    "tgtd",
                    "-f",
                    "--iscsi",
                    f"portal=127.0.0.1:{self.ports[0]}",
                    "-C",
                    str(self.control_port),
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            logf.close()
            try:
                _wait_listening(self.ports[0], 10, self.proc)
                break
            except (RuntimeError, TimeoutError):
                self._kill()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for _ in range(50):
            if (
                subprocess.run(
                    ["tgtadm", "-C", str(self.control_port), "--op", "show", "--mode", "sys"],
                    capture_output=True,
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        self._configure()
        for p in self.proxies.values():
            if not p.running:
                p.start()

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        for p in self.proxies.values():
            p.stop()
        self._kill()

    def restart(self, crash: bool = False) -> str:
        # always a crash-restart: tgtd refuses a clean shutdown with sessions open: kill it (a crash-restart),
        # keep the proxies (other portals) as they are.
        t0 = time.monotonic()
        self._kill()
        self.start()
        return f"tgtd restarted in {time.monotonic() - t0:.2f}s"

    def stop_portal(self, n: int) -> str:
        if n not in self.proxies:
            raise ValueError(f"tgt reference: only proxied portals 2..{self.nportals} can stop")
        self.proxies[n].stop()
        return f"portal {n} (127.0.0.1:{self.ports[n - 1]}) stopped"

    def start_portal(self, n: int) -> str:
        self.proxies[n].start()
        return f"portal {n} (127.0.0.1:{self.ports[n - 1]}) started"

    def _apply_chap(self) -> None:
        assert self.chap
        user, secret = self.chap
        self.tgtadm("--op", "new", "--mode", "account", "--user", user, "--password", secret)
        self.tgtadm("--op", "bind", "--mode", "account", "--tid", "1", "--user", user)

    def _apply_mutual(self) -> None:
        assert self.mutual
        user, secret = self.mutual
        self.tgtadm("--op", "new", "--mode", "account", "--user", user, "--password", secret)
        self.tgtadm("--op", "bind", "--mode", "account", "--tid", "1", "--user", user, "--outgoing")

    def set_chap(self, user: str, secret: str) -> None:
        self.chap = (user, secret)
        if self.proc:
            self._apply_chap()

    def set_mutual_chap(self, user: str, secret: str) -> None:
        self.mutual = (user, secret)
        if self.proc:
            self._apply_mutual()


# ---------------------------------------------------------------------------------------
# our daemon
# ---------------------------------------------------------------------------------------
DEMO_IQN = "iqn.2026-11.org.gluster-iscsi:demo"


def gluster_iscsi_cmd() -> list[str]:
    """How to run our CLI: its console-script entry point with this interpreter (src/ on
    the path), so that an uninstalled checkout works too."""
    return [
        sys.executable,
        "-c",
        "import sys; from gluster_iscsi.cli.main import main; "
        "sys.exit(main(prog_name='gluster-iscsi'))",
    ]


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def gluster_iscsi_available() -> tuple[bool, str]:
    """(True, "") when ``gluster-iscsi serve --help`` works, else (False, why)."""
    try:
        r = subprocess.run(
            [*gluster_iscsi_cmd(), "serve", "--help"],
            capture_output=True,
            text=True,
            env=_cli_env(),
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if r.returncode != 0:
        return False, (r.stderr.strip() or r.stdout.strip())[-500:]
    if "--listen" not in r.stdout:
        return False, f"`serve --help` does not offer --listen: {r.stdout.strip()[-300:]!r}"
    return True, ""


class GlusterIscsiTarget(TargetBase):
    """``gluster-iscsi serve --demo --state-dir DIR --listen 127.0.0.1:P [...] --advertise
    10.0.2.2``: the demo target (LUN 1, 1 GiB sparse file, open to any initiator).

    CHAP and portal start/stop go through the management CLI
    (``gluster-iscsi --state-dir DIR auth ...`` / ``portal ...``). The exact sub-commands
    are isolated in the small methods below (``_cli_*``) so that they can follow the CLI
    as it lands."""

    kind = "gluster-iscsi"
    strict_discovery = True

    def __init__(self, workdir: Path, portals: int = 1):
        super().__init__(workdir, portals)
        # short path: the control socket lives here and AF_UNIX paths max out at 107 bytes
        self.state_dir = Path(tempfile.mkdtemp(prefix="gi-state-"))
        link = self.workdir / "state"
        if not link.exists():
            link.symlink_to(self.state_dir)
        self.iqn = DEMO_IQN
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "gluster-iscsi.log"
        self.stopped_portals: set[int] = set()

    def extra_dirs(self) -> list[Path]:
        return [self.state_dir]

    def serve_cmd(self) -> list[str]:
        cmd = [*gluster_iscsi_cmd(), "serve", "--demo", "--state-dir", str(self.state_dir)]
        for p in self.ports:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        return [*cmd, "--advertise", GUEST_HOST_ADDR]

    def start(self) -> None:
        ok, why = gluster_iscsi_available()
        if not ok:
            raise RuntimeError(f"gluster-iscsi serve is not available: {why}")
        logf = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.serve_cmd(),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_cli_env(),
        )
        logf.close()
        deadline = time.monotonic() + 30
        for n, p in enumerate(self.ports, 1):
            if n not in self.stopped_portals:
                _wait_listening(p, max(0.1, deadline - time.monotonic()), self.proc)
        m = re.search(r"iqn\.\d{4}-\d{2}\.[^\s'\",]+", self.log.read_text(errors="replace"))
        if m:
            self.iqn = m.group(0)
        if self.chap:
            self._cli_set_chap(*self.chap)
        if self.mutual:
            self._cli_set_mutual(*self.mutual)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self, crash: bool = False) -> str:
        t0 = time.monotonic()
        self.stop(signal.SIGKILL if crash else signal.SIGTERM)
        self.start()
        how = "killed (SIGKILL) and restarted" if crash else "restarted (SIGTERM)"
        return f"gluster-iscsi {how} in {time.monotonic() - t0:.2f}s"

    # -- management CLI -----------------------------------------------------------------
    def mgmt(self, *args: str) -> str:
        cmd = [*gluster_iscsi_cmd(), "--state-dir", str(self.state_dir), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return r.stdout

    def _cli_account(self, user: str, secret: str) -> None:
        try:
            self.mgmt("auth", "account-add", user, "--secret", secret)
        except RuntimeError as exc:  # kept in the state dir across a restart
            if "exist" not in str(exc):
                raise

    def _cli_bind(self, user: str, *extra: str) -> None:
        try:
            self.mgmt("auth", "bind", user, "--target", self.iqn, *extra)
        except RuntimeError as exc:
            if "already" not in str(exc) and "exist" not in str(exc):
                raise

    def _cli_set_chap(self, user: str, secret: str) -> None:
        """``auth account-add USER --secret S`` + ``auth bind USER --target IQN``."""
        self._cli_account(user, secret)
        self._cli_bind(user)

    def _cli_set_mutual(self, user: str, secret: str) -> None:
        """The target's own account: ``auth bind USER --target IQN --outgoing``."""
        self._cli_account(user, secret)
        self._cli_bind(user, "--outgoing")

    def _cli_portal_delete(self, port: int) -> None:
        """``portal delete 127.0.0.1:PORT`` (closes the listener and its connections)."""
        self.mgmt("portal", "delete", f"127.0.0.1:{port}")

    def _cli_portal_create(self, port: int) -> None:
        self.mgmt("portal", "add", f"127.0.0.1:{port}", "--advertise", f"{GUEST_HOST_ADDR}:{port}")

    def set_chap(self, user: str, secret: str) -> None:
        self.chap = (user, secret)
        if self.proc:
            self._cli_set_chap(user, secret)

    def set_mutual_chap(self, user: str, secret: str) -> None:
        self.mutual = (user, secret)
        if self.proc:
            self._cli_set_mutual(user, secret)

    def stop_portal(self, n: int) -> str:
        self._cli_portal_delete(self.ports[n - 1])
        self.stopped_portals.add(n)
        return f"portal {n} stopped"

    def start_portal(self, n: int) -> str:
        self._cli_portal_create(self.ports[n - 1])
        self.stopped_portals.discard(n)
        return f"portal {n} started"


def make_target(kind: str, workdir: Path, portals: int = 1) -> TargetBase:
    if kind == "tgt":
        return TgtTarget(workdir, portals)
    if kind in ("gluster-iscsi", "daemon", "ours"):
        return GlusterIscsiTarget(workdir, portals)
    raise ValueError(f"unknown target kind {kind!r} (tgt | gluster-iscsi)")
