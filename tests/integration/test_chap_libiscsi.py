"""One-way and mutual CHAP with libiscsi against the real daemon, set up with the native CLI."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import need
from .daemon import DEMO_IQN

pytestmark = pytest.mark.integration

USER, SECRET = "alice", "alice-secret-12"
TUSER, TSECRET = "target-gw1", "target-secret-34"


def inq(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iscsi-inq", url], capture_output=True, text=True, errors="replace",
                          timeout=60, env={**os.environ, **env})


def test_one_way_and_mutual_chap(daemon):
    need("iscsi-inq")
    daemon.cli("auth", "account-add", USER, "--secret", SECRET)
    daemon.cli("auth", "bind", USER, "--target", DEMO_IQN)
    plain = daemon.url()
    with_creds = daemon.url(auth=f"{USER}%{SECRET}@")
    assert inq(plain).returncode != 0, "a login without CHAP must be refused"
    assert inq(daemon.url(auth=f"{USER}%wrong-secret-99@")).returncode != 0
    ok = inq(with_creds)
    assert ok.returncode == 0, ok.stderr
    # mutual: the target proves itself with its own account
    daemon.cli("auth", "account-add", TUSER, "--secret", TSECRET)
    daemon.cli("auth", "bind", TUSER, "--target", DEMO_IQN, "--outgoing")
    mutual = inq(with_creds, LIBISCSI_CHAP_TARGET_USERNAME=TUSER, LIBISCSI_CHAP_TARGET_PASSWORD=TSECRET)
    assert mutual.returncode == 0, mutual.stderr
    # an initiator that expects another target secret refuses the target's answer
    fake = inq(with_creds, LIBISCSI_CHAP_TARGET_USERNAME=TUSER,
               LIBISCSI_CHAP_TARGET_PASSWORD="not-the-target-secret")
    assert fake.returncode != 0
    log = daemon.log_text()
    assert SECRET not in log and TSECRET not in log  # no secret ever in a log line
