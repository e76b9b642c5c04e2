"""Key negotiation (RFC 7143 6.2, 13; RFC 7144 2.1): one table row per rule."""

from __future__ import annotations

import dataclasses

import pytest

from gluster_iscsi.iscsi.errors import LoginError, LoginStatus, ProtocolError
from gluster_iscsi.iscsi.params import KEYS, Kind, Negotiator, SessionParams, Use

TARGET = {
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "ImmediateData": "Yes",
    "InitialR2T": "Yes",
    "MaxOutstandingR2T": "8",
    "HeaderDigest": "CRC32C,None",
    "DataDigest": "CRC32C,None",
    "MaxConnections": "1",
    "ErrorRecoveryLevel": "0",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "20",
}


def answer(key: str, value: str, target: dict[str, str] | None = None,
           session_type: str = "Normal", stage: str = "operational") -> str | None:
    n = Negotiator(TARGET if target is None else target)
    out = dict(n.negotiate([(key, value)], stage=stage, session_type=session_type))
    return out.get(key)


# (key, initiator offers, target value or None for TARGET's, expected answer)
RULES = [
    # Boolean OR (13.10, 13.18, 13.19)
    ("InitialR2T", "No", "No", "No"),
    ("InitialR2T", "No", "Yes", "Yes"),
    ("InitialR2T", "Yes", "No", "Yes"),
    ("DataPDUInOrder", "No", "No", "No"),
    ("DataPDUInOrder", "No", "Yes", "Yes"),
    ("DataSequenceInOrder", "No", "No", "No"),
    ("DataSequenceInOrder", "Yes", "No", "Yes"),
    # Boolean AND (13.11)
    ("ImmediateData", "Yes", "Yes", "Yes"),
    ("ImmediateData", "Yes", "No", "No"),
    ("ImmediateData", "No", "Yes", "No"),
    # Min (13.2, 13.13, 13.14, 13.16, 13.17, 13.20, RFC 7144)
    ("MaxConnections", "8", "1", "1"),
    ("MaxConnections", "2", "4", "2"),
    ("MaxBurstLength", "16776192", None, "1048576"),
    ("MaxBurstLength", "65536", None, "65536"),
    ("FirstBurstLength", "65536", None, "65536"),
    ("FirstBurstLength", "16777215", None, "262144"),
    ("DefaultTime2Retain", "0", None, "0"),
    ("DefaultTime2Retain", "3600", None, "20"),
    ("MaxOutstandingR2T", "1", None, "1"),
    ("MaxOutstandingR2T", "65535", None, "8"),
    ("ErrorRecoveryLevel", "2", None, "0"),
    ("ErrorRecoveryLevel", "1", "2", "1"),
    ("iSCSIProtocolLevel", "2", None, "1"),
    ("iSCSIProtocolLevel", "0", None, "0"),
    # Max (13.15)
    ("DefaultTime2Wait", "0", None, "2"),
    ("DefaultTime2Wait", "10", None, "10"),
    # Hex numbers are numbers too (RFC 7143 6.1)
    ("MaxBurstLength", "0x10000", None, "65536"),
    # Lists: the first value in the initiator's list the target supports (6.2.1)
    ("HeaderDigest", "CRC32C,None", None, "CRC32C"),
    ("HeaderDigest", "None,CRC32C", None, "None"),
    ("HeaderDigest", "CRC32C", "None", "Reject"),
    ("DataDigest", "CRC32C", None, "CRC32C"),
    ("DataDigest", "None", "CRC32C", "Reject"),
    ("DataDigest", "Foo,None", None, "None"),
    ("TaskReporting", "FastAbort,RFC3720", None, "RFC3720"),
    ("TaskReporting", "ResponseFence,RFC3720", "ResponseFence,RFC3720", "ResponseFence"),
    # Out-of-range or malformed values: Reject (6.2.1), login goes on
    ("MaxBurstLength", "511", None, "Reject"),
    ("MaxBurstLength", "16777216", None, "Reject"),
    ("MaxConnections", "0", None, "Reject"),
    ("MaxConnections", "65536", None, "Reject"),
    ("DefaultTime2Wait", "3601", None, "Reject"),
    ("ErrorRecoveryLevel", "3", None, "Reject"),
    ("iSCSIProtocolLevel", "32", None, "Reject"),
    ("MaxBurstLength", "lots", None, "Reject"),
    ("MaxBurstLength", "0bAAEAAA==", None, "Reject"),  # numbers are never base64
    ("MaxBurstLength", "-1", None, "Reject"),
    ("InitialR2T", "yes", None, "Reject"),
    ("ImmediateData", "", None, "Reject"),
    ("HeaderDigest", "", None, "Reject"),
    ("HeaderDigest", "CRC32C,,None", None, "Reject"),
    ("HeaderDigest", "X" * 256 + ",None", None, "Reject"),
    # Obsolete keys (13.26): markers No, marker intervals Reject, never NotUnderstood
    ("OFMarker", "Yes", None, "No"),
    ("IFMarker", "No", None, "No"),
    ("OFMarkInt", "2048", None, "Reject"),
    ("IFMarkInt", "1~65535", None, "Reject"),
    # Unknown and vendor keys (6.2.1 / 13.5)
    ("X-com.example.Feature", "Yes", None, "NotUnderstood"),
    ("X#Registered", "1", None, "NotUnderstood"),
    ("Z-private", "1", None, "NotUnderstood"),
    ("NoSuchKey", "1", None, "NotUnderstood"),
    ("RDMAExtensions", "Yes", None, "NotUnderstood"),
    # Declaratives are recorded, not echoed
    ("InitiatorAlias", "host1", None, None),
    ("MaxRecvDataSegmentLength", "65536", None, None),
]


