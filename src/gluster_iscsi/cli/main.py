"""The gluster-iscsi command line: a thin client of the daemon's control API.

\b
Verbs: create/delete a named object (target, lun, auth account-create), add/remove an
entry of a list (acl rule, portal), list/show to look, set/unset a value, bind/unbind a
CHAP account; every command that prints state takes --json (docs/CLI-JSON.md).

Exit status (scripts can rely on it; --json also prints the error as JSON):

\b
  0  success (also: --exist-ok / --missing-ok turned "already so" into success)
  1  internal error            5  already exists
  2  usage / bad request       6  invalid value (name, size, secret, address ...)
  3  daemon not running        7  busy (e.g. sessions logged in)
  4  not found                 8  timed out       9  store or address unavailable
"""

from __future__ import annotations

import copy
import getpass
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..control import config as cfgmod
from ..control.client import default_timeout
from ..control.protocol import CODES, ApiError
from ..model.names import is_network
from .context import Ctx
from .manpage import man
from .output import emit_json, fail, human_size, table
from .serve import parse_hostport, serve
from .systemd import systemd
from .tgtadm import tgtadm


def _call(op: str, *, as_json: bool = False, ok_codes: tuple[str, ...] = (), **args: Any) -> Any:
    ctx = click.get_current_context().find_object(Ctx)
    assert ctx is not None
    try:
        return ctx.client().call(op, **{k: v for k, v in args.items() if v is not None})
    except ApiError as e:
        if e.code in ok_codes:
            click.echo(f"{e.message} (nothing to do)", err=True)
            sys.exit(0)
        fail(e, as_json=as_json)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")(f)


def _changes(result: dict[str, Any], as_json: bool, summary: str) -> None:
    if as_json:
        emit_json(result)
        return
    for w in result.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    click.echo(summary)


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=cfgmod.STATE_DIR_ENV,
    default=cfgmod.DEFAULT_STATE_DIR,
    show_default=True,
    help="The daemon's state directory (config, control socket). Env: GLUSTER_ISCSI_STATE_DIR.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for the daemon on each call (default 10, env GLUSTER_ISCSI_TIMEOUT).",
)
@click.version_option(package_name="gluster-iscsi")
@click.pass_context
def main(ctx: click.Context, state_dir: Path, timeout: float | None) -> None:
    ctx.obj = Ctx(state_dir, timeout if timeout is not None else default_timeout())


