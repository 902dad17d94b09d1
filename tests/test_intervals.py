"""95 % intervals: they hold the estimate, and they cover the truth about 95 % of the time."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from stage_acceptance import intervals
from stage_acceptance.analysis import drift, lost_motion, repeatability_nm

TRIALS = 600


def coverage(trial) -> float:
    """Fraction of `TRIALS` seeded trials whose interval holds the truth."""
    hits = [trial(np.random.default_rng(seed)) for seed in range(TRIALS)]
    return float(np.mean(hits))


def test_welch_interval_of_the_backlash_covers_the_truth():
    kind = np.array(["plain"] * 12 + ["reversal"] * 3)
    ref = np.full(len(kind), 1000.0)

    def trial(rng):
        lost = np.where(kind == "reversal", 150.0, 0.0) + rng.normal(0, 2.0, len(kind))
        low, high = lost_motion(ref, ref - lost, kind).backlash_nm.ci95
        return low <= 150.0 <= high

    assert 0.92 <= coverage(trial) <= 0.985


def test_slope_and_scatter_intervals_cover_the_truth():
    ref = np.tile([1000.0, -1000.0], 5)
    kind = np.array(["plain"] * len(ref))

    def trial(rng):
        result = lost_motion(ref, 1.02 * ref + rng.normal(0, 3.0, len(ref)), kind)
        scale_low, scale_high = result.scale_error.ci95
        scatter_low, scatter_high = result.step_scatter_nm.ci95
        return scale_low <= 0.02 <= scale_high, scatter_low <= 3.0 <= scatter_high

    hits = np.array([trial(np.random.default_rng(seed)) for seed in range(TRIALS)])
    assert 0.92 <= hits[:, 0].mean() <= 0.985
    assert 0.92 <= hits[:, 1].mean() <= 0.985


def test_drift_speed_interval_covers_the_truth():
    t = np.array([0.0, 30.0, 60.0, 90.0])
    v = np.array([1.2, -0.9])  # nm/min, speed 1.5

    def trial(rng):
        positions = np.outer(t / 60.0, v) + rng.normal(0, 0.3, (len(t), 2))
        low, high = drift([t], [positions]).speed_nm_per_min.ci95
        return low <= 1.5 <= high

    assert coverage(trial) >= 0.93  # the confidence circle is conservative


def test_bootstrap_interval_of_an_rms_roughly_covers_the_truth():
    def trial(rng):
        squared = rng.normal(0, 2.0, 20) ** 2
        low, high = intervals.bootstrap_interval(lambda idx: float(np.sqrt(squared[idx[0]].mean())),
                                                 [np.arange(20)], resamples=300, seed=int(rng.integers(1 << 30)))
        return low <= 2.0 <= high

    hits = [trial(np.random.default_rng(seed)) for seed in range(300)]
    assert 0.85 <= np.mean(hits) <= 0.99  # percentile bootstrap: close to, often a little under, 95 %


def test_the_bootstrap_is_reproducible():
    data = np.random.default_rng(1).normal(size=15)

    def statistic(idx):
        return float(data[idx[0]].mean())

    assert intervals.bootstrap_interval(statistic, [np.arange(15)]) == \
        intervals.bootstrap_interval(statistic, [np.arange(15)])


@settings(max_examples=60, deadline=None)
@given(stds=st.lists(st.floats(0.0, 50.0), min_size=3, max_size=12), visits=st.integers(3, 6))
def test_repeatability_interval_holds_the_value(stds, visits):
    rng = np.random.default_rng(0)
    deviations = [rng.normal(0, s, visits) if s > 0 else np.zeros(visits) for s in stds]
    result = repeatability_nm(deviations)
    low, high = result.ci95
    assert low <= result.value <= high + 1e-9


@settings(max_examples=60, deadline=None)
@given(value=st.floats(-1e3, 1e3), se=st.floats(0.0, 100.0), dof=st.integers(1, 200))
def test_t_interval_is_symmetric_and_widens_with_the_error(value, se, dof):
    low, high = intervals.t_interval(value, se, dof)
    assert low <= value <= high
    assert (high - value) == pytest.approx(value - low, abs=1e-9)
    assert intervals.t_interval(value, 2 * se, dof)[1] - value == pytest.approx(2 * (high - value), abs=1e-9)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="dof"):
        intervals.t_interval(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="two values"):
        intervals.mean_difference_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="all x are 0"):
        intervals.slope_through_origin([0.0, 0.0], [1.0, 2.0])
