import asyncio
import copy

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control import reconcile

from .fakes import FakeDaemon

T1 = "iqn.2001-04.com.example:t1"
T2 = "iqn.2001-04.com.example:t2"


def run(coro):
    return asyncio.run(coro)


def lines(changes):
    """The human lines of a ``changes`` list (each change is an object with a ``text``)."""
    return [c["text"] for c in changes]


def desired(**kw):
    cfg = cfgmod.empty_config()
    cfg["accounts"] = {"alice": "alicesecret12", "bob": "bobsecret1234"}
    cfg["portals"] = [{"host": "127.0.0.1", "port": 3260, "advertise": None}]
    cfg["targets"] = [
        {"name": T1, "tid": 1, "luns": [{"lun": 1, "backing": "/srv/t1.img", "size": 1 << 20,
                                         "uuid": "5c1d0e6a-1c79-4e9c-a1a7-6d2f3c3f7c01"}],
         "acl": [{"network": "ALL"}]},
    ]  # fmt: skip
    cfg.update(kw)
    return cfgmod.validate(cfg)


async def apply_twice(r, cfg):
    first = await r.apply(cfg)
    second = await r.apply(cfg)
    return first, second


def test_first_apply_builds_everything_and_a_second_is_a_no_op(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    first, second = run(apply_twice(r, desired()))
    assert f"target {T1} (tid 1): add" in lines(first)
    assert "portal 127.0.0.1:3260: add" in lines(first)
    assert second == []
    t = d.registry.lookup(T1)
    assert t.tid == 1 and t.allows("iqn.x:y", "10.1.1.1")
    assert t.device.lu(1).cfg["backing"] == "/srv/t1.img"
    # targets exist before the listener opens
    assert [c[0] for c in d.calls] == ["add_target", "add_portal"]


def test_adding_a_target_leaves_the_others_objects_untouched(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)

    async def scenario():
        await r.apply(desired())
        before_target = d.registry.lookup(T1)
        before_lu = before_target.device.lu(1)
        cfg = desired()
        cfg["targets"].append(
            {"name": T2, "tid": 2, "luns": [{"lun": 1, "backing": "/srv/t2.img"}]}
        )
        changes = await r.apply(cfg)
        return before_target, before_lu, changes

    before_target, before_lu, changes = run(scenario())
    assert all(T1 not in c for c in lines(changes)), changes
    assert d.registry.lookup(T1) is before_target
    assert before_target.device.lu(1) is before_lu and not before_lu.store.closed
    assert ("remove_target", T1) not in d.calls
    assert d.registry.lookup(T2) is not None


def test_acl_and_chap_changes_are_made_in_place(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)

    async def scenario():
        await r.apply(desired())
        t = d.registry.lookup(T1)
        cfg = desired()
        cfg["targets"][0]["acl"] = [
            {"network": "10.0.0.0/8"},
            {"initiator": "iqn.1994-05.com.redhat:c", "incoming": ["bob"]},
        ]
        cfg["targets"][0]["incoming"] = ["alice"]
        changes = await r.apply(cfg)
        return t, changes

    t, changes = run(scenario())
    assert d.registry.lookup(T1) is t
    assert not t.allows("iqn.x:y", "192.168.0.1") and t.allows("iqn.x:y", "10.2.3.4")
    assert [a.user for a in t.incoming] == ["alice"]
    assert t.chap_for("iqn.1994-05.com.redhat:c")[0][0].secret == "bobsecret1234"
    assert any("allow 10.0.0.0/8" in c for c in lines(changes))
    assert any("disallow ALL" in c for c in lines(changes))
    assert any("CHAP incoming alice" in c for c in lines(changes))
    assert all("secret" not in c or "new secret" in c for c in lines(changes))
    assert "alicesecret12" not in repr(changes)


def test_a_new_secret_reaches_every_target_using_the_account(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    cfg = desired()
    cfg["targets"][0]["incoming"] = ["alice"]

    async def scenario():
        await r.apply(cfg)
        new = copy.deepcopy(cfg)
        new["accounts"]["alice"] = "another-secret-99"
        return await r.apply(new)

    changes = run(scenario())
    assert "account alice: new secret" in lines(changes)
    assert d.registry.lookup(T1).incoming[0].secret == "another-secret-99"


def test_lun_changes_replace_only_that_lun_and_size_grows_online(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)

    async def scenario():
        cfg = desired()
        cfg["targets"][0]["luns"].append(cfgmod.validate_lun({"lun": 2, "backing": "/srv/b"}, "x"))
        await r.apply(cfg)
        dev = d.registry.lookup(T1).device
        lu1, lu2 = dev.lu(1), dev.lu(2)
        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"][0]["size"] = 2 << 20  # grow LUN 1
        new["targets"][0]["luns"][1]["read_only"] = True  # LUN 2 needs a new LU
        changes = await r.apply(new)
        return dev, lu1, lu2, changes

    dev, lu1, lu2, changes = run(scenario())
    assert dev.lu(1) is lu1 and lu1.store.size == 2 << 20 and lu1.capacity_changes == 1
    assert dev.lu(2) is not lu2 and lu2.store.closed
    assert f"target {T1}: LUN 1 size {2 << 20}" in lines(changes)


def test_shrinking_is_refused(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)

    async def scenario():
        await r.apply(desired())
        new = desired()
        new["targets"][0]["luns"][0]["size"] = 1 << 10
        await r.apply(new)

    with pytest.raises(reconcile.ReconcileError, match="cannot shrink"):
        run(scenario())


def test_a_store_that_cannot_open_changes_nothing(tmp_path, fake_runtime):
    opened, failing = fake_runtime
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    failing.add("/srv/missing.img")

    async def scenario():
        await r.apply(desired())
        cfg = desired()
        cfg["targets"].append(
            {
                "name": T2,
                "tid": 2,
                "luns": [
                    {"lun": 1, "backing": "/srv/ok.img"},
                    {"lun": 2, "backing": "/srv/missing.img"},
                ],
            }
        )
        cfg["targets"][0]["acl"] = []
        await r.apply(cfg)

    with pytest.raises(reconcile.ReconcileError) as e:
        run(scenario())
    assert "LUN 2" in e.value.field and "missing.img" in str(e.value)
    assert d.registry.lookup(T2) is None
    assert d.registry.lookup(T1).acl  # untouched
    assert [lu.store.closed for lu in opened if lu.cfg["backing"] == "/srv/ok.img"] == [True]
    assert len(r.current()["targets"]) == 1


def test_removing_a_target_closes_its_stores(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)

    async def scenario():
        await r.apply(desired())
        lu = d.registry.lookup(T1).device.lu(1)
        changes = await r.apply(desired(targets=[]))
        return lu, changes

    lu, changes = run(scenario())
    assert lu.store.closed and d.registry.lookup(T1) is None
    assert changes == [{
        "action": "remove", "object": "target", "target": T1, "tid": 1,
        "text": f"target {T1} (tid 1): remove (closes its sessions)",
    }]  # fmt: skip


def test_a_port_in_use_at_commit_undoes_everything(tmp_path, fake_runtime):
    """The fake daemon's port fails when opened (at commit), not when bound: every step
    before it (a new target with its LUN, an ACL change, params) is undone and its store
    closed."""
    opened, _ = fake_runtime
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    d.fail_portal = ("127.0.0.1", 3999)

    async def scenario():
        await r.apply(desired())
        t1 = d.registry.lookup(T1)
        cfg = desired(
            params={"MaxRecvDataSegmentLength": "65536"},
            portals=[
                {"host": "127.0.0.1", "port": 3260, "advertise": "10.0.2.2"},
                {"host": "127.0.0.1", "port": 3999},
            ],
        )
        cfg["targets"][0]["acl"] = [{"network": "10.0.0.0/8"}]
        cfg["targets"].append({"name": T2, "tid": 2, "luns": [{"lun": 1, "backing": "/srv/t2.img"}]})
        with pytest.raises(reconcile.ReconcileError, match="cannot listen") as e:
            await r.apply(cfgmod.validate(cfg))
        return t1, e.value

    t1, err = run(scenario())
    assert err.field == "portal 127.0.0.1:3999"
    assert d.registry.lookup(T2) is None and d.registry.lookup(T1) is t1
    assert t1.allows("iqn.x:y", "192.168.1.1")  # the old ACL (ALL) is back
    assert d.params["MaxRecvDataSegmentLength"] == "262144"
    assert [lu.cfg["backing"] for lu in opened if lu.store.closed] == ["/srv/t2.img"]
    assert not t1.device.lu(1).store.closed
    assert r.current() == desired() | {"epoch": r.current()["epoch"]}


def test_dry_run_reports_without_changing(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    changes = run(r.apply(desired(), dry_run=True))
    assert changes and d.registry.targets == {} and d.calls == []
    assert r.current()["targets"] == []


def test_params_and_discovery_auth(tmp_path, fake_runtime):
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    cfg = desired(
        params={"MaxRecvDataSegmentLength": "65536"},
        discovery={"incoming": ["alice"], "outgoing": "bob"},
    )
    run(r.apply(cfg))
    assert d.params["MaxRecvDataSegmentLength"] == "65536" and d.params["InitialR2T"] == "Yes"
    assert d.registry.discovery_incoming[0].user == "alice"
    assert d.registry.discovery_outgoing.user == "bob"
    changes = run(r.apply(desired()))
    assert d.params["MaxRecvDataSegmentLength"] == "262144"  # back to the daemon's default
    assert "params: MaxRecvDataSegmentLength back to its default" in lines(changes)
    assert d.registry.discovery_incoming == []


def test_a_store_missing_at_restore_leaves_only_that_lun_offline_and_a_reload_retries(
    tmp_path, fake_runtime
):
    opened, failing = fake_runtime
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    cfg = desired()
    cfg["targets"].append({"name": T2, "tid": 2, "luns": [{"lun": 1, "backing": "/srv/down.img"}],
                           "acl": [{"network": "ALL"}]})  # fmt: skip
    cfg = cfgmod.validate(cfg)
    failing.add("/srv/down.img")

    async def scenario():
        first = await r.apply(cfg)  # the restore at start: tolerant
        assert d.registry.lookup(T1).device.lu(1) is not None
        assert d.registry.lookup(T2) is not None and d.registry.lookup(T2).device.lu(1) is None
        assert r.logical_unit(T2, 1) is None
        # an unrelated change while it is still down goes through
        edited = copy.deepcopy(cfg)
        edited["targets"][1]["alias"] = "x"
        second = await r.apply(edited)
        failing.clear()
        third = await r.apply(edited)  # a reload with nothing changed retries it
        return first, second, third

    first, second, third = run(scenario())
    assert any("LUN 1 offline" in line and T2 in line for line in lines(first))
    assert f"target {T2}: alias x" in lines(second)
    assert lines(third) == [f"target {T2}: LUN 1 online again"]
    assert third[0]["action"] == "online" and third[0]["object"] == "lun"
    assert d.registry.lookup(T2).device.lu(1) is not None
    assert r.current()["targets"][1]["luns"][0]["backing"] == "/srv/down.img"


def test_after_the_restore_a_new_lun_that_cannot_open_is_an_error(tmp_path, fake_runtime):
    opened, failing = fake_runtime
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    failing.add("/srv/down.img")

    async def scenario():
        await r.apply(desired())
        cfg = desired()
        cfg["targets"][0]["luns"].append({"lun": 2, "backing": "/srv/down.img"})
        await r.apply(cfg)

    with pytest.raises(reconcile.ReconcileError):
        run(scenario())


def test_pr_state_is_saved_atomically_0600_and_restored(tmp_path):
    import stat

    from gluster_iscsi.backstore.memory import MemoryStore
    from gluster_iscsi.scsi.reservations import PrState, Registration
    from gluster_iscsi.server.runner import lu_on

    cfg = {"uuid": "5c1d0e6a-1c79-4e9c-a1a7-6d2f3c3f7c01"}
    lu = lu_on(MemoryStore(1 << 20), serial="s1")
    reconcile.attach_pr_state(tmp_path, lu, cfg)
    assert lu.on_persist is not None
    lu.pr = PrState(registrations=[Registration("iqn.x,i,0x1", "iqn.t,t,0x1", 7)], aptpl=True)
    lu.persist_pr()
    path = reconcile.pr_path(tmp_path, cfg["uuid"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no tmp left

    again = lu_on(MemoryStore(1 << 20), serial="s1")
    reconcile.attach_pr_state(tmp_path, again, cfg)
    assert [r.key for r in again.pr.registrations] == [7] and again.pr.aptpl

    again.pr.aptpl = False  # APTPL cleared: nothing survives a restart
    again.persist_pr()
    assert not path.exists()


def test_unreadable_pr_state_is_ignored_not_fatal(tmp_path):
    from gluster_iscsi.backstore.memory import MemoryStore
    from gluster_iscsi.server.runner import lu_on

    cfg = {"uuid": "u1"}
    path = reconcile.pr_path(tmp_path, "u1")
    path.parent.mkdir()
    path.write_text("{not json")
    lu = lu_on(MemoryStore(1 << 20), serial="s1")
    reconcile.attach_pr_state(tmp_path, lu, cfg)
    assert lu.pr.registrations == [] and lu.on_persist is not None


def test_lu_options_configure_the_lu_not_the_store(tmp_path):
    lun = cfgmod.validate_lun(
        {"lun": 1, "backing": f"memory:{1 << 20}", "bstype": "memory",
         "options": {"physical_block_size": 4096}}, "x",
    )  # fmt: skip
    lu = reconcile.open_lu(lun, T1)
    try:
        assert lu.physical_block_size == 4096 and lu.lbppbe == 3
    finally:
        reconcile.close_lu(lu)


def test_an_online_grow_never_asks_the_store_its_size_on_the_event_loop(
    tmp_path, fake_runtime, monkeypatch
):
    import threading

    from gluster_iscsi.backstore.memory import MemoryStore
    from gluster_iscsi.scsi.sense import Asc
    from gluster_iscsi.server.runner import lu_on

    loop_thread: list[threading.Thread] = []
    on_loop: list[str] = []

    class Watched(MemoryStore):
        @property
        def size(self) -> int:
            if loop_thread and threading.current_thread() is loop_thread[0]:
                on_loop.append("size")  # a gfapi fstat here would stall every session
            return super().size

    def open_lu(cfg, target_name):
        return lu_on(Watched(cfg["size"]), lun_id=cfg["lun"], serial=cfg["serial"])

    monkeypatch.setattr(reconcile, "open_lu", open_lu)
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)

    async def scenario():
        loop_thread.append(threading.current_thread())
        cfg = desired()
        await r.apply(cfg)
        lu = d.registry.lookup(T1).device.lu(1)
        lu.nexus_added("iqn.x,i,0x1")
        lu.clear_ua("iqn.x,i,0x1")
        grown = copy.deepcopy(cfg)
        grown["targets"][0]["luns"][0]["size"] = 4 << 20
        await r.apply(grown)
        return lu

    lu = run(scenario())
    assert on_loop == []
    assert lu.block_count == (4 << 20) // 512
    assert lu.pop_ua("iqn.x,i,0x1") == Asc.CAPACITY_DATA_HAS_CHANGED


def test_a_replaced_lun_is_drained_before_its_replacement_serves(tmp_path, fake_runtime):
    """Writes acknowledged early (write-behind) on a LUN that a config change (``--force``)
    replaces on the same backing must be written before the new LU takes its commands: a read
    there (another store handle, another read cache) would otherwise return the bytes from
    before the write, and a new write could be overwritten by the older one landing late."""
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    seen = []

    async def drain(lu):
        seen.append((lu, d.registry.lookup(T1).device.lu(1)))

    d.write_behind_drain = drain

    async def scenario():
        cfg = desired()
        await r.apply(cfg)
        old = d.registry.lookup(T1).device.lu(1)
        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"][0]["read_only"] = True  # same backing: a new LU
        await r.apply(new, force=True)
        return old

    old = run(scenario())
    assert d.registry.lookup(T1).device.lu(1) is not old
    drained = [serving for lu, serving in seen if lu is old]
    assert drained and drained[0] is old  # drained while still the one serving


def test_a_lun_put_back_by_an_undone_change_writes_behind_again(tmp_path, fake_runtime):
    """A config change drains the write-behind of the LUNs it replaces (which stops it on
    them), then fails (a port in use) and is undone: the old LU serves on, and must write
    behind again, not stay synchronous until the daemon restarts."""
    d = FakeDaemon(tmp_path)
    r = reconcile.Reconciler(d)
    d.fail_portal = ("127.0.0.1", 3999)

    async def scenario():
        cfg = desired()
        await r.apply(cfg)
        old = d.registry.lookup(T1).device.lu(1)
        new = copy.deepcopy(cfg)
        new["targets"][0]["luns"][0]["read_only"] = True  # same backing: a new LU
        new["portals"].append({"host": "127.0.0.1", "port": 3999, "advertise": None})
        with pytest.raises(reconcile.ReconcileError, match="cannot listen"):
            await r.apply(cfgmod.validate(new), force=True)
        return old

    old = run(scenario())
    assert d.registry.lookup(T1).device.lu(1) is old and not old.store.closed
    assert old in d.drained  # (the change got as far as draining it)
    assert id(old) not in d.wb_off