# ------------------------------------------------------------------------------ status


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Is the daemon running? Version, counts, portals."""
    info = _call("sys.show", as_json=as_json)
    if as_json:
        emit_json(info)
        return
    click.echo(
        f"gluster-iscsi {info['version']} running (pid {info['pid']}) at {info['state_dir']}"
    )
    click.echo(f"{info['targets']} target(s), {info['luns']} LUN(s), {info['sessions']} session(s)")
    ring = info.get("io_uring") or {}
    if ring.get("available"):
        click.echo(f"file I/O: io_uring for lone commands on FUSE files ({ring['calls']} so far)")
    else:
        click.echo("file I/O: worker threads" + ("" if ring.get("enabled") else " (--no-io-uring)"))
    gfa = info.get("gfapi_async") or {}
    if gfa:
        if not gfa.get("enabled"):
            how = "worker threads (--no-gfapi-async)"
        elif not gfa.get("supported"):
            how = "worker threads (pure-Python build: scripts/install compiles the C module)"
        elif gfa.get("in_use"):
            how = f"asynchronous libgfapi calls ({gfa['calls']} so far)"
        else:
            how = "asynchronous libgfapi calls (from the first gluster:// command)"
        opts = gfa.get("client_options")
        if opts:
            how += f"; client options {' '.join(opts)}"
        click.echo(f"gfapi I/O: {how}")
    sched = info.get("scheduling")
    if sched and sched.get("gfapi_event_threads_by_policy"):
        counts = ", ".join(f"{n} {p}"
                           for p, n in sorted(sched["gfapi_event_threads_by_policy"].items()))
        click.echo(f"libgfapi event threads: {counts} "
                   f"(--gfapi-sched-policy {sched['gfapi_event_threads']})"
                   + (f"; the kernel refused batch: {sched['refused']}" if sched.get("refused")
                      else ""))
    rc = info.get("read_cache")
    if rc and rc.get("luns"):
        from ..backstore.cache import summary_line

        click.echo(summary_line(rc))
        ct = info.get("cache_target")
        if ct:
            click.echo(cache_target_line(ct))
    mem, conns = info.get("memory"), info.get("connections")
    if mem:
        click.echo(f"memory for commands' data: {human_size(mem['in_use'])} in use (peak "
                   f"{human_size(mem['peak'])}) of {human_size(mem['budget'])}, at most "
                   f"{human_size(mem['session_share'])} per session")
    wb = info.get("write_behind")
    if wb is not None:
        click.echo("write-behind: " + (f"{human_size(wb['window'])} per gfapi LUN outside a group "
                                       "(volatile until SYNCHRONIZE CACHE or FUA)"
                                       if wb["window"] else "off (--write-behind 0)"))
    if conns:
        per_host = f"{conns['max_per_host']} per address, " if "max_per_host" in conns else ""
        click.echo(f"connections: {conns['open']} of at most {conns['max']} ({per_host}at most "
                   f"{conns['max_prelogin']} logging in, {conns['max_prelogin_per_host']} "
                   "of those per address)")
    g = info.get("group")
    if g:
        state = (f"definition version {g['applied_version']} in force" if g["active"]
                 else "joined: restart the daemon to serve as a member")
        click.echo(f"gateway {g['gateway']} (number {g['number']}) of group {g['name'] or '?'}"
                   f" at {g['location']}: {state}"
                   + (f"; NOT IN FORCE: {g['error']}" if g.get("error") else ""))
        if g.get("duplicate"):
            click.echo(_duplicate_text(g["duplicate"]))
        for key, owner in sorted((g.get("hung_owners") or {}).items()):
            click.echo(f"LUN {key}: owner {owner} holds its lock without renewing (hung?): "
                       "kill it (a watchdog or an admin)")
    for p in info["portals"]:
        click.echo(
            f"portal {p['host']}:{p['port']}"
            + (f" advertised as {p['advertise']}" if p.get("advertise") else "")
        )


# ------------------------------------------------------------------------------ target


@main.group()
def target() -> None:
    """Targets: create, delete, list, show, set."""


@target.command("create")
@click.argument("name")
@click.option("--tid", type=click.IntRange(1), help="Target id (default: the next free one).")
@click.option("--alias", help="A human-readable TargetAlias.")
@click.option("--force", is_flag=True, help="Accept a name that breaks the iqn./eui./naa. rules.")
@click.option("--exist-ok", is_flag=True, help="Succeed if the target already exists.")
@json_option
def target_create(
    name: str, tid: int | None, alias: str | None, force: bool, exist_ok: bool, as_json: bool
) -> None:
    """Create target NAME (e.g. iqn.2026-11.com.example:storage.disk1)."""
    res = _call(
        "target.create", as_json=as_json, ok_codes=("exists",) if exist_ok else (),
        name=name, tid=tid, alias=alias, force=force or None,
    )  # fmt: skip
    _changes(res, as_json, f"created target {res['name']} (tid {res['tid']})")


@target.command("delete")
@click.argument("target")
@click.option("--force", is_flag=True, help="Close its sessions if any are logged in.")
@click.option("--missing-ok", is_flag=True, help="Succeed if there is no such target.")
@json_option
def target_delete(target: str, force: bool, missing_ok: bool, as_json: bool) -> None:
    """Delete TARGET (name or tid) and its LUN mappings (backing files are kept)."""
    res = _call(
        "target.delete", as_json=as_json, ok_codes=("not_found",) if missing_ok else (),
        target=target, force=force or None,
    )  # fmt: skip
    _changes(res, as_json, f"deleted target {res['name']} (tid {res['tid']})")


@target.command("list")
@json_option
def target_list(as_json: bool) -> None:
    """All targets, one line each."""
    rows = _call("target.list", as_json=as_json)
    if as_json:
        emit_json(rows)
        return
    click.echo(
        table(
            ["TID", "NAME", "LUNS", "SIZE", "ACL", "CHAP", "SESSIONS"],
            [
                [
                    r["tid"],
                    r["name"],
                    r["luns"],
                    human_size(r["size"]),
                    ",".join(r["acl"]) or "(closed)",
                    "yes" if r["chap"] else "no",
                    r["sessions"],
                ]
                for r in rows
            ],
        )  # fmt: skip
    )


@target.command("show")
@click.argument("target")
@click.option("--show-secrets", is_flag=True, help="Include CHAP secrets.")
@json_option
def target_show(target: str, show_secrets: bool, as_json: bool) -> None:
    """Everything about one TARGET: LUNs, ACL, CHAP, parameters, sessions."""
    t = _call("target.show", as_json=as_json, target=target, show_secrets=show_secrets or None)
    if as_json:
        emit_json(t)
        return
    click.echo(f"Target {t['tid']}: {t['name']}" + (f" (alias {t['alias']})" if t["alias"] else ""))
    click.echo("  LUNs:")
    if t["luns"]:
        click.echo(_indent(table(
            ["LUN", "SIZE", "TYPE", "BACKING", "RO", "BLOCK", "SERIAL", "ONLINE"],
            [[x["lun"], human_size(x["size"]), x["bstype"], x["backing"], "yes" if x["read_only"] else "no",
              x["block_size"], x["serial"], "yes" if x["online"] else "NO"] for x in t["luns"]],
        ), 4))  # fmt: skip
    else:
        click.echo("    (none)")
    click.echo("  ACL:")
    for r in t["acl"] or [{"network": "(none: nobody may log in; add a rule with 'acl add')"}]:
        extra = f" (CHAP {', '.join(r['incoming'])})" if r.get("incoming") else ""
        click.echo(f"    {r.get('initiator') or r['network']}{extra}")
    secrets = t.get("secrets", {})

    def acct(u: str) -> str:
        return f"{u} (secret {secrets[u]})" if u in secrets else u

    click.echo("  CHAP: " + (
        ("incoming " + ", ".join(acct(u) for u in t["incoming"])) if t["incoming"] else "none"
    ) + (f"; outgoing {acct(t['outgoing'])}" if t["outgoing"] else ""))  # fmt: skip
    if t["params"]:
        click.echo("  Parameters: " + ", ".join(f"{k}={v}" for k, v in t["params"].items()))
    click.echo(f"  Sessions: {len(t['sessions'])}")
    for s in t["sessions"]:
        click.echo(f"    TSIH {s['tsih']} {s['initiator_name']} from {s['initiator_address']}")


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


@target.command("set")
@click.argument("target")
@click.option("--alias", help="The new TargetAlias.")
@click.option("--no-alias", is_flag=True, help="Remove the alias.")
@json_option
def target_set(target: str, alias: str | None, no_alias: bool, as_json: bool) -> None:
    """Change TARGET's alias."""
    res = _call(
        "target.update", as_json=as_json, target=target, alias=alias, clear_alias=no_alias or None
    )
    _changes(res, as_json, "\n".join(c["text"] for c in res["changes"]) or "no change")


# ------------------------------------------------------------------------------ lun


@main.group()
def lun() -> None:
    """Logical units: create, delete, list, resize."""


@lun.command("create")
@click.argument("target")
@click.argument("backing")
@click.option(
    "--lun",
    "lun_id",
    type=click.IntRange(0, cfgmod.MAX_LUN),
    help="LUN number (default: next free from 1).",
)
@click.option(
    "--bstype", type=click.Choice(cfgmod.BSTYPES), help="Backing store type (guessed from BACKING)."
)
@click.option("--size", help="Create/grow the backing file to this size (10GiB, 500M, ...).")
@click.option(
    "--prealloc",
    type=click.Choice(["sparse", "falloc", "full"]),
    default="sparse",
    show_default=True,
    help="With --size: sparse (allocate on write), falloc (reserve blocks) or full (write zeroes).",
)
@click.option("--read-only", is_flag=True, help="Export the LUN write-protected.")
@click.option(
    "--block-size",
    type=click.Choice(["512", "1024", "2048", "4096"]),
    default="512",
    show_default=True,
    help="Logical block size in bytes.",
)
@click.option("--uuid", help="LUN identity (WWID); give the same on every gateway exporting it.")
@click.option("--serial", help="SCSI unit serial number (default: from the UUID).")
@click.option(
    "--exist-ok", is_flag=True, help="Succeed if that LUN number is taken (not compared)."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="With --size: throw away the contents of an existing backing file and provision it"
    " anew (without it, a file with data is refused).",
)
@json_option
def lun_create(target: str, backing: str, lun_id: int | None, bstype: str | None, size: str | None,
               prealloc: str, read_only: bool, block_size: str, uuid: str | None, serial: str | None,
               exist_ok: bool, overwrite: bool, as_json: bool) -> None:  # fmt: skip
    """Export BACKING as a new LUN of TARGET.

    \b
    BACKING is a file or block device path (a relative one is taken from the current
    directory and stored absolute), memory:SIZE, gluster://host/volume/path or tgt's
    volume@host:path. With --size a missing file is created; an existing file with data is
    refused unless --overwrite.
    """
    if size and prealloc != "sparse":  # writing zeroes over a big file takes a while
        ctx = click.get_current_context().find_object(Ctx)
        assert ctx is not None
        ctx.timeout = max(ctx.timeout, 600.0)
    res = _call(
        "lun.create", as_json=as_json, ok_codes=("exists",) if exist_ok else (),
        target=target, backing=backing, lun=lun_id, bstype=bstype, size=size,
        create=True if size and not backing.startswith("memory") else None,
        prealloc=prealloc, read_only=read_only or None, block_size=int(block_size),
        uuid=uuid, serial=serial, overwrite=overwrite or None,
    )  # fmt: skip
    _changes(res, as_json, f"created LUN {res['lun']} of {res['target']}")


