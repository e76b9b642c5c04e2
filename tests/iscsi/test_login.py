"""The login stage machine: a table, every refusal a named status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gluster_iscsi.iscsi import events as ev
from gluster_iscsi.iscsi import login as L
from gluster_iscsi.iscsi.errors import LoginError, LoginStatus

from . import initiator as I
from .test_connection import INAME, OPERATIONAL, TNAME, feed, new_conn

ISCSI = Path(L.__file__).parent


@pytest.mark.parametrize("csg", [0, 1, 2, 3])
@pytest.mark.parametrize("nsg", [0, 1, 2, 3, L.STAY])
def test_the_first_request_is_answered_as_the_stage_table_says(csg, nsg):
    conn = new_conn()
    keys = [("InitiatorName", INAME), ("TargetName", TNAME)]
    if csg == 0:
        keys.append(("AuthMethod", "None"))
    else:
        keys += [p for p in OPERATIONAL if p[0] not in ("InitiatorName", "TargetName")]
    transit = nsg != L.STAY
    events, (r,) = feed(conn, I.login(keys, csg=csg, nsg=max(nsg, 0), transit=transit))
    allowed = csg in L.FIRST_STAGES and (csg, nsg) in L.TRANSITIONS
    if not allowed:
        assert (r.status_class, r.status_detail) == (2, 0)
        assert any(isinstance(e, ev.CloseConnection) for e in events)
        return
    assert r.status_class == 0
    after = L.TRANSITIONS[(csg, nsg)]
    assert (r.flags >> 2) & 3 == csg
    assert bool(r.flags & 0x80) == transit and (r.flags & 3) == (after if transit else 0)
    assert conn.full_feature == (after == L.LoginStage.FULL_FEATURE)


def test_the_security_stage_cannot_be_reentered_from_operational():
    conn = new_conn()
    feed(conn, I.login([("InitiatorName", INAME), ("TargetName", TNAME)], csg=1, nsg=1,
                       transit=False))
    events, (r,) = feed(conn, I.login([], csg=0, nsg=1, itt=2))
    assert (r.status_class, r.status_detail) == (2, 0)
    assert any(isinstance(e, ev.CloseConnection) for e in events)


def test_every_stage_with_a_transition_has_a_handler():
    assert {stage for stage, _ in L.TRANSITIONS} == set(L.STAGE_HANDLERS) == set(L.FIRST_STAGES)


def test_login_errors_carry_a_named_status():
    err = LoginError(LoginStatus.TOO_MANY_CONNECTIONS, "x")
    assert err.status is LoginStatus.TOO_MANY_CONNECTIONS
    assert (err.status_class, err.status_detail) == (2, 6)
    with pytest.raises(ValueError):
        LoginError(0x0299, "not a status")  # type: ignore[arg-type]


def test_no_login_error_is_raised_with_raw_numbers():
    raw = []
    for path in sorted(ISCSI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", ""))
                    in ("LoginError", "_login_fail", "fail")
                    and node.args and isinstance(node.args[0], ast.Constant)):
                raw.append(f"{path.name}:{node.lineno}")
    assert raw == []
