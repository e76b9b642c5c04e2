"""``gluster-iscsi tgtadm``: tgt's admin grammar, messages, output layout and exit codes.

Every server-side command of a tgt cookbook runs as written with ``gluster-iscsi`` in front
of it. The grammar is tgtadm 1.0.85's (GNU getopt_long: long options may be abbreviated,
so ``--param`` is ``--params``); the answers are tgt's (``tgtadm: can't find the target``,
exit status 22; 107 when the daemon cannot be reached). Where tgt says only
``invalid request`` we add a second line that says why.

Differences on purpose:

* names: tgt accepts any target name; so do we, but a name that breaks RFC 7143 (like the
  cookbook's ``iqn.20013-10.com.redhat``) gets a warning saying what is wrong with it;
* CHAP secrets shorter than 12 bytes are refused (tgt takes any);
* a LUN needs a backing store (tgt makes an empty offline LUN without ``-b``);
* ``-C/--control-port`` is accepted and ignored: ``--state-dir`` picks the daemon.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ..control.client import Client
from ..control.protocol import ApiError
from ..model.names import check_name
from .context import Ctx
from .serve import parse_hostport

TGT_VERSION = "1.0.85"
EINVAL = 22
ENOTCONN = 107

SHORT = "dhVL:o:m:t:s:c:l:n:v:b:E:f:y:T:I:Q:u:p:H:FP:B:Y:OC:S:"
LONG = [
    "debug", "help", "version", "lld=", "op=", "mode=", "tid=", "sid=", "cid=", "lun=",
    "name=", "value=", "backing-store=", "bstype=", "bsopts=", "bsoflags=", "blocksize=",
    "targetname=", "initiator-address=", "initiator-name=", "user=", "password=", "host=",
    "force", "params=", "bus=", "device-type=", "outgoing", "control-port=",
]  # fmt: skip
_LONG_TO_SHORT = {
    "--lld": "-L", "--op": "-o", "--mode": "-m", "--tid": "-t", "--sid": "-s", "--cid": "-c",
    "--lun": "-l", "--name": "-n", "--value": "-v", "--backing-store": "-b", "--bstype": "-E",
    "--bsopts": "-S", "--bsoflags": "-f", "--blocksize": "-y", "--targetname": "-T",
    "--initiator-address": "-I", "--initiator-name": "-Q", "--user": "-u", "--password": "-p",
    "--host": "-H", "--force": "-F", "--params": "-P", "--bus": "-B", "--device-type": "-Y",
    "--outgoing": "-O", "--control-port": "-C", "--help": "-h", "--version": "-V",
    "--debug": "-d",
}  # fmt: skip
_NUMERIC = {"-t": "t", "-s": "s", "-c": "c", "-l": "l", "-C": "C", "-y": "y", "-H": "H"}

OPS = ("new", "delete", "show", "bind", "unbind", "update", "stat", "start", "stop")
MODES = ("system", "sys", "target", "device", "logicalunit", "portal", "session",
         "connection", "conn", "account", "lld")  # fmt: skip

#: (api error code, kind) -> tgtadm's message (usr/tgtadm.c tgtadm_strerror)
_MESSAGES: dict[tuple[str, str | None], str] = {
    ("not_found", "target"): "can't find the target",
    ("not_found", "lun"): "can't find the logical unit",
    ("not_found", "session"): "can't find the session",
    ("not_found", "account"): "can't find the account",
    ("not_found", "acl"): "this access control rule does not exist",
    ("exists", "target"): "this target already exists",
    ("exists", "lun"): "this logical unit number already exists",
    ("exists", "acl"): "this access control rule already exists",
    ("exists", "account"): "this account already exists",
    ("exists", "outgoing"): "this target already has an outgoing account",
    # not one of tgt's messages: tgt exports a file twice without a word (issue 15)
    ("exists", "backing"): "this backing store is already exported",
    ("busy", "target"): "this target is still active",
    ("busy", "lun"): "this logical unit is still active",
}

#: tgt's target parameter listing (show --tid N): name and tgt's default, in tgt's order.
TGT_PARAMS: list[tuple[str, str]] = [
    ("nop_interval", "0"), ("nop_count", "0"), ("MaxRecvDataSegmentLength", "8192"),
    ("HeaderDigest", "None"), ("DataDigest", "None"), ("InitialR2T", "Yes"),
    ("MaxOutstandingR2T", "1"), ("ImmediateData", "Yes"), ("FirstBurstLength", "65536"),
    ("MaxBurstLength", "262144"), ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
    ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "20"), ("OFMarkInt", "Reject"),
    ("IFMarkInt", "Reject"), ("MaxConnections", "1"), ("RDMAExtensions", "Yes"),
    ("TargetRecvDataSegmentLength", "262144"), ("InitiatorRecvDataSegmentLength", "262144"),
    ("MaxOutstandingUnexpectedPDUs", "0"), ("MaxXmitDataSegmentLength", "8192"),
    ("MaxQueueCmd", "128"),
]  # fmt: skip

USAGE = f"""Linux SCSI Target administration utility, version {TGT_VERSION} (gluster-iscsi front end)

