"""The read cache on a real Gluster volume: the model test against the gfapi store, and
coherence with another Gluster client (the FUSE mount) through upcalls."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from test_cache import CHUNK, CacheModel

from gluster_iscsi.backstore.cache import CachedStore, CacheLedger
from gluster_iscsi.backstore.open import open_store

pytestmark = pytest.mark.gluster

MiB = 1 << 20
_LOG = os.path.join(
    os.environ.get("GLUSTER_WORKDIR", "/var/tmp/gluster-iscsi-env"), "gfapi-tests.log"
)


def _name() -> str:
    return f"c-{uuid.uuid4().hex[:12]}.img"


def _fuse_write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _wait_for(pred, what: str, timeout: float = 60.0) -> None:
    """Wait for an asynchronous event (an upcall); failing, not passing, on the deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:g}s")
        time.sleep(0.05)


@pytest.fixture
def opened():
    stores: list = []
    yield stores
    for s in stores:
        s.close()


def test_model_against_the_gfapi_store(gluster_volume, opened):
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    raw = GfapiStore(gluster_volume.url(_name()), create_size=64 * 1024, log_file=_LOG)
    opened.append(raw)

    class GfapiModel(CacheModel):
        def make_store(self, size: int):
            raw.resize(size, force=True)
            raw.write_zeroes(0, size)
            return _Unclosed(raw)

    run_state_machine_as_test(
        GfapiModel, settings=settings(max_examples=25, stateful_step_count=25, deadline=None)
    )


class _Unclosed:
    """The shared gfapi store, which the model's teardown must not close."""

    def __init__(self, store) -> None:
        self._s = store

    def close(self, timeout: float | None = None) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self._s, name)


def test_threads_racing_reads_and_writes_on_the_gfapi_store(gluster_volume, opened):
    nblocks = 16
    store = open_store(gluster_volume.url(_name()), size=nblocks * 65536, log_file=_LOG,
                       cache="1MiB")
    opened.append(store)
    assert isinstance(store, CachedStore)
    blk_size = store.chunk
    acked = [0] * nblocks
    stop = threading.Event()
    errors: list[str] = []

    def reader(seed: int) -> None:
        import random

        rnd = random.Random(seed)
        while not stop.is_set():
            blk = rnd.randrange(nblocks)
            floor = acked[blk]
            off = blk * blk_size + 4 * rnd.randrange(blk_size // 4)
            got = int.from_bytes(store.read(off, 4), "big")
            if got < floor:
                errors.append(f"block {blk}: read {got} after {floor} was acknowledged")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    import random

    rnd = random.Random(7)
    try:
        for v in range(1, 300):
            blk = rnd.randrange(nblocks)
            store.write(blk * blk_size, v.to_bytes(4, "big") * (blk_size // 4))
            acked[blk] = v
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    assert store.hits


def test_with_upcalls_a_fuse_write_is_seen_by_the_next_read(gluster_volume, opened):
    name = _name()
    store = open_store(gluster_volume.url(name), size=80 * MiB, log_file=_LOG, cache="8MiB")
    opened.append(store)
    assert store.cache_status()["coherence"] == "upcall"
    assert store.cache_status()["single_writer_only"] is False
    store.write(0, b"a" * CHUNK)
    store.write(70 * MiB, b"a" * CHUNK)  # in the second 64 MiB shard: another inode
    for off in (0, 70 * MiB):
        assert store.read(off, 100) == b"a" * 100
        assert store.read(off, 100) == b"a" * 100
    hits = store.hits
    assert hits >= 2

    path = gluster_volume.fuse_path(name)
    seen = store.invalidations
    _fuse_write(path, 10, b"F" * 50)  # the base file
    _wait_for(lambda: store.invalidations > seen, "invalidation of the base file")
    assert store.read(0, 100) == b"a" * 10 + b"F" * 50 + b"a" * 40

    store.read(70 * MiB, 100)  # cached again
    seen = store.invalidations
    _fuse_write(path, 70 * MiB + 10, b"S" * 50)  # a shard: its own GFID
    _wait_for(lambda: store.invalidations > seen, "invalidation for the shard")
    assert store.read(70 * MiB, 100) == b"a" * 10 + b"S" * 50 + b"a" * 40


def test_without_upcalls_the_cache_says_single_writer_only(plain_gluster_volume, opened):
    store = open_store(plain_gluster_volume.url(_name()), size=MiB, log_file=_LOG, cache="1MiB")
    opened.append(store)
    status = store.cache_status()
    assert status["enabled"] and status["single_writer_only"] is True
    assert status["coherence"] == "single-writer"
    store.write(0, b"x" * 10)
    assert store.read(0, 10) == b"x" * 10 and store.read(0, 10) == b"x" * 10


def test_cache_option_zero_opens_the_plain_gfapi_store(plain_gluster_volume, opened):
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    store = open_store(plain_gluster_volume.url(_name()), size=MiB, log_file=_LOG, cache=0)
    opened.append(store)
    assert isinstance(store, GfapiStore)


def test_ledger_is_shared_by_the_luns(gluster_volume, opened):
    led = CacheLedger(2 * CHUNK)
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    a = CachedStore(GfapiStore(gluster_volume.url(_name()), create_size=MiB, log_file=_LOG),
                    MiB, chunk=CHUNK, ledger_=led)
    opened.append(a)
    a.read(0, 8 * CHUNK)
    assert led.used <= 2 * CHUNK
