"""scripts/install puts gluster-iscsi on PATH (issue 15 item 8), through scripts/link-cli."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK_CLI = ROOT / "scripts" / "link-cli"


def run(tmp_path: Path, path: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    exe = tmp_path / "venv" / "bin" / "gluster-iscsi"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\necho fake\n")
    exe.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    env = dict(os.environ, GLUSTER_ISCSI_EXE=str(exe), GLUSTER_ISCSI_BIN_DIR=str(bindir),
               GLUSTER_ISCSI_PATH=path.replace("BIN", str(bindir)))  # fmt: skip
    return subprocess.run([str(LINK_CLI)], capture_output=True, text=True, env=env), exe, bindir


def test_install_calls_link_cli():
    assert "scripts/link-cli" in (ROOT / "scripts" / "install").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="the link is made only as root")
def test_as_root_a_free_name_gets_a_link_on_path_and_a_second_run_keeps_it(tmp_path):
    r, exe, bindir = run(tmp_path, "BIN:/usr/bin:/bin")
    assert r.returncode == 0, r.stderr
    assert os.readlink(bindir / "gluster-iscsi") == str(exe)
    assert "not on PATH" not in r.stderr
    r, _, _ = run(tmp_path, "BIN:/usr/bin:/bin")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_a_name_owned_by_something_else_is_left_alone_and_the_path_line_printed(tmp_path):
    (tmp_path / "bin").mkdir()
    other = tmp_path / "bin" / "gluster-iscsi"
    other.write_text("#!/bin/sh\necho another\n")
    other.chmod(0o755)
    r, exe, _ = run(tmp_path, "BIN:/usr/bin:/bin")
    assert r.returncode == 0, r.stderr
    assert other.read_text() == "#!/bin/sh\necho another\n"
    assert f'export PATH="{exe.parent}:$PATH"' in r.stderr


def test_a_link_dir_that_is_not_on_path_gets_the_path_line(tmp_path):
    r, exe, _ = run(tmp_path, "/usr/bin:/bin")
    assert r.returncode == 0 and f'export PATH="{exe.parent}:$PATH"' in r.stderr
