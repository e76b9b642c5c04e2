"""COMPARE AND WRITE is atomic against concurrent writers (ops run in worker threads)."""

from __future__ import annotations

import struct
import threading

from gluster_iscsi.scsi import DeviceServer, ScsiTask, Status
from gluster_iscsi.server.runner import Runner

from .conftest import N1, N2, make_lu

RUNNER = Runner()  # synchronous: requests run on the calling thread


def test_concurrent_compare_and_write_increments_are_not_lost() -> None:
    lu = make_lu(blocks=16)
    server = DeviceServer({0: lu})
    per_thread, threads = 150, 4

    def caw(old: int, new: int, nexus) -> Status:  # noqa: ANN001
        data = struct.pack(">Q", old) + bytes(504) + struct.pack(">Q", new) + bytes(504)
        cdb = bytes([0x89, 0]) + struct.pack(">Q3xBBB", 0, 1, 0, 0)
        task = ScsiTask(cdb, 0, nexus, data_out=memoryview(data))
        return RUNNER.run(server.execute(task), lu).status

    def read() -> int:
        task = ScsiTask(bytes.fromhex("28000000000000000100"), 0, N1)
        return struct.unpack(">Q", bytes(RUNNER.run(server.execute(task), lu).data)[:8])[0]

    def worker(nexus) -> None:  # noqa: ANN001
        done = 0
        while done < per_thread:
            value = read()
            if caw(value, value + 1, nexus) == Status.GOOD:
                done += 1

    for nexus in (N1, N2):
        server.nexus_added(nexus)
        lu.clear_ua(nexus.initiator_port)
    pool = [threading.Thread(target=worker, args=(N1 if i % 2 else N2,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert read() == per_thread * threads
