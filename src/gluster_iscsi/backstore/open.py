"""Turn a backing-store spec (a CLI argument, a config value, a tgtadm ``-b``) into a store.

=================================================  ============================================
spec                                               store
=================================================  ============================================
``memory:64MiB`` (or ``memory`` with ``size=``)    :class:`MemoryStore`
``/path/disk.img``, ``file:/path/disk.img``        :class:`FileStore` (regular file or block
                                                   device; bstype ``rdwr``/``aio``/``file``)
``gluster://h1[:port][,h2...]/volume/path``        :class:`GfapiStore`
``volume@host:path`` with ``bstype="glfs"``        :class:`GfapiStore` (tgt's form)
=================================================  ============================================

``size`` is the memory store's size, or for files the size to create them with when they
do not exist yet. Extra keyword ``options`` go to the store: ``o_direct`` for files and
Gluster, ``log_file``/``log_level`` for Gluster (also as URL query: ``?o_direct=1``), and
``cache`` for Gluster: the read cache's size (``64MiB``; ``0`` or ``off``: none; ``auto``:
the LUN's size, within the daemon-wide memory target; default :func:`.cache.default_capacity`,
set by ``serve --gfapi-cache``) and ``cache_chunk`` its
chunk (a power of two, 4KiB to 1MiB; default 64KiB: what a sequential miss fills; a
random miss reads 4KiB units), see :mod:`.cache`.
"""

from __future__ import annotations

import errno
from typing import Any

from .base import BackingStore, BackingStoreError
from .gfapi.address import GlusterAddress, is_gluster_url, parse_gluster_url, parse_tgt_glfs
from .size import parse_size

FILE_BSTYPES = frozenset({"file", "rdwr", "aio"})
GLUSTER_BSTYPES = frozenset({"glfs", "gluster", "gfapi"})
MEMORY_BSTYPES = frozenset({"memory", "mem"})


def classify(spec: str, bstype: str | None = None) -> tuple[str, str | GlusterAddress]:
    """Return ``(kind, target)``: ``("memory", size_text)``, ``("file", path)`` or
    ``("gluster", GlusterAddress)``. Raises ValueError on a malformed spec."""
    bt = bstype.lower() if bstype else None
    if bt is not None and bt not in FILE_BSTYPES | GLUSTER_BSTYPES | MEMORY_BSTYPES:
        raise ValueError(f"unknown backing store type {bstype!r}")
    if not spec:
        raise ValueError("empty backing store spec")
    if bt in GLUSTER_BSTYPES:
        if is_gluster_url(spec):
            return "gluster", parse_gluster_url(spec)
        return "gluster", parse_tgt_glfs(spec)
    if is_gluster_url(spec):
        if bt is not None:
            raise ValueError(f"a gluster:// URL does not go with bstype {bstype!r}")
        return "gluster", parse_gluster_url(spec)
    if spec == "memory" or spec.startswith("memory:") or bt in MEMORY_BSTYPES:
        if bt is not None and bt not in MEMORY_BSTYPES:
            raise ValueError(f"{spec!r} does not go with bstype {bstype!r}")
        return "memory", spec.partition(":")[2] if spec.startswith("memory") else spec
    path = spec[len("file:") :] if spec.startswith("file:") else spec
    if path.startswith("//"):  # file:///abs/path
        path = path[2:]
    if not path:
        raise ValueError(f"no path in {spec!r}")
    return "file", path


def open_store(
    spec: str,
    *,
    bstype: str | None = None,
    read_only: bool = False,
    size: int | None = None,
    **options: Any,
) -> BackingStore:
    try:
        kind, target = classify(spec, bstype)
    except ValueError as e:
        raise BackingStoreError(errno.EINVAL, str(e), spec) from e
    if kind == "memory":
        from .memory import MemoryStore

        assert isinstance(target, str)
        if target:
            try:
                mem_size = parse_size(target)
            except ValueError as e:
                raise BackingStoreError(errno.EINVAL, str(e), spec) from e
            if size is not None and size != mem_size:
                raise BackingStoreError(errno.EINVAL, f"size {size} contradicts {spec!r}", spec)
        elif size is not None:
            mem_size = size
        else:
            raise BackingStoreError(errno.EINVAL, "memory store needs a size", spec)
        _no_options(options, spec)
        return MemoryStore(mem_size, read_only=read_only)
    if kind == "file":
        from .file import FileStore

        assert isinstance(target, str)
        o_direct = bool(options.pop("o_direct", False))
        _no_options(options, spec)
        return FileStore(target, read_only=read_only, create_size=size, o_direct=o_direct)
    from .gfapi.store import GfapiStore

    assert isinstance(target, GlusterAddress)
    merged = {k.replace("-", "_"): v for k, v in target.options.items()}
    merged.update(options)
    log_file = merged.pop("log_file", merged.pop("logfile", None))
    log_level = merged.pop("log_level", merged.pop("loglevel", None))
    raw_direct = merged.pop("o_direct", False)
    o_direct = (
        raw_direct.lower() in ("1", "true", "yes", "on")
        if isinstance(raw_direct, str)
        else bool(raw_direct)
    )
    raw_cache = merged.pop("cache", None)
    raw_chunk = merged.pop("cache_chunk", None)
    from . import cache as cachemod

    try:
        capacity = (
            cachemod.default_capacity() if raw_cache is None else cachemod.parse_capacity(raw_cache)
        )
    except ValueError as e:
        raise BackingStoreError(errno.EINVAL, f"option cache: {e}", spec) from e
    chunk = cachemod.DEFAULT_CHUNK
    if raw_chunk is not None:
        try:
            chunk = parse_size(str(raw_chunk))
        except ValueError as e:
            raise BackingStoreError(errno.EINVAL, f"option cache_chunk: {e}", spec) from e
        if not 4096 <= chunk <= 1 << 20 or chunk & (chunk - 1):
            raise BackingStoreError(
                errno.EINVAL,
                f"option cache_chunk: {raw_chunk} is not a power of two from 4KiB to 1MiB",
                spec,
            )
    _no_options(merged, spec)
    store = GfapiStore(
        target,
        read_only=read_only,
        create_size=size,
        log_file=log_file,
        log_level=int(log_level) if log_level is not None else None,
        o_direct=o_direct,
    )
    if capacity == 0:
        return store
    try:
        return cachemod.CachedStore(store, capacity, chunk=chunk)
    except BaseException:
        store.close()
        raise


def _no_options(options: dict[str, Any], spec: str) -> None:
    if options:
        raise BackingStoreError(
            errno.EINVAL, f"unknown option(s) {', '.join(sorted(options))}", spec
        )
