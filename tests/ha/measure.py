"""Measure what the HA lease rests on: how long a POSIX lock held by a Gluster client in gw1
stays held when gw1 is partitioned from the bricks or killed, and whether a write the holder
issued while partitioned lands after another client took the lock.

    python -m tests.ha.measure [--via gfapi,fuse] [--ping 42,10] [--io buffered,direct]
                               [--events kill,partition] [--runs 1]

Builds its own namespaces (tests/ha/netenv.py) and a replica-3 volume with the gluster-block
options per ping-timeout, and removes all of it at the end. Prints one line per run:

    via=gfapi ping=10 event=partition taken_after=41.2s holder_write=ERROR(107)@10.3s
        landed=no
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.gluster_env import GlusterEnv, start_volume, stop_volume
from tests.ha.netenv import STORAGE_HOST, Namespace, NetEnv

MARK_OFFSET = 4096


class Probe:
    """``python -m tests.ha.probe`` in a namespace, driven line by line."""

    def __init__(self, ns: Namespace, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*ns.prefix(), sys.executable, "-m", "tests.ha.probe", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )

    def line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline().strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def fuse_mount(ns: Namespace, vol: GlusterEnv) -> Iterator[str]:
    """The volume mounted by a glusterfs client living in ``ns`` (nsenter --net: the mount
    is visible host-wide, its traffic goes through the namespace)."""
    mnt = Path(vol.workdir) / f"ha-mnt-{ns.name}-{vol.volume}"
    mnt.mkdir(parents=True, exist_ok=True)
    ns.run("mount", "-t", "glusterfs", "-o", f"log-file={mnt}.log",
           f"{STORAGE_HOST}:/{vol.volume}", str(mnt), timeout=120)
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def one_run(net: NetEnv, vol: GlusterEnv, via: str, event: str, n: int, io: str) -> str:
    gw1, gw2 = net.namespaces[:2]
    name = f"lock-{via}-{event}-{io}-{n}.img"
    with open(vol.fuse_path(name), "wb") as f:
        f.truncate(1 << 20)
    with contextlib.ExitStack() as stack:
        if via == "fuse":
            where1 = os.path.join(stack.enter_context(fuse_mount(gw1, vol)), name)
            where2 = os.path.join(stack.enter_context(fuse_mount(gw2, vol)), name)
        else:
            where1 = where2 = vol.url(name)
        holder = Probe(gw1, "hold", where1, *(["direct"] if io == "direct" else []))
        stack.callback(holder.kill)
        assert holder.line(60) == "LOCKED", "holder could not lock"
        t0 = time.monotonic()
        write_result = "-"
        if event == "kill":
            holder.kill()
        else:
            net.partition(gw1)
            stack.callback(net.heal, gw1)
            holder.send(f"write {MARK_OFFSET} OLD-OWNER")
        taker = Probe(gw2, "take", where2, "300")
        stack.callback(taker.kill)
        taken = None
        while time.monotonic() - t0 < 320:
            got = taker.line(0.5)
            if got:
                taken = got
                break
            if event == "partition" and write_result == "-":
                w = holder.line(0)
                if w:
                    write_result = f"{w}@{time.monotonic() - t0:.1f}s"
        taken_after = (f"{time.monotonic() - t0:.1f}s" if taken and taken.startswith("TAKEN")
                       else "never(300s)")
        landed = "-"
        if taken and taken.startswith("TAKEN"):
            # the new holder writes its own marker, then the old one gets its network back
            Probe(gw2, "write", where2, str(MARK_OFFSET), "NEW-OWNER").proc.wait(120)
            if event == "partition":
                net.heal(gw1)
                deadline = time.monotonic() + 30
                while write_result == "-" and time.monotonic() < deadline:
                    w = holder.line(0.5)
                    if w:
                        write_result = f"{w}@{time.monotonic() - t0:.1f}s(after heal)"
                time.sleep(15)  # time for a reconnect to replay anything queued
            with open(vol.fuse_path(name), "rb") as f:
                f.seek(MARK_OFFSET)
                mark = f.read(9)
            landed = {b"NEW-OWNER": "no", b"OLD-OWNER": "YES"}.get(mark, repr(mark))
            taker.send("")
    return (f"via={via} io={io} event={event} taken_after={taken_after} "
            f"holder_write={write_result} old_write_landed_after_takeover={landed}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--via", default="gfapi,fuse")
    ap.add_argument("--ping", default="42,10")
    ap.add_argument("--events", default="kill,partition")
    ap.add_argument("--io", default="buffered,direct")
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    net = NetEnv(2).up()
    try:
        for ping in a.ping.split(","):
            name = f"giscsi-hameasure-{ping}-{os.getpid()}"
            vol = start_volume(name, brick_host=STORAGE_HOST)
            try:
                subprocess.run(["gluster", "--mode=script", "volume", "set", name,
                                "network.ping-timeout", ping], check=True, capture_output=True)
                opts = subprocess.run(["gluster", "--mode=script", "volume", "get", name, "all"],
                                      capture_output=True, text=True).stdout
                keep = [x for x in opts.splitlines() if any(
                    k in x for k in ("ping-timeout", "tcp-user-timeout", "keepalive", "frame-timeout"))]
                print(f"# volume {name}:", "; ".join(" ".join(x.split()) for x in keep), flush=True)
                for via in a.via.split(","):
                    for event in a.events.split(","):
                        for io in a.io.split(",") if event == "partition" else ["buffered"]:
                            for n in range(a.runs):
                                print(f"ping={ping}", one_run(net, vol, via, event, n, io),
                                      flush=True)
            finally:
                stop_volume(name)
    finally:
        NetEnv.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
