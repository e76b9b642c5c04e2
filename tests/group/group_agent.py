"""Another process using a group directory, for the tests: :class:`Agent` starts this file
as a script in a child process::

    python group_agent.py LOCATION

Reads one JSON array per line on stdin and answers one JSON value per line on stdout:

    ["lock", NAME, BYTE]   -> "locked" | "held"     (try_lock; the Lock is kept)
    ["refresh"]            -> "refreshed" | "lost"  (the last Lock taken)
    ["release"]            -> "released"            (the last Lock taken)
    ["read", NAME]         -> [seq, data] | null
    ["write", NAME, DATA]  -> seq
    ["gfid", PATH]         -> "uuid"
    ["joins", PREFIX, N]   -> version               (N gateways PREFIX0.. join group.json)

EOF on stdin ends it (the process's end drops its locks); it may also be killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gluster_iscsi.group import definition
from gluster_iscsi.group.shared import Lock, LockHeld, open_shared


class Agent:
    """Another process using the group directory at ``location``: see agent.py."""

    def __init__(self, location: str) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, location],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        ready = self._answer()
        assert ready == "ready", ready

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent exited ({self.proc.wait(30)})")
        return json.loads(line)

    def send(self, *cmd: Any) -> None:
        """Send a command without waiting for its answer (:meth:`answer` reads it)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> Any:
        return self._answer()

    def call(self, *cmd: Any) -> Any:
        self.send(*cmd)
        return self._answer()

    def kill(self) -> float:
        """SIGKILL; returns the monotonic time the process was seen dead."""
        self.proc.kill()
        self.proc.wait(30)
        return time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def holding(agent: Agent, name: str, byte: int) -> Agent:
    """``agent`` after it took the lock (asserted)."""
    got = agent.call("lock", name, byte)
    assert got == "locked", got
    return agent




def main() -> int:
    shared = open_shared(sys.argv[1])
    locks: list[Lock] = []
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        out: object
        if cmd[0] == "lock":
            try:
                locks.append(shared.try_lock(cmd[1], cmd[2]))
                out = "locked"
            except LockHeld:
                out = "held"
        elif cmd[0] == "refresh":
            try:
                locks[-1].refresh()
                out = "refreshed"
            except LockHeld:
                out = "lost"
        elif cmd[0] == "release":
            locks.pop().release()
            out = "released"
        elif cmd[0] == "read":
            rec = shared.read(cmd[1])
            out = None if rec is None else [rec.seq, rec.data]
        elif cmd[0] == "write":
            out = shared.write(cmd[1], cmd[2])
        elif cmd[0] == "joins":  # ["joins", PREFIX, N]: N gateways join group.json
            for i in range(cmd[2]):
                gw = f"{cmd[1]}{i}"

                def join(defn: definition.GroupDefinition, gw: str = gw) -> None:
                    defn.gateways[gw] = {"number": definition.assign_number(defn, gw),
                                         "addresses": [], "joined_at": 0}

                out = definition.update(shared, join, timeout=60).version
        elif cmd[0] == "gfid":
            out = shared.gfid(cmd[1])
        else:
            out = f"unknown command {cmd[0]!r}"
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
