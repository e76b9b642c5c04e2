"""The binding's pieces that need no Gluster: layouts, pinning, lazy loading."""

from __future__ import annotations

import ctypes
import errno
import subprocess
import sys

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.gfapi import _binding as gf


def test_struct_layouts_match_x86_64_abi():
    assert ctypes.sizeof(gf.Stat) == 144
    assert gf.Stat.st_size.offset == 48
    assert gf.Stat.st_mtim.offset == 88
    assert ctypes.sizeof(gf.Flock) == 32
    assert gf.Flock.l_start.offset == 8
    assert ctypes.sizeof(gf.Iovec) == 16


def test_pinned_gives_the_real_address_without_copying():
    buf = bytearray(b"0123456789")
    view = memoryview(buf)[3:7]
    with gf.pinned(view, writable=True) as (addr, n):
        assert n == 4
        ctypes.memmove(addr, b"ABCD", 4)
    assert buf == b"012ABCD789"


def test_pinned_read_only_bytes_and_slices():
    data = b"hello world"
    with gf.pinned(memoryview(data)[6:]) as (addr, n):
        assert ctypes.string_at(addr, n) == b"world"
    with pytest.raises(BufferError):
        with gf.pinned(data, writable=True):
            pass


def test_pinned_buffer_cannot_be_resized_while_in_use():
    buf = bytearray(16)
    with gf.pinned(buf, writable=True):
        with pytest.raises(BufferError):
            buf.extend(b"x")
    buf.extend(b"x")


def test_hold_pins_writable_data_path_buffers_at_their_real_address():
    # The cheap pin of pread_into/pwrite (issue 19): the holder is at the view's own bytes
    # (a slice starts where the slice starts), and is what ctypes passes as the address.
    buf = bytearray(b"0123456789")
    held = gf._hold(memoryview(buf)[3:7])
    assert held is not None
    holder, n = held
    assert n == 4
    ctypes.memmove(holder, b"ABCD", 4)
    del holder, held
    assert buf == b"012ABCD789"
    from gluster_iscsi.buffers import PooledBuffer

    pooled = PooledBuffer(b"abcd")  # the buffer pool's own bytearrays
    held = gf._hold(pooled)
    assert held is not None and held[1] == 4
    ctypes.memmove(held[0], b"WXYZ", 4)
    del held
    assert pooled == b"WXYZ"
    wide = memoryview(bytearray(8)).cast("I")  # nbytes, not items
    held = gf._hold(wide)
    assert held is not None and held[1] == 8


