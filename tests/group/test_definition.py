"""The group definition, record group.json (group/definition.py), on a local directory."""

from __future__ import annotations

import threading

import pytest

from gluster_iscsi.group import definition as gd
from gluster_iscsi.group.definition import GroupDefinition
from gluster_iscsi.group.shared import open_shared


@pytest.fixture
def shared(tmp_path):
    s = open_shared(str(tmp_path / "grp"))
    yield s
    s.close()


def test_create_load_and_refuse_a_second(shared):
    assert gd.load(shared) is None
    defn = gd.create(shared, "g1")
    assert (defn.name, defn.version) == ("g1", 1)
    assert defn.settings == {"beat_seconds": 1.0, "lease_seconds": 5.0}
    assert gd.load(shared) == defn
    with pytest.raises(gd.DefinitionExists, match="already holds group 'g1'"):
        gd.create(shared, "g2")


def test_update_bumps_the_version_and_others_see_it(shared, tmp_path):
    gd.create(shared, "g1")

    def join(defn: GroupDefinition) -> None:
        n = gd.assign_number(defn, "gw-a")
        defn.gateways["gw-a"] = {"number": n, "addresses": ["192.0.2.1:3260"], "joined_at": 1.0}

    after = gd.update(shared, join)
    assert after.version == 2 and after.gateways["gw-a"]["number"] == 1
    other = open_shared(str(tmp_path / "grp"))
    assert gd.load(other) == after
    gd.update(other, lambda d: d.targets.append({"name": "iqn.2026-12.org.example:t1"}))
    again = gd.load(shared)
    assert again is not None and again.version == 3
    assert again.targets == [{"name": "iqn.2026-12.org.example:t1"}]


def test_a_failing_change_writes_nothing(shared):
    gd.create(shared, "g1")

    def boom(defn: GroupDefinition) -> None:
        defn.gateways["x"] = {"number": 1}
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        gd.update(shared, boom)
    with pytest.raises(ValueError, match="number 0 is not in 1..255"):
        gd.update(shared, lambda d: d.gateways.update(x={"number": 0}))
    with pytest.raises(ValueError, match="preferred"):
        gd.update(shared, lambda d: d.luns.update(g={"preferred": "nobody"}))
    defn = gd.load(shared)
    assert defn is not None and defn.version == 1 and defn.gateways == {}


def test_update_without_a_definition(shared):
    with pytest.raises(LookupError, match="no group definition"):
        gd.update(shared, lambda d: None)


def test_concurrent_updates_lose_nothing(tmp_path):
    loc = str(tmp_path / "grp")
    gd.create(open_shared(loc), "g1")

    def join(name: str) -> None:
        s = open_shared(loc)

        def fn(defn: GroupDefinition) -> None:
            defn.gateways[name] = {"number": gd.assign_number(defn, name), "addresses": []}

        gd.update(s, fn, timeout=30)
        s.close()

    threads = [threading.Thread(target=join, args=(f"gw{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    defn = gd.load(open_shared(loc))
    assert defn is not None and defn.version == 7
    assert sorted(g["number"] for g in defn.gateways.values()) == [1, 2, 3, 4, 5, 6]


def test_assign_number_takes_the_lowest_free():
    defn = GroupDefinition("g")
    assert gd.assign_number(defn, "a") == 1
    defn.gateways = {"a": {"number": 1}, "c": {"number": 3}}
    assert gd.assign_number(defn, "b") == 2
    assert gd.assign_number(defn, "c") == 3  # a member keeps its number
    defn.gateways = {f"g{n}": {"number": n} for n in range(1, 256)}
    with pytest.raises(ValueError, match="no number left"):
        gd.assign_number(defn, "new")


def test_settings_are_checked(shared):
    with pytest.raises(ValueError, match="lease_seconds must be longer"):
        gd.create(shared, "g", settings={"lease_seconds": 1.0})
    with pytest.raises(ValueError, match="beat_seconds"):
        GroupDefinition.from_dict({"name": "g", "settings": {"beat_seconds": -1}})
    with pytest.raises(ValueError, match="name"):
        GroupDefinition.from_dict({"name": ""})
    d = gd.create(shared, "g", settings={"beat_seconds": 0.5, "lease_seconds": 3})
    assert (d.beat_seconds, d.lease_seconds) == (0.5, 3.0)
