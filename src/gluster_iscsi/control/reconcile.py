"""Make a running daemon match a desired config, touching only what differs, all or nothing.

``Reconciler(daemon).apply(desired)`` compares ``desired`` with what that reconciler last
applied to the daemon (a :class:`~.interface.DaemonControl`) and changes only the
difference, so a reload after adding one target leaves every
other target, LUN and session alone. ``config apply``, ``config reload``, SIGHUP and every
single-object op of the control API go through it. Steps:

0. *diff* (:func:`diff`): a :class:`Plan`, whose ``changes`` are the objects the API
   returns (schema in docs/API.md, "changes"), and the *busy check* (:func:`_busy`): a
   change that would drop sessions or connections (a removed target with sessions, a
   removed or replaced LUN of a target with sessions, a removed portal with connections)
   raises :class:`BusyError` unless ``force``, before anything is opened.
1. *prepare* (:func:`_prepare`): open every new backing store and build its LogicalUnit,
   check every grow (no shrinking), and bind every new portal's sockets, listening but not
   accepting (blocking work in the daemon's store executor). The running daemon is not
   touched; on any failure :func:`_rollback` closes what was opened and bound.
2. *commit* (:func:`_commit`): grows first (the only step that calls a store), then
   in-memory edits in a safe order (params, auth, changed targets, added targets, advertise
   addresses, new listeners last so they see complete targets; a new portal whose address
   only a removed portal holds is bound after closing that one), each recording its undo;
   a failure undoes them in reverse and the prepared objects are closed. Only then the
   steps that cannot be undone: removed targets and portals (closing their sessions),
   closing replaced stores, announcing new capacities. The applied config (what the API
   saves) becomes ``desired`` only at the very end, so only what is in force is saved.

The restore at start is the one exception to "nothing": a LUN whose store cannot open
then stays offline (and is retried by every later apply) so the other targets start.

ACL and CHAP edits are attribute assignments on the live ``Target``: the iSCSI core reads
them at each login, and sessions already logged in keep running (as tgt does).

Decision (issue 15): the plan works on the validated config dicts of ``config.py``, not on
a typed object tree yet. The all-or-nothing guarantee comes from the prepare/commit/undo
structure, not from the types, and the typed tree (issue 17) changes config.py, the API
and this module together: doing it here would have touched every op another change is
editing at the same time. The steps above are the shape that tree will slot into.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.targets import AccessRule, ChapAccount, Portal, Target, TargetRegistry
from . import config as cfgmod
from .interface import Binding, DaemonControl

log = logging.getLogger(__name__)


class ReconcileError(RuntimeError):
    """A change that could not be applied; ``field`` names the object (as ConfigError)."""

    #: the API error code it answers with
    code = "unavailable"

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        self.field = field
        self.message = message
        self.hint = hint
        super().__init__(f"{field}: {message}" + (f" ({hint})" if hint else ""))


@dataclass
class _State:
    """What this module applied to one daemon, plus the runtime objects it made."""

    cfg: dict[str, Any] = field(default_factory=cfgmod.empty_config)
    default_params: dict[str, str] | None = None
    default_settings: dict[str, float] = field(default_factory=dict)
    #: LUNs in the config whose store could not be opened at restore: (target lower, lun)
    offline: set[tuple[str, int]] = field(default_factory=set)
    applied_once: bool = False
    #: a group member: its LUNs' leases are the group member's, not lone claims
    in_group: bool = False
    #: (target name, lun, LogicalUnit, LUN entry) -> None or an awaitable: called when a LU
    #: is opened, before it enters any device (a group LU is attached to the group member
    #: there, so no command reaches its store before this gateway owns it);
    #: ``detach(LogicalUnit)`` once it is out of every device and closed
    attach: Callable[[str, int, Any, dict[str, Any]], Any] | None = None
    detach: Callable[[Any], None] | None = None
    #: (target name lower, lun) -> LogicalUnit
    lus: dict[tuple[str, int], Any] = field(default_factory=dict)


class Reconciler:
    """What has been applied to one running daemon, and the lock every change to it takes.

    One per daemon, made by its ``ControlServer`` (``api.py``); the restore at start and the
    SIGHUP reload (``cli/serve.py``) use that same one, so the control API, a reload and the
    start see one applied config and take turns. An explicit object rather than a table
    keyed by the daemon: who owns the state (and for how long) is visible, a fresh
    ``Reconciler`` is a fresh start (a restart, in tests), and nothing outlives its server.
    """

    def __init__(self, daemon: DaemonControl) -> None:
        self.daemon = daemon
        #: One change at a time (the control API and SIGHUP share it).
        self.lock = asyncio.Lock()
        self._st = _State()
        #: In a gateway group (``control/group.py``): the link to the group directory, whose
        #: definition (targets, LUNs, ACLs, CHAP) every apply composes with the local config.
        self.group_link: Any = None
        #: the local config last applied in a group (what the config file keeps)
        self._local: dict[str, Any] | None = None

    def current(self) -> dict[str, Any]:
        """A copy of the config last applied (empty before the first apply); in a group,
        the composed one (the group's targets as this gateway reaches their files)."""
        return copy.deepcopy(self._st.cfg)

    def local(self) -> dict[str, Any]:
        """A copy of what the config file keeps: :meth:`current` outside a group; in a group,
        the local config without the group's targets."""
        if self.group_link is None or self._local is None:
            return self.current()
        return copy.deepcopy({**self._local, "epoch": self._st.cfg["epoch"]})

    def set_epoch(self, epoch: int) -> None:
        """Keep the applied config's epoch in step with the file just saved."""
        self._st.cfg["epoch"] = epoch
        if self._local is not None:
            self._local["epoch"] = epoch

    def compose(self, desired: dict[str, Any]) -> dict[str, Any]:
        """What to run for the local config ``desired``: itself outside a group, else with
        the group definition's targets (``group.compose``), and every LUN with the group's
        LUN options (``group.group_lun_options``: a hand-written group's too, whichever way
        a LUN arrives: start, SIGHUP, ``config reload``, the CLI)."""
        if not desired.get("group"):
            return desired
        from .group import compose, group_lun_options

        link = self.group_link
        if link is not None and link.definition is not None:
            desired = compose(desired, link.definition, link.access)
        return group_lun_options(desired)

    def set_hooks(
        self, attach: Callable[[str, int, Any, dict[str, Any]], Any] | None,
        detach: Callable[[Any], None] | None
    ) -> None:
        """What to call when a LU is opened (before it serves) and before it is closed."""
        self._st.attach, self._st.detach = attach, detach

    def logical_units(self) -> list[tuple[str, int, Any]]:
        """(target name lower, lun, LogicalUnit) of every open LUN."""
        return [(t, n, lu) for (t, n), lu in self._st.lus.items()]

    def group_lun(self, target_name: str, lun: int) -> tuple[str, str | None] | None:
        """(gfid, preferred gateway) of a LUN the group definition owns, else None (a
        local LUN): the one place that decides which LUNs are group LUNs."""
        link = self.group_link
        if link is None or link.definition is None:
            return None
        luns = link.definition.get("luns") or {}
        for gfid, e in luns.items():
            if str(e.get("target", "")).lower() == target_name.lower() and e.get("lun") == lun:
                return gfid, e.get("preferred")
        return None

    def logical_unit(self, target_name: str, lun: int) -> Any | None:
        """The open LogicalUnit of a LUN; None if it is offline or not configured."""
        return self._st.lus.get((target_name.lower(), lun))

    async def apply(
        self, desired: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> list[dict[str, Any]]:
        """Make the daemon match ``desired``; return the changes made (or that would be).

        All or nothing: on any error (:class:`ReconcileError`, :class:`BusyError`) the
        daemon runs as before. Serialized with every other change (control API, SIGHUP).
        """
        async with self.lock:
            return await self.apply_locked(desired, dry_run=dry_run, force=force)

    async def apply_locked(
        self, desired: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> list[dict[str, Any]]:
        """:meth:`apply` for a caller that already holds :attr:`lock`."""
        effective = self.compose(desired)
        # A group member's LUNs (its own config's too) are leased by its member, not claimed
        self._st.in_group = self.group_link is not None or bool(desired.get("group"))
        changes = await _apply(self.daemon, self._st, effective, dry_run=dry_run, force=force)
        if not dry_run and self.group_link is not None:
            self._local = cfgmod.validate(copy.deepcopy(desired), stat_files=False)
        return changes

    async def forget(self) -> None:
        """Close every store opened for the daemon (at shutdown)."""
        st = self._st
        lus, self._st = list(st.lus.values()), _State(attach=st.attach, detach=st.detach)
        for lu_obj in lus:
            try:  # a group LU stays checked against its lease until closed
                await close_lu_off_loop(self.daemon, lu_obj)
            finally:
                _detach(st.detach, lu_obj)


# ------------------------------------------------------------------- runtime factories
# Module-level so unit tests of the diffing can swap them for fakes.


#: LUN ``options`` that configure the logical unit rather than its store.
LU_OPTIONS = ("physical_block_size",)


def open_lu(lun_cfg: dict[str, Any], target_name: str) -> Any:
    """Open the store and build the LogicalUnit for one LUN entry (blocking)."""
    from ..backstore.open import open_store
    from ..scsi.lu import naa_from_serial
    from ..server.runner import lu_on

    options = dict(lun_cfg.get("options") or {})
    lu_options = {k: options.pop(k) for k in LU_OPTIONS if k in options}
    store = open_store(
        lun_cfg["backing"],
        bstype=lun_cfg.get("bstype"),
        read_only=lun_cfg.get("read_only", False),
        size=lun_cfg.get("size") if lun_cfg.get("create") else None,
        **options,
    )
    try:
        return lu_on(  # the LU is told the store's size and capabilities, measured here
            store,
            lun_id=lun_cfg["lun"],
            block_size=lun_cfg.get("block_size", 512),
            physical_block_size=int(lu_options.get("physical_block_size") or 0) or None,
            serial=lun_cfg["serial"],
            naa=naa_from_serial(lun_cfg["uuid"]),
            read_only=lun_cfg.get("read_only", False),
        )
    except BaseException:
        store.close()
        raise


# ------------------------------------------------------- persistent reservations (APTPL)


def pr_path(state_dir: Any, uuid: str) -> Path:
    """Where the APTPL reservation state of the LUN with this UUID lives."""
    return Path(state_dir) / "pr" / f"{uuid}.json"


def save_pr_state(path: Path, state: dict[str, Any] | None) -> None:
    """Write (or, for None, remove) one LU's PR state: tmp file, fsync, rename, mode 0600.

    Called from the PERSISTENT RESERVE OUT handler before it answers GOOD, so a reservation
    made with APTPL=1 is on disk when the initiator learns it was made (SPC-4 5.13.4).
    """
    if state is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    finally:
        os.close(dfd)


def attach_pr_state(state_dir: Any, lu: Any, lun_cfg: dict[str, Any]) -> None:
    """Restore the LU's saved APTPL reservations and have it save them on every change."""
    if state_dir is None or not hasattr(lu, "load_pr_state"):
        return
    path = pr_path(state_dir, lun_cfg["uuid"])
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        saved = None
    except (OSError, ValueError) as e:
        log.error("%s: unreadable reservation state, starting without it: %s", path, e)
        saved = None
    if saved is not None:
        lu.load_pr_state(saved)
    lu.on_persist = functools.partial(save_pr_state, path)


#: id(LogicalUnit) -> the lone gateway's claim on its Gluster file (``group.LoneClaim``: the
#: group directory and the lease lock, held while the LU is open; released when it closes).
_claims: dict[int, Any] = {}


def _open_lu_with_state(
    state_dir: Any, lun_cfg: dict[str, Any], target_name: str, lone: bool = False
) -> Any:
    """Open one LUN (blocking). ``lone``: outside a group, a file on a Gluster volume (or
    in a tree with a ``.gluster-iscsi`` directory at its top) is first claimed in the
    volume's group directory: its recorded identity, and the lease lock that keeps another
    gateway from exporting it too (``group.claim_lone``)."""
    claim = None
    if lone:
        from .group import claim_lone

        claim = claim_lone(lun_cfg, holder_name(state_dir))
        if claim is not None and claim.identity:
            lun_cfg = {**lun_cfg, **claim.identity}
    try:
        lu = open_lu(lun_cfg, target_name)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    if claim is not None:
        _claims[id(lu)] = claim
    try:
        attach_pr_state(state_dir, lu, lun_cfg)
    except BaseException:
        close_lu(lu)
        _release_claim(lu)
        raise
    return lu


def _detach(detach: Callable[[Any], None] | None, lu: Any) -> None:
    if detach is not None:
        try:
            detach(lu)
        except Exception:  # closing must go on
            log.exception("detaching a LUN from the gateway group")


def holder_name(state_dir: Any) -> str:
    """How a lone gateway names itself in a lease record: host and state directory."""
    import socket

    return f"{socket.gethostname()}:{state_dir}"


def _release_claim(lu: Any) -> None:
    claim = _claims.pop(id(lu), None)
    if claim is not None:
        try:
            claim.release()
        except Exception:
            log.exception("releasing the lease of a closed LUN")


async def close_lu_off_loop(daemon: DaemonControl, lu: Any) -> None:
    """Close a LU's store where its calls run. A blocking store (worker threads) closes in the
    store executor, after the calls still running on its workers (``FileStore.close`` waits
    for them). An inline store (tmpfs) is called only on this event loop, and by a background
    job stopped first: it closes here, where no call of it can be running, so its hot calls
    need not count themselves in and out (``FileStore.read_into``). First, the writes the
    runner acknowledged early (write-behind) reach the store."""
    store = getattr(lu, "store", None)
    try:
        await daemon.write_behind_drain(lu)
        if store is None or getattr(store, "blocking", True):
            await _run_blocking(daemon, close_lu, lu)
            return
        stop = getattr(lu, "stop_background", None)
        if stop is not None:
            await _run_blocking(daemon, stop)
        store.close()
    finally:
        if id(lu) in _claims:  # after the store: nothing of it can write any more
            await _run_blocking(daemon, _release_claim, lu)


def close_lu(lu: Any) -> None:
    stop = getattr(lu, "stop_background", None)
    if stop is not None:
        stop()  # a background SANITIZE must not write to a closed store
    store = getattr(lu, "store", None)
    if store is not None:
        store.close()


def new_device(target_name: str) -> Any:
    from ..scsi.device import DeviceServer

    return DeviceServer({}, target_name=target_name)


# ------------------------------------------------------------------------------ diffing


def _key(t: dict[str, Any]) -> str:
    return t["name"].lower()


def _portal_key(p: dict[str, Any]) -> tuple[str, int]:
    return (p["host"], p["port"])


def _lun_identity(lu: dict[str, Any]) -> tuple[Any, ...]:
    """Fields whose change needs a new LogicalUnit (size alone is an online grow)."""
    return (
        lu["backing"],
        lu["bstype"],
        lu["read_only"],
        lu["block_size"],
        lu["uuid"],
        lu["serial"],
        repr(lu.get("options")),
    )


def _rule_text(rule: dict[str, Any]) -> str:
    return rule.get("initiator") or rule["network"]


def _auth_names(t: dict[str, Any]) -> Any:
    return (
        t["incoming"],
        t["outgoing"],
        [
            (r["initiator"], r.get("incoming"), r.get("outgoing"))
            for r in t["acl"]
            if r.get("incoming")
        ],
    )


def change(action: str, obj: str, text: str, **ids: Any) -> dict[str, Any]:
    """One entry of a reply's ``changes`` (schema in docs/API.md, section "changes")."""
    return {"action": action, "object": obj, **ids, "text": text}


def _portal_ids(p: dict[str, Any]) -> dict[str, Any]:
    return {"host": p["host"], "port": p["port"], "advertise": p["advertise"]}


def _lun_ids(tname: str, lu: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": tname,
        "lun": lu["lun"],
        "backing": lu["backing"],
        "bstype": lu["bstype"],
        "size": lu["size"],
        "read_only": lu["read_only"],
    }


@dataclass
class Plan:
    changes: list[dict[str, Any]] = field(default_factory=list)
    params_changed: bool = False
    discovery_changed: bool = False
    targets_removed: list[dict[str, Any]] = field(default_factory=list)
    targets_added: list[dict[str, Any]] = field(default_factory=list)
    #: (old, new) for targets present in both that differ
    targets_changed: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: portals closed (host:port no longer wanted)
    portals_removed: list[dict[str, Any]] = field(default_factory=list)
    portals_added: list[dict[str, Any]] = field(default_factory=list)
    #: portals whose host:port stays and whose advertised address changes (no reopening)
    portals_readvertised: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [c["text"] for c in self.changes]


def diff(old: dict[str, Any], new: dict[str, Any]) -> Plan:
    """The changes turning ``old`` into ``new`` (both validated), each with its text line."""
    plan = Plan()
    say = plan.changes.append
    for k in sorted(set(old["params"]) | set(new["params"])):
        a, b = old["params"].get(k), new["params"].get(k)
        if a != b:
            plan.params_changed = True
            if b is not None:
                say(change("set", "param", f"params: {k} = {b}", name=k, value=b))
            else:
                say(change("unset", "param", f"params: {k} back to its default", name=k))
    for u in sorted(set(old["accounts"]) | set(new["accounts"])):
        a, b = old["accounts"].get(u), new["accounts"].get(u)
        if a is None:
            say(change("add", "account", f"account {u}: add", user=u))
        elif b is None:
            say(change("remove", "account", f"account {u}: remove", user=u))
        elif a != b:
            say(change("set", "account", f"account {u}: new secret", user=u, field="secret"))
    od, nd = old["discovery"], new["discovery"]
    if (od, [old["accounts"][u] for u in od["incoming"]]) != (
        nd,
        [new["accounts"][u] for u in nd["incoming"]],
    ) or (od["outgoing"] and old["accounts"][od["outgoing"]]) != (
        nd["outgoing"] and new["accounts"][nd["outgoing"]]
    ):
        plan.discovery_changed = True
        say(change(
            "set", "discovery",
            "discovery: CHAP incoming "
            + (", ".join(nd["incoming"]) or "none")
            + (f", outgoing {nd['outgoing']}" if nd["outgoing"] else ""),
            incoming=list(nd["incoming"]), outgoing=nd["outgoing"],
        ))  # fmt: skip
    olds = {_key(t): t for t in old["targets"]}
    news = {_key(t): t for t in new["targets"]}
    for k, t in olds.items():
        if k not in news:
            plan.targets_removed.append(t)
            say(change(
                "remove", "target", f"target {t['name']} (tid {t['tid']}): remove (closes its sessions)",
                target=t["name"], tid=t["tid"],
            ))  # fmt: skip
    for k, t in news.items():
        if k not in olds:
            plan.targets_added.append(t)
            name = t["name"]
            say(change("add", "target", f"target {name} (tid {t['tid']}): add",
                       target=name, tid=t["tid"]))  # fmt: skip
            for lu in t["luns"]:
                say(change("add", "lun", f"target {name}: LUN {lu['lun']} add {lu['backing']} ({lu['bstype']})",
                           **_lun_ids(name, lu)))  # fmt: skip
            for r in t["acl"]:
                say(change("add", "acl", f"target {name}: allow {_rule_text(r)}",
                           target=name, rule=_rule_text(r)))  # fmt: skip
            continue
        o = olds[k]
        changes = _target_changes(o, t, old["accounts"], new["accounts"])
        if changes:
            plan.targets_changed.append((o, t))
            plan.changes += changes
    op = {_portal_key(p): p for p in old["portals"]}
    np_ = {_portal_key(p): p for p in new["portals"]}
    for k, p in op.items():
        if k not in np_:
            plan.portals_removed.append(p)
            say(change("remove", "portal", f"portal {_portal_text(p)}: remove (closes its connections)",
                       **_portal_ids(p)))  # fmt: skip
    for k, p in np_.items():
        if k not in op:
            plan.portals_added.append(p)
            say(change("add", "portal", f"portal {_portal_text(p)}: add", **_portal_ids(p)))
        elif op[k] != p:
            plan.portals_readvertised.append(p)
            say(change(
                "set", "portal",
                f"portal {_portal_text(p)}: advertise {p['advertise'] or 'its own address'}",
                **_portal_ids(p), field="advertise",
            ))  # fmt: skip
    return plan


def _portal_text(p: dict[str, Any]) -> str:
    host = f"[{p['host']}]" if ":" in p["host"] else p["host"]
    return f"{host}:{p['port']}"


def _target_changes(
    o: dict[str, Any], t: dict[str, Any], oacc: dict[str, str], nacc: dict[str, str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    name = t["name"]
    if o["tid"] != t["tid"]:
        out.append(change("set", "target", f"target {name}: tid {o['tid']} -> {t['tid']}",
                          target=name, field="tid", value=t["tid"]))  # fmt: skip
    if o["alias"] != t["alias"]:
        out.append(change("set", "target", f"target {name}: alias {t['alias'] or '(none)'}",
                          target=name, field="alias", value=t["alias"]))  # fmt: skip
    ol = {lu["lun"]: lu for lu in o["luns"]}
    nl = {lu["lun"]: lu for lu in t["luns"]}
    for n in sorted(set(ol) | set(nl)):
        a, b = ol.get(n), nl.get(n)
        if b is None:
            assert a is not None
            out.append(change("remove", "lun", f"target {name}: LUN {n} remove",
                              **_lun_ids(name, a)))  # fmt: skip
        elif a is None:
            out.append(change("add", "lun", f"target {name}: LUN {n} add {b['backing']} ({b['bstype']})",
                              **_lun_ids(name, b)))  # fmt: skip
        elif _lun_identity(a) != _lun_identity(b):
            out.append(change(
                "replace", "lun",
                f"target {name}: LUN {n} replace with {b['backing']} ({b['bstype']}, read-only {'yes' if b['read_only'] else 'no'})",
                **_lun_ids(name, b),
            ))  # fmt: skip
        elif a["size"] != b["size"]:
            out.append(change("resize", "lun", f"target {name}: LUN {n} size {b['size']}",
                              **_lun_ids(name, b)))  # fmt: skip
    orules = {_rule_text(r).lower(): r for r in o["acl"]}
    nrules = {_rule_text(r).lower(): r for r in t["acl"]}
    for k in nrules:
        if k not in orules:
            rule = _rule_text(nrules[k])
            out.append(change("add", "acl", f"target {name}: allow {rule}", target=name, rule=rule))
    for k in orules:
        if k not in nrules:
            rule = _rule_text(orules[k])
            out.append(change(
                "remove", "acl", f"target {name}: disallow {rule} (sessions already logged in stay)",
                target=name, rule=rule,
            ))  # fmt: skip
    if _auth_names(o) != _auth_names(t) or any(oacc.get(u) != nacc.get(u) for u in _users(t)):
        out.append(change(
            "set", "chap",
            f"target {name}: CHAP incoming {', '.join(t['incoming']) or 'none'}"
            + (f", outgoing {t['outgoing']}" if t["outgoing"] else "")
            + "".join(
                f"; {r['initiator']} uses {', '.join(r['incoming'])}"
                for r in t["acl"]
                if r.get("incoming")
            ),
            target=name, incoming=list(t["incoming"]), outgoing=t["outgoing"],
        ))  # fmt: skip
    for k in sorted(set(o["params"]) | set(t["params"])):
        if o["params"].get(k) != t["params"].get(k):
            v = t["params"].get(k)
            if v is not None:
                out.append(change("set", "param", f"target {name}: {k} = {v}",
                                  target=name, name=k, value=v))  # fmt: skip
            else:
                out.append(change("unset", "param", f"target {name}: {k} back to the default",
                                  target=name, name=k))  # fmt: skip
    return out


def _users(t: dict[str, Any]) -> set[str]:
    users = set(t["incoming"]) | ({t["outgoing"]} if t["outgoing"] else set())
    for r in t["acl"]:
        users |= set(r.get("incoming", []))
        if r.get("outgoing"):
            users.add(r["outgoing"])
    return users


# ----------------------------------------------------------------------------- applying


def _chap(user: str | None, accounts: dict[str, str]) -> ChapAccount | None:
    return ChapAccount(user, accounts[user]) if user else None


def _runtime_acl(t: dict[str, Any], accounts: dict[str, str]) -> list[AccessRule]:
    rules = []
    for r in t["acl"]:
        rules.append(
            AccessRule(
                initiator=r.get("initiator"),
                network=r.get("network"),
                incoming=[ChapAccount(u, accounts[u]) for u in r.get("incoming", [])],
                outgoing=_chap(r.get("outgoing"), accounts),
            )
        )
    return rules


def _set_auth(target: Target, t: dict[str, Any], accounts: dict[str, str]) -> None:
    target.acl = _runtime_acl(t, accounts)
    target.incoming = [ChapAccount(u, accounts[u]) for u in t["incoming"]]
    target.outgoing = _chap(t["outgoing"], accounts)


#: How long the check that no file is exported twice may wait for the file systems (a stat
#: of each local backing file) before the change is refused.
EXPORTS_TIMEOUT = 10.0


async def check_exports(daemon: DaemonControl, cfg: dict[str, Any]) -> None:
    """:func:`config.check_exports` off the event loop (a hung FUSE mount must stall only
    this change, not every session), within :data:`EXPORTS_TIMEOUT`."""
    try:
        await asyncio.wait_for(_run_blocking(daemon, cfgmod.check_exports, cfg), EXPORTS_TIMEOUT)
    except TimeoutError:
        raise ReconcileError(
            "backing stores",
            f"the file systems did not answer within {EXPORTS_TIMEOUT:g}s when checking that"
            " no file is exported twice",
            "check the mounts of the LUNs' files (a hung FUSE mount?), then try again",
        ) from None


async def _run_blocking(daemon: DaemonControl, fn: Callable[..., Any], *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(daemon.store_executor, fn, *args)


async def _maybe_await(x: Any) -> Any:
    if isinstance(x, Awaitable):
        return await x
    return x


class BusyError(ReconcileError):
    """The change would drop sessions or connections and ``force`` was not given."""

    def __init__(self, busy: list[str]) -> None:
        self.busy = busy
        super().__init__(
            busy[0].split(":", 1)[0] if len(busy) == 1 else "config",
            "; ".join(busy),
            "log the sessions out first, or use --force to close them",
        )


async def _apply(
    daemon: DaemonControl,
    st: _State,
    desired: dict[str, Any],
    *,
    dry_run: bool,
    force: bool,
) -> list[dict[str, Any]]:
    """:meth:`Reconciler.apply_locked`, on that reconciler's daemon and state."""
    desired = cfgmod.validate(desired, stat_files=False)  # no file system call on the loop
    await check_exports(daemon, desired)
    plan = diff(st.cfg, desired)
    changed = {_key(t) for t in plan.targets_added} | {_key(t) for _, t in plan.targets_changed}
    retry = [
        (t["name"], lu)
        for t in desired["targets"]
        if _key(t) not in changed
        for lu in t["luns"]
        if (_key(t), lu["lun"]) in st.offline
    ]
    if dry_run:
        return plan.changes + [
            change("retry", "lun", f"target {n}: LUN {lu['lun']} retry (offline)", **_lun_ids(n, lu))
            for n, lu in retry
        ]
    if not plan.changes and not retry:
        st.cfg = copy.deepcopy(desired)
        st.applied_once = True
        return []
    if not force:
        busy = _busy(daemon, st, plan)
        if busy:
            raise BusyError(busy)
    prep = await _prepare(daemon, st, desired, plan, retry)
    try:
        await _commit(daemon, st, prep)
    except BaseException:
        await _rollback(daemon, prep)
        raise
    for c in prep.changes:
        log.info("config: %s", c["text"])
    return prep.changes


# ------------------------------------------------------------------ the busy check


def _busy(daemon: DaemonControl, st: _State, plan: Plan) -> list[str]:
    """What ``plan`` would take away from sessions or connections, one line per object."""
    out: list[str] = []
    sessions = daemon.sessions()

    def logged_in(name: str) -> int:
        return sum(1 for s in sessions if str(s.get("target") or "").lower() == name.lower())

    for t in plan.targets_removed:
        n = logged_in(t["name"])
        if n:
            out.append(f"target {t['name']}: removing it closes its {n} session(s)")
    for o, t in plan.targets_changed:
        ol = {lu["lun"]: lu for lu in o["luns"]}
        nl = {lu["lun"]: lu for lu in t["luns"]}
        taken = [
            f"LUN {n} ({'removed' if n not in nl else 'replaced'})"
            for n in sorted(ol)
            if (n not in nl or _lun_identity(ol[n]) != _lun_identity(nl[n]))
            and (_key(t), n) not in st.offline
        ]
        n = logged_in(t["name"]) if taken else 0
        if n:
            out.append(f"target {t['name']}: {', '.join(taken)} in use by {n} session(s)")
    for p in plan.portals_removed:
        n = daemon.connections_on(Portal(p["host"], p["port"], p["advertise"]))
        if n:
            out.append(f"portal {_portal_text(p)}: removing it closes its {n} connection(s)")
    return out


# --------------------------------------------------------- prepare, commit, rollback


@dataclass
class _Prepared:
    """Everything :func:`_commit` needs, made ready without touching the running daemon."""

    desired: dict[str, Any]
    plan: Plan
    changes: list[dict[str, Any]]
    restoring: bool
    detach: Callable[[Any], None] | None = None
    #: (target lower, lun) -> a LogicalUnit opened for this change, not yet in any device
    opened: dict[tuple[str, int], Any] = field(default_factory=dict)
    #: every LogicalUnit opened here (what a rollback closes)
    all_opened: list[Any] = field(default_factory=list)
    #: changed targets no longer in the registry (removed behind our back): rebuilt whole
    rebuilt: list[dict[str, Any]] = field(default_factory=list)
    #: (target lower, lun cfg, LogicalUnit, its store's current size) for online grows
    grows: list[tuple[str, dict[str, Any], Any, int]] = field(default_factory=list)
    retry: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: (portal cfg, binding from daemon.bind_portal)
    bindings: list[tuple[dict[str, Any], Binding]] = field(default_factory=list)
    #: new portals whose address is held by a portal this change removes (bound at commit)
    deferred: list[dict[str, Any]] = field(default_factory=list)
    #: LUNs whose store failed to open during the restore at start (they stay offline)
    offline: set[tuple[str, int]] = field(default_factory=set)
    back_online: set[tuple[str, int]] = field(default_factory=set)


async def _prepare(
    daemon: DaemonControl,
    st: _State,
    desired: dict[str, Any],
    plan: Plan,
    retry: list[tuple[str, dict[str, Any]]],
) -> _Prepared:
    """Open every new store and bind every new portal; on failure close them and raise.

    The first apply to a daemon is the restore at start: a LUN whose store cannot be
    opened then (a volume still down at boot) is left offline instead of keeping every
    other target from starting; later applies retry it (a retry that fails again leaves
    it offline and fails nothing else).
    """
    prep = _Prepared(desired, plan, list(plan.changes), restoring=not st.applied_once,
                     detach=st.detach)
    registry = daemon.registry
    to_open: list[tuple[str, dict[str, Any]]] = []
    for t in plan.targets_added:
        to_open += [(t["name"], lu) for lu in t["luns"]]
    for o, t in plan.targets_changed:
        if registry.lookup(t["name"]) is None:
            prep.rebuilt.append(t)
            to_open += [(t["name"], lu) for lu in t["luns"]]
            continue
        ol = {lu["lun"]: lu for lu in o["luns"]}
        for lu in t["luns"]:
            old = ol.get(lu["lun"])
            key = (_key(t), lu["lun"])
            if old is None or _lun_identity(old) != _lun_identity(lu) or key in st.offline:
                to_open.append((t["name"], lu))
            elif old["size"] != lu["size"] and lu["size"] and key in st.lus:
                prep.grows.append((_key(t), lu, st.lus[key], 0))
    try:
        for tname, lu in [*to_open, *retry]:
            key = (tname.lower(), lu["lun"])
            try:
                lu_obj = await _run_blocking(
                    daemon, _open_lu_with_state, daemon.state_dir, lu, tname, not st.in_group
                )
            except Exception as e:
                from .group import GroupError

                if isinstance(e, GroupError):  # the lone claim: exported elsewhere, a UUID
                    err = ReconcileError(f"target {tname} LUN {lu['lun']}", e.message, e.hint)
                    err.code = e.code
                else:
                    err = ReconcileError(
                        f"target {tname} LUN {lu['lun']}",
                        f"cannot open backing store {lu['backing']!r}: {e}",
                        "check that it exists and is reachable; to create a file give --size",
                    )
                if not prep.restoring and key not in st.offline:
                    raise err from e
                log.error("%s; the LUN stays offline until a reload", err)
                prep.offline.add(key)
                prep.changes.append(change(
                    "offline", "lun", f"target {tname}: LUN {lu['lun']} offline ({e})",
                    **_lun_ids(tname, lu), error=str(e),
                ))  # fmt: skip
                continue
            prep.all_opened.append(lu_obj)
            prep.opened[key] = lu_obj
            if st.attach is not None:
                try:
                    await _maybe_await(st.attach(tname, lu["lun"], lu_obj, lu))
                except Exception as e:
                    raise ReconcileError(
                        f"target {tname} LUN {lu['lun']}",
                        f"cannot make it a LUN of the gateway group: {e}",
                        "check that the group directory and the file are reachable",
                    ) from e
            if key in st.offline:
                prep.back_online.add(key)
        prep.retry = retry
        if prep.all_opened:
            daemon.stores_opened()
        grows = []
        for tkey, lu, lu_obj, _ in prep.grows:
            store = lu_obj.store
            current = await _run_blocking(daemon, lambda s=store: s.size)  # may be a network call
            if lu["size"] < current:
                raise ReconcileError(
                    f"target {tkey} LUN {lu['lun']}",
                    f"cannot shrink from {current} to {lu['size']} bytes",
                    "shrinking a disk under a file system destroys data; make a new LUN",
                )
            if lu["size"] > current:
                grows.append((tkey, lu, lu_obj, current))
        prep.grows = grows
        for p in plan.portals_added:
            portal = Portal(p["host"], p["port"], p["advertise"])
            try:
                binding = await _run_blocking(daemon, daemon.bind_portal, portal)
            except OSError as e:
                if e.errno == errno.EADDRINUSE and any(
                    _may_clash(p, r) for r in plan.portals_removed
                ):
                    # Probably our own listener that this change removes (127.0.0.1:3260 ->
                    # localhost:3260): bound at commit, once that one is closed.
                    prep.deferred.append(p)
                    continue
                raise _listen_error(p, e) from e
            prep.bindings.append((p, binding))
    except BaseException:
        await _rollback(daemon, prep)
        raise
    return prep


async def _rollback(daemon: DaemonControl, prep: _Prepared) -> None:
    """Close what :func:`_prepare` opened and bound (none of it is in use by then)."""
    for lu_obj in prep.all_opened:
        try:
            _detach(prep.detach, lu_obj)
            await close_lu_off_loop(daemon, lu_obj)
        except Exception:  # closing must go on for the others
            log.exception("closing a store opened for a change that was rolled back")
    prep.all_opened.clear()
    prep.opened.clear()
    for _, binding in prep.bindings:
        binding.close()
    prep.bindings.clear()


async def _commit(daemon: DaemonControl, st: _State, prep: _Prepared) -> None:
    """Put the prepared change in force.

    Every step up to the open of the new portals records how to undo itself; a failure
    there undoes them in reverse (and the caller's rollback closes what was prepared), so
    the daemon runs as before. Only then come the steps that cannot be undone and cannot
    fail for a prepared change: closing removed targets' sessions, removed portals and
    replaced stores, and telling initiators about grown LUNs.
    """
    desired, plan = prep.desired, prep.plan
    registry = daemon.registry
    acc = desired["accounts"]
    undo: list[Callable[[], Any]] = []
    closed_early: set[tuple[str, int]] = set()
    new_lus = dict(st.lus)
    to_close: list[Any] = []
    try:
        # Grows first: the one step that calls a store and can fail.
        for _tkey, lu, lu_obj, current in prep.grows:
            store = lu_obj.store
            await _run_blocking(daemon, store.resize, lu["size"])
            undo.append(functools.partial(_run_blocking, daemon, store.resize, current))

        # The LUs this change takes out of service: the writes they acknowledged early
        # (write-behind) written now, while they still serve, and no more after (the undo
        # turns it back on for a LU it puts back). No await from here to the swap: a
        # replacement on the same backing (another store handle and read cache) would
        # otherwise read older bytes, or have a new write overwritten by an old one.
        for lu_obj in _leaving(st, plan, prep):
            undo.append(functools.partial(daemon.write_behind_resume, lu_obj))
            await daemon.write_behind_drain(lu_obj)

        if st.default_params is None:
            st.default_params = dict(daemon.params)
            st.default_settings = _settings(daemon)
        if plan.params_changed:
            params = daemon.params
            undo.append(functools.partial(_replace_dict, params, dict(params)))
            params.clear()
            params.update({**st.default_params, **_login(desired["params"])})
            undo.append(functools.partial(_set_settings, daemon, _settings(daemon)))
            _apply_settings(daemon, st, desired["params"])
        disc = (registry.discovery_incoming, registry.discovery_outgoing)
        undo.append(lambda: _set_discovery(registry, *disc))
        _set_discovery(
            registry,
            [ChapAccount(u, acc[u]) for u in desired["discovery"]["incoming"]],
            _chap(desired["discovery"]["outgoing"], acc),
        )

        added = {_key(t) for t in plan.targets_added} | {_key(t) for t in prep.rebuilt}
        for t in desired["targets"]:
            # Accounts may have new secrets: refresh every target's auth objects (cheap).
            target = registry.lookup(t["name"])
            if target is not None and _key(t) not in added:
                auth = (target.acl, target.incoming, target.outgoing)
                undo.append(functools.partial(_restore_auth, target, auth))
                _set_auth(target, t, acc)

        for o, t in plan.targets_changed:
            target = registry.lookup(t["name"])
            if target is None:  # rebuilt below
                continue
            attrs = (target.tid, target.alias, target.params, target.device)
            undo.append(functools.partial(_restore_target, target, attrs))
            target.tid = t["tid"]
            target.alias = t["alias"]
            target.params = _login(t["params"])
            nl = {lu["lun"]: lu for lu in t["luns"]}
            for lu in o["luns"]:
                n = lu["lun"]
                key = (_key(t), n)
                if n in nl and key not in prep.opened:
                    continue
                old_obj = new_lus.pop(key, None)
                if target.device is not None:
                    _maybe_remove_lun(target.device, n)
                    if old_obj is not None:
                        undo.append(functools.partial(_put_lun, target.device, n, old_obj))
                if old_obj is not None:
                    to_close.append(old_obj)
            for n in nl:
                key = (_key(t), n)
                lu_obj = prep.opened.get(key)
                if lu_obj is None:
                    continue
                if target.device is None:
                    target.device = new_device(t["name"])
                target.device.add_lun(n, lu_obj)
                undo.append(functools.partial(_maybe_remove_lun, target.device, n))
                new_lus[key] = lu_obj

        for t in [*plan.targets_added, *prep.rebuilt]:
            device = new_device(t["name"])
            for lu in t["luns"]:
                key = (_key(t), lu["lun"])
                stale = new_lus.pop(key, None)  # a rebuilt target's old LU
                if stale is not None:
                    to_close.append(stale)
                lu_obj = prep.opened.get(key)
                if lu_obj is None:  # offline (restore at start)
                    continue
                device.add_lun(lu["lun"], lu_obj)
                new_lus[key] = lu_obj
            target = Target(
                name=t["name"],
                tid=t["tid"],
                alias=t["alias"],
                device=device,
                params=_login(t["params"]),
            )
            _set_auth(target, t, acc)
            daemon.add_target(target)
            undo.append(functools.partial(registry.targets.pop, target.name, None))

        for tname, lu in prep.retry:
            key = (tname.lower(), lu["lun"])
            lu_obj = prep.opened.get(key)
            target = registry.lookup(tname)
            if lu_obj is None or target is None:
                continue
            if target.device is None:
                target.device = new_device(tname)
                undo.append(functools.partial(setattr, target, "device", None))
            target.device.add_lun(lu["lun"], lu_obj)
            undo.append(functools.partial(_maybe_remove_lun, target.device, lu["lun"]))
            new_lus[key] = lu_obj
            prep.changes.append(change(
                "online", "lun", f"target {tname}: LUN {lu['lun']} online again",
                **_lun_ids(tname, lu),
            ))  # fmt: skip

        for p in plan.portals_readvertised:
            old = next((x for x in st.cfg["portals"] if _portal_key(x) == _portal_key(p)), p)
            daemon.set_portal_advertise(Portal(p["host"], p["port"], p["advertise"]))
            undo.append(functools.partial(
                daemon.set_portal_advertise, Portal(old["host"], old["port"], old["advertise"])
            ))  # fmt: skip

        # New listeners last, so they see complete targets.
        while prep.bindings:
            p, binding = prep.bindings[0]
            try:
                portal = await daemon.open_portal(binding)
            except OSError as e:
                raise _listen_error(p, e) from e
            prep.bindings.pop(0)
            undo.append(functools.partial(daemon.remove_portal, portal))
        # Last, the portals whose address a removed portal holds: close that one (its
        # connections go, as the busy check allowed), bind; on failure reopen it.
        for p in prep.deferred:
            for r in plan.portals_removed:
                if _may_clash(p, r) and _portal_key(r) not in closed_early:
                    old_portal = Portal(r["host"], r["port"], r["advertise"])
                    await daemon.remove_portal(old_portal)
                    closed_early.add(_portal_key(r))
                    undo.append(functools.partial(daemon.add_portal, old_portal))
            try:
                binding = await _run_blocking(
                    daemon, daemon.bind_portal, Portal(p["host"], p["port"], p["advertise"])
                )
                portal = await daemon.open_portal(binding)
            except OSError as e:
                raise _listen_error(p, e) from e
            undo.append(functools.partial(daemon.remove_portal, portal))
    except BaseException:
        for step in reversed(undo):
            try:
                await _maybe_await(step())
            except Exception:  # undo as much as can be undone
                log.exception("undoing a change that failed")
        raise

    # ---- in force: what follows cannot fail for a prepared change and is not undone.
    prep.all_opened.clear()
    for t in plan.targets_removed:
        try:
            await _maybe_await(daemon.remove_target(t["name"]))
        except Exception:  # the rest of the change is in force: go on, say so
            log.exception("removing target %s", t["name"])
        for lu in t["luns"]:
            lu_obj = new_lus.pop((_key(t), lu["lun"]), None)
            if lu_obj is not None:
                to_close.append(lu_obj)
    for p in plan.portals_removed:
        if _portal_key(p) in closed_early:
            continue
        try:
            await daemon.remove_portal(Portal(p["host"], p["port"], p["advertise"]))
        except Exception:
            log.exception("closing portal %s", _portal_text(p))
    for lu_obj in to_close:
        # Out of the device: closed first (its queued and running calls done, still checked
        # against the group lease), then detached (the lease given back).
        try:
            await close_lu_off_loop(daemon, lu_obj)
        except Exception:
            log.exception("closing a store that was replaced or removed")
        _detach(st.detach, lu_obj)
    for _, lu, lu_obj, _ in prep.grows:
        lu_obj.capacity_changed(lu["size"])  # known: no store call on the loop
    wanted = {(_key(t), lu["lun"]) for t in desired["targets"] for lu in t["luns"]}
    st.lus = {k: v for k, v in new_lus.items() if k in wanted}
    st.offline = ((st.offline - prep.back_online) | prep.offline) & wanted
    st.cfg = copy.deepcopy(desired)
    st.applied_once = True
    for _, lu, lu_obj, _ in prep.grows:
        await _tell_group_capacity(lu_obj, lu["size"])


def _leaving(st: _State, plan: Plan, prep: _Prepared) -> list[Any]:
    """The LUs in service that :func:`_commit` replaces or removes."""
    keys: set[tuple[str, int]] = set()
    for o, t in plan.targets_changed:
        nl = {lu["lun"] for lu in t["luns"]}
        keys.update((_key(t), lu["lun"]) for lu in o["luns"]
                    if lu["lun"] not in nl or (_key(t), lu["lun"]) in prep.opened)
    for t in [*plan.targets_removed, *prep.rebuilt]:
        keys.update((_key(t), lu["lun"]) for lu in t["luns"])
    return [st.lus[k] for k in keys if k in st.lus]


async def _tell_group_capacity(lu_obj: Any, size: int) -> None:
    """A gateway group's LU grown here: the other gateways' LUs learn the size and queue
    CAPACITY DATA HAS CHANGED through the state record (``GroupMember.capacity_changed``).
    The grow is in force either way: a gateway not told measures it at its next READ
    CAPACITY (which re-reads the size) and tells its nexuses then."""
    rs = getattr(lu_obj, "runner_state", None)
    member = getattr(rs, "group", None)
    if member is None:
        return
    try:
        await member.capacity_changed(lu_obj, size)
    except Exception as e:  # noqa: BLE001
        log.warning("LUN grown to %d bytes; the other gateways of the group were not told (%s):"
                    " they see it at their next READ CAPACITY", size, e)


def _may_clash(new: dict[str, Any], removed: dict[str, Any]) -> bool:
    """Whether a removed portal may hold the address a new one needs (same port and family:
    a host name, a wildcard or the same address)."""
    return new["port"] == removed["port"] and (":" in new["host"]) == (":" in removed["host"])


def _listen_error(p: dict[str, Any], e: OSError) -> ReconcileError:
    return ReconcileError(
        f"portal {_portal_text(p)}",
        f"cannot listen: {e.strerror or e}",
        "is another target (tgtd?) using that port, or is the address not local?",
    )


def _replace_dict(d: dict[str, Any], values: dict[str, Any]) -> None:
    d.clear()
    d.update(values)


def _settings(daemon: DaemonControl) -> dict[str, float]:
    """The connection settings tgt's params map to (see :func:`_apply_settings`)."""
    return {
        "nop_interval": daemon.nop_interval,
        "nop_timeout": daemon.nop_timeout,
        "queue_depth": daemon.queue_depth,
    }


def _set_settings(daemon: DaemonControl, values: dict[str, float]) -> None:
    daemon.nop_interval = float(values["nop_interval"])
    daemon.nop_timeout = float(values["nop_timeout"])
    daemon.queue_depth = int(values["queue_depth"])


def _set_discovery(
    registry: TargetRegistry, incoming: list[ChapAccount], outgoing: ChapAccount | None
) -> None:
    registry.discovery_incoming = incoming
    registry.discovery_outgoing = outgoing


def _restore_auth(target: Target, auth: tuple[Any, Any, Any]) -> None:
    target.acl, target.incoming, target.outgoing = auth


def _restore_target(target: Target, attrs: tuple[Any, Any, Any, Any]) -> None:
    target.tid, target.alias, target.params, target.device = attrs


def _put_lun(device: Any, n: int, lu_obj: Any) -> None:
    _maybe_remove_lun(device, n)
    device.add_lun(n, lu_obj)


def _login(params: dict[str, str]) -> dict[str, str]:
    """Only the login keys: what the negotiator is offered (it refuses anything else)."""
    keys = cfgmod.login_keys()
    return {k: v for k, v in params.items() if k in keys}


def _apply_settings(daemon: DaemonControl, st: _State, params: dict[str, str]) -> None:
    """tgt's nop_interval/nop_count/MaxQueueCmd -> the daemon's keepalive and queue depth
    (new connections pick them up; a missing setting goes back to the daemon's default)."""
    values: dict[str, float] = dict(st.default_settings)
    if "nop_interval" in params:
        values["nop_interval"] = float(params["nop_interval"])
    if "nop_count" in params:
        interval = values.get("nop_interval") or 0
        values["nop_timeout"] = float(interval) * int(params["nop_count"])
    if "MaxQueueCmd" in params:
        values["queue_depth"] = int(params["MaxQueueCmd"])
    _set_settings(daemon, values)


def _maybe_remove_lun(device: Any, n: int) -> None:
    try:
        device.remove_lun(n)
    except KeyError:
        pass
