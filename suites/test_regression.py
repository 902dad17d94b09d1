"""Since the baseline (--baseline): no metric significantly worse beyond the holder's
[regression] tolerance. Collected only when a baseline is given."""

import pytest

from stage_acceptance.baseline import COMPARED_METRICS

pytestmark = pytest.mark.regression


@pytest.mark.parametrize("metric", COMPARED_METRICS)
def test_no_regression(metric, stage_comparison):
    """Fails when the metric grew significantly, by more than its [regression] tolerance."""
    change = stage_comparison.metrics.get(metric)
    if change is None:
        pytest.skip(f"{metric}: not measured in this run nor in the baseline")
    if change.regressed is None:
        pytest.skip(change.describe())
    if change.regressed:
        pytest.fail(change.describe(), pytrace=False)
