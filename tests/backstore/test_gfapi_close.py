"""GfapiStore.close() and calls still running on worker threads, without a volume: the
store is built around a fake glfs_fd (the real one is freed by glfs_close, and a late
glfs_pwrite on it would use freed memory)."""

from __future__ import annotations

import errno
import logging
import threading

import pytest

from gluster_iscsi.backstore.base import BackingStoreError, Capabilities
from gluster_iscsi.backstore.gfapi import store as store_mod
from gluster_iscsi.backstore.gfapi.store import GfapiStore


class FakeFile:
    """A glfs_fd whose pwrite says it started and waits to be let go."""

    def __init__(self) -> None:
        self.started, self.go = threading.Event(), threading.Event()
        self.closed = False
        self.writes: list[tuple[int, bytes]] = []

    def pwrite(self, data, offset: int) -> int:
        assert not self.closed, "pwrite on a freed glfs_fd"
        self.started.set()
        assert self.go.wait(30)
        assert not self.closed, "glfs_close ran under a running pwrite"
        self.writes.append((offset, bytes(data)))
        return len(data)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def store(monkeypatch):
    released: list[object] = []
    monkeypatch.setattr(store_mod, "_release", released.append)
    s = GfapiStore.__new__(GfapiStore)
    s.name = s.path = "gluster://h/vol/f"
    s.read_only = False
    s.o_direct = False
    s._file = FakeFile()
    s._lock = threading.Lock()
    s._calls = 0
    s._idle = threading.Condition(s._lock)
    s._client = object()
    s.capabilities = Capabilities()
    f = s._file
    yield s, f, released
    f.go.set()


def test_close_waits_for_a_running_write_then_frees_the_glfs_fd(store):
    s, f, released = store
    writer = threading.Thread(target=s.write, args=(0, b"a" * 512))
    writer.start()
    assert f.started.wait(30)
    closer = threading.Thread(target=s.close)
    closer.start()
    while s._file is not None:  # close() has begun
        threading.Event().wait(0.001)
    with pytest.raises(BackingStoreError) as e:
        s.write(512, b"b" * 512)
    assert e.value.errno == errno.EBADF
    assert closer.is_alive() and not f.closed
    f.go.set()
    writer.join(30)
    closer.join(30)
    assert f.writes == [(0, b"a" * 512)] and f.closed and len(released) == 1


def test_close_leaks_the_glfs_fd_under_a_hung_call(store, caplog):
    s, f, released = store
    writer = threading.Thread(target=s.write, args=(0, b"a" * 512))
    writer.start()
    assert f.started.wait(30)
    with caplog.at_level(logging.ERROR):
        s.close(timeout=0.01)
    assert "leaked" in caplog.text
    assert not f.closed and released == []
    f.go.set()
    writer.join(30)
    assert f.writes == [(0, b"a" * 512)]
