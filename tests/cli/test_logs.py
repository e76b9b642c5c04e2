"""Logs an admin can use (issue 18): ``serve --log-format json``, journald without our
timestamps, and login / logout / connection-drop lines with initiator, address, target,
TSIH and reason."""

from __future__ import annotations

import io
import json
import logging
import socket
import struct
import subprocess
import time

import pytest

from gluster_iscsi.logs import PROBLEMS, JsonFormatter, TextFormatter, configure

from ..iscsi import initiator as I
from .harness import Serve

DEMO = "iqn.2026-11.org.gluster-iscsi:demo"


def _record(msg: str = "hello %s", args: tuple = ("x",), level: int = logging.WARNING,
            fields: dict | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("gluster_iscsi.test", level, __file__, 1, msg, args, None)
    if fields is not None:
        rec.fields = fields
    return rec


def test_json_lines_have_time_level_logger_message_and_the_fields():
    rec = _record(fields={"initiator": "iqn.x\n\u202e", "tsih": 3, "target": None})
    obj = json.loads(JsonFormatter().format(rec))
    assert obj["level"] == "WARNING" and obj["logger"] == "gluster_iscsi.test"
    assert obj["message"] == "hello x" and obj["time"].endswith("Z")
    assert obj["initiator"] == "iqn.x\n\u202e" and obj["tsih"] == 3
    assert "target" not in obj  # None: not known, left out
    assert "\n" not in JsonFormatter().format(rec)  # one line, whatever the peer sent


def test_under_journald_no_timestamp_of_our_own_and_a_priority_prefix():
    rec = _record()
    assert TextFormatter(journald=True).format(rec) == "<4>WARNING gluster_iscsi.test: hello x"
    line = JsonFormatter(journald=True).format(rec)
    assert line.startswith("<4>{") and "time" not in json.loads(line[3:])
    assert TextFormatter().format(rec)[:4].isdigit()  # a year: the plain format keeps its time


def test_configure_detects_journald_from_journal_stream(tmp_path, monkeypatch):
    # pytest's own handlers on the root logger would keep configure() out: step them aside
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        with open(tmp_path / "journal", "w") as f:
            st = __import__("os").fstat(f.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            monkeypatch.setattr("sys.stderr", f)
            configure(logging.INFO, "json")
            logging.getLogger("gluster_iscsi.t").info("up")
            for h in root.handlers:
                h.flush()
        line = (tmp_path / "journal").read_text().strip()
        assert line.startswith("<6>{") and "time" not in json.loads(line[3:])
        buf = io.StringIO()
        configure(logging.INFO, "text", stream=buf)  # replaces our own handler, only that
        assert len(root.handlers) == 1
        logging.getLogger("gluster_iscsi.t").info("again")
        assert buf.getvalue().split(" ", 2)[2].startswith("INFO gluster_iscsi.t: again")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_problem_reports_pass_their_fields_on(caplog):
    PROBLEMS.clear()
    caplog.set_level(logging.INFO)
    PROBLEMS.report(logging.getLogger("gluster_iscsi.t"), logging.INFO, "k", "peer", "m %s", "a\n",
                    fields={"address": "peer"})
    rec = caplog.records[-1]
    assert rec.getMessage() == "m a\\n" and rec.fields == {"address": "peer"}
    PROBLEMS.clear()


# ---------------------------------------------------------------------------- a real daemon


def _json_lines(serve: Serve) -> list[dict]:
    return [json.loads(x) for x in serve.log().splitlines() if x.startswith("{")]


def _wait_for(serve: Serve, pred, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [x for x in _json_lines(serve) if pred(x)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no such line in:\n{serve.log()[-4000:]}")


def _raw_login(port: int, initiator: str, target: str, isid: bytes = I.ISID) -> tuple[socket.socket, int]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(I.login([("InitiatorName", initiator), ("TargetName", target)], isid=isid))
    hdr = b""
    while len(hdr) < 48:
        chunk = s.recv(48 - len(hdr))
        assert chunk
        hdr += chunk
    return s, hdr[36]  # Status-Class


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["--uvloop", "--no-uvloop"])
def test_json_log_of_logins_logouts_drops_and_refusals(tmp_path, loop):
    with Serve(tmp_path, extra=("--demo", "--log-format", "json", loop)) as s:
        lines = _json_lines(s)
        assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
        # iscsi-ls: a discovery session it logs out of, a normal one it just closes
        r = subprocess.run(["iscsi-ls", "-s", f"iscsi://127.0.0.1:{s.port}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and DEMO in r.stdout, r.stderr
        disc = _wait_for(s, lambda x: x["message"].startswith("iSCSI login")
                         and x.get("session_type") == "Discovery")
        login = _wait_for(s, lambda x: x["message"].startswith("iSCSI login")
                          and x.get("target") == DEMO)
        assert login["level"] == "INFO" and login["address"] == "127.0.0.1"
        assert login["initiator"].startswith("iqn.") and isinstance(login["tsih"], int)
        logout = _wait_for(s, lambda x: x["message"].startswith("iSCSI logout")
                           and x.get("tsih") == disc["tsih"])
        assert logout["level"] == "INFO" and logout["reason"] == "logout"
        assert logout["initiator"] == disc["initiator"] and logout["address"] == "127.0.0.1"
        closed = _wait_for(s, lambda x: x["message"].startswith("iSCSI connection dropped")
                           and x.get("tsih") == login["tsih"])
        assert closed["level"] == "INFO" and closed["target"] == DEMO
        assert closed["reason"] == "connection closed by the initiator without logout"
        # a connection reset under a session: a WARNING with its reason
        sock, status = _raw_login(s.port, "iqn.2026-12.org.example:dropper", DEMO)
        assert status == 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        drop = _wait_for(s, lambda x: x.get("initiator") == "iqn.2026-12.org.example:dropper"
                         and x["message"].startswith("iSCSI connection dropped"))
        assert drop["level"] == "WARNING" and drop["target"] == DEMO
        assert drop["reason"].startswith("connection lost") and "reset" in drop["reason"]
        assert drop["address"] == "127.0.0.1" and isinstance(drop["tsih"], int)
        # the administrator closes a session: INFO, with that reason
        sock, status = _raw_login(s.port, "iqn.2026-12.org.example:closed", DEMO,
                                  isid=bytes.fromhex("400001370001"))
        assert status == 0
        sessions = json.loads(s.cli("session", "list", "--json").stdout)
        sessions = sessions.get("sessions", sessions) if isinstance(sessions, dict) else sessions
        tsih = next(x["tsih"] for x in sessions
                    if x["initiator_name"] == "iqn.2026-12.org.example:closed")
        assert s.cli("session", "close", str(tsih)).returncode == 0
        closed = _wait_for(s, lambda x: x.get("tsih") == tsih
                           and x["message"].startswith("iSCSI connection dropped"))
        assert closed["level"] == "INFO" and closed["reason"] == "closed by the administrator"
        sock.close()
        # a refused login: the reason, the address and the initiator as fields
        sock, status = _raw_login(s.port, "iqn.2026-12.org.example:lost", DEMO + "-nope")
        assert status != 0
        sock.close()
        refused = _wait_for(s, lambda x: x.get("initiator") == "iqn.2026-12.org.example:lost")
        assert refused["level"] == "WARNING" and "login refused" in refused["reason"]
        assert refused["address"] == "127.0.0.1"
