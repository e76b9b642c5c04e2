"""``gluster-iscsi systemd``: install the daemon as a systemd service."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..systemd import unit as unitmod
from .output import emit_json


@click.group()
def systemd() -> None:
    """Run the daemon as a systemd service (gluster-iscsi.service)."""


def _render(ctx: click.Context, state_dir: Path | None, listens: tuple[str, ...],
            rw_paths: tuple[Path, ...]) -> tuple[Path, str]:
    from .serve import BadAddress, parse_hostport

    sdir = state_dir or ctx.find_root().params.get("state_dir") or Path("/var/lib/gluster-iscsi")
    sdir = Path(os.path.abspath(sdir))
    for addr in listens:
        try:
            parse_hostport(addr, resolve=False)
        except BadAddress as exc:
            click.echo(f"gluster-iscsi: error: --listen {exc}", err=True)
            sys.exit(6)
    paths = [os.path.abspath(p) for p in rw_paths] + unitmod.file_lun_dirs(sdir)
    return sdir, unitmod.render(sdir, listens, paths)


_state_opt = click.option(
    "--state-dir", "state_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
    help="The daemon's state directory (default: the global --state-dir).")
_listen_opt = click.option(
    "--listen", "listens", multiple=True, metavar="HOST:PORT",
    help="Portal for 'serve --listen' (repeatable). Default: the saved portals, else loopback.")
_rw_opt = click.option(
    "--rw-path", "rw_paths", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
    help="Another directory the service may write (file LUNs; repeatable). The directories of "
         "the saved configuration's file LUNs are added by themselves.")


@systemd.command("install")
@_state_opt
@_listen_opt
@_rw_opt
@click.option("--enable/--no-enable", default=True, show_default=True,
              help="Enable the service (start at boot) when systemd runs this host.")
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path),
              default=unitmod.DEFAULT_UNIT_DIR, show_default=True,
              help="Where to write gluster-iscsi.service.")
@click.option("--man-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/usr/local/share/man"), show_default=True,
              help="Also write the manual page here (man1/gluster-iscsi.1), which the unit's "
                   "Documentation= names; '' to skip.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.pass_context
def systemd_install(ctx: click.Context, state_dir: Path | None, listens: tuple[str, ...],
                    rw_paths: tuple[Path, ...], enable: bool, unit_dir: Path, man_dir: Path,
                    as_json: bool) -> None:
    """Write gluster-iscsi.service (ExecStart: this installation's gluster-iscsi serve) and
    the manual page; where systemd is the init system, run systemctl daemon-reload and enable.

    Exit status: 0 done, 1 systemctl failed, 6 invalid option or unwritable unit directory."""
    sdir, text = _render(ctx, state_dir, listens, rw_paths)
    man_note = _write_man(ctx, man_dir) if str(man_dir) not in ("", ".") else None
    try:
        sdir.mkdir(parents=True, exist_ok=True, mode=0o700)  # ReadWritePaths= must exist
    except OSError as exc:
        click.echo(f"gluster-iscsi: warning: cannot create {sdir}: {exc.strerror or exc}", err=True)
    try:
        done = unitmod.install(unit_dir, text, enable=enable)
    except OSError as exc:
        click.echo(f"gluster-iscsi: error: cannot write the unit in {unit_dir}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(6)
    except RuntimeError as exc:
        click.echo(f"gluster-iscsi: error: {exc}", err=True)
        sys.exit(1)
    if man_note:
        done.messages.insert(1, man_note)
    if as_json:
        emit_json({"unit": str(done.unit), "exec_start": done.exec_start,
                   "reloaded": done.reloaded, "enabled": done.enabled,
                   "messages": done.messages})
        return
    for m in done.messages:
        click.echo(m)


@systemd.command("show")
@_state_opt
@_listen_opt
@_rw_opt
@click.pass_context
def systemd_show(ctx: click.Context, state_dir: Path | None, listens: tuple[str, ...],
                 rw_paths: tuple[Path, ...]) -> None:
    """Print the unit file 'systemd install' would write (for packagers, config management)."""
    click.echo(_render(ctx, state_dir, listens, rw_paths)[1], nl=False)


def _write_man(ctx: click.Context, man_dir: Path) -> str:
    from importlib.metadata import PackageNotFoundError, version

    from .manpage import render

    try:
        ver = version("gluster-iscsi")
    except PackageNotFoundError:
        ver = ""
    path = man_dir / "man1" / "gluster-iscsi.1"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(ctx.find_root().command, "gluster-iscsi", ver))
    except OSError as exc:
        return f"manual page not written to {path}: {exc.strerror or exc}"
    return f"wrote {path}"
