"""The group directory on a real replica-3 Gluster volume, through FUSE and through gfapi:
the facts HA.md's lease rests on (docs/HA.md, "Measured").

* byte locks conflict between processes, between two objects of one process (one Gluster
  client even), and between FUSE and gfapi; reading and writing the locked file through
  other fds does not drop them;
* a SIGKILLed holder's lock is free for another process within seconds (measured, printed);
* a record written by one client is read by the other access method in another process
  right after write() returns (no stale read), on the gluster-block profile and on a volume
  with default options (write-behind, read-ahead, io-cache, quick-read on);
* GFIDs agree between FUSE and gfapi, whatever the server list.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
from group_agent import Agent, holding

from gluster_iscsi.group import definition as gd
from gluster_iscsi.group.identity import LunIdentity, read_identity, record_identity
from gluster_iscsi.group.shared import (
    GfapiSharedDir,
    LockHeld,
    PathSharedDir,
    Record,
    SharedDir,
    open_shared,
)

pytestmark = pytest.mark.gluster

ROUNDS = 200


def _dir() -> str:
    return f"grp-{uuid.uuid4().hex[:8]}"


def fuse_loc(env, d: str) -> str:
    return env.fuse_path(d)


def gfapi_loc(env, d: str, hosts: str | None = None) -> str:
    return f"gluster://{hosts or env.host}/{env.volume}/{d}"


def loc_of(env, d: str, how: str) -> str:
    return fuse_loc(env, d) if how == "fuse" else gfapi_loc(env, d)


def test_both_backends_open_the_same_directory(group_gluster_volume):
    env, d = group_gluster_volume, _dir()
    fuse = open_shared(fuse_loc(env, d))
    api = open_shared(gfapi_loc(env, d))
    assert isinstance(fuse, PathSharedDir) and isinstance(api, GfapiSharedDir)
    assert fuse.on_gluster and api.on_gluster
    api.write("gateways/gw-a", {"n": 1})
    fuse.write("gateways/gw-b", {"n": 2})
    assert fuse.names("gateways/") == api.names("gateways/") == ["gateways/gw-a",
                                                                  "gateways/gw-b"]
    assert fuse.read("gateways/gw-a") == Record(1, {"n": 1})
    assert api.read("gateways/gw-b") == Record(1, {"n": 2})
    api.remove("gateways/gw-b")
    assert fuse.names("gateways/") == ["gateways/gw-a"]
    assert fuse.read("gateways/gw-b") is None
    fuse.close()
    api.close()


def test_the_gfid_is_the_same_through_fuse_and_every_gfapi_address(group_gluster_volume):
    env, d = group_gluster_volume, _dir()
    fuse = open_shared(fuse_loc(env, d))
    for name in ("f1.img", "f2.img"):
        with open(env.fuse_path(name), "wb") as f:
            f.write(b"x")
    one = open_shared(gfapi_loc(env, d))
    two = open_shared(gfapi_loc(env, d, f"{env.host},localhost"))
    g1 = fuse.gfid(env.fuse_path("f1.img"))
    assert str(uuid.UUID(g1)) == g1
    assert g1 == one.gfid("/f1.img") == one.gfid("f1.img") == two.gfid("/f1.img")
    assert g1 == one.gfid(f"gluster://{env.host},localhost/{env.volume}/f1.img")
    assert g1 == two.gfid(env.url("f1.img"))
    g2 = fuse.gfid(env.fuse_path("f2.img"))
    assert g2 != g1 and g2 == one.gfid("/f2.img")
    with pytest.raises(ValueError, match="not on volume"):
        one.gfid("gluster://127.0.0.1/othervol/f1.img")
    with pytest.raises(OSError) as exc:
        one.gfid("/missing.img")
    assert exc.value.errno == 2 and d in str(exc.value)


@pytest.mark.parametrize("mine", ["fuse", "gfapi"])
@pytest.mark.parametrize("theirs", ["fuse", "gfapi"])
def test_locks_conflict_between_processes(group_gluster_volume, agent, mine, theirs):
    env, d = group_gluster_volume, _dir()
    shared = open_shared(loc_of(env, d, mine))
    other = holding(agent(loc_of(env, d, theirs)), "luns/g.lease", 0)
    with pytest.raises(LockHeld):
        shared.try_lock("luns/g.lease", 0)
    lock1 = shared.try_lock("luns/g.lease", 1)  # another byte is another lock
    assert other.call("release") == "released"
    lock0 = shared.try_lock("luns/g.lease", 0)
    assert other.call("lock", "luns/g.lease", 0) == "held"
    assert other.call("lock", "luns/g.lease", 1) == "held"
    lock0.release()
    lock1.release()
    assert other.call("lock", "luns/g.lease", 0) == "locked"
    shared.close()


@pytest.mark.parametrize("pair", [("fuse", "fuse"), ("gfapi", "gfapi"), ("gfapi", "gfapi2"),
                                  ("fuse", "gfapi")])
def test_locks_conflict_inside_one_process(group_gluster_volume, pair):
    """Two SharedDir objects of this process (for gfapi/gfapi: one Gluster client; gfapi2 is
    another client, reached as localhost): the second Lock gets LockHeld, not success."""
    env, d = group_gluster_volume, _dir()

    def make(how: str) -> SharedDir:
        if how == "gfapi2":
            return open_shared(gfapi_loc(env, d, "localhost"))
        return open_shared(loc_of(env, d, how))

    a, b = make(pair[0]), make(pair[1])
    lock = a.try_lock("luns/g.lease", 0)
    with pytest.raises(LockHeld):
        b.try_lock("luns/g.lease", 0)
    with pytest.raises(LockHeld):
        a.try_lock("luns/g.lease", 0)
    lock.release()
    b.try_lock("luns/g.lease", 0).release()
    a.close()
    b.close()


@pytest.mark.parametrize("how", ["fuse", "gfapi"])
def test_other_fds_of_the_locked_file_do_not_drop_the_lock(group_gluster_volume, agent, how):
    """Reads and writes of the lease record (their own fds, opened and closed), a plain
    open/close through FUSE and another Lock on byte 1 taken and released leave the Lock on
    byte 0 held, as another process sees."""
    env, d = group_gluster_volume, _dir()
    shared = open_shared(loc_of(env, d, how))
    second = open_shared(loc_of(env, d, how))
    lock = shared.try_lock("luns/g.lease", 0)
    for i in range(5):
        shared.write("luns/g.lease", {"beat": i})
        second.write("luns/g.lease", {"beat": i})
        assert shared.read("luns/g.lease") is not None
        assert second.read("luns/g.lease") is not None
    with open(env.fuse_path(f"{d}/luns/g.lease"), "rb") as f:
        f.read(100)
    for _ in range(3):  # the state lock: byte 1 of the same file, taken and released
        second.try_lock("luns/g.lease", 1).release()
    other = agent(loc_of(env, d, "gfapi" if how == "fuse" else "fuse"))
    assert other.call("lock", "luns/g.lease", 0) == "held"
    lock.release()
    assert other.call("lock", "luns/g.lease", 0) == "locked"


def _free_after_kill(holder: Agent, shared: SharedDir, name: str) -> float:
    """SIGKILL the holder; seconds until ``shared`` gets the lock (polled every 10 ms)."""
    dead = holder.kill()
    deadline = dead + 120  # a hang guard, not a timing assertion
    while True:
        try:
            shared.try_lock(name, 0).release()
            return time.monotonic() - dead
        except LockHeld:
            if time.monotonic() > deadline:
                raise AssertionError(f"lock still held {time.monotonic() - dead:.1f}s after"
                                     " its holder was killed") from None
            time.sleep(0.01)


@pytest.mark.parametrize("holder_how", ["fuse", "gfapi"])
def test_a_killed_holder_frees_the_lock_within_seconds(group_gluster_volume, agent, holder_how,
                                                       capsys):
    env, d = group_gluster_volume, _dir()
    shared = open_shared(gfapi_loc(env, d))
    fuse = open_shared(fuse_loc(env, d))
    times = []
    for i in range(3):
        name = f"luns/k{i}.lease"
        holder = holding(agent(loc_of(env, d, holder_how)), name, 0)
        with pytest.raises(LockHeld):
            shared.try_lock(name, 0)
        times.append(_free_after_kill(holder, shared if i % 2 else fuse, name))
    with capsys.disabled():
        print(f"\n[measured] lock free after SIGKILL of a {holder_how} holder: "
              + ", ".join(f"{t:.3f}s" for t in times))


@pytest.mark.parametrize("volume", ["group_gluster_volume", "group_plain_volume"])
@pytest.mark.parametrize("writer", ["fuse", "gfapi"])
def test_no_stale_read_across_clients(request, agent, volume, writer, capsys):
    """ROUNDS times: this process writes through one access method; another process, through
    the other, reads right after write() returned and must see exactly that record. Then the
    other way round (it writes, we read)."""
    env, d = request.getfixturevalue(volume), _dir()
    reader_how = "gfapi" if writer == "fuse" else "fuse"
    mine = open_shared(loc_of(env, d, writer))
    other = agent(loc_of(env, d, reader_how))
    stale = 0
    t0 = time.monotonic()
    for i in range(ROUNDS):
        data = {"i": i, "pad": "x" * (i % 7) * 300}
        seq = mine.write("luns/s.lease", data)
        got = other.call("read", "luns/s.lease")
        stale += got != [seq, data]
        assert got == [seq, data], f"round {i}: read {got!r}, wrote seq {seq}"
        seq2 = other.call("write", "luns/s.lease", {"back": i})
        assert mine.read("luns/s.lease") == Record(seq2, {"back": i}), f"round {i}"
    with capsys.disabled():
        print(f"\n[measured] {volume} {writer} -> {reader_how} and back: {ROUNDS} rounds,"
              f" {stale} stale, {1000 * (time.monotonic() - t0) / ROUNDS / 2:.1f} ms per"
              " write + cross-process read")


def test_identity_and_definition_through_both_backends(group_gluster_volume):
    env, d = group_gluster_volume, _dir()
    fuse = open_shared(fuse_loc(env, d))
    api = open_shared(gfapi_loc(env, d))
    with open(env.fuse_path("lun1.img"), "wb") as f:
        f.truncate(1 << 20)
    gfid = api.gfid("/lun1.img")
    assert fuse.gfid(env.fuse_path("lun1.img")) == gfid
    first = LunIdentity.new(str(uuid.uuid4()), "60014051234", "s1", 512, "/lun1.img")
    assert record_identity(api, gfid, first) == first
    other = LunIdentity.new(str(uuid.uuid4()), "60014059999", "s2", 4096, "/lun1.img")
    assert record_identity(fuse, gfid, other) == first
    assert read_identity(fuse, gfid) == first
    gd.create(fuse, "g1")
    gd.update(api, lambda defn: defn.gateways.update(a={"number": 1, "addresses": []}))
    loaded = gd.load(fuse)
    assert loaded is not None and loaded.version == 2 and "a" in loaded.gateways
    assert os.path.getsize(env.fuse_path(f"{d}/group.json")) == 2 * 64 * 1024


# -- bricks that restart ------------------------------------------------------------------


def _gluster(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["gluster", "--mode=script", *args], capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"gluster {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def _brick_pids(volume: str) -> dict[str, int]:
    """Brick path -> pid of the bricks that run."""
    xml = _gluster("volume", "status", volume, "--xml")
    return {path: int(pid) for path, pid in
            re.findall(r"<path>(/[^<]*)</path>.*?<pid>(-?\d+)</pid>", xml, re.S)
            if int(pid) > 0}


def _clients(volume: str) -> dict[str, int]:
    """Brick path -> how many clients are connected to it."""
    out = _gluster("volume", "status", volume, "clients", check=False)
    return {path: int(n) for path, n in
            re.findall(r"Brick : [^:\n]*:(\S+)\nClients connected : (\d+)", out)}


def _restart_brick(volume: str, path: str, before: dict[str, int], holder: Agent) -> None:
    """SIGKILL the brick, start it again (``volume start force``, retried while glusterd is
    busy with another session's transaction) and wait until as many clients as ``before`` are
    connected to it again, refreshing ``holder``'s lock meanwhile."""
    os.kill(_brick_pids(volume)[path], signal.SIGKILL)
    deadline = time.monotonic() + 120  # hang guards
    while path in _brick_pids(volume):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    while path not in _brick_pids(volume):
        assert time.monotonic() < deadline, "the brick does not start again"
        _gluster("volume", "start", volume, "force", check=False)
        time.sleep(1)
    while _clients(volume).get(path, 0) < before[path]:
        assert time.monotonic() < deadline, f"clients do not reconnect to {path}"
        assert holder.call("refresh") == "refreshed"
        time.sleep(0.5)
    assert holder.call("refresh") == "refreshed"


@pytest.mark.parametrize("how", ["fuse", "gfapi"])
def test_a_lock_survives_restarting_every_brick_only_if_refreshed(group_fault_volume, agent,
                                                                   how):
    """GlusterFS 10.3 does not re-take locks on a brick that comes back: restart the three
    bricks of the replica set one after the other and a lock nobody refreshed is gone (another
    process takes it, while its holder's writes still succeed), whereas Lock.refresh() after
    each reconnect keeps it held. The lease refreshes every beat (docs/HA.md, Measured)."""
    env, d = group_fault_volume, _dir()
    refreshing = holding(agent(loc_of(env, d, how)), "luns/kept.lease", 0)
    idle = holding(agent(loc_of(env, d, how)), "luns/idle.lease", 0)
    other = agent(gfapi_loc(env, d))
    other_fuse = agent(fuse_loc(env, d))
    before = _clients(env.volume)
    assert len(before) == 3 and len(_brick_pids(env.volume)) == 3
    for path in sorted(before):
        _restart_brick(env.volume, path, before, refreshing)
        assert other.call("lock", "luns/kept.lease", 0) == "held", path
        assert other_fuse.call("lock", "luns/kept.lease", 0) == "held", path
    assert idle.call("write", "luns/idle.lease", {"still": "writing"}) >= 1
    assert other.call("lock", "luns/idle.lease", 0) == "locked"  # the idle holder lost it
    assert idle.call("refresh") == "lost"  # ... and refresh tells it so
    assert refreshing.call("release") == "released"
    assert other.call("lock", "luns/kept.lease", 0) == "locked"


@pytest.mark.parametrize("how", ["fuse", "gfapi"])
def test_a_frozen_holder_keeps_its_lock(group_gluster_volume, agent, how):
    """SIGSTOP is not death: the bricks never ping clients and the stopped process's
    connections stay up, so its lock stays held (HA.md, Measured: a hung gateway blocks the
    takeover of its LUNs until it is killed)."""
    env, d = group_gluster_volume, _dir()
    holder = holding(agent(loc_of(env, d, how)), "luns/f.lease", 0)
    shared = open_shared(gfapi_loc(env, d))
    os.kill(holder.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            time.sleep(4)
            with pytest.raises(LockHeld):
                shared.try_lock("luns/f.lease", 0)
    finally:
        os.kill(holder.proc.pid, signal.SIGCONT)
    assert holder.call("refresh") == "refreshed"


def test_an_unknown_volume_is_an_error_naming_the_location(group_gluster_volume):
    env = group_gluster_volume
    loc = f"gluster://{env.host}/no-such-volume-{uuid.uuid4().hex[:6]}/grp"
    with pytest.raises(OSError) as exc:
        open_shared(loc)
    assert loc in str(exc.value)
    assert "no-such-volume" in str(exc.value)


def test_concurrent_definition_updates_through_fuse_and_gfapi_lose_nothing(
        group_gluster_volume, agent):
    """Two processes, one through FUSE and one through gfapi, each make 15 updates of
    group.json at the same time: the lock and the fresh read under it lose none."""
    env, d = group_gluster_volume, _dir()
    gd.create(open_shared(fuse_loc(env, d)), "g1")
    a, b = agent(fuse_loc(env, d)), agent(gfapi_loc(env, d))
    a.send("joins", "fuse-", 15)
    b.send("joins", "gfapi-", 15)
    assert max(a.answer(), b.answer()) == 31
    for shared in (open_shared(fuse_loc(env, d)), open_shared(gfapi_loc(env, d))):
        defn = gd.load(shared)
        assert defn is not None and defn.version == 31
        assert sorted(defn.gateways) == sorted([f"fuse-{i}" for i in range(15)]
                                               + [f"gfapi-{i}" for i in range(15)])
        assert sorted(g["number"] for g in defn.gateways.values()) == list(range(1, 31))


@pytest.mark.parametrize("how", ["fuse", "gfapi"])
def test_one_shared_dir_serves_several_threads(group_gluster_volume, how):
    """The server calls one SharedDir from several worker threads: records and locks of
    different files from 4 threads at once, each sees its own writes, and the locks of one
    thread never leak into another's (a thread's last gfapi lock owner lingers in libgfapi)."""
    env, d = group_gluster_volume, _dir()
    shared = open_shared(loc_of(env, d, how))
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                seq = shared.write(f"gateways/t{t}", {"t": t, "i": i})
                assert shared.read(f"gateways/t{t}") == Record(seq, {"t": t, "i": i})
                with shared.try_lock(f"luns/t{t}.lease", 0):
                    with pytest.raises(LockHeld):
                        shared.try_lock(f"luns/t{t}.lease", 0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert shared.names("gateways/") == [f"gateways/t{t}" for t in range(4)]
