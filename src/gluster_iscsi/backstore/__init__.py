"""Byte-level backing stores: memory, file/block device, GlusterFS via libgfapi."""

from .base import BackingStore, BackingStoreError, Buffer, Capabilities, Extent
from .open import open_store
from .provision import parse_size

__all__ = [
    "BackingStore",
    "BackingStoreError",
    "Buffer",
    "Capabilities",
    "Extent",
    "open_store",
    "parse_size",
]
