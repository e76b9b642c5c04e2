"""Garbage in, a ScsiResult out: random CDBs and data-out never escape as exceptions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gluster_iscsi.scsi import DeviceServer, ScsiResult, ScsiTask, Status
from gluster_iscsi.scsi.opcodes import TABLE, Command, commands
from gluster_iscsi.scsi.sense import SenseKey, parse_sense
from gluster_iscsi.server.runner import Runner

from .conftest import N1, N2, TARGET, make_lu

KNOWN = sorted(TABLE)

RUNNER = Runner()  # synchronous: requests run on the calling thread


def small_server() -> DeviceServer:
    return DeviceServer(
        {0: make_lu(blocks=64), 1: make_lu(blocks=64, serial="s1", read_only=True)},
        target_name=TARGET,
    )


def _with_action(cmd: Command, rest: bytes) -> bytes:
    """A CDB for ``cmd`` with random fields but its own service action, to reach handlers."""
    if cmd.service_action is None:
        return bytes([cmd.opcode]) + rest
    return bytes([cmd.opcode, (rest[0] & 0xE0) | cmd.service_action]) + rest[1:]


cdbs = st.one_of(
    st.binary(min_size=1, max_size=32),
    st.tuples(st.sampled_from(KNOWN), st.binary(min_size=5, max_size=15)).map(
        lambda t: bytes([t[0]]) + t[1]
    ),
    st.builds(_with_action, st.sampled_from(commands()), st.binary(min_size=15, max_size=15)),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cdb=cdbs,
    data=st.one_of(st.none(), st.binary(max_size=2048)),
    lun=st.sampled_from([0, 1, 5]),
    second=st.booleans(),
)
def test_random_commands_only_produce_results(
    cdb: bytes, data: bytes | None, lun: int, second: bool
) -> None:
    server = small_server()
    task = ScsiTask(
        cdb=cdb,
        lun=lun,
        nexus=N2 if second else N1,
        data_out=memoryview(data) if data is not None else None,
    )
    lu = server.lu(lun)
    result = RUNNER.run(server.execute(task), lu)
    assert isinstance(result, ScsiResult)
    if result.status == Status.CHECK_CONDITION:
        key, _ = parse_sense(result.sense or b"")
        assert key != SenseKey.HARDWARE_ERROR, cdb.hex()  # an internal error is a bug


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(cdbs, st.one_of(st.none(), st.binary(max_size=1024))), max_size=12))
def test_random_sequences_keep_state_consistent(seq: list[tuple[bytes, bytes | None]]) -> None:
    server = small_server()
    for cdb, data in seq:
        for nexus in (N1, N2):
            task = ScsiTask(
                cdb=cdb, lun=0, nexus=nexus, data_out=memoryview(data) if data is not None else None
            )
            result = RUNNER.run(server.execute(task), server.lu(0))
            assert isinstance(result, ScsiResult)
            if result.status == Status.CHECK_CONDITION:
                assert parse_sense(result.sense or b"")[0] != SenseKey.HARDWARE_ERROR, cdb.hex()
