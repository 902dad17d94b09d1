"""Property: for random simulated stages the whole pipeline (images, registration,
analysis) recovers the simulator's ground truth within stated bounds."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import CONFIGS, record_sim
from stage_acceptance.analysis import analyse
from stage_acceptance.config import load_microscope
from stage_acceptance.geometry import StageToImage

# Bounds: with step_noise_nm = 1 per landing the plain steps scatter by ~1.4 nm; with
# 8 reversal and ~30 plain steps per axis the backlash is known to ~2 nm. Registration
# adds ~0.05 px (0.75 nm here).
BACKLASH_NM = 6.0
SCALE = 0.004
COUPLING = 0.004
ROTATION_DEG = 0.3


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    backlash=st.tuples(st.floats(0.0, 200.0), st.floats(0.0, 200.0)),
    scale=st.tuples(st.floats(-0.03, 0.03), st.floats(-0.03, 0.03)),
    x_to_y=st.floats(-0.02, 0.02),
    y_to_x=st.floats(-0.02, 0.02),
    rotation=st.floats(-180.0, 180.0),
    flip=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_analysis_recovers_backlash_scale_and_coupling(tmp_path_factory, backlash, scale, x_to_y, y_to_x,
                                                        rotation, flip, seed):
    base = load_microscope(CONFIGS / "case-a.toml")
    sim = dataclasses.replace(base.sim, seed=seed, backlash_nm=backlash, scale_error=scale,
                              coupling_x_to_y=x_to_y, coupling_y_to_x=y_to_x, rotation_deg=rotation, flip_y=flip)
    # The analysis is told the true transform, as after a calibration.
    config = dataclasses.replace(base, sim=sim, stage_to_image=StageToImage(rotation, flip))
    session, microscope = record_sim(config, tmp_path_factory.mktemp("rec"))
    analysis = analyse(session)
    assert not analysis.failed
    for k, axis in enumerate("xy"):
        assert analysis.axes[axis].backlash_nm == pytest.approx(backlash[k], abs=BACKLASH_NM)
        assert analysis.axes[axis].scale_error == pytest.approx(scale[k], abs=SCALE)
        assert analysis.axes[axis].step_scatter_nm < 5.0
        assert analysis.axes[axis].reported_backlash_nm == pytest.approx(0.0, abs=2.0)
    assert analysis.coupling.x_to_y == pytest.approx(x_to_y, abs=COUPLING)
    assert analysis.coupling.y_to_x == pytest.approx(y_to_x, abs=COUPLING)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rotation=st.floats(-180.0, 180.0), flip=st.booleans(), seed=st.integers(0, 10_000))
def test_unknown_stage_to_image_is_estimated(tmp_path_factory, rotation, flip, seed):
    base = load_microscope(CONFIGS / "case-f.toml")
    sim = dataclasses.replace(base.sim, seed=seed, rotation_deg=rotation, flip_y=flip)
    config = dataclasses.replace(base, sim=sim, stage_to_image=None)
    session, _ = record_sim(config, tmp_path_factory.mktemp("rec"))
    analysis = analyse(session)
    assert analysis.transform_estimated
    assert analysis.transform.flip_y == flip
    assert abs((analysis.transform.rotation_deg - rotation + 180) % 360 - 180) < ROTATION_DEG
    assert analysis.axes["x"].backlash_nm == pytest.approx(150.0, abs=BACKLASH_NM)
    assert analysis.axes["y"].backlash_nm == pytest.approx(80.0, abs=BACKLASH_NM)


def test_drift_is_recovered(tmp_path):
    base = load_microscope(CONFIGS / "case-a.toml")
    config = dataclasses.replace(base, sim=dataclasses.replace(base.sim, drift_nm_per_min=(6.0, -8.0)))
    session, _ = record_sim(config, tmp_path / "rec", protocols=["dwell"])
    analysis = analyse(session)
    np.testing.assert_allclose(analysis.drift_velocity_nm_per_min, [6.0, -8.0], atol=1.0)
    assert analysis.drift_nm_per_min == pytest.approx(10.0, abs=1.0)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.floats(1500.0, 4000.0), backlash=st.tuples(st.floats(0.0, 0.4), st.floats(0.0, 0.4)),
       seed=st.integers(0, 10_000))
def test_tilt_shift_per_degree_and_backlash_are_recovered(tmp_path_factory, height, backlash, seed):
    base = load_microscope(CONFIGS / "case-a.toml")
    sim = dataclasses.replace(base.sim, seed=seed, eucentric_error_nm=height, tilt_backlash_deg=backlash)
    session, _ = record_sim(dataclasses.replace(base, sim=sim), tmp_path_factory.mktemp("rec"),
                            protocols=["tilt-alpha", "tilt-beta"])
    analysis = analyse(session)
    assert not analysis.failed
    for k, axis in enumerate(("alpha", "beta")):
        tilt = analysis.tilt[axis]
        # h sin(theta) is within 0.3 % of linear over +-6 deg; registration noise is ~0.05 px of 15 nm
        assert tilt.shift_nm_per_deg == pytest.approx(height * np.pi / 180, rel=0.02)
        assert tilt.backlash_deg == pytest.approx(backlash[k], abs=0.05)
