"""A seeded, structure-aware mutation fuzzer for iSCSI PDUs (initiator to target).

Starts from valid PDUs built by the independent test encoder (:mod:`.initiator`): Login, Text,
SCSI Command with immediate data, Data-Out, NOP-Out, Task Management, Logout, SNACK. Mutates
them knowing the BHS layout (RFC 7143 11): opcode and flag bits, the immediate bit, the data
segment length (both honest and lying), the tags, CmdSN / ExpStatSN, the EDTL, DataSN and Buffer
Offset, the CDB, the AHS length, the text keys; plus truncation, splicing and duplication.

The same generator drives the sans-I/O fuzz tests (tests/iscsi/test_fuzz.py), the daemon fuzz
test over loopback (tests/integration/test_fuzz_daemon.py) and the long run (bench/fuzz).
Everything comes from one ``random.Random(seed)``: a seed reproduces a run.
"""

from __future__ import annotations

import random
import struct

from . import initiator as I

TARGET = "iqn.2026-11.org.gluster-iscsi:demo"
INITIATOR = "iqn.2026-11.org.example:fuzz"

# Field offsets in the BHS (RFC 7143 11.2.1 and per-opcode layouts).
_U32_FIELDS = (16, 20, 24, 28, 32, 36, 40, 44)  # ITT, then the opcode-specific words
_INTERESTING_U32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0xFFFF, 0x10000,
                    0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 8192, 65536, 262144,
                    1 << 20, 8 << 20, 32 << 20, (32 << 20) + 1)
_INTERESTING_DSL = (0, 1, 3, 4, 47, 48, 8191, 8192, 8193, 65536, 262144, 262145, (1 << 24) - 1)
_SCSI_OPCODES = (0x00, 0x03, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x42, 0x5E, 0x5F, 0x83,
                 0x88, 0x8A, 0x89, 0x8F, 0x93, 0x9E, 0xA0, 0xA3, 0x41, 0x08, 0x0A, 0xFF)
_KEYS = ("InitiatorName", "TargetName", "SessionType", "AuthMethod", "HeaderDigest",
         "DataDigest", "MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength",
         "ImmediateData", "InitialR2T", "MaxOutstandingR2T", "MaxConnections", "ErrorRecoveryLevel",
         "DefaultTime2Wait", "DefaultTime2Retain", "DataPDUInOrder", "DataSequenceInOrder",
         "SendTargets", "CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C", "TargetAlias",
         "X-com.example.unknown", "OFMarker", "IFMarker", "TaskReporting")
_VALUES = ("", "None", "CRC32C", "CRC32C,None", "Yes", "No", "0", "1", "512", "8192", "16384",
           "32768", "65536", "16777215", "16777216", "4294967296", "-1", "0x10", "Normal",
           "Discovery", "All", "CHAP", "5", TARGET, INITIATOR, "Reject", "NotUnderstood",
           "Irrelevant", "a" * 300, "\x1b[31mforged\nline", "\xff")


_KINDS = ("read", "write", "dataout", "nop", "text", "tmf", "snack", "logout", "cmd")
_WEIGHTS = (20, 20, 10, 15, 8, 5, 3, 1, 15)  # a Logout ends the case: rare


def login_pairs(initiator: str = INITIATOR, target: str = TARGET) -> list[tuple[str, str]]:
    """What a plain initiator offers to log straight into the full feature phase."""
    return [
        ("InitiatorName", initiator), ("TargetName", target), ("SessionType", "Normal"),
        ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "65536"),
        ("ImmediateData", "Yes"), ("InitialR2T", "Yes"), ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "262144"), ("MaxOutstandingR2T", "1"),
    ]


def _cdb(op: int, lba: int, blocks: int) -> bytes:
    if op in (0x28, 0x2A, 0x2F, 0x35):
        return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)
    if op in (0x88, 0x8A, 0x8F, 0x93, 0x89):
        return struct.pack(">BBQIBB", op, 0, lba, blocks, 0, 0)
    if op in (0x12,):
        return bytes((0x12, 0, 0, 0, 255, 0))
    if op == 0x9E:
        return bytes((0x9E, 0x10)) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    if op == 0xA0:
        return bytes((0xA0, 0, 0, 0, 0, 0)) + struct.pack(">I", 4096) + bytes(2)
    return bytes((op,)) + bytes(9)