@lun.command("delete")
@click.argument("target")
@click.argument("lun_id", metavar="LUN", type=int)
@click.option("--missing-ok", is_flag=True, help="Succeed if there is no such LUN.")
@json_option
def lun_delete(target: str, lun_id: int, missing_ok: bool, as_json: bool) -> None:
    """Remove LUN from TARGET (the backing file is kept)."""
    res = _call("lun.delete", as_json=as_json, ok_codes=("not_found",) if missing_ok else (),
                target=target, lun=lun_id)  # fmt: skip
    _changes(res, as_json, f"deleted LUN {res['lun']} of {res['target']}")


@lun.command("list")
@click.argument("target", required=False)
@json_option
def lun_list(target: str | None, as_json: bool) -> None:
    """LUNs of TARGET (or of every target)."""
    rows = _call("lun.list", as_json=as_json, target=target)
    if as_json:
        emit_json(rows)
        return
    click.echo(table(
        ["TID", "TARGET", "LUN", "SIZE", "TYPE", "BACKING", "RO", "ONLINE"],
        [[r["tid"], r["target"], r["lun"], human_size(r["size"]), r["bstype"], r["backing"],
          "yes" if r["read_only"] else "no", "yes" if r["online"] else "NO"] for r in rows],
    ))  # fmt: skip


@lun.command("stats")
@click.argument("target", required=False)
@click.argument("lun_id", metavar="[LUN]", type=int, required=False)
@json_option
def lun_stats(target: str | None, lun_id: int | None, as_json: bool) -> None:
    """Counters of every LUN, of TARGET's, or of one LUN since the daemon started: commands,
    bytes, errors by sense key, I/O timeouts, latency (the numbers serve --metrics-listen
    exports)."""
    if lun_id is not None and target is None:  # pragma: no cover - click fills TARGET first
        raise click.UsageError("give TARGET with LUN")
    rows = _call("lun.stats", as_json=as_json, target=target, lun=lun_id)
    if as_json:
        emit_json(rows)
        return
    click.echo(table(
        ["TARGET", "LUN", "READS", "WRITES", "OTHER", "READ", "WRITTEN", "ERRORS", "TIMEOUTS",
         "IN FLIGHT", "MEAN LATENCY"],
        [[r["target"], r["lun"], r["reads"], r["writes"], r["others"], human_size(r["read_bytes"]),
          human_size(r["write_bytes"]), _errors(r), r["io_timeouts"], r["in_flight"],
          _mean_latency(r)] for r in rows],
    ))  # fmt: skip


def _errors(r: dict[str, Any]) -> str:
    parts = [f"{k}={n}" for k, n in sorted(r["errors"].items())]
    if r["busy"]:
        parts.append(f"busy={r['busy']}")
    return ",".join(parts) or "0"


def _mean_latency(r: dict[str, Any]) -> str:
    lat = r["latency"]
    if not lat["count"]:
        return "-"
    us = lat["sum_seconds"] / lat["count"] * 1e6
    return f"{us:.0f} us" if us < 10000 else f"{us / 1000:.1f} ms"


@lun.command("resize")
@click.argument("target")
@click.argument("lun_id", metavar="LUN", type=int)
@click.argument("size")
@json_option
def lun_resize(target: str, lun_id: int, size: str, as_json: bool) -> None:
    """Grow LUN of TARGET online to SIZE (initiators get a capacity-changed notice)."""
    res = _call("lun.resize", as_json=as_json, target=target, lun=lun_id, size=size)
    _changes(res, as_json, f"LUN {res['lun']} of {res['target']} is now {human_size(res['size'])}")


@lun.command("move")
@click.argument("target")
@click.argument("lun_id", metavar="LUN", type=int)
@click.option("--to", "to", required=True, metavar="GATEWAY",
              help="The gateway of the group that is to own the LUN.")
@json_option
def lun_move(target: str, lun_id: int, to: str, as_json: bool) -> None:
    """Move the ownership of a group LUN to gateway GATEWAY (a planned move: initiators
    see the paths change state, I/O goes on)."""
    res = _call("lun.move", as_json=as_json, target=target, lun=lun_id, to=to,
                timeout=_long_timeout())
    if as_json:
        emit_json(res)
        return
    # the owner hands the LUN over at its next beat: asked here, not done yet
    click.echo(f"LUN {res['lun']} of {res['target']}: move to {res['to']} asked of its owner;"
               " 'gluster-iscsi group show' says when it is done")


# ------------------------------------------------------------------------------ acl


@main.group()
def acl() -> None:
    """Which initiators may log in to a target (by name, address, CIDR or ALL)."""


def _rule_args(rule: str) -> dict[str, str]:
    # Anything shaped like an address (digits, dots, colons, a /prefix) is meant as one, even
    # when it is not a valid one (10.0.0.0/33): the daemon then says the network is invalid,
    # not that an IQN is.
    looks_like_address = re.match(r"^[0-9A-Fa-f.:]+(/\d*)?(%\S*)?$", rule) is not None and any(
        c in rule for c in ".:/"
    )
    return {"network": rule} if is_network(rule) or looks_like_address else {"initiator": rule}


