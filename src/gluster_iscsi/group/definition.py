"""The group definition, record ``group.json`` of the group directory (HA.md decision 6).

Shape (the record's data)::

    {"name": "g1", "version": 7,
     "settings": {"beat_seconds": 1.0, "lease_seconds": 5.0},
     "gateways": {"gw-a": {"number": 1, "addresses": ["192.0.2.1:3260"], "joined_at": 1.7e9}},
     "targets": [ ... ],          # as the daemon config's "targets" (control/config.py)
     "luns": {"<gfid>": {"target": "iqn...", "lun": 1, "path": "/luns/d1.img",
                         "preferred": "gw-a"}}}

Targets are stored as plain dicts: this layer cannot import ``control/`` (its validation);
``control`` validates them before :func:`update` and after :func:`load`. The CHAP accounts
the targets name are ``control``'s own record beside this one (``accounts.json``).

Changes go through :func:`update`: lock byte 0 of ``group.json``, read the latest version,
apply the caller's function, version + 1, write, unlock. Every gateway polls the version.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .shared import SharedDir

#: The record's name in the group directory.
RECORD = "group.json"
#: Gateway numbers (TPGT, relative target port identifier, target port group): 1..255.
MIN_NUMBER, MAX_NUMBER = 1, 255
DEFAULT_SETTINGS: dict[str, float] = {"beat_seconds": 1.0, "lease_seconds": 5.0}
#: Seconds :func:`update` and :func:`create` wait for the definition's lock by default.
LOCK_TIMEOUT = 10.0


class DefinitionExists(ValueError):
    """:func:`create` found a group definition already there."""


@dataclass
class GroupDefinition:
    """The group: its name, version (bumped by every :func:`update`), settings, gateways
    ``{name: {number, addresses: ["host:port"], joined_at}}``, targets (the daemon config's
    shape) and LUNs ``{gfid: {target, lun, path (volume-relative), preferred (gateway)}}``."""

    name: str
    version: int = 0
    settings: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    luns: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def beat_seconds(self) -> float:
        return float(self.settings.get("beat_seconds", DEFAULT_SETTINGS["beat_seconds"]))

    @property
    def lease_seconds(self) -> float:
        return float(self.settings.get("lease_seconds", DEFAULT_SETTINGS["lease_seconds"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "settings": copy.deepcopy(self.settings),
            "gateways": copy.deepcopy(self.gateways),
            "targets": copy.deepcopy(self.targets),
            "luns": copy.deepcopy(self.luns),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupDefinition:
        """From the record's data, checked (:func:`check`); ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError("group definition: not an object")
        defn = cls(
            name=data.get("name"),  # type: ignore[arg-type]  # checked below
            version=data.get("version", 0),
            settings={**DEFAULT_SETTINGS, **(data.get("settings") or {})},
            gateways=copy.deepcopy(data.get("gateways") or {}),
            targets=copy.deepcopy(data.get("targets") or []),
            luns=copy.deepcopy(data.get("luns") or {}),
        )
        check(defn)
        return defn


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check(defn: GroupDefinition) -> None:
    """The definition's own consistency (not the targets' contents: control checks those):
    raises ValueError naming the field."""
    if not isinstance(defn.name, str) or not defn.name.strip():
        raise ValueError("group definition: name must be a non-empty string")
    if isinstance(defn.version, bool) or not isinstance(defn.version, int) or defn.version < 0:
        raise ValueError(f"group definition: version {defn.version!r} is not a count")
    if not isinstance(defn.settings, dict):
        raise ValueError("group definition: settings must be an object")
    for key in ("beat_seconds", "lease_seconds"):
        v: Any = defn.settings.get(key)
        if not _num(v) or v <= 0:
            raise ValueError(f"group definition: settings.{key} {v!r} must be > 0 seconds")
    if float(defn.settings["lease_seconds"]) <= float(defn.settings["beat_seconds"]):
        raise ValueError("group definition: settings.lease_seconds must be longer than"
                         " settings.beat_seconds (a lease must survive a beat)")
    if not isinstance(defn.gateways, dict):
        raise ValueError("group definition: gateways must be an object")
    numbers: dict[int, str] = {}
    for gw, info in defn.gateways.items():
        where = f"group definition: gateways.{gw}"
        if not isinstance(info, dict):
            raise ValueError(f"{where} must be an object")
        n = info.get("number")
        if isinstance(n, bool) or not isinstance(n, int) or not MIN_NUMBER <= n <= MAX_NUMBER:
            raise ValueError(f"{where}.number {n!r} is not in {MIN_NUMBER}..{MAX_NUMBER}")
        if n in numbers:
            raise ValueError(f"{where}.number {n} is also gateway {numbers[n]}'s")
        numbers[n] = gw
        addrs = info.get("addresses", [])
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise ValueError(f"{where}.addresses must be a list of \"host:port\" strings")
    if not isinstance(defn.targets, list) or not all(isinstance(t, dict) for t in defn.targets):
        raise ValueError("group definition: targets must be a list of objects")
    if not isinstance(defn.luns, dict):
        raise ValueError("group definition: luns must be an object keyed by GFID")
    for gfid, lun in defn.luns.items():
        where = f"group definition: luns.{gfid}"
        if not isinstance(lun, dict):
            raise ValueError(f"{where} must be an object")
        pref = lun.get("preferred")
        if pref is not None and pref not in defn.gateways:
            raise ValueError(f"{where}.preferred: no gateway {pref!r} in the group")


