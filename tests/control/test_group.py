"""The management side of the gateway group (issue 20, docs/HA.md decisions 5 and 6): the
definition on the volume drives every gateway's targets, all or nothing; one file, one
identity; joins refuse clashes. The group directory is a plain tmp directory (the path
backend: GFIDs are device:inode stand-ins), the daemons are control's fakes."""

from __future__ import annotations

import asyncio
import os

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control import group as groupmod
from gluster_iscsi.control.api import ControlServer
from gluster_iscsi.control.protocol import ApiError

from .fakes import FakeDaemon

T1 = "iqn.2026-11.com.example:grp"

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
80 22 0:50 / /mnt/vol rw,relatime shared:40 - fuse.glusterfs gl1:/vol rw,user_id=0
81 80 0:51 / /mnt/vol/sub rw,relatime shared:41 - tmpfs tmpfs rw
82 22 0:52 / /mnt/volume2 rw,relatime shared:42 - fuse.glusterfs gl1:/vol2 rw
"""


# ------------------------------------------------------------------------- pure parts


def test_fuse_mount_root_is_the_longest_glusterfs_mount_above_the_path():
    assert groupmod.fuse_mount_root("/mnt/vol/.gluster-iscsi", MOUNTINFO) == "/mnt/vol"
    assert groupmod.fuse_mount_root("/mnt/vol", MOUNTINFO) == "/mnt/vol"
    assert groupmod.fuse_mount_root("/mnt/volume2/x", MOUNTINFO) == "/mnt/volume2"
    assert groupmod.fuse_mount_root("/mnt/vol/sub/x", MOUNTINFO) is None  # tmpfs on top
    assert groupmod.fuse_mount_root("/srv/x", MOUNTINFO) is None


def test_access_maps_volume_relative_paths_both_ways():
    fuse = groupmod.access_for("/mnt/vol/.gluster-iscsi", MOUNTINFO)
    assert (fuse.kind, fuse.root, fuse.volume) == ("fuse", "/mnt/vol", "vol")
    assert fuse.backing("/disks/a.img") == ("/mnt/vol/disks/a.img", "rdwr")
    assert fuse.relative("/mnt/vol/disks/a.img") == "/disks/a.img"
    assert fuse.relative("/mnt/volume2/a.img") is None
    assert fuse.relative("gluster://gl1/vol/disks/a.img") == "/disks/a.img"  # same volume
    gf = groupmod.access_for("gluster://gl1,gl2/vol/.gluster-iscsi")
    assert gf.kind == "gfapi"
    backing, bstype = gf.backing("/disks/a.img")
    assert bstype == "gluster" and backing.endswith("/vol/disks/a.img")
    assert gf.relative("gluster://localhost/vol/disks/a.img") == "/disks/a.img"
    assert gf.relative("gluster://gl1/other/disks/a.img") is None
    plain = groupmod.access_for("/srv/shared/.gluster-iscsi", MOUNTINFO)
    assert (plain.kind, plain.root) == ("path", "/srv/shared")


def _defn(**luns):
    return {
        "name": "g", "version": 3, "settings": {"beat_seconds": 1.0, "lease_seconds": 5.0},
        "gateways": {"b": {"number": 2, "addresses": ["192.0.2.2:3260"]},
                     "a": {"number": 1, "addresses": ["192.0.2.1:3260", "[2001:db8::1]:3260"]}},
        "targets": [{"name": T1, "tid": 1, "luns": []}],
        "luns": luns,
    }  # fmt: skip


def test_rebalance_keeps_preferred_and_spreads_the_rest_round_robin_by_number():
    d = _defn(g1={"target": T1, "lun": 1, "preferred": "b"},
              g2={"target": T1, "lun": 2, "preferred": None},
              g3={"target": T1, "lun": 3, "preferred": "gone"})  # fmt: skip
    assert groupmod.rebalance_plan(d) == {"g1": "b", "g2": "b", "g3": "a"}
    assert groupmod.next_preferred(_defn()) == "a"
    assert groupmod.next_preferred(_defn(g1={"preferred": "a"})) == "b"
    assert groupmod.next_preferred(_defn(g1={"preferred": "a"}, g2={"preferred": "b"})) == "a"


def test_initiator_config_is_alua_multipath_with_every_gateways_address():
    out = groupmod.initiator_config(_defn())
    conf = out["multipath_conf"]
    for line in ('vendor "GLUSTER"', 'product "iSCSI Disk"', 'hardware_handler "1 alua"',
                 "path_grouping_policy group_by_prio", "prio alua", "failback immediate",
                 f"no_path_retry {out['no_path_retry']}"):
        assert line in conf
    # queue through a failover: lease 5 s + 3 beats, twice over, at 5 s per check: >= 12
    assert out["no_path_retry"] == 12
    assert groupmod.no_path_retry({"lease_seconds": 30, "beat_seconds": 2}) == 15
    assert [a["gateway"] for a in out["addresses"]] == ["a", "a", "b"]  # by number
    text = "\n".join(out["iscsiadm"])
    for addr in ("192.0.2.1:3260", "[2001:db8::1]:3260", "192.0.2.2:3260"):
        assert f"--type sendtargets --portal {addr}" in text
        assert f"--targetname {T1} --portal {addr} --login" in text


def test_compose_maps_each_lun_to_this_gateways_access_and_opens_it_o_direct():
    access = groupmod.VolumeAccess("fuse", root="/mnt/vol")
    d = _defn(g1={"target": T1, "lun": 1, "path": "/a.img", "preferred": "a"})
    d["targets"][0]["luns"] = [{"lun": 1, "gfid": "g1", "uuid": "u", "serial": "s",
                                "options": {"cache": "0"}}]  # fmt: skip
    d["accounts"] = {"alice": "x" * 12}
    local = {**cfgmod.empty_config(), "accounts": {"disc": "y" * 12}}
    out = groupmod.compose(local, d, access)
    lu = out["targets"][0]["luns"][0]
    assert lu["backing"] == "/mnt/vol/a.img" and lu["bstype"] == "rdwr"
    assert lu["options"] == {"cache": "0", "o_direct": True} and "gfid" not in lu
    assert out["accounts"] == {"disc": "y" * 12, "alice": "x" * 12}
    assert local["targets"] == []  # not changed in place


# ------------------------------------------------------------- two gateways, one volume


@pytest.fixture
def volume(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    for name in ("disk1.img", "disk2.img"):
        with open(vol / name, "wb") as f:
            f.truncate(1 << 20)
    # gateway B reaches the same files by another path (as FUSE vs another mount would)
    os.symlink(vol, tmp_path / "other-mount")
    return vol


class FakeMember:
    """What control asks of ``server.group.GroupMember``: attach and detach LUs."""

    class Glu:
        def __init__(self, lu, key, preferred):
            self.lu, self.key, self.preferred = lu, key, preferred

    def __init__(self, registry) -> None:
        self.registry = registry
        self.luns: dict = {}
        self.events: list = []
        self.detached_serving: list = []
        self.detached_open: list = []

    def serving(self, lu):
        return any(lu in t.device.luns.values() for t in self.registry.targets.values()
                   if t.device is not None)

    def attach(self, lu, key, preferred=None):
        self.events.append(("attach", key, preferred, self.serving(lu)))
        self.luns[key] = self.Glu(lu, key, preferred)

    def detach(self, lu):
        for k, g in list(self.luns.items()):
            if g.lu is lu:
                del self.luns[k]
                self.events.append(("detach", k))
                if self.serving(lu):  # a LU detached while still in a device: unchecked
                    self.detached_serving.append(k)
                store = getattr(lu, "store", None)
                if store is not None and not getattr(store, "closed", True):
                    self.detached_open.append(k)  # its queued calls would run unchecked


class Gateway:
    """A fake daemon with what a group member adds (status, moves), and its control."""

    def __init__(self, state_dir, fake_runtime) -> None:
        self.state_dir = state_dir
        self.moves: list[tuple[str, str]] = []
        self.status: dict = {}
        self.restart()

    def call(self, op, **args):
        return asyncio.run(self._call(op, args))

    async def _call(self, op, args):
        await self._ensure()
        return await self.server.call(op, args)

    async def _ensure(self):
        # what serve does at start: restore the saved config, then link to the group
        if not getattr(self, "_started", False):
            saved = cfgmod.load(self.state_dir) or cfgmod.empty_config()
            await self.server.reconciler.apply(saved)
            self._started = True
            if saved.get("group"):
                self.server.start_group()
                assert self.server._group_task is not None
                self.server._group_task.cancel()  # tests poll by hand (refresh)
                self.server._group_task = None

    def restart(self):
        self.daemon = FakeDaemon(self.state_dir)

        async def group_move(key, to):
            self.moves.append((key, to))

        self.daemon.group_move = group_move  # type: ignore[attr-defined]
        self.daemon.group_status = lambda: self.status  # type: ignore[attr-defined]
        self.server = ControlServer(self.daemon)
        self.member = FakeMember(self.daemon.registry)
        self.server.group_member = self.member
        self._started = False

    def refresh(self):
        async def go():
            await self._ensure()
            return await self.server.refresh_group()

        return asyncio.run(go())

    def targets(self):
        return self.server.reconciler.current()["targets"]


def _join(gw, location, name, **kw):
    res = gw.call("group.join", location=location, gateway=name, **kw)
    gw.restart()
    gw.refresh()
    return res


@pytest.fixture
def pair(tmp_path, volume, fake_runtime):
    a = Gateway(tmp_path / "a", fake_runtime)
    b = Gateway(tmp_path / "b", fake_runtime)
    groupmod.create_group(str(volume / ".gluster-iscsi"), "g1")
    ra = _join(a, str(volume / ".gluster-iscsi"), "gw-a", addresses=["127.0.0.1:3261"])
    rb = _join(b, str(tmp_path / "other-mount" / ".gluster-iscsi"), "gw-b",
               addresses=["127.0.0.1:3262"])
    assert ra["restart_required"] and "restart" in ra["hint"] and ra["number"] == 1
    assert rb["number"] == 2
    return a, b, volume


def test_a_target_and_lun_made_on_one_gateway_run_on_the_other_with_one_identity(pair, tmp_path):
    a, b, vol = pair
    a.call("target.create", name=T1)
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    a.call("acl.add", target=T1, network="ALL")
    assert b.targets() == []  # not yet polled
    b.refresh()
    (ta,), (tb,) = a.targets(), b.targets()
    la, lb = ta["luns"][0], tb["luns"][0]
    assert la["backing"] == str(vol / "disk1.img")
    assert lb["backing"] == str(tmp_path / "other-mount" / "disk1.img")  # B's own access
    assert (la["uuid"], la["serial"]) == (lb["uuid"], lb["serial"])  # one WWID
    assert la["options"]["o_direct"] is True and lb["options"]["o_direct"] is True
    assert tb["acl"] == [{"network": "ALL"}]
    assert b.daemon.registry.lookup(T1).allows("iqn.x:y", "127.0.0.1")
    # The local config files keep no targets: the group's live on the volume.
    assert cfgmod.load(a.state_dir)["targets"] == [] == cfgmod.load(b.state_dir)["targets"]
    # Identity by file, whatever the spelling: B deletes and re-creates it under its path.
    b.call("lun.delete", target=T1, lun=1)
    b.call("lun.create", target=T1, backing=str(tmp_path / "other-mount" / "disk1.img"))
    a.refresh()
    assert a.targets()[0]["luns"][0]["uuid"] == la["uuid"]


def test_one_uuid_is_one_file_in_the_group(pair):
    a, _, vol = pair
    a.call("target.create", name=T1)
    uid = "5c1d0e6a-1c79-4e9c-a1a7-6d2f3c3f7c01"
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"), uuid=uid)
    with pytest.raises(ApiError) as e:
        a.call("lun.create", target=T1, backing=str(vol / "disk2.img"), uuid=uid)
    assert e.value.code == "exists" and uid in e.value.message
    assert [lu["lun"] for lu in a.targets()[0]["luns"]] == [1]


def test_a_definition_a_gateway_cannot_apply_leaves_it_as_it_was(pair, fake_runtime, tmp_path):
    a, b, vol = pair
    _, failing = fake_runtime
    a.call("target.create", name=T1)
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    b.refresh()
    before = b.targets()
    failing.add(str(tmp_path / "other-mount" / "disk2.img"))  # B cannot open it
    a.call("lun.create", target=T1, backing=str(vol / "disk2.img"))
    with pytest.raises(RuntimeError, match="not applied"):
        b.refresh()
    assert b.targets() == before  # all or nothing: LUN 1 only, as before
    assert [n for n in b.daemon.registry.lookup(T1).device.luns] == [1]
    show = b.call("group.show")
    assert "not applied" in show["error"]
    failing.clear()
    b.refresh()
    assert [lu["lun"] for lu in b.targets()[0]["luns"]] == [1, 2]
    assert b.call("group.show")["error"] is None


def test_a_version_that_fails_here_is_retried_less_and_less_often(pair, fake_runtime,
                                                                    tmp_path, monkeypatch):
    """R10: the poll retried a version it could not apply at every beat, each try opening
    that version's stores again (a gfapi store mounts the volume). Now the tries of one
    failing version back off (after 1, 2, 4, ... beats, at most RETRY_MAX s apart) and a
    newer version is tried at the next beat. Time is the test's: a beat is one second of
    a fake clock, and the poll waits at beat 100 while the test makes a newer version."""
    a, b, vol = pair
    _, failing = fake_runtime
    a.call("target.create", name=T1)
    failing.add(str(tmp_path / "other-mount" / "disk1.img"))  # B cannot open it
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    now = [0.0]
    tries: list[float] = []
    real_sleep = asyncio.sleep

    async def go():
        await b._ensure()
        b.server.clock = lambda: now[0]
        apply_locked = b.server.reconciler.apply_locked

        async def counted(*args, **kw):
            tries.append(now[0])
            return await apply_locked(*args, **kw)

        b.server.reconciler.apply_locked = counted
        paused, resume = asyncio.Event(), asyncio.Event()

        async def beat(seconds, *args):
            if seconds:  # the poll's beat
                if now[0] == 100.0:
                    paused.set()
                    await resume.wait()
                now[0] += 1.0
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", beat)
        task = asyncio.ensure_future(b.server._group_poll(b.server.reconciler.group_link))
        await paused.wait()
        assert tries == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]  # not one per beat
        await asyncio.to_thread(a.call, "lun.create", target=T1, backing=str(vol / "disk2.img"))
        resume.set()
        while now[0] < 103.0:
            await real_sleep(0.01)
        task.cancel()
        monkeypatch.undo()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert tries[8] == 101.0  # the newer version, at the next beat (not at 121)
    assert "not applied" in (b.server.reconciler.group_link.error or "")


def test_a_change_the_initiating_gateway_cannot_apply_is_not_written(pair, fake_runtime):
    a, b, vol = pair
    _, failing = fake_runtime
    a.call("target.create", name=T1)
    failing.add(str(vol / "disk1.img"))
    with pytest.raises(ApiError):
        a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    show = a.call("group.show")
    assert show["luns"] == [] and a.targets()[0]["luns"] == []


def test_join_refuses_a_name_or_number_another_gateway_holds(pair, tmp_path, volume):
    c = Gateway(tmp_path / "c", None)
    loc = str(volume / ".gluster-iscsi")
    with pytest.raises(ApiError) as e:
        c.call("group.join", location=loc, gateway="gw-a", addresses=["127.0.0.1:3263"])
    assert e.value.code == "exists" and "gw-a is already in group g1" in e.value.message
    with pytest.raises(ApiError) as e:
        c.call("group.join", location=loc, gateway="gw-c", number=2,
               addresses=["127.0.0.1:3263"])
    assert e.value.code == "exists" and "held by gw-b" in e.value.message
    res = c.call("group.join", location=loc, gateway="gw-c", addresses=["127.0.0.1:3263"])
    assert res["number"] == 3


def test_join_refuses_an_unreachable_volume_and_a_gateway_with_targets(tmp_path, fake_runtime):
    c = Gateway(tmp_path / "c", None)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(ApiError) as e:
        c.call("group.join", location=str(blocked / ".gluster-iscsi"), gateway="x",
               addresses=["127.0.0.1:1"])
    assert e.value.code == "unavailable" and "cannot reach the group directory" in e.value.message
    c.call("target.create", name=T1)
    with pytest.raises(ApiError) as e:
        c.call("group.join", location=str(tmp_path / "g"), gateway="x", addresses=["h:1"])
    assert e.value.code == "busy" and T1 in e.value.message


def test_a_definition_of_a_newer_format_is_refused(pair):
    a, _, vol = pair
    from gluster_iscsi.group.shared import open_shared

    shared = open_shared(str(vol / ".gluster-iscsi"))
    rec = shared.read("group.json")
    shared.write("group.json", {**rec.data, "format": groupmod.FORMAT + 1})
    shared.close()
    with pytest.raises(ApiError) as e:
        a.call("target.create", name=T1)
    assert "newer gluster-iscsi" in e.value.message and "upgrade" in e.value.hint
    with pytest.raises(RuntimeError, match="newer"):
        a.refresh()


def test_show_move_rebalance_and_initiator_config(pair):
    a, b, vol = pair
    a.call("target.create", name=T1)
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    a.call("lun.create", target=T1, backing=str(vol / "disk2.img"))
    show = a.call("group.show")
    assert [(g["name"], g["number"], g["this"]) for g in show["gateways"]] == [
        ("gw-a", 1, True), ("gw-b", 2, False)]
    assert [(x["lun"], x["preferred"]) for x in show["luns"]] == [(1, "gw-a"), (2, "gw-b")]
    gfid = show["luns"][0]["gfid"]
    assert show["gateways"][1]["state"] == "unknown" and show["luns"][0]["owner"] is None
    # what the group member knows (server/group.py GroupMember.status's shape)
    a.status = {"gateways": {"gw-a": {"number": 1, "age": 0.0, "live": True, "version": "x"},
                             "gw-b": {"number": 2, "age": 9.5, "live": False, "version": "x"}},
                "luns": {groupmod.member_key(gfid): {"owner": "gw-a", "epoch": 4,
                                                     "role": "owner"}}}  # fmt: skip
    show = a.call("group.show")
    assert [(g["state"], g["beat_age"]) for g in show["gateways"]] == [("up", 0.0), ("down", 9.5)]
    assert (show["luns"][0]["owner"], show["luns"][0]["epoch"]) == ("gw-a", 4)
    res = a.call("lun.move", target=T1, lun=1, to="gw-b")
    assert res["to"] == "gw-b" and a.moves == [(groupmod.member_key(gfid), "gw-b")]
    with pytest.raises(ApiError) as e:
        a.call("lun.move", target=T1, lun=1, to="gw-z")
    assert e.value.code == "not_found" and "gw-a" in e.value.hint
    a.moves.clear()
    reb = a.call("group.rebalance")  # LUN 1 is on gw-a already, LUN 2 (owner unknown) moves
    assert [(m["lun"], m["to"], m["done"]) for m in reb["moves"]] == [(2, "gw-b", True)]
    assert len(a.moves) == 1
    ic = a.call("group.initiator_config")
    assert "127.0.0.1:3261" in "\n".join(ic["iscsiadm"]) and "127.0.0.1:3262" in "\n".join(
        ic["iscsiadm"])


def test_rebalance_tries_every_move_and_says_which_failed(pair):
    """R2: one move that fails (its owner unreachable) no longer hides the moves asked
    before it nor stops the ones after it."""
    a, b, vol = pair
    a.call("target.create", name=T1)
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    a.call("lun.create", target=T1, backing=str(vol / "disk2.img"))
    first = groupmod.member_key(a.call("group.show")["luns"][0]["gfid"])
    asked = []

    async def group_move(key, to):
        if key == first:
            raise RuntimeError("the owner did not answer")
        asked.append((key, to))

    a.daemon.group_move = group_move
    reb = a.call("group.rebalance")  # owners unknown: both LUNs are to move
    rows = [(m["lun"], m["to"], m["done"], m.get("error")) for m in reb["moves"]]
    assert rows[0][:3] == (1, "gw-a", False) and "did not answer" in rows[0][3]
    assert rows[1] == (2, "gw-b", True, None)
    assert len(asked) == 1 and reb["failed"] == 1


def test_leave_drops_the_groups_targets_here_and_the_section(pair):
    a, b, vol = pair
    a.call("target.create", name=T1)
    res = b.call("group.leave")
    assert res["gateway"] == "gw-b" and res["restart_required"]
    assert "group" not in cfgmod.load(b.state_dir)
    assert [g["name"] for g in a.call("group.show")["gateways"]] == ["gw-a"]


def test_a_leave_that_fails_keeps_the_gateway_taking_in_the_groups_changes(pair, monkeypatch):
    """R1: a leave refused by the volume leaves the gateway in the group, so its definition
    poll must still run (it stopped for good before: later versions never applied)."""
    a, b, vol = pair

    def unreachable(local):
        raise groupmod.GroupError("unavailable", "cannot write the group definition: EIO")

    async def go():
        await b._ensure()
        link = b.server.reconciler.group_link
        b.server._group_task = asyncio.ensure_future(b.server._group_poll(link))
        monkeypatch.setattr(groupmod, "leave_group", unreachable)
        with pytest.raises(ApiError) as e:
            await b.server.call("group.leave", {})
        assert e.value.code == "unavailable"
        monkeypatch.undo()
        assert b.server.reconciler.group_link is link
        task = b.server._group_task
        assert task is not None and not task.done()
        # a change made on gateway A reaches B through the poll that still runs
        await asyncio.to_thread(a.call, "target.create", name=T1)
        for _ in range(200):
            if any(t["name"] == T1 for t in b.targets()):
                break
            await asyncio.sleep(0.1)
        assert [t["name"] for t in b.targets()] == [T1]
        await b.server.stop_group()

    asyncio.run(go())


def test_group_luns_are_attached_to_the_member_before_they_serve_and_detached(pair):
    a, b, vol = pair
    a.call("target.create", name=T1)
    a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    b.refresh()
    gfid = a.call("group.show")["luns"][0]["gfid"]
    key = groupmod.member_key(gfid)
    assert ":" not in key
    for gw in (a, b):
        # attached with its preferred gateway, while not yet in any device (no command can
        # reach its store before the member owns it)
        assert gw.member.events == [("attach", key, "gw-a", False)]
        assert gw.member.luns[key].lu is gw.server.reconciler.logical_unit(T1, 1)
    a.call("lun.delete", target=T1, lun=1)
    b.refresh()
    assert a.member.events[-1] == ("detach", key) == b.member.events[-1]
    assert a.member.luns == {} == b.member.luns


def test_chap_accounts_and_bindings_are_the_groups(pair):
    a, b, vol = pair
    a.call("target.create", name=T1)
    a.call("auth.account_add", user="alice", secret="s" * 12)
    a.call("auth.bind", user="alice", target=T1)
    b.refresh()
    tb = b.daemon.registry.lookup(T1)
    assert [(c.user, c.secret) for c in tb.incoming] == [("alice", "s" * 12)]
    assert "alice" not in cfgmod.load(a.state_dir)["accounts"]  # on the volume, not here
    assert a.call("group.show")["version"] == b.call("group.show")["applied_version"]
    # a new secret on B reaches A
    b.call("auth.account_add", user="bob", secret="b" * 12)
    b.call("auth.bind", user="bob", target=T1)
    a.refresh()
    assert {c.user for c in a.daemon.registry.lookup(T1).incoming} == {"alice", "bob"}


def test_a_definition_that_cannot_be_written_undoes_the_change_here(pair, monkeypatch):
    a, b, vol = pair
    a.call("target.create", name=T1)
    before = a.targets()

    def busy(self, old, new):
        raise groupmod.GroupError("busy", "the group definition changed meanwhile (version 5"
                                  " -> 6)", "run the command again")

    monkeypatch.setattr(groupmod.GroupLink, "write", busy)
    with pytest.raises(ApiError) as e:
        a.call("lun.create", target=T1, backing=str(vol / "disk1.img"))
    assert e.value.code == "busy" and "changed meanwhile" in e.value.message
    assert a.targets() == before and a.daemon.registry.lookup(T1).device.luns == {}
    monkeypatch.undo()
    assert a.call("group.show")["luns"] == []


def test_a_failed_local_save_after_the_definition_was_written_keeps_the_lun_file(
        pair, monkeypatch):
    """R11: the definition is on the volume (every gateway takes it in) when this gateway's
    own config cannot be saved: the error must not say the change was undone, and
    ``lun create`` must not remove the file the definition now names."""
    a, b, vol = pair
    a.call("target.create", name=T1)
    cfgmod.config_path(a.state_dir).unlink()  # the next change saves the local config

    def full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cfgmod, "save", full)
    new = vol / "new.img"
    with pytest.raises(ApiError) as e:
        a.call("lun.create", target=T1, backing=str(new), size=1 << 20, create=True)
    monkeypatch.undo()
    assert "group definition" in e.value.message and "stays in force" in e.value.message
    assert [x["target"] for x in a.call("group.show")["luns"]] == [T1]  # on the volume
    assert new.exists()  # the file the definition names is kept
    b.refresh()
    assert [lu["lun"] for lu in b.targets()[0]["luns"]] == [1]  # B serves it


def test_a_lun_file_that_does_not_exist_is_a_clear_error_in_a_group(pair):
    """R14: in a group, ``lun create`` of a missing file answered ``internal`` (exit 1)
    with a SharedDirError repr and a traceback in the log; outside a group the same input
    gets a clear message."""
    a, b, vol = pair
    a.call("target.create", name=T1)
    with pytest.raises(ApiError) as e:
        a.call("lun.create", target=T1, backing=str(vol / "missing.img"))
    assert e.value.code == "unavailable", e.value.message
    assert "missing.img" in e.value.message and "--size" in (e.value.hint or "")
    assert a.call("group.show")["luns"] == []


def test_writing_over_a_newer_version_is_refused(pair):
    a, b, vol = pair
    link = a.server.reconciler.group_link
    old = link.load()
    b.call("target.create", name=T1)  # version + 1 meanwhile
    new = {**old, "targets": [{"name": "iqn.2026-11.com.example:other", "tid": 9, "luns": []}]}
    with pytest.raises(groupmod.GroupError) as e:
        link.write(old, new)
    assert e.value.code == "busy" and "changed meanwhile" in e.value.message
    assert [t["name"] for t in link.load()["targets"]] == [T1]


def test_config_apply_in_a_group_changes_the_definition_and_keeps_the_section(pair):
    a, b, vol = pair
    a.call("target.create", name=T1)
    doc = a.call("config.export")
    assert doc["group"]["gateway"] == "gw-a"
    doc.pop("group")  # a document written for a lone gateway
    doc["targets"][0]["acl"] = [{"network": "ALL"}]
    a.call("config.apply", config=doc)
    assert cfgmod.load(a.state_dir)["group"]["gateway"] == "gw-a"
    b.refresh()
    assert b.targets()[0]["acl"] == [{"network": "ALL"}]


GLUSTER_GET = """\
Option                                   Value
------                                   -----
network.ping-timeout                     42 (DEFAULT)
transport.keepalive                      1
server.tcp-user-timeout                  42 (DEFAULT)
server.keepalive-time                    20
server.keepalive-interval                2
server.keepalive-count                   9
"""


def test_the_lease_must_end_before_a_brick_can_drop_its_holder():
    opts = groupmod.parse_volume_options(GLUSTER_GET)
    assert opts["server.tcp-user-timeout"] == "42"
    assert groupmod.brick_drop_seconds(opts)[0] == 38  # keepalive: 20 + 2 x 9
    fast = {**opts, "server.keepalive-time": "2", "server.keepalive-count": "1"}
    assert groupmod.brick_drop_seconds(fast) == (4.0, "server.keepalive-time 2 + interval 2 x count 1")
    assert groupmod.brick_drop_seconds({**opts, "server.tcp-user-timeout": "3"})[0] == 3
    assert groupmod.brick_drop_seconds({**opts, "transport.keepalive": "off"})[0] == 42
    assert groupmod.brick_drop_seconds({}) is None


def test_group_create_refuses_a_lease_the_volume_breaks(tmp_path):
    loc = str(tmp_path / "g")
    refuse = lambda location, lease: f"a brick drops a silent client after 4 s, lease {lease:g}"  # noqa: E731
    with pytest.raises(groupmod.GroupError) as e:
        groupmod.create_group(loc, "g", {"lease_seconds": 5.0}, check=refuse)
    assert e.value.code == "invalid" and "lease 5" in e.value.message and "--lease-seconds" in e.value.hint
    with pytest.raises(groupmod.GroupError, match="longer than beat_seconds"):
        groupmod.create_group(loc, "g", {"lease_seconds": 1.0, "beat_seconds": 2.0})
    out = groupmod.create_group(loc, "g", {"lease_seconds": 8.0}, check=lambda *a: None)
    assert out["settings"]["lease_seconds"] == 8.0


def test_status_says_which_group_and_whether_its_definition_is_in_force(pair, tmp_path, volume):
    a, b, vol = pair
    g = a.call("sys.show")["group"]
    assert (g["name"], g["gateway"], g["number"], g["active"], g["error"]) == (
        "g1", "gw-a", 1, True, None)
    assert g["applied_version"] is not None
    c = Gateway(tmp_path / "c", None)
    assert c.call("sys.show")["group"] is None
    c.call("group.join", location=str(volume / ".gluster-iscsi"), gateway="gw-c",
           addresses=["127.0.0.1:3263"])
    assert c.call("sys.show")["group"]["active"] is False  # joined, not restarted


def test_the_clients_ping_timeout_must_fail_pending_writes_before_a_brick_frees_the_lock():
    # docs/HA.md "Measured by the harness": with the default ping timeout (42 s) a write the
    # cut-off owner had issued landed after another gateway took the lock; with 10 s it failed
    # at 30 s, before the bricks let the lock go (42 s).
    opts = groupmod.parse_volume_options(GLUSTER_GET)
    problem = groupmod.lease_problem("v", opts, 5.0)
    assert problem is not None and "network.ping-timeout 42" in problem
    assert "gluster volume set v network.ping-timeout 9" in problem
    assert groupmod.lease_problem("v", {**opts, "network.ping-timeout": "10"}, 5.0) is None
    assert groupmod.lease_problem("v", {**opts, "network.ping-timeout": "13"}, 5.0) is not None
    # the lease itself still has to end before a brick drops its holder
    assert "lease_seconds 40" in groupmod.lease_problem(
        "v", {**opts, "network.ping-timeout": "10"}, 40.0)
    assert groupmod.lease_problem("v", {}, 5.0) is None  # nothing known: not refused here
