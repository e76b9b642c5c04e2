"""Text key=value codec (RFC 7143 6.1): golden bytes, malformed inputs, fuzz invariant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gluster_iscsi.iscsi.errors import IscsiError, ProtocolError
from gluster_iscsi.iscsi.text import (
    decode_binary,
    decode_number,
    decode_text,
    encode_base64,
    encode_hex,
    encode_text,
    is_valid_key,
)

GOLDEN = [
    (b"", []),
    (b"InitiatorName=iqn.1994-05.com.redhat:abc\0",
     [("InitiatorName", "iqn.1994-05.com.redhat:abc")]),
    (b"HeaderDigest=CRC32C,None\0DataDigest=None\0",
     [("HeaderDigest", "CRC32C,None"), ("DataDigest", "None")]),
    (b"SendTargets=\0", [("SendTargets", "")]),
    (b"X-com.example.foo=a=b\0", [("X-com.example.foo", "a=b")]),
    (b"X#vendor=1\0", [("X#vendor", "1")]),
    ("TargetAlias=d\u00e9j\u00e0\0".encode(), [("TargetAlias", "d\u00e9j\u00e0")]),
]


@pytest.mark.parametrize(("data", "pairs"), GOLDEN)
def test_golden_bytes_decode_and_encode_back(data: bytes, pairs: list[tuple[str, str]]) -> None:
    assert decode_text(data) == pairs
    assert encode_text(pairs) == data


@pytest.mark.parametrize("tail", [b"\0", b"\0\0\0", b""])
def test_trailing_nuls_and_missing_final_nul_are_tolerated(tail: bytes) -> None:
    assert decode_text(b"A=1\0B=2" + tail) == [("A", "1"), ("B", "2")]


def test_memoryview_input() -> None:
    assert decode_text(memoryview(b"Key=v\0\0\0")) == [("Key", "v")]


def test_duplicates_are_returned_as_sent() -> None:
    assert decode_text(b"A=1\0A=2\0") == [("A", "1"), ("A", "2")]


def test_max_key_and_value_lengths_are_accepted() -> None:
    key, value = "K" * 63, "v" * 8192
    assert decode_text(encode_text([(key, value)])) == [(key, value)]


@pytest.mark.parametrize(
    "data",
    [
        b"NoEquals\0",
        b"=value\0",
        b"K" * 64 + b"=v\0",
        b"Key=" + b"v" * 8193 + b"\0",
        b"Key=\xff\xfe\0",
        b"K\xc3\xa9y=v\0",
        b"lowercase=v\0",
        b"Bad Key=v\0",
        b"Bad,Key=v\0",
        b"A=1\0\0B=2\0",  # an empty item in the middle is not padding
        b"1Key=v\0",
    ],
)
def test_malformed_text_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_text(data)
    assert info.value.reason == 0x04


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_protocol_error_only(data: bytes) -> None:
    try:
        decode_text(data)
    except ProtocolError:
        pass


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Z][A-Za-z0-9.\-+@_]{0,62}", fullmatch=True),
            st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), max_size=40),
        ),
        max_size=8,
    )
)
def test_encode_decode_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert decode_text(encode_text(pairs)) == pairs


@pytest.mark.parametrize(
    ("key", "value"),
    [("bad key", "v"), ("K" * 64, "v"), ("Key", "a\0b"), ("Key", "v" * 8193), ("", "v")],
)
def test_encode_refuses_what_we_must_never_send(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        encode_text([(key, value)])


@pytest.mark.parametrize(
    ("key", "ok"), [("X-org.a.b", True), ("X#IANA", True), ("Z-x", True), ("x-a", False)]
)
def test_vendor_key_names(key: str, ok: bool) -> None:
    assert is_valid_key(key) is ok


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("8192", 8192), ("0x2000", 8192), ("0X1f", 31), (str(2**64 - 1), 2**64 - 1)],
)
def test_numbers(text: str, value: int) -> None:
    assert decode_number(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5", "0b AAA=", "0bAAE=", "0x", "abc", str(2**64),
                                  "\u0661"])
def test_bad_numbers(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_number(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x00ff", b"\x00\xff"), ("0XABC", b"\x0a\xbc"), ("0bAAEC", b"\x00\x01\x02"),
     ("0BAQ==", b"\x01")],
)
def test_binary_values(text: str, value: bytes) -> None:
    assert decode_binary(text) == value


@pytest.mark.parametrize("text", ["", "0x", "0xg1", "00ff", "0bA", "0b====", "0bA===", "ff",
                                  "0x" + "00" * 1025, "0b" + "A" * 1400])
def test_bad_or_oversized_binary_values(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_binary(text)


def test_binary_length_bound_is_configurable() -> None:
    assert decode_binary("0x" + "11" * 16, max_length=16) == b"\x11" * 16
    with pytest.raises(ProtocolError):
        decode_binary("0x" + "11" * 17, max_length=16)
    with pytest.raises(ProtocolError):
        decode_binary(encode_base64(b"\x11" * 17), max_length=16)


@given(st.binary(min_size=1, max_size=200))
def test_binary_encodings_round_trip(data: bytes) -> None:
    assert decode_binary(encode_hex(data)) == data
    assert decode_binary(encode_base64(data)) == data


@given(st.text(max_size=50))
def test_binary_decoder_raises_only_protocol_error(text: str) -> None:
    try:
        decode_binary(text)
    except ProtocolError:
        pass


def test_protocol_error_is_an_iscsi_error() -> None:
    assert issubclass(ProtocolError, IscsiError)
