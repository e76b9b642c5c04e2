from gluster_iscsi.model.targets import AccessRule, ChapAccount, Target, TargetRegistry

ALICE = ChapAccount("alice", "alicesecret12")
BOB = ChapAccount("bob", "bobsecret1234")
CAROL = ChapAccount("carol", "carolsecret12")


def test_a_target_without_rules_admits_nobody_and_all_admits_everyone():
    t = Target("iqn.2001-04.com.example:t", 1)
    assert not t.allows("iqn.1994-05.com.redhat:c", "10.0.0.1")
    t.acl.append(AccessRule(network="ALL"))
    assert t.allows("iqn.1994-05.com.redhat:c", "10.0.0.1")


def test_rules_by_name_address_and_cidr():
    t = Target("iqn.2001-04.com.example:t", 1, acl=[
        AccessRule(initiator="iqn.1994-05.com.redhat:Client"),
        AccessRule(network="192.168.1.0/24"),
        AccessRule(network="fd00::5"),
    ])  # fmt: skip
    assert t.allows("iqn.1994-05.com.redhat:client", "10.0.0.1")  # names are case-insensitive
    assert t.allows("iqn.x:other", "192.168.1.77")
    assert not t.allows("iqn.x:other", "192.168.2.1")
    assert t.allows("iqn.x:other", "fd00::5%eth0")
    reg = TargetRegistry({t.name: t})
    assert reg.visible_to("iqn.x:other", "10.9.9.9") == []
    assert reg.by_tid(1) is t and reg.by_tid(2) is None


def test_per_initiator_chap_wins_over_the_targets_accounts():
    t = Target(
        "iqn.2001-04.com.example:t", 1,
        acl=[AccessRule(initiator="iqn.x:special", incoming=[CAROL], outgoing=BOB),
             AccessRule(network="ALL")],
        incoming=[ALICE],
    )  # fmt: skip
    assert t.chap_for("iqn.X:SPECIAL") == ([CAROL], BOB)
    assert t.chap_for("iqn.x:anyone") == ([ALICE], None)


def test_offered_params_override_daemon_defaults():
    t = Target("iqn.2001-04.com.example:t", 1, params={"MaxRecvDataSegmentLength": "65536"})
    merged = t.offered_params({"MaxRecvDataSegmentLength": "262144", "InitialR2T": "Yes"})
    assert merged == {"MaxRecvDataSegmentLength": "65536", "InitialR2T": "Yes"}
