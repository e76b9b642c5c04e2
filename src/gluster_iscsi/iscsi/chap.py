"""Target side of CHAP for iSCSI login (RFC 1994; RFC 7143 12.1.3).

A pure state machine: the caller feeds the CHAP_* keys of each Login request
and sends back the pairs returned.  Randomness is injected (``random_bytes``)
so tests are deterministic.  No secret ever appears in a message or repr.

Exchange (I = identifier, C = challenge, R = response, N = name)::

    initiator: CHAP_A=<A1,A2,...>
    target:    CHAP_A=<A>  CHAP_I=<I>  CHAP_C=<C>
    initiator: CHAP_N=<N>  CHAP_R=<H(I | secret | C)>  [CHAP_I=<I2> CHAP_C=<C2>]
    target:                                            [CHAP_N=<N2> CHAP_R=<R2>]

Decisions:

* The algorithm is the first of the initiator's list the target has enabled
  (RFC 1994 / RFC 7143 12.1.3: the responder picks from the offer); the
  ``algorithms`` argument only enables/disables.  No common algorithm is an
  authentication failure (0x0201).
* Our challenge is ``max(16, digest size)`` random bytes, sent as hex.
* The initiator's response is verified before any mutual answer is computed,
  so an unauthenticated peer never obtains a value derived from our secret.
* Unknown user and wrong response fail identically (0x0201), after the same
  work, so the outcome does not tell which.
* Malformed or oversized (> 1024 bytes, RFC 7143 12.1.3) values and keys out
  of turn are initiator errors (0x0200); a missing CHAP_N/CHAP_R is 0x0207.
* Mutual CHAP is refused (0x0201) when no outgoing account is configured, when
  the initiator's challenge equals ours (reflection, RFC 7143 12.1.3) or was
  seen before (``replay_cache``, shared by the caller across logins), and
  (0x0300, target error) when the outgoing secret equals the authenticated
  initiator's secret (RFC 7143 12.1.3: a secret is used in one direction only).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, MutableSet, Sequence
from enum import Enum, IntEnum

from .errors import LoginError, LoginStatus, ProtocolError
from .portal import ChapSecret
from .text import (
    MAX_LARGE_BINARY_LENGTH,
    MAX_SIMPLE_VALUE_LENGTH,
    decode_binary,
    decode_number,
    encode_hex,
)

__all__ = ["ChapAlgorithm", "ChapAuthenticator", "chap_response"]


class ChapAlgorithm(IntEnum):
    """CHAP_A values: PPP authentication algorithm numbers (IANA PPP registry),
    as Linux LIO and open-iscsi number them."""

    MD5 = 5
    SHA1 = 6
    SHA256 = 7
    SHA3_256 = 8

    @property
    def hash_name(self) -> str:
        return _HASH_NAMES[self]

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size


_HASH_NAMES = {
    ChapAlgorithm.MD5: "md5",
    ChapAlgorithm.SHA1: "sha1",
    ChapAlgorithm.SHA256: "sha256",
    ChapAlgorithm.SHA3_256: "sha3_256",
}

DEFAULT_ALGORITHMS = (
    ChapAlgorithm.SHA3_256, ChapAlgorithm.SHA256, ChapAlgorithm.SHA1, ChapAlgorithm.MD5,
)
MIN_CHALLENGE_LENGTH = 16


def chap_response(algorithm: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 4.1: H(Identifier || secret || Challenge)."""
    h = hashlib.new(ChapAlgorithm(algorithm).hash_name)
    h.update(bytes([identifier]) + secret + challenge)
    return h.digest()


class _State(Enum):
    AWAIT_ALGORITHM = "await CHAP_A"
    AWAIT_RESPONSE = "await CHAP_N/CHAP_R"
    DONE = "done"
    FAILED = "failed"


# Which keys each state accepts (any other CHAP key is out of turn).
_ACCEPTS: dict[_State, frozenset[str]] = {
    _State.AWAIT_ALGORITHM: frozenset({"CHAP_A"}),
    _State.AWAIT_RESPONSE: frozenset({"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"}),
    _State.DONE: frozenset(),
    _State.FAILED: frozenset(),
}


def _error(status: LoginStatus, message: str) -> LoginError:
    return LoginError(status, message)


