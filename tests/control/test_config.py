import json
import os
import stat

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control.config import ConfigError


def target(name="iqn.2001-04.com.example:t1", tid=1, **kw):
    return {"name": name, "tid": tid, **kw}


def base(**kw):
    cfg = cfgmod.empty_config()
    cfg.update(kw)
    return cfg


def test_validate_fills_in_lun_identity_once_and_keeps_it():
    cfg = base(targets=[target(luns=[{"lun": 1, "backing": "/srv/a.img"}])])
    v = cfgmod.validate(cfg)
    lu = v["targets"][0]["luns"][0]
    assert lu["bstype"] == "rdwr" and lu["block_size"] == 512 and lu["read_only"] is False
    assert len(lu["serial"]) == 16 and lu["uuid"]
    again = cfgmod.validate(v)
    assert again == v  # stable: a restart sees the same WWID
    assert cfgmod.validate(cfg) == v  # even when the file never had a uuid (hand-written)
    other = base(targets=[target(luns=[{"lun": 2, "backing": "/srv/a.img"}])])
    assert cfgmod.validate(other)["targets"][0]["luns"][0]["uuid"] != lu["uuid"]


@pytest.mark.parametrize(
    ("backing", "bstype"),
    [("/srv/a.img", "rdwr"), ("memory:64MiB", "memory"), ("gluster://h/vol/f", "gluster"),
     ("vol@host:file", "glfs")],
)  # fmt: skip
def test_bstype_is_guessed_from_the_backing_spec(backing, bstype):
    assert cfgmod.guess_bstype(backing) == bstype


BAD = [
    (base(targets=[target(name="target1")]), "targets[0].name", "iqn."),
    (base(targets=[target(), target(tid=1, name="iqn.2001-04.com.example:t2")]), "targets[1].tid", "used by two"),
    (base(targets=[target(), target(tid=2, name="IQN.2001-04.com.example:T1", forced=True)]), "targets[1].name", "defined twice"),
    (base(targets=[target(tid=0)]), "targets[0].tid", "whole number"),
    (base(targets=[target(luns=[{"lun": 1}])]), "targets[0].luns[0].backing", "missing"),
    (base(targets=[target(luns=[{"lun": 1, "backing": "/a", "bstype": "sg"}])]), "targets[0].luns[0].bstype", "unknown"),
    (base(targets=[target(luns=[{"lun": 1, "backing": "/a", "block_size": 1000}])]), "targets[0].luns[0].block_size", "1000"),
    (base(targets=[target(luns=[{"lun": 1, "backing": "/a"}, {"lun": 1, "backing": "/b"}])]), "targets[0].luns", "twice"),
    (base(targets=[target(acl=[{"network": "10.0.0.0/33"}])]), "targets[0].acl[0].network", "CIDR"),
    (base(targets=[target(acl=[{"initiator": "bogus"}])]), "targets[0].acl[0].initiator", "iqn."),
    (base(targets=[target(incoming=["alice"])]), "targets[0].incoming[0]", "no CHAP account"),
    (base(accounts={"alice": "short"}), "accounts.alice", "at least 12"),
    (base(params={"MaxRecvDataSegmentLength": "12"}), "params.MaxRecvDataSegmentLength", "512"),
    (base(params={"Bogus": "1"}), "params", "unknown parameter"),
    (base(portals=[{"host": "127.0.0.1", "port": 70000}]), "portals[0].port", "65535"),
    (base(frobnicate=1), "frobnicate", "unknown key"),
    (base(version=99), "version", "newer"),
]  # fmt: skip


@pytest.mark.parametrize(("cfg", "field", "text"), BAD)
def test_validation_errors_name_the_field_and_what_is_wrong(cfg, field, text):
    with pytest.raises(ConfigError) as e:
        cfgmod.validate(cfg)
    assert e.value.field == field
    assert text in str(e.value)


