"""The management side of the gateway group (docs/HA.md, decisions 5 and 6).

A gateway in a group keeps only its own portals, login keys and how it reaches the volume in
its local config (the ``group`` section: ``location``, ``gateway``, ``number``, ...); the
targets, LUNs, ACLs and CHAP accounts are the group's, in ``group.json`` in the group
directory on the volume. This module turns one into the other:

- :class:`VolumeAccess`: how this gateway reaches the volume (a FUSE mount, found in
  ``/proc/self/mountinfo`` with type ``fuse.glusterfs``; gfapi for a ``gluster://`` location;
  any other directory for tests and single hosts: its parent is the "volume root"), so a
  volume-relative LUN path becomes this gateway's backing string and back;
- :func:`compose`: the config a gateway runs = its local config + the definition's targets,
  LUNs mapped through its access and opened ``o_direct`` (GOOD after the bricks' ack);
- :func:`rebalance_plan`, :func:`initiator_config`: pure answers from a definition;
- :class:`GroupLink`: the daemon's handle on the group directory (blocking calls, run on the
  store executor), and the poll that applies each new definition version through
  ``reconcile`` all or nothing.

Pure functions take plain dicts (:func:`definition_dict` turns the group layer's
``GroupDefinition`` into one), so they are tested without a volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import posixpath
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: The group directory's default name, at the volume's root.
GROUP_DIR = ".gluster-iscsi"
#: How many gateways a group may have (TPGT, relative port id and port group are 1..255).
MAX_GATEWAYS = 255
#: Vendor and product our standard INQUIRY reports (scsi/lu.py's defaults).
VENDOR = "GLUSTER"
PRODUCT = "iSCSI Disk"


class GroupError(RuntimeError):
    """A group operation that cannot be done; ``code`` is an API error code."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        self.code = code
        self.message = message
        self.hint = hint
        super().__init__(message + (f" ({hint})" if hint else ""))


# -------------------------------------------------------------------- reaching the volume


