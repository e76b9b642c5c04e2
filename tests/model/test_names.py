import pytest

from gluster_iscsi.model.names import InvalidName, check_name, is_network, validate_name

VALID = [
    "iqn.2013-10.com.redhat:tgt1",
    "iqn.1994-05.com.redhat:client",
    "iqn.2026-11.org.gluster-iscsi:demo",
    "iqn.2001-04.com.example",  # the unique part is optional
    "iqn.2001-04.com.example:storage.disk2.sys1.xyz",
    "iqn.2001-04.com.example:a:b:c",
    "eui.02004567A425678D",
    "eui.02004567a425678d",
    "naa.52004567BA64678D",
    "naa.62004567BA64678D62004567BA64678D",
    "iqn.2001-04.com.example:" + "x" * (223 - len("iqn.2001-04.com.example:")),
]

INVALID = [
    ("iqn.20013-10.com.redhat:tgt1", "is not yyyy-mm"),  # the cookbook's name
    ("iqn.2013-13.com.example:x", "not 01..12"),
    ("iqn.2013-00.com.example:x", "not 01..12"),
    ("iqn.x:y", "needs a date"),
    ("iqn.2013-10.:x", "naming authority"),
    ("iqn.2013-10.-bad.com:x", "not a reversed domain"),
    ("IQN.2013-10.com.example:x", "lower case"),
    ("iqn.2013-10.com.example:Disk", "lower case"),
    ("iqn.2013-10.com.example:a_b", "only lower-case"),
    ("iqn.2013-10.com.example:", "nothing follows"),
    ("eui.0200", "16 hex digits"),
    ("eui.02004567A425678Z", "16 hex digits"),
    ("naa.5200", "16 or 32 hex digits"),
    ("target1", "must start with iqn."),
    ("", "empty"),
    ("iqn.2013-10.com.example:a b", "white space"),
    ("iqn.2001-04.com.example:" + "x" * 200, "at most 223"),
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass_strict_validation(name):
    assert check_name(name).ok, check_name(name).problems
    assert validate_name(name) == []


@pytest.mark.parametrize(("name", "why"), INVALID)
def test_invalid_names_are_refused_with_the_reason(name, why):
    check = check_name(name)
    assert not check.ok
    assert any(why in p for p in check.problems), check.problems
    with pytest.raises(InvalidName) as e:
        validate_name(name)
    assert why in str(e.value)


def test_force_turns_convention_problems_into_warnings_that_say_why():
    warnings = validate_name("iqn.20013-10.com.redhat:tgt1", force=True)
    assert len(warnings) == 1
    assert "20013-10" in warnings[0] and "yyyy-mm" in warnings[0]


@pytest.mark.parametrize("name", ["", "iqn.2013-10.com.example:a b", "iqn.2001-04.x:" + "y" * 230])
def test_force_does_not_accept_names_that_break_the_wire_protocol(name):
    with pytest.raises(InvalidName):
        validate_name(name, force=True)


def test_length_limit_counts_utf8_bytes_not_characters():
    name = "iqn.2001-04.com.example:" + "é" * 100  # 200 bytes of payload
    assert any("bytes long" in p for p in check_name(name).problems)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("ALL", True), ("all", True), ("10.0.0.0/8", True), ("192.168.1.5", True),
     ("fd00::/64", True), ("::1", True), ("10.0.0.0/33", False), ("iqn.2001-04.com.x", False),
     ("host.example.com", False)],
)  # fmt: skip
def test_is_network(value, ok):
    assert is_network(value) is ok
