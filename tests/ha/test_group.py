"""The gateway group end to end (issue 20, docs/HA.md): three gateways in their own network
namespaces, one gfapi LUN on a replica-3 volume, libiscsi and the test initiator on the host.

Each gateway is configured with the group runtime's section (harness.group_config); the
tests find the owner by asking every gateway (TEST UNIT READY: GOOD on the owner, NOT READY
04/0B on a standby), never by reading the runtime's records, so they test what an initiator
sees.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator

import pytest

from tests.gluster_env import GlusterEnv
from tests.ha.harness import IQN, ISCSI_PORT, Gateway, group_config, make_file
from tests.ha.scsi import BLOCK, Answer, one, tur_cdb
from tests.ha.scsi import Path as ScsiPath
from tests.integration import cunit

LEASE = 5.0
BEAT = 1.0
LUN_SIZE = 1 << 30  # sparse; the guest's write stream needs room
LUN_BLOCKS = LUN_SIZE // BLOCK

# History: with runtime 1aef3f3 + mgmt f802217 merged every test here failed (all three
# gateways served the LUN active: mgmt's definition/lone-gateway checks against the
# runtime's config-section group, and definition LUNs never attached to the group); mgmt
# 878b2f2/0ebb482 fixed both, and they pass on runtime + mgmt 560050d merged.


def ask(gw: Gateway, what: str, *args: object) -> Answer:
    return asyncio.run(one(gw.address, ISCSI_PORT, IQN, what, *args))


def owners(gws: list[Gateway]) -> list[Gateway]:
    """The running gateways that serve the medium as owners: TUR GOOD (standby mode), the
    active/optimized group of their own RTPG (non-optimized mode: every path is GOOD)."""
    return [g for g in gws if g.running and owner_number(g) == g.number]


def owner_number(gw: Gateway) -> int | None:
    """The gateway number this gateway names as the owner: in standby mode its own number if
    its TUR is GOOD; in non-optimized mode the one active/optimized group of its RTPG (None
    if none, -1 if several)."""
    if gw.non_owner == "standby":
        return gw.number if ask(gw, "tur").good else None
    from tests.ha.scsi import parse_rtpg

    a = ask(gw, "rtpg")
    if not a.good:
        return None
    opt = [n for n, (state, _p, _ports) in parse_rtpg(a.data).items() if state == 0]
    return opt[0] if len(opt) == 1 else (-1 if opt else None)


def wait_owner(gws: list[Gateway], timeout: float = 90, among: list[Gateway] | None = None) -> Gateway:
    """The one owner: standby mode, the one gateway whose TUR is GOOD once every other
    running one answers standby; non-optimized mode, the gateway every running one names
    active/optimized in RTPG (all of them answering TUR GOOD)."""
    if gws[0].non_owner != "standby":
        return _wait_owner_non_optimized(gws, timeout, among)
    deadline = time.monotonic() + timeout
    last = ""
    several = 0
    while time.monotonic() < deadline:
        answers = {g.name: ask(g, "tur") for g in gws if g.running}
        good = [g for g in gws if g.running and answers[g.name].good]
        if len(good) == 1 and all(a.good or a.standby for a in answers.values()):
            if among is None or good[0] in among:
                return good[0]
        last = ", ".join(f"{n}: {a}" for n, a in answers.items())
        # two gateways giving media access at once is never a transient state of a group
        several = several + 1 if len(good) > 1 else 0
        assert several < 3, f"several gateways serve the medium: {last}"
        time.sleep(0.5)
    raise AssertionError(f"no single owner after {timeout}s: {last}")


def _wait_owner_non_optimized(gws: list[Gateway], timeout: float,
                              among: list[Gateway] | None) -> Gateway:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        named = {g.name: owner_number(g) for g in gws if g.running}
        last = f"owner named: {named}"
        assert -1 not in named.values(), f"several active/optimized groups: {last}"
        numbers = set(named.values())
        if len(numbers) == 1:
            (n,) = numbers
            owner = next((g for g in gws if g.number == n and g.running), None)
            if owner is not None and (among is None or owner in among) \
                    and all(ask(g, "tur").good for g in gws if g.running):
                return owner
        time.sleep(0.5)
    raise AssertionError(f"no single owner after {timeout}s: {last}")


@pytest.fixture
def group(gateways: list[Gateway], ha_volume: GlusterEnv,
          request: pytest.FixtureRequest) -> Iterator[list[Gateway]]:
    """Three running gateways of one group exporting LUN 1 (a fresh sparse 1 GiB file);
    the group's ``non_owner`` mode is the test's indirect parameter (no default: every test
    says which mode it tests)."""
    mode = request.param
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    lun_path = f"group/{name}.img"
    os.makedirs(ha_volume.fuse_path("group"), exist_ok=True)
    make_file(ha_volume, lun_path, LUN_SIZE)
    location = ha_volume.url(f"group/{name}.gluster-iscsi")
    for gw in gateways:
        gw.write_config(group_config(gw, IQN, {1: ha_volume.url(lun_path)}, location=location,
                                     non_owner=mode, beat_seconds=BEAT, lease_seconds=LEASE))
    for gw in gateways:
        gw.start()
    yield gateways
    logs = {gw.name: gw.log_text()[-2000:] for gw in gateways}
    for gw in gateways:
        gw.heal()
        gw.stop()
    request.node.user_properties.append(("gateway logs", logs))


def rtpg_tables(gws: list[Gateway]) -> dict[str, object]:
    from tests.ha.scsi import parse_rtpg

    out: dict[str, object] = {}
    for g in gws:
        a = ask(g, "rtpg")
        out[g.name] = parse_rtpg(a.data) if a.good else str(a)
    return out


def wait_settled(gws: list[Gateway], timeout: float = 6 * LEASE) -> Gateway:
    """The owner, once every gateway reports the same ALUA table (each has seen every other
    gateway's heartbeat): before that, tables and unit attentions are still changing."""
    owner = wait_owner(gws)
    deadline = time.monotonic() + timeout
    tables = rtpg_tables(gws)
    while len({repr(t) for t in tables.values()}) != 1 and time.monotonic() < deadline:
        time.sleep(BEAT)
        tables = rtpg_tables(gws)
    return owner


def blocks_for(lbas: list[int], tag: str) -> dict[int, bytes]:
    return {lba: f"{tag}:{lba}:".encode().ljust(BLOCK, b"#") for lba in lbas}


async def write_all(gw: Gateway, data: dict[int, bytes]) -> None:
    async with ScsiPath(gw.address, ISCSI_PORT, IQN) as p:
        for lba, block in data.items():
            a = await p.write(lba, block)
            assert a.good, f"write LBA {lba} through owner {gw.name}: {a}"


async def read_all(gw: Gateway, lbas: list[int]) -> dict[int, bytes]:
    out = {}
    async with ScsiPath(gw.address, ISCSI_PORT, IQN) as p:
        for lba in lbas:
            a = await p.read(lba)
            assert a.good, f"read LBA {lba} through {gw.name}: {a}"
            out[lba] = a.data
    return out


# -- one owner, standby elsewhere ------------------------------------------------------------


@pytest.mark.parametrize("group", ["standby"], indirect=True)
def test_one_owner_the_others_answer_not_ready_standby(group):
    owner = wait_owner(group)
    for gw in group:
        a = ask(gw, "tur")
        assert a.good if gw is owner else a.standby, f"{gw.name}: {a}"
        # media access too: a read through a standby gateway is refused the same way
        r = ask(gw, "read", 0)
        assert r.good if gw is owner else r.standby, f"{gw.name} READ: {r}"


@pytest.mark.parametrize("group", ["standby"], indirect=True)
def test_rtpg_is_identical_through_every_gateway_and_names_the_owner(group):
    owner = wait_settled(group)
    # Identical but for each descriptor's status code (byte 5: why the state last changed,
    # which each gateway knows for the changes it saw itself)
    tables = rtpg_tables(group)
    assert len({repr(t) for t in tables.values()}) == 1, tables
    groups = next(iter(tables.values()))
    # one target port group per gateway, numbered as the gateway, one relative port each
    assert sorted(groups) == [gw.number for gw in group], groups
    for gw in group:
        state, _pref, ports = groups[gw.number]
        assert ports == [gw.number], groups
        assert state == (0 if gw is owner else 2), (gw.name, groups)  # active/optimized, standby


# -- the data follows the ownership ----------------------------------------------------------


@pytest.mark.parametrize("group", ["standby"], indirect=True)
def test_after_failover_the_new_owner_reads_what_the_old_one_acknowledged(group):
    owner = wait_owner(group)
    lbas = random.Random(20).sample(range(LUN_BLOCKS), 300)
    data = blocks_for(lbas, f"failover-{owner.name}")
    asyncio.run(write_all(owner, data))
    assert owner.stop() == 0, owner.log_text()[-3000:]
    new = wait_owner(group, timeout=60)
    assert new is not owner
    got = asyncio.run(read_all(new, lbas))
    stale = [lba for lba in lbas if got[lba] != data[lba]]
    assert not stale, f"{len(stale)} of 300 LBAs stale through {new.name}: {stale[:10]}"


@pytest.mark.parametrize("cli_group", ["standby"], indirect=True)
def test_lun_move_hands_the_data_to_the_new_owner(cli_group):
    # `lun move` moves the LUNs of a group's definition (made with the CLI); a hand-written
    # config-section group has no definition to name them ("has no group LUN 1")
    group = cli_group
    owner = wait_owner(group)
    target = next(gw for gw in group if gw is not owner)
    lbas = random.Random(21).sample(range(LUN_BLOCKS), 300)
    data = blocks_for(lbas, f"move-{owner.name}")
    asyncio.run(write_all(owner, data))
    owner.cli("lun", "move", IQN, "1", "--to", target.name, timeout=120)
    assert wait_owner(group, timeout=60, among=[target]) is target
    got = asyncio.run(read_all(target, lbas))
    stale = [lba for lba in lbas if got[lba] != data[lba]]
    assert not stale, f"{len(stale)} of 300 LBAs stale after the move: {stale[:10]}"
    assert ask(owner, "tur").standby


# -- libiscsi's multipath and reservation families -------------------------------------------

# Which libiscsi tests need medium access through the second URL (libiscsi test-tool/*.c):
# MultipathIO.Simple writes through path i and reads through path i+1 for every i; Reset and
# CompareAndWrite(Async) issue media commands on each path too; the PR families pair the
# first URL with a second session (mp_sds[1] when given) and check READ/WRITE through both.
# None of them can run with a standby second URL: iscsi-test-cu's connect itself runs TEST
# UNIT READY and gives up on NOT READY 04/0B ("Login Failed ... 0x040b"), which the first
# test below pins. So the families run with both URLs on the owner (two sessions, two
# initiator names, one gateway), on a LUN whose state lives in the group.
PR_FAMILIES = ["ALL.PrinReadKeys", "ALL.PrinServiceactionRange", "ALL.PrinReportCapabilities",
               "ALL.ProutRegister", "ALL.ProutReserve", "ALL.ProutClear", "ALL.ProutPreempt"]


@pytest.mark.parametrize("group", ["standby"], indirect=True)
def test_iscsi_test_cu_cannot_use_a_standby_path_it_is_refused_04_0b(group):
    owner = wait_settled(group)
    standby = next(gw for gw in group if gw is not owner)
    run = cunit.run(owner.url(1), "ALL.MultipathIO.Simple", url2=standby.url(1), timeout=600)
    assert not run.by("passed"), run.output[-2000:]
    assert "NOT READY" in run.output and "0x040b" in run.output, run.output[-2000:]


@pytest.mark.parametrize("group", ["standby"], indirect=True)
def test_iscsi_test_cu_reservation_and_multipath_families_on_a_group_lun(group):
    owner = wait_settled(group)
    failed = []
    ran = 0
    for family in [*PR_FAMILIES, "ALL.MultipathIO"]:
        run = cunit.run(owner.url(1), family, url2=owner.url(1), timeout=600)
        assert run.results, run.output[-3000:]
        ran += len(run.results)
        failed += [f"{r.name}: {r.detail[-300:]}" for r in run.by("failed")]
    assert not failed, "\n".join(failed)
    assert ran >= 20


# -- failures --------------------------------------------------------------------------------


async def _writer(group: list[Gateway], first: Gateway, count: int, kill_at: int,
                  kill: Gateway, times: list[float] | None = None) -> dict[int, bytes]:
    """Sequential one-block writes, each retried through the next gateway on NOT READY or a
    dead path, as a multipath initiator would; SIGKILL of ``kill`` after ``kill_at`` acks.
    Returns what was acknowledged (LBA -> data)."""
    acked: dict[int, bytes] = {}
    order = [first] + [g for g in group if g is not first]
    at = 0
    path: ScsiPath | None = None
    deadline = time.monotonic() + 300
    lba = 0
    while len(acked) < count:
        assert time.monotonic() < deadline, f"writes stalled at {len(acked)} of {count}"
        gw = order[at % len(order)]
        if path is None:
            try:
                path = await ScsiPath(gw.address, ISCSI_PORT, IQN).__aenter__()
            except OSError:
                at += 1
                await asyncio.sleep(0.2)
                continue
        block = f"kill-{lba}-{gw.name}".encode().ljust(BLOCK, b"@")
        a = await path.write(lba, block, timeout=90)
        if a.good:
            acked[lba] = block
            if times is not None:
                times.append(time.monotonic())
            lba += 1
            if len(acked) == kill_at:
                kill.kill()
            continue
        # not acknowledged: this LBA may or may not have landed; try the next path
        await path.__aexit__(None, None, None)
        path = None
        at += 1
        await asyncio.sleep(0.2 if a.standby or a.error else 0)
    if path is not None:
        await path.__aexit__(None, None, None)
    return acked


@pytest.mark.parametrize("group", ["standby"], indirect=True)
def test_sigkill_of_the_owner_during_writes_loses_no_acknowledged_block(group):
    owner = wait_owner(group)
    times: list[float] = []
    acked = asyncio.run(_writer(group, owner, count=600, kill_at=200, kill=owner, times=times))
    print(f"SIGKILL to the next acknowledged write: {times[200] - times[199]:.1f} s")
    new = wait_owner(group, timeout=60)
    assert new is not owner
    got = asyncio.run(read_all(new, sorted(acked)))
    lost = [lba for lba, block in acked.items() if got[lba] != block]
    assert not lost, f"{len(lost)} acknowledged blocks differ: {lost[:10]}"


@pytest.mark.parametrize("run", [1, 2, 3])
@pytest.mark.parametrize("group", ["non-optimized"], indirect=True)
def test_a_partitioned_owner_stops_acknowledging_and_nothing_it_took_lands_later(
        group, run, record_property):
    """The owner's storage link cut (volume network.ping-timeout 10): it answers no GOOD to a
    media command once its lease is past (fence), another gateway takes the LUN over, and
    nothing the old owner had taken (a write issued right after the cut) lands after the
    heal. Fence and takeover times are recorded (user_properties, -rA prints them)."""
    owner = wait_owner(group)
    lbas = list(range(1000, 1064))
    owner.partition()
    t0 = time.monotonic()
    fenced: list[float] = []

    async def through_old_owner() -> list[Answer]:
        # every write after the cut: none may be acknowledged (the bricks are unreachable,
        # and past lease_seconds the owner must not even issue them)
        out = []
        async with ScsiPath(owner.address, ISCSI_PORT, IQN) as p:
            for lba in lbas[:4]:
                out.append(await p.write(lba, f"OLD:{lba}".encode().ljust(BLOCK, b"o"),
                                         timeout=150))
                answered.append(time.monotonic() - t0)
        return out

    answered: list[float] = []

    async def fence_probe() -> None:
        # a fresh session per probe (the writer's session has a write pending): the first
        # media command refused NOT READY after the cut is the fence as an initiator sees it
        while time.monotonic() - t0 < 120:
            async with ScsiPath(owner.address, ISCSI_PORT, IQN) as p:
                a = await p.cmd_past_ua(tur_cdb(), timeout=5)
            if not a.good and not a.error:
                fenced.append(time.monotonic() - t0)
                return
            await asyncio.sleep(0.25)

    async def both() -> list[Answer]:
        answers, _ = await asyncio.gather(through_old_owner(), fence_probe())
        return answers

    old_answers = asyncio.run(both())
    assert not any(a.good for a in old_answers), [str(a) for a in old_answers]
    assert fenced, "the partitioned owner still answered TUR GOOD 120 s after the cut"
    others = [g for g in group if g is not owner]
    new = wait_owner(others, timeout=180)
    took_over = time.monotonic() - t0
    new_data = blocks_for(lbas, f"NEW-{new.name}")
    asyncio.run(write_all(new, new_data))
    owner.heal()
    time.sleep(3 * LEASE)  # room for anything the old owner queued to be replayed
    got = asyncio.run(read_all(new, lbas))
    landed = [lba for lba in lbas if got[lba] != new_data[lba]]
    assert not landed, f"old owner's writes landed after the takeover ({took_over:.0f}s): {landed}"
    # and the old owner, back on the network, is a non-owner now
    assert wait_owner(group, timeout=60) is new
    figures = (f"run {run}: fenced (TUR not GOOD) {fenced[0]:.1f} s, takeover seen"
               f" {took_over:.1f} s after the cut; old owner's writes: "
               + ", ".join(f"{a} at {t:.1f} s" for a, t in zip(old_answers, answered, strict=True)))
    record_property("partition", figures)
    print(figures)


@pytest.fixture
def cli_group(gateways: list[Gateway], ha_volume: GlusterEnv,
              request: pytest.FixtureRequest) -> Iterator[list[Gateway]]:
    """The admin's way (README quick start): group create, group join on every gateway,
    target/LUN/ACL made once through one gateway (the definition on the volume). The
    parameter: the ``--non-owner`` given to group create ("default": none)."""
    mode = request.param
    name = f"{request.node.originalname[:40]}-{mode}"
    os.makedirs(ha_volume.fuse_path("group"), exist_ok=True)
    lun_path = f"group/{name}.img"
    make_file(ha_volume, lun_path, LUN_SIZE)
    location = ha_volume.url(f"group/{name}.gluster-iscsi")
    first = gateways[0]
    first.cli("group", "create", "ha", "--location", location,
              "--beat-seconds", str(BEAT), "--lease-seconds", str(LEASE),
              *(["--non-owner", mode] if mode != "default" else []))
    for gw in gateways:
        gw.non_owner = "non-optimized" if mode == "default" else mode
    for gw in gateways:
        gw.state_dir.mkdir(parents=True, exist_ok=True)
        gw.cli("group", "join", location, "--gateway", gw.name, "--number", str(gw.number),
               "--address", gw.portal)
    for gw in gateways:
        gw.start()
    first.cli("target", "create", IQN)
    first.cli("lun", "create", IQN, ha_volume.url(lun_path), "--lun", "1")
    first.cli("acl", "add", IQN, "ALL")
    yield gateways
    for gw in gateways:
        gw.stop()


@pytest.mark.parametrize("cli_group", ["standby", "default"], indirect=True)
def test_a_group_made_with_the_cli_has_one_owner(cli_group):
    owner = wait_owner(cli_group, timeout=60)
    for gw in cli_group:
        a = ask(gw, "tur")
        if cli_group[0].non_owner == "standby":
            assert a.good == (gw is owner), f"{gw.name}: {a}"
        else:  # the default: every path active, the owner's optimized (wait_owner's RTPG)
            assert a.good, f"{gw.name}: {a}"
