"""Logging what peers cause: escaped so it cannot forge lines, rate-limited so it cannot flood.

Anything a peer chose (an InitiatorName, a TargetName, a key, a CHAP name) goes through
:func:`safe` before it reaches a log line: control characters (newline, ESC, C1, the Unicode
line and paragraph separators, bidi overrides) come out as ``\\n``, ``\\x1b``, ``\\u2028``...,
and a backslash as ``\\\\`` so an escape cannot be faked either; printable text is unchanged.

Every problem a peer can trigger again and again (a bad PDU, a refused login, a refused
connection) goes through :data:`PROBLEMS`: per (kind, peer) the first lines of an interval are
logged, the rest counted, and "N more like this in the last Xs" is logged when the interval
ends (at the next report for that pair, or at the daemon's periodic :meth:`ProblemLog.flush`).
The iSCSI core calls it as it would call ``logging``: no I/O of its own beyond that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def safe(text: object) -> str:
    """``text`` with control and other non-printable characters escaped, repr-style."""
    s = text if type(text) is str else str(text)
    if s.isprintable() and "\\" not in s:
        return s
    out = []
    for ch in s:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


class _Slot:
    __slots__ = ("start", "logged", "suppressed", "logger", "level")

    def __init__(self, start: float, logger: logging.Logger, level: int) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0
        self.logger = logger
        self.level = level


class ProblemLog:
    """Rate-limited logging keyed by (problem kind, peer).

    ``burst`` lines per key per ``interval`` seconds are logged; the others are counted and
    summed up in one line once the interval is over. At most ``max_keys`` keys are tracked:
    beyond that (a flood from very many addresses) the peers of a kind share one key.
    """

    def __init__(self, interval: float = 10.0, burst: int = 1, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._slots: dict[tuple[str, str], _Slot] = {}

    def report(self, logger: logging.Logger, level: int, kind: str, peer: str, msg: str,
               *args: Any, burst: int | None = None, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless (kind, peer) used up its lines this interval; True if logged.

        ``msg`` is the code's own format; the ``args`` are escaped with :func:`safe`.
        """
        if not logger.isEnabledFor(level):
            return False
        now = self.clock()
        key = (kind, peer)
        slot = self._slots.get(key)
        if slot is not None and now - slot.start >= self.interval:
            self._summarize(key, slot, now)
            slot = None
        if slot is None:
            if len(self._slots) >= self.max_keys:
                self.flush(now)
                if len(self._slots) >= self.max_keys:
                    key = (kind, "other peers")
                    slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(now, logger, level)
        if slot.logged >= (self.burst if burst is None else burst):
            slot.suppressed += 1
            return False
        slot.logged += 1
        logger.log(level, msg, *[safe(a) if isinstance(a, str) else a for a in args],
                   exc_info=exc_info)
        return True

    def clear(self) -> None:
        """Forget every key, without summaries (tests)."""
        self._slots.clear()

    def flush(self, now: float | None = None, *, everything: bool = False) -> None:
        """Log the summaries of the intervals that are over (of all of them with
        ``everything``: at shutdown), and forget their keys."""
        if now is None:
            now = self.clock()
        for key, slot in list(self._slots.items()):
            if everything or now - slot.start >= self.interval:
                self._summarize(key, slot, now)

    def _summarize(self, key: tuple[str, str], slot: _Slot, now: float) -> None:
        del self._slots[key]
        if slot.suppressed:
            kind, peer = key
            slot.logger.log(slot.level, "%s from %s: %d more like this in the last %.0fs",
                            kind, safe(peer), slot.suppressed, now - slot.start)


#: The one the daemon and the iSCSI core share (the daemon flushes it periodically).
PROBLEMS = ProblemLog()
