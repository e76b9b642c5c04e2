"""GfapiStore against a real replica-3 volume started by scripts/gluster-env.sh.

Data written through libgfapi is checked through the volume's FUSE mount (and the other way
round), so the binding cannot agree with itself and still be wrong.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
import uuid

import pytest
from gluster_env import brick_write_sizes  # (tests/ is on sys.path: conftest.py)

from gluster_iscsi.backstore.base import BackingStoreError, Extent
from gluster_iscsi.backstore.open import open_store
from gluster_iscsi.backstore.provision import create_backing, grow_backing

pytestmark = pytest.mark.gluster

MiB = 1 << 20
# libgfapi's own log, next to the volume's other logs (see tests/gluster_env.py).
_LOG = os.path.join(
    os.environ.get("GLUSTER_WORKDIR", "/var/tmp/gluster-iscsi-env"), "gfapi-tests.log"
)


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}.img"


@pytest.fixture
def store_factory():
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    opened: list[GfapiStore] = []

    def make(url: str, **kw) -> GfapiStore:
        s = GfapiStore(url, log_file=_LOG, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def _read_fuse(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_write_through_gfapi_reads_back_through_fuse(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=16 * MiB)
    assert s.created
    payload = os.urandom(3 * MiB + 512)
    s.write(5 * MiB + 512, payload)
    s.flush()
    assert s.read(5 * MiB + 512, len(payload)) == payload
    fuse = gluster_volume.fuse_path(name)
    assert os.path.getsize(fuse) == 16 * MiB
    assert _read_fuse(fuse, 5 * MiB + 512, len(payload)) == payload


def test_write_through_fuse_reads_back_through_gfapi(gluster_volume, store_factory, name):
    fuse = gluster_volume.fuse_path(name)
    payload = os.urandom(MiB)
    with open(fuse, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    s = store_factory(gluster_volume.url(name))
    assert not s.created
    assert s.size == 4 * MiB
    buf = bytearray(MiB)
    s.read_into(MiB, memoryview(buf))
    assert buf == payload


def test_write_crossing_a_64mib_shard_boundary(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=128 * MiB)
    payload = os.urandom(2 * MiB)
    s.write(64 * MiB - MiB, payload)
    assert s.read(64 * MiB - MiB, 2 * MiB) == payload
    assert _read_fuse(gluster_volume.fuse_path(name), 64 * MiB - MiB, 2 * MiB) == payload


def test_short_read_past_end_raises_eio(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=MiB)
    with pytest.raises(BackingStoreError) as ei:
        s.read(MiB - 10, 20)
    assert ei.value.errno == errno.EIO


def test_discard_reads_zeroes_on_the_sharded_volume(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=8 * MiB)
    assert s.capabilities.discard and s.capabilities.discard_zeroes
    s.write(0, b"\xaa" * (4 * MiB))
    s.discard(MiB, 2 * MiB)
    assert s.read(MiB, 2 * MiB) == bytes(2 * MiB)
    assert s.read(0, MiB) == b"\xaa" * MiB
    assert s.read(3 * MiB, MiB) == b"\xaa" * MiB
    assert _read_fuse(gluster_volume.fuse_path(name), MiB, 4096) == bytes(4096)


def test_sharded_volume_reports_no_extents_rather_than_guessing(
    gluster_volume, store_factory, name
):
    # The shard translator answers glfs_lseek(SEEK_DATA) with ENOTSUP (GlusterFS 10.3).
    s = store_factory(gluster_volume.url(name), create_size=8 * MiB)
    assert s.capabilities.extents is False
    assert s.extents(0, 8 * MiB) == [Extent(0, 8 * MiB, True)]


def test_discard_then_seek_hole_on_an_unsharded_volume(plain_gluster_volume, store_factory, name):
    s = store_factory(plain_gluster_volume.url(name), create_size=8 * MiB)
    assert s.capabilities.extents
    assert s.extents(0, 8 * MiB) == [Extent(0, 8 * MiB, False)]
    s.write(0, b"\x01" * (4 * MiB))
    s.flush()
    s.discard(MiB, MiB)
    assert s.read(MiB, MiB) == bytes(MiB)
    assert s.extents(0, 8 * MiB) == [
        Extent(0, MiB, True),
        Extent(MiB, MiB, False),
        Extent(2 * MiB, 2 * MiB, True),
        Extent(4 * MiB, 4 * MiB, False),
    ]
    # The FUSE mount sees the same hole.
    fd = os.open(plain_gluster_volume.fuse_path(name), os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == MiB
        assert os.lseek(fd, MiB, os.SEEK_DATA) == 2 * MiB
    finally:
        os.close(fd)


@pytest.mark.parametrize("volume_fixture", ["gluster_volume", "plain_gluster_volume"])
def test_zerofill_zeroes_exactly_the_range(request, volume_fixture, store_factory, name):
    env = request.getfixturevalue(volume_fixture)
    s = store_factory(env.url(name), create_size=4 * MiB)
    assert s.capabilities.write_zeroes
    s.write(0, b"\x55" * (4 * MiB))
    s.write_zeroes(4096, 2 * MiB)
    assert s.read(4096, 2 * MiB) == bytes(2 * MiB)
    assert s.read(0, 4096) == b"\x55" * 4096
    assert s.read(4096 + 2 * MiB, 4096) == b"\x55" * 4096
    assert s._zerofill, "glfs_zerofill itself did the work, not the write fallback"
    assert _read_fuse(env.fuse_path(name), 4096, 4096) == bytes(4096)


def test_two_stores_on_one_volume_share_one_client(gluster_volume, store_factory):
    from gluster_iscsi.backstore.gfapi.store import client_refcounts

    a = store_factory(gluster_volume.url("share-a.img"), create_size=MiB)
    # The second one through tgt's glfs form: same volume and server, so the same client.
    b = open_store(
        f"{gluster_volume.volume}@{gluster_volume.host}:share-b.img", bstype="glfs", size=MiB
    )
    try:
        key = (a.address.volume, a.address.servers)
        assert client_refcounts()[key] == 2
        assert a._client is b._client  # type: ignore[attr-defined]
        a.write(0, b"A")
        b.write(0, b"B")
        assert a.read(0, 1) == b"A" and b.read(0, 1) == b"B"
    finally:
        b.close()
    assert client_refcounts()[key] == 1
    client = a._client
    a.close()
    assert client_refcounts()[key] == 0  # idle, kept for reuse
    again = store_factory(gluster_volume.url("share-a.img"))
    assert again._client is client  # reopened without a new glfs_new/glfs_init
    again.close()


def test_concurrent_io_from_threads(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=16 * MiB)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            data = bytes([i + 1]) * (256 * 1024)
            for j in range(4):
                off = (i * 4 + j) * len(data)
                s.write(off, data)
                assert s.read(off, len(data)) == data
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_vectored_write_and_read_of_mixed_buffers_are_byte_exact(gluster_volume, store_factory,
                                                                 name):
    # writev/preadv pin each buffer (a bytearray or writable view cheaply, bytes and
    # read-only views through the buffer protocol): one iovec each, in order, no copies.
    s = store_factory(gluster_volume.url(name), create_size=2 * MiB)
    parts = [os.urandom(4096), bytearray(os.urandom(8192)), memoryview(os.urandom(512)),
             memoryview(bytearray(os.urandom(65536)))[1024:5120], b""]
    s.writev(12288, parts)
    s.flush()
    joined = b"".join(bytes(p) for p in parts)
    assert _read_fuse(gluster_volume.fuse_path(name), 12288, len(joined)) == joined
    a, b = bytearray(5000), memoryview(bytearray(20000))[3:3 + len(joined) - 5000]
    assert s._fh.preadv_into([a, b], 12288) == len(joined)
    assert bytes(a) + bytes(b) == joined
    with pytest.raises(BufferError):  # nowhere to read into
        s._fh.preadv_into([b"read-only"], 0)


def test_a_client_with_its_own_translator_option_reads_and_writes_through_fuse(
    gluster_volume, store_factory, name, monkeypatch
):
    # serve --gfapi-xlator-option (issue 19): the option reaches glfs_init of a new client
    # (spelled "localhost": a client of its own, not the session's shared one) and the data
    # path, with the bytearray/memoryview pinning of pread_into/pwrite, is byte-exact.
    from gluster_iscsi.backstore.gfapi import store as gstore

    monkeypatch.setattr(gstore, "CLIENT_XLATOR_OPTIONS",
                        [("*-io-threads", "pass-through", "true")])
    host = gluster_volume.host
    other = "localhost" if host in ("127.0.0.1", "::1") else host
    s = store_factory(f"gluster://{other}/{gluster_volume.volume}/{name}", create_size=2 * MiB)
    data = bytearray(os.urandom(64 << 10))
    s.write(4096, memoryview(data)[:8192])  # a writable view: _hold
    s.write(65536, data)  # a bytearray: _hold
    s.flush()
    fuse = gluster_volume.fuse_path(name)
    assert _read_fuse(fuse, 4096, 8192) == data[:8192]
    assert _read_fuse(fuse, 65536, len(data)) == data
    back = bytearray(len(data) + 4096)
    s.read_into(61440, memoryview(back))  # into a writable view: _hold
    assert back[:4096] == bytes(4096) and back[4096:] == data



def _io_threads() -> set[int]:
    """This process's client-side io-threads (libgfapi names them glfs_iotwrNNN)."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("glfs_iotwr"):
                    out.add(int(tid))
        except FileNotFoundError:  # (a thread that just ended)
            pass
    return out


