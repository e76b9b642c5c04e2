from __future__ import annotations

import errno
import logging
import os
import stat
import threading

import pytest

from gluster_iscsi.backstore.base import BackingStoreError, Extent
from gluster_iscsi.backstore.file import FileStore

MiB = 1 << 20


def test_create_size_makes_a_sparse_file(tmp_path):
    path = tmp_path / "disk.img"
    s = FileStore(path, create_size=64 * MiB)
    assert s.created
    assert s.size == 64 * MiB
    assert os.stat(path).st_blocks * 512 < MiB  # nothing allocated yet
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s.close()
    again = FileStore(path, create_size=128 * MiB)
    assert not again.created and again.size == 64 * MiB  # existing files are left alone
    again.close()


def test_missing_file_without_create_size_is_enoent_with_path(tmp_path):
    path = str(tmp_path / "nope.img")
    with pytest.raises(BackingStoreError) as ei:
        FileStore(path)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.path == path


def test_directory_is_refused(tmp_path):
    with pytest.raises(BackingStoreError) as ei:
        FileStore(tmp_path, read_only=True)
    assert ei.value.errno in (errno.EINVAL, errno.EISDIR)


def test_shrink_requires_force(tmp_path):
    s = FileStore(tmp_path / "d.img", create_size=2 * MiB)
    with pytest.raises(BackingStoreError) as ei:
        s.resize(MiB)
    assert ei.value.errno == errno.EINVAL
    assert s.size == 2 * MiB
    s.resize(MiB, force=True)
    assert s.size == MiB
    s.close()


def test_short_read_error_names_errno_and_path(tmp_path):
    path = tmp_path / "d.img"
    s = FileStore(path, create_size=4096)
    with pytest.raises(BackingStoreError) as ei:
        s.read(2048, 4096)
    assert ei.value.errno == errno.EIO
    assert ei.value.path == str(path)
    assert "short read" in ei.value.strerror
    s.close()


def test_writev_writes_buffers_back_to_back(tmp_path):
    s = FileStore(tmp_path / "d.img", create_size=MiB)
    s.writev(100, [b"abc", bytearray(b"def"), memoryview(b"ghi")])
    assert s.read(100, 9) == b"abcdefghi"
    s.close()


def test_punch_hole_frees_blocks_on_disk(tmp_path):
    path = tmp_path / "d.img"
    s = FileStore(path, create_size=8 * MiB)
    s.write(0, b"\x01" * (8 * MiB))
    s.flush()
    before = os.stat(path).st_blocks
    s.discard(0, 4 * MiB)
    after = os.stat(path).st_blocks
    assert after * 512 <= before * 512 - 4 * MiB + 64 * 1024
    s.close()


def test_allocate_reserves_blocks(tmp_path):
    path = tmp_path / "d.img"
    s = FileStore(path, create_size=4 * MiB)
    s.allocate(0, 4 * MiB)
    assert os.stat(path).st_blocks * 512 >= 4 * MiB
    assert s.size == 4 * MiB
    s.close()


def test_o_direct_handles_unaligned_requests(tmp_path):
    try:
        s = FileStore(tmp_path / "d.img", create_size=MiB, o_direct=True)
    except BackingStoreError as e:
        if e.errno == errno.EINVAL:
            pytest.skip("file system refuses O_DIRECT")
        raise
    s.write(4096, b"\x07" * 8192)  # aligned offset, unaligned (bytes) buffer
    s.write(100, b"hello")  # unaligned offset and length: read-modify-write
    assert s.read(100, 5) == b"hello"
    assert s.read(4096, 8192) == b"\x07" * 8192
    assert s.read(0, 100) == bytes(100)
    s.close()


def test_block_device_size_and_caps():
    dev = "/dev/loop0"
    if not os.path.exists(dev):
        pytest.skip("no block device to open here")
    try:
        s = FileStore(dev, read_only=True)
    except BackingStoreError as e:
        pytest.skip(f"cannot open {dev}: {e}")
    try:
        assert s.is_block
        assert s.capabilities.extents is False
        assert s.size >= 0
    finally:
        s.close()


def _lying_fallocate(real, lie_about: int):
    """fallocate that answers success for ``lie_about`` modes without doing anything, as
    GlusterFS's FUSE bridge does for FALLOC_FL_ZERO_RANGE under this sandbox's FUSE."""

    def fake(fd, mode, offset, length):
        if mode & lie_about:
            return None
        return real(fd, mode, offset, length)

    return fake


def test_zero_range_that_claims_success_without_zeroing_is_caught(tmp_path, monkeypatch):
    from gluster_iscsi.backstore import _linux

    s = FileStore(tmp_path / "d.img", create_size=4 * MiB)
    if s._zero_range is False:
        pytest.skip("file system has no ZERO_RANGE to begin with")
    monkeypatch.setattr(
        _linux, "fallocate", _lying_fallocate(_linux.fallocate, _linux.FALLOC_FL_ZERO_RANGE)
    )
    s.write(0, b"\x11" * (2 * MiB))
    s.write_zeroes(0, MiB)
    assert s.read(0, MiB) == bytes(MiB)
    assert s._zero_range is False  # never trusted again
    s.write(0, b"\x11" * MiB)
    s.write_zeroes(0, MiB)
    assert s.read(0, MiB) == bytes(MiB)
    s.close()


