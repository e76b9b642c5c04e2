"""GlusterFS through libgfapi: our own ctypes binding (``_binding``) and the store on top.

Importing this package never loads libgfapi; the library is loaded on first use, with a
clear error if it is missing (``apt-get install libgfapi0`` / ``glusterfs-common``).
"""

from __future__ import annotations

from typing import Any

from .address import GlusterAddress, VolfileServer, parse_gluster_url, parse_tgt_glfs

__all__ = [
    "GfapiError",
    "GfapiStore",
    "GlusterAddress",
    "VolfileServer",
    "parse_gluster_url",
    "parse_tgt_glfs",
]


def __getattr__(name: str) -> Any:
    if name == "GfapiStore":
        from .store import GfapiStore

        return GfapiStore
    if name == "GfapiError":
        from ._binding import GfapiError

        return GfapiError
    raise AttributeError(name)
