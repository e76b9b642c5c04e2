"""Replay the tgtadm script that ran against real tgt (golden) against gluster-iscsi.

The golden file was produced by tests/cli/golden/capture_tgt.py with Debian's tgt 1.0.85.
Lines we add on purpose are dropped before comparing: ``tgtadm: (...)`` details after
tgt's one-line error, and name warnings. SCSI ID/SN values are ours (stable per LUN UUID).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from .harness import Serve
from .tgt_script import SCRIPT

GOLDEN = Path(__file__).parent / "golden" / "tgtadm_golden.json"

#: step -> why our answer differs from tgt's on purpose
DIFFERENT = {
    # tgt's own parameter defaults differ from what our target offers
    16: "parameter values",
}


@cache
def golden() -> list[dict]:
    return json.loads(GOLDEN.read_text())


def test_golden_file_matches_the_script():
    assert [g["argv"] for g in golden()] == SCRIPT


def _normalize_out(text: str) -> str:
    text = re.sub(r"SCSI ID: .*", "SCSI ID: *", text)
    text = re.sub(
        r"(LUN: [1-9]\d*\n {12}Type: disk\n {12}SCSI ID: \*\n {12}SCSI SN: ).*", r"\1*", text
    )
    return text


def _normalize_err(text: str) -> str:
    return "".join(
        line + "\n"
        for line in text.splitlines()
        if not line.startswith("tgtadm: (") and not line.startswith("tgtadm: warning:")
    )


@pytest.mark.integration
def test_tgtadm_answers_like_tgt(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("file", "file2"):
        with open(d / name, "wb") as f:
            f.truncate(100 << 20)
    mismatches = []
    with Serve(tmp_path / "state") as serve:
        for i, (argv, want) in enumerate(zip(SCRIPT, golden(), strict=True)):
            real = [a.replace("{DIR}", str(d)) for a in argv]
            p = serve.cli("tgtadm", *real)
            got = {"rc": p.returncode, "stdout": p.stdout.replace(str(d), "{DIR}"),
                   "stderr": p.stderr.replace(str(d), "{DIR}")}  # fmt: skip
            if i in DIFFERENT:
                assert got["rc"] == want["rc"], (i, argv, got)
                keys = [line.split("=")[0] for line in got["stdout"].splitlines()]
                assert keys == [line.split("=")[0] for line in want["stdout"].splitlines()]
                continue
            if (
                got["rc"] != want["rc"]
                or _normalize_out(got["stdout"]) != _normalize_out(want["stdout"])
                or _normalize_err(got["stderr"]) != want["stderr"]
            ):
                mismatches.append((i, " ".join(argv), want, got))
    assert not mismatches, "\n\n".join(
        f"step {i}: {cmd}\n want {w}\n got  {g}" for i, cmd, w, g in mismatches
    )
