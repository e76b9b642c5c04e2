"""SendTargets: which address a discovery answer gives for each portal (issue 15 item 3)."""

from __future__ import annotations

import pytest

from gluster_iscsi.iscsi.connection import Connection
from gluster_iscsi.iscsi.session import SessionTable
from gluster_iscsi.model.targets import AccessRule, Portal, Target, TargetRegistry

from . import initiator as I

TNAME = "iqn.2026-11.org.gluster-iscsi:test"
INAME = "iqn.1994-05.com.example:client"


def send_targets(portals: list[Portal], local_address: str) -> list[bytes]:
    reg = TargetRegistry()
    reg.targets[TNAME] = Target(TNAME, 1, acl=[AccessRule(network="ALL")])
    reg.portals = portals
    conn = Connection(reg, SessionTable(), peer_address="192.0.2.7", local_address=local_address)
    conn.receive_data(I.login([("InitiatorName", INAME), ("SessionType", "Discovery")]))
    (r,) = I.parse(conn.data_to_send(), header_digest=False)
    assert r.status_class == 0
    conn.receive_data(I.text_req([("SendTargets", "All")], itt=2, cmdsn=1))
    (t,) = I.parse(conn.data_to_send(), header_digest=False)
    return [kv for kv in bytes(t.data).split(b"\0") if kv.startswith(b"TargetAddress=")]


@pytest.mark.parametrize(("portal", "local", "want"), [
    (Portal("0.0.0.0", 3260), "192.0.2.1:3260", b"TargetAddress=192.0.2.1:3260,1"),
    (Portal("::", 3261), "2001:db8::5:3261", b"TargetAddress=[2001:db8::5]:3261,1"),
    # an IPv4 initiator on a dual-stack [::] socket: its address as IPv4
    (Portal("::", 3260), "::ffff:192.0.2.1:3260", b"TargetAddress=192.0.2.1:3260,1"),
])  # fmt: skip
def test_wildcard_portal_answers_with_the_address_the_initiator_connected_to(portal, local, want):
    assert send_targets([portal], local) == [want]


def test_advertise_and_specific_portals_are_reported_as_configured():
    got = send_targets(
        [Portal("0.0.0.0", 3260, advertise="10.0.2.2"), Portal("127.0.0.1", 3262)],
        "127.0.0.1:3262",
    )
    assert got == [b"TargetAddress=10.0.2.2:3260,1", b"TargetAddress=127.0.0.1:3262,1"]


def test_wildcard_is_never_reported():
    for portal in (Portal("0.0.0.0"), Portal("::")):
        assert all(b"0.0.0.0" not in a and b"[::]" not in a
                   for a in send_targets([portal], "127.0.0.1:3260"))
