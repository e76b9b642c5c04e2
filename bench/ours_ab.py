#!/usr/bin/env python3
"""Run our daemon for `bench/run --target-a ours --target-b ours` with A and B differing in
what `serve` arguments cannot say: the source tree, or a gfapi store's worker count.

    bench/run --target-a ours --target-b ours --backends gfapi-both ... \\
      --ours-cmd "/work/main/.venv/bin/python bench/ours_ab.py"

Environment (each optional): ``OURS_AB_TREE_A`` / ``OURS_AB_TREE_B``: a ``src`` directory put
first on ``sys.path`` for that target (e.g. a ``git archive`` of the base commit);
``OURS_AB_GFAPI_THREADS_A`` / ``_B``: ``GfapiStore.io_threads`` for that target's daemon.
Which target a process is comes from its ``--state-dir`` (``.../target-a-ours/...``).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    argv = sys.argv
    state = argv[argv.index("--state-dir") + 1] if "--state-dir" in argv[:-1] else ""
    label = "A" if "target-a" in state else "B" if "target-b" in state else ""
    tree = os.environ.get(f"OURS_AB_TREE_{label}") if label else None
    if tree:
        sys.path.insert(0, tree)
    threads = os.environ.get(f"OURS_AB_GFAPI_THREADS_{label}") if label else None
    if threads:
        from gluster_iscsi.backstore.gfapi.store import GfapiStore

        GfapiStore.io_threads = int(threads)  # (a tree without the hint ignores it)
    argv[0] = "gluster-iscsi"
    from gluster_iscsi.cli.main import main as cli

    cli()


if __name__ == "__main__":
    main()
