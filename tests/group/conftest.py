"""Fixtures for the group tests: other processes using a group directory (group_agent.py);
real Gluster volumes come from tests/gluster_env.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluster_env import gluster_volume_fixture  # noqa: E402
from group_agent import Agent  # noqa: E402

# The gluster-block profile (strict-o-direct, no data caches): the volume the product serves.
group_gluster_volume = gluster_volume_fixture("giscsi-group")
# Default volume options (write-behind, read-ahead, io-cache, quick-read... all on).
group_plain_volume = gluster_volume_fixture("giscsi-group-plain", profile="plain")
# Its bricks get killed and restarted by the fault tests: nobody else may use it.
group_fault_volume = gluster_volume_fixture("giscsi-group-fault")


@pytest.fixture
def agent() -> Iterator[Callable[[str], Agent]]:
    made: list[Agent] = []

    def make(location: str) -> Agent:
        a = Agent(location)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()
