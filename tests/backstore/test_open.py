from __future__ import annotations

import errno

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.file import FileStore
from gluster_iscsi.backstore.gfapi.address import GlusterAddress, VolfileServer
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.backstore.open import classify, open_store
from gluster_iscsi.backstore.size import format_size, parse_size

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("4096", 4096),
        ("4096B", 4096),
        ("1K", KiB),
        ("1k", KiB),
        ("1KiB", KiB),
        ("512M", 512 * MiB),
        ("512MiB", 512 * MiB),
        ("10GiB", 10 * GiB),
        ("10G", 10 * GiB),
        ("10 GiB", 10 * GiB),
        ("1T", TiB),
        ("1TiB", TiB),
        ("2P", 2 << 50),
        ("1.5G", 3 * GiB // 2),
        ("10GB", 10 * 10**9),
        ("1MB", 10**6),
        ("1kb", 1000),
        (" 7 ", 7),
        (123, 123),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "G", "-1", "1X", "1GiBB", "1.0000001K", "10 G B", "0x10", "1e3", -5]
)
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "n, text", [(10 * GiB, "10GiB"), (512 * MiB, "512MiB"), (1536, "1536"), (3 * KiB, "3KiB")]
)
def test_format_size(n, text):
    assert format_size(n) == text
    assert parse_size(text) == n


S = VolfileServer


@pytest.mark.parametrize(
    "spec, bstype, kind, target",
    [
        ("memory:64MiB", None, "memory", "64MiB"),
        ("memory", None, "memory", ""),
        ("64M", "memory", "memory", "64M"),
        ("/var/lib/disk.img", None, "file", "/var/lib/disk.img"),
        ("relative/disk.img", None, "file", "relative/disk.img"),
        ("file:/var/lib/disk.img", None, "file", "/var/lib/disk.img"),
        ("file:///var/lib/disk.img", None, "file", "/var/lib/disk.img"),
        ("/dev/sdb", "rdwr", "file", "/dev/sdb"),
        ("/x.img", "aio", "file", "/x.img"),
        ("/odd@name:x", None, "file", "/odd@name:x"),
        (
            "gluster://server1/vol/disk.img",
            None,
            "gluster",
            GlusterAddress("vol", (S("server1"),), "/disk.img"),
        ),
        (
            "gluster://h1:24008,h2,[::1]:24009/block-vol/luns/d1.img",
            None,
            "gluster",
            GlusterAddress("block-vol", (S("h1", 24008), S("h2"), S("::1", 24009)), "/luns/d1.img"),
        ),
        (
            "gluster+rdma://h1/vol/d",
            None,
            "gluster",
            GlusterAddress("vol", (S("h1", 24007, "rdma"),), "/d"),
        ),
        (
            "vol@127.0.0.1:disk.img",
            "glfs",
            "gluster",
            GlusterAddress("vol", (S("127.0.0.1"),), "/disk.img"),
        ),
        (
            "vol@host:/dir/disk.img",
            "glfs",
            "gluster",
            GlusterAddress("vol", (S("host"),), "/dir/disk.img"),
        ),
        (
            "gluster://h/vol/d.img",
            "glfs",
            "gluster",
            GlusterAddress("vol", (S("h"),), "/d.img"),
        ),
    ],
)
def test_classify(spec, bstype, kind, target):
    assert classify(spec, bstype) == (kind, target)


@pytest.mark.parametrize(
    "spec, bstype",
    [
        ("", None),
        ("x", "bogus"),
        ("gluster://", None),
        ("gluster://host", None),
        ("gluster://host/", None),
        ("gluster://host/vol", None),
        ("gluster://host/vol/", None),
        ("gluster://host:99999/vol/f", None),
        ("gluster://host/vol/../etc/passwd", None),
        ("gluster+quic://host/vol/f", None),
        ("gluster://h/vol/f", "rdwr"),
        ("no-at-sign:path", "glfs"),
        ("vol@host", "glfs"),
        ("memory:64M", "rdwr"),
        ("file:", None),
    ],
)
def test_classify_rejects(spec, bstype):
    with pytest.raises(ValueError):
        classify(spec, bstype)


def test_gluster_url_options_and_round_trip():
    kind, addr = classify("gluster://a:24008,b/vol/x/y.img?logfile=/tmp/g.log&loglevel=7")
    assert kind == "gluster"
    assert addr.options == {"logfile": "/tmp/g.log", "loglevel": "7"}
    assert addr.url == "gluster://a:24008,b/vol/x/y.img"
    assert classify(addr.url)[1] == addr


def test_open_memory_store():
    s = open_store("memory:1MiB")
    assert isinstance(s, MemoryStore) and s.size == MiB
    assert open_store("memory", size=4096).size == 4096
    assert open_store("memory:4K", read_only=True).read_only


def test_open_memory_without_size_is_einval():
    with pytest.raises(BackingStoreError) as ei:
        open_store("memory")
    assert ei.value.errno == errno.EINVAL


def test_open_file_store_creates_with_size(tmp_path):
    path = tmp_path / "d.img"
    s = open_store(f"file:{path}", size=MiB)
    assert isinstance(s, FileStore) and s.size == MiB
    s.close()
    s = open_store(str(path), bstype="rdwr", read_only=True)
    assert s.read_only
    s.close()


def test_open_rejects_unknown_options(tmp_path):
    with pytest.raises(BackingStoreError) as ei:
        open_store("memory:4K", colour="blue")
    assert ei.value.errno == errno.EINVAL


def test_open_malformed_spec_is_einval():
    with pytest.raises(BackingStoreError) as ei:
        open_store("gluster://host/vol")
    assert ei.value.errno == errno.EINVAL
