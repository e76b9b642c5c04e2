"""A gateway group of real daemons on one machine (docs/HA.md): three ``serve`` processes on
loopback ports, each with its own state directory and a config whose ``group`` section names
one tmp-dir group directory, all exporting one file LUN."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import need
from .daemon import Daemon, free_port
from .pyinitiator import Session

pytestmark = pytest.mark.integration

IQN = "iqn.2026-12.org.test:ha"
UUID = "6f1c2c3e-0000-4000-8000-000000000001"
NOT_READY, UNIT_ATTENTION = 2, 6
BEAT, LEASE = 0.25, 1.5


def write_config(state: Path, port: int, lun: Path, group: Path, name: str, number: int,
                 non_owner: str = "standby") -> None:
    state.mkdir(parents=True, exist_ok=True)
    cfg = {
        "version": 1,
        "portals": [{"host": "127.0.0.1", "port": port, "advertise": None}],
        "targets": [{"name": IQN, "tid": 1, "acl": [{"network": "ALL"}],
                     "luns": [{"lun": 1, "backing": str(lun), "bstype": "rdwr",
                               "uuid": UUID, "serial": "ha0001"}]}],
        "group": {"location": str(group), "gateway": name, "number": number,
                  "beat_seconds": BEAT, "lease_seconds": LEASE, "non_owner": non_owner},
    }
    (state / "config.json").write_text(json.dumps(cfg))


def sense_of(sense: bytes) -> tuple[int, int]:
    if not sense:
        return 0, 0
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2] << 8 | sense[3]
    return sense[2] & 0x0F, sense[12] << 8 | sense[13]


async def cmd(s: Session, cdb: bytes, **kw) -> tuple[int, bytes, bytes]:
    """A command, past the unit attentions a login and ALUA changes queue."""
    for _ in range(20):
        status, data, sense = await s.scsi(cdb, **kw)
        if status == 2 and sense_of(sense)[0] == UNIT_ATTENTION:
            continue
        return status, data, sense
    raise AssertionError("unit attentions without end")


def rtpg_states(data: bytes) -> dict[int, tuple[int, tuple[int, ...]]]:
    """REPORT TARGET PORT GROUPS: group -> (access state, relative ports)."""
    end = 4 + struct.unpack(">I", data[:4])[0]
    out = {}
    i = 4
    while i < end:
        state, tpg, count = data[i] & 0x0F, struct.unpack(">H", data[i + 2:i + 4])[0], data[i + 7]
        ports = tuple(struct.unpack(">H", data[i + 8 + 4 * k + 2:i + 8 + 4 * k + 4])[0]
                      for k in range(count))
        out[tpg] = (state, ports)
        i += 8 + 4 * count
    return out


RTPG = bytes([0xA3, 0x0A, 0, 0, 0, 0]) + struct.pack(">I", 1024) + bytes(2)
TUR = bytes(6)


def write10(lba: int, blocks: int = 1) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def read10(lba: int, blocks: int = 1) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def pr_out(action: int, key: int, sa_key: int = 0, rtype: int = 0) -> tuple[bytes, bytes]:
    params = struct.pack(">QQ4xBxH", key, sa_key, 0, 0)
    return struct.pack(">BBBxxIx", 0x5F, action, rtype, len(params)), params


async def until(fn, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        got = await fn()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.1)


@pytest.fixture
def gateways(tmp_path):
    lun = tmp_path / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(8 << 20)
    group = tmp_path / "group"
    daemons = []
    for n in (1, 2, 3):
        port = free_port()
        state = tmp_path / f"gw{n}"
        write_config(state, port, lun, group, f"gw{n}", n)
        daemons.append(Daemon(state, ports=[port], demo=False))
    daemons[0].start()  # gw1 first: it takes the LUN
    yield daemons
    for d in daemons:
        d.stop()


def test_group_of_three_owner_standby_alua_pr_and_failover(gateways):
    gw1, gw2, gw3 = gateways

    async def main() -> None:
        async with Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:x") as a:
            assert (await cmd(a, TUR))[0] == 0
            status, _, _ = await cmd(a, write10(8), data_out=b"\xa5" * 512)
            assert status == 0  # the owner serves
        gw2.start()
        gw3.start()
        # SendTargets: each gateway's portal with its own portal group tag
        ls = subprocess.run([need("iscsi-ls"), f"iscsi://127.0.0.1:{gw3.port}"],
                            capture_output=True, text=True, timeout=30)
        assert f"Portal:127.0.0.1:{gw3.port},3" in ls.stdout, ls.stdout + ls.stderr
        x2 = Session("127.0.0.1", gw2.port, IQN, "iqn.2026-12.org.test:x")
        y1 = Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:y")
        async with x2, y1:
            # a standby answers media access NOT READY, LU NOT ACCESSIBLE, STANDBY (04/0B)
            status, _, sense = await cmd(x2, TUR)
            assert status == 2 and sense_of(sense) == (NOT_READY, 0x040B), gw2.log_text()[-2000:]
            # VPD 83h through gw2 carries relative target port 2 and target port group 2
            status, vpd, _ = await cmd(x2, bytes([0x12, 1, 0x83, 0, 255, 0]), read_len=255)
            assert status == 0
            assert bytes([0x94, 0, 4, 0, 0, 0, 2]) in vpd  # relative target port 2
            assert bytes([0x95, 0, 4, 0, 0, 0, 2]) in vpd  # target port group 2
            assert b"iqn.2026-12.org.test:ha,t,0x0002" in vpd  # the target port's name

            async def tables():
                out = []
                for port in (gw1.port, gw2.port, gw3.port):
                    async with Session("127.0.0.1", port, IQN, "iqn.2026-12.org.test:z") as s:
                        status, data, _ = await cmd(s, RTPG, read_len=1024)
                        assert status == 0
                        out.append(rtpg_states(data))
                return out if out[0] == out[1] == out[2] and len(out[0]) == 3 else None

            t = (await until(tables, 10, "equal RTPG on every gateway"))[0]
            assert t == {1: (0, (1,)), 2: (2, (2,)), 3: (2, (3,))}
            # PR made through the standby, enforced by the owner for another initiator
            cdb, params = pr_out(0, 0, 0xAB)  # REGISTER
            assert (await cmd(x2, cdb, data_out=params))[0] == 0
            cdb, params = pr_out(1, 0xAB, rtype=1)  # RESERVE, write exclusive
            assert (await cmd(x2, cdb, data_out=params))[0] == 0
            status, _, _ = await cmd(y1, write10(9), data_out=b"\x5a" * 512)
            assert status == 0x18  # RESERVATION CONFLICT
            status, data, _ = await cmd(y1, read10(8), read_len=512)
            assert status == 0 and data == b"\xa5" * 512  # reads stay allowed (WE)
            cdb, params = pr_out(3, 0xAB)  # CLEAR
            assert (await cmd(x2, cdb, data_out=params))[0] == 0
            status, _, _ = await cmd(y1, write10(9), data_out=b"\x5a" * 512)
            assert status == 0

        # SIGKILL of the owner: another gateway serves within a few seconds, data intact
        killed = time.monotonic()
        gw1.stop(signal.SIGKILL)

        async def served():
            for d in (gw2, gw3):
                async with Session("127.0.0.1", d.port, IQN, "iqn.2026-12.org.test:x") as s:
                    status, data, _ = await cmd(s, read10(8), read_len=512)
                    if status == 0:
                        return d, data
            return None

        owner, data = await until(served, 10, "a surviving gateway serving")
        took = time.monotonic() - killed
        assert data == b"\xa5" * 512
        async with Session("127.0.0.1", owner.port, IQN, "iqn.2026-12.org.test:x") as s:
            status, data, _ = await cmd(s, read10(9), read_len=512)
            assert status == 0 and data == b"\x5a" * 512
        print(f"failover after SIGKILL: {took:.2f}s")

        # a planned stop (SIGTERM) of the new owner: it releases, the last gateway takes over
        last = gw3 if owner is gw2 else gw2
        assert owner.stop(signal.SIGTERM) == 0
        async with Session("127.0.0.1", last.port, IQN, "iqn.2026-12.org.test:x") as s:
            async def good():
                status, data, _ = await cmd(s, read10(8), read_len=512)
                return data if status == 0 else None

            assert await until(good, 10, "the last gateway serving") == b"\xa5" * 512

    asyncio.run(main())


# ------------------------------------------------- active/non-optimized non-owners (shipping)
@pytest.fixture
def shipping(tmp_path):
    """Two gateways whose non-owner paths are active/non-optimized (server/ship.py): gw1
    owns the LUN, gw2 ships its media commands to it."""
    lun = tmp_path / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(64 << 20)
    group = tmp_path / "group"
    daemons = []
    for n in (1, 2):
        port = free_port()
        state = tmp_path / f"gw{n}"
        write_config(state, port, lun, group, f"gw{n}", n, non_owner="non-optimized")
        daemons.append(Daemon(state, ports=[port], demo=False))
    daemons[0].start()

    async def owned() -> bool:
        async with Session("127.0.0.1", daemons[0].port, IQN, "iqn.2026-12.org.test:x") as s:
            return (await cmd(s, TUR))[0] == 0

    asyncio.run(until(owned, 10, "gw1 owning the LUN"))
    daemons[1].start()

    async def both() -> bool:
        async with Session("127.0.0.1", daemons[1].port, IQN, "iqn.2026-12.org.test:x") as s:
            status, data, _ = await cmd(s, RTPG, read_len=1024)
            return status == 0 and rtpg_states(data) == {1: (0, (1,)), 2: (1, (2,))} \
                and (await cmd(s, TUR))[0] == 0

    asyncio.run(until(both, 15, "gw2 active/non-optimized"))
    yield daemons
    for d in daemons:
        d.stop()


#: The iscsi-test-cu families that take a second path (the second URL): MultipathIO, and the
#: reservation tests whose second initiator logs in through it.
SHIPPED_FAMILIES = ("ALL.MultipathIO", "ALL.ProutReserve", "ALL.Reserve6", "ALL.ProutRegister",
                    "ALL.PrinReadKeys", "ALL.PrinServiceactionRange", "ALL.ProutClear",
                    "ALL.ProutPreempt")


def test_iscsi_test_cu_two_paths_owner_and_non_owner_no_failure(shipping):
    from . import cunit

    need("iscsi-test-cu")
    gw1, gw2 = shipping
    listed = subprocess.run(["iscsi-test-cu", "--list"], capture_output=True, text=True,
                            timeout=30).stdout.split()
    failed: list[str] = []
    ran = 0
    for family in SHIPPED_FAMILIES:
        if family not in listed:
            continue
        run = cunit.run(gw1.url(1, IQN), family, url2=gw2.url(1, IQN), cwd=str(gw1.state_dir),
                        timeout=600)
        assert run.results, run.output[-3000:]
        ran += len(run.results)
        print(f"{family}: {run.summary()}")
        failed += [f"{r.name}: {r.detail[-600:]}" for r in run.by("failed")]
        if run.by("failed"):
            failed.append(run.output[-2500:])
    assert ran and not failed, "\n".join(failed) + gw2.log_text()[-3000:]
    assert "command shipping on 127.0.0.1:" in gw2.log_text()


def test_shipped_writes_read_back_through_the_owner_and_survive_its_death(shipping):
    gw1, gw2 = shipping

    async def main() -> None:
        async with Session("127.0.0.1", gw2.port, IQN, "iqn.2026-12.org.test:y") as y2, \
                Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:x") as x1:
            for lba in range(16):  # through the non-owner: run by the owner
                status, _, sense = await cmd(y2, write10(lba), data_out=bytes([lba + 1]) * 512)
                assert status == 0, sense_of(sense)
            for lba in range(16):
                status, data, _ = await cmd(x1, read10(lba), read_len=512)
                assert status == 0 and data == bytes([lba + 1]) * 512
        gw1.stop(signal.SIGKILL)

        async def served():  # the non-owner takes the LUN over and serves the data itself
            async with Session("127.0.0.1", gw2.port, IQN, "iqn.2026-12.org.test:y") as s:
                status, data, _ = await cmd(s, read10(15), read_len=512)
                return data if status == 0 else None

        assert await until(served, 15, "gw2 serving after gw1's death") == b"\x10" * 512
        async with Session("127.0.0.1", gw2.port, IQN, "iqn.2026-12.org.test:y") as s:
            status, data, _ = await cmd(s, RTPG, read_len=1024)
            assert status == 0 and rtpg_states(data)[2][0] == 0  # gw2 active/optimized now

    asyncio.run(main())


def test_lun_reset_through_a_standby_resets_the_owners_lu(gateways):
    """A LOGICAL UNIT RESET received by a standby: the owner's SPC-2 reservation is dropped
    and its nexuses get the reset's unit attention (29h/03h): the state record's event."""
    gw1, gw2, _ = gateways
    gw2.start()

    async def main() -> None:
        y1 = Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:y")
        z1 = Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:z")
        x2 = Session("127.0.0.1", gw2.port, IQN, "iqn.2026-12.org.test:x")
        async with y1, z1, x2:
            assert (await cmd(y1, TUR))[0] == 0
            assert (await cmd(z1, TUR))[0] == 0
            assert (await cmd(y1, bytes([0x16, 0, 0, 0, 0, 0])))[0] == 0  # RESERVE(6) on gw1
            status, _, _ = await cmd(z1, write10(3), data_out=b"\x11" * 512)
            assert status == 0x18  # RESERVATION CONFLICT
            await cmd(x2, TUR)  # x2 logged in on the standby, its UAs taken
            assert await x2.tmf(5, lun=1) == 0  # LOGICAL UNIT RESET through gw2
            status, _, sense = await y1.scsi(TUR)
            assert status == 2 and sense_of(sense) == (UNIT_ATTENTION, 0x2903), \
                gw1.log_text()[-2000:]
            status, _, _ = await cmd(z1, write10(3), data_out=b"\x11" * 512)
            assert status == 0  # the reservation went with the reset
            # a TARGET WARM RESET through the standby resets the owner's LU the same way
            assert (await cmd(y1, bytes([0x16, 0, 0, 0, 0, 0])))[0] == 0
            assert await x2.tmf(6, lun=0) == 0
            status, _, sense = await y1.scsi(TUR)
            assert status == 2 and sense_of(sense) == (UNIT_ATTENTION, 0x2903)
            status, _, _ = await cmd(z1, write10(3), data_out=b"\x11" * 512)
            assert status == 0

    asyncio.run(main())


def test_a_second_daemon_as_the_same_gateway_stands_down_and_says_so(gateways, tmp_path):
    gw1 = gateways[0]
    lun, group = tmp_path / "lun.img", tmp_path / "group"
    port = free_port()
    twin = Daemon(tmp_path / "twin", ports=[port], demo=False)
    write_config(tmp_path / "twin", port, lun, group, "gw1", 1)  # gw1's name and number
    twin.start()
    try:
        def duplicate(d: Daemon) -> dict | None:
            g = json.loads(d.cli("status", "--json").stdout).get("group") or {}
            return g.get("duplicate")

        end = time.monotonic() + 15
        while (duplicate(twin) is None or duplicate(gw1) is None) and time.monotonic() < end:
            time.sleep(0.2)
        seen_twin, seen_gw1 = duplicate(twin), duplicate(gw1)
        assert seen_twin is not None and seen_twin["yielded"] is True, twin.log_text()[-2000:]
        assert seen_gw1 is not None and seen_gw1["yielded"] is False, gw1.log_text()[-2000:]
        assert "stands down" in twin.cli("status").stdout
        assert "another daemon runs as gateway gw1" in twin.log_text()

        async def main() -> None:
            async with Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:x") as s:
                status, _, _ = await cmd(s, write10(5), data_out=b"\x77" * 512)
                assert status == 0  # the first daemon goes on owning the LUN
            async with Session("127.0.0.1", port, IQN, "iqn.2026-12.org.test:x") as s:
                status, _, _ = await cmd(s, read10(5), read_len=512)
                assert status == 2  # the twin touches nothing

        asyncio.run(main())
    finally:
        twin.stop()


def test_lun_resize_on_a_standby_reaches_the_owners_nexuses(gateways):
    """``lun resize`` on a standby gateway: the file grows once (there), the owner's LU learns
    the size from the state record's event and tells its nexuses CAPACITY DATA HAS CHANGED
    (2Ah/09h); READ CAPACITY through either gateway gives the new size."""
    gw1, gw2, _ = gateways
    gw2.start()
    read_capacity = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)

    async def main() -> None:
        y1 = Session("127.0.0.1", gw1.port, IQN, "iqn.2026-12.org.test:y")
        async with y1:
            assert (await cmd(y1, TUR))[0] == 0
            res = await asyncio.to_thread(gw2.cli, "lun", "resize", IQN, "1", "16M")
            assert res.returncode == 0, res.stderr
            heard = []  # every unit attention pending for y1 on the owner
            for _ in range(10):
                status, _, sense = await y1.scsi(TUR)
                if status == 0:
                    break
                heard.append(sense_of(sense))
            assert (UNIT_ATTENTION, 0x2A09) in heard, (heard, gw1.log_text()[-2000:])
            for port in (gw1.port, gw2.port):
                async with Session("127.0.0.1", port, IQN, "iqn.2026-12.org.test:z") as s:
                    status, data, _ = await cmd(s, read_capacity, read_len=32)
                    assert status == 0
                    assert struct.unpack(">Q", data[:8])[0] == (16 << 20) // 512 - 1

    asyncio.run(main())


def test_a_stopped_owner_is_reported_unavailable_and_hung_by_the_standby(gateways):
    """SIGSTOP of the owner: it keeps its lock, nobody can take over; the standby reports its
    group unavailable in RTPG, says once that it is hung, and its status shows it."""
    gw1, gw2, _ = gateways
    gw2.start()

    async def rtpg(port: int) -> dict:
        async with Session("127.0.0.1", port, IQN, "iqn.2026-12.org.test:z") as s:
            status, data, _ = await cmd(s, RTPG, read_len=1024)
            assert status == 0
            return rtpg_states(data)

    async def main() -> None:
        async def two_groups():
            t = await rtpg(gw2.port)
            return t if t.get(1, (None,))[0] == 0 and len(t) == 2 else None

        await until(two_groups, 10, "gw1 the owner in gw2's table")
        gw1.proc.send_signal(signal.SIGSTOP)
        try:
            async def hung():
                return "still holds the lock" in gw2.log_text()

            await until(hung, 10, "the standby says the owner is hung")
            assert (await rtpg(gw2.port))[1][0] == 3  # UNAVAILABLE
            g = json.loads(gw2.cli("status", "--json").stdout)["group"]
            assert list(g["hung_owners"].values()) == ["gw1"]
            assert "hung?" in gw2.cli("status").stdout
            assert gw2.log_text().count("still holds the lock") == 1
        finally:
            gw1.proc.send_signal(signal.SIGCONT)

    asyncio.run(main())


def test_each_gateway_exports_its_group_view_as_metrics(tmp_path):
    """Issue 18 "in a gateway group, each gateway's state": per LU this gateway's ALUA state
    and whether it owns the LU; per gateway whether it beats and how long ago."""
    import urllib.request

    lun = tmp_path / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(8 << 20)
    group = tmp_path / "group"
    daemons, metrics = [], []
    for n in (1, 2):
        port, mport = free_port(), free_port()
        state = tmp_path / f"gw{n}"
        write_config(state, port, lun, group, f"gw{n}", n, non_owner="non-optimized")
        daemons.append(Daemon(state, ports=[port], demo=False,
                              extra=["--metrics-listen", f"127.0.0.1:{mport}"]))
        metrics.append(mport)
    try:
        daemons[0].start()
        daemons[1].start()

        def scrape(i: int) -> dict[str, float]:
            try:  # (the portal listens first; the metrics listener may follow it)
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics[i]}/metrics",
                                            timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                return {}
            out = {}
            for line in text.splitlines():
                if line.startswith("gluster_iscsi_") and ("lun_owned" in line or "alua" in line
                                                          or "group_gateway" in line):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
            return out

        lbl = f'{{lun="1",target="{IQN}"}}'  # (the client library sorts the labels)
        deadline = time.monotonic() + 20
        while True:
            a, b = scrape(0), scrape(1)
            if (a.get("gluster_iscsi_lun_owned" + lbl) == 1
                    and b.get("gluster_iscsi_lun_owned" + lbl) == 0
                    and b.get("gluster_iscsi_lun_alua_state" + lbl) == 1
                    and b.get('gluster_iscsi_group_gateway_up{gateway="gw1",number="1"}') == 1
                    and a.get('gluster_iscsi_group_gateway_up{gateway="gw2",number="2"}') == 1):
                break
            assert time.monotonic() < deadline, (a, b)
            time.sleep(0.5)
        assert a["gluster_iscsi_lun_alua_state" + lbl] == 0  # the owner: active/optimized
        daemons[0].stop(signal.SIGKILL)  # gw2 takes over; it stops seeing gw1 beat
        deadline = time.monotonic() + 20
        while True:
            b = scrape(1)
            if b.get("gluster_iscsi_lun_owned" + lbl) == 1 \
                    and b.get("gluster_iscsi_lun_alua_state" + lbl) == 0:
                break
            assert time.monotonic() < deadline, b
            time.sleep(0.5)
        assert b['gluster_iscsi_group_gateway_beat_age_seconds{gateway="gw1",number="1"}'] > 0
    finally:
        for d in daemons:
            d.stop()
