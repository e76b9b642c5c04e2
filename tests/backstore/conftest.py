"""Fixtures for the backing-store tests; real Gluster volumes come from tests/gluster_env.py."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluster_env import gluster_volume_fixture  # noqa: E402

# Sharded, gluster-block profile: the volume the product is meant to serve.
gluster_volume = gluster_volume_fixture("giscsi-test")
# Unsharded: the only kind on which glfs_lseek SEEK_DATA/SEEK_HOLE works.
plain_gluster_volume = gluster_volume_fixture("giscsi-test-plain", profile="plain")
# Its bricks get killed by the fault tests: nobody else may use it.
fault_gluster_volume = gluster_volume_fixture("giscsi-test-fault", mount=False)
