"""Where a Gluster file lives: volume, volfile servers and path, from a URL or tgt's form.

Pure parsing, no libgfapi needed:

* ``gluster://host1[:port][,host2[:port]...]/volume/path/in/volume`` (also ``[v6addr]:port``,
  an optional ``+tcp``/``+rdma``/``+unix`` transport in the scheme like QEMU's
  ``gluster+tcp://``, and ``?logfile=...&loglevel=N`` query options);
* tgt's ``--bstype glfs`` backing string ``volume@host:path``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

DEFAULT_PORT = 24007
TRANSPORTS = ("tcp", "rdma", "unix")


@dataclass(frozen=True, slots=True)
class VolfileServer:
    host: str
    port: int = DEFAULT_PORT
    transport: str = "tcp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class GlusterAddress:
    volume: str
    servers: tuple[VolfileServer, ...]
    path: str  # absolute inside the volume, e.g. "/luns/disk1.img"
    options: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def url(self) -> str:
        hosts = ",".join(str(s) for s in self.servers)
        transport = self.servers[0].transport if self.servers else "tcp"
        scheme = "gluster" if transport == "tcp" else f"gluster+{transport}"
        return f"{scheme}://{hosts}/{self.volume}{self.path}"

    def __str__(self) -> str:
        return self.url


_VOLUME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\[\]:,/]+))(?::(?P<port>\d+))?$")


def is_gluster_url(spec: str) -> bool:
    return re.match(r"^gluster(\+[a-z]+)?://", spec, re.IGNORECASE) is not None


def _check_volume(volume: str, spec: str) -> None:
    if not volume or not _VOLUME_RE.match(volume):
        raise ValueError(f"invalid Gluster volume name {volume!r} in {spec!r}")


def _norm_path(path: str, spec: str) -> str:
    path = "/" + path.lstrip("/")
    if path == "/" or path.endswith("/"):
        raise ValueError(f"no file path inside the volume in {spec!r}")
    if any(part == ".." for part in path.split("/")):
        raise ValueError(f"'..' not allowed in a volume path: {spec!r}")
    return path


def parse_gluster_url(spec: str) -> GlusterAddress:
    m = re.match(r"^gluster(?:\+(?P<tr>[a-z]+))?://(?P<rest>.*)$", spec, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a gluster:// URL: {spec!r}")
    transport = (m.group("tr") or "tcp").lower()
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown Gluster transport {transport!r} in {spec!r}")
    rest = m.group("rest")
    rest, _, query = rest.partition("?")
    hosts, slash, tail = rest.partition("/")
    if not slash or not hosts:
        raise ValueError(f"expected gluster://HOST[:PORT][,HOST...]/VOLUME/PATH, got {spec!r}")
    servers = []
    for item in hosts.split(","):
        hm = _HOST_RE.match(item.strip())
        if not hm:
            raise ValueError(f"invalid server {item!r} in {spec!r}")
        port = int(hm.group("port")) if hm.group("port") else DEFAULT_PORT
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port} in {spec!r}")
        servers.append(VolfileServer(hm.group("v6") or hm.group("host"), port, transport))
    volume, _, path = tail.partition("/")
    _check_volume(volume, spec)
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    return GlusterAddress(volume, tuple(servers), _norm_path(unquote(path), spec), options)


def parse_tgt_glfs(spec: str) -> GlusterAddress:
    """tgt's ``volume@host:path`` (``bs_glfs.c``); the host may carry no port."""
    m = re.match(r"^(?P<vol>[^@/]+)@(?P<host>\[[^\]]+\]|[^:/]+):(?P<path>.+)$", spec)
    if not m:
        raise ValueError(f"expected VOLUME@HOST:PATH for bstype glfs, got {spec!r}")
    _check_volume(m.group("vol"), spec)
    host = m.group("host").strip("[]")
    return GlusterAddress(m.group("vol"), (VolfileServer(host),), _norm_path(m.group("path"), spec))
