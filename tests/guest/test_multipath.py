"""The kernel initiator with dm-multipath over a gateway group (issue 20, docs/HA.md).

Three gateways of one group run in network namespaces on the host (tests/ha harness: a
replica-3 volume, one gfapi LUN); the QEMU guest reaches two of them through user
networking (outbound NAT to 192.0.2.11/12) and runs in-guest/scenario-hamultipath.sh:
one multipath device for the LUN, the `alua` device handler on both paths, and the owner's
path in the active path group (priority 50) with the other gateway's path standing by.
Then SIGKILL of the owner during a write stream: no I/O error, the other gateway's path
becomes active, the killed gateway returns (a standby now) and its path is reinstated,
every acknowledged MiB verifies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.ha.conftest import gateways, ha_net, ha_volume  # noqa: F401 (fixtures)
from tests.ha.harness import IQN
from tests.ha.test_group import group, wait_settled  # noqa: F401 (fixture)

GUEST_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "guest"
if str(GUEST_SCRIPTS) not in sys.path:
    sys.path.insert(0, str(GUEST_SCRIPTS))

from guest_harness import run_scenario  # noqa: E402

pytestmark = [pytest.mark.guest, pytest.mark.gluster]

REQUIRED = ["multipathd_started", "discovery1", "discovery2", "login", "paths_appear",
            "same_wwid", "alua_handler", "owner_group_active", "io", "stream_started",
            "kill_owner", "failover", "io_continues", "restart_owner", "path_reinstated",
            "io_after_return", "stream_clean", "data_verifies", "done"]


def test_multipath_alua_owner_active(
        guest_image, guest_workdir, group, record_property):  # noqa: F811
    """dm-multipath sees one ALUA device whose active path group is the owner's (a short
    name: the guest harness puts a Unix socket under a directory named after the test)."""
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
    }
    actions = {"kill-owner": lambda args: str(owner.kill()),
               "restart-owner": lambda args: (owner.start(), "started")[1]}
    run = run_scenario("hamultipath", env, image_dir=guest_image, workdir=guest_workdir,
                       host_actions=actions, timeout=900)
    record_property("guest", run.summary())
    problems = run.check(REQUIRED)
    assert not problems, f"{problems}\n{run.summary()}\nconsole: {guest_workdir}"
