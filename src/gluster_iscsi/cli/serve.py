"""``gluster-iscsi serve``: run the daemon in the foreground."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

DEFAULT_STATE_DIR = "/var/lib/gluster-iscsi"
DEFAULT_PORTAL = "127.0.0.1:3260"

log = logging.getLogger("gluster_iscsi")


def parse_hostport(text: str, default_port: int = 3260) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or 'v6' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host or "0.0.0.0", int(port)
    return text, default_port


def _state_dir(ctx: click.Context, given: str | None) -> Path:
    if given:
        return Path(given)
    parent = ctx.find_root().params.get("state_dir") if ctx.parent else None
    return Path(parent or os.environ.get("GLUSTER_ISCSI_STATE_DIR") or DEFAULT_STATE_DIR)


@click.command()
@click.option("--listen", "listens", multiple=True, metavar="HOST:PORT",
              help=f"Portal to listen on (repeatable). Default {DEFAULT_PORTAL}, or the saved portals.")
@click.option("--advertise", metavar="HOST",
              help="Address SendTargets reports instead of the listening host (NAT, QEMU guests); "
                   "each portal keeps its port.")
@click.option("--state-dir", "state_dir", metavar="DIR",
              help=f"Config, control socket and demo LUN live here "
                   f"(default: $GLUSTER_ISCSI_STATE_DIR or {DEFAULT_STATE_DIR}).")
@click.option("--demo", is_flag=True,
              help="Also serve the embedded default: a target with LUN 1 on a 1 GiB sparse file "
                   "in the state directory, open to any initiator.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--nop-interval", default=10.0, show_default=True, type=float,
              help="Seconds of silence before the target pings with NOP-In (0: never).")
@click.option("--io-timeout", default=60.0, show_default=True, type=float,
              help="Seconds a backing-store call may take before its command fails with NOT "
                   "READY (keep it above Gluster's 42 s ping-timeout; 0: no limit).")
@click.option("--poll-usecs", default=100.0, show_default=True,
              type=click.FloatRange(0, 100000),
              help="Microseconds to poll for the next request after answering one, before the "
                   "event loop sleeps: lower latency at queue depth 1 for a little CPU (0: off).")
@click.option("--uvloop/--no-uvloop", default=True, show_default=True,
              help="Use uvloop's event loop when it is installed.")
@click.option("--io-uring/--no-io-uring", "io_uring", default=True, show_default=True,
              help="Read and write LUNs on FUSE files (a Gluster FUSE mount) through io_uring "
                   "when a command is alone on its connection, instead of worker threads.")
@click.option("--max-connections", type=click.IntRange(1), metavar="N",
              help="Connections in all, logged in or not. Default: from the descriptor limit "
                   "(ulimit -n), two per connection, an eighth (at least 64) kept in reserve "
                   "for the stores and the control socket.")
@click.option("--max-prelogin", type=click.IntRange(1), metavar="N",
              help="Connections that have not completed a login. When full, the least recently "
                   "active of them is closed to make room. Default: half of --max-connections.")
@click.option("--max-prelogin-per-host", type=click.IntRange(1), metavar="N",
              help="Connections not logged in from one source address (same rule). "
                   "Default: a quarter of --max-prelogin, at least 256 (or all of it).")
@click.pass_context
def serve(ctx: click.Context, listens: tuple[str, ...], advertise: str | None, state_dir: str | None,
          demo: bool, log_level: str, nop_interval: float, io_timeout: float, poll_usecs: float,
          uvloop: bool, io_uring: bool, max_connections: int | None, max_prelogin: int | None,
          max_prelogin_per_host: int | None) -> None:
    """Run the iSCSI target daemon in the foreground."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sdir = _state_dir(ctx, state_dir)
    try:
        portals = [parse_hostport(p) for p in listens]
    except ValueError as exc:
        raise click.BadParameter(f"{exc}: use HOST:PORT, e.g. 127.0.0.1:3260", param_hint="--listen") from exc
    runner: Any = asyncio.run
    if uvloop:
        try:
            import uvloop as _uvloop

            runner = _uvloop.run
        except ImportError:
            pass
    try:
        code = runner(_serve(sdir, portals, advertise, demo, nop_interval, io_timeout, poll_usecs,
                             io_uring, {"max_connections": max_connections,
                                        "max_prelogin": max_prelogin,
                                        "max_prelogin_per_host": max_prelogin_per_host}))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


