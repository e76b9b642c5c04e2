"""libiscsi's conformance suite, iscsi-test-cu, the whole ALL family, against the real daemon.

One run of the family (with a second portal for the MultipathIO suite and SANITIZE allowed)
against a file-backed LUN, the ReadOnly suite against a write-protected LUN, and the tests
that need more than one logical block per physical block against a LUN with 4 KiB physical
blocks. The same family runs against a gfapi-backed LUN on a real replica-3 volume (marked
``gluster``). Each suite is then its own pytest test: no failure, and no skip except those
documented here and in docs/CONFORMANCE.md (``DOCUMENTED_SKIPS``), so a skip never passes
silently. Every verdict is written to ``iscsi-test-cu.json`` (or ``-gfapi.json``) next to the
run's state directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import cunit
from .conftest import need
from .daemon import DEMO_IQN, Daemon, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gluster_env import gluster_volume_fixture  # noqa: E402

pytestmark = pytest.mark.integration

#: Skips that are the truth about this target, with the reason (docs/CONFORMANCE.md).
DOCUMENTED_SKIPS: dict[str, str] = {
    "PreventAllow": "a disk LUN has no removable medium (RMB=0), so there is nothing to lock",
    "StartStopUnit.Simple": "the test needs a removable medium (RMB=1): a disk LUN has none",
    "StartStopUnit.LoEj": "no removable medium to load or eject",
    "StartStopUnit.NoLoEj": "no removable medium to load or eject",
    "Sanitize.CryptoErase": "nothing is encrypted, so there is no key to erase",
    "Sanitize.Readonly": "the test only exercises CRYPTO ERASE (nothing is encrypted)",
    "Sanitize.Reservations": "the CRYPTO ERASE step (nothing is encrypted); the OVERWRITE "
    "and BLOCK ERASE steps before it pass",
    "Sanitize.ExitFailureMode": "a sanitize here never enters the failure mode SANITIZE "
    "EXIT FAILURE MODE leaves (a failed overwrite reports an error)",
    "WriteAtomic16": "WRITE ATOMIC is not offered: neither a file system nor Gluster "
    "guarantees that a multi-block write is never torn (crash or racing "
    "reader), and we advertise only what is true",
}

#: Skips that are the truth only for the gfapi LUN (a sharded volume, the product's profile).
GFAPI_SKIPS: dict[str, str] = {
    "Sanitize.BlockErase": "BLOCK ERASE is offered only where GET LBA STATUS can show its "
    "result; a sharded volume has no extent map (glfs_lseek SEEK_DATA "
    "answers ENOTSUP), so it is not offered there",
}

#: Failures that wait for a change outside the SCSI layer, with what it is: an expected
#: failure while they fail; remove the entry when the change lands (they then just pass).
PENDING: dict[str, str] = {}

#: Tests that skip on a LUN with one logical block per physical block; they run (and must
#: pass) against the LUN with 4 KiB physical blocks instead.
LBPPB_TESTS = (
    "CompareAndWrite.InvalidDataOutSize",
    "WriteSame10.UnmapUnaligned",
    "WriteSame10.InvalidDataOutSize",
    "WriteSame16.UnmapUnaligned",
    "WriteSame16.InvalidDataOutSize",
)


def _suites() -> list[str]:
    try:
        out = subprocess.run(
            ["iscsi-test-cu", "--list"], capture_output=True, text=True, timeout=30
        ).stdout
    except FileNotFoundError:
        return ["iscsi-test-cu-missing"]
    return sorted(
        {
            line.split(".")[1]
            for line in out.split()
            if line.startswith("ALL.") and line.count(".") == 2
        }
    )


def _documented(name: str, extra: dict[str, str] | None = None) -> str | None:
    suite = name.split(".")[0]
    return DOCUMENTED_SKIPS.get(name) or DOCUMENTED_SKIPS.get(suite) or (extra or {}).get(name)


def _run_family(d: Daemon, lun: int, report: Path) -> dict[str, cunit.TestResult]:
    """The ALL family on ``lun``, MultipathIO again with a second portal, ReadOnly on LUN 2,
    and the LBPPB tests on LUN 4 (4 KiB physical blocks).

    The family runs with one path: given a second one, libiscsi 1.19's Sanitize.Reservations
    takes its RESERVE(6) through the second path's session, which outlives the test, so the
    next test (Sanitize.Reset) meets RESERVATION CONFLICT instead of a running sanitize.
    """
    main = cunit.run(d.url(lun), "ALL", timeout=1500, cwd=str(d.state_dir), extra=["-S"])
    assert len(main.results) == 230, f"expected the 230 tests of the ALL family: {main.summary()}"
    multipath = cunit.run(
        d.url(lun), "ALL.MultipathIO", url2=d.url(lun, port=d.ports[1]), cwd=str(d.state_dir)
    )
    readonly = cunit.run(d.url(2), "ALL.ReadOnly", cwd=str(d.state_dir))
    results = {r.name: r for r in main.results}
    for run in (multipath, readonly):
        assert run.results, run.output[-2000:]
        results.update({r.name: r for r in run.results})
    for name in LBPPB_TESTS:
        run = cunit.run(d.url(4), f"ALL.{name}", cwd=str(d.state_dir))
        assert [r.name for r in run.results] == [name], run.output[-2000:]
        mine = results[name]
        if mine.verdict == "skipped" and "LBPPB" in mine.detail:
            got = run.results[0]
            results[name] = cunit.TestResult(name, got.verdict, got.detail or "on LBPPB=8 LUN 4")
    report.write_text(json.dumps({k: [v.verdict, v.detail] for k, v in results.items()}, indent=1))
    return results


def _start(state: Path) -> Daemon:
    d = Daemon(state, ports=[free_port(), free_port()])
    d.start()
    d.cli(
        "lun",
        "create",
        DEMO_IQN,
        str(state / "readonly.img"),
        "--lun",
        "2",
        "--size",
        "64MiB",
        "--read-only",
    )
    # LUN 4: 512-byte logical blocks on 4 KiB physical blocks (LBPPBE 3).
    cfg = json.loads(d.cli("config", "export").stdout)
    # No NOP-In keepalive: libiscsi's synchronous API answers no NOP-In while a test sleeps
    # (Sanitize.Reset sleeps 60 s between TEST UNIT READYs), so the daemon would drop the
    # connection, the reconnect bring a new unit attention, and the test loop for ever.
    cfg["params"]["nop_interval"] = "0"
    target = next(t for t in cfg["targets"] if t["name"] == DEMO_IQN)
    image = state / "lbppb8.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    target["luns"].append(
        {
            "lun": 4,
            "backing": str(image),
            "size": 64 << 20,
            "options": {"physical_block_size": 4096},
        }
    )
    path = state.parent / "with-lbppb8.json"
    path.write_text(json.dumps(cfg))
    d.cli("config", "apply", str(path))
    return d


@pytest.fixture(scope="module")
def conformance(tmp_path_factory):
    need("iscsi-test-cu")
    state = tmp_path_factory.mktemp("conformance") / "state"
    d = _start(state)
    try:
        results = _run_family(d, 1, state.parent / "iscsi-test-cu.json")
    finally:
        rc = d.stop()
    assert rc == 0, d.log_text()[-3000:]
    return results


gluster_volume = gluster_volume_fixture("giscsi-conformance")


@pytest.fixture(scope="module")
def conformance_gfapi(tmp_path_factory, gluster_volume):
    need("iscsi-test-cu")
    state = tmp_path_factory.mktemp("conformance-gfapi") / "state"
    d = _start(state)
    try:
        d.cli(
            "lun",
            "create",
            DEMO_IQN,
            gluster_volume.url("conformance.img"),
            "--lun",
            "3",
            "--size",
            "1GiB",
            timeout=120,
        )
        results = _run_family(d, 3, state.parent / "iscsi-test-cu-gfapi.json")
    finally:
        rc = d.stop()
    assert rc == 0, d.log_text()[-3000:]
    return results


def _check_suite(
    results: dict[str, cunit.TestResult], suite: str, extra: dict[str, str] | None = None
) -> None:
    mine = {k: v for k, v in results.items() if k.split(".")[0] == suite}
    assert mine, f"suite {suite} did not run"
    failed = {k: v.detail for k, v in mine.items() if v.verdict == "failed" and k not in PENDING}
    assert not failed, "\n\n".join(f"{k}:\n{d}" for k, d in failed.items())
    undocumented = {
        k: v.detail for k, v in mine.items() if v.verdict == "skipped" and not _documented(k, extra)
    }
    assert not undocumented, f"skipped without a documented reason: {undocumented}"
    pending = {k for k in mine if k in PENDING and mine[k].verdict == "failed"}
    if pending:
        pytest.xfail("; ".join(f"{k}: {PENDING[k]}" for k in sorted(pending)))


@pytest.mark.parametrize("suite", _suites())
def test_iscsi_test_cu_suite(conformance, suite):
    _check_suite(conformance, suite)


@pytest.mark.gluster
@pytest.mark.parametrize("suite", _suites())
def test_iscsi_test_cu_suite_on_gfapi(conformance_gfapi, suite):
    _check_suite(conformance_gfapi, suite, GFAPI_SKIPS)