class PduFuzzer:
    """Generates valid and mutated initiator PDUs from one seed."""

    def __init__(self, seed: int, *, lun: int = 1, max_data: int = 70000,
                 target_resets: bool = True, spare_others: bool = False) -> None:
        self.rng = random.Random(seed)
        # Leave out the SCSI commands that change what other initiators see by design (stop
        # the LU, reserve it, sanitize or format it): where a legitimate session must keep
        # working meanwhile, a peer allowed to do these could stop it legitimately.
        self.spare_others = spare_others
        # TARGET WARM/COLD RESET: off where a legitimate session must keep working meanwhile
        # (a cold reset drops every connection of the target, by design). So are CLEAR TASK
        # SET and LOGICAL UNIT RESET where others are spared: they end every initiator's
        # tasks on the LU, and with TAS=0 those end without status (SAM-5), so a legitimate
        # command in flight then gets no answer until its initiator times out, by design
        # (seen once in the daemon fuzz: a probe's READ unanswered for 30 s).
        functions = (1, 2, 3, 4, 5, 8, 14, 0, 15) + ((6, 7) if target_resets else ())
        self.tmf_functions = tuple(f for f in functions if not (spare_others and f in (4, 5)))
        self.lun = lun
        self.max_data = max_data
        self.itt = 0x1000

    # ------------------------------------------------------------- valid PDUs
    def _next_itt(self) -> int:
        self.itt = (self.itt + 1) & 0x7FFFFFFF
        return self.itt

    def valid(self, cmdsn: int, *, expstatsn: int = 0) -> bytes:
        """One valid full-feature-phase PDU (most of them would be accepted as sent)."""
        r = self.rng
        kind = r.choices(_KINDS, _WEIGHTS)[0]
        itt = self._next_itt()
        imm = r.random() < 0.2
        if kind == "read":
            blocks = r.choice((1, 8, 128, 512))
            return I.scsi_cmd(_cdb(0x28, r.randrange(1 << 16), blocks), itt=itt, cmdsn=cmdsn,
                              edtl=blocks * 512, read=True, lun=self.lun, immediate=imm)
        if kind == "write":
            blocks = r.choice((1, 8, 128, 256))
            n = blocks * 512
            imm_len = min(n, r.choice((0, 512, 4096, 65536)))
            return I.scsi_cmd(_cdb(0x2A, r.randrange(1 << 16), blocks), itt=itt, cmdsn=cmdsn,
                              edtl=n, write=True, data=bytes([r.randrange(256)]) * imm_len,
                              lun=self.lun, immediate=imm)
        if kind == "dataout":
            n = r.choice((0, 512, 4096, 65536))
            return I.data_out(b"\xa5" * n, itt=r.choice((itt, self.itt - 1, 0x1001)),
                              ttt=r.choice((1, 2, 0xFFFFFFFF)), datasn=r.randrange(3),
                              offset=r.choice((0, 512, 65536)), final=r.random() < 0.7, lun=self.lun)
        if kind == "nop":
            data = b"ping" * r.randrange(4)
            return I.nop_out(itt=itt, cmdsn=cmdsn, data=data, immediate=r.random() < 0.6)
        if kind == "text":
            pairs = [(r.choice(_KEYS), r.choice(_VALUES)) for _ in range(r.randrange(1, 5))]
            if r.random() < 0.5:
                pairs = [("SendTargets", r.choice(("All", TARGET, "")))]
            return I.text_req(pairs, itt=itt, cmdsn=cmdsn, cont=r.random() < 0.2,
                              immediate=r.random() < 0.7)
        if kind == "tmf":
            return I.tmf(r.choice(self.tmf_functions), itt=itt, cmdsn=cmdsn,
                         lun=self.lun, rtt=r.choice((self.itt - 1, 0xFFFFFFFF, 0x1002)),
                         refcmdsn=(cmdsn - 1) & 0xFFFFFFFF)
        if kind == "snack":
            return I._bhs(0x10, 0x80 | r.randrange(4), 0, 0, b"", bytes(8), itt,
                          (0xFFFFFFFF, 0, expstatsn, 0, 0, r.randrange(4), r.randrange(4)))
        if kind == "logout":
            return I.logout(itt=itt, cmdsn=cmdsn, reason=r.choice((0, 1, 2)), cid=r.randrange(2))
        op = r.choice(_SCSI_OPCODES)
        read = r.random() < 0.5
        return I.scsi_cmd(_cdb(op, r.randrange(1 << 20), r.randrange(1, 64)), itt=itt, cmdsn=cmdsn,
                          edtl=r.choice((0, 36, 512, 4096, 65536)), read=read,
                          write=not read and r.random() < 0.5, lun=r.choice((self.lun, 0, 7)),
                          attr=r.randrange(8), immediate=imm)

    def login(self, *, initiator: str = INITIATOR, target: str = TARGET) -> bytes:
        """A valid or nearly valid login request (for connections not yet logged in)."""
        r = self.rng
        pairs = login_pairs(initiator, target)
        if r.random() < 0.5:
            pairs = [(k, v) for k, v in pairs if r.random() < 0.8]
        if r.random() < 0.3:
            pairs += [(r.choice(_KEYS), r.choice(_VALUES)) for _ in range(r.randrange(1, 8))]
        if r.random() < 0.1:
            pairs = [("SessionType", "Discovery"), ("InitiatorName", initiator)]
        csg, nsg = r.choice(((1, 3), (0, 1), (0, 3), (1, 3), (3, 3), (2, 1)))
        isid = bytes((0x80,)) + bytes(r.randrange(256) for _ in range(5))
        return I.login(pairs, csg=csg, nsg=nsg, transit=r.random() < 0.9, cont=r.random() < 0.05,
                       itt=self._next_itt(), isid=isid, tsih=r.choice((0, 0, 0, 1)))

    # ------------------------------------------------------------- mutations
    def mutate(self, pdu: bytes) -> bytes:
        """Apply one to three structure-aware mutations to ``pdu``."""
        b = bytearray(pdu)
        for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
            b = self._mutate_once(b)
        return bytes(b)

    def _mutate_once(self, b: bytearray) -> bytearray:
        r = self.rng
        if len(b) < 48:
            b += bytes(48 - len(b))
        m = r.randrange(16)
        if m in (6, 9) and r.random() < 0.75:  # these lose the PDU boundaries: less often
            m = 7
        if m == 0:  # flip a bit in the header
            i = r.randrange(48)
            b[i] ^= 1 << r.randrange(8)
        elif m == 1:  # another opcode, keep the immediate bit
            b[0] = (b[0] & 0x40) | r.choice((0, 1, 2, 3, 4, 5, 6, 0x10, 0x1C, 0x1D, 0x1E, 0x20,
                                             0x21, 0x3F, r.randrange(64)))
        elif m == 2:  # toggle the immediate bit
            b[0] ^= 0x40
        elif m == 3:  # flags byte
            b[1] = r.choice((0, 0x80, 0xC0, 0xE0, 0x60, 0x40, 0x20, 0xFF, r.randrange(256)))
        elif m == 4:  # a u32 field to an interesting value
            off = r.choice(_U32_FIELDS)
            struct.pack_into(">I", b, off, r.choice(_INTERESTING_U32))
        elif m == 5:  # a u32 field nudged
            off = r.choice(_U32_FIELDS)
            v = struct.unpack_from(">I", b, off)[0]
            struct.pack_into(">I", b, off, (v + r.choice((-2, -1, 1, 2, 128, -128))) & 0xFFFFFFFF)
        elif m == 6:  # lie about the data segment length (the stream may desynchronise)
            n = r.choice(_INTERESTING_DSL)
            b[5:8] = n.to_bytes(3, "big")
        elif m == 7:  # honest new data segment of another size
            n = r.choice((0, 1, 5, 512, 8192, 8193, 65536, 65537, self.max_data))
            b = b[:48] + bytes([r.randrange(256)]) * n + bytes(-n % 4)
            b[5:8] = n.to_bytes(3, "big")
        elif m == 8:  # AHS length
            b[4] = r.choice((1, 2, 16, 255))
        elif m == 9:  # truncate
            b = b[: r.randrange(1, len(b) + 1)]
        elif m == 10:  # the LUN field
            b[8:16] = r.choice((bytes(8), bytes((0, 1)) + bytes(6), bytes((0x40, 1)) + bytes(6),
                                b"\xff" * 8, bytes((0, 0xFF)) + bytes(6)))
        elif m == 11:  # CDB bytes (SCSI command) or the words it overlaps
            i = r.randrange(32, 48)
            b[i] = r.choice((0, 0xFF, r.randrange(256)))
        elif m == 12:  # text payload: garbage keys, no NUL, huge value
            n = int.from_bytes(b[5:8], "big")
            data = bytes(b[48 : 48 + n])
            choice = r.randrange(4)
            if choice == 0:
                data = data.replace(b"\0", b"", 1)
            elif choice == 1:
                data += f"{r.choice(_KEYS)}={r.choice(_VALUES)}".encode("utf-8", "replace") + b"\0"
            elif choice == 2:
                data = b"=" * r.randrange(1, 64) + b"\0\0"
            else:
                data += b"".join(f"X-fuzz-{i}=v\0".encode() for i in range(r.randrange(100, 2000)))
            b = b[:48] + data + bytes(-len(data) % 4)
            b[5:8] = len(data).to_bytes(3, "big")
        elif m == 13:  # random bytes overwritten anywhere
            for _ in range(r.randrange(1, 8)):
                i = r.randrange(len(b))
                b[i] = r.randrange(256)
        elif m == 14:  # duplicate the PDU
            b = b + b
        else:  # splice in a header of another valid PDU
            other = self.valid(r.randrange(1 << 32))
            cut = r.choice((8, 16, 20, 24, 28, 32, 36, 40, 44))  # (the DSL stays honest)
            b[cut:48] = other[cut:48]
        return b

    def stream(self, cmdsn: int) -> bytes:
        """One PDU for a logged-in connection: mostly valid, often mutated; the framing (data
        segment length, AHS) is left broken only now and then, as a broken one makes the
        target lose the PDU boundaries and the rest of the connection is noise."""
        p = self.valid(cmdsn)
        if self.rng.random() < 0.7:
            p = self.mutate(p)
            if not framed(p) and self.rng.random() < 0.8:
                p = reframe(p)
        if self.spare_others:
            p = spare(p)
        return p

    def junk(self) -> bytes:
        r = self.rng
        return bytes(r.randrange(256) for _ in range(r.randrange(1, 200)))


