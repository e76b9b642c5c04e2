"""Network namespaces for the HA tests: one per gateway, a front and a storage network.

Layout (TEST-NET-1 only; this machine's own uplink may sit on 192.0.2.0/24, so the harness
uses 192.0.2.8/29 and 192.0.2.16/28 inside it, more specific than any /24 route and holding
neither .1 nor .2)::

    host                                   namespace giha-gwN (N = 1..4)
    bridge giha-fr 192.0.2.9/29   <-veth->  fr0 192.0.2.1N/29, default via 192.0.2.9
    bridge giha-st 192.0.2.17/28  <-veth->  st0 192.0.2.2N/28
                   (the bricks)

Initiators on the host reach gateway N at 192.0.2.1N (front); the gateway reaches the bricks
(created on 192.0.2.17) only through st0, because 192.0.2.17 is on st0's own /28. So a
**storage-only partition** is one bridge port: ``partition(N)`` sets the host end of gwN's
storage veth to the bridge's *disabled* state (``bridge link set ... state 0``). Frames are
then dropped silently in both directions, as a real network partition does: no link goes
down, no route changes, no RST or ICMP reaches either side, and the front network (iSCSI)
keeps working. ``heal(N)`` sets the port forwarding again. (No iptables/nft binary and no tc
drop action on this kernel: the bridge port state is the clean cut that is available.)

Processes are put into a namespace with ``nsenter --net=/run/netns/NAME``, which switches the
network namespace only: a FUSE mount made that way (its glusterfs client process then lives
in the namespace and talks to the bricks over st0) is visible host-wide at an ordinary path
and is unmounted from the host. ``ip netns exec`` would instead unshare the mount namespace,
hiding such a mount from the host and from the test.

Run as a module to clean up after a killed session: ``python -m tests.ha.netenv down``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass

PREFIX = "giha"
FRONT_BRIDGE = f"{PREFIX}-fr"
STORAGE_BRIDGE = f"{PREFIX}-st"
FRONT_HOST = "192.0.2.9"
STORAGE_HOST = "192.0.2.17"  # the bricks' address
FRONT_PREFIXLEN = 29  # 192.0.2.8/29: .9 host, .11-.14 gateways
STORAGE_PREFIXLEN = 28  # 192.0.2.16/28: .17 host (bricks), .21-.24 gateways
MAX_GATEWAYS = 4


class NetEnvError(RuntimeError):
    pass


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetEnvError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Namespace:
    index: int

    @property
    def name(self) -> str:
        return f"{PREFIX}-gw{self.index}"

    @property
    def front(self) -> str:
        """The gateway's iSCSI address (initiators on the host connect here)."""
        return f"192.0.2.{10 + self.index}"

    @property
    def storage(self) -> str:
        return f"192.0.2.{20 + self.index}"

    @property
    def host_front_if(self) -> str:
        return f"{PREFIX}-f{self.index}"

    @property
    def host_storage_if(self) -> str:
        return f"{PREFIX}-s{self.index}"

    def prefix(self) -> list[str]:
        """The command prefix that runs a program in this namespace (network only)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--"]

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix(), *args, check=check, timeout=timeout)

    def partitioned(self) -> bool:
        out = sh("bridge", "-d", "link", "show", "dev", self.host_storage_if).stdout
        return " state disabled" in out


def _exists_link(name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, check=False).returncode == 0


def _namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class NetEnv:
    """Creates the bridges and ``count`` namespaces; :meth:`down` removes all of it."""

    def __init__(self, count: int = 3) -> None:
        if not 1 <= count <= MAX_GATEWAYS:
            raise ValueError(f"1 to {MAX_GATEWAYS} gateways")
        self.namespaces = [Namespace(i) for i in range(1, count + 1)]

    def up(self) -> NetEnv:
        if _exists_link(FRONT_BRIDGE) or _exists_link(STORAGE_BRIDGE) or any(
            n.startswith(PREFIX + "-") for n in _namespaces()
        ):
            raise NetEnvError(
                f"{PREFIX}-* bridges or namespaces exist already (another HA session, or a "
                "killed one: `python -m tests.ha.netenv down` removes them)"
            )
        try:
            for bridge, addr, plen in ((FRONT_BRIDGE, FRONT_HOST, FRONT_PREFIXLEN),
                                       (STORAGE_BRIDGE, STORAGE_HOST, STORAGE_PREFIXLEN)):
                sh("ip", "link", "add", bridge, "type", "bridge", "stp_state", "0",
                   "forward_delay", "0")
                sh("ip", "addr", "add", f"{addr}/{plen}", "dev", bridge)
                sh("ip", "link", "set", bridge, "up")
            for ns in self.namespaces:
                sh("ip", "netns", "add", ns.name)
                ns.run("ip", "link", "set", "lo", "up")
                for host_if, inner, addr, plen, bridge in (
                    (ns.host_front_if, "fr0", ns.front, FRONT_PREFIXLEN, FRONT_BRIDGE),
                    (ns.host_storage_if, "st0", ns.storage, STORAGE_PREFIXLEN, STORAGE_BRIDGE),
                ):
                    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", inner,
                       "netns", ns.name)
                    sh("ip", "link", "set", host_if, "master", bridge)
                    sh("ip", "link", "set", host_if, "up")
                    ns.run("ip", "addr", "add", f"{addr}/{plen}", "dev", inner)
                    ns.run("ip", "link", "set", inner, "up")
                ns.run("ip", "route", "add", "default", "via", FRONT_HOST)
        except BaseException:
            self.down()
            raise
        return self

    def partition(self, ns: Namespace) -> None:
        """Cut ``ns`` from the bricks (silently, both ways); iSCSI on the front stays up."""
        sh("bridge", "link", "set", "dev", ns.host_storage_if, "state", "0")

    def heal(self, ns: Namespace) -> None:
        sh("bridge", "link", "set", "dev", ns.host_storage_if, "state", "3")

    @staticmethod
    def down() -> list[str]:
        """Remove every ``giha-*`` namespace, veth and bridge; returns what it removed.
        Processes still running in a namespace keep only a namespace without links."""
        removed = []
        for name in _namespaces():
            if name.startswith(PREFIX + "-"):
                sh("ip", "netns", "del", name, check=False)
                removed.append(name)
        out = sh("ip", "-o", "link", "show", check=False).stdout
        links = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
        # veths first (deleting one end deletes its peer), then the bridges
        for link in sorted((x for x in links if x.startswith(PREFIX + "-")),
                           key=lambda x: x in (FRONT_BRIDGE, STORAGE_BRIDGE)):
            with contextlib.suppress(NetEnvError):
                if _exists_link(link):
                    sh("ip", "link", "del", link)
                    removed.append(link)
        return removed


if __name__ == "__main__":
    if sys.argv[1:] == ["down"]:
        print("removed:", " ".join(NetEnv.down()) or "nothing")
    elif sys.argv[1:] == ["up"]:
        NetEnv().up()
        print("up: giha-gw1..3; `python -m tests.ha.netenv down` removes them")
    else:
        print("usage: python -m tests.ha.netenv up|down", file=sys.stderr)
        sys.exit(2)
