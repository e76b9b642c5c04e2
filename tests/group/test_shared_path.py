"""The group directory on a file system path (group/shared.py, PathSharedDir): records, OFD
locks across processes and inside one, names, GFID stand-ins. On a local directory; the same
facts on a real Gluster volume are in test_shared_gluster.py."""

from __future__ import annotations

import errno
import os
import time

import pytest
from group_agent import holding

from gluster_iscsi.group import records
from gluster_iscsi.group.shared import (
    SUBDIRS,
    Lock,
    LockHeld,
    PathSharedDir,
    Record,
    SharedDirError,
    is_stand_in,
    open_shared,
)


@pytest.fixture
def loc(tmp_path):
    return str(tmp_path / "grp")


def test_open_creates_the_directory_and_its_subdirs(loc):
    shared = open_shared(loc)
    assert isinstance(shared, PathSharedDir)
    assert shared.location == loc
    for sub in SUBDIRS:
        assert os.path.isdir(os.path.join(loc, sub))
    assert not shared.on_gluster
    shared.close()


def test_records_round_trip_with_seq_numbers(loc):
    a, b = open_shared(loc), open_shared(loc)
    assert a.read("gateways/gw-a") is None
    assert a.write("gateways/gw-a", {"n": 1}) == 1
    assert a.write("gateways/gw-a", {"n": 2}) == 2
    assert b.read("gateways/gw-a") == Record(2, {"n": 2})
    assert b.write("gateways/gw-a", {"n": 3}) == 3  # b continues from what it read
    assert a.read("gateways/gw-a") == Record(3, {"n": 3})
    assert a.write("gateways/gw-a", {"n": 9}, seq=9) == 9
    assert b.read("gateways/gw-a") == Record(9, {"n": 9})
    assert os.path.getsize(os.path.join(loc, "gateways/gw-a")) == records.FILE_SIZE


def test_a_writer_that_knows_no_seq_reads_first(loc):
    open_shared(loc).write("group.json", {"v": 1}, seq=41)
    assert open_shared(loc).write("group.json", {"v": 2}) == 42


def test_a_torn_write_leaves_the_last_good_record(loc):
    shared = open_shared(loc)
    shared.write("luns/x.state", {"v": "good"})  # seq 1, slot 1
    path = os.path.join(loc, "luns/x.state")
    torn = records.encode(2, {"v": "new" * 100})[:40]
    with open(path, "r+b") as f:  # seq 2 goes to slot 0: torn there
        f.write(torn)
    assert open_shared(loc).read("luns/x.state") == Record(1, {"v": "good"})


def test_an_oversize_record_writes_nothing(loc):
    shared = open_shared(loc)
    shared.write("a", {"v": 1})
    with pytest.raises(ValueError, match="too large"):
        shared.write("a", {"v": "x" * records.SLOT_SIZE})
    assert open_shared(loc).read("a") == Record(1, {"v": 1})


def test_a_file_with_no_valid_slot_reads_as_none(loc):
    shared = open_shared(loc)
    with open(os.path.join(loc, "junk"), "wb") as f:
        f.write(b"not a record" * 100)
    assert shared.read("junk") is None
    assert shared.write("junk", {"ok": True}) == 1
    assert shared.read("junk") == Record(1, {"ok": True})


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", ".", "a/./b", "x\0y"])
def test_bad_names_are_refused(loc, name):
    shared = open_shared(loc)
    with pytest.raises(ValueError, match="invalid name"):
        shared.read(name)
    with pytest.raises(ValueError, match="invalid name"):
        shared.try_lock(name, 0)


