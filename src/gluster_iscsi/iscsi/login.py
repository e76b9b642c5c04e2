"""The login phase of one connection (RFC 7143 6, 11.12-11.13): stages, keys, CHAP, the session.

A :class:`Login` takes the connection's Login Requests and answers each with one Login
Response; once a response has taken the connection to the full feature phase it holds the new
:class:`~gluster_iscsi.iscsi.session.Session`, and the connection hands over to its full
feature phase (as wsproto's handshake hands over to its framing). Bytes and events in and out,
no I/O, like the rest of the iSCSI core.

The stage machine is a table (:data:`TRANSITIONS`, as h11's ``_state.py``): the current stage
and what a request asks for (stay, or transit to NSG) give the next stage, and a pair missing
from it is a protocol error. Which keys a stage takes is :data:`STAGE_HANDLERS`; how each key is
negotiated is ``params.py``'s table. Every refusal carries a :class:`LoginStatus`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any

from ..logs import PROBLEMS
from ..scsi.task import Nexus
from . import pdu as P
from .chap import ChapAuthenticator
from .errors import LoginError, LoginStatus, ProtocolError
from .events import LoginProgress, ReinstateSession
from .params import Negotiator, SessionParams
from .pdu import NO_TAG, Pdu
from .portal import TargetDirectory, TargetEntry
from .session import Session, SessionTable
from .text import decode_text, encode_text

log = logging.getLogger(__name__)

#: Login text accumulated across continued PDUs (and Text requests, ``connection.py``).
MAX_LOGIN_TEXT = 64 << 10
LOGIN_DSL = 8192  # MaxRecvDataSegmentLength during login (RFC 7143 13.12)


class LoginStage(IntEnum):
    """CSG/NSG values (RFC 7143 11.12): 2 is reserved."""

    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


#: What a request asks for when its T bit is clear: to stay in its stage.
STAY = -1

#: (current stage, NSG of a transit or STAY) -> the stage after the response. A pair not here
#: (a transit backwards, to itself, or to the reserved stage 2) refuses the login.
TRANSITIONS: dict[tuple[int, int], LoginStage] = {
    (LoginStage.SECURITY, STAY): LoginStage.SECURITY,
    (LoginStage.SECURITY, LoginStage.OPERATIONAL): LoginStage.OPERATIONAL,
    (LoginStage.SECURITY, LoginStage.FULL_FEATURE): LoginStage.FULL_FEATURE,
    (LoginStage.OPERATIONAL, STAY): LoginStage.OPERATIONAL,
    (LoginStage.OPERATIONAL, LoginStage.FULL_FEATURE): LoginStage.FULL_FEATURE,
}

#: The stage a login may begin in (the CSG of its first request): the security stage may be
#: skipped when no authentication is wanted (RFC 7143 6.3).
FIRST_STAGES = frozenset({LoginStage.SECURITY, LoginStage.OPERATIONAL})


def _is_security_key(key: str) -> bool:
    return key == "AuthMethod" or key.startswith("CHAP_")


class Login:
    """One connection's login phase, from its first Login Request to the session (or a refusal).

    :meth:`receive` takes a Login Request; the responses to send are in :attr:`out`, and
    :attr:`session` is set once a response took the connection to the full feature phase.
    A refusal raises nothing: it queues the refusing response and sets :attr:`failed`.
    """

    def __init__(
        self,
        directory: TargetDirectory,
        sessions: SessionTable,
        target_params: Mapping[str, str],
        *,
        peer_address: str,
        portal_tpgt: int = 1,
        queue_depth: int = 128,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.directory = directory
        self.sessions = sessions
        self.target_params = dict(target_params)
        self.peer_address = peer_address
        self.tpgt = portal_tpgt
        self.queue_depth = queue_depth
        self.random_bytes = random_bytes
        #: Response headers (and data) to send, in order.
        self.out: list[tuple[bytes, bytes | None]] = []
        #: Events for the server (a reinstated session).
        self.events: list[Any] = []
        self.stage = LoginStage.SECURITY
        self.stat_sn = 0
        self.cid = 0
        self.cmdsn = 0
        self.isid = b""
        self.tsih = 0
        self.initiator_name = ""
        self.target: TargetEntry | None = None
        self.session_type = "Normal"
        self.negotiator = Negotiator(self.target_params)
        self.session: Session | None = None
        self.params: SessionParams | None = None
        self.failed: str | None = None
        #: the status a refused login was answered with (for the server's counters)
        self.refusal: LoginStatus | None = None
        self._started = False
        self._text = bytearray()
        # A Login Response too long for one PDU: the rest, and the (T, NSG) it ends with.
        self._rest = b""
        self._rest_next = (False, 0)
        self._chap: ChapAuthenticator | None = None
        self._auth_required = False
        self._authenticated = False
        self._auth_method: str | None = None
        self._first_response = True
        self._declared = False  # the target's operational declarations were sent

    # ------------------------------------------------------------------ in
    def receive(self, pdu: Pdu) -> None:
        """Answer one Login Request (or refuse the login)."""
        itt = pdu.itt
        try:
            self._receive(pdu)
        except LoginError as exc:
            self.fail(exc.status, str(exc), itt)
        except ProtocolError as perr:
            self.fail(LoginStatus.INITIATOR_ERROR, str(perr), itt)

    def fail(self, status: LoginStatus, message: str, itt: int = NO_TAG) -> None:
        """Refuse the login: the last response, the connection then closes."""
        reason = (f"login refused ({status.status_class:#04x}/{status.status_detail:#04x}): "
                  f"{message}")
        PROBLEMS.report(log, logging.WARNING, "iSCSI login refused", self.peer_address, "iSCSI %s: %s",
                        self.who(), reason,
                        fields={"initiator": self.initiator_name or None,
                                "address": self.peer_address, "reason": reason})
        self.out.append((P.login_response(itt, self.isid.ljust(6, b"\0"), 0, self._next_statsn(), 0, 0,
                                          status=status), None))
        self.failed = message
        self.refusal = status

    def who(self) -> str:
        return f"{self.initiator_name or '?'} at {self.peer_address}"

    def _receive(self, pdu: Pdu) -> None:
        transit, cont, csg, nsg, itt = pdu.final, pdu.cont, pdu.csg, pdu.nsg, pdu.itt
        if not self._started:
            self._started = True
            self.isid = pdu.isid
            self.tsih = pdu.tsih
            self.cid = pdu.cid
            self.stat_sn = pdu.expstatsn
            self.cmdsn = pdu.cmdsn
            if pdu.version_min > 0:  # nothing we speak (we are version 0)
                raise LoginError(LoginStatus.UNSUPPORTED_VERSION,
                                 f"unsupported version range {pdu.version_min}..{pdu.version_max}")
            if csg in FIRST_STAGES:
                self.stage = LoginStage(csg)
        elif pdu.isid != self.isid or pdu.tsih != self.tsih:
            raise LoginError(LoginStatus.INITIATOR_ERROR, "ISID/TSIH changed during login")
        if csg != self.stage:
            raise LoginError(LoginStatus.INITIATOR_ERROR,
                             f"CSG {csg} does not match the current stage {self.stage}")
        if transit and cont:
            raise LoginError(LoginStatus.INITIATOR_ERROR, "T and C bits both set")
        if (self.stage, nsg if transit else STAY) not in TRANSITIONS:
            raise LoginError(LoginStatus.INITIATOR_ERROR, f"invalid transition {csg}->{nsg}")
        if self._rest:
            # Our response goes on (C bit): the initiator asks for the rest with an
            # empty request (RFC 7143 11.13.4), and may not send keys meanwhile.
            if pdu.data or cont:
                raise LoginError(LoginStatus.INITIATOR_ERROR,
                                 "login request with keys while the response continues")
            rest, (want_transit, want_nsg) = self._rest, self._rest_next
            self._rest = b""
            self._answer(itt, want_transit and transit, want_nsg, rest)
            return
        if len(self._text) + len(pdu.data) > MAX_LOGIN_TEXT:
            raise LoginError(LoginStatus.INITIATOR_ERROR, "login text too long")
        self._text += pdu.data
        if cont:
            self._respond(itt, False, csg, b"")
            return
        pairs = decode_text(bytes(self._text))
        self._text.clear()
        if not self.initiator_name:
            self._identify(dict(pairs))
        out, transit = STAGE_HANDLERS[self.stage](self, pairs, transit)
        if self._first_response:
            self._first_response = False
            # A complete, valid request: the connection is a login in progress, which the
            # daemon's admission spares while it has bare connections to close.
            self.events.append(LoginProgress())
            if self.session_type == "Normal":
                out.append(("TargetPortalGroupTag", str(self.tpgt)))
                if self.target is not None and self.target.alias:
                    out.append(("TargetAlias", self.target.alias))
        if self.stage == LoginStage.OPERATIONAL and not self._declared:
            # Operational keys only in operational-stage responses: open-iscsi refuses them in
            # the security stage. (A login going straight from security to full feature phase
            # gets no declaration, and the initiator keeps the 8192-byte default: safe.)
            self._declared = True
            out += self.negotiator.declarations("operational", self.session_type)
        self._answer(itt, transit, nsg, encode_text(out))

    def _identify(self, keys: dict[str, str]) -> None:
        """First login request: who is this, which session type, which target, may they."""
        name = keys.get("InitiatorName")
        if not name:
            raise LoginError(LoginStatus.MISSING_PARAMETER, "InitiatorName missing")
        self.initiator_name = name
        self.session_type = keys.get("SessionType", "Normal")
        if self.session_type not in ("Normal", "Discovery"):
            raise LoginError(LoginStatus.INITIATOR_ERROR, f"SessionType {self.session_type!r} is invalid")
        directory = self.directory
        if self.session_type == "Normal":
            tname = keys.get("TargetName")
            if not tname:
                raise LoginError(LoginStatus.MISSING_PARAMETER, "TargetName missing in a normal session")
            target = directory.lookup(tname)
            # A target this initiator may not use is answered as one that does not exist
            # (0x0203), as tgt does and as SendTargets already hides it: 0x0202 for one and
            # 0x0203 for the other would let anyone probe target names. The log says which.
            if target is None:
                raise LoginError(LoginStatus.NOT_FOUND, f"target {tname} not found")
            if not target.allows(name, self.peer_address):
                raise LoginError(LoginStatus.NOT_FOUND,
                                 f"{name} at {self.peer_address} is not allowed on {tname}")
            self.target = target
            # Per-target parameters (e.g. a smaller MaxBurstLength) override the daemon's.
            self.negotiator = Negotiator(target.offered_params(self.target_params))
            accounts, outgoing = target.chap_for(name)
        else:
            accounts, outgoing = directory.discovery_incoming, directory.discovery_outgoing
        self._auth_required = bool(accounts)
        if self._auth_required:
            self._chap = ChapAuthenticator(accounts, outgoing, random_bytes=self.random_bytes)

    # ------------------------------------------------------------------ stages
    def _security_stage(self, pairs: list[tuple[str, str]], transit: bool) -> tuple[list[tuple[str, str]], bool]:
        out = self._security([(k, v) for k, v in pairs if _is_security_key(k)])
        out += self.negotiator.negotiate([(k, v) for k, v in pairs if not _is_security_key(k)],
                                         stage="security", session_type=self.session_type)
        if transit and not self._security_done():
            transit = False  # keep negotiating security; the initiator will continue
        return out, transit

    def _operational_stage(self, pairs: list[tuple[str, str]], transit: bool) -> tuple[list[tuple[str, str]], bool]:
        if self._auth_required and not self._authenticated:
            raise LoginError(LoginStatus.AUTHENTICATION_FAILURE, "authentication required (CHAP) but skipped")
        return self.negotiator.negotiate(pairs, stage="operational", session_type=self.session_type), transit

    def _security_done(self) -> bool:
        return (not self._auth_required and self._auth_method in (None, "None")) or self._authenticated

    def _security(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        chap_keys: dict[str, str] = {}
        for k, v in pairs:
            if k == "AuthMethod":
                if self._auth_method is not None:
                    raise LoginError(LoginStatus.INITIATOR_ERROR, "AuthMethod sent twice")
                offered = [m.strip() for m in v.split(",")]
                if self._auth_required:
                    if "CHAP" not in offered:
                        raise LoginError(LoginStatus.AUTHENTICATION_FAILURE,
                                         f"CHAP is required but the initiator offered {v}")
                    self._auth_method = "CHAP"
                elif "None" in offered:
                    self._auth_method = "None"
                else:
                    raise LoginError(LoginStatus.AUTHENTICATION_FAILURE,
                                     f"no CHAP account configured, initiator offered only {v}")
                out.append(("AuthMethod", self._auth_method))
            else:
                chap_keys[k] = v
        if chap_keys:
            if self._auth_method != "CHAP" or self._chap is None:
                raise LoginError(LoginStatus.INITIATOR_ERROR, "CHAP keys without AuthMethod=CHAP")
            resp, done = self._chap.step(chap_keys)
            out += resp
            if done:
                self._authenticated = True
        return out

    # ------------------------------------------------------------------ out
    def _answer(self, itt: int, transit: bool, nsg: int, data: bytes) -> None:
        """Send a Login Response's text; beyond the 8192 bytes an initiator takes during
        login (RFC 7143 13.12), the first part with the C bit and the rest when asked. The
        stage changes (or the session starts) with the last part only."""
        csg = self.stage
        if len(data) > LOGIN_DSL:
            self._rest = data[LOGIN_DSL:]
            self._rest_next = (transit, nsg)
            self._respond(itt, False, csg, data[:LOGIN_DSL], cont=True)
            return
        if not transit:
            self._respond(itt, False, csg, data)
            return
        nxt = TRANSITIONS[(csg, nsg)]
        if nxt == LoginStage.FULL_FEATURE:
            self._start_session(itt, csg, data)
            return
        self.stage = nxt
        self._respond(itt, True, csg, data, nsg=nxt)

    def _respond(self, itt: int, transit: bool, csg: int, data: bytes, nsg: int = 0,
                 tsih: int | None = None, cont: bool = False) -> None:
        flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
        exp = self.cmdsn
        self.out.append((
            P.login_response(itt, self.isid, tsih if tsih is not None else self.tsih, self._next_statsn(),
                             exp, (exp + self.queue_depth - 1) & 0xFFFFFFFF, flags=flags, dsl=len(data)),
            data,
        ))

    def _next_statsn(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _start_session(self, itt: int, csg: int, data: bytes) -> None:
        params = self.negotiator.result()
        table = self.sessions
        target = self.target
        if self.tsih:
            existing = table.by_tsih.get(self.tsih)
            if existing is None or existing.isid != self.isid:
                raise LoginError(LoginStatus.SESSION_DOES_NOT_EXIST, f"session TSIH {self.tsih} does not exist")
            raise LoginError(LoginStatus.TOO_MANY_CONNECTIONS,
                             "MaxConnections=1: no more connections in this session")
        if self.session_type == "Normal":
            old = table.find(self.initiator_name, self.isid, target.name if target else None)
            if old is not None:
                table.remove(old)
                self.events.append(ReinstateSession(old))
        tsih = table.allocate_tsih()
        nexus = None
        if target is not None:
            nexus = Nexus(
                initiator_name=self.initiator_name,
                initiator_port=f"{self.initiator_name},i,0x{self.isid.hex()}",
                target_port=f"{target.name},t,0x{self.tpgt:04x}",
                relative_port=self.tpgt,
                target_port_group=self.tpgt,
            )
        session = Session(tsih, self.isid, self.initiator_name, self.session_type, target, nexus,
                          params, queue_depth=self.queue_depth)
        session.start_window(self.cmdsn)
        table.add(session)
        self.tsih = tsih
        self._respond(itt, True, csg, data, nsg=LoginStage.FULL_FEATURE, tsih=tsih)
        self.stage = LoginStage.FULL_FEATURE
        self.session = session
        self.params = params
        PROBLEMS.report(log, logging.INFO, "iSCSI login", self.peer_address,
                        "iSCSI login: %s tsih=%d %s session%s", self.who(), tsih, self.session_type,
                        f" to {target.name}" if target else "", burst=20,
                        fields={"initiator": self.initiator_name, "address": self.peer_address,
                                "target": target.name if target else None, "tsih": tsih,
                                "session_type": self.session_type})


#: Which keys each stage takes, and how (the stage a request is in must be a key here).
STAGE_HANDLERS: dict[int, Callable[[Login, list[tuple[str, str]], bool], tuple[list[tuple[str, str]], bool]]] = {
    LoginStage.SECURITY: Login._security_stage,
    LoginStage.OPERATIONAL: Login._operational_stage,
}


__all__ = ["FIRST_STAGES", "LOGIN_DSL", "Login", "LoginStage", "MAX_LOGIN_TEXT", "STAGE_HANDLERS", "TRANSITIONS"]
