"""SANITIZE as a background operation of the LU (SBC-3 4.11): IMMED, progress, resets."""

from __future__ import annotations

import threading
import time

from gluster_iscsi.scsi import ScsiTask, Status
from gluster_iscsi.scsi.sense import Asc, SenseKey

from .conftest import N1, N2, Harness, make_lu

SANITIZE_IN_PROGRESS = (SenseKey.NOT_READY, Asc.LU_NOT_READY_SANITIZE_IN_PROGRESS)
BLOCKS = 2048  # 1 MiB


def overwrite(pattern: bytes = b"\xaa", *, immed: bool = False) -> tuple[bytes, bytes]:
    params = bytes([0x01, 0, 0, len(pattern)]) + pattern
    cdb = bytes([0x48, 0x81 if immed else 0x01, 0, 0, 0, 0, 0, 0, len(params), 0])
    return cdb, params


def slow_harness(rate: float, blocks: int = BLOCKS) -> Harness:
    from gluster_iscsi.scsi import DeviceServer

    lu = make_lu(blocks, sanitize=True, sanitize_rate=rate)
    return Harness(DeviceServer({0: lu}, target_name="iqn.2024-01.org.gluster:tgt"))


def wait_done(h: Harness, timeout: float = 10.0) -> None:
    job = h.server.lu(0).background
    if job is not None:
        assert job.join is not None and job.join(timeout)


def test_immed_returns_at_once_and_the_overwrite_goes_on() -> None:
    h = slow_harness(rate=2 << 20)  # 1 MiB at 2 MiB/s: about half a second
    h.run("2a000000000000080000", data=b"x" * 4096)
    cdb, params = overwrite(immed=True)
    t0 = time.monotonic()
    assert h.run(cdb, data=params).status == Status.GOOD
    assert time.monotonic() - t0 < 0.2
    r = h.run("000000000000")
    assert h.sense(r) == SANITIZE_IN_PROGRESS
    assert r.sense[15] & 0x80  # SKSV: progress indication follows
    assert h.sense(h.run("88000000000000000000000000010000")) == SANITIZE_IN_PROGRESS
    assert h.run("120000006000").status == Status.GOOD  # INQUIRY still answers
    sense = bytes(h.run("030000001200").data)  # REQUEST SENSE reports it too
    assert (sense[2] & 0x0F, sense[12] << 8 | sense[13]) == SANITIZE_IN_PROGRESS
    wait_done(h)
    assert h.run("000000000000").status == Status.GOOD
    assert bytes(h.server.lu(0).store.data) == b"\xaa" * (BLOCKS * 512)


def test_progress_indication_grows() -> None:
    h = slow_harness(rate=4 << 20, blocks=8 * BLOCKS)  # 4 chunks of 1 MiB, about a second
    cdb, params = overwrite(immed=True)
    h.run(cdb, data=params)
    seen = []
    for _ in range(3):
        r = h.run("000000000000")
        if r.status == Status.GOOD:
            break
        seen.append(int.from_bytes(r.sense[16:18], "big"))
        time.sleep(0.3)
    wait_done(h)
    assert seen == sorted(seen) and seen[-1] > seen[0]


def test_lun_reset_target_reset_and_nexus_loss_do_not_stop_it() -> None:
    h = slow_harness(rate=2 << 20)
    cdb, params = overwrite(b"\x5a", immed=True)
    h.run(cdb, data=params)
    h.server.lun_reset(0, N1)
    h.server.target_reset(N1, cold=True)
    h.server.nexus_lost(N1)
    assert h.sense(h.run("000000000000", nexus=N2)) == SANITIZE_IN_PROGRESS
    wait_done(h)
    assert bytes(h.server.lu(0).store.data) == b"\x5a" * (BLOCKS * 512)


def test_immed_0_waits_for_the_end() -> None:
    h = slow_harness(rate=4 << 20)
    cdb, params = overwrite(b"\x11")
    assert h.run(cdb, data=params).status == Status.GOOD
    assert not h.server.lu(0).sanitizing
    assert bytes(h.server.lu(0).store.data) == b"\x11" * (BLOCKS * 512)


def test_a_waiting_command_ends_on_lun_reset_but_the_sanitize_goes_on() -> None:
    h = slow_harness(rate=1 << 20)
    h.run("000000000000")
    cdb, params = overwrite(b"\x22")
    task = ScsiTask(cdb, 0, N1, data_out=memoryview(params))
    lu = h.server.lu(0)
    results = []
    t = threading.Thread(target=lambda: results.append(h.runner.run(h.server.execute(task), lu)))
    t.start()
    time.sleep(0.2)
    h.server.lun_reset(0, N2)
    t.join(2)
    assert not t.is_alive()
    assert results[0].status == Status.TASK_ABORTED
    assert lu.sanitizing
    wait_done(h)
    assert bytes(lu.store.data) == b"\x22" * (BLOCKS * 512)


def test_a_waiting_command_ends_when_the_transport_aborts_it() -> None:
    h = slow_harness(rate=1 << 20)
    h.run("000000000000")
    cdb, params = overwrite()
    task = ScsiTask(cdb, 0, N1, data_out=memoryview(params))
    lu = h.server.lu(0)
    results = []
    t = threading.Thread(target=lambda: results.append(h.runner.run(h.server.execute(task), lu)))
    t.start()
    time.sleep(0.1)
    task.aborted = True  # what the transport does on ABORT TASK
    t.join(2)
    assert results and results[0].status == Status.TASK_ABORTED
    assert lu.sanitizing
    wait_done(h)


def test_closing_the_lu_cancels_the_job() -> None:
    h = slow_harness(rate=64 << 10)  # would take 16 s
    cdb, params = overwrite(immed=True)
    h.run(cdb, data=params)
    lu = h.server.lu(0)
    t0 = time.monotonic()
    lu.stop_background()
    assert time.monotonic() - t0 < 2
    assert not lu.sanitizing


def test_a_failed_overwrite_ends_the_sanitize_with_an_error() -> None:
    import errno

    h = slow_harness(rate=None)  # type: ignore[arg-type]
    h.server.lu(0).store.fail["write"] = errno.EIO
    cdb, params = overwrite()
    r = h.run(cdb, data=params)
    assert r.status == Status.CHECK_CONDITION
    assert h.sense(r)[0] == SenseKey.MEDIUM_ERROR
    assert not h.server.lu(0).sanitizing
