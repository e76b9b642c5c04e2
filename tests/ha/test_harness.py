"""The HA harness checks itself: namespaces reach the bricks, a lone gateway in a namespace
serves a gfapi LUN to libiscsi on the host, and partition/heal cut and restore exactly the
storage traffic."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

from tests.ha.harness import IQN, Gateway, lone_config, make_file, run
from tests.ha.netenv import FRONT_HOST, STORAGE_HOST, Namespace, NetEnv


def brick_ports(volume: str) -> list[int]:
    out = run("gluster", "--mode=script", "volume", "status", volume, "--xml").stdout
    ports = [int(n.findtext("port") or 0) for n in ET.fromstring(out).iter("node")
             if (n.findtext("path") or "").startswith("/")]
    assert ports and all(ports), out
    return ports


def connects(ns: Namespace, host: str, port: int, timeout: float = 2) -> bool:
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout={timeout})"
    return ns.run(sys.executable, "-c", code, check=False).returncode == 0


def probe(ns: Namespace, *args: str, timeout: float = 120) -> str:
    proc = ns.run(sys.executable, "-m", "tests.ha.probe", *args, check=False, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_each_namespace_reaches_glusterd_and_every_brick(ha_net: NetEnv, ha_volume):
    ports = brick_ports(ha_volume.volume)
    for ns in ha_net.namespaces:
        for port in (24007, *ports):
            assert connects(ns, STORAGE_HOST, port), f"{ns.name} -> {STORAGE_HOST}:{port}"
        # and nothing else: the bricks are reached over the storage link only
        assert ns.run("ip", "route", "get", STORAGE_HOST).stdout.split()[2] == "st0"


def test_a_gfapi_client_in_a_namespace_writes_what_the_host_reads(ha_net: NetEnv, ha_volume):
    make_file(ha_volume, "probe.img", 1 << 20)
    for ns in ha_net.namespaces:
        text = f"written-from-{ns.name}"
        assert probe(ns, "write", ha_volume.url("probe.img"), str(4096 * ns.index), text) == "OK\n"
    with open(ha_volume.fuse_path("probe.img"), "rb") as f:
        data = f.read()
    for ns in ha_net.namespaces:
        text = f"written-from-{ns.name}".encode()
        assert data[4096 * ns.index:4096 * ns.index + len(text)] == text


def test_a_lone_gateway_in_gw1_serves_a_gfapi_lun_to_libiscsi(gateways: list[Gateway], ha_volume):
    gw = gateways[0]
    make_file(ha_volume, "lone.img", 64 << 20)
    gw.write_config(lone_config(gw, IQN, {1: ha_volume.url("lone.img")}))
    gw.start()
    inq = run("iscsi-inq", gw.url(1)).stdout
    assert "Peripheral Device Type" in inq or "Device Type" in inq, inq
    cap = run("iscsi-readcapacity16", gw.url(1)).stdout
    total = re.search(r"^Total size:\s*(\d+)", cap, re.M)
    assert total and int(total.group(1)) == 64 << 20, cap
    # the daemon's own view: the LUN is through gfapi, listening on the namespace address
    status = gw.cli("status").stdout
    assert gw.address in status, status
    assert gw.stop() == 0, gw.log_text()[-3000:]


def test_partition_cuts_storage_only_and_heal_restores_it(ha_net: NetEnv, ha_volume):
    gw1, gw2 = ha_net.namespaces[:2]
    ports = brick_ports(ha_volume.volume)
    # the host (where the initiators run) listens on the front network
    with socket.socket() as front:
        front.bind((FRONT_HOST, 0))
        front.listen()
        front_port = front.getsockname()[1]
        ha_net.partition(gw1)
        try:
            assert gw1.partitioned()
            for port in (24007, *ports):
                assert not connects(gw1, STORAGE_HOST, port, timeout=1), port
            assert connects(gw1, FRONT_HOST, front_port)  # iSCSI's direction still works
            assert connects(gw2, STORAGE_HOST, 24007)  # only gw1 is cut
        finally:
            ha_net.heal(gw1)
        assert not gw1.partitioned()
        for port in (24007, *ports):
            assert connects(gw1, STORAGE_HOST, port), port


def test_partition_of_a_running_gateway_keeps_its_portal_reachable(gateways, ha_volume):
    gw = gateways[0]
    make_file(ha_volume, "portal.img", 16 << 20)
    gw.write_config(lone_config(gw, IQN, {1: ha_volume.url("portal.img")}))
    gw.start()
    gw.partition()
    try:
        # login and INQUIRY need no medium access: they still work from the host
        proc = subprocess.run(["iscsi-inq", gw.url(1)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        gw.heal()
