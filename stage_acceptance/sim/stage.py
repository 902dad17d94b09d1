"""Mechanics of the simulated stage: where the specimen really goes for a command.

Per lateral axis a (x, y) the model is a motor and a load coupled through a dead
band (classic backlash):

* the motor goes to ``m_a = (1 + scale_error_a) * T_a`` for a target ``T_a``;
* the load (the specimen) follows only when the motor pushes it: if
  ``m_a - p_a > b_a / 2`` then ``p_a = m_a - b_a / 2``, if ``m_a - p_a < -b_a / 2``
  then ``p_a = m_a + b_a / 2``, otherwise it stays. The first step after a reversal
  therefore falls short by the full dead band ``b_a``;
* the goniometer's arcs couple the axes: ``A_x = p_x + y_to_x * T_y`` and
  ``A_y = p_y + x_to_y * T_x``;
* every landing is off by an independent ``N(0, step_noise_nm)`` per axis (so a step,
  the difference of two landings, scatters by ``sqrt(2) * step_noise_nm``); a command
  to the target the stage already has does not move it;
* the specimen drifts at ``drift_nm_per_min`` relative to the column.

The reported position is the target, the actual position, or the target scaled by
``1 + reported_scale_error``, each plus ``N(0, reported_noise_nm)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SimConfig
from ..geometry import StagePosition

REPORTED_MODELS = ("target", "actual", "scaled")


@dataclass
class StageState:
    """Inspectable internal state of the simulated stage (the ground truth)."""

    motor_nm: np.ndarray
    load_nm: np.ndarray
    landing_error_nm: np.ndarray
    target: StagePosition


class SimulatedStage:
    """The simulated stage mechanics; see the module docstring for the model.

    Parameters
    ----------
    sim : SimConfig
        The ``[sim]`` table of a microscope config.
    rng : numpy.random.Generator
        Source of the step and readback noise.
    """

    def __init__(self, sim: SimConfig, rng: np.random.Generator):
        if sim.reported not in REPORTED_MODELS:
            raise ValueError(f"reported must be one of {REPORTED_MODELS}, got {sim.reported!r}")
        self.sim = sim
        self.rng = rng
        self.backlash_nm = np.asarray(sim.backlash_nm, dtype=float)
        self.scale_error = np.asarray(sim.scale_error, dtype=float)
        self.state = StageState(
            motor_nm=np.zeros(2),
            load_nm=np.zeros(2),
            landing_error_nm=np.zeros(2),
            target=StagePosition(),
        )
        self._reported = StagePosition()

    def move_to(self, target: StagePosition) -> None:
        """Execute a move command: update motor, load, landing error and readback.

        A command to the position the stage was last sent to does not move it (the
        landing error stays); only the readback is taken again.
        """
        state = self.state
        if target == state.target:
            self._reported = self._readback(target)
            return
        motor = (1.0 + self.scale_error) * target.xy_nm()
        half_band = self.backlash_nm / 2.0
        load = state.load_nm.copy()
        gap = motor - load
        pushed_up = gap > half_band
        pushed_down = gap < -half_band
        load[pushed_up] = motor[pushed_up] - half_band[pushed_up]
        load[pushed_down] = motor[pushed_down] + half_band[pushed_down]
        state.motor_nm = motor
        state.load_nm = load
        state.landing_error_nm = self.rng.normal(0.0, self.sim.step_noise_nm, size=2)
        state.target = target
        self._reported = self._readback(target)

    def mechanical_xy_nm(self) -> np.ndarray:
        """Where the stage mechanics put the specimen (no drift), ``(x, y)`` nm."""
        state = self.state
        t = state.target
        coupled = np.array(
            [
                state.load_nm[0] + self.sim.coupling_y_to_x * t.y_nm,
                state.load_nm[1] + self.sim.coupling_x_to_y * t.x_nm,
            ]
        )
        return coupled + state.landing_error_nm

    def drift_xy_nm(self, time_s: float) -> np.ndarray:
        """Drift of the specimen relative to the column at `time_s`."""
        return np.asarray(self.sim.drift_nm_per_min, dtype=float) * (time_s / 60.0)

    def actual(self, time_s: float) -> StagePosition:
        """The true position of the specimen at `time_s` (ground truth)."""
        x, y = self.mechanical_xy_nm() + self.drift_xy_nm(time_s)
        t = self.state.target
        return StagePosition(x, y, t.z_nm, t.alpha_deg, t.beta_deg)

    def reported(self) -> StagePosition:
        """What the stage reports after the last move."""
        return self._reported

    def _readback(self, target: StagePosition) -> StagePosition:
        sim = self.sim
        if sim.reported == "target":
            xy = target.xy_nm()
        elif sim.reported == "actual":
            xy = self.mechanical_xy_nm()
        else:
            xy = (1.0 + np.asarray(sim.reported_scale_error)) * target.xy_nm()
        xy = xy + self.rng.normal(0.0, sim.reported_noise_nm, size=2)
        return StagePosition(float(xy[0]), float(xy[1]), target.z_nm, target.alpha_deg, target.beta_deg)
