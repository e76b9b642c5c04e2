"""The group commands of the CLI (issue 20) without a daemon: create, join, leave and
initiator-config work on the group directory and the local config file; every refusal is a
message with its exit code, in --json too. (With daemons: tests/integration/test_group_mgmt.py.)"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gluster_iscsi.cli.main import main
from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control import group as groupmod


def run(state_dir, *args):
    return CliRunner().invoke(main, ["--state-dir", str(state_dir), "--timeout", "2", *args])


@pytest.fixture
def loc(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    return str(vol / ".gluster-iscsi")


def test_create_join_show_config_and_leave_without_a_daemon(tmp_path, loc):
    a, b = tmp_path / "a", tmp_path / "b"
    res = run(a, "group", "create", "g1", "--location", loc)
    assert res.exit_code == 0, res.output
    assert "created group g1" in res.output and f"group join {loc} --gateway NAME" in res.output
    res = run(a, "group", "join", loc, "--gateway", "gw-a", "--address", "192.0.2.1:3260")
    assert res.exit_code == 0, res.output
    assert "gateway gw-a (number 1) is in group g1" in res.output
    assert f"start the daemon: gluster-iscsi --state-dir {a} serve" in res.output
    assert cfgmod.load(a)["group"] == {"location": loc, "gateway": "gw-a", "number": 1,
                                       "beat_seconds": 1.0, "lease_seconds": 5.0}  # fmt: skip
    res = run(b, "group", "join", loc, "--gateway", "gw-b", "--address", "192.0.2.2:3260",
              "--address", "[2001:db8::2]:3260", "--json")
    out = json.loads(res.output)
    assert res.exit_code == 0 and set(out) == {"group", "location", "gateway", "number",
                                               "addresses", "restart_required", "hint"}
    assert (out["number"], out["addresses"]) == (2, ["192.0.2.2:3260", "[2001:db8::2]:3260"])
    res = run(a, "group", "initiator-config", "--location", loc)
    assert res.exit_code == 0, res.output
    for text in ("prio alua", 'hardware_handler "1 alua"', "failback immediate",
                 "--portal 192.0.2.1:3260", "--portal [2001:db8::2]:3260"):
        assert text in res.output
    out = json.loads(run(a, "group", "initiator-config", "--location", loc, "--json").output)
    assert set(out) == {"group", "no_path_retry", "multipath_conf", "addresses", "targets",
                        "iscsiadm"}  # fmt: skip
    assert [x["gateway"] for x in out["addresses"]] == ["gw-a", "gw-b", "gw-b"]
    res = run(b, "group", "leave", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["gateway"] == "gw-b"
    assert "group" not in cfgmod.load(b)
    out = json.loads(run(a, "group", "initiator-config", "--location", loc, "--json").output)
    assert [x["gateway"] for x in out["addresses"]] == ["gw-a"]


def test_refusals_say_why_with_their_exit_codes(tmp_path, loc):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(a, "group", "create", "g1", "--location", loc).exit_code == 0
    res = run(a, "group", "create", "g2", "--location", loc)
    assert res.exit_code == 5 and "already holds group 'g1'" in res.output
    assert run(a, "group", "join", loc, "--gateway", "gw-a", "--address", "h:1").exit_code == 0
    res = run(b, "group", "join", loc, "--gateway", "gw-a", "--address", "h:2", "--json")
    assert res.exit_code == 5
    err = json.loads(res.stdout)["error"]
    assert err["code"] == "exists" and "gw-a is already in group g1" in err["message"]
    assert "pick another --gateway name" in err["hint"]
    res = run(b, "group", "join", loc, "--gateway", "gw-b", "--number", "1", "--address", "h:2")
    assert res.exit_code == 5 and "gateway number 1 is held by gw-a" in res.output
    res = run(b, "group", "join", loc, "--gateway", "gw-b")  # no portal, no --address
    assert res.exit_code == 6 and "--address HOST:PORT" in res.output
    res = run(b, "group", "join", loc, "--gateway", "gw-b", "--address", "h:99999")
    assert res.exit_code == 6 and "--address h:99999" in res.output
    res = run(a, "group", "join", str(tmp_path / "other" / ".gluster-iscsi"), "--gateway", "gw-a",
              "--address", "h:1")
    assert res.exit_code == 5 and "group leave" in res.output  # already in another group
    # the volume cannot be reached: a file where the directory should be
    (tmp_path / "file").write_text("x")
    res = run(c, "group", "create", "g3", "--location", str(tmp_path / "file" / ".gluster-iscsi"))
    assert res.exit_code == 9 and "cannot reach the group directory" in res.output
    res = run(c, "group", "join", str(tmp_path / "nowhere" / ".gluster-iscsi"), "--gateway", "x",
              "--address", "h:1")
    assert res.exit_code == 4 and "no gateway group at" in res.output and "group create" in res.output
    res = run(c, "group", "leave")
    assert res.exit_code == 4 and "in no group" in res.output
    res = run(c, "group", "show")
    assert res.exit_code == 3 and "not running" in res.output


def test_a_definition_from_a_newer_version_is_refused(tmp_path, loc):
    assert run(tmp_path / "a", "group", "create", "g1", "--location", loc).exit_code == 0
    from gluster_iscsi.group.shared import open_shared

    with open_shared(loc) as shared:
        rec = shared.read("group.json")
        shared.write("group.json", {**rec.data, "format": groupmod.FORMAT + 1})
    for args in (("group", "initiator-config", "--location", loc),
                 ("group", "join", loc, "--gateway", "gw-a", "--address", "h:1")):
        res = run(tmp_path / "a", *args)
        assert res.exit_code == 6, res.output
        assert "written by a newer gluster-iscsi" in res.output and "upgrade" in res.output
    assert "group" not in (cfgmod.load(tmp_path / "a") or {})


def test_help_of_the_group_commands_names_what_they_do():
    res = CliRunner().invoke(main, ["group", "--help"])
    for cmd in ("create", "join", "leave", "show", "rebalance", "initiator-config"):
        assert cmd in res.output
    assert "--to" in CliRunner().invoke(main, ["lun", "move", "--help"]).output


def test_create_non_owner_is_written_and_join_carries_it(tmp_path, loc):
    a = tmp_path / "a"
    res = run(a, "group", "create", "g1", "--location", loc, "--non-owner", "standby", "--json")
    assert res.exit_code == 0, res.output
    res = run(a, "group", "join", loc, "--gateway", "gw-a", "--address", "192.0.2.1:3260")
    assert res.exit_code == 0, res.output
    assert cfgmod.load(a)["group"]["non_owner"] == "standby"
    res = run(tmp_path / "b", "group", "create", "g2", "--location", loc + "2",
              "--non-owner", "sometimes")
    assert res.exit_code == 2 and "non-optimized" in res.output


def test_create_refuses_a_gluster_volume_whose_options_it_cannot_read(tmp_path, loc,
                                                                       monkeypatch):
    # F12: the location is on a Gluster volume, but no gluster CLI here to read its options:
    # refused (it failed open before), unless --skip-volume-check, which is recorded
    import shutil

    monkeypatch.setattr(groupmod, "volume_and_host", lambda location: ("vol", "h1"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    a = tmp_path / "a"
    res = run(a, "group", "create", "g1", "--location", loc)
    assert res.exit_code != 0, res.output
    assert "cannot check the options of volume vol" in res.output
    assert "--skip-volume-check" in res.output
    res = run(a, "group", "create", "g1", "--location", loc, "--skip-volume-check")
    assert res.exit_code == 0, res.output
    with groupmod.open_location(loc) as shared:
        defn = groupmod.load_definition(shared, loc)
    assert defn["settings"]["volume_check"] == "skipped"


def test_create_on_a_location_that_is_not_gluster_needs_no_volume_check(tmp_path, loc):
    res = run(tmp_path / "a", "group", "create", "g1", "--location", loc)
    assert res.exit_code == 0, res.output
    with groupmod.open_location(loc) as shared:
        assert "volume_check" not in groupmod.load_definition(shared, loc)["settings"]


class _FakeClient:
    """A daemon that answers with canned results (or raises), for the output of the group
    commands that need one."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def call(self, op, **args):
        self.calls.append(op)
        answer = self.answers[op]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def daemon(monkeypatch):
    from gluster_iscsi.cli.context import Ctx

    fake = _FakeClient({"ping": {}})
    monkeypatch.setattr(Ctx, "client", lambda self: fake)
    return fake


