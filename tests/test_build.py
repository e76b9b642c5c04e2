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


def test_the_gfapi_completion_module_is_built_with_the_data_path():
    """backstore/gfapi/_aio.c (asynchronous gfapi calls without worker threads) is built by the
    same install; only a pure-Python build goes without it (and uses worker threads)."""
    from gluster_iscsi.server import gfaio

    if os.environ.get("GLUSTER_ISCSI_PURE") == "1":
        assert not gfaio.supported()
    else:
        assert gfaio.supported(), "run scripts/install: it builds the C module (needs gcc)"
