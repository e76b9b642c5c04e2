"""Login/Text key negotiation: the key table (RFC 7143 13, RFC 7144 2.1) and the target side.

``KEYS`` is the one place where a key's rules live: its type, result function,
default, where it may be used, who may send it, its range and when it is
irrelevant.  :class:`Negotiator` reads only the table; it does no I/O.

Decisions taken where the RFC leaves a choice (each pinned by a test):

* A malformed or out-of-range value of a negotiated key is answered ``Reject``
  (RFC 7143 6.2.1) and the key keeps its current value; the login goes on.
* A malformed *declarative* from the initiator (InitiatorName, TargetName,
  SessionType, MaxRecvDataSegmentLength, ...) cannot be answered, so it fails
  the login with an initiator error (in FFP: a Reject PDU, protocol error).
* A key sent twice in one negotiation sequence (the whole login; one Text
  request sequence in FFP) is an initiator error (RFC 7143 6.2: "MUST respond
  with Login reject (initiator error)"); in FFP a :class:`ProtocolError` 0x04.
* A key that may not appear in FFP (Use LO or IO) in a Text request, or a key
  only the target may send, raises :class:`ProtocolError` with reason 0x04
  (Protocol Error): the problem is in the text, not in a header field, so
  0x09 (Invalid PDU field) does not fit.  During login the same cases are
  :class:`LoginError` 0x0200 (initiator error).
* Operational keys are accepted in the security stage (an initiator that does
  not negotiate security may start operational negotiation in its first
  request, RFC 7143 6.3); security keys outside it are an initiator error.
* OFMarker/IFMarker are answered ``No`` (RFC 7143 13.26 allows ``No`` instead of
  the SHOULD ``Reject``; ``No`` is also what RFC 3720 initiators expect);
  OFMarkInt/IFMarkInt are answered ``Reject`` as RFC 7143 13.26 requires,
  never ``Irrelevant`` or ``NotUnderstood``.
* FirstBurstLength is answered at most the current MaxBurstLength (RFC 7143
  13.14: it MUST NOT exceed it).  MaxBurstLength is processed before
  FirstBurstLength in one request.  Rules between two keys (``PAIR_RULES``) are
  checked once both values are agreed, after every request's keys are all
  answered, never against a default: if a later request lowers MaxBurstLength
  below a FirstBurstLength already agreed, the login fails (initiator error).
  A FirstBurstLength never negotiated takes effect as at most MaxBurstLength
  (:meth:`Negotiator.result`).
* The target makes no offers of its own except the declarative
  MaxRecvDataSegmentLength (:meth:`Negotiator.declarations`): a key the
  initiator never sends keeps its RFC default even if the target's configured
  value differs (Linux, Windows, libiscsi and VMware initiators send them all).
* SendTargets and the CHAP_* keys are accepted (duplicates and stage checked)
  but answered elsewhere: discovery and :mod:`.chap` respectively.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum, Flag, auto

from .errors import IscsiError, LoginError, LoginStatus, ProtocolError, RejectReason
from .text import MAX_SIMPLE_VALUE_LENGTH, decode_number

#: RFC 7143 4.2.7.1: an iSCSI name is at most 223 bytes.
MAX_NAME_LENGTH = 223

YES, NO = "Yes", "No"
NOT_UNDERSTOOD, IRRELEVANT, REJECT = "NotUnderstood", "Irrelevant", "Reject"


class Kind(Enum):
    """The value type of a key (RFC 7143 6.1, 6.2)."""

    BOOLEAN = auto()  # Yes/No, combined by AND or OR
    NUMERICAL = auto()  # numerical-value in [low, high], combined by Min or Max
    LIST = auto()  # list-of-values, the first the responder supports wins
    DECLARATIVE = auto()  # declared by its sender, not answered
    AUTH = auto()  # CHAP_* exchange keys, answered by the authenticator
    COMMAND = auto()  # SendTargets: a request, answered by discovery


class Result(Enum):
    """Result functions (RFC 7143 6.2.2)."""

    AND = auto()
    OR = auto()
    MIN = auto()
    MAX = auto()
    FIRST_MATCH = auto()  # the first value in the originator's list the responder supports
    DECLARED = auto()


class Use(Enum):
    """Where a key may appear (RFC 7143 13 "Use")."""

    LO = auto()  # leading-only: login of the session's first connection
    IO = auto()  # initialize-only: login of any connection
    ALL = auto()  # login and full feature phase
    FFPO = auto()  # full feature phase only


class Sender(Flag):
    INITIATOR = auto()
    TARGET = auto()
    BOTH = INITIATOR | TARGET


class Scope(Enum):
    SW = auto()  # session-wide
    CO = auto()  # connection-only


Values = Mapping[str, str]


@dataclass(frozen=True)
class Key:
    """One row of the key table."""

    name: str
    kind: Kind
    result: Result
    default: str | None
    use: Use
    senders: Sender
    scope: Scope
    rfc: str  # the defining section
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()  # values the protocol defines (LIST / enumerated declaratives)
    discovery: bool = True  # relevant in a Discovery session
    security: bool = False  # SecurityNegotiation stage only
    max_length: int = MAX_SIMPLE_VALUE_LENGTH
    attr: str | None = None  # the SessionParams field holding the agreed value
    wire_true: str = YES  # for bool attrs: the wire value meaning True
    fixed_answer: str | None = None  # obsolete keys: the answer RFC 7143 13.26 dictates
    irrelevant_when: Callable[[Values], bool] | None = None


def _no_first_burst(v: Values) -> bool:
    # RFC 7143 13.14: irrelevant when InitialR2T=Yes and ImmediateData=No.
    return v["InitialR2T"] == YES and v["ImmediateData"] == NO


_I, _T, _B = Sender.INITIATOR, Sender.TARGET, Sender.BOTH
_LEN24 = 2**24 - 1
_DIGESTS = ("CRC32C", "None")

#: The key table, in the order of RFC 7143 section 13.
KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("HeaderDigest", Kind.LIST, Result.FIRST_MATCH, "None", Use.IO, _B, Scope.CO, "13.1",
            choices=_DIGESTS, attr="header_digest", wire_true="CRC32C"),
        Key("DataDigest", Kind.LIST, Result.FIRST_MATCH, "None", Use.IO, _B, Scope.CO, "13.1",
            choices=_DIGESTS, attr="data_digest", wire_true="CRC32C"),
        Key("MaxConnections", Kind.NUMERICAL, Result.MIN, "1", Use.LO, _B, Scope.SW, "13.2",
            low=1, high=65535, discovery=False, attr="max_connections"),
        Key("SendTargets", Kind.COMMAND, Result.DECLARED, None, Use.FFPO, _I, Scope.SW, "13.3"),
        Key("TargetName", Kind.DECLARATIVE, Result.DECLARED, None, Use.IO, _B, Scope.SW, "13.4",
            max_length=MAX_NAME_LENGTH, attr="target_name"),
        Key("InitiatorName", Kind.DECLARATIVE, Result.DECLARED, None, Use.IO, _I, Scope.SW,
            "13.5", max_length=MAX_NAME_LENGTH, attr="initiator_name"),
        Key("TargetAlias", Kind.DECLARATIVE, Result.DECLARED, None, Use.ALL, _T, Scope.SW, "13.6"),
        Key("InitiatorAlias", Kind.DECLARATIVE, Result.DECLARED, None, Use.ALL, _I, Scope.SW,
            "13.7", attr="initiator_alias"),
        Key("TargetAddress", Kind.DECLARATIVE, Result.DECLARED, None, Use.ALL, _T, Scope.SW,
            "13.8"),
        Key("TargetPortalGroupTag", Kind.DECLARATIVE, Result.DECLARED, None, Use.IO, _T, Scope.SW,
            "13.9", low=0, high=65535),
        Key("InitialR2T", Kind.BOOLEAN, Result.OR, YES, Use.LO, _B, Scope.SW, "13.10",
            discovery=False, attr="initial_r2t"),
        Key("ImmediateData", Kind.BOOLEAN, Result.AND, YES, Use.LO, _B, Scope.SW, "13.11",
            discovery=False, attr="immediate_data"),
        # Declared by each side for what it receives; SessionParams has one field per side.
        Key("MaxRecvDataSegmentLength", Kind.DECLARATIVE, Result.DECLARED, "8192", Use.ALL, _B,
            Scope.CO, "13.12", low=512, high=_LEN24),
        Key("MaxBurstLength", Kind.NUMERICAL, Result.MIN, "262144", Use.LO, _B, Scope.SW, "13.13",
            low=512, high=_LEN24, discovery=False, attr="max_burst"),
        Key("FirstBurstLength", Kind.NUMERICAL, Result.MIN, "65536", Use.LO, _B, Scope.SW,
            "13.14", low=512, high=_LEN24, discovery=False, attr="first_burst",
            irrelevant_when=_no_first_burst),
        Key("DefaultTime2Wait", Kind.NUMERICAL, Result.MAX, "2", Use.LO, _B, Scope.SW, "13.15",
            low=0, high=3600, discovery=False, attr="default_time2wait"),
        Key("DefaultTime2Retain", Kind.NUMERICAL, Result.MIN, "20", Use.LO, _B, Scope.SW, "13.16",
            low=0, high=3600, discovery=False, attr="default_time2retain"),
        Key("MaxOutstandingR2T", Kind.NUMERICAL, Result.MIN, "1", Use.LO, _B, Scope.SW, "13.17",
            low=1, high=65535, discovery=False, attr="max_outstanding_r2t"),
        Key("DataPDUInOrder", Kind.BOOLEAN, Result.OR, YES, Use.LO, _B, Scope.SW, "13.18",
            discovery=False, attr="data_pdu_in_order"),
        Key("DataSequenceInOrder", Kind.BOOLEAN, Result.OR, YES, Use.LO, _B, Scope.SW, "13.19",
            discovery=False, attr="data_sequence_in_order"),
        Key("ErrorRecoveryLevel", Kind.NUMERICAL, Result.MIN, "0", Use.LO, _B, Scope.SW, "13.20",
            low=0, high=2, attr="error_recovery_level"),
        Key("SessionType", Kind.DECLARATIVE, Result.DECLARED, "Normal", Use.LO, _I, Scope.SW,
            "13.21", choices=("Discovery", "Normal"), attr="session_type"),
        Key("AuthMethod", Kind.LIST, Result.FIRST_MATCH, "None", Use.IO, _B, Scope.CO, "13.22",
            choices=("KRB5", "SRP", "SPKM1", "SPKM2", "CHAP", "None"), security=True,
            attr="auth_method"),
        *(
            Key(name, Kind.AUTH, Result.DECLARED, None, Use.IO, _B, Scope.CO, "12.1.3",
                security=True, max_length=8192)
            for name in ("CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R")
        ),
        Key("TaskReporting", Kind.LIST, Result.FIRST_MATCH, "RFC3720", Use.LO, _B, Scope.SW,
            "13.23", choices=("RFC3720", "ResponseFence", "FastAbort"), discovery=False,
            attr="task_reporting"),
        # RFC 7144 2.1; 1 = RFC 7143, 2 = RFC 7144 features.
        Key("iSCSIProtocolLevel", Kind.NUMERICAL, Result.MIN, "1", Use.LO, _B, Scope.SW,
            "RFC 7144 2.1", low=0, high=31, discovery=False, attr="protocol_level"),
        # Obsolete (RFC 7143 13.26): never NotUnderstood.
        Key("OFMarker", Kind.BOOLEAN, Result.AND, NO, Use.IO, _B, Scope.CO, "13.26",
            fixed_answer=NO),
        Key("IFMarker", Kind.BOOLEAN, Result.AND, NO, Use.IO, _B, Scope.CO, "13.26",
            fixed_answer=NO),
        Key("OFMarkInt", Kind.NUMERICAL, Result.DECLARED, "2048", Use.IO, _B, Scope.CO, "13.26",
            low=1, high=65535, fixed_answer=REJECT),
        Key("IFMarkInt", Kind.NUMERICAL, Result.DECLARED, "2048", Use.IO, _B, Scope.CO, "13.26",
            low=1, high=65535, fixed_answer=REJECT),
    )
}

#: Rules between two keys' agreed values: (key, key it may not exceed, RFC section). Checked
#: when both were agreed by negotiation (:meth:`Negotiator.negotiate`), never against a
#: default the initiator may still change. (FirstBurstLength's irrelevance, which depends on
#: InitialR2T and ImmediateData, is ``Key.irrelevant_when``: decided after those keys.)
PAIR_RULES: tuple[tuple[str, str, str], ...] = (
    ("FirstBurstLength", "MaxBurstLength", "13.14"),
)

STAGES = ("security", "operational", "ffp")
SESSION_TYPES = ("Normal", "Discovery")
#: Keys a target may be configured with (``Negotiator(target_values)``).
CONFIGURABLE = frozenset(
    k.name
    for k in KEYS.values()
    if k.kind in (Kind.BOOLEAN, Kind.NUMERICAL, Kind.LIST) and k.fixed_answer is None
) | {"MaxRecvDataSegmentLength"}


@dataclass(frozen=True)
class SessionParams:
    """The negotiated values, RFC 7143 13 defaults until negotiated.

    ``max_recv_dsl`` is what the target receives (its own declaration),
    ``max_xmit_dsl`` what it may send (the initiator's declaration).
    """

    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_recv_dsl: int = 8192
    max_xmit_dsl: int = 8192
    max_burst: int = 262144
    first_burst: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    session_type: str = "Normal"
    initiator_name: str = ""
    initiator_alias: str = ""
    target_name: str = ""
    protocol_level: int = 1
    auth_method: str = "None"
    task_reporting: str = "RFC3720"

    def as_dict(self) -> dict[str, str]:
        """RFC key names -> wire strings (for the sessions view).

        MaxRecvDataSegmentLength is the target's; the initiator's appears as
        ``MaxXmitDataSegmentLength`` (the name open-iscsi and LIO show).
        """
        out: dict[str, str] = {}
        for key in KEYS.values():
            if key.name == "MaxRecvDataSegmentLength":
                out[key.name] = str(self.max_recv_dsl)
                out["MaxXmitDataSegmentLength"] = str(self.max_xmit_dsl)
            elif key.attr is not None:
                out[key.name] = _to_wire(key, getattr(self, key.attr))
        return out

    @classmethod
    def from_wire(cls, values: Mapping[str, str]) -> SessionParams:
        """Build from wire strings as :meth:`as_dict` gives them; other keys keep defaults."""
        kwargs: dict[str, object] = {}
        for name, wire in values.items():
            if name == "MaxRecvDataSegmentLength":
                kwargs["max_recv_dsl"] = int(wire)
            elif name == "MaxXmitDataSegmentLength":
                kwargs["max_xmit_dsl"] = int(wire)
            elif (key := KEYS.get(name)) is not None and key.attr is not None:
                kwargs[key.attr] = _to_python(key, wire)
        return cls(**kwargs)  # type: ignore[arg-type]


_FIELD_TYPES = {f.name: f.type for f in fields(SessionParams)}


def _to_python(key: Key, wire: str) -> object:
    kind = _FIELD_TYPES[key.attr] if key.attr else "str"
    if kind == "bool":
        return wire == key.wire_true
    if kind == "int":
        return int(wire)
    return wire


def _to_wire(key: Key, value: object) -> str:
    if isinstance(value, bool):
        if key.kind is Kind.BOOLEAN:
            return YES if value else NO
        return key.wire_true if value else "None"
    return str(value)


def _fail(stage: str, message: str, status: LoginStatus = LoginStatus.INITIATOR_ERROR) -> IscsiError:
    """The error for a peer's mistake: a login failure, or a Reject in FFP."""
    if stage == "ffp":
        return ProtocolError(message, RejectReason.PROTOCOL_ERROR)
    return LoginError(status, message)


def _parse_list(value: str) -> list[str] | None:
    items = value.split(",")
    if any(not item or len(item.encode()) > MAX_SIMPLE_VALUE_LENGTH for item in items):
        return None
    return items


def _parse_number(key: Key, value: str) -> int | None:
    try:
        number = decode_number(value)
    except ProtocolError:
        return None
    return number if key.low <= number <= key.high else None


def _validate_target_value(name: str, value: str) -> str:
    key = KEYS.get(name)
    if key is None or name not in CONFIGURABLE:
        raise ValueError(f"{name}: not a key the target can be configured with")
    if key.kind is Kind.BOOLEAN:
        if value not in (YES, NO):
            raise ValueError(f"{name}: expected Yes or No, got {value!r}")
        return value
    if key.kind is Kind.LIST:
        items = _parse_list(value)
        if not items or any(item not in key.choices for item in items):
            raise ValueError(f"{name}: expected a list of {','.join(key.choices)}, got {value!r}")
        return value
    number = _parse_number(key, value)
    if number is None:
        raise ValueError(f"{name}: expected a number in [{key.low}, {key.high}], got {value!r}")
    return str(number)


class Negotiator:
    """The target's side of one connection's key negotiation.

    ``target_values`` are what the target offers (list keys: the values it
    supports, in any order; numerical keys: its limit; booleans: its wish) and
    its own MaxRecvDataSegmentLength.  Keys left out take the RFC default, so
    e.g. an unconfigured HeaderDigest means "None" only.

    ``inherited`` seeds a non-leading connection with the session's values
    (leading-only keys are then refused by :meth:`negotiate`).
    """

    def __init__(self, target_values: Mapping[str, str], *,
                 inherited: SessionParams | None = None) -> None:
        self._target: dict[str, str] = {
            k.name: k.default for k in KEYS.values() if k.name in CONFIGURABLE and k.default
        }
        for name, value in target_values.items():
            self._target[name] = _validate_target_value(name, value)
        if int(self._target["FirstBurstLength"]) > int(self._target["MaxBurstLength"]):
            raise ValueError("FirstBurstLength: exceeds MaxBurstLength")
        base = inherited if inherited is not None else SessionParams()
        # Agreed values as wire strings, keyed by RFC name.
        self._agreed: dict[str, str] = base.as_dict()
        self._agreed["MaxRecvDataSegmentLength"] = self._target["MaxRecvDataSegmentLength"]
        self._seen: set[str] = set()  # keys of the login negotiation sequence
        self._negotiated: set[str] = set()  # keys whose value was agreed by negotiation
        self._declared: set[str] = set()

    # -- public API ----------------------------------------------------------------------

    def negotiate(self, pairs: list[tuple[str, str]], *, stage: str, leading: bool = True,
                  session_type: str | None = None) -> list[tuple[str, str]]:
        """Answer the initiator's keys of one Login or Text request; record what was agreed.

        Returns the response pairs in request order.  Raises :class:`LoginError`
        (login stages) or :class:`ProtocolError` (``stage="ffp"``) as described
        in the module docstring.
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        seen = set() if stage == "ffp" else self._seen
        for name, _ in pairs:
            if name in seen:
                raise _fail(stage, f"key {name} sent twice in one negotiation")
            seen.add(name)

        # SessionType decides relevance of everything else, so it goes first.
        for name, value in pairs:
            if name == "SessionType":
                self._check_usable(KEYS[name], stage, leading)
                if value not in SESSION_TYPES:
                    raise _fail(stage, f"unsupported SessionType {value[:32]!r}",
                                LoginStatus.SESSION_TYPE_NOT_SUPPORTED)
                self._agreed[name] = value
        kind_of_session = session_type or self._agreed["SessionType"]
        if kind_of_session not in SESSION_TYPES:
            raise ValueError(f"unknown session type {kind_of_session!r}")

        answers: dict[int, str] = {}
        deferred: list[int] = []  # keys whose relevance or bound depends on others
        for index, (name, value) in enumerate(pairs):
            key = KEYS.get(name)
            if key is None:
                answers[index] = NOT_UNDERSTOOD  # X-, X#, Z- and anything unknown
                continue
            if name == "SessionType":
                continue
            self._check_usable(key, stage, leading)
            if key.irrelevant_when is not None:
                deferred.append(index)
                continue
            answer = self._answer(key, value, stage, kind_of_session)
            if answer is not None:
                answers[index] = answer
        for index in deferred:
            name, value = pairs[index]
            answer = self._answer(KEYS[name], value, stage, kind_of_session)
            if answer is not None:
                answers[index] = answer
        self._check_pairs(stage)
        return [(pairs[i][0], answers[i]) for i in sorted(answers)]

    def declarations(self, stage: str, session_type: str) -> list[tuple[str, str]]:
        """What the target declares unasked, once per login: its MaxRecvDataSegmentLength.

        Returned in the operational stage only (RFC 7143 13.12: declared by each
        side; always sent, even when it equals the 8192 default, so no initiator
        has to rely on the default).  A second call returns nothing.
        """
        if stage != "operational" or session_type not in SESSION_TYPES:
            return []
        out = []
        for name in ("MaxRecvDataSegmentLength",):
            if name not in self._declared:
                self._declared.add(name)
                out.append((name, self._target[name]))
        return out

    def result(self) -> SessionParams:
        """The values agreed so far (defaults for keys never negotiated)."""
        params = SessionParams.from_wire(self._agreed)
        # A FirstBurstLength left at its default may not exceed the MaxBurstLength agreed
        # (RFC 7143 13.14): it takes effect as MaxBurstLength then.
        return replace(params, max_recv_dsl=int(self._target["MaxRecvDataSegmentLength"]),
                       first_burst=min(params.first_burst, params.max_burst))

    def value(self, name: str) -> str | None:
        """The agreed wire value of a key (e.g. ``AuthMethod``), or None if it has none."""
        return self._agreed.get(name)

    @property
    def target_values(self) -> Mapping[str, str]:
        return dict(self._target)

    # -- internals ------------------------------------------------------------------------

    def _check_usable(self, key: Key, stage: str, leading: bool) -> None:
        name = key.name
        if Sender.INITIATOR not in key.senders:
            raise _fail(stage, f"{name} may only be sent by a target")
        if stage == "ffp":
            if key.use not in (Use.ALL, Use.FFPO):
                raise _fail(stage, f"{name} may not be sent in full feature phase")
            return
        if key.use is Use.FFPO:
            raise _fail(stage, f"{name} may only be sent in full feature phase")
        if key.security and stage != "security":
            raise _fail(stage, f"{name} may only be sent in the security stage")
        if key.use is Use.LO and not leading:
            raise _fail(stage, f"{name} may only be sent on the leading connection")

    def _answer(self, key: Key, value: str, stage: str, session_type: str) -> str | None:
        name = key.name
        if key.kind in (Kind.AUTH, Kind.COMMAND):
            return None  # answered by chap.py / discovery
        if key.fixed_answer is not None:
            return key.fixed_answer
        if key.kind is Kind.DECLARATIVE:
            self._declare(key, value, stage)
            return None
        if session_type == "Discovery" and not key.discovery:
            return IRRELEVANT
        if key.irrelevant_when is not None and key.irrelevant_when(self._agreed):
            return IRRELEVANT
        ours = self._target[name]
        if key.kind is Kind.BOOLEAN:
            if value not in (YES, NO):
                return REJECT
            if key.result is Result.AND:
                agreed = YES if value == YES and ours == YES else NO
            else:
                agreed = YES if YES in (value, ours) else NO
        elif key.kind is Kind.NUMERICAL:
            number = _parse_number(key, value)
            if number is None:
                return REJECT
            mine = int(ours)
            agreed_number = min(number, mine) if key.result is Result.MIN else max(number, mine)
            if name == "FirstBurstLength":
                agreed_number = min(agreed_number, int(self._agreed["MaxBurstLength"]))
            agreed = str(agreed_number)
        else:  # LIST
            offered = _parse_list(value)
            if offered is None:
                return REJECT
            supported = self._target[name].split(",")
            agreed = next((item for item in offered if item in supported), REJECT)
            if agreed == REJECT:
                return REJECT
        self._agreed[name] = agreed
        self._negotiated.add(name)
        return agreed

    def _check_pairs(self, stage: str) -> None:
        """The rules between two keys, for pairs whose values are both agreed."""
        done = self._negotiated
        for low, high, section in PAIR_RULES:
            if low in done and high in done and int(self._agreed[low]) > int(self._agreed[high]):
                raise _fail(stage, f"{high} {self._agreed[high]} below the agreed {low} "
                                   f"{self._agreed[low]} (RFC 7143 {section})")

    def _declare(self, key: Key, value: str, stage: str) -> None:
        name = key.name
        if len(value.encode()) > key.max_length:
            raise _fail(stage, f"{name} longer than {key.max_length} bytes")
        if name == "MaxRecvDataSegmentLength":
            number = _parse_number(key, value)
            if number is None:
                raise _fail(stage, f"{name} out of range: {value[:32]!r}")
            self._agreed["MaxXmitDataSegmentLength"] = str(number)
            return
        if name in ("InitiatorName", "TargetName") and not value:
            raise _fail(stage, f"empty {name}")
        self._agreed[name] = value


__all__ = [
    "KEYS", "Key", "Kind", "Negotiator", "Result", "Scope", "Sender", "SessionParams", "Use",
]
