"""Capture real tgtadm answers as golden data: python tests/cli/golden/capture_tgt.py

Starts its own tgtd (control port 4711, portal 127.0.0.1:3291), runs SCRIPT (see
tests/cli/tgt_script.py) and writes tgtadm_golden.json next to this file: for each command
its argv (with the backing directory as {DIR}), exit status, stdout and stderr.
Needs Debian's tgt; run as root. The tests only read the JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from tgt_script import SCRIPT  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        for name in ("file", "file2"):
            with open(Path(d) / name, "wb") as f:
                f.truncate(100 << 20)
        tgtd = subprocess.Popen(
            ["tgtd", "-f", "--iscsi", "portal=127.0.0.1:3291", "-C", "4711"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1)
            out = []
            for argv in SCRIPT:
                real = [a.replace("{DIR}", d) for a in argv]
                p = subprocess.run(["tgtadm", "-C", "4711", *real], capture_output=True, text=True)
                out.append({"argv": argv, "rc": p.returncode, "stdout": p.stdout.replace(d, "{DIR}"),
                            "stderr": p.stderr.replace(d, "{DIR}")})  # fmt: skip
        finally:
            tgtd.kill()  # tgtd -f ignores SIGTERM
            tgtd.wait()
    (HERE / "tgtadm_golden.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