async def _serve(state_dir: Path, portals: list[tuple[str, int]], advertise: str | None,
                 demo: bool, nop_interval: float, io_timeout: float = 60.0,
                 poll_usecs: float = 100.0, io_uring: bool = True,
                 limits: dict[str, int | None] | None = None) -> int:
    from .. import DATA_PATH_MODULES, compiled_modules
    from ..control import config as cfgmod
    from ..control import reconcile
    from ..control.api import ControlServer
    from ..server.daemon import Daemon

    limits = limits or {}

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    compiled = compiled_modules()
    log.info("data path: %d of %d modules compiled%s", len(compiled), len(DATA_PATH_MODULES),
             "" if compiled else " (pure Python: scripts/install builds them with mypyc)")
    daemon = Daemon(state_dir, nop_interval=nop_interval, io_timeout=io_timeout,
                    poll_usecs=poll_usecs, io_uring=io_uring,
                    max_connections=limits.get("max_connections"), max_prelogin=limits.get("max_prelogin"),
                    max_prelogin_per_host=limits.get("max_prelogin_per_host"))
    lim = daemon.limits
    log.info("connections: at most %d, %d not logged in, %d of those per address",
             lim.max_connections, lim.max_prelogin, lim.max_prelogin_per_host)
    _ = daemon.ring  # made now, so the log and `status` say at once which file I/O runs
    try:
        saved = cfgmod.load(state_dir)
    except Exception as exc:  # noqa: BLE001 - report and refuse to start on a broken config
        log.error("cannot load the saved configuration in %s: %s", state_dir, exc)
        return 2
    cfg = saved
    if demo:
        cfg = _with_demo(cfgmod, saved, state_dir)
    if cfg is None:
        cfg = cfgmod.empty_config()
    if portals or not cfg.get("portals"):
        chosen = portals or [parse_hostport(DEFAULT_PORTAL)]
        cfg["portals"] = [{"host": h, "port": p, "advertise": advertise} for h, p in chosen]
    elif advertise:
        for p in cfg["portals"]:
            p["advertise"] = advertise
    try:
        cfg = cfgmod.validate(cfg)
        portal_cfg, cfg["portals"] = cfg["portals"], []
        await reconcile.apply(daemon, cfg)  # targets and LUNs before any listener opens
        cfg["portals"] = portal_cfg
    except Exception as exc:  # noqa: BLE001
        log.error("cannot apply the configuration: %s", exc)
        return 2
    control = ControlServer(daemon)
    try:
        await control.start()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    try:
        await reconcile.apply(daemon, cfg)
        if saved is None or cfg != saved:
            cfgmod.save(state_dir, cfg)
    except OSError as exc:
        log.error("cannot listen: %s (is another target on that port? pick one with --listen)", exc)
        await control.stop()
        await daemon.stop()
        return 1
    if demo:
        _print_demo(daemon, cfgmod.DEMO_TARGET)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(daemon, state_dir)))
    await stop.wait()
    log.info("shutting down")
    await control.stop()
    await daemon.stop()
    return 0


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


async def _reload(daemon: Any, state_dir: Path) -> None:
    """SIGHUP: apply the saved config all or nothing; never drop sessions (there is no
    --force for a signal: the log says what to run instead)."""
    from ..control import config as cfgmod
    from ..control import reconcile

    try:
        cfg = cfgmod.load(state_dir) or cfgmod.empty_config()
        changes = await reconcile.apply(daemon, cfg)
        log.info("SIGHUP: configuration reloaded (%d change%s)", len(changes), "" if len(changes) == 1 else "s")
    except reconcile.BusyError as exc:
        log.error(
            "SIGHUP: reload refused, running configuration unchanged: it would drop sessions"
            " (%s); log them out, or run 'gluster-iscsi config reload --force'", exc.message,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        log.error("SIGHUP: reload failed, running configuration unchanged: %s", exc)


def _print_demo(daemon: Any, target: str) -> None:
    portals = daemon.portals()
    p = portals[0] if portals else None
    addr = p.advertised() if p else DEFAULT_PORTAL
    lines = [
        f"gluster-iscsi: serving {target} LUN 1 (1 GiB sparse file in {daemon.state_dir}) on "
        + ", ".join(f"{x.host}:{x.port}" for x in portals),
        "Connect from a Linux initiator:",
        f"  iscsiadm --mode discovery --type sendtargets --portal {addr}",
        f"  iscsiadm --mode node --targetname {target} --portal {addr} --login",
        "or with libiscsi:",
        f"  iscsi-ls -s iscsi://{addr}",
        f"  iscsi-inq iscsi://{addr}/{target}/1",
    ]
    print("\n".join(lines), flush=True)