Usage: tgtadm [OPTION]
--lld <driver> --mode target --op new --tid <id> --targetname <name>
	add a new target with <id> and <name>. <id> must not be zero.
--lld <driver> --mode target --op delete [--force] --tid <id>
	delete the specific target with <id>.
	With force option, the specific target is deleted
	even if there is an activity.
--lld <driver> --mode target --op show
	show all the targets.
--lld <driver> --mode target --op show --tid <id>
	show the specific target's parameters.
--lld <driver> --mode target --op update --tid <id> --name <param> --value <value>
	change the target parameters of the target with <id>.
--lld <driver> --mode target --op bind --tid <id> --initiator-address <address>
--lld <driver> --mode target --op bind --tid <id> --initiator-name <name>
	enable the target to accept the specific initiators.
--lld <driver> --mode target --op unbind --tid <id> --initiator-address <address>
--lld <driver> --mode target --op unbind --tid <id> --initiator-name <name>
	disable the specific permitted initiators.
--lld <driver> --mode logicalunit --op new --tid <id> --lun <lun>
  --backing-store <path> --bstype <type> --bsopts <bs options> --bsoflags <options>
	add a new logical unit with <lun> to the specific
	target with <id>. The logical unit is offered
	to the initiators. <path> is a regular file or block device,
	memory:SIZE, gluster://host/volume/path, or volume@host:path
	with --bstype glfs. bstype is rdwr (default), aio or glfs.
--lld <driver> --mode logicalunit --op delete --tid <id> --lun <lun>
	delete the specific logical unit with <lun> that
	the target with <id> has.
--lld <driver> --mode account --op new --user <name> --password <pass>
	add a new account with <name> and <pass> (at least 12 bytes).
--lld <driver> --mode account --op delete --user <name>
	delete the specific account having <name>.
--lld <driver> --mode account --op bind --tid <id> --user <name> [--outgoing]
	add the specific account having <name> to
	the specific target with <id>.
	<user> could be <IncomingUser> or <OutgoingUser>.
	If you use --outgoing option, the account will
	be added as an outgoing account.
--lld <driver> --mode account --op unbind --tid <id> --user <name> [--outgoing]
	delete the specific account having <name> from specific
	target. The --outgoing option must be added if you
	delete an outgoing account.
--lld <driver> --mode portal --op new|delete --param portal=<host>:<port>
--lld <driver> --mode conn --op delete --tid <id> --sid <tsih> --cid <cid>
	close that session.
--control-port <port> accepted for compatibility; --state-dir picks the daemon
--help
	display this help and exit
