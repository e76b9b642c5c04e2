from __future__ import annotations

import errno
import os

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.provision import create_backing, grow_backing

MiB = 1 << 20


@pytest.mark.parametrize("mode", ["sparse", "falloc", "full"])
def test_create_backing_modes(tmp_path, mode):
    path = tmp_path / f"{mode}.img"
    seen: list[tuple[int, int]] = []
    create_backing(str(path), "8MiB", preallocation=mode, progress=lambda d, t: seen.append((d, t)))
    st = os.stat(path)
    assert st.st_size == 8 * MiB
    allocated = st.st_blocks * 512
    if mode == "sparse":
        assert allocated < MiB
    else:
        assert allocated >= 8 * MiB
    assert seen and seen[-1] == (8 * MiB, 8 * MiB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    with open(path, "rb") as f:
        assert f.read(4096) == bytes(4096)


def test_create_backing_refuses_existing_unless_exist_ok(tmp_path):
    path = str(tmp_path / "d.img")
    create_backing(path, "1M")
    with pytest.raises(BackingStoreError) as ei:
        create_backing(path, "2M")
    assert ei.value.errno == errno.EEXIST
    assert os.path.getsize(path) == MiB
    create_backing(path, "2M", exist_ok=True)
    assert os.path.getsize(path) == 2 * MiB


def test_grow_backing_grows_and_never_shrinks(tmp_path):
    path = str(tmp_path / "d.img")
    create_backing(path, "1M")
    assert grow_backing(path, "3M") == MiB
    assert os.path.getsize(path) == 3 * MiB
    with pytest.raises(BackingStoreError):
        grow_backing(path, "1M")
    assert os.path.getsize(path) == 3 * MiB


def test_create_backing_refuses_memory():
    with pytest.raises(BackingStoreError):
        create_backing("memory:1M", "1M")


def test_exist_ok_never_writes_over_existing_data(tmp_path):
    path = tmp_path / "d.img"
    data = os.urandom(MiB)
    path.write_bytes(data)
    assert create_backing(str(path), "2M", preallocation="full", exist_ok=True) is False
    with open(path, "rb") as f:
        assert f.read(MiB) == data and f.read() == bytes(MiB)  # only the grown part zeroed


def test_overwrite_throws_the_old_contents_away(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(os.urandom(2 * MiB))
    assert create_backing(str(path), "1M", preallocation="falloc", overwrite=True) is False
    assert path.read_bytes() == bytes(MiB)


def test_a_file_created_is_removed_when_provisioning_fails(tmp_path, monkeypatch):
    from gluster_iscsi.backstore import provision

    def full(store, start, nbytes, progress):
        raise BackingStoreError(errno.ENOSPC, "No space left on device", "x")

    monkeypatch.setattr(provision, "_write_zeroes", full)
    path = tmp_path / "new.img"
    with pytest.raises(BackingStoreError):
        create_backing(str(path), "4M", preallocation="full")
    assert not path.exists()
    path.write_bytes(b"keep")  # an existing file is never removed
    with pytest.raises(BackingStoreError):
        create_backing(str(path), "4M", preallocation="full", exist_ok=True)
    assert path.exists()


def test_create_backing_with_bstype_glfs_provisions_on_the_volume_not_a_local_file(
    tmp_path, monkeypatch
):
    """``lun create --bstype glfs vol@host:/img --size``: tgt's form names a file on a
    Gluster volume; without the bstype it was taken for a local path (relative to the
    daemon's directory) and a local file was made there."""
    from gluster_iscsi.backstore import provision
    from gluster_iscsi.backstore.memory import MemoryStore

    opened: list[tuple[str, str | None]] = []

    def fake_open_store(spec, *, bstype=None, size=None, **options):
        kind, target = provision.classify(spec, bstype)
        assert kind == "gluster", (spec, bstype)  # what GfapiStore would be given
        opened.append((target.volume, target.path))
        store = MemoryStore(size or MiB)
        store.created = True  # type: ignore[attr-defined]
        return store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(provision, "open_store", fake_open_store)
    assert create_backing("vol@host:/img", "8MiB", bstype="glfs") is True
    assert opened == [("vol", "/img")]
    assert os.listdir(tmp_path) == []
    grow_backing("vol@host:/img", "8MiB", bstype="glfs")
    assert opened == [("vol", "/img")] * 2
