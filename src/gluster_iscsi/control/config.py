"""The declarative config: schema, validation, migration and atomic persistence.

One JSON document describes everything an admin configured; the daemon restores it at start
(before listeners open) and the control API rewrites it after every accepted change.
``reconcile.apply`` makes a running daemon match a document.

Shape (schema version 1)::

    {
      "version": 1, "epoch": 7,                       # epoch: bumped by every save
      "params": {"MaxRecvDataSegmentLength": "262144"},   # daemon-wide login key values
      "portals": [{"host": "0.0.0.0", "port": 3260, "advertise": null}],
      "accounts": {"alice": "secret-of-12+"},         # CHAP accounts (tgt's account pool)
      "discovery": {"incoming": ["alice"], "outgoing": null},
      "targets": [{
        "name": "iqn.2026-11.org.example:t1", "tid": 1, "alias": null,
        "luns": [{"lun": 1, "backing": "/srv/t1.img", "bstype": "rdwr", "size": null,
                  "uuid": "...", "serial": "...", "read_only": false, "block_size": 512}],
        "acl": [{"network": "ALL"}, {"initiator": "iqn...:host1",
                 "incoming": ["bob"], "outgoing": null}],
        "incoming": ["alice"], "outgoing": null,
        "params": {}
      }],
      "group": {"location": "/mnt/vol/.gluster-iscsi", "gateway": "gw1", "number": 1,
                "beat_seconds": 1.0, "lease_seconds": 5.0}   # optional: a gateway group
    }

Accounts are named once and referenced by user name (as tgt does), so a secret lives in one
place. Secrets never leave this module in a log line: :func:`redact` masks them for output.

Persistence follows rtslib's habit, minus its flaw: the file is written to a temp file with
mode 0600 (set with os.open, no umask games), fsynced, the previous version kept as
``config.json.prev``, then renamed over ``config.json`` and the directory fsynced.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import posixpath
import re
import stat
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model.names import InvalidName, is_network, validate_name

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
PREVIOUS_FILE = "config.json.prev"
SOCKET_FILE = "control.sock"
DEFAULT_STATE_DIR = "/var/lib/gluster-iscsi"
STATE_DIR_ENV = "GLUSTER_ISCSI_STATE_DIR"
DEMO_TARGET = "iqn.2026-11.org.gluster-iscsi:demo"
MIN_SECRET_BYTES = 12
MAX_SECRET_BYTES = 255
MAX_LUN = 16383
BSTYPES = ("rdwr", "aio", "glfs", "file", "memory", "gluster")
BLOCK_SIZES = (512, 1024, 2048, 4096)


def _int_range(lo: int, hi: int) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        if not v.isdigit() or not lo <= int(v) <= hi:
            return f"must be a whole number from {lo} to {hi}"
        return None

    return check


#: Settings tgt lists among a target's parameters that are not login keys: they tune the
#: daemon (NOP-In keepalive, command queue), not the negotiation.
DAEMON_SETTINGS: dict[str, Callable[[str], str | None]] = {
    "nop_interval": _int_range(0, 3600),
    "nop_count": _int_range(0, 65535),
    "MaxQueueCmd": _int_range(1, 65535),
}


def login_keys() -> frozenset[str]:
    """Login keys an admin may set: the negotiator's own list (one place per fact), less
    AuthMethod, which the CHAP accounts decide."""
    from ..iscsi.params import CONFIGURABLE

    return frozenset(CONFIGURABLE) - {"AuthMethod"}


def _all_params() -> dict[str, str]:
    """lower-case name -> canonical name, for every settable parameter."""
    return {k.lower(): k for k in (*login_keys(), *DAEMON_SETTINGS)}


def default_login_params() -> dict[str, str]:
    from ..iscsi.connection import DEFAULT_TARGET_PARAMS

    return dict(DEFAULT_TARGET_PARAMS)


class ConfigError(ValueError):
    """A config that cannot be applied. ``field`` names the place, ``hint`` what to do."""

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        self.field = field
        self.message = message
        self.hint = hint
        text = f"{field}: {message}" if field else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


# --------------------------------------------------------------------------------- paths


def resolve_state_dir(state_dir: str | os.PathLike[str] | None = None) -> Path:
    return Path(state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def config_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / CONFIG_FILE


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SOCKET_FILE


# ----------------------------------------------------------------------------- defaults


def empty_config() -> dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "epoch": 0,
        "params": {},
        "portals": [],
        "accounts": {},
        "discovery": {"incoming": [], "outgoing": None},
        "targets": [],
    }


def new_lun(lun: int, backing: str, bstype: str | None = None, **extra: Any) -> dict[str, Any]:
    entry = {
        "lun": lun,
        "backing": backing,
        "bstype": bstype or guess_bstype(backing),
        "size": None,
        "read_only": False,
        "block_size": 512,
    }
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def guess_bstype(backing: str) -> str:
    if backing.startswith("memory:"):
        return "memory"
    if backing.startswith("gluster://"):
        return "gluster"
    if re.match(r"^[^/@]+@[^/:]+:.+$", backing):  # tgt's glfs form vol@host:path
        return "glfs"
    return "rdwr"


def _classify(backing: str, bstype: str | None) -> tuple[str, Any] | None:
    from ..backstore.open import classify

    try:
        return classify(backing, bstype)
    except ValueError:
        return None


def local_path(backing: str, bstype: str | None = None) -> str | None:
    """The path of a backing string that names a local file or device, else None."""
    kind = _classify(backing, bstype)
    return kind[1] if kind is not None and kind[0] == "file" else None


def absolute_backing(backing: str, bstype: str | None = None) -> str:
    """A relative local path made absolute against this process's working directory: what
    the CLI sends, so the daemon (whose directory is elsewhere) opens the file meant. No
    ``bstype`` means the one the LUN entry will get (tgt's ``vol@host:path`` is glfs)."""
    path = local_path(backing, bstype or guess_bstype(backing))
    if path is None or os.path.isabs(path):
        return backing
    return os.path.abspath(path)


def backing_identity(backing: str, bstype: str | None = None, *,
                     stat_files: bool = True) -> str | None:
    """What a backing string names, whatever its spelling: for a local file that exists, its
    device and inode (a hard link or a bind mount is the same file; a block device is its
    device number, whatever node names it), else its real path; volume and path of a Gluster
    file (whatever the server list); None for a memory store (each is its own) or a string
    that does not parse (validation says why)."""
    kind = _classify(backing, bstype)
    if kind is None or kind[0] == "memory":
        return None
    if kind[0] == "file":
        if not stat_files:  # the daemon's event loop: no file system call (a hung mount)
            return "file:" + posixpath.normpath(kind[1])
        try:
            st = os.stat(kind[1])
        except (OSError, ValueError):  # missing (a file to create) or unreadable
            return "file:" + os.path.realpath(kind[1])
        if stat.S_ISBLK(st.st_mode):
            return f"blkdev:{st.st_rdev}"
        if stat.S_ISREG(st.st_mode):
            return f"inode:{st.st_dev}:{st.st_ino}"
        return "file:" + os.path.realpath(kind[1])
    return f"gluster:{kind[1].volume}:{posixpath.normpath(kind[1].path)}"


def exported_as(
    cfg: dict[str, Any], backing: str, bstype: str | None = None, *, stat_files: bool = True
) -> tuple[str, int] | None:
    """(target name, LUN) already exporting the file ``backing`` names, if any."""
    key = backing_identity(backing, bstype, stat_files=stat_files)
    if key is None:
        return None
    for t in cfg["targets"]:
        for lu in t["luns"]:
            if backing_identity(lu["backing"], lu.get("bstype"), stat_files=stat_files) == key:
                return t["name"], lu["lun"]
    return None


def check_exports(cfg: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` if a validated config exports one file twice, the file
    known by its device and inode (may block on a hung mount: the daemon runs it off its
    event loop, with a time limit)."""
    _check_exports(cfg["targets"], stat_files=True)


def _check_exports(targets: list[dict[str, Any]], *, stat_files: bool) -> None:
    exported: dict[str, tuple[str, int]] = {}
    for i, t in enumerate(targets):
        for lu in t["luns"]:
            key = backing_identity(lu["backing"], lu["bstype"], stat_files=stat_files)
            if key is None:
                continue
            if key in exported:
                name, n = exported[key]
                raise ConfigError(
                    f"targets[{i}].luns",
                    f"LUN {lu['lun']} of {t['name']} exports {lu['backing']}, which LUN {n} of"
                    f" {name} already exports",
                    "one backing file is one LUN (one identity): export it once",
                )
            exported[key] = (t["name"], lu["lun"])


def check_lun_size(nbytes: int, block_size: int, field: str) -> int:
    """A LUN size is a whole number of blocks, at least one (10 bytes would be 0 blocks)."""
    if nbytes < block_size:
        raise ConfigError(
            field,
            f"{nbytes} bytes is less than one {block_size}-byte block",
            "give a size of at least one block, e.g. 1MiB or 10GiB",
        )
    if nbytes % block_size:
        up = -(-nbytes // block_size) * block_size
        raise ConfigError(
            field,
            f"{nbytes} bytes is not a whole number of {block_size}-byte blocks",
            f"give a multiple of {block_size}, e.g. {up}",
        )
    return nbytes


def demo_config(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One target with a 1 GiB sparse file LUN open to everyone: the zero-config start."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    image = (state / "demo-lun1.img").absolute()  # stored absolute, as every backing path
    if not image.exists():
        with open(image, "wb") as f:
            f.truncate(1 << 30)
    cfg = empty_config()
    cfg["portals"] = [{"host": "0.0.0.0", "port": 3260, "advertise": None}]
    cfg["targets"] = [
        {
            "name": DEMO_TARGET,
            "tid": 1,
            "alias": "demo",
            "luns": [new_lun(1, str(image), "rdwr", size=1 << 30)],
            "acl": [{"network": "ALL"}],
            "incoming": [],
            "outgoing": None,
            "params": {},
        }
    ]
    return validate(cfg)


# ---------------------------------------------------------------------------- migration

#: version N -> function turning a version-N document into version N+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(cfg: dict[str, Any]) -> dict[str, Any]:
    version = cfg.get("version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1:
        raise ConfigError("version", f"unknown schema version {version!r}")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            "version",
            f"schema version {version} is newer than this gluster-iscsi understands"
            f" ({SCHEMA_VERSION})",
            "upgrade gluster-iscsi or restore an older config",
        )
    while version < SCHEMA_VERSION:
        cfg = MIGRATIONS[version](copy.deepcopy(cfg))
        version += 1
        cfg["version"] = version
    return cfg


# --------------------------------------------------------------------------- validation


def check_secret(secret: Any, field: str) -> str:
    if not isinstance(secret, str) or not secret:
        raise ConfigError(field, "the CHAP secret is missing")
    n = len(secret.encode("utf-8"))
    if n < MIN_SECRET_BYTES:
        raise ConfigError(
            field,
            f"the CHAP secret is {n} bytes; at least {MIN_SECRET_BYTES} are required",
            "RFC 7143 section 12.1.3: shorter secrets can be brute-forced from one exchange",
        )
    if n > MAX_SECRET_BYTES:
        raise ConfigError(field, f"the CHAP secret is {n} bytes; at most {MAX_SECRET_BYTES}")
    return secret


def check_user(user: Any, field: str) -> str:
    if not isinstance(user, str) or not user or any(c.isspace() for c in user):
        raise ConfigError(
            field, f"invalid CHAP user name {user!r}", "use a non-empty name without spaces"
        )
    return user


def check_param(name: str, value: Any, field: str) -> tuple[str, str]:
    canonical = _all_params().get(str(name).lower())
    if canonical is None:
        raise ConfigError(
            field,
            f"unknown parameter {name!r}",
            "known: " + ", ".join(sorted(_all_params().values(), key=str.lower)),
        )
    value = str(value)
    if canonical in DAEMON_SETTINGS:
        problem = DAEMON_SETTINGS[canonical](value)
        if problem:
            raise ConfigError(f"{field}.{canonical}", f"value {value!r} {problem}")
        return canonical, value
    from ..iscsi.params import _validate_target_value

    try:
        return canonical, _validate_target_value(canonical, value)
    except ValueError as e:
        raise ConfigError(f"{field}.{canonical}", str(e).split(": ", 1)[-1]) from None


def _check_bursts(params: dict[str, str], field: str) -> None:
    first, most = int(params["FirstBurstLength"]), int(params["MaxBurstLength"])
    if first > most:
        raise ConfigError(
            field,
            f"FirstBurstLength {first} exceeds MaxBurstLength {most}",
            "RFC 7143 13.14: lower FirstBurstLength or raise MaxBurstLength",
        )


def _params(raw: Any, field: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(field, "must be an object of name: value")
    out: dict[str, str] = {}
    for k, v in raw.items():
        name, value = check_param(k, v, field)
        out[name] = value
    return out


def _list(raw: Any, field: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(field, "must be a list")
    return raw


def _int(raw: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise ConfigError(field, f"{raw!r} is not a whole number from {lo} to {hi}")
    return raw


def _accounts_ref(raw: Any, accounts: dict[str, str], field: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(field, "must be a list of account user names")
    for i, user in enumerate(raw):
        if not isinstance(user, str):
            raise ConfigError(f"{field}[{i}]", f"{user!r} is not an account user name")
        if user not in accounts:
            raise ConfigError(
                f"{field}[{i}]", f"no CHAP account {user!r}", "create it first (auth account-create)"
            )
    if len(set(raw)) != len(raw):
        raise ConfigError(field, "an account is listed twice")
    return list(raw)


def _account_ref(raw: Any, accounts: dict[str, str], field: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ConfigError(field, f"{raw!r} is not an account user name")
    if raw not in accounts:
        raise ConfigError(field, f"no CHAP account {raw!r}", "create it first (auth account-create)")
    return str(raw)


def validate_portal(raw: Any, field: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(field, "must be an object with host, port, advertise")
    host = raw.get("host")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{field}.host", "missing listening address")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", host):
            raise ConfigError(
                f"{field}.host", f"{host!r} is not an IP address or host name"
            ) from None
    port = _int(raw.get("port", 3260), f"{field}.port", 1, 65535)
    adv = raw.get("advertise")
    if adv is not None and (not isinstance(adv, str) or not adv or " " in adv):
        raise ConfigError(f"{field}.advertise", f"{adv!r} is not host[:port]")
    return {"host": host.strip("[]"), "port": port, "advertise": adv}


def validate_lun(raw: Any, field: str, target: str = "") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(field, "must be an object")
    lun = _int(raw.get("lun"), f"{field}.lun", 0, MAX_LUN)
    backing = raw.get("backing")
    if not isinstance(backing, str) or not backing:
        raise ConfigError(
            f"{field}.backing",
            "missing backing store",
            "give a file path, memory:SIZE, gluster://host/vol/path or vol@host:path",
        )
    bstype = raw.get("bstype") or guess_bstype(backing)
    if not isinstance(bstype, str) or bstype not in BSTYPES:
        raise ConfigError(
            f"{field}.bstype",
            f"unknown backing store type {bstype!r}",
            "use one of " + ", ".join(BSTYPES),
        )
    path = local_path(backing, bstype)
    if path is not None and not os.path.isabs(path):
        raise ConfigError(
            f"{field}.backing",
            f"{backing!r} is a relative path",
            "give an absolute path (the CLI makes the paths it is given absolute against its"
            " working directory; a config file's paths must already be)",
        )
    block_size = _int(raw.get("block_size", 512), f"{field}.block_size", 512, 4096)
    if block_size not in BLOCK_SIZES:
        raise ConfigError(f"{field}.block_size", f"{block_size} is not one of {BLOCK_SIZES}")
    size = raw.get("size")
    if size is not None:
        size = check_lun_size(_int(size, f"{field}.size", 1, 1 << 62), block_size, f"{field}.size")
    kind = _classify(backing, bstype)
    if kind is not None and kind[0] == "memory" and kind[1]:
        from ..backstore.size import parse_size

        try:
            check_lun_size(parse_size(kind[1]), block_size, f"{field}.backing")
        except ValueError as e:
            raise ConfigError(f"{field}.backing", str(e)) from None
    read_only = raw.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ConfigError(f"{field}.read_only", "must be true or false")
    # A LUN written without a uuid gets one derived from where it is, so validating the same
    # file twice (a reload of a hand-edited config) gives the same WWID, not a new disk.
    uid = raw.get("uuid") or str(
        uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"gluster-iscsi:{target.lower()}/{lun}/{backing}")
    )
    try:
        uid = str(uuidlib.UUID(str(uid)))
    except ValueError:
        raise ConfigError(f"{field}.uuid", f"{uid!r} is not a UUID") from None
    serial = raw.get("serial") or uuidlib.UUID(uid).hex[:16]
    if not isinstance(serial, str) or not re.match(r"^[\x21-\x7e]{1,64}$", serial):
        raise ConfigError(f"{field}.serial", f"{serial!r} is not 1-64 printable ASCII characters")
    out = {
        "lun": lun,
        "backing": backing,
        "bstype": bstype,
        "size": size,
        "uuid": uid,
        "serial": serial,
        "read_only": read_only,
        "block_size": block_size,
    }
    options = raw.get("options")
    if options:
        if not isinstance(options, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | bool) for k, v in options.items()
        ):
            raise ConfigError(f"{field}.options", "must be an object of name: value")
        out["options"] = options
    return out


def validate_rule(raw: Any, accounts: dict[str, str], field: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or (("initiator" in raw) == ("network" in raw)):
        raise ConfigError(field, "an ACL rule has exactly one of initiator or network")
    if "initiator" in raw:
        name = raw["initiator"]
        if not isinstance(name, str):
            raise ConfigError(f"{field}.initiator", "must be a string")
        try:
            validate_name(name, force=raw.get("forced") is True)
        except InvalidName as e:
            raise ConfigError(
                f"{field}.initiator",
                str(e),
                'fix the name, or add "forced": true to the rule to keep it',
            ) from None
        rule: dict[str, Any] = {"initiator": name}
        if raw.get("forced") is True:
            rule["forced"] = True
        incoming = _accounts_ref(raw.get("incoming"), accounts, f"{field}.incoming")
        outgoing = _account_ref(raw.get("outgoing"), accounts, f"{field}.outgoing")
        if incoming or outgoing:
            rule["incoming"] = incoming
            rule["outgoing"] = outgoing
        return rule
    net = raw["network"]
    if not isinstance(net, str) or not is_network(net):
        raise ConfigError(
            f"{field}.network",
            f"{net!r} is not ALL, an address or a CIDR network",
            "e.g. 10.0.0.0/24, 192.168.1.5 or ALL",
        )
    if raw.get("incoming") or raw.get("outgoing"):
        raise ConfigError(field, "CHAP accounts can be set per initiator name, not per network")
    return {"network": "ALL" if net.upper() == "ALL" else net}


def validate_target(raw: Any, accounts: dict[str, str], field: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(field, "must be an object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{field}.name", "missing target name")
    forced = raw.get("forced") is True
    try:
        validate_name(name, force=forced)
    except InvalidName as e:
        raise ConfigError(
            f"{field}.name", str(e), 'fix the name, or add "forced": true to the target to keep it'
        ) from None
    tid = _int(raw.get("tid"), f"{field}.tid", 1, 2**31 - 1)
    alias = raw.get("alias")
    if alias is not None and (not isinstance(alias, str) or len(alias.encode()) > 255):
        raise ConfigError(f"{field}.alias", "must be a string of at most 255 bytes")
    luns = [
        validate_lun(x, f"{field}.luns[{i}]", name)
        for i, x in enumerate(_list(raw.get("luns"), f"{field}.luns"))
    ]
    seen: set[int] = set()
    for lu in luns:
        if lu["lun"] in seen:
            raise ConfigError(f"{field}.luns", f"LUN {lu['lun']} is defined twice")
        seen.add(lu["lun"])
    luns.sort(key=lambda x: x["lun"])
    acl = [
        validate_rule(x, accounts, f"{field}.acl[{i}]")
        for i, x in enumerate(_list(raw.get("acl"), f"{field}.acl"))
    ]
    keys = [r.get("initiator", "").lower() or r["network"] for r in acl]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{field}.acl", "a rule is listed twice")
    out = {
        "name": name,
        "tid": tid,
        "alias": alias,
        "luns": luns,
        "acl": acl,
        "incoming": _accounts_ref(raw.get("incoming"), accounts, f"{field}.incoming"),
        "outgoing": _account_ref(raw.get("outgoing"), accounts, f"{field}.outgoing"),
        "params": _params(raw.get("params"), f"{field}.params"),
    }
    if forced:
        out["forced"] = True
    return out


GATEWAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _seconds(raw: Any, field: str, default: float) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 3600:
        raise ConfigError(field, f"{raw!r} is not a number of seconds above 0 (at most 3600)")
    return float(raw)


def validate_group(raw: Any, field: str = "group") -> dict[str, Any]:
    """This daemon's membership of a gateway group (docs/HA.md): where the group directory
    is, this gateway's name and number, its heartbeat and lease."""
    if not isinstance(raw, dict):
        raise ConfigError(field, "must be an object with location, gateway, number",
                          'e.g. {"location": "/mnt/vol/.gluster-iscsi", "gateway": "gw1", '
                          '"number": 1}')
    extra = set(raw) - {"location", "gateway", "number", "beat_seconds", "lease_seconds"}
    if extra:
        raise ConfigError(f"{field}.{sorted(extra)[0]}", "unknown key",
                          "known keys: location, gateway, number, beat_seconds, lease_seconds")
    location = raw.get("location")
    if not isinstance(location, str) or not location.strip():
        raise ConfigError(f"{field}.location", "missing group directory",
                          "give a directory on the volume's FUSE mount (an absolute path) or "
                          "gluster://host/VOLUME[/dir]")
    if not re.match(r"^gluster(\+[a-z]+)?://", location, re.IGNORECASE) \
            and not os.path.isabs(location):
        raise ConfigError(f"{field}.location", f"{location!r} is a relative path",
                          "give an absolute path or a gluster:// URL")
    gateway = raw.get("gateway")
    if not isinstance(gateway, str) or not GATEWAY_NAME.match(gateway):
        raise ConfigError(f"{field}.gateway", f"{gateway!r} is not a gateway name",
                          "1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                          "digit (e.g. the host name)")
    number = _int(raw.get("number"), f"{field}.number", 1, 255)
    beat = _seconds(raw.get("beat_seconds"), f"{field}.beat_seconds", 1.0)
    lease = _seconds(raw.get("lease_seconds"), f"{field}.lease_seconds", 5.0)
    if lease < 2 * beat:
        raise ConfigError(f"{field}.lease_seconds",
                          f"{lease:g} s is under two heartbeats ({beat:g} s each)",
                          "a lease must outlast at least two missed heartbeats: raise "
                          "lease_seconds or lower beat_seconds")
    return {"location": location, "gateway": gateway, "number": number,
            "beat_seconds": beat, "lease_seconds": lease}


def validate(cfg: Any, *, stat_files: bool = True) -> dict[str, Any]:
    """Check a whole document and return its normalized form (missing ids filled in).

    Raises :class:`ConfigError` naming the first bad field and what to fix. With
    ``stat_files=False`` (the daemon's event loop, where a hung mount must not stall every
    session) a file exported twice is found by its path only; the daemon then runs
    :func:`check_exports` off the loop, which knows hard links and bind mounts too.
    """
    if not isinstance(cfg, dict):
        raise ConfigError("", "the config must be a JSON object")
    cfg = migrate(cfg)
    known = {"version", "epoch", "params", "portals", "accounts", "discovery", "targets",
             "group"}
    extra = set(cfg) - known
    if extra:
        raise ConfigError(
            sorted(extra)[0], "unknown key", "known keys: " + ", ".join(sorted(known))
        )
    accounts_raw = cfg.get("accounts")
    accounts_raw = {} if accounts_raw is None else accounts_raw
    if not isinstance(accounts_raw, dict):
        raise ConfigError("accounts", "must be an object of user: secret")
    accounts = {
        check_user(u, f"accounts.{u}"): check_secret(s, f"accounts.{u}")
        for u, s in accounts_raw.items()
    }
    disc = cfg.get("discovery")
    disc = {} if disc is None else disc
    if not isinstance(disc, dict):
        raise ConfigError("discovery", "must be an object with incoming, outgoing")
    discovery = {
        "incoming": _accounts_ref(disc.get("incoming"), accounts, "discovery.incoming"),
        "outgoing": _account_ref(disc.get("outgoing"), accounts, "discovery.outgoing"),
    }
    portals = [
        validate_portal(p, f"portals[{i}]")
        for i, p in enumerate(_list(cfg.get("portals"), "portals"))
    ]
    pkeys = [(p["host"], p["port"]) for p in portals]
    if len(set(pkeys)) != len(pkeys):
        raise ConfigError("portals", "a portal is listed twice")
    targets = [
        validate_target(t, accounts, f"targets[{i}]")
        for i, t in enumerate(_list(cfg.get("targets"), "targets"))
    ]
    names: dict[str, int] = {}
    tids: set[int] = set()
    for i, t in enumerate(targets):
        if t["name"].lower() in names:
            raise ConfigError(f"targets[{i}].name", f"target {t['name']} is defined twice")
        if t["tid"] in tids:
            raise ConfigError(f"targets[{i}].tid", f"tid {t['tid']} is used by two targets")
        names[t["name"].lower()] = i
        tids.add(t["tid"])
    _check_exports(targets, stat_files=stat_files)
    targets.sort(key=lambda t: t["tid"])
    params = _params(cfg.get("params"), "params")
    effective = {**default_login_params(), **params}
    _check_bursts(effective, "params")
    for i, t in enumerate(targets):
        _check_bursts({**effective, **t["params"]}, f"targets[{i}].params")
    epoch = cfg.get("epoch", 0)
    group = cfg.get("group")
    out_group = {} if group is None else {"group": validate_group(group)}
    return {
        "version": SCHEMA_VERSION,
        "epoch": epoch if isinstance(epoch, int) and epoch >= 0 else 0,
        "params": params,
        "portals": portals,
        "accounts": accounts,
        "discovery": discovery,
        "targets": targets,
        **out_group,
    }


# ---------------------------------------------------------------------------- redaction

REDACTED = "********"


def redact(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy with every CHAP secret masked (what show/export print unless asked)."""
    out = copy.deepcopy(cfg)
    if isinstance(out.get("accounts"), dict):
        out["accounts"] = {u: REDACTED for u in out["accounts"]}
    return out


def fill_redacted(cfg: Any) -> tuple[Any, list[str]]:
    """For validating an exported file offline: the masked secrets ``config export`` wrote
    stand for secrets only the daemon knows (``config apply`` keeps them), so each is replaced
    by a placeholder that passes the checks. Returns the copy and the users so filled."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("accounts"), dict):
        return cfg, []
    users = [u for u, s in cfg["accounts"].items() if s == REDACTED]
    accounts = {
        u: "x" * MIN_SECRET_BYTES if s == REDACTED else s for u, s in cfg["accounts"].items()
    }
    return {**cfg, "accounts": accounts}, users


def same_ignoring_epoch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {**a, "epoch": 0} == {**b, "epoch": 0}


# -------------------------------------------------------------------------- persistence


def load(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved config, validated and migrated; None when there is none yet.

    A file that cannot be parsed raises ConfigError (the daemon must not start empty and
    then overwrite an admin's config); ``config.json.prev`` is the previous good version.
    """
    path = config_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            str(path),
            f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
            f"fix it, or copy {PREVIOUS_FILE} (the previous version) over it",
        ) from None
    try:
        return validate(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.field}", e.message, e.hint) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.config.json.<pid>.tmp`` files a crash in :func:`save` left behind.

    Called at daemon start, once the control socket shows no other daemon owns the state
    dir. Only files whose writer is gone (or is this process, which is not saving yet) go:
    a live process's file may be a save in progress. Returns the files removed."""
    removed = []
    prefix, suffix = f".{CONFIG_FILE}.", ".tmp"
    for p in Path(state_dir).glob(f"{prefix}*{suffix}"):
        pid = p.name[len(prefix) : -len(suffix)]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
    return removed


def dumps(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, indent=2, sort_keys=False) + "\n"


def save(state_dir: str | os.PathLike[str], cfg: dict[str, Any]) -> None:
    """Write ``cfg`` atomically with mode 0600, keeping the previous version."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state / CONFIG_FILE
    tmp = state / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    data = dumps(cfg).encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is only used for a new file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if path.exists():
            prev = state / PREVIOUS_FILE
            # A hard link keeps the old version without a window where config.json is absent.
            prev.unlink(missing_ok=True)
            os.link(path, prev)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ------------------------------------------------------------------------------ lookups


def find_target(cfg: dict[str, Any], ref: str | int) -> dict[str, Any] | None:
    """A target by IQN (case-insensitive), tid, or alias."""
    for t in cfg["targets"]:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            if t["tid"] == int(ref):
                return t
        elif t["name"].lower() == ref.lower():
            return t
    if isinstance(ref, str):
        matches = [t for t in cfg["targets"] if t.get("alias") and t["alias"] == ref]
        if len(matches) == 1:
            return matches[0]
    return None


def next_tid(cfg: dict[str, Any]) -> int:
    return max((t["tid"] for t in cfg["targets"]), default=0) + 1


__all__ = [
    "ConfigError",
    "demo_config",
    "load",
    "save",
    "validate",
    "redact",
    "migrate",
    "resolve_state_dir",
    "socket_path",
    "config_path",
]