@pytest.mark.parametrize("given, most", [([], 1), ([("*-io-threads", "thread-count", "4")], 4)])
def test_a_client_winds_through_as_many_io_threads_as_its_option_allows(
    gluster_volume, store_factory, name, monkeypatch, given, most
):
    # The daemon's default client option on two CPUs or more (issue 19): one client-side
    # io-thread, however many calls are in flight at once; a thread-count given with
    # serve --gfapi-xlator-option replaces it (the second case shows the count is what limits
    # them: 8 blocking reads at once spawn more than one). A client of its own: its two volfile servers are spelled
    # differently per case, and no other test spells them so.
    from gluster_iscsi.backstore.gfapi import store as gstore

    if gluster_volume.host not in ("127.0.0.1", "::1"):
        pytest.skip("needs the volume on this host (two spellings of it)")
    monkeypatch.setattr(gstore, "CLIENT_XLATOR_OPTIONS", [])
    monkeypatch.setattr(gstore.os, "sched_getaffinity", lambda pid: {0, 1})  # (the default's)
    gstore.set_client_xlator_options(given)
    servers = "localhost,127.0.0.1" if given else "127.0.0.1,localhost"
    before = _io_threads()
    s = store_factory(f"gluster://{servers}/{gluster_volume.volume}/{name}",
                      create_size=16 * MiB)
    s.write(0, os.urandom(16 * MiB))
    s.flush()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def reader(i: int) -> None:
        try:
            start.wait()
            buf = bytearray(4096)
            for n in range(300):
                s.read_into(((i * 7919 + n * 104729) % 4096) * 4096, memoryview(buf))
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    spawned = _io_threads() - before
    assert 1 <= len(spawned) <= most
    if most > 1:
        assert len(spawned) > 1


