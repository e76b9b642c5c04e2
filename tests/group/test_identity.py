"""LUN identities keyed by GFID (group/identity.py), on a local group directory."""

from __future__ import annotations

import threading
import uuid

import pytest

from gluster_iscsi.group.identity import (
    LunIdentity,
    forget_identity,
    read_identity,
    record_identity,
)
from gluster_iscsi.group.shared import open_shared

U1 = "3f2b8c1e-0d4a-4b7e-9a51-6c2d8e0f1a23"
U2 = "8d1e4f2a-7b3c-4e5d-a6f7-0123456789ab"


def ident(uid: str = U1, path: str = "/luns/d1.img", serial: str = "s1") -> LunIdentity:
    return LunIdentity(uid, "6001405" + uuid.UUID(uid).hex[:25], serial, 512, path, 1.7e9)


@pytest.fixture
def shared(tmp_path):
    s = open_shared(str(tmp_path / "grp"))
    yield s
    s.close()


def test_the_first_proposal_is_recorded_and_later_ones_get_it(shared, tmp_path):
    assert read_identity(shared, "gfid-a") is None
    first = ident(U1)
    assert record_identity(shared, "gfid-a", first) == first
    # another gateway proposes another identity for the same file: it must use the first
    other = open_shared(str(tmp_path / "grp"))
    assert record_identity(other, "gfid-a", ident(U2, serial="s2")) == first
    assert read_identity(other, "gfid-a") == first


def test_one_uuid_cannot_name_two_files(shared):
    record_identity(shared, "gfid-a", ident(U1))
    with pytest.raises(ValueError, match=f"UUID {U1} already names another file \\(gfid gfid-a\\)"):
        record_identity(shared, "gfid-b", ident(U1, path="/luns/d2.img"))
    assert read_identity(shared, "gfid-b") is None
    record_identity(shared, "gfid-b", ident(U2, path="/luns/d2.img"))


def test_a_leftover_index_entry_does_not_block_its_uuid(shared):
    """A gateway died between the index entry and the .id, then the file got another UUID:
    the entry names a file that does not use that UUID, so another file may take it."""
    shared.write(f"identities/{U1}", {"gfid": "gfid-a", "path": "/luns/d1.img"})
    record_identity(shared, "gfid-a", ident(U2))
    assert record_identity(shared, "gfid-b", ident(U1, path="/b")).uuid == U1
    with pytest.raises(ValueError, match="already names another file"):
        record_identity(shared, "gfid-c", ident(U1, path="/c"))


def test_a_uuid_being_recorded_right_now_is_refused(shared):
    shared.write(f"identities/{U1}", {"gfid": "gfid-a", "path": "/a"})
    lock = shared.try_lock("luns/gfid-a.id", 0)  # gateway A is in record_identity
    try:
        with pytest.raises(ValueError, match="already names another file"):
            record_identity(shared, "gfid-b", ident(U1, path="/b"))
    finally:
        lock.release()


def test_forget_frees_the_uuid(shared):
    record_identity(shared, "gfid-a", ident(U1))
    forget_identity(shared, "gfid-a")
    assert read_identity(shared, "gfid-a") is None
    assert record_identity(shared, "gfid-b", ident(U1, path="/b")).uuid == U1
    forget_identity(shared, "gfid-zzz")  # nothing recorded: nothing


def test_concurrent_proposals_agree(tmp_path):
    """Eight threads, each with its own SharedDir and its own proposal: one identity wins,
    every caller is told that one."""
    loc = str(tmp_path / "grp")
    open_shared(loc).close()
    got: list[LunIdentity] = []
    uids = [str(uuid.uuid4()) for _ in range(8)]

    def propose(uid: str) -> None:
        s = open_shared(loc)
        got.append(record_identity(s, "gfid-x", ident(uid)))
        s.close()

    threads = [threading.Thread(target=propose, args=(u,)) for u in uids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 8 and len(set(got)) == 1
    assert got[0].uuid in uids
    assert read_identity(open_shared(loc), "gfid-x") == got[0]


def test_identity_values_are_checked():
    with pytest.raises(ValueError, match="not a UUID"):
        LunIdentity("nope", "60", "s", 512, "/p", 0.0)
    with pytest.raises(ValueError, match="naa_hex"):
        LunIdentity(U1, "xyz", "s", 512, "/p", 0.0)
    with pytest.raises(ValueError, match="block_size"):
        LunIdentity(U1, "60", "s", 0, "/p", 0.0)
    with pytest.raises(ValueError, match="lacks 'serial'"):
        LunIdentity.from_dict({"uuid": U1, "naa_hex": "60"})
    assert LunIdentity(U1.upper(), "60", "s", 512, "/p", 0.0).uuid == U1
    i = LunIdentity.new(U1, "60", "s", 4096, "/p")
    assert LunIdentity.from_dict(i.to_dict()) == i