def test_two_locks_in_one_process_conflict_and_release(loc):
    """Through two SharedDir objects and through the same one: the second gets LockHeld,
    not success (OFD locks belong to the fd, not the process)."""
    a, b = open_shared(loc), open_shared(loc)
    lock = a.try_lock("luns/g.lease", 0)
    assert isinstance(lock, Lock) and lock.held
    with pytest.raises(LockHeld):
        b.try_lock("luns/g.lease", 0)
    with pytest.raises(LockHeld):
        a.try_lock("luns/g.lease", 0)
    other_byte = b.try_lock("luns/g.lease", 1)  # byte 1 is another lock
    other_byte.release()
    lock.release()
    assert not lock.held
    lock.release()  # idempotent
    with b.try_lock("luns/g.lease", 0) as again:
        assert again.held
    assert not again.held


def test_closing_other_fds_of_the_file_keeps_the_lock(loc):
    """Classic fcntl locks would be dropped here: any close() of the file by the process."""
    a, b = open_shared(loc), open_shared(loc)
    lock = a.try_lock("luns/g.lease", 0)
    a.write("luns/g.lease", {"owner": "a"})
    assert a.read("luns/g.lease") is not None
    os.close(os.open(os.path.join(loc, "luns/g.lease"), os.O_RDONLY))
    with open(os.path.join(loc, "luns/g.lease"), "rb") as f:
        f.read(10)
    with pytest.raises(LockHeld):
        b.try_lock("luns/g.lease", 0)
    lock.release()


def test_locks_conflict_across_processes(loc, agent):
    shared = open_shared(loc)
    h = holding(agent(loc), "luns/g.lease", 0)
    with pytest.raises(LockHeld):
        shared.try_lock("luns/g.lease", 0)
    assert agent(loc).call("lock", "luns/g.lease", 0) == "held"  # a third process too
    assert h.call("lock", "luns/g.lease", 0) == "held"  # and its own second Lock
    assert h.call("release") == "released"
    shared.try_lock("luns/g.lease", 0).release()


def test_our_lock_is_seen_by_another_process(loc, agent):
    shared = open_shared(loc)
    lock = shared.try_lock("luns/g.lease", 0)
    other = agent(loc)
    assert other.call("lock", "luns/g.lease", 0) == "held"
    lock.release()
    assert other.call("lock", "luns/g.lease", 0) == "locked"


def test_a_killed_holder_frees_the_lock(loc, agent):
    h = holding(agent(loc), "luns/g.lease", 0)
    h.kill()
    open_shared(loc).lock("luns/g.lease", 0, timeout=30).release()


def test_a_record_written_by_another_process_is_read_at_once(loc, agent):
    other = agent(loc)
    shared = open_shared(loc)
    for i in range(20):
        seq = other.call("write", "gateways/x", {"i": i})
        assert shared.read("gateways/x") == Record(seq, {"i": i})
        shared.write("gateways/x", {"j": i})
        assert other.call("read", "gateways/x") == [seq + 1, {"j": i}]


