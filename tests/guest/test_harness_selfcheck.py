"""Fast checks of the guest harness itself (no QEMU): result parsing, the host-command
channel, the per-run bundle, the portal proxy used for the tgt reference."""

from __future__ import annotations

import socket
import tarfile
import threading
import time
from pathlib import Path

import guest_harness as gh
import pytest
from targets import PortalProxy


def test_result_line_parsing_tolerates_console_noise():
    m = gh.RESULT_RE.search("[   12.3] sd 2:0:0:1: x RESULT basic.login PASS 0.24 ok then")
    assert m and (m[1], m[2], float(m[3]), m[4]) == ("basic.login", "PASS", 0.24, "ok then")
    assert gh.RESULT_RE.search("RESULT a.b FAIL 1.5") is not None
    assert gh.RESULT_RE.search("RESULTS are in") is None


def test_run_check_reports_failures_missing_steps_and_timeout(tmp_path):
    run = gh.GuestRun("basic", [gh.StepResult("basic.login", "FAIL", 1.0, "rc=24")], [],
                      tmp_path / "log", 0, 3.0, True, 1)  # fmt: skip
    problems = run.check(["login", "mkfs"])
    assert any("FAIL basic.login" in p for p in problems)
    assert any("2 required steps never reported: mkfs, done" in p for p in problems)
    assert "guest timed out" in problems


def test_bundle_carries_scripts_and_env(tmp_path):
    path = gh._bundle(tmp_path, "basic", {"GI_TARGET_IQN": "iqn.x:y", "GI_PORTALS": "a b"})
    assert path.stat().st_size % (1 << 20) == 0
    with tarfile.open(path) as tar:
        names = tar.getnames()
        env = tar.extractfile("env.sh").read().decode()  # type: ignore[union-attr]
    assert {"init-main.sh", "lib.sh", "scenario-basic.sh", "env.sh"} <= set(names)
    assert "export GI_PORTALS='a b'" in env
    with pytest.raises(ValueError):
        gh._bundle(tmp_path, "no-such-scenario", {})


def test_control_channel_runs_host_actions_and_answers(tmp_path):
    calls: list[list[str]] = []

    def stop(args: list[str]) -> str:
        calls.append(args)
        return "stopped"

    def boom(args: list[str]) -> None:
        raise RuntimeError("nope")

    ch = gh._ControlChannel(tmp_path / "c.sock", {"stop-portal": stop, "boom": boom},
                            lambda s: None)  # fmt: skip
    try:
        with socket.socket(socket.AF_UNIX) as s:  # plays the guest (QEMU's side)
            s.connect(str(tmp_path / "c.sock"))
            f = s.makefile("rw")
            for line in ["HOSTCMD stop-portal 2", "HOSTCMD boom", "HOSTCMD nothing", "garbage x"]:
                f.write(line + "\n")
                f.flush()
            replies = [f.readline().strip() for _ in range(4)]
    finally:
        ch.close()
    assert replies[0] == "OK stopped"
    assert replies[1] == "ERR RuntimeError: nope"
    assert replies[2].startswith("ERR no host action")
    assert replies[3].startswith("ERR bad request")
    assert calls == [["2"]]
    assert [c.reply for c in ch.commands] == replies


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(99), b"")],
                             daemon=True).start()  # fmt: skip

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_portal_proxy_stop_cuts_live_connections_and_start_restores():
    srv, port = _echo_server()
    proxy = PortalProxy(gh.free_port(), port)
    proxy.start()
    try:
        c = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5)
        c.sendall(b"ping")
        assert c.recv(10) == b"ping"
        proxy.stop()
        time.sleep(0.2)
        assert c.recv(10) == b""  # the established path died with the portal
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=2)
        proxy.start()
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5) as c2:
            c2.sendall(b"again")
            assert c2.recv(10) == b"again"
    finally:
        proxy.stop()
        srv.close()


def test_in_guest_scripts_are_valid_bash():
    import subprocess

    for f in sorted(Path(gh.IN_GUEST).glob("*.sh")):
        subprocess.run(["bash", "-n", str(f)], check=True)
    subprocess.run(["sh", "-n", str(Path(gh.HERE) / "guest-init.sh")], check=True)
    subprocess.run(["bash", "-n", str(gh.BUILD_SCRIPT)], check=True)


def test_step_names_are_relative_to_the_scenario(tmp_path):
    ok = [gh.StepResult(n, "PASS", 0.1, "") for n in ("chap.chap.login", "chap.done")]
    run = gh.GuestRun("chap", ok, [], tmp_path / "log", 0, 1.0, False, 0)
    assert run.result("chap.login") is ok[0]
    assert run.check(["chap.login"]) == []
    assert run.check(["mutual.login"]) == ["step chap.mutual.login never reported"]
