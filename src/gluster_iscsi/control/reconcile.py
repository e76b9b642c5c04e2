"""Make a running daemon match a desired config, touching only what differs.

``apply(daemon, desired)`` compares ``desired`` with what this module last applied to that
daemon and changes only the difference, so a reload after adding one target leaves every
other target, LUN and session alone. It works in two phases:

1. *prepare*: open every new backing store and build its LogicalUnit (in the daemon's store
   executor: opening a Gluster volume blocks). If any fails, the stores opened so far are
   closed and nothing at all has changed.
2. *commit*: cheap in-memory edits in a safe order (params, auth, removed targets, changed
   targets, added targets, then portals last so new listeners see complete targets).

ACL and CHAP edits are attribute assignments on the live ``Target``: the iSCSI core reads
them at each login, and sessions already logged in keep running (as tgt does).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..target.model import AccessRule, ChapAccount, Portal, Target
from . import config as cfgmod

log = logging.getLogger(__name__)


class ReconcileError(RuntimeError):
    """A change that could not be applied; ``field`` names the object (as ConfigError)."""

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
    default_settings: dict[str, Any] = field(default_factory=dict)
    #: LUNs in the config whose store could not be opened at restore: (target lower, lun)
    offline: set[tuple[str, int]] = field(default_factory=set)
    applied_once: bool = False
    #: (target name lower, lun) -> LogicalUnit
    lus: dict[tuple[str, int], Any] = field(default_factory=dict)


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(daemon: Any) -> _State:
    st = _STATES.get(daemon)
    if st is None:
        st = _STATES[daemon] = _State()
    return st


def current(daemon: Any) -> dict[str, Any]:
    """A copy of the config last applied to ``daemon`` (empty before the first apply)."""
    return copy.deepcopy(_state(daemon).cfg)


def logical_unit(daemon: Any, target_name: str, lun: int) -> Any | None:
    return _state(daemon).lus.get((target_name.lower(), lun))


# ------------------------------------------------------------------- runtime factories
# Module-level so unit tests of the diffing can swap them for fakes.


#: LUN ``options`` that configure the logical unit rather than its store.
LU_OPTIONS = ("physical_block_size",)


def open_lu(lun_cfg: dict[str, Any], target_name: str) -> Any:
    """Open the store and build the LogicalUnit for one LUN entry (blocking)."""
    from ..backstore.open import open_store
    from ..scsi.lu import LogicalUnit, naa_from_serial

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
        return LogicalUnit(
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


def _open_lu_with_state(state_dir: Any, lun_cfg: dict[str, Any], target_name: str) -> Any:
    lu = open_lu(lun_cfg, target_name)
    try:
        attach_pr_state(state_dir, lu, lun_cfg)
    except BaseException:
        close_lu(lu)
        raise
    return lu


def _state_dir(daemon: Any) -> Any:
    return getattr(daemon, "state_dir", None)


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


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    params_changed: bool = False
    discovery_changed: bool = False
    targets_removed: list[dict[str, Any]] = field(default_factory=list)
    targets_added: list[dict[str, Any]] = field(default_factory=list)
    #: (old, new) for targets present in both that differ
    targets_changed: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    portals_removed: list[dict[str, Any]] = field(default_factory=list)
    portals_added: list[dict[str, Any]] = field(default_factory=list)


def diff(old: dict[str, Any], new: dict[str, Any]) -> Plan:
    """The changes turning ``old`` into ``new`` (both validated), with human-readable lines."""
    plan = Plan()
    say = plan.lines.append
    for k in sorted(set(old["params"]) | set(new["params"])):
        a, b = old["params"].get(k), new["params"].get(k)
        if a != b:
            plan.params_changed = True
            say(f"params: {k} = {b}" if b is not None else f"params: {k} back to its default")
    for u in sorted(set(old["accounts"]) | set(new["accounts"])):
        a, b = old["accounts"].get(u), new["accounts"].get(u)
        if a is None:
            say(f"account {u}: add")
        elif b is None:
            say(f"account {u}: remove")
        elif a != b:
            say(f"account {u}: new secret")
    od, nd = old["discovery"], new["discovery"]
    if (od, [old["accounts"][u] for u in od["incoming"]]) != (
        nd,
        [new["accounts"][u] for u in nd["incoming"]],
    ) or (od["outgoing"] and old["accounts"][od["outgoing"]]) != (
        nd["outgoing"] and new["accounts"][nd["outgoing"]]
    ):
        plan.discovery_changed = True
        say(
            "discovery: CHAP incoming "
            + (", ".join(nd["incoming"]) or "none")
            + (f", outgoing {nd['outgoing']}" if nd["outgoing"] else "")
        )
    olds = {_key(t): t for t in old["targets"]}
    news = {_key(t): t for t in new["targets"]}
    for k, t in olds.items():
        if k not in news:
            plan.targets_removed.append(t)
            say(f"target {t['name']} (tid {t['tid']}): remove (closes its sessions)")
    for k, t in news.items():
        if k not in olds:
            plan.targets_added.append(t)
            say(f"target {t['name']} (tid {t['tid']}): add")
            for lu in t["luns"]:
                say(f"target {t['name']}: LUN {lu['lun']} add {lu['backing']} ({lu['bstype']})")
            for r in t["acl"]:
                say(f"target {t['name']}: allow {_rule_text(r)}")
            continue
        o = olds[k]
        lines = _target_lines(o, t, old["accounts"], new["accounts"])
        if lines:
            plan.targets_changed.append((o, t))
            plan.lines += lines
    op = {_portal_key(p): p for p in old["portals"]}
    np_ = {_portal_key(p): p for p in new["portals"]}
    for k, p in op.items():
        if k not in np_ or np_[k] != p:
            plan.portals_removed.append(p)
            if k not in np_:
                say(f"portal {_portal_text(p)}: remove (closes its connections)")
    for k, p in np_.items():
        if k not in op:
            plan.portals_added.append(p)
            say(f"portal {_portal_text(p)}: add")
        elif op[k] != p:
            plan.portals_added.append(p)
            say(
                f"portal {_portal_text(p)}: advertise {p['advertise'] or 'its own address'} (reopens it)"
            )
    return plan


def _portal_text(p: dict[str, Any]) -> str:
    host = f"[{p['host']}]" if ":" in p["host"] else p["host"]
    return f"{host}:{p['port']}"


def _target_lines(
    o: dict[str, Any], t: dict[str, Any], oacc: dict[str, str], nacc: dict[str, str]
) -> list[str]:
    out: list[str] = []
    name = t["name"]
    if o["tid"] != t["tid"]:
        out.append(f"target {name}: tid {o['tid']} -> {t['tid']}")
    if o["alias"] != t["alias"]:
        out.append(f"target {name}: alias {t['alias'] or '(none)'}")
    ol = {lu["lun"]: lu for lu in o["luns"]}
    nl = {lu["lun"]: lu for lu in t["luns"]}
    for n in sorted(set(ol) | set(nl)):
        a, b = ol.get(n), nl.get(n)
        if b is None:
            out.append(f"target {name}: LUN {n} remove")
        elif a is None:
            out.append(f"target {name}: LUN {n} add {b['backing']} ({b['bstype']})")
        elif _lun_identity(a) != _lun_identity(b):
            out.append(
                f"target {name}: LUN {n} replace with {b['backing']} ({b['bstype']}, read-only {'yes' if b['read_only'] else 'no'})"
            )
        elif a["size"] != b["size"]:
            out.append(f"target {name}: LUN {n} size {b['size']}")
    orules = {_rule_text(r).lower(): r for r in o["acl"]}
    nrules = {_rule_text(r).lower(): r for r in t["acl"]}
    for k in nrules:
        if k not in orules:
            out.append(f"target {name}: allow {_rule_text(nrules[k])}")
    for k in orules:
        if k not in nrules:
            out.append(
                f"target {name}: disallow {_rule_text(orules[k])} (sessions already logged in stay)"
            )
    if _auth_names(o) != _auth_names(t) or any(oacc.get(u) != nacc.get(u) for u in _users(t)):
        out.append(
            f"target {name}: CHAP incoming {', '.join(t['incoming']) or 'none'}"
            + (f", outgoing {t['outgoing']}" if t["outgoing"] else "")
            + "".join(
                f"; {r['initiator']} uses {', '.join(r['incoming'])}"
                for r in t["acl"]
                if r.get("incoming")
            )
        )
    for k in sorted(set(o["params"]) | set(t["params"])):
        if o["params"].get(k) != t["params"].get(k):
            v = t["params"].get(k)
            out.append(
                f"target {name}: {k} = {v}"
                if v is not None
                else f"target {name}: {k} back to the default"
            )
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


async def _run_blocking(daemon: Any, fn: Callable[..., Any], *args: Any) -> Any:
    executor = getattr(daemon, "store_executor", None)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)


async def _maybe_await(x: Any) -> Any:
    if isinstance(x, Awaitable):
        return await x
    return x


_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def lock(daemon: Any) -> asyncio.Lock:
    """One change at a time per daemon (the control API and SIGHUP share it)."""
    lk = _LOCKS.get(daemon)
    if lk is None:
        lk = _LOCKS[daemon] = asyncio.Lock()
    return lk


async def apply(daemon: Any, desired: dict[str, Any], *, dry_run: bool = False) -> list[str]:
    """Make ``daemon`` match ``desired``; return the changes made (or that would be).

    Serialized with every other change to the same daemon (control API, SIGHUP).
    """
    async with lock(daemon):
        return await apply_locked(daemon, desired, dry_run=dry_run)


async def apply_locked(daemon: Any, desired: dict[str, Any], *, dry_run: bool = False) -> list[str]:
    """:func:`apply` for a caller that already holds :func:`lock` (daemon)."""
    desired = cfgmod.validate(desired)
    st = _state(daemon)
    # The first apply to a daemon is the restore at start: a LUN whose store cannot be
    # opened then (a volume still down at boot) is left offline instead of keeping every
    # other target from starting; later applies (reload, API) retry it.
    restoring = not st.applied_once
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
        return plan.lines + [f"target {n}: LUN {lu['lun']} retry (offline)" for n, lu in retry]
    if not plan.lines and not plan.portals_added and not retry:
        st.cfg = copy.deepcopy(desired)
        st.applied_once = True
        return plan.lines

    # ---- prepare: every LogicalUnit that has to be built, before anything changes.
    to_open: list[tuple[str, dict[str, Any]]] = []
    grows: list[tuple[str, dict[str, Any]]] = []
    for t in plan.targets_added:
        to_open += [(t["name"], lu) for lu in t["luns"]]
    for o, t in plan.targets_changed:
        ol = {lu["lun"]: lu for lu in o["luns"]}
        for lu in t["luns"]:
            old = ol.get(lu["lun"])
            if (
                old is None
                or _lun_identity(old) != _lun_identity(lu)
                or (_key(t), lu["lun"]) in st.offline
            ):
                to_open.append((t["name"], lu))
            elif old["size"] != lu["size"] and lu["size"]:
                grows.append((t["name"], lu))
    opened: dict[tuple[str, int], Any] = {}
    failed: list[str] = []
    try:
        for tname, lu in [*to_open, *retry]:
            key = (tname.lower(), lu["lun"])
            try:
                opened[key] = await _run_blocking(
                    daemon, _open_lu_with_state, _state_dir(daemon), lu, tname
                )
                st.offline.discard(key)
            except Exception as e:
                err = ReconcileError(
                    f"target {tname} LUN {lu['lun']}",
                    f"cannot open backing store {lu['backing']!r}: {e}",
                    "check that it exists and is reachable; to create a file give --size",
                )
                if not restoring and key not in st.offline:
                    raise err from e
                log.error("%s; the LUN stays offline until a reload", err)
                st.offline.add(key)
                failed.append(f"target {tname}: LUN {lu['lun']} offline ({e})")
    except BaseException:
        for lu_obj in opened.values():
            await _run_blocking(daemon, close_lu, lu_obj)
        raise
    st.applied_once = True

    # ---- commit
    registry = daemon.registry
    if st.default_params is None:
        st.default_params = dict(getattr(daemon, "params", {}) or {})
        st.default_settings = {a: getattr(daemon, a) for a in _SETTING_ATTRS if hasattr(daemon, a)}
    if plan.params_changed:
        if isinstance(getattr(daemon, "params", None), dict):
            daemon.params.clear()
            daemon.params.update({**st.default_params, **_login(desired["params"])})
        _apply_settings(daemon, st, desired["params"])
    acc = desired["accounts"]
    registry.discovery_incoming = [ChapAccount(u, acc[u]) for u in desired["discovery"]["incoming"]]
    registry.discovery_outgoing = _chap(desired["discovery"]["outgoing"], acc)

    for t in plan.targets_removed:
        await _maybe_await(daemon.remove_target(t["name"]))
        for lu in t["luns"]:
            lu_obj = st.lus.pop((_key(t), lu["lun"]), None)
            if lu_obj is not None:
                await _run_blocking(daemon, close_lu, lu_obj)
        st.cfg["targets"] = [x for x in st.cfg["targets"] if _key(x) != _key(t)]

    for t in desired["targets"]:
        # Accounts may have new secrets: refresh every target's auth objects (cheap).
        target = registry.lookup(t["name"])
        if target is not None and not any(_key(x) == _key(t) for x in plan.targets_added):
            _set_auth(target, t, acc)

    for o, t in plan.targets_changed:
        target = registry.lookup(t["name"])
        if target is None:  # someone removed it behind our back: rebuild it below
            plan.targets_added.append(t)
            for lu in t["luns"]:
                if (_key(t), lu["lun"]) not in opened:
                    opened[(_key(t), lu["lun"])] = await _run_blocking(
                        daemon, _open_lu_with_state, _state_dir(daemon), lu, t["name"]
                    )
            continue
        target.tid = t["tid"]
        target.alias = t["alias"]
        target.params = _login(t["params"])
        ol = {lu["lun"]: lu for lu in o["luns"]}
        nl = {lu["lun"]: lu for lu in t["luns"]}
        device = target.device
        for n in ol:
            if n not in nl or (_key(t), n) in opened:
                if device is not None:
                    _maybe_remove_lun(device, n)
                lu_obj = st.lus.pop((_key(t), n), None)
                if lu_obj is not None:
                    await _run_blocking(daemon, close_lu, lu_obj)
        for n in nl:
            lu_obj = opened.pop((_key(t), n), None)
            if lu_obj is not None:
                if device is None:
                    device = target.device = new_device(t["name"])
                device.add_lun(n, lu_obj)
                st.lus[(_key(t), n)] = lu_obj
        for tname, lu in grows:
            if tname.lower() == _key(t):
                await _grow(daemon, st, t, lu)

    for t in plan.targets_added:
        device = new_device(t["name"])
        for lu in t["luns"]:
            lu_obj = opened.pop((_key(t), lu["lun"]), None)
            if lu_obj is None:  # offline (restore at start)
                continue
            device.add_lun(lu["lun"], lu_obj)
            st.lus[(_key(t), lu["lun"])] = lu_obj
        target = Target(
            name=t["name"],
            tid=t["tid"],
            alias=t["alias"],
            device=device,
            params=_login(t["params"]),
        )
        _set_auth(target, t, acc)
        daemon.add_target(target)

    for tname, lu in retry:
        lu_obj = opened.pop((tname.lower(), lu["lun"]), None)
        target = registry.lookup(tname)
        if lu_obj is None or target is None:
            continue
        if target.device is None:
            target.device = new_device(tname)
        target.device.add_lun(lu["lun"], lu_obj)
        st.lus[(tname.lower(), lu["lun"])] = lu_obj
        plan.lines.append(f"target {tname}: LUN {lu['lun']} online again")

    removed = {_portal_key(p) for p in plan.portals_removed}
    live = [p for p in st.cfg["portals"] if _portal_key(p) not in removed]
    for p in plan.portals_removed:
        await daemon.remove_portal(Portal(p["host"], p["port"], p["advertise"]))
    st.cfg = {**copy.deepcopy(desired), "portals": live}
    for p in plan.portals_added:
        try:
            await daemon.add_portal(Portal(p["host"], p["port"], p["advertise"]))
        except OSError as e:
            raise ReconcileError(
                f"portal {_portal_text(p)}",
                f"cannot listen: {e.strerror or e}",
                "is another target (tgtd?) using that port, or is the address not local?",
            ) from e
        live.append(copy.deepcopy(p))
    st.cfg = copy.deepcopy(desired)
    wanted = {(_key(t), lu["lun"]) for t in desired["targets"] for lu in t["luns"]}
    st.offline &= wanted
    for line in plan.lines:
        log.info("config: %s", line)
    return plan.lines + failed


_SETTING_ATTRS = ("nop_interval", "nop_timeout", "queue_depth")


def _login(params: dict[str, str]) -> dict[str, str]:
    """Only the login keys: what the negotiator is offered (it refuses anything else)."""
    keys = cfgmod.login_keys()
    return {k: v for k, v in params.items() if k in keys}


def _apply_settings(daemon: Any, st: _State, params: dict[str, str]) -> None:
    """tgt's nop_interval/nop_count/MaxQueueCmd -> the daemon's keepalive and queue depth
    (new connections pick them up; a missing setting goes back to the daemon's default)."""
    values = dict(st.default_settings)
    if "nop_interval" in params:
        values["nop_interval"] = float(params["nop_interval"])
    if "nop_count" in params:
        interval = values.get("nop_interval") or 0
        values["nop_timeout"] = float(interval) * int(params["nop_count"])
    if "MaxQueueCmd" in params:
        values["queue_depth"] = int(params["MaxQueueCmd"])
    for attr, value in values.items():
        if hasattr(daemon, attr):
            setattr(daemon, attr, value)


def _maybe_remove_lun(device: Any, n: int) -> None:
    try:
        device.remove_lun(n)
    except KeyError:
        pass


async def _grow(daemon: Any, st: _State, t: dict[str, Any], lu: dict[str, Any]) -> None:
    lu_obj = st.lus.get((_key(t), lu["lun"]))
    if lu_obj is None:
        return
    store = lu_obj.store
    current = await _run_blocking(daemon, lambda: store.size)  # may be a network call
    if lu["size"] > current:
        await _run_blocking(daemon, store.resize, lu["size"])
        lu_obj.capacity_changed(lu["size"])  # known: no store call on the loop
    elif lu["size"] < current:
        raise ReconcileError(
            f"target {t['name']} LUN {lu['lun']}",
            f"cannot shrink from {current} to {lu['size']} bytes",
            "shrinking a disk under a file system destroys data; make a new LUN",
        )


async def forget(daemon: Any) -> None:
    """Close every store this module opened for ``daemon`` (at shutdown)."""
    st = _STATES.pop(daemon, None)
    if st is None:
        return
    for lu_obj in st.lus.values():
        await _run_blocking(daemon, close_lu, lu_obj)
