"""The config's ``group`` section (control/config.py): what a daemon needs to join a group."""

from __future__ import annotations

import pytest

from gluster_iscsi.control import config as cfgmod
from gluster_iscsi.control.config import ConfigError


def cfg(**group):
    return {"version": 1, "group": {"location": "/mnt/vol/.gluster-iscsi", "gateway": "gw1",
                                    "number": 1, **group}}


def test_group_section_is_normalized_with_defaults():
    out = cfgmod.validate(cfg())
    assert out["group"] == {"location": "/mnt/vol/.gluster-iscsi", "gateway": "gw1",
                            "number": 1, "beat_seconds": 1.0, "lease_seconds": 5.0}
    assert "group" not in cfgmod.validate({"version": 1})  # a lone daemon's config unchanged
    g = cfgmod.validate(cfg(location="gluster://h1,h2/vol/.gi", beat_seconds=0.5,
                            lease_seconds=2))["group"]
    assert (g["location"], g["beat_seconds"], g["lease_seconds"]) == ("gluster://h1,h2/vol/.gi",
                                                                      0.5, 2.0)


@pytest.mark.parametrize(("group", "field", "says"), [
    ({"number": 0}, "group.number", "from 1 to 255"),
    ({"number": 256}, "group.number", "from 1 to 255"),
    ({"number": "1"}, "group.number", "from 1 to 255"),
    ({"gateway": "a b"}, "group.gateway", "not a gateway name"),
    ({"gateway": None}, "group.gateway", "not a gateway name"),
    ({"location": ""}, "group.location", "missing group directory"),
    ({"location": "rel/dir"}, "group.location", "relative path"),
    ({"beat_seconds": 0}, "group.beat_seconds", "seconds above 0"),
    ({"lease_seconds": True}, "group.lease_seconds", "seconds above 0"),
    ({"beat_seconds": 2, "lease_seconds": 3}, "group.lease_seconds", "under two heartbeats"),
    ({"colour": "red"}, "group.colour", "unknown key"),
])
def test_bad_group_sections_say_what_to_fix(group, field, says):
    with pytest.raises(ConfigError) as e:
        cfgmod.validate(cfg(**group))
    assert e.value.field == field and says in str(e.value)


def test_group_must_be_an_object():
    with pytest.raises(ConfigError, match="location, gateway, number"):
        cfgmod.validate({"version": 1, "group": "gw1"})