T = "iqn.2026-11.com.example:t"


def test_rebalance_reports_every_row_and_exits_unavailable_if_a_move_failed(tmp_path, daemon):
    """R2/R3: the moves asked are listed as asked (not done), a failed one as NOT moved,
    and the exit status says that not all were asked, in --json too."""
    daemon.answers["group.rebalance"] = {"dry_run": False, "failed": 1, "moves": [
        {"gfid": "g1", "target": T, "lun": 1, "from": None, "to": "gw-a", "done": False,
         "error": "the move to gw-a did not complete: timed out"},
        {"gfid": "g2", "target": T, "lun": 2, "from": "gw-a", "to": "gw-b", "done": True}]}
    res = run(tmp_path, "group", "rebalance")
    assert res.exit_code == 9, res.output
    assert f"NOT moved LUN 1 of {T}: (none) -> gw-a (the move to gw-a" in res.output
    assert f"move asked: LUN 2 of {T}: gw-a -> gw-b" in res.output
    res = run(tmp_path, "group", "rebalance", "--json")
    assert res.exit_code == 9 and json.loads(res.output)["failed"] == 1
    daemon.answers["group.rebalance"]["moves"].pop(0)
    daemon.answers["group.rebalance"]["failed"] = 0
    res = run(tmp_path, "group", "rebalance")
    assert res.exit_code == 0 and "group show' says when the moves are done" in res.output


