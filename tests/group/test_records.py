"""The two-slot record (group/records.py): pure encode/decode/pick."""

from __future__ import annotations

import struct

import pytest

from gluster_iscsi.group import records
from gluster_iscsi.group.records import MAGIC, SLOT_SIZE, decode, encode, pick


def test_a_slot_round_trips_and_is_one_slot_long():
    slot = encode(7, {"owner": "gw-a", "epoch": 3, "nested": {"x": [1, 2]}, "é": "ü"})
    assert len(slot) == SLOT_SIZE
    assert slot.startswith(MAGIC)
    assert decode(slot) == (7, {"owner": "gw-a", "epoch": 3, "nested": {"x": [1, 2]}, "é": "ü"})


def test_empty_and_foreign_slots_are_none():
    assert decode(bytes(SLOT_SIZE)) is None
    assert decode(b"") is None
    assert decode(b"x" * SLOT_SIZE) is None
    assert pick(bytes(SLOT_SIZE), bytes(SLOT_SIZE)) is None


def test_a_torn_slot_is_none():
    """Part of a new slot over an old one (a crash mid-write): the CRC refuses it."""
    old = encode(1, {"v": "a" * 5000})
    new = encode(3, {"v": "b" * 5000})
    for cut in (8, 20, 100, 4096, 5000):
        # either the old record, whole (nothing of the new one got there), or nothing
        assert decode(new[:cut] + old[cut:]) in (None, decode(old)), cut
        assert decode(new[:cut] + bytes(SLOT_SIZE - cut)) is None, cut
    assert decode(new[:100] + old[100:]) is None
    # the header alone of a new record over the old body
    assert decode(new[: records.HEADER_SIZE] + old[records.HEADER_SIZE :]) is None


def test_every_flipped_byte_of_the_json_or_header_is_caught():
    slot = bytearray(encode(5, {"k": "value"}))
    length = struct.unpack_from(">I", slot, 16)[0]
    for i in range(records.HEADER_SIZE + length):
        bad = bytearray(slot)
        bad[i] ^= 0x01
        assert decode(bytes(bad)) is None, i


def test_a_short_read_still_decodes_if_the_json_is_all_there():
    slot = encode(2, {"a": 1})
    assert decode(slot[:100]) == (2, {"a": 1})
    assert decode(slot[:30]) is None


def test_pick_takes_the_valid_slot_with_the_highest_seq():
    a, b = encode(4, {"n": 4, "pad": "x" * 100}), encode(5, {"n": 5, "pad": "y" * 100})
    assert pick(a, b) == decode(b)
    assert pick(b, a) == decode(b)
    torn = b[:50] + bytes(SLOT_SIZE - 50)
    assert pick(a, torn) == decode(a)  # the torn newer write loses only itself
    assert pick(torn, a) == decode(a)


def test_the_writer_never_overwrites_the_last_good_record():
    """seq % 2 chooses the slot: writing n+1 lands in the other slot than n."""
    slots = [bytes(SLOT_SIZE), bytes(SLOT_SIZE)]
    for seq in range(1, 6):
        assert records.slot_offset(seq) in (0, SLOT_SIZE)
        i = records.slot_offset(seq) // SLOT_SIZE
        last = pick(*slots)
        slots[i] = encode(seq, {"seq": seq})[:30] + bytes(SLOT_SIZE - 30)  # torn
        assert pick(*slots) == last
        slots[i] = encode(seq, {"seq": seq})
        assert pick(*slots) == (seq, {"seq": seq})


def test_an_oversize_record_is_refused():
    fits = {"x": "a" * (records.MAX_JSON - len('{"x":""}'))}
    assert decode(encode(1, fits)) == (1, fits)
    with pytest.raises(ValueError, match="too large"):
        encode(1, {"x": "a" * records.MAX_JSON})


@pytest.mark.parametrize("seq", [-1, 1 << 64, 1.5, True, "1"])
def test_bad_seqs_are_refused(seq):
    with pytest.raises(ValueError, match="seq"):
        encode(seq, {})


def test_non_json_data_is_refused():
    with pytest.raises(ValueError, match="JSON"):
        encode(1, {"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        encode(1, {"x": float("nan")})
    with pytest.raises(ValueError, match="object"):
        encode(1, [1, 2])  # type: ignore[arg-type]
