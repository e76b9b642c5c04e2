"""A real Prometheus server (Debian's ``prometheus``) scrapes ``serve --metrics-listen`` every
second while a real initiator reads at a known rate; PromQL's rate of the per-LUN read counter
is the rate the client produced, within 10% (issue 18). Loopback only; Prometheus's storage is
in the test's tmp directory."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ..integration.pyinitiator import Session
from .harness import Serve, free_port

pytestmark = pytest.mark.integration

DEMO = "iqn.2026-11.org.gluster-iscsi:demo"
RATE = 100.0  # reads per second the client paces itself to
SECONDS = 10.0


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        msg = "the prometheus server is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def query(pport: int, promql: str, at: float) -> list[dict[str, Any]]:
    qs = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"http://127.0.0.1:{pport}/api/v1/query?{qs}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


async def paced_reads(port: int) -> tuple[int, float, float]:
    """Reads at RATE per second for SECONDS: (reads, wall time of the first, of the last)."""
    async with Session("127.0.0.1", port, DEMO, "iqn.2026-11.test:prometheus") as s:
        await s.read10(0, 4096)  # the power-on unit attention is reported (and retried) here
        n = int(RATE * SECONDS)
        start = time.monotonic()
        first = time.time()
        for i in range(n):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await s.read10(8 * (i % 1000), 4096)
        return n, first, time.time()


def test_a_real_prometheus_sees_the_read_rate_the_client_produced(tmp_path: Path) -> None:
    exe = prometheus_binary()
    mport, pport = free_port(), free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: gluster-iscsi\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n"
    )
    with Serve(tmp_path / "gw", extra=("--demo", "--metrics-listen", f"127.0.0.1:{mport}")) as d:
        log = open(tmp_path / "prometheus.log", "wb")
        prom = subprocess.Popen(
            [exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{pport}"],
            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            up = 'up{job="gluster-iscsi"}'
            wait_for("Prometheus to scrape the daemon",
                     lambda: any(r["value"][1] == "1" for r in query(pport, up, time.time())))
            n, first, last = asyncio.run(paced_reads(d.port))
            client_rate = (n - 1) / (last - first)
            time.sleep(2.5)  # the scrapes after the last read are in
            sel = f'gluster_iscsi_lun_read_commands_total{{target="{DEMO}",lun="1"}}'
            # A window inside the load: from 2 s after its start to 1 s before its end.
            at = last - 1.0
            window = int(at - first - 2.0)
            [result] = query(pport, f"rate({sel}[{window}s])", at)
            seen = float(result["value"][1])
            assert abs(seen - client_rate) <= 0.10 * client_rate, (seen, client_rate)
            # and the bytes: 4 KiB per read
            [b] = query(pport, f'rate(gluster_iscsi_lun_read_bytes_total{{target="{DEMO}",lun="1"}}'
                               f"[{window}s])", at)
            assert abs(float(b["value"][1]) - 4096 * client_rate) <= 0.10 * 4096 * client_rate
        finally:
            prom.terminate()
            try:
                prom.wait(30)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            log.close()
    print(f"client {client_rate:.1f} reads/s, Prometheus rate() {seen:.1f} reads/s "
          f"over {window}s")
