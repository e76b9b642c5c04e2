"""``serve --metrics-listen``: a real daemon's /metrics, parsed by prometheus_client's own
parser, counts what a real initiator did (issue 18). Every address here is loopback."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gluster_iscsi.server.metrics import METRICS, exposed_names

from ..integration.pyinitiator import IscsiError, Session
from .harness import Serve, free_port

pytestmark = pytest.mark.integration

DEMO = "iqn.2026-11.org.gluster-iscsi:demo"
INITIATOR = "iqn.2026-11.test:metrics"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lun(target: str = DEMO, n: int = 1, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"target": target, "lun": str(n), **more}.items()))


async def reads(port: int, n: int) -> None:
    async with Session("127.0.0.1", port, DEMO, INITIATOR) as s:
        for i in range(n):
            await s.read10(i * 8, 4096)


async def refused(port: int) -> None:
    with pytest.raises(IscsiError, match="login failed 2/3"):
        async with Session("127.0.0.1", port, "iqn.2026-11.nowhere:x", INITIATOR):
            pass


def test_metrics_count_what_an_initiator_did(tmp_path: Any) -> None:
    mport = free_port()
    with Serve(tmp_path, extra=("--demo", "--metrics-listen", f"127.0.0.1:{mport}")) as d:
        before = scrape(mport)
        assert before[("gluster_iscsi_lun_read_commands_total", lun())] == 0
        asyncio.run(reads(d.port, 25))
        asyncio.run(refused(d.port))
        m = scrape(mport)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/other", timeout=10)
    ua = m[("gluster_iscsi_lun_unit_attentions_total", lun())]
    assert ua == m[("gluster_iscsi_lun_errors_total", lun(sense_key="unit_attention"))] == 1
    assert m[("gluster_iscsi_lun_read_commands_total", lun())] == 25 + ua  # the UA'd try too
    assert m[("gluster_iscsi_lun_read_bytes_total", lun())] == 25 * 4096
    assert m[("gluster_iscsi_lun_command_duration_seconds_count", lun())] >= 25 + ua
    assert m[("gluster_iscsi_lun_command_duration_seconds_bucket", lun(le="+Inf"))] == \
        m[("gluster_iscsi_lun_command_duration_seconds_count", lun())]
    assert m[("gluster_iscsi_lun_commands_in_flight", lun())] == 0
    assert m[("gluster_iscsi_target_logins_total", (("target", DEMO),))] == 1
    assert m[("gluster_iscsi_target_login_refusals_total",
              (("reason", "not_found"), ("target", "")))] == 1
    assert m[("gluster_iscsi_memory_budget_limit_bytes", ())] > 0
    assert ("gluster_iscsi_event_loop_lag_seconds", ()) in m
    # Every name exported is documented in OPERATIONS.md, and every documented one exported.
    assert {name for name, _ in m} <= exposed_names()
    from pathlib import Path

    ops = (Path(__file__).parents[2] / "docs" / "OPERATIONS.md").read_text()
    missing = [name for name in METRICS if name not in ops]
    assert not missing, f"not in docs/OPERATIONS.md: {missing}"


def test_a_metrics_address_in_use_is_exit_9(tmp_path: Any) -> None:
    import socket

    from .test_serve_start import run_serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}",
                      "--metrics-listen", f"127.0.0.1:{port}")
    assert r.returncode == 9, r.stderr
    assert "Traceback" not in r.stderr and "metrics" in r.stderr


def test_session_and_lun_views_show_login_time_keys_and_counters(tmp_path: Any) -> None:
    import json
    import time

    with Serve(tmp_path, extra=("--demo",)) as d:
        async def during() -> tuple[Any, Any, Any]:
            async with Session("127.0.0.1", d.port, DEMO, INITIATOR) as s:
                for i in range(10):
                    await s.read10(i * 8, 4096)
                await s.write10(0, bytes(4096))
                listed = await asyncio.to_thread(d.cli, "session", "list", "--json")
                rows = json.loads(listed.stdout)
                tsih = rows[0]["tsih"]
                shown = await asyncio.to_thread(d.cli, "session", "show", str(tsih), "--json")
                text = await asyncio.to_thread(d.cli, "session", "show", str(tsih))
                return rows, json.loads(shown.stdout), text.stdout

        t0 = time.time()
        rows, one, text = asyncio.run(during())
        stats = d.cli("lun", "stats", "--json")
        one_lun = d.cli("lun", "stats", DEMO, "1", "--json")
        no_lun = d.cli("lun", "stats", DEMO, "9", "--json")
        table = d.cli("lun", "stats")
    [s] = rows
    assert s == one
    assert t0 - 5 <= s["login_time"] <= time.time()
    assert s["params"]["MaxBurstLength"] == "262144"
    ua = 1  # the first read's unit attention, retried
    assert s["commands"] == 10 + 1 + ua and s["errors"] == ua
    assert s["bytes_out"] == 10 * 4096 and s["bytes_in"] == 4096
    assert "login_time: " in text and "commands: 12" in text
    [lu] = json.loads(stats.stdout)
    assert json.loads(one_lun.stdout) == [lu]
    assert (lu["target"], lu["lun"], lu["reads"], lu["writes"]) == (DEMO, 1, 10 + ua, 1)
    assert (lu["read_bytes"], lu["write_bytes"]) == (10 * 4096, 4096)
    assert lu["errors"] == {"unit_attention": 1} and lu["unit_attentions"] == 1
    assert lu["latency"]["count"] == 12 and lu["latency"]["buckets"][-1] == [None, 12]
    assert no_lun.returncode == 4 and json.loads(no_lun.stdout or no_lun.stderr)["error"]["code"] == "not_found"
    assert "READS" in table.stdout and DEMO in table.stdout


def test_unit_attentions_queued_and_delivered_per_lun(tmp_path: Any) -> None:
    """A grow queues CAPACITY DATA HAS CHANGED for every nexus of the LU: the pending gauge
    counts them, and one reported to an initiator moves from pending to the delivered
    counter (issue 18: unit attentions per LU)."""
    mport = free_port()
    ua = "gluster_iscsi_lun_unit_attentions_total"
    pending = "gluster_iscsi_lun_unit_attentions_pending"
    with Serve(tmp_path, extra=("--demo", "--metrics-listen", f"127.0.0.1:{mport}")) as d:
        async def scenario() -> list[dict[Any, float]]:
            seen = []
            async with Session("127.0.0.1", d.port, DEMO, INITIATOR) as a, \
                    Session("127.0.0.1", d.port, DEMO, INITIATOR + "-b") as b:
                await a.read10(0, 4096)  # each takes its power-on UA here
                await b.read10(0, 4096)
                seen.append(await asyncio.to_thread(scrape, mport))
                r = await asyncio.to_thread(d.cli, "lun", "resize", DEMO, "1", "2GiB")
                assert r.returncode == 0, r.stderr
                seen.append(await asyncio.to_thread(scrape, mport))
                await a.read10(8, 4096)  # A is told (and retries); B is not asked yet
                seen.append(await asyncio.to_thread(scrape, mport))
            return seen

        m0, m1, m2 = asyncio.run(scenario())
    assert (m0[(ua, lun())], m0[(pending, lun())]) == (2, 0)
    assert (m1[(ua, lun())], m1[(pending, lun())]) == (2, 2)
    assert (m2[(ua, lun())], m2[(pending, lun())]) == (3, 1)


def test_the_read_cache_counters_reach_the_metrics() -> None:
    """A LUN's read cache (issue 19): hits, misses, bytes, upcall invalidations, expired
    regions and readahead bytes are exported with the LUN's labels, as ``cache_status`` has
    them at the scrape."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from gluster_iscsi.backstore.cache import CachedStore, CacheLedger
    from gluster_iscsi.backstore.memory import MemoryStore
    from gluster_iscsi.server.metrics import DaemonCollector

    store = CachedStore(MemoryStore(1 << 20), 1 << 19, ledger_=CacheLedger(1 << 30))
    try:
        buf = bytearray(4096)
        store.read_into(0, memoryview(buf))  # a miss
        store.read_into(0, memoryview(buf))  # a hit
        store.invalidations, store.expired, store.readahead_bytes = 3, 5, 7 * 4096
        store.error_drops = 2
        lu = SimpleNamespace(store=store, alua=None)
        daemon = SimpleNamespace(
            lun_stats=lambda: [], group=None, tpgt=1, session_table=[], logins={},
            login_refusals={}, budget=SimpleNamespace(used=0, limit=1), connections=[],
            loop_lag=0.0, loop_lag_max=0.0,
            registry=SimpleNamespace(targets={DEMO: SimpleNamespace(
                device=SimpleNamespace(luns={1: lu}))}))
        reg = CollectorRegistry()
        reg.register(DaemonCollector(daemon))  # type: ignore[arg-type]
        m: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for fam in text_string_to_metric_families(generate_latest(reg).decode()):
            for s in fam.samples:
                m[(s.name, tuple(sorted(s.labels.items())))] = s.value
        status = store.cache_status()
        assert m[("gluster_iscsi_lun_cache_hits_total", lun())] == status["hits"] >= 1
        assert m[("gluster_iscsi_lun_cache_misses_total", lun())] == status["misses"] >= 1
        assert m[("gluster_iscsi_lun_cache_bytes", lun())] == status["bytes"] > 0
        assert m[("gluster_iscsi_lun_cache_invalidations_total", lun())] == 3
        assert m[("gluster_iscsi_lun_cache_expired_total", lun())] == 5
        assert m[("gluster_iscsi_lun_cache_readahead_bytes_total", lun())] == 7 * 4096
        assert m[("gluster_iscsi_lun_cache_error_drops_total", lun())] == 2
        assert ("gluster_iscsi_cache_target_bytes", ()) not in m  # no governor: not exported
        # the memory target, with a governor on the same ledger (server/memory.py)
        from gluster_iscsi.backstore.cachetarget import Readings
        from gluster_iscsi.server.memory import MemoryGovernor

        led = store._ledger
        held = led.used
        daemon.memory_governor = MemoryGovernor(  # type: ignore[attr-defined]
            led, readings=lambda: Readings(64 << 30, 1 << 30, held), caches=lambda: [store])
        m = {}
        for fam in text_string_to_metric_families(generate_latest(reg).decode()):
            for s in fam.samples:
                m[(s.name, tuple(sorted(s.labels.items())))] = s.value
        assert m[("gluster_iscsi_cache_target_bytes", ())] == led.limit == 32 << 20  # the floor
        assert m[("gluster_iscsi_cache_held_bytes", ())] == held > 0
        daemon.memory_governor.shrinks["pressure"] = 2  # type: ignore[attr-defined]
        m = {}
        for fam in text_string_to_metric_families(generate_latest(reg).decode()):
            for s in fam.samples:
                m[(s.name, tuple(sorted(s.labels.items())))] = s.value
        assert m[("gluster_iscsi_cache_shrinks_total", (("reason", "pressure"),))] == 2
    finally:
        store.close()
