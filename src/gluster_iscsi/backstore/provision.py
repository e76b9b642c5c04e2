"""Create and grow backing files (local paths or gluster:// URLs).

Sizes as people write them (``parse_size``, ``format_size``) are in ``size.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from enum import StrEnum

from .base import BackingStore, BackingStoreError
from .open import classify, open_store
from .size import parse_size

#: progress(done_bytes, total_bytes)
Progress = Callable[[int, int], None]


class Preallocation(StrEnum):
    SPARSE = "sparse"  # size only; blocks are allocated when written (thin)
    FALLOC = "falloc"  # reserve blocks with fallocate (fast; falls back to FULL)
    FULL = "full"  # write zeroes over the whole file


_CHUNK = 64 << 20  # fallocate step, so progress moves
_ZERO_CHUNK = 4 << 20


def create_backing(
    spec: str,
    size: int | str,
    *,
    preallocation: Preallocation | str = Preallocation.SPARSE,
    progress: Progress | None = None,
    exist_ok: bool = False,
    overwrite: bool = False,
    bstype: str | None = None,
    **options: object,
) -> bool:
    """Create a backing file of ``size`` bytes at a local path or gluster:// URL (or what
    ``bstype`` says ``spec`` is: tgt's ``vol@host:path`` with ``glfs``); return whether this
    call created it.

    An existing file is an error (EEXIST) unless ``exist_ok`` or ``overwrite``. With
    ``exist_ok`` it is grown to ``size`` if smaller (never shrunk) and only the grown part is
    preallocated: its data is never written over. ``overwrite`` throws its contents away
    (truncated to nothing, then provisioned as a new file). A file this call created is
    removed again if provisioning it fails (a full volume, a lost server).
    """
    nbytes = parse_size(size)
    mode = Preallocation(preallocation)
    kind, _ = classify(spec, bstype)
    if kind == "memory":
        raise BackingStoreError(errno.EINVAL, "cannot provision a memory store", spec)
    store = open_store(spec, bstype=bstype, size=nbytes, **options)  # type: ignore[arg-type]
    created = bool(getattr(store, "created", True))
    try:
        start = 0
        if not created:
            if not exist_ok and not overwrite:
                raise BackingStoreError(errno.EEXIST, "backing file already exists", spec)
            if overwrite:
                store.resize(0, force=True)  # type: ignore[call-arg]  # file, Gluster
            start = min(store.size, nbytes)
            if store.size < nbytes:
                store.resize(nbytes)
        if mode is Preallocation.FALLOC:
            if not _fallocate(store, start, nbytes, progress):
                mode = Preallocation.FULL
        if mode is Preallocation.FULL:
            _write_zeroes(store, start, nbytes, progress)
        elif mode is Preallocation.SPARSE and progress:
            progress(nbytes, nbytes)
        store.flush()
    except BaseException:
        store.close()
        if created:
            remove_backing(spec, bstype, **options)
        raise
    store.close()
    return created


def probe_backing(spec: str, bstype: str | None = None, **options: object) -> int | None:
    """The current size of an existing backing file or block device; None if it does not
    exist (or is a memory store). Nothing is created or written."""
    kind, target = classify(spec, bstype)
    if kind == "memory":
        return None
    if kind == "file":
        assert isinstance(target, str)
        try:
            os.stat(target)
        except FileNotFoundError:
            return None
    try:
        store = open_store(spec, bstype=bstype, read_only=True, **options)  # type: ignore[arg-type]
    except BackingStoreError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    try:
        return store.size
    finally:
        store.close()


def truncate_backing(spec: str, size: int, bstype: str | None = None, **options: object) -> None:
    """Set an existing backing file's size, shrinking included (what a failed ``lun create``
    does to give an empty file it grew its old size back)."""
    store = open_store(spec, bstype=bstype, **options)  # type: ignore[arg-type]
    try:
        store.resize(size, force=True)  # type: ignore[call-arg]  # file, Gluster
    finally:
        store.close()


def remove_backing(spec: str, bstype: str | None = None, **options: object) -> None:
    """Remove a backing file (what a failed ``lun create`` does with the file it made)."""
    kind, target = classify(spec, bstype)
    if kind == "file":
        assert isinstance(target, str)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        return
    if kind == "gluster":
        store = open_store(spec, bstype=bstype, **options)  # type: ignore[arg-type]
        try:
            # The store's own volume connection: the same package, no second client.
            store._vol.unlink(store.path)  # type: ignore[attr-defined]
        finally:
            store.close()


def grow_backing(
    spec: str, new_size: int | str, bstype: str | None = None, **options: object
) -> int:
    """Grow a backing file to ``new_size`` (never shrinks); returns the old size."""
    nbytes = parse_size(new_size)
    store = open_store(spec, bstype=bstype, **options)  # type: ignore[arg-type]
    try:
        old = store.size
        if nbytes < old:
            raise BackingStoreError(
                errno.EINVAL, f"new size {nbytes} is smaller than the current {old}", spec
            )
        if nbytes > old:
            store.resize(nbytes)
        return old
    finally:
        store.close()


def _fallocate(store: BackingStore, start: int, nbytes: int, progress: Progress | None) -> bool:
    allocate = getattr(store, "allocate", None)
    if allocate is None:
        return False
    done = start
    while done < nbytes:
        n = min(_CHUNK, nbytes - done)
        try:
            allocate(done, n)
        except BackingStoreError as e:
            if done == start and e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                return False
            raise
        done += n
        if progress:
            progress(done, nbytes)
    if progress and start >= nbytes:
        progress(nbytes, nbytes)
    return True


def _write_zeroes(store: BackingStore, start: int, nbytes: int, progress: Progress | None) -> None:
    zeroes = memoryview(bytes(min(_ZERO_CHUNK, nbytes - start)))
    done = start
    while done < nbytes:
        n = min(len(zeroes), nbytes - done)
        store.write(done, zeroes[:n])
        done += n
        if progress:
            progress(done, nbytes)
    if progress and start >= nbytes:
        progress(nbytes, nbytes)
