"""The SCSI device server of one target: its LUN table and the common preamble.

``execute(task)`` runs, in this order (SAM-5 / SPC-4): the LUN check, unit attentions, the
opcode table lookup, the target port group's access state (ALUA), reservation conflicts, NOT
READY and write protection, then the handler.
Everything that ends a command early becomes a :class:`ScsiResult` here and nowhere else.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .context import Ctx, ReservationConflict
from .opcodes import TABLE, Command, lookup
from .reservations import conflicts
from .sense import (
    Asc,
    CheckCondition,
    Progress,
    SenseKey,
    from_store_error,
    illegal,
    invalid_cdb,
    invalid_opcode,
)
from .task import CommandRun, Nexus, ScsiResult, ScsiTask, Status

if TYPE_CHECKING:
    from .lu import LogicalUnit

log = logging.getLogger(__name__)

#: Initiator ports whose nexus ended that a device server remembers, to tell them of the
#: loss when they log in again (SAM-5 6.3.4); beyond that, the oldest are forgotten.
DEPARTED_KEEP = 1024


class DeviceServer:
    """The logical units of one SCSI target device and the I_T nexuses that reach them."""

    def __init__(
        self, luns: dict[int, LogicalUnit] | None = None, *, target_name: str = ""
    ) -> None:
        self.luns: dict[int, LogicalUnit] = dict(luns or {})
        self.target_name = target_name
        self._nexuses: dict[str, Nexus] = {}  # initiator port -> its live nexus
        self._departed: OrderedDict[str, None] = OrderedDict()  # ports whose nexus ended
        #: relative target port identifier -> target port group, of every port seen.
        self._ports: dict[int, int] = {}
        self._port_names: dict[int, str] = {}
        #: initiator ports known here only from the commands other gateways of a group
        #: shipped (``server.ship.register``): their unit attentions are kept by the gateway
        #: their session is on, which checks them before it ships (one queue per nexus)
        self._shipped: set[str] = set()
        self._lock = threading.RLock()

    # -- LUN table ------------------------------------------------------------------------

    def lu(self, lun: int) -> LogicalUnit | None:
        return self.luns.get(lun)

    def store(self, lun: int) -> Any:
        """The store of LUN ``lun`` (opaque here: the command runner runs requests on it)."""
        lu = self.luns.get(lun)
        return lu.store if lu is not None else None

    def add_lun(self, lun: int, lu: LogicalUnit) -> None:
        with self._lock:
            if lun in self.luns:
                raise ValueError(f"LUN {lun} already exists")
            lu.lun_id = lun
            for port in self._nexuses:
                if port not in self._shipped:
                    lu.nexus_added(port)
            self.luns[lun] = lu
            self._luns_changed(except_lun=lun)

    def remove_lun(self, lun: int) -> LogicalUnit | None:
        with self._lock:
            lu = self.luns.pop(lun, None)
            if lu is not None:
                self._luns_changed()
            return lu

    def _luns_changed(self, except_lun: int | None = None) -> None:
        for n, lu in self.luns.items():
            if n != except_lun:
                lu.queue_ua_all(Asc.REPORTED_LUNS_DATA_HAS_CHANGED)

    def target_ports(self) -> dict[int, int]:
        """Relative target port identifier -> target port group, for every port seen."""
        return dict(self._ports)

    def target_port_name(self, relative_port: int) -> str | None:
        """The SCSI target port name ("iqn...,t,0x0001") of a relative port seen so far."""
        return self._port_names.get(relative_port)

    def find_by_naa(self, naa: bytes) -> LogicalUnit | None:
        """The LU whose VPD 83h NAA designator is ``naa`` (EXTENDED COPY target descriptors)."""
        return next((lu for lu in self.luns.values() if lu.naa == naa), None)

    # -- nexus events ---------------------------------------------------------------------

    def nexus_added(self, nexus: Nexus) -> None:
        """A new I_T nexus (login): a unit attention on every LU, POWER ON, RESET OR BUS
        DEVICE RESET OCCURRED, or I_T NEXUS LOSS OCCURRED if this port's last nexus ended."""
        port = nexus.initiator_port
        with self._lock:
            self._nexuses[port] = nexus
            self._shipped.discard(port)
            self._ports[nexus.relative_port] = nexus.target_port_group
            self._port_names[nexus.relative_port] = nexus.target_port
            departed = self._departed
            asc = Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET
            if departed and port in departed:
                del departed[port]
                asc = Asc.I_T_NEXUS_LOSS_OCCURRED
            for lu in self.luns.values():
                lu.nexus_added(port, asc)

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus is gone (session closed): release its SPC-2 reservations and its
        state in every LU, so past sessions cost nothing (a LUN RESET walks live ones only).

        Kept: persistent reservations (registrations are the initiator port's, SPC-4 5.13,
        and survive by design), and the port's name among the last ``DEPARTED_KEEP``, so that
        a new nexus from it starts with I_T NEXUS LOSS OCCURRED (SAM-5 6.3.4) rather than the
        power-on condition of a port never seen. Other conditions pending for it are dropped:
        a unit attention is for a nexus, and the 29h one a new nexus gets first tells it that
        anything may have changed (SAM-5 5.14), which covers them.
        """
        port = nexus.initiator_port
        with self._lock:
            live = self._nexuses.get(port)
            if live is not None and live is not nexus:
                return  # an older session of this port (reinstated): its successor lives on
            self._nexuses.pop(port, None)
            self._shipped.discard(port)
            departed = self._departed
            departed[port] = None
            departed.move_to_end(port)
            while len(departed) > DEPARTED_KEEP:
                departed.popitem(last=False)
            for lu in self.luns.values():
                lu.nexus_lost(port)

    def lun_reset(self, lun: int, nexus: Nexus) -> bool:
        """LOGICAL UNIT RESET: False if there is no such LU."""
        lu = self.luns.get(lun)
        if lu is None:
            return False
        lu.reset(Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED, nexus.initiator_port)
        return True

    def target_reset(self, nexus: Nexus, cold: bool = False) -> None:
        """TARGET WARM/COLD RESET: every LU is reset; persistent reservations are kept."""
        asc = Asc.POWER_ON_OCCURRED if cold else Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED
        with self._lock:
            for lu in self.luns.values():
                lu.reset(asc, nexus.initiator_port)

    def clear_task_set(self, lun: int, nexus: Nexus) -> None:
        """CLEAR TASK SET: tasks of other nexuses were cleared (SAM-5 7.4)."""
        lu = self.luns.get(lun)
        if lu is not None:
            lu._abort_waiters()
            lu.queue_ua_all(
                Asc.COMMANDS_CLEARED_BY_ANOTHER_INITIATOR, except_port=nexus.initiator_port
            )

    # -- execution ------------------------------------------------------------------------

    def execute(self, task: ScsiTask) -> CommandRun:
        """Run one command: a generator yielding :mod:`.io` ops, then its ScsiResult."""
        lu = self.luns.get(task.lun)
        command: Command | None = None
        result: ScsiResult
        try:
            cdb = task.cdb
            if len(cdb) < 16:
                if not cdb:
                    raise invalid_opcode()
                # iSCSI carries at least 16 CDB bytes; pad shorter ones so no field read
                # past the end of a short CDB can fail.
                task.cdb = bytes(cdb) + bytes(16 - len(cdb))
            nexus = task.nexus
            if nexus.initiator_port not in self._nexuses or nexus.relative_port not in self._ports:
                self.nexus_added(nexus)
            command = self._preamble(task, lu)
            outcome = command.handler(Ctx(task, lu, self, command))  # type: ignore[arg-type,misc]
            if type(outcome) is not ScsiResult:  # an Execution (a generator, maybe compiled)
                outcome = yield from outcome
            result = outcome
        except CheckCondition as cc:
            result = self._check_condition(cc, lu)
        except ReservationConflict:
            result = ScsiResult(status=Status.RESERVATION_CONFLICT)
        except OSError as exc:
            write = command is not None and command.write
            result = self._check_condition(from_store_error(exc, write=write), lu)
        except Exception:
            log.exception("internal error executing CDB %s", bytes(task.cdb[:16]).hex())
            failure = CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE)
            result = self._check_condition(failure, lu)
        yield result  # the last item (task.CommandRun): no StopIteration for the caller to catch

    def _preamble(self, task: ScsiTask, lu: LogicalUnit | None) -> Command:
        """SAM-5/SPC-4 order: LUN, unit attention, opcode, asymmetric access (ALUA),
        reservations, medium state.

        Written for the common case (a known opcode, nothing pending, no reservation): each
        step first tests the cheap condition under which it has nothing to say.
        """
        cdb = task.cdb
        entry = TABLE.get(cdb[0])
        bad_action = False
        if entry is not None and entry.actions:
            try:
                entry = lookup(cdb)
            except CheckCondition:
                bad_action = True
        # 1. LUN check.
        if lu is None:
            if entry is not None and entry.no_lu_ok:
                return entry
            raise illegal(Asc.LOGICAL_UNIT_NOT_SUPPORTED)
        port = task.nexus.initiator_port
        # 2. Unit attention (not for INQUIRY, REPORT LUNS, REQUEST SENSE).
        if lu._ua.get(port) and not (entry is not None and entry.ua_exempt):
            asc = lu.pop_ua(port)
            if asc is not None:
                raise CheckCondition(SenseKey.UNIT_ATTENTION, asc)
        # 3. The opcode table.
        if bad_action:
            raise invalid_cdb(1, 4)
        if entry is None:
            raise invalid_opcode()
        if entry.available is not None and not entry.available(lu):
            # A service action this LU lacks of an opcode it has is a bad field; an opcode
            # with nothing to offer here is unsupported (SPC-4 4.2.5.3).
            siblings = TABLE[cdb[0]].actions.values() if entry.service_action is not None else ()
            if any(a.offered_by(lu) for a in siblings):
                raise invalid_cdb(1, 4)
            raise invalid_opcode()
        last = len(entry.usage) - 1
        control = cdb[last] if len(cdb) > last else 0
        if control & 0x05:  # NACA (no ACA support) or the obsolete LINK bit
            raise invalid_cdb(last, 2 if control & 0x04 else 0)
        # 4. Asymmetric access (SPC-4 5.15.2.4; after unit attentions, before reservations,
        # as LIO orders them): one attribute test on a lone gateway.
        alua = lu.alua
        if alua.restricted:
            alua.check(entry.alua, task.nexus.target_port_group)
        # 5. Reservations.
        if (lu.reserved_by is not None or lu.pr.type is not None) and conflicts(
            lu, task.nexus, entry, cdb
        ):
            raise ReservationConflict
        # 6. Medium state.
        job = lu.background
        if job is not None and job.running and not entry.ua_exempt:
            raise CheckCondition(
                SenseKey.NOT_READY,
                Asc.LU_NOT_READY_SANITIZE_IN_PROGRESS,
                field=Progress(job.progress),
            )
        if entry.media and not lu.started:
            raise CheckCondition(SenseKey.NOT_READY, Asc.LU_NOT_READY_INITIALIZING_COMMAND_REQUIRED)
        if entry.write and lu.write_protected:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        return entry

    @staticmethod
    def _check_condition(cc: CheckCondition, lu: LogicalUnit | None) -> ScsiResult:
        descriptor = lu.descriptor_sense if lu is not None else False
        return ScsiResult(status=Status.CHECK_CONDITION, sense=cc.sense(descriptor))
