"""systemd (issue 18): sd_notify from a real daemon to a stand-in $NOTIFY_SOCKET, the unit
file, ``systemd install``, and ``systemd-analyze verify`` on what it writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gluster_iscsi.cli.main import main
from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.systemd import Notifier, journald_stderr
from gluster_iscsi.systemd import unit as unitmod

from ..iscsi import initiator as I
from .harness import EXE, free_port


class NotifySocket:
    """What systemd would be: a datagram socket bound where $NOTIFY_SOCKET says."""

    def __init__(self, tmp_path: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"gluster-iscsi-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.env = str(path)
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 30) -> dict[str, str] | None:
        """The next message as a dict of its lines (None: nothing within ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(msg)
        return msg

    def wait_for(self, key: str, timeout: float = 30, skip: tuple[str, ...] = ("WATCHDOG", "STATUS")
                 ) -> dict[str, str]:
        """The next message with ``key``; only messages made of ``skip`` keys may come first."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.1, deadline - time.monotonic()))
            assert msg is not None, f"no {key} within {timeout}s; got {self.messages}"
            if key in msg:
                return msg
            assert set(msg) <= set(skip), f"{msg} came before {key}"

    def close(self) -> None:
        self.sock.close()


def _serve(tmp_path: Path, notify: NotifySocket, port: int, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    e = dict(os.environ, NOTIFY_SOCKET=notify.env)
    e.pop("WATCHDOG_USEC", None)
    e.update(env or {})
    return subprocess.Popen(
        [EXE, "--state-dir", str(tmp_path / "state"), "serve", "--no-uvloop", "--demo",
         "--listen", f"127.0.0.1:{port}", *extra],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"), env=e,
    )  # fmt: skip


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_after_the_portal_listens_reloading_ready_on_hup_stopping_on_term(tmp_path, abstract):
    notify = NotifySocket(tmp_path, abstract)
    port = free_port()
    proc = _serve(tmp_path, notify, port)
    try:
        ready = notify.wait_for("READY", skip=())  # nothing before READY
        assert ready["READY"] == "1"
        assert _connects(port), "READY=1 came while the portal did not accept connections"
        assert ready["STATUS"] == "serving 1 target, 1 LUN on 1 portal; 0 sessions"
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        assert reloading["RELOADING"] == "1" and reloading["MONOTONIC_USEC"].isdigit()
        # MONOTONIC_USEC is CLOCK_MONOTONIC, which this process shares
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < int(reloading["MONOTONIC_USEC"]) <= now
        assert notify.wait_for("READY")["READY"] == "1"
        proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


@pytest.mark.integration
def test_no_ready_when_the_portal_cannot_listen_exit_9(tmp_path):
    notify = NotifySocket(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve(tmp_path, notify, port)
        assert proc.wait(60) == 9
    got = []
    while (msg := notify.next(timeout=0.5)) is not None:
        got.append(msg)
    assert not any("READY" in m for m in got), got
    assert any(m.get("STATUS", "").startswith("failed to start: cannot listen") for m in got), got
    notify.close()


@pytest.mark.integration
def test_watchdog_pings_when_watchdog_usec_is_set(tmp_path):
    notify = NotifySocket(tmp_path)
    port = free_port()
    proc = _serve(tmp_path, notify, port, env={"WATCHDOG_USEC": "400000"})
    try:
        notify.wait_for("READY", skip=())
        for _ in range(3):  # pinged again and again, from the event loop
            assert notify.wait_for("WATCHDOG", skip=("STATUS",))["WATCHDOG"] == "1"
        # STATUS= follows the sessions (checked at each ping here)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(I.login([("InitiatorName", "iqn.2026-12.org.example:status"),
                               ("TargetName", "iqn.2026-11.org.gluster-iscsi:demo")]))
            assert s.recv(48)
            status = notify.wait_for("STATUS", skip=("WATCHDOG",))
            assert status["STATUS"] == "serving 1 target, 1 LUN on 1 portal; 1 session"
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


# ---------------------------------------------------------------------------- no daemon


def test_notifier_without_notify_socket_does_nothing():
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready("x") is False


def test_notifier_watchdog_interval_is_half_and_only_for_this_pid():
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval == 15.0


def test_journald_is_the_sink_only_when_stderr_is_the_journal_stream(tmp_path):
    f = open(tmp_path / "stream", "w")
    st = os.fstat(f.fileno())
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert journald_stderr(env, f.fileno())
    other = open(tmp_path / "other", "w")
    assert not journald_stderr(env, other.fileno())  # inherited variable, stderr elsewhere
    assert not journald_stderr({}, f.fileno())
    f.close()
    other.close()


def test_unit_quotes_paths_and_escapes_specifiers():
    text = unitmod.render(Path("/var/lib/my state"), ["127.0.0.1:3260"], ["/srv/100%"],
                          command=["/opt/gi/bin/gluster-iscsi"])
    exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    assert exec_start == ('ExecStart=/opt/gi/bin/gluster-iscsi serve --state-dir '
                          '"/var/lib/my state" --listen 127.0.0.1:3260')
    assert 'ReadWritePaths="/var/lib/my state" /srv/100%%' in text
    assert "@" + "EXEC_START@" not in text and "Type=notify" in text


def test_the_unit_is_package_data_and_its_stop_timeout_is_above_the_drain():
    from gluster_iscsi.server.daemon import Daemon

    text = unitmod.template()
    stop = int(next(x for x in text.splitlines() if x.startswith("TimeoutStopSec=")).split("=")[1])
    drain = Daemon.__init__.__kwdefaults__["drain_timeout"]
    assert stop > drain + 5  # the drain, then 5 s for connections to close, then the stores
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "ProtectSystem=strict" in text and "LimitNOFILE=" in text


def test_systemd_install_writes_the_unit_and_says_systemd_did_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(unitmod, "systemd_running", lambda: False)
    cfg = cfgmod.demo_config(tmp_path / "state")
    cfg["targets"][0]["luns"][0]["backing"] = "/srv/luns/a.img"
    cfgmod.save(tmp_path / "state", cfgmod.validate(cfg))
    r = CliRunner().invoke(main, [
        "systemd", "install", "--state-dir", str(tmp_path / "state"), "--listen", "[::1]:3261",
        "--unit-dir", str(tmp_path / "units"), "--man-dir", str(tmp_path / "man"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["reloaded"] is False and out["enabled"] is False
    assert any("not the init system" in m for m in out["messages"])
    text = (tmp_path / "units" / "gluster-iscsi.service").read_text()
    exe = unitmod.executable()
    assert out["exec_start"].startswith(exe[0])
    assert f"--state-dir {tmp_path / 'state'} --listen [::1]:3261" in text
    rw = next(x for x in text.splitlines() if x.startswith("ReadWritePaths=/"))
    assert "/srv/luns" in rw.split()  # the saved file LUN's directory stays writable
    assert (tmp_path / "man" / "man1" / "gluster-iscsi.1").exists()


def test_systemd_install_refuses_a_bad_listen_address(tmp_path):
    r = CliRunner().invoke(main, ["systemd", "install", "--state-dir", str(tmp_path),
                                  "--listen", "::1:3260", "--unit-dir", str(tmp_path / "u")])
    assert r.exit_code == 6 and "brackets" in r.output
    assert not (tmp_path / "u").exists()


def test_systemd_analyze_verify_passes_on_the_installed_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: scripts/install installs systemd")
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    assert Path(unitmod.executable()[0]).exists()  # verify checks ExecStart's binary
    r = subprocess.run([sys.executable, "-m", "gluster_iscsi", "--state-dir",
                        str(tmp_path / "state"), "systemd", "install", "--unit-dir",
                        str(tmp_path / "units"), "--man-dir", str(tmp_path / "man")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    v = subprocess.run([analyze, "verify", str(tmp_path / "units" / "gluster-iscsi.service")],
                       capture_output=True, text=True,
                       env=dict(os.environ, MANPATH=str(tmp_path / "man")))
    print(v.stdout, v.stderr)
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr
