import asyncio
import json
import os
import stat
import threading

import pytest
from click.testing import CliRunner

from gluster_iscsi.cli.main import main
from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control.api import ControlServer
from gluster_iscsi.control.client import Client
from gluster_iscsi.control.protocol import ApiError

from .fakes import FakeDaemon

T1 = "iqn.2001-04.com.example:t1"


@pytest.fixture
def api(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    return ControlServer(d), d


def call(server, op, **args):
    return asyncio.run(server.call(op, args))


def run_ops(server, *ops):
    async def go():
        out = []
        for op, args in ops:
            try:
                out.append(await server.call(op, args))
            except ApiError as e:
                out.append(e)
        return out

    return asyncio.run(go())


def test_every_change_is_validated_applied_and_saved(api, tmp_path):
    server, d = api
    res = run_ops(
        server,
        ("target.create", {"name": T1}),
        ("lun.create", {"target": T1, "backing": "/srv/a.img"}),
        ("acl.add", {"target": 1, "network": "ALL"}),
    )
    assert res[0]["tid"] == 1 and res[1]["lun"] == 1
    saved = cfgmod.load(tmp_path)
    assert saved["targets"][0]["luns"][0]["backing"] == "/srv/a.img"
    assert saved["targets"][0]["acl"] == [{"network": "ALL"}]
    assert saved["epoch"] == 3
    assert d.registry.lookup(T1).allows("iqn.x:y", "1.2.3.4")
    assert d.stores_opened_calls == 1  # the LUN's store: the daemon applies thread policies


def test_a_rejected_change_changes_nothing(api, tmp_path):
    server, d = api
    res = run_ops(
        server,
        ("target.create", {"name": T1}),
        ("acl.add", {"target": T1, "network": "300.1.1.1"}),
        ("auth.account.add", {"user": "alice", "secret": "short"}),
        ("target.create", {"name": "target1"}),
        ("target.create", {"name": T1}),
        ("target.create", {"name": "iqn.2001-04.com.example:t2", "tid": 1}),
        ("lun.delete", {"target": T1, "lun": 9}),
        ("target.show", {"target": "iqn.nope"}),
    )
    codes = [(r.code, r.kind) if isinstance(r, ApiError) else "ok" for r in res]
    assert codes == ["ok", ("invalid", "acl"), ("invalid", None), ("invalid", "name"),
                     ("exists", "target"), ("exists", "target"), ("not_found", "lun"),
                     ("not_found", "target")]  # fmt: skip
    assert "at least 12" in str(res[2]) and "accounts" not in json.dumps(res[2].to_json())[:0]
    assert "iqn.YYYY-MM" in res[3].hint
    assert cfgmod.load(tmp_path)["epoch"] == 1


def test_deleting_a_target_with_sessions_needs_force(api):
    server, d = api
    call(server, "target.create", name=T1)
    d.session_list = [{"tsih": 5, "target": T1, "initiator_name": "iqn.x:y"}]
    with pytest.raises(ApiError) as e:
        call(server, "target.delete", target=T1)
    assert e.value.code == "busy" and "--force" in e.value.hint
    call(server, "target.delete", target=T1, force=True)
    assert d.registry.lookup(T1) is None


def test_config_apply_and_reload_refuse_to_drop_sessions_without_force(api, tmp_path):
    server, d = api
    run_ops(
        server,
        ("target.create", {"name": T1}),
        ("lun.create", {"target": T1, "backing": "/srv/a.img"}),
        ("portal.add", {"host": "127.0.0.1", "port": 3999}),
    )
    before = call(server, "config.export", show_secrets=True)
    saved = (tmp_path / "config.json").read_bytes()
    d.session_list = [{"tsih": 5, "target": T1, "initiator_name": "iqn.x:y"}]
    d.portal_connections = {("127.0.0.1", 3999): 3}
    replaced = json.loads(json.dumps(before))
    replaced["targets"][0]["luns"][0]["backing"] = "/srv/b.img"
    removed = {**before, "targets": [], "portals": []}
    for cfg, busy in (
        (replaced, [f"target {T1}: LUN 1 (replaced) in use by 1 session(s)"]),
        (removed, [f"target {T1}: removing it closes its 1 session(s)",
                   "portal 127.0.0.1:3999: removing it closes its 3 connection(s)"]),
    ):  # fmt: skip
        with pytest.raises(ApiError) as e:
            call(server, "config.apply", config=cfg)
        assert e.value.code == "busy" and "--force" in e.value.hint
        assert e.value.message == "; ".join(busy)
        assert call(server, "config.export", show_secrets=True) == before
        assert (tmp_path / "config.json").read_bytes() == saved
    # a dry run says what would change, busy or not
    assert call(server, "config.apply", config=removed, dry_run=True)["changes"]
    cfgmod.save(tmp_path, {**removed, "epoch": before["epoch"]})
    with pytest.raises(ApiError) as e:
        call(server, "config.reload")
    assert e.value.code == "busy"
    res = call(server, "config.reload", force=True)
    assert {(c["action"], c["object"]) for c in res["changes"]} == {
        ("remove", "target"), ("remove", "portal")
    }
    assert d.registry.lookup(T1) is None and ("remove_portal", ("127.0.0.1", 3999)) in d.calls


def test_a_failed_config_apply_saves_nothing(api, tmp_path, fake_runtime):
    server, d = api
    _, failing = fake_runtime
    call(server, "target.create", name=T1)
    before = call(server, "config.export", show_secrets=True)
    saved = (tmp_path / "config.json").read_bytes()
    failing.add("/srv/missing.img")
    cfg = json.loads(json.dumps(before))
    cfg["targets"][0]["luns"] = [
        {"lun": 1, "backing": "/srv/a.img"}, {"lun": 2, "backing": "/srv/missing.img"}
    ]
    cfg["portals"] = [{"host": "127.0.0.1", "port": 3999}]
    with pytest.raises(ApiError) as e:
        call(server, "config.apply", config=cfg)
    assert e.value.code == "unavailable" and "missing.img" in e.value.message
    assert call(server, "config.export", show_secrets=True) == before
    assert (tmp_path / "config.json").read_bytes() == saved
    assert d.registry.lookup(T1).device is None or d.registry.lookup(T1).device.luns == {}


def test_secrets_never_appear_unless_asked(api, tmp_path, caplog):
    server, d = api
    caplog.set_level("DEBUG")
    run_ops(
        server,
        ("target.create", {"name": T1}),
        ("auth.account.add", {"user": "alice", "secret": "alicesecret12"}),
        ("auth.bind", {"user": "alice", "target": T1}),
    )
    shown = [
        call(server, "target.show", target=T1),
        call(server, "auth.account.list"),
        call(server, "auth.show"),
        call(server, "config.export"),
    ]
    assert "alicesecret12" not in json.dumps(shown)
    assert "alicesecret12" not in caplog.text
    assert call(server, "target.show", target=T1, show_secrets=True)["secrets"] == {
        "alice": "alicesecret12"
    }
    assert call(server, "config.export", show_secrets=True)["accounts"]["alice"] == "alicesecret12"
    # the file has it (0600), of course
    assert cfgmod.load(tmp_path)["accounts"]["alice"] == "alicesecret12"


def test_a_redacted_export_applied_back_is_a_no_op(api):
    server, d = api
    run_ops(server, ("target.create", {"name": T1}),
            ("auth.account.add", {"user": "alice", "secret": "alicesecret12"}))  # fmt: skip
    exported = call(server, "config.export")
    assert call(server, "config.apply", config=exported)["changes"] == []
    assert call(server, "config.export", show_secrets=True)["accounts"]["alice"] == "alicesecret12"


def test_config_apply_is_idempotent_and_dry_run_changes_nothing(api):
    server, d = api
    cfg = cfgmod.empty_config()
    cfg["targets"] = [
        {
            "name": T1,
            "tid": 1,
            "luns": [{"lun": 1, "backing": "/srv/a"}],
            "acl": [{"network": "ALL"}],
        }
    ]
    dry = call(server, "config.apply", config=cfg, dry_run=True)
    assert dry["dry_run"] and dry["changes"] and d.registry.targets == {}
    first = call(server, "config.apply", config=cfg)
    assert first["changes"] == dry["changes"]
    # uuid/serial were generated on the first apply; a re-apply of the same file keeps them
    again = call(server, "config.export")
    assert call(server, "config.apply", config=again)["changes"] == []


def test_reload_applies_the_file(api, tmp_path):
    server, d = api
    call(server, "target.create", name=T1)
    cfg = cfgmod.load(tmp_path)
    cfg["targets"][0]["alias"] = "edited"
    cfgmod.save(tmp_path, cfg)
    res = call(server, "config.reload")
    assert res["changes"] == [{
        "action": "set", "object": "target", "target": T1, "field": "alias", "value": "edited",
        "text": f"target {T1}: alias edited",
    }]  # fmt: skip
    assert d.registry.lookup(T1).alias == "edited"


def test_chap_binding_per_target_per_initiator_and_discovery(api):
    server, d = api
    res = run_ops(
        server,
        ("target.create", {"name": T1}),
        ("acl.add", {"target": T1, "initiator": "iqn.1994-05.com.redhat:c"}),
        ("auth.account.add", {"user": "alice", "secret": "alicesecret12"}),
        ("auth.account.add", {"user": "bob", "secret": "bobsecret1234"}),
        ("auth.bind", {"user": "alice", "target": T1}),
        ("auth.bind", {"user": "bob", "target": T1, "outgoing": True}),
        ("auth.bind", {"user": "alice", "target": T1, "outgoing": True}),
        ("auth.bind", {"user": "bob", "target": T1, "initiator": "iqn.1994-05.com.redhat:c"}),
        ("auth.bind", {"user": "alice", "discovery": True}),
        ("auth.bind", {"user": "carol", "target": T1}),
    )
    assert [getattr(r, "kind", "ok") for r in res[6:]] == ["outgoing", "ok", "ok", "account"]
    t = d.registry.lookup(T1)
    assert [a.user for a in t.incoming] == ["alice"] and t.outgoing.user == "bob"
    assert t.chap_for("iqn.1994-05.com.redhat:c")[0][0].user == "bob"
    assert d.registry.discovery_incoming[0].user == "alice"
    call(server, "auth.account.delete", user="alice")  # unbinds it everywhere, as tgt
    assert d.registry.lookup(T1).incoming == [] and d.registry.discovery_incoming == []


def test_sessions_and_close(api):
    server, d = api
    call(server, "target.create", name=T1)
    d.session_list = [
        {"tsih": 7, "target": T1, "initiator_name": "iqn.x:y", "isid": "00023d000001"}
    ]
    assert call(server, "session.list", target=T1)[0]["tsih"] == 7
    assert call(server, "session.close", tsih=7) == {"tsih": 7, "closed": True}
    with pytest.raises(ApiError) as e:
        call(server, "session.close", tsih=7)
    assert e.value.code == "not_found" and e.value.kind == "session"


def test_params_per_target_and_global(api):
    server, d = api
    call(server, "target.create", name=T1)
    call(server, "param.set", name="maxrecvdatasegmentlength", value="65536", target=T1)
    assert d.registry.lookup(T1).params == {"MaxRecvDataSegmentLength": "65536"}
    with pytest.raises(ApiError) as e:
        call(server, "param.set", name="MaxRecvDataSegmentLength", value="abc")
    assert e.value.code == "invalid" and "expected a number in [512" in e.value.message
    call(server, "param.set", name="InitialR2T", value="No")
    assert d.params["InitialR2T"] == "No"
    call(server, "param.unset", name="InitialR2T")
    assert d.params["InitialR2T"] == "Yes"


def test_unknown_ops_and_bad_arguments_are_bad_requests(api):
    server, d = api
    for op, args in (("frobnicate", {}), ("target.create", {"nme": "x"})):
        with pytest.raises(ApiError) as e:
            call(server, op, **args)
        assert e.value.code == "bad_request"


# ---------------------------------------------------------------------------- the socket


@pytest.fixture
def served(tmp_path, fake_runtime):
    """A ControlServer on a real Unix socket, in a thread with its own loop."""
    d = FakeDaemon(tmp_path)
    server = ControlServer(d)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    started.wait(5)
    yield server, d
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    th.join(5)


def test_socket_is_private_and_speaks_json_lines(served, tmp_path):
    sock = tmp_path / "control.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    c = Client(tmp_path, timeout=5)
    assert c.call("ping")["api"] == 1
    c.call("target.create", name=T1)
    assert [t["name"] for t in c.call("target.list")] == [T1]
    with pytest.raises(ApiError) as e:
        c.call("target.delete", target="iqn.none")
    assert e.value.code == "not_found" and e.value.exit_code == 4


def test_a_second_server_on_the_same_state_dir_is_refused(served, tmp_path):
    other = ControlServer(FakeDaemon(tmp_path))
    with pytest.raises(RuntimeError, match="already running"):
        asyncio.run(other.start())


def test_wrong_api_version_is_reported(served, tmp_path):
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(tmp_path / "control.sock"))
    s.sendall(b'{"v": 2, "id": 1, "op": "ping"}\nnot json\n')
    data = b""
    while data.count(b"\n") < 2:
        data += s.recv(4096)
    s.close()
    first, second = (json.loads(x) for x in data.splitlines()[:2])
    assert first["error"]["code"] == "unsupported_version"
    assert second["error"]["code"] == "bad_request"