def fuse_mount_root(path: str, mountinfo: str | None = None) -> str | None:
    """The mount point of the ``fuse.glusterfs`` mount ``path`` is on, else None.

    ``mountinfo``: the text of ``/proc/self/mountinfo`` (read when not given)."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return None
    path = posixpath.normpath(os.path.abspath(path))
    best: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        fstype = right.split()[0] if right.split() else ""
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best[0]):
                best = (point, fstype)
    if best is not None and best[1] == "fuse.glusterfs":
        return best[0]
    return None


@dataclasses.dataclass(frozen=True)
class VolumeAccess:
    """How one gateway reaches the group's volume.

    ``kind``: ``fuse`` (a Gluster FUSE mount at ``root``), ``path`` (a plain directory: tests,
    or a volume-like tree shared otherwise; ``root`` is the group directory's parent) or
    ``gfapi`` (``url_prefix`` is ``gluster://servers/VOL``)."""

    kind: str
    root: str = ""
    url_prefix: str = ""
    volume: str = ""

    def backing(self, rel: str) -> tuple[str, str]:
        """(backing, bstype) for the volume-relative path ``rel`` ("/disks/a.img")."""
        rel = "/" + rel.lstrip("/")
        if self.kind == "gfapi":
            return self.url_prefix + rel, "gluster"
        return posixpath.normpath(self.root + rel), "rdwr"

    def relative(self, backing: str, bstype: str | None = None) -> str | None:
        """The volume-relative path of a backing string on this volume, else None."""
        from ..backstore.open import classify

        try:
            kind, where = classify(backing, bstype)
        except ValueError:
            return None
        if kind == "gluster":
            vol = getattr(where, "volume", None)
            if self.volume and vol == self.volume:
                return posixpath.normpath("/" + str(getattr(where, "path", "")).lstrip("/"))
            return None
        if kind != "file" or self.kind == "gfapi":
            return None
        path = posixpath.normpath(os.path.abspath(str(where)))
        root = self.root.rstrip("/")
        if path.startswith(root + "/"):
            return path[len(root):]
        return None


def access_for(location: str, mountinfo: str | None = None) -> VolumeAccess:
    """How this host reaches the volume the group directory ``location`` is on."""
    from ..backstore.gfapi.address import is_gluster_url, parse_gluster_url

    if is_gluster_url(location):
        addr = parse_gluster_url(location)
        servers = ",".join(str(s) for s in addr.servers)
        return VolumeAccess("gfapi", url_prefix=f"gluster://{servers}/{addr.volume}",
                            volume=addr.volume)  # fmt: skip
    path = posixpath.normpath(os.path.abspath(location))
    root = fuse_mount_root(path, mountinfo)
    if root is not None:
        return VolumeAccess("fuse", root=root, volume=_fuse_volume(root, mountinfo) or "")
    return VolumeAccess("path", root=posixpath.dirname(path))


def _fuse_volume(root: str, mountinfo: str | None) -> str | None:
    """The volume name of a FUSE mount (its source is ``host:/VOL``)."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and fields[4] == root:
            parts = right.split()
            if len(parts) >= 2 and ":" in parts[1]:
                return parts[1].rsplit(":", 1)[1].strip("/")
    return None


# ---------------------------------------------------------------------- the definition


def definition_dict(defn: Any) -> dict[str, Any]:
    """A plain dict of a ``GroupDefinition`` (dataclass or object) or of a dict."""
    if isinstance(defn, dict):
        return copy.deepcopy(defn)
    if dataclasses.is_dataclass(defn) and not isinstance(defn, type):
        return copy.deepcopy(dataclasses.asdict(defn))
    return copy.deepcopy(dict(vars(defn)))


def member_key(gfid: str) -> str:
    """The key a group member knows a LUN by: its GFID (a path backend's ``dev:ino``
    stand-in with ``-`` for ``:``, as ``server/group.py`` names its record files)."""
    return gfid.replace(":", "-")


def gateways_by_number(defn: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(defn.get("gateways", {}).items(), key=lambda kv: kv[1].get("number", 0))


def group_lun_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every LUN of a group's gateway opened O_DIRECT (docs/HA.md decision 3:
    GOOD follows the bricks' acknowledgement, no gateway-side cache a failover could lose)
    and, through gfapi, without the read cache (nothing drops it when ownership moves).
    The one place: ``Reconciler.compose`` calls it on every apply of a config with a
    ``group`` section, definition or hand-written. A memory LUN is left as it is."""

    def direct(lu: dict[str, Any]) -> dict[str, Any]:
        if lu.get("bstype") == "memory":
            return lu
        options = {**(lu.get("options") or {}), "o_direct": True}
        if lu.get("bstype") in ("glfs", "gluster"):
            options["cache"] = "off"
        return {**lu, "options": options}

    out = dict(cfg)
    out["targets"] = [{**t, "luns": [direct(lu) for lu in t.get("luns") or []]}
                      for t in cfg.get("targets") or []]
    return out


def compose(local: dict[str, Any], defn: dict[str, Any], access: VolumeAccess) -> dict[str, Any]:
    """The config this gateway runs: its ``local`` config (portals, params, discovery, its
    ``group`` section) plus the definition's targets, each LUN's volume-relative path mapped
    through ``access`` and opened ``o_direct``; CHAP accounts of both (the group's win)."""
    out = copy.deepcopy(local)
    accounts = dict(out.get("accounts") or {})
    accounts.update(defn.get("accounts") or {})
    out["accounts"] = accounts
    paths = {gfid: e.get("path") for gfid, e in (defn.get("luns") or {}).items()}
    targets = []
    for t in defn.get("targets") or []:
        t = copy.deepcopy(t)
        luns = []
        for lu in t.get("luns") or []:
            lu = dict(lu)
            gfid = lu.pop("gfid", None)
            rel = paths.get(gfid) if gfid is not None else None
            rel = rel or lu.pop("path", None)
            if rel is None:
                raise GroupError(
                    "invalid", f"LUN {lu.get('lun')} of {t.get('name')} has no path in the"
                    " group definition", "recreate it with 'gluster-iscsi lun create'",
                )  # fmt: skip
            lu.pop("path", None)
            lu["backing"], lu["bstype"] = access.backing(rel)
            options = dict(lu.get("options") or {})
            options["o_direct"] = True  # GOOD after the bricks' ack (HA.md decision 3)
            if lu["bstype"] == "gluster":
                options["cache"] = "off"  # no read cache a change of owner would leave stale
            lu["options"] = options
            luns.append(lu)
        t["luns"] = luns
        targets.append(t)
    out["targets"] = targets
    return out


def split_local(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a group gateway keeps in its own config file: no targets (the group's)."""
    out = copy.deepcopy(cfg)
    out["targets"] = []
    return out


def lun_keys(defn: dict[str, Any]) -> dict[tuple[str, int], str]:
    """(target name lower, lun) -> gfid, for every LUN of the definition."""
    return {
        (str(e.get("target", "")).lower(), int(e.get("lun", 0))): gfid
        for gfid, e in (defn.get("luns") or {}).items()
    }


def rebalance_plan(defn: dict[str, Any]) -> dict[str, str]:
    """gfid -> gateway each LUN should be owned by: its ``preferred`` gateway if that one is
    still in the group, else round robin over the gateways ordered by number, in the order
    of (target, lun). Decision: preferred is sticky (it is written at ``lun create`` by the
    same round robin), so a rebalance after a failover moves LUNs home, not all of them."""
    gws = [name for name, _ in gateways_by_number(defn)]
    if not gws:
        return {}
    out: dict[str, str] = {}
    luns = sorted((defn.get("luns") or {}).items(),
                  key=lambda kv: (str(kv[1].get("target", "")).lower(), kv[1].get("lun", 0)))
    for i, (gfid, e) in enumerate(luns):
        pref = e.get("preferred")
        out[gfid] = pref if pref in gws else gws[i % len(gws)]
    return out


def next_preferred(defn: dict[str, Any]) -> str | None:
    """The preferred gateway for a new LUN: the one preferred by the fewest LUNs (lowest
    number first), which is round robin while LUNs are only added."""
    gws = [name for name, _ in gateways_by_number(defn)]
    if not gws:
        return None
    count = dict.fromkeys(gws, 0)
    for e in (defn.get("luns") or {}).values():
        if e.get("preferred") in count:
            count[e["preferred"]] += 1
    return min(gws, key=lambda g: (count[g], gws.index(g)))


# ------------------------------------------------------------------ the initiator side


def no_path_retry(settings: dict[str, Any], polling_interval: int = 5) -> int:
    """Queue I/O for long enough that a failover (the lease lapsing, the new owner taking
    over) completes, with a margin: ``lease_seconds`` + 3 beats, twice over, counted in
    multipath's polling intervals, and never fewer than 12 (a minute at 5 s)."""
    lease = float(settings.get("lease_seconds") or 5)
    beat = float(settings.get("beat_seconds") or 1)
    seconds = 2 * (lease + 3 * beat)
    return max(12, -(-int(seconds) // polling_interval))


def initiator_config(defn: dict[str, Any]) -> dict[str, Any]:
    """What an initiator host needs: the multipath.conf device section and the iscsiadm
    lines for every gateway's addresses."""
    settings = defn.get("settings") or {}
    retry = no_path_retry(settings)
    multipath = "\n".join([
        "devices {",
        "    device {",
        f'        vendor "{VENDOR}"',
        f'        product "{PRODUCT}"',
        '        hardware_handler "1 alua"',
        "        path_grouping_policy group_by_prio",
        "        path_selector \"service-time 0\"",
        "        prio alua",
        "        path_checker tur",
        "        failback immediate",
        f"        no_path_retry {retry}",
        "        fast_io_fail_tmo 5",
        "        dev_loss_tmo infinity",
        "    }",
        "}",
    ]) + "\n"  # fmt: skip
    addresses: list[dict[str, Any]] = []
    for name, gw in gateways_by_number(defn):
        for a in gw.get("addresses") or []:
            addresses.append({"gateway": name, "number": gw.get("number"), "address": a})
    targets = [t["name"] for t in defn.get("targets") or []]
    lines = []
    for a in addresses:
        lines.append(f"iscsiadm --mode discovery --type sendtargets --portal {a['address']}")
    for t in targets:
        for a in addresses:
            lines.append(
                f"iscsiadm --mode node --targetname {t} --portal {a['address']} --login"
            )
    return {
        "group": defn.get("name"),
        "no_path_retry": retry,
        "multipath_conf": multipath,
        "addresses": addresses,
        "targets": targets,
        "iscsiadm": lines,
    }


# -------------------------------------------------------------------------- the link


Opener = Callable[[str], Any]


class GroupLink:
    """A daemon's handle on its group: the shared directory (opened on first use, blocking
    calls on the store executor), the definition version last applied, and the poll.

    ``local`` is the daemon's group section (``location``, ``gateway``, ``number``, ...)."""

    def __init__(self, section: dict[str, Any]) -> None:
        self.section = dict(section)
        self.location: str = section["location"]
        self.gateway: str = section["gateway"]
        self.access = access_for(self.location)
        self._shared: Any = None
        #: the definition last applied (a plain dict) and its version
        self.definition: dict[str, Any] | None = None
        self.applied_version: int | None = None
        #: why the newest definition is not in force (None: it is)
        self.error: str | None = None
        self.error_version: int | None = None
        #: logged once: the group directory holds no definition (a hand-written group)
        self.no_definition_said = False
        self._task: asyncio.Task[None] | None = None

    @property
    def beat_seconds(self) -> float:
        return float(self.section.get("beat_seconds") or 1.0)

    def shared(self) -> Any:
        """The open SharedDir (blocking)."""
        if self._shared is None:
            from ..group.shared import open_shared

            self._shared = open_shared(self.location)
        return self._shared

    def load(self) -> dict[str, Any]:
        """The newest definition, as a dict with the group's CHAP accounts (blocking)."""
        return load_definition(self.shared(), self.location)

    def gfid(self, rel: str) -> str:
        """The GFID of the file at volume-relative ``rel`` (blocking)."""
        if self.access.kind == "gfapi":
            return str(self.shared().gfid(rel))
        return str(self.shared().gfid(self.access.backing(rel)[0]))

    def identity(self, gfid: str, lu: dict[str, Any]) -> dict[str, Any]:
        """The recorded identity of file ``gfid`` (``lu``'s own proposed if none yet), as
        LUN entry keys (blocking)."""
        return record_lun_identity(self.shared(), gfid, lu, self.access.relative(
            lu["backing"], lu.get("bstype")) or lu["backing"])

    def write(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Write ``new``'s targets, LUNs and accounts into the definition, under its lock,
        if it is still at ``old``'s version; return what was written (blocking)."""
        return write_definition(self.shared(), old, new)

    def close(self) -> None:
        if self._shared is not None:
            try:
                self._shared.close()
            finally:
                self._shared = None


#: The definition format this gluster-iscsi writes and understands: a definition whose
#: ``format`` is higher was written by a newer version, which may have added what this one
#: would drop on its next write, so this one refuses to act on it.
FORMAT = 1
#: The record of the group's CHAP accounts, beside ``group.json`` (written under its lock).
ACCOUNTS_RECORD = "accounts.json"


def check_version(defn: dict[str, Any], what: str = "the group definition") -> None:
    """Refuse a definition written by a newer gluster-iscsi (its ``format`` field)."""
    from ..group import definition

    ours = getattr(definition, "FORMAT", None) or FORMAT
    theirs = defn.get("format")
    if isinstance(theirs, int) and theirs > ours:
        raise GroupError(
            "invalid", f"{what} was written by a newer gluster-iscsi (format {theirs}; this one"
            f" understands {ours}): refusing to act on it",
            "upgrade gluster-iscsi on this gateway to the version the others run",
        )  # fmt: skip


# ------------------------------------------------- a change: composed config -> definition

#: LUN keys a definition's target entry does not keep (this gateway's view of the file).
_LOCAL_LUN_KEYS = ("backing", "bstype", "create")


def _referenced(t: dict[str, Any]) -> set[str]:
    users = set(t.get("incoming") or [])
    if t.get("outgoing"):
        users.add(t["outgoing"])
    for r in t.get("acl") or []:
        users |= set(r.get("incoming") or [])
        if r.get("outgoing"):
            users.add(r["outgoing"])
    return users


def decompose(
    cfg: dict[str, Any], defn: dict[str, Any], local: dict[str, Any], link: Any
) -> dict[str, Any]:
    """The definition a changed composed config ``cfg`` stands for (blocking: a new LUN's
    file is looked up by GFID and its identity recorded in the group directory).

    ``defn``: the definition the change started from; ``local``: the local config then;
    ``link``: what reaches the volume (``access``, ``gfid(rel)``, ``identity(gfid, lu)``)."""
    access: VolumeAccess = link.access
    old_luns = defn.get("luns") or {}
    by_path = {e.get("path"): gfid for gfid, e in old_luns.items()}
    work = copy.deepcopy(defn)
    work["luns"] = {}
    kept: dict[str, dict[str, Any]] = {}
    targets = []
    for t in cfg["targets"]:
        entry_t = copy.deepcopy(t)
        luns = []
        for lu in t["luns"]:
            rel = access.relative(lu["backing"], lu.get("bstype"))
            if rel is None:
                raise GroupError(
                    "invalid", f"{lu['backing']} is not on the group's volume (this gateway"
                    f" reaches it as {access.root or access.url_prefix})",
                    "give a path on the volume's FUSE mount or a gluster:// URL of that volume",
                )  # fmt: skip
            gfid = by_path.get(rel)
            if gfid is None:
                gfid = link.gfid(rel)
                ident = link.identity(gfid, lu)
                lu = {**lu, **ident}
            if gfid in kept:
                raise GroupError(
                    "exists", f"{lu['backing']} is already LUN {kept[gfid]['lun']} of"
                    f" {kept[gfid]['target']}", "one file is one LUN: use that LUN",
                )  # fmt: skip
            old = old_luns.get(gfid) or {}
            pref = old.get("preferred") if old.get("preferred") in work.get("gateways", {}) else None
            e = {"target": t["name"], "lun": lu["lun"], "path": rel, "preferred": pref}
            if pref is None:
                e["preferred"] = next_preferred({**work, "luns": {**work["luns"], **kept}})
            kept[gfid] = e
            out = {k: v for k, v in lu.items() if k not in _LOCAL_LUN_KEYS}
            options = {k: v for k, v in (out.get("options") or {}).items()
                       if k not in ("o_direct", "cache")}
            if options:
                out["options"] = options
            else:
                out.pop("options", None)
            out["gfid"] = gfid
            luns.append(out)
        entry_t["luns"] = luns
        targets.append(entry_t)
    referenced = set().union(*(_referenced(t) for t in cfg["targets"])) if cfg["targets"] else set()
    group_accounts = defn.get("accounts") or {}
    local_accounts = local.get("accounts") or {}
    accounts = {
        u: s for u, s in cfg.get("accounts", {}).items()
        if u in referenced or u in group_accounts or u not in local_accounts
    }  # fmt: skip
    out_defn = copy.deepcopy(defn)
    out_defn["targets"] = targets
    out_defn["luns"] = kept
    out_defn["accounts"] = accounts
    return out_defn


def local_part(cfg: dict[str, Any], local: dict[str, Any], defn: dict[str, Any]) -> dict[str, Any]:
    """What of a changed composed config stays in the local config file: everything but the
    targets and the group's accounts (an account discovery names stays here too)."""
    out = copy.deepcopy(cfg)
    out["targets"] = []
    disc = cfg.get("discovery") or {}
    wanted = set(disc.get("incoming") or []) | ({disc["outgoing"]} if disc.get("outgoing") else set())
    group_accounts = defn.get("accounts") or {}
    out["accounts"] = {
        u: s for u, s in (cfg.get("accounts") or {}).items()
        if u not in group_accounts or u in wanted
    }  # fmt: skip
    out["epoch"] = local.get("epoch", 0)
    return out


def definition_changed(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("targets", "luns", "accounts", "gateways", "settings", "name")
    return any((a.get(k) or None) != (b.get(k) or None) for k in keys)


# ------------------------------------------------------------ the group layer's records

#: How long a definition change waits for the definition's lock.
UPDATE_TIMEOUT = 10.0


def record_lun_identity(shared: Any, gfid: str, lu: dict[str, Any], path: str) -> dict[str, Any]:
    """The identity of file ``gfid`` from the group directory, recording ``lu``'s (its
    uuid, serial, block size) if none is yet; as LUN entry keys. A UUID that names another
    file is refused (``GroupError`` "exists")."""
    from ..group.identity import LunIdentity, record_identity
    from ..scsi.lu import naa_from_serial

    naa = naa_from_serial(lu["uuid"])
    proposed = LunIdentity.new(
        lu["uuid"], naa.hex(), lu["serial"], int(lu.get("block_size") or 512), path,
    )  # fmt: skip
    try:
        got = record_identity(shared, gfid, proposed)
    except ValueError as e:
        raise GroupError(
            "exists", f"{path}: {e}",
            "one UUID is one disk: leave out --uuid (or give another) for this file",
        ) from None  # fmt: skip
    return {"uuid": got.uuid, "serial": got.serial, "block_size": got.block_size}


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


def write_definition(shared: Any, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``definition.update`` with a check that nobody changed it since ``old`` was read."""
    from ..group import definition

    def change(d: Any) -> Any:
        now = definition_dict(d)
        if now.get("version") != old.get("version"):
            raise GroupError(
                "busy", f"the group definition changed meanwhile (version {old.get('version')}"
                f" -> {now.get('version')})", "run the command again",
            )  # fmt: skip
        for key in ("targets", "luns", "gateways", "settings"):
            if key in new and new.get(key) != now.get(key):
                _set(d, key, copy.deepcopy(new[key]))
        if (new.get("accounts") or {}) != (old.get("accounts") or {}):
            # Under the definition's lock, before the new version is written: a gateway that
            # sees the new version reads these accounts (or newer) with it.
            shared.write(ACCOUNTS_RECORD, {"accounts": new.get("accounts") or {}})
        return d

    try:
        out = definition_dict(definition.update(shared, change, UPDATE_TIMEOUT))
    except TimeoutError:
        raise GroupError("busy", "the group definition stayed locked by another gateway",
                         "run the command again") from None
    except ValueError as e:
        raise GroupError("invalid", f"the group definition would be invalid: {e}") from None
    out["accounts"] = dict(new.get("accounts") or {})
    return out


# ------------------------------------------------------------------ create, join, leave


def open_location(location: str) -> Any:
    """``open_shared`` with the answers people need when the volume cannot be reached."""
    from ..group.shared import open_shared

    try:
        return open_shared(location)
    except ValueError as e:
        raise GroupError("invalid", f"group location {location}: {e}",
                         "give a directory on the volume's FUSE mount, or"
                         " gluster://HOST/VOLUME/.gluster-iscsi") from None
    except OSError as e:
        raise GroupError(
            "unavailable", f"cannot reach the group directory {location}: {e.strerror or e}",
            "is the volume started and mounted (or its servers reachable for gluster://)?",
        ) from None  # fmt: skip


def load_definition(shared: Any, location: str) -> dict[str, Any]:
    """The definition in ``shared`` as a dict; GroupError if there is none, it cannot be
    read, or a newer gluster-iscsi wrote it."""
    from ..group import definition

    try:
        rec = shared.read(definition.RECORD)
        if rec is not None:
            check_version(dict(rec.data))
        defn = definition.load(shared)
        accounts = shared.read(ACCOUNTS_RECORD) if defn is not None else None
    except OSError as e:
        raise GroupError("unavailable", f"cannot read the group definition in {location}:"
                         f" {e.strerror or e}", "is the volume reachable?") from None
    except ValueError as e:
        raise GroupError("invalid", f"the group definition in {location}: {e}",
                         "upgrade gluster-iscsi if another gateway runs a newer one") from None
    if defn is None:
        raise GroupError("not_found", f"no gateway group at {location}",
                         "create it with 'gluster-iscsi group create NAME --location"
                         f" {location}'")
    out = definition_dict(defn)
    out["accounts"] = dict((accounts.data if accounts is not None else {}).get("accounts") or {})
    return out


def create_group(location: str, name: str, settings: dict[str, Any] | None = None,
                 check: Callable[[str, float], str | None] | None = None,
                 skip_volume_check: bool = False) -> dict[str, Any]:
    """Write a new definition at ``location`` (blocking). ``check(location, lease_seconds)``
    (default :func:`check_volume_options`) refuses a lease the volume's options break, or
    options it cannot read; ``skip_volume_check`` (``--skip-volume-check``) does without
    it: logged, and recorded in the definition (``settings.volume_check: skipped``)."""
    from ..group import definition

    if not name or not name.strip() or "/" in name:
        raise GroupError("invalid", f"group name {name!r} must be a non-empty name without '/'")
    settings = {k: v if k in ("non_owner", "volume_check") else float(v)
                for k, v in (settings or {}).items() if v is not None}
    if settings.get("non_owner", definition.DEFAULT_NON_OWNER) not in definition.NON_OWNER_MODES:
        raise GroupError("invalid", f"non_owner {settings['non_owner']!r} is not one of "
                         + ", ".join(definition.NON_OWNER_MODES))
    lease = settings.get("lease_seconds", definition.DEFAULT_SETTINGS["lease_seconds"])
    beat = settings.get("beat_seconds", definition.DEFAULT_SETTINGS["beat_seconds"])
    if not 0 < beat < lease:
        raise GroupError("invalid", f"lease_seconds {lease:g} must be longer than beat_seconds"
                         f" {beat:g} (a lease must survive a beat)")
    if skip_volume_check:
        log.warning("group %s: the volume's options were not checked against lease_seconds"
                    " %g (--skip-volume-check): it must stay under the bricks' keepalive and"
                    " server.tcp-user-timeout, or two gateways may write", name, lease)
        settings["volume_check"] = "skipped"
        problem = None
    else:
        problem = (check or check_volume_options)(location, lease)
    if problem is not None:
        raise GroupError("invalid", problem, "change what the message says: --lease-seconds or"
                         " the volume's options (docs/OPERATIONS.md, HA)")
    shared = open_location(location)
    try:
        try:
            return definition_dict(definition.create(shared, name, settings=settings))
        except definition.DefinitionExists as e:
            raise GroupError(
                "exists", str(e), f"join it with 'gluster-iscsi group join {location}"
                " --gateway NAME'",
            ) from None  # fmt: skip
        except TimeoutError:
            raise GroupError("busy", f"the group directory {location} stayed locked") from None
        except OSError as e:
            raise GroupError("unavailable", f"cannot write the group definition in {location}:"
                             f" {e.strerror or e}") from None
    finally:
        shared.close()


def default_addresses(local: dict[str, Any]) -> list[str]:
    """host:port initiators reach this gateway at, from its portals (a wildcard portal
    needs its advertised address)."""
    out = []
    for p in local.get("portals") or []:
        host = p.get("advertise") or p["host"]
        if host in ("0.0.0.0", "::", ""):
            continue
        out.append(f"[{host}]:{p['port']}" if ":" in host else f"{host}:{p['port']}")
    return out


def join_group(
    local: dict[str, Any], location: str, gateway: str, number: int | None,
    addresses: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record ``gateway`` in the group at ``location`` (the lowest free number, or
    ``number``); return (the local config with its ``group`` section, the definition).
    Refused: a name or number another gateway holds, a gateway already in another group, a
    gateway exporting targets of its own (blocking)."""
    import time

    from ..group import definition

    mine = local.get("group") or None
    if mine and (mine.get("location") != location or mine.get("gateway") != gateway):
        raise GroupError(
            "exists", f"this gateway is already {mine.get('gateway')} in the group at"
            f" {mine.get('location')}", "run 'gluster-iscsi group leave' first",
        )  # fmt: skip
    if local.get("targets"):
        names = ", ".join(t["name"] for t in local["targets"])
        raise GroupError(
            "busy", f"this gateway exports targets of its own ({names}); in a group every"
            " target is the group's", "delete them (or export them from a lone gateway) first",
        )  # fmt: skip
    if number is not None and not 1 <= number <= MAX_GATEWAYS:
        raise GroupError("invalid", f"gateway number {number} is not from 1 to {MAX_GATEWAYS}")
    addresses = list(addresses) or default_addresses(local)
    if not addresses:
        raise GroupError(
            "invalid", "no address initiators can reach this gateway at (its portals are"
            " wildcards or none)", "give --address HOST:PORT (repeat for several)",
        )  # fmt: skip
    shared = open_location(location)
    try:
        load_definition(shared, location)
        chosen: dict[str, int] = {}

        def change(d: Any) -> Any:
            now = definition_dict(d)
            gws = dict(now.get("gateways") or {})
            if gateway in gws and not mine:
                g = gws[gateway]
                raise GroupError(
                    "exists", f"gateway name {gateway} is already in group {now.get('name')}"
                    f" (number {g.get('number')}, {', '.join(g.get('addresses') or [])})",
                    "pick another --gateway name, or run 'gluster-iscsi group leave' on that"
                    " gateway first",
                )  # fmt: skip
            taken = {g.get("number"): n for n, g in gws.items() if n != gateway}
            if number is not None and number in taken:
                raise GroupError(
                    "exists", f"gateway number {number} is held by {taken[number]}",
                    "leave out --number to get the lowest free one",
                )  # fmt: skip
            if number is not None:
                n = number
            elif gateway in gws:
                n = gws[gateway]["number"]
            else:
                n = int(definition.assign_number(d, gateway))
            gws[gateway] = {"number": n, "addresses": addresses,
                            "joined_at": gws.get(gateway, {}).get("joined_at") or time.time()}
            chosen["n"] = n
            _set(d, "gateways", gws)
            return d

        try:
            written = definition_dict(definition.update(shared, change, UPDATE_TIMEOUT))
        except (GroupError, ValueError) as e:
            if isinstance(e, GroupError):
                raise
            raise GroupError("exists", str(e)) from None
        except OSError as e:
            raise GroupError("unavailable", f"cannot write the group definition in {location}:"
                             f" {e.strerror or e}") from None
    finally:
        shared.close()
    settings = written.get("settings") or {}
    out = copy.deepcopy(local)
    out["group"] = {
        "location": location,
        "gateway": gateway,
        "number": chosen["n"],
        "beat_seconds": settings.get("beat_seconds", 1.0),
        "lease_seconds": settings.get("lease_seconds", 5.0),
    }
    if settings.get("non_owner"):
        out["group"]["non_owner"] = settings["non_owner"]
    return out, written


def leave_group(local: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Take this gateway out of its group's definition; return (the local config without
    its ``group`` section, the definition or None if the volume could not be told)."""
    from ..group import definition

    mine = local.get("group")
    if not mine:
        raise GroupError("not_found", "this gateway is in no group")
    out = copy.deepcopy(local)
    out.pop("group", None)
    out["targets"] = []
    shared = open_location(mine["location"])
    try:
        def change(d: Any) -> Any:
            gws = dict(definition_dict(d).get("gateways") or {})
            gws.pop(mine["gateway"], None)
            _set(d, "gateways", gws)
            return d

        try:
            written = definition_dict(definition.update(shared, change, UPDATE_TIMEOUT))
        except OSError as e:
            raise GroupError("unavailable", f"cannot write the group definition in"
                             f" {mine['location']}: {e.strerror or e}") from None
    finally:
        shared.close()
    return out, written


RESTART_HINT = (
    "restart the daemon so it serves as a group member: 'systemctl restart gluster-iscsi'"
    " (or stop it and run 'gluster-iscsi --state-dir {state_dir} serve' again)"
)


# ------------------------------------------------------------------ a lone gateway's claim


def volume_of(backing: str, bstype: str | None = None) -> tuple[str, str, str] | None:
    """Where the identity and lease of a lone gateway's file live: (group directory
    location, what ``SharedDir.gfid`` takes, volume-relative path), or None for a file that
    is on no shared volume (a local disk: nothing to claim). Blocking (stat calls).

    A Gluster file is one through gfapi (``.gluster-iscsi`` at the volume's root, reached
    with the same servers) or on a ``fuse.glusterfs`` mount (at the mount's root, created on
    demand). Any other file under a directory that holds a ``.gluster-iscsi`` directory is
    treated alike (a shared tree of another kind; the tests' stand-in for a volume)."""
    from ..backstore.open import classify

    try:
        kind, where = classify(backing, bstype)
    except ValueError:
        return None
    if kind == "gluster":
        servers = ",".join(str(s) for s in getattr(where, "servers", ()))
        vol, path = getattr(where, "volume", ""), str(getattr(where, "path", ""))
        return f"gluster://{servers}/{vol}/{GROUP_DIR}", path, path
    if kind != "file":
        return None
    path = posixpath.normpath(os.path.abspath(str(where)))
    root = fuse_mount_root(path)
    if root is None:
        d = posixpath.dirname(path)
        while True:
            if os.path.isdir(posixpath.join(d, GROUP_DIR)):
                root = d
                break
            if d == "/":
                return None
            d = posixpath.dirname(d)
    return posixpath.join(root, GROUP_DIR), path, path[len(root.rstrip("/")):]


class LoneClaim:
    """A lone gateway's hold on one exported file: the group directory, the exclusive lock
    on byte 0 of ``luns/<gfid>.lease`` and the identity recorded for the file. One per file
    and process, counted: a LUN replaced by a new LogicalUnit of the same file (new options)
    opens the new one while the old still holds it (:data:`_HELD`)."""

    def __init__(self, key: tuple[str, str, str], shared: Any, lock: Any, gfid: str,
                 identity: dict[str, Any]) -> None:
        self.key = key
        self.shared = shared
        self.lock = lock
        self.gfid = gfid
        self.identity = identity
        self.users = 1

    def release(self) -> None:
        """Give the file back once its last LU here is closed: say so in the record,
        unlock, close."""
        with _HELD_LOCK:
            self.users -= 1
            if self.users > 0:
                return
            _HELD.pop(self.key, None)
        try:
            with contextlib.suppress(OSError):
                self.shared.write(lease_name(self.gfid), _lease_record(None))
            self.lock.release()
        finally:
            self.shared.close()


#: (group directory, gfid, holder) -> the claim this process holds on that file for the
#: daemon ``holder`` (tests run several daemons' controls in one process)
_HELD: dict[tuple[str, str, str], LoneClaim] = {}
_HELD_LOCK = threading.Lock()


def lease_name(gfid: str) -> str:
    return f"luns/{gfid}.lease"


def _lease_record(owner: str | None) -> dict[str, Any]:
    # The lease record's keys (group/lease.py LeaseRecord) plus "lone": not a group's owner.
    return {"owner": owner, "epoch": 0, "beat": 0, "seen": 0, "move_to": None,
            "lone": owner is not None}


def claim_lone(lun_cfg: dict[str, Any], holder: str) -> LoneClaim | None:
    """Claim the file of ``lun_cfg`` for this lone gateway (blocking): its identity (the
    recorded one, or the entry's recorded now) and its lease lock. None for a file on no
    shared volume. GroupError "busy" when another gateway holds it (naming it if its record
    does): put both in a group."""
    from ..group.shared import LockHeld

    where = volume_of(lun_cfg["backing"], lun_cfg.get("bstype"))
    if where is None:
        return None
    location, gfid_of, rel = where
    shared = open_location(location)
    try:
        try:
            gfid = str(shared.gfid(gfid_of))
        except OSError as e:
            raise GroupError("unavailable", f"cannot read the GFID of {lun_cfg['backing']}:"
                             f" {e.strerror or e}") from None
        name = lease_name(gfid)
        with _HELD_LOCK:
            mine = _HELD.get((location, gfid, holder))
            if mine is not None:  # this process holds it already (a LUN being replaced)
                mine.users += 1
        if mine is not None:
            shared.close()
            return mine
        try:
            lock = shared.try_lock(name, 0)
        except LockHeld:
            rec = shared.read(name)
            owner = (rec.data if rec is not None else {}).get("owner")
            raise GroupError(
                "busy", f"{lun_cfg['backing']} is exported by gateway"
                f" {owner or '(another, unnamed)'}", "two gateways may export one file only"
                " as members of one gateway group: put both in a group (gluster-iscsi group"
                " create / group join), or stop exporting it there",
            ) from None  # fmt: skip
        try:
            ident = record_lun_identity(shared, gfid, lun_cfg, rel)
            shared.write(name, _lease_record(holder))
        except BaseException:
            lock.release()
            raise
        claim = LoneClaim((location, gfid, holder), shared, lock, gfid, ident)
        with _HELD_LOCK:
            _HELD[claim.key] = claim
        return claim
    except BaseException:
        shared.close()
        raise


def lone_identity(lun_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The identity a lone gateway's new LUN gets: the one recorded for its file in the
    volume's group directory (recording the entry's if none yet), or None for a file on no
    shared volume (blocking)."""
    where = volume_of(lun_cfg["backing"], lun_cfg.get("bstype"))
    if where is None:
        return None
    location, gfid_of, rel = where
    shared = open_location(location)
    try:
        try:
            gfid = str(shared.gfid(gfid_of))
        except OSError as e:
            raise GroupError("unavailable", f"cannot read the GFID of {lun_cfg['backing']}:"
                             f" {e.strerror or e}") from None
        return record_lun_identity(shared, gfid, lun_cfg, rel)
    finally:
        shared.close()


# ------------------------------------------------------------------ the volume's options


def parse_volume_options(text: str) -> dict[str, str]:
    """``gluster volume get VOL all`` -> {option: value} ("42 (DEFAULT)" -> "42")."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "." in parts[0] and not parts[0].startswith("-"):
            out[parts[0]] = parts[1]
    return out


def brick_drop_seconds(options: dict[str, str]) -> tuple[float, str] | None:
    """How soon a brick drops a client that went silent (its locks go with it), and why:
    TCP keepalive (time + interval x count, if ``transport.keepalive`` is on) or
    ``server.tcp-user-timeout`` (unacknowledged data; 0: the kernel's, minutes), whichever
    comes first. None when the options do not say."""

    def num(key: str) -> float | None:
        try:
            return float(options[key])
        except (KeyError, ValueError):
            return None

    found: list[tuple[float, str]] = []
    if options.get("transport.keepalive", "1") not in ("0", "off", "false", "no"):
        t, i, c = (num("server.keepalive-time"), num("server.keepalive-interval"),
                   num("server.keepalive-count"))
        if t is not None and i is not None and c is not None:
            found.append((t + i * c, f"server.keepalive-time {t:g} + interval {i:g} x count"
                                     f" {c:g}"))
    tcp = num("server.tcp-user-timeout")
    if tcp:
        found.append((tcp, f"server.tcp-user-timeout {tcp:g}"))
    return min(found) if found else None


def volume_and_host(location: str) -> tuple[str, str] | None:
    """(volume, a server) of the group directory's volume, if known."""
    access = access_for(location)
    if access.kind == "gfapi":
        host = access.url_prefix.split("://", 1)[1].split("/", 1)[0].split(",")[0]
        return access.volume, host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if access.kind == "fuse":
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                info = f.read()
        except OSError:
            return None
        for line in info.splitlines():
            left, _, right = line.partition(" - ")
            fields, parts = left.split(), right.split()
            if len(fields) >= 5 and fields[4] == access.root and len(parts) >= 2:
                host, _, vol = parts[1].partition(":")
                return vol.strip("/"), host
    return None


#: What ``group create`` says when it cannot read the volume's options.
SKIP_VOLUME_CHECK_HINT = ("run it where the gluster CLI reaches glusterd (a server of the"
                          " volume), or give --skip-volume-check and check yourself that"
                          " lease_seconds stays under the bricks' keepalive and"
                          " server.tcp-user-timeout (docs/OPERATIONS.md, HA)")


def check_volume_options(location: str, lease_seconds: float) -> str | None:
    """Why ``lease_seconds`` is not safe on this volume (HA.md decision 3: the owner must
    fence itself before a brick can drop it and let another gateway take its lock), or None
    (safe, or the location is not on a Gluster volume: nothing to check). A Gluster volume
    whose options cannot be read here (no gluster CLI, glusterd unreachable) raises
    GroupError ``unavailable``: an unchecked lease could let two gateways write (the caller
    may skip the check on purpose: ``create_group(skip_volume_check=True)``)."""
    import shutil
    import subprocess

    where = volume_and_host(location)
    if where is None:
        return None
    volume, host = where

    def cannot(why: str) -> GroupError:
        return GroupError("unavailable", f"cannot check the options of volume {volume}"
                          f" against lease_seconds {lease_seconds:g}: {why}",
                          SKIP_VOLUME_CHECK_HINT)

    exe = shutil.which("gluster")
    if exe is None:
        raise cannot("no gluster CLI here")
    # `volume get` asks the local glusterd (it fails through --remote-host): a gateway that
    # is also a server answers; another tries the volume's server, and says when it cannot.
    proc: Any = None
    for remote in ([], [f"--remote-host={host}"]):
        try:
            proc = subprocess.run([exe, "--mode=script", *remote, "volume", "get", volume, "all"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise cannot(str(e)) from None
        if proc.returncode == 0:
            break
    if proc is None or proc.returncode != 0:
        raise cannot((proc.stderr or proc.stdout).strip() if proc is not None else "no answer")
    options = parse_volume_options(proc.stdout)
    if not options:
        raise cannot("`gluster volume get` listed no options")
    return lease_problem(volume, options, lease_seconds)


#: A client fails the I/O it has pending on a silent brick connection about this many
#: ping timeouts after the cut (measured: 30 s with network.ping-timeout 10; docs/HA.md).
PING_TIMEOUTS_TO_FAIL = 3


def lease_problem(volume: str, options: dict[str, str], lease_seconds: float) -> str | None:
    """Why a group's lease is not safe with these volume options, or None (HA.md, decision 3).

    Two orders must hold after an owner is cut off from the bricks: it must fence itself
    (``lease_seconds``) before a brick can drop it and so free its lock for another gateway;
    and its Gluster client must fail the writes it already issued before that too, or one of
    them lands after the new owner wrote (measured with the default ping timeout, 42 s)."""
    drop = brick_drop_seconds(options)
    if drop is None:
        return None
    if drop[0] <= lease_seconds:
        return (f"volume {volume}: a brick drops a silent client after {drop[0]:g} s"
                f" ({drop[1]}), not longer than lease_seconds {lease_seconds:g}: a hung owner"
                " could lose its lock before it stops issuing writes")
    try:
        ping = float(options.get("network.ping-timeout", "42"))
    except ValueError:
        ping = 42.0
    if PING_TIMEOUTS_TO_FAIL * ping >= drop[0]:
        return (f"volume {volume}: network.ping-timeout {ping:g} lets a cut-off owner's"
                f" pending writes outlive its lock (a brick frees it after {drop[0]:g} s,"
                f" {drop[1]}; the client fails them only after ~{PING_TIMEOUTS_TO_FAIL} ping"
                f" timeouts): set 'gluster volume set {volume} network.ping-timeout"
                f" {max(1, int(drop[0] / (PING_TIMEOUTS_TO_FAIL + 1)))}'")
    return None
