"""The issue's "done means", against a real ``gluster-iscsi serve`` (and real initiators)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluster_iscsi.control import config as cfgmod

from ..gluster_env import gluster_volume_fixture
from .harness import Serve

pytestmark = pytest.mark.integration

LATCLIENT = Path(__file__).resolve().parents[2] / "bench" / "latclient.py"
T1 = "iqn.20013-10.com.redhat:tgt1"
T2 = "iqn.2001-04.com.example:t2"
TGTADM = ["tgtadm", "--lld", "iscsi"]


@pytest.fixture
def backing(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("file", "file2"):
        with open(d / name, "wb") as f:
            f.truncate(100 << 20)
    return d


@pytest.fixture
def serve(tmp_path):
    s = Serve(tmp_path / "state").start()
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def cookbook(serve: Serve, backing: Path) -> subprocess.CompletedProcess[str]:
    first = serve.cli(*TGTADM, "--op", "new", "--mode", "target", "--tid", "1", "-T", T1)
    ok(first)
    ok(serve.cli(*TGTADM, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                 "-b", str(backing / "file"), "--bstype", "rdwr"))  # fmt: skip
    ok(serve.cli(*TGTADM, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"))
    return first


def hold(
    serve: Serve, target: str, n: int, seconds: float, tmp: Path
) -> tuple[subprocess.Popen, Path]:
    ready = tmp / f"ready-{time.monotonic_ns()}"
    p = subprocess.Popen(
        [sys.executable, str(LATCLIENT), "hold", f"iscsi://127.0.0.1:{serve.port}/{target}/1",
         "--sessions", str(n), "--seconds", str(seconds), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not ready.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "sessions did not log in"
        time.sleep(0.05)
    return p, ready


def test_the_cookbook_runs_as_written_and_warns_about_its_iqn(serve, backing, tmp_path):
    first = cookbook(serve, backing)
    assert "tgtadm: warning: target name iqn.20013-10.com.redhat:tgt1" in first.stderr
    assert "yyyy-mm" in first.stderr
    show = ok(serve.cli("tgtadm", "--op", "show", "--mode", "target"))
    assert show.startswith(f"Target 1: {T1}\n")
    assert f"Backing store path: {backing / 'file'}" in show
    assert "Size: 105 MB, Block size: 512" in show
    assert show.rstrip().endswith("ACL information:\n        ALL")
    # discovery (SendTargets) and a login, both through the ACL the cookbook set
    out = subprocess.run(["iscsi-ls", f"iscsi://127.0.0.1:{serve.port}"],
                         capture_output=True, text=True, timeout=20)  # fmt: skip
    assert f"Target:{T1}" in out.stdout, out
    p, _ = hold(serve, T1, 1, 0.1, tmp_path)
    assert json.loads(p.communicate(timeout=20)[0])["sessions"] == 1


def test_bind_by_address_and_the_glfs_form_is_accepted_into_the_config(serve, backing):
    cookbook(serve, backing)
    ok(
        serve.cli(
            *TGTADM, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "192.168.122.0/24"
        )
    )
    cfg = json.loads(ok(serve.cli("config", "export")))
    assert cfg["targets"][0]["acl"] == [{"network": "ALL"}, {"network": "192.168.122.0/24"}]


def test_restart_restores_everything_exactly(tmp_path, backing):
    state = tmp_path / "state"
    with Serve(state) as s:
        port = s.port
        cookbook(s, backing)
        ok(
            s.cli(
                *TGTADM,
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                "alice",
                "--password",
                "alicesecret12",
            )
        )
        ok(s.cli(*TGTADM, "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice"))
        ok(s.cli(*TGTADM, "--op", "update", "--mode", "target", "--tid", "1", "--name",
                 "MaxRecvDataSegmentLength", "--value", "65536"))  # fmt: skip
        ok(s.cli("target", "create", T2, "--alias", "second"))
        ok(s.cli("lun", "create", T2, str(backing / "file2"), "--lun", "3", "--read-only"))
        ok(s.cli("acl", "add", T2, "iqn.1994-05.com.redhat:client"))
        before_cfg = ok(s.cli("config", "export", "--show-secrets"))
        before_show = ok(s.cli("tgtadm", "--op", "show", "--mode", "target"))
        before_params = ok(s.cli("tgtadm", "--op", "show", "--mode", "target", "--tid", "1"))
    assert stat.S_IMODE((state / "config.json").stat().st_mode) == 0o600
    with Serve(state, port=port) as s:
        assert ok(s.cli("config", "export", "--show-secrets")) == before_cfg
        assert ok(s.cli("tgtadm", "--op", "show", "--mode", "target")) == before_show
        assert (
            ok(s.cli("tgtadm", "--op", "show", "--mode", "target", "--tid", "1")) == before_params
        )
        assert "MaxRecvDataSegmentLength=65536" in before_params
        assert stat.S_IMODE((state / "control.sock").stat().st_mode) == 0o600


def test_reload_after_adding_a_target_keeps_other_targets_sessions(serve, backing, tmp_path):
    cookbook(serve, backing)
    p, _ = hold(serve, T1, 2, 8, tmp_path)
    before = {s["tsih"] for s in json.loads(ok(serve.cli("session", "list", "--json")))}
    assert len(before) == 2
    # an admin edits the file, then SIGHUP
    cfg = cfgmod.load(serve.state_dir)
    cfg["targets"].append({"name": T2, "tid": 2, "luns": [{"lun": 1, "backing": str(backing / "file2")}],
                           "acl": [{"network": "ALL"}]})  # fmt: skip
    cfgmod.save(serve.state_dir, cfg)
    serve.hup()
    deadline = time.monotonic() + 10
    while T2 not in ok(serve.cli("target", "list")):
        assert time.monotonic() < deadline, serve.log()[-2000:]
        time.sleep(0.1)
    # the same file through the API: nothing left to do
    assert "no changes" in ok(serve.cli("config", "reload"))
    after = {s["tsih"] for s in json.loads(ok(serve.cli("session", "list", "--json")))}
    assert after == before
    out, err = p.communicate(timeout=30)
    assert json.loads(out)["lost"] == 0, (out, err)


def test_closing_one_session_and_deleting_a_busy_target(serve, backing, tmp_path):
    cookbook(serve, backing)
    p, _ = hold(serve, T1, 2, 6, tmp_path)
    sessions = json.loads(ok(serve.cli("session", "list", T1, "--json")))
    assert {s["initiator_address"] for s in sessions} == {"127.0.0.1"}
    assert all(s["params"]["MaxRecvDataSegmentLength"] for s in sessions)
    tsih = sessions[0]["tsih"]
    show = ok(serve.cli("tgtadm", "--op", "show", "--mode", "target"))
    nexus = (f"        I_T nexus: {tsih}\n            Initiator: {sessions[0]['initiator_name']}"
             " alias: none\n            Connection: 0\n                IP Address: 127.0.0.1\n")  # fmt: skip
    assert nexus in show
    conn = ok(serve.cli(*TGTADM, "--op", "show", "--mode", "conn", "--tid", "1"))
    assert f"Session: {tsih}\n    Connection: 0\n        Initiator: " in conn
    ok(serve.cli("session", "close", str(tsih)))
    left = json.loads(ok(serve.cli("session", "list", "--json")))
    assert [s["tsih"] for s in left] == [sessions[1]["tsih"]]
    busy = serve.cli("target", "delete", T1)
    assert busy.returncode == 7 and "1 session(s)" in busy.stderr and "--force" in busy.stderr
    tgt = serve.cli(*TGTADM, "--op", "delete", "--mode", "target", "--tid", "1")
    assert tgt.returncode == 22 and tgt.stderr.startswith("tgtadm: this target is still active\n")
    ok(serve.cli(*TGTADM, "--op", "delete", "--mode", "target", "--tid", "1", "--force"))
    out, _ = p.communicate(timeout=30)
    assert json.loads(out)["lost"] == 2


def test_native_cli_errors_name_the_object_and_the_fix(serve, backing):
    bad = serve.cli("target", "create", "iqn.20013-10.com.redhat:tgt1")
    assert bad.returncode == 6
    assert "yyyy-mm" in bad.stderr and "--force" in bad.stderr
    ok(serve.cli("target", "create", T2))
    dup = serve.cli("target", "create", T2)
    assert dup.returncode == 5 and f"target {T2} already exists" in dup.stderr
    assert serve.cli("target", "create", T2, "--exist-ok").returncode == 0
    missing = serve.cli("lun", "create", T2, str(backing / "nope"))
    assert missing.returncode == 9 and "nope" in missing.stderr and "LUN 1" in missing.stderr
    assert serve.cli("lun", "delete", T2, "4").returncode == 4
    assert serve.cli("lun", "delete", T2, "4", "--missing-ok").returncode == 0
    short = serve.cli("auth", "account-add", "alice", "--secret", "short")
    assert short.returncode == 6 and "at least 12" in short.stderr
    assert serve.cli("acl", "add", T2, "not-an-iqn").returncode == 6
    assert serve.cli("target", "show", "iqn.2001-04.com.example:none").returncode == 4


def test_sizes_json_and_idempotent_apply(serve, tmp_path):
    ok(serve.cli("target", "create", T2))
    img = tmp_path / "new.img"
    ok(serve.cli("lun", "create", T2, str(img), "--size", "10MiB"))
    assert img.stat().st_size == 10 << 20
    assert "10 MiB" in ok(serve.cli("lun", "list"))
    ok(serve.cli("lun", "resize", T2, "1", "12MiB"))
    luns = json.loads(ok(serve.cli("lun", "list", "--json")))
    assert luns[0]["size"] == 12 << 20 and img.stat().st_size == 12 << 20
    ok(serve.cli("auth", "account-add", "alice", "--secret", "alicesecret12"))
    ok(serve.cli("auth", "bind", "alice", "--target", T2))
    shown = ok(serve.cli("target", "show", T2)) + ok(serve.cli("auth", "show"))
    shown += ok(serve.cli("target", "show", T2, "--json")) + ok(serve.cli("auth", "account-list"))
    assert "alicesecret12" not in shown
    assert "alicesecret12" in ok(serve.cli("target", "show", T2, "--show-secrets"))
    exported = tmp_path / "cfg.json"
    exported.write_text(ok(serve.cli("config", "export")))
    assert "no changes" in ok(serve.cli("config", "apply", str(exported)))
    cfg = json.loads(exported.read_text())
    cfg["targets"][0]["acl"] = [{"network": "10.0.0.0/8"}]
    exported.write_text(json.dumps(cfg))
    dry = ok(serve.cli("config", "apply", str(exported), "--dry-run"))
    assert dry.strip() == f"would: target {T2}: allow 10.0.0.0/8"
    assert json.loads(ok(serve.cli("acl", "list", T2, "--json"))) == []
    ok(serve.cli("config", "apply", str(exported)))
    assert "no changes" in ok(serve.cli("config", "apply", str(exported)))
    assert os.path.exists(serve.state_dir / "config.json.prev")


cli_volume = gluster_volume_fixture("giscsi-cli", profile="plain", mount=False)


@pytest.mark.gluster
def test_the_cookbooks_glfs_form(serve, tmp_path, cli_volume):
    vol = cli_volume.volume
    name = f"mgmt-test-{os.getpid()}-{time.monotonic_ns()}.img"
    ok(serve.cli("target", "create", T2))
    # create the file through gfapi (tgt needs it to exist, as do we for -b)
    ok(serve.cli("--timeout", "60", "lun", "create", T2, f"gluster://127.0.0.1/{vol}/{name}",
                 "--size", "10MiB"))  # fmt: skip
    ok(serve.cli(*TGTADM, "--op", "new", "--mode", "target", "--tid", "7", "-T", T1))
    glfs_lun = (*TGTADM, "--op", "new", "--mode", "logicalunit", "--tid", "7", "--lun", "1",
                "--bstype", "glfs", "-b", f"{vol}@127.0.0.1:{name}")
    # One file is one LUN (issue 15), whatever its spelling: tgt's form of the same file is
    # refused while the gluster:// LUN exports it ...
    again = serve.cli("--timeout", "60", *glfs_lun)
    assert again.returncode == 22 and "already exported" in again.stderr, again
    ok(serve.cli("lun", "delete", T2, "1"))
    # ... and taken once that LUN is gone
    ok(serve.cli("--timeout", "60", *glfs_lun))
    show = ok(serve.cli("tgtadm", "--op", "show", "--mode", "target"))
    assert (
        f"Backing store type: glfs\n            Backing store path: {vol}@127.0.0.1:{name}" in show
    )
    assert "Size: 10 MB, Block size: 512" in show


def test_two_daemons_side_by_side_are_driven_by_state_dir(tmp_path):
    with Serve(tmp_path / "a") as a, Serve(tmp_path / "b") as b:
        ok(a.cli("target", "create", T2))
        assert json.loads(ok(b.cli("target", "list", "--json"))) == []
        # --state-dir on the command line wins over GLUSTER_ISCSI_STATE_DIR (a's)
        via_flag = a.cli("--state-dir", str(b.state_dir), "target", "list", "--json")
        assert json.loads(ok(via_flag)) == []
        assert [t["name"] for t in json.loads(ok(a.cli("target", "list", "--json")))] == [T2]


def test_a_broken_config_file_is_refused_and_the_running_config_kept(serve, backing):
    cookbook(serve, backing)
    (serve.state_dir / "config.json").write_text('{"version": 1, "targets": [}')
    bad = serve.cli("config", "reload")
    assert bad.returncode == 6
    assert "config.json" in bad.stderr and "line 1" in bad.stderr and ".prev" in bad.stderr
    serve.hup()
    time.sleep(0.5)
    assert T1 in ok(serve.cli("target", "list"))
    # the next accepted change rewrites a good file
    ok(serve.cli("acl", "add", "1", "10.0.0.0/8"))
    assert cfgmod.load(serve.state_dir)["targets"][0]["acl"][1] == {"network": "10.0.0.0/8"}


def _inq(serve: Serve, target: str, auth: str = "", initiator: str | None = None) -> int:
    cmd = ["iscsi-inq"]
    if initiator:
        cmd += ["-i", initiator]
    cmd.append(f"iscsi://{auth}127.0.0.1:{serve.port}/{target}/1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).returncode


def test_chap_bound_with_tgtadm_is_enforced_at_login(serve, backing):
    cookbook(serve, backing)
    assert _inq(serve, T1) == 0
    ok(
        serve.cli(
            *TGTADM,
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "alice",
            "--password",
            "alicesecret12",
        )
    )
    ok(serve.cli(*TGTADM, "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice"))
    assert _inq(serve, T1) != 0
    assert _inq(serve, T1, "alice%wrongsecret99@") != 0
    assert _inq(serve, T1, "alice%alicesecret12@") == 0
    assert "alicesecret12" not in serve.log()


def test_acl_by_address_is_enforced_at_login(serve, backing):
    cookbook(serve, backing)
    ok(serve.cli(*TGTADM, "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "ALL"))
    ok(serve.cli(*TGTADM, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "10.9.9.9"))
    assert _inq(serve, T1) != 0
    ok(serve.cli("acl", "add", "1", "127.0.0.0/8"))
    assert _inq(serve, T1) == 0


def test_per_initiator_chap_is_enforced_at_login(serve, backing):
    cookbook(serve, backing)
    special = "iqn.2026-11.org.example:special"
    ok(serve.cli("acl", "add", "1", special))
    ok(serve.cli("auth", "account-add", "bob", "--secret", "bobsecret1234"))
    ok(serve.cli("auth", "bind", "bob", "--target", "1", "--initiator", special))
    assert _inq(serve, T1) == 0  # everyone else: no CHAP
    assert _inq(serve, T1, initiator=special) != 0
    assert _inq(serve, T1, "bob%bobsecret1234@", initiator=special) == 0


def test_a_backing_file_missing_at_restart_only_takes_that_lun_offline(tmp_path, backing):
    state = tmp_path / "state"
    with Serve(state) as s:
        port = s.port
        cookbook(s, backing)
        ok(s.cli("target", "create", T2))
        ok(s.cli("lun", "create", T2, str(backing / "file2")))
    (backing / "file2").rename(backing / "file2.away")
    with Serve(state, port=port) as s:
        luns = {(x["tid"], x["lun"]): x for x in json.loads(ok(s.cli("lun", "list", "--json")))}
        assert luns[(1, 1)]["online"] and not luns[(2, 1)]["online"]
        assert _inq(s, T1) == 0
        assert "Online: No" in ok(s.cli("tgtadm", "--op", "show", "--mode", "target"))
        (backing / "file2.away").rename(backing / "file2")
        assert f"target {T2}: LUN 1 online again" in ok(s.cli("config", "reload"))
        luns = json.loads(ok(s.cli("lun", "list", T2, "--json")))
        assert luns[0]["online"]
    # the config never lost the LUN
    assert cfgmod.load(state)["targets"][1]["luns"][0]["backing"] == str(backing / "file2")


def test_io_keeps_running_while_another_target_is_added_and_reloaded(serve, backing, tmp_path):
    cookbook(serve, backing)
    perf = subprocess.Popen(
        ["timeout", "-s", "INT", "6", "iscsi-perf", f"iscsi://127.0.0.1:{serve.port}/{T1}/1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(2)
    ok(serve.cli(*TGTADM, "--op", "new", "--mode", "target", "--tid", "2", "-T", T2))
    ok(serve.cli(*TGTADM, "--op", "new", "--mode", "logicalunit", "--tid", "2", "--lun", "1",
                 "-b", str(backing / "file2")))  # fmt: skip
    serve.hup()
    ok(serve.cli("config", "reload"))
    sessions = json.loads(ok(serve.cli("session", "list", T1, "--json")))
    out, _ = perf.communicate(timeout=30)
    ticks = [line for line in out.replace("\r", "\n").splitlines() if "iops current" in line]
    assert len(ticks) >= 4, out
    assert "reconnect" not in out.lower() and "error" not in out.lower(), out
    iops = [int(re.search(r"iops current (\d+)", t).group(1)) for t in ticks]
    assert min(iops) > 0, out  # no second without I/O: the session was never dropped
    assert len(sessions) == 1
