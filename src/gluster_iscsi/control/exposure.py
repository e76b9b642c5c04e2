"""Which targets anyone on the network can log in to: the warning for an open door.

A target is *exposed* when the daemon listens beyond loopback (a wildcard or any non-loopback
address), its ACL lets every initiator in (``ALL``, ``0.0.0.0/0`` or ``::/0``) and it asks no
CHAP. An empty ACL is not open here: as in tgt, a target with no rule admits nobody. Rules by
initiator name or by a narrower network are the administrator's choice and not warned about.

Pure: works on the config document (the dict ``control.config`` validates), no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any

_OPEN_NETWORKS = {"ALL", "0.0.0.0/0", "::/0"}


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a wildcard or any other name is not."""
    host = host.strip("[]").split("%", 1)[0]
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: it may well resolve to a public address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _is_open(target: dict[str, Any]) -> bool:
    return any(
        str(r.get("network") or "").upper() in _OPEN_NETWORKS for r in target.get("acl") or []
    )


def exposed(cfg: dict[str, Any] | None) -> list[str]:
    """One warning per target that every initiator beyond loopback may log in to."""
    if not cfg:
        return []
    outside = [p for p in cfg.get("portals") or [] if not is_loopback_host(str(p.get("host", "")))]
    if not outside:
        return []
    where = ", ".join(
        f"[{p['host']}]:{p['port']}" if ":" in str(p["host"]) else f"{p['host']}:{p['port']}"
        for p in outside
    )
    return [
        f"target {t['name']} is open to every initiator (ACL ALL) without CHAP and the daemon "
        f"listens beyond loopback on {where}: anyone who can reach it can read and write its "
        f"LUNs (limit it with 'acl add/remove' or require CHAP with 'auth bind')"
        for t in cfg.get("targets") or []
        if _is_open(t) and not t.get("incoming")
    ]


def newly_exposed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """The warnings of ``after`` that ``before`` did not have (a change just opened the door)."""
    old = set(exposed(before))
    return [w for w in exposed(after) if w not in old]
