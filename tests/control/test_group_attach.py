"""A hand-written gateway group (the config's ``group`` section, no definition on the volume):
a LUN added or removed while the daemon runs (the CLI, ``config reload``, SIGHUP: all go
through ``reconcile``) is attached to / detached from the group member, as the LUNs present
at start are (control/api.py ``_attach_lu``: one function for every way)."""

from __future__ import annotations

import asyncio
import json

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control import group as groupmod
from gluster_iscsi.control.protocol import ApiError
from gluster_iscsi.group.shared import open_shared

from .test_group import T1, Gateway


@pytest.fixture
def volume(tmp_path):
    vol = tmp_path / "vol"
    (vol / ".gluster-iscsi").mkdir(parents=True)  # the group directory, no definition in it
    for name in ("disk1.img", "disk2.img"):
        with open(vol / name, "wb") as f:
            f.truncate(1 << 20)
    return vol


def test_luns_added_and_removed_at_run_time_join_and_leave_the_member(tmp_path, volume,
                                                                     fake_runtime):
    location = str(volume / ".gluster-iscsi")
    shared = open_shared(location)
    gid1 = groupmod.member_key(shared.gfid(str(volume / "disk1.img")))
    gid2 = groupmod.member_key(shared.gfid(str(volume / "disk2.img")))
    state = tmp_path / "a"
    state.mkdir()
    cfg = {**cfgmod.empty_config(),
           "targets": [{"name": T1, "tid": 1, "luns": [
               {"lun": 1, "backing": str(volume / "disk1.img")}]}],
           "group": {"location": location, "gateway": "gw-a", "number": 1}}  # fmt: skip
    (state / "config.json").write_text(json.dumps(cfgmod.validate(cfg)))
    gw = Gateway(state, fake_runtime)
    gw.member.shared = shared
    gw.refresh()  # start: the saved config, the group linked (no definition there)
    # what serve does once the member exists: the LUNs open at start
    asyncio.run(gw.server.attach_opened_luns())
    assert set(gw.member.luns) == {gid1}
    # the CLI on the running daemon
    gw.call("lun.create", target=T1, backing=str(volume / "disk2.img"))
    assert set(gw.member.luns) == {gid1, gid2}
    assert gw.member.luns[gid2].lu is gw.server.reconciler.logical_unit(T1, 2)
    assert gw.member.events[-1][3] is False  # attached before it serves
    gw.call("lun.delete", target=T1, lun=2)
    assert set(gw.member.luns) == {gid1}
    # config reload (SIGHUP applies the same way): the LUN comes back, attached again
    saved = cfgmod.load(state)
    saved["targets"][0]["luns"].append({**saved["targets"][0]["luns"][0], "lun": 3,
                                        "backing": str(volume / "disk2.img"), "uuid": None,
                                        "serial": None})
    cfgmod.save(state, cfgmod.validate(saved))
    gw.call("config.reload")
    assert set(gw.member.luns) == {gid1, gid2}
    shared.close()


def _one_lun_gateway(tmp_path, volume, fake_runtime):
    location = str(volume / ".gluster-iscsi")
    shared = open_shared(location)
    key = groupmod.member_key(shared.gfid(str(volume / "disk1.img")))
    state = tmp_path / "a"
    state.mkdir()
    cfg = {**cfgmod.empty_config(),
           "targets": [{"name": T1, "tid": 1, "luns": [
               {"lun": 1, "backing": str(volume / "disk1.img")}]}],
           "group": {"location": location, "gateway": "gw-a", "number": 1}}  # fmt: skip
    (state / "config.json").write_text(json.dumps(cfgmod.validate(cfg)))
    gw = Gateway(state, fake_runtime)
    gw.member.shared = shared  # closed with the test's tmp dir
    gw.refresh()
    asyncio.run(gw.server.attach_opened_luns())
    return gw, key


