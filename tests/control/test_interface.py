"""control/ drives the daemon through ``control.interface.DaemonControl``: the real Daemon
and the tests' FakeDaemon both implement it, checked by mypy on their signatures (the
control API also type-checks ``ControlServer(Daemon(...))`` in ``cli/serve.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "gluster_iscsi"

CHECK = """
from pathlib import Path

from gluster_iscsi.control.interface import DaemonControl
from gluster_iscsi.server.daemon import Daemon
from tests.control.fakes import FakeDaemon


def check(state_dir: Path) -> None:
    real: DaemonControl = Daemon(state_dir)
    fake: DaemonControl = FakeDaemon(state_dir)
"""


def test_the_daemon_and_the_fake_implement_daemon_control(tmp_path, monkeypatch):
    from mypy import api

    snippet = tmp_path / "check_daemon_control.py"
    snippet.write_text(CHECK)
    monkeypatch.chdir(ROOT)  # mypy's cache of `mypy src` is there
    monkeypatch.setenv("MYPYPATH", f"{ROOT / 'src'}:{ROOT}")
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(snippet)])
    assert status == 0, out + err


def test_control_asks_nothing_of_the_daemon_by_name():
    """No getattr/hasattr/setattr on the daemon in control/: what it uses is the interface."""
    found = []
    for path in sorted((SRC / "control").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr") and node.args
                    and "daemon" in ast.unparse(node.args[0])):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)
