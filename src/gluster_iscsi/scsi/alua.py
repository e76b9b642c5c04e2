"""Asymmetric logical unit access (SPC-4 5.15): target port groups and their access states.

One :class:`Alua` per logical unit (``LogicalUnit.alua``). A lone gateway leaves it
unrestricted: every target port group is active/optimized and REPORT TARGET PORT GROUPS
lists the groups of the nexuses seen so far. A gateway group (``server/group.py``, docs/HA.md)
hands it the full table with :meth:`Alua.set_groups`: from then on each command is checked
against the state of the target port group it came through (the opcode table says which
states allow it, :data:`RULES`), and RTPG reports the table, the same bytes through every
port. ALUA is implicit only (TPGS 01b): SET TARGET PORT GROUPS is not offered.

Nothing here does I/O; the table is set from another thread under ``lu.state_lock`` and
read without it (one reference, replaced whole).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .sense import Asc, CheckCondition, SenseKey

if TYPE_CHECKING:
    from .lu import LogicalUnit


class AccessState(enum.IntEnum):
    """Target port asymmetric access states (SPC-4 6.37, table 307)."""

    ACTIVE_OPTIMIZED = 0x0
    ACTIVE_NON_OPTIMIZED = 0x1
    STANDBY = 0x2
    UNAVAILABLE = 0x3
    OFFLINE = 0xE
    TRANSITIONING = 0xF


#: The states :meth:`Alua.set_groups` accepts, and the supported-state bits RTPG reports
#: for them (SPC-4 6.37 table 306: T_SUP 80h, U_SUP 08h, S_SUP 04h, AO_SUP 01h). No
#: active/non-optimized (one owner per LUN, docs/HA.md), LBA dependent or offline.
SUPPORTED: frozenset[AccessState] = frozenset({
    AccessState.ACTIVE_OPTIMIZED,
    AccessState.STANDBY,
    AccessState.UNAVAILABLE,
    AccessState.TRANSITIONING,
})
SUPPORTED_BITS = 0x80 | 0x08 | 0x04 | 0x01

#: RTPG status codes (SPC-4 6.37 table 308).
STATUS_NONE = 0x00
STATUS_IMPLICIT = 0x02  # altered by implicit asymmetric logical unit access behaviour


def allowed_in(*states: AccessState) -> int:
    """The opcode table's ``alua`` mask: the non-active states a command may run in."""
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


#: Masks for the opcode table (SPC-4 5.15.2.4.4 standby, 5.15.2.4.5 unavailable, 5.15.2.5
#: transitioning). The active states allow everything and are never looked up.
STANDBY = allowed_in(AccessState.STANDBY)
UNAVAILABLE = allowed_in(AccessState.UNAVAILABLE)
TRANSITIONING = allowed_in(AccessState.TRANSITIONING)
#: INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE: every state.
ANY_STATE = STANDBY | UNAVAILABLE | TRANSITIONING

#: A refused command's sense: NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ... (SPC-4 5.15.2.4).
REFUSALS: dict[AccessState, Asc] = {
    AccessState.STANDBY: Asc.LU_NOT_ACCESSIBLE_TARGET_PORT_STANDBY,
    AccessState.UNAVAILABLE: Asc.LU_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE,
    AccessState.TRANSITIONING: Asc.LU_NOT_ACCESSIBLE_TRANSITIONING,
}

#: Default IMPLICIT TRANSITION TIME (RTPG extended header), seconds.
IMPLICIT_TRANSITION_SECONDS = 60


class Group:
    """One target port group as the table holds it: state, RTPG status code, ports."""

    __slots__ = ("state", "status", "ports")

    def __init__(self, state: AccessState, status: int, ports: tuple[int, ...]) -> None:
        self.state = state
        self.status = status
        self.ports = ports


