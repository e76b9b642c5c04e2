"""Linux kernel initiator (open-iscsi, multipath-tools) in a QEMU guest against the target.

Each test boots the cached Debian 12 guest (scripts/guest/build-image.sh), runs one
scenario script (scripts/guest/in-guest/scenario-*.sh) and turns its RESULT lines into
the verdict. Mid-scenario host actions (stop a portal, restart the daemon) are the
target's methods, called through the harness's control channel.

    pytest -m guest tests/guest                              # against gluster-iscsi
    GLUSTER_ISCSI_GUEST_TARGET=tgt pytest -m guest tests/guest   # reference: tgt
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenarios import SCENARIOS, configure_chap, configure_mutual_chap, run_with_target
from targets import TargetBase

pytestmark = pytest.mark.guest


def _run(name: str, target: TargetBase, image: Path, workdir: Path, record_property) -> None:
    scenario = SCENARIOS[name]
    run, problems = run_with_target(scenario, target, image, workdir)
    summary = run.summary()
    print(summary)
    record_property("guest_seconds", round(run.seconds, 1))
    record_property("guest_log", str(run.log_path))
    assert not problems, f"{name} against {target.kind}:\n" + "\n".join(problems) + "\n\n" + summary


def test_cookbook(guest_image, target, guest_workdir, record_property):
    """Scenario 1: discovery, login, lsblk, dd + verify, mkfs.ext4, mount, files,
    fsck -fn, remount + verify, logout, the disk is gone."""
    _run("basic", target, guest_image, guest_workdir, record_property)


def test_chap_and_mutual_chap(guest_image, target, guest_workdir, record_property):
    """Scenario 2: the cookbook with CHAP and with mutual CHAP (iscsid.conf settings);
    logins without/with wrong secrets are refused."""
    configure_chap(target)
    configure_mutual_chap(target)
    _run("chap", target, guest_image, guest_workdir, record_property)


def test_multipath_portal_failover(guest_image, target_two_portals, guest_workdir, record_property):
    """Scenario 3: one LUN via two portals -> one dm-multipath device (same VPD 83h WWID);
    ext4 on it; portal 2 stopped during a write stream -> no error, path fails; portal
    back -> path reinstated; fsck clean and all data verifies."""
    _run("multipath", target_two_portals, guest_image, guest_workdir, record_property)


def test_session_recovery_after_daemon_restart(guest_image, target, guest_workdir, record_property):
    """Scenario 4: the daemon restarts during a write stream; the same session recovers
    within replacement_timeout, no write fails, the data verifies."""
    _run("recovery", target, guest_image, guest_workdir, record_property)


def test_session_recovery_after_daemon_crash(guest_image, target, guest_workdir, record_property):
    """Scenario 4b: as 4, but the daemon is SIGKILLed mid-stream and started again (for
    tgt, 4 already is a kill)."""
    _run("recovery-crash", target, guest_image, guest_workdir, record_property)
