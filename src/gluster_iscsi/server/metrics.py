"""Prometheus metrics of a running daemon (``serve --metrics-listen HOST:PORT``).

The counters are plain ints kept where things happen (``runner.LuStats`` per LU, the
connection driver's per-connection counts, ``Daemon.logins``/``login_refusals``, the event
loop's lag): nothing of ``prometheus_client`` is on the per-command path. At scrape time,
:class:`DaemonCollector` reads them into metric families, on the event loop's thread (the
HTTP endpoint is an asyncio server of the daemon's loop, so nothing is read while the loop
changes it).

Metric names and labels are listed in docs/OPERATIONS.md ("Metrics"); :data:`METRIC_NAMES`
is the list the Grafana dashboard's test checks against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger(__name__)

#: Sense keys (SPC-4 4.5.6), the ``sense_key`` label of ``gluster_iscsi_lun_errors_total``.
SENSE_KEYS = (
    "no_sense", "recovered_error", "not_ready", "medium_error", "hardware_error",
    "illegal_request", "unit_attention", "data_protect", "blank_check", "vendor_specific",
    "copy_aborted", "aborted_command", "reserved_0c", "volume_overflow", "miscompare",
    "completed",
)

P = "gluster_iscsi_"

#: name (as exposed, without the _total/_bucket suffixes) -> (type, labels, help)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    P + "lun_read_commands": ("counter", ("target", "lun"), "READ commands ended"),
    P + "lun_write_commands": ("counter", ("target", "lun"), "WRITE (and WRITE SAME, COMPARE AND WRITE, "
                                                             "WRITE AND VERIFY) commands ended"),
    P + "lun_other_commands": ("counter", ("target", "lun"), "Other commands ended"),
    P + "lun_read_bytes": ("counter", ("target", "lun"), "Bytes read by commands that ended GOOD"),
    P + "lun_written_bytes": ("counter", ("target", "lun"), "Bytes written by commands that ended GOOD"),
    P + "lun_errors": ("counter", ("target", "lun", "sense_key"), "Commands ended in CHECK CONDITION, "
                                                                  "by sense key"),
    P + "lun_busy": ("counter", ("target", "lun"), "Commands ended BUSY, TASK SET FULL or "
                                                   "RESERVATION CONFLICT"),
    P + "lun_unit_attentions": ("counter", ("target", "lun"), "Unit attentions reported"),
    P + "lun_io_timeouts": ("counter", ("target", "lun"), "Store calls that exceeded the I/O timeout"),
    P + "lun_write_behind_pending_bytes": ("gauge", ("target", "lun"), "Bytes of writes acknowledged "
                                                                       "early (write-behind) not yet "
                                                                       "on the store"),
    P + "lun_write_behind_writes": ("counter", ("target", "lun"), "Writes acknowledged early "
                                                                  "(write-behind; durable at the "
                                                                  "next SYNCHRONIZE CACHE or FUA)"),
    P + "lun_write_behind_deferred_errors": ("counter", ("target", "lun"), "Write-behind writes that "
                                                                           "failed or timed out at "
                                                                           "the store (reported by "
                                                                           "the next SYNCHRONIZE "
                                                                           "CACHE or FUA write)"),
    P + "lun_unit_attentions_pending": ("gauge", ("target", "lun"), "Unit attentions queued for the "
                                                                    "LU's initiator ports, not reported yet"),
    P + "lun_store_errors": ("counter", ("target", "lun", "errno"), "Store calls that failed, by errno "
                                                                    "(gfapi LUNs; the store has no "
                                                                    "reconnect path of its own to count)"),
    P + "lun_cache_hits": ("counter", ("target", "lun"), "Reads answered from the gfapi read cache"),
    P + "lun_cache_misses": ("counter", ("target", "lun"), "Reads through the gfapi read cache that "
                                                           "went to the bricks"),
    P + "lun_cache_bytes": ("gauge", ("target", "lun"), "Bytes the gfapi read cache holds"),
    P + "lun_cache_invalidations": ("counter", ("target", "lun"), "Whole-cache drops of the gfapi "
                                                                  "read cache by an upcall (another "
                                                                  "client wrote the file)"),
    P + "lun_cache_expired": ("counter", ("target", "lun"), "Regions the gfapi read cache dropped "
                                                            "because they went untouched at the "
                                                            "bricks past the upcall window"),
    P + "lun_cache_error_drops": ("counter", ("target", "lun"), "Whole-cache drops of the gfapi read "
                                                                "cache because a store call failed "
                                                                "(upcalls may have been lost)"),
    P + "lun_cache_readahead_bytes": ("counter", ("target", "lun"), "Bytes the gfapi read cache "
                                                                    "read ahead for sequential "
                                                                    "streams"),
    P + "lun_alua_state": ("gauge", ("target", "lun"), "This gateway's asymmetric access state for "
                                                       "the LU (SPC-4 codes: 0 active/optimized, 1 "
                                                       "active/non-optimized, 2 standby, 3 "
                                                       "unavailable, 15 transitioning)"),
    P + "lun_owned": ("gauge", ("target", "lun"), "1 if this gateway owns the group LU (holds its "
                                                  "lease), 0 if another does; absent outside a group"),
    P + "group_gateway_up": ("gauge", ("gateway", "number"), "1 while a gateway of the group beats "
                                                             "(this gateway's view)"),
    P + "group_gateway_beat_age_seconds": ("gauge", ("gateway", "number"), "Seconds since this "
                                                                           "gateway saw that "
                                                                           "gateway's heartbeat "
                                                                           "change"),
    P + "lun_commands_in_flight": ("gauge", ("target", "lun"), "Commands executing now"),
    P + "lun_command_duration_seconds": ("histogram", ("target", "lun"),
                                         "Time from a command's start to its end in the daemon"),
    P + "target_sessions": ("gauge", ("target",), "Normal sessions logged in now"),
    P + "target_logins": ("counter", ("target",), "Logins accepted"),
    P + "target_login_refusals": ("counter", ("target", "reason"), "Logins refused or timed out, "
                                                                   "by reason"),
    P + "cache_target_bytes": ("gauge", (), "What the gfapi read caches may hold together now "
                                             "(the memory target)"),
    P + "cache_held_bytes": ("gauge", (), "What the gfapi read caches hold together now"),
    P + "cache_shrinks": ("counter", ("reason",), "Times the read caches were shrunk to the memory "
                                                  "target, by reason (memory, cgroup, pressure; target: the target fell for another reason)"),
    P + "memory_budget_used_bytes": ("gauge", (), "Bytes of the memory budget in use"),
    P + "memory_budget_limit_bytes": ("gauge", (), "The memory budget"),
    P + "connections": ("gauge", (), "Connections now"),
    P + "connections_prelogin": ("gauge", (), "Connections now that have not completed a login"),
    P + "event_loop_lag_seconds": ("gauge", (), "How late the event loop's 1 s timer ran last time"),
    P + "event_loop_lag_max_seconds": ("gauge", (), "The most the event loop's timer ran late"),
}


def exposed_names() -> set[str]:
    """Every sample name the daemon exports (with the suffixes Prometheus sees)."""
    out: set[str] = set()
    for name, (kind, _, _) in METRICS.items():
        if kind == "counter":
            out |= {name + "_total", name + "_created"}
        elif kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        else:
            out.add(name)
    return out


class DaemonCollector(Collector):
    """Reads the daemon's counters into metric families at each scrape."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        fam: dict[str, Any] = {}
        for name, (kind, labels, text) in METRICS.items():
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "histogram": HistogramMetricFamily}[kind]
            fam[name] = cls(name, text, labels=list(labels))
        for s in d.lun_stats():
            lv = [s["target"], str(s["lun"])]
            fam[P + "lun_read_commands"].add_metric(lv, s["reads"])
            fam[P + "lun_write_commands"].add_metric(lv, s["writes"])
            fam[P + "lun_other_commands"].add_metric(lv, s["others"])
            fam[P + "lun_read_bytes"].add_metric(lv, s["read_bytes"])
            fam[P + "lun_written_bytes"].add_metric(lv, s["write_bytes"])
            for key, n in s["errors"].items():
                fam[P + "lun_errors"].add_metric(lv + [key], n)
            fam[P + "lun_busy"].add_metric(lv, s["busy"])
            fam[P + "lun_unit_attentions"].add_metric(lv, s["unit_attentions"])
            fam[P + "lun_io_timeouts"].add_metric(lv, s["io_timeouts"])
            fam[P + "lun_commands_in_flight"].add_metric(lv, s["in_flight"])
            fam[P + "lun_write_behind_pending_bytes"].add_metric(lv, s["write_behind_pending_bytes"])
            fam[P + "lun_write_behind_writes"].add_metric(lv, s["write_behind_writes"])
            fam[P + "lun_write_behind_deferred_errors"].add_metric(
                lv, s["write_behind_deferred_errors"])
            lat = s["latency"]
            buckets = [(repr(le) if le is not None else "+Inf", n) for le, n in lat["buckets"]]
            fam[P + "lun_command_duration_seconds"].add_metric(lv, buckets, lat["sum_seconds"])
        for name, target in sorted(d.registry.targets.items()):
            for lun, lu in sorted(getattr(target.device, "luns", {}).items()):
                lv = [name, str(lun)]
                # queued and not yet reported (lu.queue_ua*/pop_ua); reported ones are
                # lun_unit_attentions (CHECK CONDITION with UNIT ATTENTION)
                pending = getattr(lu, "_ua", None) or {}
                fam[P + "lun_unit_attentions_pending"].add_metric(
                    lv, sum(len(q) for q in list(pending.values())))
                alua = getattr(lu, "alua", None)
                if alua is not None:
                    state = alua.state_of(d.tpgt) if alua.restricted else 0
                    fam[P + "lun_alua_state"].add_metric(lv, int(state))
                member = d.group
                glu = member.handle(lu) if member is not None else None
                if member is not None and glu is not None:
                    fam[P + "lun_owned"].add_metric(
                        lv, 1 if glu.lease.owner_name() == member.gateway else 0)
                store = lu.store
                errors = getattr(store, "store_errors", None)
                if errors is not None:
                    for code, n in errors().items():
                        fam[P + "lun_store_errors"].add_metric(lv + [code], n)
                cache = getattr(store, "cache_status", None)
                if cache is not None:
                    c = cache()
                    fam[P + "lun_cache_hits"].add_metric(lv, c["hits"])
                    fam[P + "lun_cache_misses"].add_metric(lv, c["misses"])
                    fam[P + "lun_cache_bytes"].add_metric(lv, c["bytes"])
                    fam[P + "lun_cache_invalidations"].add_metric(lv, c["invalidations"])
                    fam[P + "lun_cache_expired"].add_metric(lv, c["expired"])
                    fam[P + "lun_cache_readahead_bytes"].add_metric(lv, c["readahead_bytes"])
                    fam[P + "lun_cache_error_drops"].add_metric(lv, c["error_drops"])
        sessions: dict[str, int] = {}
        for name in d.registry.targets:
            sessions[name] = 0
        for sess in d.session_table:
            if sess.session_type == "Normal" and sess.target is not None:
                sessions[sess.target.name] = sessions.get(sess.target.name, 0) + 1
        for name, n in sessions.items():
            fam[P + "target_sessions"].add_metric([name], n)
        for name, n in d.logins.items():
            fam[P + "target_logins"].add_metric([name], n)
        for (name, reason), n in d.login_refusals.items():
            fam[P + "target_login_refusals"].add_metric([name, reason], n)
        if d.group is not None:
            for gw, g in sorted(d.group.status()["gateways"].items()):
                gv = [gw, str(g["number"])]
                fam[P + "group_gateway_up"].add_metric(gv, 1 if g["live"] else 0)
                fam[P + "group_gateway_beat_age_seconds"].add_metric(gv, float(g["age"]))
        gov = getattr(d, "memory_governor", None)  # (a daemon made without serve: none)
        if gov is not None:
            st = gov.status()
            fam[P + "cache_target_bytes"].add_metric([], st["target"] or 0)
            fam[P + "cache_held_bytes"].add_metric([], st["held"])
            for reason, n in sorted(st["shrinks"].items()):
                fam[P + "cache_shrinks"].add_metric([reason], n)
        fam[P + "memory_budget_used_bytes"].add_metric([], d.budget.used)
        fam[P + "memory_budget_limit_bytes"].add_metric([], d.budget.limit)
        conns = list(d.connections)
        fam[P + "connections"].add_metric([], len(conns))
        fam[P + "connections_prelogin"].add_metric(
            [], sum(1 for c in conns if c.conn is None or c.conn.session is None))
        fam[P + "event_loop_lag_seconds"].add_metric([], d.loop_lag)
        fam[P + "event_loop_lag_max_seconds"].add_metric([], d.loop_lag_max)
        yield from fam.values()


def registry_of(daemon: Daemon) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry


_NOT_FOUND = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 25\r\n\r\nonly /metrics is served\r\n"


async def serve_metrics(daemon: Daemon, host: str, port: int) -> asyncio.Server:
    """An HTTP endpoint on the daemon's loop: ``GET /metrics`` answers the Prometheus text
    format (``prometheus_client.generate_latest``); anything else 404. Raises OSError if it
    cannot listen."""
    registry = registry_of(daemon)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
            if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and path in (b"/metrics", b"/"):
                body = generate_latest(registry)
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                             + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
                if parts[0] == b"GET":
                    writer.write(body)
            else:
                writer.write(_NOT_FOUND)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:  # a bug in a view costs this scrape only
            log.exception("metrics scrape failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