def test_forced_names_are_kept_through_validation():
    cfg = base(targets=[target(name="iqn.20013-10.com.redhat:tgt1", forced=True)])
    assert cfgmod.validate(cfg)["targets"][0]["forced"] is True


def test_params_are_canonicalized():
    v = cfgmod.validate(
        base(params={"maxrecvdatasegmentlength": 65536, "HeaderDigest": "CRC32C,None"})
    )
    assert v["params"] == {"MaxRecvDataSegmentLength": "65536", "HeaderDigest": "CRC32C,None"}


def test_save_is_atomic_private_and_keeps_the_previous_version(tmp_path):
    first = cfgmod.validate(base(targets=[target()]))
    cfgmod.save(tmp_path, first)
    path = tmp_path / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = cfgmod.validate(base(targets=[target(alias="x")]))
    cfgmod.save(tmp_path, second)
    assert cfgmod.load(tmp_path) == second
    prev = json.loads((tmp_path / "config.json.prev").read_text())
    assert prev["targets"][0]["alias"] is None
    assert stat.S_IMODE((tmp_path / "config.json.prev").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "config.json.prev"]


def test_save_does_not_depend_on_the_umask(tmp_path):
    old = os.umask(0)
    try:
        cfgmod.save(tmp_path, cfgmod.empty_config())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_config_and_no_temp_file(tmp_path, monkeypatch):
    cfgmod.save(tmp_path, cfgmod.empty_config())

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        cfgmod.save(tmp_path, base(params={"InitialR2T": "No"}))
    monkeypatch.undo()
    assert cfgmod.load(tmp_path)["params"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_load_returns_none_without_a_file_and_names_a_corrupt_one(tmp_path):
    assert cfgmod.load(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError) as e:
        cfgmod.load(tmp_path)
    assert "config.json" in str(e.value) and "line 1" in str(e.value) and ".prev" in str(e.value)


def test_migration_chain_runs_each_step(monkeypatch):
    monkeypatch.setattr(cfgmod, "SCHEMA_VERSION", 3)

    def v1_to_v2(c):
        c["targets"] = c.pop("iscsi_targets", [])
        return c

    def v2_to_v3(c):
        c.setdefault("params", {})["InitialR2T"] = "Yes"
        return c

    monkeypatch.setattr(cfgmod, "MIGRATIONS", {1: v1_to_v2, 2: v2_to_v3})
    old = {"version": 1, "iscsi_targets": [target()]}
    out = cfgmod.migrate(old)
    assert out["version"] == 3 and out["targets"][0]["tid"] == 1
    assert out["params"] == {"InitialR2T": "Yes"}
    assert "targets" not in old  # the caller's document is not modified


def test_redact_masks_every_secret():
    cfg = cfgmod.validate(base(accounts={"alice": "alicesecret12"}))
    red = cfgmod.redact(cfg)
    assert "alicesecret12" not in json.dumps(red)
    assert cfg["accounts"]["alice"] == "alicesecret12"


def test_demo_config_makes_a_sparse_1gib_lun_open_to_all(tmp_path):
    cfg = cfgmod.demo_config(tmp_path)
    img = tmp_path / "demo-lun1.img"
    assert img.stat().st_size == 1 << 30
    assert img.stat().st_blocks == 0
    t = cfg["targets"][0]
    assert t["name"] == "iqn.2026-11.org.gluster-iscsi:demo"
    assert t["luns"][0]["backing"] == str(img) and t["acl"] == [{"network": "ALL"}]
    assert cfgmod.validate(cfg) == cfg


def test_state_dir_comes_from_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUSTER_ISCSI_STATE_DIR", str(tmp_path))
    assert cfgmod.resolve_state_dir() == tmp_path
    assert str(cfgmod.resolve_state_dir("/x")) == "/x"
    monkeypatch.delenv("GLUSTER_ISCSI_STATE_DIR")
    assert str(cfgmod.resolve_state_dir()) == "/var/lib/gluster-iscsi"