@pytest.mark.parametrize(("key", "offer", "ours", "expected"), RULES)
def test_negotiation_rule(key: str, offer: str, ours: str | None, expected: str | None) -> None:
    target = dict(TARGET)
    if ours is not None:
        target[key] = ours
    assert answer(key, offer, target) == expected


DISCOVERY_IRRELEVANT = [
    name for name, k in KEYS.items()
    if not k.discovery and k.kind in (Kind.BOOLEAN, Kind.NUMERICAL, Kind.LIST)
]


def test_discovery_irrelevant_set_is_the_rfc_one() -> None:
    assert set(DISCOVERY_IRRELEVANT) == {
        "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
        "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder",
        "DataSequenceInOrder", "TaskReporting", "iSCSIProtocolLevel",
    }


@pytest.mark.parametrize("key", DISCOVERY_IRRELEVANT)
def test_session_keys_are_irrelevant_in_discovery(key: str) -> None:
    value = KEYS[key].default or "1"
    assert answer(key, value, session_type="Discovery") == "Irrelevant"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("HeaderDigest", "CRC32C,None", "CRC32C"), ("DataDigest", "None", "None"),
     ("ErrorRecoveryLevel", "1", "0")],
)
def test_discovery_relevant_keys_are_negotiated(key: str, value: str, expected: str) -> None:
    assert answer(key, value, session_type="Discovery") == expected


def test_session_type_sent_in_the_same_request_decides_relevance() -> None:
    n = Negotiator(TARGET)
    out = n.negotiate([("MaxBurstLength", "65536"), ("SessionType", "Discovery")],
                      stage="security")
    assert out == [("MaxBurstLength", "Irrelevant")]
    assert n.result().session_type == "Discovery"
    assert n.result().max_burst == 262144


def test_session_type_of_an_earlier_request_is_remembered() -> None:
    n = Negotiator(TARGET)
    n.negotiate([("SessionType", "Discovery"), ("InitiatorName", "iqn.a")], stage="security")
    assert n.negotiate([("InitialR2T", "No")], stage="operational") == [
        ("InitialR2T", "Irrelevant")]


def test_first_burst_is_irrelevant_without_immediate_data_and_with_initial_r2t() -> None:
    n = Negotiator(TARGET)
    out = n.negotiate(
        [("FirstBurstLength", "65536"), ("InitialR2T", "Yes"), ("ImmediateData", "No")],
        stage="operational",
    )
    assert out == [("FirstBurstLength", "Irrelevant"), ("InitialR2T", "Yes"),
                   ("ImmediateData", "No")]


def test_first_burst_is_relevant_with_immediate_data() -> None:
    n = Negotiator(TARGET)
    out = n.negotiate([("FirstBurstLength", "65536"), ("ImmediateData", "Yes")],
                      stage="operational")
    assert out == [("FirstBurstLength", "65536"), ("ImmediateData", "Yes")]


def test_first_burst_never_exceeds_max_burst() -> None:
    target = dict(TARGET, MaxBurstLength="16777215", FirstBurstLength="16777215")
    n = Negotiator(target)
    out = n.negotiate([("FirstBurstLength", "1048576"), ("MaxBurstLength", "65536")],
                      stage="operational")
    assert out == [("FirstBurstLength", "65536"), ("MaxBurstLength", "65536")]
    assert n.result().first_burst <= n.result().max_burst


def test_first_burst_is_bounded_by_the_default_max_burst_when_it_is_not_sent() -> None:
    target = dict(TARGET, MaxBurstLength="16777215", FirstBurstLength="16777215")
    assert answer("FirstBurstLength", "1048576", target) == "262144"


