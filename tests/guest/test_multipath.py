"""The kernel initiator with dm-multipath over a gateway group (issue 20, docs/HA.md).

Three gateways of one group run in network namespaces on the host (tests/ha harness: a
replica-3 volume, one gfapi LUN); the QEMU guest reaches two of them through user
networking (outbound NAT to 192.0.2.11/12) and runs in-guest/scenario-hamultipath.sh:
one multipath device for the LUN, the `alua` device handler on both paths, and the owner's
path in the active path group (priority 50) with the other gateway's path in the enabled
group (priority 10: active/non-optimized, the default ``non_owner`` mode). During a write
stream: a planned `lun move` to the other gateway (no I/O error, the priorities swap), then
SIGKILL of the (new) owner: no I/O error, the other gateway's path becomes active, the
killed gateway returns (a non-owner now) and its path is reinstated, every acknowledged MiB
verifies. Last, fence_scsi's sequence with sg_persist: the guest (node A) registers a key
on both paths and reserves (write exclusive, registrants only), node B (the host, another
initiator name, through both gateways) registers and PREEMPT AND ABORTs A's key, and A's
writes then fail with RESERVATION CONFLICT on both paths.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

import pytest

from tests.ha.conftest import gateways, ha_net, ha_volume  # noqa: F401 (fixtures)
from tests.ha.harness import IQN, ISCSI_PORT, Gateway
from tests.ha.scsi import Path as ScsiPath
from tests.ha.test_group import cli_group, wait_settled  # noqa: F401 (fixture)

GUEST_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "guest"
if str(GUEST_SCRIPTS) not in sys.path:
    sys.path.insert(0, str(GUEST_SCRIPTS))

from guest_harness import run_scenario  # noqa: E402

pytestmark = [pytest.mark.guest, pytest.mark.gluster]

REQUIRED = ["multipathd_started", "discovery1", "discovery2", "login", "paths_appear",
            "same_wwid", "alua_handler", "owner_group_active", "io", "stream_started",
            "lun_move", "io_after_move",
            "kill_owner", "failover", "io_continues", "restart_owner", "path_reinstated",
            "io_after_return", "stream_clean", "data_verifies", "figures",
            "pr_reserved", "pr_preempt", "pr_fenced", "pr_cleared", "done"]

NODE_B = "iqn.2026-12.org.gluster-iscsi:node-b"
KEY_B = 0xB1
WE_RO = 5  # write exclusive, registrants only (fence_scsi)


def prout_cdb(action: int, prtype: int = 0) -> bytes:
    return struct.pack(">BBBxxIB", 0x5F, action, prtype, 24, 0)


def prout_params(key: int, sa_key: int) -> bytes:
    return struct.pack(">QQ8x", key, sa_key)


def node_b(gws: list[Gateway], key_a: int | None) -> str:
    """Node B through every gateway: register KEY_B, then PREEMPT AND ABORT ``key_a``
    (``None``: CLEAR, to leave the LUN without registrations)."""

    async def main() -> str:
        out = []
        for i, gw in enumerate(gws):
            async with ScsiPath(gw.address, ISCSI_PORT, IQN, NODE_B) as p:
                if key_a is None:
                    if i == 0:
                        # a new session is a new I_T nexus (another ISID): register it
                        # (REGISTER AND IGNORE EXISTING KEY), then CLEAR
                        a = await p.cmd_past_ua(prout_cdb(6), data_out=prout_params(0, KEY_B))
                        out.append(f"register via {gw.name}: {a}")
                        assert a.good, out
                        a = await p.cmd_past_ua(prout_cdb(3), data_out=prout_params(KEY_B, 0))
                        out.append(f"clear via {gw.name}: {a}")
                        assert a.good, out
                    continue
                a = await p.cmd_past_ua(prout_cdb(0), data_out=prout_params(0, KEY_B))
                out.append(f"register via {gw.name}: {a}")
                assert a.good, out
                if i == len(gws) - 1:
                    a = await p.cmd_past_ua(prout_cdb(5, WE_RO),
                                            data_out=prout_params(KEY_B, key_a))
                    out.append(f"preempt-and-abort via {gw.name}: {a}")
                    assert a.good, out
        return "; ".join(out)

    return asyncio.run(main())


@pytest.mark.parametrize("cli_group", ["default"], indirect=True)
def test_multipath_alua_owner_active(
        guest_image, guest_workdir, cli_group, record_property):  # noqa: F811
    """dm-multipath sees one ALUA device whose active path group is the owner's (a short
    name: the guest harness puts a Unix socket under a directory named after the test)."""
    group = cli_group  # a definition group: `lun move` needs one
    owner = wait_settled(group)
    other = next(gw for gw in group if gw is not owner)
    # the guest has paths to two gateways: the third leaves (planned stop), so a takeover
    # after the owner's death goes to the gateway the guest can reach
    for gw in group:
        if gw is not owner and gw is not other:
            assert gw.stop() == 0
    first, second = sorted([owner, other], key=lambda g: g.number)
    env = {
        "GI_TARGET_IQN": IQN,
        "GI_LUN": "1",
        "GI_PORTALS": f"{first.portal} {second.portal}",
        "GI_OWNER_PORTAL": owner.portal,
        "GI_STRICT_DISCOVERY": "1",
        "GI_STREAM_MAX": "900",  # MiB, within the 1 GiB LUN
        "GI_NON_OWNER": "non-optimized",
        "GI_MOVE": "1",
        "GI_PR": "1",
    }
    now = {"owner": owner, "other": other}

    def move(args: list[str]) -> str:
        now["owner"].cli("lun", "move", IQN, "1", "--to", now["other"].name, timeout=120)
        now["owner"], now["other"] = now["other"], now["owner"]
        return f"moved to {now['owner'].name}"

    actions = {"move-lun": move,
               "kill-owner": lambda args: str(now["owner"].kill()),
               "restart-owner": lambda args: (now["owner"].start(), "started")[1],
               "preempt-abort": lambda args: node_b([first, second], int(args[0], 0)),
               "pr-clear": lambda args: node_b([first, second], None)}
    run = run_scenario("hamultipath", env, image_dir=guest_image, workdir=guest_workdir,
                       host_actions=actions, timeout=1200)
    record_property("guest", run.summary())
    print(run.summary())
    problems = run.check(REQUIRED)
    assert not problems, f"{problems}\n{run.summary()}\nconsole: {guest_workdir}"
