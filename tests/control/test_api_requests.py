"""Requests held to each op's schema (issue 16.11) and lun create checking before it
provisions (issue 15.1, 15.5, 15.6, 15.7), against the API with in-memory stores."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from gluster_iscsi.control import api as apimod
from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control.api import ControlServer
from gluster_iscsi.control.client import Client
from gluster_iscsi.control.protocol import ApiError

from .fakes import FakeDaemon

T1 = "iqn.2001-04.com.example:t1"
T2 = "iqn.2001-04.com.example:t2"
MiB = 1 << 20


@pytest.fixture
def api(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    return ControlServer(d), d


def call(server, op, **args):
    return asyncio.run(server.call(op, args))


def snapshot(server, *files: Path):
    """The saved config, the running config and each file's bytes and mtime."""
    cfg_file = cfgmod.config_path(server.state_dir)
    return (
        cfg_file.read_bytes() if cfg_file.exists() else None,
        call(server, "config.export"),
        [(f.read_bytes(), os.stat(f).st_mtime_ns) if f.exists() else None for f in files],
    )


def data_file(path: Path, n: int = MiB) -> Path:
    path.write_bytes(os.urandom(n))
    return path


# ------------------------------------------------------------------ 16.11: request schema


def test_a_boolean_is_not_a_tid(api):
    server, _ = api
    call(server, "target.create", name=T1)
    before = snapshot(server)
    for bad in (True, [1], {"tid": 1}, 1.0):
        with pytest.raises(ApiError) as e:
            call(server, "target.delete", target=bad)
        assert e.value.code == "bad_request" and e.value.field == "target", e.value
        assert "must be a string or a whole number" in e.value.message
    assert snapshot(server) == before
    assert [t["name"] for t in call(server, "target.list")] == [T1]


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("lun.create", {"target": T1, "backing": 5}),
        ("lun.create", {"target": T1, "backing": "/srv/x.img", "lun": "3"}),
        ("lun.create", {"target": T1, "backing": "/srv/x.img", "read_only": "yes"}),
        ("lun.delete", {"target": T1, "lun": 1.5}),
        ("lun.resize", {"target": T1, "lun": 1, "size": None}),
        ("acl.add", {"target": T1, "network": ["ALL"]}),
        ("param.set", {"name": {"a": 1}, "value": "1"}),
        ("session.close", {"tsih": "x"}),
        ("target.create", {"name": T2, "alias": 7}),
        ("target.create", {"name": T2, "tid": True}),
        ("auth.account.add", {"user": "u", "secret": 123456789012345}),
        ("portal.add", {"host": "127.0.0.1", "port": "3260"}),
        ("config.apply", {"config": [1]}),
        ("target.create", {"name": T2, "bogus": 1}),
        ("target.delete", {}),
    ],
)
def test_wrong_arguments_are_bad_requests_that_change_nothing(api, op, args):
    server, _ = api
    call(server, "target.create", name=T1)
    before = snapshot(server)
    with pytest.raises(ApiError) as e:
        call(server, op, **args)
    assert e.value.code == "bad_request", e.value
    assert snapshot(server) == before


def test_every_op_has_a_schema_from_its_signature(api):
    from gluster_iscsi.control.protocol import op_schema

    server, _ = api
    for op in call(server, "ops"):
        schema = op_schema(getattr(server, "op_" + op.replace(".", "_")).__func__)
        assert all(isinstance(required, bool) for _, required in schema.values())
    assert op_schema(ControlServer.op_lun_delete) == {
        "target": (str | int, True),
        "lun": (int, True),
    }


def _serve(state_dir: Path):
    """A ControlServer on a real Unix socket in a thread; yields the socket path."""
    server = ControlServer(FakeDaemon(state_dir))
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert started.wait(5)
    return server, loop, th


def _stop(server, loop, th):
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    th.join(5)


def _exchange(path: Path, *lines: bytes) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    out = []
    try:
        for line in lines:
            s.sendall(line)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            out.append(json.loads(data) if data else None)
    finally:
        s.close()
    return out


