"""The Grafana dashboard in docs/grafana loads as JSON with the layout Grafana imports, and every
query uses only metrics the daemon exports (issue 18). Grafana's own validator is not on PyPI
or in Debian here, so this checks what a wrong name or a broken file would break."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gluster_iscsi.server.metrics import METRICS, exposed_names

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "gluster-iscsi.json"
NAME = re.compile(r"\b(gluster_iscsi_[a-z_]+)\b")


def exprs(dash: dict) -> list[str]:
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return out


def test_the_dashboard_loads_and_queries_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys() and p["targets"]
        assert all(t["refId"] and t["expr"] for t in p["targets"])
    exported = exposed_names()
    used = set()
    for e in exprs(dash):
        names = NAME.findall(e)
        assert names, e
        unknown = [n for n in names if n not in exported]
        assert not unknown, f"{unknown} in {e!r}: not exported by the daemon"
        used |= set(names)
    # every metric has a panel (a name added to the daemon gets a place on the board)
    missing = [m for m in METRICS if not any(u == m or u.startswith(m + "_") for u in used)]
    assert not missing, missing


def test_the_check_finds_a_wrong_name() -> None:
    e = 'rate(gluster_iscsi_lun_reads_total[1m])'
    assert [n for n in NAME.findall(e) if n not in exposed_names()] == ["gluster_iscsi_lun_reads_total"]
