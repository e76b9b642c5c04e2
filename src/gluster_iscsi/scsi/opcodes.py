"""THE opcode table of a direct-access device (SPC-4 + SBC-3).

One entry per operation code (and per service action where the opcode has them): its handler,
data direction, how it fares under reservations, whether it writes the medium (refused on a
read-only LU), whether it needs a started LU, and its CDB usage data. The device server's
preamble and REPORT SUPPORTED OPERATION CODES both read this table and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import alua, sbc, spc, xcopy
from . import reservations as pr
from .context import data_in
from .reservations import Access
from .sense import invalid_cdb
from .task import ScsiResult

if TYPE_CHECKING:
    from .context import Ctx
    from .lu import LogicalUnit

Handler = Callable[["Ctx"], Any]


class Direction(enum.Enum):
    NONE = "none"
    IN = "in"  # data-in: device server -> initiator
    OUT = "out"  # data-out: initiator -> device server


@dataclass(frozen=True, slots=True)
class Command:
    opcode: int
    name: str
    handler: Handler | None
    #: CDB usage data (SPC-4 6.35.3): byte 0 is the opcode, set bits are bits we honour.
    usage: bytes
    direction: Direction = Direction.NONE
    #: Under a persistent reservation held by another I_T nexus.
    access: Access = Access.WRITE
    #: Allowed while another initiator holds an SPC-2 RESERVE.
    spc2: bool = False
    #: Modifies the medium: DATA PROTECT on a read-only LU.
    write: bool = False
    #: Needs the medium: NOT READY while the LU is stopped.
    media: bool = False
    #: Not blocked by a pending unit attention (SAM-5 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE).
    ua_exempt: bool = False
    #: Runs for a LUN that has no logical unit.
    no_lu_ok: bool = False
    service_action: int | None = None
    actions: dict[int, Command] = field(default_factory=dict)
    #: Nominal / recommended timeouts in seconds (RCTD timeouts descriptor).
    timeout: int = 30
    #: Whether this LU offers the command (e.g. UNMAP only if the store can discard).
    available: Callable[[LogicalUnit], bool] | None = None
    #: Overrides ``access`` for commands whose conflict depends on a CDB field.
    access_for: Callable[[bytes], Access] | None = None
    #: The asymmetric access states other than active ones that allow it (a mask of
    #: ``1 << AccessState``, :func:`.alua.allowed_in`): through a standby, unavailable or
    #: transitioning target port group, any other command ends NOT READY (SPC-4 5.15.2.4).
    alua: int = 0

    @property
    def cdb_length(self) -> int:
        return len(self.usage)

    def offered_by(self, lu: LogicalUnit | None) -> bool:
        return lu is None or self.available is None or self.available(lu)

    def pr_access(self, cdb: bytes) -> Access:
        return self.access_for(cdb) if self.access_for else self.access

    def spc2_ok(self, cdb: bytes) -> bool:
        if self.opcode == 0x1E:  # PREVENT ALLOW MEDIUM REMOVAL with PREVENT=0 is harmless
            return not cdb[4] & 0x03
        return self.spc2


def _u(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


def _can_discard(lu: LogicalUnit) -> bool:
    return lu.capabilities.discard


def _can_sanitize(lu: LogicalUnit) -> bool:
    return lu.sanitize_allowed


def _can_block_erase(lu: LogicalUnit) -> bool:
    return spc.offers_block_erase(lu)


def _prevent_access(cdb: bytes) -> Access:
    return Access.WRITE if cdb[4] & 0x03 else Access.ALWAYS


def report_supported_operation_codes(ctx: Ctx) -> ScsiResult:
    """REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), generated from :data:`TABLE`."""
    cdb = ctx.cdb
    rctd = bool(cdb[2] & 0x80)
    option = cdb[2] & 0x07
    opcode = cdb[3]
    sa = int.from_bytes(cdb[4:6], "big")
    alloc = int.from_bytes(cdb[6:10], "big")
    lu = ctx.lu

    def timeouts(cmd: Command) -> bytes:
        return (
            bytes([0, 0x0A, 0, 0])
            + cmd.timeout.to_bytes(4, "big")
            + (cmd.timeout * 2).to_bytes(4, "big")
        )

    if option == 0:
        body = bytearray()
        for cmd in commands(lu):
            has_sa = cmd.service_action is not None
            body += bytes([cmd.opcode, 0]) + (cmd.service_action or 0).to_bytes(2, "big")
            body += bytes([0, (0x02 if rctd else 0) | (0x01 if has_sa else 0)])
            body += cmd.cdb_length.to_bytes(2, "big")
            if rctd:
                body += timeouts(cmd)
        return data_in(len(body).to_bytes(4, "big") + bytes(body), alloc)
    if option not in (1, 2, 3):
        raise invalid_cdb(2, 2)
    entry = TABLE.get(opcode)
    found: Command | None = None
    if entry is not None and entry.offered_by(lu):
        if entry.actions:
            if option == 1:
                raise invalid_cdb(2, 2)
            found = entry.actions.get(sa)
        else:
            if option == 2:
                raise invalid_cdb(2, 2)
            if option == 3 and sa:
                found = None
            else:
                found = entry
        if found is not None and not found.offered_by(lu):
            found = None
    if found is None:
        out = bytes([0, 0x01, 0, 0])  # SUPPORT 001b: not supported
    else:
        usage = found.usage
        out = bytes([0, (0x80 if rctd else 0) | 0x03]) + len(usage).to_bytes(2, "big") + usage
        if rctd:
            out += timeouts(found)
    return data_in(out, alloc)


def report_supported_tmfs(ctx: Ctx) -> ScsiResult:
    """REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.37)."""
    repd = bool(ctx.cdb[2] & 0x80)
    alloc = int.from_bytes(ctx.cdb[6:10], "big")
    # ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
    out = bytes([0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0, 0, 0x0C if repd else 0])
    if repd:
        out += bytes(12)
    return data_in(out, alloc)


def _xcopy(name: str) -> Handler:
    def handler(ctx: Ctx) -> Any:
        return getattr(xcopy, name)(ctx)

    handler.__name__ = name
    return handler


D = Direction
_ALL = Access.ALWAYS
_READ = Access.READ
_WRITE = Access.WRITE
# SPC-4 5.15.2.4: what a target port group in each non-active state still serves.
_ANY_STATE = alua.ANY_STATE  # INQUIRY, REPORT LUNS, RTPG, REQUEST SENSE
_STANDBY = alua.STANDBY


def _c(opcode: int, name: str, handler: Handler | None, usage: str, **kw: Any) -> Command:
    return Command(opcode, name, handler, _u(usage), **kw)


def _sa(opcode: int, sa: int, name: str, handler: Handler, usage: str, **kw: Any) -> Command:
    return Command(opcode, name, handler, _u(usage), service_action=sa, **kw)


def _group(opcode: int, name: str, *actions: Command) -> Command:
    first = actions[0]
    return Command(
        opcode, name, None, first.usage, actions={a.service_action or 0: a for a in actions}
    )


_RW16 = "{:02x}1affffffffffffffffffffffff1f00"
_RW12 = "{:02x}1affffffffffffffff1f00"
_RW10 = "{:02x}1affffffff1fffff00"

_ENTRIES: list[Command] = [
    _c(0x00, "TEST UNIT READY", spc.test_unit_ready, "000000000000", access=_ALL, media=True),
    _c(
        0x03,
        "REQUEST SENSE",
        spc.request_sense,
        "03010000ff00",
        direction=D.IN,
        access=_ALL,
        spc2=True,
        ua_exempt=True,
        no_lu_ok=True,
        alua=_ANY_STATE,
    ),
    _c(0x08, "READ(6)", sbc.read, "081fffffff00", direction=D.IN, access=_READ, media=True),
    _c(0x0A, "WRITE(6)", sbc.write, "0a1fffffff00", direction=D.OUT, write=True, media=True),
    _c(
        0x12,
        "INQUIRY",
        spc.inquiry,
        "1201ffffff00",
        direction=D.IN,
        access=_ALL,
        spc2=True,
        ua_exempt=True,
        no_lu_ok=True,
        alua=_ANY_STATE,
    ),
    _c(0x15, "MODE SELECT(6)", spc.mode_select, "15100000ff00", direction=D.OUT, alua=_STANDBY),
    _c(0x16, "RESERVE(6)", pr.reserve, "160000000000", access=_WRITE),
    _c(0x17, "RELEASE(6)", pr.release, "170000000000", access=_WRITE, spc2=True),
    _c(0x1A, "MODE SENSE(6)", spc.mode_sense, "1a08ffffff00", direction=D.IN, alua=_STANDBY),
    _c(0x1B, "START STOP UNIT", sbc.start_stop_unit, "1b01000ff700"),
    _c(
        0x1E,
        "PREVENT ALLOW MEDIUM REMOVAL",
        sbc.prevent_allow_medium_removal,
        "1e0000000300",
        access_for=_prevent_access,
    ),
    _c(
        0x25,
        "READ CAPACITY(10)",
        sbc.read_capacity_10,
        "2500ffffffff00000100",
        direction=D.IN,
        access=_ALL,
        media=True,
        # Not in SPC-4's standby list, but Linux sd reads the capacity through every path
        # and multipathd drops a path whose size differs from the map's (LIO allows it too).
        alua=_STANDBY,
    ),
    _c(0x28, "READ(10)", sbc.read, _RW10.format(0x28), direction=D.IN, access=_READ, media=True),
    _c(0x2A, "WRITE(10)", sbc.write, _RW10.format(0x2A), direction=D.OUT, write=True, media=True),
    _c(
        0x2E,
        "WRITE AND VERIFY(10)",
        sbc.write_and_verify,
        "2e12ffffffff1fffff00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _c(
        0x2F,
        "VERIFY(10)",
        sbc.verify,
        "2f16ffffffff1fffff00",
        direction=D.OUT,
        access=_READ,
        media=True,
    ),
    _c(0x34, "PRE-FETCH(10)", sbc.pre_fetch, "3402ffffffff1fffff00", access=_READ, media=True),
    _c(0x35, "SYNCHRONIZE CACHE(10)", sbc.synchronize_cache, "3502ffffffff1fffff00", media=True),
    _c(
        0x37,
        "READ DEFECT DATA(10)",
        sbc.read_defect_data,
        "37001f00000000ffff00",
        direction=D.IN,
        access=_READ,
    ),
    _c(
        0x41,
        "WRITE SAME(10)",
        sbc.write_same,
        "4108ffffffff1fffff00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _c(
        0x42,
        "UNMAP",
        sbc.unmap,
        "42000000000000ffff00",
        direction=D.OUT,
        write=True,
        media=True,
        available=_can_discard,
    ),
    _group(
        0x48,
        "SANITIZE",
        _sa(
            0x48,
            0x01,
            "SANITIZE/OVERWRITE",
            sbc.sanitize,
            "48810000000000ffff00",
            direction=D.OUT,
            write=True,
            media=True,
            timeout=3600,
            available=_can_sanitize,
        ),
        _sa(
            0x48,
            0x02,
            "SANITIZE/BLOCK ERASE",
            sbc.sanitize,
            "48820000000000000000",
            write=True,
            media=True,
            timeout=3600,
            available=_can_block_erase,
        ),
    ),
    _c(
        0x55,
        "MODE SELECT(10)",
        spc.mode_select,
        "55100000000000ffff00",
        direction=D.OUT,
        alua=_STANDBY,
    ),
    _c(0x56, "RESERVE(10)", pr.reserve, "56000000000000000000", access=_WRITE),
    _c(0x57, "RELEASE(10)", pr.release, "57000000000000000000", access=_WRITE, spc2=True),
    _c(
        0x5A,
        "MODE SENSE(10)",
        spc.mode_sense,
        "5a18ffff000000ffff00",
        direction=D.IN,
        alua=_STANDBY,
    ),
    _group(
        0x5E,
        "PERSISTENT RESERVE IN",
        *(
            _sa(
                0x5E,
                sa,
                f"PERSISTENT RESERVE IN/{sa}",
                pr.persistent_reserve_in,
                f"5e{sa:02x}0000000000ffff00",
                direction=D.IN,
                access=_ALL,
                alua=_STANDBY,
            )
            for sa in range(4)
        ),
    ),
    _group(
        0x5F,
        "PERSISTENT RESERVE OUT",
        *(
            _sa(
                0x5F,
                sa,
                f"PERSISTENT RESERVE OUT/{sa}",
                pr.persistent_reserve_out,
                f"5f{sa:02x}ff0000ffffffff00",
                direction=D.OUT,
                access=_ALL,
                alua=_STANDBY,
            )
            for sa in range(8)
        ),
    ),
    _group(
        0x83,
        "THIRD-PARTY COPY OUT",
        _sa(
            0x83,
            0x00,
            "EXTENDED COPY(LID1)",
            _xcopy("extended_copy"),
            "83000000000000000000ffffffff0000",
            direction=D.OUT,
            media=True,
        ),
    ),
    _group(
        0x84,
        "THIRD-PARTY COPY IN",
        _sa(
            0x84,
            0x00,
            "RECEIVE COPY STATUS(LID1)",
            _xcopy("copy_status"),
            "8400ff00000000000000ffffffff0000",
            direction=D.IN,
        ),
        _sa(
            0x84,
            0x03,
            "RECEIVE COPY OPERATING PARAMETERS",
            _xcopy("operating_parameters"),
            "84030000000000000000ffffffff0000",
            direction=D.IN,
        ),
    ),
    _c(0x88, "READ(16)", sbc.read, _RW16.format(0x88), direction=D.IN, access=_READ, media=True),
    _c(
        0x89,
        "COMPARE AND WRITE",
        sbc.compare_and_write,
        "8918ffffffffffffffff000000ff1f00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _c(0x8A, "WRITE(16)", sbc.write, _RW16.format(0x8A), direction=D.OUT, write=True, media=True),
    _c(
        0x8B,
        "ORWRITE(16)",
        sbc.orwrite,
        "8b18ffffffffffffffffffffffff1f00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _c(
        0x8E,
        "WRITE AND VERIFY(16)",
        sbc.write_and_verify,
        "8e12ffffffffffffffffffffffff1f00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _c(
        0x8F,
        "VERIFY(16)",
        sbc.verify,
        "8f16ffffffffffffffffffffffff1f00",
        direction=D.OUT,
        access=_READ,
        media=True,
    ),
    _c(
        0x90,
        "PRE-FETCH(16)",
        sbc.pre_fetch,
        "9002ffffffffffffffffffffffff1f00",
        access=_READ,
        media=True,
    ),
    _c(
        0x91,
        "SYNCHRONIZE CACHE(16)",
        sbc.synchronize_cache,
        "9102ffffffffffffffffffffffff1f00",
        media=True,
    ),
    _c(
        0x93,
        "WRITE SAME(16)",
        sbc.write_same,
        "9309ffffffffffffffffffffffff1f00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _group(
        0x9E,
        "SERVICE ACTION IN(16)",
        _sa(
            0x9E,
            0x10,
            "READ CAPACITY(16)",
            sbc.read_capacity_16,
            "9e10ffffffffffffffffffffffff0000",
            direction=D.IN,
            access=_ALL,
            media=True,
            alua=_STANDBY,  # as READ CAPACITY(10)
        ),
        _sa(
            0x9E,
            0x12,
            "GET LBA STATUS",
            sbc.get_lba_status,
            "9e12ffffffffffffffffffffffff0000",
            direction=D.IN,
            access=_READ,
            media=True,
        ),
    ),
    _c(
        0xA0,
        "REPORT LUNS",
        spc.report_luns,
        "a000ff000000ffffffff0000",
        direction=D.IN,
        access=_ALL,
        spc2=True,
        ua_exempt=True,
        no_lu_ok=True,
        alua=_ANY_STATE,
    ),
    _group(
        0xA3,
        "MAINTENANCE IN",
        _sa(
            0xA3,
            0x0A,
            "REPORT TARGET PORT GROUPS",
            spc.report_target_port_groups,
            "a3ea00000000ffffffff0000",
            direction=D.IN,
            access=_ALL,
            alua=_ANY_STATE,
        ),
        _sa(
            0xA3,
            0x0C,
            "REPORT SUPPORTED OPERATION CODES",
            report_supported_operation_codes,
            "a30c87ffffffffffffff0000",
            direction=D.IN,
            # They describe the device and touch nothing; sd asks through every path.
            alua=_STANDBY,
        ),
        _sa(
            0xA3,
            0x0D,
            "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
            report_supported_tmfs,
            "a30d80000000ffffffff0000",
            direction=D.IN,
            alua=_STANDBY,
        ),
    ),
    _c(0xA8, "READ(12)", sbc.read, _RW12.format(0xA8), direction=D.IN, access=_READ, media=True),
    _c(0xAA, "WRITE(12)", sbc.write, _RW12.format(0xAA), direction=D.OUT, write=True, media=True),
    _c(
        0xAE,
        "WRITE AND VERIFY(12)",
        sbc.write_and_verify,
        "ae12ffffffffffffffff1f00",
        direction=D.OUT,
        write=True,
        media=True,
    ),
    _c(
        0xAF,
        "VERIFY(12)",
        sbc.verify,
        "af16ffffffffffffffff1f00",
        direction=D.OUT,
        access=_READ,
        media=True,
    ),
    _c(
        0xB7,
        "READ DEFECT DATA(12)",
        sbc.read_defect_data,
        "b71f00000000ffffffff0000",
        direction=D.IN,
        access=_READ,
    ),
]

#: opcode -> Command. Opcodes with service actions map to a group whose ``actions`` hold them.
TABLE: dict[int, Command] = {c.opcode: c for c in _ENTRIES}


def lookup(cdb: bytes) -> Command | None:
    """The command for this CDB; None for an unknown opcode. Raises for a bad service action."""
    entry = TABLE.get(cdb[0])
    if entry is None or not entry.actions:
        return entry
    action = entry.actions.get(cdb[1] & 0x1F)
    if action is None:
        raise invalid_cdb(1, 4)
    return action


def commands(lu: LogicalUnit | None = None) -> list[Command]:
    """Every command (service actions expanded) this LU offers, in opcode order."""
    out: list[Command] = []
    for entry in sorted(TABLE.values(), key=lambda c: c.opcode):
        for cmd in entry.actions.values() if entry.actions else (entry,):
            if cmd.offered_by(lu):
                out.append(cmd)
    return out