@acl.command("add")
@click.argument("target")
@click.argument("rule")
@click.option("--force", is_flag=True, help="Accept an initiator name that breaks the rules.")
@click.option("--exist-ok", is_flag=True, help="Succeed if RULE is already there.")
@json_option
def acl_add(target: str, rule: str, force: bool, exist_ok: bool, as_json: bool) -> None:
    """Allow RULE (an initiator IQN, an address, a CIDR network or ALL) to log in to TARGET."""
    res = _call("acl.add", as_json=as_json, ok_codes=("exists",) if exist_ok else (),
                target=target, force=force or None, **_rule_args(rule))  # fmt: skip
    _changes(res, as_json, f"{res['target']}: allowed {rule}")


@acl.command("remove")
@click.argument("target")
@click.argument("rule")
@click.option("--missing-ok", is_flag=True, help="Succeed if RULE is not there.")
@json_option
def acl_remove(target: str, rule: str, missing_ok: bool, as_json: bool) -> None:
    """Remove RULE from TARGET's ACL (sessions already logged in stay)."""
    res = _call("acl.remove", as_json=as_json, ok_codes=("not_found",) if missing_ok else (),
                target=target, **_rule_args(rule))  # fmt: skip
    _changes(res, as_json, f"{res['target']}: removed {rule}")


@acl.command("list")
@click.argument("target")
@json_option
def acl_list(target: str, as_json: bool) -> None:
    """TARGET's ACL: who may log in, and the CHAP accounts of each initiator rule."""
    rules = _call("acl.list", as_json=as_json, target=target)
    if as_json:
        emit_json(rules)
        return
    click.echo(table(["RULE", "KIND", "CHAP"], [
        [r.get("initiator") or r["network"], "initiator" if "initiator" in r else "address",
         ", ".join(r.get("incoming", [])) or "-"] for r in rules
    ]))  # fmt: skip


# ------------------------------------------------------------------------------ auth


@main.group()
def auth() -> None:
    """CHAP accounts, and who must use them (a target, one initiator of it, or discovery)."""


def _read_secret(secret: str | None, secret_file: Path | None, as_json: bool = False) -> str:
    if secret_file is not None:
        try:
            return secret_file.read_text().strip("\n")
        except (OSError, UnicodeDecodeError) as e:
            fail(ApiError("invalid", f"cannot read the secret file {secret_file}: "
                                     f"{getattr(e, 'strerror', None) or e}",
                          hint="give a readable file whose first line is the secret"),
                 as_json=as_json)
    if secret is not None:
        return secret
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("CHAP secret (12+ bytes): ")
    if getpass.getpass("again: ") != first:
        raise click.UsageError("the two secrets differ")
    return first


@auth.command("account-create")
@click.argument("user")
@click.option("--secret", help="The secret (visible in ps; prefer --secret-file or stdin).")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the secret from this file (its first line).")
@json_option
def auth_account_add(
    user: str, secret: str | None, secret_file: Path | None, as_json: bool
) -> None:
    """Create CHAP account USER (secret from --secret-file, stdin, or a prompt)."""
    res = _call(
        "auth.account.add", as_json=as_json, user=user, secret=_read_secret(secret, secret_file, as_json)
    )
    _changes(res, as_json, f"created CHAP account {res['user']}")


@auth.command("account-delete")
@click.argument("user")
@json_option
def auth_account_delete(user: str, as_json: bool) -> None:
    """Delete CHAP account USER (and unbind it everywhere)."""
    res = _call("auth.account.delete", as_json=as_json, user=user)
    _changes(res, as_json, f"deleted CHAP account {res['user']}")


@auth.command("account-list")
@click.option("--show-secrets", is_flag=True, help="Include the secrets (else masked).")
@json_option
def auth_account_list(show_secrets: bool, as_json: bool) -> None:
    """CHAP accounts and where each is used."""
    rows = _call("auth.account.list", as_json=as_json, show_secrets=show_secrets or None)
    if as_json:
        emit_json(rows)
        return
    click.echo(table(["USER", "SECRET", "USED BY"], [
        [r["user"], r["secret"], ", ".join(r["used_by"]) or "-"] for r in rows
    ]))  # fmt: skip


def _bind_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--outgoing", is_flag=True, help="The account the target answers with (mutual CHAP)."
    )(f)
    f = click.option("--discovery", is_flag=True, help="For discovery (SendTargets) sessions.")(f)
    f = click.option("--initiator", help="Only for this initiator of the target.")(f)
    f = click.option("--target", "target_ref", help="Target name or tid.")(f)
    return f


@auth.command("bind")
@click.argument("user")
@_bind_options
@json_option
def auth_bind(
    user: str,
    target_ref: str | None,
    initiator: str | None,
    discovery: bool,
    outgoing: bool,
    as_json: bool,
) -> None:
    """Require CHAP account USER on --target (optionally --initiator) or --discovery."""
    if not discovery and not target_ref:
        raise click.UsageError("give --target TARGET or --discovery")
    res = _call("auth.bind", as_json=as_json, user=user, target=target_ref, initiator=initiator,
                discovery=discovery or None, outgoing=outgoing or None)  # fmt: skip
    _changes(res, as_json, f"{res['bound']}: {'answers as' if outgoing else 'accepts'} {user}")


@auth.command("unbind")
@click.argument("user")
@_bind_options
@json_option
def auth_unbind(
    user: str,
    target_ref: str | None,
    initiator: str | None,
    discovery: bool,
    outgoing: bool,
    as_json: bool,
) -> None:
    """Stop using CHAP account USER on --target/--initiator/--discovery."""
    if not discovery and not target_ref:
        raise click.UsageError("give --target TARGET or --discovery")
    res = _call("auth.unbind", as_json=as_json, user=user, target=target_ref, initiator=initiator,
                discovery=discovery or None, outgoing=outgoing or None)  # fmt: skip
    _changes(res, as_json, f"{res['unbound']}: no longer uses {user}")


@auth.command("show")
@click.option("--show-secrets", is_flag=True, help="Include the secrets (else masked).")
@json_option
def auth_show(show_secrets: bool, as_json: bool) -> None:
    """Accounts and where each is required."""
    res = _call("auth.show", as_json=as_json, show_secrets=show_secrets or None)
    if as_json:
        emit_json(res)
        return
    click.echo(table(["USER", "SECRET"], sorted(res["accounts"].items())))
    d = res["discovery"]
    click.echo(f"\ndiscovery: incoming {', '.join(d['incoming']) or 'none (open)'}"
               + (f", outgoing {d['outgoing']}" if d["outgoing"] else ""))  # fmt: skip
    for t in res["targets"]:
        click.echo(f"{t['name']}: incoming {', '.join(t['incoming']) or 'none'}"
                   + (f", outgoing {t['outgoing']}" if t["outgoing"] else ""))  # fmt: skip
        for r in t["initiators"]:
            click.echo(f"    {r['initiator']}: incoming {', '.join(r['incoming'])}"
                       + (f", outgoing {r['outgoing']}" if r["outgoing"] else ""))  # fmt: skip


