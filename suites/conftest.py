"""Shared helpers of the acceptance suites (the fixtures come from the stage_acceptance plugin)."""

import pytest


def pytest_ignore_collect(collection_path, config):
    """The regression tests exist only for a run compared with a baseline (--baseline)."""
    if collection_path.name == "test_regression.py" and not config.getoption("baseline", default=None):
        return True
    return None


@pytest.fixture
def verify():
    """``verify(check)``: pass if the metric is within tolerance; fail with one line
    (name, value with unit and interval, tolerance) if not; skip, saying why, if the
    session cannot measure it (a metric that is not measured is never a pass)."""

    def check_it(check):
        if check.passed is None:
            pytest.skip(check.describe())
        if not check.passed:
            pytest.fail(check.describe(), pytrace=False)

    return check_it