"""


class TgtadmExit(Exception):
    def __init__(self, code: int, lines: list[str] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.lines = lines or []


def _die(message: str, code: int = EINVAL, *, detail: str | None = None) -> NoReturn:
    lines = [f"tgtadm: {message}"]
    if detail:
        lines.append(f"tgtadm: ({detail})")
    raise TgtadmExit(code, lines)


def _usage_error(first: str) -> NoReturn:
    raise TgtadmExit(EINVAL, [first, "Try `tgtadm --help' for more information."])


def parse(argv: list[str]) -> dict[str, Any]:
    """tgtadm's command line -> {short letter: value}; raises TgtadmExit as tgtadm does."""
    try:
        opts, rest = getopt.gnu_getopt(argv, SHORT, LONG)
    except getopt.GetoptError as e:
        opt = e.opt or ""
        if "requires argument" in e.msg:
            _usage_error(f"tgtadm: option requires an argument -- '{opt}'")
        if "not a unique prefix" in e.msg:
            _usage_error(f"tgtadm: option '--{opt}' is ambiguous")
        if "must not have an argument" in e.msg:
            _usage_error(f"tgtadm: option '--{opt}' doesn't allow an argument")
        prefix = "--" if len(opt) > 1 else "-"
        if prefix == "-":
            _usage_error(f"tgtadm: invalid option -- '{opt}'")
        _usage_error(f"tgtadm: unrecognized option '{prefix}{opt}'")
    out: dict[str, Any] = {}
    for name, text in opts:
        short = _LONG_TO_SHORT.get(name, name)[1:]
        value: Any = text
        if "-" + short in _NUMERIC:
            value = _number(text)
            if value is None or value < 0:
                _usage_error(f"-{short} argument value '{text}' invalid")
        if short in ("F", "O", "d", "h", "V"):
            value = True
        out[short] = value
    if rest:
        _usage_error(f"tgtadm: extra argument '{rest[0]}'")
    return out


def _number(text: str) -> int | None:
    """strtoul(text, 0) as tgtadm reads ids: decimal, 0x hex or 0 octal; None if not."""
    try:
        if len(text) > 1 and text.startswith("0") and text[1:].isdigit():
            return int(text, 8)
        return int(text, 0)
    except ValueError:
        return None