# ------------------------------------------------------------------------------ portal


def _hostport(text: str, *, resolve: bool = False) -> tuple[str, int]:
    """HOST[:PORT] -> (host, port); raises ValueError (BadAddress) with a message for people."""
    return parse_hostport(text, resolve=resolve)


def _address(text: str, as_json: bool, *, resolve: bool = False) -> tuple[str, int]:
    """Parse an address argument or exit 6 (invalid value) with the reason."""
    try:
        return _hostport(text, resolve=resolve)
    except ValueError as e:
        fail(ApiError("invalid", str(e), hint="give HOST[:PORT]: 127.0.0.1:3260, [::1]:3260, "
                                              "0.0.0.0:3260 (every IPv4 address)"),
             as_json=as_json)
        raise AssertionError from None


@main.group()
def portal() -> None:
    """Listening addresses (and what SendTargets advertises for them)."""


@portal.command("add")
@click.argument("address", metavar="HOST[:PORT]")
@click.option("--advertise", help="host[:port] SendTargets reports (NAT, guests).")
@click.option("--exist-ok", is_flag=True, help="Succeed if the daemon already has that portal.")
@json_option
def portal_add(address: str, advertise: str | None, exist_ok: bool, as_json: bool) -> None:
    """Listen on HOST[:PORT] too (port 3260 if not given; IPv6 in brackets: [::1]:3260)."""
    host, port = _address(address, as_json, resolve=True)
    res = _call("portal.add", as_json=as_json, ok_codes=("exists",) if exist_ok else (),
                host=host, port=port, advertise=advertise)  # fmt: skip
    _changes(res, as_json, f"listening on {address}")


@portal.command("remove")
@click.argument("address", metavar="HOST[:PORT]")
@click.option("--missing-ok", is_flag=True, help="Succeed if there is no such portal.")
@json_option
def portal_remove(address: str, missing_ok: bool, as_json: bool) -> None:
    """Stop listening on HOST[:PORT] (its connections are closed)."""
    host, port = _address(address, as_json)
    res = _call("portal.delete", as_json=as_json, ok_codes=("not_found",) if missing_ok else (),
                host=host, port=port)  # fmt: skip
    _changes(res, as_json, f"closed portal {address}")


@portal.command("list")
@json_option
def portal_list(as_json: bool) -> None:
    """The portals (listening addresses), what SendTargets advertises, and whether each listens."""
    rows = _call("portal.list", as_json=as_json)
    if as_json:
        emit_json(rows)
        return
    click.echo(table(["HOST", "PORT", "ADVERTISE", "LISTENING"], [
        [r["host"], r["port"], r["advertise"] or "-", "yes" if r["listening"] else "NO"] for r in rows
    ]))  # fmt: skip


# ------------------------------------------------------------------------------ session


@main.group()
def session() -> None:
    """Who is logged in where; close a session."""


@session.command("list")
@click.argument("target", required=False)
@json_option
def session_list(target: str | None, as_json: bool) -> None:
    """Sessions logged in to TARGET (or to any target, and discovery sessions)."""
    rows = _call("session.list", as_json=as_json, target=target)
    if as_json:
        emit_json(rows)
        return
    click.echo(table(["TSIH", "ISID", "INITIATOR", "ADDRESS", "TARGET", "PORTAL", "CONNS", "IN FLIGHT",
                      "LOGIN", "COMMANDS", "ERRORS"], [
        [s["tsih"], s["isid"], s["initiator_name"], s["initiator_address"], s.get("target") or "(discovery)",
         s.get("portal"), len(s.get("connections", [])), s.get("commands_in_flight", 0),
         _when(s.get("login_time")), s.get("commands", 0), s.get("errors", 0)] for s in rows
    ]))  # fmt: skip


def _when(t: float | None) -> str:
    """A login time, local, to the second."""
    if t is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


@session.command("show")
@click.argument("tsih", type=int)
@json_option
def session_show(tsih: int, as_json: bool) -> None:
    """One session: login time, negotiated parameters, connections and its counters."""
    rows = _call("session.list", as_json=as_json)
    s = next((x for x in rows if x["tsih"] == tsih), None)
    if s is None:
        fail(
            ApiError(
                "not_found",
                f"no session with TSIH {tsih}",
                hint="'gluster-iscsi session list' shows the sessions",
            ),
            as_json=as_json,
        )
    assert s is not None
    if as_json:
        emit_json(s)
        return
    for k in (
        "tsih",
        "isid",
        "initiator_name",
        "initiator_address",
        "target",
        "portal",
        "commands_in_flight",
    ):
        click.echo(f"{k}: {s.get(k)}")
    click.echo(f"login_time: {_when(s.get('login_time'))}")
    for k in ("commands", "errors", "bytes_in", "bytes_out"):
        click.echo(f"{k}: {s.get(k, 0)}")
    click.echo("negotiated:")
    for k, v in sorted((s.get("params") or {}).items()):
        click.echo(f"    {k}={v}")
    for c in s.get("connections", []):
        click.echo("connection: " + ", ".join(f"{k}={v}" for k, v in c.items()))


@session.command("close")
@click.argument("tsih", type=int)
@json_option
def session_close(tsih: int, as_json: bool) -> None:
    """Close the session with TSIH (its connections are dropped; the initiator may log in again)."""
    res = _call("session.close", as_json=as_json, tsih=tsih)
    _changes(res, as_json, f"closed session {tsih}")


# ------------------------------------------------------------------------------ param


@main.group()
def param() -> None:
    """iSCSI login parameters the target offers (daemon-wide or per target)."""


@param.command("list")
@click.option("--target", "target_ref", help="That target's values (else the daemon-wide ones).")
@json_option
def param_list(target_ref: str | None, as_json: bool) -> None:
    """The login parameters offered, and which are set rather than defaults."""
    res = _call("param.list", as_json=as_json, target=target_ref)
    if as_json:
        emit_json(res)
        return
    click.echo(table(["NAME", "VALUE", "SET"], [
        [k, v, "yes" if k in res["configured"] else "default"] for k, v in sorted(res["params"].items())
    ]))  # fmt: skip


