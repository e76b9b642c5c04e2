"""``config apply`` / ``config reload`` / SIGHUP against a real daemon: all or nothing, and no
session dropped without ``--force`` (issue 15, item 2)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluster_iscsi.control import config as cfgmod

from .harness import Serve, free_port

pytestmark = pytest.mark.integration

LATCLIENT = Path(__file__).resolve().parents[2] / "bench" / "latclient.py"
T1 = "iqn.2001-04.com.example:t1"


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.args, p.returncode, p.stdout, p.stderr)
    return p.stdout


@pytest.fixture
def serve(tmp_path):
    """A daemon exporting T1 LUN 1 (a 16 MiB file) to ALL on one loopback portal."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "t1.img", "wb") as f:
        f.truncate(16 << 20)
    s = Serve(tmp_path / "state").start()
    ok(s.cli("target", "create", T1))
    ok(s.cli("lun", "create", T1, str(data / "t1.img"), "--lun", "1"))
    ok(s.cli("acl", "add", T1, "ALL"))
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def snapshot(serve: Serve) -> tuple[str, bytes]:
    return ok(serve.cli("config", "export", "--show-secrets")), (
        serve.state_dir / "config.json"
    ).read_bytes()


def login_works(serve: Serve, port: int | None = None) -> bool:
    url = f"iscsi://127.0.0.1:{port or serve.port}/{T1}/1"
    return subprocess.run(["iscsi-inq", url], capture_output=True, timeout=30).returncode == 0


def open_files(serve: Serve) -> set[str]:
    assert serve.proc is not None
    fds = Path(f"/proc/{serve.proc.pid}/fd")
    out = set()
    for fd in fds.iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    return out


def new_targets(tmp_path: Path, n: int, luns: int, missing: int | None = None) -> list[dict]:
    """``n`` new targets with ``luns`` new LUN files each; LUN ``missing`` of the first has no
    file (and no size, so it cannot be created either)."""
    out = []
    for i in range(n):
        t = {"name": f"iqn.2001-04.com.example:new{i}", "tid": 10 + i, "luns": [],
             "acl": [{"network": "ALL"}]}  # fmt: skip
        for j in range(1, luns + 1):
            path = tmp_path / "data" / f"new{i}-{j}.img"
            if not (i == 0 and j == missing):
                with open(path, "wb") as f:
                    f.truncate(1 << 20)
            t["luns"].append({"lun": j, "backing": str(path)})
        out.append(t)
    return out