def test_read_only_store_refuses_writes_with_erofs(gluster_volume, store_factory, name):
    store_factory(gluster_volume.url(name), create_size=MiB).close()
    s = store_factory(gluster_volume.url(name), read_only=True)
    for call in (lambda: s.write(0, b"x"), lambda: s.discard(0, 4096), lambda: s.resize(2 * MiB)):
        with pytest.raises(BackingStoreError) as ei:
            call()
        assert ei.value.errno == errno.EROFS


def test_missing_file_is_enoent(gluster_volume, store_factory):
    with pytest.raises(BackingStoreError) as ei:
        store_factory(gluster_volume.url("does/not/exist.img"))
    assert ei.value.errno == errno.ENOENT


def test_unknown_volume_fails_cleanly(gluster_volume):
    from gluster_iscsi.backstore.gfapi.store import GfapiStore, client_refcounts

    with pytest.raises(BackingStoreError):
        GfapiStore(f"gluster://{gluster_volume.host}/no-such-volume/x.img", log_file="/dev/null")
    assert not any(k[0] == "no-such-volume" for k in client_refcounts())


def test_provision_and_grow_through_a_gluster_url(gluster_volume, name):
    url = gluster_volume.url(f"prov/{name}")
    seen: list[int] = []
    create_backing(url, "64MiB", preallocation="falloc", progress=lambda d, t: seen.append(d))
    fuse = gluster_volume.fuse_path(f"prov/{name}")
    assert os.path.getsize(fuse) == 64 * MiB
    assert seen[-1] == 64 * MiB
    with pytest.raises(BackingStoreError) as ei:
        create_backing(url, "64MiB")
    assert ei.value.errno == errno.EEXIST
    assert grow_backing(url, "96MiB") == 64 * MiB
    s = open_store(url, read_only=True)
    try:
        assert s.size == 96 * MiB
    finally:
        s.close()
    # The FUSE client caches attributes (attribute-timeout, 1 s by default).
    deadline = time.monotonic() + 5
    while os.path.getsize(fuse) != 96 * MiB and time.monotonic() < deadline:
        time.sleep(0.2)
    assert os.path.getsize(fuse) == 96 * MiB


