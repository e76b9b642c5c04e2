"""The read-buffer pool hands out exact-size views and takes back only its own buffers."""

from gluster_iscsi.buffers import (
    BUDGET_CEILING,
    BUDGET_FLOOR,
    BudgetShare,
    BufferPool,
    MemoryBudget,
    default_budget,
)


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


def test_the_pool_keeps_no_more_than_its_retained_bytes():
    pool = BufferPool(max_retained=4 << 20)
    views = [pool.borrow(1 << 20) for _ in range(12)]
    for v in views:
        pool.give_back(v)
    assert pool.retained == 4 << 20
    assert sum(cls * len(q) for cls, q in pool._free.items()) == 4 << 20
    kept = {id(pool.borrow(1 << 20).obj) for _ in range(4)}
    assert len(kept) == 4 and pool.retained == 0


def test_an_idle_pool_gives_its_buffers_back_and_a_busy_one_keeps_them():
    pool = BufferPool(max_retained=64 << 20)
    for v in [pool.borrow(1 << 20) for _ in range(8)]:
        pool.give_back(v)
    assert pool.trim() == 0  # borrowed from since the last trim: kept for reuse
    assert pool.retained == 8 << 20
    assert pool.trim() == 8 << 20  # a whole interval without a borrow: all of it goes
    assert pool.retained == 0 and not any(pool._free.values())


def test_trim_respects_a_lowered_limit_and_never_revives_an_abandoned_buffer():
    pool = BufferPool(max_retained=8 << 20)
    held = pool.borrow(256 << 10)
    pool.abandon(held)
    for v in [pool.borrow(1 << 20) for _ in range(8)]:
        pool.give_back(v)
    pool.max_retained = 2 << 20
    assert pool.trim() == 6 << 20 and pool.retained == 2 << 20
    buf = held.obj
    pool.give_back(held)  # the late caller is done at last: still never reused
    assert all(pool.borrow(256 << 10).obj is not buf for _ in range(3))
    pool.trim()
    assert pool.trim() > 0 and pool.retained == 0


def test_the_budget_charges_within_its_limit_and_a_share_per_session():
    b = MemoryBudget(10 << 20, share=4 << 20)
    s1, s2 = BudgetShare(), BudgetShare()
    assert b.charge(s1, 3 << 20) and b.charge(s1, 1 << 20)
    assert not b.charge(s1, 1)  # its share is full; nothing was taken
    assert s1.used == 4 << 20 and b.used == 4 << 20
    assert b.charge(s2, 4 << 20)
    b.release(s1, 4 << 20)
    s3 = BudgetShare()
    assert b.charge(s3, 6 << 20)  # holding nothing: one command beyond the share
    assert not b.fits(s1, 1) and not b.charge(s1, 1)  # the budget itself is full
    b.release(s2, 4 << 20)
    b.release(s3, 6 << 20)
    assert b.used == 0 and b.peak == 10 << 20


def test_the_default_budget_is_an_eighth_of_memory_within_bounds():
    assert default_budget(1 << 30) == BUDGET_FLOOR
    assert default_budget(16 << 30) == 2 << 30
    assert default_budget(1 << 40) == BUDGET_CEILING