def test_lun_move_says_the_move_is_asked_not_done(tmp_path, daemon):
    daemon.answers["lun.move"] = {"target": T, "lun": 1, "gfid": "g1", "to": "gw-b"}
    res = run(tmp_path, "lun", "move", T, "1", "--to", "gw-b")
    assert res.exit_code == 0, res.output
    assert "move to gw-b asked of its owner" in res.output and "is owned by" not in res.output


def test_group_join_json_reports_a_daemon_error_as_json(tmp_path, daemon, loc):
    """R4: a daemon that answers the ping with an error (not 'unavailable'): --json gets
    the error as JSON, not only as text on stderr."""
    from gluster_iscsi.control.protocol import ApiError

    daemon.answers["ping"] = ApiError("bad_request", "permission denied on the socket")
    res = CliRunner().invoke(
        main, ["--state-dir", str(tmp_path), "--timeout", "2", "group", "join", loc,
               "--gateway", "gw-a", "--address", "192.0.2.1:3260", "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["message"] == "permission denied on the socket"


def test_create_refuses_a_bad_address_before_it_makes_the_group(tmp_path, loc):
    """R13: a malformed --address was checked only when joining, after the group was
    made: the command failed, and running it again fixed was refused ('exists')."""
    a = tmp_path / "a"
    res = run(a, "group", "create", "g1", "--location", loc, "--gateway", "gw-a",
              "--address", "192.0.2.1:notaport")
    assert res.exit_code == 6, res.output
    assert not (tmp_path / "vol" / ".gluster-iscsi" / "group.json").exists()
    res = run(a, "group", "create", "g1", "--location", loc, "--gateway", "gw-a",
              "--address", "192.0.2.1:3260")
    assert res.exit_code == 0, res.output
    assert "created group g1" in res.output and "gateway gw-a (number 1)" in res.output


def test_create_says_the_group_exists_when_the_join_fails(tmp_path, daemon, loc):
    """R13: with a running daemon, create joins this gateway; when that join is refused the
    output still says the group was made (a second create would say 'exists')."""
    from gluster_iscsi.control.protocol import ApiError

    daemon.answers["group.join"] = ApiError(
        "invalid", "no address initiators can reach this gateway at")
    res = run(tmp_path, "group", "create", "g1", "--location", loc, "--gateway", "gw-a")
    assert res.exit_code == 6
    assert f"created group g1 at {loc}" in res.output
