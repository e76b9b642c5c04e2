"""``serve`` starting, against real processes: a port in use, another daemon, the demo's
defaults (issue 15 items 3 and 4). Every address here is loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluster_iscsi.control import config as cfgmod

from .harness import Serve, free_port

pytestmark = pytest.mark.integration

DEMO = "iqn.2026-11.org.gluster-iscsi:demo"


def run_serve(state_dir: Path, *args: str, default_portal: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gluster-iscsi serve`` in a child; default_portal stands in for 127.0.0.1:3260 (which
    may be taken on a shared machine) without changing what the code decides."""
    code = "from gluster_iscsi.cli.main import main; main()"
    if default_portal:
        code = f"import gluster_iscsi.cli.serve as s; s.DEFAULT_PORTAL = {default_portal!r}; " + code
    return subprocess.run(
        [sys.executable, "-c", code, "--state-dir", str(state_dir), "serve", "--no-uvloop", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_port_in_use_is_one_message_exit_9_and_no_stale_control_socket(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_serve(tmp_path, "--listen", f"127.0.0.1:{port}", "--demo")
    assert r.returncode == 9, r.stderr
    assert "Traceback" not in r.stderr
    errors = [x for x in r.stderr.splitlines() if "error:" in x]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "in use" in errors[0]
    assert any("hint:" in x and "--listen" in x for x in r.stderr.splitlines())
    assert not (tmp_path / "control.sock").exists()
    assert not (tmp_path / "demo-lun1.img").exists()  # the failed start created it: gone
    assert cfgmod.load(tmp_path) is None  # nothing saved


def test_a_second_daemon_on_the_same_state_dir_exits_7_and_leaves_the_first_alone(tmp_path):
    with Serve(tmp_path) as first:
        r = run_serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}")
        assert r.returncode == 7, r.stderr
        assert "Traceback" not in r.stderr and "already running" in r.stderr
        assert first.cli("status").returncode == 0  # its control socket still answers


def test_the_demo_serves_loopback_says_so_and_prints_a_real_address(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"import gluster_iscsi.cli.serve as s; s.DEFAULT_PORTAL = '127.0.0.1:{port}'; "
         "from gluster_iscsi.cli.main import main; main()",
         "--state-dir", str(tmp_path), "serve", "--no-uvloop", "--demo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        out = [proc.stdout.readline()]
        while out[-1] and "iscsi-inq" not in out[-1]:
            out.append(proc.stdout.readline())
        deadline = time.monotonic() + 20
        while not (tmp_path / cfgmod.CONFIG_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = "".join(out)
        assert "loopback only" in out[0] and "on 127.0.0.1:" in out[0], text
        saved = cfgmod.load(tmp_path)
        assert saved is not None
        assert [(p["host"], p["port"]) for p in saved["portals"]] == [("127.0.0.1", port)]
        assert [t["name"] for t in saved["targets"]] == [DEMO]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert f"--portal 127.0.0.1:{port}" in text and f"iscsi://127.0.0.1:{port}" in text
    connect = [x for x in text.splitlines() if "--portal" in x or "iscsi://" in x]
    assert len(connect) == 4 and not any("0.0.0.0" in x or "[::]" in x for x in connect)
    assert "WARNING" not in err  # loopback: nothing to warn about


def test_an_open_target_beyond_loopback_is_warned_about_at_start(tmp_path):
    # A host name is taken as possibly public (only 127/8, ::1 and localhost are loopback);
    # this machine's own name is used so the daemon still listens on loopback only.
    name = socket.gethostname()
    try:
        addrs = {i[4][0] for i in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        addrs = set()
    if not addrs or not all(a.startswith("127.") for a in addrs):
        pytest.skip(f"{name} does not resolve to loopback only here")
    port = free_port()
    cfg = cfgmod.empty_config()
    cfg["portals"] = [{"host": name, "port": port, "advertise": None}]
    cfg["targets"] = [{"name": "iqn.2026-11.com.example:open", "tid": 1, "alias": None,
                       "luns": [], "acl": [{"network": "ALL"}], "incoming": [],
                       "outgoing": None, "params": {}}]  # fmt: skip
    cfgmod.save(tmp_path, cfgmod.validate(cfg))
    serve = Serve(tmp_path, port=port)
    # Serve passes --listen 127.0.0.1:PORT, which replaces the saved portal: start by hand.
    with open(tmp_path / "serve.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gluster_iscsi", "--state-dir", str(tmp_path),
                                 "serve", "--no-uvloop"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while "WARNING" not in serve.log() and proc.poll() is None:
                assert time.monotonic() < deadline, serve.log()
                time.sleep(0.05)
            assert f"listening on {name}:{port}" in serve.log()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    warned = [x for x in serve.log().splitlines() if "WARNING" in x]
    assert len(warned) == 1 and "iqn.2026-11.com.example:open" in warned[0], serve.log()
    assert "without CHAP" in warned[0]
    json.loads((tmp_path / cfgmod.CONFIG_FILE).read_text())  # still the saved config


def test_config_export_to_an_unwritable_place_is_a_message_and_exit_6(tmp_path):
    with Serve(tmp_path / "state") as serve:
        (tmp_path / "file").write_text("x")
        for out in ("/nonexistent/dir/x.json", str(tmp_path / "file" / "x.json")):
            r = serve.cli("config", "export", "-o", out)
            assert r.returncode == 6 and "Traceback" not in r.stderr, r.stderr
            assert f"cannot write {out}" in r.stderr


def test_a_malformed_gfapi_xlator_option_is_a_usage_error_with_the_form(tmp_path):
    r = run_serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}",
                  "--gfapi-xlator-option", "*-io-threads:pass-through")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "XLATOR:KEY=VALUE" in r.stderr
    assert not (tmp_path / "control.sock").exists()


@pytest.mark.parametrize("size", ["100", "6KiB", "64MiB", "lots"])
def test_a_bad_gfapi_write_piece_is_a_usage_error_saying_what_fits(tmp_path, size):
    r = run_serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--gfapi-write-piece", size)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Invalid value for '--gfapi-write-piece'" in r.stderr
    if size != "lots":
        assert "multiple of 4KiB from 4KiB to 32MiB" in r.stderr
    assert not (tmp_path / "control.sock").exists()


@pytest.mark.parametrize(("option", "value"), [("--gfapi-cache-total", "plenty"),
                                               ("--gfapi-cache-total", "-1GiB"),
                                               ("--gfapi-cache", "most")])
def test_a_bad_read_cache_size_is_a_usage_error_naming_the_option(tmp_path, option, value):
    r = run_serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}", option, value)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and f"Invalid value for '{option}'" in r.stderr
    assert not (tmp_path / "control.sock").exists()
