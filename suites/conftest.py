"""Shared helpers of the acceptance suites (the fixtures come from the stage_acceptance plugin)."""

import pytest


@pytest.fixture
def verify():
    """``verify(check)``: pass if the metric is within tolerance, fail with the value and
    limit if not, skip (saying so) if the session cannot measure it."""

    def check_it(check):
        if check.passed is None:
            pytest.skip(check.describe())
        assert check.passed, check.describe()

    return check_it
