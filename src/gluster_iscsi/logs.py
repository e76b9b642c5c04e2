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

Lines about a peer carry structured fields (``fields=`` of :meth:`ProblemLog.report`, or
``extra={"fields": {...}}``): ``initiator``, ``address``, ``target``, ``tsih``, ``reason``.
``serve --log-format json`` (:func:`configure`) prints them as keys of one JSON object per
line; the text format has them in its message already.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import IO, Any

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

    The keys are kept oldest first (a key is made anew when its interval ends, and the
    clock only goes forward), so making room for a new key looks at the oldest ones only:
    O(1) per report however full the table is, never a scan of every key.
    """

    def __init__(self, interval: float = 10.0, burst: int = 1, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()

    def report(self, logger: logging.Logger, level: int, kind: str, peer: str, msg: str,
               *args: Any, burst: int | None = None, exc_info: bool = False,
               fields: dict[str, Any] | None = None) -> bool:
        """Log ``msg % args`` unless (kind, peer) used up its lines this interval; True if logged.

        ``msg`` is the code's own format; the ``args`` are escaped with :func:`safe`.
        ``fields`` go with the line as structured data (the JSON log format's keys).
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
                self._expire_oldest(now)
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
                   exc_info=exc_info, extra=None if fields is None else {"fields": fields})
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

    def _expire_oldest(self, now: float) -> None:
        """Summarize and forget the keys whose interval is over, oldest first, stopping at the
        first one still running (the ones after it are younger)."""
        slots = self._slots
        while slots:
            key, slot = next(iter(slots.items()))
            if now - slot.start < self.interval:
                return
            self._summarize(key, slot, now)

    def _summarize(self, key: tuple[str, str], slot: _Slot, now: float) -> None:
        del self._slots[key]
        if slot.suppressed:
            kind, peer = key
            slot.logger.log(slot.level, "%s from %s: %d more like this in the last %.0fs",
                            kind, safe(peer), slot.suppressed, now - slot.start)


#: The one the daemon and the iSCSI core share (the daemon flushes it periodically).
PROBLEMS = ProblemLog()


# ---------------------------------------------------------------------------- output formats

#: syslog priority per level: the ``<N>`` prefix journald reads from a stream (sd-daemon(3)).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message``; for journald no time (it stamps each line itself) and a
    ``<N>`` priority prefix, so ``journalctl -p warning`` finds the warnings."""

    def __init__(self, journald: bool = False) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt if journald else "%(asctime)s " + fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journald:
            return f"<{_priority(record.levelno)}>{text}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601; left out for journald), ``level``,
    ``logger``, ``message``, the record's structured ``fields`` (initiator, address, target,
    tsih, reason ...), and ``exception`` (the traceback) if there is one. Non-ASCII and control
    characters are escaped (``\\uXXXX``), so a peer's name cannot break a line."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {}
        if not self.journald:
            obj["time"] = datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z")
        obj["level"] = record.levelname
        obj["logger"] = record.name
        obj["message"] = record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for k, v in fields.items():
                if v is not None and k not in obj:
                    obj[k] = v
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        text = json.dumps(obj, default=str)
        return f"<{_priority(record.levelno)}>{text}" if self.journald else text


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so :func:`configure` can replace it (and leave anyone else's alone)."""


def configure(level: int, fmt: str = "text", stream: IO[str] | None = None,
              journald: bool | None = None) -> None:
    """The daemon's logging: ``fmt`` is ``text`` or ``json``; ``journald`` (default: the
    stream, stderr, is journald's, ``$JOURNAL_STREAM``) drops our timestamps, adds priorities.

    Like ``logging.basicConfig``, it leaves a root logger configured by someone else (a test
    harness) as it is."""
    from .systemd import journald_stderr

    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _Handler):
            root.removeHandler(h)
    if root.handlers:
        return
    stream = stream or sys.stderr
    if journald is None:
        try:
            journald = journald_stderr(fd=stream.fileno())
        except (AttributeError, OSError, ValueError):  # not a file (a test's buffer)
            journald = False
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter(journald) if fmt == "json" else TextFormatter(journald))
    root.addHandler(handler)
    root.setLevel(level)
