"""The group directory on a file system path (group/shared.py, PathSharedDir): records, OFD
locks across processes and inside one, names, GFID stand-ins. On a local directory; the same
facts on a real Gluster volume are in test_shared_gluster.py."""

from __future__ import annotations

import errno
import os
import time

import pytest

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


def test_locks_conflict_across_processes(loc, holder):
    h = holder(loc, "luns/g.lease", 0)
    assert h.locked
    shared = open_shared(loc)
    with pytest.raises(LockHeld):
        shared.try_lock("luns/g.lease", 0)
    assert holder(loc, "luns/g.lease", 0).first == "held"  # a third process too
    assert h.release() == "released"
    shared.try_lock("luns/g.lease", 0).release()


def test_our_lock_is_seen_by_another_process(loc, holder):
    shared = open_shared(loc)
    lock = shared.try_lock("luns/g.lease", 0)
    assert holder(loc, "luns/g.lease", 0).first == "held"
    lock.release()
    h = holder(loc, "luns/g.lease", 0)
    assert h.locked


def test_a_killed_holder_frees_the_lock(loc, holder):
    h = holder(loc, "luns/g.lease", 0)
    assert h.locked
    h.kill()
    open_shared(loc).lock("luns/g.lease", 0, timeout=30).release()


def test_lock_waits_then_times_out(loc, holder):
    h = holder(loc, "luns/g.lease", 0)
    assert h.locked
    shared = open_shared(loc)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as exc:
        shared.lock("luns/g.lease", 0, timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert exc.value.errno == errno.ETIMEDOUT
    assert loc in str(exc.value) and "luns/g.lease" in str(exc.value)
    h.release()
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
