"""A change is in force only once saved; lun create looks at the file as the LUN will open
it, holds the one change lock from its checks to the save, and knows a file by its inode."""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import pytest

from gluster_iscsi.backstore import provision
from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control.api import ControlServer
from gluster_iscsi.control.protocol import ApiError

from .fakes import FakeDaemon

T1 = "iqn.2001-04.com.example:t1"
T2 = "iqn.2001-04.com.example:t2"
MiB = 1 << 20


@pytest.fixture
def api(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path / "state")
    return ControlServer(d), d


def call(server, op, **args):
    return asyncio.run(server.call(op, args))


def block_saves(server: ControlServer) -> None:
    """What the reviewer did: the save's temporary file name is a directory (EISDIR)."""
    path = cfgmod.config_path(server.state_dir)
    (path.parent / f".{path.name}.{os.getpid()}.tmp").mkdir()


def luns(server: ControlServer) -> list[tuple[str, int]]:
    return [(t["name"], lu["lun"]) for t in server._cfg()["targets"] for lu in t["luns"]]


# ----------------------------------------------------- a failed save undoes the change


def test_a_lun_create_whose_save_fails_is_undone_and_its_file_removed(api, tmp_path, caplog):
    server, d = api
    call(server, "target.create", name=T1)
    saved = cfgmod.load(server.state_dir)
    block_saves(server)
    img = tmp_path / "img"
    with caplog.at_level(logging.ERROR), pytest.raises(ApiError) as e:
        call(server, "lun.create", target=T1, backing=str(img), size="8MiB", create=True)
    assert e.value.code == "unavailable"
    assert "could not save" in e.value.message and "was undone" in e.value.message
    # Nothing runs that is not saved, so the file made for it may go.
    assert luns(server) == []
    assert server.reconciler.logical_unit(T1, 1) is None
    assert d.registry.lookup(T1).device is None or d.registry.lookup(T1).device.lu(1) is None
    assert not img.exists()
    assert cfgmod.load(server.state_dir) == saved
    assert "undoing" in caplog.text


def test_other_changes_whose_save_fails_are_undone(api, tmp_path):
    server, d = api
    call(server, "target.create", name=T1)
    call(server, "lun.create", target=T1, backing=str(tmp_path / "a.img"))
    block_saves(server)
    running = server._cfg()
    for op, args in [
        ("target.create", {"name": T2}),
        ("lun.delete", {"target": T1, "lun": 1}),
        ("target.delete", {"target": T1, "force": True}),
        ("acl.add", {"target": T1, "network": "ALL"}),
    ]:
        with pytest.raises(ApiError) as e:
            call(server, op, **args)
        assert e.value.code == "unavailable", op
        assert server._cfg() == running, op
    assert d.registry.lookup(T2) is None
    assert server.reconciler.logical_unit(T1, 1) is not None


def test_a_failed_undo_says_daemon_and_file_differ_and_keeps_the_file(
    api, tmp_path, caplog, monkeypatch
):
    server, _ = api
    call(server, "target.create", name=T1)
    block_saves(server)
    img = tmp_path / "img"
    real_apply = server.reconciler.apply_locked
    applies = []

    async def apply_then_fail_the_undo(desired, **kw):
        applies.append(desired)
        if len(applies) == 2:  # the undo
            raise RuntimeError("the volume went away")
        return await real_apply(desired, **kw)

    monkeypatch.setattr(server.reconciler, "apply_locked", apply_then_fail_the_undo)
    with caplog.at_level(logging.ERROR), pytest.raises(ApiError) as e:
        call(server, "lun.create", target=T1, backing=str(img), size="8MiB", create=True)
    assert e.value.code == "internal"
    assert "differ" in e.value.message and "config reload --force" in e.value.hint
    assert "DIFFER" in caplog.text
    # The LUN still runs on it: the file stays.
    assert server.reconciler.logical_unit(T1, 1) is not None
    assert img.exists() and img.stat().st_size == 8 * MiB


# ------------------------------------------------- lun create looks at the file it exports


def test_lun_create_with_bstype_glfs_provisions_on_the_volume(api, tmp_path, monkeypatch):
    """tgt's vol@host:/path names a file on a Gluster volume: provisioning it made a local
    file of that name in the daemon's directory."""
    server, _ = api
    volume: dict[tuple[str, str], MemoryStore] = {}

    def fake_open_store(spec, *, bstype=None, read_only=False, size=None, **options):
        kind, where = provision.classify(spec, bstype)
        assert kind == "gluster", (spec, bstype)
        key = (where.volume, where.path)
        if key not in volume:
            if size is None:
                raise BackingStoreError(errno.ENOENT, "no such file", spec)
            volume[key] = MemoryStore(size)
            volume[key].created = True  # type: ignore[attr-defined]
            return volume[key]
        volume[key].created = False  # type: ignore[attr-defined]
        return volume[key]

    monkeypatch.setattr(provision, "open_store", fake_open_store)
    monkeypatch.chdir(tmp_path)
    call(server, "target.create", name=T1)
    for bstype in ("glfs", None):  # given, or guessed from the spelling
        spec = f"vol@host:/img-{bstype}"
        res = call(server, "lun.create", target=T1, backing=spec, bstype=bstype, size="8MiB",
                   create=True)  # fmt: skip
        assert server._cfg()["targets"][0]["luns"][-1]["bstype"] == "glfs"
        assert res["lun"] >= 1
    assert set(volume) == {("vol", "/img-glfs"), ("vol", "/img-None")}
    assert sorted(os.listdir(tmp_path)) == ["state"]


