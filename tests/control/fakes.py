"""A minimal in-memory daemon for unit tests of diffing and the API (no sockets, no stores).

``FakeDaemon`` implements ``control.interface.DaemonControl``, as ``server.daemon.Daemon``
does (tests/control/test_interface.py checks both with mypy). Real-daemon behaviour is
covered by tests/cli/test_integration.py, which runs ``gluster-iscsi serve``.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control import reconcile
from gluster_iscsi.model.targets import Portal, Target, TargetRegistry


class FakeStore:
    def __init__(self, spec: str, size: int = 1 << 20) -> None:
        self.spec = spec
        self.size = size
        self.closed = False

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def resize(self, n: int) -> None:
        self.size = n


class FakeLU:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.store = FakeStore(cfg["backing"], cfg.get("size") or 1 << 20)
        self.naa = b"\x50" + bytes(7)
        self.capacity_changes = 0

    def capacity_changed(self, size: int | None = None) -> None:
        self.capacity_changes += 1


class FakeDevice:
    def __init__(self, name: str) -> None:
        self.name = name
        self.luns: dict[int, FakeLU] = {}

    def add_lun(self, n: int, lu: FakeLU) -> None:
        assert n not in self.luns
        self.luns[n] = lu

    def remove_lun(self, n: int) -> FakeLU | None:
        return self.luns.pop(n, None)

    def lu(self, n: int) -> FakeLU | None:
        return self.luns.get(n)


class FakeBinding:
    """A portal "bound" by FakeDaemon.bind_portal; its port fails when opened (fail_portal)."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeBudget:
    def __init__(self) -> None:
        self.limit, self.share, self.used, self.peak = 256 << 20, 64 << 20, 1 << 20, 3 << 20


class FakeLimits:
    def __init__(self) -> None:
        self.max_connections, self.max_prelogin, self.max_prelogin_per_host = 1000, 500, 256
        self.max_connections_per_host = 250


class FakeDaemon:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.registry = TargetRegistry()
        self.params = {"MaxRecvDataSegmentLength": "262144", "InitialR2T": "Yes"}
        self.store_executor: Executor | None = None
        self.io_uring = False
        self.ring_calls: int | None = None
        self.gfapi_async = True
        self.gfaio_calls: int | None = None
        self.budget = FakeBudget()
        self.memory_governor = None
        self.limits = FakeLimits()
        self.connections: set[object] = set()
        #: LUs whose write-behind was drained before their store closed
        self.drained: list[Any] = []
        #: LUs whose write-behind is off since (``id``): drained and not resumed
        self.wb_off: set[int] = set()
        self._portals: list[Portal] = []
        self.session_list: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any]] = []
        self.fail_portal: tuple[str, int] | None = None
        #: (host, port) -> connections through that portal (connections_on)
        self.portal_connections: dict[tuple[str, int], int] = {}
        self.nop_interval = 10.0
        self.nop_timeout = 30.0
        self.queue_depth = 128

    def bind_portal(self, portal: Portal) -> FakeBinding:
        return FakeBinding(portal)

    async def open_portal(self, binding: Any) -> Portal:
        assert isinstance(binding, FakeBinding) and not binding.closed
        await self.add_portal(binding.portal)
        return binding.portal

    async def add_portal(self, portal: Portal) -> None:
        self.calls.append(("add_portal", (portal.host, portal.port)))
        if self.fail_portal == (portal.host, portal.port):
            raise OSError(98, "Address already in use")
        self._portals.append(portal)

    async def remove_portal(self, portal: Portal) -> None:
        self.calls.append(("remove_portal", (portal.host, portal.port)))
        self._portals = [p for p in self._portals if (p.host, p.port) != (portal.host, portal.port)]

    def set_portal_advertise(self, portal: Portal) -> None:
        self.calls.append(("set_portal_advertise", (portal.host, portal.port)))
        self._portals = [
            portal if (p.host, p.port) == (portal.host, portal.port) else p for p in self._portals
        ]

    def connections_on(self, portal: Portal) -> int:
        return self.portal_connections.get((portal.host, portal.port), 0)

    def portals(self) -> list[Portal]:
        return list(self._portals)

    def add_target(self, target: Target) -> None:
        self.calls.append(("add_target", target.name))
        self.registry.targets[target.name] = target

    async def remove_target(self, name: str) -> None:
        self.calls.append(("remove_target", name))
        t = self.registry.lookup(name)
        if t is not None:
            del self.registry.targets[t.name]
        self.session_list = [s for s in self.session_list if s["target"] != name]

    def sessions(self) -> list[dict[str, Any]]:
        return list(self.session_list)

    async def close_session(self, tsih: int) -> bool:
        before = len(self.session_list)
        self.session_list = [s for s in self.session_list if s["tsih"] != tsih]
        return len(self.session_list) != before

    write_behind = 0

    #: how many times reconcile said stores were opened
    stores_opened_calls = 0

    def stores_opened(self) -> None:
        self.stores_opened_calls += 1

    def scheduling_status(self) -> dict[str, Any]:
        return {"gfapi_event_threads": "batch", "gfapi_event_threads_by_policy": {},
                "refused": None}

    def write_behind_status(self, lu: Any) -> dict[str, Any]:
        return {"enabled": False, "state": "off (--write-behind 0)", "window": 0}

    async def write_behind_drain(self, lu: Any) -> None:
        self.drained.append(lu)
        self.wb_off.add(id(lu))

    def write_behind_resume(self, lu: Any) -> None:
        self.wb_off.discard(id(lu))

    def lun_stats(self) -> list[dict[str, Any]]:
        return [{"target": t.name, "lun": n, "reads": 0}
                for t in self.registry.targets.values() if t.device is not None
                for n in sorted(t.device.luns)]

    def group_status(self) -> dict[str, Any] | None:
        return None  # a lone daemon

    async def group_move(self, lun_key: str, gateway: str) -> None:
        raise ValueError("this daemon is not in a gateway group")


@pytest.fixture
def fake_runtime(monkeypatch):
    """Swap reconcile's store/LU/device factories for in-memory fakes."""
    opened: list[FakeLU] = []
    failing: set[str] = set()

    def open_lu(cfg: dict[str, Any], target_name: str) -> FakeLU:
        if cfg["backing"] in failing:
            raise FileNotFoundError(2, "No such file or directory", cfg["backing"])
        lu = FakeLU(cfg)
        opened.append(lu)
        return lu

    # gluster:// stores are fakes here: so is their volume, which holds no group directory
    # for the files' identity and lease (files under a tmp dir with one still claim them).
    from gluster_iscsi.control import group as groupmod

    real_volume_of = groupmod.volume_of
    monkeypatch.setattr(groupmod, "volume_of", lambda backing, bstype=None: (
        None if cfgmod.guess_bstype(backing) in ("gluster", "glfs") or bstype in ("glfs", "gluster")
        else real_volume_of(backing, bstype)))  # fmt: skip
    monkeypatch.setattr(reconcile, "open_lu", open_lu)
    monkeypatch.setattr(reconcile, "new_device", FakeDevice)
    monkeypatch.setattr(reconcile, "close_lu", lambda lu: lu.store.close())
    return opened, failing
