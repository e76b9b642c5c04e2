"""Small helpers shared by the stores: byte views, range checks, extent bookkeeping."""

from __future__ import annotations

import bisect
import errno

from .base import BackingStoreError, Buffer, Extent


def byte_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte view of ``data`` without copying (C-contiguous buffers only)."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def check_range(offset: int, length: int, name: str) -> None:
    if offset < 0 or length < 0:
        raise BackingStoreError(
            errno.EINVAL, f"invalid range offset={offset} length={length}", name
        )


def merge_extents(extents: list[Extent]) -> list[Extent]:
    """Join neighbouring runs with the same state and drop empty ones."""
    out: list[Extent] = []
    for e in extents:
        if e.length <= 0:
            continue
        if out and out[-1].mapped == e.mapped and out[-1].offset + out[-1].length == e.offset:
            last = out[-1]
            out[-1] = Extent(last.offset, last.length + e.length, last.mapped)
        else:
            out.append(e)
    return out


class RangeSet:
    """A set of disjoint half-open byte ranges ``[start, end)``, kept sorted and coalesced."""

    __slots__ = ("_starts", "_ends")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # First range whose end >= start (touching ranges coalesce).
        i = bisect.bisect_left(self._ends, start)
        # One past the last range whose start <= end.
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_right(self._ends, start)  # first range ending after start
        j = bisect.bisect_left(self._starts, end)  # one past the last range starting before end
        if i >= j:
            return
        new_s: list[int] = []
        new_e: list[int] = []
        if self._starts[i] < start:
            new_s.append(self._starts[i])
            new_e.append(start)
        if self._ends[j - 1] > end:
            new_s.append(end)
            new_e.append(self._ends[j - 1])
        self._starts[i:j] = new_s
        self._ends[i:j] = new_e

    def overlapping(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the set inside ``[start, end)``, in order."""
        i = bisect.bisect_right(self._ends, start)
        out = []
        while i < len(self._starts) and self._starts[i] < end:
            out.append((max(start, self._starts[i]), min(end, self._ends[i])))
            i += 1
        return out
