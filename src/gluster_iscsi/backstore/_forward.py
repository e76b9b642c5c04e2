"""A wrapper store's own attributes first, then its inner store's.

Kept in an interpreted module: mypyc compiles :mod:`.cache` (``DATA_PATH_MODULES``), and a
compiled class may not define ``__getattr__``; a base class that does works for it all the
same."""

from __future__ import annotations

from typing import Any


class ForwardsToInner:
    """Store-specific attributes (address, path, created, o_direct, store_errors, ...) that
    the wrapper does not have are its ``inner`` store's."""

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # (not set yet: no recursion)
            raise AttributeError(name)
        return getattr(self.inner, name)
