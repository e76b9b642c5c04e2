"""``gluster-iscsi serve``: run the daemon in the foreground."""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..server.scheduling import CHOICES as SCHED_CHOICES

if TYPE_CHECKING:
    from ..control.api import ControlServer
    from ..control.reconcile import Reconciler
    from ..server.daemon import Daemon

DEFAULT_STATE_DIR = "/var/lib/gluster-iscsi"
DEFAULT_PORTAL = "127.0.0.1:3260"

log = logging.getLogger("gluster_iscsi")

#: The smallest --memory-budget: two commands of the largest size the iSCSI layer buffers
#: (32 MiB), so one session's command always fits beside another's.
MIN_MEMORY_BUDGET = 64 << 20


#: The largest --write-behind window of a LUN (what a crash of the daemon may lose of
#: acknowledged, unflushed writes; Gluster's own write-behind-window-size tops out at 1 GiB,
#: but a window beyond a few MiB buys no latency, only more to lose).
MAX_WRITE_BEHIND = 64 << 20


def _memory_budget(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ..backstore.size import parse_size

    try:
        n = parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if n < MIN_MEMORY_BUDGET:
        raise click.BadParameter(f"{value} is below the minimum of 64MiB")
    return n


def _cache_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ..backstore.cache import parse_capacity

    try:
        return parse_capacity(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _cache_total(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ..backstore.size import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _write_behind(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ..backstore.size import parse_size

    try:
        n = parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if n > MAX_WRITE_BEHIND:
        raise click.BadParameter(f"{value} is above the maximum of 64MiB")
    return n


def _write_piece(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ..backstore.gfapi.store import set_buffered_write_piece
    from ..backstore.size import parse_size

    try:
        n = parse_size(value)
        set_buffered_write_piece(n)  # (checks it; serve sets it again, with the rest)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return n


def _xlator_options(ctx: click.Context, param: click.Parameter,
                    value: tuple[str, ...]) -> list[tuple[str, str, str]]:
    out = []
    for text in value:
        xlator, sep, assignment = text.partition(":")
        key, eq, setting = assignment.partition("=")
        if not (sep and eq and xlator and key and setting):
            raise click.BadParameter(f"{text!r}: write XLATOR:KEY=VALUE, e.g. "
                                     "'*-io-threads:pass-through=false'")
        out.append((xlator, key, setting))
    return out


class BadAddress(ValueError):
    """A HOST[:PORT] that cannot be listened on; the message says why and how to write it."""


def parse_hostport(text: str, default_port: int = 3260, *, resolve: bool = True) -> tuple[str, int]:
    """'host', 'host:port', '[v6]' or '[v6]:port' -> (host, port); ':port' is every IPv4 address.

    Raises :class:`BadAddress` with a message fit for the user: a port that is not a number
    from 1 to 65535, an IPv6 address without brackets (``::1:3260`` is itself an address, so
    the port could not be told apart), a host name that does not resolve (with ``resolve``).
    """
    raw = text
    text = text.strip()
    if not text:
        raise BadAddress("empty address: use HOST:PORT, e.g. 127.0.0.1:3260")
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise BadAddress(f"{raw!r}: missing ']' after the IPv6 address, e.g. [::1]:3260")
        if rest:
            if not rest.startswith(":"):
                raise BadAddress(f"{raw!r}: expected ':PORT' after ']', e.g. [::1]:3260")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise BadAddress(f"{raw!r}: {host!r} in brackets is not an IPv6 address") from None
    elif text.count(":") > 1:
        raise BadAddress(
            f"{raw!r}: write an IPv6 address in brackets, e.g. [::1]:3260 or [::]:3260"
        )
    elif ":" in text:
        host, port_text = text.split(":")
        host = host or "0.0.0.0"
    else:
        host = text
    port = default_port
    if port_text is not None:
        if not port_text.isdigit():
            raise BadAddress(f"{raw!r}: the port {port_text!r} is not a number (1 to 65535)")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise BadAddress(f"{raw!r}: the port must be from 1 to 65535, not {port}")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?", host):
            raise BadAddress(f"{raw!r}: {host!r} is not an IP address or host name") from None
        if resolve:
            try:
                socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise BadAddress(f"{raw!r}: cannot resolve host name {host!r} ({exc})") from None
    return host, port


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _state_dir(ctx: click.Context, given: str | None) -> Path:
    if given:
        return Path(given)
    parent = ctx.find_root().params.get("state_dir") if ctx.parent else None
    return Path(parent or os.environ.get("GLUSTER_ISCSI_STATE_DIR") or DEFAULT_STATE_DIR)


#: Exit status of ``serve`` (the same numbers as the other commands; see ``serve --help``).
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_INVALID = 6
EXIT_BUSY = 7
EXIT_UNAVAILABLE = 9
#: Stopped, but a LUN was closed with a write acknowledged early (write-behind) that failed
#: and was never reported to its initiator: data may be lost (serve only).
EXIT_WRITES_LOST = 10


class StartError(Exception):
    """``serve`` cannot start: one message, an optional hint, and the exit status."""

    def __init__(self, code: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


def _say(message: str, hint: str | None = None) -> None:
    click.echo(f"gluster-iscsi serve: error: {message}", err=True)
    if hint:
        click.echo(f"gluster-iscsi serve: hint: {hint}", err=True)


SERVE_HELP = f"""Run the iSCSI target daemon in the foreground.

It listens on --listen (default {DEFAULT_PORTAL}, loopback only, or the saved portals) and
exports the saved configuration. With --demo it also exports a demo target whose LUN is open
to every initiator without CHAP: on loopback unless --listen says otherwise.

\b
Exit status:
  0  stopped (SIGTERM, SIGINT)
  1  internal error
  2  the saved configuration cannot be loaded or applied
  6  invalid --listen, --advertise or --state-dir
  7  another daemon already runs with this state directory
  9  cannot listen on an address (port in use, address not local)
  10 stopped, but a LUN was closed (stop, lun delete, a config change)
     with a write acknowledged early (--write-behind) that failed at the
     bricks and was never reported to its initiator (no SYNCHRONIZE CACHE
     or FUA write came after it): data may be lost; the log names the LUN
"""


@click.command(help=SERVE_HELP)
@click.option("--listen", "listens", multiple=True, metavar="HOST:PORT",
              help=f"Portal to listen on (repeatable): 127.0.0.1:3260, [::1]:3260, 0.0.0.0:3260 "
                   f"(every IPv4 address). Default {DEFAULT_PORTAL}, or the saved portals.")
@click.option("--advertise", metavar="HOST",
              help="Address SendTargets reports instead of the listening host (NAT, QEMU guests); "
                   "each portal keeps its port. Without it a wildcard portal reports the address "
                   "the initiator connected to.")
@click.option("--state-dir", "state_dir", metavar="DIR",
              help=f"Config, control socket and demo LUN live here "
                   f"(default: $GLUSTER_ISCSI_STATE_DIR or {DEFAULT_STATE_DIR}).")
@click.option("--demo", is_flag=True,
              help="Also serve the embedded default: a target with LUN 1 on a 1 GiB sparse file "
                   "in the state directory, open to any initiator without CHAP. Listens on "
                   f"{DEFAULT_PORTAL} (loopback) unless --listen says otherwise.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Least severe log messages to print (on stderr).")
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]),
              help="text: a line per message; json: an object per line with time, level, logger, "
                   "message and fields such as initiator, address, target, tsih, reason. Under "
                   "systemd with stderr to the journal, lines carry no time of their own.")
@click.option("--nop-interval", default=10.0, show_default=True, type=float,
              help="Seconds of silence before the target pings with NOP-In (0: never).")
@click.option("--io-timeout", default=60.0, show_default=True, type=float,
              help="Seconds a backing-store call may take before its command fails with NOT "
                   "READY (keep it above Gluster's 42 s ping-timeout; 0: no limit).")
@click.option("--poll-usecs", default=100.0, show_default=True,
              type=click.FloatRange(0, 100000),
              help="Microseconds to poll for the next request after answering one, before the "
                   "event loop sleeps: lower latency at queue depth 1 for a little CPU (0: off).")
@click.option("--poll-store-usecs", default=400.0, show_default=True,
              type=click.FloatRange(0, 100000),
              help="Microseconds that poll goes on when the request it received started a "
                   "libgfapi call (a gluster:// read at queue depth 1 that missed the cache), so "
                   "the CPU is awake when the call completes: cold 4 KiB reads at QD1 1.06-1.46x "
                   "on a 2-vCPU VM, for CPU that was idle. It stops by itself while calls take longer "
                   "(0: off; nothing without --poll-usecs).")
@click.option("--gfapi-sched-policy", "gfapi_sched", default="batch", show_default=True,
              type=click.Choice(SCHED_CHOICES),
              help="batch: run libgfapi's event threads (glfs_epoll*) under SCHED_BATCH, so "
                   "one a brick's reply wakes waits for the running thread to block instead of "
                   "preempting it, and then finds more replies: fewer context switches a "
                   "command on gluster:// LUNs (cold 4 KiB reads at QD32 1.14-1.38x, 4 KiB "
                   "writes at QD32 1.06-1.15x). A daemon started under another policy (chrt) "
                   "is left as it is. "
                   "keep: leave them as started.")
@click.option("--uvloop/--no-uvloop", default=True, show_default=True,
              help="Use uvloop's event loop when it is installed.")
@click.option("--io-uring/--no-io-uring", "io_uring", default=True, show_default=True,
              help="Read and write LUNs on FUSE files (a Gluster FUSE mount) through io_uring "
                   "when a command is alone on its connection, instead of worker threads.")
@click.option("--gfapi-async/--no-gfapi-async", "gfapi_async", default=True, show_default=True,
              help="Read and write gluster:// LUNs with libgfapi's asynchronous calls, completed "
                   "on the event loop, instead of worker threads (fewer thread hand-offs a "
                   "command; needs the compiled build, else worker threads).")
@click.option("--max-connections", type=click.IntRange(1), metavar="N",
              help="Connections in all, logged in or not. Default: from the descriptor limit "
                   "(ulimit -n), two per connection, an eighth (at least 64) kept in reserve "
                   "for the stores and the control socket.")
@click.option("--max-connections-per-host", type=click.IntRange(1), metavar="N",
              help="Connections from one source address, logged in or not: one host can never "
                   "take them all. At the cap, that address's own least active connection not "
                   "logged in is closed to make room, else the new one is refused. Default: a "
                   "quarter of --max-connections, at least 64, always fewer than all of them.")
@click.option("--max-prelogin", type=click.IntRange(1), metavar="N",
              help="Connections that have not completed a login. When full, one of them is closed "
                   "to make room: one that never sent a valid Login Request first, from the "
                   "address with the most, then the least recently active. Default: half of "
                   "--max-connections.")
@click.option("--max-prelogin-per-host", type=click.IntRange(1), metavar="N",
              help="Connections not logged in from one source address (same rule). "
                   "Default: a quarter of --max-prelogin, at least 256 (or all of it).")
@click.option("--memory-budget", metavar="SIZE", callback=_memory_budget,
              help="Memory for commands' data, all sessions together (read and write buffers, "
                   "responses not yet sent), e.g. 1GiB; beyond it commands get TASK SET FULL "
                   "or BUSY. Default: an eighth of the machine's memory, 256MiB to 4GiB.")
@click.option("--gfapi-cache", metavar="SIZE|auto", callback=_cache_size,
              help="The most the read cache of each LUN on a gluster:// backing holds (a LUN's "
                   "own `cache` option wins); 0 disables it. Default: auto, the LUN's size: "
                   "all LUNs share the memory target (--gfapi-cache-total).")
@click.option("--gfapi-cache-total", metavar="SIZE", callback=_cache_total,
              help="What the read caches of all gfapi LUNs hold together, fixed. Default: "
                   "follow the machine, checked every second: up to half of its memory (0.8 "
                   "of a cgroup's limit under one, minus what else the cgroup holds), keeping "
                   "MemAvailable above 1/32 of RAM + 256MiB, given back at once under memory "
                   "pressure.")
@click.option("--write-behind", metavar="SIZE", callback=_write_behind,
              help="Write-behind window of each LUN on a gluster:// backing outside a gateway "
                   "group, while its write cache is on (WCE=1): plain writes are acknowledged "
                   "before they reach the bricks, up to SIZE bytes (and 64 writes) at once, "
                   "durable at the next SYNCHRONIZE CACHE or FUA write, which also reports a "
                   "write that failed. 0 disables it. Default: 1MiB (Gluster's own "
                   "write-behind-window-size).")
@click.option("--gfapi-xlator-option", "xlator_options", metavar="XLATOR:KEY=VALUE",
              multiple=True, callback=_xlator_options,
              help="A translator option of this daemon's own Gluster clients (not the volume's), "
                   "e.g. '*-io-threads:pass-through=true' (read-heavy LUNs: no hop through the "
                   "client-side io-threads, less CPU per read, slower 4 KiB writes) or "
                   "'*-write-behind:cache-size=4MB' (write-heavy LUNs: a larger window than "
                   "the volume's 1MB, cheaper random writes, slightly slower cold reads); "
                   "repeatable. "
                   "A value a translator refuses makes the LUN fail to open. Default: "
                   "'*-io-threads:thread-count=1' when the daemon may run on two CPUs or more "
                   "(one client-side io-thread, where the volume has them: the event loop is "
                   "their only caller; give '*-io-threads:thread-count=32' for the volume's "
                   "own), none on one CPU.")
@click.option("--gfapi-write-piece", metavar="SIZE", callback=_write_piece,
              help="Hand the bricks a buffered write to a gluster:// backing in pieces of at "
                   "most SIZE (a multiple of 4KiB; a FUSE mount sends 128KiB): 4 KiB "
                   "writes later into a range filled with larger writes then cost the bricks "
                   "less CPU (their page cache holds it in smaller folios), large sequential "
                   "writes cost more. 0: whole writes. Default: 256KiB (against tgt on the "
                   "FUSE file: 256 KiB sequential writes 1.30x instead of 0.96x with 128KiB, "
                   "4K random writes after them the same; 0 made those 0.80x).")
@click.option("--metrics-listen", "metrics_listen", metavar="HOST:PORT",
              help="Serve Prometheus metrics (text format, GET /metrics) on this address, e.g. "
                   "127.0.0.1:9283: per LUN commands, bytes, errors by sense key, latency, I/O "
                   "timeouts; per target sessions and logins; memory budget, connections, event "
                   "loop lag (docs/OPERATIONS.md lists them). Off by default.")
@click.pass_context
def serve(ctx: click.Context, listens: tuple[str, ...], advertise: str | None, state_dir: str | None,
          demo: bool, log_level: str, log_format: str, nop_interval: float, io_timeout: float, poll_usecs: float,
          poll_store_usecs: float, uvloop: bool, io_uring: bool, gfapi_async: bool, max_connections: int | None,
          max_connections_per_host: int | None, max_prelogin: int | None,
          max_prelogin_per_host: int | None, memory_budget: int | None,
          gfapi_cache: int | None, gfapi_cache_total: int | None, metrics_listen: str | None = None,
          xlator_options: list[tuple[str, str, str]] | None = None,
          write_behind: int | None = None, gfapi_write_piece: int | None = None,
          gfapi_sched: str = "batch") -> None:
    """Run the iSCSI target daemon in the foreground."""
    from ..backstore.gfapi import store as gfapi_store
    from ..logs import configure

    gfapi_store.set_client_xlator_options(xlator_options or [])
    gfapi_store.set_buffered_write_piece(gfapi_store.DEFAULT_WRITE_PIECE
                                         if gfapi_write_piece is None else gfapi_write_piece)

    configure(getattr(logging, log_level.upper()), log_format)
    sdir = _state_dir(ctx, state_dir)
    try:
        portals = [parse_hostport(p) for p in listens]
        metrics = parse_hostport(metrics_listen, 9283) if metrics_listen is not None else None
        if advertise is not None:
            _check_advertise(advertise)
        _check_state_dir(sdir)
    except BadAddress as exc:
        _say(str(exc), "e.g. --listen 127.0.0.1:3260 (loopback), --listen [::1]:3260, "
                       "--listen 0.0.0.0:3260 (every IPv4 address)")
        sys.exit(EXIT_INVALID)
    except StartError as exc:
        _say(exc.message, exc.hint)
        sys.exit(exc.code)
    runner: Any = asyncio.run
    if uvloop:
        try:
            import uvloop as _uvloop

            runner = _uvloop.run
        except ImportError:
            pass
    try:
        code = runner(_serve(sdir, portals, advertise, demo, nop_interval, io_timeout, poll_usecs,
                             poll_store_usecs,
                             io_uring, {"max_connections": max_connections,
                                        "max_connections_per_host": max_connections_per_host,
                                        "max_prelogin": max_prelogin,
                                        "max_prelogin_per_host": max_prelogin_per_host,
                                        "memory_budget": memory_budget,
                                        "gfapi_cache": gfapi_cache,
                                        "gfapi_cache_total": gfapi_cache_total,
                                        "write_behind": write_behind,
                                        "gfapi_async": int(gfapi_async)}, metrics,
                             gfapi_sched))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def _write_behind_or_default(value: int | None) -> int:
    """``--write-behind`` as given, or its default (1 MiB)."""
    from ..server.runner import WRITE_BEHIND_DEFAULT

    return WRITE_BEHIND_DEFAULT if value is None else value


def _check_advertise(advertise: str) -> None:
    """--advertise is HOST or HOST:PORT (what initiators are told, so it is not resolved)."""
    text = advertise.strip()
    if not text or " " in text:
        raise BadAddress(f"--advertise {advertise!r}: give HOST or HOST:PORT")
    if text.count(":") > 1 and not text.startswith("["):
        raise BadAddress(f"--advertise {advertise!r}: write an IPv6 address in brackets, "
                         "e.g. [2001:db8::1]")
    parse_hostport(text, resolve=False)


def _check_state_dir(path: Path) -> None:
    """The state directory must be (or become) a directory this process can write."""
    hint = "give a writable directory with --state-dir DIR or $GLUSTER_ISCSI_STATE_DIR"
    if path.exists() and not path.is_dir():
        raise StartError(EXIT_INVALID, f"the state directory {path} is not a directory", hint)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartError(EXIT_INVALID, f"cannot create the state directory {path}: "
                                       f"{exc.strerror or exc}", hint) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartError(EXIT_INVALID, f"the state directory {path} is not writable", hint)


#: The descriptor limit the daemon raises its soft limit to (if the hard limit allows): the
#: connection caps are sized from it (server/admission.py), and a login storm of a few
#: thousand initiators needs two descriptors each.
NOFILE_WANTED = 65536


def _raise_nofile() -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one (systemd's default soft limit of 1024
    would cap the daemon at a few hundred connections); never lowers it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, want, exc)


async def _serve(state_dir: Path, portals: list[tuple[str, int]], advertise: str | None,
                 demo: bool, nop_interval: float, io_timeout: float = 60.0,
                 poll_usecs: float = 100.0, poll_store_usecs: float = 400.0, io_uring: bool = True,
                 limits: dict[str, int | None] | None = None,
                 metrics: tuple[str, int] | None = None, gfapi_sched: str = "batch") -> int:
    """Start in this order: targets and LUNs, the control socket, the portals. A failure at
    any step undoes every earlier one (no listener, no control socket, no open store)."""
    from .. import DATA_PATH_MODULES, compiled_modules
    from ..control import config as cfgmod
    from ..control import exposure
    from ..control.api import ControlServer
    from ..server.daemon import Daemon
    from ..systemd import Notifier

    limits = limits or {}
    notifier = Notifier()
    try:
        _check_state_dir(state_dir)
    except StartError as exc:
        _say(exc.message, exc.hint)
        return exc.code
    _raise_nofile()
    compiled = compiled_modules()
    log.info("data path: %d of %d modules compiled%s", len(compiled), len(DATA_PATH_MODULES),
             "" if compiled else " (pure Python: scripts/install builds them with mypyc)")
    daemon = Daemon(state_dir, nop_interval=nop_interval, io_timeout=io_timeout,
                    poll_usecs=poll_usecs, poll_store_usecs=poll_store_usecs, io_uring=io_uring,
                    max_connections=limits.get("max_connections"), max_prelogin=limits.get("max_prelogin"),
                    max_prelogin_per_host=limits.get("max_prelogin_per_host"),
                    max_connections_per_host=limits.get("max_connections_per_host"),
                    memory_budget=limits.get("memory_budget"),
                    gfapi_async=limits.get("gfapi_async", 1) != 0,
                    write_behind=_write_behind_or_default(limits.get("write_behind")),
                    gfapi_sched=gfapi_sched)
    lim = daemon.limits
    log.info("connections: at most %d, %d per address, %d not logged in, %d of those per address",
             lim.max_connections, lim.max_connections_per_host, lim.max_prelogin,
             lim.max_prelogin_per_host)
    log.info("memory budget: %d MiB (%d MiB per session)", daemon.budget.limit >> 20,
             daemon.budget.share >> 20)
    log.info("write-behind: %s per gfapi LUN outside a group",
             f"{daemon.write_behind >> 10} KiB" if daemon.write_behind else "off")
    from ..backstore import cache as read_cache
    from ..server.daemon import malloc_trim
    from ..server.memory import MemoryGovernor

    total = limits.get("gfapi_cache_total")
    cache_ledger = read_cache.configure(daemon.budget, limits.get("gfapi_cache"), total)
    daemon.memory_governor = governor = MemoryGovernor(cache_ledger, fixed=total,
                                                       trim=malloc_trim)
    governor.start()
    lun_cap = read_cache.default_capacity()
    log.info("gfapi read cache: up to %s per LUN, %d MiB for all LUNs now (%s)",
             "the LUN's size" if lun_cap == read_cache.AUTO else f"{lun_cap >> 20} MiB",
             cache_ledger.limit >> 20,
             "fixed by --gfapi-cache-total" if total is not None else
             f"from {governor.rule.source}, followed every second; pressure trigger "
             f"{governor.pressure}")
    _ = daemon.ring  # made now, so the log and `status` say at once which file I/O runs
    control = ControlServer(daemon)
    demo_image = state_dir / "demo-lun1.img"
    made_image = demo and not demo_image.exists()
    try:
        cfg = await _start(state_dir, daemon, control, cfgmod, portals, advertise, demo)
    except StartError as exc:
        _say(exc.message, exc.hint)
        notifier.status(f"failed to start: {exc.message}")
        await control.stop()
        await daemon.stop()
        if made_image:  # a failed start leaves nothing it created behind
            demo_image.unlink(missing_ok=True)
        return exc.code
    except BaseException:
        await control.stop()
        await daemon.stop()
        raise
    metrics_server = None
    if metrics is not None:
        from ..server.metrics import serve_metrics

        try:
            metrics_server = await serve_metrics(daemon, *metrics)
        except OSError as exc:
            addr = show_address(*metrics)
            _say(f"cannot serve metrics on {addr}: {exc.strerror or exc}",
                 "pick another address with --metrics-listen HOST:PORT")
            await control.stop()
            await daemon.stop()
            return EXIT_UNAVAILABLE
        log.info("metrics on http://%s/metrics", show_address(*metrics))
    for w in exposure.exposed(cfg):
        log.warning("%s", w)
    if demo:
        _print_demo(daemon, cfgmod.DEMO_TARGET, cfgmod.config_path(state_dir))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP,
                            lambda: loop.create_task(_reload(control.reconciler, daemon, state_dir, notifier)))
    # What the daemon made to start (modules, classes, the configuration's objects: ~30,000
    # objects, kept while it runs) leaves the garbage collector's reach: a full collection
    # walked them all, 8-19 ms on this machine with every connection's commands stalled,
    # now only what came later (gc.freeze, the recipe of the gc module's docs).
    gc.collect()
    gc.freeze()
    # systemd: the saved configuration is in force and every portal listens (_start).
    notifier.ready(status_line(daemon))
    ticker = _Ticker(loop, notifier, daemon) if notifier.enabled else None
    await stop.wait()
    log.info("shutting down")
    notifier.stopping()
    if ticker is not None:
        ticker.stopping = True  # pings go on while commands drain, the STATUS stays
    if metrics_server is not None:
        metrics_server.close()
    await control.stop()
    await daemon.stop()
    if ticker is not None:
        ticker.cancel()
    notifier.close()
    lost = daemon.writes_lost()
    if lost:  # logged as it happened; said once more, last, with the exit status
        log.error("stopped with data lost: a write acknowledged early (write-behind) failed "
                  "on %s and no initiator was told (exit status %d)", ", ".join(lost),
                  EXIT_WRITES_LOST)
        return EXIT_WRITES_LOST
    return 0


def status_line(daemon: Any) -> str:
    """What ``systemctl status`` shows: "serving 3 targets, 5 LUNs on 2 portals; 4 sessions"."""
    def n(count: int, what: str) -> str:
        return f"{count} {what}{'' if count == 1 else 's'}"

    targets = list(daemon.registry.targets.values())
    luns = sum(len(getattr(t.device, "luns", None) or ()) for t in targets)
    sessions = sum(1 for s in daemon.session_table if s.session_type == "Normal")
    return (f"serving {n(len(targets), 'target')}, {n(luns, 'LUN')} on "
            f"{n(len(daemon.portals()), 'portal')}; {n(sessions, 'session')}")


class _Ticker:
    """From the event loop, so a stuck loop stops them: the watchdog pings (every half of
    $WATCHDOG_USEC) and a STATUS= line when what it says changed (at most every 10 s)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notifier: Any, daemon: Any) -> None:
        self.loop = loop
        self.notifier = notifier
        self.daemon = daemon
        wd = notifier.watchdog_interval
        self.interval = min(wd, 10.0) if wd else 10.0
        self.last = status_line(daemon)
        self.stopping = False
        self.withheld = False  # watchdog pings withheld (a stuck group beat): said once
        self.handle: asyncio.TimerHandle | None = None
        self._tick()

    def _tick(self) -> None:
        if self.notifier.watchdog_interval and self._group_alive():
            self.notifier.watchdog()
        line = self.last if self.stopping else status_line(self.daemon)
        if line != self.last:
            self.last = line
            self.notifier.status(line)
        self.handle = self.loop.call_later(self.interval, self._tick)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _group_alive(self) -> bool:
        """In a gateway group, the watchdog is fed only while the group's beats succeed or
        this gateway holds no LUN (``GroupMember.beating``): a loop that still runs while the
        beat is stuck must not keep a gateway that holds locks alive (nobody else could take
        its LUNs; systemd kills it, the bricks free them)."""
        member = getattr(self.daemon, "group", None)
        if member is None:
            return True
        alive = bool(member.beating())
        if not alive and not self.withheld:
            log.error("gateway group: no successful beat for %gs while this gateway holds "
                      "LUNs: watchdog pings withheld (systemd restarts it)",
                      member.lease_seconds)
        self.withheld = not alive
        return alive


async def _start(state_dir: Path, daemon: Daemon, control: ControlServer, cfgmod: Any,
                 portals: list[tuple[str, int]], advertise: str | None,
                 demo: bool) -> dict[str, Any]:
    """Bring the daemon up; raise StartError (the caller undoes what was started)."""
    try:
        saved = cfgmod.load(state_dir)
    except Exception as exc:  # noqa: BLE001 - report and refuse to start on a broken config
        raise StartError(EXIT_CONFIG, f"cannot load the saved configuration in {state_dir}: {exc}",
                         f"fix or move away {cfgmod.config_path(state_dir)}") from None
    cfg = saved
    if demo:
        # What the demo saves: what is in force, like any serve (the control API saves the
        # running config at the first change anyway, and a restart should not lose the LUN
        # someone is trying out). Its portal is never a wildcard it chose itself: the demo
        # listens where --listen or the saved config says, else on loopback only.
        cfg = _with_demo(cfgmod, saved, state_dir)
    if cfg is None:
        cfg = cfgmod.empty_config()
    if portals or not (saved or {}).get("portals"):
        chosen = portals or [parse_hostport(DEFAULT_PORTAL)]
        cfg["portals"] = [{"host": h, "port": p, "advertise": advertise} for h, p in chosen]
    elif advertise:
        for p in cfg["portals"]:
            p["advertise"] = advertise
    try:
        cfg = cfgmod.validate(cfg)  # a group's LUN options: Reconciler.compose, every apply
        portal_cfg, cfg["portals"] = cfg["portals"], []
        await control.reconciler.apply(cfg)  # targets and LUNs before any listener opens
        cfg["portals"] = portal_cfg
    except Exception as exc:  # noqa: BLE001
        raise StartError(EXIT_CONFIG, f"cannot apply the configuration: {exc}") from None
    if cfg.get("group"):
        await _join_group(daemon, control, cfg)  # the member beats before any portal opens
    try:
        await control.start()
    except RuntimeError as exc:
        raise StartError(EXIT_BUSY, str(exc), "stop it first, or use another --state-dir") from None
    except OSError as exc:
        raise StartError(EXIT_INVALID, f"cannot open the control socket in {state_dir}: "
                                       f"{exc.strerror or exc}",
                         "give a writable local directory with --state-dir") from None
    for p in cfg["portals"]:
        try:
            await control.reconciler.apply({**cfg, "portals": [q for q in cfg["portals"]
                                                               if q is p or _listening(daemon, q)]})
        except Exception as exc:  # noqa: BLE001 - one message, not a traceback
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            why = (os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno
                   else str(cause))
            addr = show_address(p["host"], p["port"])
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                hint = (f"another target (tgtd, another gluster-iscsi) is using {addr}: stop it, "
                        "or listen elsewhere with --listen HOST:PORT")
            else:
                hint = "is the address one of this host's? pick another with --listen HOST:PORT"
            raise StartError(EXIT_UNAVAILABLE, f"cannot listen on {addr}: {why}", hint) from None
    try:
        if saved is None or cfg != saved:
            cfgmod.save(state_dir, cfg)
    except OSError as exc:
        raise StartError(EXIT_INVALID, f"cannot save the configuration in {state_dir}: "
                                       f"{exc.strerror or exc}",
                         "give a writable directory with --state-dir") from None
    return dict(cfg)


async def _join_group(daemon: Daemon, control: ControlServer, cfg: dict[str, Any]) -> None:
    """Open the group directory (off the loop), join as this gateway and attach every LUN."""
    from ..group.definition import DEFAULT_NON_OWNER
    from ..group.shared import open_shared
    from ..server.group import GroupMember

    g = cfg["group"]
    loop = asyncio.get_running_loop()
    try:
        shared = await loop.run_in_executor(daemon.store_executor, open_shared, g["location"])
    except (OSError, ValueError) as exc:
        raise StartError(EXIT_UNAVAILABLE, f"cannot open the group directory {g['location']}: "
                                           f"{exc}",
                         "check that the volume is mounted (or reachable) and the location in "
                         "the config's group section") from None
    member = GroupMember(shared, g["gateway"], g["number"], beat_seconds=g["beat_seconds"],
                         lease_seconds=g["lease_seconds"],
                         non_owner=g.get("non_owner", DEFAULT_NON_OWNER))
    daemon.join_group(member)
    # The group definition says which LUNs are the group's: control attaches each to the
    # member as it opens (before it serves), from the first poll on (control/api.py).
    control.group_member = member
    try:
        await _start_shipping(daemon, shared, cfg)  # first: every LU attached is hooked
        await control.attach_opened_luns()  # the config's LUNs, as control attaches later ones
        await member.start()
    except Exception as exc:  # noqa: BLE001
        await member.stop(release=True)
        shared.close()
        raise StartError(EXIT_UNAVAILABLE, f"cannot join the gateway group: {exc}") from None
    daemon.group_shared = shared
    log.info("gateway group: %s is gateway %d (TPGT %d) of %s; %d LUNs", g["gateway"],
             g["number"], daemon.tpgt, g["location"], len(member.luns))


async def _start_shipping(daemon: Daemon, shared: Any, cfg: dict[str, Any]) -> None:
    """The command channel of a non-optimized group (server/ship.py): on ``group.ship_listen``
    ("host" or "host:port"), else the first portal's host, on an ephemeral port."""
    listen = cfg["group"].get("ship_listen")
    host, port = "", 0
    if listen:
        host, sep, tail = str(listen).rpartition(":")
        if not sep or not tail.isdigit() or (host.count(":") and not host.startswith("[")):
            host, port = str(listen), 0
        else:
            port = int(tail)
    elif cfg.get("portals"):
        host = cfg["portals"][0]["host"]
    await daemon.start_shipping(shared, host.strip("[]"), port)


def _listening(daemon: Daemon, p: dict[str, Any]) -> bool:
    return any((x.host, x.port) == (p["host"], p["port"]) for x in daemon.portals())


def _with_demo(cfgmod: Any, saved: dict[str, Any] | None, state_dir: Path) -> dict[str, Any]:
    demo = cfgmod.demo_config(state_dir)
    if saved is None:
        return demo
    cfg = dict(saved)
    names = {t["name"].lower() for t in cfg.get("targets", [])}
    for t in demo["targets"]:
        if t["name"].lower() not in names:
            t = dict(t)
            used = {x.get("tid") for x in cfg.get("targets", [])}
            while t["tid"] in used:
                t["tid"] += 1
            cfg["targets"] = [*cfg.get("targets", []), t]
    return cfg


async def _reload(reconciler: Reconciler, daemon: Any, state_dir: Path, notifier: Any = None) -> None:
    """SIGHUP: apply the saved config all or nothing; never drop sessions (there is no
    --force for a signal: the log says what to run instead). systemd hears RELOADING=1 before
    and READY=1 after, whatever the outcome (the daemon serves either way)."""
    if notifier is not None:
        notifier.reloading()
    try:
        await _reload_config(reconciler, state_dir)
    finally:
        if notifier is not None:
            notifier.ready(status_line(daemon))


async def _reload_config(reconciler: Reconciler, state_dir: Path) -> None:
    from ..control import config as cfgmod
    from ..control import exposure, reconcile

    try:
        before = reconciler.current()
        cfg = cfgmod.load(state_dir) or cfgmod.empty_config()
        changes = await reconciler.apply(cfg)
        log.info("SIGHUP: configuration reloaded (%d change%s)", len(changes), "" if len(changes) == 1 else "s")
        for w in exposure.newly_exposed(before, reconciler.current()):
            log.warning("%s", w)
    except reconcile.BusyError as exc:
        log.error(
            "SIGHUP: reload refused, running configuration unchanged: it would drop sessions"
            " (%s); log them out, or run 'gluster-iscsi config reload --force'", exc.message,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        log.error("SIGHUP: reload failed, running configuration unchanged: %s", exc)


def connect_addresses(host: str, port: int, advertise: str | None = None) -> list[str]:
    """Where an initiator should connect for a portal: never a wildcard.

    The advertised address if there is one; for a wildcard (0.0.0.0, ::) this host's own
    addresses of that family (loopback first, as the only one sure to work from here).
    """
    from ..model.targets import Portal

    if advertise:
        return [Portal(host, port, advertise).advertised()]
    if host not in ("0.0.0.0", "::", ""):
        return [show_address(host, port)]
    v6 = host == "::"
    found = ["::1" if v6 else "127.0.0.1"]
    for addr in _local_addresses(v6):
        ip = ipaddress.ip_address(addr)
        if addr not in found and not ip.is_loopback and not ip.is_link_local:
            found.append(addr)
    return [show_address(a, port) for a in found]


def _local_addresses(v6: bool) -> list[str]:
    """This host's interface addresses (IPv4 by ioctl, IPv6 from /proc); [] where unknown."""
    out: list[str] = []
    if v6:
        try:
            for line in Path("/proc/net/if_inet6").read_text().splitlines():
                raw = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
        except (OSError, ValueError, IndexError):
            pass
        return out
    import fcntl
    import struct

    try:
        names = [name for _, name in socket.if_nameindex()]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for name in names:
                try:
                    req = struct.pack("256s", name.encode()[:15])
                    res = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
                except OSError:
                    continue  # no IPv4 address on it
                out.append(socket.inet_ntoa(res[20:24]))
    except OSError:
        pass
    return out


def _print_demo(daemon: Any, target: str, config_file: Path) -> None:
    from ..control.exposure import is_loopback_host

    portals = daemon.portals()
    addrs = [a for p in portals for a in connect_addresses(p.host, p.port, p.advertise)]
    addr = addrs[0] if addrs else DEFAULT_PORTAL
    where = ", ".join(show_address(x.host, x.port) for x in portals)
    if all(is_loopback_host(x.host) for x in portals):
        reach = (f"on {where}: loopback only, initiators on this host only "
                 "(to serve other hosts: --listen 0.0.0.0:3260, and limit who may log in)")
    else:
        reach = (f"on {where}: reachable from other hosts, and LUN 1 is writable by any "
                 "initiator without CHAP")
    lines = [
        f"gluster-iscsi: serving {target} LUN 1 (1 GiB sparse file in {daemon.state_dir}) {reach}",
        f"Saved in {config_file}: a plain 'serve' exports it again "
        f"('gluster-iscsi target delete {target}' drops it).",
        "Connect from a Linux initiator:",
        f"  iscsiadm --mode discovery --type sendtargets --portal {addr}",
        f"  iscsiadm --mode node --targetname {target} --portal {addr} --login",
        "or with libiscsi:",
        f"  iscsi-ls -s iscsi://{addr}",
        f"  iscsi-inq iscsi://{addr}/{target}/1",
    ]
    if len(addrs) > 1:
        lines.insert(2, "Addresses of this host to connect to: " + ", ".join(addrs))
    print("\n".join(lines), flush=True)
