"""serve --gfapi-write-piece (issue 19, docs/notes/write-fops.md): a buffered GfapiStore hands
glfs_pwrite(v) at most BUFFERED_WRITE_PIECE bytes a call, as a FUSE mount hands the bricks
128 KiB; an O_DIRECT store and the default (0) keep whole writes. Without a volume: the store
is built around a fake glfs_fd that records its calls (test_gfapi.py checks the bricks)."""

from __future__ import annotations

import os
import threading

import pytest

from gluster_iscsi.backstore.base import Capabilities
from gluster_iscsi.backstore.gfapi import store as store_mod
from gluster_iscsi.backstore.gfapi.store import GfapiStore

KiB = 1024


class RecordingFile:
    """A glfs_fd keeping what was written and the length of every call."""

    def __init__(self, size: int, short_at: int | None = None) -> None:
        self.data = bytearray(size)
        self.calls: list[tuple[str, int, int]] = []  # (call, offset, length)
        self.short_at = short_at  # the first call crossing this offset stops there

    def _put(self, call: str, offset: int, payload: bytes) -> int:
        if self.short_at is not None and offset < self.short_at < offset + len(payload):
            payload = payload[: self.short_at - offset]
            self.short_at = None
        self.calls.append((call, offset, len(payload)))
        self.data[offset:offset + len(payload)] = payload
        return len(payload)

    def pwrite(self, data, offset: int) -> int:
        return self._put("pwrite", offset, bytes(data))

    def pwritev(self, views, offset: int) -> int:
        return self._put("pwritev", offset, b"".join(bytes(v) for v in views))

    def close(self) -> None:
        pass


def _store(size: int, *, o_direct: bool = False, short_at: int | None = None) -> GfapiStore:
    s = GfapiStore.__new__(GfapiStore)
    s.name = s.path = "gluster://h/vol/f"
    s.read_only = False
    s.o_direct = o_direct
    s._file = RecordingFile(size, short_at)  # type: ignore[assignment]
    s._lock = threading.Lock()
    s._calls = 0
    s._idle = threading.Condition(s._lock)
    s._client = object()  # type: ignore[assignment]
    s.errors_by_errno = {}
    s.capabilities = Capabilities()
    return s


@pytest.fixture
def piece(monkeypatch):
    monkeypatch.setattr(store_mod, "BUFFERED_WRITE_PIECE", 0)  # restored after the test
    store_mod.set_buffered_write_piece(128 * KiB)
    return 128 * KiB


def test_a_1mib_write_goes_in_128kib_pieces_in_order(piece):
    s = _store(2 << 20)
    data = os.urandom(1 << 20)
    s.write(4096, data)
    f = s._file
    assert f.calls == [("pwrite", 4096 + i * piece, piece) for i in range(8)]
    assert bytes(f.data[4096:4096 + len(data)]) == data


def test_a_vectored_write_is_cut_at_piece_boundaries_across_its_buffers(piece):
    s = _store(2 << 20)
    parts = [os.urandom(100 * KiB), bytearray(os.urandom(200 * KiB)), b"",
             memoryview(os.urandom(300 * KiB))[KiB:], memoryview(bytearray(os.urandom(8192)))]
    joined = b"".join(bytes(p) for p in parts)
    s.writev(512, parts)
    f = s._file
    assert [c[0] for c in f.calls] == ["pwritev"] * 5
    assert [c[2] for c in f.calls] == [piece] * 4 + [len(joined) - 4 * piece]
    assert [c[1] for c in f.calls] == [512 + i * piece for i in range(5)]
    assert bytes(f.data[512:512 + len(joined)]) == joined


def test_a_short_piece_is_finished_and_nothing_is_written_twice(piece):
    s = _store(2 << 20, short_at=300 * KiB)
    data = os.urandom(600 * KiB)
    s.writev(0, [data[:250 * KiB], data[250 * KiB:]])
    f = s._file
    assert bytes(f.data[:len(data)]) == data
    assert sum(c[2] for c in f.calls) == len(data)  # each byte once
    assert max(c[2] for c in f.calls) <= piece


def test_writes_up_to_a_piece_are_one_call(piece):
    s = _store(1 << 20)
    s.write(0, b"x" * piece)
    s.writev(piece, [b"y" * 4096, bytearray(b"z" * (piece - 4096))])
    assert s._file.calls == [("pwrite", 0, piece), ("pwritev", piece, piece)]


def test_o_direct_and_the_default_keep_whole_writes(monkeypatch, piece):
    s = _store(4 << 20, o_direct=True)
    s.write(0, os.urandom(1 << 20))
    s.writev(1 << 20, [os.urandom(512 * KiB), os.urandom(512 * KiB)])
    assert [c[2] for c in s._file.calls] == [1 << 20, 1 << 20]
    store_mod.set_buffered_write_piece(0)
    s = _store(4 << 20)
    s.write(0, os.urandom(1 << 20))
    s.writev(1 << 20, [os.urandom(512 * KiB), os.urandom(512 * KiB)])
    assert [c[2] for c in s._file.calls] == [1 << 20, 1 << 20]


@pytest.mark.parametrize("size", [100, 6 * KiB, 64 << 20, -4096])
def test_a_piece_that_is_not_whole_4kib_blocks_up_to_32mib_is_refused(monkeypatch, size):
    monkeypatch.setattr(store_mod, "BUFFERED_WRITE_PIECE", 0)
    with pytest.raises(ValueError, match="multiple of 4KiB from 4KiB to 32MiB"):
        store_mod.set_buffered_write_piece(size)
    assert store_mod.BUFFERED_WRITE_PIECE == 0
