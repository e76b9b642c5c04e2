"""LU-wide state through the runner: PERSISTENT RESERVE OUT and MODE SELECT change it only in
the ``apply`` of a SharedUpdate; PERSISTENT RESERVE IN and MODE SENSE ask for a SharedRefresh
first; ``LogicalUnit.shared_state``/``load_shared_state`` carry it as plain data (what a
gateway group stores on the volume, docs/HA.md decision 4)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from gluster_iscsi.scsi import DeviceServer, LogicalUnit, Nexus, ScsiResult, ScsiTask
from gluster_iscsi.scsi.io import SharedRefresh, SharedUpdate
from gluster_iscsi.scsi.sense import Asc, SenseKey, parse_sense
from gluster_iscsi.scsi.task import Status
from gluster_iscsi.server.runner import STORE_CALLS, Runner

from .conftest import N1, N2, TARGET, make_lu

A, B = 0xAAAA, 0xBBBB
WE = 1


def prout(sa: int, key: int = 0, sa_key: int = 0, rtype: int = 0, flags: int = 0
          ) -> tuple[bytes, bytes]:
    params = struct.pack(">QQ4xBxH", key, sa_key, flags, 0)
    return bytes([0x5F, sa, rtype, 0, 0]) + struct.pack(">IB", len(params), 0), params


def mode_select_control(d_sense: bool = False, swp: bool = False) -> tuple[bytes, bytes]:
    page = bytes([0x0A, 10, 0x04 if d_sense else 0, 0x10, 0x08 if swp else 0, 0, 0, 0,
                  0xFF, 0xFF, 0, 0])
    params = bytes(4) + page
    return bytes([0x15, 0x10, 0, 0, len(params), 0]), params


class StandIn:
    """A runner stand-in for a gateway group: records every request; before a shared
    request it may load another gateway's state (``remote``); ``apply_updates=False``
    answers an update without applying it."""

    def __init__(self, lu: LogicalUnit, *, apply_updates: bool = True) -> None:
        self.lu = lu
        self.apply_updates = apply_updates
        self.remote: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str, dict[str, Any]]] = []  # (request, kind, state then)
        self.after: list[dict[str, Any]] = []
        calls = dict(STORE_CALLS)
        calls[SharedUpdate] = self.update
        calls[SharedRefresh] = self.refresh
        self.runner = Runner(calls=calls)

    def _load(self, kind: str) -> None:
        if kind in self.remote:
            self.lu.load_shared_state(kind, self.remote[kind])

    def update(self, runner: Runner, req: SharedUpdate, store: Any, lock: Any) -> Any:
        assert req.lu is self.lu
        self._load(req.kind)
        self.seen.append(("update", req.kind, self.lu.shared_state(req.kind)))
        if not self.apply_updates:
            return ScsiResult() if req.kind == "pr" else None
        with req.lu.state_lock:
            try:
                return req.apply()
            finally:
                self.after.append(self.lu.shared_state(req.kind))

    def refresh(self, runner: Runner, req: SharedRefresh, store: Any, lock: Any) -> None:
        assert req.lu is self.lu
        self._load(req.kind)
        self.seen.append(("refresh", req.kind, self.lu.shared_state(req.kind)))

    def run(self, server: DeviceServer, cdb: bytes, nexus: Nexus = N1,
            data: bytes | None = None) -> ScsiResult:
        if nexus.initiator_port not in server._nexuses:
            server.nexus_added(nexus)
        self.lu.clear_ua(nexus.initiator_port)
        task = ScsiTask(cdb, 0, nexus, data_out=memoryview(data) if data is not None else None,
                        expected_length=len(data) if data is not None else 0)
        return self.runner.run(server.execute(task), self.lu)


def setup(**kw: Any) -> tuple[LogicalUnit, DeviceServer, StandIn]:
    lu = make_lu()
    server = DeviceServer({0: lu}, target_name=TARGET)
    return lu, server, StandIn(lu, **kw)


def test_pr_out_changes_the_reservations_only_inside_apply() -> None:
    lu, server, g = setup()
    empty = lu.shared_state("pr")
    cdb, params = prout(0, sa_key=A)
    assert g.run(server, cdb, data=params).status == Status.GOOD
    [(request, kind, then)] = g.seen
    assert (request, kind, then) == ("update", "pr", empty)  # unchanged when yielded
    assert g.after[0]["registrations"][0]["key"] == A  # changed by apply
    assert lu.shared_state("pr") == g.after[0]


def test_pr_out_and_mode_select_not_applied_change_nothing() -> None:
    lu, server, g = setup(apply_updates=False)
    pr, mode = lu.shared_state("pr"), lu.shared_state("mode")
    for cdb, params in (prout(0, sa_key=A), prout(6, sa_key=B), mode_select_control(True, True)):
        assert g.run(server, cdb, data=params).status == Status.GOOD
    assert [s[:2] for s in g.seen] == [("update", "pr"), ("update", "pr"), ("update", "mode")]
    assert lu.shared_state("pr") == pr and lu.shared_state("mode") == mode
    assert lu._ua.get(N2.initiator_port) is None  # nor any unit attention


def test_pr_out_decides_on_the_state_the_group_loaded_before_apply() -> None:
    # N2 registered and reserved through another gateway: this gateway's memory knows
    # nothing of it until the group loads the latest state, inside the update.
    other, other_server, h2 = setup()
    cdb, params = prout(0, sa_key=B)
    assert h2.run(other_server, cdb, N2, params).status == Status.GOOD
    cdb, params = prout(1, key=B, rtype=WE)
    assert h2.run(other_server, cdb, N2, params).status == Status.GOOD
    lu, server, g = setup()
    g.remote["pr"] = other.shared_state("pr")
    # N1 registers, then tries to reserve: a conflict, as N2 holds it (on the group's state).
    cdb, params = prout(0, sa_key=A)
    assert g.run(server, cdb, N1, params).status == Status.GOOD
    assert {r["key"] for r in lu.shared_state("pr")["registrations"]} == {A, B}
    g.remote["pr"] = lu.shared_state("pr")  # (what the group would have stored)
    cdb, params = prout(1, key=A, rtype=WE)
    assert g.run(server, cdb, N1, params).status == Status.RESERVATION_CONFLICT
    # and the reservation is enforced by this gateway's preamble from then on
    write = bytes.fromhex("2a000000000000000100")
    assert g.run(server, write, N1, bytes(512)).status == Status.RESERVATION_CONFLICT


def test_sense_raised_inside_apply_is_the_same_check_condition() -> None:
    lu, server, g = setup()
    cdb, params = prout(0, sa_key=A)
    g.run(server, cdb, data=params)
    cdb, params = prout(1, key=A, rtype=WE)
    g.run(server, cdb, data=params)
    cdb, params = prout(2, key=A, rtype=3)  # RELEASE with another type
    r = g.run(server, cdb, data=params)
    assert r.status == Status.CHECK_CONDITION
    assert parse_sense(r.sense or b"") == (
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION
    )
    cdb, params = prout(1, key=B, rtype=WE)  # N2 unregistered: conflict, from inside apply
    assert g.run(server, cdb, N2, params).status == Status.RESERVATION_CONFLICT
    assert [s[0] for s in g.seen] == ["update"] * 4


def test_pr_in_and_mode_sense_refresh_first_and_report_what_was_loaded() -> None:
    lu, server, g = setup()
    g.remote["pr"] = {"generation": 7, "registrations": [
        {"initiator": N2.initiator_port, "target_port": N2.target_port, "key": B,
         "all_tg_pt": False, "relative_port": 1}], "type": None, "holder": None,
        "aptpl": False}
    r = g.run(server, bytes.fromhex("5e000000000000040000"))
    assert bytes(r.data) == struct.pack(">IIQ", 7, 8, B)
    g.remote["mode"] = {"wce": False, "d_sense": False, "swp": True}
    r = g.run(server, bytes.fromhex("1a000800ff00"))  # caching page
    data = bytes(r.data)
    assert data[2] & 0x80  # WP: SWP came with the refresh
    assert data[4 + 8] == 0x08 and data[4 + 8 + 2] & 0x04 == 0  # caching page, WCE off
    assert [s[:2] for s in g.seen] == [("refresh", "pr"), ("refresh", "mode")]


def test_mode_select_through_the_lone_runner_as_before() -> None:
    lu = make_lu()
    server = DeviceServer({0: lu}, target_name=TARGET)
    for n in (N1, N2):
        server.nexus_added(n)
        lu.clear_ua(n.initiator_port)
    cdb, params = mode_select_control(d_sense=True)
    task = ScsiTask(cdb, 0, N1, data_out=memoryview(params), expected_length=len(params))
    assert Runner().run(server.execute(task), lu).status == Status.GOOD
    assert lu.descriptor_sense and lu.shared_state("mode")["d_sense"] is True
    assert lu._ua[N2.initiator_port] == [Asc.MODE_PARAMETERS_CHANGED]
    assert lu._ua[N1.initiator_port] == []


def test_shared_state_round_trips_and_loading_queues_nothing() -> None:
    a, b = make_lu(), make_lu()
    b.nexus_added(N1.initiator_port)
    b.clear_ua(N1.initiator_port)
    server = DeviceServer({0: a}, target_name=TARGET)
    g = StandIn(a)
    cdb, params = prout(0, sa_key=A)
    g.run(server, cdb, data=params)
    cdb, params = prout(1, key=A, rtype=WE)
    g.run(server, cdb, data=params)
    a.load_shared_state("mode", {"wce": False, "d_sense": True, "swp": True})
    for kind in ("pr", "mode"):
        b.load_shared_state(kind, a.shared_state(kind))
        assert b.shared_state(kind) == a.shared_state(kind)
    assert b.pr.holds(N1) and b.write_protected and b.descriptor_sense and not b.write_cache
    b.load_shared_state("mode", {"wce": True, "d_sense": False, "swp": False})
    assert b.write_cache and not b.write_protected and not b.descriptor_sense
    assert b.mode_pages[0x0A].current[3] == 0x10  # the unchangeable bits are left alone
    assert b._ua[N1.initiator_port] == []
    with pytest.raises(ValueError):
        a.shared_state("alua")
    with pytest.raises(ValueError):
        a.load_shared_state("capacity", {})


def test_aptpl_still_persists_from_inside_the_update() -> None:
    saved: list[Any] = []
    lu = make_lu(on_persist=saved.append)
    server = DeviceServer({0: lu}, target_name=TARGET)
    g = StandIn(lu)
    cdb, params = prout(0, sa_key=A, flags=0x01)  # APTPL
    assert g.run(server, cdb, data=params).status == Status.GOOD
    assert saved and saved[-1] == g.after[0] and saved[-1]["aptpl"] is True


class TimingOutPool:
    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def in_flight(self) -> bool:
        return False

    def submit(self, fn: Any, arg: Any, callback: Any, timeout: float = 0.0) -> None:
        from gluster_iscsi.server.iopool import IoTimeout

        self.submitted.append(arg)
        callback(None, IoTimeout())


class Engines:
    io_timeout = 1.0
    ring = None
    gfaio = None

    def __init__(self) -> None:
        self.pool = TimingOutPool()

        class Poller:
            missed_at = None

        self.poller = Poller()

    def pool_for(self, store: object) -> Any:
        return self.pool


class Host:
    def __init__(self) -> None:
        self.results: list[ScsiResult] = []

    def reserve(self, task: ScsiTask, n: int) -> bool:
        return True

    def full_status(self) -> Status:
        return Status.TASK_SET_FULL

    def alone(self) -> bool:
        return True

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        self.results.append(result)


def test_a_lone_gateways_shared_state_requests_run_inline_even_for_a_blocking_store() -> None:
    # A gfapi or FUSE store's requests go to its workers, bounded by the I/O timeout: a hung
    # volume must not make a PR OUT (memory only on a lone gateway) fail, or apply late.
    lu = make_lu()
    lu.store.blocking = True
    server = DeviceServer({0: lu}, target_name=TARGET)
    server.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    engines = Engines()
    runner = Runner(engines)  # type: ignore[arg-type]
    host = Host()
    for cdb, params in (prout(0, sa_key=A), (bytes.fromhex("5e000000000000040000"), None),
                        mode_select_control(swp=True)):
        task = ScsiTask(cdb, 0, N1, data_out=memoryview(params) if params else None,
                        expected_length=len(params) if params else 0)
        runner.start(task, server.execute(task), lu, host)
    assert [r.status for r in host.results] == [Status.GOOD] * 3
    assert bytes(host.results[1].data or b"")[8:16] == A.to_bytes(8, "big")
    assert engines.pool.submitted == [] and lu.write_protected


def test_a_groups_own_shared_state_calls_go_to_the_workers_for_a_blocking_store() -> None:
    # The same requests with another call (a gateway group's, which does volume I/O) must
    # not block the event loop: they go where the store's other blocking calls go.
    lu = make_lu()
    lu.store.blocking = True
    server = DeviceServer({0: lu}, target_name=TARGET)
    server.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    engines = Engines()
    group = StandIn(lu)
    runner = Runner(engines, calls=group.runner.calls)  # type: ignore[arg-type]
    host = Host()
    cdb, params = prout(0, sa_key=A)
    task = ScsiTask(cdb, 0, N1, data_out=memoryview(params), expected_length=len(params))
    runner.start(task, server.execute(task), lu, host)
    assert [type(req) for req, *_ in engines.pool.submitted] == [SharedUpdate]
    assert parse_sense(host.results[0].sense or b"")[0] == SenseKey.NOT_READY  # timed out
    assert lu.shared_state("pr")["registrations"] == []


def test_unit_attentions_of_a_change_are_recorded_for_the_other_gateways_and_replayed() -> None:
    # Gateway 1 (this LU) and gateway 2 (``other``) export the same LU; N2 is logged in
    # through both, N1 only through gateway 1.
    lu, server, g = setup()
    other = make_lu()
    for n in (N1, N2):
        server.nexus_added(n)
    other.nexus_added(N2.initiator_port)
    for cdb, params, nexus in (prout(0, sa_key=A) + (N1,), prout(0, sa_key=B) + (N2,),
                               prout(1, key=B, rtype=WE) + (N2,)):
        assert g.run(server, cdb, nexus, params).status == Status.GOOD
    assert lu.ua_events is None  # a lone gateway records nothing
    lu.ua_events = []  # the group collects, around its update
    cdb, params = prout(4, key=A, sa_key=B, rtype=WE)  # N1 preempts N2
    g.run(server, cdb, N1, params)
    cdb, params = mode_select_control(swp=True)
    g.run(server, cdb, N1, params)
    events, lu.ua_events = lu.ua_events, None
    assert events == [
        {"asc": Asc.REGISTRATIONS_PREEMPTED, "initiator": N2.initiator_port},
        {"asc": Asc.MODE_PARAMETERS_CHANGED, "initiator": None},
    ]
    other.clear_ua(N2.initiator_port)
    other.ua_events = []
    other.replay_ua_events(events)
    assert other.ua_events == []  # replayed, not recorded again
    assert other._ua[N2.initiator_port] == [
        Asc.REGISTRATIONS_PREEMPTED, Asc.MODE_PARAMETERS_CHANGED
    ]
