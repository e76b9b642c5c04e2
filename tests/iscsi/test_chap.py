"""Target-side CHAP (RFC 1994; RFC 7143 12.1.3), golden values computed here with hashlib."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gluster_iscsi.iscsi.chap import ChapAlgorithm, ChapAuthenticator, chap_response
from gluster_iscsi.iscsi.errors import LoginError, LoginStatus
from gluster_iscsi.model.targets import ChapAccount

ALICE = ChapAccount("alice", "alice-secret-123")
TARGET = ChapAccount("target-user", "target-secret-456")
HASHES = {5: "md5", 6: "sha1", 7: "sha256", 8: "sha3_256"}


class FakeRandom:
    """Deterministic random source: counts up, so every call is distinct."""

    def __init__(self, start: int = 0x2A) -> None:
        self.next = start

    def __call__(self, n: int) -> bytes:
        out = bytes((self.next + i) & 0xFF for i in range(n))
        self.next += n
        return out


def expected(alg: int, ident: int, secret: str, challenge: bytes) -> bytes:
    return hashlib.new(HASHES[alg], bytes([ident]) + secret.encode() + challenge).digest()


def start(alg: int = 5, outgoing: ChapAccount | None = None,
          accounts: tuple[ChapAccount, ...] = (ALICE,), **kw: object
          ) -> tuple[ChapAuthenticator, int, bytes]:
    auth = ChapAuthenticator(accounts, outgoing, random_bytes=FakeRandom(), **kw)  # type: ignore[arg-type]
    out, done = auth.step({"CHAP_A": str(alg)})
    assert not done
    reply = dict(out)
    assert reply["CHAP_A"] == str(alg)
    return auth, int(reply["CHAP_I"]), bytes.fromhex(reply["CHAP_C"][2:])


def status(info: pytest.ExceptionInfo[LoginError]) -> int:
    return info.value.status


def test_algorithm_numbers_match_linux() -> None:
    assert [int(a) for a in ChapAlgorithm] == [5, 6, 7, 8]
    assert {a: a.digest_size for a in ChapAlgorithm} == {5: 16, 6: 20, 7: 32, 8: 32}


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_golden_response_per_algorithm(alg: int) -> None:
    challenge = bytes(range(32))
    assert chap_response(alg, 0x7F, b"secret", challenge) == expected(alg, 0x7F, "secret",
                                                                      challenge)


def test_golden_md5_vector() -> None:
    # MD5(0x01 || "secret" || 00..0f), computed independently of the module.
    digest = hashlib.md5(b"\x01secret" + bytes(range(16))).hexdigest()
    assert chap_response(5, 1, b"secret", bytes(range(16))).hex() == digest


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_one_way_chap_succeeds(alg: int) -> None:
    auth, ident, challenge = start(alg)
    assert len(challenge) >= max(16, hashlib.new(HASHES[alg]).digest_size)
    response = expected(alg, ident, ALICE.secret, challenge)
    out, done = auth.step({"CHAP_N": "alice", "CHAP_R": "0x" + response.hex()})
    assert (out, done) == ([], True)
    assert auth.user == "alice"


def test_base64_response_is_accepted() -> None:
    auth, ident, challenge = start(7)
    response = expected(7, ident, ALICE.secret, challenge)
    _, done = auth.step({"CHAP_N": "alice",
                         "CHAP_R": "0b" + base64.b64encode(response).decode()})
    assert done


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [("5", 5), ("7,5", 7), ("5,7", 5), ("99,6,5", 6), ("8,7,6,5", 8), ("x,7", 7)],
)
def test_first_algorithm_of_the_initiator_list_wins(offer: str, chosen: int) -> None:
    auth = ChapAuthenticator([ALICE], None, random_bytes=FakeRandom())
    out, _ = auth.step({"CHAP_A": offer})
    assert dict(out)["CHAP_A"] == str(chosen)


def test_disabled_algorithms_are_skipped() -> None:
    auth = ChapAuthenticator([ALICE], None, random_bytes=FakeRandom(), algorithms=(7,))
    out, _ = auth.step({"CHAP_A": "5,7"})
    assert dict(out)["CHAP_A"] == "7"


@pytest.mark.parametrize("offer", ["5", "1,2", "", "md5"])
def test_no_common_algorithm_is_an_authentication_failure(offer: str) -> None:
    auth = ChapAuthenticator([ALICE], None, random_bytes=FakeRandom(), algorithms=(7, 8))
    with pytest.raises(LoginError) as info:
        auth.step({"CHAP_A": offer})
    assert status(info) == LoginStatus.AUTHENTICATION_FAILURE


def test_wrong_secret_fails() -> None:
    auth, ident, challenge = start(5)
    bad = expected(5, ident, "not-the-secret", challenge)
    with pytest.raises(LoginError) as info:
        auth.step({"CHAP_N": "alice", "CHAP_R": "0x" + bad.hex()})
    assert (info.value.status_class, info.value.status_detail) == (2, 1)
    assert auth.user is None


def test_unknown_user_fails_like_a_wrong_secret() -> None:
    auth, ident, challenge = start(5)
    good = expected(5, ident, ALICE.secret, challenge)
    with pytest.raises(LoginError) as unknown:
        auth.step({"CHAP_N": "mallory", "CHAP_R": "0x" + good.hex()})
    auth2, ident2, challenge2 = start(5)
    with pytest.raises(LoginError) as wrong:
        auth2.step({"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16})
    assert str(unknown.value) == str(wrong.value)
    assert status(unknown) == status(wrong) == LoginStatus.AUTHENTICATION_FAILURE


def test_response_for_another_identifier_fails() -> None:
    auth, ident, challenge = start(5)
    bad = expected(5, (ident + 1) & 0xFF, ALICE.secret, challenge)
    with pytest.raises(LoginError):
        auth.step({"CHAP_N": "alice", "CHAP_R": "0x" + bad.hex()})


def test_second_of_two_accounts_authenticates() -> None:
    bob = ChapAccount("bob", "bob-secret-7890")
    auth, ident, challenge = start(6, accounts=(ALICE, bob))
    _, done = auth.step({"CHAP_N": "bob",
                         "CHAP_R": "0x" + expected(6, ident, bob.secret, challenge).hex()})
    assert done and auth.user == "bob"


def test_no_accounts_means_nobody_authenticates() -> None:
    auth, ident, challenge = start(5, accounts=())
    with pytest.raises(LoginError):
        auth.step({"CHAP_N": "alice",
                   "CHAP_R": "0x" + expected(5, ident, ALICE.secret, challenge).hex()})


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_mutual_chap_answers_with_the_outgoing_secret(alg: int) -> None:
    auth, ident, challenge = start(alg, outgoing=TARGET)
    their_challenge = b"\x99" * 20
    out, done = auth.step({
        "CHAP_N": "alice",
        "CHAP_R": "0x" + expected(alg, ident, ALICE.secret, challenge).hex(),
        "CHAP_I": "200",
        "CHAP_C": "0x" + their_challenge.hex(),
    })
    assert done
    reply = dict(out)
    assert reply["CHAP_N"] == "target-user"
    assert reply["CHAP_R"] == "0x" + expected(alg, 200, TARGET.secret, their_challenge).hex()


def test_mutual_chap_with_base64_challenge_and_hex_identifier() -> None:
    auth, ident, challenge = start(5, outgoing=TARGET)
    theirs = bytes(range(16))
    out, _ = auth.step({
        "CHAP_N": "alice",
        "CHAP_R": "0x" + expected(5, ident, ALICE.secret, challenge).hex(),
        "CHAP_I": "0x10",
        "CHAP_C": "0b" + base64.b64encode(theirs).decode(),
    })
    assert dict(out)["CHAP_R"] == "0x" + expected(5, 16, TARGET.secret, theirs).hex()


def mutual_keys(auth: ChapAuthenticator, ident: int, challenge: bytes, alg: int = 5,
                their_i: str = "1", their_c: bytes = b"\x55" * 16) -> dict[str, str]:
    return {
        "CHAP_N": "alice",
        "CHAP_R": "0x" + expected(alg, ident, ALICE.secret, challenge).hex(),
        "CHAP_I": their_i,
        "CHAP_C": "0x" + their_c.hex(),
    }


def test_mutual_without_outgoing_account_is_refused() -> None:
    auth, ident, challenge = start(5, outgoing=None)
    with pytest.raises(LoginError) as info:
        auth.step(mutual_keys(auth, ident, challenge))
    assert status(info) == LoginStatus.AUTHENTICATION_FAILURE


def test_reflected_challenge_is_refused() -> None:
    auth, ident, challenge = start(5, outgoing=TARGET)
    with pytest.raises(LoginError) as info:
        auth.step(mutual_keys(auth, ident, challenge, their_i=str(ident), their_c=challenge))
    assert status(info) == LoginStatus.AUTHENTICATION_FAILURE
    assert "reflect" in str(info.value)


def test_repeated_identifier_and_challenge_is_refused_across_logins() -> None:
    cache: set[bytes] = set()
    auth, ident, challenge = start(5, outgoing=TARGET, replay_cache=cache)
    auth.step(mutual_keys(auth, ident, challenge))
    auth2, ident2, challenge2 = start(5, outgoing=TARGET, replay_cache=cache)
    with pytest.raises(LoginError) as info:
        auth2.step(mutual_keys(auth2, ident2, challenge2))
    assert status(info) == LoginStatus.AUTHENTICATION_FAILURE


def test_mutual_is_not_answered_before_the_initiator_is_verified() -> None:
    auth, ident, challenge = start(5, outgoing=TARGET)
    keys = mutual_keys(auth, ident, challenge)
    keys["CHAP_R"] = "0x" + "00" * 16
    with pytest.raises(LoginError) as info:
        auth.step(keys)
    assert status(info) == LoginStatus.AUTHENTICATION_FAILURE


def test_same_secret_in_both_directions_is_refused() -> None:
    auth, ident, challenge = start(5, outgoing=ChapAccount("t", ALICE.secret))
    with pytest.raises(LoginError) as info:
        auth.step(mutual_keys(auth, ident, challenge))
    assert status(info) == LoginStatus.TARGET_ERROR


@pytest.mark.parametrize("drop", ["CHAP_I", "CHAP_C"])
def test_half_a_mutual_request_is_a_missing_parameter(drop: str) -> None:
    auth, ident, challenge = start(5, outgoing=TARGET)
    keys = mutual_keys(auth, ident, challenge)
    del keys[drop]
    with pytest.raises(LoginError) as info:
        auth.step(keys)
    assert status(info) == LoginStatus.MISSING_PARAMETER


@pytest.mark.parametrize("drop", ["CHAP_N", "CHAP_R"])
def test_missing_name_or_response(drop: str) -> None:
    auth, ident, challenge = start(5)
    keys = {"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16}
    del keys[drop]
    with pytest.raises(LoginError) as info:
        auth.step(keys)
    assert status(info) == LoginStatus.MISSING_PARAMETER


@pytest.mark.parametrize(
    ("key", "value", "expected_status"),
    [
        ("CHAP_R", "00ff", LoginStatus.INITIATOR_ERROR),
        ("CHAP_R", "0xzz", LoginStatus.INITIATOR_ERROR),
        ("CHAP_R", "0x" + "00" * 1025, LoginStatus.INITIATOR_ERROR),
        ("CHAP_R", "0x" + "00" * 15, LoginStatus.AUTHENTICATION_FAILURE),
        ("CHAP_N", "", LoginStatus.AUTHENTICATION_FAILURE),
        ("CHAP_N", "a" * 256, LoginStatus.AUTHENTICATION_FAILURE),
        ("CHAP_I", "256", LoginStatus.INITIATOR_ERROR),
        ("CHAP_I", "-1", LoginStatus.INITIATOR_ERROR),
        ("CHAP_I", "1_0", LoginStatus.INITIATOR_ERROR),
        ("CHAP_C", "0x" + "11" * 1025, LoginStatus.INITIATOR_ERROR),
        ("CHAP_C", "0bA", LoginStatus.INITIATOR_ERROR),
    ],
)
def test_malformed_or_oversized_values(key: str, value: str, expected_status: int) -> None:
    auth, ident, challenge = start(5, outgoing=TARGET)
    keys = mutual_keys(auth, ident, challenge)
    keys[key] = value
    with pytest.raises(LoginError) as info:
        auth.step(keys)
    assert status(info) == expected_status


def test_keys_out_of_turn_are_an_initiator_error() -> None:
    auth = ChapAuthenticator([ALICE], None, random_bytes=FakeRandom())
    with pytest.raises(LoginError) as info:
        auth.step({"CHAP_N": "alice", "CHAP_R": "0x00"})
    assert status(info) == LoginStatus.INITIATOR_ERROR
    auth, _, _ = start(5)
    with pytest.raises(LoginError):
        auth.step({"CHAP_A": "5"})


def test_nothing_is_accepted_after_done_or_failure() -> None:
    auth, ident, challenge = start(5)
    auth.step({"CHAP_N": "alice",
               "CHAP_R": "0x" + expected(5, ident, ALICE.secret, challenge).hex()})
    with pytest.raises(LoginError):
        auth.step({"CHAP_N": "alice", "CHAP_R": "0x00"})
    failed, _, _ = start(5)
    with pytest.raises(LoginError):
        failed.step({"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16})
    with pytest.raises(LoginError):
        failed.step({"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16})


def test_empty_step_waits() -> None:
    auth = ChapAuthenticator([ALICE], None, random_bytes=FakeRandom())
    assert auth.step({}) == ([], False)


def test_challenge_is_fresh_randomness_of_digest_length() -> None:
    a = ChapAuthenticator([ALICE], None)
    b = ChapAuthenticator([ALICE], None)
    ca = dict(a.step({"CHAP_A": "7"})[0])["CHAP_C"]
    cb = dict(b.step({"CHAP_A": "7"})[0])["CHAP_C"]
    assert ca != cb and len(ca) == 2 + 64


def test_no_secret_in_reprs_or_messages() -> None:
    auth, ident, challenge = start(5, outgoing=TARGET)
    texts = [repr(auth)]
    for keys in (mutual_keys(auth, ident, challenge, their_c=challenge),):
        with pytest.raises(LoginError) as info:
            auth.step(keys)
        texts += [str(info.value), repr(info.value)]
    for text in texts:
        assert ALICE.secret not in text and TARGET.secret not in text
