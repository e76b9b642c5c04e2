from __future__ import annotations

import shutil

import pytest

from .daemon import Daemon


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/install (it apt-installs it)")
    return path


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "state")
    d.start()
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exit code {rc}\n{d.log_text()[-4000:]}"


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("shared") / "state")
    d.start()
    yield d
    d.stop()
