"""Fixtures for the QEMU guest tier (``-m guest``): image, targets, scenario runner.

Target selection: ``GLUSTER_ISCSI_GUEST_TARGET=gluster-iscsi`` (default, our daemon)
or ``=tgt`` (Debian's tgt, the reference the harness was validated against).
Logs (guest console, daemon log) stay in
``${GLUSTER_ISCSI_GUEST_LOGDIR:-/tmp/gluster-iscsi-guest}/<session time>/<test>/``
(e.g. point it at a CI artifact directory).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

GUEST_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "guest"
if str(GUEST_SCRIPTS) not in sys.path:
    sys.path.insert(0, str(GUEST_SCRIPTS))

from guest_harness import build_image  # noqa: E402
from targets import TargetBase, gluster_iscsi_available, make_target  # noqa: E402

TARGET_KIND = os.environ.get("GLUSTER_ISCSI_GUEST_TARGET", "gluster-iscsi")


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The cached guest image (built on first use: ~1-2 min, needs root + the mirror)."""
    if os.geteuid() != 0:
        pytest.fail("the guest tier needs root (debootstrap, chroot)")
    return build_image()


_SESSION_STAMP = time.strftime("%Y%m%d-%H%M%S")


@pytest.fixture
def guest_workdir(request: pytest.FixtureRequest) -> Path:
    """Where the console log and target log of a test go. Not pytest's tmp_path: that is
    rotated away by the next pytest runs, and these logs are what one reads after a
    failure. Default /tmp/gluster-iscsi-guest/<session time>/<test>."""
    base = Path(os.environ.get("GLUSTER_ISCSI_GUEST_LOGDIR") or "/tmp/gluster-iscsi-guest")
    d = base / _SESSION_STAMP / request.node.name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _start_target(workdir: Path, portals: int) -> TargetBase:
    if TARGET_KIND in ("gluster-iscsi", "daemon", "ours"):
        ok, why = gluster_iscsi_available()
        if not ok:
            # deliberately a failure, not a skip: the tier exists to test the daemon
            pytest.fail(f"gluster-iscsi daemon not available (`serve --help` failed): {why}")
    target = make_target(TARGET_KIND, workdir / "target", portals=portals)
    target.start()
    return target


@pytest.fixture
def target(guest_workdir: Path):
    """The target under test with one portal, started; stopped afterwards."""
    t = _start_target(guest_workdir, portals=1)
    yield t
    t.stop()
    t.drop_images()


@pytest.fixture
def target_two_portals(guest_workdir: Path):
    """The target under test listening on two portals (same LUN), started."""
    t = _start_target(guest_workdir, portals=2)
    yield t
    t.stop()
    t.drop_images()