def test_resize_grows_and_refuses_unforced_shrink(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=MiB)
    s.resize(3 * MiB)
    assert s.size == 3 * MiB
    with pytest.raises(BackingStoreError):
        s.resize(MiB)
    s.resize(MiB, force=True)
    assert s.size == MiB


# -- the file store on the Gluster FUSE mount (what tgt's rdwr backend would use) ----------


def test_file_store_on_sharded_fuse_has_no_extents_but_discards(gluster_volume, name):
    from gluster_iscsi.backstore.file import FileStore

    s = FileStore(gluster_volume.fuse_path(name), create_size=8 * MiB)
    try:
        assert s.fs_type == "fuse"
        assert s.capabilities.extents is False  # shard answers SEEK_DATA with ENOTSUP
        assert s.extents(0, 8 * MiB) == [Extent(0, 8 * MiB, True)]
        s.write(0, b"\x01" * (4 * MiB))
        s.discard(MiB, MiB)
        s.write_zeroes(2 * MiB, MiB)
        assert s.read(MiB, 2 * MiB) == bytes(2 * MiB)
        assert s.read(3 * MiB, MiB) == b"\x01" * MiB
        assert s.capabilities.discard and s.capabilities.discard_zeroes
    finally:
        s.close()


def test_file_store_write_zeroes_really_zeroes_through_fuse(plain_gluster_volume, name):
    # Under this machine's FUSE, FALLOC_FL_ZERO_RANGE reaches GlusterFS's fuse bridge, which
    # answers success and zeroes nothing: the store must not rely on it.
    from gluster_iscsi.backstore.file import FileStore
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    s = FileStore(plain_gluster_volume.fuse_path(name), create_size=4 * MiB)
    try:
        s.write(0, b"\x01" * (4 * MiB))
        s.flush()
        s.write_zeroes(MiB, MiB)
        s.flush()
        assert s.read(MiB, MiB) == bytes(MiB)
        assert s.capabilities.extents
    finally:
        s.close()
    g = GfapiStore(plain_gluster_volume.url(name))
    try:
        assert g.read(MiB, MiB) == bytes(MiB)  # zero on the bricks, not just in a cache
        assert g.read(2 * MiB, 4096) == b"\x01" * 4096
    finally:
        g.close()


# -- binding calls the store does not use (yet): copy, locks, namespace ---------------------