def test_stale_socket_is_replaced(tmp_path, fake_runtime):
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "control.sock"))
    s.close()  # a socket file nobody listens on (a daemon that crashed)
    server = ControlServer(FakeDaemon(tmp_path))

    async def go():
        await server.start()
        await server.stop()

    asyncio.run(go())
    assert not (tmp_path / "control.sock").exists()


def test_tgt_daemon_settings_tune_the_daemon_and_never_reach_the_negotiator(api):
    server, d = api
    call(server, "target.create", name=T1)
    call(server, "param.set", name="nop_interval", value="5")
    call(server, "param.set", name="nop_count", value="3")
    call(server, "param.set", name="MaxQueueCmd", value="64")
    call(server, "param.set", name="nop_interval", value="9", target=T1)
    assert (d.nop_interval, d.nop_timeout, d.queue_depth) == (5.0, 15.0, 64)
    assert "nop_interval" not in d.params and d.registry.lookup(T1).params == {}
    call(server, "param.unset", name="MaxQueueCmd")
    assert d.queue_depth == 128  # the daemon's own default again


def test_first_burst_may_not_exceed_max_burst(api):
    server, d = api
    call(server, "target.create", name=T1)
    with pytest.raises(ApiError) as e:
        call(server, "param.set", name="FirstBurstLength", value="4194304", target=T1)
    assert "exceeds MaxBurstLength" in e.value.message and "targets[0].params" in e.value.message
    with pytest.raises(ApiError):
        call(server, "param.set", name="AuthMethod", value="None")


def test_status_shows_the_memory_budget_and_the_connection_caps(api):
    server, d = api
    d.connections = {object(), object()}
    info = call(server, "sys.show")
    assert info["memory"] == {"budget": 256 << 20, "session_share": 64 << 20,
                              "in_use": 1 << 20, "peak": 3 << 20}  # fmt: skip
    assert info["connections"] == {"open": 2, "max": 1000, "max_per_host": 250, "max_prelogin": 500,
                                   "max_prelogin_per_host": 256}  # fmt: skip
    assert info["io_uring"] == {"enabled": False, "available": False, "calls": 0}


def test_status_prints_the_memory_budget_and_the_connection_caps(served, tmp_path):
    out = CliRunner().invoke(main, ["--state-dir", str(tmp_path), "status"])
    assert out.exit_code == 0, out.output
    assert ("memory for commands' data: 1 MiB in use (peak 3 MiB) of 256 MiB, at most 64 MiB"
            " per session\n") in out.output
    assert "connections: 0 of at most 1000 (250 per address, at most 500 logging in, 256 of those per address)\n" \
        in out.output
