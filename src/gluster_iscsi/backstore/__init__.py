"""Byte-level backing stores: memory, file/block device, GlusterFS via libgfapi.

Public API (the contract itself is :mod:`.base`):

* :func:`open_store` (``memory:64MiB``, a path or ``file:PATH``, ``gluster://h1[:p][,h2]/vol/path``,
  tgt's ``vol@host:path`` with ``bstype="glfs"``) -> :class:`BackingStore`
* :class:`MemoryStore`, :class:`FileStore`, and ``gfapi.GfapiStore`` (imported lazily, so
  this package loads without GlusterFS installed)
* :func:`parse_size` / :func:`format_size`, :func:`create_backing` (sparse, falloc or full,
  with a progress callback), :func:`grow_backing` in :mod:`.provision`

Stores raise :class:`BackingStoreError` (an OSError with ``errno`` and ``path``).
"""

from .base import BackingStore, BackingStoreError, Buffer, Capabilities, Extent
from .file import FileStore
from .memory import MemoryStore
from .open import open_store
from .provision import create_backing, grow_backing
from .size import format_size, parse_size

__all__ = [
    "BackingStore",
    "BackingStoreError",
    "Buffer",
    "Capabilities",
    "Extent",
    "FileStore",
    "MemoryStore",
    "create_backing",
    "format_size",
    "grow_backing",
    "open_store",
    "parse_size",
]
