"""Time and history effects of the simulated stage, on its ground truth (no images)."""

import dataclasses

import numpy as np
import pytest

from stage_acceptance.config import SimConfig
from stage_acceptance.geometry import StagePosition
from stage_acceptance.sim.stage import SimulatedStage

QUIET = SimConfig(step_noise_nm=0.0, reported_noise_nm=0.0, drift_nm_per_min=(0.0, 0.0))


def stage(**keys):
    return SimulatedStage(dataclasses.replace(QUIET, **keys), np.random.default_rng(1), np.random.default_rng(2))


def test_every_effect_is_off_by_default():
    plain, default = stage(), SimulatedStage(QUIET, np.random.default_rng(1), np.random.default_rng(2))
    for s in (plain, default):
        for k, x in enumerate([1000.0, 3000.0, 2500.0, 2400.0]):
            s.move_to(StagePosition(x_nm=x), 10.0 * k, 10.0 * k + 5.0)
    assert plain.actual(100.0) == default.actual(100.0) == StagePosition(x_nm=2400.0)
    assert plain.read_position() == StagePosition(x_nm=2400.0)


def test_creep_goes_on_along_the_move_and_settles():
    s = stage(creep_nm=(20.0, 8.0), creep_time_s=10.0)
    s.move_to(StagePosition(x_nm=1000.0, y_nm=-500.0), 0.0, 5.0)
    assert s.actual(5.0).xy_nm() == pytest.approx([1000.0, -500.0])
    at_tau = s.actual(15.0).xy_nm()
    assert at_tau == pytest.approx([1000.0 + 20.0 * (1 - np.exp(-1)), -500.0 - 8.0 * (1 - np.exp(-1))])
    assert s.actual(1000.0).xy_nm() == pytest.approx([1020.0, -508.0])
    # the creep of the first move stays when the next move starts
    s.move_to(StagePosition(x_nm=0.0, y_nm=-500.0), 1000.0, 1005.0)
    assert s.actual(1005.0).x_nm == pytest.approx(20.0)
    assert s.actual(1005.0).y_nm == pytest.approx(-508.0)


def test_thermal_drift_after_a_move_decays():
    s = stage(thermal_drift_nm_per_min=(6.0, 6.0), thermal_time_s=60.0)
    s.move_to(StagePosition(y_nm=2000.0), 0.0, 0.0)
    early = s.actual(1.0).y_nm - s.actual(0.0).y_nm
    late = s.actual(600.0).y_nm - s.actual(599.0).y_nm
    assert early == pytest.approx(6.0 / 60.0, rel=0.02)  # 6 nm/min at first
    assert late < early / 1000
    assert s.actual(10_000.0).y_nm == pytest.approx(2000.0 + 6.0)  # speed x time constant in all
    assert s.actual(10_000.0).x_nm == pytest.approx(0.0)  # only along the move


# With certain sticking, the motor only moves once the command is a threshold away.
@pytest.mark.parametrize("probability, expected_moves", [(0.0, 40), (1.0, 8)])
def test_stick_slip_small_steps_sometimes_do_not_happen(probability, expected_moves):
    s = stage(stick_threshold_nm=50.0, stick_probability=probability)
    moved = 0
    for k in range(1, 41):
        before = s.actual(0.0).x_nm
        s.move_to(StagePosition(x_nm=10.0 * k))
        moved += s.actual(0.0).x_nm != before
    assert moved == expected_moves


def test_stick_slip_rate_and_large_steps():
    s = stage(stick_threshold_nm=50.0, stick_probability=0.3)
    stuck = 0
    for k in range(1, 401):
        before = s.state.motor_nm[0]
        s.move_to(StagePosition(x_nm=10.0 * k))
        stuck += s.state.motor_nm[0] == before
    assert 0.2 < stuck / 400 < 0.4
    big = stage(stick_threshold_nm=50.0, stick_probability=1.0)
    big.move_to(StagePosition(x_nm=1000.0))
    assert big.actual(0.0).x_nm == pytest.approx(1000.0)


