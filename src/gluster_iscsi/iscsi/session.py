"""iSCSI sessions (RFC 7143 4.4): identity, TSIH allocation, the CmdSN window.

A session is shared by its connections (we negotiate MaxConnections=1, so one at a time,
but a new login with the same ISID reinstates the session). The :class:`SessionTable` is the
daemon-wide registry; it is pure data, driven by the connection state machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# At run time too: compiled (setup.py), a dataclass's field types must exist.
from ..scsi.task import Nexus
from .params import SessionParams
from .portal import TargetEntry


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic 'a < b' for 32-bit sequence numbers (RFC 1982)."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


@dataclass(eq=False)
class Session:
    tsih: int
    isid: bytes
    initiator_name: str
    session_type: str  # "Normal" or "Discovery"
    target: TargetEntry | None
    nexus: Nexus | None
    params: SessionParams
    #: How many commands may be outstanding at once; shapes MaxCmdSN.
    queue_depth: int = 128
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    outstanding: int = 0
    #: Free for the server (e.g. counters for the sessions view).
    extra: dict[str, Any] = field(default_factory=dict)

    def start_window(self, cmdsn: int) -> None:
        self.exp_cmdsn = cmdsn & 0xFFFFFFFF
        self.max_cmdsn = (cmdsn + self.queue_depth - 1) & 0xFFFFFFFF

    def in_window(self, cmdsn: int) -> bool:
        return sn_le(self.exp_cmdsn, cmdsn) and sn_le(cmdsn, self.max_cmdsn)

    def advance(self) -> None:
        """The command with CmdSN == ExpCmdSN was taken in."""
        self.exp_cmdsn = (self.exp_cmdsn + 1) & 0xFFFFFFFF
        self.outstanding += 1

    def retire(self) -> None:
        """A numbered command finished: open the window again (MaxCmdSN never goes back)."""
        self.outstanding -= 1
        self._widen()

    def _widen(self) -> None:
        candidate = (self.exp_cmdsn - 1 + self.queue_depth - self.outstanding) & 0xFFFFFFFF
        if sn_lt(self.max_cmdsn, candidate):
            self.max_cmdsn = candidate


@dataclass
class SessionTable:
    """Every logged-in session of one daemon, by TSIH and by (initiator, ISID, target)."""

    by_tsih: dict[int, Session] = field(default_factory=dict)
    _next_tsih: int = 1

    def allocate_tsih(self) -> int:
        for _ in range(0xFFFF):
            tsih = self._next_tsih
            self._next_tsih = self._next_tsih % 0xFFFF + 1  # TSIH 0 is reserved
            if tsih not in self.by_tsih:
                return tsih
        raise RuntimeError("no free TSIH")

    def find(self, initiator_name: str, isid: bytes, target_name: str | None) -> Session | None:
        for s in self.by_tsih.values():
            if (
                s.isid == isid
                and s.initiator_name == initiator_name
                and (s.target.name if s.target else None) == target_name
            ):
                return s
        return None

    def add(self, session: Session) -> None:
        self.by_tsih[session.tsih] = session

    def remove(self, session: Session) -> None:
        if self.by_tsih.get(session.tsih) is session:
            del self.by_tsih[session.tsih]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.by_tsih.values()))
