"""``gluster-iscsi man``: the manual page, written in roff from the CLI's own commands.

Every command's usage, help text and options come from click's command tree, so the page
cannot drift from ``--help``. Hidden command (it is for packagers):
``gluster-iscsi man > gluster-iscsi.1`` or ``gluster-iscsi man -o DIR`` (writes
``DIR/gluster-iscsi.1``); read it with ``man ./gluster-iscsi.1``.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import click


def _esc(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped, no line starting with a control char."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _paragraphs(help_text: str) -> list[str]:
    """click's help text as roff paragraphs; a ``\\b`` paragraph stays as written."""
    out: list[str] = []
    for para in click.unstyle(help_text).strip().split("\n\n"):
        if para.startswith("\b"):
            body = para.lstrip("\b").strip("\n")
            out.append(".nf\n" + _esc(body) + "\n.fi")
        elif para.strip():
            out.append(_esc(" ".join(line.strip() for line in para.split("\n"))))
    return out


def _walk(cmd: click.Command, ctx: click.Context) -> list[tuple[click.Context, click.Command]]:
    found = [(ctx, cmd)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            found += _walk(sub, click.Context(sub, info_name=name, parent=ctx))
    return found


def _hidden(cmd: click.Command, ctx: click.Context) -> list[str]:
    """Hidden commands worth a mention (old names kept as aliases), as 'path: help'."""
    out: list[str] = []
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is None:
                continue
            sctx = click.Context(sub, info_name=name, parent=ctx)
            if sub.hidden and sub.help and sub.help.startswith("Old name"):
                out.append(f"{sctx.command_path}: {sub.help.split(chr(10))[0]}")
            elif not sub.hidden:
                out += _hidden(sub, sctx)
    return out


def render(root: click.Command, prog: str = "gluster-iscsi", version: str = "") -> str:
    """The whole page for ``root`` and every visible command under it."""
    ctx = click.Context(root, info_name=prog)
    date = datetime.date.fromtimestamp(
        int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or datetime.datetime.now().timestamp()
    ).isoformat()
    lines = [
        f'.TH "{prog.upper()}" "1" "{date}" "{prog} {version}" "User Commands"',
        ".SH NAME",
        f"{_esc(prog)} \\- user-space iSCSI target for files and GlusterFS volumes",
        ".SH SYNOPSIS",
        f".B {_esc(prog)}",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
    ]
    lines += [p + "\n.PP" for p in _paragraphs(root.help or "")]
    lines.append(".SH OPTIONS")
    lines += _options(root, ctx)
    lines.append(".SH COMMANDS")
    for sctx, cmd in _walk(root, ctx)[1:]:
        lines.append(f'.SS "{_esc(sctx.command_path)}"')
        usage = " ".join(cmd.collect_usage_pieces(sctx))
        lines.append(f".B {_esc(sctx.command_path)}\n{_esc(usage)}\n.PP")
        text = cmd.help or cmd.short_help or ""
        if isinstance(cmd, click.Group) and not text:
            text = f"Commands: {', '.join(cmd.list_commands(sctx))}."
        lines += [p + "\n.PP" for p in _paragraphs(text)]
        lines += _options(cmd, sctx)
    old = _hidden(root, ctx)
    if old:
        lines.append(".SH OLD COMMAND NAMES")
        lines.append("Kept so scripts do not break; they do what the new name does.")
        lines += [f".TP\n{_esc(o.split(': ', 1)[0])}\n{_esc(o.split(': ', 1)[1])}" for o in old]
    lines += [
        ".SH ENVIRONMENT",
        ".TP\nGLUSTER_ISCSI_STATE_DIR\nThe state directory (default /var/lib/gluster\\-iscsi).",
        ".TP\nGLUSTER_ISCSI_TIMEOUT\nSeconds to wait for the daemon on each call (default 10).",
        ".TP\nNOTIFY_SOCKET, WATCHDOG_USEC\nSet by systemd: readiness and watchdog messages.",
        ".TP\nJOURNAL_STREAM\nSet by systemd: log lines carry no timestamp when stderr is the journal.",
        ".SH FILES",
        ".TP\n/var/lib/gluster\\-iscsi/config.json\nThe saved configuration.",
        ".TP\n/etc/systemd/system/gluster\\-iscsi.service\nThe unit 'systemd install' writes.",
        ".SH SEE ALSO",
        "iscsiadm(8), multipath.conf(5), systemd.service(5); docs/OPERATIONS.md in the sources.",
        "",
    ]
    return "\n".join(lines)


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    out: list[str] = []
    for param in cmd.get_params(ctx):
        rec = param.get_help_record(ctx)
        if rec is None or not isinstance(param, click.Option):
            continue  # arguments are in the usage line
        opts, help_text = rec
        out.append(f".TP\n\\fB{_esc(opts)}\\fR\n{_esc(click.unstyle(help_text))}")
    return out


@click.command(hidden=True)
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Write DIR/gluster-iscsi.1 instead of printing the page.")
@click.pass_context
def man(ctx: click.Context, output: Path | None) -> None:
    """Write the manual page (roff) built from these commands."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("gluster-iscsi")
    except PackageNotFoundError:
        ver = ""
    root = ctx.find_root()
    page = render(root.command, "gluster-iscsi", ver)
    if output is None:
        click.echo(page, nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    (output / "gluster-iscsi.1").write_text(page)
    click.echo(output / "gluster-iscsi.1")