def hold(serve: Serve, n: int, tmp: Path) -> subprocess.Popen[str]:
    """``n`` sessions logged in to T1 until the test kills them."""
    ready = tmp / f"ready-{time.monotonic_ns()}"
    p = subprocess.Popen(
        [sys.executable, str(LATCLIENT), "hold", f"iscsi://127.0.0.1:{serve.port}/{T1}/1",
         "--sessions", str(n), "--seconds", "600", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "sessions did not log in"
        time.sleep(0.05)
    return p


def tsihs(serve: Serve) -> set[int]:
    return {s["tsih"] for s in json.loads(ok(serve.cli("session", "list", "--json")))}


def test_apply_with_a_portal_in_use_changes_nothing(serve, tmp_path):
    before = snapshot(serve)
    fds_before = open_files(serve)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy_port = taken.getsockname()[1]
    cfg = json.loads(before[0])
    cfg["targets"] += new_targets(tmp_path, 4, 4)
    cfg["portals"] = [{"host": "127.0.0.1", "port": busy_port, "advertise": None}]
    path = tmp_path / "new.json"
    path.write_text(json.dumps(cfg))
    try:
        res = serve.cli("config", "apply", str(path))
    finally:
        taken.close()
    assert res.returncode == 9, (res.stdout, res.stderr)
    assert f"127.0.0.1:{busy_port}" in res.stderr and "cannot listen" in res.stderr
    assert login_works(serve)  # the old portal still listens
    assert snapshot(serve) == before
    assert ok(serve.cli("target", "list", "--json")).count("example:new") == 0
    assert not [f for f in open_files(serve) if "new" in Path(f).name]
    assert open_files(serve) <= fds_before | {f for f in open_files(serve) if "socket:" in f}


def test_apply_with_a_store_missing_midway_changes_nothing(serve, tmp_path):
    before = snapshot(serve)
    extra_port = free_port()
    cfg = json.loads(before[0])
    cfg["targets"] += new_targets(tmp_path, 2, 3, missing=2)
    cfg["portals"].append({"host": "127.0.0.1", "port": extra_port, "advertise": None})
    path = tmp_path / "new.json"
    path.write_text(json.dumps(cfg))
    res = serve.cli("config", "apply", str(path))
    assert res.returncode == 9, (res.stdout, res.stderr)
    assert "new0-2.img" in res.stderr
    assert login_works(serve)
    assert snapshot(serve) == before
    assert not [f for f in open_files(serve) if "new" in Path(f).name]
    with socket.socket() as s:  # the new portal was given back
        s.bind(("127.0.0.1", extra_port))
    assert "example:new" not in ok(serve.cli("target", "list"))


def test_changes_that_drop_sessions_need_force(serve, tmp_path):
    p = hold(serve, 2, tmp_path)
    try:
        held = tsihs(serve)
        assert len(held) == 2
        before = snapshot(serve)
        cfg = json.loads(before[0])
        cfg["targets"][0]["luns"][0]["read_only"] = True  # a replaced LUN
        path = tmp_path / "ro.json"
        path.write_text(json.dumps(cfg))
        res = serve.cli("config", "apply", str(path))
        assert res.returncode == 7, (res.stdout, res.stderr)
        assert f"target {T1}: LUN 1 (replaced) in use by 2 session(s)" in res.stderr
        assert "--force" in res.stderr
        cfg["targets"] = []
        cfg["portals"][0]["port"] = free_port()
        path.write_text(json.dumps(cfg))
        res = serve.cli("config", "apply", str(path))
        assert res.returncode == 7, (res.stdout, res.stderr)
        assert f"target {T1}: removing it closes its 2 session(s)" in res.stderr
        assert f"portal 127.0.0.1:{serve.port}: removing it closes its 2 connection(s)" in res.stderr
        assert tsihs(serve) == held and snapshot(serve) == before
        out = json.loads(ok(serve.cli("config", "apply", str(path), "--force", "--json")))
        kinds = {(c["action"], c["object"]) for c in out["changes"]}
        assert {("remove", "target"), ("remove", "portal"), ("add", "portal")} <= kinds
        assert all(isinstance(c["text"], str) for c in out["changes"])
        assert tsihs(serve) == set()
        assert cfgmod.load(serve.state_dir)["targets"] == []
    finally:
        p.kill()
        p.communicate()


def test_reload_refuses_a_busy_change_and_force_applies_it(serve, tmp_path):
    p = hold(serve, 1, tmp_path)
    try:
        held = tsihs(serve)
        cfg = cfgmod.load(serve.state_dir)
        cfg["targets"] = []
        cfgmod.save(serve.state_dir, cfg)
        res = serve.cli("config", "reload")
        assert res.returncode == 7 and "--force" in res.stderr, (res.stdout, res.stderr)
        assert tsihs(serve) == held and T1 in ok(serve.cli("target", "list"))
        assert f"target {T1} (tid 1): remove" in ok(serve.cli("config", "reload", "--force"))
        assert tsihs(serve) == set()
    finally:
        p.kill()
        p.communicate()


def test_sighup_refuses_a_busy_change_and_says_what_to_run(serve, tmp_path):
    p = hold(serve, 1, tmp_path)
    try:
        held = tsihs(serve)
        cfg = cfgmod.load(serve.state_dir)
        cfg["targets"] = []
        cfgmod.save(serve.state_dir, cfg)
        serve.hup()
        deadline = time.monotonic() + 20
        while "SIGHUP: reload refused" not in serve.log():
            assert time.monotonic() < deadline, serve.log()[-3000:]
            time.sleep(0.1)
        line = next(x for x in serve.log().splitlines() if "SIGHUP: reload refused" in x)
        assert f"target {T1}" in line and "gluster-iscsi config reload --force" in line
        assert tsihs(serve) == held and T1 in ok(serve.cli("target", "list"))
    finally:
        p.kill()
        p.communicate()


def test_a_new_advertised_address_keeps_the_portals_connections(serve, tmp_path):
    p = hold(serve, 1, tmp_path)
    try:
        held = tsihs(serve)
        cfg = json.loads(ok(serve.cli("config", "export", "--show-secrets")))
        cfg["portals"][0]["advertise"] = "192.0.2.7:3260"
        path = tmp_path / "adv.json"
        path.write_text(json.dumps(cfg))
        out = json.loads(ok(serve.cli("config", "apply", str(path), "--json")))
        assert [(c["action"], c["object"], c["advertise"]) for c in out["changes"]] == [
            ("set", "portal", "192.0.2.7:3260")
        ]
        assert tsihs(serve) == held
        ls = subprocess.run(["iscsi-ls", f"iscsi://127.0.0.1:{serve.port}"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
        assert "192.0.2.7:3260" in ls.stdout, ls
        assert login_works(serve)
    finally:
        p.kill()
        p.communicate()


def test_a_portal_moved_to_another_name_for_the_same_address_is_rebound(serve, tmp_path):
    """127.0.0.1:P -> localhost:P: the new socket can only be bound once the old listener is
    closed, which the commit does last (and would undo)."""
    cfg = json.loads(ok(serve.cli("config", "export", "--show-secrets")))
    cfg["portals"] = [{"host": "localhost", "port": serve.port, "advertise": None}]
    path = tmp_path / "moved.json"
    path.write_text(json.dumps(cfg))
    out = json.loads(ok(serve.cli("config", "apply", str(path), "--json")))
    assert [(c["action"], c["host"]) for c in out["changes"]] == [
        ("remove", "127.0.0.1"), ("add", "localhost")
    ]
    assert login_works(serve)
    assert cfgmod.load(serve.state_dir)["portals"] == cfg["portals"]