def _clients(env, count=2):
    from gluster_iscsi.backstore.gfapi import _binding as gf

    clients = []
    for _ in range(count):
        v = gf.Volume(env.volume)
        v.set_volfile_server(env.host)
        v.set_logging(_LOG, gf.LOG_WARNING)
        v.init()
        clients.append(v)
    return clients


def _fini_later(clients):
    # Deliberately not finished: a glfs_new after another client's glfs_fini in the same
    # process was seen to crash (GlusterFS 10.3); see store.IDLE_LINGER_SECONDS.
    del clients


@pytest.fixture
def two_clients(gluster_volume):
    clients = _clients(gluster_volume)
    yield clients
    _fini_later(clients)


@pytest.fixture
def plain_client(plain_gluster_volume):
    clients = _clients(plain_gluster_volume, 1)
    yield clients[0]
    _fini_later(clients)


def test_binding_copy_file_range_stat_mkdir_unlink(plain_client, plain_gluster_volume, name):
    # GlusterFS 10.3 applies glfs_copy_file_range on ONE brick of a replica set only (the
    # other replicas keep zeroes, reads then depend on the brick AFR picks), so this checks
    # the binding (count, data on a brick), not replicated reads. Do not use it for XCOPY.
    import glob

    v = plain_client
    d = f"/bind-{name}"
    v.makedirs(f"{d}/sub")
    src = v.creat(f"{d}/sub/src")
    dst = v.creat(f"{d}/sub/dst")
    try:
        src.pwrite(b"copy me, server side", 0)
        src.fdatasync()  # write-behind does not order the copy after cached writes
        dst.ftruncate(4096)
        assert src.copy_file_range(0, dst, 100, 20) == 20
        dst.fdatasync()
        assert v.stat(f"{d}/sub/dst").size == 4096
        assert dst.fstat().size == 4096
    finally:
        src.close()
        dst.close()
    on_bricks = []
    for brick in glob.glob(
        f"{plain_gluster_volume.workdir}/bricks/{plain_gluster_volume.volume}/b*"
    ):
        with open(f"{brick}{d}/sub/dst", "rb") as f:
            f.seek(100)
            on_bricks.append(f.read(20))
    assert b"copy me, server side" in on_bricks
    v.unlink(f"{d}/sub/src")
    assert not v.exists(f"{d}/sub/src")
    with pytest.raises(BackingStoreError) as ei:
        v.mkdir(f"{d}/sub")
    assert ei.value.errno == errno.EEXIST


def test_binding_posix_locks_conflict_between_clients(two_clients, name):
    import fcntl

    from gluster_iscsi.backstore.gfapi import _binding as gf

    a, b = two_clients
    fa = a.creat(f"/{name}")
    fb = b.open(f"/{name}")
    try:
        fa.posix_lock(fcntl.F_SETLK, gf.Flock(l_type=fcntl.F_WRLCK, l_whence=0))
        with pytest.raises(BackingStoreError) as ei:
            fb.posix_lock(fcntl.F_SETLK, gf.Flock(l_type=fcntl.F_WRLCK, l_whence=0))
        assert ei.value.errno in (errno.EAGAIN, errno.EACCES)
        probe = fb.posix_lock(fcntl.F_GETLK, gf.Flock(l_type=fcntl.F_WRLCK, l_whence=0))
        assert probe.l_type == fcntl.F_WRLCK  # the conflicting lock is reported
        fa.posix_lock(fcntl.F_SETLK, gf.Flock(l_type=fcntl.F_UNLCK, l_whence=0))
        fb.file_lock(fcntl.F_SETLK, gf.Flock(l_type=fcntl.F_WRLCK, l_whence=0))
    finally:
        fa.close()
        fb.close()


