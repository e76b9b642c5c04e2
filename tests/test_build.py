"""The data path runs compiled (setup.py builds it with mypyc), or, when asked, pure Python."""

from __future__ import annotations

import os

import gluster_iscsi


def test_the_data_path_runs_as_built():
    compiled = gluster_iscsi.compiled_modules()
    if os.environ.get("GLUSTER_ISCSI_PURE") == "1":
        assert compiled == []
    else:
        # A failed compile falls back to pure Python with a warning; the test command must
        # notice, since the benchmarks and the suite would then measure something else.
        assert compiled == list(gluster_iscsi.DATA_PATH_MODULES), (
            "run scripts/install: it compiles the data path (needs gcc and python3-dev)")
