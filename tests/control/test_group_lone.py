"""A lone gateway and the volume's group directory (issue 20, docs/HA.md decision 5): a file
on a shared volume has one identity whatever spelling names it, and while one gateway
exports it, another (not in a group with it) is refused, naming the holder. The volume is a
tmp directory with a ``.gluster-iscsi`` directory at its top (the path backend's stand-in for
a Gluster volume: control/group.py volume_of); the daemons are control's fakes."""

from __future__ import annotations

import asyncio
import os

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control import group as groupmod
from gluster_iscsi.control.api import ControlServer
from gluster_iscsi.control.protocol import ApiError

from .fakes import FakeDaemon

T1 = "iqn.2026-11.com.example:lone"
UID = "5c1d0e6a-1c79-4e9c-a1a7-6d2f3c3f7c01"


@pytest.fixture
def volume(tmp_path):
    vol = tmp_path / "vol"
    (vol / ".gluster-iscsi").mkdir(parents=True)
    for name in ("disk1.img", "disk2.img"):
        with open(vol / name, "wb") as f:
            f.truncate(1 << 20)
    os.symlink(vol, tmp_path / "other-mount")
    return vol


class Lone:
    def __init__(self, state_dir) -> None:
        self.state_dir = state_dir
        self.daemon = FakeDaemon(state_dir)
        self.server = ControlServer(self.daemon)

    def call(self, op, **args):
        return asyncio.run(self.server.call(op, args))

    def luns(self):
        return [lu for t in self.server.reconciler.current()["targets"] for lu in t["luns"]]


@pytest.fixture
def two(tmp_path, volume, fake_runtime):
    a, b = Lone(tmp_path / "a"), Lone(tmp_path / "b")
    a.call("target.create", name=T1)
    b.call("target.create", name=T1)
    return a, b


def test_a_file_another_gateway_exports_is_refused_naming_it(two, volume, tmp_path):
    a, b = two
    a.call("lun.create", target=T1, backing=str(volume / "disk1.img"))
    with pytest.raises(ApiError) as e:
        b.call("lun.create", target=T1, backing=str(tmp_path / "other-mount" / "disk1.img"))
    assert e.value.code == "busy"
    assert f"exported by gateway {os.uname().nodename}:{a.state_dir}" in e.value.message
    assert "put both in a group" in e.value.hint
    assert b.luns() == [] and cfgmod.load(b.state_dir)["targets"][0]["luns"] == []
    # Another file is fine; once A lets go of the first, B may export it.
    b.call("lun.create", target=T1, backing=str(volume / "disk2.img"))
    a.call("lun.delete", target=T1, lun=1)
    b.call("lun.create", target=T1, backing=str(tmp_path / "other-mount" / "disk1.img"))


def test_one_file_has_one_identity_whatever_spelling(two, volume, tmp_path):
    a, b = two
    a.call("lun.create", target=T1, backing=str(volume / "disk1.img"))
    first = a.luns()[0]
    a.call("lun.delete", target=T1, lun=1)
    b.call("lun.create", target=T1, lun=7, backing=str(tmp_path / "other-mount" / "disk1.img"))
    again = b.luns()[0]
    assert (again["uuid"], again["serial"]) == (first["uuid"], first["serial"])
    # without the group directory the UUID would have come from the spelling (config.py)
    assert cfgmod.validate({"targets": [{"name": T1, "tid": 1, "luns": [
        {"lun": 7, "backing": str(tmp_path / "other-mount" / "disk1.img")}]}]})[
        "targets"][0]["luns"][0]["uuid"] != first["uuid"]  # fmt: skip


def test_a_uuid_is_one_file(two, volume):
    a, _ = two
    a.call("lun.create", target=T1, backing=str(volume / "disk1.img"), uuid=UID)
    with pytest.raises(ApiError) as e:
        a.call("lun.create", target=T1, backing=str(volume / "disk2.img"), uuid=UID)
    assert e.value.code == "exists" and f"UUID {UID} already names another file" in e.value.message
    assert [lu["lun"] for lu in a.luns()] == [1]


def test_a_failed_change_lets_go_of_the_file(two, volume, fake_runtime):
    a, b = two
    _, failing = fake_runtime
    failing.add(str(volume / "disk1.img"))
    with pytest.raises(ApiError):
        a.call("lun.create", target=T1, backing=str(volume / "disk1.img"))
    failing.clear()
    b.call("lun.create", target=T1, backing=str(volume / "disk1.img"))  # not held by A


def test_a_file_on_no_shared_volume_claims_nothing(tmp_path, fake_runtime):
    disk = tmp_path / "local" / "disk.img"
    disk.parent.mkdir()
    disk.write_bytes(b"\0" * 4096)
    assert groupmod.volume_of(str(disk)) is None
    a, b = Lone(tmp_path / "a"), Lone(tmp_path / "b")
    for gw in (a, b):
        gw.call("target.create", name=T1)
        gw.call("lun.create", target=T1, backing=str(disk))  # as before: no group directory
    assert not (tmp_path / "local" / ".gluster-iscsi").exists()


def test_volume_of_gluster_urls_names_the_volumes_group_directory():
    loc, gfid_of, rel = groupmod.volume_of("gluster://h1,h2/vol/d/a.img")
    assert loc.endswith("/vol/.gluster-iscsi") and loc.startswith("gluster://h1")
    assert gfid_of == rel == "/d/a.img"


def test_a_lun_replaced_by_a_new_one_of_the_same_file_keeps_its_claim(two, volume):
    a, b = two
    a.call("lun.create", target=T1, backing=str(volume / "disk1.img"))
    cfg = a.call("config.export")
    cfg["targets"][0]["luns"][0]["read_only"] = True  # a new LogicalUnit, same file
    res = a.call("config.apply", config=cfg)
    assert [c["action"] for c in res["changes"]] == ["replace"]
    with pytest.raises(ApiError) as e:  # still held, by A
        b.call("lun.create", target=T1, backing=str(volume / "disk1.img"))
    assert e.value.code == "busy"
    a.call("lun.delete", target=T1, lun=1)
    b.call("lun.create", target=T1, backing=str(volume / "disk1.img"))  # let go at last


def test_a_group_members_own_luns_are_not_claimed_as_a_lone_gateways(tmp_path, volume,
                                                                      fake_runtime):
    # A hand-written group (the config's group section, no definition): the member leases
    # its LUNs; a lone claim on the same lease file would lock the member out.
    a = Lone(tmp_path / "a")
    cfg = {"targets": [{"name": T1, "tid": 1, "luns": [
               {"lun": 1, "backing": str(volume / "disk1.img")}]}],
           "group": {"location": str(volume / ".gluster-iscsi"), "gateway": "gw-a",
                     "number": 1}}  # fmt: skip
    asyncio.run(a.server.reconciler.apply(cfgmod.validate(cfg)))
    from gluster_iscsi.group.shared import open_shared

    with open_shared(str(volume / ".gluster-iscsi")) as shared:
        gfid = shared.gfid(str(volume / "disk1.img"))
        shared.try_lock(groupmod.lease_name(gfid), 0).release()  # free for the member
