"""The per-LU counters the runner keeps where a command ends (issue 18): what a command
through a real runner and device server adds, and nothing per command that is not a plain int."""

from __future__ import annotations

from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.scsi import DeviceServer, ScsiTask, Status
from gluster_iscsi.server.runner import LAT_BUCKETS, LAT_SHIFT, LuStats, Runner, lu_on, lu_state

from .test_runner import N1, Engines, Host

READ8 = bytes.fromhex("28000000000000000800")  # READ(10) LBA 0, 8 blocks (4 KiB)
WRITE1 = bytes.fromhex("2a000000000000000100")  # WRITE(10) LBA 0, 1 block


def _lu(ua: bool = False) -> tuple[DeviceServer, object]:
    lu = lu_on(MemoryStore(1 << 20), serial="c")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    if not ua:
        lu.clear_ua(N1.initiator_port)
    return device, lu


def _run(runner: Runner, device: DeviceServer, lu: object, task: ScsiTask, host: Host) -> None:
    runner.start(task, device.execute(task), lu, host)  # type: ignore[arg-type]


def test_reads_writes_and_others_count_commands_bytes_and_latency() -> None:
    device, lu = _lu()
    runner, host = Runner(), Host()
    _run(runner, device, lu, ScsiTask(READ8, 0, N1, read=True, expected_length=4096), host)
    _run(runner, device, lu, ScsiTask(READ8, 0, N1, read=True, expected_length=4096), host)
    data = memoryview(bytearray(512))
    _run(runner, device, lu, ScsiTask(WRITE1, 0, N1, data_out=data, expected_length=512, write=True), host)
    _run(runner, device, lu, ScsiTask(bytes(6), 0, N1), host)  # TEST UNIT READY
    assert [r.status for r in host.results] == [Status.GOOD] * 4
    st = lu_state(lu).stats
    assert (st.reads, st.writes, st.others) == (2, 1, 1)
    assert (st.read_bytes, st.write_bytes) == (8192, 512)
    assert sum(st.latency) == 4 and st.latency_ns > 0
    assert st.in_flight == 0 and sum(st.errors) == 0 and st.busy == 0


def test_a_unit_attention_counts_under_its_sense_key() -> None:
    device, lu = _lu(ua=True)
    runner, host = Runner(), Host()
    _run(runner, device, lu, ScsiTask(bytes(6), 0, N1), host)
    assert host.results[0].status == Status.CHECK_CONDITION
    st = lu_state(lu).stats
    assert st.errors[6] == 1 and sum(st.errors) == 1 and st.others == 1


def test_a_bad_opcode_counts_as_illegal_request() -> None:
    device, lu = _lu()
    runner, host = Runner(), Host()
    _run(runner, device, lu, ScsiTask(b"\xff" + bytes(5), 0, N1), host)
    assert lu_state(lu).stats.errors[5] == 1


def test_an_io_timeout_is_counted_and_the_command_is_not_left_in_flight() -> None:
    store = MemoryStore(1 << 20)
    store.blocking = True  # type: ignore[misc]
    lu = lu_on(store, serial="slow")
    device = DeviceServer({0: lu})
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    runner, host = Runner(Engines()), Host()  # type: ignore[arg-type]
    _run(runner, device, lu, ScsiTask(READ8, 0, N1, read=True, expected_length=4096), host)
    st = lu_state(lu).stats
    assert st.timeouts == 1 and st.reads == 1 and st.read_bytes == 0
    assert st.errors[2] == 1 and st.in_flight == 0  # NOT READY


def test_a_command_the_budget_refuses_counts_as_busy() -> None:
    device, lu = _lu()

    class Full(Host):
        def reserve(self, task: ScsiTask, n: int) -> bool:
            return False

    host = Full()
    _run(Runner(Engines()), device, lu, ScsiTask(READ8, 0, N1, read=True, expected_length=4096),  # type: ignore[arg-type]
         host)
    st = lu_state(lu).stats
    assert st.busy == 1 and st.read_bytes == 0


def test_latency_buckets_are_powers_of_two_from_16us_to_4s() -> None:
    bounds = [2 ** (LAT_SHIFT + i) for i in range(LAT_BUCKETS - 1)]
    assert 16_000 < bounds[0] < 17_000 and 4e9 < bounds[-1] < 4.3e9
    st = LuStats()
    fields = vars(st) if hasattr(st, "__dict__") else {}
    for value in fields.values():  # plain ints and lists of ints only
        assert type(value) is int or (type(value) is list and all(type(v) is int for v in value))


def test_the_event_loop_lag_is_how_late_the_timer_ran(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A loop blocked past the timer's due time shows at least that lateness (a lower bound
    the blocking itself guarantees: no timing assumption)."""
    import asyncio
    import time

    from gluster_iscsi.server.daemon import Daemon

    async def main() -> Daemon:
        d = Daemon(tmp_path)
        loop = asyncio.get_running_loop()
        d._lag_due = loop.time()  # due now
        loop.call_soon(time.sleep, 0.2)  # ...but the loop is busy for 0.2 s first
        loop.call_soon(d._measure_lag)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert d._lag_timer is not None
        d._lag_timer.cancel()
        return d

    d = asyncio.run(main())
    assert d.loop_lag >= 0.2 and d.loop_lag_max == d.loop_lag