class Tgtadm:
    """Runs one parsed command against the control API; output goes to ``write``."""

    def __init__(
        self, client: Client, write: Callable[[str], None], warn: Callable[[str], None]
    ) -> None:
        self.client = client
        self.write = write
        self.warn = warn

    def call(self, op: str, **args: Any) -> Any:
        try:
            return self.client.call(op, **{k: v for k, v in args.items() if v is not None})
        except ApiError as e:
            if e.code in ("daemon_unavailable", "timeout"):
                raise TgtadmExit(
                    ENOTCONN,
                    [
                        "tgtadm: failed to send request hdr to tgt daemon, Transport endpoint"
                        " is not connected",
                        f"tgtadm: ({e.message})",
                    ],
                ) from None
            msg = _MESSAGES.get((e.code, e.kind))
            if msg is None:
                _die("invalid request", detail=str(e))
            _die(msg, detail=str(e) if e.kind in ("name", "backing") else None)

    # -------------------------------------------------------------------------- dispatch

    def run(self, o: dict[str, Any]) -> None:
        if o.get("h"):
            self.write(USAGE)
            return
        if o.get("V"):
            self.write(TGT_VERSION + "\n")
            return
        op, mode = o.get("o"), o.get("m")
        if op is None:
            _die("specify the operation type")
        if mode is None:
            _die("specify the mode")
        if op not in OPS:
            _die(f"unknown operation: {op}", 1)
        if mode not in MODES:
            _die(f"unknown mode: {mode}", 1)
        lld = o.get("L", "iscsi")
        if lld != "iscsi" and mode not in ("system", "sys"):
            _die("can't find the driver")
        if "t" in o and o["t"] == 0 and mode in ("target", "logicalunit") and op != "show":
            _die("'tid' cannot be 0")
        mode = {"sys": "system", "conn": "connection", "device": "logicalunit"}.get(mode, mode)
        handler = getattr(self, f"{mode}_{op}", None)
        if handler is None:
            _die("this operation isn't supported")
        handler(o)

    def _tid(self, o: dict[str, Any]) -> int:
        if "t" not in o:
            _die("'tid' option is necessary")
        return int(o["t"])

    def _lun(self, o: dict[str, Any]) -> int:
        if "l" not in o:
            _die("'lun' option is necessary")
        return int(o["l"])

    # -------------------------------------------------------------------------- target

    def target_new(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        name = o.get("T")
        if not name:
            _die("creating new target requires a name, use --targetname")
        check = check_name(name)
        res = self.call("target.create", name=name, tid=tid, lenient=True)
        if not check.ok:
            self.warn(
                f"tgtadm: warning: target name {name} does not follow RFC 7143 ("
                + "; ".join(check.problems)
                + "); accepted as tgt does, but strict initiators may refuse it"
            )
        del res

    def target_delete(self, o: dict[str, Any]) -> None:
        self.call("target.delete", target=self._tid(o), force=True if o.get("F") else None)

    def target_show(self, o: dict[str, Any]) -> None:
        if "t" in o:
            t = self.call("target.show", target=o["t"])
            eff = t.get("effective_params", {})
            for name, default in TGT_PARAMS:
                value = eff.get(name, default)
                if "," in value:  # an offer list: show what tgt would, the first choice
                    value = value.split(",")[0]
                self.write(f"{name}={value}\n")
            return
        targets = self.call("target.list")
        out: list[str] = []
        for summary in targets:
            t = self.call("target.show", target=summary["tid"])
            out += format_target(t)
        self.write("".join(line + "\n" for line in out))

    def target_bind(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        if o.get("I"):
            self.call("acl.add", target=tid, network=o["I"])
        elif o.get("Q"):
            self.call("acl.add", target=tid, initiator=o["Q"], force=True)
        else:
            _die("invalid request", detail="give --initiator-address or --initiator-name")

    def target_unbind(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        if o.get("I"):
            self.call("acl.remove", target=tid, network=o["I"])
        elif o.get("Q"):
            self.call("acl.remove", target=tid, initiator=o["Q"])
        else:
            _die("invalid request", detail="give --initiator-address or --initiator-name")

    def target_update(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        if "n" not in o or "v" not in o:
            _die("invalid request", detail="give --name <param> --value <value>")
        self.call("param.set", target=tid, name=o["n"], value=o["v"])

    # -------------------------------------------------------------------------- LUNs

    def logicalunit_new(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        lun = self._lun(o)
        if lun == 0:  # tgt keeps LUN 0 for its controller
            _die("this logical unit number already exists")
        backing = o.get("b")
        if not backing:
            _die("invalid request", detail="a LUN needs a backing store: -b PATH")
        bstype = o.get("E")
        if bstype is not None and bstype not in ("rdwr", "aio", "glfs"):
            _die(
                "invalid request", detail=f"backing store type {bstype!r} is not rdwr, aio or glfs"
            )
        if o.get("y") and o["y"] not in (512, 1024, 2048, 4096):
            _die("invalid request", detail="--blocksize must be 512, 1024, 2048 or 4096")
        self.call(
            "lun.create", target=tid, lun=lun, backing=backing, bstype=bstype,
            block_size=o.get("y"),
        )  # fmt: skip

    def logicalunit_delete(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        self.call("lun.delete", target=tid, lun=self._lun(o))

    # -------------------------------------------------------------------------- accounts

    def account_new(self, o: dict[str, Any]) -> None:
        if not o.get("u") or "p" not in o:
            _die("invalid request", detail="give --user <name> --password <pass>")
        self.call("auth.account.add", user=o["u"], secret=o["p"])

    def account_delete(self, o: dict[str, Any]) -> None:
        if not o.get("u"):
            _die("invalid request", detail="give --user <name>")
        self.call("auth.account.delete", user=o["u"])

    def account_bind(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        if not o.get("u"):
            _die("invalid request", detail="give --user <name>")
        self.call("auth.bind", target=tid, user=o["u"], outgoing=True if o.get("O") else None)

    def account_unbind(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        if not o.get("u"):
            _die("invalid request", detail="give --user <name>")
        self.call("auth.unbind", target=tid, user=o["u"], outgoing=True if o.get("O") else None)

    def account_show(self, o: dict[str, Any]) -> None:
        if "t" in o:
            _die("account mode: option '-t' is not allowed/supported")
        rows = self.call("auth.account.list")
        lines = ["Account list:"] + [f"    {r['user']}" for r in reversed(rows)]
        self.write("".join(line + "\n" for line in lines))

    # -------------------------------------------------------------------------- sessions

    def session_show(self, o: dict[str, Any]) -> None:
        self.connection_show(o)

    def connection_show(self, o: dict[str, Any]) -> None:
        tid = self._tid(o)
        sessions = self.call("session.list", target=tid)
        if "s" in o:
            sessions = [s for s in sessions if s["tsih"] == o["s"]]
            if not sessions:
                _die("can't find the session")
        lines: list[str] = []
        for s in sessions:
            lines.append(f"Session: {s['tsih']}")
            for c in s.get("connections") or [{}]:
                lines.append(f"    Connection: {c.get('cid', 0)}")
                lines.append(f"        Initiator: {s['initiator_name']}")
                lines.append(
                    f"        IP Address: {c.get('initiator_address', s['initiator_address'])}"
                )
        self.write("".join(line + "\n" for line in lines))

    def connection_delete(self, o: dict[str, Any]) -> None:
        self._tid(o)
        if "s" not in o:
            _die("'sid' option is necessary")
        self.call("session.close", tsih=o["s"])

    # -------------------------------------------------------------------------- portals

    def _portal_param(self, o: dict[str, Any]) -> tuple[str, int]:
        params = dict(kv.split("=", 1) for kv in str(o.get("P", "")).split(",") if "=" in kv)
        value = params.get("portal")
        if not value:
            _die("invalid request", detail="give --param portal=<host>:<port>")
        try:
            return parse_hostport(value, resolve=False)
        except ValueError as e:
            _die("invalid request", detail=f"bad portal {value!r}: {e}")

    def portal_new(self, o: dict[str, Any]) -> None:
        host, port = self._portal_param(o)
        self.call("portal.add", host=host, port=port)

    def portal_delete(self, o: dict[str, Any]) -> None:
        host, port = self._portal_param(o)
        self.call("portal.delete", host=host, port=port)

    def portal_show(self, o: dict[str, Any]) -> None:
        rows = self.call("portal.list")
        for p in reversed(rows):  # tgt lists the newest first
            host = f"[{p['host']}]" if ":" in p["host"] else p["host"]
            self.write(f"Portal: {host}:{p['port']},1\n")

    # -------------------------------------------------------------------------- system

    def system_show(self, o: dict[str, Any]) -> None:
        info = self.call("sys.show")
        lines = [
            "System:",
            "    State: ready",
            "    debug: off",
            "LLDs:",
            "    iscsi: ready",
            "Backing stores:",
            "    rdwr",
            "    aio",
            "    glfs",
            "    memory",
            "Device types:",
            "    disk",
            "iSNS:",
            "    iSNS=Off",
            f"gluster-iscsi: {info['version']} pid {info['pid']} state dir {info['state_dir']}",
        ]
        self.write("".join(line + "\n" for line in lines))

    def lld_start(self, o: dict[str, Any]) -> None:
        self.call("ping")


def _mb(size: int | None) -> int:
    return ((size or 0) + 500_000) // 1_000_000


def format_target(t: dict[str, Any]) -> list[str]:
    """tgtadm --op show --mode target for one target (tgt's layout, line for line)."""
    out = [
        f"Target {t['tid']}: {t['name']}",
        "    System information:",
        "        Driver: iscsi",
        "        State: ready",
        "    I_T nexus information:",
    ]
    for s in t.get("sessions", []):
        out.append(f"        I_T nexus: {s['tsih']}")
        out.append(f"            Initiator: {s['initiator_name']} alias: none")
        for c in s.get("connections") or [{}]:
            out.append(f"            Connection: {c.get('cid', 0)}")
            out.append(
                f"                IP Address: {c.get('initiator_address', s.get('initiator_address'))}"
            )
    out.append("    LUN information:")
    luns = t.get("luns", [])
    if not any(lu["lun"] == 0 for lu in luns):
        out += _lun_block(0, "controller", f"IET     {t['tid']:04x}0000", f"beaf{t['tid']}0", 0, 1,
                          True, False, "null", "None", False)  # fmt: skip
    for lu in luns:
        out += _lun_block(
            lu["lun"], "disk", f"GLUSTER {lu.get('naa') or lu['uuid'].replace('-', '')}",
            lu["serial"], lu.get("size"), lu["block_size"], lu.get("online", True), lu["read_only"],
            lu["bstype"], lu["backing"], bool(lu.get("thin_provisioning")),
        )  # fmt: skip
    out.append("    Account information:")
    for u in t.get("incoming", []):
        out.append(f"        {u}")
    if t.get("outgoing"):
        out.append(f"        {t['outgoing']} (outgoing)")
    out.append("    ACL information:")
    for r in t.get("acl", []):
        out.append(f"        {r.get('network') or r.get('initiator')}")
    return out


def _lun_block(n: int, kind: str, scsi_id: str, sn: str, size: int | None, bs: int, online: bool,
               ro: bool, bstype: str, path: str, thin: bool) -> list[str]:  # fmt: skip
    """One LUN as tgt shows it. Thin-provisioning is what the LU reports: READ CAPACITY(16)
    LBPME and UNMAP, both there when the store can deallocate (punch holes, discard)."""
    yn = {True: "Yes", False: "No"}
    return [
        f"        LUN: {n}",
        f"            Type: {kind}",
        f"            SCSI ID: {scsi_id}",
        f"            SCSI SN: {sn}",
        f"            Size: {_mb(size)} MB, Block size: {bs}",
        f"            Online: {yn[bool(online)]}",
        "            Removable media: No",
        "            Prevent removal: No",
        f"            Readonly: {yn[bool(ro)]}",
        "            SWP: No",
        f"            Thin-provisioning: {yn[thin]}",
        f"            Backing store type: {bstype}",
        f"            Backing store path: {path}",
        "            Backing store flags: ",
    ]


def run(argv: list[str], client: Client) -> tuple[int, str, str]:
    """Run tgtadm ``argv``; return (exit status, stdout, stderr). (For tests and the CLI.)"""
    out: list[str] = []
    err: list[str] = []
    try:
        Tgtadm(client, out.append, lambda s: err.append(s + "\n")).run(parse(argv))
        code = 0
    except TgtadmExit as e:
        code = e.code
        err += [line + "\n" for line in e.lines]
    return code, "".join(out), "".join(err)


@click.command(
    "tgtadm",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },  # fmt: skip
    add_help_option=False,
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def tgtadm(ctx: click.Context, argv: tuple[str, ...]) -> None:
    """tgt's tgtadm, answering from this daemon (try: gluster-iscsi tgtadm --help)."""
    c = ctx.find_object(Ctx)
    assert c is not None
    code, out, err = run(list(argv), c.client())
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    sys.exit(code)
