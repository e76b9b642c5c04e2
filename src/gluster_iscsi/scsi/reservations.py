"""Reservations: SPC-2 RESERVE/RELEASE and persistent reservations (SPC-4 5.9, 6.15, 6.16).

:class:`PrState` is the persistent-reservation state of one logical unit;
:meth:`PrState.conflicts` is the one place that decides RESERVATION CONFLICT, from the :class:`Access` class the opcode
table gives each command (SPC-4 table 63 and SBC-3 table 13 "commands allowed in the presence
of various reservations").
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .context import ReservationConflict, data_in
from .io import SharedRefresh, SharedUpdate
from .sense import Asc, CheckCondition, SenseKey, invalid_cdb, invalid_param
from .task import Execution, Nexus, ScsiResult

if TYPE_CHECKING:
    from .context import Ctx
    from .lu import LogicalUnit
    from .opcodes import Command


class Access(enum.IntEnum):
    """How a command fares under a reservation held by another I_T nexus."""

    #: Allowed under every reservation (INQUIRY, REPORT LUNS, READ CAPACITY, PR IN ...).
    ALWAYS = 0
    #: Reads: allowed under Write Exclusive types, conflict under Exclusive Access types.
    READ = 1
    #: Conflicts unless the nexus holds the reservation (or is a registrant of an RO/AR type).
    WRITE = 2


class PrType(enum.IntEnum):
    """Persistent reservation types (SPC-4 6.15.3.4, table 170)."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8

    @property
    def all_registrants(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
            PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        )

    @property
    def registrants_only(self) -> bool:
        return self.value in (5, 6, 7, 8)

    @property
    def exclusive_access(self) -> bool:
        return self.value in (3, 6, 8)


class PrOutAction(enum.IntEnum):
    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE_EXISTING_KEY = 6
    REGISTER_AND_MOVE = 7


class PrInAction(enum.IntEnum):
    READ_KEYS = 0
    READ_RESERVATION = 1
    REPORT_CAPABILITIES = 2
    READ_FULL_STATUS = 3


@dataclass(slots=True)
class Registration:
    """One registered I_T nexus (or, from a format-00b TransportID, every port of an initiator)."""

    initiator: str  # an initiator port name ("iqn...,i,0x...") or an initiator name
    target_port: str
    key: int
    all_tg_pt: bool = False
    relative_port: int = 1

    def matches(self, nexus: Nexus) -> bool:
        who = self.initiator.lower()
        if who != nexus.initiator_port.lower() and who != nexus.initiator_name.lower():
            return False
        return self.all_tg_pt or self.target_port == nexus.target_port

    @property
    def transport_id(self) -> bytes:
        name, sep, isid = self.initiator.partition(",i,")
        body = self.initiator.encode() + b"\x00"
        body += b"\x00" * (-len(body) % 4)
        if len(body) < 20:
            body += b"\x00" * (20 - len(body))
        fmt = 0x40 if sep else 0x00
        return bytes([fmt | 0x05, 0]) + len(body).to_bytes(2, "big") + body


