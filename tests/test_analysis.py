"""The maths of results-v1 on plain arrays: lost motion, coupling, rotation, repeatability, drift."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from stage_acceptance.analysis import (
    MIN_EVIDENCE, classify_steps, coupling, drift, estimate_stage_to_image, lost_motion, pair_rms_nm,
    repeatability_nm, step_axis, tilt_response,
)
from stage_acceptance.config import SimConfig
from stage_acceptance.geometry import StagePosition, StageToImage, stage_nm_to_image_px
from stage_acceptance.sim.stage import SimulatedStage


def walk(step_nm, pattern):
    """Targets of a walk along x: pattern of +1/-1 steps."""
    positions = np.concatenate([[0.0], np.cumsum(np.array(pattern) * step_nm)])
    return positions


@settings(max_examples=60, deadline=None)
@given(
    backlash=st.floats(0.0, 300.0),
    scale=st.floats(-0.05, 0.05),
    step=st.floats(400.0, 3000.0),
    pattern=st.lists(st.sampled_from([1, -1]), min_size=6, max_size=30),
)
def test_lost_motion_recovers_the_dead_band_and_scale_of_a_noiseless_stage(backlash, scale, step, pattern):
    assume(step * (1 - 0.05) > backlash)  # every step moves the load
    targets = walk(step, [1, 1] + pattern)  # two steps up first: the history is known
    assume(len(set(np.sign(np.diff(targets)))) == 2)  # at least one reversal
    stage = SimulatedStage(SimConfig(backlash_nm=(backlash, 0.0), scale_error=(scale, 0.0), step_noise_nm=0.0,
                                     reported_noise_nm=0.0), np.random.default_rng(0))
    actual = []
    for x in targets:
        stage.move_to(StagePosition(x_nm=x))
        actual.append(stage.actual(0.0).x_nm)
    d_t, d_a = np.diff(targets), np.diff(actual)
    axis = np.zeros(len(d_t), dtype=int)
    kind = classify_steps(axis, np.sign(d_t).astype(int))
    assume(np.sum(kind == "plain") >= MIN_EVIDENCE["plain_steps"])
    assume(np.sum(kind == "reversal") >= MIN_EVIDENCE["reversal_steps"])
    result = lost_motion(d_t, d_a, kind)
    assert result.backlash_nm.value == pytest.approx(backlash, abs=1e-6)
    assert result.scale_error.value == pytest.approx(scale, abs=1e-9)
    assert result.step_scatter_nm.value == pytest.approx(0.0, abs=1e-6)
    low, high = result.backlash_nm.ci95
    assert low - 1e-6 <= backlash <= high + 1e-6


def test_lost_motion_worked_example():
    # plain steps 1000 -> 990 (L = 10), reversals 1000 -> 900 (L = 100): backlash 90
    d_t = np.array([1000.0, 1000.0, 1000.0, -1000.0, -1000.0, -1000.0, 1000.0, 1000.0])
    d_a = np.array([990.0, 990.0, 990.0, -900.0, -990.0, -990.0, 900.0, 990.0])
    kind = np.array(["first", "plain", "plain", "reversal", "plain", "plain", "reversal", "plain"])
    result = lost_motion(d_t, d_a, kind)
    assert result.backlash_nm.value == pytest.approx(90.0)
    assert result.backlash_nm.ci95 == pytest.approx((90.0, 90.0))  # no scatter: the interval is a point
    assert result.backlash_nm.evidence == {"reversal_steps": 2, "plain_steps": 5}
    assert result.scale_error.value == pytest.approx(-0.01)
    assert result.step_scatter_nm.value == pytest.approx(0.0)
    assert (result.reversal_steps, result.plain_steps) == (2, 5)


def test_lost_motion_below_the_minimum_evidence_is_not_measured_and_says_why():
    d_t = np.array([1000.0, 1000.0, -1000.0, -1000.0, -1000.0, -1000.0])
    d_a = np.array([990.0, 990.0, -900.0, -990.0, -990.0, -990.0])
    kind = np.array(["first", "plain", "reversal", "plain", "plain", "plain"])
    result = lost_motion(d_t, d_a, kind, "registered steps along x")
    assert result.backlash_nm.value is None and result.backlash_nm.ci95 is None
    assert result.backlash_nm.reason == ("needs >= 2 reversal and >= 4 plain registered steps along x; "
                                         "the session has 1 reversal and 4 plain")
    assert result.scale_error.value == pytest.approx(-0.01)  # 4 plain steps suffice for the scale


def test_lost_motion_without_reversals_has_no_backlash():
    ones = np.ones(5)
    result = lost_motion(ones, np.array([1.0, 1.1, 0.9, 1.0, 1.0]), np.array(["first"] + ["plain"] * 4))
    assert result.backlash_nm.value is None and "0 reversal" in result.backlash_nm.reason
    assert result.scale_error.value == pytest.approx(0.0)


def test_classify_steps_per_axis_memory():
    # x+, y+, x+, x-, y+, y-, none, x-
    axis = np.array([0, 1, 0, 0, 1, 1, -1, 0])
    direction = np.array([1, 1, 1, -1, 1, -1, 0, -1])
    assert list(classify_steps(axis, direction)) == [
        "first", "first", "plain", "reversal", "plain", "reversal", "other", "plain"]


@pytest.mark.parametrize(
    "delta, expected",
    [
        ((1000.0, 0.0, 0.0), (0, 1)),
        ((-1000.0, 100.0, 0.0), (0, -1)),
        ((-1000.0, 100.1, 0.0), (-1, 0)),
        ((5.0, -300.0, 0.0), (1, -1)),
        ((0.0, 0.0, 0.0), (-1, 0)),
        ((1000.0, 0.0, 500.0), (-1, 0)),
    ],
)
def test_step_axis_ten_percent_rule(delta, expected):
    assert step_axis(np.array(delta)) == expected


def test_a_tilting_step_is_along_no_axis():
    assert step_axis(np.array([1000.0, 0.0, 0.0]), np.array([1.0, 0.0])) == (-1, 0)


@settings(max_examples=60, deadline=None)
@given(rotation=st.floats(-179.0, 179.0), flip=st.booleans(), pixel=st.floats(0.5, 20.0),
       seed=st.integers(0, 2**32 - 1))
def test_rotation_and_flip_are_recovered_from_moves(rotation, flip, pixel, seed):
    rng = np.random.default_rng(seed)
    moves = np.vstack([np.array([[1000.0, 0.0], [0.0, 1000.0], [-1000.0, 0.0], [0.0, -1000.0]]),
                       rng.normal(0, 800, size=(6, 2))])
    truth = StageToImage(rotation, flip)
    shifts = stage_nm_to_image_px(moves, pixel, truth) + rng.normal(0, 0.05, size=moves.shape)
    estimate = estimate_stage_to_image(moves, shifts, pixel)
    assert estimate.flip_y == flip
    assert abs((estimate.rotation_deg - rotation + 180) % 360 - 180) < 0.1


def test_rotation_needs_two_directions():
    moves = np.array([[1000.0, 0.0], [-1000.0, 0.0]])
    with pytest.raises(ValueError, match="parallel"):
        estimate_stage_to_image(moves, moves / 10, 10.0)


@settings(max_examples=40, deadline=None)
@given(x_to_y=st.floats(-0.05, 0.05), y_to_x=st.floats(-0.05, 0.05), sx=st.floats(-0.05, 0.05))
def test_coupling_slopes_and_skew(x_to_y, y_to_x, sx):
    d_t = np.array([[1000.0, 0], [1000.0, 0], [-1000.0, 0], [-1000.0, 0],
                    [0, 1000.0], [0, -1000.0], [0, -1000.0], [0, 1000.0]])
    transfer = np.array([[1 + sx, y_to_x], [x_to_y, 1.0]])
    d_a = d_t @ transfer.T
    axis = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = coupling(d_t, d_a, axis)
    assert result.x_to_y.value == pytest.approx(x_to_y, abs=1e-12)
    assert result.y_to_x.value == pytest.approx(y_to_x, abs=1e-12)
    expected = np.degrees(np.arccos(np.dot(transfer[:, 0], transfer[:, 1])
                                    / np.linalg.norm(transfer[:, 0]) / np.linalg.norm(transfer[:, 1]))) - 90
    assert result.skew_deg.value == pytest.approx(expected, abs=1e-9)
    assert result.skew_deg.ci95 == pytest.approx((expected, expected), abs=1e-9)  # exact data: a point


def test_coupling_needs_four_registered_steps_per_axis():
    d_t = np.array([[1000.0, 0], [-1000.0, 0], [1000.0, 0], [0, 1000.0], [0, -1000.0], [0, 1000.0], [0, 1000.0]])
    result = coupling(d_t, d_t * 1.01, np.array([0, 0, 0, 1, 1, 1, 1]))
    assert result.x_to_y.value is None and "3" in result.x_to_y.reason
    assert result.y_to_x.value == pytest.approx(0.0)
    assert result.skew_deg.value is None and "both axes" in result.skew_deg.reason


def test_skew_does_not_depend_on_a_rotation_of_the_measurements():
    d_t = np.array([[1000.0, 0], [-1000.0, 0], [1000.0, 0], [-1000.0, 0],
                    [0, 1000.0], [0, -1000.0], [0, 1000.0], [0, -1000.0]])
    d_a = d_t @ np.array([[1.0, 0.01], [0.004, 1.0]]).T
    axis = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    theta = np.radians(23.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert coupling(d_t, d_a @ rot.T, axis).skew_deg.value == pytest.approx(coupling(d_t, d_a, axis).skew_deg.value)


def test_pair_rms_skips_unmeasured_steps():
    ref = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    meas = np.array([[3.0, 4.0], [np.nan, np.nan], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    rms = pair_rms_nm(ref, meas)
    assert rms.value == pytest.approx(np.sqrt(50 / 4))
    assert rms.evidence == {"pair_steps": 4}
    assert rms.ci95[0] <= rms.value <= rms.ci95[1]
    assert pair_rms_nm(ref[:3], meas[:3]).value is None


def test_repeatability_is_four_sigma_of_the_worst_target_visited_twice_or_more():
    deviations = [np.array([0.0, 1.0, 2.0]), np.array([0.0, 10.0, 5.0]), np.array([0.0, -1.0, 1.0]),
                  np.array([0.0, 30.0]), np.array([0.0, np.nan])]  # the last: one registered visit, left out
    result = repeatability_nm(deviations)
    assert result.value == pytest.approx(4 * np.std([0.0, 30.0], ddof=1))
    assert result.evidence == {"targets": 4, "visits": 11}
    assert result.ci95[0] < result.value < result.ci95[1]
    assert repeatability_nm(deviations[:2]).value is None
    assert repeatability_nm([np.array([0.0, np.nan, np.nan])] * 3).value is None  # unregistered visits do not count


@given(vx=st.floats(-20, 20), vy=st.floats(-20, 20), offset=st.floats(-100, 100))
def test_drift_velocity_is_pooled_over_runs(vx, vy, offset):
    t1, t2 = np.array([0.0, 30.0, 60.0]), np.array([200.0, 230.0])
    v = np.array([vx, vy]) / 60.0
    p1 = t1[:, None] * v
    p2 = t2[:, None] * v + offset
    result = drift([t1, t2], [p1, p2])
    np.testing.assert_allclose(result.velocity_nm_per_min, [vx, vy], atol=1e-9)
    assert result.speed_nm_per_min.value == pytest.approx(np.hypot(vx, vy), abs=1e-9)
    assert result.speed_nm_per_min.evidence == {"frames": 5, "span_s": 90.0, "runs": 2}


def test_drift_needs_three_frames_spanning_a_minute():
    t = np.array([0.0, 20.0, 40.0])
    short = drift([t], [np.zeros((3, 2))])
    assert short.speed_nm_per_min.value is None and "spanning 40 s" in short.speed_nm_per_min.reason
    two = drift([np.array([0.0, 90.0])], [np.zeros((2, 2))])
    assert two.speed_nm_per_min.value is None and "has 2" in two.speed_nm_per_min.reason


@settings(max_examples=40, deadline=None)
@given(slope=st.floats(2.0, 50.0), backlash=st.floats(0.0, 0.5), angle=st.floats(-180, 180))
def test_tilt_response_recovers_shift_per_degree_and_backlash(slope, backlash, angle):
    # tilt sequence -2, 0, 2, 4, 6, 4, 2, 0, 2, 4, 6 ... with a dead band
    targets = np.array([-2, 0, 2, 4, 6, 4, 2, 0, 2, 4, 6, 4, 2, 0], dtype=float)
    actual, load = [], 0.0
    for t in targets:
        if t - load > backlash / 2:
            load = t - backlash / 2
        elif t - load < -backlash / 2:
            load = t + backlash / 2
        actual.append(load)
    direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    d_theta = np.diff(targets)
    shifts = np.outer(np.diff(actual) * slope, direction)
    kind = classify_steps(np.zeros(len(d_theta), dtype=int), np.sign(d_theta).astype(int))
    result = tilt_response(d_theta, shifts, kind)
    assert result.shift_nm_per_deg == pytest.approx(slope, rel=1e-9)
    assert result.backlash_deg == pytest.approx(backlash, abs=1e-9)
    assert np.allclose(result.direction, direction)


def test_parallel_registration_gives_the_serial_result(tmp_path):
    from conftest import CONFIGS, record_sim
    from stage_acceptance.config import load_microscope
    from stage_acceptance.registry import register_all

    session, _ = record_sim(load_microscope(CONFIGS / "case-b.toml"), tmp_path, protocols=("cross",))
    pairs = [(0, i) for i in range(1, len(session.frames))] + [(3, 2), (1, 0), (0, 1)]
    serial = register_all(session, pairs, session.stage_to_image, jobs=1)
    parallel = register_all(session, pairs, session.stage_to_image, jobs=3)
    assert list(serial) == list(parallel) == pairs[:-1]  # each pair once, in order
    for pair in serial:
        a, b = serial[pair], parallel[pair]
        assert a.ok == b.ok and a.reason == b.reason
        np.testing.assert_array_equal(a.shift_px, b.shift_px)
    assert {r.ok for r in parallel.values()} == {True, False}  # far pairs do not overlap: both paths compared


def test_a_pair_the_reported_move_leaves_without_overlap_says_so(tmp_path):
    import re

    from conftest import CONFIGS, record_sim
    from stage_acceptance.config import load_microscope
    from stage_acceptance.registry import predicted_overlap, predicted_shift_px, register_all

    session, _ = record_sim(load_microscope(CONFIGS / "case-b.toml"), tmp_path, protocols=("cross",))
    pairs = [(0, i) for i in range(1, len(session.frames))]
    results = register_all(session, pairs, session.stage_to_image, jobs=1)
    reported = session.reported_nm()[:, :2]
    said = 0
    for (ref, mov), result in results.items():
        prior = predicted_shift_px(reported[mov] - reported[ref], session.pixel_size_nm, session.stage_to_image)
        overlap = predicted_overlap(prior, session.frame_shape)
        match = re.search(r"the reported move leaves (\d+)% of the frame overlapping \(at least 10% is needed\)",
                          result.reason)
        if result.ok or overlap >= 0.1:
            assert match is None, result.reason
        else:
            assert match and int(match.group(1)) == round(100 * overlap), result.reason
            said += 1
    assert said >= 2  # the far ends of the cross


def test_each_frame_is_prepared_once_and_released_after_its_last_pair(tmp_path):
    from conftest import CONFIGS, record_sim
    from stage_acceptance import registration
    from stage_acceptance.config import load_microscope
    from stage_acceptance.registry import register_all, registration_plan

    session, _ = record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path, protocols=("hysteresis-x", "dwell"))
    plan = registration_plan(session)
    prepared, alive, most = [], set(), [0]

    class Frame:
        def __init__(self, image):
            self.prepared = registration.prepare_frame(image)
            alive.add(id(self))
            most[0] = max(most[0], len(alive))

        def __del__(self):
            alive.discard(id(self))

    def prepare(image):
        prepared.append(image.shape)
        return Frame(image)

    def register(a, b, **kw):
        return registration.register_prepared(a.prepared, b.prepared, **kw)

    results = register_all(session, plan.pairs, session.stage_to_image, jobs=1, prepare=prepare, register=register)
    assert len(prepared) == len(session.frames)  # every frame once
    assert len(results) == len(plan.pairs) == len(set(plan.pairs))
    assert most[0] <= 8 + 6  # one batch of pairs and the first visits still needed, never the whole session