def test_o_direct_store_does_aligned_io(gluster_volume, name):
    s = open_store(gluster_volume.url(name) + "?o_direct=1", size=MiB)
    try:
        assert s.o_direct  # type: ignore[attr-defined]
        payload = os.urandom(8192)
        s.write(4096, payload)
        assert s.read(4096, 8192) == payload
        with pytest.raises(BackingStoreError) as ei:
            s.write(100, b"abc")  # the bricks open with O_DIRECT: unaligned is refused
        assert ei.value.errno == errno.EINVAL
    finally:
        s.close()


# -- node loss ----------------------------------------------------------------------------


def _brick_pids(volume: str) -> list[int]:
    import re
    import subprocess

    xml = subprocess.run(
        ["gluster", "--mode=script", "volume", "status", volume, "--xml"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [int(p) for p in re.findall(r"<path>/[^<]*</path>.*?<pid>(\d+)</pid>", xml, re.S)]


def test_brick_loss_surfaces_enotconn_and_the_store_recovers(fault_gluster_volume):
    import signal
    import subprocess

    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    vol = fault_gluster_volume.volume
    s = GfapiStore(fault_gluster_volume.url("fault.img"), create_size=16 * MiB)
    try:
        s.write(0, b"\x07" * 65536)
        s.flush()
        pids = _brick_pids(vol)
        assert len(pids) == 3
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(1)
        s.write(0, b"\x08" * 65536)  # one replica lost: quorum holds, I/O goes on
        s.flush()
        assert s.read(0, 4) == b"\x08" * 4
        os.kill(pids[1], signal.SIGKILL)
        time.sleep(1)
        # Quorum lost. write-behind may still acknowledge the write; the flush cannot lie.
        with pytest.raises(BackingStoreError) as ei:
            s.write(0, b"\x09" * 65536)
            s.flush()
        assert ei.value.errno == errno.ENOTCONN
        with pytest.raises(BackingStoreError) as ei:
            s.read(0, 4096)
        assert ei.value.errno == errno.ENOTCONN
    finally:
        subprocess.run(
            ["gluster", "--mode=script", "volume", "start", vol, "force"],
            capture_output=True,
            timeout=120,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s.write(0, b"\x0a" * 4096)
                s.flush()
                break
            except BackingStoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert s.read(0, 4096) == b"\x0a" * 4096  # the same store, no reopen needed
    finally:
        s.close()


@pytest.mark.parametrize("volume_fixture", ["gluster_volume", "plain_gluster_volume"])
def test_random_operations_agree_with_a_bytearray_model(request, volume_fixture, name):
    import random

    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    env = request.getfixturevalue(volume_fixture)
    rnd = random.Random(7)
    size = 4 * MiB
    s = GfapiStore(env.url(name), create_size=size, log_file=_LOG)
    model = bytearray(size)
    try:
        for _ in range(150):
            op = rnd.choice(["write", "write", "discard", "zeroes", "read"])
            offset = rnd.randrange(size // 512) * 512
            length = min(rnd.randrange(1, 256) * 512, size - offset)
            if op == "write":
                data = rnd.randbytes(length)
                s.write(offset, data)
                model[offset : offset + length] = data
            elif op in ("discard", "zeroes"):
                (s.discard if op == "discard" else s.write_zeroes)(offset, length)
                model[offset : offset + length] = bytes(length)
            else:
                assert s.read(offset, length) == model[offset : offset + length]
        s.flush()
        assert s.read(0, size) == model
        assert _read_fuse(env.fuse_path(name), 0, size) == model
        for e in s.extents(0, size):
            if not e.mapped:
                assert model[e.offset : e.offset + e.length] == bytes(e.length)
    finally:
        s.close()


def test_discard_and_zerofill_across_64mib_shard_boundaries(gluster_volume, store_factory, name):
    s = store_factory(gluster_volume.url(name), create_size=192 * MiB)
    s.write(62 * MiB, b"\x05" * (6 * MiB))
    s.discard(63 * MiB, 2 * MiB)
    assert s.read(63 * MiB, 2 * MiB) == bytes(2 * MiB)
    assert s.read(62 * MiB, MiB) == b"\x05" * MiB
    assert s.read(65 * MiB, MiB) == b"\x05" * MiB
    s.write(126 * MiB, b"\x06" * (4 * MiB))
    s.write_zeroes(127 * MiB, 2 * MiB)
    assert s.read(127 * MiB, 2 * MiB) == bytes(2 * MiB)
    assert s.read(126 * MiB, MiB) == b"\x06" * MiB
    assert s.read(129 * MiB, MiB) == b"\x06" * MiB
    s.discard(64 * MiB, 64 * MiB)  # exactly one whole shard
    assert s.read(64 * MiB, 64 * MiB) == bytes(64 * MiB)
    assert _read_fuse(gluster_volume.fuse_path(name), 127 * MiB, 4096) == bytes(4096)


def test_an_upcalls_gfid_is_looked_up_to_its_shard_and_an_unknown_one_to_none(
    gluster_volume, store_factory, name
):
    # what the store does with an upcall that says the bricks forgot an inode (store.py
    # _on_upcall): the GFID's path tells which shard of which file, or nothing
    import uuid

    s = store_factory(gluster_volume.url(name), create_size=2 * 64 * MiB)
    s.write(64 * MiB + 4096, b"x" * 4096)  # makes shard 1 (the profile's shards: 64 MiB)
    s.flush()
    vol = s._vol
    base = vol.gfid(s.path)
    info = subprocess.run(["gluster", "--mode=script", "volume", "info", gluster_volume.volume],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    brick = next(line.split(":", 2)[2].strip() for line in info.splitlines()
                 if line.startswith("Brick1:"))
    shard = os.getxattr(os.path.join(brick, ".shard", f"{uuid.UUID(bytes=base)}.1"),
                        "trusted.gfid")
    assert vol.gfid_path(shard) == f"/.shard/{uuid.UUID(bytes=base)}.1"
    assert vol.gfid_path(base) == s.path
    assert vol.gfid_path(uuid.uuid4().bytes) is None


def test_a_write_piece_reaches_the_bricks_as_fuse_sized_writes(
    gluster_volume, store_factory, name, monkeypatch
):
    # serve --gfapi-write-piece (issue 19, docs/notes/write-fops.md): with 128 KiB pieces, a
    # 1 MiB write reaches each brick as 128 KiB WRITEs (the bricks' page cache then holds the
    # range in small folios, where later 4 KiB writes cost less), as through a FUSE mount.
    # Gluster's write-behind may join two pieces, never a whole 1 MiB write back.
    from gluster_iscsi.backstore.gfapi import store as store_mod

    monkeypatch.setattr(store_mod, "BUFFERED_WRITE_PIECE", 0)
    vol = gluster_volume.volume

    def gluster(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["gluster", "--mode=script", "volume", "profile", vol, *args],
                              capture_output=True, text=True, timeout=60, check=False)

    s = store_factory(gluster_volume.url(name), create_size=8 * MiB)
    gluster("start")  # (already started by another test: fine)
    try:
        whole = os.urandom(MiB)
        assert gluster("info", "clear").returncode == 0
        s.write(0, whole)
        s.flush()
        before = brick_write_sizes(vol)
        assert sum(n for b, n in before.items() if b >= 512 * 1024) >= 3, before  # unsplit

        store_mod.set_buffered_write_piece(128 * 1024)
        data = os.urandom(3 * MiB)
        assert gluster("info", "clear").returncode == 0
        s.write(MiB, data[:MiB])
        s.writev(2 * MiB, [bytearray(data[MiB:MiB + 300 * 1024]),
                           memoryview(data)[MiB + 300 * 1024:]])
        s.flush()
        after = brick_write_sizes(vol)
        assert after and max(after) <= 256 * 1024, after
        assert _read_fuse(gluster_volume.fuse_path(name), 0, 4 * MiB) == whole + data
        # asynchronous calls (server/gfaio.py) cut a longer write at the store's piece
        assert s.write_piece == 128 * 1024
        handle = s.begin_async(True, 256 * 1024)
        assert handle
        s.end_async(None)
    finally:
        gluster("stop")