def test_max_burst_lowered_below_an_agreed_first_burst_fails_the_login() -> None:
    n = Negotiator(TARGET)
    n.negotiate([("FirstBurstLength", "262144")], stage="operational")
    with pytest.raises(LoginError) as info:
        n.negotiate([("MaxBurstLength", "65536")], stage="operational")
    assert info.value.status == LoginStatus.INITIATOR_ERROR


def test_rejected_value_keeps_the_default() -> None:
    n = Negotiator(TARGET)
    assert n.negotiate([("MaxBurstLength", "1")], stage="operational") == [
        ("MaxBurstLength", "Reject")]
    assert n.result().max_burst == 262144


def test_keys_never_sent_keep_rfc_defaults() -> None:
    n = Negotiator(TARGET)
    n.negotiate([("InitiatorName", "iqn.a")], stage="security")
    assert dataclasses.replace(n.result(), initiator_name="", max_recv_dsl=8192) == SessionParams()


def test_session_params_defaults_match_the_key_table() -> None:
    wire = SessionParams().as_dict()
    for name, key in KEYS.items():
        if key.attr is not None and key.default is not None:
            assert wire[name] == key.default, name
    assert wire["MaxRecvDataSegmentLength"] == KEYS["MaxRecvDataSegmentLength"].default


def test_session_params_wire_round_trip() -> None:
    params = SessionParams(header_digest=True, initial_r2t=False, max_burst=65536,
                           max_xmit_dsl=4096, session_type="Discovery", initiator_name="iqn.x")
    assert SessionParams.from_wire(params.as_dict()) == params
    assert params.as_dict()["HeaderDigest"] == "CRC32C"
    assert params.as_dict()["InitialR2T"] == "No"