class ChapAuthenticator:
    """One CHAP exchange for one login."""

    def __init__(
        self,
        accounts: Sequence[ChapSecret],
        outgoing: ChapSecret | None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        algorithms: Sequence[int] = DEFAULT_ALGORITHMS,
        replay_cache: MutableSet[bytes] | None = None,
    ) -> None:
        self._accounts = tuple(accounts)
        self._outgoing = outgoing
        self._random = random_bytes
        self._enabled = frozenset(ChapAlgorithm(a) for a in algorithms)
        if not self._enabled:
            raise ValueError("no CHAP algorithm enabled")
        self._replay_cache = replay_cache
        self._state = _State.AWAIT_ALGORITHM
        self._algorithm: ChapAlgorithm | None = None
        self._identifier = 0
        self._challenge = b""
        self._user: str | None = None

    def __repr__(self) -> str:
        algorithm = self._algorithm.name if self._algorithm else None
        return (f"ChapAuthenticator(state={self._state.value!r}, algorithm={algorithm}, "
                f"accounts={len(self._accounts)}, mutual={self._outgoing is not None})")

    @property
    def user(self) -> str | None:
        """The authenticated CHAP user name, once :meth:`step` returned done."""
        return self._user if self._state is _State.DONE else None

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def algorithm(self) -> ChapAlgorithm | None:
        return self._algorithm

    def step(self, pairs: dict[str, str]) -> tuple[list[tuple[str, str]], bool]:
        """Feed the CHAP_* keys of one Login request; return (pairs to send, done)."""
        state = self._state
        unexpected = sorted(set(pairs) - _ACCEPTS[state])
        if unexpected:
            self._state = _State.FAILED
            raise _error(LoginStatus.INITIATOR_ERROR,
                         f"CHAP: {', '.join(unexpected)} not expected in state {state.value}")
        if not pairs:
            return [], False  # e.g. a Login request carrying only other keys
        try:
            if state is _State.AWAIT_ALGORITHM:
                return self._offer_challenge(pairs["CHAP_A"]), False
            return self._verify(pairs), True
        except LoginError:
            self._state = _State.FAILED
            raise

    # -- the two turns ------------------------------------------------------------------------

    def _offer_challenge(self, offered: str) -> list[tuple[str, str]]:
        for item in offered.split(","):
            if item.isascii() and item.isdigit() and int(item) in self._enabled:
                self._algorithm = ChapAlgorithm(int(item))
                break
        else:
            raise _error(LoginStatus.AUTHENTICATION_FAILURE,
                         f"CHAP: no supported algorithm in CHAP_A={offered[:64]!r}")
        self._identifier = self._random(1)[0]
        length = max(MIN_CHALLENGE_LENGTH, self._algorithm.digest_size)
        self._challenge = self._random(length)
        if len(self._challenge) != length:
            raise _error(LoginStatus.TARGET_ERROR, "CHAP: random source came up short")
        self._state = _State.AWAIT_RESPONSE
        return [
            ("CHAP_A", str(int(self._algorithm))),
            ("CHAP_I", str(self._identifier)),
            ("CHAP_C", encode_hex(self._challenge)),
        ]

    def _verify(self, pairs: dict[str, str]) -> list[tuple[str, str]]:
        assert self._algorithm is not None
        algorithm = self._algorithm
        if "CHAP_N" not in pairs or "CHAP_R" not in pairs:
            raise _error(LoginStatus.MISSING_PARAMETER, "CHAP: CHAP_N and CHAP_R are required")
        name = pairs["CHAP_N"]
        if not name or len(name.encode()) > MAX_SIMPLE_VALUE_LENGTH:
            raise _error(LoginStatus.AUTHENTICATION_FAILURE, "CHAP: invalid CHAP_N")
        response = _binary(pairs["CHAP_R"], "CHAP_R")
        mutual = "CHAP_I" in pairs or "CHAP_C" in pairs
        if mutual and not ("CHAP_I" in pairs and "CHAP_C" in pairs):
            raise _error(LoginStatus.MISSING_PARAMETER, "CHAP: CHAP_I and CHAP_C go together")

        account = self._check_response(name, response)
        if account is None:
            raise _error(LoginStatus.AUTHENTICATION_FAILURE, "CHAP: authentication failed")
        self._user = account.user
        if not mutual:
            self._state = _State.DONE
            return []

        identifier = _identifier(pairs["CHAP_I"])
        challenge = _binary(pairs["CHAP_C"], "CHAP_C")
        if self._outgoing is None:
            raise _error(LoginStatus.AUTHENTICATION_FAILURE,
                         "CHAP: mutual authentication asked but not configured")
        if not challenge:
            raise _error(LoginStatus.AUTHENTICATION_FAILURE, "CHAP: empty challenge")
        if hmac.compare_digest(challenge, self._challenge):
            raise _error(LoginStatus.AUTHENTICATION_FAILURE,
                         "CHAP: initiator reflected the target's challenge")
        if self._replay_cache is not None:
            seen = hashlib.sha256(bytes([int(algorithm), identifier]) + challenge).digest()
            if seen in self._replay_cache:
                raise _error(LoginStatus.AUTHENTICATION_FAILURE,
                             "CHAP: initiator reused an identifier and challenge")
            self._replay_cache.add(seen)
        if hmac.compare_digest(account.secret.encode(), self._outgoing.secret.encode()):
            raise _error(LoginStatus.TARGET_ERROR,
                         "CHAP: outgoing secret equals the initiator's secret; refusing mutual")
        answer = chap_response(algorithm, identifier, self._outgoing.secret.encode(), challenge)
        self._state = _State.DONE
        return [("CHAP_N", self._outgoing.user), ("CHAP_R", encode_hex(answer))]

    def _check_response(self, name: str, response: bytes) -> ChapSecret | None:
        """The account whose secret produced ``response``, checked in constant work."""
        assert self._algorithm is not None
        candidates = [a for a in self._accounts if a.user == name]
        # Always hash at least once so an unknown user costs the same as a wrong secret.
        secrets = [a.secret.encode() for a in candidates] or [b"\0" * 16]
        found: ChapSecret | None = None
        for index, secret in enumerate(secrets):
            expected = chap_response(self._algorithm, self._identifier, secret, self._challenge)
            if hmac.compare_digest(expected, response) and candidates and found is None:
                found = candidates[index]
        return found


def _binary(value: str, key: str) -> bytes:
    try:
        return decode_binary(value, max_length=MAX_LARGE_BINARY_LENGTH)
    except ProtocolError as exc:
        raise _error(LoginStatus.INITIATOR_ERROR, f"CHAP: malformed or oversized {key}") from exc


def _identifier(value: str) -> int:
    try:
        return decode_number(value, maximum=255)
    except ProtocolError as exc:
        raise _error(LoginStatus.INITIATOR_ERROR, "CHAP: CHAP_I must be a number 0..255") from exc