def test_wear_grows_the_backlash_with_travel():
    s = stage(backlash_nm=(10.0, 0.0), wear_nm_per_mm=(20.0, 0.0))
    for k in range(50):  # 50 moves of 0.1 mm out and back: 5 mm of travel
        s.move_to(StagePosition(x_nm=1.0e5 if k % 2 == 0 else 0.0))
    assert s.backlash_nm[0] == pytest.approx(10.0 + 20.0 * 5.0)
    s.move_to(StagePosition(x_nm=5000.0))  # the last move went down: this is a reversal
    before = s.actual(0.0).x_nm
    s.move_to(StagePosition(x_nm=0.0))  # reversal again: falls short by the worn dead band
    assert 5000.0 - (before - s.actual(0.0).x_nm) == pytest.approx(110.0, abs=0.3)


def test_readback_is_quantised():
    s = stage(reported_quantum_nm=19.5, reported_noise_nm=3.0)
    for x in (12.0, 1000.0, -7777.7):
        s.move_to(StagePosition(x_nm=x))
        r = s.read_position()
        assert r.x_nm / 19.5 == pytest.approx(round(r.x_nm / 19.5))
        assert abs(r.x_nm - x) <= 19.5 / 2 + 3 * 3.0


def test_readback_jumps_while_the_specimen_stands_still():
    s = stage(readback_jump_nm=19.5, readback_jump_probability=1.0)
    s.move_to(StagePosition(x_nm=-15990.0, y_nm=-8554.3), 0.0, 5.0)
    first = s.read_position()
    second = s.read_position()
    jump = second.xy_nm() - first.xy_nm()
    assert sorted(np.abs(jump)) == pytest.approx([0.0, 19.5])
    assert s.actual(10.0) == s.actual(5.0)  # nothing moved
    s.move_to(StagePosition(x_nm=0.0), 10.0, 15.0)
    assert s.reported() == StagePosition()  # a move clears the jumps


def test_y_and_z_pushes_move_the_specimen_on_an_arc():
    s = stage(pivot_arm_mm=60.0)
    s.move_to(StagePosition(y_nm=1.0e6))  # 1 mm
    arm = 60.0e6
    assert s.actual(0.0).x_nm == pytest.approx(-(arm - np.sqrt(arm**2 - 1.0e12)))  # about -8.3 um
    s.move_to(StagePosition(y_nm=1000.0))
    assert abs(s.actual(0.0).x_nm) < 0.01  # negligible for small moves (8 pm)


def test_vacuum_pull_makes_x_asymmetric():
    s = stage(x_pull_scale_error=0.01)
    s.move_to(StagePosition(x_nm=1000.0))
    assert s.actual(0.0).x_nm == pytest.approx(1000.0)  # pushed by the motor: as commanded
    s.move_to(StagePosition(x_nm=0.0))
    assert s.actual(0.0).x_nm == pytest.approx(-10.0)  # pulled by the vacuum: 1 % further


def test_tilt_moves_a_specimen_off_the_eucentric_height_sideways():
    s = stage(eucentric_error_nm=1000.0, tilt_backlash_deg=(0.5, 0.0), step_noise_nm=2.0)
    s.move_to(StagePosition(x_nm=500.0))
    landed = s.actual(0.0)
    s.move_to(StagePosition(x_nm=500.0, alpha_deg=10.0))
    tilted = s.actual(0.0)
    assert tilted.alpha_deg == pytest.approx(9.75)  # half the dead band behind on the way up
    assert tilted.y_nm - landed.y_nm == pytest.approx(1000.0 * np.sin(np.radians(9.75)))
    assert tilted.x_nm == landed.x_nm  # a tilt-only move leaves x and y where they landed
    s.move_to(StagePosition(x_nm=500.0, alpha_deg=10.0, z_nm=-1000.0))  # z to the eucentric height
    assert s.actual(0.0).y_nm == pytest.approx(landed.y_nm, abs=1e-9)
