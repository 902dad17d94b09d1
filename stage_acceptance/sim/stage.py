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

Time and history effects, each off by default (``[sim]`` keys):

* **creep** (``creep_nm``, ``creep_time_s``): after a move the specimen goes on
  creeping along the direction of the move, per axis, by ``creep_nm`` in all,
  ``1 - exp(-t / creep_time_s)`` of it after ``t`` seconds;
* **thermal drift after a move** (``thermal_drift_nm_per_min``,
  ``thermal_time_s``): a drift along the direction of the move that starts at that
  speed and decays with that time constant;
* **stick-slip** (``stick_threshold_nm``, ``stick_probability``): a commanded
  motor step shorter than the threshold does not happen with that probability;
* **wear** (``wear_nm_per_mm``): the dead band grows by that much per millimetre the
  motor has travelled;
* **readback quantisation** (``reported_quantum_nm``): the reported x and y are
  multiples of the quantum;
* **readback jumps** (``readback_jump_nm``, ``readback_jump_probability``): each
  time the position is read while the stage stands still, the reading of x or y
  jumps by that amount (either sign) with that probability, though nothing moved;
  the next move clears it.

Goniometer geometry (paper Figure 1b), each off by default:

* **arcs** (``pivot_arm_mm``): y and z push the holder end, which pivots on a bearing
  that far from the specimen, so the specimen moves on a sphere: its x falls behind
  by ``R - sqrt(R**2 - y**2 - z**2)``;
* **vacuum pull** (``x_pull_scale_error``): x is pushed out by a motor but pulled back
  by the vacuum, so moves towards -x have this extra scale error;
* **tilts**: alpha (about x) and beta (about y) follow their targets through a dead
  band ``tilt_backlash_deg``; with the specimen ``h = eucentric_error_nm + z`` above
  the tilt axes, tilting moves it sideways by ``h sin(alpha)`` along y and
  ``h sin(beta)`` along x, and the image is foreshortened by the cosines.
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
    travel_nm: np.ndarray
    """Total motor travel per axis so far (drives wear)."""
    settled_offset_nm: np.ndarray
    """Creep and thermal drift of earlier moves, now permanent."""
    move_end_s: float
    """When the last real move ended (start of its creep and thermal drift)."""
    creep_nm: np.ndarray
    """Full creep of the last move, per axis, signed."""
    thermal_nm: np.ndarray
    """Full thermal-drift displacement of the last move (speed x time constant), signed."""
    readback_jump_nm: np.ndarray
    """Readback jumps accumulated while standing still since the last move."""
    pull_offset_nm: float = 0.0
    """Extra x travel of all moves towards -x (vacuum pull), nm."""
    tilt_motor_deg: np.ndarray = None
    tilt_load_deg: np.ndarray = None
    """Actual alpha and beta of the specimen."""

    def __post_init__(self):
        if self.tilt_motor_deg is None:
            self.tilt_motor_deg = np.zeros(2)
        if self.tilt_load_deg is None:
            self.tilt_load_deg = np.zeros(2)


def _follow(motor: np.ndarray, load: np.ndarray, band: np.ndarray) -> np.ndarray:
    """New load position after the motor moved to `motor` through a dead band `band`."""
    half = band / 2.0
    out = load.copy()
    up = motor - load > half
    down = motor - load < -half
    out[up] = motor[up] - half[up]
    out[down] = motor[down] + half[down]
    return out


def _transient(amplitude_nm: np.ndarray, time_constant_s: float, elapsed_s: float) -> np.ndarray:
    """``amplitude * (1 - exp(-elapsed / time_constant))``; the full amplitude for tau 0."""
    if time_constant_s <= 0:
        return amplitude_nm.copy()
    return amplitude_nm * (1.0 - np.exp(-max(elapsed_s, 0.0) / time_constant_s))