# ------------------------------------------------- one file, one LUN: hardlinks included


def test_a_hardlink_to_an_exported_file_is_the_same_file(api, tmp_path):
    server, _ = api
    h1, h2 = tmp_path / "h1", tmp_path / "h2"
    h1.write_bytes(bytes(8 * MiB))
    os.link(h1, h2)
    call(server, "target.create", name=T1)
    call(server, "target.create", name=T2)
    call(server, "lun.create", target=T1, backing=str(h1))
    with pytest.raises(ApiError) as e:
        call(server, "lun.create", target=T2, backing=str(h2))
    assert e.value.code == "exists" and e.value.kind == "backing"
    assert luns(server) == [(T1, 1)]


def test_a_config_exporting_one_inode_twice_is_invalid(tmp_path):
    h1, h2 = tmp_path / "h1", tmp_path / "h2"
    h1.write_bytes(bytes(MiB))
    os.link(h1, h2)
    cfg = cfgmod.empty_config()
    cfg["targets"] = [
        {"name": T1, "tid": 1, "luns": [cfgmod.new_lun(1, str(h1))]},
        {"name": T2, "tid": 2, "luns": [cfgmod.new_lun(1, str(h2))]},
    ]
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.validate(cfg)
    assert "already exports" in str(e.value)
    # A file that does not exist yet keeps its path as its identity.
    cfg["targets"][1]["luns"] = [cfgmod.new_lun(1, str(tmp_path / "new.img"))]
    cfgmod.validate(cfg)


# ------------------------------------------ concurrent creates of one file take turns


def test_concurrent_creates_of_one_file_never_remove_the_exported_file(api, tmp_path):
    """Both creates checked and provisioned before either applied: the one that made the
    file lost the race to apply and removed the file the other had just exported."""
    server, _ = api
    call(server, "target.create", name=T1)
    call(server, "target.create", name=T2)
    img = tmp_path / "race.img"
    calls = 0

    async def in_executor(fn):
        # Inline, so the interleaving is the event loop's (deterministic): the first
        # provisioning (the creator) then yields longest, so the other reaches apply first.
        nonlocal calls
        calls += 1
        res = fn()
        for _ in range(50 if calls == 3 else 1):
            await asyncio.sleep(0)
        return res

    server._in_executor = in_executor  # type: ignore[method-assign]

    async def both():
        return await asyncio.gather(
            *(
                server.call(
                    "lun.create", {"target": t, "backing": str(img), "size": "8MiB", "create": True}
                )
                for t in (T1, T2)
            ),
            return_exceptions=True,
        )

    res = asyncio.run(both())
    ok = [r for r in res if isinstance(r, dict)]
    refused = [r for r in res if isinstance(r, ApiError)]
    assert len(ok) == 1 and len(refused) == 1, res
    assert refused[0].code == "exists"
    assert img.exists() and img.stat().st_size == 8 * MiB
    assert len(luns(server)) == 1
    saved = cfgmod.load(server.state_dir)
    assert [lu["backing"] for t in saved["targets"] for lu in t["luns"]] == [str(img)]


def test_the_client_leaves_tgts_glfs_spelling_alone_without_a_bstype(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cfgmod.absolute_backing("vol@host:dir/img") == "vol@host:dir/img"
    assert cfgmod.absolute_backing("vol@host:dir/img", "glfs") == "vol@host:dir/img"
    assert cfgmod.absolute_backing("dir/img") == str(tmp_path / "dir/img")


def test_the_identity_of_backing_files_is_never_looked_up_on_the_event_loop(api, tmp_path,
                                                                            monkeypatch):
    """A stat of a file on a hung FUSE mount would stall every session if it ran on the
    daemon's loop: the identity check (hard links, bind mounts) runs in the store executor."""
    import threading

    server, _ = api
    on_loop: list[str] = []
    real_stat = os.stat

    h1, h2 = tmp_path / "h1", tmp_path / "h2"

    def watching_stat(path, *a, **kw):
        if threading.current_thread() is threading.main_thread() and str(path) in (
            str(h1), str(h2)
        ):
            on_loop.append(str(path))
        return real_stat(path, *a, **kw)

    h1.write_bytes(bytes(MiB))
    os.link(h1, h2)
    call(server, "target.create", name=T1)
    call(server, "target.create", name=T2)
    monkeypatch.setattr(cfgmod.os, "stat", watching_stat)
    call(server, "lun.create", target=T1, backing=str(h1))
    with pytest.raises(ApiError) as e:  # the hard link is still found, off the loop
        call(server, "lun.create", target=T2, backing=str(h2))
    assert e.value.code == "exists" and e.value.kind == "backing"
    call(server, "acl.add", target=T1, network="ALL")
    assert on_loop == []