class Alua:
    """The LU's target port groups and their access states (see the module's docstring)."""

    def __init__(self, lu: LogicalUnit) -> None:
        self._lu = lu
        #: False (a lone gateway): every group active/optimized, nothing checked per command.
        self.restricted = False
        #: RTPG extended header's IMPLICIT TRANSITION TIME when restricted (0..255 s).
        self.implicit_transition_seconds = IMPLICIT_TRANSITION_SECONDS
        self._groups: dict[int, Group] = {}

    # -- the group runtime's side ---------------------------------------------------------

    def set_groups(
        self,
        groups: Mapping[int, tuple[AccessState, Sequence[int]]],
        *,
        announce: bool = True,
    ) -> bool:
        """Install the full table: target port group id -> (state, relative target ports).

        From now on the LU is restricted. Returns whether anything changed (a state, the
        set of groups or a group's ports; the first table always does); on a change, with
        ``announce``, every nexus of the LU gets ASYMMETRIC ACCESS STATE CHANGED (2A/06).
        A group whose state changed reports status "altered by implicit ALUA" in RTPG.
        """
        table: dict[int, tuple[AccessState, tuple[int, ...]]] = {}
        owner: dict[int, int] = {}
        for tpg, (state, ports) in groups.items():
            if not 0 < tpg <= 0xFFFF:
                raise ValueError(f"target port group {tpg} is not 1..65535")
            state = AccessState(state)
            if state not in SUPPORTED:
                raise ValueError(f"access state {state.name} is not supported")
            rel = tuple(sorted(set(ports)))
            for port in rel:
                if not 0 < port <= 0xFFFF:
                    raise ValueError(f"relative target port {port} is not 1..65535")
                if port in owner:
                    raise ValueError(f"relative target port {port} is in groups "
                                     f"{owner[port]} and {tpg}")
                owner[port] = tpg
            table[tpg] = (state, rel)
        lu = self._lu
        with lu.state_lock:
            old = self._groups
            changed = not self.restricted or set(old) != set(table)
            new: dict[int, Group] = {}
            for tpg, (state, rel) in table.items():
                before = old.get(tpg)
                if before is None:
                    new[tpg] = Group(state, STATUS_NONE, rel)
                    continue
                if before.state != state or before.ports != rel:
                    changed = True
                status = STATUS_IMPLICIT if before.state != state else before.status
                new[tpg] = Group(state, status, rel)
            self._groups = new
            self.restricted = True
            if changed and announce:
                lu.queue_ua_all(Asc.ASYMMETRIC_ACCESS_STATE_CHANGED)
        return changed

    def state_of(self, tpg: int) -> AccessState:
        """The access state of target port group ``tpg``: active/optimized unless
        restricted; a group the table does not name is unavailable (this gateway does not
        know its state, so it must not touch the medium through it)."""
        if not self.restricted:
            return AccessState.ACTIVE_OPTIMIZED
        group = self._groups.get(tpg)
        return group.state if group is not None else AccessState.UNAVAILABLE

    # -- the device server's side ---------------------------------------------------------

    def check(self, allowed: int, tpg: int) -> None:
        """Refuse a command whose opcode-table mask ``allowed`` excludes the state of
        ``tpg`` (NOT READY, 04/0Bh standby, 04/0Ch unavailable, 04/0Ah transitioning).
        Only called when :attr:`restricted`."""
        state = self.state_of(tpg)
        if state is AccessState.ACTIVE_OPTIMIZED or state is AccessState.ACTIVE_NON_OPTIMIZED:
            return
        if not allowed & (1 << state):
            raise CheckCondition(SenseKey.NOT_READY, REFUSALS[state])

    def descriptors(self) -> list[tuple[int, AccessState, int, int, tuple[int, ...]]]:
        """RTPG's target port group descriptors when restricted, by group id:
        (group, state, supported-state bits, status code, relative target ports)."""
        groups = self._groups
        return [
            (tpg, g.state, SUPPORTED_BITS, g.status, g.ports)
            for tpg, g in sorted(groups.items())
        ]