@param.command("set")
@click.argument("name")
@click.argument("value")
@click.option("--target", "target_ref", help="Only for this target (else daemon-wide).")
@json_option
def param_set(name: str, value: str, target_ref: str | None, as_json: bool) -> None:
    """Offer VALUE for login key NAME (new sessions only)."""
    res = _call("param.set", as_json=as_json, name=name, value=value, target=target_ref)
    _changes(res, as_json, f"{res['name']}={res['value']}")


@param.command("unset")
@click.argument("name")
@click.option("--target", "target_ref", help="Only for this target (else daemon-wide).")
@json_option
def param_unset(name: str, target_ref: str | None, as_json: bool) -> None:
    """Offer NAME's default again (new sessions only)."""
    res = _call("param.unset", as_json=as_json, name=name, target=target_ref)
    _changes(res, as_json, f"{res['name']} back to its default")


# ------------------------------------------------------------------------------ config


@main.group("config")
def config_group() -> None:
    """The declarative config: export, apply, reload, validate."""


@config_group.command("export")
@click.option("--show-secrets", is_flag=True, help="Include CHAP secrets (else masked).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write it to this file instead of stdout.")
@json_option
def config_export(show_secrets: bool, output: Path | None, as_json: bool) -> None:
    """Print the running config as JSON (apply it elsewhere with 'config apply').

    The output is JSON with or without --json (accepted like on every command).
    """
    cfg = _call("config.export", as_json=as_json, show_secrets=show_secrets or None)
    text = cfgmod.dumps(cfg)
    if output:
        try:
            output.write_text(text)
            if show_secrets:
                output.chmod(0o600)
        except OSError as e:
            fail(ApiError("invalid", f"cannot write {output}: {e.strerror or e}",
                          hint="give a writable file path with -o, or leave -o out for stdout"),
                 as_json=as_json)
    else:
        click.echo(text, nl=False)


def _read_config_file(path: Path, as_json: bool = False) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() if str(path) != "-" else sys.stdin.read())
    except (OSError, ValueError) as e:
        fail(
            ApiError(
                "invalid", f"cannot read {path}: {e}", hint="give a JSON file from 'config export'"
            ),
            as_json=as_json,
        )
    raise AssertionError


_FORCE_HELP = (
    "Apply even if it closes sessions or connections (a removed target or portal, a removed"
    " or replaced LUN of a target in use)."
)


@config_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@json_option
def config_apply(file: Path, dry_run: bool, force: bool, as_json: bool) -> None:
    """Make the running daemon match FILE, all or nothing (a second run changes nothing)."""
    res = _call(
        "config.apply",
        as_json=as_json,
        config=_read_config_file(file, as_json),
        dry_run=dry_run or None,
        force=force or None,
    )
    _print_changes(res, as_json, dry_run)


def _print_changes(res: dict[str, Any], as_json: bool, dry_run: bool) -> None:
    if as_json:
        emit_json(res)
        return
    if not res["changes"]:
        click.echo("no changes: the daemon already matches")
    for c in res["changes"]:
        click.echo(("would: " if dry_run else "") + c["text"])


@config_group.command("reload")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@json_option
def config_reload(dry_run: bool, force: bool, as_json: bool) -> None:
    """Re-read the saved config file and apply what changed, all or nothing (like SIGHUP)."""
    res = _call("config.reload", as_json=as_json, dry_run=dry_run or None, force=force or None)
    _print_changes(res, as_json, dry_run)


@config_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def config_validate(file: Path, as_json: bool) -> None:
    """Check FILE offline (no daemon needed)."""
    # A file 'config export' wrote has its secrets masked; 'config apply' keeps the daemon's
    # secrets for those accounts, which an offline check cannot see: accept them, with a note.
    doc, masked = cfgmod.fill_redacted(_read_config_file(file, as_json))
    try:
        cfgmod.validate(doc)
    except cfgmod.ConfigError as e:
        fail(ApiError("invalid", str(e), field=e.field), as_json=as_json)
    if as_json:
        emit_json({"ok": True, "file": str(file), "masked_secrets": masked})
        return
    if masked:
        click.echo(
            f"note: the secret of {', '.join(masked)} is masked ({cfgmod.REDACTED}); 'config"
            " apply' keeps the daemon's secret for it (the daemon must have that account)",
            err=True,
        )
    click.echo(f"{file}: valid")


@config_group.command("path")
@json_option
def config_path(as_json: bool) -> None:
    """Where the config file and control socket of --state-dir are."""
    ctx = click.get_current_context().find_object(Ctx)
    assert ctx is not None
    if as_json:
        emit_json({"config": str(cfgmod.config_path(ctx.state_dir)),
                   "socket": str(cfgmod.socket_path(ctx.state_dir))})
        return
    click.echo(cfgmod.config_path(ctx.state_dir))
    click.echo(cfgmod.socket_path(ctx.state_dir))


# ------------------------------------------------------------------------------ group


@main.group()
def group() -> None:
    """A gateway group: several gateways export the same targets and LUNs from one volume.

    \b
    The definition (targets, LUNs, ACLs, CHAP) lives in the group directory on the volume;
    each gateway's own config keeps its portals and how it reaches the volume. In a group,
    target, lun, acl and auth commands change the group's definition, and every gateway
    applies it. See docs/HA.md and the README's two-gateway quick start.
    """


def _daemon_running(as_json: bool = False) -> bool:
    ctx = click.get_current_context().find_object(Ctx)
    assert ctx is not None
    try:
        ctx.client().call("ping")
    except ApiError as e:
        if e.code == "daemon_unavailable":
            return False
        fail(e, as_json=as_json)
    return True


def _state_dir() -> Path:
    ctx = click.get_current_context().find_object(Ctx)
    assert ctx is not None
    return ctx.state_dir


def _long_timeout() -> float:
    """Group calls touch the volume (and a move waits for the other gateway): at least 30 s."""
    ctx = click.get_current_context().find_object(Ctx)
    assert ctx is not None
    return max(ctx.timeout, 30.0)


def _offline(fn: Callable[[], Any], as_json: bool) -> Any:
    """Run a group step in this process (no daemon), its GroupError as an API error."""
    from ..control.group import GroupError

    try:
        return fn()
    except GroupError as e:
        fail(ApiError(e.code, e.message, kind="group", hint=e.hint), as_json=as_json)
    except cfgmod.ConfigError as e:
        fail(ApiError("invalid", str(e), field=e.field), as_json=as_json)