#: SCSI commands that act on every initiator's view of the LU (SBC-4, SPC-5): START STOP
#: UNIT, RESERVE/RELEASE, PERSISTENT RESERVE OUT, SANITIZE, FORMAT UNIT, MODE SELECT, WRITE
#: BUFFER, and the vendor-specific range.
OTHERS_OPCODES = frozenset({0x1B, 0x16, 0x17, 0x56, 0x57, 0x5F, 0x48, 0x04, 0x15, 0x55, 0x3B}
                           | set(range(0xC0, 0x100)))


def spare(b: bytes) -> bytes:
    """``b`` with any SCSI Command in it whose CDB is one of :data:`OTHERS_OPCODES` turned
    into TEST UNIT READY."""
    out = bytearray(b)
    pos = 0
    while pos + 48 <= len(out):
        if out[pos] & 0x3F == 0x01 and out[pos + 32] in OTHERS_OPCODES:
            out[pos + 32] = 0x00
        dsl = int.from_bytes(out[pos + 5 : pos + 8], "big")
        pos += 48 + out[pos + 4] * 4 + dsl + (-dsl % 4)
    return bytes(out)


def framed(b: bytes) -> bool:
    """True when ``b`` is whole PDUs (no digests): each length field matches what follows."""
    pos = 0
    while pos < len(b):
        if len(b) - pos < 48:
            return False
        dsl = int.from_bytes(b[pos + 5 : pos + 8], "big")
        pos += 48 + b[pos + 4] * 4 + dsl + (-dsl % 4)
    return pos == len(b)


def reframe(b: bytes) -> bytes:
    """The same bytes as one PDU with honest AHS and data segment lengths."""
    h = bytearray(b[:48].ljust(48, b"\0"))
    data = b[48:]
    h[4] = 0
    h[5:8] = len(data).to_bytes(3, "big")
    return bytes(h) + data + bytes(-len(data) % 4)
