"""Garbage in a config file only ever raises ConfigError (never a crash at start)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gluster_iscsi.control import config as cfgmod

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

KEYS = ["version", "epoch", "params", "portals", "accounts", "discovery", "targets"]
TARGET_KEYS = ["name", "tid", "alias", "luns", "acl", "incoming", "outgoing", "params", "forced"]
LUN_KEYS = ["lun", "backing", "bstype", "size", "uuid", "serial", "read_only", "block_size"]

targets = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["iqn.2001-04.com.example:t", "iqn.x", "", "naa.0123"]) | st.text(max_size=8)},
        optional={k: json_values for k in TARGET_KEYS[1:]}
        | {"luns": st.lists(st.dictionaries(st.sampled_from(LUN_KEYS), json_values, max_size=8), max_size=3)},
    ),
    max_size=3,
)  # fmt: skip
documents = st.fixed_dictionaries(
    {}, optional={k: json_values for k in KEYS} | {"targets": targets}
)


@settings(max_examples=150, deadline=None)
@given(documents | json_values)
def test_garbage_only_raises_config_error(doc):
    try:
        out = cfgmod.validate(doc)
    except cfgmod.ConfigError as e:
        assert e.field is not None and e.message
        return
    assert cfgmod.validate(out) == out  # what validates is stable


T = {"name": "iqn.2001-04.com.example:t", "tid": 1}
HOSTILE = [
    {"discovery": {"incoming": [{}]}},
    {"discovery": {"outgoing": []}},
    {"discovery": {"incoming": "alice"}},
    {"targets": [{**T, "outgoing": {}}]},
    {"targets": [{**T, "acl": [{"initiator": "iqn.2001-04.com.example:i", "incoming": [[]]}]}]},
    {"targets": [{**T, "acl": [{"network": "ALL", "incoming": [[]]}]}]},
    {"targets": [{**T, "acl": "ALL"}]},
    {"targets": [{**T, "luns": "x"}]},
    {"targets": [{**T, "luns": [{"lun": 1, "backing": "/a", "uuid": 5}]}]},
    {"targets": [{**T, "luns": [{"lun": 1, "backing": "/a", "bstype": ["rdwr"]}]}]},
    {"targets": [{**T, "luns": [{"lun": 1, "backing": "/a", "serial": 7}]}]},
    {"targets": [{**T, "luns": [{"lun": 1, "backing": "/a", "options": "x"}]}]},
    {"targets": [{**T, "params": {"x": []}}]},
    {"targets": [{**T, "alias": 5}]},
    {"targets": [{"name": "bad name", "tid": 1, "forced": "yes"}]},
    {"targets": "x"},
    {"portals": "x"},
    {"portals": [{"host": "h", "port": "1"}]},
    {"accounts": {"a": 123456789012345}},
    {"accounts": []},
    {"version": "1"},
    {"params": {"MaxRecvDataSegmentLength": None}},
    [],
    "config",
]


def test_hostile_values_are_config_errors():
    for doc in HOSTILE:
        try:
            cfgmod.validate(doc)
        except cfgmod.ConfigError:
            continue
        raise AssertionError(f"accepted {doc!r}")


names = st.sampled_from(["alice", "bob"]) | json_values
hostile_targets = st.lists(
    st.fixed_dictionaries(
        {"name": st.just("iqn.2001-04.com.example:t"), "tid": st.integers(0, 3)},
        optional={
            "incoming": st.lists(names, max_size=2) | json_values,
            "outgoing": names,
            "acl": st.lists(st.dictionaries(st.sampled_from(["initiator", "network", "incoming", "outgoing", "forced"]),
                                            names, max_size=3), max_size=2),
            "luns": st.lists(st.dictionaries(st.sampled_from(LUN_KEYS + ["options"]), json_values, max_size=8)
                             .map(lambda d: {"lun": 1, "backing": "/a", **d}), max_size=2),
            "params": st.dictionaries(st.sampled_from(["MaxBurstLength", "nop_count", "x"]), json_values, max_size=2),
        },
    ),
    max_size=2,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {"accounts": st.just({"alice": "alicesecret12", "bob": "bobsecret1234"}), "targets": hostile_targets},
        optional={"discovery": st.dictionaries(st.sampled_from(["incoming", "outgoing"]), names | st.lists(names))},
    )
)  # fmt: skip
def test_near_valid_documents_only_raise_config_error(doc):
    try:
        out = cfgmod.validate(doc)
    except cfgmod.ConfigError:
        return
    assert cfgmod.validate(out) == out