def _join(location: str, gateway: str, number: int | None, addresses: tuple[str, ...],
          as_json: bool) -> dict[str, Any]:
    from ..control import group as groupmod

    addrs = [_check_address(a, as_json) for a in addresses]
    location = _absolute_location(location)
    if _daemon_running(as_json):
        return _call("group.join", as_json=as_json, location=location, gateway=gateway,
                     number=number, addresses=addrs or None, timeout=_long_timeout())
    state_dir = _state_dir()

    def offline() -> dict[str, Any]:
        local = cfgmod.load(state_dir) or cfgmod.empty_config()
        joined, defn = groupmod.join_group(local, location, gateway, number, addrs)
        cfgmod.save(state_dir, cfgmod.validate(joined, stat_files=False))
        return {
            "group": defn.get("name"), "location": location, "gateway": gateway,
            "number": joined["group"]["number"],
            "addresses": defn["gateways"][gateway]["addresses"], "restart_required": False,
            "hint": f"start the daemon: gluster-iscsi --state-dir {state_dir} serve",
        }  # fmt: skip

    return dict(_offline(offline, as_json))


def _absolute_location(location: str) -> str:
    """A group directory path is made absolute here (the daemon runs elsewhere)."""
    import os

    if re.match(r"^gluster(\+[a-z]+)?://", location, re.IGNORECASE):
        return location
    return os.path.abspath(location)


