"""The iscsi-test-cu output parser: verdict lines, skips, and logged-but-expected failures."""

from tests.integration.cunit import parse

OUTPUT = """
Suite: Reserve6
  Test: Simple ...passed
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. SENSE KEY:UNIT_ATTENTION(6)

Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...    [FAILED] WRITE10 command failed with status 2 / sense key COMMAND ABORTED(0x0b)
    [FAILED] WRITE10 command failed with status 2
passed
Suite: GetLBAStatus
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
  Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
  Test: Last ...FAILED
"""


def test_verdicts_come_from_the_closing_word_not_logged_failures():
    got = {r.name: r.verdict for r in parse(OUTPUT)}
    assert got == {
        "Reserve6.Simple": "passed",
        "Reserve6.LUNReset": "passed",
        "iSCSIdatasn.iSCSIDataSnInvalid": "passed",
        "GetLBAStatus.BeyondEol": "failed",
        "GetLBAStatus.UnmapSingle": "skipped",
        "GetLBAStatus.Last": "failed",
    }


def test_skip_keeps_its_reason_and_failure_its_detail():
    res = {r.name: r for r in parse(OUTPUT)}
    assert res["GetLBAStatus.UnmapSingle"].detail == "Logical unit is fully provisioned. Skipping test"
    assert "should have failed" in res["GetLBAStatus.BeyondEol"].detail


def test_a_test_cut_short_by_a_crash_is_a_failure():
    (r,) = parse("Suite: X\n  Test: Crashes ...    doing things\n")
    assert r.verdict == "failed"
