"""The read-buffer pool hands out exact-size views and takes back only its own buffers."""

from gluster_iscsi.backstore.buffers import BufferPool


def test_borrowed_view_has_the_asked_size_and_is_writable():
    pool = BufferPool()
    for n in (512, 4096, 65536, 200_000, 1 << 20):
        v = pool.borrow(n)
        assert len(v) == n and not v.readonly
        v[-1] = 7


def test_given_back_buffer_is_reused_for_the_same_size_class():
    pool = BufferPool()
    v = pool.borrow(256 << 10)
    first = v.obj
    pool.give_back(v)
    assert pool.borrow(200_000).obj is first


def test_views_of_foreign_memory_are_never_taken():
    pool = BufferPool()
    storage = bytearray(1 << 20)  # e.g. a memory store's own bytes, power-of-two sized
    pool.give_back(memoryview(storage)[:4096])
    pool.give_back(memoryview(bytes(1 << 17)))
    assert pool.borrow(1 << 20).obj is not storage
    assert pool.borrow(1 << 17).obj is not storage


def test_an_abandoned_buffer_is_not_handed_out_again():
    pool = BufferPool()
    v = pool.borrow(64 << 10)
    held = v.obj
    pool.abandon(v[:4096])  # any view of it
    pool.give_back(v)
    assert all(pool.borrow(64 << 10).obj is not held for _ in range(4))
    w = pool.borrow(64 << 10)  # others still come back
    other = w.obj
    pool.give_back(w)
    assert pool.borrow(64 << 10).obj is other
