"""The daemon stopped or hung: every command fails fast, saying so, with a stable status."""

import shutil
import socket
import subprocess
import time

import pytest

EXE = shutil.which("gluster-iscsi")

COMMANDS = [
    ["status"], ["target", "list"], ["target", "create", "iqn.2001-04.com.example:x"],
    ["target", "show", "1"], ["lun", "list"], ["acl", "list", "1"], ["session", "list"],
    ["portal", "list"], ["auth", "account-list"], ["param", "list"], ["config", "export"],
    ["config", "reload"],
]  # fmt: skip


def run(args, env=None, timeout=20):
    t0 = time.monotonic()
    p = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return p, time.monotonic() - t0


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_no_daemon_means_exit_3_and_a_message_naming_the_state_dir(tmp_path, args):
    p, elapsed = run(["--state-dir", str(tmp_path), "--timeout", "2", *args])
    assert p.returncode == 3, p.stderr
    assert f"daemon is not running at {tmp_path}" in p.stderr
    assert "gluster-iscsi --state-dir" in p.stderr  # says how to fix it
    assert elapsed < 10


def test_the_state_dir_comes_from_the_environment(tmp_path):
    import os

    env = dict(os.environ, GLUSTER_ISCSI_STATE_DIR=str(tmp_path / "other"))
    p, _ = run(["target", "list"], env=env)
    assert p.returncode == 3 and str(tmp_path / "other") in p.stderr


def test_a_stale_socket_is_reported_as_not_running(tmp_path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "control.sock"))
    s.close()
    p, _ = run(["--state-dir", str(tmp_path), "target", "list"])
    assert p.returncode == 3 and "not running" in p.stderr


def test_a_hung_daemon_times_out_with_exit_8(tmp_path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "control.sock"))
    s.listen(5)  # accepts connections but never answers
    try:
        p, elapsed = run(["--state-dir", str(tmp_path), "--timeout", "1.5", "target", "list"])
    finally:
        s.close()
    assert p.returncode == 8, p.stderr
    assert "did not answer" in p.stderr and str(tmp_path) in p.stderr
    assert 1.2 < elapsed < 8


def test_tgtadm_reports_an_unreachable_daemon_as_tgtadm_does(tmp_path):
    p, elapsed = run(
        [
            "--state-dir",
            str(tmp_path),
            "--timeout",
            "2",
            "tgtadm",
            "--op",
            "show",
            "--mode",
            "target",
        ]
    )
    assert p.returncode == 107
    lines = p.stderr.splitlines()
    assert lines[0] == (
        "tgtadm: failed to send request hdr to tgt daemon, Transport endpoint is not connected"
    )
    assert f"not running at {tmp_path}" in lines[1]
    assert elapsed < 10


def test_json_errors_are_printed_as_json(tmp_path):
    import json

    p, _ = run(["--state-dir", str(tmp_path), "target", "list", "--json"])
    assert p.returncode == 3
    assert json.loads(p.stdout)["error"]["code"] == "daemon_unavailable"


def test_config_validate_works_offline(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"version": 1, "targets": [{"name": "iqn.2001-04.com.example:t", "tid": 1}]}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "targets": [{"name": "iqn.2001-04.com.example:t", "tid": 0}]}')
    p, _ = run(["config", "validate", str(good)])
    assert p.returncode == 0
    p, _ = run(["config", "validate", str(bad)])
    assert p.returncode == 6 and "targets[0].tid" in p.stderr
