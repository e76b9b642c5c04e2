"""Real initiators against a real `gluster-iscsi serve --demo`: libiscsi tools and qemu-img."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import need
from .daemon import DEMO_IQN

pytestmark = pytest.mark.integration


def run(*cmd: str, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_iscsi_ls_lists_the_demo_target_and_its_lun(daemon):
    need("iscsi-ls")
    out = run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{daemon.port}")
    assert f"Target:{DEMO_IQN} Portal:127.0.0.1:{daemon.port},1" in out
    # iscsi-ls sizes the LUN from its last LBA, hence 1023M for 1 GiB.
    assert "Lun:1" in out and "DIRECT_ACCESS" in out and "(Size:1023M)" in out


def test_inquiry_and_read_capacity_answer(daemon):
    need("iscsi-inq")
    inq = run("iscsi-inq", daemon.url())
    assert "Peripheral Device Type:DIRECT_ACCESS" in inq and "Vendor:GLUSTER" in inq
    # iscsi-inq takes the page code in decimal: 128 = 80h (serial), 131 = 83h (identifiers)
    serial = run("iscsi-inq", "-e", "1", "-c", "128", daemon.url())
    assert re.search(r"Unit Serial Number:\[[0-9a-f]{16}\]", serial), serial
    ident = run("iscsi-inq", "-e", "1", "-c", "131", daemon.url())
    assert f"Designator:[{DEMO_IQN}]" in ident and "Designator Type:(3) NAA" in ident
    cap = run("iscsi-readcapacity16", daemon.url())
    assert "Total size:1073741824" in cap and "LOGICAL BLOCK LENGTH IN BYTES:512" in cap


def test_qemu_img_round_trip_of_64_mib_random_image(daemon, tmp_path):
    need("qemu-img")
    src = tmp_path / "random.raw"
    src.write_bytes(os.urandom(64 << 20))
    back = tmp_path / "back.raw"
    url = daemon.url()
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url, timeout=300)
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back), timeout=300)
    got = back.read_bytes()
    assert got[: 64 << 20] == src.read_bytes()
    assert got[64 << 20 :].count(0) == len(got) - (64 << 20)  # the rest of the sparse LUN


def test_sigterm_exits_cleanly_and_the_data_stays(daemon, tmp_path):
    need("qemu-img")
    pattern = os.urandom(1 << 20)
    img = tmp_path / "p.raw"
    img.write_bytes(pattern)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(img), daemon.url())
    assert daemon.stop() == 0
    with open(daemon.state_dir / "demo-lun1.img", "rb") as f:
        assert f.read(1 << 20) == pattern
    daemon.start()  # the fixture stops it again and checks its exit code
    out = tmp_path / "again.raw"
    run("qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=1M", "count=1", f"if={daemon.url()}", f"of={out}")
    assert out.read_bytes() == pattern