def test_a_replaced_group_lun_stays_attached_until_it_has_left_the_device(tmp_path, volume,
                                                                         fake_runtime):
    # F1: the old LU keeps its lease (and its commands stay checked) while the new one is
    # prepared; it is detached only once out of the device and closed.
    gw, key = _one_lun_gateway(tmp_path, volume, fake_runtime)
    old = gw.server.reconciler.logical_unit(T1, 1)
    cfg = gw.call("config.export")
    cfg["targets"][0]["luns"][0]["read_only"] = True  # a new LogicalUnit, same file
    res = gw.call("config.apply", config=cfg)
    assert [c["action"] for c in res["changes"]] == ["replace"]
    new = gw.server.reconciler.logical_unit(T1, 1)
    assert new is not old
    assert gw.member.detached_serving == [] and gw.member.detached_open == []
    assert set(gw.member.luns) == {key} and gw.member.luns[key].lu is new
    assert gw.server._replacing == {}


def test_a_removed_group_lun_is_detached_only_once_closed(tmp_path, volume, fake_runtime):
    # F1: detached before its close, its queued calls would run unchecked (a lone LU)
    gw, _ = _one_lun_gateway(tmp_path, volume, fake_runtime)
    gw.call("lun.delete", target=T1, lun=1)
    assert gw.member.detached_serving == [] and gw.member.luns == {}
    assert gw.member.detached_open == []  # closed (its calls drained), then detached


def test_a_replacement_that_fails_keeps_the_old_group_lun_attached(tmp_path, volume,
                                                                   fake_runtime):
    gw, key = _one_lun_gateway(tmp_path, volume, fake_runtime)
    old = gw.server.reconciler.logical_unit(T1, 1)

    def refuse(portal):
        raise OSError(13, "Permission denied")

    gw.daemon.bind_portal = refuse  # type: ignore[method-assign]
    cfg = gw.call("config.export")
    cfg["targets"][0]["luns"][0]["read_only"] = True
    cfg["portals"] = [*cfg["portals"], {"host": "127.0.0.1", "port": 3999, "advertise": None}]
    with pytest.raises(ApiError):  # the new portal cannot bind: nothing of it in force
        gw.call("config.apply", config=cfg)
    assert gw.server.reconciler.logical_unit(T1, 1) is old  # still serving
    assert set(gw.member.luns) == {key} and gw.member.luns[key].lu is old  # and attached
    assert gw.member.detached_serving == []


def test_a_hand_written_groups_luns_are_opened_o_direct_however_they_arrive(tmp_path, volume,
                                                                           fake_runtime):
    # F8: the group's LUN options (O_DIRECT, no gfapi read cache) for every LUN of a config
    # with a group section, at start and at run time (the CLI, config reload)
    gw, _ = _one_lun_gateway(tmp_path, volume, fake_runtime)
    rec = gw.server.reconciler
    assert rec.logical_unit(T1, 1).cfg["options"]["o_direct"] is True  # at start
    gw.call("lun.create", target=T1, backing=str(volume / "disk2.img"))
    assert rec.logical_unit(T1, 2).cfg["options"]["o_direct"] is True  # the CLI
    gw.call("lun.delete", target=T1, lun=2)
    saved = cfgmod.load(tmp_path / "a")
    saved["targets"][0]["luns"].append({**saved["targets"][0]["luns"][0], "lun": 3,
                                        "backing": str(volume / "disk2.img"), "uuid": None,
                                        "serial": None, "options": {}})
    cfgmod.save(tmp_path / "a", cfgmod.validate(saved))
    gw.call("config.reload")
    assert rec.logical_unit(T1, 3).cfg["options"]["o_direct"] is True  # config reload
    assert rec.logical_unit(T1, 1).cfg["options"]["o_direct"] is True


def test_group_lun_options_turn_off_the_gfapi_read_cache_and_leave_memory_luns():
    cfg = {"targets": [{"name": T1, "luns": [
        {"lun": 1, "bstype": "gluster", "backing": "gluster://h/v/a.img", "options": {}},
        {"lun": 2, "bstype": "memory", "backing": "memory:1M"}]}]}  # fmt: skip
    out = groupmod.group_lun_options(cfg)
    assert out["targets"][0]["luns"][0]["options"] == {"o_direct": True, "cache": "off"}
    assert "options" not in out["targets"][0]["luns"][1]