@dataclass(slots=True)
class PrState:
    generation: int = 0
    registrations: list[Registration] = field(default_factory=list)
    type: PrType | None = None
    #: The holder for non all-registrants types; None with an AR type means every registrant.
    holder: Registration | None = None
    aptpl: bool = False

    def registration_of(self, nexus: Nexus) -> Registration | None:
        # An exact port registration wins over one made for the whole initiator name.
        found = [r for r in self.registrations if r.matches(nexus)]
        found.sort(key=lambda r: r.initiator.lower() != nexus.initiator_port.lower())
        return found[0] if found else None

    def holds(self, nexus: Nexus) -> bool:
        if self.type is None:
            return False
        if self.type.all_registrants:
            return self.registration_of(nexus) is not None
        return self.holder is not None and self.holder.matches(nexus)

    def is_holder_registration(self, reg: Registration) -> bool:
        if self.type is None:
            return False
        return self.type.all_registrants or self.holder is reg

    def conflicts(self, nexus: Nexus, access: Access) -> bool:
        if self.type is None or access is Access.ALWAYS or self.holds(nexus):
            return False
        if self.type.registrants_only and self.registration_of(nexus) is not None:
            return False
        if access is Access.READ:
            return self.type.exclusive_access
        return True

    def to_dict(self) -> dict[str, Any]:
        regs = [
            {
                "initiator": r.initiator,
                "target_port": r.target_port,
                "key": r.key,
                "all_tg_pt": r.all_tg_pt,
                "relative_port": r.relative_port,
            }
            for r in self.registrations
        ]
        holder = (
            self.registrations.index(self.holder) if self.holder in self.registrations else None
        )
        return {
            "generation": self.generation,
            "registrations": regs,
            "type": int(self.type) if self.type is not None else None,
            "holder": holder,
            "aptpl": self.aptpl,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PrState:
        regs = [Registration(**r) for r in state.get("registrations", [])]
        holder_index = state.get("holder")
        rtype = state.get("type")
        return cls(
            generation=int(state.get("generation", 0)),
            registrations=regs,
            type=PrType(rtype) if rtype is not None else None,
            holder=regs[holder_index] if holder_index is not None else None,
            aptpl=bool(state.get("aptpl", True)),
        )


def conflicts(lu: LogicalUnit, nexus: Nexus, command: Command, cdb: bytes) -> bool:
    """Whether ``command`` from ``nexus`` meets a reservation held by another I_T nexus.

    The single decision for both kinds: an SPC-2 RESERVE (SPC-2 5.5.1: only the commands
    the table marks ``spc2`` pass) and a persistent reservation (by the command's
    :class:`Access` class).
    """
    with lu.state_lock:
        holder = lu.reserved_by
        if holder is not None and holder != nexus.initiator_port and not command.spc2_ok(cdb):
            return True
        return lu.pr.conflicts(nexus, command.pr_access(cdb))


# ---------------------------------------------------------------------------------------
# SPC-2 RESERVE / RELEASE


def reserve(ctx: Ctx) -> ScsiResult:
    """RESERVE(6)/(10): whole-LU reservation only (third-party and extents are obsolete)."""
    lu = ctx.lu
    if ctx.cdb[0] == 0x56 and ctx.cdb[1] & 0x02:  # 3RDPTY
        raise invalid_cdb(1, 1)
    if ctx.cdb[0] == 0x16 and ctx.cdb[1] & 0x01:  # extent reservation, obsolete
        raise invalid_cdb(1, 0)
    with lu.state_lock:
        if lu.pr.registrations or lu.pr.type is not None:
            raise ReservationConflict  # SPC-4 5.9.3: PR in use, SPC-2 commands conflict
        if lu.reserved_by not in (None, ctx.nexus.initiator_port):
            raise ReservationConflict
        lu.reserved_by = ctx.nexus.initiator_port
    return ScsiResult()


def release(ctx: Ctx) -> ScsiResult:
    lu = ctx.lu
    with lu.state_lock:
        if lu.pr.registrations or lu.pr.type is not None:
            raise ReservationConflict
        if lu.reserved_by == ctx.nexus.initiator_port:
            lu.reserved_by = None
    return ScsiResult()  # releasing someone else's reservation is a no-op, GOOD


# ---------------------------------------------------------------------------------------
# PERSISTENT RESERVE IN


def _check_type(cdb: bytes) -> PrType:
    if cdb[2] >> 4:
        raise invalid_cdb(2, 4)
    try:
        return PrType(cdb[2] & 0x0F)
    except ValueError:
        raise invalid_cdb(2, 0) from None


def persistent_reserve_in(ctx: Ctx) -> Execution:
    cdb = ctx.cdb
    alloc = int.from_bytes(cdb[7:9], "big")
    try:
        action = PrInAction(cdb[1] & 0x1F)
    except ValueError:
        raise invalid_cdb(1, 4) from None
    yield SharedRefresh("pr", ctx.lu)  # another gateway of a group may have changed them
    with ctx.lu.state_lock:
        pr = ctx.lu.pr
        if action is PrInAction.READ_KEYS:
            keys = b"".join(r.key.to_bytes(8, "big") for r in pr.registrations)
            out = struct.pack(">II", pr.generation, len(keys)) + keys
        elif action is PrInAction.READ_RESERVATION:
            if pr.type is None:
                out = struct.pack(">II", pr.generation, 0)
            else:
                key = 0 if pr.type.all_registrants or pr.holder is None else pr.holder.key
                body = key.to_bytes(8, "big") + bytes(5) + bytes([pr.type]) + bytes(2)
                out = struct.pack(">II", pr.generation, len(body)) + body
        elif action is PrInAction.REPORT_CAPABILITIES:
            ptpl_c = 0x01 if ctx.lu.on_persist is not None else 0
            flags2 = 0x10 | 0x08 | 0x04 | ptpl_c  # CRH, SIP_C, ATP_C, PTPL_C
            flags3 = 0x80 | 0x10 | (0x01 if pr.aptpl else 0)  # TMV, ALLOW_COMMANDS=001b, PTPL_A
            mask = 0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01
            out = bytes([0, 8, flags2, flags3, *mask, 0, 0])
        else:
            descs = bytearray()
            for r in pr.registrations:
                tid = r.transport_id
                holder = pr.is_holder_registration(r)
                descs += r.key.to_bytes(8, "big") + bytes(4)
                descs += bytes([(0x02 if r.all_tg_pt else 0) | (1 if holder else 0)])
                descs += bytes([pr.type if holder and pr.type is not None else 0])
                descs += bytes(4) + r.relative_port.to_bytes(2, "big")
                descs += len(tid).to_bytes(4, "big") + tid
            out = struct.pack(">II", pr.generation, len(descs)) + bytes(descs)
    return data_in(out, alloc)


# ---------------------------------------------------------------------------------------
# PERSISTENT RESERVE OUT


def _parse_transport_ids(data: memoryview, start: int) -> list[str]:
    """iSCSI TransportIDs (SPC-4 7.6.4.6): ``name`` (format 00b) or ``name,i,0xISID`` (01b)."""
    out: list[str] = []
    pos = start
    while pos < len(data):
        if len(data) - pos < 4:
            raise invalid_param(pos)
        fmt, proto = data[pos] >> 6, data[pos] & 0x0F
        if proto != 0x05 or fmt not in (0, 1):
            raise invalid_param(pos)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 4 or pos + 4 + length > len(data):
            raise invalid_param(pos + 2)
        name = (
            bytes(data[pos + 4 : pos + 4 + length]).split(b"\x00", 1)[0].decode("utf-8", "replace")
        )
        if not name or (fmt == 1) != (",i," in name.lower()):
            raise invalid_param(pos + 4)
        out.append(name)
        pos += 4 + length
    return out


def persistent_reserve_out(ctx: Ctx) -> Execution:
    """PERSISTENT RESERVE OUT: what needs no reservation state is checked here; the rest,
    and every change, happens in the :class:`~.io.SharedUpdate` the runner applies (under
    the LU's state lock; in a gateway group, on the group's latest state)."""
    cdb, lu = ctx.cdb, ctx.lu
    try:
        action = PrOutAction(cdb[1] & 0x1F)
    except ValueError:
        raise invalid_cdb(1, 4) from None
    length = int.from_bytes(cdb[5:9], "big")
    if length < 24:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    # A copy: whoever applies the update may do so on another thread, and it must not read
    # a data-out buffer the command has given back.
    params = memoryview(bytes(ctx.require_parameter_list(length)))
    if action is PrOutAction.REGISTER_AND_MOVE:

        def move() -> ScsiResult:
            result = _register_and_move(ctx, params)
            lu.persist_pr()
            return result

        moved: ScsiResult = yield SharedUpdate("pr", move, lu)
        return moved
    applied: ScsiResult = yield SharedUpdate(
        "pr", lambda: _persistent_reserve_out(ctx, action, length, params), lu
    )
    return applied


def _persistent_reserve_out(
    ctx: Ctx, action: PrOutAction, length: int, params: memoryview
) -> ScsiResult:
    """Every PERSISTENT RESERVE OUT service action but REGISTER AND MOVE, on the LU's state."""
    cdb, lu, nexus = ctx.cdb, ctx.lu, ctx.nexus
    key = int.from_bytes(params[0:8], "big")
    sa_key = int.from_bytes(params[8:16], "big")
    spec_i_pt = bool(params[20] & 0x08)
    all_tg_pt = bool(params[20] & 0x04)
    aptpl = bool(params[20] & 0x01)
    if not spec_i_pt and length != 24:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    if aptpl and lu.on_persist is None:
        raise invalid_param(20, 0)
    result = ScsiResult()
    with lu.state_lock:
        pr = lu.pr
        reg = pr.registration_of(nexus)
        if action in (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
            ignore = action is PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY
            if spec_i_pt and ignore:
                raise invalid_param(20, 3)
            if reg is None:
                if key != 0 and not ignore:
                    raise ReservationConflict
                if sa_key == 0:
                    return result
                extra: list[str] = []
                if spec_i_pt:
                    if length < 28:
                        raise CheckCondition(
                            SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR
                        )
                    tid_len = int.from_bytes(params[24:28], "big")
                    if 28 + tid_len != length:
                        raise CheckCondition(
                            SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR
                        )
                    extra = _parse_transport_ids(params, 28)
                    for name in extra:
                        if any(
                            r.initiator.lower() == name.lower()
                            and (r.all_tg_pt or all_tg_pt or r.target_port == nexus.target_port)
                            for r in pr.registrations
                        ):
                            raise invalid_param(28)
                issuer = nexus.initiator_port
                others = [n for n in extra if n.lower() != issuer.lower()]
                for who in [issuer, *others]:
                    pr.registrations.append(
                        Registration(who, nexus.target_port, sa_key, all_tg_pt, nexus.relative_port)
                    )
            else:
                if spec_i_pt:
                    raise invalid_param(20, 3)
                if key != reg.key and not ignore:
                    raise ReservationConflict
                if sa_key == 0:
                    _unregister(lu, reg, nexus)
                else:
                    reg.key = sa_key
            pr.generation += 1
            pr.aptpl = aptpl
            lu.persist_pr()
            return result

        # Everything else needs a registered nexus presenting its own key.
        if reg is None or key != reg.key:
            raise ReservationConflict
        if action is PrOutAction.RESERVE:
            rtype = _check_type(cdb)
            if pr.type is not None:
                if pr.holds(nexus) and pr.type == rtype:
                    return result
                raise ReservationConflict
            pr.type = rtype
            pr.holder = None if rtype.all_registrants else reg
        elif action is PrOutAction.RELEASE:
            if pr.type is None or not pr.holds(nexus):
                return result
            rtype = _check_type(cdb)
            if rtype != pr.type:
                raise CheckCondition(
                    SenseKey.ILLEGAL_REQUEST, Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION
                )
            _release(lu, nexus)
        elif action is PrOutAction.CLEAR:
            for other in pr.registrations:
                if other is not reg:
                    _ua_registration(lu, other, Asc.RESERVATIONS_PREEMPTED)
            pr.registrations.clear()
            pr.type = None
            pr.holder = None
            pr.generation += 1
        else:  # PREEMPT, PREEMPT AND ABORT
            rtype = _check_type(cdb)
            preempted = _preempt(lu, reg, nexus, sa_key, rtype)
            pr.generation += 1
            if action is PrOutAction.PREEMPT_AND_ABORT:
                # The transport aborts the task sets of these I_T nexuses.
                result.extra = {"abort_initiators": [r.initiator for r in preempted]}
        lu.persist_pr()
    return result


def _ua_registration(lu: Any, reg: Registration, asc: Asc) -> None:
    lu.queue_ua_initiator(reg.initiator, asc)


def _release(lu: Any, nexus: Nexus) -> None:
    pr = lu.pr
    rtype = pr.type
    pr.type = None
    pr.holder = None
    if rtype is not None and rtype.registrants_only:
        for other in pr.registrations:
            if not other.matches(nexus):
                _ua_registration(lu, other, Asc.RESERVATIONS_RELEASED)


def _unregister(lu: Any, reg: Registration, nexus: Nexus) -> None:
    pr = lu.pr
    pr.registrations.remove(reg)
    if pr.type is None:
        return
    if pr.type.all_registrants:
        if not pr.registrations:
            pr.type = None
    elif pr.holder is reg:
        _release(lu, nexus)


def _preempt(
    lu: Any, reg: Registration, nexus: Nexus, sa_key: int, rtype: PrType
) -> list[Registration]:
    pr = lu.pr
    if pr.type is None or (
        not pr.type.all_registrants and pr.holder is not None and pr.holder.key != sa_key
    ):
        # No reservation, or preempting registrations other than the holder's: remove only.
        if sa_key == 0:
            raise invalid_param(8)
        victims = [r for r in pr.registrations if r.key == sa_key]
        if not victims:
            raise ReservationConflict
    elif pr.type.all_registrants:
        if sa_key == 0:
            victims = [r for r in pr.registrations if r is not reg]
            pr.type = rtype
            pr.holder = None if rtype.all_registrants else reg
        else:
            victims = [r for r in pr.registrations if r.key == sa_key]
            if not victims:
                raise ReservationConflict
    else:
        # Preempting the holder: take over the reservation with the requested type.
        victims = [r for r in pr.registrations if r.key == sa_key and r is not reg]
        old_type = pr.type
        pr.type = rtype
        pr.holder = None if rtype.all_registrants else reg
        if old_type != rtype:
            for other in pr.registrations:
                if other is not reg and other not in victims:
                    _ua_registration(lu, other, Asc.RESERVATIONS_RELEASED)
    for victim in victims:
        if victim is reg:
            continue
        pr.registrations.remove(victim)
        _ua_registration(lu, victim, Asc.REGISTRATIONS_PREEMPTED)
    if pr.type is not None and pr.type.all_registrants and not pr.registrations:
        pr.type = None
    return [v for v in victims if v is not reg]


def _register_and_move(ctx: Ctx, params: memoryview) -> ScsiResult:
    lu, nexus = ctx.lu, ctx.nexus
    pr = lu.pr
    key = int.from_bytes(params[0:8], "big")
    sa_key = int.from_bytes(params[8:16], "big")
    unreg = bool(params[17] & 0x02)
    aptpl = bool(params[17] & 0x01)
    rel_port = int.from_bytes(params[18:20], "big")
    tid_len = int.from_bytes(params[20:24], "big")
    if 24 + tid_len > len(params):
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    reg = pr.registration_of(nexus)
    if reg is None:
        raise ReservationConflict
    if key != reg.key:
        raise ReservationConflict
    if pr.type is None or not pr.holds(nexus):
        raise ReservationConflict
    if pr.type.all_registrants:
        raise ReservationConflict
    if sa_key == 0:
        raise invalid_param(8)
    if aptpl and lu.on_persist is None:
        raise invalid_param(17, 0)
    names = _parse_transport_ids(params[: 24 + tid_len], 24)
    if len(names) != 1:
        raise invalid_param(24)
    dest = names[0]
    if dest.lower() in (nexus.initiator_port.lower(), nexus.initiator_name.lower()) and (
        rel_port == nexus.relative_port
    ):
        raise invalid_param(24)
    target = next(
        (
            r
            for r in pr.registrations
            if r.initiator.lower() == dest.lower() and r.relative_port == rel_port
        ),
        None,
    )
    if target is None:
        port_name = (
            nexus.target_port
            if rel_port == nexus.relative_port
            else ctx.server.target_port_name(rel_port)
        )
        if port_name is None:
            raise invalid_param(18)  # no such relative target port
        target = Registration(dest, port_name, sa_key, False, rel_port)
        pr.registrations.append(target)
    else:
        target.key = sa_key
    pr.holder = target
    if unreg:
        pr.registrations.remove(reg)
    pr.generation += 1
    pr.aptpl = aptpl
    return ScsiResult()