def load(shared: SharedDir) -> GroupDefinition | None:
    """The latest definition, or None if the directory holds none. ValueError if the record
    is there but malformed."""
    rec = shared.read(RECORD)
    return GroupDefinition.from_dict(rec.data) if rec is not None else None


def create(shared: SharedDir, name: str, *, timeout: float = LOCK_TIMEOUT,
           settings: dict[str, float] | None = None) -> GroupDefinition:
    """A new, empty group named ``name`` (version 1). Raises :class:`DefinitionExists` if the
    directory already holds a definition (of any name)."""
    with shared.lock(RECORD, 0, timeout):
        old = shared.read(RECORD)
        if old is not None:
            raise DefinitionExists(
                f"group directory {shared.location} already holds group"
                f" {old.data.get('name')!r} (version {old.data.get('version')})"
            )
        defn = GroupDefinition(name=name, version=1,
                               settings={**DEFAULT_SETTINGS, **(settings or {})})
        check(defn)
        shared.write(RECORD, defn.to_dict())
    return defn


def update(shared: SharedDir, fn: Callable[[GroupDefinition], None],
           timeout: float = LOCK_TIMEOUT) -> GroupDefinition:
    """Change the definition: under the lock on byte 0 of ``group.json``, read the latest,
    call ``fn(defn)`` (it changes ``defn`` in place), check it, bump the version, write.
    If ``fn`` or the check raises, nothing is written and the exception propagates.

    Raises LookupError if there is no definition yet (:func:`create` first), TimeoutError if
    the lock stays held for ``timeout`` seconds."""
    with shared.lock(RECORD, 0, timeout):
        rec = shared.read(RECORD)
        if rec is None:
            raise LookupError(f"no group definition in group directory {shared.location}")
        defn = GroupDefinition.from_dict(rec.data)
        base = defn.version
        fn(defn)
        defn.version = base + 1
        check(defn)
        shared.write(RECORD, defn.to_dict(), seq=rec.seq + 1)
    return defn


def assign_number(defn: GroupDefinition, gateway: str) -> int:
    """The number of ``gateway``: its own if it is a member, else the lowest free one in
    1..255. Raises ValueError if all 255 are taken."""
    info = defn.gateways.get(gateway)
    if info is not None and isinstance(info.get("number"), int):
        return int(info["number"])
    used = {g.get("number") for g in defn.gateways.values()}
    for n in range(MIN_NUMBER, MAX_NUMBER + 1):
        if n not in used:
            return n
    raise ValueError(f"group {defn.name} has {MAX_NUMBER} gateways: no number left")
