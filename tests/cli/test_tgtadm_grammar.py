"""tgtadm's command line, parsed as tgtadm (GNU getopt_long) parses it."""

import pytest

from gluster_iscsi.cli.tgtadm import TgtadmExit, format_target, parse


def test_the_cookbook_lines_parse():
    o = parse("--lld iscsi --op new --mode target --tid 1 -T iqn.20013-10.com.redhat:tgt1".split())
    assert o == {
        "L": "iscsi",
        "o": "new",
        "m": "target",
        "t": 1,
        "T": "iqn.20013-10.com.redhat:tgt1",
    }
    o = parse(
        "--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b /mnt/file --bstype rdwr".split()
    )
    assert o["l"] == 1 and o["b"] == "/mnt/file" and o["E"] == "rdwr"
    o = parse("--lld iscsi --op bind --mode target --tid 1 -I ALL".split())
    assert o["I"] == "ALL"


@pytest.mark.parametrize(
    ("argv", "key", "value"),
    [
        (
            ["--param", "portal=1.2.3.4:3260"],
            "P",
            "portal=1.2.3.4:3260",
        ),  # abbreviation of --params
        (["--initiator-addr=10.0.0.0/8"], "I", "10.0.0.0/8"),
        (["-Q", "iqn.x:y"], "Q", "iqn.x:y"),
        (["--initiator-name", "iqn.x:y"], "Q", "iqn.x:y"),
        (["--user", "u", "--password", "p"], "p", "p"),
        (["--outgoing"], "O", True),
        (["--force"], "F", True),
        (["-t1"], "t", 1),
        (["--tid=0x10"], "t", 16),
        (["--name", "MaxRecvDataSegmentLength", "--value", "65536"], "v", "65536"),
        (["-n", "HeaderDigest", "-v", "CRC32C"], "n", "HeaderDigest"),
        (["--backing-store", "vol@host:file", "--bstype", "glfs"], "E", "glfs"),
        (["-C", "7"], "C", 7),
        (["--blocksize", "4096"], "y", 4096),
    ],
)
def test_options_long_short_and_abbreviated(argv, key, value):
    assert parse(argv)[key] == value


@pytest.mark.parametrize(
    ("argv", "first"),
    [
        (["--bogusopt"], "tgtadm: unrecognized option '--bogusopt'"),
        (["-Z"], "tgtadm: invalid option -- 'Z'"),
        (["--tid", "abc"], "-t argument value 'abc' invalid"),
        (["--lun", "x"], "-l argument value 'x' invalid"),
        (["--op"], "tgtadm: option requires an argument -- 'op'"),
        (["--in", "x"], "tgtadm: option '--in' is ambiguous"),
    ],
)
def test_bad_command_lines_get_tgtadms_messages_and_status_22(argv, first):
    with pytest.raises(TgtadmExit) as e:
        parse(argv)
    assert e.value.code == 22
    assert e.value.lines[0] == first
    assert e.value.lines[-1] == "Try `tgtadm --help' for more information."


def test_show_layout_matches_tgt_line_for_line():
    # What real tgt printed (tests/cli/golden/tgtadm_golden.json, step 14), target 2.
    from .test_tgtadm_golden import golden

    tgt = golden()[14]["stdout"].splitlines()
    t = {
        "tid": 2, "name": "iqn.2001-04.com.example:two", "sessions": [],
        "luns": [{"lun": 1, "uuid": "5c1d0e6a-1c79-4e9c-a1a7-6d2f3c3f7c01", "serial": "beaf21",
                  "naa": None, "size": 100 << 20, "block_size": 512, "online": True,
                  "read_only": False, "bstype": "rdwr", "backing": "{DIR}/file2",
                  "thin_provisioning": True}],
        "incoming": ["alice"], "outgoing": "bob",
        "acl": [{"network": "192.168.1.0/24"}, {"initiator": "iqn.1994-05.com.redhat:client"}],
    }  # fmt: skip
    ours = format_target(t)
    start = tgt.index("Target 2: iqn.2001-04.com.example:two")
    expected = tgt[start : start + len(ours)]

    def normalize(lines):
        return [x for x in lines if "SCSI ID:" not in x]

    assert normalize(ours) == normalize(expected)