def test_deep_nesting_gets_an_error_reply_and_the_connection_goes_on(tmp_path, fake_runtime):
    srv = _serve(tmp_path)
    try:
        deep = b'{"v":1,"id":1,"op":"ping","args":{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}}\n"
        mid = (
            b'{"v":1,"id":2,"op":"config.apply","args":{"config":' + b"[" * 40 + b"]" * 40 + b"}}\n"
        )
        ping = b'{"v":1,"id":3,"op":"ping"}\n'
        replies = _exchange(tmp_path / "control.sock", deep, mid, ping)
        assert [r["ok"] for r in replies] == [False, False, True], replies
        assert [r["error"]["code"] for r in replies[:2]] == ["bad_request", "bad_request"]
        assert "nests deeper than" in replies[0]["error"]["message"]
        assert "nests deeper than" in replies[1]["error"]["message"]
    finally:
        _stop(*srv)


def test_an_overlong_request_gets_an_error_reply(tmp_path, fake_runtime, monkeypatch):
    monkeypatch.setattr(apimod, "MAX_LINE", 4096)
    srv = _serve(tmp_path)
    try:
        big = b'{"v":1,"id":1,"op":"ping","args":{"x":"' + b"a" * 8192 + b'"}}\n'
        (reply,) = _exchange(tmp_path / "control.sock", big)
        assert reply is not None and reply["error"]["code"] == "bad_request"
        assert "longer than 4096 bytes" in reply["error"]["message"]
        assert Client(tmp_path, timeout=5).call("ping")["api"] == 1
    finally:
        _stop(*srv)


def test_temp_files_of_a_crashed_save_are_removed_at_start(tmp_path, fake_runtime):
    dead = tmp_path / ".config.json.999999999.tmp"  # above any pid_max: nobody's
    own = tmp_path / f".config.json.{os.getpid()}.tmp"  # this process is not saving
    live = tmp_path / ".config.json.1.tmp"  # init is alive: maybe a save in progress
    other = tmp_path / ".config.json.backup.tmp"  # not ours to judge
    for p in (dead, own, live, other):
        p.write_text("{")
    _stop(*_serve(tmp_path))
    assert (dead.exists(), own.exists(), live.exists(), other.exists()) == (
        False,
        False,
        True,
        True,
    )


# --------------------------------------------------------- 15.1: check, provision, change


def test_a_failing_lun_create_never_writes_over_an_exported_file(api, tmp_path):
    server, _ = api
    img = data_file(tmp_path / "existing.img")
    call(server, "target.create", name=T1)
    call(server, "lun.create", target=T1, backing=str(img), lun=10)
    before = snapshot(server, img)
    for lun in (10, 11):  # a taken LUN number, then a free one: the same file either way
        with pytest.raises(ApiError) as e:
            call(server, "lun.create", target=T1, backing=str(img), lun=lun, size="1MiB",
                 create=True, prealloc="full")  # fmt: skip
        assert e.value.code == "exists"
        assert snapshot(server, img) == before


def test_size_on_a_file_with_data_is_refused_unless_overwrite(api, tmp_path):
    server, _ = api
    img = data_file(tmp_path / "data.img", 2 * MiB)
    call(server, "target.create", name=T1)
    before = snapshot(server, img)
    with pytest.raises(ApiError) as e:
        call(server, "lun.create", target=T1, backing=str(img), size="1MiB", create=True,
             prealloc="full")  # fmt: skip
    assert e.value.code == "exists"
    assert "omit --size" in e.value.hint and "--overwrite" in e.value.hint
    assert snapshot(server, img) == before
    res = call(server, "lun.create", target=T1, backing=str(img), size="1MiB", create=True,
               prealloc="full", overwrite=True)  # fmt: skip
    assert res["lun"] == 1
    assert img.read_bytes() == bytes(MiB)


def test_a_failing_lun_create_leaves_no_file_it_created(api, tmp_path, fake_runtime):
    server, _ = api
    _, failing = fake_runtime
    new = tmp_path / "new.img"
    with pytest.raises(ApiError) as e:  # no such target: refused before any file is made
        call(server, "lun.create", target=T1, backing=str(new), size="2GiB", create=True)
    assert e.value.code == "not_found" and not new.exists()
    call(server, "target.create", name=T1)
    before = snapshot(server)
    failing.add(str(new))  # the store will not open after provisioning
    with pytest.raises(ApiError):
        call(server, "lun.create", target=T1, backing=str(new), size="2MiB", create=True)
    assert not new.exists()
    assert snapshot(server) == before
    empty = tmp_path / "empty.img"  # an empty file is provisioned, and given back empty
    empty.touch()
    failing.add(str(empty))
    with pytest.raises(ApiError):
        call(server, "lun.create", target=T1, backing=str(empty), size="2MiB", create=True)
    assert empty.exists() and empty.stat().st_size == 0
    assert snapshot(server) == before


