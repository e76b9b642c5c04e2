"""Session fixtures of the HA tests (``-m gluster``): three gateway namespaces, one replica-3
volume on the bricks' address they reach, and :class:`Gateway` objects, all torn down at the
end of the session even after failures (``python -m tests.ha.netenv down`` after a kill -9).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gluster_env import GlusterEnv, GlusterUnavailable, start_volume, stop_volume
from tests.ha.harness import Gateway
from tests.ha.netenv import STORAGE_HOST, NetEnv


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # every test here needs the volume and root: mark them so `-m "not gluster"` leaves them
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.gluster)


# The session's namespaces and volume, shared by every registration of these fixtures: a
# test module elsewhere (tests/guest/test_multipath.py) imports them, which makes pytest
# keep a second session-scoped instance; both must use the one set of namespaces and the
# one volume, torn down by the last user.
_SHARED: dict[str, Any] = {}


def _acquire(key: str, make: Callable[[], Any]) -> Any:
    if key not in _SHARED:
        _SHARED[key] = [make(), 0]
    _SHARED[key][1] += 1
    return _SHARED[key][0]


def _release(key: str, drop: Callable[[Any], None]) -> None:
    entry = _SHARED[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _SHARED[key]
        drop(entry[0])


@pytest.fixture(scope="session")
def ha_net() -> Iterator[NetEnv]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    net = _acquire("net", lambda: NetEnv(3).up())
    try:
        yield net
    finally:
        _release("net", lambda _n: NetEnv.down())


#: The HA volume's ``network.ping-timeout``: a cut-off owner's Gluster client must fail the
#: writes it already issued before a brick drops it and frees its lock (docs/HA.md "Measured
#: by the harness": with the default 42 s such a write landed after the takeover, with 10 s
#: it failed at ~30 s); ``group create`` refuses a volume without it (control/group.py
#: ``lease_problem``).
PING_TIMEOUT = 10


def _start(name: str) -> GlusterEnv:
    try:
        env = start_volume(name, brick_host=STORAGE_HOST)
    except GlusterUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"glusterd cannot be started: {e}")
        pytest.skip(f"glusterd cannot be started here: {e}")
    proc = subprocess.run(["gluster", "--mode=script", "volume", "set", env.volume,
                           "network.ping-timeout", str(PING_TIMEOUT)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"volume set ping-timeout: {proc.stdout}{proc.stderr}"
    return env


@pytest.fixture(scope="session")
def ha_volume(ha_net: NetEnv) -> Iterator[GlusterEnv]:
    """The replica-3 volume (gluster-block options) whose bricks listen on 192.0.2.17,
    FUSE-mounted on the host (for making and checking files; gateways use gfapi). The
    bricks' address exists only while the bridges do: hence the dependency on ha_net."""
    name = f"giscsi-ha-{os.getpid()}"
    env = _acquire("volume", lambda: _start(name))
    try:
        yield env
    finally:
        _release("volume", lambda _v: stop_volume(name))


@pytest.fixture
def gateways(ha_net: NetEnv, ha_volume: GlusterEnv, tmp_path: Path) -> Iterator[list[Gateway]]:
    """Three (stopped) gateways gw1..gw3, one per namespace; every one still running at the
    end is killed and every partition healed, whatever the test did."""
    gws = [Gateway(ha_net, ns, tmp_path / f"gw{ns.index}", ha_volume)
           for ns in ha_net.namespaces]
    try:
        yield gws
    finally:
        for gw in gws:
            gw.heal()
            gw.kill()