def _check_address(text: str, as_json: bool) -> str:
    try:
        host, port = parse_hostport(text, resolve=False)
    except (click.BadParameter, ValueError) as e:
        fail(ApiError("invalid", f"--address {text}: {e}", kind="address",
                      hint="HOST:PORT, e.g. 192.0.2.10:3260"), as_json=as_json)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _joined(res: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    click.echo(f"gateway {res['gateway']} (number {res['number']}) is in group {res['group']}"
               f" at {res['location']}, reached at {', '.join(res['addresses'])}")
    if res.get("restart_required"):
        click.echo(f"restart required: {res['hint']}")
    elif res.get("hint"):
        click.echo(res["hint"])


@group.command("create")
@click.argument("name")
@click.option("--location", required=True, metavar="LOC",
              help="The group directory: a directory on the volume's FUSE mount (e.g."
              " /mnt/vol/.gluster-iscsi) or gluster://HOST/VOLUME/.gluster-iscsi.")
@click.option("--gateway", metavar="NAME",
              help="Join this gateway as NAME too (default with a running daemon: this"
              " host's short name).")
@click.option("--number", type=click.IntRange(1, 255), help="This gateway's number (default:"
              " the lowest free one).")
@click.option("--address", "addresses", multiple=True, metavar="HOST:PORT",
              help="Where initiators reach this gateway (repeat; default: its portals).")
@click.option("--beat-seconds", type=click.FloatRange(min=0.1), help="How often each gateway"
              " beats and polls the definition (default 1).")
@click.option("--lease-seconds", type=click.FloatRange(min=0.5), help="How long an owner"
              " that cannot beat keeps issuing I/O before it fences itself (default 5; must"
              " stay under the bricks' keepalive and tcp-user-timeout: checked).")
@click.option("--non-owner", type=click.Choice(["standby", "non-optimized"]),
              help="What a gateway that does not own a LUN offers: non-optimized (default:"
              " active, its media commands shipped to the owner, for initiators without ALUA)"
              " or standby (media access refused NOT READY 04/0B).")
@click.option("--skip-volume-check", is_flag=True,
              help="Create the group although the volume's options cannot be read here (no"
              " gluster CLI, glusterd unreachable): lease-seconds is then unchecked (logged,"
              " and recorded in the definition as settings.volume_check: skipped).")
@json_option
def group_create(name: str, location: str, gateway: str | None, number: int | None,
                 addresses: tuple[str, ...], beat_seconds: float | None,
                 lease_seconds: float | None, non_owner: str | None,
                 skip_volume_check: bool, as_json: bool) -> None:
    """Create gateway group NAME with its directory at LOC; with a running daemon (or
    --gateway) this gateway joins it."""
    import socket

    from ..control import group as groupmod

    location = _absolute_location(location)
    for a in addresses:  # bad input refused before the group exists
        _check_address(a, as_json)
    given: dict[str, Any] = {"beat_seconds": beat_seconds, "lease_seconds": lease_seconds,
                             "non_owner": non_owner}
    settings = {k: v for k, v in given.items() if v is not None}
    defn = _offline(lambda: groupmod.create_group(location, name, settings,
                                                  skip_volume_check=skip_volume_check),
                    as_json)
    out: dict[str, Any] = {"group": defn.get("name"), "location": location,
                           "version": defn.get("version"), "joined": None}
    if not as_json:  # said before the join, which may fail: the group is there either way
        click.echo(f"created group {out['group']} at {location}")
    running = _daemon_running(as_json)
    if gateway is None and running:
        gateway = socket.gethostname().split(".")[0]
    if gateway is not None:
        out["joined"] = _join(location, gateway, number, addresses, as_json)
    if as_json:
        emit_json(out)
        return
    if out["joined"]:
        _joined(out["joined"], False)
    else:
        click.echo(f"join gateways with: gluster-iscsi group join {location} --gateway NAME")


@group.command("join")
@click.argument("location", metavar="LOC")
@click.option("--gateway", required=True, metavar="NAME",
              help="This gateway's name in the group (unique in it).")
@click.option("--number", type=click.IntRange(1, 255), help="This gateway's number: its TPGT,"
              " relative port and port group (default: the lowest free one).")
@click.option("--address", "addresses", multiple=True, metavar="HOST:PORT",
              help="Where initiators reach this gateway (repeat; default: its portals).")
@json_option
def group_join(location: str, gateway: str, number: int | None, addresses: tuple[str, ...],
               as_json: bool) -> None:
    """Join this gateway to the group whose directory is LOC. A running daemon takes it
    in when restarted (the command says so)."""
    _joined(_join(location, gateway, number, addresses, as_json), as_json)


@group.command("leave")
@click.option("--force", is_flag=True, help="Close the sessions on the group's targets here.")
@json_option
def group_leave(force: bool, as_json: bool) -> None:
    """Take this gateway out of its group (the group's targets stop here)."""
    from ..control import group as groupmod

    if _daemon_running(as_json):
        res = _call("group.leave", as_json=as_json, force=force or None,
                    timeout=_long_timeout())
    else:
        state_dir = _state_dir()

        def offline() -> dict[str, Any]:
            local = cfgmod.load(state_dir) or cfgmod.empty_config()
            left, defn = groupmod.leave_group(local)
            cfgmod.save(state_dir, cfgmod.validate(left, stat_files=False))
            mine = local["group"]
            return {"group": (defn or {}).get("name"), "location": mine["location"],
                    "gateway": mine["gateway"], "restart_required": False, "hint": None}

        res = _offline(offline, as_json)
    if as_json:
        emit_json(res)
        return
    click.echo(f"gateway {res['gateway']} left group {res['group']}")
    if res.get("restart_required"):
        click.echo(f"restart required: {res['hint']}")


def _age(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


@group.command("show")
@json_option
def group_show(as_json: bool) -> None:
    """The group: its gateways (number, addresses, last beat, state) and LUNs (owner,
    epoch, preferred gateway, sessions)."""
    g = _call("group.show", as_json=as_json, timeout=_long_timeout())
    if as_json:
        emit_json(g)
        return
    click.echo(f"group {g['name']} (definition version {g['version']}) at {g['location']};"
               f" this is gateway {g['gateway']} ({g['access']})")
    if g.get("error"):
        click.echo(f"NOT IN FORCE here: {g['error']}")
    if g.get("duplicate"):
        click.echo(_duplicate_text(g["duplicate"]))
    click.echo(table(
        ["NUMBER", "GATEWAY", "ADDRESSES", "LAST BEAT", "STATE"],
        [[x["number"], x["name"] + (" *" if x["this"] else ""), ",".join(x["addresses"]),
          _age(x["beat_age"]), x["state"]] for x in g["gateways"]],
    ))  # fmt: skip
    if g["luns"]:
        click.echo("")
        click.echo(table(
            ["TARGET", "LUN", "PATH", "OWNER", "EPOCH", "PREFERRED", "SESSIONS"],
            [[x["target"], x["lun"], x["path"], _owner_text(x), x["epoch"], x["preferred"],
              ",".join(f"{k}:{v}" for k, v in sorted(x["sessions"].items()))]
             for x in g["luns"]],
        ))  # fmt: skip


def cache_target_line(ct: dict[str, Any]) -> str:
    """The read caches' memory target in one line of ``status``: what they hold, the target and
    what sets it, the pressure trigger, the last shrink."""
    src = ct["source"]
    how = ("fixed by --gfapi-cache-total" if ct["fixed"] else
           f"from {src}, followed every second; pressure trigger {ct['pressure_trigger']}")
    last = ct.get("last_shrink")
    shrink = (f"; last shrink {last['seconds_ago']:.0f} s ago by "
              f"{human_size(last['bytes'])} ({last['reason']})" if last else "")
    return (f"read cache memory: {human_size(ct['held'])} held of a target of "
            f"{human_size(ct['target'] or 0)} ({how}){shrink}")


def _duplicate_text(d: dict[str, Any]) -> str:
    who = f"gateway {d.get('gateway')} (number {d.get('number')}) on {d.get('host')} pid {d.get('pid')}"
    if d.get("yielded"):
        return f"DUPLICATE: {who} ran first; this daemon stands down (owns no LUN): stop it"
    return f"DUPLICATE: {who} runs as this gateway too (it stands down): stop it"


def _owner_text(lun: dict[str, Any]) -> str:
    """The OWNER column: a hung owner (holds the lock, no longer renews) says so."""
    owner = str(lun.get("owner") or "-")
    if lun.get("owner_hung"):
        owner += f" (HUNG? silent {_age(lun.get('owner_silent_for'))})"
    return owner


@group.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Say which LUNs would move, move none.")
@json_option
def group_rebalance(dry_run: bool, as_json: bool) -> None:
    """Move every LUN to its preferred gateway (assigned round robin by gateway number when
    the LUN was made; a LUN whose preferred gateway left goes round robin too)."""
    res = _call("group.rebalance", as_json=as_json, dry_run=dry_run or None,
                timeout=max(_long_timeout(), 120.0))
    failed = [m for m in res["moves"] if m.get("error")]
    if as_json:
        emit_json(res)
    else:
        if not res["moves"]:
            click.echo("every LUN is on its preferred gateway")
        for m in res["moves"]:
            # a move is asked of the LUN's owner, which hands it over at its next beat
            verb = ("would move" if dry_run else "NOT moved" if m.get("error")
                    else "move asked:")
            click.echo(f"{verb} LUN {m['lun']} of {m['target']}: {m['from'] or '(none)'} ->"
                       f" {m['to']}" + (f" ({m['error']})" if m.get("error") else ""))
        if res["moves"] and not dry_run and not failed:
            click.echo("'gluster-iscsi group show' says when the moves are done")
    if failed:  # the other moves were asked; the exit status says not all were
        sys.exit(CODES["unavailable"])


@group.command("initiator-config")
@click.option("--location", metavar="LOC", help="Read the group at LOC directly (no daemon"
              " needed: for an initiator host that mounts the volume).")
@json_option
def group_initiator_config(location: str | None, as_json: bool) -> None:
    """What an initiator host needs: a multipath.conf device section (ALUA) and the
    iscsiadm discovery and login lines for every gateway."""
    from ..control import group as groupmod

    if location is not None:
        location = _absolute_location(location)

        def read() -> dict[str, Any]:
            shared = groupmod.open_location(location)
            try:
                return groupmod.initiator_config(groupmod.load_definition(shared, location))
            finally:
                shared.close()

        res = _offline(read, as_json)
    else:
        res = _call("group.initiator_config", as_json=as_json)
    if as_json:
        emit_json(res)
        return
    click.echo("# /etc/multipath.conf (then: systemctl reload multipathd)")
    click.echo(res["multipath_conf"], nl=False)
    click.echo("")
    click.echo("# discovery and login, every gateway")
    for line in res["iscsiadm"]:
        click.echo(line)


# ------------------------------------------------------------------------------ plug-ins


def _alias(group: click.Group, old: str, new: str) -> None:
    """Keep OLD working as a hidden alias of NEW (renamed to keep one verb vocabulary)."""
    cmd = copy.copy(group.commands[new])
    cmd.name = old
    cmd.hidden = True
    cmd.help = f"Old name of '{new}' (kept so scripts do not break).\n\n{cmd.help or ''}"
    group.add_command(cmd, old)


#: Renamed commands: (group, old name, new name). One vocabulary: create/delete for named
#: objects, add/remove for entries of a list.
ALIASES = [(portal, "delete", "remove"), (auth, "account-add", "account-create")]
for _group, _old, _new in ALIASES:
    _alias(_group, _old, _new)


main.add_command(tgtadm)
main.add_command(serve)
main.add_command(systemd)
main.add_command(man)

__all__ = ["main"]