class SimulatedStage:
    """The simulated stage mechanics; see the module docstring for the model.

    Parameters
    ----------
    sim : SimConfig
        The ``[sim]`` table of a microscope config.
    rng : numpy.random.Generator
        Source of the step and readback noise.
    effects_rng : numpy.random.Generator, optional
        Source of the stick-slip and readback-jump draws (kept apart so that
        switching these effects on does not change the other noise).
    """

    def __init__(self, sim: SimConfig, rng: np.random.Generator, effects_rng: np.random.Generator | None = None):
        if sim.reported not in REPORTED_MODELS:
            raise ValueError(f"reported must be one of {REPORTED_MODELS}, got {sim.reported!r}")
        self.sim = sim
        self.rng = rng
        self.effects_rng = effects_rng if effects_rng is not None else np.random.default_rng(0)
        self.scale_error = np.asarray(sim.scale_error, dtype=float)
        self.state = StageState(
            motor_nm=np.zeros(2),
            load_nm=np.zeros(2),
            landing_error_nm=np.zeros(2),
            target=StagePosition(),
            travel_nm=np.zeros(2),
            settled_offset_nm=np.zeros(2),
            move_end_s=0.0,
            creep_nm=np.zeros(2),
            thermal_nm=np.zeros(2),
            readback_jump_nm=np.zeros(2),
        )
        self._readback_noise = np.zeros(2)
        self._reported = StagePosition()

    @property
    def backlash_nm(self) -> np.ndarray:
        """The dead band per axis now (grows with travel when wear is on)."""
        wear = np.asarray(self.sim.wear_nm_per_mm, dtype=float) * self.state.travel_nm / 1.0e6
        return np.asarray(self.sim.backlash_nm, dtype=float) + wear

    def move_to(self, target: StagePosition, start_s: float = 0.0, end_s: float = 0.0) -> None:
        """Execute a move command from `start_s` to `end_s` (instrument time).

        A command to the position the stage was last sent to does not move it (the
        landing error stays); only the readback is taken again.
        """
        state = self.state
        if target == state.target:
            self._reported = self._readback(target)
            return
        sim = self.sim
        # Creep and thermal drift of the previous move become permanent.
        state.settled_offset_nm = state.settled_offset_nm + self._transients(start_s)
        step_x = target.x_nm - state.target.x_nm
        if step_x < 0:
            state.pull_offset_nm += sim.x_pull_scale_error * step_x
        motor = (1.0 + self.scale_error) * target.xy_nm() + np.array([state.pull_offset_nm, 0.0])
        if sim.stick_threshold_nm > 0 and sim.stick_probability > 0:
            small = np.abs(motor - state.motor_nm) < sim.stick_threshold_nm
            stuck = small & (self.effects_rng.random(2) < sim.stick_probability)
            motor = np.where(stuck, state.motor_nm, motor)
        state.travel_nm = state.travel_nm + np.abs(motor - state.motor_nm)
        load = _follow(motor, state.load_nm, self.backlash_nm)
        state.tilt_motor_deg = np.array([target.alpha_deg, target.beta_deg])
        state.tilt_load_deg = _follow(state.tilt_motor_deg, state.tilt_load_deg,
                                      np.asarray(sim.tilt_backlash_deg, dtype=float))
        step = target.xy_nm() - state.target.xy_nm()
        norm = float(np.hypot(*step))
        state.creep_nm = np.asarray(sim.creep_nm, dtype=float) * np.sign(step)
        thermal_speed = np.asarray(sim.thermal_drift_nm_per_min, dtype=float) / 60.0
        state.thermal_nm = (thermal_speed * sim.thermal_time_s * step / norm) if norm > 0 else np.zeros(2)
        state.motor_nm = motor
        state.load_nm = load
        if np.any(step != 0):  # a tilt-only move leaves the x and y drives alone
            state.landing_error_nm = self.rng.normal(0.0, sim.step_noise_nm, size=2)
        state.target = target
        state.move_end_s = end_s
        state.readback_jump_nm = np.zeros(2)
        self._reported = self._readback(target)

    def _transients(self, time_s: float) -> np.ndarray:
        """Creep and thermal drift of the last move reached at `time_s`."""
        state = self.state
        elapsed = time_s - state.move_end_s
        return (_transient(state.creep_nm, self.sim.creep_time_s, elapsed)
                + _transient(state.thermal_nm, self.sim.thermal_time_s, elapsed))

    def mechanical_xy_nm(self) -> np.ndarray:
        """Where the stage mechanics put the specimen at landing (no drift, no creep)."""
        state = self.state
        sim = self.sim
        t = state.target
        coupled = np.array(
            [
                state.load_nm[0] + sim.coupling_y_to_x * t.y_nm,
                state.load_nm[1] + sim.coupling_x_to_y * t.x_nm,
            ]
        )
        if sim.pivot_arm_mm > 0:
            arm_nm = sim.pivot_arm_mm * 1.0e6
            radial = min(state.load_nm[1] ** 2 + t.z_nm ** 2, arm_nm ** 2)
            coupled[0] -= arm_nm - np.sqrt(arm_nm ** 2 - radial)
        return coupled + state.landing_error_nm + self.tilt_shift_nm()

    def tilt_shift_nm(self) -> np.ndarray:
        """Sideways shift ``(h sin beta, h sin alpha)`` of a specimen off the tilt axes."""
        height = self.sim.eucentric_error_nm + self.state.target.z_nm
        alpha, beta = np.deg2rad(self.state.tilt_load_deg)
        return height * np.array([np.sin(beta), np.sin(alpha)])

    def drift_xy_nm(self, time_s: float) -> np.ndarray:
        """Drift of the specimen relative to the column at `time_s`."""
        return np.asarray(self.sim.drift_nm_per_min, dtype=float) * (time_s / 60.0)

    def actual(self, time_s: float) -> StagePosition:
        """The true position of the specimen at `time_s` (ground truth)."""
        xy = (self.mechanical_xy_nm() + self.drift_xy_nm(time_s) + self.state.settled_offset_nm
              + self._transients(time_s))
        t = self.state.target
        alpha, beta = self.state.tilt_load_deg
        return StagePosition(float(xy[0]), float(xy[1]), t.z_nm, float(alpha), float(beta))

    def reported(self) -> StagePosition:
        """What the stage reported at the last reading (no new draw)."""
        return self._reported

    def read_position(self) -> StagePosition:
        """Read the position now: the last readback, possibly jumped while standing still."""
        sim = self.sim
        if sim.readback_jump_nm > 0 and sim.readback_jump_probability > 0:
            if self.effects_rng.random() < sim.readback_jump_probability:
                axis = int(self.effects_rng.integers(2))
                self.state.readback_jump_nm[axis] += sim.readback_jump_nm * self.effects_rng.choice([-1.0, 1.0])
                self._reported = self._readback(self.state.target, fresh_noise=False)
        return self._reported

    def _readback(self, target: StagePosition, fresh_noise: bool = True) -> StagePosition:
        sim = self.sim
        if sim.reported == "target":
            xy = target.xy_nm()
        elif sim.reported == "actual":
            xy = self.mechanical_xy_nm()
        else:
            xy = (1.0 + np.asarray(sim.reported_scale_error)) * target.xy_nm()
        if fresh_noise:
            self._readback_noise = self.rng.normal(0.0, sim.reported_noise_nm, size=2)
        xy = xy + self._readback_noise + self.state.readback_jump_nm
        if sim.reported_quantum_nm > 0:
            xy = np.round(xy / sim.reported_quantum_nm) * sim.reported_quantum_nm
        return StagePosition(float(xy[0]), float(xy[1]), target.z_nm, target.alpha_deg, target.beta_deg)
