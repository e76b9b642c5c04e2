"""Issue 15 items 1, 5, 6, 7 through the real CLI against a real ``gluster-iscsi serve``:
a failing command leaves files, the saved config and the running state exactly as before."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .harness import Serve

pytestmark = pytest.mark.integration

T = "iqn.2001-04.com.example:safety"
MiB = 1 << 20


@pytest.fixture
def serve(tmp_path):
    s = Serve(tmp_path / "state").start()
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def refused(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.args, p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return p.stderr


def state(serve: Serve, *files: Path) -> tuple[object, ...]:
    """The saved config file, the running config and each file's bytes and mtime."""
    saved = (serve.state_dir / "config.json").read_bytes()
    running = json.loads(ok(serve.cli("config", "export")))
    return saved, running, [(f.read_bytes(), os.stat(f).st_mtime_ns) for f in files]


def data_file(path: Path, n: int = MiB) -> Path:
    path.write_bytes(os.urandom(n))
    return path


def test_lun_create_never_writes_over_a_file_with_data(serve, tmp_path):
    img = data_file(tmp_path / "existing.img")
    ok(serve.cli("target", "create", T))
    ok(serve.cli("lun", "create", T, str(img), "--lun", "10"))
    before = state(serve, img)
    # The command: a taken LUN number, then a free one; the same exported file.
    err = refused(serve.cli("lun", "create", T, str(img), "--lun", "10", "--size", "1MiB",
                            "--prealloc", "full"), 5)  # fmt: skip
    assert "already has LUN 10" in err
    assert state(serve, img) == before
    err = refused(serve.cli("lun", "create", T, str(img), "--lun", "11", "--size", "1MiB",
                            "--prealloc", "full"), 5)  # fmt: skip
    assert f"already exported as LUN 10 of {T}" in err
    assert state(serve, img) == before
    # A file with data that nobody exports: --size is refused, --overwrite says yes.
    other = data_file(tmp_path / "other.img", 2 * MiB)
    before = state(serve, img, other)
    err = refused(serve.cli("lun", "create", T, str(other), "--size", "1MiB"), 5)
    assert "omit --size" in err and "--overwrite" in err
    assert state(serve, img, other) == before
    ok(serve.cli("lun", "create", T, str(other), "--size", "1MiB", "--overwrite"))
    assert other.read_bytes() == bytes(MiB)


def test_a_failed_lun_create_leaves_no_new_file(serve, tmp_path):
    ok(serve.cli("target", "create", T))
    before = state(serve)
    new = tmp_path / "new.img"
    refused(serve.cli("lun", "create", "iqn.2001-04.com.example:nope", str(new), "--size",
                      "2GiB"), 4)  # fmt: skip
    assert not new.exists()
    refused(serve.cli("lun", "create", T, str(new), "--size", "10"), 6)
    assert not new.exists()
    assert state(serve) == before


def test_relative_paths_are_taken_from_the_cli_and_stored_absolute(serve, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    data_file(work / "rel.img")
    ok(serve.cli("target", "create", T))
    ok(serve.cli("lun", "create", T, "rel.img", "--lun", "1", cwd=work))
    ok(serve.cli("lun", "create", T, "new.img", "--lun", "2", "--size", "1MiB", cwd=work))
    luns = json.loads(ok(serve.cli("config", "export")))["targets"][0]["luns"]
    assert [x["backing"] for x in luns] == [str(work / "rel.img"), str(work / "new.img")]
    assert os.path.getsize(work / "new.img") == MiB
    # The same file by its relative name again is the same LUN identity: refused.
    refused(serve.cli("lun", "create", T, "./rel.img", cwd=work), 5)
    # A config file with a relative path is refused with a clear message.
    doc = json.loads(ok(serve.cli("config", "export")))
    doc["targets"][0]["luns"][0]["backing"] = "rel.img"
    (tmp_path / "rel.json").write_text(json.dumps(doc))
    err = refused(serve.cli("config", "validate", str(tmp_path / "rel.json")), 6)
    assert "relative path" in err


def test_sizes_below_one_block_are_refused(serve, tmp_path):
    ok(serve.cli("target", "create", T))
    before = state(serve)
    err = refused(serve.cli("lun", "create", T, str(tmp_path / "ten.img"), "--size", "10"), 6)
    assert "less than one 512-byte block" in err
    assert not (tmp_path / "ten.img").exists()
    err = refused(serve.cli("lun", "create", T, "memory:10"), 6)
    assert "less than one 512-byte block" in err
    err = refused(serve.cli("lun", "create", T, str(tmp_path / "odd.img"), "--size", "1000"), 6)
    assert "not a whole number of 512-byte blocks" in err
    assert state(serve) == before


def test_an_invalid_network_is_called_a_network(serve):
    ok(serve.cli("target", "create", T))
    before = state(serve)
    for rule in ("10.0.0.0/33", "300.1.1.1", "fd00::/129"):
        err = refused(serve.cli("acl", "add", T, rule), 6)
        assert "network" in err and "iqn" not in err.lower(), err
    assert state(serve) == before


def test_config_validate_accepts_what_config_export_wrote(serve, tmp_path):
    ok(serve.cli("target", "create", T))
    ok(serve.cli("auth", "account-add", "alice", "--secret", "a-secret-of-16b!"))
    out = tmp_path / "exported.json"
    ok(serve.cli("config", "export", "-o", str(out)))
    assert '"alice": "********"' in out.read_text()
    p = serve.cli("config", "validate", str(out))
    assert ok(p).strip().endswith("valid") and "alice" in p.stderr and "masked" in p.stderr
    ok(serve.cli("config", "apply", str(out)))
