"""How the gfapi store places an upcall (backstore/gfapi/store.py ``_on_upcall``): which read
caches it drops, all of one, a shard's range, or none. No volume: a fake one answers the
lookup by GFID (``Volume.gfid_path``; against real bricks: tests/backstore/test_gfapi.py)."""

from __future__ import annotations

import stat
import threading
import time
import uuid

import pytest

from gluster_iscsi.backstore.gfapi import store as store_mod
from gluster_iscsi.backstore.gfapi._binding import GfapiError

MiB = 1 << 20
BASE = uuid.uuid4()
OTHER = uuid.uuid4()
SHARD3 = uuid.uuid4().bytes  # /.shard/BASE.3
LOOSE = uuid.uuid4().bytes  # /some/other/file
PHANTOM = uuid.uuid4().bytes  # nothing on the bricks
BROKEN = uuid.uuid4().bytes  # the lookup fails


class FakeVolume:
    def __init__(self) -> None:
        self.looked_up: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()

    def gfid_path(self, gfid: bytes) -> str | None:
        self.gate.wait(5)
        self.looked_up.append(gfid)
        if gfid == PHANTOM:
            return None
        if gfid == BROKEN:
            raise GfapiError(5, "lookup failed", None)
        if gfid == SHARD3:
            return f"/.shard/{BASE}.3"
        if gfid == LOOSE:
            return "/some/other/file"
        raise AssertionError(gfid)


class Watcher:
    def __init__(self) -> None:
        self.events: list[object] = []

    def all(self) -> None:
        self.events.append("all")

    def range(self, offset: int, length: int) -> None:
        self.events.append((offset, length))


@pytest.fixture
def client():
    c = store_mod._Client(key=("h", "v"))  # type: ignore[arg-type]
    c.volume = FakeVolume()  # type: ignore[assignment]
    c.shard_size = 64 * MiB
    return c


def watch(client, gfid: bytes, with_range: bool = True) -> Watcher:
    w = Watcher()
    client.watchers.setdefault(gfid, []).append(w.all)
    if with_range:
        client.ranges.setdefault(gfid, {})[w.all] = w.range
    return w


def settle(client) -> None:
    deadline = time.monotonic() + 5
    while True:
        with client.watch_lock:
            if client.resolver is None and not client.unresolved:
                return
        assert time.monotonic() < deadline, "the lookups did not finish"
        time.sleep(0.005)


def test_a_forgotten_shard_drops_only_its_range_of_the_watched_file(client):
    # what a sequential fill of a sharded LUN sees now and then (bench/run's prefill): the
    # bricks forget a shard's inode; the LUN's cache loses that shard, not everything
    w, other = watch(client, BASE.bytes), watch(client, OTHER.bytes)
    store_mod._on_upcall(client, SHARD3, 0, store_mod.UP_FORGET)
    settle(client)
    assert w.events == [(3 * 64 * MiB, 64 * MiB)] and other.events == []


def test_an_upcall_for_an_inode_the_bricks_do_not_know_drops_nothing(client):
    w = watch(client, BASE.bytes)
    store_mod._on_upcall(client, PHANTOM, 0, store_mod.UP_FORGET)
    settle(client)
    assert w.events == [] and client.ignored_upcalls == 1


def test_a_forgotten_file_that_is_no_shard_of_a_watched_file_drops_nothing(client):
    w = watch(client, BASE.bytes)
    store_mod._on_upcall(client, LOOSE, 0, store_mod.UP_FORGET)
    settle(client)
    assert w.events == [] and client.ignored_upcalls == 1


def test_a_lookup_that_fails_drops_every_watcher(client):
    w, other = watch(client, BASE.bytes), watch(client, OTHER.bytes)
    store_mod._on_upcall(client, BROKEN, 0, store_mod.UP_FORGET)
    settle(client)
    assert w.events == ["all"] and other.events == ["all"]


def test_without_a_shard_size_or_a_range_callback_the_whole_file_is_dropped(client):
    w = watch(client, BASE.bytes, with_range=False)
    store_mod._on_upcall(client, SHARD3, 0, store_mod.UP_FORGET)
    settle(client)
    client.shard_size = None
    w2 = watch(client, BASE.bytes)
    store_mod._on_upcall(client, SHARD3, 0, store_mod.UP_FORGET)
    settle(client)
    assert w.events == ["all", "all"] and w2.events == ["all"]


def test_upcalls_with_a_stat_are_placed_at_once_as_before(client):
    w, other = watch(client, BASE.bytes), watch(client, OTHER.bytes)
    store_mod._on_upcall(client, BASE.bytes, stat.S_IFREG | 0o600, 0x18)  # its own: at once
    assert w.events == ["all"] and other.events == []
    # another regular file changed (a shard of a watched file, maybe): everyone, at once
    store_mod._on_upcall(client, LOOSE, stat.S_IFREG | 0o600, 0x18)
    assert w.events == ["all", "all"] and other.events == ["all"]
    store_mod._on_upcall(client, LOOSE, stat.S_IFDIR | 0o755, 0x10)  # a directory: nobody
    assert w.events == ["all", "all"] and client.volume.looked_up == []


def test_a_backlog_of_lookups_past_its_bound_drops_everything_at_once(client, monkeypatch):
    monkeypatch.setattr(store_mod, "_UNRESOLVED_MAX", 3)
    w = watch(client, BASE.bytes)
    client.volume.gate.clear()  # the lookups hang
    for _ in range(4):  # one taken by the thread, three queued
        store_mod._on_upcall(client, PHANTOM, 0, store_mod.UP_FORGET)
        time.sleep(0.01)
    store_mod._on_upcall(client, PHANTOM, 0, store_mod.UP_FORGET)  # past the bound
    assert w.events == ["all"] and not client.unresolved
    client.volume.gate.set()
    settle(client)
    assert w.events == ["all"]  # (the one that was under way named nothing)


def test_no_watcher_no_lookup(client):
    store_mod._on_upcall(client, SHARD3, 0, store_mod.UP_FORGET)
    settle(client)
    assert client.volume.looked_up == []


@pytest.mark.parametrize("value,size", [("64MB", 64 * MiB), ("4MB", 4 * MiB),
                                        ("512KB", 512 << 10), ("1GB", 1 << 30)])
def test_the_shard_size_is_read_in_gluster_units(monkeypatch, value, size):
    answers = {"features.shard": "on", "features.shard-block-size": value}
    monkeypatch.setattr(store_mod, "_volume_option", lambda addr, key: answers.get(key))
    assert store_mod.probe_shard_size(None) == size  # type: ignore[arg-type]
    answers["features.shard"] = "off"
    assert store_mod.probe_shard_size(None) is None  # type: ignore[arg-type]


def test_a_lookup_queued_when_the_last_watcher_leaves_is_not_made(client):
    w = watch(client, BASE.bytes)
    client.volume.gate.clear()  # the first lookup hangs
    store_mod._on_upcall(client, PHANTOM, 0, store_mod.UP_FORGET)
    time.sleep(0.05)
    store_mod._on_upcall(client, SHARD3, 0, store_mod.UP_FORGET)  # queued behind it
    with client.watch_lock:
        client.watchers.clear()  # the LUN's cache closed meanwhile
        client.ranges.clear()
    client.volume.gate.set()
    settle(client)
    assert client.volume.looked_up == [PHANTOM] and w.events == []