def test_a_linux_initiator_login() -> None:
    """The keys open-iscsi sends, stage by stage, and what it gets back."""
    n = Negotiator(TARGET)
    assert n.negotiate(
        [("InitiatorName", "iqn.1994-05.com.redhat:x"), ("InitiatorAlias", "host"),
         ("TargetName", "iqn.2024-01.org.gluster:t"), ("SessionType", "Normal")],
        stage="security",
    ) == []
    out = n.negotiate(
        [("HeaderDigest", "None"), ("DataDigest", "None"), ("DefaultTime2Wait", "2"),
         ("DefaultTime2Retain", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
         ("ErrorRecoveryLevel", "0"), ("InitialR2T", "No"), ("ImmediateData", "Yes"),
         ("MaxBurstLength", "16776192"), ("FirstBurstLength", "262144"),
         ("MaxOutstandingR2T", "1"), ("MaxConnections", "1"), ("DataPDUInOrder", "Yes"),
         ("DataSequenceInOrder", "Yes"), ("MaxRecvDataSegmentLength", "262144")],
        stage="operational",
    )
    assert out == [
        ("HeaderDigest", "None"), ("DataDigest", "None"), ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"), ("InitialR2T", "Yes"), ("ImmediateData", "Yes"),
        ("MaxBurstLength", "1048576"), ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"), ("MaxConnections", "1"), ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ]
    assert n.declarations("operational", "Normal") == [("MaxRecvDataSegmentLength", "262144")]
    assert n.declarations("operational", "Normal") == []
    p = n.result()
    assert (p.initiator_name, p.initiator_alias, p.target_name) == (
        "iqn.1994-05.com.redhat:x", "host", "iqn.2024-01.org.gluster:t")
    assert (p.max_recv_dsl, p.max_xmit_dsl, p.max_burst, p.first_burst) == (
        262144, 262144, 1048576, 262144)
    assert (p.default_time2retain, p.initial_r2t, p.immediate_data) == (0, True, True)


def test_declarations_only_in_the_operational_stage() -> None:
    n = Negotiator({})
    assert n.declarations("security", "Normal") == []
    assert n.declarations("ffp", "Normal") == []
    assert n.declarations("operational", "Discovery") == [("MaxRecvDataSegmentLength", "8192")]


# --- errors -------------------------------------------------------------------------------


def test_key_sent_twice_in_one_request_is_an_initiator_error() -> None:
    with pytest.raises(LoginError) as info:
        Negotiator(TARGET).negotiate([("MaxBurstLength", "512"), ("MaxBurstLength", "512")],
                                     stage="operational")
    assert (info.value.status_class, info.value.status_detail) == (2, 0)


def test_key_sent_again_later_in_the_login_is_an_initiator_error() -> None:
    n = Negotiator(TARGET)
    n.negotiate([("InitiatorName", "iqn.a")], stage="security")
    with pytest.raises(LoginError):
        n.negotiate([("InitiatorName", "iqn.a")], stage="operational")


def test_unknown_key_sent_twice_is_still_a_duplicate() -> None:
    with pytest.raises(LoginError):
        Negotiator(TARGET).negotiate([("X-a", "1"), ("X-a", "1")], stage="operational")


LEADING_ONLY = sorted(n for n, k in KEYS.items() if k.use is Use.LO)


def test_leading_only_set_is_the_rfc_one() -> None:
    assert set(LEADING_ONLY) == {
        "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
        "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder",
        "DataSequenceInOrder", "ErrorRecoveryLevel", "SessionType", "TaskReporting",
        "iSCSIProtocolLevel",
    }


@pytest.mark.parametrize("key", LEADING_ONLY)
def test_leading_only_key_on_a_second_connection_fails_the_login(key: str) -> None:
    value = KEYS[key].default or "1"
    with pytest.raises(LoginError) as info:
        Negotiator(TARGET).negotiate([(key, value)], stage="operational", leading=False)
    assert info.value.status == LoginStatus.INITIATOR_ERROR


def test_non_leading_connection_negotiates_connection_keys_and_inherits_the_rest() -> None:
    session = SessionParams(max_burst=65536, initial_r2t=False, initiator_name="iqn.a")
    n = Negotiator(TARGET, inherited=session)
    out = n.negotiate([("InitiatorName", "iqn.a"), ("HeaderDigest", "CRC32C"),
                       ("MaxRecvDataSegmentLength", "4096")],
                      stage="operational", leading=False, session_type="Normal")
    assert out == [("HeaderDigest", "CRC32C")]
    p = n.result()
    assert (p.max_burst, p.initial_r2t, p.header_digest, p.max_xmit_dsl) == (
        65536, False, True, 4096)


@pytest.mark.parametrize(
    "key", ["AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"])
def test_security_keys_outside_the_security_stage_fail_the_login(key: str) -> None:
    with pytest.raises(LoginError) as info:
        Negotiator(TARGET).negotiate([(key, "5")], stage="operational")
    assert info.value.status == LoginStatus.INITIATOR_ERROR


def test_auth_method_in_the_security_stage() -> None:
    n = Negotiator(dict(TARGET, AuthMethod="CHAP,None"))
    assert n.negotiate([("AuthMethod", "KRB5,CHAP,None")], stage="security") == [
        ("AuthMethod", "CHAP")]
    assert n.value("AuthMethod") == "CHAP"
    assert n.result().auth_method == "CHAP"
    assert answer("AuthMethod", "CHAP", {}, stage="security") == "Reject"


def test_chap_keys_are_left_to_the_authenticator() -> None:
    assert Negotiator(TARGET).negotiate([("CHAP_A", "7,5")], stage="security") == []


def test_operational_keys_are_accepted_in_the_security_stage() -> None:
    assert answer("MaxBurstLength", "65536", stage="security") == "65536"


@pytest.mark.parametrize(
    ("key", "value"),
    [("TargetAlias", "x"), ("TargetAddress", "10.0.0.1:3260,1"), ("TargetPortalGroupTag", "1")])
def test_target_only_keys_from_the_initiator_fail_the_login(key: str, value: str) -> None:
    with pytest.raises(LoginError):
        Negotiator(TARGET).negotiate([(key, value)], stage="operational")


def test_send_targets_during_login_fails_the_login() -> None:
    with pytest.raises(LoginError):
        Negotiator(TARGET).negotiate([("SendTargets", "All")], stage="operational")


@pytest.mark.parametrize(
    ("key", "value", "status"),
    [
        ("SessionType", "Bogus", LoginStatus.SESSION_TYPE_NOT_SUPPORTED),
        ("InitiatorName", "", LoginStatus.INITIATOR_ERROR),
        ("InitiatorName", "iqn." + "x" * 220, LoginStatus.INITIATOR_ERROR),
        ("TargetName", "", LoginStatus.INITIATOR_ERROR),
        ("InitiatorAlias", "a" * 256, LoginStatus.INITIATOR_ERROR),
        ("MaxRecvDataSegmentLength", "511", LoginStatus.INITIATOR_ERROR),
        ("MaxRecvDataSegmentLength", "16777216", LoginStatus.INITIATOR_ERROR),
        ("MaxRecvDataSegmentLength", "big", LoginStatus.INITIATOR_ERROR),
    ],
)
def test_malformed_declaratives_fail_the_login(key: str, value: str, status: int) -> None:
    with pytest.raises(LoginError) as info:
        Negotiator(TARGET).negotiate([(key, value)], stage="security")
    assert info.value.status == status


# --- full feature phase (Text requests) -------------------------------------------------


def test_ffp_max_recv_data_segment_length_redeclaration_updates_the_result() -> None:
    n = Negotiator(TARGET)
    n.negotiate([("MaxRecvDataSegmentLength", "8192")], stage="operational")
    assert n.negotiate([("MaxRecvDataSegmentLength", "131072")], stage="ffp") == []
    assert n.result().max_xmit_dsl == 131072
    # A new Text negotiation may declare it again.
    n.negotiate([("MaxRecvDataSegmentLength", "65536")], stage="ffp")
    assert n.result().max_xmit_dsl == 65536


def test_ffp_alias_and_vendor_keys() -> None:
    n = Negotiator(TARGET)
    assert n.negotiate([("InitiatorAlias", "new"), ("X-com.a", "1")], stage="ffp") == [
        ("X-com.a", "NotUnderstood")]
    assert n.result().initiator_alias == "new"


FFP_FORBIDDEN = sorted(
    n for n, k in KEYS.items()
    if k.use in (Use.LO, Use.IO) and k.kind is not Kind.COMMAND
    and n not in ("TargetPortalGroupTag",)
)


@pytest.mark.parametrize("key", FFP_FORBIDDEN)
def test_login_only_keys_in_ffp_are_a_protocol_error(key: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Negotiator(TARGET).negotiate([(key, KEYS[key].default or "1")], stage="ffp")
    assert info.value.reason == 0x04


def test_duplicate_in_one_ffp_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Negotiator(TARGET).negotiate(
            [("MaxRecvDataSegmentLength", "8192"), ("MaxRecvDataSegmentLength", "8192")],
            stage="ffp")


def test_malformed_declarative_in_ffp_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Negotiator(TARGET).negotiate([("MaxRecvDataSegmentLength", "1")], stage="ffp")


def test_send_targets_in_ffp_is_left_to_discovery() -> None:
    assert Negotiator(TARGET).negotiate([("SendTargets", "All")], stage="ffp") == []


# --- target configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"MaxBurstLength": "100"}, "MaxBurstLength"),
        ({"ImmediateData": "yes"}, "ImmediateData"),
        ({"HeaderDigest": "MD5"}, "HeaderDigest"),
        ({"NoSuchKey": "1"}, "NoSuchKey"),
        ({"InitiatorName": "iqn.a"}, "InitiatorName"),
        ({"OFMarker": "No"}, "OFMarker"),
        ({"MaxRecvDataSegmentLength": "16777216"}, "MaxRecvDataSegmentLength"),
        ({"FirstBurstLength": "1048576", "MaxBurstLength": "65536"}, "FirstBurstLength"),
    ],
)
def test_invalid_target_values_are_refused_at_construction(values: dict[str, str],
                                                           named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Negotiator(values)


def test_unknown_stage_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Negotiator(TARGET).negotiate([], stage="login")


def test_every_key_has_a_consistent_row() -> None:
    for name, key in KEYS.items():
        assert key.name == name
        if key.kind is Kind.NUMERICAL:
            assert key.low <= int(key.default or key.low) <= key.high, name
        if key.kind is Kind.LIST:
            assert key.default in key.choices, name


# Issue 16, item 3: pair rules only between values both agreed.
@pytest.mark.parametrize("order", ["max-first", "first-first"])
def test_a_max_burst_below_the_default_first_burst_is_agreed_with_a_smaller_first_burst(order) -> None:
    n = Negotiator(TARGET)
    pairs = [("MaxBurstLength", "32768"), ("FirstBurstLength", "16384")]
    if order == "first-first":
        pairs.reverse()
    out = dict(n.negotiate(pairs, stage="operational"))
    assert out == {"MaxBurstLength": "32768", "FirstBurstLength": "16384"}
    assert (n.result().max_burst, n.result().first_burst) == (32768, 16384)


def test_max_burst_then_first_burst_in_later_requests_is_agreed() -> None:
    n = Negotiator(TARGET)
    assert n.negotiate([("MaxBurstLength", "32768")], stage="security") == [("MaxBurstLength", "32768")]
    assert n.negotiate([("FirstBurstLength", "16384")], stage="operational") == [
        ("FirstBurstLength", "16384")]
    assert n.result().first_burst == 16384


def test_a_first_burst_never_negotiated_takes_effect_as_at_most_max_burst() -> None:
    n = Negotiator(TARGET)
    n.negotiate([("MaxBurstLength", "16384")], stage="operational")
    assert (n.result().max_burst, n.result().first_burst) == (16384, 16384)
