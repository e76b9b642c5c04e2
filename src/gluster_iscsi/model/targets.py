"""The target model: targets, their LUNs, ACLs and CHAP accounts, and the portals.

Pure data and pure access checks; no I/O. The iSCSI login code asks this model who may log
in where, and the control API edits it. Runtime objects (the SCSI ``DeviceServer`` of each
target and its ``LogicalUnit``s) hang off it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..scsi.device import DeviceServer


@dataclass(frozen=True, slots=True)
class Portal:
    """A listening address, and the address SendTargets advertises for it (NAT, guests)."""

    host: str
    port: int = 3260
    advertise: str | None = None  # "host[:port]"; None means the listening address

    def advertised(self, local_address: str = "") -> str:
        """The address SendTargets reports. For a wildcard portal (0.0.0.0, ::) without
        ``advertise`` that is the address the initiator connected to (``local_address``, the
        connection's "host:port" sockname), as tgt does: a wildcard is no address to connect to."""
        if self.advertise:
            return self.advertise if ":" in self.advertise.rsplit("]", 1)[-1] else f"{self.advertise}:{self.port}"
        host = self.host
        if host in ("0.0.0.0", "::", "") and local_address:
            local = local_address.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
            if local.lower().startswith("::ffff:") and "." in local:
                local = local[7:]  # an IPv4 initiator on a dual-stack socket
            if local:
                host = local
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ChapAccount:
    user: str
    secret: str


@dataclass(slots=True)
class AccessRule:
    """One ACL entry: an initiator name, an address or CIDR, or ALL."""

    initiator: str | None = None  # exact IQN/EUI/NAA (case-insensitive)
    network: str | None = None  # "10.0.0.0/8", "127.0.0.1", or "ALL"
    #: Per-initiator CHAP (only on ``initiator`` rules): when set, this initiator must
    #: authenticate with one of these instead of the target's accounts.
    incoming: list[ChapAccount] = field(default_factory=list)
    outgoing: ChapAccount | None = None

    def matches(self, initiator_name: str, address: str) -> bool:
        if self.initiator is not None:
            return self.initiator.lower() == initiator_name.lower()
        if self.network is None or self.network.upper() == "ALL":
            return True
        try:
            return ipaddress.ip_address(address.split("%", 1)[0]) in ipaddress.ip_network(
                self.network, strict=False
            )
        except ValueError:
            return False


@dataclass(slots=True)
class Target:
    name: str
    tid: int
    alias: str | None = None
    tpgt: int = 1
    acl: list[AccessRule] = field(default_factory=list)
    #: CHAP accounts an initiator may authenticate as (one-way CHAP).
    incoming: list[ChapAccount] = field(default_factory=list)
    #: The account the target answers with for mutual CHAP.
    outgoing: ChapAccount | None = None
    device: DeviceServer | None = None
    #: Login key values this target offers instead of the daemon's defaults
    #: (``Daemon.params``), e.g. {"MaxRecvDataSegmentLength": "65536"}.
    params: dict[str, str] = field(default_factory=dict)

    def allows(self, initiator_name: str, address: str) -> bool:
        """No rule means nobody (as tgt: a target is closed until bound); ALL opens it."""
        return any(rule.matches(initiator_name, address) for rule in self.acl)

    def chap_for(self, initiator_name: str) -> tuple[list[ChapAccount], ChapAccount | None]:
        """(incoming accounts, outgoing account) this initiator must use at login.

        A per-initiator rule with accounts wins over the target's own accounts. An empty
        incoming list means no CHAP is required.
        """
        for rule in self.acl:
            if (
                rule.initiator is not None
                and rule.initiator.lower() == initiator_name.lower()
                and (rule.incoming or rule.outgoing)
            ):
                return list(rule.incoming), rule.outgoing
        return list(self.incoming), self.outgoing

    def offered_params(self, defaults: dict[str, str]) -> dict[str, str]:
        """The daemon's defaults overridden by this target's own values."""
        return {**defaults, **self.params}


@dataclass(slots=True)
class TargetRegistry:
    """Every target of one daemon, plus discovery-session authentication."""

    targets: dict[str, Target] = field(default_factory=dict)
    portals: list[Portal] = field(default_factory=list)
    discovery_incoming: list[ChapAccount] = field(default_factory=list)
    discovery_outgoing: ChapAccount | None = None

    def lookup(self, name: str) -> Target | None:
        return self.targets.get(name.lower()) or next(
            (t for t in self.targets.values() if t.name.lower() == name.lower()), None
        )

    def by_tid(self, tid: int) -> Target | None:
        return next((t for t in self.targets.values() if t.tid == tid), None)

    def visible_to(self, initiator_name: str, address: str) -> list[Target]:
        return [t for t in self.targets.values() if t.allows(initiator_name, address)]
