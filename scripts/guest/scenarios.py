"""The four kernel-initiator scenarios: what the host sets up, what the guest must report.

Shared by ``run-scenario.py`` (CLI) and ``tests/guest/test_kernel_initiator.py`` (pytest).
The guest side of each scenario is ``in-guest/scenario-<name>.sh``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from guest_harness import GuestRun, run_scenario
from targets import TargetBase, make_target

# CHAP credentials (secrets of 12..16 bytes as RFC 7143 recommends; the mutual secret
# must differ from the initiator's)
CHAP_USER = "gi-initiator"
CHAP_SECRET = "gi-chap-secret-0001"
MUTUAL_USER = "gi-target"
MUTUAL_SECRET = "gi-mutual-secret-02"

RECOVERY_STEPS = ["discovery", "login", "disk_appears", "stream_started", "restart_target",
                  "session_recovered", "io_after_recovery", "stream_clean", "data_verifies",
                  "logout", "disk_gone"]  # fmt: skip
COOKBOOK_STEPS = [
    "discovery",
    "login",
    "disk_appears",
    "dd_verify",
    "mkfs",
    "fs_write",
    "fsck",
    "fs_verify",
    "logout",
    "disk_gone",
]


# --- target-control steps (host side), one small function each ---------------------------
def configure_chap(target: TargetBase) -> None:
    """One-way CHAP: the initiator must authenticate as CHAP_USER/CHAP_SECRET."""
    target.set_chap(CHAP_USER, CHAP_SECRET)


def configure_mutual_chap(target: TargetBase) -> None:
    """Mutual CHAP: the target authenticates back as MUTUAL_USER/MUTUAL_SECRET when asked."""
    target.set_mutual_chap(MUTUAL_USER, MUTUAL_SECRET)


def configure_auth(target: TargetBase) -> None:
    configure_chap(target)
    configure_mutual_chap(target)


@dataclasses.dataclass
class Scenario:
    name: str
    portals: int
    timeout: float
    required: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    setup: Callable[[TargetBase], None] | None = None
    script: str = ""  # in-guest/scenario-<script>.sh; default: the name

    def __post_init__(self) -> None:
        self.script = self.script or self.name


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("basic", portals=1, timeout=420, required=COOKBOOK_STEPS),
        Scenario(
            "chap",
            portals=1,
            timeout=900,
            required=[
                "noauth_refused",
                *[f"chap.{s}" for s in COOKBOOK_STEPS],
                "chap.bad_secret_refused",
                *[f"mutual.{s}" for s in COOKBOOK_STEPS],
                "mutual.bad_target_secret_refused",
            ],
            env={
                "GI_CHAP_USER": CHAP_USER,
                "GI_CHAP_SECRET": CHAP_SECRET,
                "GI_MUTUAL_USER": MUTUAL_USER,
                "GI_MUTUAL_SECRET": MUTUAL_SECRET,
            },
            setup=configure_auth,
        ),
        Scenario(
            "multipath",
            portals=2,
            timeout=900,
            required=[
                "multipathd_started",
                "discovery1",
                "discovery2",
                "login",
                "paths_appear",
                "same_wwid",
                "multipathd_coalesces",
                "mkfs",
                "stream_started",
                "stop_portal",
                "path_failed",
                "io_continues",
                "start_portal",
                "path_reinstated",
                "io_after_reinstate",
                "stream_clean",
                "fsck",
                "data_verifies",
                "logout",
                "disks_gone",
            ],
            # a path whose session is down hands its I/O to dm-multipath after this long
            env={"GI_MP_REPLACEMENT_TIMEOUT": "5"},
        ),
        Scenario(
            "recovery",
            portals=1,
            timeout=600,
            required=RECOVERY_STEPS,
            env={"GI_REPLACEMENT_TIMEOUT": "60", "GI_RESTART_ACTION": "restart-target"},
        ),
        # the same, but the daemon is SIGKILLed (a crash) instead of shut down cleanly
        Scenario(
            "recovery-crash",
            script="recovery",
            portals=1,
            timeout=600,
            required=RECOVERY_STEPS,
            env={"GI_REPLACEMENT_TIMEOUT": "60", "GI_RESTART_ACTION": "crash-restart-target"},
        ),
    ]
}


def run_with_target(
    scenario: Scenario, target: TargetBase, image: Path, workdir: Path, echo: bool = False
) -> tuple[GuestRun, list[str]]:
    """Boot the guest for ``scenario`` against an already started ``target``."""
    env = {**target.guest_env(), **scenario.env}
    run = run_scenario(
        scenario.script,
        env,
        image_dir=image,
        workdir=workdir,
        host_actions=target.host_actions(),
        timeout=scenario.timeout,
        echo=echo,
    )
    return run, run.check(scenario.required)


def run_named_scenario(
    name: str, kind: str, image: Path, workdir: Path, echo: bool = False
) -> tuple[GuestRun, list[str]]:
    scenario = SCENARIOS[name]
    target = make_target(kind, workdir / "target", portals=scenario.portals)
    target.start()
    try:
        if scenario.setup:
            scenario.setup(target)
        return run_with_target(scenario, target, image, workdir, echo)
    finally:
        target.stop()
        target.drop_images()
