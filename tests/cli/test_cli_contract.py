"""The CLI contract (issue 15 items 3, 4, 8): help everywhere, one vocabulary, --json on
everything that prints state, bad input as a message with an exit code, safe defaults."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gluster_iscsi.cli import serve as serve_mod
from gluster_iscsi.cli.main import ALIASES, main
from gluster_iscsi.cli.tgtadm import format_target
from gluster_iscsi.control import exposure
from gluster_iscsi.control.api import ControlServer

from ..control.fakes import FakeDaemon, fake_runtime  # noqa: F401 - a fixture

#: Commands that print no state of the daemon in a form --json could take: serve runs the
#: daemon; tgtadm speaks tgt's grammar and prints tgt's text, line for line; systemd show and
#: man print a file (a unit, a roff page) whose format is the point.
NO_JSON = {"serve", "tgtadm", "systemd show", "man"}
RST = re.compile(r"``|:[a-z]+:`|`[^`\n]+`_|^\.\. ", re.M)
VERBS = {"create", "delete", "add", "remove", "list", "show", "set", "unset", "resize", "bind",
         "unbind", "close", "export", "apply", "reload", "validate", "path",
         "account-create", "account-delete", "account-list", "install",
         "stats", "join", "leave", "move", "rebalance", "initiator-config"}  # fmt: skip


def walk(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from walk(sub, (*path, name))


COMMANDS = [(" ".join(p) or "(main)", c) for p, c in walk(main)]


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_and_group_has_help_without_rst_markup(name, cmd):
    text = cmd.help or ""
    assert text.strip(), f"{name} has no help text"
    assert not RST.search(text), f"{name}: reStructuredText in --help: {text!r}"
    assert cmd.get_short_help_str().strip()
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name != "help":
            assert p.help, f"{name} {p.opts[0]} has no help text"
            assert not RST.search(p.help), f"{name} {p.opts[0]}: {p.help!r}"
    if name != "tgtadm":  # tgtadm's --help is tgt's, answered by tgtadm itself
        out = CliRunner().invoke(main, [*name.split()[: 0 if name == "(main)" else None], "--help"])
        assert out.exit_code == 0 and "``" not in out.output and "\\b" not in out.output


@pytest.mark.parametrize(
    ("name", "cmd"),
    [(n, c) for n, c in COMMANDS if not isinstance(c, click.Group) and n not in NO_JSON],
    ids=[n for n, c in COMMANDS if not isinstance(c, click.Group) and n not in NO_JSON],
)
def test_every_command_that_prints_state_accepts_json(name, cmd):
    assert any("--json" in getattr(p, "opts", ()) for p in cmd.params), f"{name}: no --json"


def test_one_verb_vocabulary_and_old_names_kept_as_hidden_aliases():
    visible = {p[-1] for p, c in walk(main) if len(p) == 2 and not c.hidden}
    assert visible <= VERBS, visible - VERBS
    assert ("delete" in main.commands["portal"].commands and "remove" in main.commands["portal"].commands)
    for group, old, new in ALIASES:
        alias = group.commands[old]
        assert alias.hidden and alias.callback is group.commands[new].callback
        listing = CliRunner().invoke(main, [group.name or "", "--help"]).output
        assert new in listing and not re.search(rf"^\s+{re.escape(old)}\s", listing, re.M)


# ------------------------------------------------------------------ bad input (item 4)


@pytest.mark.parametrize("text", [
    "localhost:abc", "::1", "fe80::1:3260", "[::1", "[::1]x", "[nothost]:3260",
    "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "", "bad_host:1", "a b:1",
    "no-such-host.invalid:3260",
])  # fmt: skip
def test_bad_addresses_are_refused_with_a_reason(text):
    with pytest.raises(serve_mod.BadAddress) as e:
        serve_mod.parse_hostport(text)
    assert str(e.value)


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:3261", ("127.0.0.1", 3261)), ("localhost", ("localhost", 3260)),
    ("[::1]:3262", ("::1", 3262)), ("[::]", ("::", 3260)), (":3263", ("0.0.0.0", 3263)),
])  # fmt: skip
def test_good_addresses_parse(text, want):
    assert serve_mod.parse_hostport(text) == want


@pytest.mark.parametrize(("args", "code"), [
    (["portal", "add", "localhost:abc"], 6),
    (["portal", "add", "[::1]:65536"], 6),
    (["portal", "add", "::1"], 6),
    (["portal", "remove", "127.0.0.1:x"], 6),
    (["portal", "add", "no-such-host.invalid"], 6),
    (["serve", "--listen", "localhost:abc"], 6),
    (["serve", "--listen", "::1:3260"], 6),
    (["serve", "--listen", "127.0.0.1:0"], 6),
    (["serve", "--listen", "127.0.0.1:65536"], 6),
    (["serve", "--listen", "no-such-host.invalid:3260"], 6),
    (["serve", "--listen", "127.0.0.1:3260", "--advertise", "2001:db8::1"], 6),
    (["auth", "account-create", "bob", "--secret-file", "/nonexistent/secret"], 6),
    (["--timeout", "-1", "status"], 2),
])  # fmt: skip
def test_bad_input_is_a_message_and_an_exit_code_never_a_traceback(tmp_path, args, code):
    r = CliRunner().invoke(main, ["--state-dir", str(tmp_path), *args])
    assert r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # not a crash
    assert "Traceback" not in r.output and "error:" in r.output.lower()
    assert not (tmp_path / "control.sock").exists()


def test_serve_refuses_a_state_dir_that_is_a_file_or_under_one(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for sdir in (f, f / "sub"):
        r = CliRunner().invoke(main, ["serve", "--state-dir", str(sdir), "--listen", "127.0.0.1:1"])
        assert r.exit_code == 6 and isinstance(r.exception, SystemExit), r.output
        assert "state directory" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------ safe defaults (item 3)


def test_a_wildcard_is_never_printed_as_the_address_to_connect_to():
    for host in ("0.0.0.0", "::"):
        addrs = serve_mod.connect_addresses(host, 3260)
        assert addrs and addrs[0] in ("127.0.0.1:3260", "[::1]:3260")
        assert not any(a.startswith(("0.0.0.0", "[::]")) for a in addrs)
    assert serve_mod.connect_addresses("0.0.0.0", 3260, "10.0.2.2") == ["10.0.2.2:3260"]
    # the real addresses of this host's interfaces, for initiators elsewhere
    others = {a for a in serve_mod._local_addresses(False) if not a.startswith("127.")}
    assert {f"{a}:3260" for a in others} <= set(serve_mod.connect_addresses("0.0.0.0", 3260))


def _cfg(host: str, acl: list[dict], incoming: list[str] | None = None) -> dict:
    return {"portals": [{"host": host, "port": 3260, "advertise": None}],
            "targets": [{"name": "iqn.2026-11.com.example:t", "acl": acl,
                         "incoming": incoming or []}]}  # fmt: skip


@pytest.mark.parametrize(("cfg", "warned"), [
    (_cfg("0.0.0.0", [{"network": "ALL"}]), True),
    (_cfg("::", [{"network": "::/0"}]), True),
    (_cfg("192.0.2.1", [{"network": "0.0.0.0/0"}]), True),
    (_cfg("storage.example", [{"network": "ALL"}]), True),  # a name may be public
    (_cfg("127.0.0.1", [{"network": "ALL"}]), False),
    (_cfg("[::1]", [{"network": "ALL"}]), False),
    (_cfg("localhost", [{"network": "ALL"}]), False),
    (_cfg("0.0.0.0", [{"network": "ALL"}], ["alice"]), False),  # CHAP
    (_cfg("0.0.0.0", [{"network": "10.0.0.0/8"}]), False),
    (_cfg("0.0.0.0", [{"initiator": "iqn.1994-05.com.example:c"}]), False),
    (_cfg("0.0.0.0", []), False),  # no rule: nobody may log in
])  # fmt: skip
def test_open_targets_beyond_loopback_without_chap_are_warned_about(cfg, warned):
    assert bool(exposure.exposed(cfg)) is warned


def test_a_change_that_opens_a_target_beyond_loopback_logs_a_warning_once(
    tmp_path, fake_runtime, caplog  # noqa: F811
):
    server = ControlServer(FakeDaemon(tmp_path))
    t = "iqn.2026-11.com.example:t"

    async def go():
        await server.call("target.create", {"name": t})
        await server.call("portal.add", {"host": "127.0.0.1", "port": 3260})
        await server.call("acl.add", {"target": t, "network": "ALL"})
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        await server.call("portal.add", {"host": "0.0.0.0", "port": 3261})  # now exposed
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and t in warned[0] and "0.0.0.0:3261" in warned[0]
        await server.call("param.set", {"name": "MaxConnections", "value": "1"})  # still so
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())


# ------------------------------------------------------------------ tgtadm (item 8)


@pytest.mark.parametrize("thin", [True, False])
def test_tgtadm_thin_provisioning_says_what_the_lun_reports(thin):
    t = {"tid": 1, "name": "iqn.2026-11.com.example:t", "sessions": [], "incoming": [],
         "outgoing": None, "acl": [],
         "luns": [{"lun": 1, "uuid": "5c1d0e6a-1c79-4e9c-a1a7-6d2f3c3f7c01", "serial": "s",
                   "size": 1 << 20, "block_size": 512, "online": True, "read_only": False,
                   "bstype": "rdwr", "backing": "/x", "thin_provisioning": thin}]}  # fmt: skip
    lines = format_target(t)
    thin_lines = [x.strip() for x in lines if "Thin-provisioning" in x]
    # LUN 0 (the controller) is never thin; LUN 1 is what its store reports (LBPME)
    assert thin_lines == ["Thin-provisioning: No", f"Thin-provisioning: {'Yes' if thin else 'No'}"]


def test_every_json_command_is_in_the_documented_schema():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CLI-JSON.md").read_text()
    for name, cmd in COMMANDS:
        if any("--json" in getattr(p, "opts", ()) for p in cmd.params) and not cmd.hidden:
            assert f"`{name}`" in doc or f"`{name} " in doc or f"/ `{name}`" in doc, name


def test_serve_refuses_a_state_dir_it_cannot_write(tmp_path, monkeypatch):
    # As root every directory is writable, so os.access stands in for a read-only one.
    real = serve_mod.os.access
    monkeypatch.setattr(serve_mod.os, "access",
                        lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    r = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path), "--listen", "127.0.0.1:1"])
    assert r.exit_code == 6 and isinstance(r.exception, SystemExit), r.output
    assert "is not writable" in r.output and not (tmp_path / "control.sock").exists()
