"""What the iSCSI layer asks of the target model: the protocol ``model/`` implements.

The iSCSI core names targets, checks who may log in, takes CHAP secrets, offers login keys,
lists targets for SendTargets and advertises portals, and it does so only through these
``Protocol`` classes (structural: ``model.targets``'s :class:`Target`, :class:`TargetRegistry`,
:class:`ChapAccount` and :class:`Portal` satisfy them without naming them). So ``iscsi/``
imports nothing from ``model/``, ``server/``, ``control/`` or ``cli/``, and a test (or a
gateway group's shared directory) can hand it any object of the right shape.

Compiled code checks concrete classes at run time but not protocols: the daemon's objects
pass through the compiled data path untouched (docs/DESIGN.md, "The compiled data path").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class ChapSecret(Protocol):
    """One CHAP account: the name and secret the peer proves (incoming) or we do (outgoing)."""

    @property
    def user(self) -> str: ...

    @property
    def secret(self) -> str: ...


class AdvertisedPortal(Protocol):
    """A listening portal as SendTargets reports it."""

    def advertised(self, local_address: str = "") -> str:
        """"host:port" to report; ``local_address`` is the connection's own "host:port"
        (the answer for a wildcard portal)."""
        ...


class TargetEntry(Protocol):
    """One target as a login and a session see it."""

    @property
    def name(self) -> str: ...

    @property
    def alias(self) -> str | None: ...

    @property
    def tpgt(self) -> int: ...

    @property
    def device(self) -> Any:
        """What the server attached to the target (its SCSI device server): carried with the
        session for the server, never looked at by the iSCSI layer."""
        ...

    def allows(self, initiator_name: str, address: str) -> bool:
        """May this initiator, at this address, log in to the target (its ACL)?"""
        ...

    def chap_for(self, initiator_name: str) -> tuple[Sequence[ChapSecret], ChapSecret | None]:
        """The incoming accounts this initiator may authenticate with (none: no CHAP) and
        the outgoing account for mutual CHAP."""
        ...

    def offered_params(self, defaults: dict[str, str]) -> Mapping[str, str]:
        """The login keys the target offers: the daemon's ``defaults`` with its overrides."""
        ...


class TargetDirectory(Protocol):
    """Every target, the portals, and the discovery session's CHAP accounts."""

    @property
    def portals(self) -> Sequence[AdvertisedPortal]: ...

    @property
    def discovery_incoming(self) -> Sequence[ChapSecret]: ...

    @property
    def discovery_outgoing(self) -> ChapSecret | None: ...

    def lookup(self, name: str) -> TargetEntry | None:
        """The target of this name (case-insensitive), or None."""
        ...

    def visible_to(self, initiator_name: str, address: str) -> Sequence[TargetEntry]:
        """The targets SendTargets=All reports to this initiator (those it may log in to)."""
        ...


__all__ = ["AdvertisedPortal", "ChapSecret", "TargetDirectory", "TargetEntry"]
