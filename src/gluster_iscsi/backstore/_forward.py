"""A wrapper store's own attributes first, then its inner store's.

Its own module, and :mod:`.cache` stays out of ``DATA_PATH_MODULES``: mypyc refuses
``__getattr__`` in a compiled class, and a compiled class does not consult the
``__getattr__`` of an interpreted base either (tried: a compiled CachedStore lost every
forwarded attribute, and /metrics the gfapi store's errors;
``tests/backstore/test_cache.py::test_the_cache_answers_for_its_inner_stores_own_attributes``
catches it in the compiled run)."""

from __future__ import annotations

from typing import Any


class ForwardsToInner:
    """Store-specific attributes (address, path, created, o_direct, store_errors, ...) that
    the wrapper does not have are its ``inner`` store's."""

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # (not set yet: no recursion)
            raise AttributeError(name)
        return getattr(self.inner, name)