def test_punch_that_claims_success_without_zeroing_downgrades_discard(tmp_path, monkeypatch):
    from gluster_iscsi.backstore import _linux

    s = FileStore(tmp_path / "d.img", create_size=4 * MiB)
    monkeypatch.setattr(
        _linux, "fallocate", _lying_fallocate(_linux.fallocate, _linux.FALLOC_FL_PUNCH_HOLE)
    )
    s.write(0, b"\x22" * (2 * MiB))
    s.discard(0, MiB)
    assert s.read(0, MiB) == bytes(MiB)  # the promise (discard reads zeroes) still holds
    assert s.capabilities.discard is False and s.capabilities.discard_zeroes is False
    s.close()


def test_unsupported_punch_falls_back_and_reports_truthfully(tmp_path, monkeypatch):
    from gluster_iscsi.backstore import _linux

    def refuse(fd, mode, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    s = FileStore(tmp_path / "d.img", create_size=2 * MiB)
    assert s.capabilities.discard
    s.write(0, b"\x33" * MiB)
    monkeypatch.setattr(_linux, "fallocate", refuse)
    s.discard(0, 4096)
    s.write_zeroes(4096, 4096)
    assert s.read(0, 8192) == bytes(8192)
    assert s.capabilities.discard is False
    with pytest.raises(BackingStoreError) as ei:
        s.discard(0, 4096)
    assert ei.value.errno == errno.EOPNOTSUPP
    s.close()


def test_no_seek_data_means_no_extents_capability(tmp_path, monkeypatch):
    real_lseek = os.lseek

    def lseek(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    s = FileStore(tmp_path / "d.img", create_size=MiB)
    assert s.capabilities.extents is False
    assert s.extents(0, MiB) == [Extent(0, MiB, True)]
    s.close()


def test_files_on_tmpfs_run_inline_and_others_on_workers(tmp_path):
    from gluster_iscsi.backstore._linux import fs_type

    shm = FileStore("/dev/shm/gluster-iscsi-inline-test.img", create_size=1 << 20)
    try:
        assert shm.fs_type == "tmpfs" and shm.blocking is False
    finally:
        shm.close()
        os.unlink("/dev/shm/gluster-iscsi-inline-test.img")
    disk = FileStore(tmp_path / "d.img", create_size=1 << 20)
    try:
        fd = os.open(tmp_path / "d.img", os.O_RDONLY)
        try:
            on_tmpfs = fs_type(fd) == "tmpfs"
        finally:
            os.close(fd)
        assert disk.blocking is (not on_tmpfs)
    finally:
        disk.close()


# --------------------------------------------- close() and calls still running on workers


class _BlockingPwrite:
    """os.pwrite that, for the store's descriptor, says it started and waits to be let go."""

    def __init__(self, real, fd: int) -> None:
        self.real, self.fd = real, fd
        self.started, self.go = threading.Event(), threading.Event()

    def __call__(self, fd, data, offset):
        if fd == self.fd:
            self.started.set()
            assert self.go.wait(30)
        return self.real(fd, data, offset)


@pytest.fixture
def blocked_pwrite(monkeypatch):
    """Install a _BlockingPwrite for a store; whatever the test's outcome, let it go after."""
    made: list[_BlockingPwrite] = []

    def install(store: FileStore) -> _BlockingPwrite:
        b = _BlockingPwrite(os.pwrite, store._fd)
        monkeypatch.setattr(os, "pwrite", b)
        made.append(b)
        return b

    yield install
    for b in made:
        b.go.set()


def _wait_closing(store: FileStore) -> None:
    while store._fd >= 0:  # close() has begun: it takes the descriptor away first
        threading.Event().wait(0.001)


def test_close_waits_for_a_running_write_and_later_calls_fail_cleanly(tmp_path, blocked_pwrite):
    """Closing under a running pwrite let the number be reused by another open or accept,
    and the late write land in that file or socket."""
    path = tmp_path / "d.img"
    store = FileStore(path, create_size=1 << 20)
    fd = store._fd
    blocking = blocked_pwrite(store)
    writer = threading.Thread(target=store.write, args=(4096, b"\xab" * 512))
    writer.start()
    assert blocking.started.wait(30)
    closer = threading.Thread(target=store.close)
    closer.start()
    _wait_closing(store)
    assert os.fstat(fd)  # still open: the write still uses it
    with pytest.raises(BackingStoreError) as e:
        store.write(0, b"x" * 512)  # a call that starts now
    assert e.value.errno == errno.EBADF
    with pytest.raises(BackingStoreError):
        store.read(0, 512)
    assert closer.is_alive()  # close() is waiting for the write
    blocking.go.set()
    writer.join(30)
    closer.join(30)
    assert not closer.is_alive()
    with open(path, "rb") as f:
        f.seek(4096)
        assert f.read(512) == b"\xab" * 512  # the write landed in its own file


def test_close_leaks_the_descriptor_rather_than_close_it_under_a_hung_call(
    tmp_path, blocked_pwrite, caplog
):
    path = tmp_path / "d.img"
    store = FileStore(path, create_size=1 << 20)
    fd = store._fd
    blocking = blocked_pwrite(store)
    writer = threading.Thread(target=store.write, args=(0, b"\xcd" * 512))
    writer.start()
    assert blocking.started.wait(30)
    with caplog.at_level(logging.ERROR):
        store.close(timeout=0.01)
    assert "leaked" in caplog.text
    assert os.fstat(fd)  # left open
    with pytest.raises(BackingStoreError):
        store.write(0, b"x" * 512)
    blocking.go.set()
    writer.join(30)
    with open(path, "rb") as f:
        assert f.read(512) == b"\xcd" * 512
    os.close(fd)  # the test's own cleanup of what the store leaked
