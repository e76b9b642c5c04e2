"""The systemd unit: rendered from the one template shipped in the package, and installed.

``gluster-iscsi.service`` next to this module is the template; :func:`render` fills in the
command line (this installation's ``gluster-iscsi``) and the writable paths, and
:func:`install` writes it and, where systemd runs the machine, reloads and enables it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

UNIT_NAME = "gluster-iscsi.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")


def template() -> str:
    return resources.files(__package__).joinpath(UNIT_NAME).read_text()


def executable() -> list[str]:
    """The command that runs this installation's CLI: the ``gluster-iscsi`` script beside the
    running interpreter (a venv's bin), else ``python -m gluster_iscsi`` with this interpreter.
    Paths are made absolute, not resolved: a venv's python is a link out of the venv."""
    script = Path(os.path.abspath(sys.executable)).parent / "gluster-iscsi"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [os.path.abspath(sys.executable), "-m", "gluster_iscsi"]


_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./\[\]-]+")


def quote(arg: str) -> str:
    """One word of a unit file's command line or path list, quoted where it needs it; ``%``
    (specifiers) and ``$`` (variables) are escaped."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def file_lun_dirs(state_dir: Path) -> list[str]:
    """The directories of the saved configuration's file LUNs (they must stay writable under
    ProtectSystem=strict); [] if there is no readable configuration."""
    from ..control import config as cfgmod

    try:
        cfg = cfgmod.load(state_dir) or {}
    except Exception:  # noqa: BLE001 - no config to learn from: the state dir alone
        return []
    dirs: list[str] = []
    for t in cfg.get("targets", []):
        for lun in t.get("luns", []):
            path = cfgmod.local_path(lun.get("backing", ""), lun.get("bstype"))
            if path and not path.startswith("/dev/"):
                d = os.path.dirname(path)
                if d and d not in dirs:
                    dirs.append(d)
    return dirs


def render(state_dir: Path, listens: Sequence[str] = (), rw_paths: Sequence[str] = (),
           command: Sequence[str] | None = None) -> str:
    """The unit file's text for a daemon on ``state_dir`` listening on ``listens`` (none: the
    saved portals, else loopback)."""
    argv = [*(command or executable()), "serve", "--state-dir", str(state_dir)]
    for addr in listens:
        argv += ["--listen", addr]
    paths = [str(state_dir)]
    for p in rw_paths:
        if p not in paths:
            paths.append(p)
    text = template()
    text = text.replace("@EXEC_START@", " ".join(quote(a) for a in argv))
    text = text.replace("@READ_WRITE_PATHS@", " ".join(quote(p) for p in paths))
    return text


def systemd_running() -> bool:
    """systemd is the init system here (sd_booted(3): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


@dataclass
class Installed:
    unit: Path
    exec_start: str
    reloaded: bool = False
    enabled: bool = False
    messages: list[str] = field(default_factory=list)


def install(unit_dir: Path, text: str, *, enable: bool) -> Installed:
    """Write the unit; with systemd as init, ``daemon-reload`` and (``enable``) ``enable``.

    Raises OSError if the file cannot be written, RuntimeError if systemctl fails."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / UNIT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines()
                      if line.startswith("ExecStart="))
    done = Installed(path, exec_start)
    done.messages.append(f"wrote {path}")
    if not systemd_running():
        done.messages.append(
            "systemd is not the init system here: nothing reloaded or enabled. On a host run by "
            "systemd: systemctl daemon-reload && systemctl enable --now gluster-iscsi")
        return done
    if unit_dir.resolve() != DEFAULT_UNIT_DIR.resolve() and unit_dir.resolve() not in (
            Path("/run/systemd/system"), Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        done.messages.append(f"{unit_dir} is not a directory systemd loads units from: "
                             "nothing reloaded or enabled")
        return done
    _systemctl("daemon-reload")
    done.reloaded = True
    done.messages.append("systemctl daemon-reload: done")
    if enable:
        _systemctl("enable", UNIT_NAME)
        done.enabled = True
        done.messages.append("enabled: it starts at boot; start it now with "
                             "'systemctl start gluster-iscsi'")
    else:
        done.messages.append("not enabled (--no-enable): start it with 'systemctl start gluster-iscsi'")
    return done


def _systemctl(*args: str) -> None:
    try:
        res = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"systemctl {' '.join(args)}: {exc}") from None
    if res.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)} failed: {res.stderr.strip() or res.returncode}")
