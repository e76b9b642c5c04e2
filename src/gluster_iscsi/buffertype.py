"""``Buffer``: the type of a byte buffer in annotations (``gluster_iscsi.buffers`` re-exports it).

``collections.abc.Buffer`` (PEP 688) exists only from Python 3.12; the project supports 3.11,
where this is a plain alias usable in annotations. A module of its own, never compiled: mypyc
decides the version check below when it builds, and would leave the 3.11 branch unreachable.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
elif TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = bytes | bytearray | memoryview

__all__ = ["Buffer"]
