"""The manual page is built from the CLI itself (issue 18): every command is in it."""

from __future__ import annotations

import shutil
import subprocess

import click
import pytest
from click.testing import CliRunner

from gluster_iscsi.cli.main import main


def _all_commands(cmd: click.Command, ctx: click.Context) -> list[tuple[str, bool]]:
    """(command path, hidden) for every command under ``cmd``."""
    out: list[tuple[str, bool]] = []
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            sctx = click.Context(sub, info_name=name, parent=ctx)
            out.append((sctx.command_path, sub.hidden))
            out += _all_commands(sub, sctx)
    return out


def test_every_command_and_option_is_in_the_man_page():
    r = CliRunner().invoke(main, ["man"])
    assert r.exit_code == 0, r.output
    page = r.output
    commands = _all_commands(main, click.Context(main, info_name="gluster-iscsi"))
    assert len(commands) > 40 and ("gluster-iscsi serve", False) in commands
    assert ("gluster-iscsi systemd install", False) in commands
    for path, hidden in commands:
        roff = path.replace("-", "\\-")
        if path == "gluster-iscsi man":
            continue  # the generator itself
        if hidden:  # old names kept as aliases: listed as such
            assert f".TP\n{roff}\n" in page, path
        else:
            assert f'.SS "{roff}"' in page, path
    for opt in ("\\-\\-log\\-format", "\\-\\-io\\-timeout", "\\-\\-unit\\-dir", "\\-\\-state\\-dir"):
        assert opt in page


def test_the_page_renders_without_roff_warnings(tmp_path):
    r = CliRunner().invoke(main, ["man", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff not installed")
    res = subprocess.run([groff, "-man", "-ww", "-z", str(tmp_path / "gluster-iscsi.1")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
