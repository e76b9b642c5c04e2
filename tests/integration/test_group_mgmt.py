"""Two real daemons in one gateway group (issue 20): a target and LUN defined once on gateway
A run on gateway B too, under one WWID (VPD 83h, read over iSCSI on both); ``group show``
lists both gateways and the owner; ``lun move`` hands the LUN over; ``group initiator-config``
names both addresses. Once on a tmp directory (the path backend) and once on a real Gluster
volume's FUSE mount (``-m gluster``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ..cli.harness import Serve, free_port
from ..gluster_env import gluster_volume_fixture
from .pyinitiator import Session

pytestmark = pytest.mark.integration

T1 = "iqn.2026-11.com.example:group"
MiB = 1 << 20

group_volume = gluster_volume_fixture("giscsi-grp-mgmt")


def cli(gw: Serve, *args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = gw.cli(*args, timeout=timeout)
    if ok:
        assert res.returncode == 0, f"{args} -> {res.returncode}\n{res.stdout}\n{res.stderr}\n{gw.log()[-3000:]}"
    return res


def js(gw: Serve, *args: str) -> object:
    return json.loads(cli(gw, *args, "--json").stdout)


def wait_for(what: str, fn, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def naa(port: int, *, serving: bool = False) -> bytes | None:
    """The NAA designator of VPD page 83h for LUN 1, read by INQUIRY over a real login (the
    test initiator in ``pyinitiator``). With ``serving``, None unless TEST UNIT READY is GOOD
    there, as a media command on a standby gateway is NOT READY 04/0B.

    (libiscsi's iscsi-inq prints a binary designator with %s: a NAA with a zero byte came out
    cut short, so 1 in ~64 LUN UUIDs failed this test. The bytes are decoded here instead.)"""
    async def go() -> bytes | None:
        async with Session("127.0.0.1", port, T1, "iqn.2026-11.org.test:group-mgmt") as s:
            if serving:
                for _ in range(10):  # the unit attentions after login, then the answer
                    status, _, sense = await s.scsi(bytes(6))
                    if status == 0:
                        break
                    if sense[2:3] and sense[2] & 0x0F == 0x02:  # NOT READY: not the owner
                        return None
                else:
                    return None
            status, vpd, sense = await s.scsi(bytes.fromhex("12018301ff00"), read_len=511)
            assert status == 0, sense.hex()
            pos, end = 4, 4 + int.from_bytes(vpd[2:4], "big")
            while pos < end:
                code_set_type, length = vpd[pos + 1], vpd[pos + 3]
                if code_set_type & 0x30 == 0 and code_set_type & 0x0F == 3:  # NAA, the LU
                    return bytes(vpd[pos + 4 : pos + 4 + length])
                pos += 4 + length
            raise AssertionError(f"no NAA designator in VPD 83h: {vpd.hex()}")

    return asyncio.run(go())


def two_gateways(tmp_path: Path, location: str, lun_path: str):  # type: ignore[no-untyped-def]
    a = Serve(tmp_path / "a", free_port())
    b = Serve(tmp_path / "b", free_port())
    res = cli(a, "group", "create", "g1", "--location", location)
    assert "created group g1" in res.stdout
    for gw, name in ((a, "gw-a"), (b, "gw-b")):
        out = json.loads(cli(gw, "group", "join", location, "--gateway", name, "--address",
                             f"127.0.0.1:{gw.port}", "--json").stdout)
        assert out["gateway"] == name and not out["restart_required"]  # no daemon yet
    a.start(timeout=60)
    b.start(timeout=60)
    return a, b


def run_group(tmp_path: Path, location: str, lun_path: str) -> None:
    a, b = two_gateways(tmp_path, location, lun_path)
    try:
        cli(a, "target", "create", T1)
        cli(a, "lun", "create", T1, lun_path, "--size", "8MiB")
        cli(a, "acl", "add", T1, "ALL")
        # B takes the new definition in at its next poll
        luns_b = wait_for("the LUN on gateway B",
                          lambda: [x for x in js(b, "lun", "list") if x.get("online")])
        luns_a = js(a, "lun", "list")
        assert luns_a[0]["uuid"] == luns_b[0]["uuid"] and luns_a[0]["serial"] == luns_b[0]["serial"]
        # The WWID as an initiator reads it, from the owner (TEST UNIT READY GOOD) and from
        # the standby (INQUIRY is served there; media commands are NOT READY 04/0B).
        from gluster_iscsi.scsi.lu import naa_from_serial

        wwid = naa_from_serial(luns_a[0]["uuid"])
        wait_for("gw-a to own the LUN", lambda: js(a, "group", "show")["luns"][0]["owner"])
        assert wait_for("A to serve the LUN", lambda: naa(a.port, serving=True)) == wwid
        assert naa(b.port) == wwid  # the standby answers INQUIRY with the same identity
        show = wait_for("an owner", lambda: (lambda s: s if s["luns"][0]["owner"] else None)(
            js(a, "group", "show")))
        assert [(g["name"], g["number"]) for g in show["gateways"]] == [("gw-a", 1), ("gw-b", 2)]
        assert show["luns"][0]["preferred"] == "gw-a" and show["luns"][0]["owner"] == "gw-a"
        assert show["error"] is None and show["applied_version"] == show["version"]
        text = cli(b, "group", "show").stdout
        assert "gw-a" in text and "gw-b *" in text
        # a planned move through A's daemon: B owns it once the hand-over is done
        cli(a, "lun", "move", T1, "1", "--to", "gw-b")
        wait_for("gw-b to own the LUN",
                 lambda: js(b, "group", "show")["luns"][0]["owner"] == "gw-b", timeout=60)
        assert wait_for("B to serve the LUN", lambda: naa(b.port, serving=True)) == wwid
        wait_for("A to see the new owner",
                 lambda: js(a, "group", "show")["luns"][0]["owner"] == "gw-b", timeout=30)
        reb = js(a, "group", "rebalance")  # back to its preferred gateway
        assert [(m["from"], m["to"], m["done"]) for m in reb["moves"]] == [("gw-b", "gw-a", True)]
        wait_for("gw-a to own it again",
                 lambda: js(a, "group", "show")["luns"][0]["owner"] == "gw-a", timeout=60)
        assert js(a, "group", "rebalance")["moves"] == []
        ic = js(b, "group", "initiator-config")
        lines = "\n".join(ic["iscsiadm"])
        assert f"127.0.0.1:{a.port}" in lines and f"127.0.0.1:{b.port}" in lines
        assert "prio alua" in ic["multipath_conf"]
    finally:
        b.stop()
        a.stop()


def test_two_gateways_on_a_shared_directory(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    run_group(tmp_path, str(vol / ".gluster-iscsi"), str(vol / "disk1.img"))


@pytest.mark.gluster
def test_two_gateways_on_a_gluster_volume_through_fuse(tmp_path, group_volume):
    volume, host, mountpoint = group_volume[:3]
    name = f"grp-{tmp_path.name}"
    # the volume's own options bound the lease (keepalive 20 + 2 x 9 s by default)
    res = Serve(tmp_path / "x").cli("group", "create", "gx", "--location",
                                    f"{mountpoint}/.gluster-iscsi-x-{name}", "--lease-seconds", "40")
    assert res.returncode == 6, res.stdout + res.stderr
    assert "drops a silent client after 38 s" in res.stderr and "--lease-seconds" in res.stderr
    # ... and the clients' ping timeout must fail a cut-off owner's pending writes before a
    # brick frees its lock (42 s by default: refused, with the command that fixes it)
    res = Serve(tmp_path / "y").cli("group", "create", "gy", "--location",
                                    f"{mountpoint}/.gluster-iscsi-y-{name}")
    assert res.returncode == 6, res.stdout + res.stderr
    assert f"gluster volume set {volume} network.ping-timeout 9" in res.stderr
    subprocess.run(["gluster", "--mode=script", "volume", "set", volume, "network.ping-timeout",
                    "9"], check=True, capture_output=True, timeout=60)
    run_group(tmp_path, f"{mountpoint}/.gluster-iscsi-{name}", f"{mountpoint}/{name}.img")


# ----------------------------------------------------------------- lone gateways, one file

lone_volume = gluster_volume_fixture("giscsi-grp-lone")


def run_lone(tmp_path: Path, spellings: list[str]) -> None:
    """Two lone daemons (no group): the first exports the file; the second, under another
    spelling, is refused naming the first; once the first lets go, the second exports it
    with the same identity."""
    a = Serve(tmp_path / "a", free_port()).start(timeout=60)
    b = Serve(tmp_path / "b", free_port()).start(timeout=60)
    try:
        for gw in (a, b):
            cli(gw, "target", "create", T1)
        cli(a, "lun", "create", T1, spellings[0], "--size", "8MiB")
        first = js(a, "lun", "list")[0]
        res = cli(b, "lun", "create", T1, spellings[1], ok=False)
        assert res.returncode == 7, res.stdout + res.stderr
        assert f"exported by gateway {os.uname().nodename}:{a.state_dir}" in res.stderr
        assert "put both in a group" in res.stderr
        assert js(b, "lun", "list") == []
        cli(a, "lun", "delete", T1, "1")
        for spelling in spellings[1:]:
            cli(b, "lun", "create", T1, spelling, "--lun", "1")
            again = js(b, "lun", "list")[0]
            assert (again["uuid"], again["serial"]) == (first["uuid"], first["serial"]), spelling
            cli(b, "lun", "delete", T1, "1")
    finally:
        b.stop()
        a.stop()


def test_two_lone_gateways_one_file_on_a_shared_directory(tmp_path):
    vol = tmp_path / "vol"
    (vol / ".gluster-iscsi").mkdir(parents=True)  # what makes a tree a shared volume
    os.symlink(vol, tmp_path / "other-mount")
    run_lone(tmp_path, [str(vol / "f.img"), str(tmp_path / "other-mount" / "f.img")])


@pytest.mark.gluster
def test_two_lone_gateways_one_gluster_file_whatever_its_spelling(tmp_path, lone_volume):
    volume, host, mountpoint = lone_volume[:3]
    name = f"lone-{tmp_path.name}.img"
    run_lone(tmp_path, [f"gluster://{host}/{volume}/{name}", f"{mountpoint}/{name}",
                        f"gluster://{host},localhost/{volume}/{name}"])


def test_group_create_joins_a_running_daemon_which_serves_the_group_after_a_restart(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    loc = str(vol / ".gluster-iscsi")
    a = Serve(tmp_path / "a", free_port()).start(timeout=60)
    try:
        res = cli(a, "group", "create", "g1", "--location", loc, "--gateway", "gw-a",
                  "--address", f"127.0.0.1:{a.port}")
        assert "created group g1" in res.stdout and "gateway gw-a (number 1)" in res.stdout
        assert "restart required" in res.stdout and "systemctl restart gluster-iscsi" in res.stdout
        res = cli(a, "group", "show", ok=False)  # joined, not restarted yet
        assert res.returncode == 4 and "not been restarted" in res.stderr
        a.stop()
        a.start(timeout=60)
        cli(a, "target", "create", T1)
        cli(a, "lun", "create", T1, str(vol / "d.img"), "--size", "1MiB")
        a.stop()
        a.start(timeout=60)  # the group's targets are in force before the portals open
        assert js(a, "lun", "list")[0]["online"]
        assert js(a, "group", "show")["applied_version"] == js(a, "group", "show")["version"]
    finally:
        a.stop()
