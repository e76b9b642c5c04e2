"""The PDU codec: framing, field accessors, target-side encoders, digests, bad input."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gluster_iscsi.iscsi import pdu as P
from gluster_iscsi.iscsi.errors import ProtocolError

from . import initiator as I

# A SCSI Command PDU written out field by field from RFC 7143 11.3 (READ(10), LUN 1).
GOLDEN_CMD = bytes.fromhex(
    "01"  # opcode SCSI Command
    "c1"  # F, R, ATTR=simple
    "0000"
    "00" "000000"  # TotalAHSLength, DataSegmentLength
    "0001000000000000"  # LUN 1
    "00000005"  # ITT
    "00001000"  # EDTL 4096
    "00000007"  # CmdSN
    "00000003"  # ExpStatSN
    "28000000000800000800000000000000"  # CDB
)


def test_golden_scsi_command_fields():
    r = P.PduReader()
    r.feed(GOLDEN_CMD)
    p = r.next_pdu()
    assert p.opcode == P.Opcode.SCSI_CMD and p.final and p.flags & 0x40
    assert (p.lun, p.itt, p.edtl, p.cmdsn, p.expstatsn) == (1, 5, 4096, 7, 3)
    assert p.cdb[:10] == bytes.fromhex("28000000000800000800")
    assert r.next_pdu() is None and r.buffered == 0


def test_test_encoder_agrees_with_golden_bytes():
    cdb = bytes.fromhex("28000000000800000800")
    assert I.scsi_cmd(cdb, itt=5, cmdsn=7, edtl=4096, read=True, lun=1)[:24] == GOLDEN_CMD[:24]


@pytest.mark.parametrize("chunk", [1, 3, 47, 48, 49, 1000])
def test_stream_split_anywhere_gives_the_same_pdus(chunk):
    stream = b"".join(
        I.nop_out(itt=i, cmdsn=i, data=bytes([i]) * (i * 7 % 50)) for i in range(1, 20)
    )
    r = P.PduReader(1 << 16)
    got = []
    for i in range(0, len(stream), chunk):
        r.feed(stream[i : i + chunk])
        while (p := r.next_pdu()) is not None:
            got.append((p.itt, p.data))
    assert got == [(i, bytes([i]) * (i * 7 % 50)) for i in range(1, 20)]


def test_data_segment_is_padded_to_four_bytes_and_digested_with_its_pad():
    hdr = P.bhs(P.Opcode.NOP_IN, 0x80, dsl=5, itt=1)
    bufs = P.frame(hdr, b"hello", header_digest=True, data_digest=True)
    wire = b"".join(bytes(b) for b in bufs)
    assert len(wire) == 48 + 4 + 8 + 4
    assert wire[48:52] == struct.pack(">I", crc32c.crc32c(hdr))
    assert wire[52:60] == b"hello\0\0\0"
    assert wire[60:] == struct.pack(">I", crc32c.crc32c(b"hello\0\0\0"))
    r = P.PduReader()
    r.header_digest = r.data_digest = True
    r.feed(wire)
    assert r.next_pdu().data == b"hello"


def test_header_digest_mismatch_is_a_header_digest_error():
    raw = I.nop_out(itt=1, cmdsn=1)
    r = P.PduReader()
    r.header_digest = True
    r.feed(raw + b"\0\0\0\0")
    with pytest.raises(P.DigestError) as e:
        r.next_pdu()
    assert e.value.header


def test_oversized_segment_is_refused_before_its_data_arrives_and_skipped():
    big = I.nop_out(itt=1, cmdsn=1, data=bytes(9000))
    r = P.PduReader(8192)
    r.feed(big[:48])  # only the header: already refused, nothing buffered for the data
    with pytest.raises(P.OversizedPdu):
        r.next_pdu()
    r.feed(big[48:] + I.nop_out(itt=2, cmdsn=2))
    assert r.next_pdu().itt == 2


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 16383])
def test_lun_encoding_round_trips(lun):
    assert P.decode_lun(P.encode_lun(lun)) == lun


def test_extended_cdb_from_ahs():
    ahs = struct.pack(">HB", 17, 1) + b"\0" + bytes(range(16)) + b"\0\0\0"
    pdu = P.Pdu(bytes(48), ahs)
    assert pdu.cdb == bytes(16) + bytes(range(16))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_garbage_raises_only_protocol_errors(junk, hd, dd):
    r = P.PduReader(4096)
    r.header_digest, r.data_digest = hd, dd
    r.feed(junk)
    for _ in range(20):
        try:
            if r.next_pdu() is None:
                break
        except ProtocolError:
            continue


# -- receiving straight into a PDU's own buffer (get_buffer / buffer_updated) -------------------


def socket_feed(r: P.PduReader, stream: bytes, chunk: int) -> list[P.Pdu]:
    """Deliver ``stream`` as a socket would: into the windows the reader offers, at most
    ``chunk`` bytes per receive, handling the PDUs after each receive."""
    got, mv = [], memoryview(stream)
    while len(mv):
        window = r.get_buffer()
        assert len(window) > 0
        n = min(len(window), len(mv), chunk)
        window[:n] = mv[:n]
        del window
        r.buffer_updated(n)
        mv = mv[n:]
        while (p := r.next_pdu()) is not None:
            got.append(p)
    return got


@pytest.mark.parametrize("chunk", [1, 47, 4096, 65536, 1 << 20])
@pytest.mark.parametrize("digests", [False, True])
def test_large_write_payloads_arrive_in_their_own_buffers(chunk, digests):
    sizes = [P.DIRECT_MIN, 5, 256 << 10, 4096, P.DIRECT_MIN + 3, 0, 100_001]
    payloads = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    stream = b""
    for i, data in enumerate(payloads):
        raw = I.scsi_cmd(b"\x2a" + bytes(9), itt=i, cmdsn=i, edtl=len(data), write=True, data=data)
        stream += b"".join(bytes(b) for b in P.frame(raw[:48], data, digests, digests))
    r = P.PduReader(1 << 20)
    r.header_digest = r.data_digest = digests
    got = socket_feed(r, stream, chunk)
    assert [p.itt for p in got] == list(range(len(sizes)))
    assert [bytes(p.data) for p in got] == payloads
    for p, n in zip(got, sizes, strict=True):
        if n < P.DIRECT_MIN:
            assert isinstance(p.data, bytes)
        elif chunk <= 4096 or n > 64 << 10:
            # in a buffer of its own (a large receive may have brought a small one all at once)
            assert isinstance(p.data, memoryview)
    assert r.buffered == 0


def test_after_a_large_payload_the_next_header_is_read_alone():
    data = bytes(64 << 10)
    raw = I.scsi_cmd(b"\x2a" + bytes(9), itt=1, cmdsn=1, edtl=len(data), write=True, data=data)
    r = P.PduReader(1 << 20)
    socket_feed(r, raw[:48], 48)
    assert r.next_pdu() is None
    assert len(r.get_buffer()) == len(data)  # the payload's own buffer, exactly
    (p,) = socket_feed(r, raw[48:], 1 << 20)
    assert isinstance(p.data, memoryview) and bytes(p.data) == data
    assert len(r.get_buffer()) == 48  # the next header alone: its payload may be large too
    r.header_digest = True
    assert len(r.get_buffer()) == 52


def test_a_large_payload_with_a_bad_data_digest_is_reported_with_its_pdu():
    data = bytes(range(256)) * 128
    raw = I.scsi_cmd(b"\x2a" + bytes(9), itt=9, cmdsn=1, edtl=len(data), write=True, data=data)
    wire = b"".join(bytes(b) for b in P.frame(raw[:48], data, False, True))
    wire = wire[:-1] + bytes([wire[-1] ^ 1])
    r = P.PduReader(1 << 20)
    r.data_digest = True
    with pytest.raises(P.DigestError) as e:
        socket_feed(r, wire, 4096)
    assert not e.value.header and e.value.pdu.itt == 9
    assert r.buffered == 0  # the stream is still in step


def test_data_out_payload_lands_where_place_says():
    target = bytearray(200 << 10)
    asked = []

    def place(bhs):
        asked.append(bhs)
        off = struct.unpack_from(">I", bhs, 40)[0]
        n = int.from_bytes(bhs[5:8], "big")
        return memoryview(target)[off : off + n]

    data = bytes([7]) * (64 << 10)
    r = P.PduReader(1 << 20, place=place)
    (p,) = socket_feed(r, I.data_out(data, itt=1, ttt=5, offset=4096), 8192)
    assert p.placed and len(asked) == 1
    assert target[4096 : 4096 + len(data)] == data and p.data.obj is target
    small = I.data_out(bytes(512), itt=1, ttt=5, offset=0)
    (q,) = socket_feed(r, small, 8192)
    assert not q.placed and len(asked) == 1  # small payloads are not worth a placement


def test_the_feed_path_and_a_refused_pdu_skipped_in_windows():
    big = I.nop_out(itt=1, cmdsn=1, data=bytes(9000))
    r = P.PduReader(8192)
    with pytest.raises(P.OversizedPdu):
        socket_feed(r, big[:48], 48)
    assert socket_feed(r, big[48:] + I.nop_out(itt=2, cmdsn=2), 100)[0].itt == 2
