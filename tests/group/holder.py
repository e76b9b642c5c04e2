"""A process that holds a lock of a group directory, for the tests (run as a script).

    python holder.py LOCATION NAME BYTE [write NAME2 JSON]

Takes the lock (try_lock), prints "locked" (or "held" if someone else has it, then exits
3), then waits for a line on stdin: "release" releases and exits 0; EOF just exits (the
process's end drops the lock); it may also be killed.
"""

from __future__ import annotations

import sys

from gluster_iscsi.group.shared import LockHeld, open_shared


def main() -> int:
    location, name, byte = sys.argv[1], sys.argv[2], int(sys.argv[3])
    shared = open_shared(location)
    try:
        lock = shared.try_lock(name, byte)
    except LockHeld:
        print("held", flush=True)
        return 3
    print("locked", flush=True)
    line = sys.stdin.readline().strip()
    if line == "release":
        lock.release()
        print("released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