def test_lock_waits_then_times_out(loc, agent):
    h = holding(agent(loc), "luns/g.lease", 0)
    shared = open_shared(loc)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as exc:
        shared.lock("luns/g.lease", 0, timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert exc.value.errno == errno.ETIMEDOUT
    assert loc in str(exc.value) and "luns/g.lease" in str(exc.value)
    h.call("release")
    shared.lock("luns/g.lease", 0, timeout=5).release()


def test_close_releases_the_locks_it_made(loc):
    a, b = open_shared(loc), open_shared(loc)
    a.try_lock("x", 0)
    with pytest.raises(LockHeld):
        b.try_lock("x", 0)
    a.close()
    b.try_lock("x", 0).release()
    with pytest.raises(SharedDirError) as exc:
        a.read("x")
    assert exc.value.errno == errno.EBADF


def test_names_and_remove(loc):
    shared = open_shared(loc)
    assert shared.names("gateways/") == []
    for n in ("gateways/b", "gateways/a", "luns/1.id", "luns/1.lease", "luns/2.id"):
        shared.write(n, {})
    assert shared.names("gateways/") == ["gateways/a", "gateways/b"]
    assert shared.names("luns/1.") == ["luns/1.id", "luns/1.lease"]
    assert shared.names("nothing/") == []
    assert "gateways" not in shared.names("")  # files only
    shared.remove("gateways/a")
    shared.remove("gateways/a")  # missing: nothing
    assert shared.names("gateways/") == ["gateways/b"]
    assert shared.read("gateways/a") is None


def test_gfid_outside_gluster_is_a_stable_stand_in(loc, tmp_path):
    shared = open_shared(loc)
    f1, f2 = tmp_path / "f1", tmp_path / "f2"
    f1.write_bytes(b"1")
    f2.write_bytes(b"2")
    g1 = shared.gfid(str(f1))
    assert is_stand_in(g1)
    assert g1 == open_shared(loc).gfid(str(f1))
    assert g1 == shared.gfid(str(tmp_path / "." / "f1"))
    assert g1 != shared.gfid(str(f2))
    assert not is_stand_in("a46c8d41-fa21-425a-938f-ca750e988110")
    with pytest.raises(SharedDirError) as exc:
        shared.gfid(str(tmp_path / "missing"))
    assert exc.value.errno == errno.ENOENT


def test_errors_name_the_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SharedDirError) as exc:
        open_shared(str(blocker / "grp"))
    assert str(blocker) in str(exc.value)
    loc = str(tmp_path / "grp")
    shared = open_shared(loc)
    os.mkdir(os.path.join(loc, "adir"))
    with pytest.raises(SharedDirError) as exc2:
        shared.write("adir", {})
    assert loc in str(exc2.value) and "adir" in str(exc2.value)


def test_writes_and_locks_create_their_folder(loc):
    shared = open_shared(loc)
    shared.write("new/sub/rec", {"a": 1})
    assert open_shared(loc).read("new/sub/rec") == Record(1, {"a": 1})
    shared.try_lock("other/lockfile", 3).release()


def test_refresh_keeps_a_held_lock_and_refuses_a_released_one(loc, agent):
    shared = open_shared(loc)
    lock = shared.try_lock("luns/g.lease", 0)
    lock.refresh()
    lock.refresh()
    assert lock.held
    assert agent(loc).call("lock", "luns/g.lease", 0) == "held"
    lock.release()
    with pytest.raises(SharedDirError) as exc:
        lock.refresh()
    assert exc.value.errno == errno.EBADF
    h = holding(agent(loc), "luns/g.lease", 0)
    assert h.call("refresh") == "refreshed"


def test_tmpfs_works_with_or_without_o_direct(agent):
    """tmpfs refuses O_DIRECT before Linux 6.6 (then records go through its page cache, the
    only copy there) and takes it since: either way records round-trip between processes."""
    if not os.path.isdir("/dev/shm") or "tmpfs" not in open("/proc/mounts").read():
        pytest.skip("no tmpfs at /dev/shm")
    import shutil
    import tempfile

    base = tempfile.mkdtemp(dir="/dev/shm")
    try:
        loc = os.path.join(base, "grp")
        shared = open_shared(loc)
        assert shared.write("gateways/a", {"n": 1}) == 1
        assert agent(loc).call("read", "gateways/a") == [1, {"n": 1}]
        shared.write("gateways/a", {"n": 2})
        assert agent(loc).call("read", "gateways/a") == [2, {"n": 2}]
    finally:
        shutil.rmtree(base)


def test_no_o_direct_falls_back_except_on_gluster(loc, monkeypatch):
    """A file system that refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6) gets buffered
    I/O; a Gluster FUSE mount never does (a reader could be served stale pages)."""
    real_open = os.open

    def no_direct(path, flags, mode=0o777):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    shared = open_shared(loc)
    monkeypatch.setattr(os, "open", no_direct)
    assert shared.write("a", {"n": 1}) == 1
    assert shared.read("a") == Record(1, {"n": 1})
    on_gluster = open_shared(loc)
    on_gluster.on_gluster = True
    with pytest.raises(SharedDirError) as exc:
        on_gluster.read("a")
    assert exc.value.errno == errno.EINVAL and loc in str(exc.value)
