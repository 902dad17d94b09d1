"""Comparing a run with a baseline: the maths, the comparison of two results JSONs,
reading a results JSON back, and the holder's [regression] table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stage_acceptance.baseline import (COMPARED_METRICS, WORSE_WHEN, badness_ci95, compare_metric, compare_results,
                                       difference_ci95, excludes_zero, magnitude_ci95, regression_key)
from stage_acceptance.config import REGRESSION_KEYS, ConfigError, load_holder
from stage_acceptance.report import read_results


def test_the_difference_interval_combines_half_widths_in_quadrature():
    change, ci = difference_ci95([10.0, 0.0], [[7.0, 13.0], [-1.0, 2.0]], [14.0, 0.5], [[10.0, 18.0], [0.0, 0.5]])
    np.testing.assert_allclose(change, [4.0, 0.5])
    # lower: sqrt(lower(after)^2 + upper(before)^2); upper: sqrt(upper(after)^2 + lower(before)^2)
    np.testing.assert_allclose(ci[0], [4.0 - 5.0, 4.0 + 5.0])
    np.testing.assert_allclose(ci[1], [0.5 - np.hypot(0.5, 2.0), 0.5 + np.hypot(0.0, 1.0)])
    assert excludes_zero(ci).tolist() == [False, False]
    assert excludes_zero([[0.1, 2.0], [-3.0, -0.2], [-1.0, 1.0]]).tolist() == [True, True, False]


def test_the_difference_interval_covers_95_percent_of_independent_runs():
    """Monte Carlo: two independent normal estimates with 95 % t-free intervals."""
    rng = np.random.default_rng(7)
    n, sigma_a, sigma_b, truth = 4000, 1.0, 2.0, 3.0
    before = rng.normal(0.0, sigma_a, n)
    after = rng.normal(truth, sigma_b, n)
    z = 1.959964
    _, ci = difference_ci95(before, np.column_stack([before - z * sigma_a, before + z * sigma_a]),
                            after, np.column_stack([after - z * sigma_b, after + z * sigma_b]))
    covered = np.mean((ci[:, 0] <= truth) & (truth <= ci[:, 1]))
    assert 0.94 <= covered <= 0.96


def test_shapes_and_finiteness_are_checked():
    with pytest.raises(ValueError, match="shapes differ"):
        difference_ci95([1.0, 2.0], [[0, 2], [1, 3]], [1.0], [[0, 2]])
    with pytest.raises(ValueError, match="after must be finite"):
        difference_ci95([1.0], [[0, 2]], [np.nan], [[0, 2]])


def test_magnitude_of_an_interval_across_zero_starts_at_zero():
    value, ci = magnitude_ci95([-5.0, 2.0, -1.0], [[-7.0, -3.0], [1.0, 3.0], [-4.0, 2.0]])
    np.testing.assert_allclose(value, [5.0, 2.0, 1.0])
    np.testing.assert_allclose(ci, [[3.0, 7.0], [1.0, 3.0], [0.0, 4.0]])
    np.testing.assert_allclose(badness_ci95([2.0], [[1.0, 3.0]], "smaller value")[1], [[-3.0, -1.0]])
    with pytest.raises(ValueError, match="worse_when"):
        badness_ci95([1.0], [[0, 2]], "sideways")


def test_every_compared_metric_has_a_regression_key_and_a_direction():
    assert {regression_key(name) for name in COMPARED_METRICS} == set(REGRESSION_KEYS) == set(WORSE_WHEN)
    assert regression_key("coupling.y_to_x") == "coupling"
    assert regression_key("tilt.beta.backlash_deg") == "tilt_backlash_deg"
    assert regression_key("pairs.target_actual.rms_nm") == "pair_rms_nm"
    with pytest.raises(ValueError, match="not a compared metric"):
        regression_key("x.nonsense")


def test_a_sign_flip_is_significant_but_not_worse():
    change = compare_metric("x.backlash_nm", 5.0, (4.0, 6.0), -5.0, (-6.0, -4.0), "nm", 10.0)
    assert change.significant and not change.worse and not change.better and change.regressed is False
    assert change.change == pytest.approx(-10.0)


def test_worse_beyond_the_tolerance_regresses_and_within_it_does_not():
    big = compare_metric("x.backlash_nm", 1.0, (0.0, 2.0), 40.0, (38.0, 42.0), "nm", 10.0)
    assert big.worse and big.regressed and big.worsening == pytest.approx(39.0)
    assert "beyond the regression tolerance 10 nm" in big.describe()
    small = compare_metric("x.backlash_nm", 1.0, (0.0, 2.0), 6.0, (5.0, 7.0), "nm", 10.0)
    assert small.worse and small.regressed is False
    noisy = compare_metric("x.repeatability_nm", 8.0, (3.0, 200.0), 30.0, (12.0, 600.0), "nm", 10.0)
    assert noisy.significant is False and noisy.regressed is False  # wide intervals: not significant
    untold = compare_metric("x.backlash_nm", 1.0, (0.0, 2.0), 40.0, (38.0, 42.0), "nm", None)
    assert untold.worse and untold.regressed is None and "sets no [regression] backlash_nm" in untold.reason
    missing = compare_metric("drift_nm_per_min", None, None, 1.0, (0.5, 1.5), "nm/min", 2.5)
    assert missing.regressed is None and missing.reason == "not measured in the baseline"


def _results(backlash, ci, verdict="accepted", case="a", rms=2.0):
    return {"schema": "stage-acceptance/results", "version": 1, "microscope": "sim", "holder": "default",
            "verdict": verdict, "certification": {"case": case},
            "checks": {"x.backlash_nm": {"value": backlash, "ci95": ci, "unit": "nm", "limit": 15.0},
                       "drift_nm_per_min": {"value": None, "ci95": None, "unit": "nm/min", "limit": 5.0}},
            "pairs": {"target_actual": {"rms_nm": rms, "rms_ci95": [rms - 0.5, rms + 0.5]}}}


def test_two_results_documents_are_compared_metric_by_metric():
    comparison = compare_results(_results(0.5, [-1.0, 2.0]), _results(30.0, [28.0, 32.0], "not accepted", "f", 9.0),
                                 load_holder("default").regression, source="before.json")
    assert set(comparison.metrics) == {"x.backlash_nm", "pairs.target_actual.rms_nm"}  # drift: neither run
    assert [m.name for m in comparison.regressed] == ["x.backlash_nm"]
    assert comparison.metrics["pairs.target_actual.rms_nm"].worse  # 2 -> 9 nm, within 12.5 nm
    assert comparison.headline().startswith("verdict accepted -> not accepted, case a -> f; 1 metric(s) "
                                            "significantly worse beyond the regression tolerance: Backlash, x")
    section = comparison.to_json()
    assert section["source"] == "before.json" and section["verdict"] == "accepted" and section["case"] == "a"
    entry = section["metrics"]["x.backlash_nm"]
    assert {"before", "after", "change", "significant", "worse"} <= set(entry)
    assert entry["change"] == pytest.approx(29.5) and entry["significant"] and entry["regressed"]
    json.dumps(section, allow_nan=False)


def test_montage_metrics_measured_in_both_runs_are_compared_with_their_own_keys():
    # comparing them once raised KeyError: each has a [regression] key and a direction of worse
    before, after = _results(0.5, [-1.0, 2.0]), _results(0.7, [-1.0, 2.4])
    for document, value in ((before, 30.0), (after, 45.0)):
        document["checks"]["montage.error_rms_nm"] = {"value": value, "ci95": [value - 5, value + 5], "unit": "nm"}
    comparison = compare_results(before, after, {"montage_error_rms_nm": 10.0}, source="before.json")
    change = comparison.metrics["montage.error_rms_nm"]
    assert change.change == pytest.approx(15.0) and change.significant and change.worse
    assert change.regressed  # 15 nm worse (95 % interval 7.9 to 22.1 nm) beyond a 10 nm tolerance
    assert regression_key("montage.unplaced_pieces") == "montage_unplaced_pieces"


def test_a_results_json_is_read_back_with_types_and_bounds(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_results(1.0, [0.0, 2.0])))
    assert read_results(path)["checks"]["x.backlash_nm"]["value"] == 1.0

    def refused(text):
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            read_results(path)
        assert "\n" not in str(error.value) and str(error.value).startswith(str(path))
        return str(error.value)

    bad = _results(1.0, [0.0, 2.0])
    bad["checks"]["x.backlash_nm"]["value"] = "big"
    assert "key 'checks.x.backlash_nm.value' has bad value 'big'" in refused(json.dumps(bad))
    bad["checks"]["x.backlash_nm"]["value"] = 1e300
    assert "1e+300" in refused(json.dumps(bad))
    bad["checks"]["x.backlash_nm"].update(value=1.0, ci95=[3.0, 2.0])
    assert "low must not exceed high" in refused(json.dumps(bad))
    assert "NaN is not valid JSON" in refused(json.dumps(_results(1.0, [0.0, 2.0])).replace("1.0", "NaN", 1))
    assert "key 'schema'" in refused(json.dumps({**_results(1.0, [0, 2]), "schema": "other"}))
    assert "not valid JSON" in refused("{")
    with pytest.raises(ConfigError, match="file not found"):
        read_results(tmp_path / "none.json")


def test_the_holder_regression_table_is_typed_and_bounded(tmp_path):
    text = (load_holder("default").path.read_text())
    assert load_holder("default").regression["backlash_nm"] == 10.0
    holder = tmp_path / "h.toml"
    holder.write_text(text.replace("backlash_nm = 10.0 ", "backlash = 10.0 "))
    with pytest.raises(ConfigError, match=r"h.toml: unknown key 'regression.backlash' \(did you mean "
                                          r"'regression.backlash_nm'\?\)"):
        load_holder(holder)
    holder.write_text(text.replace("skew_deg = 0.25", "skew_deg = 100.0"))
    with pytest.raises(ConfigError, match=r"key 'regression.skew_deg' has bad value 100.0: must be a number in "
                                          r"\[0, 90\]"):
        load_holder(holder)
    start, end = text.index("[regression]"), text.index("[acceptance]")
    holder.write_text(text[:start] + text[end:])
    assert load_holder(holder).regression == {}  # optional


def test_the_since_the_baseline_block_marks_each_change():
    from stage_acceptance.report import baseline_html

    comparison = compare_results(_results(0.5, [-1.0, 2.0]), _results(30.0, [28.0, 32.0], "not accepted", "f", 9.0),
                                 load_holder("default").regression, source="before.json")
    block = baseline_html(comparison, None)
    assert block.index("<h2") < block.index("Since the baseline") < block.index("<table>")
    assert "<tr class='regressed'><td>Backlash, x</td>" in block
    assert "<tr class='worse'><td>RMS per step, target-actual</td>" in block
    assert "WORSE, beyond the regression tolerance" in block and "Baseline: before.json" in block
    assert "No hysteresis plot of both runs" in block and "data:image/png" not in block
    assert "Drift" not in block  # measured in neither run
