"""A lone LU's synchronous write that times out (``--io-timeout``: its command fails NOT
READY, which initiators retry) must not land over what the initiator writes there next: one
still queued on the store's workers is never issued, and the blocks of one under way are
held until it returned (as a write-behind write's are). The real worker pool (``IoPool``),
one worker, held by a store write that waits for the test; the I/O timeout passes when the
test says (``IoPool._expire`` with a later clock), not by waiting for it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiResult, ScsiTask, Status
from gluster_iscsi.scsi.sense import parse_sense
from gluster_iscsi.server.iopool import IoPool
from gluster_iscsi.server.runner import Runner, lu_on, lu_state

N1 = Nexus("iqn.x:i", "iqn.x:i,i,0x1", "iqn.x:t,t,0x1")
BS = 512


class HungStore(MemoryStore):
    """A blocking store (as gfapi) whose writes at ``hang_at`` wait until ``release``."""

    blocking = True  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(64 << 10, name="hung")
        self.release = threading.Event()
        self.hang_at = 0
        self.issued: list[tuple[int, int]] = []  # (offset, first byte) of each write issued

    def write(self, offset: int, data: Any) -> None:
        self.issued.append((offset, bytes(data[:1])[0]))
        if offset == self.hang_at:
            assert self.release.wait(30)
        super().write(offset, data)


class Rig:
    def __init__(self) -> None:
        self.store = HungStore()
        self.lu = lu_on(self.store, serial="late")
        self.device = DeviceServer({0: self.lu})
        self.device.nexus_added(N1)
        self.lu.clear_ua(N1.initiator_port)
        self.pool = IoPool(asyncio.get_running_loop(), 1, idle=5)
        rig = self

        class Engines:
            io_timeout = 60.0
            ring = None
            gfaio = None

            class poller:  # noqa: N801
                missed_at = None

            def pool_for(self, store: object) -> IoPool:
                return rig.pool

        self.engines = Engines()
        self.runner = Runner(self.engines)  # type: ignore[arg-type]
        self.results: dict[ScsiTask, ScsiResult] = {}

    # the connection's side (runner.Host)
    def reserve(self, task: ScsiTask, n: int) -> bool:
        return True

    def full_status(self) -> Status:
        return Status.TASK_SET_FULL

    def alone(self) -> bool:
        return True

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        self.results[task] = result

    def send(self, cdb: bytes, data: bytes | None = None, read: int = 0) -> ScsiTask:
        task = ScsiTask(cdb, 0, N1, data_out=memoryview(bytearray(data)) if data else None,
                        expected_length=read or (len(data) if data else 0),
                        read=bool(read), write=data is not None)
        self.runner.start(task, self.device.execute(task), self.lu, self)
        return task

    def write(self, lba: int, data: bytes) -> ScsiTask:
        n = len(data) // BS
        return self.send(bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0"
                         + n.to_bytes(2, "big") + b"\0", data)

    def read(self, lba: int, n: int) -> ScsiTask:
        return self.send(bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0"
                         + n.to_bytes(2, "big") + b"\0", read=n * BS)

    async def result(self, task: ScsiTask) -> ScsiResult:
        while task not in self.results:  # the worker answers
            await asyncio.sleep(0.005)
        return self.results.pop(task)

    async def hung_write(self, lba: int, data: bytes) -> ScsiTask:
        """A write the worker has started and hangs in."""
        self.store.hang_at = lba * BS
        task = self.write(lba, data)
        while not self.store.issued:
            await asyncio.sleep(0.005)
        return task

    def time_passes(self) -> None:
        """The I/O timeout passes for every call submitted so far."""
        loop = asyncio.get_running_loop()
        self.pool._expire(loop.time() + 3600)


def not_ready(r: ScsiResult) -> None:
    assert r.status == Status.CHECK_CONDITION
    assert parse_sense(r.sense or b"")[0] == 0x02  # NOT READY: the initiator retries


def good(r: ScsiResult) -> ScsiResult:
    assert r.status == Status.GOOD, parse_sense(r.sense or b"")
    return r


def test_a_write_that_timed_out_still_queued_is_never_issued() -> None:
    """The worker hangs in an older write; a write of other blocks queued behind it times
    out (NOT READY). The initiator writes those blocks again, newer data. Once the volume
    answers, the stale queued write must not be issued: on several workers it would race the
    newer one (and through io_uring it would land after it)."""
    async def main() -> None:
        rig = Rig()
        hung = await rig.hung_write(0, b"\xaa" * BS)
        stale = rig.write(8, b"\xbb" * BS)
        rig.time_passes()
        not_ready(rig.results.pop(hung))
        not_ready(rig.results.pop(stale))
        newer = rig.write(8, b"\xcc" * BS)
        rig.store.release.set()
        good(await rig.result(newer))
        assert rig.store.issued == [(0, 0xAA), (8 * BS, 0xCC)]  # never (8 * BS, 0xBB)
        assert bytes(rig.store._view[8 * BS:9 * BS]) == b"\xcc" * BS
        rig.pool.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_write_that_timed_out_under_way_holds_its_blocks_until_it_returned() -> None:
    """A write under way on a hung volume times out (NOT READY) but may still land. Until it
    returned, a read of its blocks cannot say what they hold and a newer write there could be
    overwritten by it: both fail as a timeout does, at once, without reaching the store;
    other blocks go on. Once it returned, its blocks are served again."""
    async def main() -> None:
        rig = Rig()
        hung = await rig.hung_write(0, b"\xaa" * 2 * BS)
        rig.time_passes()
        not_ready(rig.results.pop(hung))
        assert lu_state(rig.lu).wb_late == [(0, 2 * BS)]
        for task in (rig.read(1, 1), rig.write(0, b"\xdd" * BS)):
            not_ready(rig.results.pop(task))  # answered at once, not queued
        assert rig.store.issued == [(0, 0xAA)]
        apart = rig.write(16, b"\x16" * BS)  # other blocks: queued as usual
        assert apart not in rig.results
        rig.store.release.set()  # the volume answers: the late write lands
        good(await rig.result(apart))
        while lu_state(rig.lu).wb_late:
            await asyncio.sleep(0.005)
        good(await rig.result(rig.write(0, b"\xee" * BS)))  # the initiator's retry
        r = good(await rig.result(rig.read(0, 2)))
        assert bytes(r.data or b"")[:2 * BS] == b"\xee" * BS + b"\xaa" * BS  # type: ignore[arg-type]
        rig.pool.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))