# ---------------------------------------------------------- 15.5: one file, one identity


def test_one_file_is_one_lun_whatever_its_spelling(api, tmp_path):
    server, _ = api
    img = data_file(tmp_path / "a.img")
    (tmp_path / "link.img").symlink_to(img)
    call(server, "target.create", name=T1)
    call(server, "target.create", name=T2)
    call(server, "lun.create", target=T1, backing=str(img))
    call(server, "lun.create", target=T1, backing="gluster://h/vol/dir/f.img")
    before = snapshot(server, img)
    for spelling in (str(tmp_path / "link.img"), str(tmp_path / "." / "a.img"),
                     "gluster://h,localhost:24007/vol/dir/f.img", "vol@otherhost:/dir//f.img"):  # fmt: skip
        with pytest.raises(ApiError) as e:
            call(server, "lun.create", target=T2, backing=spelling,
                 bstype="glfs" if "@" in spelling else None)  # fmt: skip
        assert e.value.code == "exists", spelling
        assert f"LUN 1 of {T1}" in e.value.message or f"LUN 2 of {T1}" in e.value.message
        assert snapshot(server, img) == before


def test_a_config_exporting_one_file_twice_is_invalid(tmp_path):
    def lun(n, backing):
        return {"lun": n, "backing": backing}

    cfg = {"targets": [
        {"name": T1, "tid": 1, "luns": [lun(1, "gluster://h/vol/f")]},
        {"name": T2, "tid": 2, "luns": [lun(1, "gluster://h,localhost/vol/f")]},
    ]}  # fmt: skip
    with pytest.raises(cfgmod.ConfigError, match="already exports"):
        cfgmod.validate(cfg)
    cfg["targets"][1]["luns"] = [lun(1, "/srv/a.img"), lun(2, "/srv/../srv/a.img")]
    with pytest.raises(cfgmod.ConfigError, match="LUN 1 of .*t2 already exports"):
        cfgmod.validate(cfg)
    cfg["targets"][1]["luns"] = [lun(1, "memory:1MiB"), lun(2, "memory:1MiB")]
    cfgmod.validate(cfg)  # each memory store is its own


# ------------------------------------------------------------------ 15.6: absolute paths


def test_relative_backing_paths_are_refused_by_the_daemon_and_made_absolute_by_the_client(
    tmp_path, fake_runtime, monkeypatch
):
    with pytest.raises(cfgmod.ConfigError, match="relative path"):
        cfgmod.validate({"targets": [{"name": T1, "tid": 1,
                                      "luns": [{"lun": 1, "backing": "disk.img"}]}]})  # fmt: skip
    srv = _serve(tmp_path / "state")
    try:
        c = Client(tmp_path / "state", timeout=5)
        c.call("target.create", name=T1)
        monkeypatch.chdir(tmp_path)
        c.call("lun.create", target=T1, backing="sub/disk.img")
        c.call("lun.create", target=T1, backing="file:other.img")
        saved = cfgmod.load(tmp_path / "state")
        assert [x["backing"] for x in saved["targets"][0]["luns"]] == [
            str(tmp_path / "sub" / "disk.img"),
            str(tmp_path / "other.img"),
        ]
    finally:
        _stop(*srv)


# ------------------------------------------------------------ 15.7: sizes are whole blocks


@pytest.mark.parametrize(
    ("size", "block_size", "why"),
    [(10, 512, "less than one 512-byte block"), ("1000", 512, "not a whole number"),
     ("2KiB", 4096, "less than one 4096-byte block"), ("6KiB", 4096, "not a whole number")],
)  # fmt: skip
def test_sizes_below_or_between_blocks_are_refused(api, tmp_path, size, block_size, why):
    server, _ = api
    call(server, "target.create", name=T1)
    before = snapshot(server)
    img = tmp_path / "small.img"
    with pytest.raises(ApiError) as e:
        call(server, "lun.create", target=T1, backing=str(img), size=size, create=True,
             block_size=block_size)  # fmt: skip
    assert e.value.code == "invalid" and why in e.value.message
    assert not img.exists()
    with pytest.raises(ApiError):
        call(server, "lun.create", target=T1, backing="memory:10")
    assert snapshot(server) == before


def test_attributes_named_op_are_not_operations(api):
    server, _ = api
    assert "timeout" not in call(server, "ops")
    with pytest.raises(ApiError) as e:
        call(server, "timeout")  # ControlServer.op_timeout is a number, not an operation
    assert e.value.code == "bad_request"
