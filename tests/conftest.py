import pytest

from gluster_iscsi.logs import PROBLEMS


@pytest.fixture(autouse=True)
def _fresh_problem_log():
    """Each test starts with no rate-limited log lines used up by an earlier test."""
    PROBLEMS.clear()
    yield
