#!/usr/bin/env python3
"""Run kernel-initiator scenarios in the QEMU guest against a target on this host.

    scripts/guest/run-scenario.py --target tgt basic chap multipath recovery
    scripts/guest/run-scenario.py --target gluster-iscsi basic -v

Builds (or reuses) the cached guest image, starts the target, boots one guest per
scenario, prints per-step results and exits non-zero when any step failed.
Console logs and target logs go to --workdir (default /tmp/gluster-iscsi-guest/<time>).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guest_harness import build_image  # noqa: E402
from scenarios import SCENARIOS, run_named_scenario  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "scenarios", nargs="*", default=list(SCENARIOS), help=f"any of {list(SCENARIOS)}"
    )
    ap.add_argument("--target", default="gluster-iscsi", choices=["gluster-iscsi", "tgt"])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--cache", default=None, help="image cache dir (GLUSTER_ISCSI_GUEST_CACHE)")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the guest console")
    args = ap.parse_args()

    workdir = args.workdir or Path("/tmp/gluster-iscsi-guest") / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    image = build_image(args.cache)
    print(f"image {image} ready in {time.monotonic() - t0:.1f}s", flush=True)
    failed = []
    for name in args.scenarios:
        run, problems = run_named_scenario(
            name, args.target, image, workdir / name, echo=args.verbose
        )
        print(f"== {name} (target {args.target})\n{run.summary()}", flush=True)
        for p in problems:
            print(f"  PROBLEM: {p}")
        if problems:
            failed.append(name)
    print(
        f"total {time.monotonic() - t0:.1f}s; "
        f"{'FAILED: ' + ' '.join(failed) if failed else 'all scenarios passed'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