def test_hold_keeps_the_buffer_from_being_resized_until_dropped():
    buf = bytearray(16)
    held = gf._hold(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    del held
    buf.extend(b"x")


def test_hold_declines_what_it_cannot_pin_cheaply():
    assert gf._hold(b"bytes") is None  # read-only: pinned() or the c_char_p path
    assert gf._hold(memoryview(b"ro")) is None
    assert gf._hold(bytearray()) is None  # empty: no first byte to point at
    assert gf._hold(memoryview(bytearray(8))[::2]) is None  # not contiguous
    import array

    assert gf._hold(array.array("B", b"xy")) is None  # other types: pinned()


class _RecordingVolume:
    """A gf.Volume that records the calls made on it before a failing init."""

    calls: list[tuple[str, tuple[str, ...]]] = []

    def __init__(self, volume: str) -> None:
        self.volume = volume

    def set_volfile_server(self, host: str, port: int, transport: str) -> None:
        self.calls.append(("server", (host,)))

    def set_xlator_option(self, xlator: str, key: str, value: str) -> None:
        self.calls.append(("xlator", (xlator, key, value)))

    def init(self) -> None:
        self.calls.append(("init", ()))
        raise gf.GfapiError(errno.EIO, "glfs_init: I/O error", self.volume)

    def fini(self) -> None:
        pass


def test_client_xlator_options_are_set_before_init(monkeypatch):
    from gluster_iscsi.backstore.gfapi import store

    monkeypatch.setattr(store.gf, "Volume", _RecordingVolume)
    monkeypatch.setattr(store, "CLIENT_XLATOR_OPTIONS", [("*-io-threads", "pass-through", "true")])
    monkeypatch.setattr(store, "_unreachable", lambda server: None)
    _RecordingVolume.calls = []
    with pytest.raises(BackingStoreError):
        store.GfapiStore("gluster://127.0.0.1/vol/f.img")
    assert _RecordingVolume.calls == [
        ("server", ("127.0.0.1",)),
        ("xlator", ("*-io-threads", "pass-through", "true")),
        ("init", ()),
    ]


class _RefusingVolume(_RecordingVolume):
    def init(self) -> None:
        raise gf.GfapiError(errno.EINVAL, "glfs_init: Invalid argument", self.volume)


def test_a_refused_translator_option_is_named_not_blamed_on_the_volume(monkeypatch):
    # glfs_init fails with EINVAL when a translator rejects an option's value (seen with
    # '*-io-threads:pass-through=maybe'); the error says which options the client had.
    from gluster_iscsi.backstore.gfapi import store

    monkeypatch.setattr(store.gf, "Volume", _RefusingVolume)
    monkeypatch.setattr(store, "_unreachable", lambda server: None)  # (glusterd up or not)
    monkeypatch.setattr(store, "CLIENT_XLATOR_OPTIONS", [])
    monkeypatch.setattr(store.os, "sched_getaffinity", lambda pid: {0, 1})
    store.set_client_xlator_options([("*-io-threads", "pass-through", "maybe")])
    assert store.CLIENT_XLATOR_OPTIONS == [("*-io-threads", "thread-count", "1"),
                                           ("*-io-threads", "pass-through", "maybe")]
    with pytest.raises(BackingStoreError) as ei:
        store.GfapiStore("gluster://127.0.0.1/vol/f.img")
    assert ei.value.errno == errno.EINVAL
    assert "*-io-threads:pass-through=maybe" in str(ei.value)
    assert "--gfapi-xlator-option" in str(ei.value)


def test_xlator_options_replace_a_default_of_the_same_xlator_and_key(monkeypatch):
    from gluster_iscsi.backstore.gfapi import store

    monkeypatch.setattr(store, "CLIENT_XLATOR_OPTIONS", [])
    monkeypatch.setattr(store.os, "sched_getaffinity", lambda pid: {0, 1})
    store.set_client_xlator_options([])
    assert store.CLIENT_XLATOR_OPTIONS == list(store.DEFAULT_CLIENT_XLATOR_OPTIONS)
    monkeypatch.setattr(store, "DEFAULT_CLIENT_XLATOR_OPTIONS",
                        (("*-io-threads", "pass-through", "true"),))
    store.set_client_xlator_options([("*-write-behind", "cache-size", "4MB")])
    assert store.CLIENT_XLATOR_OPTIONS == [("*-io-threads", "pass-through", "true"),
                                           ("*-write-behind", "cache-size", "4MB")]
    store.set_client_xlator_options([("*-io-threads", "pass-through", "false")])
    assert store.CLIENT_XLATOR_OPTIONS == [("*-io-threads", "pass-through", "false")]


@pytest.mark.parametrize("cpus, expected", [({0, 1}, [("*-io-threads", "thread-count", "1")]),
                                             ({3}, [])])
def test_the_default_client_options_give_one_io_thread_on_two_cpus_or_more(
    monkeypatch, cpus, expected
):
    # serve with no --gfapi-xlator-option (issue 19): one client-side io-thread when the
    # daemon may run on two CPUs or more (it overlaps the loop's work on another CPU), the
    # volume's count on one (QD1 writes cost 1.21x the CPU there); read at serve time, so
    # `taskset -c 0 gluster-iscsi serve` gets the volume's. One given for the same
    # translator and key is the only one the client gets.
    from gluster_iscsi.backstore.gfapi import store

    monkeypatch.setattr(store, "CLIENT_XLATOR_OPTIONS", [])
    monkeypatch.setattr(store.os, "sched_getaffinity", lambda pid: set(cpus))
    store.set_client_xlator_options([])
    assert store.CLIENT_XLATOR_OPTIONS == expected
    store.set_client_xlator_options([("*-io-threads", "thread-count", "32"),
                                     ("*-write-behind", "cache-size", "4MB")])
    assert store.CLIENT_XLATOR_OPTIONS == [("*-io-threads", "thread-count", "32"),
                                           ("*-write-behind", "cache-size", "4MB")]


def test_gfapi_error_is_a_backing_store_error_with_errno_and_path():
    e = gf.GfapiError(errno.ENOTCONN, "glfs_pread: down", "/vol/disk")
    assert isinstance(e, BackingStoreError) and isinstance(e, OSError)
    assert e.errno == errno.ENOTCONN and e.path == "/vol/disk"


def test_importing_the_package_does_not_load_libgfapi():
    code = (
        "import sys, ctypes\n"
        "import gluster_iscsi.backstore.open, gluster_iscsi.backstore.gfapi.store\n"
        "from gluster_iscsi.backstore.gfapi import _binding\n"
        "assert _binding._lib is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_library_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(gf, "_lib", None)

    def no_lib(*a, **k):
        raise OSError("cannot open shared object file")

    monkeypatch.setattr(gf.ctypes, "CDLL", no_lib)
    with pytest.raises(gf.GfapiUnavailable) as ei:
        gf.lib()
    assert ei.value.errno == errno.ENOSYS
    assert "libgfapi" in str(ei.value)
    assert gf.available() is False


class _NoServerVolume:
    """A gf.Volume whose glfs_init fails as libgfapi's does: ENOENT, whatever the cause."""

    def __init__(self, volume: str) -> None:
        self.volume = volume

    def set_volfile_server(self, host: str, port: int, transport: str) -> None:
        pass

    def set_xlator_option(self, xlator: str, key: str, value: str) -> None:
        pass

    def init(self) -> None:
        raise gf.GfapiError(errno.ENOENT, "glfs_init: No such file or directory", self.volume)

    def fini(self) -> None:
        pass


def test_an_unreachable_volume_server_is_named_as_such_not_as_enoent(monkeypatch):
    import socket

    from gluster_iscsi.backstore.gfapi import store

    monkeypatch.setattr(store.gf, "Volume", _NoServerVolume)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    with pytest.raises(BackingStoreError) as ei:
        store.GfapiStore(f"gluster://127.0.0.1:{port}/novol/f.img")
    assert "cannot reach the volume server" in str(ei.value)
    assert "glusterd" in str(ei.value) and ei.value.errno == errno.ECONNREFUSED
    with socket.socket() as listening:  # a server that answers: then the volume is the problem
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with pytest.raises(BackingStoreError) as ei:
            store.GfapiStore(f"gluster://127.0.0.1:{port}/novol/f.img")
    assert "volume novol is not available" in str(ei.value) and "started" in str(ei.value)
