"""What every command of the CLI is given: where the daemon is and how long to wait for it."""

from __future__ import annotations

from pathlib import Path

from ..control.client import Client


class Ctx:
    def __init__(self, state_dir: Path, timeout: float) -> None:
        self.state_dir = state_dir
        self.timeout = timeout

    def client(self) -> Client:
        return Client(self.state_dir, self.timeout)
